//! A flood while the reader is stalled: the ring buffer overflows, and the daemon reports exactly
//! how many records the kernel could not deliver. Its own test binary, so no other test's daemon
//! or traffic runs at the same time.
use std::time::Duration;

use portwatch_tests::{Daemon, count, of_pid, scenario, schema};

#[test]
fn overflow_while_stalled_is_reported_as_loss_with_the_missing_count() {
    // 16 KiB holds about 120 records; the storm makes 6000.
    let mut d = Daemon::start(&["--ring-buffer-kib", "16"]);
    d.signal(libc::SIGSTOP);
    let s = scenario(["udp-storm", "3000"]);
    let expected = 6000u64; // a bind and a close per socket
    d.signal(libc::SIGCONT);
    d.wait_for(Duration::from_secs(10), |l| {
        l.iter().any(|e| e["event"] == "loss")
    })
    .expect("a loss event after the stall");
    // Let the reader settle, then stop it (which drains and reports any last loss).
    std::thread::sleep(Duration::from_millis(500));
    let (status, lines) = d.stop();
    assert!(status.success());
    schema::check_log(&lines).unwrap();
    let mine = of_pid(&lines, s.pid);
    let delivered = (count(&mine, "bind") + count(&mine, "close")) as u64;
    let lost: u64 = lines
        .iter()
        .filter(|e| e["loss"]["reason"] == "ring_buffer_full")
        .map(|e| e["loss"]["count"].as_u64().unwrap())
        .sum();
    let last_total = lines
        .iter()
        .rev()
        .find(|e| e["loss"]["reason"] == "ring_buffer_full")
        .map(|e| e["loss"]["total"].as_u64().unwrap())
        .unwrap();
    assert_eq!(lost, last_total, "the counts add up to the running total");
    let missing = expected - delivered;
    assert!(
        missing > 0,
        "the ring buffer never overflowed: {delivered} of {expected} delivered"
    );
    // Every missing record of ours is counted. Records of other processes can be lost in the same
    // window; allow a little for them, and print both numbers for the record.
    eprintln!("delivered {delivered}, missing {missing}, loss events counted {lost}");
    assert!(lost >= missing, "lost {lost} < missing {missing}");
    assert!(
        lost - missing <= 32,
        "lost {lost} far above missing {missing}"
    );
}
