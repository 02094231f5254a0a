//! Prometheus metrics, read by the real components: Debian's `prometheus` scrapes the daemon's
//! loopback `/metrics` endpoint, and Debian's `prometheus-node-exporter` serves the daemon's
//! textfile; both are queried through Prometheus's HTTP API.
use std::{
    fs,
    net::{TcpListener, UdpSocket},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use portwatch_tests::{Daemon, free_port, http, on_port, poll_until, portwatch, require_root};
use serde_json::Value;

/// A server the test started, stopped by pid when the test ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn server(bin: &str, args: &[String], log: &Path) -> Server {
    assert!(
        Path::new(bin).exists(),
        "{bin} is missing: `cargo xtask test` installs Debian's prometheus and \
         prometheus-node-exporter (xtask/src/setup.rs)"
    );
    Server(
        Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(fs::File::create(log).unwrap())
            .stderr(Stdio::from(
                fs::OpenOptions::new().append(true).open(log).unwrap(),
            ))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {bin}: {e}")),
    )
}

/// The result vector of an instant query.
fn query(prometheus: &str, promql: &str) -> Vec<Value> {
    let target = format!("/api/v1/query?query={}", http::encode(promql));
    match http::get(prometheus, &target) {
        Ok((200, body)) => {
            let v: Value = serde_json::from_str(&body).unwrap();
            v["data"]["result"].as_array().cloned().unwrap_or_default()
        }
        _ => Vec::new(),
    }
}

