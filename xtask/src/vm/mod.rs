//! `cargo xtask vm-test`: boot a stock Debian kernel under qemu (TCG) with a busybox initramfs
//! holding the daemon, the scenario client and the VM runner; run every shared scenario with
//! `--attach fentry`, `kprobe`, `tracepoint` and `auto`; bring the results back over a second
//! serial port and check them with the same assertions as the host tests.
use std::{
    collections::BTreeMap,
    fs,
    panic::{AssertUnwindSafe, catch_unwind},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use portwatch_tests::scenarios::{self, Ctx, Strategy};
use serde_json::Value;

use crate::{
    process::{self, set_mode, stdout_text, wait_exit},
    setup,
};

const KERNEL_META_PACKAGE: &str = "linux-image-cloud-amd64";
const STRATEGIES: [&str; 4] = ["fentry", "kprobe", "tracepoint", "auto"];
/// Hard limit for one VM run; TCG is slow, but a hang must not eat CI's 90 minutes.
const VM_TIMEOUT: Duration = Duration::from_secs(20 * 60);

pub fn run(root: &Path, kernel: Option<PathBuf>) -> Result<()> {
    setup::vm_packages()?;
    let vm_dir = root.join("target/vm");
    fs::create_dir_all(&vm_dir)?;
    let kernel = match kernel {
        Some(k) => {
            if !k.is_file() {
                bail!("--kernel {}: no such file", k.display());
            }
            k
        }
        None => stock_kernel(&vm_dir)?,
    };
    eprintln!("vm-test: kernel {}", kernel.display());
    let bin = root.join("target/release");
    let initramfs = build_initramfs(&vm_dir, &bin)?;
    let results = boot(&vm_dir, &kernel, &initramfs)?;
    check(&results)
}

/// Resolves the versioned package behind the meta-package and downloads it once (cached).
fn stock_kernel(vm_dir: &Path) -> Result<PathBuf> {
    let package = match kernel_package()? {
        Some(p) => p,
        None => {
            process::run(Command::new("apt-get").args(["update", "-qq"]))?;
            kernel_package()?.with_context(|| {
                format!("apt offers no {KERNEL_META_PACKAGE}: cannot get a stock kernel")
            })?
        }
    };
    let release = package.trim_start_matches("linux-image-");
    let extracted = vm_dir.join(&package);
    let vmlinuz = extracted.join("boot").join(format!("vmlinuz-{release}"));
    if vmlinuz.is_file() {
        return Ok(vmlinuz);
    }
    let dl = vm_dir.join("deb");
    fs::create_dir_all(&dl)?;
    process::run(
        Command::new("apt-get")
            .current_dir(&dl)
            .args(["download", &package]),
    )
    .with_context(|| format!("downloading {package}"))?;
    let deb = fs::read_dir(&dl)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
        })
        .with_context(|| {
            format!(
                "apt-get download left no {package} .deb in {}",
                dl.display()
            )
        })?;
    process::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&extracted))?;
    if !vmlinuz.is_file() {
        bail!("{} has no {}", deb.display(), vmlinuz.display());
    }
    Ok(vmlinuz)
}

/// The versioned kernel package the meta-package depends on, if apt knows it yet.
fn kernel_package() -> Result<Option<String>> {
    let depends = stdout_text(Command::new("apt-cache").args(["depends", KERNEL_META_PACKAGE]))?;
    Ok(depends
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .map(str::to_string))
}

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
export PORTWATCH_TIMEOUT_SCALE=20
echo "vm-init: kernel $(uname -r), running scenarios"
/usr/bin/portwatch-vm-runner /dev/ttyS1 @STRATEGIES@
echo "vm-init: runner exited $?"
poweroff -f
"#;

fn build_initramfs(vm_dir: &Path, bin: &Path) -> Result<PathBuf> {
    let stage = vm_dir.join("initramfs");
    if stage.exists() {
        fs::remove_dir_all(&stage)?;
    }
    for d in ["bin", "usr/bin", "etc", "proc", "sys", "dev", "tmp"] {
        fs::create_dir_all(stage.join(d))?;
    }
    fs::copy("/bin/busybox", stage.join("bin/busybox"))
        .context("copying /bin/busybox (busybox-static)")?;
    let init = stage.join("init");
    fs::write(&init, INIT.replace("@STRATEGIES@", &STRATEGIES.join(" ")))?;
    set_mode(&init, 0o755)?;
    fs::write(stage.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    fs::write(stage.join("etc/group"), "root:x:0:\n")?;
    for name in [
        "portwatch",
        "portwatch-scenario",
        "portwatch-vm-runner",
        "portwatch-loadgen",
    ] {
        let src = bin.join(name);
        fs::copy(&src, stage.join("usr/bin").join(name))
            .with_context(|| format!("copying {} (build it first)", src.display()))?;
        for lib in shared_libraries(&src)? {
            let dst = stage.join(lib.strip_prefix("/").unwrap_or(&lib));
            if let Some(parent) = dst.parent() {
                fs::create_dir_all(parent)?;
            }
            fs::copy(&lib, &dst).with_context(|| format!("copying {}", lib.display()))?;
        }
    }
    let cpio = vm_dir.join("initramfs.cpio");
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

/// The dynamic libraries a binary needs, from ldd.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
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
        .collect())
}

