//! Runs inside the test VM (`cargo xtask vm-test`): for each attach strategy, starts the daemon,
//! runs every shared scenario against it, and writes what happened as JSON lines to OUT (a serial
//! port). The host checks the results with the same assertions as the host tests. It also times
//! unrelated syscalls with no daemon and under each strategy: what every task on the host pays
//! for the daemon's hooks (ratios only: the VM is emulated).
use std::{
    fs::OpenOptions,
    io::Write,
    panic::{AssertUnwindSafe, catch_unwind},
    time::Duration,
};

use portwatch_tests::{Daemon, scenarios, schema};
use serde_json::{Value, json};

/// Where results go: a serial port of their own, or the console they share with the kernel,
/// where each line carries a prefix the host looks for (`console:DEVICE`).
struct Out {
    file: std::fs::File,
    prefix: &'static str,
}

impl Out {
    fn open(arg: &str) -> std::io::Result<Out> {
        let (path, prefix) = match arg.strip_prefix("console:") {
            Some(path) => (path, "@@portwatch "),
            None => (arg, ""),
        };
        let file = OpenOptions::new().write(true).open(path)?;
        Ok(Out { file, prefix })
    }
}

fn emit(out: &mut Out, v: Value) {
    // One write per line, so that nothing else on a shared console lands inside it.
    let _ = out
        .file
        .write_all(format!("{}{v}\n", out.prefix).as_bytes());
    let _ = out.file.flush();
}

fn panic_text(e: Box<dyn std::any::Any + Send>) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
}

/// Nanoseconds per call of the load generator's `getppid` and `read-zero` loops (the median of
/// three runs each), or null when it could not run.
fn syscall_cost() -> Value {
    let loadgen = std::path::Path::new("/usr/bin/portwatch-loadgen");
    // Fewer where the emulation is slow (arm64 under TCG: ~25 µs per getppid).
    let calls = std::env::var("PORTWATCH_VM_SYSCALL_CALLS").unwrap_or_else(|_| "500000".into());
    let run = |workload: &str| {
        let mut ns: Vec<f64> = (0..3)
            .filter_map(|_| {
                let out = std::process::Command::new(loadgen)
                    .args([workload, &calls])
                    .output()
                    .ok()?;
                let v: Value = serde_json::from_slice(&out.stdout).ok()?;
                v["ns_per_op"].as_f64()
            })
            .collect();
        ns.sort_by(|a, b| a.total_cmp(b));
        ns.get(ns.len() / 2).copied()
    };
    json!({"getppid_ns": run("getppid"), "read_zero_ns": run("read-zero")})
}

