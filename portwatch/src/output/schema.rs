//! The event log contract, schema version 1 (docs/schema.md). Every line the daemon writes is
//! one of these records serialized as a single JSON object.
use serde::Serialize;

use crate::{
    facts::{Alert, AlertBody, Network, Origin, PortFacts, PortInfo, ProcessFacts, SocketRole},
    output::errno,
};

pub const SCHEMA_VERSION: u32 = 1;

/// Fields every line starts with.
#[derive(Debug, Serialize)]
pub struct Header<'a> {
    pub schema: u32,
    pub timestamp: &'a str,
    pub seq: u64,
    pub host: Host<'a>,
    pub event: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Host<'a> {
    pub name: &'a str,
    /// This boot's id (`/proc/sys/kernel/random/boot_id`): socket cookies and pids are unique
    /// only within one boot. Absent when unreadable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<&'a str>,
}

/// One line of the log: the header, then the fields of its kind of event (one of the records
/// below), side by side in one object.
#[derive(Debug, Serialize)]
pub struct Line<'a, B: Serialize> {
    #[serde(flatten)]
    pub header: Header<'a>,
    #[serde(flatten)]
    pub body: B,
}

/// bind, listen, connect, close and connect_result.
#[derive(Debug, Serialize)]
pub struct PortRecord<'a> {
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno: Option<i32>,
    /// connect_result: from the SYN to the handshake's end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ns: Option<u64>,
    /// bind: the kernel took the port without a bind() call.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub implicit: bool,
    pub network: &'a Network,
    /// Class of the local port.
    pub port: PortInfo,
    /// `ProcessFacts`, serialized once per process image (`output::ProcessJson`).
    pub process: &'a serde_json::value::RawValue,
    pub probe: &'static str,
    /// `kernel` (a live eBPF record) or `snapshot` (found by the start-up socket scan).
    pub origin: Origin,
    /// The kernel's socket cookie: one socket's events (and its `holding` line) share it, on
    /// one host until reboot. Omitted when the kernel gave none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cookie: Option<u64>,
}

impl<'a> PortRecord<'a> {
    /// `process` is `f.process` as JSON.
    pub fn new(f: &'a PortFacts, process: &'a serde_json::value::RawValue) -> Self {
        let errno = f.event.errno;
        PortRecord {
            outcome: match (errno, f.event.in_progress, f.event.aborted) {
                (Some(_), ..) => "failure",
                (None, true, _) => "in_progress",
                (None, _, true) => "aborted",
                (None, false, false) => "success",
            },
            error: errno.map(errno::name),
            errno,
            duration_ns: f.event.duration_ns,
            implicit: f.event.implicit,
            network: &f.network,
            port: f.port,
            process,
            probe: f.event.probe,
            origin: f.origin,
            cookie: (f.event.cookie != 0).then_some(f.event.cookie),
        }
    }
}

/// One holding of a port, written when it ends (`[log] holdings`): what `portwatch who` keeps
/// of it, so that a central store can answer "who held port X at time T" from lines alone.
#[derive(Debug, Serialize)]
pub struct HoldingRecord<'a> {
    /// `bound`, `listening` or `connected`.
    pub role: SocketRole,
    pub network: Network,
    /// Its holder, the command line cut as the history keeps it (1 KiB).
    pub process: &'a ProcessFacts,
    pub opened: String,
    pub closed: String,
    pub duration_ns: u64,
    /// Why `closed` is not a release the kernel reported (a lost release, a superseded socket).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub close_note: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cookie: Option<u64>,
}

/// The first line of every run, the last, and one every `[status] event_interval_seconds`:
/// `attach` says which strategy each hook family took, `counters` what every stage did and could
/// not do (their types are the stages'; see `ops::status::Counters`).
#[derive(Debug, Serialize)]
pub struct StatusRecord<A: Serialize, C: Serialize> {
    pub daemon: DaemonInfo,
    pub kernel: KernelInfo,
    pub attach: A,
    pub ring_buffer_bytes: u32,
    /// `start`, `periodic` or `stop`.
    pub reason: &'static str,
    pub counters: C,
}

#[derive(Debug, Serialize)]
pub struct DaemonInfo {
    pub version: &'static str,
    pub pid: u32,
}

