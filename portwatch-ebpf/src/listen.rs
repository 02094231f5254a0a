//! listen(2): `sock:inet_sock_set_state` into TCP_LISTEN runs in the listening process; the record
//! is parked until `sys_exit_listen` tells whether the listen succeeded (on an unbound socket the
//! port is only chosen after the state change, so it is read from the socket then).
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use portwatch_common::{Pending, family, kind, probe, protocol};

use crate::{bind, emit, offsets};

const TCP_LISTEN: i32 = 10;

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn portwatch_inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let _ = try_set_state(&ctx);
    0
}

#[inline(always)]
fn try_set_state(ctx: &TracePointContext) -> Option<()> {
    // SAFETY: offsets come from the tracepoint's format file.
    unsafe {
        let newstate: i32 = ctx.read_at(offsets::tp_state_newstate()?).ok()?;
        if newstate != TCP_LISTEN {
            return None;
        }
        let proto: u16 = ctx.read_at(offsets::tp_state_protocol()?).ok()?;
        if proto != protocol::TCP as u16 {
            return None;
        }
        let family: u8 = ctx.read_at::<u16>(offsets::tp_state_family()?).ok()? as u8;
        let mut addr = [0u8; 16];
        if family == family::INET {
            let a: [u8; 4] = ctx.read_at(offsets::tp_state_saddr()?).ok()?;
            addr[..4].copy_from_slice(&a);
        } else {
            addr = ctx.read_at(offsets::tp_state_saddr_v6()?).ok()?;
        }
        emit::park(&Pending {
            sk: ctx.read_at(offsets::tp_state_skaddr()?).ok()?,
            cookie: 0,
            addr,
            port: ctx.read_at(offsets::tp_state_sport()?).ok()?,
            kind: kind::LISTEN,
            probe: probe::TP_INET_SOCK_SET_STATE,
            family,
            protocol: protocol::TCP,
            _pad: [0; 2],
        });
    }
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
    let mut ev = emit::complete(&pending, emit::errno_of(ret));
    if ev.local_port == 0 {
        emit::local_from_sock(&mut ev, pending.sk as usize);
        if ev.local_port == 0 && ev.errno == 0 {
            aya_log_ebpf::warn!(
                &ctx,
                "listen by tid {}: local port unreadable from the socket",
                ev.tid
            );
        }
    }
    emit::submit(&mut ev);
    0
}
