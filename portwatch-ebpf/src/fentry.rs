//! The fentry/fexit strategy: fexit sees a call's arguments and its return value together.
//!
//! The return value is read from the context, where the trampoline stores it after the
//! arguments, rather than with `bpf_get_func_ret`: that helper is 5.17+, fexit itself 5.5+.
use aya_ebpf::{
    macros::{fentry, fexit},
    programs::{FEntryContext, FExitContext},
};
use portwatch_common::{kind, probe};

use crate::kfunc;

/// The return value of a function taking `ARGS` arguments: the trampoline's context is the
/// arguments, one u64 each, then the return value.
#[inline(always)]
fn ret<const ARGS: usize>(ctx: &FExitContext) -> i32 {
    // The kernel's `int` return: the low 32 bits of its slot.
    ctx.arg::<u64>(ARGS) as i32
}

#[fexit(function = "inet_bind")]
pub fn portwatch_fexit_inet_bind(ctx: FExitContext) -> i32 {
    // inet_bind(sock, uaddr, addr_len)
    let r = ret::<3>(&ctx);
    kfunc::call_returned(
        ctx.arg(0),
        ctx.arg(1),
        r,
        kind::BIND,
        probe::FEXIT_INET_BIND,
    );
    0
}

#[fexit(function = "inet6_bind")]
pub fn portwatch_fexit_inet6_bind(ctx: FExitContext) -> i32 {
    let r = ret::<3>(&ctx);
    kfunc::call_returned(
        ctx.arg(0),
        ctx.arg(1),
        r,
        kind::BIND,
        probe::FEXIT_INET6_BIND,
    );
    0
}

/// The state before the call tells a new listener from a backlog change.
#[fentry(function = "inet_listen")]
pub fn portwatch_fentry_inet_listen(ctx: FEntryContext) -> i32 {
    kfunc::listen_entry(ctx.arg(0), probe::FEXIT_INET_LISTEN);
    0
}

#[fexit(function = "inet_listen")]
pub fn portwatch_fexit_inet_listen(ctx: FExitContext) -> i32 {
    // inet_listen(sock, backlog)
    kfunc::listen_return(ret::<2>(&ctx));
    0
}

/// The socket's state before the call tells a new connect from an event loop asking again how
/// its connect went.
#[fentry(function = "inet_stream_connect")]
pub fn portwatch_fentry_inet_stream_connect(ctx: FEntryContext) -> i32 {
    kfunc::stream_connect_entry(ctx.arg(0), ctx.arg(1), probe::FEXIT_INET_STREAM_CONNECT);
    0
}

#[fexit(function = "inet_stream_connect")]
pub fn portwatch_fexit_inet_stream_connect(ctx: FExitContext) -> i32 {
    // inet_stream_connect(sock, uaddr, addr_len, flags)
    kfunc::finish_parked(kind::CONNECT, ret::<4>(&ctx));
    0
}

#[fexit(function = "inet_dgram_connect")]
pub fn portwatch_fexit_inet_dgram_connect(ctx: FExitContext) -> i32 {
    let r = ret::<4>(&ctx);
    kfunc::call_returned(
        ctx.arg(0),
        ctx.arg(1),
        r,
        kind::CONNECT,
        probe::FEXIT_INET_DGRAM_CONNECT,
    );
    0
}

#[fentry(function = "inet_release")]
pub fn portwatch_fentry_inet_release(ctx: FEntryContext) -> i32 {
    kfunc::release(ctx.arg(0), probe::FENTRY_INET_RELEASE);
    0
}
