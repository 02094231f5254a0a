//! The fentry/fexit strategy: fexit sees a call's arguments and its return value together.
use aya_ebpf::{
    macros::{fentry, fexit},
    programs::{FEntryContext, FExitContext},
};
use portwatch_common::{kind, probe};

use crate::kfunc;

#[inline(always)]
fn ret(ctx: &FExitContext) -> i32 {
    ctx.ret::<i32>().unwrap_or(0)
}

#[fexit(function = "inet_bind")]
pub fn portwatch_fexit_inet_bind(ctx: FExitContext) -> i32 {
    let r = ret(&ctx);
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
    let r = ret(&ctx);
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
    kfunc::listen_return(ret(&ctx));
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
    kfunc::finish_parked(kind::CONNECT, ret(&ctx));
    0
}

#[fexit(function = "inet_dgram_connect")]
pub fn portwatch_fexit_inet_dgram_connect(ctx: FExitContext) -> i32 {
    let r = ret(&ctx);
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