fn boot(vm_dir: &Path, kernel: &Path, initramfs: &Path) -> Result<Vec<Value>> {
    let console = vm_dir.join("console.log");
    let results = vm_dir.join("results.jsonl");
    let _ = fs::remove_file(&results);
    // -enable-kvm hangs on these machines (docs/architecture.md, build facts): software emulation only.
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "q35",
            "-cpu",
            "max",
            "-smp",
            "1",
            "-m",
            "1024",
            "-nodefaults",
            "-no-reboot",
        ])
        .args(["-display", "none", "-monitor", "none"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-serial")
        .arg(format!("file:{}", results.display()))
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", "console=ttyS0 panic=-1 rdinit=/init"])
        .stdin(Stdio::null())
        .spawn()
        .context("starting qemu-system-x86_64")?;
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
    let text = fs::read_to_string(&results).unwrap_or_default();
    let lines: Vec<Value> = text
        .lines()
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

/// Checks every (strategy, scenario) result with the shared assertions, checks that the strategies
/// agree on each scenario's events, and prints the table.
fn check(results: &[Value]) -> Result<()> {
    let kernel = results
        .iter()
        .find_map(|l| l["kernel"].as_str())
        .unwrap_or("?")
        .to_string();
    let mut failures = Vec::new();
    let mut verdicts: BTreeMap<(&str, &str), String> = BTreeMap::new();
    let mut shapes: BTreeMap<&str, Vec<(&str, Vec<Value>)>> = BTreeMap::new();
    for strategy in STRATEGIES {
        // Per strategy, the one line without a `case`: the daemon's summary, or why it did not start.
        let summary = results.iter().find(|l| {
            l["strategy"] == strategy && l.get("case").is_none() && l.get("parallel").is_none()
        });
        match summary {
            None => failures.push(format!("{strategy}: no result from the VM")),
            Some(s) if s.get("error").is_some() => {
                failures.push(format!("{strategy}: daemon did not start: {}", s["error"]));
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
                // auto must pick the best rung that works: fentry on a stock kernel.
                if strategy == "auto" {
                    for fam in ["bind", "listen", "connect", "release"] {
                        let took = &s["status"]["attach"][fam]["strategy"];
                        if took != "fentry" {
                            failures.push(format!("auto took {took} for {fam}, expected fentry"));
                        }
                    }
                }
            }
        }
        let expect = Strategy::parse(strategy).unwrap_or(Strategy::Fentry);
        for case in scenarios::cases() {
            let r = results
                .iter()
                .find(|l| l["strategy"] == strategy && l["case"] == case.name);
            let verdict = match r {
                None => "missing".to_string(),
                Some(r) if r.get("error").is_some() => format!("error: {}", r["error"]),
                Some(r) => {
                    let events: Vec<Value> = r["events"].as_array().cloned().unwrap_or_default();
                    let ctx = Ctx {
                        strategy: expect,
                        parent_pid: r["parent_pid"].as_u64().unwrap_or(0) as u32,
                        cgroup: r["parent_cgroup"].as_str().map(str::to_string),
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
            if verdict != "pass" {
                failures.push(format!("{strategy} / {}: {verdict}", case.name));
            }
            verdicts.insert((case.name, strategy), verdict);
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
    println!("\nVM kernel {kernel}: scenario results per attach strategy\n");
    println!("| scenario | {} |", STRATEGIES.join(" | "));
    println!("|---|{}", "---|".repeat(STRATEGIES.len()));
    for case in scenarios::cases() {
        let cells: Vec<String> = STRATEGIES
            .iter()
            .map(|s| {
                let v = verdicts
                    .get(&(case.name, *s))
                    .map(String::as_str)
                    .unwrap_or("missing");
                if v == "pass" {
                    "pass".into()
                } else {
                    "FAIL".into()
                }
            })
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
    let total = STRATEGIES.len() * scenarios::cases().len();
    let passed = verdicts.values().filter(|v| *v == "pass").count();
    println!("\nvm-test: {passed} passed, {} failed", total - passed);
    if failures.is_empty() {
        println!("vm-test: every scenario passed with every strategy, and the strategies agree");
        Ok(())
    } else {
        for f in &failures {
            eprintln!("vm-test: {f}");
        }
        bail!("{} VM check(s) failed", failures.len())
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
