//! The Debian package on this machine. `cargo xtask package` built it (`cargo xtask test` does,
//! before the tests); this installs it with dpkg, checks what it put where, runs the installed
//! unit and binary under a real systemd (`portwatch_tests::systemd`), then removes and purges it
//! and checks what each leaves behind.
use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use portwatch_tests::{
    require_root,
    systemd::{Systemd, exercise},
};

const UNIT: &str = "/usr/lib/systemd/system/portwatch.service";
const BIN: &str = "/usr/bin/portwatch";
const CONFIG: &str = "/etc/portwatch/portwatch.toml";
const POLICY: &str = "/etc/portwatch/policy.toml";
const STATE: &str = "/var/lib/portwatch";
const LOGS: &str = "/var/log/portwatch";

fn deb() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debian");
    fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .unwrap_or_else(|| {
            panic!(
                "no .deb in {}: run `cargo xtask package` (`cargo xtask test` does)",
                dir.display()
            )
        })
}

fn dpkg(args: &[&str]) {
    let o = Command::new("dpkg").args(args).output().expect("dpkg");
    assert!(
        o.status.success(),
        "dpkg {args:?}: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// dpkg's state of the package: `installed`, `config-files`, or `not-installed` (also when
/// dpkg has never heard of it).
fn state() -> String {
    let o = Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", "portwatch"])
        .output()
        .expect("dpkg-query");
    let s = String::from_utf8_lossy(&o.stdout).trim().to_string();
    if o.status.success() && !s.is_empty() {
        s
    } else {
        "not-installed".into()
    }
}

fn mode(path: &str) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .permissions()
        .mode()
        & 0o777
}

fn exists(path: &str) -> bool {
    Path::new(path).exists()
}

/// Purges the package whatever the test did, so that a failure leaves the machine as it was.
struct PurgeOnDrop;

impl Drop for PurgeOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "portwatch"]).output();
    }
}

#[test]
fn the_package_installs_runs_under_systemd_then_removes_and_purges() {
    require_root();
    let before = state();
    assert_eq!(
        before, "not-installed",
        "portwatch is already a Debian package on this machine ({before}); this test installs and \
         purges its own, so remove that one first"
    );
    let _purge = PurgeOnDrop;
    let deb = deb();
    dpkg(&["-i", deb.to_str().expect("path")]);
    assert_eq!(state(), "installed");

    // What it put where, with what modes.
    assert_eq!(mode(BIN), 0o755);
    let unit = fs::read_to_string(UNIT).expect("installed unit");
    assert!(
        unit.contains("ExecStart=/usr/bin/portwatch run --config /etc/portwatch/portwatch.toml"),
        "{unit}"
    );
    assert_eq!(mode(CONFIG), 0o640);
    assert_eq!(mode(POLICY), 0o640);
    let check = Command::new(BIN)
        .args(["check-policy", POLICY])
        .output()
        .expect("check-policy");
    assert!(check.status.success(), "{check:?}");
    // postinst wrote what listens now, not the template (this host has listeners: sshd, ...).
    let policy = fs::read_to_string(POLICY).expect("policy");
    assert!(policy.contains("[[allow]]"), "{policy}");
    for page in ["portwatch.1.gz", "portwatch-who.1.gz", "portwatch-top.1.gz"] {
        assert_eq!(
            mode(&format!("/usr/share/man/man1/{page}")),
            0o644,
            "{page}"
        );
    }
    for script in [
        "/usr/share/bash-completion/completions/portwatch",
        "/usr/share/zsh/site-functions/_portwatch",
        "/usr/share/fish/vendor_completions.d/portwatch.fish",
        "/usr/share/doc/portwatch/copyright",
    ] {
        assert!(exists(script), "{script}");
    }
    assert_eq!(mode(STATE), 0o700);
    assert_eq!(mode(LOGS), 0o750);
    // Nothing is enabled without being asked.
    let wants = fs::read_dir("/etc/systemd/system")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|d| d.file_name().to_string_lossy().ends_with(".wants"))
        .any(|d| d.path().join("portwatch.service").exists());
    assert!(!wants, "the package enabled portwatch.service");

    // The installed unit and binary under a real systemd.
    let sd = Systemd::boot(&unit, Path::new(BIN));
    exercise(&sd);
    drop(sd);

    // The operator's edits and the history survive a reinstall and a remove.
    fs::write(CONFIG, "# edited\n").expect("edit config");
    fs::write(Path::new(STATE).join("marker"), "history").expect("marker");
    dpkg(&["-i", deb.to_str().expect("path")]);
    assert_eq!(fs::read_to_string(CONFIG).expect("config"), "# edited\n");
    dpkg(&["-r", "portwatch"]);
    assert_eq!(state(), "config-files");
    for gone in [BIN, UNIT, "/usr/share/man/man1/portwatch.1.gz"] {
        assert!(!exists(gone), "{gone} left after remove");
    }
    assert_eq!(fs::read_to_string(CONFIG).expect("config"), "# edited\n");
    assert!(exists(POLICY), "policy removed by remove");
    assert!(
        exists(&format!("{STATE}/marker")),
        "history removed by remove"
    );

    dpkg(&["--purge", "portwatch"]);
    assert_eq!(state(), "not-installed");
    for gone in ["/etc/portwatch", STATE, LOGS] {
        assert!(!exists(gone), "{gone} left after purge");
    }
}
