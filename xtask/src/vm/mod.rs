//! `cargo xtask vm-test`: boot Debian's stock cloud kernels under qemu (TCG) with a busybox
//! initramfs holding the daemon, the scenario client and the VM runner; run every shared scenario
//! with `--attach fentry`, `kprobe`, `tracepoint` and `auto`; bring the results back over a serial
//! port and check them with the same assertions as the host tests.
//!
//! By default it boots the oldest and newest supported amd64 kernels (what `cargo xtask test` and
//! CI run); `--matrix` boots every supported kernel, arm64 included, and prints (and writes to
//! `target/vm/matrix.md`) a table of kernel × strategy × hook family.
mod debian;
mod initramfs;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    panic::{AssertUnwindSafe, catch_unwind},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use portwatch_tests::scenarios::{self, Ctx, Strategy};
use serde_json::Value;

use debian::Arch;
pub use debian::{DEFAULT, Release};

use crate::{
    process::{self, wait_exit},
    setup,
};

/// `socket-hooks` is the tracepoint strategy without syscall tracepoints (the default
/// configuration there): from 6.10 on the socket hooks report calls; before, the daemon keeps the
/// syscall tracepoints.
const STRATEGIES: [&str; 5] = ["fentry", "kprobe", "tracepoint", "socket-hooks", "auto"];
/// The forced strategies, best first: what `auto` must take is the first of these that works.
const LADDER: [&str; 3] = ["fentry", "kprobe", "tracepoint"];
/// The hook families a scenario's events exercise, in table order.
const FAMILIES: [&str; 6] = portwatch_tests::schema::HOOK_FAMILIES;
/// Hard limit for one VM run; TCG is slow, but a hang must not eat CI's 90 minutes.
const VM_TIMEOUT: Duration = Duration::from_secs(25 * 60);

/// Which kernels to boot.
pub enum Kernels {
    /// A kernel image given on the command line, for the host's architecture.
    File(PathBuf),
    /// Debian releases' cloud kernels, fetched and cached.
    Releases(Vec<Release>),
}

impl Kernels {
    /// From `vm-test`'s arguments: `--kernel`, `--release`s, `--matrix`, or the default pair.
    pub fn from_args(kernel: Option<PathBuf>, releases: &[String], matrix: bool) -> Result<Self> {
        Ok(match (kernel, matrix) {
            (Some(_), true) => bail!("--kernel and --matrix exclude each other"),
            (Some(_), false) if !releases.is_empty() => {
                bail!("--kernel and --release exclude each other")
            }
            (Some(k), false) => Kernels::File(k),
            (None, true) => Kernels::Releases(debian::MATRIX.to_vec()),
            (None, false) if releases.is_empty() => Kernels::Releases(debian::DEFAULT.to_vec()),
            (None, false) => Kernels::Releases(
                releases
                    .iter()
                    .map(|r| Release::parse(r))
                    .collect::<Result<_>>()?,
            ),
        })
    }
}

/// One kernel's outcome.
struct KernelRun {
    release: String,
    arch: Arch,
    /// strategy → family → verdict; and the strategy auto took.
    cells: BTreeMap<&'static str, BTreeMap<&'static str, String>>,
    auto_took: String,
    failures: Vec<String>,
}

pub fn run(root: &Path, kernels: Kernels) -> Result<()> {
    setup::vm_packages()?;
    let vm_dir = root.join("target/vm");
    fs::create_dir_all(&vm_dir)?;
    let targets: Vec<(String, Arch, PathBuf)> = match kernels {
        Kernels::File(k) => {
            if !k.is_file() {
                bail!("--kernel {}: no such file", k.display());
            }
            vec![("custom".into(), Arch::host(), k)]
        }
        Kernels::Releases(releases) => releases
            .into_iter()
            .map(|r| Ok((r.name(), r.arch, debian::kernel(&vm_dir, r)?)))
            .collect::<Result<_>>()?,
    };
    let mut runs = Vec::new();
    for (name, arch, kernel) in &targets {
        eprintln!("vm-test: {name}: kernel {}", kernel.display());
        let dir = vm_dir.join(name);
        fs::create_dir_all(&dir)?;
        let results = boot_one(root, &vm_dir, &dir, *arch, kernel)?;
        runs.push(check(*arch, &results));
    }
    report(&vm_dir, &runs)
}

