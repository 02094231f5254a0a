//! bind(2): the cgroup post_bind hooks see every successful bind with the port the kernel really
//! assigned; the pre-bind hooks park the requested address so that a failed bind (EADDRINUSE,
//! EACCES, ...) can be reported when `sys_exit_bind` returns its errno. Without the syscall
//! tracepoints (`socket_calls::BIND`) the pre-bind hooks only note, per socket, that the call
//! named its port, and failed binds go unseen.
use aya_ebpf::{
    macros::{cgroup_sock, cgroup_sock_addr, tracepoint},
    programs::{SockAddrContext, SockContext, TracePointContext},
};
use portwatch_common::{Pending, family, kind, probe, socket_calls};

use crate::{args, emit, offsets, sockets};

#[cgroup_sock(post_bind4)]
pub fn portwatch_post_bind4(ctx: SockContext) -> i32 {
    post_bind::<false>(&ctx, probe::CGROUP_POST_BIND4);
    1
}

#[cgroup_sock(post_bind6)]
pub fn portwatch_post_bind6(ctx: SockContext) -> i32 {
    post_bind::<true>(&ctx, probe::CGROUP_POST_BIND6);
    1
}

/// `V6` selects the address fields at compile time: the verifier rejects any access to the other
/// family's fields in these program types, even on a branch that is never taken.
#[inline(always)]
fn post_bind<const V6: bool>(ctx: &SockContext, probe: u8) {
    let sk = ctx.sock;
    // SAFETY: context reads of `struct bpf_sock`, rewritten and checked by the verifier.
    unsafe {
        let protocol = (*sk).protocol;
        if !emit::is_inet_transport(protocol) {
            return;
        }
        let mut ev = emit::task_event(kind::BIND, probe, sk as usize);
        ev.protocol = protocol as u8;
        ev.family = if V6 { family::INET6 } else { family::INET };
        ev.local_port = (*sk).src_port as u16;
        if !V6 {
            ev.local_addr[..4].copy_from_slice(&(*sk).src_ip4.to_ne_bytes());
        } else {
            emit::ctx_ip6(&mut ev.local_addr, &(*sk).src_ip6);
        }
        ev.cookie = aya_ebpf::helpers::generated::bpf_get_socket_cookie(sk as *mut _);
        // The pre-bind hook kept what the caller asked for: a named port makes a UDP socket
        // a listener; port 0 (kernel's pick) does not.
        let named = if emit::socket_calls(socket_calls::BIND) {
            sockets::take_named_bind(sk as usize, ev.cookie, ev.local_port)
        } else {
            emit::parked_bind_named_port()
        };
        if named {
            ev.flags |= portwatch_common::flags::PORT_REQUESTED;
        }
        let udp = protocol == portwatch_common::protocol::UDP as u32;
        if udp {
            // A connect held for its port, on a socket that disconnected and now binds: the
            // entry is about to be replaced.
            sockets::flush_udp_connect(sk as usize, ev.cookie);
        }
        emit::submit(&mut ev);
        if udp {
            let _ = sockets::bound_udp(sk as usize, ev.cookie, ev.local_port);
        }
    }
}

#[cgroup_sock_addr(bind4)]
pub fn portwatch_bind4(ctx: SockAddrContext) -> i32 {
    if emit::socket_calls(socket_calls::BIND) {
        sockets::bind_requested(&ctx);
    } else {
        park_sock_addr::<false>(&ctx, kind::BIND, probe::CGROUP_BIND4);
    }
    1
}

#[cgroup_sock_addr(bind6)]
pub fn portwatch_bind6(ctx: SockAddrContext) -> i32 {
    if emit::socket_calls(socket_calls::BIND) {
        sockets::bind_requested(&ctx);
    } else {
        park_sock_addr::<true>(&ctx, kind::BIND, probe::CGROUP_BIND6);
    }
    1
}

/// Parks a bind or connect seen by a `cgroup/sock_addr` hook: only the address the call named and
/// the socket. `V6` as for `post_bind`.
///
/// A bind that names no port is not parked where the syscall's arguments can be read back at its
/// exit (`args`): post_bind reports its success with the port the kernel picked, and a failure is
/// rebuilt from the arguments. That keeps the two hash-map operations off the common bind(0) path.
#[inline(always)]
pub fn park_sock_addr<const V6: bool>(ctx: &SockAddrContext, kind: u8, probe: u8) {
    let sa = ctx.sock_addr;
    // SAFETY: context reads of `struct bpf_sock_addr`, checked by the verifier.
    unsafe {
        let protocol = (*sa).protocol;
        if !emit::is_inet_transport(protocol) {
            return;
        }
        let port = u16::from_be((*sa).user_port as u16);
        if kind == portwatch_common::kind::BIND && port == 0 && args::syscall_args_known() {
            return;
        }
        let addr = emit::user_addr::<V6>(sa);
        emit::park(&Pending {
            sk: (*sa).__bindgen_anon_1.sk as u64,
            cookie: aya_ebpf::helpers::generated::bpf_get_socket_cookie(sa as *mut _),
            addr,
            port,
            kind,
            probe,
            family: if V6 { family::INET6 } else { family::INET },
            protocol: protocol as u8,
            _pad: [0; 2],
        });
    }
}

#[tracepoint(category = "syscalls", name = "sys_exit_bind")]
pub fn portwatch_sys_exit_bind(ctx: TracePointContext) -> u32 {
    let Some(ret) = syscall_ret(&ctx) else {
        return 0;
    };
    // Taken whatever the outcome, so that no parked entry outlives its call.
    let parked = emit::take_parked(kind::BIND);
    // Successful binds were reported by post_bind with the real port.
    if ret >= 0 {
        return 0;
    }
    let errno = emit::errno_of(ret);
    let ev = match parked {
        Some(pending) => Some(emit::complete(&pending, errno)),
        None => args::failed_bind(errno),
    };
    if let Some(mut ev) = ev {
        emit::submit(&mut ev);
    }
    0
}

/// The `ret` field of a `syscalls:sys_exit_*` record.
#[inline(always)]
pub fn syscall_ret(ctx: &TracePointContext) -> Option<i64> {
    let off = offsets::get(|o| &o.tp_sys_exit_ret)?;
    // SAFETY: the offset comes from the tracepoint's format file.
    unsafe { ctx.read_at::<i64>(off).ok() }
}
