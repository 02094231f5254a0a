//! The event log contract, schema version 1 (docs/schema.md). Every line the daemon writes is
//! one of these records serialized as a single JSON object.
use std::{collections::BTreeMap, net::SocketAddr};

use serde::Serialize;

use crate::{
    attribution::Attribution,
    attribution::cgroup::Container,
    attribution::ports::PortInfo,
    kernel::attach::FamilyAttachment,
    kernel::decode::{KernelEvent, Transport},
    output::errno,
};

pub const SCHEMA_VERSION: u32 = 1;

/// Fields every line starts with.
#[derive(Debug, Serialize)]
pub struct Header<'a> {
    pub schema: u32,
    pub timestamp: String,
    pub seq: u64,
    pub host: Host<'a>,
    pub event: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Host<'a> {
    pub name: &'a str,
}

/// bind, listen, connect and close.
#[derive(Debug, Serialize)]
pub struct PortRecord<'a> {
    #[serde(flatten)]
    pub header: Header<'a>,
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno: Option<i32>,
    pub network: Network,
    /// Class of the local port.
    pub port: PortInfo,
    pub process: Process,
    pub probe: &'static str,
    /// `kernel` (a live eBPF record) or `snapshot` (found by the start-up socket scan).
    pub origin: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Network {
    pub transport: &'static str,
    #[serde(rename = "type")]
    pub ip_type: &'static str,
    pub local: Endpoint,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<Endpoint>,
    /// Inode of the network namespace; null when the kernel side could not read it.
    pub netns: Option<u32>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Endpoint {
    pub address: String,
    pub port: u16,
}

impl From<SocketAddr> for Endpoint {
    fn from(a: SocketAddr) -> Self {
        Endpoint {
            address: a.ip().to_string(),
            port: a.port(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Process {
    pub pid: u32,
    pub tid: u32,
    pub ppid: Option<u32>,
    pub parent_comm: Option<String>,
    pub comm: String,
    pub executable: Option<String>,
    pub command_line: Option<Vec<String>>,
    /// Present (true) only when the command line was cut at `MAX_CMDLINE_BYTES`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub command_line_truncated: bool,
    pub cgroup: Option<String>,
    pub unit: Option<String>,
    pub container: Option<Container>,
    pub user: User,
    pub group: Group,
}

#[derive(Debug, Serialize)]
pub struct User {
    pub id: u32,
    pub name: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Group {
    pub id: u32,
}

/// The first line of every run.
#[derive(Debug, Serialize)]
pub struct StatusRecord<'a> {
    #[serde(flatten)]
    pub header: Header<'a>,
    pub daemon: DaemonInfo,
    pub kernel: KernelInfo,
    pub attach: BTreeMap<String, &'a FamilyAttachment>,
    pub ring_buffer_bytes: u32,
    /// `start`, `periodic` or `stop`.
    pub reason: &'static str,
    /// Events written and lost, cache sizes and evictions, store and log figures.
    pub counters: serde_json::Value,
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
pub struct LossRecord<'a> {
    #[serde(flatten)]
    pub header: Header<'a>,
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

impl<'a> PortRecord<'a> {
    pub fn new(
        header: Header<'a>,
        ev: &KernelEvent,
        attr: Attribution,
        port: PortInfo,
        origin: &'static str,
    ) -> Self {
        PortRecord {
            header,
            outcome: if ev.errno.is_some() {
                "failure"
            } else {
                "success"
            },
            error: ev.errno.map(errno::name),
            errno: ev.errno,
            network: Network::of(ev),
            port,
            process: Process::of(ev, attr),
            probe: ev.probe,
            origin,
        }
    }
}

impl Network {
    pub fn of(ev: &KernelEvent) -> Self {
        Network {
            transport: match ev.transport {
                Transport::Tcp => "tcp",
                Transport::Udp => "udp",
            },
            ip_type: if ev.local.is_ipv4() { "ipv4" } else { "ipv6" },
            local: ev.local.into(),
            peer: ev.peer.map(Endpoint::from),
            netns: (ev.netns != 0).then_some(ev.netns),
        }
    }
}

impl Process {
    pub fn of(ev: &KernelEvent, attr: Attribution) -> Self {
        Process {
            pid: ev.pid,
            tid: ev.tid,
            ppid: attr.ppid,
            parent_comm: attr.parent_comm,
            comm: String::from_utf8_lossy(&ev.comm).into_owned(),
            executable: attr.executable,
            command_line: attr.command_line,
            command_line_truncated: attr.command_line_truncated,
            cgroup: attr.cgroup,
            unit: attr.unit,
            container: attr.container,
            user: User {
                id: ev.uid,
                name: attr.user_name,
            },
            group: Group { id: ev.gid },
        }
    }
}

/// An alert (docs/schema.md): what was found, and the socket and process it is about (null for
/// alerts about an absence, like a required listener that is gone).
#[derive(Debug, Serialize)]
pub struct AlertRecord<'a> {
    #[serde(flatten)]
    pub header: Header<'a>,
    pub alert: &'a crate::judgement::alert::AlertBody,
    pub network: &'a serde_json::Value,
    pub port: &'a serde_json::Value,
    pub process: &'a serde_json::Value,
    /// `kernel`, `snapshot` (start-up scan) or `reconcile` (periodic scan).
    pub origin: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::decode::Kind;

    fn header() -> Header<'static> {
        Header {
            schema: SCHEMA_VERSION,
            timestamp: "2026-11-27T00:00:00.000000001Z".into(),
            seq: 7,
            host: Host { name: "h" },
            event: "connect",
        }
    }

    fn port() -> PortInfo {
        crate::attribution::ports::EphemeralRange::default().info(5000)
    }

    fn kernel_event() -> KernelEvent {
        KernelEvent {
            monotonic_ns: 1,
            cpu: 0,
            cpu_seq: 0,
            cookie: 0,
            cgroup_id: 0,
            pid: 10,
            tid: 11,
            uid: 0,
            gid: 0,
            netns: 4026531840,
            errno: Some(111),
            kind: Kind::Connect,
            transport: Transport::Tcp,
            local: "[::1]:5000".parse().unwrap(),
            peer: Some("[::1]:1".parse().unwrap()),
            comm: b"a\"b\n\xff".to_vec(),
            probe: "cgroup:connect6",
            port_requested: false,
        }
    }

    #[test]
    fn failure_record_has_error_name_number_and_peer() {
        let rec = PortRecord::new(
            header(),
            &kernel_event(),
            Attribution::default(),
            port(),
            "kernel",
        );
        let v: serde_json::Value = serde_json::to_value(&rec).unwrap();
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
    }

    #[test]
    fn hostile_comm_stays_one_valid_json_line() {
        let rec = PortRecord::new(
            header(),
            &kernel_event(),
            Attribution::default(),
            port(),
            "kernel",
        );
        let line = serde_json::to_string(&rec).unwrap();
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["process"]["comm"], "a\"b\n\u{fffd}");
    }

    #[test]
    fn success_record_omits_error_fields() {
        let mut ev = kernel_event();
        ev.errno = None;
        let v = serde_json::to_value(PortRecord::new(
            header(),
            &ev,
            Attribution::default(),
            port(),
            "kernel",
        ))
        .unwrap();
        assert_eq!(v["outcome"], "success");
        assert!(v.get("error").is_none() && v.get("errno").is_none());
    }
}