/// The value of each series in `result`, by its `job` label.
fn by_job(result: &[Value]) -> Vec<(String, f64)> {
    result
        .iter()
        .map(|r| {
            (
                r["metric"]["job"].as_str().unwrap_or("").to_string(),
                r["value"][1].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

#[test]
fn prometheus_scrapes_the_endpoint_and_node_exporter_serves_the_textfile() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let textdir = dir.path().join("textfile");
    fs::create_dir(&textdir).unwrap();
    let textfile = textdir.join("portwatch.prom");
    let config = dir.path().join("portwatch.toml");
    fs::write(&config, "[metrics]\ninterval_seconds = 1\n").unwrap();
    let (endpoint, node, prom) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let mut d = Daemon::start(&[
        "--config",
        config.to_str().unwrap(),
        "--metrics-listen",
        &endpoint,
        "--metrics-textfile",
        textfile.to_str().unwrap(),
    ]);
    let _node = server(
        "/usr/bin/prometheus-node-exporter",
        &[
            format!("--web.listen-address={node}"),
            "--collector.disable-defaults".into(),
            "--collector.textfile".into(),
            format!("--collector.textfile.directory={}", textdir.display()),
        ],
        &dir.path().join("node-exporter.log"),
    );
    let scrape = dir.path().join("prometheus.yml");
    fs::write(
        &scrape,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: portwatch\n    static_configs: [{{targets: ['{endpoint}']}}]\n  - job_name: node\n    static_configs: [{{targets: ['{node}']}}]\n"
        ),
    )
    .unwrap();
    let prom_log = dir.path().join("prometheus.log");
    let _prometheus = server(
        "/usr/bin/prometheus",
        &[
            format!("--config.file={}", scrape.display()),
            format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()),
            format!("--web.listen-address={prom}"),
        ],
        &prom_log,
    );

    // Something for the metrics to count: a TCP listener and a UDP bind, seen in the log.
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (tcp_port, udp_port) = (
        tcp.local_addr().unwrap().port(),
        udp.local_addr().unwrap().port(),
    );
    d.wait_for(Duration::from_secs(20), |lines| {
        lines
            .iter()
            .any(|l| l["event"] == "listen" && on_port(l, tcp_port))
            && lines
                .iter()
                .any(|l| l["event"] == "bind" && on_port(l, udp_port))
    })
    .expect("the listen and the bind in the log");

    let detail = || {
        format!(
            "targets: {:?}\nprometheus log: {}",
            http::get(&prom, "/api/v1/targets"),
            fs::read_to_string(&prom_log).unwrap_or_default()
        )
    };
    // Both ways in are up: the endpoint scraped directly, the textfile through node_exporter.
    poll_until(
        "both scrape targets up",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || {
            let up = by_job(&query(&prom, "up"));
            ["portwatch", "node"]
                .iter()
                .all(|job| up.contains(&(job.to_string(), 1.0)))
        },
        detail,
    );
    // The listen and the bind are counted, by both ways.
    for kind in ["listen", "bind"] {
        poll_until(
            &format!("{kind} events counted by both jobs"),
            Duration::from_secs(30),
            Duration::from_millis(500),
            || {
                let r = by_job(&query(
                    &prom,
                    &format!("portwatch_events_total{{kind=\"{kind}\",strategy!=\"none\"}}"),
                ));
                ["portwatch", "node"]
                    .iter()
                    .all(|job| r.iter().any(|(j, v)| j == job && *v >= 1.0))
            },
            detail,
        );
    }
    // node_exporter read the file without error (a malformed file would make it 1).
    assert_eq!(
        by_job(&query(&prom, "node_textfile_scrape_error")),
        vec![("node".to_string(), 0.0)]
    );
    // Typed by Prometheus conventions, the same through both (a family node_exporter read
    // untyped would have a second, `unknown` entry here).
    for (name, kind) in [
        ("portwatch_events_total", "counter"),
        ("portwatch_lost_total", "counter"),
        ("portwatch_cache_entries", "gauge"),
        ("portwatch_cache_evictions_total", "counter"),
        ("portwatch_history_queue_intervals", "gauge"),
        ("portwatch_history_intervals_total", "counter"),
        ("portwatch_alerts_total", "counter"),
        ("portwatch_canary_blind", "gauge"),
        ("portwatch_ring_buffer_fill_ratio", "gauge"),
        ("portwatch_attach_info", "gauge"),
        ("portwatch_process_cpu_seconds_total", "counter"),
        ("portwatch_process_resident_memory_bytes", "gauge"),
    ] {
        let (code, body) = http::get(&prom, &format!("/api/v1/metadata?metric={name}")).unwrap();
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let types: Vec<&str> = v["data"][name]
            .as_array()
            .unwrap_or_else(|| panic!("no metadata for {name}: {body}"))
            .iter()
            .map(|m| m["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, vec![kind], "{name}: {body}");
    }
    let rss = by_job(&query(&prom, "portwatch_process_resident_memory_bytes"));
    assert!(
        rss.iter().any(|(j, v)| j == "portwatch" && *v > 1e6),
        "{rss:?}"
    );
    let blind = by_job(&query(&prom, "sum by (job) (portwatch_canary_blind)"));
    assert!(
        blind.iter().all(|(_, v)| *v == 0.0) && !blind.is_empty(),
        "{blind:?}"
    );

    // The endpoint serves /metrics and nothing else.
    assert_eq!(http::get(&endpoint, "/").unwrap().0, 404);
    assert_eq!(http::request(&endpoint, "POST", "/metrics").unwrap().0, 405);

    // A stopped daemon's metrics do not look current: its textfile goes with it.
    assert!(textfile.exists());
    let (status, _) = d.stop();
    assert!(status.success(), "{status:?}");
    assert!(!textfile.exists(), "the textfile outlived the daemon");
    drop((tcp, udp));
}

#[test]
fn a_bad_metrics_address_is_a_clear_error() {
    require_root();
    let (code, _, err) = portwatch(["run", "--metrics-listen", "0.0.0.0:9617"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a loopback address"), "{err}");

    // A taken port: the daemon refuses to start, before it attaches anything.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(portwatch_tests::daemon_binary())
        .args([
            "run",
            "--no-stdout",
            "--metrics-textfile",
            "",
            "--status-socket",
        ])
        .arg(dir.path().join("status.sock"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["--metrics-listen", &addr])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the daemon started on a taken metrics port");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(
        err.contains(&format!("metrics listen address {addr}")) && err.contains("in use"),
        "{err}"
    );
}
