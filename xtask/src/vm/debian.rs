//! Debian's packages for the VM tests (cloud kernels, and busybox for a foreign architecture),
//! fetched with apt from a private package list under `target/vm/apt` so the host's own apt
//! configuration and state are never touched, and cached under `target/vm/debian`: delete that
//! directory to fetch the suites' current kernels again.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::process::{self, stdout_text};

const MIRROR: &str = "http://deb.debian.org/debian";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    pub fn debian(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The Rust target the daemon and the test binaries are built for.
    pub fn rust_target(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64-unknown-linux-gnu",
            Arch::Arm64 => "aarch64-unknown-linux-gnu",
        }
    }

    pub fn host() -> Arch {
        if cfg!(target_arch = "aarch64") {
            Arch::Arm64
        } else {
            Arch::Amd64
        }
    }
}

/// A Debian release and architecture whose cloud kernel a VM boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Release {
    pub suite: &'static str,
    pub arch: Arch,
}

impl Release {
    const fn new(suite: &'static str, arch: Arch) -> Release {
        Release { suite, arch }
    }

    pub fn name(&self) -> String {
        format!("{}-{}", self.suite, self.arch.debian())
    }

    /// Parses `bullseye`, `trixie-arm64`, ... (amd64 when no architecture is given).
    pub fn parse(s: &str) -> Result<Release> {
        let (suite, arch) = s.split_once('-').unwrap_or((s, "amd64"));
        let arch = match arch {
            "amd64" => Arch::Amd64,
            "arm64" => Arch::Arm64,
            other => bail!("--release {s}: unknown architecture {other:?} (amd64 or arm64)"),
        };
        match SUITES.iter().find(|(name, _)| *name == suite) {
            Some((name, _)) => Ok(Release::new(name, arch)),
            None => bail!(
                "--release {s}: unknown Debian suite {suite:?} (one of {})",
                SUITES
                    .iter()
                    .map(|(n, k)| format!("{n} ({k})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// The suites whose kernels portwatch supports, with their kernel series.
const SUITES: [(&str, &str); 3] = [
    ("bullseye", "5.10"),
    ("bookworm", "6.1"),
    ("trixie", "6.12"),
];

/// `cargo xtask vm-test --matrix`: every supported kernel on amd64; on arm64 6.1 (where fentry
/// cannot attach: no ftrace direct calls before 6.4) and 6.12.
pub const MATRIX: [Release; 5] = [
    Release::new("bullseye", Arch::Amd64),
    Release::new("bookworm", Arch::Amd64),
    Release::new("trixie", Arch::Amd64),
    Release::new("bookworm", Arch::Arm64),
    Release::new("trixie", Arch::Arm64),
];

/// `cargo xtask vm-test` (and so `cargo xtask test` and CI): the oldest and newest amd64 kernels.
pub const DEFAULT: [Release; 2] = [
    Release::new("bullseye", Arch::Amd64),
    Release::new("trixie", Arch::Amd64),
];

/// The release's cloud kernel image, downloaded and unpacked once.
pub fn kernel(vm_dir: &Path, release: Release) -> Result<PathBuf> {
    let meta = format!("linux-image-cloud-{}", release.arch.debian());
    let tree = unpacked(vm_dir, release, &meta, |apt| {
        // The meta-package names no kernel itself: it depends on the versioned one.
        let depends = stdout_text(apt.command("apt-cache").args(["depends", &meta]))?;
        depends
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .find(|p| p.starts_with("linux-image-"))
            .map(|p| p.split(':').next().unwrap_or(p).to_string())
            .with_context(|| format!("{}: {meta} depends on no linux-image", release.name()))
    })?;
    let boot = tree.join("boot");
    fs::read_dir(&boot)
        .with_context(|| format!("reading {}", boot.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .with_context(|| format!("{} holds no vmlinuz-*", boot.display()))
}

/// `package` of the release (for busybox-static on a foreign architecture), unpacked once.
pub fn package(vm_dir: &Path, release: Release, package: &str) -> Result<PathBuf> {
    unpacked(vm_dir, release, package, |_| Ok(package.to_string()))
}

/// The unpacked tree of the package `resolve` names, under `target/vm/debian/<release>/<what>`;
/// apt runs only when that tree is not there yet.
fn unpacked(
    vm_dir: &Path,
    release: Release,
    what: &str,
    resolve: impl FnOnce(&Apt) -> Result<String>,
) -> Result<PathBuf> {
    let tree = vm_dir.join("debian").join(release.name()).join(what);
    if tree.join(".complete").is_file() {
        return Ok(tree);
    }
    let apt = Apt::new(vm_dir, release)?;
    let package = resolve(&apt)?;
    let dl = apt.dir.join("download");
    if dl.exists() {
        fs::remove_dir_all(&dl)?;
    }
    fs::create_dir_all(&dl)?;
    process::run(
        apt.command("apt-get")
            .current_dir(&dl)
            .args(["download", &package]),
    )
    .with_context(|| format!("downloading {package} from {}", release.name()))?;
    let deb = fs::read_dir(&dl)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download left no .deb in {}", dl.display()))?;
    if tree.exists() {
        fs::remove_dir_all(&tree)?;
    }
    fs::create_dir_all(&tree)?;
    process::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
    fs::write(tree.join(".complete"), deb.display().to_string())?;
    Ok(tree)
}

/// apt pointed at one release's package list, kept apart from the host's.
struct Apt {
    dir: PathBuf,
    options: Vec<String>,
}

impl Apt {
    /// Writes the release's sources list and fetches its package lists.
    fn new(vm_dir: &Path, release: Release) -> Result<Apt> {
        let dir = vm_dir.join("apt").join(release.name());
        for sub in ["lists/partial", "cache/archives/partial", "sources.list.d"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        let arch = release.arch.debian();
        let sources = dir.join("sources.list");
        fs::write(
            &sources,
            format!(
                "deb [arch={arch} signed-by={KEYRING}] {MIRROR} {} main\n",
                release.suite
            ),
        )?;
        let path = |p: &Path| p.display().to_string();
        let options = [
            format!("Dir::Etc::SourceList={}", path(&sources)),
            format!(
                "Dir::Etc::SourceParts={}",
                path(&dir.join("sources.list.d"))
            ),
            format!("Dir::State::Lists={}", path(&dir.join("lists"))),
            format!("Dir::Cache={}", path(&dir.join("cache"))),
            // The host's installed packages are no concern of a download.
            "Dir::State::status=/dev/null".to_string(),
            format!("APT::Architecture={arch}"),
            format!("APT::Architectures={arch}"),
        ]
        .into_iter()
        .flat_map(|o| ["-o".to_string(), o])
        .collect();
        let apt = Apt { dir, options };
        process::run(apt.command("apt-get").args(["update", "-qq"])).with_context(|| {
            format!("fetching {}'s package lists from {MIRROR}", release.name())
        })?;
        Ok(apt)
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(&self.options);
        cmd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_parse_with_and_without_an_architecture() {
        assert_eq!(
            Release::parse("bullseye").unwrap(),
            Release::new("bullseye", Arch::Amd64)
        );
        assert_eq!(
            Release::parse("bookworm-arm64").unwrap(),
            Release::new("bookworm", Arch::Arm64)
        );
        let e = Release::parse("buster").unwrap_err().to_string();
        assert!(e.contains("unknown Debian suite \"buster\""), "{e}");
        let e = Release::parse("trixie-riscv64").unwrap_err().to_string();
        assert!(e.contains("unknown architecture \"riscv64\""), "{e}");
    }
}