/// Builds what the VM runs for `arch`, boots `kernel` and returns the runner's result lines.
fn boot_one(
    root: &Path,
    vm_dir: &Path,
    dir: &Path,
    arch: Arch,
    kernel: &Path,
) -> Result<Vec<Value>> {
    let host_busybox = PathBuf::from("/bin/busybox");
    let (bin, busybox, out, scale, calls) = if arch == Arch::host() {
        // `cargo xtask` built the host's binaries already.
        (
            root.join("target/release"),
            host_busybox,
            "/dev/ttyS1".to_string(),
            20,
            500_000,
        )
    } else {
        if arch != Arch::Arm64 {
            bail!("only arm64 VMs are cross-built (from an amd64 host)");
        }
        setup::arm64_packages(root)?;
        cross_build(root, arch)?;
        let busybox = debian::package(
            vm_dir,
            Release {
                suite: "bookworm",
                arch,
            },
            "busybox-static",
        )?
        .join("bin/busybox");
        (
            root.join("target").join(arch.rust_target()).join("release"),
            busybox,
            // virt has one UART, the kernel's console: results share it, prefixed.
            "console:/dev/ttyAMA0".to_string(),
            60,
            20_000,
        )
    };
    let layout = initramfs::Layout {
        arch,
        out: &out,
        timeout_scale: scale,
        syscall_calls: calls,
        busybox: &busybox,
        bin: &bin,
    };
    let cpio = initramfs::build(dir, &layout, &STRATEGIES)?;
    boot(dir, arch, kernel, &cpio)
}

/// Cross-builds the daemon and the test binaries for `arch`; the eBPF object is built again
/// for that architecture (its kprobe register layout differs).
fn cross_build(root: &Path, arch: Arch) -> Result<()> {
    let linker = "aarch64-linux-gnu-gcc";
    process::cargo(
        root,
        &[
            "build",
            "--release",
            "--target",
            arch.rust_target(),
            "--package",
            "portwatch",
            "--package",
            "portwatch-tests",
            "--bins",
        ],
        &[
            (
                "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER",
                linker.as_ref(),
            ),
            ("CC_aarch64_unknown_linux_gnu", linker.as_ref()),
        ],
    )
}

fn boot(dir: &Path, arch: Arch, kernel: &Path, initramfs: &Path) -> Result<Vec<Value>> {
    let console = dir.join("console.log");
    let results = dir.join("results.jsonl");
    let _ = fs::remove_file(&results);
    // -enable-kvm hangs on these machines (docs/architecture.md, build facts): software emulation only.
    let mut cmd = match arch {
        Arch::Amd64 => {
            let mut c = Command::new("qemu-system-x86_64");
            c.args(["-machine", "q35", "-cpu", "max"]);
            c
        }
        Arch::Arm64 => {
            let mut c = Command::new("qemu-system-aarch64");
            c.args(["-machine", "virt", "-cpu", "cortex-a72"]);
            c
        }
    };
    cmd.args(["-smp", "1", "-m", "1024", "-nodefaults", "-no-reboot"])
        .args(["-display", "none", "-monitor", "none"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()));
    let append = match arch {
        Arch::Amd64 => {
            cmd.arg("-serial")
                .arg(format!("file:{}", results.display()));
            "console=ttyS0 panic=-1 rdinit=/init"
        }
        Arch::Arm64 => "console=ttyAMA0 panic=-1 rdinit=/init quiet",
    };
    let mut child = cmd
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", append])
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let started = Instant::now();
    eprintln!(
        "vm-test: booted qemu (pid {}), console in {}",
        child.id(),
        console.display()
    );
    match wait_exit(&mut child, VM_TIMEOUT)? {
        Some(status) => eprintln!(
            "vm-test: qemu exited ({status}) after {:.0?}",
            started.elapsed()
        ),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "the VM did not finish within {VM_TIMEOUT:?}; console tail:\n{}",
                portwatch_tests::tail(&fs::read_to_string(&console).unwrap_or_default(), 3000)
            );
        }
    }
    let text = match arch {
        Arch::Amd64 => fs::read_to_string(&results).unwrap_or_default(),
        Arch::Arm64 => fs::read_to_string(&console).unwrap_or_default(),
    };
    let lines: Vec<Value> = text
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .map(|l| match l.find(initramfs::RESULT_PREFIX) {
            Some(at) => &l[at + initramfs::RESULT_PREFIX.len()..],
            None => l,
        })
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    if !lines.iter().any(|l| l["done"] == true) {
        bail!(
            "the VM runner did not finish; console tail:\n{}",
            portwatch_tests::tail(&fs::read_to_string(&console).unwrap_or_default(), 3000)
        );
    }
    Ok(lines)
}

