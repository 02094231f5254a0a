//! A storm the daemon cannot keep up with, for seconds: the ring buffer stays full, and the event
//! loop must still turn (status answers, loss lines, the watchdog) between bounded batches. Its
//! own test binary, so no other test's daemon or traffic runs at the same time.
use std::time::Duration;

use portwatch_tests::{Daemon, schema};
#[test]
fn a_sustained_storm_neither_starves_the_loop_nor_holds_back_its_losses() {
    use std::{
        process::{Command, Stdio},
        time::Instant,
    };
    // 16 KiB of ring against two storms on two cores: the ring stays full for seconds, longer
    // than the test unit's 3 s watchdog period.
    let d = Daemon::start(&["--ring-buffer-kib", "16"]);
    let loadgen = portwatch_tests::scenario_binary().with_file_name("portwatch-loadgen");
    let spawn = || {
        Command::new(&loadgen)
            .args(["udp-bind", "400000"])
            .stdout(Stdio::null())
            .spawn()
            .expect("portwatch-loadgen")
    };
    // Two storms at a time for at least STORM, whatever this machine's speed: a storm that
    // ends early is replaced by another.
    const STORM: Duration = Duration::from_secs(5);
    let mut storms: Vec<_> = (0..2).map(|_| spawn()).collect();
    let started = Instant::now();
    let (mut answers, mut slowest) = (0u32, Duration::ZERO);
    let mut losses_during = 0usize;
    while started.elapsed() < Duration::from_secs(60) {
        let storming = started.elapsed() < STORM;
        let mut running = 0;
        for c in &mut storms {
            if c.try_wait().ok().flatten().is_none() {
                running += 1;
            } else if storming {
                *c = spawn();
                running += 1;
            }
        }
        if running == 0 {
            break;
        }
        // The status socket is answered from the event loop: an answer is a loop that turns.
        let asked = Instant::now();
        let st = d.status();
        slowest = slowest.max(asked.elapsed());
        answers += 1;
        assert!(st["pid"].is_u64(), "{st}");
        losses_during = d.lines().iter().filter(|l| l["event"] == "loss").count();
        std::thread::sleep(Duration::from_millis(200));
    }
    for mut c in storms {
        let _ = c.wait();
    }
    let storm = started.elapsed();
    eprintln!(
        "storm {storm:?}: {answers} status answers, slowest {slowest:?}, {losses_during} loss lines while it ran"
    );
    assert!(storm >= STORM, "the storm was too short to test anything");
    assert!(answers >= 3, "{answers} answers in {storm:?}");
    assert!(
        slowest < Duration::from_secs(2),
        "the loop stalled for {slowest:?}"
    );
    assert!(losses_during > 0, "no loss line while the ring was overrun");
    let (status, lines) = d.stop();
    assert!(
        status.success(),
        "the daemon survived the storm and stopped cleanly"
    );
    // The log rotated during the storm (by size): each line of the current file is checked.
    for l in &lines {
        schema::check(l).unwrap();
    }
    assert_eq!(
        lines.last().map(|l| l["reason"].clone()),
        Some("stop".into())
    );
}
