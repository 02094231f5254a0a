//! The ring buffer, the per-CPU counters, the per-thread pending table and the few helpers every
//! hook shares: fill in the task facts, complete a pending record, submit or count the loss.
use core::mem::offset_of;

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_probe_read_kernel,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_current_task, bpf_get_smp_processor_id,
            bpf_ktime_get_ns,
        },
    },
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use portwatch_common::{CpuCounters, Pending, PortEvent, RecordHeader, family};

use crate::offsets;

/// Default size; the daemon may resize it at load time (`--ring-buffer-kib`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

#[map]
pub static COUNTERS: PerCpuArray<CpuCounters> = PerCpuArray::with_max_entries(1, 0);

/// Operations waiting for their call to return, keyed by thread id. Not an LRU: an LRU would
/// evict a parked call without a trace, and this one counts what it cannot hold
/// (`pending_full`). An entry whose return never came is counted and dropped when its thread
/// parks again or exits (`pending_stale`). The daemon may resize it at load time.
#[map]
pub static PENDING: HashMap<u32, Pending> = HashMap::with_max_entries(16384, 0);

/// `socket_calls::*`: the families whose calls the socket hooks report on their own, without the
/// syscall tracepoints (`[kernel] syscall_tracepoints = false`). The daemon writes it once each
/// family is attached; until then, and on the other strategies, it is 0.
#[map]
pub static SOCKET_CALLS: Array<u32> = Array::with_max_entries(1, 0);

/// Whether the socket hooks report `family`'s calls (`socket_calls::LISTEN`, ...).
#[inline(always)]
pub fn socket_calls(family: u32) -> bool {
    SOCKET_CALLS.get(0).is_some_and(|v| *v & family != 0)
}

#[inline(always)]
pub fn current_tid() -> u32 {
    bpf_get_current_pid_tgid() as u32
}

/// The facts only the current task can tell (ids, comm, cgroup, time), plus the network
/// namespace of `sk`, the socket the event is about.
///
/// The namespace is the socket's rather than the task's: that is where the port is held (a task
/// may create a socket and then move), and it costs two kernel reads instead of three. The comm
/// is one read of `task->comm` rather than `bpf_get_current_comm`'s string copy.
#[inline(always)]
pub fn task_event(kind: u8, probe: u8, sk: usize) -> PortEvent {
    let mut ev = PortEvent::ZERO;
    add_task_facts(&mut ev, kind, probe, sk);
    ev
}

/// `task_event` for a record already holding the socket's own facts.
#[inline(always)]
pub fn add_task_facts(ev: &mut PortEvent, kind: u8, probe: u8, sk: usize) {
    let pid_tgid = bpf_get_current_pid_tgid();
    ev.pid = (pid_tgid >> 32) as u32;
    ev.tid = pid_tgid as u32;
    let uid_gid = bpf_get_current_uid_gid();
    ev.uid = uid_gid as u32;
    ev.gid = (uid_gid >> 32) as u32;
    ev.comm = current_comm();
    // SAFETY: helpers without arguments.
    unsafe {
        ev.cgroup_id = bpf_get_current_cgroup_id();
        ev.ts_ns = bpf_ktime_get_ns();
    }
    ev.netns = sock_netns(sk);
    ev.header = RecordHeader::new(kind);
    ev.probe = probe;
}

/// `add_task_facts` for `sock_ops` programs, which may not ask for the current task's ids on
/// every kernel (`bpf_get_current_pid_tgid` there is 6.10+, `uid_gid` and `cgroup_id` later
/// still): the same facts, read from `current` at its BTF offsets.
#[inline(always)]
pub fn add_task_facts_read(ev: &mut PortEvent, kind: u8, probe: u8, sk: usize) {
    // SAFETY: helper without arguments; the task is read with bpf_probe_read_kernel.
    let task = unsafe { bpf_get_current_task() } as usize;
    // SAFETY: kernel reads through bpf_probe_read_kernel of the current task and what it points
    // to; a failed read leaves the fact 0.
    unsafe {
        if let Some(off) = offsets::get(|o| &o.task_tgid) {
            ev.pid = read_kernel::<u32>(task, off).unwrap_or(0);
        }
        if let Some(off) = offsets::get(|o| &o.task_pid) {
            ev.tid = read_kernel::<u32>(task, off).unwrap_or(0);
        }
        if let (Some(cred_off), Some(uid_off), Some(gid_off)) = (
            offsets::get(|o| &o.task_cred),
            offsets::get(|o| &o.cred_uid),
            offsets::get(|o| &o.cred_gid),
        ) && let Some(cred) = read_kernel::<usize>(task, cred_off).filter(|&c| c != 0)
        {
            ev.uid = read_kernel::<u32>(cred, uid_off).unwrap_or(0);
            ev.gid = read_kernel::<u32>(cred, gid_off).unwrap_or(0);
        }
        if let (Some(cgroups), Some(dfl), Some(kn), Some(id)) = (
            offsets::get(|o| &o.task_cgroups),
            offsets::get(|o| &o.css_set_dfl_cgrp),
            offsets::get(|o| &o.cgroup_kn),
            offsets::get(|o| &o.kernfs_node_id),
        ) {
            ev.cgroup_id = read_kernel::<usize>(task, cgroups)
                .filter(|&p| p != 0)
                .and_then(|set| read_kernel::<usize>(set, dfl))
                .filter(|&p| p != 0)
                .and_then(|cgrp| read_kernel::<usize>(cgrp, kn))
                .filter(|&p| p != 0)
                .and_then(|node| read_kernel::<u64>(node, id))
                .unwrap_or(0);
        }
        if let Some(off) = offsets::get(|o| &o.task_comm) {
            ev.comm = read_kernel::<[u8; 16]>(task, off).unwrap_or([0; 16]);
        }
        ev.ts_ns = bpf_ktime_get_ns();
    }
    ev.netns = sock_netns(sk);
    ev.header = RecordHeader::new(kind);
    ev.probe = probe;
}

