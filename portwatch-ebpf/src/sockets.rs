//! What the kernel side remembers per socket, keyed by the address of its `struct sock`, and the
//! hooks that need it:
//!
//! - **a non-blocking connect's handshake**: the call returns `EINPROGRESS` and the outcome comes
//!   later. `sock_ops` sees the SYN of a non-blocking socket go out (`TCP_CONNECT_CB`; a
//!   blocking call returns the outcome itself, so it is left alone), the handshake succeed
//!   (`ACTIVE_ESTABLISHED_CB`) or the socket fall from SYN_SENT to CLOSE (`STATE_CB`, enabled for
//!   that socket only while it connects), and the connect's return reports whether it was
//!   non-blocking. On loopback the handshake usually ends before the call returns (the reply is
//!   processed when the call releases the socket lock), elsewhere after: see `SockState` for
//!   how the two sides agree on who writes the `HANDSHAKE` record. A socket closed while it
//!   connects is reported `aborted` at its release.
//! - **accepted sockets**: `PASSIVE_ESTABLISHED_CB` marks them, so their release, which is not a
//!   port acquisition's end, is not reported. A connection freed without ever being accepted (its
//!   listener closed first) leaves its entry until another socket's release at that address
//!   removes it; no hook sees such a socket freed, and its move to CLOSE cannot tell it from one
//!   a peer reset while it waited to be accepted, which accept() still returns.
//! - **implicit binds**: a UDP send from an unbound socket makes the kernel pick a port before
//!   the `sendmsg4/6` hooks run; the first unconnected send of a socket whose port no event
//!   reported reports it.
//!
//! The key is the socket's address rather than its cookie because every hook has it, while the
//! fentry and kprobe programs cannot ask for a cookie on every kernel. An address is reused only
//! once the socket is freed; every release removes the socket's entry, and an entry left by a
//! socket freed unseen carries another socket's cookie. The table is a plain hash, not an LRU:
//! what it cannot hold is counted (`sockets_full`), never evicted unseen.
use core::{mem::offset_of, ptr::read_volatile};

use aya_ebpf::{
    helpers::generated::{bpf_get_socket_cookie, bpf_ktime_get_ns},
    macros::{cgroup_sock_addr, map, sock_ops},
    maps::HashMap,
    programs::{SockAddrContext, SockOpsContext},
};
use portwatch_common::{
    CpuCounters, HANDSHAKE_ABORTED, PortEvent, SockState, family, flags, kind, probe, protocol,
    sock_state, socket_calls,
};

use crate::{
    emit::{self, read_kernel},
    offsets,
};

/// `BPF_F_NO_PREALLOC`: memory only for the sockets present, not for the table's capacity.
const NO_PREALLOC: u32 = 1;

/// The daemon sets the capacity at load time (`[kernel] socket_entries`).
#[map]
pub static SOCKETS: HashMap<usize, SockState> = HashMap::with_max_entries(65536, NO_PREALLOC);

const BPF_SOCK_OPS_TCP_CONNECT_CB: u32 = 3;
const BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: u32 = 4;
const BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB: u32 = 5;
const BPF_SOCK_OPS_STATE_CB: u32 = 10;
const BPF_SOCK_OPS_TCP_LISTEN_CB: u32 = 11;
const BPF_SOCK_OPS_STATE_CB_FLAG: u32 = 1 << 2;
const TCP_ESTABLISHED: u8 = 1;
const TCP_SYN_SENT: u32 = 2;
const TCP_CLOSE: u32 = 7;

const EMPTY: SockState = SockState {
    flags: 0,
    cookie: 0,
    start_ns: 0,
    end_ns: 0,
    ended: 0,
    returned: 0,
    errno: 0,
    port: 0,
    call: PortEvent::ZERO,
};

#[sock_ops]
pub fn portwatch_sock_ops(ctx: SockOpsContext) -> u32 {
    sock_ops::<false>(&ctx)
}

/// `portwatch_sock_ops` that also reports listen and connect calls (`socket_calls`), for the
/// tracepoint strategy without syscall tracepoints. A program of its own because it reads the
/// current task (`bpf_get_current_task`), which a kernel may not allow `sock_ops` programs:
/// there the verifier rejects it, and the daemon keeps the syscall tracepoints.
#[sock_ops]
pub fn portwatch_sock_ops_calls(ctx: SockOpsContext) -> u32 {
    sock_ops::<true>(&ctx)
}

