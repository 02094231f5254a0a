//! More calls in flight at once than the kernel's pending table holds: each one is either in the
//! log or counted as lost, and the daemon carries on. Its own test binary, so that its hundred
//! stalled threads disturb no other test's counts.
use std::time::Duration;

use portwatch_tests::{Daemon, of_pid, scenario, schema};
#[test]
fn calls_in_flight_beyond_the_pending_table_are_counted_as_lost() {
    // 100 connects hang at once on a dropped SYN; the kernel's table of calls in flight holds
    // 64. Every connect is either in the log (ETIMEDOUT) or counted as lost: none vanishes.
    let mut d = Daemon::start(&["--pending-entries", "64"]);
    let s = scenario(["connect-parallel", "100"]);
    assert_eq!(s.report["timed_out"], 100, "{}", s.report);
    let listener = s.report["listener"].as_str().unwrap().to_string();
    let port: u64 = listener.rsplit(':').next().unwrap().parse().unwrap();
    let pid = s.pid;
    // (connects logged, calls counted lost) in `lines`.
    let tally = move |lines: &[serde_json::Value]| {
        let lost: u64 = lines
            .iter()
            .filter(|e| e["loss"]["reason"] == "pending_table_full")
            .map(|e| e["loss"]["count"].as_u64().unwrap_or(0))
            .sum();
        let timed_out = of_pid(lines, pid)
            .iter()
            .filter(|e| {
                e["event"] == "connect"
                    && e["error"] == "ETIMEDOUT"
                    && e["network"]["peer"]["port"] == port
            })
            .count() as u64;
        (timed_out, lost)
    };
    let lines = d.wait_for(Duration::from_secs(10), |l| {
        let (t, l) = tally(l);
        t + l >= 100
    });
    let (timed_out, lost) = tally(&lines.unwrap_or_else(|| d.lines()));
    eprintln!("{timed_out} connects logged, {lost} counted lost");
    assert!(lost > 0, "the table never filled");
    // Other threads of the host may park a call while the table is full, and be counted too.
    assert!(
        timed_out + lost >= 100,
        "every connect logged or counted: {timed_out} + {lost}"
    );
    assert!(
        timed_out + lost <= 108,
        "{timed_out} + {lost}: far more lost than missing"
    );
    // Still answering, and the status says so too.
    let st = d.status();
    assert!(
        st["lost"]["pending_table_full"].as_u64() >= Some(lost),
        "{st}"
    );
    let (status, lines) = d.stop();
    assert!(status.success());
    schema::check_log(&lines).unwrap();
}
