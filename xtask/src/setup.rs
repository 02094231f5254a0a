//! `cargo xtask setup`: make this machine able to build the eBPF programs. Idempotent: each step
//! checks first and says whether it did anything.
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

/// The toolchain whose LLVM (22) the bpf-linker below links against (DESIGN.md).
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

fn quiet(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn output(cmd: &mut Command) -> String {
    cmd.stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

pub fn must(cmd: &mut Command) -> Result<()> {
    eprintln!("setup: running {cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn toolchain() -> Result<()> {
    if quiet(Command::new("rustup").args(["run", EBPF_TOOLCHAIN, "rustc", "--version"])) {
        eprintln!("setup: toolchain {EBPF_TOOLCHAIN} present");
        return Ok(());
    }
    must(Command::new("rustup").args([
        "toolchain",
        "install",
        EBPF_TOOLCHAIN,
        "--profile",
        "minimal",
    ]))
    .context("the eBPF build needs rustc 1.95 (LLVM 22, matching bpf-linker)")
}

fn rust_src() -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        EBPF_TOOLCHAIN,
    ]));
    if installed.lines().any(|l| l.trim() == "rust-src") {
        eprintln!("setup: rust-src present for {EBPF_TOOLCHAIN}");
        return Ok(());
    }
    must(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        EBPF_TOOLCHAIN,
    ]))
}

fn bpf_linker() -> Result<()> {
    let version = output(Command::new("bpf-linker").arg("--version"));
    if version.contains(BPF_LINKER_VERSION) {
        eprintln!("setup: {} present", version.trim());
        return Ok(());
    }
    apt_packages()?;
    must(
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

/// What the integration tests use besides the daemon: bpftool (to detach a program, proving
/// blinding is detected) and ip (a scenario's own network namespace).
pub fn test_packages() -> Result<()> {
    install_packages(&["bpftool", "iproute2"])
}

/// The peers `bench` measures portwatch against.
pub fn bench_packages() -> Result<()> {
    install_packages(&["bpftrace", "auditd"])
}

fn apt_packages() -> Result<()> {
    install_packages(&APT_PACKAGES)
}

fn install_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
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
    must(Command::new("apt-get").args(["update", "-qq"]))?;
    must(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}
