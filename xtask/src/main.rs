//! Developer and operator tasks: `cargo xtask setup | build | run | test`.
mod bench;
mod install;
mod package;
mod process;
mod setup;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Result;
use clap::{Parser, Subcommand};
use process::{cargo, run};

#[derive(Parser)]
#[command(name = "xtask", about = "portwatch developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building the eBPF programs needs (idempotent): LLVM 22 packages, rust-src,
    /// bpf-linker.
    Setup,
    /// Set up, then build the daemon (release) with the eBPF object embedded.
    Build,
    /// Set up, build, and run the daemon in the foreground (JSON events on stdout). Needs root.
    Run {
        /// Arguments for `portwatch run`, e.g. `-- --log-file /tmp/events.jsonl`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Measure portwatch against no tracer, bpftrace and auditd (prints a table; never fails on a
    /// figure). Running auditd leaves every task started afterwards with an audit context until
    /// reboot. `--smoke` runs each path but auditd's for a few seconds, and starts no auditd.
    Bench {
        #[arg(long)]
        smoke: bool,
        /// Only these tracers besides "no tracer" (repeatable): portwatch, portwatch-syscalls,
        /// bpftrace, auditd. Without auditd the host keeps no audit contexts.
        #[arg(long = "tracer", value_name = "NAME")]
        tracers: Vec<String>,
        /// Only these workloads (repeatable): getppid, read-zero, tcp-bind, udp-bind,
        /// tcp-connect, listen-churn, nginx+ab. The max-rate and RSS runs need every workload.
        #[arg(long = "workload", value_name = "NAME")]
        workloads: Vec<String>,
        /// Alternating rounds (the tables give medians); 5 unless --smoke.
        #[arg(long)]
        rounds: Option<usize>,
    },
    /// Install the daemon, its systemd unit, a default config and an empty policy.
    Install {
        #[arg(long, default_value = "/usr/local")]
        prefix: PathBuf,
        /// Stage everything under this directory (packaging).
        #[arg(long)]
        destdir: Option<PathBuf>,
    },
    /// Build target/debian/portwatch_VERSION_ARCH.deb (install it with `apt install ./PATH`).
    Package,
    /// Remove what `install` put in place.
    Uninstall {
        #[arg(long, default_value = "/usr/local")]
        prefix: PathBuf,
        #[arg(long)]
        destdir: Option<PathBuf>,
    },
    /// Boot Debian's stock kernels in qemu and run the scenarios with every attach strategy
    /// there: by default the oldest and newest supported amd64 kernels (bullseye's 5.10 and
    /// trixie's 6.12).
    VmTest {
        /// Boot this kernel image (host architecture) instead.
        #[arg(long, value_name = "PATH")]
        kernel: Option<std::path::PathBuf>,
        /// Boot this Debian release's cloud kernel: bullseye, bookworm or trixie, with `-arm64`
        /// for arm64 (repeatable).
        #[arg(long = "release", value_name = "SUITE[-ARCH]")]
        releases: Vec<String>,
        /// Every supported kernel: 5.10, 6.1 and 6.12 on amd64, 6.1 and 6.12 on arm64; writes the table
        /// to target/vm/matrix.md.
        #[arg(long)]
        matrix: bool,
    },
    /// Set up, check formatting and lints, build, and run every test: unit tests, integration tests
    /// that load the real programs into the running kernel (run as root), and `vm-test`.
    Test {
        /// Skip `cargo fmt --check` and clippy.
        #[arg(long)]
        no_lint: bool,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.task {
        Task::Setup => setup::run(),
        Task::Build => {
            setup::run()?;
            build(&root)
        }
        Task::Run { args } => {
            setup::run()?;
            build(&root)?;
            run(Command::new(root.join("target/release/portwatch"))
                .arg("run")
                .args(&args))
        }
        Task::Install { prefix, destdir } => {
            setup::run()?;
            build(&root)?;
            install::install(&root, &install::Layout::new(&prefix, destdir.as_deref()))
        }
        Task::Package => {
            setup::run()?;
            build(&root)?;
            package::package(&root).map(|_| ())
        }
        Task::Uninstall { prefix, destdir } => {
            install::uninstall(&install::Layout::new(&prefix, destdir.as_deref()))
        }
        Task::Bench {
            smoke,
            tracers,
            workloads,
            rounds,
        } => {
            let choice = bench::Choice::new(smoke, &tracers, &workloads, rounds)?;
            setup::run()?;
            build(&root)?;
            bench::run(&root, &choice)
        }
        Task::VmTest {
            kernel,
            releases,
            matrix,
        } => {
            let kernels = vm::Kernels::from_args(kernel, &releases, matrix)?;
            setup::run()?;
            build(&root)?;
            vm::run(&root, kernels)
        }
        Task::Test { no_lint } => {
            setup::run()?;
            if !no_lint {
                lint(&root)?;
            }
            build(&root)?;
            // tests/tests/package.rs installs, runs, removes and purges it.
            package::package(&root)?;
            setup::test_packages()?;
            cargo(
                &root,
                &[
                    "test",
                    "--release",
                    "--workspace",
                    "--exclude",
                    "portwatch-ebpf",
                ],
                &[(
                    "PORTWATCH_BIN",
                    root.join("target/release/portwatch").as_os_str(),
                )],
            )?;
            // The fentry and kprobe strategies cannot run on the build machines' kernel: prove them
            // on a stock kernel in a VM, as part of every test run.
            vm::run(&root, vm::Kernels::Releases(vm::DEFAULT.to_vec()))?;
            // Keep the benchmark harness from rotting: every path for a few seconds, no figures judged.
            // The smoke leaves auditd out, so a test run leaves no audit contexts on this host.
            bench::run(&root, &bench::Choice::smoke())
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn build(root: &Path) -> Result<()> {
    cargo(
        root,
        &[
            "build",
            "--release",
            "--package",
            "portwatch",
            "--package",
            "portwatch-tests",
            "--bins",
        ],
        &[],
    )
}

fn lint(root: &Path) -> Result<()> {
    cargo(root, &["fmt", "--all", "--check"], &[])?;
    cargo(
        root,
        &[
            "clippy",
            "--release",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;
    // The eBPF crate only builds for the BPF target, with the toolchain bpf-linker matches.
    run(Command::new("rustup")
        .current_dir(root.join("portwatch-ebpf"))
        .args([
            "run",
            setup::EBPF_TOOLCHAIN,
            "cargo",
            "clippy",
            "--release",
            "--target",
            "bpfel-unknown-none",
        ])
        .args(["-Z", "build-std=core", "--", "-D", "warnings"]))
}