/// `current->comm`. The kernel keeps it NUL-terminated and zero-padded; a rename racing with the
/// read can tear it, as it can for `bpf_get_current_comm`, which also reads it without a lock.
#[inline(always)]
fn current_comm() -> [u8; 16] {
    match offsets::get(|o| &o.task_comm) {
        // SAFETY: a read through bpf_probe_read_kernel of the current task.
        Some(off) => unsafe {
            read_kernel::<[u8; 16]>(bpf_get_current_task() as usize, off).unwrap_or([0; 16])
        },
        None => bpf_get_current_comm().unwrap_or([0; 16]),
    }
}

/// The network namespace a socket lives in: `sk->__sk_common.skc_net.net->ns.inum`. Unlike the
/// task's, it is still there while a process's sockets are released during exit.
#[inline(always)]
pub fn sock_netns(sk: usize) -> u32 {
    let (Some(net_off), Some(inum_off)) = (
        offsets::get(|o| &o.sock_net),
        offsets::get(|o| &o.net_ns_inum),
    ) else {
        return 0;
    };
    if sk == 0 {
        return 0;
    }
    // SAFETY: kernel reads through bpf_probe_read_kernel.
    unsafe {
        match read_kernel::<usize>(sk, net_off) {
            Some(net) if net != 0 => read_kernel::<u32>(net, inum_off).unwrap_or(0),
            _ => 0,
        }
    }
}

/// # Safety
/// `base + off` is a kernel address; the helper validates it.
#[inline(always)]
pub unsafe fn read_kernel<T>(base: usize, off: usize) -> Option<T> {
    unsafe { bpf_probe_read_kernel(base.wrapping_add(off) as *const T).ok() }
}

/// The address a socket pointer of a program's context holds, as a plain number.
///
/// The verifier forbids arithmetic on such a pointer (`PTR_TO_SOCKET`), which every read of a
/// member at a BTF offset needs; copied through `bpf_probe_read_kernel`, it is a number like any
/// other kernel address, read again only through that helper.
#[inline(always)]
pub fn sock_address<T>(sk: *const T) -> usize {
    let slot = sk as usize;
    // SAFETY: reads the local variable above.
    unsafe { bpf_probe_read_kernel(&raw const slot).unwrap_or(0) }
}

/// Fills in the local address and port from a `struct sock`, for hooks that run before the kernel
/// has chosen them (connect, listen on an unbound socket). Keeps what is there when a read fails.
#[inline(always)]
pub fn local_from_sock(ev: &mut PortEvent, sk: usize) {
    if sk == 0 {
        return;
    }
    // SAFETY: kernel reads via bpf_probe_read_kernel.
    unsafe {
        if let Some(off) = offsets::get(|o| &o.sock_num)
            && let Some(port) = read_kernel::<u16>(sk, off)
            && port != 0
        {
            ev.local_port = port;
        } else if let Some(off) = offsets::get(|o| &o.inet_sport)
            && let Some(port) = read_kernel::<u16>(sk, off)
            && port != 0
        {
            // A TCP socket the kernel already closed (RST, refused connect) has given its port
            // back (skc_num = 0) but still records the port it used.
            ev.local_port = u16::from_be(port);
        }
        if ev.family == family::INET {
            if let Some(off) = offsets::get(|o| &o.sock_rcv_saddr)
                && let Some(addr) = read_kernel::<[u8; 4]>(sk, off)
            {
                ev.local_addr[..4].copy_from_slice(&addr);
            }
        } else if let Some(off) = offsets::get(|o| &o.sock_v6_rcv_saddr)
            && let Some(addr) = read_kernel::<[u8; 16]>(sk, off)
        {
            ev.local_addr = addr;
        }
    }
}