#[inline(always)]
fn sock_ops<const CALLS: bool>(ctx: &SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => {
            if CALLS && emit::socket_calls(socket_calls::CONNECT) {
                let sk = sock_of_ops(ctx);
                if sk != 0 {
                    connect_call(ctx, sk);
                }
            } else {
                connecting(ctx);
            }
        }
        BPF_SOCK_OPS_TCP_LISTEN_CB if CALLS && emit::socket_calls(socket_calls::LISTEN) => {
            listened(ctx)
        }
        // Only the handshake's state changes are wanted, not the connection's.
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB if handshake_ended(ctx, 0) => set_state_cb(ctx, false),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => accepted(ctx),
        BPF_SOCK_OPS_STATE_CB if ctx.arg(0) == TCP_SYN_SENT && ctx.arg(1) == TCP_CLOSE => {
            // The kernel sets sk_err before it closes a socket whose handshake failed
            // (tcp_reset, tcp_write_err, tcp_v4_err); none means its owner gave up first.
            let err = sock_err(sock_of_ops(ctx));
            let _ = handshake_ended(ctx, if err > 0 { err } else { HANDSHAKE_ABORTED });
        }
        _ => {}
    }
    1
}

#[inline(always)]
fn cookie_of_ops(ctx: &SockOpsContext) -> u64 {
    // SAFETY: the helper takes the program's own context.
    unsafe { bpf_get_socket_cookie(ctx.ops.cast()) }
}

/// The `struct sock` behind the context (0 if the kernel gave none).
#[inline(always)]
fn sock_of_ops(ctx: &SockOpsContext) -> usize {
    // SAFETY: a context read checked by the verifier.
    emit::sock_address(unsafe { (*ctx.ops).__bindgen_anon_2.sk })
}

#[inline(always)]
fn set_state_cb(ctx: &SockOpsContext, on: bool) {
    let now = ctx.cb_flags();
    let _ = ctx.set_cb_flags(if on {
        now | BPF_SOCK_OPS_STATE_CB_FLAG
    } else {
        now & !BPF_SOCK_OPS_STATE_CB_FLAG
    } as i32);
}

/// Makes `state` the entry of `sk`; false (and counted) when the table had no room.
#[inline(always)]
fn remember(sk: usize, state: &SockState) -> bool {
    if sk == 0 {
        return false;
    }
    if SOCKETS.insert(sk, *state, 0).is_err() {
        emit::count(offset_of!(CpuCounters, sockets_full));
        return false;
    }
    true
}

/// Whether the entry `state` is the socket's own, given the socket's `cookie` (0 when the
/// socket has none yet): a cookie, once assigned, never changes. An entry made without one
/// (`bound_udp` on the fentry and kprobe strategies) is taken as the socket's.
///
/// # Safety
/// `state` is a `SOCKETS` value pointer.
#[inline(always)]
unsafe fn is_own(state: *const SockState, cookie: u64) -> bool {
    let kept = unsafe { read_volatile(&(*state).cookie) };
    kept == 0 || kept == cookie
}

/// `PASSIVE_ESTABLISHED_CB`: a connection a listener will hand to accept(). A connecting socket
/// gets here too, in a simultaneous open (a socket connecting to itself on loopback among them):
/// that is its handshake's end.
#[inline(always)]
fn accepted(ctx: &SockOpsContext) {
    let sk = sock_of_ops(ctx);
    let cookie = cookie_of_ops(ctx);
    if let Some(state) = SOCKETS.get_ptr(sk)
        // SAFETY: a map value pointer, read at once.
        && unsafe { is_own(state, cookie) && (*state).flags & sock_state::CONNECTING != 0 }
    {
        if handshake_ended(ctx, 0) {
            set_state_cb(ctx, false);
        }
        return;
    }
    let state = SockState {
        flags: sock_state::ACCEPTED,
        cookie,
        ..EMPTY
    };
    let _ = remember(sk, &state);
}

