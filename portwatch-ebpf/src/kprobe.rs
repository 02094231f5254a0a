//! The kprobe/kretprobe strategy: entry probes park the call, return probes complete it.
use aya_ebpf::{
    macros::{kprobe, kretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use portwatch_common::{kind, probe};

use crate::kfunc;

#[inline(always)]
fn arg(ctx: &ProbeContext, n: usize) -> usize {
    ctx.arg::<usize>(n).unwrap_or(0)
}

#[kprobe]
pub fn portwatch_kprobe_inet_bind(ctx: ProbeContext) -> u32 {
    kfunc::park_call(
        arg(&ctx, 0),
        arg(&ctx, 1),
        kind::BIND,
        probe::KPROBE_INET_BIND,
    );
    0
}

#[kprobe]
pub fn portwatch_kprobe_inet6_bind(ctx: ProbeContext) -> u32 {
    kfunc::park_call(
        arg(&ctx, 0),
        arg(&ctx, 1),
        kind::BIND,
        probe::KPROBE_INET6_BIND,
    );
    0
}

/// One return probe serves both bind functions: the parked record knows which it was.
#[kretprobe]
pub fn portwatch_kretprobe_bind(ctx: RetProbeContext) -> u32 {
    kfunc::finish_parked(kind::BIND, ctx.ret::<i32>());
    0
}

#[kprobe]
pub fn portwatch_kprobe_inet_listen(ctx: ProbeContext) -> u32 {
    kfunc::listen_entry(arg(&ctx, 0), probe::KPROBE_INET_LISTEN);
    0
}

#[kretprobe]
pub fn portwatch_kretprobe_inet_listen(ctx: RetProbeContext) -> u32 {
    kfunc::listen_return(ctx.ret::<i32>());
    0
}

#[kprobe]
pub fn portwatch_kprobe_inet_stream_connect(ctx: ProbeContext) -> u32 {
    kfunc::stream_connect_entry(
        arg(&ctx, 0),
        arg(&ctx, 1),
        probe::KPROBE_INET_STREAM_CONNECT,
    );
    0
}

#[kprobe]
pub fn portwatch_kprobe_inet_dgram_connect(ctx: ProbeContext) -> u32 {
    kfunc::park_call(
        arg(&ctx, 0),
        arg(&ctx, 1),
        kind::CONNECT,
        probe::KPROBE_INET_DGRAM_CONNECT,
    );
    0
}

#[kretprobe]
pub fn portwatch_kretprobe_connect(ctx: RetProbeContext) -> u32 {
    kfunc::finish_parked(kind::CONNECT, ctx.ret::<i32>());
    0
}

#[kprobe]
pub fn portwatch_kprobe_inet_release(ctx: ProbeContext) -> u32 {
    kfunc::release(arg(&ctx, 0), probe::KPROBE_INET_RELEASE);
    0
}
