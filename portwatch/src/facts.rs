//! The values the stages hand each other (docs/architecture.md): a kernel record decoded
//! (`KernelEvent`), the process behind it (`ProcessFacts`), both together as `PortFacts`, and the
//! `Alert`s judgement makes of them. Plain data: this module depends on no stage, and the event
//! log's schema (`output::schema`) is built from these types only.
use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use serde::{Deserialize, Serialize};

/// What happened to a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Bind,
    Listen,
    Connect,
    Close,
    /// The end of a non-blocking TCP connect's handshake.
    ConnectResult,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Bind,
        Kind::Listen,
        Kind::Connect,
        Kind::Close,
        Kind::ConnectResult,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Bind => "bind",
            Kind::Listen => "listen",
            Kind::Connect => "connect",
            Kind::Close => "close",
            Kind::ConnectResult => "connect_result",
        }
    }

    /// Position in `ALL`, for per-kind counters.
    pub const fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Tcp,
    Udp,
}

impl Transport {
    pub const fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a fact reached the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// A live eBPF record.
    Kernel,
    /// The start-up socket scan.
    Snapshot,
    /// The periodic reconciliation scan.
    Reconcile,
    /// A summary of counted repeats.
    Summary,
    /// The canary's own test sockets.
    Canary,
}

impl Origin {
    pub const fn as_str(self) -> &'static str {
        match self {
            Origin::Kernel => "kernel",
            Origin::Snapshot => "snapshot",
            Origin::Reconcile => "reconcile",
            Origin::Summary => "summary",
            Origin::Canary => "canary",
        }
    }
}

/// What a socket is doing with its local port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SocketRole {
    Bound,
    Listening,
    Connected,
}

impl SocketRole {
    pub const fn as_str(self) -> &'static str {
        match self {
            SocketRole::Bound => "bound",
            SocketRole::Listening => "listening",
            SocketRole::Connected => "connected",
        }
    }

    /// What a socket found by a scan, shaped as an event of `kind`, does with its port.
    pub fn of(kind: Kind) -> Self {
        match kind {
            Kind::Listen => SocketRole::Listening,
            Kind::Connect | Kind::ConnectResult => SocketRole::Connected,
            Kind::Bind | Kind::Close => SocketRole::Bound,
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "bound" => Some(SocketRole::Bound),
            "listening" => Some(SocketRole::Listening),
            "connected" => Some(SocketRole::Connected),
            _ => None,
        }
    }
}

/// A decoded kernel record (or a socket found by a scan, shaped like one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelEvent {
    pub monotonic_ns: u64,
    pub cpu: u32,
    pub cpu_seq: u64,
    pub cookie: u64,
    pub cgroup_id: u64,
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub netns: u32,
    /// `None` on success (and for a connect still in progress).
    pub errno: Option<i32>,
    /// A non-blocking connect whose call returned before its handshake ended (EINPROGRESS): not
    /// a failure, and not yet a success.
    pub in_progress: bool,
    pub kind: Kind,
    pub transport: Transport,
    pub local: SocketAddr,
    pub peer: Option<SocketAddr>,
    /// `task->comm` as the kernel had it: up to 15 bytes, not necessarily UTF-8.
    pub comm: Vec<u8>,
    pub probe: &'static str,
    /// A bind that named its port (not `bind(…, 0)`).
    pub port_requested: bool,
    /// A bind the kernel made without a bind() call (a UDP send from an unbound socket).
    pub implicit: bool,
    /// `ConnectResult`: the socket was closed by its owner before the handshake ended.
    pub aborted: bool,
    /// `ConnectResult`: from the SYN to the handshake's end.
    pub duration_ns: Option<u64>,
}

impl KernelEvent {
    /// The network namespace, where the kernel side could read it.
    pub fn netns(&self) -> Option<u32> {
        (self.netns != 0).then_some(self.netns)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PortClass {
    /// 0–1023
    WellKnown,
    /// 1024–49151
    Registered,
    /// 49152–65535
    Dynamic,
}

impl PortClass {
    pub const fn as_str(self) -> &'static str {
        match self {
            PortClass::WellKnown => "well-known",
            PortClass::Registered => "registered",
            PortClass::Dynamic => "dynamic",
        }
    }
}

/// `port` in an event: its IANA class and whether it is ephemeral on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortInfo {
    pub class: PortClass,
    pub ephemeral: bool,
    /// Bind events from the kernel only: the caller named this port (true) or let the kernel
    /// pick it (false, `bind(…, 0)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerRuntime {
    #[serde(rename = "docker")]
    Docker,
    #[serde(rename = "containerd")]
    Containerd,
    #[serde(rename = "cri-o")]
    CriO,
    #[serde(rename = "podman")]
    Podman,
    #[serde(rename = "lxc")]
    Lxc,
    /// A Kubernetes pod whose runtime the cgroup path does not name.
    #[serde(rename = "cri")]
    Cri,
}

