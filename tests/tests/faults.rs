//! Faults injected into a running daemon: it keeps running, counts what it could not do, says so
//! in the log once it can, and never leaves an invalid line behind.
use std::{
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use portwatch_tests::{
    Daemon, count, daemon_binary, json_lines, of_pid, read_report, scenario, scenario_binary,
    schema, spawn_copy, stdout_of, wait_until,
};
use serde_json::Value;

/// A small tmpfs, unmounted when dropped.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(at: &Path, size: &str) -> SmallFs {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mounting a tmpfs at {}", at.display());
        SmallFs(at.to_path_buf())
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The storms of this file's tests, one at a time, and apart from the test that needs a few
/// lines to arrive within seconds: every daemon sees every test's events, one test stalls its
/// daemon through a storm of its own and asserts its ring lost nothing, and another test's storm
/// at the same moment would break either.
static STORMS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn storm_lock() -> std::sync::MutexGuard<'static, ()> {
    // A test that failed while holding it poisons it; the others still run one at a time.
    STORMS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[test]
fn disk_full_is_counted_reported_and_recovered_from() {
    let _storms = storm_lock();
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let _fs = SmallFs::mount(&logs, "256k");
    let log = logs.join("events.jsonl");
    let mut d = Daemon::start_with_log(tempfile::tempdir().unwrap(), log.clone(), &[]);
    // Leave a little room, then flood it.
    let filler = logs.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let _ = f.write_all(&vec![b'x'; 200 * 1024]);
    drop(f);
    let storm = scenario(["udp-storm", "1500"]);
    wait_until(
        "lines to fail",
        Duration::from_secs(20),
        || d.status()["lost"]["log_write_failed"].as_u64().unwrap() > 0,
        String::new,
    );
    // Still running, still reading: every record of the storm gets through the pipeline.
    wait_until(
        "the storm to be processed",
        Duration::from_secs(20),
        || d.status()["events"]["bind"].as_u64().unwrap() >= 1500,
        String::new,
    );
    drop(storm);

    // Space returns: the next lines land, and loss lines say how many did not.
    std::fs::remove_file(&filler).unwrap();
    let s = scenario(["udp-bind", "127.0.0.1:0"]);
    let evs = d.events_of(s.pid, |e| count(e, "close") >= 1);
    assert_eq!(count(&evs, "bind"), 1);
    // Small notices can land between big batches that still fail: together they account for
    // every line that could not be written, and the last one carries the running total.
    let lines = d.lines();
    let notices: Vec<&Value> = lines
        .iter()
        .filter(|l| l["event"] == "loss" && l["loss"]["reason"] == "log_write_failed")
        .collect();
    assert!(!notices.is_empty(), "a log_write_failed loss line");
    let failed = d.status()["lost"]["log_write_failed"].as_u64().unwrap();
    let counted: u64 = notices
        .iter()
        .map(|n| n["loss"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, failed, "{notices:?}");
    assert_eq!(notices.last().unwrap()["loss"]["total"], failed);
    let (exit, lines) = d.stop();
    assert!(exit.success());
    schema::check_log(&lines).unwrap();
}

#[test]
fn log_directory_removed_while_running_is_noticed_and_recreated() {
    let _storms = storm_lock();
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let log = sub.join("events.jsonl");
    let d = Daemon::start_with_log(tempfile::tempdir().unwrap(), log.clone(), &[]);
    std::fs::remove_dir_all(&sub).unwrap();
    let s = scenario(["udp-bind", "127.0.0.1:0"]);
    drop(s);
    wait_until(
        "the lost lines to be counted",
        Duration::from_secs(10),
        || d.status()["lost"]["log_write_failed"].as_u64().unwrap() >= 2,
        String::new,
    );
    std::fs::create_dir(&sub).unwrap();
    let s = scenario(["udp-bind", "127.0.0.1:0"]);
    wait_until(
        "the recreated log",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(&log)
                .is_ok_and(|t| count(&of_pid(&json_lines(&t), s.pid), "close") >= 1)
        },
        String::new,
    );
    // The recreated file says what was lost while there was no file.
    let lines = json_lines(&std::fs::read_to_string(&log).unwrap());
    let loss = lines
        .iter()
        .find(|l| l["event"] == "loss")
        .unwrap_or_else(|| panic!("no loss line in the recreated log: {lines:#?}"));
    assert_eq!(loss["loss"]["reason"], "log_write_failed");
    assert!(loss["loss"]["count"].as_u64().unwrap() >= 2, "{loss}");
    for l in &lines {
        schema::check(l).unwrap();
    }
    let (exit, _) = d.stop();
    assert!(exit.success());
}

#[test]
fn sigkill_during_a_storm_never_leaves_an_invalid_log() {
    let _storms = storm_lock();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("events.jsonl");
    let runs = 8;
    for i in 0..runs {
        let d = Daemon::start_with_log(tempfile::tempdir().unwrap(), log.clone(), &[]);
        let storm = Command::new(scenario_binary())
            .args(["udp-storm", "5000"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        // Pseudo-random kill points between 20 and 400 ms into the storm.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        std::thread::sleep(Duration::from_millis(
            20 + u64::from(nanos % 380) + i * 7 % 50,
        ));
        d.signal(libc::SIGKILL);
        let mut storm = storm;
        let _ = storm.wait();
        drop(d);
    }
    // One more, stopped cleanly: the whole file must be valid JSON Lines.
    let d = Daemon::start_with_log(tempfile::tempdir().unwrap(), log.clone(), &[]);
    let (exit, _) = d.stop();
    assert!(exit.success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.ends_with('\n'));
    let lines = json_lines(&text);
    assert_eq!(
        lines
            .iter()
            .filter(|l| l["event"] == "status" && l["reason"] == "start")
            .count(),
        runs as usize + 1
    );
    // Only the clean stop wrote its closing status line.
    assert_eq!(lines.iter().filter(|l| l["reason"] == "stop").count(), 1);
    assert_eq!(lines.last().unwrap()["reason"], "stop");
    for l in &lines {
        schema::check(l).unwrap();
    }
}

#[test]
fn without_the_capabilities_it_names_what_is_missing() {
    // A copy the unprivileged user can execute wherever the checkout lives.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.path().join("portwatch");
    std::fs::copy(daemon_binary(), &bin).unwrap();
    // As with the scenario copy below: another test thread's fork can hold the copy's write
    // descriptor for a moment, and setpriv's exec then fails with ETXTBSY. Retry that.
    let mut attempts = 0;
    let out = loop {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(&bin)
            .args(["run", "--status-socket", "/nonexistent/s.sock"])
            .output()
            .unwrap();
        if attempts < 50 && String::from_utf8_lossy(&out.stderr).contains("Text file busy") {
            attempts += 1;
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        break out;
    };
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("missing capabilities: CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN"),
        "{err}"
    );
    assert!(!err.contains("panicked"));
}

#[test]
fn deleted_executable_other_network_namespace_and_huge_argv() {
    let mut d = Daemon::start(&[]);

    // An executable deleted after exec is reported as the kernel shows it.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("portwatch-scenario");
    std::fs::copy(scenario_binary(), &copy).unwrap();
    let mut child = spawn_copy(
        Command::new(&copy)
            .args(["after-line", "tcp-listen", "127.0.0.1:0"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    );
    std::fs::remove_file(&copy).unwrap();
    child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let s = read_report(child);
    let evs = d.events_of(s.pid, |e| count(e, "listen") >= 1);
    let exe = evs[0]["process"]["executable"].as_str().unwrap();
    assert!(exe.ends_with("/portwatch-scenario (deleted)"), "{exe}");

    // A process in its own network namespace: its events carry that namespace.
    let out = stdout_of(
        Command::new("unshare")
            .arg("-n")
            .arg(scenario_binary())
            .args(["tcp-listen", "0.0.0.0:0"])
            .stdin(Stdio::null()),
        "unshare -n",
    );
    let report: Value = serde_json::from_slice(&out).unwrap();
    let pid = report["pid"].as_u64().unwrap() as u32;
    let host_netns = std::fs::metadata("/proc/self/ns/net")
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();
    assert_ne!(report["netns"], host_netns);
    let evs = d.events_of(pid, |e| count(e, "close") >= 1);
    for e in &evs {
        assert_eq!(e["network"]["netns"], report["netns"], "{e}");
    }

    // A process in its own PID namespace (pid 1 there) is reported with its host pid, which is
    // what /proc, `ps` and the operator see, and attributed through it.
    let mut child = Command::new("unshare")
        .args(["--pid", "--fork"])
        .arg(scenario_binary())
        .args(["tcp-listen", "127.0.0.1:0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let report: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        report["pid"], 1,
        "the scenario runs as pid 1 of its namespace"
    );
    let children = format!("/proc/{0}/task/{0}/children", child.id());
    let host_pid: u32 = std::fs::read_to_string(&children)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let evs = d.events_of(host_pid, |e| count(e, "close") >= 1);
    let listen = evs.iter().find(|e| e["event"] == "listen").unwrap();
    assert!(
        listen["process"]["executable"]
            .as_str()
            .unwrap()
            .ends_with("/portwatch-scenario"),
        "{listen}"
    );
    assert_eq!(listen["process"]["ppid"], child.id());
    assert_eq!(listen["process"]["parent_comm"], "unshare");
    drop(child.stdin.take());
    child.wait().unwrap();

    // A huge command line is cut and marked, not written whole (Linux caps one argument at
    // 128 KiB, so four of 50 KB).
    let big = "x".repeat(50_000);
    let s = scenario(["udp-bind", "127.0.0.1:0", &big, &big, &big, &big]);
    let evs = d.events_of(s.pid, |e| count(e, "close") >= 1);
    let p = &evs[0]["process"];
    assert_eq!(p["command_line_truncated"], true, "{p}");
    let args = p["command_line"].as_array().unwrap();
    // The arguments plus the NULs between them.
    let total: usize = args
        .iter()
        .map(|a| a.as_str().unwrap().len())
        .sum::<usize>()
        + args.len()
        - 1;
    assert!(total <= 8192, "{total} bytes of command line written");
    drop(s);
    let (exit, lines) = d.stop();
    assert!(exit.success());
    schema::check_log(&lines).unwrap();
}

/// A short-lived process exec'd from `copy`, stalled in the daemon until it has exited (so only
/// its exec record can name it), while `during` runs; its listen event.
fn listen_of_exited_copy(d: &mut Daemon, copy: &std::path::Path, during: impl FnOnce()) -> Value {
    d.signal(libc::SIGSTOP);
    let child = spawn_copy(
        Command::new(copy)
            .args(["exit-fast", "127.0.0.1:0"])
            .stdout(Stdio::piped()),
    );
    let s = read_report(child);
    during();
    wait_until(
        "the process's exit",
        Duration::from_secs(5),
        || {
            std::fs::read_to_string(format!("/proc/{}/stat", s.pid))
                .map_or(true, |st| st.contains(") Z "))
        },
        String::new,
    );
    d.signal(libc::SIGCONT);
    // Only the listen: another test's storm may overrun this daemon's ring while it is stalled.
    let evs = d.events_of(s.pid, |e| e.iter().any(|x| x["event"] == "listen"));
    evs.into_iter()
        .find(|e| e["event"] == "listen")
        .expect("its listen")
}

#[test]
fn a_process_exec_d_from_a_path_of_thousands_of_bytes_is_named_whole() {
    let mut d = Daemon::start(&[]);
    // Near PATH_MAX (4096 with its NUL): the exec record holds all of it.
    let dir = tempfile::tempdir().unwrap();
    let mut long = dir.path().to_path_buf();
    let component = "d".repeat(200);
    while long.as_os_str().len() < 3800 {
        long.push(&component);
    }
    std::fs::create_dir_all(&long).unwrap();
    let copy = long.join("portwatch-scenario");
    assert!(copy.as_os_str().len() >= 3800, "{}", copy.display());
    std::fs::copy(scenario_binary(), &copy).unwrap();
    let l = listen_of_exited_copy(&mut d, &copy, || ());
    assert_eq!(
        l["process"]["executable"].as_str(),
        copy.to_str(),
        "the whole path: {l}"
    );
    assert!(l.get("executable_truncated").is_none(), "{l}");
    assert!(l["process"].get("executable_truncated").is_none(), "{l}");
    schema::check(&l).unwrap();
}

#[test]
fn a_thread_storm_leaves_a_short_lived_process_attributable() {
    let _storms = storm_lock();
    // Tens of thousands of threads come and go while the daemon is stalled: each is a fork
    // record with no exec or exit after it. A process that bound, listened and exited among
    // them must still be named from its exec record.
    let mut d = Daemon::start(&["--ring-buffer-kib", "8192"]);
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("portwatch-scenario");
    std::fs::copy(scenario_binary(), &copy).unwrap();
    let l = listen_of_exited_copy(&mut d, &copy, || {
        let churn = scenario(["thread-churn", "40000"]);
        assert_eq!(churn.report["threads"], 40000);
    });
    assert_eq!(
        l["process"]["executable"].as_str(),
        copy.to_str(),
        "named from its exec record: {l}"
    );
    let status = d.status();
    let forks = &status["caches"]["forks"];
    assert!(
        forks["evictions"].as_u64().unwrap_or(0) > 0,
        "the storm overflowed the fork table (the test is real): {status}"
    );
    let (exit, lines) = d.stop();
    assert!(exit.success());
    // A `pending_stale` is some other task's call whose return was never seen (the tests beside
    // this one start and kill processes): no record of this test's is lost by it.
    let losses: Vec<&Value> = lines
        .iter()
        .filter(|l| l["event"] == "loss" && l["loss"]["reason"] != "pending_stale")
        .collect();
    assert!(
        losses.is_empty(),
        "the ring held the storm: nothing the test relies on was lost: {losses:?}"
    );
}