/// `LONG_MAX`: `sk_sndtimeo` of a socket without a send timeout.
const NO_TIMEOUT: i64 = i64::MAX;
/// `O_NONBLOCK`, as `file.f_flags` holds it.
const O_NONBLOCK: u32 = 0o4000;

/// Whether a connect on `sk` waits for the handshake's end, when that can be read: a blocking
/// descriptor without a send timeout (with one, the call can return EINPROGRESS when it
/// expires). Such a call returns the outcome itself, and needs nothing remembered.
#[inline(always)]
fn blocking(sk: usize) -> bool {
    let (Some(sock_socket), Some(sndtimeo), Some(socket_file), Some(file_flags)) = (
        offsets::get(|o| &o.sock_socket),
        offsets::get(|o| &o.sock_sndtimeo),
        offsets::get(|o| &o.socket_file),
        offsets::get(|o| &o.file_flags),
    ) else {
        return false;
    };
    // SAFETY: kernel reads through bpf_probe_read_kernel. The descriptor's flags first: event
    // loops connect non-blocking, and need no fourth read.
    unsafe {
        let nonblocking = match read_kernel::<usize>(sk, sock_socket)
            .filter(|&s| s != 0)
            .and_then(|s| read_kernel::<usize>(s, socket_file))
            .filter(|&f| f != 0)
            .and_then(|f| read_kernel::<u32>(f, file_flags))
        {
            Some(flags) => flags & O_NONBLOCK != 0,
            None => true,
        };
        !nonblocking && read_kernel::<i64>(sk, sndtimeo) == Some(NO_TIMEOUT)
    }
}

/// The local address and port from the context: plain loads the verifier rewrites, cheaper
/// than reading the socket through `bpf_probe_read_kernel`.
#[inline(always)]
fn local_from_ops(ctx: &SockOpsContext, ev: &mut PortEvent) {
    ev.local_port = ctx.local_port() as u16;
    if ev.family == family::INET {
        ev.local_addr[..4].copy_from_slice(&ctx.local_ip4().to_ne_bytes());
    } else {
        // SAFETY: a field of the program's context.
        unsafe { emit::ctx_ip6(&mut ev.local_addr, &(*ctx.ops).local_ip6) };
    }
}

/// The peer's address and port from the context (`remote_port` holds the port in network
/// order in its high half on little-endian machines, its low half on big-endian ones).
#[inline(always)]
fn peer_from_ops(ctx: &SockOpsContext, ev: &mut PortEvent) {
    ev.peer_port = u32::from_be(ctx.remote_port()) as u16;
    if ev.family == family::INET {
        ev.peer_addr[..4].copy_from_slice(&ctx.remote_ip4().to_ne_bytes());
    } else {
        // SAFETY: a field of the program's context.
        unsafe { emit::ctx_ip6(&mut ev.peer_addr, &(*ctx.ops).remote_ip6) };
    }
}

/// `TCP_LISTEN_CB`: a listen(2) that moved a socket into LISTEN, called in the listening task
/// once the port is taken (on an unbound socket, listen picks it).
#[inline(always)]
fn listened(ctx: &SockOpsContext) {
    let sk = sock_of_ops(ctx);
    let mut ev = PortEvent::ZERO;
    ev.family = ctx.family() as u8;
    ev.protocol = protocol::TCP;
    local_from_ops(ctx, &mut ev);
    emit::add_task_facts_read(&mut ev, kind::LISTEN, probe::CGROUP_SOCK_OPS, sk);
    ev.cookie = cookie_of_ops(ctx);
    emit::submit(&mut ev);
}

