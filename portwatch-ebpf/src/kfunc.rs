//! The socket-layer logic shared by the kprobe and fentry/fexit strategies. Both hook the same
//! kernel functions (`inet_bind`, `inet6_bind`, `inet_listen`, `inet_stream_connect`,
//! `inet_dgram_connect`, `inet_release`) and read the same things from `struct socket` and
//! `struct sock`; they differ only in how arguments and return values reach them.
//!
//! `struct sockaddr_in`/`sockaddr_in6` are user ABI and read at their fixed offsets; everything
//! else comes from BTF offsets set by the daemon.
use portwatch_common::{Pending, PortEvent, family, kind, protocol};

use crate::{
    emit::{self, read_kernel},
    offsets, sockets,
};

const TCP_LISTEN: u8 = 10;

/// The `struct sock` behind a `struct socket`, if it is a TCP or UDP socket over IPv4 or IPv6.
#[inline(always)]
pub fn sock_of(socket: usize) -> Option<(usize, u8, u8)> {
    // SAFETY: kernel reads through bpf_probe_read_kernel.
    unsafe {
        let sk: usize = read_kernel(socket, offsets::get(|o| &o.socket_sk)?)?;
        if sk == 0 {
            return None;
        }
        let proto: u16 = read_kernel(sk, offsets::get(|o| &o.sock_protocol)?)?;
        let fam: u16 = read_kernel(sk, offsets::get(|o| &o.sock_family)?)?;
        let proto_ok = proto == protocol::TCP as u16 || proto == protocol::UDP as u16;
        let fam_ok = fam == family::INET as u16 || fam == family::INET6 as u16;
        (proto_ok && fam_ok).then_some((sk, proto as u8, fam as u8))
    }
}

/// Address and port from the kernel's copy of a user `sockaddr`. `None` for other families
/// (AF_UNSPEC disconnects a datagram socket).
#[inline(always)]
fn sockaddr(uaddr: usize) -> Option<(u8, [u8; 16], u16)> {
    if uaddr == 0 {
        return None;
    }
    // SAFETY: kernel reads through bpf_probe_read_kernel.
    unsafe {
        let fam: u16 = read_kernel(uaddr, 0)?;
        let port = u16::from_be(read_kernel::<u16>(uaddr, 2)?);
        let mut addr = [0u8; 16];
        if fam == family::INET as u16 {
            let a: [u8; 4] = read_kernel(uaddr, 4)?;
            addr[..4].copy_from_slice(&a);
        } else if fam == family::INET6 as u16 {
            addr = read_kernel(uaddr, 8)?;
        } else {
            return None;
        }
        Some((fam as u8, addr, port))
    }
}

/// What the entry of a bind or connect call knows: the socket and the address it names.
#[inline(always)]
fn call_event(socket: usize, uaddr: usize, kind: u8, probe: u8) -> Option<Pending> {
    let (sk, protocol, family) = sock_of(socket)?;
    let (_, addr, port) = sockaddr(uaddr)?;
    Some(Pending {
        sk: sk as u64,
        cookie: 0,
        addr,
        port,
        kind,
        probe,
        family,
        protocol,
        _pad: [0; 2],
    })
}

/// Completes a bind or connect with the function's return value and submits it.
#[inline(always)]
pub fn finish(pending: Pending, ret: i32) {
    // A non-blocking connect's EINPROGRESS is kept: the daemon writes it as `in_progress`.
    let errno = if ret < 0 { -ret } else { 0 };
    let mut ev = emit::complete(&pending, errno);
    // On success the socket holds what the kernel chose (port 0 → a real port; a connect's
    // ephemeral port). A failed bind keeps the requested address.
    if errno == 0 || pending.kind != kind::BIND {
        emit::local_from_sock(&mut ev, pending.sk as usize);
    }
    emit::submit(&mut ev);
    if pending.kind == kind::CONNECT {
        sockets::connect_returned(&ev, pending.sk as usize);
    } else if errno == 0 && pending.protocol == protocol::UDP {
        let _ = sockets::bound_udp(
            pending.sk as usize,
            sockets::socket_cookie(pending.sk as usize),
            ev.local_port,
        );
    }
}

