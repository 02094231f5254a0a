//! connect(2), TCP and UDP: the cgroup connect hooks park the peer before the kernel picks a local
//! port (`sys_enter_connect` first clears what an earlier, unfinished park left);
//! `sys_exit_connect` completes the record with the outcome and reads the local address and port
//! the kernel chose from the socket.
//!
//! Without the syscall tracepoints (`socket_calls::CONNECT`) a TCP connect is reported from
//! `sock_ops` when its SYN is about to go out (`sockets`), and a UDP connect from the cgroup hook
//! here; connects that fail before that (EADDRNOTAVAIL, ENETUNREACH) go unseen.
use aya_ebpf::{
    macros::{cgroup_sock_addr, tracepoint},
    programs::{SockAddrContext, TracePointContext},
};
use portwatch_common::{kind, probe, socket_calls};

use crate::{bind, emit, sockets};

/// A connect the cgroup hook parked but no connect(2) completed (io_uring's, a `sendto` with
/// `MSG_FASTOPEN`) must not be taken for this call's: whatever the thread left is dropped, and
/// counted as stale.
#[tracepoint(category = "syscalls", name = "sys_enter_connect")]
pub fn portwatch_sys_enter_connect(_ctx: TracePointContext) -> u32 {
    emit::drop_parked(emit::current_tid());
    0
}

#[cgroup_sock_addr(connect4)]
pub fn portwatch_connect4(ctx: SockAddrContext) -> i32 {
    if emit::socket_calls(socket_calls::CONNECT) {
        sockets::udp_connect::<false>(&ctx, probe::CGROUP_CONNECT4);
    } else {
        bind::park_sock_addr::<false>(&ctx, kind::CONNECT, probe::CGROUP_CONNECT4);
    }
    1
}

#[cgroup_sock_addr(connect6)]
pub fn portwatch_connect6(ctx: SockAddrContext) -> i32 {
    if emit::socket_calls(socket_calls::CONNECT) {
        sockets::udp_connect::<true>(&ctx, probe::CGROUP_CONNECT6);
    } else {
        bind::park_sock_addr::<true>(&ctx, kind::CONNECT, probe::CGROUP_CONNECT6);
    }
    1
}

#[tracepoint(category = "syscalls", name = "sys_exit_connect")]
pub fn portwatch_sys_exit_connect(ctx: TracePointContext) -> u32 {
    let Some(ret) = bind::syscall_ret(&ctx) else {
        return 0;
    };
    let Some(pending) = emit::take_parked(kind::CONNECT) else {
        return 0;
    };
    // A non-blocking connect returns EINPROGRESS: the record says so (the daemon writes
    // `in_progress`); the handshake goes on after the call.
    let errno = emit::errno_of(ret);
    let mut ev = emit::complete(&pending, errno);
    emit::local_from_sock(&mut ev, pending.sk as usize);
    if ev.local_port == 0 && (ev.errno == 0 || ev.errno == emit::EINPROGRESS) {
        aya_log_ebpf::warn!(
            &ctx,
            "connect by tid {}: local port unreadable from the socket",
            ev.tid
        );
    }
    emit::submit(&mut ev);
    sockets::connect_returned(&ev, pending.sk as usize);
    0
}