/// `TCP_CONNECT_CB` when the socket hooks report connects (`socket_calls::CONNECT`): the call's
/// record, made in the connecting task with the local port the kernel just chose. A
/// non-blocking call returns EINPROGRESS whatever happens next, so its record goes out now and
/// the handshake's end writes a `HANDSHAKE` record, as after `sys_exit_connect`. A blocking
/// call returns the handshake's outcome, so its record waits for it (`HELD_CALL`).
#[inline(always)]
fn connect_call(ctx: &SockOpsContext, sk: usize) {
    let cookie = cookie_of_ops(ctx);
    let held = blocking(sk);
    // The record is built in the entry it waits in: one copy on the 512-byte stack.
    let mut state = SockState {
        flags: sock_state::CONNECTING | if held { sock_state::HELD_CALL } else { 0 },
        cookie,
        returned: 1,
        ..EMPTY
    };
    let ev = &mut state.call;
    ev.family = ctx.family() as u8;
    ev.protocol = protocol::TCP;
    local_from_ops(ctx, ev);
    peer_from_ops(ctx, ev);
    emit::add_task_facts_read(ev, kind::CONNECT, probe::CGROUP_SOCK_OPS, sk);
    ev.cookie = cookie;
    state.start_ns = state.call.ts_ns;
    if !held {
        state.call.errno = emit::EINPROGRESS;
        emit::submit(&mut state.call);
    }
    if !remember(sk, &state) {
        // Counted (`sockets_full`); the call is still reported, its outcome unknown.
        if held {
            state.call.errno = emit::EINPROGRESS;
            emit::submit(&mut state.call);
        }
        return;
    }
    set_state_cb(ctx, true);
}

/// The SYN of a non-blocking connect is about to go out: remember when, and ask for this
/// socket's state changes.
#[inline(always)]
fn connecting(ctx: &SockOpsContext) {
    let sk = sock_of_ops(ctx);
    if sk == 0 || blocking(sk) {
        return;
    }
    // Asking for the cookie gives the socket one now, so that the fentry and kprobe programs,
    // which can only read one the kernel already assigned, find it on the handshake's record.
    let state = SockState {
        flags: sock_state::CONNECTING,
        cookie: cookie_of_ops(ctx),
        // SAFETY: helper without arguments.
        start_ns: unsafe { bpf_ktime_get_ns() },
        ..EMPTY
    };
    let _ = remember(sk, &state);
    set_state_cb(ctx, true);
}

/// `sk->sk_err`.
#[inline(always)]
fn sock_err(sk: usize) -> i32 {
    match offsets::get(|o| &o.sock_err) {
        // SAFETY: a kernel read through bpf_probe_read_kernel.
        Some(off) if sk != 0 => unsafe { read_kernel::<i32>(sk, off).unwrap_or(0) },
        _ => 0,
    }
}

/// The handshake ended with `errno` (0: established). False when it was not one followed here.
#[inline(always)]
fn handshake_ended(ctx: &SockOpsContext, errno: i32) -> bool {
    let sk = sock_of_ops(ctx);
    let Some(state) = SOCKETS.get_ptr_mut(sk) else {
        return false;
    };
    // SAFETY: a map value pointer; `ended` and `returned` only grow, by atomic adds.
    unsafe {
        if !is_own(state, cookie_of_ops(ctx))
            || (*state).flags & sock_state::CONNECTING == 0
            || read_volatile(&(*state).ended) != 0
        {
            return false;
        }
        end_handshake(sk, state, errno);
    }
    true
}

/// Writes the outcome, then reports it if the call already returned EINPROGRESS.
///
/// # Safety
/// `state` is `SOCKETS`' value for `sk`.
#[inline(always)]
unsafe fn end_handshake(sk: usize, state: *mut SockState, errno: i32) {
    unsafe {
        (*state).errno = errno;
        (*state).end_ns = bpf_ktime_get_ns();
        emit::atomic_add(&raw mut (*state).ended, 1);
        if read_volatile(&(*state).returned) != 0 {
            report_handshake(sk, state);
        }
    }
}

/// A TCP connect call returned: `call` is its record, already submitted. A call that did not
/// return EINPROGRESS carries its outcome, so the entry is dropped; one that did leaves its
/// record for the handshake's end.
#[inline(always)]
pub fn connect_returned(call: &PortEvent, sk: usize) {
    if call.protocol != protocol::TCP || sk == 0 {
        return;
    }
    let Some(state) = SOCKETS.get_ptr_mut(sk) else {
        return;
    };
    // SAFETY: a map value pointer; `ended` and `returned` only grow, by atomic adds.
    unsafe {
        if (*state).flags & sock_state::CONNECTING == 0 || read_volatile(&(*state).returned) != 0 {
            return;
        }
        if call.errno != emit::EINPROGRESS {
            let _ = SOCKETS.remove(sk);
            return;
        }
        (*state).call = *call;
        if (*state).call.cookie == 0 {
            (*state).call.cookie = (*state).cookie;
        }
        emit::atomic_add(&raw mut (*state).returned, 1);
        if read_volatile(&(*state).ended) != 0 {
            report_handshake(sk, state);
        }
    }
}

