//! `cargo xtask install | uninstall`: the binary, the systemd unit, shell completions, man pages, a default
//! config and a policy
//! (a baseline of what listens now on a live system; a template under `--destdir`, for
//! packaging), under `--destdir` and `--prefix` (for the binary).
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};

use crate::process::{output, set_mode};

pub struct Layout {
    bin: PathBuf,
    unit: PathBuf,
    config: PathBuf,
    policy: PathBuf,
    /// Shell completion scripts: (shell, where that shell looks for them).
    completions: Vec<(&'static str, PathBuf)>,
    /// Section 1 of the manual.
    man1: PathBuf,
    bindir: PathBuf,
    /// Installing onto this system (no --destdir).
    live: bool,
}

impl Layout {
    pub fn new(prefix: &Path, destdir: Option<&Path>) -> Layout {
        let under = |p: &Path| match destdir {
            Some(d) => d.join(p.strip_prefix("/").unwrap_or(p)),
            None => p.to_path_buf(),
        };
        let bindir = prefix.join("bin");
        Layout {
            bin: under(&bindir.join("portwatch")),
            unit: under(Path::new("/etc/systemd/system/portwatch.service")),
            config: under(Path::new("/etc/portwatch/portwatch.toml")),
            policy: under(Path::new("/etc/portwatch/policy.toml")),
            completions: vec![
                (
                    "bash",
                    under(&prefix.join("share/bash-completion/completions/portwatch")),
                ),
                (
                    "zsh",
                    under(&prefix.join("share/zsh/site-functions/_portwatch")),
                ),
                (
                    "fish",
                    under(&prefix.join("share/fish/vendor_completions.d/portwatch.fish")),
                ),
            ],
            man1: under(&prefix.join("share/man/man1")),
            bindir,
            live: destdir.is_none(),
        }
    }

    /// Where the Debian package puts each file, under `stage` (its root): the binary in
    /// /usr/bin, the unit in /usr/lib/systemd/system, and the policy template in
    /// /usr/share/portwatch: a policy of the target host's listeners can only be written there,
    /// by the maintainer script.
    pub fn package(stage: &Path) -> Layout {
        let mut layout = Layout::new(Path::new("/usr"), Some(stage));
        layout.unit = stage.join("usr/lib/systemd/system/portwatch.service");
        layout.policy = stage.join("usr/share/portwatch/policy.toml");
        layout
    }

