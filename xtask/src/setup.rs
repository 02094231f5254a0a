//! `cargo xtask setup`: make this machine able to build the eBPF programs. Idempotent: each step
//! checks first and says whether it did anything.
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::process::{self, stdout_text, succeeds};

/// The toolchain whose LLVM (22) the bpf-linker below links against (docs/architecture.md, build facts).
pub const EBPF_TOOLCHAIN: &str = "1.95.0";
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const APT_PACKAGES: [&str; 4] = [
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];

pub fn run() -> Result<()> {
    toolchain()?;
    rust_src()?;
    bpf_linker()?;
    Ok(())
}

fn toolchain() -> Result<()> {
    if succeeds(Command::new("rustup").args(["run", EBPF_TOOLCHAIN, "rustc", "--version"])) {
        eprintln!("setup: toolchain {EBPF_TOOLCHAIN} present");
        return Ok(());
    }
    process::run(Command::new("rustup").args([
        "toolchain",
        "install",
        EBPF_TOOLCHAIN,
        "--profile",
        "minimal",
    ]))
    .context("the eBPF build needs rustc 1.95 (LLVM 22, matching bpf-linker)")
}

fn rust_src() -> Result<()> {
    let installed = stdout_text(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        EBPF_TOOLCHAIN,
    ]))
    .unwrap_or_default();
    if installed.lines().any(|l| l.trim() == "rust-src") {
        eprintln!("setup: rust-src present for {EBPF_TOOLCHAIN}");
        return Ok(());
    }
    process::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        EBPF_TOOLCHAIN,
    ]))
}

fn bpf_linker() -> Result<()> {
    // Not installed yet reads as an empty version.
    let version = stdout_text(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if version.contains(BPF_LINKER_VERSION) {
        eprintln!("setup: {} present", version.trim());
        return Ok(());
    }
    apt_packages()?;
    process::run(
        Command::new("cargo")
            .args([
                "install",
                "--locked",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", LLVM_PREFIX),
    )
    .context("installing bpf-linker")
}

/// What `vm-test` needs: qemu, a static busybox for the initramfs, cpio to pack it.
pub fn vm_packages() -> Result<()> {
    install_packages(&["qemu-system-x86", "busybox-static", "cpio"])
}

/// What an arm64 VM needs on an amd64 host: the emulator, a cross C compiler and linker (the
/// daemon's SQLite is C), and Rust's standard library for the target.
pub fn arm64_packages(root: &std::path::Path) -> Result<()> {
    install_packages(&["qemu-system-arm", "gcc-aarch64-linux-gnu"])?;
    const TARGET: &str = "aarch64-unknown-linux-gnu";
    let installed = stdout_text(Command::new("rustup").current_dir(root).args([
        "target",
        "list",
        "--installed",
    ]))
    .unwrap_or_default();
    if installed.lines().any(|l| l.trim() == TARGET) {
        return Ok(());
    }
    process::run(
        Command::new("rustup")
            .current_dir(root)
            .args(["target", "add", TARGET]),
    )
}

/// What the integration tests use besides the daemon: bpftool (to detach a program, proving
/// blinding is detected), ip (a scenario's own network namespace), tmux (the terminal `top` is
/// drawn in and read back from), netbase (/etc/services, the names `who` takes), and Debian's
/// Prometheus server and node_exporter (they scrape the daemon's metrics in tests/tests/metrics.rs;
/// their services are kept from starting on install, the tests run their own on loopback).
pub fn test_packages() -> Result<()> {
    install_packages(&["bpftool", "iproute2", "tmux", "netbase"])?;
    let _no_services = NoServiceStarts::new()?;
    install_packages(&["prometheus", "prometheus-node-exporter"])
}

/// The peers `bench` measures portwatch against. Debian's auditd package starts auditd.service on
/// install, which enables audit until reboot (see bench::AuditQuiet): only a bench that runs auditd
/// may install it.
/// The peers and the real workload of `cargo xtask bench`. nginx's package would start its
/// service on port 80; a policy-rc.d keeps it (and auditd's) from starting while installing.
pub fn bench_packages(auditd: bool) -> Result<()> {
    let mut packages = vec!["bpftrace", "nginx-light", "apache2-utils"];
    if auditd {
        packages.push("auditd");
    }
    let _no_services = NoServiceStarts::new()?;
    install_packages(&packages)
}

/// `/usr/sbin/policy-rc.d` answering "not now" (101) to every service start, while it lives;
/// one that was already there is left alone.
struct NoServiceStarts(Option<&'static str>);

impl NoServiceStarts {
    const PATH: &'static str = "/usr/sbin/policy-rc.d";

    fn new() -> Result<Self> {
        if std::path::Path::new(Self::PATH).exists() {
            return Ok(Self(None));
        }
        std::fs::write(
            Self::PATH,
            "#!/bin/sh\n# cargo xtask: no service starts while installing\nexit 101\n",
        )?;
        crate::process::set_mode(std::path::Path::new(Self::PATH), 0o755)?;
        Ok(Self(Some(Self::PATH)))
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if let Some(p) = self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn apt_packages() -> Result<()> {
    install_packages(&APT_PACKAGES)
}

fn install_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !stdout_text(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .unwrap_or_default()
                .contains("install ok installed")
        })
        .collect();
    if missing.is_empty() {
        eprintln!("setup: apt packages present: {}", packages.join(" "));
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "missing packages {}: run `cargo xtask setup` as root (apt-get)",
            missing.join(" ")
        );
    }
    process::run(Command::new("apt-get").args(["update", "-qq"]))?;
    process::run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}