/// Why `strategy` cannot work on this kernel, when the daemon refused it for a known reason the
/// kernel's version explains; anything else that did not start is a failure.
fn unsupported(
    arch: Arch,
    kernel: (u32, u32),
    strategy: &str,
    error: &str,
) -> Option<&'static str> {
    (strategy == "fentry"
        && arch == Arch::Arm64
        && kernel < (6, 4)
        && error.contains("cannot attach fentry/fexit programs"))
    .then_some("arm64 has no ftrace direct calls before 6.4")
}

/// The hook families a scenario's events exercise.
fn families_of(events: &[Value]) -> BTreeSet<&'static str> {
    events
        .iter()
        .filter_map(|e| match e["event"].as_str()? {
            "bind" if e["implicit"] == true => Some("implicit_bind"),
            "bind" => Some("bind"),
            "listen" => Some("listen"),
            "connect" => Some("connect"),
            "connect_result" => Some("handshake"),
            "close" => Some("release"),
            _ => None,
        })
        .collect()
}

/// Checks every (strategy, scenario) result of one kernel with the shared assertions, checks
/// that the strategies agree on each scenario's events, and prints the kernel's table.
fn check(arch: Arch, results: &[Value]) -> KernelRun {
    let kernel = results
        .iter()
        .find_map(|l| l["kernel"].as_str())
        .unwrap_or("?")
        .to_string();
    let mut failures = Vec::new();
    let mut verdicts: BTreeMap<(&str, &str), String> = BTreeMap::new();
    let mut cells: BTreeMap<&'static str, BTreeMap<&'static str, String>> = BTreeMap::new();
    let mut shapes: BTreeMap<&str, Vec<(&str, Vec<Value>)>> = BTreeMap::new();
    let summary = |strategy: &str| {
        results.iter().find(|l| {
            l["strategy"] == strategy && l.get("case").is_none() && l.get("parallel").is_none()
        })
    };
    // What auto must take: the best forced strategy the daemon could start with on this kernel.
    let best = LADDER
        .iter()
        .copied()
        .find(|s| summary(s).is_some_and(|l| l.get("error").is_none()));
    let mut auto_took = String::from("-");
    let mut unsupported_strategies = 0;
    let mut not_applicable = 0;
    for strategy in STRATEGIES {
        let family_cells = cells.entry(strategy).or_default();
        match summary(strategy) {
            None => failures.push(format!("{strategy}: no result from the VM")),
            Some(s) if s.get("error").is_some() => {
                let error = s["error"].as_str().unwrap_or("?");
                let cell =
                    match unsupported(arch, scenarios::kernel_version(&kernel), strategy, error) {
                        Some(reason) => format!("unsupported ({reason})"),
                        None => {
                            failures.push(format!("{strategy}: daemon did not start: {error}"));
                            "did not start".into()
                        }
                    };
                for fam in FAMILIES.iter().chain(&["scenarios"]) {
                    family_cells.insert(*fam, cell.clone());
                }
                if cell.starts_with("unsupported") {
                    unsupported_strategies += 1;
                }
                continue;
            }
            Some(s) => {
                if s["exit_ok"] != true {
                    failures.push(format!(
                        "{strategy}: daemon did not exit 0; stderr: {}",
                        s["stderr_tail"]
                    ));
                }
                if !s["schema_error"].is_null() {
                    failures.push(format!("{strategy}: schema: {}", s["schema_error"]));
                }
                if strategy == "auto" {
                    let took: BTreeSet<String> = ["bind", "listen", "connect", "release"]
                        .iter()
                        .map(|f| {
                            s["status"]["attach"][f]["strategy"]
                                .as_str()
                                .unwrap_or("?")
                                .to_string()
                        })
                        .collect();
                    auto_took = took.iter().cloned().collect::<Vec<_>>().join("+");
                    if Some(auto_took.as_str()) != best {
                        failures.push(format!(
                            "auto took {auto_took}, expected {} (the best strategy that started)",
                            best.unwrap_or("none")
                        ));
                    }
                }
            }
        }
        let expect = if strategy == "socket-hooks" {
            let took_calls = summary(strategy).is_some_and(|s| {
                s["status"]["attach"]["handshake"]["hooks"][0] == "cgroup:sock_ops_calls"
            });
            if scenarios::kernel_version(&kernel) >= (6, 10) && !took_calls {
                failures.push(
                    "socket-hooks: kept the syscall tracepoints on a 6.10+ kernel".to_string(),
                );
            }
            if took_calls {
                Strategy::SocketHooks
            } else {
                Strategy::Tracepoint
            }
        } else {
            Strategy::parse(strategy)
                .or_else(|| Strategy::parse(&auto_took))
                .unwrap_or(Strategy::Fentry)
        };
        let mut per_family: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        for case in scenarios::cases() {
            if !scenarios::applies(expect, case.name) {
                verdicts.insert((case.name, strategy), "n/a".to_string());
                not_applicable += 1;
                continue;
            }
            let r = results
                .iter()
                .find(|l| l["strategy"] == strategy && l["case"] == case.name);
            let mut families = BTreeSet::new();
            let verdict = match r {
                None => "missing".to_string(),
                Some(r) if r.get("error").is_some() => format!("error: {}", r["error"]),
                Some(r) => {
                    let events: Vec<Value> = r["events"].as_array().cloned().unwrap_or_default();
                    families = families_of(&events);
                    let ctx = Ctx {
                        strategy: expect,
                        parent_pid: r["parent_pid"].as_u64().unwrap_or(0) as u32,
                        cgroup: r["parent_cgroup"].as_str().map(str::to_string),
                        kernel: scenarios::kernel_version(&kernel),
                        // The runner and its clients share the VM's one network namespace.
                        netns: events
                            .first()
                            .and_then(|e| e["network"]["netns"].as_u64())
                            .unwrap_or(0),
                    };
                    let checked = catch_unwind(AssertUnwindSafe(|| {
                        (case.check)(&ctx, &case, &r["report"], &events)
                    }));
                    shapes
                        .entry(case.name)
                        .or_default()
                        .push((strategy, scenarios::shape(&events)));
                    match checked {
                        Ok(()) => "pass".to_string(),
                        Err(e) => format!(
                            "FAIL: {}",
                            e.downcast_ref::<String>()
                                .cloned()
                                .unwrap_or_else(|| "assertion failed".into())
                        ),
                    }
                }
            };
            for fam in families {
                let c = per_family.entry(fam).or_default();
                c.1 += 1;
                if verdict == "pass" {
                    c.0 += 1;
                }
            }
            if verdict != "pass" {
                failures.push(format!("{strategy} / {}: {verdict}", case.name));
            }
            verdicts.insert((case.name, strategy), verdict);
        }
        let own = scenarios::cases()
            .iter()
            .filter(|c| {
                verdicts
                    .get(&(c.name, strategy))
                    .is_some_and(|v| v == "pass")
            })
            .count();
        let applicable = scenarios::cases()
            .iter()
            .filter(|c| scenarios::applies(expect, c.name))
            .count();
        family_cells.insert("scenarios", format!("{own}/{applicable}"));
        for fam in FAMILIES {
            let cell = match per_family.get(fam) {
                None => "no scenario".to_string(),
                Some((p, n)) if p == n => format!("pass ({n})"),
                Some((p, n)) => format!("FAIL ({p}/{n})"),
            };
            family_cells.insert(fam, cell);
        }
    }
    for (case, per) in &shapes {
        if let Some((first_strategy, first)) = per.first() {
            for (s, shape) in &per[1..] {
                if shape != first {
                    failures.push(format!(
                        "{case}: {s} and {first_strategy} disagree:\n{s}: {shape:?}\n{first_strategy}: {first:?}"
                    ));
                }
            }
        }
    }
    println!(
        "\nVM kernel {kernel} ({}): scenario results per attach strategy\n",
        arch.debian()
    );
    println!("| scenario | {} |", STRATEGIES.join(" | "));
    println!("|---|{}", "---|".repeat(STRATEGIES.len()));
    for case in scenarios::cases() {
        let cells: Vec<&str> = STRATEGIES
            .iter()
            .map(
                |s| match verdicts.get(&(case.name, *s)).map(String::as_str) {
                    Some("pass") => "pass",
                    Some("n/a") => "n/a",
                    _ => "FAIL",
                },
            )
            .collect();
        println!("| {} | {} |", case.name, cells.join(" | "));
    }
    print_syscall_cost(results);
    println!(
        "\nBlocking connects in flight at once (30; a kretprobe tracks 10 here by default):\n"
    );
    for l in results.iter().filter(|l| l.get("parallel").is_some()) {
        let p = &l["parallel"];
        let strategy = l["strategy"].as_str().unwrap_or("?");
        let (n, logged, stale, full) = (
            p["connects"].as_u64().unwrap_or(0),
            p["logged"].as_u64().unwrap_or(0),
            p["pending_stale"].as_u64().unwrap_or(0),
            p["pending_table_full"].as_u64().unwrap_or(0),
        );
        println!(
            "{strategy}: {logged} logged, {stale} counted stale, {full} counted table-full, of {n}"
        );
        if logged + stale + full < n {
            failures.push(format!(
                "{strategy}: {} of {n} parallel connects neither logged nor counted",
                n - logged - stale - full
            ));
        }
    }
    match results.iter().find_map(|l| l["kernel_warnings"].as_array()) {
        None => failures.push("the VM sent no kernel log check".into()),
        Some(w) if !w.is_empty() => failures.push(format!(
            "the kernel logged warnings: {}",
            w.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" | ")
        )),
        Some(_) => {}
    }
    let total =
        (STRATEGIES.len() - unsupported_strategies) * scenarios::cases().len() - not_applicable;
    let passed = verdicts.values().filter(|v| *v == "pass").count();
    println!(
        "\nvm-test: {kernel}: {passed} passed, {} failed",
        total - passed
    );
    for f in &failures {
        eprintln!("vm-test: {kernel}: {f}");
    }
    KernelRun {
        release: kernel,
        arch,
        cells,
        auto_took,
        failures,
    }
}

