//! Release: `cgroup/sock_release` runs in `inet_release`, in the context of the process that
//! closed the last reference, while the socket still holds its port. Sockets that never had a
//! port, and accepted sockets (`sockets`), are not reported.
//!
//! This program type may not read the source address or port from its context, but its context
//! is the `struct sock` itself, so those are read from the socket at their BTF offsets.
use aya_ebpf::{macros::cgroup_sock, programs::SockContext};
use portwatch_common::{PortEvent, family, kind, probe};

use crate::{emit, sockets};

#[cgroup_sock(sock_release)]
pub fn portwatch_sock_release(ctx: SockContext) -> i32 {
    let sk = ctx.sock;
    // SAFETY: context reads of `struct bpf_sock`, checked by the verifier; the socket's own fields
    // are read with bpf_probe_read_kernel.
    unsafe {
        let protocol = (*sk).protocol;
        if !emit::is_inet_transport(protocol) {
            return 1;
        }
        let cookie = aya_ebpf::helpers::generated::bpf_get_socket_cookie(sk as *mut _);
        if !sockets::released(sk as usize, cookie) {
            return 1;
        }
        let mut ev = PortEvent::ZERO;
        ev.protocol = protocol as u8;
        ev.family = (*sk).family as u8;
        emit::local_from_sock(&mut ev, sk as usize);
        if ev.local_port == 0 {
            return 1;
        }
        emit::add_task_facts(
            &mut ev,
            kind::CLOSE,
            probe::CGROUP_SOCK_RELEASE,
            sk as usize,
        );
        ev.peer_port = u16::from_be(core::ptr::read_volatile(&(*sk).dst_port));
        if ev.family == family::INET {
            ev.peer_addr[..4].copy_from_slice(&(*sk).dst_ip4.to_ne_bytes());
        } else {
            emit::ctx_ip6(&mut ev.peer_addr, &(*sk).dst_ip6);
        }
        ev.cookie = cookie;
        emit::submit(&mut ev);
    }
    1
}