/// Fills in the peer's address and port from a connected `struct sock`.
#[inline(always)]
pub fn peer_from_sock(ev: &mut PortEvent, sk: usize) {
    if sk == 0 {
        return;
    }
    // SAFETY: kernel reads through bpf_probe_read_kernel.
    unsafe {
        if let Some(off) = offsets::get(|o| &o.sock_dport)
            && let Some(p) = read_kernel::<u16>(sk, off)
        {
            ev.peer_port = u16::from_be(p);
        }
        if ev.family == family::INET {
            if let Some(off) = offsets::get(|o| &o.sock_daddr)
                && let Some(a) = read_kernel::<[u8; 4]>(sk, off)
            {
                ev.peer_addr[..4].copy_from_slice(&a);
            }
        } else if let Some(off) = offsets::get(|o| &o.sock_v6_daddr)
            && let Some(a) = read_kernel::<[u8; 16]>(sk, off)
        {
            ev.peer_addr = a;
        }
    }
}

const BPF_RB_AVAIL_DATA: u64 = 0;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;

/// Stamps the per-CPU sequence number and writes the record, or counts it as lost.
#[inline(always)]
pub fn submit(ev: &mut PortEvent) {
    // SAFETY: helper without arguments.
    ev.cpu = unsafe { bpf_get_smp_processor_id() };
    let counters = COUNTERS.get_ptr_mut(0);
    if let Some(c) = counters {
        // SAFETY: a per-CPU slot; only programs on this CPU touch it. The sequence number is
        // informational, so a plain increment is enough (BPF v1 has no fetch-and-add).
        unsafe {
            ev.cpu_seq = (*c).next_seq;
            (*c).next_seq = ev.cpu_seq.wrapping_add(1);
        }
    }
    match EVENTS.reserve::<PortEvent>(0) {
        Some(mut entry) => {
            entry.write(*ev);
            entry.submit(wake_flags(ev.ts_ns));
        }
        None => count_loss(),
    }
}

/// The reader is never woken more often than this per CPU (see `wake_flags`).
const MIN_WAKEUP_INTERVAL_NS: u64 = 1_000_000;

/// Submit flags for a record committed at `now_ns`.
///
/// Waking the reader costs an irq_work, and in a VM an interrupt, per wakeup: more than the record
/// itself. So records are submitted without a wakeup while less than `WAKEUP_BYTES` is queued
/// (the reader also drains on a short timer, so nothing waits longer than that), and above it the
/// reader is woken at most once a millisecond per CPU. Forcing a wakeup for every record above
/// the mark, as this once did, made each record of a sustained storm pay for one: measured in
/// docs/benchmarks.md.
#[inline(always)]
pub fn wake_flags(now_ns: u64) -> u64 {
    let Some(limit) = offsets::wakeup_bytes() else {
        return 0;
    };
    if (EVENTS.query(BPF_RB_AVAIL_DATA) as usize) < limit {
        return BPF_RB_NO_WAKEUP;
    }
    let Some(c) = COUNTERS.get_ptr_mut(0) else {
        return BPF_RB_FORCE_WAKEUP;
    };
    // SAFETY: this CPU's slot; a preempting program on this CPU can at worst cause one extra
    // wakeup.
    unsafe {
        if now_ns.wrapping_sub((*c).last_wakeup_ns) < MIN_WAKEUP_INTERVAL_NS {
            return BPF_RB_NO_WAKEUP;
        }
        (*c).last_wakeup_ns = now_ns;
    }
    BPF_RB_FORCE_WAKEUP
}

/// Counts a record the ring buffer had no room for.
#[inline(always)]
pub fn count_loss() {
    count(offset_of!(CpuCounters, lost));
}

/// Adds one to the per-CPU counter at `offset` in `CpuCounters`:
/// `count(offset_of!(CpuCounters, pending_full))`.
#[inline(always)]
pub fn count(offset: usize) {
    if let Some(c) = COUNTERS.get_ptr_mut(0) {
        // SAFETY: a u64 field of this CPU's slot. A count must be exact even if a program on
        // this CPU preempts us mid-update, hence an atomic add (BPF_XADD; `core::sync::atomic`
        // offers no 64-bit read-modify-write on the BPF target).
        unsafe { atomic_add(c.cast::<u8>().add(offset).cast::<u64>(), 1) };
    }
}

/// `*target += value`, atomically (BPF_XADD, which every kernel has; the fetching atomics are
/// 5.12+).
///
/// # Safety
/// `target` points into a map value.
#[inline(always)]
pub unsafe fn atomic_add(target: *mut u64, value: u64) {
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            target, value,
        )
    };
}

