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
    let lines = d
        .wait_for(Duration::from_secs(10), |l| {
            l.iter()
                .any(|e| e["loss"]["reason"] == "pending_table_full")
        })
        .expect("a pending_table_full loss line");
    let lost: u64 = lines
        .iter()
        .filter(|e| e["loss"]["reason"] == "pending_table_full")
        .map(|e| e["loss"]["count"].as_u64().unwrap())
        .sum();
    let mine = of_pid(&d.events_of(s.pid, |_| true), s.pid);
    let port = listener.rsplit(':').next().unwrap().parse::<u64>().unwrap();
    let timed_out = mine
        .iter()
        .filter(|e| {
            e["event"] == "connect"
                && e["error"] == "ETIMEDOUT"
                && e["network"]["peer"]["port"] == port
        })
        .count() as u64;
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
