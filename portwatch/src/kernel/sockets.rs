//! The kernel's socket tables right now, read over sock_diag netlink (as `ss` does); which
//! process holds each socket is attribution's (`attribution::procfs::socket_owners`). Used for the start-up
//! snapshot, `who`'s "now", policy reconciliation and `baseline`. Sees the network namespace the
//! caller runs in.
use std::{
    fs,
    net::{IpAddr, SocketAddr},
};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
};
use netlink_sys::{Socket, SocketAddr as NlAddr, protocols::NETLINK_SOCK_DIAG};

use crate::facts::{KernelEvent, Kind, SocketRole, Transport};

/// TCP states as the kernel numbers them (include/net/tcp_states.h).
pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_CLOSE: u8 = 7;
pub const TCP_LISTEN: u8 = 10;
pub const TCP_TIME_WAIT: u8 = 6;

#[derive(Debug, thiserror::Error)]
pub enum SockDiagError {
    #[error("sock_diag netlink socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("sock_diag answered with error {0}")]
    Kernel(i32),
    #[error("undecodable sock_diag message: {0}")]
    Decode(#[source] netlink_packet_core::DecodeError),
}

/// One socket as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelSocket {
    pub transport: Transport,
    pub local: SocketAddr,
    /// None when not connected (listeners, unconnected UDP).
    pub peer: Option<SocketAddr>,
    pub state: u8,
    pub uid: u32,
    pub inode: u32,
    pub cookie: u64,
}

impl KernelSocket {
    pub fn is_time_wait(&self) -> bool {
        self.transport == Transport::Tcp && self.state == TCP_TIME_WAIT
    }

    pub fn is_tcp_listener(&self) -> bool {
        self.transport == Transport::Tcp && self.state == TCP_LISTEN
    }

    /// What the socket does with its port.
    pub fn role(&self) -> SocketRole {
        match (self.transport, self.state) {
            (Transport::Tcp, TCP_LISTEN) => SocketRole::Listening,
            (_, _) if self.peer.is_some() => SocketRole::Connected,
            _ => SocketRole::Bound,
        }
    }

    /// The socket shaped like the port event that would have opened it (`probe` "sock_diag"),
    /// held by `pid` (0: no process holds it, or it closed during the scan). What only /proc can
    /// tell (comm, group) is attribution's to fill in.
    pub fn to_event(&self, pid: u32, netns: Option<u32>, monotonic_ns: u64) -> KernelEvent {
        KernelEvent {
            monotonic_ns,
            cpu: 0,
            cpu_seq: 0,
            cookie: self.cookie,
            cgroup_id: 0,
            pid,
            tid: pid,
            uid: self.uid,
            gid: 0,
            netns: netns.unwrap_or(0),
            errno: None,
            in_progress: false,
            kind: match self.role() {
                SocketRole::Listening => Kind::Listen,
                SocketRole::Connected => Kind::Connect,
                SocketRole::Bound => Kind::Bind,
            },
            transport: self.transport,
            local: self.local,
            peer: self.peer,
            comm: Vec::new(),
            probe: "sock_diag",
            // sock_diag does not say whether a port was asked for.
            port_requested: false,
            implicit: false,
            aborted: false,
            duration_ns: None,
        }
    }
}

/// Every TCP and UDP socket, IPv4 and IPv6, that holds a local port. TIME_WAIT sockets (no
/// owner, already closed by their process) are left out.
pub fn dump_all() -> Result<Vec<KernelSocket>, SockDiagError> {
    let mut out = dump_with_time_wait()?;
    out.retain(|s| !s.is_time_wait());
    Ok(out)
}

/// Every TCP and UDP socket that holds a local port, TIME_WAIT ones too (they still keep their
/// port from a new connection to the same peer: what fills an ephemeral range first).
pub fn dump_with_time_wait() -> Result<Vec<KernelSocket>, SockDiagError> {
    let mut out = Vec::new();
    for transport in [Transport::Tcp, Transport::Udp] {
        for family in [AF_INET, AF_INET6] {
            dump(family, transport, &mut out)?;
        }
    }
    out.retain(|s| s.local.port() != 0);
    Ok(out)
}

fn dump(
    family: u8,
    transport: Transport,
    out: &mut Vec<KernelSocket>,
) -> Result<(), SockDiagError> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&NlAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut request = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: match transport {
                Transport::Tcp => IPPROTO_TCP,
                Transport::Udp => IPPROTO_UDP,
            },
            extensions: ExtensionFlags::empty(),
            states: StateFlags::all(),
            socket_id: if family == AF_INET {
                SocketId::new_v4()
            } else {
                SocketId::new_v6()
            },
        })
        .into(),
    );
    request.finalize();
    let mut buf = vec![0; request.buffer_len()];
    request.serialize(&mut buf);
    socket.send(&buf, 0)?;

    let mut rx = vec![0u8; 64 * 1024];
    loop {
        let n = socket.recv(&mut &mut rx[..], 0)?;
        let mut offset = 0;
        while offset < n {
            let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&rx[offset..n])
                .map_err(SockDiagError::Decode)?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    let id = &r.header.socket_id;
                    let peer = SocketAddr::new(id.destination_address, id.destination_port);
                    let connected = id.destination_port != 0 || !is_unspecified(peer.ip());
                    out.push(KernelSocket {
                        transport,
                        local: SocketAddr::new(id.source_address, id.source_port),
                        peer: connected.then_some(peer),
                        state: r.header.state,
                        uid: r.header.uid,
                        inode: r.header.inode,
                        cookie: u64::from_ne_bytes(id.cookie),
                    });
                }
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => {
                    return Err(SockDiagError::Kernel(e.code.map(|c| c.get()).unwrap_or(0)));
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            offset += len;
        }
        if n == 0 {
            return Ok(());
        }
    }
}

fn is_unspecified(ip: IpAddr) -> bool {
    ip.is_unspecified()
}

/// Inode of the calling thread's network namespace: the one sock_diag lists to it (a thread may
/// have entered another than its process's).
pub fn own_netns() -> Option<u32> {
    netns_of(std::path::Path::new("/proc/thread-self/ns/net"))
}

/// The network namespace an `ns/net` link names (`net:[4026531840]`).
pub fn netns_of(link: &std::path::Path) -> Option<u32> {
    fs::read_link(link)
        .ok()?
        .to_str()?
        .strip_prefix("net:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream, UdpSocket};

    #[test]
    fn lists_own_tcp_listener_connection_and_udp_socket_with_owner() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let u = UdpSocket::bind("[::1]:0").unwrap();
        let all = dump_all().unwrap();
        let listener = all
            .iter()
            .find(|s| s.is_tcp_listener() && s.local.port() == port)
            .unwrap();
        assert_eq!(listener.role(), SocketRole::Listening);
        assert!(listener.inode != 0);
        let client = all
            .iter()
            .find(|s| s.local == c.local_addr().unwrap())
            .unwrap();
        assert_eq!(client.peer, Some(c.peer_addr().unwrap()));
        assert_eq!(client.role(), SocketRole::Connected);
        let udp = all
            .iter()
            .find(|s| s.transport == Transport::Udp && s.local == u.local_addr().unwrap())
            .unwrap();
        assert_eq!((udp.role(), udp.peer), (SocketRole::Bound, None));
        assert!(udp.inode != 0);
        assert!(own_netns().is_some());
    }
}