/// Prints the kernel × strategy × family table, writes it to `target/vm/matrix.md`, and fails
/// when any kernel had a failure.
fn report(vm_dir: &Path, runs: &[KernelRun]) -> Result<()> {
    let mut table = format!(
        "| kernel | arch | strategy | {} | scenarios |\n|---|---|---|{}---:|\n",
        FAMILIES.join(" | "),
        "---|".repeat(FAMILIES.len())
    );
    for run in runs {
        for strategy in STRATEGIES {
            let label = if strategy == "auto" {
                format!("auto → {}", run.auto_took)
            } else {
                strategy.to_string()
            };
            let cells = &run.cells[strategy];
            let fams: Vec<&str> = FAMILIES
                .iter()
                .map(|f| cells.get(f).map(String::as_str).unwrap_or("-"))
                .collect();
            table += &format!(
                "| {} | {} | {label} | {} | {} |\n",
                run.release,
                run.arch.debian(),
                fams.join(" | "),
                cells.get("scenarios").map(String::as_str).unwrap_or("-")
            );
        }
    }
    println!("\nvm-test: kernels × strategies × hook families\n\n{table}");
    fs::write(vm_dir.join("matrix.md"), &table)?;
    let failed: usize = runs.iter().map(|r| r.failures.len()).sum();
    if failed == 0 {
        println!(
            "vm-test: every scenario passed with every strategy on {} kernel(s), and the strategies agree",
            runs.len()
        );
        Ok(())
    } else {
        bail!("{failed} VM check(s) failed (listed above)")
    }
}

