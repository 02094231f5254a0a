//! The repository's unit under a real systemd (`portwatch_tests::systemd`); the Debian
//! package's installed unit goes through the same in `package.rs`.
use portwatch_tests::systemd::{Systemd, exercise, repository_unit};

#[test]
fn unit_runs_under_a_real_systemd() {
    let (unit, bin) = repository_unit();
    let sd = Systemd::boot(&unit, &bin);
    exercise(&sd);
}