    pub fn man1(&self) -> &Path {
        &self.man1
    }
}

fn write(path: &Path, bytes: &[u8], mode: u32, overwrite: bool) -> Result<()> {
    if !overwrite && path.exists() {
        eprintln!("install: kept existing {}", path.display());
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // Write beside and rename, so a running binary is replaced rather than modified.
    let tmp = path.with_extension("portwatch-new");
    fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    set_mode(&tmp, mode)?;
    fs::rename(&tmp, path).with_context(|| format!("installing {}", path.display()))?;
    eprintln!("install: {} (mode {mode:o})", path.display());
    Ok(())
}

pub fn install(root: &Path, layout: &Layout) -> Result<()> {
    let binary =
        fs::read(root.join("target/release/portwatch")).context("reading the built daemon")?;
    write(&layout.bin, &binary, 0o755, true)?;
    let unit = fs::read_to_string(root.join("packaging/systemd/portwatch.service"))?
        .replace("@BINDIR@", &layout.bindir.display().to_string());
    write(&layout.unit, unit.as_bytes(), 0o644, true)?;
    write(
        &layout.config,
        &fs::read(root.join("packaging/portwatch.toml"))?,
        0o640,
        false,
    )?;
    let policy = if layout.live && !layout.policy.exists() {
        // What listens now is allowed; from here on, new listeners alert.
        output(Command::new(&layout.bin).arg("baseline")).context("portwatch baseline failed")?
    } else {
        fs::read(root.join("packaging/policy.toml"))?
    };
    write(&layout.policy, &policy, 0o640, false)?;
    for (shell, path) in &layout.completions {
        let script = output(
            Command::new(root.join("target/release/portwatch")).args(["completions", shell]),
        )
        .with_context(|| format!("portwatch completions {shell} failed"))?;
        write(path, &script, 0o644, true)?;
    }
    // The man pages: portwatch.1 and one per subcommand, written by the binary itself.
    let pages = tempfile::tempdir().context("a directory for the man pages")?;
    output(
        Command::new(root.join("target/release/portwatch"))
            .arg("man-pages")
            .arg(pages.path()),
    )
    .context("portwatch man-pages failed")?;
    for page in fs::read_dir(pages.path())?.flatten() {
        write(
            &layout.man1.join(page.file_name()),
            &fs::read(page.path())?,
            0o644,
            true,
        )?;
    }
    eprintln!(
        "install: done. Start it with: systemctl daemon-reload && systemctl enable --now portwatch"
    );
    Ok(())
}

pub fn uninstall(layout: &Layout) -> Result<()> {
    let scripts = layout.completions.iter().map(|(_, p)| p);
    for p in [&layout.unit, &layout.bin, &layout.config, &layout.policy]
        .into_iter()
        .chain(scripts)
    {
        match fs::remove_file(p) {
            Ok(()) => eprintln!("uninstall: removed {}", p.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                eprintln!("uninstall: {} was not there", p.display())
            }
            Err(e) => return Err(e).with_context(|| format!("removing {}", p.display())),
        }
    }
    for page in fs::read_dir(&layout.man1).into_iter().flatten().flatten() {
        let name = page.file_name();
        let name = name.to_string_lossy();
        if name == "portwatch.1" || (name.starts_with("portwatch-") && name.ends_with(".1")) {
            fs::remove_file(page.path())
                .with_context(|| format!("removing {}", page.path().display()))?;
            eprintln!("uninstall: removed {}", page.path().display());
        }
    }
    if let Some(dir) = layout.config.parent() {
        let _ = fs::remove_dir(dir); // only if empty
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn installs_under_destdir_and_uninstalls() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        if !root.join("target/release/portwatch").exists() {
            panic!("build the daemon first (cargo xtask build)");
        }
        let dest = tempfile::tempdir().unwrap();
        let layout = Layout::new(Path::new("/usr/local"), Some(dest.path()));
        install(root, &layout).unwrap();
        let unit =
            fs::read_to_string(dest.path().join("etc/systemd/system/portwatch.service")).unwrap();
        assert!(unit.contains(
            "ExecStart=/usr/local/bin/portwatch run --config /etc/portwatch/portwatch.toml"
        ));
        let mode = |p: &str| {
            fs::metadata(dest.path().join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("usr/local/bin/portwatch"), 0o755);
        assert_eq!(mode("etc/portwatch/portwatch.toml"), 0o640);
        let bash = fs::read_to_string(
            dest.path()
                .join("usr/local/share/bash-completion/completions/portwatch"),
        )
        .unwrap();
        assert!(bash.contains("tail") && bash.contains("--listening"));
        assert_eq!(mode("usr/local/share/zsh/site-functions/_portwatch"), 0o644);
        assert_eq!(mode("usr/local/share/man/man1/portwatch-top.1"), 0o644);
        // The page renders (where the machine has `man`; a minimal container may not).
        if Path::new("/usr/bin/man").exists() {
            let out = Command::new("man")
                .arg("-l")
                .arg(dest.path().join("usr/local/share/man/man1/portwatch-who.1"))
                .env("MANPAGER", "cat")
                .env("MANWIDTH", "80")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && text.contains("--listening"),
                "{out:?}"
            );
        }
        // Under a destdir the policy is the template, and it is a valid policy.
        let policy = dest.path().join("etc/portwatch/policy.toml");
        let check = Command::new(root.join("target/release/portwatch"))
            .arg("check-policy")
            .arg(&policy)
            .output()
            .unwrap();
        assert!(check.status.success(), "{check:?}");
        // A second install keeps an edited config.
        fs::write(
            dest.path().join("etc/portwatch/portwatch.toml"),
            "attach = \"kprobe\"\n",
        )
        .unwrap();
        install(root, &layout).unwrap();
        assert_eq!(
            fs::read_to_string(dest.path().join("etc/portwatch/portwatch.toml")).unwrap(),
            "attach = \"kprobe\"\n"
        );
        uninstall(&layout).unwrap();
        assert!(!dest.path().join("usr/local/bin/portwatch").exists());
        assert!(!dest.path().join("etc/portwatch").exists());
        assert!(
            !dest
                .path()
                .join("usr/local/share/bash-completion/completions/portwatch")
                .exists()
        );
        assert!(
            !dest
                .path()
                .join("usr/local/share/man/man1/portwatch.1")
                .exists()
        );
    }
}