/// What unrelated syscalls cost in the VM with no daemon (before and after the strategies ran)
/// and under each strategy. Printed, never judged: the VM is emulated, so only ratios mean
/// anything, and even those are rough.
fn print_syscall_cost(results: &[Value]) {
    let none: Vec<&Value> = results
        .iter()
        .filter(|l| l["syscall_cost"] == "none")
        .filter_map(|l| l.get("before").or_else(|| l.get("after")))
        .collect();
    let base = |key: &str| {
        let v: Vec<f64> = none.iter().filter_map(|c| c[key].as_f64()).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let (Some(getppid), Some(read)) = (base("getppid_ns"), base("read_zero_ns")) else {
        println!("\nvm-test: no syscall timings from the VM");
        return;
    };
    println!(
        "\nUnrelated syscalls in the VM (emulated: ratios only), ns per call and against no daemon\n"
    );
    println!("| daemon | getppid | vs none | 1-byte read | vs none |");
    println!("|---|---:|---:|---:|---:|");
    println!("| none (mean of before and after) | {getppid:.0} | 1.00 | {read:.0} | 1.00 |");
    for (i, c) in none.iter().enumerate() {
        println!(
            "| none ({}) | {:.0} | {:.2} | {:.0} | {:.2} |",
            if i == 0 { "before" } else { "after" },
            c["getppid_ns"].as_f64().unwrap_or(0.0),
            c["getppid_ns"].as_f64().unwrap_or(0.0) / getppid,
            c["read_zero_ns"].as_f64().unwrap_or(0.0),
            c["read_zero_ns"].as_f64().unwrap_or(0.0) / read,
        );
    }
    for l in results.iter().filter(|l| l.get("cost").is_some()) {
        let (g, r) = (
            l["cost"]["getppid_ns"].as_f64().unwrap_or(0.0),
            l["cost"]["read_zero_ns"].as_f64().unwrap_or(0.0),
        );
        println!(
            "| {} | {g:.0} | {:.2} | {r:.0} | {:.2} |",
            l["syscall_cost"].as_str().unwrap_or("?"),
            g / getppid,
            r / read
        );
    }
}
