//! `cargo xtask package`: `target/debian/portwatch_VERSION_ARCH.deb`, made with `dpkg-deb` from the
//! files `cargo xtask install` lays out, placed as a Debian package places them (`Layout::package`).
//!
//! The maintainer scripts create the state and log directories and write a policy of what listens
//! at install time, never enable or start the service, stop and disable it on remove, and leave
//! the config, the policy and the history behind until purge.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    install::{self, Layout},
    process::{output, run, set_mode},
};

const POSTINST: &str = r#"#!/bin/sh
# portwatch postinst: directories, a policy of what listens now; nothing enabled or started.
set -e
if [ "$1" = configure ]; then
    install -d -m 0700 /var/lib/portwatch
    install -d -m 0750 /var/log/portwatch
    if [ ! -e /etc/portwatch/policy.toml ]; then
        # What listens now is allowed; from here on, new listeners alert. Where sockets cannot be
        # listed (a chroot), the template, which allows nothing.
        if ! /usr/bin/portwatch baseline > /etc/portwatch/policy.toml.dpkg-tmp 2>/dev/null; then
            cp /usr/share/portwatch/policy.toml /etc/portwatch/policy.toml.dpkg-tmp
        fi
        chmod 0640 /etc/portwatch/policy.toml.dpkg-tmp
        mv /etc/portwatch/policy.toml.dpkg-tmp /etc/portwatch/policy.toml
    fi
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
        # An upgrade restarts a daemon that was running; a first install starts nothing.
        if [ -n "$2" ]; then
            systemctl try-restart portwatch.service || true
        fi
    fi
fi
exit 0
"#;

const PRERM: &str = r#"#!/bin/sh
# portwatch prerm: a removed package leaves no service running or enabled.
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    systemctl stop portwatch.service || true
    systemctl disable portwatch.service >/dev/null 2>&1 || true
fi
exit 0
"#;

const POSTRM: &str = r#"#!/bin/sh
# portwatch postrm: remove keeps the config, the policy and the history; purge removes them.
set -e
if [ "$1" = purge ]; then
    rm -f /etc/portwatch/policy.toml /etc/portwatch/policy.toml.dpkg-tmp
    rmdir /etc/portwatch 2>/dev/null || true
    rm -rf /var/lib/portwatch /var/log/portwatch /run/portwatch
fi
if [ "$1" = remove ] || [ "$1" = purge ]; then
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
    fi
fi
exit 0
"#;

const DESCRIPTION: &str = "eBPF port event daemon: who bound, listened on or connected from a port
 portwatch traces the kernel's bind, listen, connect and release paths with eBPF,
 attributes each event to a process (executable, command line, user, systemd unit,
 container) and writes them as JSON lines. It keeps a history of which process held
 which port (`portwatch who PORT`), alerts on listeners a policy does not allow, and
 shows live ports (`portwatch tail`, `portwatch top`).
 .
 The service is installed but neither enabled nor started:
   systemctl enable --now portwatch";

/// Builds the package from the release binary; returns its path.
pub fn package(root: &Path) -> Result<PathBuf> {
    let out = root.join("target/debian");
    let stage = out.join("root");
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("clearing {}", stage.display()))?;
    }
    let layout = Layout::package(&stage);
    install::install(root, &layout)?;
    // Debian's manual pages are compressed.
    for page in fs::read_dir(layout.man1())?.flatten() {
        run(Command::new("gzip").arg("-9n").arg(page.path()))?;
    }
    let docs = stage.join("usr/share/doc/portwatch");
    fs::create_dir_all(&docs)?;
    fs::write(docs.join("copyright"), copyright())?;

    let binary = root.join("target/release/portwatch");
    let version = String::from_utf8(output(Command::new(&binary).arg("--version"))?)?
        .trim()
        .strip_prefix("portwatch ")
        .context("`portwatch --version` did not say `portwatch VERSION`")?
        .to_string();
    let arch = String::from_utf8(output(Command::new("dpkg").arg("--print-architecture"))?)?
        .trim()
        .to_string();
    let glibc = newest_glibc(&binary)?;

    let debian = stage.join("DEBIAN");
    fs::create_dir_all(&debian)?;
    let control = format!(
        "Package: portwatch\nVersion: {version}\nArchitecture: {arch}\n\
         Maintainer: portwatch developers <portwatch@localhost>\n\
         Installed-Size: {size}\nDepends: libc6 (>= {glibc}), libgcc-s1, util-linux\n\
         Section: net\nPriority: optional\nDescription: {DESCRIPTION}\n",
        size = installed_kib(&stage)?,
    );
    fs::write(debian.join("control"), control)?;
    fs::write(debian.join("conffiles"), "/etc/portwatch/portwatch.toml\n")?;
    for (name, text) in [("postinst", POSTINST), ("prerm", PRERM), ("postrm", POSTRM)] {
        let p = debian.join(name);
        fs::write(&p, text)?;
        set_mode(&p, 0o755)?;
    }
    fs::write(debian.join("md5sums"), md5sums(&stage)?)?;

    let deb = out.join(format!("portwatch_{version}_{arch}.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&stage)
        .arg(&deb))?;
    eprintln!(
        "package: {} (install it with: apt install {})",
        deb.display(),
        deb.display()
    );
    Ok(deb)
}

fn copyright() -> String {
    "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
     Upstream-Name: portwatch\n\n\
     Files: *\nCopyright: the portwatch developers\nLicense: MIT or Apache-2.0\n \
     On Debian systems the Apache License 2.0 is in /usr/share/common-licenses/Apache-2.0.\n"
        .to_string()
}

/// The newest `GLIBC_x.y` symbol version the binary needs: its `libc6` dependency.
fn newest_glibc(binary: &Path) -> Result<String> {
    let dump = String::from_utf8_lossy(&output(Command::new("objdump").arg("-T").arg(binary))?)
        .into_owned();
    let mut versions: Vec<Vec<u32>> = dump
        .split("GLIBC_")
        .skip(1)
        .filter_map(|rest| {
            let v: String = rest
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            let parts: Vec<u32> = v.split('.').filter_map(|p| p.parse().ok()).collect();
            (!parts.is_empty()).then_some(parts)
        })
        .collect();
    versions.sort();
    match versions.last() {
        Some(v) => Ok(v.iter().map(u32::to_string).collect::<Vec<_>>().join(".")),
        None => bail!("objdump -T {} names no GLIBC_ version", binary.display()),
    }
}

/// Every regular file under `stage` but DEBIAN/, relative to it.
fn files(stage: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut dirs = vec![stage.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            if path == stage.join("DEBIAN") {
                continue;
            }
            if entry.file_type()?.is_dir() {
                dirs.push(path);
            } else {
                out.push(path.strip_prefix(stage)?.to_path_buf());
            }
        }
    }
    out.sort();
    Ok(out)
}

fn installed_kib(stage: &Path) -> Result<u64> {
    let mut bytes = 0;
    for f in files(stage)? {
        bytes += fs::metadata(stage.join(f))?.len();
    }
    Ok(bytes.div_ceil(1024))
}

fn md5sums(stage: &Path) -> Result<String> {
    let mut cmd = Command::new("md5sum");
    cmd.current_dir(stage);
    for f in files(stage)? {
        cmd.arg(f);
    }
    Ok(String::from_utf8(output(&mut cmd)?)?)
}
