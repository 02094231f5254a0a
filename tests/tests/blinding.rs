//! Blinding detection: a program detached behind the daemon's back (here with bpftool, as an
//! attacker with CAP_BPF could) is noticed by the canary round and reported. Its own test binary,
//! so no other test's daemon has links that could be detached by mistake.
use std::{collections::HashSet, process::Command, time::Duration};

use portwatch_tests::{Daemon, portwatch_output, scaled, schema, stdout_of};
use serde_json::Value;

fn links() -> Vec<Value> {
    let out = stdout_of(
        Command::new("bpftool").args(["-j", "link", "show"]),
        "bpftool (cargo xtask setup installs it for the tests)",
    );
    serde_json::from_slice(&out).expect("bpftool JSON")
}

#[test]
fn a_detached_program_is_reported_as_a_blind_hook_family() {
    let before: HashSet<u64> = links().iter().filter_map(|l| l["id"].as_u64()).collect();
    let mut d = Daemon::start(&["--attach", "tracepoint", "--canary-interval-seconds", "1"]);
    // A few complete rounds first: the canary sees all four families while nothing is wrong.
    d.wait_for(scaled(Duration::from_secs(10)), |_| false);
    let st = d.status();
    assert!(
        st["canary"]["rounds"]["complete"].as_u64().unwrap() >= 2,
        "{st}"
    );
    assert_eq!(st["canary"]["blind"], serde_json::json!([]));
    assert!(
        !d.lines().iter().any(|l| l["process"]["pid"] == d.pid()),
        "the canary's own events stay out of the log"
    );
    // Detach the daemon's successful-bind hooks (the links that appeared with it).
    let mine: Vec<u64> = links()
        .iter()
        .filter(|l| {
            l["attach_type"]
                .as_str()
                .is_some_and(|t| t.ends_with("_post_bind"))
        })
        .filter_map(|l| l["id"].as_u64())
        .filter(|id| !before.contains(id))
        .collect();
    assert_eq!(mine.len(), 2, "post_bind4 and post_bind6");
    for id in &mine {
        stdout_of(
            Command::new("bpftool").args(["link", "detach", "id", &id.to_string()]),
            "bpftool link detach",
        );
    }
    let a = d.wait_alert("blind", |e| e["alert"]["kind"] == "monitoring_blind");
    assert_eq!(
        a["alert"]["detail"]["families"],
        serde_json::json!(["bind"])
    );
    assert_eq!(a["origin"], "canary");
    assert_eq!(d.status()["canary"]["blind"], serde_json::json!(["bind"]));
    // The readable status says it too.
    let text = portwatch_output(["status", "--socket", d.socket.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("BLIND: bind deliver no events"), "{text}");
    assert!(d.stderr_text().contains("ERROR"));
    let (exit, lines) = d.stop();
    assert!(exit.success());
    schema::check_log(&lines).unwrap();
}