#[derive(Debug, Serialize)]
pub struct KernelInfo {
    pub release: String,
}

/// Records the kernel could not deliver.
#[derive(Debug, Serialize)]
pub struct LossRecord {
    pub loss: Loss,
}

#[derive(Debug, Serialize)]
pub struct Loss {
    /// Records lost since the previous loss event.
    pub count: u64,
    /// Records lost since the programs were loaded.
    pub total: u64,
    /// `ring_buffer_full` (the kernel could not queue records) or `log_write_failed` (the daemon
    /// could not write lines to the log file: disk full, directory gone).
    pub reason: &'static str,
}

/// An alert (docs/schema.md): what was found, and the socket and process it is about (null for
/// alerts about an absence, like a required listener that is gone).
#[derive(Debug, Serialize)]
pub struct AlertRecord<'a> {
    pub alert: &'a AlertBody,
    pub network: Option<&'a Network>,
    pub port: Option<PortInfo>,
    pub process: Option<&'a ProcessFacts>,
    /// `kernel`, `snapshot` (start-up scan), `reconcile` (periodic scan), `summary` or `canary`.
    pub origin: Origin,
}

impl<'a> AlertRecord<'a> {
    pub fn new(a: &'a Alert) -> Self {
        AlertRecord {
            alert: &a.body,
            network: a.subject.network.as_ref(),
            port: a.subject.port,
            process: a.subject.process.as_ref(),
            origin: a.origin,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::{Kind, Transport, fixture};

    fn header() -> Header<'static> {
        Header {
            schema: SCHEMA_VERSION,
            timestamp: "2026-11-27T00:00:00.000000001Z",
            seq: 7,
            host: Host {
                name: "h",
                boot_id: None,
            },
            event: "connect",
        }
    }

    /// The line of `f`, as the output writes it (its process serialized on its own first).
    fn text(f: &PortFacts) -> String {
        let process = serde_json::value::to_raw_value(&f.process).unwrap();
        serde_json::to_string(&Line {
            header: header(),
            body: PortRecord::new(f, &process),
        })
        .unwrap()
    }

    fn value(f: &PortFacts) -> serde_json::Value {
        serde_json::from_str(&text(f)).unwrap()
    }

    fn facts() -> PortFacts {
        let mut ev = fixture::event(Kind::Connect, Transport::Tcp, "[::1]:5000");
        ev.pid = 10;
        ev.tid = 11;
        ev.netns = 4026531840;
        ev.errno = Some(111);
        ev.peer = Some("[::1]:1".parse().unwrap());
        ev.comm = b"a\"b\n\xff".to_vec();
        let mut f = fixture::facts(ev, 1);
        std::sync::Arc::make_mut(&mut f.process).comm =
            String::from_utf8_lossy(&f.event.comm).into_owned();
        f
    }

    #[test]
    fn failure_record_has_error_name_number_and_peer() {
        let f = facts();
        let v: serde_json::Value = value(&f);
        assert_eq!(v["schema"], 1);
        assert_eq!(v["event"], "connect");
        assert_eq!(v["outcome"], "failure");
        assert_eq!(v["error"], "ECONNREFUSED");
        assert_eq!(v["errno"], 111);
        assert_eq!(v["network"]["type"], "ipv6");
        assert_eq!(v["network"]["local"]["address"], "::1");
        assert_eq!(v["network"]["peer"]["port"], 1);
        assert_eq!(v["network"]["netns"], 4026531840u32);
        assert_eq!(v["process"]["executable"], serde_json::Value::Null);
        assert_eq!(v["process"]["user"]["name"], serde_json::Value::Null);
        assert_eq!(v["origin"], "kernel");
    }

    #[test]
    fn hostile_comm_stays_one_valid_json_line() {
        let f = facts();
        let line = text(&f);
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["process"]["comm"], "a\"b\n\u{fffd}");
    }

    #[test]
    fn success_record_omits_error_fields() {
        let mut f = facts();
        f.event.errno = None;
        let v = value(&f);
        assert_eq!(v["outcome"], "success");
        assert!(v.get("error").is_none() && v.get("errno").is_none());
    }
}