impl ContainerRuntime {
    pub const fn as_str(self) -> &'static str {
        match self {
            ContainerRuntime::Docker => "docker",
            ContainerRuntime::Containerd => "containerd",
            ContainerRuntime::CriO => "cri-o",
            ContainerRuntime::Podman => "podman",
            ContainerRuntime::Lxc => "lxc",
            ContainerRuntime::Cri => "cri",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            ContainerRuntime::Docker,
            ContainerRuntime::Containerd,
            ContainerRuntime::CriO,
            ContainerRuntime::Podman,
            ContainerRuntime::Lxc,
            ContainerRuntime::Cri,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    pub id: String,
    pub runtime: ContainerRuntime,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: u32,
    pub name: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub id: u32,
}

/// Everything known about the process behind a socket: the one shape of process facts, from
/// /proc, from exec records (the process table) or from the history store. What could not be
/// learned stays None; nothing is guessed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProcessFacts {
    pub pid: u32,
    pub tid: u32,
    pub ppid: Option<u32>,
    /// The parent's comm (from /proc, or the process table once the parent is gone).
    pub parent_comm: Option<String>,
    pub comm: String,
    pub executable: Option<String>,
    /// Present (true) only when the executable path is the one captured at exec and was longer
    /// than the record holds (255 bytes), so it is cut.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub executable_truncated: bool,
    pub command_line: Option<Vec<String>>,
    /// Present (true) only when the command line was cut at its bound.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub command_line_truncated: bool,
    /// cgroup v2 path, and the systemd unit and container it names.
    pub cgroup: Option<String>,
    pub unit: Option<String>,
    pub container: Option<Container>,
    pub user: User,
    pub group: Group,
}

/// An address and port. The address is kept as an address, not text: built for every event, it
/// must not allocate (serde writes it as the same text `Display` gives).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub address: IpAddr,
    pub port: u16,
}

impl Endpoint {
    /// The address as text (what `Display` writes), without allocating.
    pub fn address_text(&self) -> AddressText {
        AddressText::of(self.address)
    }
}

/// An address as text, held on the stack (an IPv6 address with an IPv4 tail is at most 45
/// bytes).
#[derive(Clone, Copy)]
pub struct AddressText {
    buf: [u8; 48],
    len: u8,
}

impl AddressText {
    pub fn of(address: IpAddr) -> Self {
        let mut t = AddressText {
            buf: [0; 48],
            len: 0,
        };
        match address {
            IpAddr::V4(a) => {
                let mut at = 0;
                for (i, octet) in a.octets().into_iter().enumerate() {
                    if i > 0 {
                        t.buf[at] = b'.';
                        at += 1;
                    }
                    let (digits, n) = OCTETS[usize::from(octet)];
                    t.buf[at..at + 3].copy_from_slice(&digits);
                    at += usize::from(n);
                }
                t.len = at as u8;
            }
            IpAddr::V6(a) => {
                use std::io::Write as _;
                let mut w = &mut t.buf[..];
                let _ = write!(w, "{a}");
                let left = w.len();
                t.len = (48 - left) as u8;
            }
        }
        t
    }

    pub fn as_str(&self) -> &str {
        let bytes = &self.buf[..usize::from(self.len)];
        // SAFETY: only ASCII is ever written into `buf` (digits, dots, and what `Ipv6Addr`'s
        // `Display` writes: hex digits, colons, dots); validating it per address was measurable.
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }
}

/// Each octet's decimal digits, left-aligned, and how many there are.
const OCTETS: [([u8; 3], u8); 256] = {
    let mut table = [([0u8; 3], 0u8); 256];
    let mut i = 0;
    while i < 256 {
        let v = i as u8;
        table[i] = if v >= 100 {
            ([b'0' + v / 100, b'0' + v / 10 % 10, b'0' + v % 10], 3)
        } else if v >= 10 {
            ([b'0' + v / 10, b'0' + v % 10, 0], 2)
        } else {
            ([b'0' + v, 0, 0], 1)
        };
        i += 1;
    }
    table
};

impl From<SocketAddr> for Endpoint {
    fn from(a: SocketAddr) -> Self {
        Endpoint {
            address: a.ip(),
            port: a.port(),
        }
    }
}

/// A socket's addresses, as the event log's `network` object carries them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub transport: Transport,
    #[serde(rename = "type")]
    pub ip_type: IpType,
    pub local: Endpoint,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<Endpoint>,
    /// Inode of the network namespace; null when the kernel side could not read it.
    pub netns: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpType {
    Ipv4,
    Ipv6,
}

impl IpType {
    pub const fn as_str(self) -> &'static str {
        match self {
            IpType::Ipv4 => "ipv4",
            IpType::Ipv6 => "ipv6",
        }
    }
}

