//! listen(2), on its syscall tracepoints alone: `sys_enter_listen` parks the socket behind the
//! descriptor when it is a TCP socket not yet listening, and `sys_exit_listen` completes the
//! record with the outcome, reading the address and port from the socket (on an unbound socket,
//! listen itself picks the port).
//!
//! This once hooked `sock:inet_sock_set_state` to catch the change into LISTEN. That tracepoint
//! runs on every state change of every TCP socket on the host, about seven per connection, to
//! find the rare listen; the syscall tracepoints run only for listen calls.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use portwatch_common::{kind, probe, protocol};

use crate::{args, bind, emit, kfunc, offsets};

#[tracepoint(category = "syscalls", name = "sys_enter_listen")]
pub fn portwatch_sys_enter_listen(ctx: TracePointContext) -> u32 {
    let _ = park_listen(&ctx);
    0
}

#[inline(always)]
fn park_listen(ctx: &TracePointContext) -> Option<()> {
    // SAFETY: the offset comes from the tracepoint's format file.
    let fd: u64 = unsafe { ctx.read_at(offsets::get(|o| &o.tp_listen_fd)?) }.ok()?;
    let (sk, proto, family) = kfunc::sock_of(args::socket_of_fd(fd)?)?;
    // As for the other strategies, which hook inet_listen: only TCP sockets get there.
    if proto != protocol::TCP {
        return None;
    }
    kfunc::park_listen(sk, proto, family, probe::TP_SYS_ENTER_LISTEN);
    Some(())
}

#[tracepoint(category = "syscalls", name = "sys_exit_listen")]
pub fn portwatch_sys_exit_listen(ctx: TracePointContext) -> u32 {
    let Some(ret) = bind::syscall_ret(&ctx) else {
        return 0;
    };
    let Some(pending) = emit::take_parked(kind::LISTEN) else {
        return 0;
    };
    let mut ev = kfunc::listen_record(&pending, emit::errno_of(ret));
    if ev.local_port == 0 && ev.errno == 0 {
        aya_log_ebpf::warn!(
            &ctx,
            "listen by tid {}: local port unreadable from the socket",
            ev.tid
        );
    }
    emit::submit(&mut ev);
    0
}
