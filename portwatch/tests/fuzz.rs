//! Property tests ("fuzzing") for every parser of untrusted input: ring-buffer records, the config
//! file, tracefs format files, /proc contents, `who`'s arguments, a followed log. None may panic, whatever the bytes. The suite runs
//! 512 cases each (a few seconds); `PROPTEST_CASES=100000 cargo test -p portwatch --test fuzz`
//! runs longer.
use std::path::Path;

use portwatch::{
    attribution::procfs::{parse_stat_ppid, split_cmdline},
    history::store,
    history::who::parse_time,
    judgement::alert::AlertEngine,
    judgement::policy::Policy,
    kernel::attach::tracefs::parse_format,
    kernel::decode::{decode, decode_any, decode_record},
    ops::config::{Config, DEFAULTS_TOML},
    output::errno,
    views::{follow::Follower, ports::PortSpec},
};
use portwatch_common::{ExecEvent, PortEvent, ProcEvent};
use proptest::prelude::*;

/// A policy using every key, to mutate.
const POLICY: &str = r#"[alerts]
unexpected_listener = true
[settings]
reconcile_interval_seconds = 60
exhaustion_share = 0.5
[hook]
argv = ["/bin/true", "x"]
timeout_seconds = 3
[[allow]]
note = "ssh"
transport = "tcp"
port = [22, "8000-8100"]
address = ["loopback", "10.0.0.0/8", "::1"]
executable = "/usr/sbin/sshd"
comm = "sshd"
user = "root"
unit = "ssh.service"
container = "none"
required = true
"#;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(512),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn decoder_never_panics_on_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode(&bytes);
        let _ = decode_any(&bytes);
    }

    #[test]
    fn any_record_decodes_by_its_header_or_fails_cleanly(
        kind in prop_oneof![any::<u8>(), 1u8..=4, 10u8..=12],
        len in prop_oneof![
            0usize..2000,
            Just(size_of::<PortEvent>()),
            Just(size_of::<ExecEvent>()),
            Just(size_of::<ProcEvent>()),
        ],
        fill in any::<u8>(),
    ) {
        let mut bytes = vec![fill; len];
        if let Some(b) = bytes.first_mut() {
            *b = kind;
        }
        if let Err(e) = decode_any(&bytes) {
            prop_assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn decoder_handles_every_record_sized_input(bytes in proptest::collection::vec(any::<u8>(), size_of::<PortEvent>())) {
        match decode(&bytes) {
            // A record that decodes names its kind, transport and a printable probe.
            Ok(ev) => prop_assert!(!ev.probe.is_empty() && ev.comm.len() <= 16),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn decoder_accepts_valid_codes_with_any_payload(
        kind in 1u8..=4, fam in prop_oneof![Just(2u8), Just(10u8)], proto in prop_oneof![Just(6u8), Just(17u8)],
        probe in prop_oneof![1u8..=8, 20u8..=25, 40u8..=45], comm in any::<[u8; 16]>(),
        addr in any::<[u8; 16]>(), port in any::<u16>(), errno in any::<i32>(),
    ) {
        let mut r = PortEvent::ZERO;
        (r.header.kind, r.family, r.protocol, r.probe, r.comm, r.local_addr, r.local_port, r.errno) =
            (kind, fam, proto, probe, comm, addr, port, errno);
        let ev = decode_record(&r).expect("valid codes decode");
        prop_assert_eq!(ev.local.port(), port);
        let _ = errno::name(errno);
    }

    #[test]
    fn config_parser_never_panics(text in "\\PC{0,400}") {
        let _ = Config::parse(&text, Path::new("fuzz.toml"));
    }

    #[test]
    fn config_parser_survives_mutated_defaults(at in 0usize..DEFAULTS_TOML.len(), junk in "\\PC{0,20}") {
        let mut text = DEFAULTS_TOML.to_string();
        let at = (0..=at).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
        text.insert_str(at, &junk);
        if let Err(e) = Config::parse(&text, Path::new("fuzz.toml")) {
            // Errors always say where.
            prop_assert!(e.to_string().contains("fuzz.toml"));
        }
    }

    #[test]
    fn policy_parser_never_panics(text in "\\PC{0,400}") {
        let _ = Policy::parse(&text, Path::new("fuzz-policy.toml"));
    }

    #[test]
    fn policy_parser_survives_mutations_and_says_where(at in 0usize..POLICY.len(), junk in "\\PC{0,20}") {
        let mut text = POLICY.to_string();
        let at = (0..=at).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
        text.insert_str(at, &junk);
        if let Err(e) = Policy::parse(&text, Path::new("fuzz-policy.toml")) {
            let e = e.to_string();
            prop_assert!(e.contains("fuzz-policy.toml") && e.contains("line"), "{}", e);
        }
    }

    #[test]
    fn alert_state_and_store_files_of_any_bytes_are_refused_not_fatal(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("alerts.json"), &bytes).unwrap();
        let _ = AlertEngine::new(Policy::default(), dir.path());
        let db = dir.path().join(store::FILE_NAME);
        std::fs::write(&db, &bytes).unwrap();
        if let Ok(c) = store::open_ro(&db) {
            let _ = store::holdings(&c, (22, 22), None, 0, i64::MAX, Some, 10);
            let _ = store::gaps(&c, 0, i64::MAX);
        }
    }

    #[test]
    fn store_rows_with_any_values_decode_or_fail_cleanly(
        port in any::<i64>(), pid in any::<i64>(), netns in any::<i64>(), opened in any::<i64>(),
        argv in proptest::option::of("\\PC{0,40}"), blob in proptest::collection::vec(any::<u8>(), 0..20),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join(store::FILE_NAME);
        let c = store::open_rw(&db).unwrap();
        c.execute(
            "INSERT INTO intervals (netns, transport, address, port, role, pid, command_line, user_id, opened_ns, executable)
             VALUES (?1, 'tcp', 'x', ?2, 'bound', ?3, ?4, 0, ?5, ?6)",
            rusqlite::params![netns, port, pid, argv, opened, blob],
        ).unwrap();
        let r = store::open_ro(&db).unwrap();
        let p = u16::try_from(port).unwrap_or(0);
        let _ = store::holdings(&r, (p, p), None, i64::MIN, i64::MAX, Some, 10);
    }

    #[test]
    fn tracefs_format_parser_never_panics(text in "\\PC{0,400}") {
        let _ = parse_format(&text);
    }

    #[test]
    fn proc_parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = parse_stat_ppid(&bytes);
        if let Some(args) = split_cmdline(&bytes) {
            prop_assert!(!args.is_empty());
        }
    }

    #[test]
    fn a_followed_log_of_any_bytes_yields_its_lines(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, &bytes).unwrap();
        let mut f = Follower::open(&path, u64::MAX).unwrap();
        let lines = f.poll().unwrap();
        let whole = bytes.iter().filter(|b| **b == b'\n').count();
        prop_assert_eq!(lines.len(), whole);
        prop_assert!(lines.iter().all(|l| !l.contains(&b'\n')));
    }

    #[test]
    fn who_arguments_never_panic(text in "\\PC{0,40}") {
        let now = chrono::Utc::now();
        let services = Path::new("/etc/services");
        match PortSpec::parse(&text, services) {
            Ok(spec) => {
                prop_assert!(!spec.ranges.is_empty());
                prop_assert!(spec.ranges.iter().all(|r| r.low <= r.high));
            }
            Err(e) => {
                let m = e.to_string();
                prop_assert!(
                    m.contains("is not a port")
                        || m.contains("low to high")
                        || m.contains("is not a service name"),
                    "{}",
                    m
                );
                prop_assert!(!m.contains('\n'));
            }
        }
        if let Err(e) = parse_time(&text, now) {
            prop_assert!(e.to_string().contains("is not a time"));
        }
    }
}
