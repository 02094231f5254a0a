//! The operator's views against real sockets and a live daemon: `who`'s argument forms and
//! filters, `tail` filtering the daemon's stream across a rotation, and `top` drawn in tmux
//! while a namespace's small ephemeral range fills.
use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use portwatch_tests::{
    Daemon, daemon_binary, free_fixed_port,
    identities::{Cgroups, Client},
    json_lines, portwatch, scenario, wait_until, write_policy,
};
use serde_json::Value;

fn who(args: &[&str], state: &str) -> Vec<Value> {
    let (code, out, err) =
        portwatch([&["who"], args, &["-o", "json", "--state-dir", state]].concat());
    assert_eq!(code, 0, "who {args:?}: {err}");
    json_lines(&out)
}

/// The pids of `who`'s rows found now (the history may hold earlier tests' sockets).
fn pids_now(args: &[&str], state: &str) -> Vec<u64> {
    let mut pids: Vec<u64> = who(args, state)
        .iter()
        .filter(|r| r["source"] == "now")
        .map(|r| r["process"]["pid"].as_u64().unwrap_or(0))
        .collect();
    pids.sort();
    pids
}

/// A tcp service name from /etc/services whose port nothing on 127.0.0.1 holds.
fn free_service() -> (String, u16) {
    let text = std::fs::read_to_string("/etc/services").expect("/etc/services (netbase)");
    for line in text.lines() {
        let mut w = line.split('#').next().unwrap_or("").split_whitespace();
        let (Some(name), Some(pp)) = (w.next(), w.next()) else {
            continue;
        };
        let Some((port, "tcp")) = pp.split_once('/') else {
            continue;
        };
        let Ok(port) = port.parse::<u16>() else {
            continue;
        };
        if (100..1024).contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return (name.to_string(), port);
        }
    }
    panic!("no free service port in /etc/services");
}

/// Runs the scenario client with `args` from a shell: first moved into `cgroup`, its argv[0]
/// set to `argv0`.
fn spawn_as(
    cgroup: Option<&std::path::Path>,
    argv0: &str,
    args: &[&str],
) -> portwatch_tests::Scenario {
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg("[ -z \"$1\" ] || echo $$ > \"$1/cgroup.procs\" || exit 9; a0=$2; shift 2; exec -a \"$a0\" \"$@\"")
        .arg("sh")
        .arg(cgroup.map(|c| c.as_os_str()).unwrap_or_default())
        .arg(argv0)
        .arg(portwatch_tests::scenario_binary())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    portwatch_tests::read_report(cmd.spawn().unwrap())
}

fn sorted(mut v: Vec<u64>) -> Vec<u64> {
    v.sort();
    v
}