/// Blocking connects in flight at once, more than a kretprobe tracks by default (10 on this
/// one-CPU VM): each must be in the log or counted as lost (a skipped return shows as
/// `pending_stale` once its thread exits).
fn parallel_connects(d: &mut Daemon) -> Value {
    const N: u64 = 30;
    let s = portwatch_tests::scenario(["connect-parallel", &N.to_string()]);
    let pid = s.pid;
    let port: u64 = s.report["listener"]
        .as_str()
        .and_then(|l| l.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    drop(s);
    let logged = |lines: &[Value]| {
        portwatch_tests::of_pid(lines, pid)
            .iter()
            .filter(|e| {
                e["event"] == "connect"
                    && e["error"] == "ETIMEDOUT"
                    && e["network"]["peer"]["port"] == port
            })
            .count() as u64
    };
    // Until every connect is logged or counted (the stale ones when their threads exited).
    let deadline = std::time::Instant::now() + portwatch_tests::scaled(Duration::from_secs(2));
    let (lines, st) = loop {
        let (lines, st) = (d.lines(), d.status());
        let counted = ["pending_stale", "pending_table_full"]
            .iter()
            .filter_map(|k| st["lost"][k].as_u64())
            .sum::<u64>();
        if logged(&lines) + counted >= N || std::time::Instant::now() > deadline {
            break (lines, st);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    json!({"connects": N, "logged": logged(&lines),
           "pending_stale": st["lost"]["pending_stale"], "pending_table_full": st["lost"]["pending_table_full"]})
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((out_path, strategies)) = args.split_first() else {
        eprintln!("usage: portwatch-vm-runner OUT STRATEGY...");
        std::process::exit(2);
    };
    let mut out = match Out::open(out_path) {
        Ok(out) => out,
        Err(e) => {
            eprintln!("portwatch-vm-runner: {out_path}: {e}");
            std::process::exit(2);
        }
    };
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    emit(&mut out, json!({"kernel": kernel.trim()}));
    emit(
        &mut out,
        json!({"syscall_cost": "none", "before": syscall_cost()}),
    );
    for strategy in strategies {
        eprintln!("vm-runner: strategy {strategy}");
        // `socket-hooks`: the tracepoint strategy without syscall tracepoints, which keeps them
        // (and says so) where the kernel is older than 6.10.
        let args: &[&str] = match strategy.as_str() {
            "socket-hooks" => &["--attach", "tracepoint", "--syscall-tracepoints", "false"],
            s => &["--attach", s],
        };
        let started = catch_unwind(AssertUnwindSafe(|| Daemon::start(args)));
        let mut d = match started {
            Ok(d) => d,
            Err(e) => {
                emit(
                    &mut out,
                    json!({"strategy": strategy, "error": panic_text(e)}),
                );
                continue;
            }
        };
        let status = d.lines().first().cloned().unwrap_or(Value::Null);
        emit(
            &mut out,
            json!({"syscall_cost": strategy, "cost": syscall_cost()}),
        );
        // Without syscall tracepoints a call that fails before it changed a socket is not
        // written: waiting for one would only time out.
        let socket_hooks = status["attach"]["handshake"]["hooks"][0] == "cgroup:sock_ops_calls";
        let expect = if socket_hooks {
            scenarios::Strategy::SocketHooks
        } else {
            scenarios::Strategy::Tracepoint
        };
        for case in scenarios::cases() {
            if !scenarios::applies(expect, case.name) {
                continue;
            }
            let r = catch_unwind(AssertUnwindSafe(|| {
                scenarios::run(&mut d, &case, Duration::from_secs(10))
            }));
            match r {
                Ok((report, events)) => emit(
                    &mut out,
                    json!({"strategy": strategy, "case": case.name, "report": report, "events": events,
                           "parent_pid": std::process::id(),
                           "parent_cgroup": portwatch_tests::scenarios::own_cgroup()}),
                ),
                Err(e) => emit(
                    &mut out,
                    json!({"strategy": strategy, "case": case.name, "error": panic_text(e)}),
                ),
            }
        }
        emit(
            &mut out,
            json!({"strategy": strategy, "parallel": parallel_connects(&mut d)}),
        );
        let stderr = d.stderr_text();
        let (exit, lines) = d.stop();
        let schema_error = schema::check_log(&lines).err();
        emit(
            &mut out,
            json!({"strategy": strategy, "status": status, "exit_ok": exit.success(),
                   "schema_error": schema_error, "lines": lines.len(), "stderr_tail": portwatch_tests::tail(&stderr, 4000)}),
        );
    }
    emit(
        &mut out,
        json!({"syscall_cost": "none", "after": syscall_cost()}),
    );
    // A kernel WARNING (or worse) while the programs loaded and ran is a failure even when every
    // scenario passed: on a host with panic_on_warn it is a crash.
    let dmesg = std::process::Command::new("dmesg")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let warnings: Vec<&str> = dmesg
        .lines()
        .filter(|l| ["WARNING:", "BUG:", "Oops"].iter().any(|w| l.contains(w)))
        .collect();
    emit(&mut out, json!({"kernel_warnings": warnings}));
    emit(&mut out, json!({"done": true}));
}