/// Remembers an operation until its call returns. An entry the thread left behind (its return
/// never came) is counted as stale; a full table counts the call as lost.
#[inline(always)]
pub fn park(p: &Pending) {
    let tid = current_tid();
    if PENDING.get_ptr(tid).is_some() {
        count(offset_of!(CpuCounters, pending_stale));
    }
    if PENDING.insert(tid, *p, 0).is_err() {
        count(offset_of!(CpuCounters, pending_full));
    }
}

/// Takes the current thread's parked operation if it is of `kind`. A parked entry of another
/// kind is stale (its call's return was never seen): counted and dropped.
#[inline(always)]
pub fn take_parked(kind: u8) -> Option<Pending> {
    let tid = current_tid();
    let pending = PENDING.get_ptr(tid)?;
    // SAFETY: a valid map value pointer; copied out before the entry is removed.
    let pending = unsafe { *pending };
    let _ = PENDING.remove(tid);
    if pending.kind != kind {
        count(offset_of!(CpuCounters, pending_stale));
        return None;
    }
    Some(pending)
}

/// Whatever thread `tid` left parked will never complete (it is exiting, or starting another
/// call): dropped and counted.
#[inline(always)]
pub fn drop_parked(tid: u32) {
    if PENDING.remove(tid).is_ok() {
        count(offset_of!(CpuCounters, pending_stale));
    }
}

/// The record of a parked call, completed in the calling task once the outcome is known.
#[inline(always)]
pub fn complete(p: &Pending, errno: i32) -> PortEvent {
    let mut ev = task_event(p.kind, p.probe, p.sk as usize);
    ev.family = p.family;
    ev.protocol = p.protocol;
    ev.cookie = p.cookie;
    ev.errno = errno;
    if p.kind == portwatch_common::kind::CONNECT {
        ev.peer_addr = p.addr;
        ev.peer_port = p.port;
    } else {
        ev.local_addr = p.addr;
        ev.local_port = p.port;
    }
    if p.kind == portwatch_common::kind::BIND && p.port != 0 {
        ev.flags |= portwatch_common::flags::PORT_REQUESTED;
    }
    ev
}

/// Whether the current thread's parked bind named its port; the entry stays parked.
#[inline(always)]
pub fn parked_bind_named_port() -> bool {
    match PENDING.get_ptr(current_tid()) {
        // SAFETY: a valid map value pointer, read at once.
        Some(p) => unsafe { (*p).kind == portwatch_common::kind::BIND && (*p).port != 0 },
        None => false,
    }
}

/// A non-blocking connect that was started: the call returned before the handshake ended.
pub const EINPROGRESS: i32 = 115;

/// The errno of a syscall return value (0 on success).
#[inline(always)]
pub fn errno_of(ret: i64) -> i32 {
    if ret < 0 { (-ret) as i32 } else { 0 }
}

/// The address a `cgroup/sock_addr` hook's caller named (`user_ip4`/`user_ip6`), as an address
/// field. `V6` selects the family at compile time: the verifier rejects any access to the other
/// family's fields in these program types, even on a branch that is never taken.
///
/// # Safety
/// `sa` is the program's context.
#[inline(always)]
pub unsafe fn user_addr<const V6: bool>(sa: *const aya_ebpf::bindings::bpf_sock_addr) -> [u8; 16] {
    let mut addr = [0u8; 16];
    // SAFETY: context reads, checked by the verifier.
    unsafe {
        if !V6 {
            addr[..4].copy_from_slice(&(*sa).user_ip4.to_ne_bytes());
        } else {
            ctx_ip6(&mut addr, &(*sa).user_ip6);
        }
    }
    addr
}

/// Copies an IPv6 address held in a program's context as four network-order words straight
/// into an address field: returning a copy instead does not fit beside the connect record on
/// `sock_ops`'s 512-byte stack. The four loads are written out: the verifier takes context
/// loads at constant offsets only, which a loop would leave to the compiler's unrolling.
///
/// # Safety
/// `words` is a field of the program's context.
#[inline(always)]
pub unsafe fn ctx_ip6(out: &mut [u8; 16], words: &[u32; 4]) {
    // SAFETY: 4-byte context loads at fixed offsets, checked by the verifier.
    let [a, b, c, d] = unsafe {
        [
            core::ptr::read_volatile(&words[0]),
            core::ptr::read_volatile(&words[1]),
            core::ptr::read_volatile(&words[2]),
            core::ptr::read_volatile(&words[3]),
        ]
    };
    out[0..4].copy_from_slice(&a.to_ne_bytes());
    out[4..8].copy_from_slice(&b.to_ne_bytes());
    out[8..12].copy_from_slice(&c.to_ne_bytes());
    out[12..16].copy_from_slice(&d.to_ne_bytes());
}

#[inline(always)]
pub fn is_inet_transport(protocol: u32) -> bool {
    protocol == portwatch_common::protocol::TCP as u32
        || protocol == portwatch_common::protocol::UDP as u32
}