/// Entry of a bind or connect (kprobe, and fentry for a stream connect): remember the call until
/// it returns.
#[inline(always)]
pub fn park_call(socket: usize, uaddr: usize, kind: u8, probe: u8) {
    if let Some(p) = call_event(socket, uaddr, kind, probe) {
        emit::park(&p);
    }
}

/// `SS_UNCONNECTED` of `enum socket_state`.
const SS_UNCONNECTED: u32 = 1;

/// Entry of a stream connect: only a socket not yet connecting starts a connect. Event loops call
/// connect() again to learn how it went (EALREADY, EISCONN, 0 or the error); the tracepoint
/// strategy's cgroup hook never sees those calls, and neither do these.
#[inline(always)]
pub fn stream_connect_entry(socket: usize, uaddr: usize, probe: u8) {
    let state = offsets::get(|o| &o.socket_state)
        // SAFETY: a kernel read through bpf_probe_read_kernel.
        .and_then(|off| unsafe { read_kernel::<u32>(socket, off) });
    if state.is_some_and(|s| s != SS_UNCONNECTED) {
        return;
    }
    park_call(socket, uaddr, kind::CONNECT, probe);
}

/// Return of a parked bind or connect (kretprobe).
#[inline(always)]
pub fn finish_parked(kind: u8, ret: i32) {
    if let Some(p) = emit::take_parked(kind) {
        finish(p, ret);
    }
}

/// fexit sees arguments and return value together: no parking needed.
#[inline(always)]
pub fn call_returned(socket: usize, uaddr: usize, ret: i32, kind: u8, probe: u8) {
    if let Some(p) = call_event(socket, uaddr, kind, probe) {
        finish(p, ret);
    }
}

/// Entry of `inet_listen`.
#[inline(always)]
pub fn listen_entry(socket: usize, probe: u8) {
    if let Some((sk, protocol, family)) = sock_of(socket) {
        park_listen(sk, protocol, family, probe);
    }
}

/// Parks a listen on `sk`: only a socket that is not yet listening becomes a listener (listen()
/// again on a listening socket only changes its backlog).
#[inline(always)]
pub fn park_listen(sk: usize, protocol: u8, family: u8, probe: u8) {
    // SAFETY: kernel read through bpf_probe_read_kernel.
    let state: u8 =
        match offsets::get(|o| &o.sock_state).and_then(|o| unsafe { read_kernel(sk, o) }) {
            Some(s) => s,
            None => return,
        };
    if state == TCP_LISTEN {
        return;
    }
    emit::park(&Pending {
        sk: sk as u64,
        cookie: 0,
        addr: [0; 16],
        port: 0,
        kind: kind::LISTEN,
        probe,
        family,
        protocol,
        _pad: [0; 2],
    });
}

/// Return of `inet_listen`.
#[inline(always)]
pub fn listen_return(ret: i32) {
    let Some(p) = emit::take_parked(kind::LISTEN) else {
        return;
    };
    let mut ev = listen_record(&p, if ret < 0 { -ret } else { 0 });
    emit::submit(&mut ev);
}

/// A parked listen's record at its return: the address and port it listens on, and the socket's
/// cookie, which its bind's record may have had the kernel assign since it was parked.
#[inline(always)]
pub fn listen_record(p: &Pending, errno: i32) -> PortEvent {
    let mut ev = emit::complete(p, errno);
    emit::local_from_sock(&mut ev, p.sk as usize);
    ev.cookie = sockets::socket_cookie(p.sk as usize);
    ev
}

/// `inet_release`: the socket still holds its port and peer.
#[inline(always)]
pub fn release(socket: usize, probe: u8) {
    let Some((sk, proto, fam)) = sock_of(socket) else {
        return;
    };
    let cookie = sockets::socket_cookie(sk);
    if !sockets::released(sk, cookie) {
        return;
    }
    let mut ev = PortEvent::ZERO;
    ev.protocol = proto;
    ev.family = fam;
    emit::local_from_sock(&mut ev, sk);
    if ev.local_port == 0 {
        return;
    }
    emit::add_task_facts(&mut ev, kind::CLOSE, probe, sk);
    ev.cookie = cookie;
    emit::peer_from_sock(&mut ev, sk);
    emit::submit(&mut ev);
}