impl Network {
    pub fn of(ev: &KernelEvent) -> Self {
        Network {
            transport: ev.transport,
            ip_type: if ev.local.is_ipv4() {
                IpType::Ipv4
            } else {
                IpType::Ipv6
            },
            local: ev.local.into(),
            peer: ev.peer.map(Endpoint::from),
            netns: ev.netns(),
        }
    }
}

/// A port event with everything attribution learned: the hand-off from attribution to history,
/// judgement and output.
#[derive(Debug, Clone)]
pub struct PortFacts {
    pub event: KernelEvent,
    pub network: Network,
    pub port: PortInfo,
    /// Shared by every event attribution found the same facts for (`Attributor`): events are
    /// many, processes few, and each event's stages only read it.
    pub process: Arc<ProcessFacts>,
    pub origin: Origin,
    /// When it happened, Unix nanoseconds (the kernel's clock turned into wall time).
    pub wall_ns: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    UnexpectedListener,
    WildcardListener,
    EphemeralPortListener,
    RequiredListenerMissing,
    EphemeralPortExhaustion,
    MonitoringBlind,
    AlertsForgotten,
}

impl AlertKind {
    pub const ALL: [AlertKind; 7] = [
        AlertKind::UnexpectedListener,
        AlertKind::WildcardListener,
        AlertKind::EphemeralPortListener,
        AlertKind::RequiredListenerMissing,
        AlertKind::EphemeralPortExhaustion,
        AlertKind::MonitoringBlind,
        AlertKind::AlertsForgotten,
    ];

    /// Position in `ALL`, for per-kind counters.
    pub const fn index(self) -> usize {
        self as usize
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            AlertKind::UnexpectedListener => "unexpected_listener",
            AlertKind::WildcardListener => "wildcard_listener",
            AlertKind::EphemeralPortListener => "ephemeral_port_listener",
            AlertKind::RequiredListenerMissing => "required_listener_missing",
            AlertKind::EphemeralPortExhaustion => "ephemeral_port_exhaustion",
            AlertKind::MonitoringBlind => "monitoring_blind",
            AlertKind::AlertsForgotten => "alerts_forgotten",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Medium,
    High,
}

impl Severity {
    pub const fn as_str(self) -> &'static str {
        match self {
            Severity::Medium => "medium",
            Severity::High => "high",
        }
    }
}

/// The `alert` object of an alert line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertBody {
    pub kind: AlertKind,
    pub severity: Severity,
    /// The rule that matched (and why it is not enough), or why nothing did.
    pub rule: String,
    /// When this alert was first raised (RFC 3339); kept across restarts.
    pub first_seen: String,
    /// Occurrences since `first_seen`.
    pub count: u64,
    /// True on a line that summarises repeats counted instead of alerted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub summary: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
}

/// The socket and process an alert is about (each None, null in the line, for alerts about an
/// absence, like a required listener that is gone).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Subject {
    pub network: Option<Network>,
    pub port: Option<PortInfo>,
    pub process: Option<ProcessFacts>,
}

impl Subject {
    pub fn of(facts: &PortFacts) -> Self {
        Subject {
            network: Some(facts.network),
            port: Some(facts.port),
            process: Some(ProcessFacts::clone(&facts.process)),
        }
    }
}

/// An alert to write: body, what it is about, and how it was found.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub body: AlertBody,
    pub subject: Subject,
    pub origin: Origin,
}

/// Fixtures for the stages' unit tests.
#[cfg(test)]
pub(crate) mod fixture {
    use super::*;

    /// A successful event of `kind` by pid 10 (comm "x") on `local`.
    pub fn event(kind: Kind, transport: Transport, local: &str) -> KernelEvent {
        KernelEvent {
            monotonic_ns: 1,
            cpu: 0,
            cpu_seq: 0,
            cookie: 0,
            cgroup_id: 0,
            pid: 10,
            tid: 10,
            uid: 0,
            gid: 0,
            netns: 7,
            errno: None,
            in_progress: false,
            kind,
            transport,
            local: local.parse().expect("a socket address"),
            peer: None,
            comm: b"x".to_vec(),
            probe: "test",
            port_requested: false,
            implicit: false,
            aborted: false,
            duration_ns: None,
        }
    }

    /// A TCP event of `kind` on 127.0.0.1:1 by `pid` (as its only thread).
    pub fn event_of(pid: u32, kind: Kind) -> KernelEvent {
        KernelEvent {
            pid,
            tid: pid,
            ..event(kind, Transport::Tcp, "127.0.0.1:1")
        }
    }

    /// The event with nothing learned about its process, at `wall_ns`.
    pub fn facts(event: KernelEvent, wall_ns: i64) -> PortFacts {
        PortFacts {
            network: Network::of(&event),
            port: PortInfo {
                class: PortClass::Registered,
                ephemeral: false,
                requested: None,
            },
            process: Arc::new(ProcessFacts {
                pid: event.pid,
                tid: event.tid,
                ..ProcessFacts::default()
            }),
            origin: Origin::Kernel,
            wall_ns,
            event,
        }
    }
}
