//! Turn the kernel's fixed-layout record into typed values. Pure: no I/O, no clocks.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use portwatch_common::{
    EXEC_FIXED_LEN, ExecEvent, HANDSHAKE_ABORTED, PortEvent, ProcEvent, RecordHeader, family, kind,
    lineage, probe, protocol,
};

pub use crate::facts::{KernelEvent, Kind, Transport};

/// An exec captured in the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRecord {
    pub monotonic_ns: u64,
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub filename: Vec<u8>,
    /// argv, NUL-separated.
    pub args: Vec<u8>,
    pub args_truncated: bool,
    /// The filename was longer than the record holds and is cut.
    pub filename_truncated: bool,
}

/// Anything the ring buffer carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Port(KernelEvent),
    Exec(ExecRecord),
    Fork {
        child: u32,
        parent: u32,
        monotonic_ns: u64,
    },
    Exit {
        pid: u32,
        monotonic_ns: u64,
    },
}

/// Decodes any ring-buffer record: the kind in its header says which record it is, and the
/// record must be exactly that kind's size.
pub fn decode_any(bytes: &[u8]) -> Result<Record, DecodeError> {
    let header: RecordHeader = bytes
        .get(..size_of::<RecordHeader>())
        .and_then(read_exact)
        .ok_or(DecodeError::Header { got: bytes.len() })?;
    match header.kind {
        k @ (kind::BIND | kind::LISTEN | kind::CONNECT | kind::CLOSE | kind::HANDSHAKE) => {
            decode_record(&record::<PortEvent>(bytes, k)?).map(Record::Port)
        }
        lineage::EXEC => Ok(Record::Exec(exec_record(&exec_event(bytes)?))),
        k @ lineage::FORK => {
            let e: ProcEvent = record(bytes, k)?;
            Ok(Record::Fork {
                child: e.pid,
                parent: e.ppid,
                monotonic_ns: e.ts_ns,
            })
        }
        k @ lineage::EXIT => {
            let e: ProcEvent = record(bytes, k)?;
            Ok(Record::Exit {
                pid: e.pid,
                monotonic_ns: e.ts_ns,
            })
        }
        k => Err(DecodeError::Kind(k)),
    }
}

/// `bytes` as a `T`, if they are exactly its size.
fn read_exact<T: aya::Pod>(bytes: &[u8]) -> Option<T> {
    // SAFETY: the length is checked, and `T` is plain data valid for any bit pattern.
    (bytes.len() == size_of::<T>())
        .then(|| unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) })
}

/// `bytes` as the record of kind `kind`, whose layout is `T`.
fn record<T: aya::Pod>(bytes: &[u8], kind: u8) -> Result<T, DecodeError> {
    read_exact(bytes).ok_or(DecodeError::RecordSize {
        kind,
        got: bytes.len(),
        expected: size_of::<T>(),
    })
}

/// An exec record is sent without the unused end of its filename buffer: at least
/// `EXEC_FIXED_LEN` bytes, at most a whole `ExecEvent`, and never shorter than its own
/// `filename_len` says.
fn exec_event(bytes: &[u8]) -> Result<ExecEvent, DecodeError> {
    let size_error = || DecodeError::RecordSize {
        kind: lineage::EXEC,
        got: bytes.len(),
        expected: EXEC_FIXED_LEN,
    };
    if bytes.len() < EXEC_FIXED_LEN || bytes.len() > size_of::<ExecEvent>() {
        return Err(size_error());
    }
    let mut whole = [0u8; size_of::<ExecEvent>()];
    whole[..bytes.len()].copy_from_slice(bytes);
    let e: ExecEvent = read_exact(&whole).ok_or_else(size_error)?;
    if EXEC_FIXED_LEN + usize::from(e.filename_len) > bytes.len() {
        return Err(size_error());
    }
    Ok(e)
}

