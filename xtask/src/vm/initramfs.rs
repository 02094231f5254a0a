//! The VM's root file system: busybox, the daemon, the scenario client, the load generator and
//! the VM runner, with the shared libraries they need, and an init that runs the scenarios.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use super::debian::Arch;
use crate::process::{self, set_mode, stdout_text};

/// The binaries the VM runs, from `target/[<triple>/]release`.
const BINARIES: [&str; 4] = [
    "portwatch",
    "portwatch-scenario",
    "portwatch-vm-runner",
    "portwatch-loadgen",
];

/// Lines the runner writes on a console it shares with the kernel start with this, so that the
/// host can pick them out.
pub const RESULT_PREFIX: &str = "@@portwatch ";

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /run
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox --install -s /bin
mount -t tmpfs tmpfs /tmp
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
ip link set lo up
export PATH=/bin:/usr/bin PORTWATCH_BIN=/usr/bin/portwatch PORTWATCH_SCENARIO=/usr/bin/portwatch-scenario
export PORTWATCH_TIMEOUT_SCALE=@SCALE@ PORTWATCH_VM_SYSCALL_CALLS=@CALLS@
echo "vm-init: kernel $(uname -r), running scenarios"
/usr/bin/portwatch-vm-runner @OUT@ @STRATEGIES@
echo "vm-init: runner exited $?"
poweroff -f
"#;

/// What differs between the architectures' VMs.
pub struct Layout<'a> {
    pub arch: Arch,
    /// Where the runner writes its results (a serial port, or `console:` and a device it
    /// shares with the kernel's console).
    pub out: &'a str,
    /// Multiplies the tests' timeouts: the emulation is slower than the host.
    pub timeout_scale: u32,
    /// Calls per run of the unrelated-syscall timing loops.
    pub syscall_calls: u32,
    pub busybox: &'a Path,
    pub bin: &'a Path,
}

/// Builds `dir/initramfs.cpio`.
pub fn build(dir: &Path, layout: &Layout, strategies: &[&str]) -> Result<PathBuf> {
    let stage = dir.join("initramfs");
    if stage.exists() {
        fs::remove_dir_all(&stage)?;
    }
    for d in ["bin", "usr/bin", "lib", "etc", "proc", "sys", "dev", "tmp"] {
        fs::create_dir_all(stage.join(d))?;
    }
    fs::copy(layout.busybox, stage.join("bin/busybox"))
        .with_context(|| format!("copying {} (busybox-static)", layout.busybox.display()))?;
    let init = stage.join("init");
    fs::write(
        &init,
        INIT.replace("@STRATEGIES@", &strategies.join(" "))
            .replace("@OUT@", layout.out)
            .replace("@SCALE@", &layout.timeout_scale.to_string())
            .replace("@CALLS@", &layout.syscall_calls.to_string()),
    )?;
    set_mode(&init, 0o755)?;
    fs::write(stage.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    fs::write(stage.join("etc/group"), "root:x:0:\n")?;
    for name in BINARIES {
        let src = layout.bin.join(name);
        fs::copy(&src, stage.join("usr/bin").join(name))
            .with_context(|| format!("copying {} (build it first)", src.display()))?;
        let libs = match layout.arch {
            a if a == Arch::host() => host_libraries(&src)?,
            Arch::Arm64 => cross_libraries(&src, Path::new("/usr/aarch64-linux-gnu/lib"))?,
            Arch::Amd64 => bail!("building an amd64 VM on an arm64 host is not supported"),
        };
        for (lib, dst) in libs {
            let dst = stage.join(dst.strip_prefix("/").unwrap_or(&dst));
            if let Some(parent) = dst.parent() {
                fs::create_dir_all(parent)?;
            }
            fs::copy(&lib, &dst).with_context(|| format!("copying {}", lib.display()))?;
        }
    }
    let cpio = dir.join("initramfs.cpio");
    process::run(
        Command::new("sh")
            .current_dir(&stage)
            .arg("-c")
            .arg(format!(
                "find . | cpio --quiet -o -H newc > {}",
                cpio.display()
            )),
    )
    .context("building the initramfs with cpio")?;
    Ok(cpio)
}

/// The dynamic libraries a host binary needs, from ldd: (file, path in the VM).
fn host_libraries(binary: &Path) -> Result<Vec<(PathBuf, PathBuf)>> {
    let text = stdout_text(Command::new("ldd").arg(binary))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=> ") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .map(|p| (p.clone(), p))
        .collect())
}

/// The libraries a cross-built binary names (its `NEEDED` entries and its interpreter), from the
/// cross toolchain's `sysroot_lib`; they go to /lib, which the loader always searches.
fn cross_libraries(binary: &Path, sysroot_lib: &Path) -> Result<Vec<(PathBuf, PathBuf)>> {
    let dynamic = stdout_text(Command::new("readelf").args(["-d", "-l", "-W"]).arg(binary))?;
    let mut libs = Vec::new();
    for line in dynamic.lines() {
        if let Some(name) = line
            .split_once("Shared library: [")
            .and_then(|(_, rest)| rest.split_once(']'))
            .map(|(name, _)| name)
        {
            libs.push((sysroot_lib.join(name), Path::new("/lib").join(name)));
        } else if let Some(interp) = line
            .split_once("Requesting program interpreter: ")
            .and_then(|(_, rest)| rest.split_once(']'))
            .map(|(path, _)| PathBuf::from(path))
        {
            let name = interp
                .file_name()
                .context("interpreter without a file name")?;
            libs.push((sysroot_lib.join(name), interp.clone()));
        }
    }
    if libs.is_empty() {
        bail!("readelf found no libraries in {}", binary.display());
    }
    Ok(libs)
}