/// Writes the `HANDSHAKE` record from the connect call's record and the outcome, and forgets
/// the socket's handshake.
///
/// # Safety
/// `state` is `SOCKETS`' value for `sk`.
#[inline(always)]
unsafe fn report_handshake(sk: usize, state: *mut SockState) {
    unsafe {
        let mut ev = (*state).call;
        ev.probe = probe::CGROUP_SOCK_OPS;
        ev.errno = (*state).errno;
        ev.ts_ns = (*state).end_ns;
        ev.flags = 0;
        if (*state).flags & sock_state::HELD_CALL != 0 {
            // A blocking call: the outcome is what it returned. Released before the handshake
            // ended with no error on the socket: the call was interrupted by a signal (or
            // failed in a way the socket does not keep, which is rare: see docs/schema.md).
            if ev.errno == HANDSHAKE_ABORTED {
                ev.errno = EINTR;
            }
        } else {
            ev.header.kind = kind::HANDSHAKE;
            ev.duration_ns = (*state).end_ns.saturating_sub((*state).start_ns);
        }
        // The handshake's end and the socket's release can both get here at once: only the
        // one that removes the entry writes the record.
        if SOCKETS.remove(sk).is_ok() {
            emit::submit(&mut ev);
        }
    }
}

const EINTR: i32 = 4;

/// The cookie of `sk` as the kernel already assigned it (0 if none was ever asked for), for the
/// fentry and kprobe programs, which cannot call `bpf_get_socket_cookie` on every kernel.
#[inline(always)]
pub fn socket_cookie(sk: usize) -> u64 {
    match offsets::get(|o| &o.sock_cookie) {
        // SAFETY: a kernel read through bpf_probe_read_kernel.
        Some(off) if sk != 0 => unsafe { read_kernel::<u64>(sk, off).unwrap_or(0) },
        _ => 0,
    }
}

/// A socket with a port is being released (`cookie`: its cookie, 0 if it has none): forget it.
/// False when the release is not to be reported (an accepted socket). A socket still waiting for
/// its handshake gets its `connect_result` now: the release comes before the close that would
/// end the handshake.
#[inline(always)]
pub fn released(sk: usize, cookie: u64) -> bool {
    let Some(state) = SOCKETS.get_ptr_mut(sk) else {
        return true;
    };
    // SAFETY: a map value pointer; `ended` and `returned` only grow, by atomic adds.
    unsafe {
        if is_own(state, cookie) {
            let flags = (*state).flags;
            if flags & sock_state::UDP_CONNECTING != 0 {
                report_udp_connect(sk, state, true);
                return true;
            }
            if flags & sock_state::ACCEPTED != 0 {
                let _ = SOCKETS.remove(sk);
                return false;
            }
            if flags & sock_state::CONNECTING != 0
                && read_volatile(&(*state).returned) != 0
                && read_volatile(&(*state).ended) == 0
            {
                let err = sock_err(sk);
                end_handshake(sk, state, if err > 0 { err } else { HANDSHAKE_ABORTED });
                return true;
            }
        }
    }
    let _ = SOCKETS.remove(sk);
    true
}