fn exec_record(e: &ExecEvent) -> ExecRecord {
    let flen = usize::from(e.filename_len).min(e.filename.len());
    let alen = (e.args_len as usize).min(e.args.len());
    ExecRecord {
        monotonic_ns: e.ts_ns,
        pid: e.pid,
        ppid: e.ppid,
        uid: e.uid,
        filename: e.filename[..flen]
            .split(|&b| b == 0)
            .next()
            .unwrap_or(&[])
            .to_vec(),
        args: e.args[..alen].to_vec(),
        args_truncated: e.args_truncated != 0,
        filename_truncated: e.filename_truncated != 0,
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record is {got} bytes, expected {expected}")]
    Size { got: usize, expected: usize },
    #[error("record is {got} bytes, too short for a record header")]
    Header { got: usize },
    #[error("record of kind {kind} is {got} bytes, expected {expected}")]
    RecordSize {
        kind: u8,
        got: usize,
        expected: usize,
    },
    #[error("unknown event kind {0}")]
    Kind(u8),
    #[error("unknown address family {0}")]
    Family(u8),
    #[error("unknown protocol {0}")]
    Protocol(u8),
    #[error("unknown probe id {0}")]
    Probe(u8),
}

/// Decodes one port record (`decode_any` takes any record).
pub fn decode(bytes: &[u8]) -> Result<KernelEvent, DecodeError> {
    let raw: PortEvent = read_exact(bytes).ok_or(DecodeError::Size {
        got: bytes.len(),
        expected: size_of::<PortEvent>(),
    })?;
    decode_record(&raw)
}

pub fn decode_record(raw: &PortEvent) -> Result<KernelEvent, DecodeError> {
    let kind = match raw.header.kind {
        kind::BIND => Kind::Bind,
        kind::LISTEN => Kind::Listen,
        kind::CONNECT => Kind::Connect,
        kind::CLOSE => Kind::Close,
        kind::HANDSHAKE => Kind::ConnectResult,
        k => return Err(DecodeError::Kind(k)),
    };
    let transport = match raw.protocol {
        protocol::TCP => Transport::Tcp,
        protocol::UDP => Transport::Udp,
        p => return Err(DecodeError::Protocol(p)),
    };
    let local_ip = ip(raw.family, &raw.local_addr)?;
    let peer_ip = ip(raw.family, &raw.peer_addr)?;
    let peer = match kind {
        Kind::Connect | Kind::ConnectResult => Some(SocketAddr::new(peer_ip, raw.peer_port)),
        _ if raw.peer_port != 0 => Some(SocketAddr::new(peer_ip, raw.peer_port)),
        _ => None,
    };
    let comm_len = raw
        .comm
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(raw.comm.len());
    const EINPROGRESS: i32 = 115;
    let in_progress = kind == Kind::Connect && raw.errno == EINPROGRESS;
    let aborted = kind == Kind::ConnectResult && raw.errno == HANDSHAKE_ABORTED;
    Ok(KernelEvent {
        monotonic_ns: raw.ts_ns,
        cpu: raw.cpu,
        cpu_seq: raw.cpu_seq,
        cookie: raw.cookie,
        cgroup_id: raw.cgroup_id,
        pid: raw.pid,
        tid: raw.tid,
        uid: raw.uid,
        gid: raw.gid,
        netns: raw.netns,
        errno: (raw.errno != 0 && !in_progress && !aborted).then_some(raw.errno),
        in_progress,
        kind,
        transport,
        local: SocketAddr::new(local_ip, raw.local_port),
        peer,
        comm: raw.comm[..comm_len].to_vec(),
        probe: probe_name(raw.probe)?,
        port_requested: raw.flags & portwatch_common::flags::PORT_REQUESTED != 0,
        implicit: kind == Kind::Bind && raw.flags & portwatch_common::flags::IMPLICIT != 0,
        aborted,
        duration_ns: (kind == Kind::ConnectResult).then_some(raw.duration_ns),
    })
}

fn ip(fam: u8, bytes: &[u8; 16]) -> Result<IpAddr, DecodeError> {
    match fam {
        family::INET => Ok(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        family::INET6 => Ok(IpAddr::V6(Ipv6Addr::from(*bytes))),
        f => Err(DecodeError::Family(f)),
    }
}

/// The text form of a probe id, as it appears in the event log's `probe` field.
pub fn probe_name(id: u8) -> Result<&'static str, DecodeError> {
    Ok(match id {
        probe::CGROUP_POST_BIND4 => "cgroup:post_bind4",
        probe::CGROUP_POST_BIND6 => "cgroup:post_bind6",
        probe::CGROUP_BIND4 => "cgroup:bind4",
        probe::CGROUP_BIND6 => "cgroup:bind6",
        probe::CGROUP_CONNECT4 => "cgroup:connect4",
        probe::CGROUP_CONNECT6 => "cgroup:connect6",
        probe::CGROUP_SOCK_RELEASE => "cgroup:sock_release",
        probe::TP_SYS_ENTER_LISTEN => "tracepoint:syscalls:sys_enter_listen",
        probe::TP_SYS_EXIT_BIND => "tracepoint:syscalls:sys_exit_bind",
        probe::CGROUP_SENDMSG4 => "cgroup:sendmsg4",
        probe::CGROUP_SENDMSG6 => "cgroup:sendmsg6",
        probe::CGROUP_SOCK_OPS => "cgroup:sock_ops",
        probe::KPROBE_INET_BIND => "kprobe:inet_bind",
        probe::KPROBE_INET6_BIND => "kprobe:inet6_bind",
        probe::KPROBE_INET_LISTEN => "kprobe:inet_listen",
        probe::KPROBE_INET_STREAM_CONNECT => "kprobe:inet_stream_connect",
        probe::KPROBE_INET_DGRAM_CONNECT => "kprobe:inet_dgram_connect",
        probe::KPROBE_INET_RELEASE => "kprobe:inet_release",
        probe::FEXIT_INET_BIND => "fexit:inet_bind",
        probe::FEXIT_INET6_BIND => "fexit:inet6_bind",
        probe::FEXIT_INET_LISTEN => "fexit:inet_listen",
        probe::FEXIT_INET_STREAM_CONNECT => "fexit:inet_stream_connect",
        probe::FEXIT_INET_DGRAM_CONNECT => "fexit:inet_dgram_connect",
        probe::FENTRY_INET_RELEASE => "fentry:inet_release",
        other => return Err(DecodeError::Probe(other)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> PortEvent {
        let mut e = PortEvent::ZERO;
        e.header = RecordHeader::new(kind::CONNECT);
        e.protocol = protocol::TCP;
        e.family = family::INET;
        e.probe = probe::CGROUP_CONNECT4;
        e.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        e.peer_addr[..4].copy_from_slice(&[127, 0, 0, 2]);
        e.local_port = 40000;
        e.peer_port = 8080;
        e.pid = 42;
        e.tid = 43;
        e.comm[..4].copy_from_slice(b"curl");
        e
    }

    fn bytes<T: aya::Pod>(e: &T) -> Vec<u8> {
        // SAFETY: plain data.
        unsafe { std::slice::from_raw_parts((e as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    fn proc_event(kind: u8, pid: u32, ppid: u32) -> ProcEvent {
        ProcEvent {
            header: RecordHeader::new(kind),
            pid,
            ts_ns: 7,
            ppid,
            _pad: 0,
        }
    }

    #[test]
    fn decodes_ipv4_connect() {
        let ev = decode(&bytes(&raw())).unwrap();
        assert_eq!(ev.kind, Kind::Connect);
        assert_eq!(ev.transport, Transport::Tcp);
        assert_eq!(ev.local, "127.0.0.1:40000".parse().unwrap());
        assert_eq!(ev.peer, Some("127.0.0.2:8080".parse().unwrap()));
        assert_eq!(ev.comm, b"curl");
        assert_eq!(ev.errno, None);
        assert_eq!(ev.probe, "cgroup:connect4");
    }

    #[test]
    fn decodes_ipv6_bind_failure_without_peer() {
        let mut r = raw();
        r.header.kind = kind::BIND;
        r.family = family::INET6;
        r.protocol = protocol::UDP;
        r.probe = probe::CGROUP_BIND6;
        r.local_addr = Ipv6Addr::LOCALHOST.octets();
        r.peer_port = 0;
        r.errno = 98;
        let ev = decode_record(&r).unwrap();
        assert_eq!(ev.local, "[::1]:40000".parse().unwrap());
        assert_eq!(ev.peer, None);
        assert_eq!(ev.errno, Some(98));
        assert_eq!(ev.transport, Transport::Udp);
    }

    #[test]
    fn comm_of_full_length_has_no_terminator() {
        let mut r = raw();
        r.comm = *b"0123456789abcdef";
        assert_eq!(decode_record(&r).unwrap().comm.len(), 16);
    }

    #[test]
    fn rejects_wrong_size_and_unknown_codes() {
        assert_eq!(
            decode(&[0u8; 3]),
            Err(DecodeError::Size {
                got: 3,
                expected: size_of::<PortEvent>()
            })
        );
        let mut r = raw();
        r.header.kind = 99;
        assert_eq!(decode_record(&r), Err(DecodeError::Kind(99)));
        let mut r = raw();
        r.family = 1;
        assert_eq!(decode_record(&r), Err(DecodeError::Family(1)));
        let mut r = raw();
        r.protocol = 1;
        assert_eq!(decode_record(&r), Err(DecodeError::Protocol(1)));
        let mut r = raw();
        r.probe = 200;
        assert_eq!(decode_record(&r), Err(DecodeError::Probe(200)));
    }

    #[test]
    fn any_record_is_told_apart_by_its_header() {
        assert_eq!(
            decode_any(&bytes(&raw())),
            Ok(Record::Port(decode_record(&raw()).unwrap()))
        );
        assert_eq!(
            decode_any(&bytes(&proc_event(lineage::FORK, 10, 9))),
            Ok(Record::Fork {
                child: 10,
                parent: 9,
                monotonic_ns: 7
            })
        );
        assert_eq!(
            decode_any(&bytes(&proc_event(lineage::EXIT, 10, 0))),
            Ok(Record::Exit {
                pid: 10,
                monotonic_ns: 7
            })
        );
        // SAFETY: ExecEvent is plain data; all zeros is a valid value.
        let mut exec: ExecEvent = unsafe { std::mem::zeroed() };
        exec.header = RecordHeader::new(lineage::EXEC);
        exec.pid = 5;
        exec.filename[..7].copy_from_slice(b"/bin/sh");
        exec.filename_len = 7;
        exec.args[..6].copy_from_slice(b"sh\0-c\0");
        exec.args_len = 6;
        let Ok(Record::Exec(r)) = decode_any(&bytes(&exec)[..EXEC_FIXED_LEN + 7]) else {
            panic!("an exec record decodes as one, sent without its filename's unused end");
        };
        assert_eq!(
            (r.pid, &r.filename[..], &r.args[..]),
            (5, &b"/bin/sh"[..], &b"sh\0-c\0"[..])
        );
    }

    #[test]
    fn any_record_of_the_wrong_size_or_kind_is_an_error() {
        // A port record's kind with a lineage record's size.
        let mut short = bytes(&raw());
        short.truncate(size_of::<ProcEvent>());
        assert_eq!(
            decode_any(&short),
            Err(DecodeError::RecordSize {
                kind: kind::CONNECT,
                got: size_of::<ProcEvent>(),
                expected: size_of::<PortEvent>()
            })
        );
        let mut long = bytes(&proc_event(lineage::EXIT, 1, 0));
        long.push(0);
        assert!(matches!(
            decode_any(&long),
            Err(DecodeError::RecordSize {
                kind: lineage::EXIT,
                got: 25,
                expected: 24
            })
        ));
        // An exec record shorter than its own filename length says.
        // SAFETY: ExecEvent is plain data; all zeros is a valid value.
        let mut exec: ExecEvent = unsafe { std::mem::zeroed() };
        exec.header = RecordHeader::new(lineage::EXEC);
        exec.filename_len = 9;
        assert!(matches!(
            decode_any(&bytes(&exec)[..EXEC_FIXED_LEN + 8]),
            Err(DecodeError::RecordSize {
                kind: lineage::EXEC,
                ..
            })
        ));
        assert!(decode_any(&bytes(&exec)[..EXEC_FIXED_LEN - 1]).is_err());
        let mut unknown = bytes(&raw());
        unknown[0] = 0;
        assert_eq!(decode_any(&unknown), Err(DecodeError::Kind(0)));
        assert_eq!(decode_any(&[]), Err(DecodeError::Header { got: 0 }));
        assert_eq!(
            decode_any(&[kind::BIND]),
            Err(DecodeError::Header { got: 1 })
        );
    }
}