#[test]
fn who_takes_ports_services_ranges_and_every_filter() {
    let p = free_fixed_port();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().to_str().unwrap().to_string();
    let cgroups = Cgroups::new();
    let unit = cgroups.make("system.slice/pw-views.service");
    let user_unit =
        cgroups.make("user.slice/user-65534.slice/user@65534.service/app.slice/nginx.service");
    let container_id = "c0ffee".repeat(10) + "abcd";
    let docker = cgroups.make(&format!("docker-{container_id}.scope"));
    let client = Client::new();
    // A: root's TCP listener in a system unit. C: root's UDP socket. B: nobody's listener in a
    // cgroup named like a docker container (no runtime knows it), comm "nginx", an argument of
    // two lines. F: nobody's listener in a unit of its own user manager, named nginx.service.
    // K: a listener no process holds. D: root's listener on a service's port, argv[0] "nginx".
    let a = spawn_as(
        Some(&unit),
        "portwatch-scenario",
        &["hold-listen", &format!("127.0.0.1:{p}")],
    );
    let c = scenario(["hold-udp", &format!("[::1]:{}", p + 1)]);
    let f = client.as_nobody(
        Some(&user_unit),
        &["hold-listen", &format!("127.0.0.1:{}", p + 2)],
    );
    let b = client.as_nobody(
        Some(&docker),
        &[
            "hold-as",
            "6e67696e78",
            &format!("127.0.0.1:{}", p + 3),
            "first\nsecond line",
        ],
    );
    let k = scenario(["hold-in-flight", &format!("127.0.0.1:{}", p + 4)]);
    let (service, service_port) = free_service();
    let d = spawn_as(
        None,
        "nginx",
        &["hold-listen", &format!("127.0.0.1:{service_port}")],
    );

    let range = format!("{p}-{}", p + 4);
    let [ap, bp, cp, fp, dp] = [&a, &b, &c, &f, &d].map(|s| u64::from(s.pid));
    // Forms.
    assert_eq!(pids_now(&[&p.to_string()], &state), [ap]);
    assert_eq!(pids_now(&[&format!("{p}/tcp")], &state), [ap]);
    assert!(pids_now(&[&format!("{p}/udp")], &state).is_empty());
    assert!(pids_now(&[&p.to_string(), "--transport", "udp"], &state).is_empty());
    assert_eq!(pids_now(&[&range], &state), sorted(vec![0, ap, bp, cp, fp]));
    assert_eq!(pids_now(&[&format!("{range}/udp")], &state), [cp]);
    assert_eq!(
        pids_now(&[&range, "--transport", "tcp"], &state),
        sorted(vec![0, ap, bp, fp])
    );
    assert_eq!(pids_now(&[&service], &state), [dp]);
    assert_eq!(pids_now(&[&format!("{service}/tcp")], &state), [dp]);
    // Filters, each on what the holder cannot choose for itself.
    let pid_a = a.pid.to_string();
    assert_eq!(pids_now(&[&range, "--pid", &pid_a], &state), [ap]);
    assert_eq!(
        pids_now(&[&range, "--exe", "portwatch-scenario"], &state),
        sorted(vec![ap, bp, cp, fp])
    );
    // B's comm and D's argv[0] say nginx; the executable the kernel ran does not.
    assert!(pids_now(&[&range, "--exe", "nginx"], &state).is_empty());
    assert!(pids_now(&[&service, "--exe", "nginx"], &state).is_empty());
    assert_eq!(
        pids_now(&[&range, "--user", "nobody"], &state),
        sorted(vec![bp, fp])
    );
    assert_eq!(
        pids_now(&[&range, "--user", "65534"], &state),
        sorted(vec![bp, fp])
    );
    assert_eq!(
        pids_now(&[&range, "--user", "root"], &state),
        sorted(vec![ap, cp])
    );
    assert_eq!(pids_now(&[&range, "--unit", "pw-views"], &state), [ap]);
    assert_eq!(
        pids_now(&[&range, "--unit", "pw-views.service"], &state),
        [ap]
    );
    // F's nginx.service is its user's own naming: only its user manager's unit matches it.
    assert!(pids_now(&[&range, "--unit", "nginx"], &state).is_empty());
    assert_eq!(pids_now(&[&range, "--unit", "user@65534"], &state), [fp]);
    // A container no runtime knows is no container to the filter.
    assert!(pids_now(&[&range, "--container", &container_id[..12]], &state).is_empty());
    assert_eq!(
        pids_now(&[&range, "--listening"], &state),
        sorted(vec![0, ap, bp, fp])
    );
    assert_eq!(
        pids_now(&[&range, "--listening", "--user", "root"], &state),
        [ap]
    );

    // The holder nobody knows: said so, never null or pid 0.
    let rows = who(&[&(p + 4).to_string()], &state);
    let unknown = rows
        .iter()
        .find(|r| r["source"] == "now")
        .expect("the in-flight listener");
    assert_eq!(
        unknown["process"],
        serde_json::json!({"known": false}),
        "{unknown}"
    );
    assert!(
        !serde_json::to_string(unknown).unwrap().contains("null"),
        "{unknown}"
    );

    // Tables: one line per holding, escaped, claims marked; cut to $COLUMNS, whole in `wide`.
    let (code, table, err) = portwatch(["who", &range, "--state-dir", &state]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with(&format!("ports {range}: 5 port(s)")),
        "{table}"
    );
    assert!(
        lines[1].starts_with("WHEN (UTC)") && lines[1].contains("COMMAND"),
        "{table}"
    );
    assert_eq!(lines.len(), 2 + 5, "{table}");
    assert!(!table.contains("null"), "{table}");
    let row = |pid: u32| {
        *lines
            .iter()
            .find(|l| l.contains(&format!(" {pid} ")))
            .unwrap()
    };
    let row_b = row(b.pid);
    assert!(
        row_b.contains("first\\nsecond line") && row_b.contains("nobody"),
        "{row_b}"
    );
    assert!(
        row_b.contains(&format!("docker:{}?", &container_id[..12])),
        "{row_b}"
    );
    assert!(
        row(f.pid).contains("user@65534.service/nginx.service"),
        "{table}"
    );
    let row_k = lines
        .iter()
        .find(|l| l.contains(&format!(":{}", p + 4)))
        .unwrap();
    assert!(row_k.contains("(no process"), "{row_k}");
    let row_a = row(a.pid);
    assert!(
        row_a.contains(" pw-views.service ") && row_a.contains("listening"),
        "{row_a}"
    );
    let out = Command::new(daemon_binary())
        .args(["who", &range, "--state-dir", &state])
        .env("COLUMNS", "120")
        .output()
        .unwrap();
    let narrow = String::from_utf8_lossy(&out.stdout);
    assert!(
        narrow.lines().skip(1).all(|l| l.chars().count() <= 120),
        "{narrow}"
    );
    assert!(narrow.contains('…'), "{narrow}");
    let (_, wide, _) = portwatch(["who", &range, "-o", "wide", "--state-dir", &state]);
    assert!(wide.lines().nth(1).unwrap().starts_with("SOURCE"), "{wide}");
    assert!(
        wide.contains("hold-as 6e67696e78") && wide.contains("EXECUTABLE"),
        "{wide}"
    );
    let (_, svc, _) = portwatch(["who", &service, "--state-dir", &state]);
    assert!(
        svc.starts_with(&format!("port {service_port} ({service}/tcp): well-known")),
        "{svc}"
    );
    // D's command line names nginx; the executable leads in brackets.
    assert!(
        svc.contains("[portwatch-scenario] nginx hold-listen"),
        "{svc}"
    );

    // Mistakes are one line and a non-zero exit.
    for (args, says) in [
        (
            vec!["no-such-service-x"],
            "is not a service name in /etc/services",
        ),
        (vec!["9000-8000"], "from low to high"),
        (vec!["80/sctp"], "optionally /tcp or /udp"),
        (vec!["80-"], "`80-` is not a port"),
        (vec!["80", "--limit", "0"], "out of range"),
        (vec!["80", "-o", "yaml"], "yaml"),
    ] {
        let (code, _, err) =
            portwatch([&["who"], args.as_slice(), &["--state-dir", &state]].concat());
        assert_ne!(code, 0, "{args:?}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    drop((a, b, c, d, f, k));
}

/// `portwatch tail ARGS` running, its stdout read line by line on a thread.
struct Tail {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Tail {
    fn start(args: &[&str]) -> Tail {
        let mut child = Command::new(daemon_binary())
            .arg("tail")
            .args(args)
            .env_remove("COLUMNS")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        Tail {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads until a line satisfies `ok`; returns it.
    fn until(&mut self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + portwatch_tests::scaled(Duration::from_secs(15));
        loop {
            if let Some(l) = self.seen.iter().find(|l| ok(l)) {
                return l.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => self.seen.push(l),
                Err(_) => panic!(
                    "tail never wrote {what}; it wrote:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn tail_filters_a_live_daemons_stream_and_follows_its_rotation() {
    let d = Daemon::start(&[]);
    let log = d.log.to_str().unwrap().to_string();
    let p = free_fixed_port();
    let mut failures = Tail::start(&[
        &log,
        "--event",
        "connect,connect_result",
        "--outcome",
        "failure",
        "--port",
        &p.to_string(),
    ]);
    let mut json = Tail::start(&[
        &log,
        "-o",
        "json",
        "--exe",
        "portwatch-scenario",
        "--event",
        "listen",
    ]);
    let refused = scenario(["connect-refused", &format!("127.0.0.1:{p}")]);
    let ok = scenario(["tcp-listen", &format!("127.0.0.1:{}", p + 1)]);
    let row = failures.until("the refused connect", |l| {
        l.contains(&refused.pid.to_string())
    });
    assert!(
        row.contains("ECONNREFUSED") && row.contains(&format!("→ 127.0.0.1:{p}")),
        "{row}"
    );
    assert!(!row.contains('\x1b'), "no colour into a pipe: {row:?}");
    assert!(
        failures.seen[0].starts_with("TIME (UTC)"),
        "{:?}",
        failures.seen
    );
    let line = json.until("the listen", |l| l.contains(&format!("\"port\":{}", p + 1)));
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        (&v["event"], &v["process"]["pid"]),
        (&"listen".into(), &ok.pid.into())
    );
    // Unchanged: the very line the daemon wrote.
    let logged = std::fs::read_to_string(&d.log).unwrap();
    assert!(logged.lines().any(|l| l == line), "{line}");

    // A rotation as logrotate makes it: rename, then SIGHUP, and the daemon opens a new file.
    std::fs::rename(&d.log, d.log.with_extension("jsonl.1")).unwrap();
    d.signal(libc::SIGHUP);
    wait_until(
        "a new log file",
        Duration::from_secs(10),
        || d.log.exists(),
        String::new,
    );
    let again = scenario(["tcp-listen", &format!("127.0.0.1:{}", p + 2)]);
    let line = json.until("the listen after the rotation", |l| {
        l.contains(&format!("\"port\":{}", p + 2))
    });
    assert!(line.contains(&format!("\"pid\":{}", again.pid)), "{line}");
    // Nothing the filters exclude got through.
    assert!(
        json.seen.iter().all(|l| l.contains("\"event\":\"listen\"")),
        "{:?}",
        json.seen
    );
    assert!(
        failures
            .seen
            .iter()
            .skip(1)
            .all(|l| l.contains("ECONNREFUSED")),
        "{:?}",
        failures.seen
    );

    // Without a log to read, it says why.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "[log]\nstdout = true\n").unwrap();
    let (code, _, err) = portwatch(["tail", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("sets no `[log] file`"), "{err}");
    let (code, _, err) = portwatch(["tail", "/nonexistent/events.jsonl"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("/nonexistent/events.jsonl") && err.contains("No such file"),
        "{err}"
    );
    drop((refused, ok, again));
}

struct Tmux(String);

impl Tmux {
    fn run(args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .args(args)
            .output()
            .expect("tmux (apt install tmux)")
    }

    fn capture(&self) -> String {
        String::from_utf8_lossy(&Self::run(&["capture-pane", "-p", "-t", &self.0]).stdout)
            .into_owned()
    }

    fn alive(&self) -> bool {
        Self::run(&["has-session", "-t", &self.0]).status.success()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        Self::run(&["kill-session", "-t", &self.0]);
    }
}

#[test]
fn top_shows_listeners_churn_and_a_filling_range_in_80_by_24() {
    let d = Daemon::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    // A policy that allows nothing on loopback above port 1: every listener below is unexpected.
    let policy = write_policy(dir.path(), "[[allow]]\nport = 1\n");
    let session = format!("pwtop{}", std::process::id());
    let bin = daemon_binary();
    let command = format!(
        "{} top --log {} --policy {}",
        bin.display(),
        d.log.display(),
        policy.display()
    );
    let out = Tmux::run(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "80",
        "-y",
        "24",
        &command,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tmux = Tmux(session);
    // A namespace whose range is 64 ports, 24 of them held, and a process churning connects.
    let fill = scenario(["fill-range", "24", "40000", "40063"]);
    let netns = fill.report["netns"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    // A listener that appears while top runs.
    let p = free_fixed_port();
    let listener = scenario(["hold-listen", &format!("0.0.0.0:{p}")]);
    let mut screen = String::new();
    let deadline = Instant::now() + portwatch_tests::scaled(Duration::from_secs(20));
    let shows = |s: &str| {
        let range_line = s.lines().find(|l| l.contains(&format!("netns {netns}")));
        let held = range_line
            .and_then(|l| l.split_whitespace().find(|w| w.ends_with("/64")))
            .and_then(|w| w.trim_end_matches("/64").parse::<u32>().ok());
        let churn = s.lines().any(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.first() == Some(&fill.pid.to_string().as_str())
                && w.get(1)
                    .and_then(|r| r.parse::<f64>().ok())
                    .is_some_and(|r| r > 1.0)
        });
        let new_listener = s
            .lines()
            .any(|l| l.starts_with('!') && l.contains(&format!("0.0.0.0:{p}")));
        held.is_some_and(|h| (24..=30).contains(&h)) && churn && new_listener
    };
    while Instant::now() < deadline {
        screen = tmux.capture();
        if shows(&screen) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        shows(&screen),
        "top's screen lacks the listener, the churn or the range:\n{screen}"
    );
    assert!(
        screen.lines().count() <= 24 && screen.lines().all(|l| l.chars().count() <= 80),
        "{screen}"
    );
    assert!(screen.contains("40000-40063"), "{screen}");
    // The listener that came while top ran is counted new (its `!` outranks the `+`).
    let title = screen
        .lines()
        .find(|l| l.contains("Listeners: "))
        .unwrap_or_default();
    assert!(
        title.contains(" new, ") && title.contains(" unexpected"),
        "{title}"
    );
    if let Ok(path) = std::env::var("PORTWATCH_TOP_CAPTURE") {
        std::fs::write(path, &screen).unwrap();
    }
    // `/` filters, `q` quits and gives the terminal back.
    Tmux::run(&["send-keys", "-t", &tmux.0, "/", "z", "z", "z", "Enter"]);
    wait_until(
        "the filter",
        Duration::from_secs(5),
        || !tmux.capture().contains(&format!("0.0.0.0:{p}")),
        || tmux.capture(),
    );
    Tmux::run(&["send-keys", "-t", &tmux.0, "q"]);
    wait_until(
        "top to quit",
        Duration::from_secs(5),
        || !tmux.alive(),
        || tmux.capture(),
    );
    drop((fill, listener, d));
}

#[test]
fn bash_completes_the_views_subcommands_and_flags() {
    let script = format!(
        "source <({} completions bash) && \
         COMP_WORDS=(portwatch t); COMP_CWORD=1; _portwatch portwatch t portwatch; echo \"${{COMPREPLY[*]}}\"; \
         COMP_WORDS=(portwatch tail --ou); COMP_CWORD=2; _portwatch portwatch --ou tail; echo \"${{COMPREPLY[*]}}\"",
        daemon_binary().display()
    );
    let out = Command::new("bash").args(["-c", &script]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        ["tail top", "--outcome --output"],
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