/// A UDP socket whose port an event reported (its bind, or its first send, on `port`; `cookie`
/// 0 where the hook cannot tell it): a later send on that port reports no implicit bind for it.
/// False when the table had no room.
#[inline(always)]
pub fn bound_udp(sk: usize, cookie: u64, port: u16) -> bool {
    let state = SockState {
        flags: sock_state::SENT,
        cookie,
        port: port as u32,
        ..EMPTY
    };
    remember(sk, &state)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn portwatch_sendmsg4(ctx: SockAddrContext) -> i32 {
    unconnected_send(&ctx, probe::CGROUP_SENDMSG4);
    1
}

#[cgroup_sock_addr(sendmsg6)]
pub fn portwatch_sendmsg6(ctx: SockAddrContext) -> i32 {
    unconnected_send(&ctx, probe::CGROUP_SENDMSG6);
    1
}

/// The UDP socket behind a `cgroup/sock_addr` context; `None` for any other.
///
/// # Safety
/// `sa` is the program's context.
#[inline(always)]
unsafe fn udp_socket(sa: *const aya_ebpf::bindings::bpf_sock_addr) -> Option<usize> {
    // SAFETY: context reads, checked by the verifier.
    unsafe {
        if (*sa).protocol != protocol::UDP as u32 {
            return None;
        }
        Some(emit::sock_address((*sa).__bindgen_anon_1.sk)).filter(|&sk| sk != 0)
    }
}

/// A UDP send to an address. The first one on a port no event reported reports the socket's
/// port as an implicit bind: on a socket never bound, and again after `connect(AF_UNSPEC)` gave
/// an autobound port back and a send took another.
#[inline(always)]
fn unconnected_send(ctx: &SockAddrContext, probe: u8) {
    let sa = ctx.sock_addr;
    // SAFETY: context reads of `struct bpf_sock_addr`, checked by the verifier; the socket's own
    // fields are read with bpf_probe_read_kernel.
    unsafe {
        let Some(sk) = udp_socket(sa) else {
            return;
        };
        // A connected socket sending to an explicit address: its connect reported the port.
        if let Some(off) = offsets::get(|o| &o.sock_state)
            && read_kernel::<u8>(sk, off) == Some(TCP_ESTABLISHED)
        {
            return;
        }
        // The socket's family, not the destination's: an IPv6 socket sending to an IPv4-mapped
        // address runs sendmsg4, and its port is an IPv6 socket's.
        let mut ev = PortEvent::ZERO;
        ev.family = (*sa).family as u8;
        emit::local_from_sock(&mut ev, sk);
        if ev.local_port == 0 {
            return;
        }
        let cookie = bpf_get_socket_cookie(sa.cast());
        if let Some(state) = SOCKETS.get_ptr_mut(sk)
            && is_own(state, cookie)
        {
            if (*state).flags & sock_state::SENT != 0 && (*state).port == ev.local_port as u32 {
                return;
            }
            // Connected while unbound, then disconnected before anything read its port.
            if (*state).flags & sock_state::UDP_CONNECTING != 0 {
                report_udp_connect(sk, state, false);
            }
        }
        // Reporting without remembering would report every send.
        if !bound_udp(sk, cookie, ev.local_port) {
            return;
        }
        emit::add_task_facts(&mut ev, kind::BIND, probe, sk);
        ev.protocol = protocol::UDP;
        ev.cookie = cookie;
        ev.flags = flags::IMPLICIT;
        emit::submit(&mut ev);
    }
}

/// A bind of `ctx`'s socket about to be made, when the socket hooks report binds
/// (`socket_calls::BIND`): one that names its port is noted, with the port, for
/// `take_named_bind`. A socket whose own entry is not such a note has a port, so its bind fails
/// (EINVAL) and its entry stays. A bind(0) is not looked up at all: it is the common case, and
/// a note a failed named bind left is told apart by its port.
#[inline(always)]
pub fn bind_requested(ctx: &SockAddrContext) {
    let sa = ctx.sock_addr;
    // SAFETY: context reads of `struct bpf_sock_addr`, checked by the verifier.
    unsafe {
        if !emit::is_inet_transport((*sa).protocol) || (*sa).user_port == 0 {
            return;
        }
        let sk = emit::sock_address((*sa).__bindgen_anon_1.sk);
        if sk == 0 {
            return;
        }
        // A socket with a port fails this bind (EINVAL). Whether it has one is read from the
        // socket, not from its entry: connect(AF_UNSPEC) gives an autobound port back without
        // any hook seeing it, and leaves the entry behind.
        if let Some(off) = offsets::get(|o| &o.sock_num)
            && read_kernel::<u16>(sk, off).is_none_or(|port| port != 0)
        {
            return;
        }
        let cookie = bpf_get_socket_cookie(sa.cast());
        flush_udp_connect(sk, cookie);
        let state = SockState {
            flags: sock_state::BIND_NAMED,
            cookie,
            port: u16::from_be((*sa).user_port as u16) as u32,
            ..EMPTY
        };
        // A full table is counted (`sockets_full`); the bind is then written as not naming its
        // port.
        let _ = remember(sk, &state);
    }
}

/// A UDP connect of `sk` still waiting for its port, when the socket is about to take another
/// (it disconnected first): written without the port it had.
#[inline(always)]
pub fn flush_udp_connect(sk: usize, cookie: u64) {
    if let Some(state) = SOCKETS.get_ptr_mut(sk)
        // SAFETY: a map value pointer.
        && unsafe { is_own(state, cookie) && (*state).flags & sock_state::UDP_CONNECTING != 0 }
    {
        // SAFETY: `state` is `SOCKETS`' value for `sk`.
        unsafe { report_udp_connect(sk, state, false) };
    }
}

/// Whether the bind that just took `port` for `sk` named it (`bind_requested`); forgets the
/// note. A failed bind's note stays until the socket's release or its next bind; a later bind(0)
/// of the same socket gets another port than the one that was in use, so the note is not taken
/// for its own.
#[inline(always)]
pub fn take_named_bind(sk: usize, cookie: u64, port: u16) -> bool {
    let Some(state) = SOCKETS.get_ptr(sk) else {
        return false;
    };
    // SAFETY: a map value pointer, read before the entry is removed.
    unsafe {
        if !is_own(state, cookie) || (*state).flags & sock_state::BIND_NAMED == 0 {
            return false;
        }
        let named = (*state).port == port as u32;
        let _ = SOCKETS.remove(sk);
        named
    }
}

/// A UDP connect, when the socket hooks report connects (`socket_calls::CONNECT`). A bound
/// socket keeps its port, so the record goes out now (with the address it is bound to: for a
/// wildcard, the call picks the route's source address after this hook). An unbound one gets
/// its port from the kernel after this hook: the record waits in the socket's entry
/// (`UDP_CONNECTING`) until the port can be read, at the socket's next connect, its bind or its
/// release. `V6` as for `emit::user_addr`.
#[inline(always)]
pub fn udp_connect<const V6: bool>(ctx: &SockAddrContext, probe: u8) {
    let sa = ctx.sock_addr;
    // SAFETY: context reads of `struct bpf_sock_addr`, checked by the verifier; the socket's own
    // fields are read with bpf_probe_read_kernel.
    unsafe {
        let Some(sk) = udp_socket(sa) else {
            return;
        };
        let cookie = bpf_get_socket_cookie(sa.cast());
        if let Some(state) = SOCKETS.get_ptr_mut(sk)
            && is_own(state, cookie)
            && (*state).flags & sock_state::UDP_CONNECTING != 0
        {
            report_udp_connect(sk, state, true);
        }
        // The record is built in the entry it may wait in: one copy on the 512-byte stack.
        let mut state = SockState {
            flags: sock_state::UDP_CONNECTING,
            cookie,
            ..EMPTY
        };
        let ev = &mut state.call;
        ev.protocol = protocol::UDP;
        ev.peer_port = u16::from_be((*sa).user_port as u16);
        ev.family = if V6 { family::INET6 } else { family::INET };
        ev.peer_addr = emit::user_addr::<V6>(sa);
        emit::local_from_sock(ev, sk);
        emit::add_task_facts(ev, kind::CONNECT, probe, sk);
        ev.cookie = cookie;
        if ev.local_port != 0 {
            emit::submit(ev);
            return;
        }
        if !remember(sk, &state) {
            // Counted (`sockets_full`): reported without its port rather than not at all.
            emit::submit(&mut state.call);
        }
    }
}

/// Reports a UDP connect that waited for its port, now read from the socket, and forgets it.
/// `port_known` is false when the socket gave that port back since (`connect(AF_UNSPEC)`, seen
/// as an unconnected send): the record then goes out without it.
///
/// # Safety
/// `state` is `SOCKETS`' value for `sk`.
#[inline(always)]
unsafe fn report_udp_connect(sk: usize, state: *mut SockState, port_known: bool) {
    // Completed and submitted where it waits: a copy would not fit the connect hook's stack.
    unsafe {
        if port_known {
            emit::local_from_sock(&mut (*state).call, sk);
        }
        emit::submit(&mut (*state).call);
        let _ = SOCKETS.remove(sk);
    }
}
