//! The ABI shared by the eBPF programs and the daemon: the fixed-layout ring-buffer records, each
//! starting with a `RecordHeader` that names its kind, the per-CPU counters, and the numeric codes
//! both sides agree on. Nothing else lives here.
//!
//! Every layout is pinned by `const` assertions next to its type. This crate compiles into both
//! the eBPF object and the daemon, so a layout change that one side did not expect fails the build
//! of both instead of being misread at run time.
#![no_std]

use core::mem::{offset_of, size_of};

/// Length of `task_struct.comm`, including the trailing NUL.
pub const COMM_LEN: usize = 16;

/// What happened to the port: the record kind (`RecordHeader::kind`) of a `PortEvent`. Values are
/// part of the ring-buffer ABI.
pub mod kind {
    pub const BIND: u8 = 1;
    pub const LISTEN: u8 = 2;
    pub const CONNECT: u8 = 3;
    pub const CLOSE: u8 = 4;
    /// The end of a non-blocking TCP connect's handshake (`sock_ops`): `errno` is its outcome
    /// (`HANDSHAKE_ABORTED` when the socket was closed first), `duration_ns` its length. The task
    /// facts are those of the connect call.
    pub const HANDSHAKE: u8 = 5;
}

/// `PortEvent::errno` of a `kind::HANDSHAKE` record whose socket was closed (or shut down) by its
/// owner before the handshake ended: there is no error the kernel reported.
pub const HANDSHAKE_ABORTED: i32 = -1;

/// Address families as the kernel numbers them (`AF_INET`, `AF_INET6`).
pub mod family {
    pub const INET: u8 = 2;
    pub const INET6: u8 = 10;
}

/// IP protocol numbers (`IPPROTO_TCP`, `IPPROTO_UDP`).
pub mod protocol {
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
}

/// The hook that captured the socket facts of a record. The daemon renders these as text
/// (`cgroup:post_bind4`, ...); the numbers only need to agree between the two sides.
/// `PortEvent::flags`.
pub mod flags {
    /// A bind named its port (non-zero) rather than letting the kernel pick one.
    pub const PORT_REQUESTED: u8 = 1;
    /// A `kind::BIND` the kernel made without a bind() call: a UDP send from an unbound socket
    /// took an ephemeral port (the record is of the first such send on the socket).
    pub const IMPLICIT: u8 = 2;
}

pub mod probe {
    pub const CGROUP_POST_BIND4: u8 = 1;
    pub const CGROUP_POST_BIND6: u8 = 2;
    pub const CGROUP_BIND4: u8 = 3;
    pub const CGROUP_BIND6: u8 = 4;
    pub const CGROUP_CONNECT4: u8 = 5;
    pub const CGROUP_CONNECT6: u8 = 6;
    pub const CGROUP_SOCK_RELEASE: u8 = 7;
    pub const TP_SYS_ENTER_LISTEN: u8 = 8;
    /// A failed bind that named no port, read back from the syscall's arguments at its exit.
    pub const TP_SYS_EXIT_BIND: u8 = 9;
    pub const CGROUP_SENDMSG4: u8 = 10;
    pub const CGROUP_SENDMSG6: u8 = 11;
    pub const CGROUP_SOCK_OPS: u8 = 12;
    pub const KPROBE_INET_BIND: u8 = 20;
    pub const KPROBE_INET6_BIND: u8 = 21;
    pub const KPROBE_INET_LISTEN: u8 = 22;
    pub const KPROBE_INET_STREAM_CONNECT: u8 = 23;
    pub const KPROBE_INET_DGRAM_CONNECT: u8 = 24;
    pub const KPROBE_INET_RELEASE: u8 = 25;
    pub const FEXIT_INET_BIND: u8 = 40;
    pub const FEXIT_INET6_BIND: u8 = 41;
    pub const FEXIT_INET_LISTEN: u8 = 42;
    pub const FEXIT_INET_STREAM_CONNECT: u8 = 43;
    pub const FEXIT_INET_DGRAM_CONNECT: u8 = 44;
    pub const FENTRY_INET_RELEASE: u8 = 45;
}

/// The first field of every ring-buffer record: which kind of record it is, and so which layout
/// follows. The record kinds are `kind::*` (a `PortEvent`), `lineage::EXEC` (an `ExecEvent`) and
/// `lineage::FORK`/`lineage::EXIT` (a `ProcEvent`); 0 is never a kind.
///
/// Four bytes with alignment 1, so every record follows it with a `u32` and its 8-byte fields
/// stay aligned without implicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub kind: u8,
    pub _pad: [u8; 3],
}

impl RecordHeader {
    pub const fn new(kind: u8) -> Self {
        RecordHeader { kind, _pad: [0; 3] }
    }
}

const _: () = assert!(size_of::<RecordHeader>() == 4);
const _: () = assert!(offset_of!(RecordHeader, kind) == 0);
// The decoder tells the records apart by their kind alone.
const _: () = {
    let kinds = [
        kind::BIND,
        kind::LISTEN,
        kind::CONNECT,
        kind::CLOSE,
        kind::HANDSHAKE,
        lineage::EXEC,
        lineage::FORK,
        lineage::EXIT,
    ];
    let mut i = 0;
    while i < kinds.len() {
        assert!(kinds[i] != 0, "0 is never a record kind");
        let mut j = i + 1;
        while j < kinds.len() {
            assert!(kinds[i] != kinds[j], "record kinds must be distinct");
            j += 1;
        }
        i += 1;
    }
};

/// One port event, written by the kernel side into the ring buffer.
///
/// Addresses are in network byte order (IPv4 in the first four bytes); ports are in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortEvent {
    /// `kind::*`: what happened to the port.
    pub header: RecordHeader,
    pub cpu: u32,
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// Per-CPU sequence number, taken before the ring-buffer reserve, so gaps show loss too.
    pub cpu_seq: u64,
    /// Socket cookie where the hook has one (0 otherwise): pairs bind, connect and release.
    pub cookie: u64,
    pub cgroup_id: u64,
    /// Thread group id (what userspace calls the pid).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Inode number of the network namespace (0 when it could not be read).
    pub netns: u32,
    /// 0 on success, otherwise the positive errno the syscall returned.
    pub errno: i32,
    pub family: u8,
    pub protocol: u8,
    pub probe: u8,
    /// `flags::*` bits.
    pub flags: u8,
    pub local_port: u16,
    pub peer_port: u16,
    pub local_addr: [u8; 16],
    pub peer_addr: [u8; 16],
    pub comm: [u8; COMM_LEN],
    /// `kind::HANDSHAKE`: from the connect's SYN to the handshake's end; 0 otherwise.
    pub duration_ns: u64,
}

impl PortEvent {
    /// Every field 0, the header's kind too: the kernel side sets it with the task's facts.
    pub const ZERO: PortEvent = PortEvent {
        header: RecordHeader::new(0),
        cpu: 0,
        ts_ns: 0,
        cpu_seq: 0,
        cookie: 0,
        cgroup_id: 0,
        pid: 0,
        tid: 0,
        uid: 0,
        gid: 0,
        netns: 0,
        errno: 0,
        family: 0,
        protocol: 0,
        probe: 0,
        flags: 0,
        local_port: 0,
        peer_port: 0,
        local_addr: [0; 16],
        peer_addr: [0; 16],
        comm: [0; COMM_LEN],
        duration_ns: 0,
    };
}

const _: () = assert!(size_of::<PortEvent>() == 128);
const _: () = assert!(offset_of!(PortEvent, header) == 0);
const _: () = assert!(offset_of!(PortEvent, ts_ns) == 8);
const _: () = assert!(offset_of!(PortEvent, local_addr) == 72);

/// An operation seen on syscall entry (or on a cgroup hook that runs before the kernel decides),
/// kept per thread until the syscall returns and the outcome is known. Only what the entry hook
/// alone knows is kept; the task's facts are taken at completion, in the same task.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Pending {
    /// Kernel address of the `struct sock`, read at completion for the port the kernel chose.
    pub sk: u64,
    pub cookie: u64,
    /// The address the call named: local for bind and listen, the peer for connect.
    pub addr: [u8; 16],
    pub port: u16,
    pub kind: u8,
    pub probe: u8,
    pub family: u8,
    pub protocol: u8,
    pub _pad: [u8; 2],
}

const _: () = assert!(size_of::<Pending>() == 40);

/// What the kernel side remembers about one socket, keyed by the address of its `struct sock`,
/// from the first hook that needs it until the socket is released.
///
/// The end of a non-blocking connect's handshake (softirq, or the calling task while it releases
/// the socket) and the connect call's return may run at once on two CPUs. Each side writes its
/// facts, then adds one to its own counter (`ended`, `returned`: an atomic add, which every
/// kernel has; the fetching atomics are 5.12+), then reads the other's: whichever finds the other
/// done writes the record. Both may; the daemon keeps one. The atomic add is a full barrier on
/// x86_64 (`lock xadd`), which is what makes one side see the other's write; arm64's relaxed
/// add is not, and the arm64 port has to check this before it is trusted there.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SockState {
    /// `sock_state::*`, set when the entry is made.
    pub flags: u64,
    /// The socket's cookie when the entry was made (0 if it had none then). A socket freed
    /// without a release the programs see (an accepted connection never taken off its
    /// listener's queue) leaves its entry behind; a later socket at the same address has
    /// another cookie, and the entry is not taken for its own.
    pub cookie: u64,
    /// `bpf_ktime_get_ns()` when the SYN was about to go out.
    pub start_ns: u64,
    /// When the handshake ended, and how (`errno`).
    pub end_ns: u64,
    /// Handshake ends seen (the race above).
    pub ended: u64,
    /// Connect calls that returned EINPROGRESS (the race above); `call` holds the record.
    pub returned: u64,
    pub errno: i32,
    /// `SENT`: the local port the socket's bind or implicit bind was reported with.
    pub port: u32,
    /// The connect call's own record, kept from its return until the handshake ends.
    pub call: PortEvent,
}

const _: () = assert!(size_of::<SockState>() == 56 + size_of::<PortEvent>());

/// `SockState::flags`.
pub mod sock_state {
    /// An accepted socket: its release is not a port event.
    pub const ACCEPTED: u64 = 1;
    /// A non-blocking TCP connect's handshake is followed.
    pub const CONNECTING: u64 = 2;
    /// A UDP socket whose port was reported (by its bind, or its first unconnected send).
    pub const SENT: u64 = 4;
    /// `socket_calls::BIND`: a bind that named its port, seen before the kernel took it, so that
    /// the post-bind hook can say so.
    pub const BIND_NAMED: u64 = 8;
    /// `socket_calls::CONNECT`: a blocking TCP connect whose record waits for the handshake's
    /// end, which is what the call returns.
    pub const HELD_CALL: u64 = 16;
    /// `socket_calls::CONNECT`: a UDP connect of an unbound socket, whose port the kernel picks
    /// after the hook; `call` is reported once the port can be read (the socket's next connect,
    /// unconnected send or release).
    pub const UDP_CONNECTING: u64 = 32;
}

/// `SOCKET_CALLS`' bits: the families whose calls the socket hooks report on their own, on the
/// tracepoint strategy without syscall tracepoints. Calls that fail before the kernel changes the
/// socket (a bind's EADDRINUSE, a connect's EADDRNOTAVAIL) are then not seen.
pub mod socket_calls {
    pub const BIND: u32 = 1;
    pub const LISTEN: u32 = 2;
    pub const CONNECT: u32 = 4;
}

/// Per-CPU counters kept by the kernel side, summed by the daemon.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuCounters {
    /// Next sequence number handed out on this CPU (= records attempted).
    pub next_seq: u64,
    /// Records dropped because the ring buffer had no room.
    pub lost: u64,
    /// Calls whose record was lost because the pending table was full when they were parked.
    pub pending_full: u64,
    /// Parked calls whose completion never came (a kretprobe the kernel skipped, a connect made
    /// by the kernel or io_uring rather than a syscall): found when the thread parked again or
    /// exited.
    pub pending_stale: u64,
    /// Sockets the per-socket table had no room for: an accepted socket's release may then be
    /// reported, a handshake's end or a UDP socket's implicit bind may be missed.
    pub sockets_full: u64,
    /// `bpf_ktime_get_ns()` of this CPU's last forced wakeup of the reader (see the eBPF side's
    /// `emit::wake_flags`); kernel-side state, not a counter.
    pub last_wakeup_ns: u64,
}

const _: () = assert!(size_of::<CpuCounters>() == 48);

/// Process lineage records (`sched:sched_process_exec/fork/exit`), in the same ring buffer as
/// port events; their record kinds (`RecordHeader::kind`) and sizes.
pub mod lineage {
    pub const EXEC: u8 = 10;
    pub const FORK: u8 = 11;
    pub const EXIT: u8 = 12;
    /// The kernel's PATH_MAX: an exec path is never cut.
    pub const FILENAME_LEN: usize = 4096;
    pub const ARGS_LEN: usize = 1024;
}

/// A process image started: what it runs and with which arguments, captured in the kernel so a
/// process that exits a millisecond later is still attributable.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecEvent {
    /// `lineage::EXEC`.
    pub header: RecordHeader,
    pub pid: u32,
    pub ts_ns: u64,
    pub ppid: u32,
    pub uid: u32,
    pub args_len: u32,
    pub filename_len: u16,
    /// Set when argv was longer than `ARGS_LEN` and cut.
    pub args_truncated: u8,
    /// Set when the filename was longer than `FILENAME_LEN - 1` bytes and cut there.
    pub filename_truncated: u8,
    pub comm: [u8; COMM_LEN],
    /// argv, NUL-separated, as the new image sees it.
    pub args: [u8; lineage::ARGS_LEN],
    /// As passed to execve (after PATH search by the caller). Last, so that the kernel side sends
    /// only the `filename_len` bytes used: a record is `EXEC_FIXED_LEN + filename_len` bytes long.
    pub filename: [u8; lineage::FILENAME_LEN],
}

/// The bytes of an `ExecEvent` before its filename.
pub const EXEC_FIXED_LEN: usize = offset_of!(ExecEvent, filename);

/// A fork (`pid` is the child, which may be a thread) or a process exit.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcEvent {
    /// `lineage::FORK` or `lineage::EXIT`.
    pub header: RecordHeader,
    pub pid: u32,
    pub ts_ns: u64,
    /// fork: the parent's thread group id; exit: 0.
    pub ppid: u32,
    pub _pad: u32,
}

const _: () = assert!(size_of::<ExecEvent>() == 48 + lineage::ARGS_LEN + lineage::FILENAME_LEN);
const _: () = assert!(EXEC_FIXED_LEN == 48 + lineage::ARGS_LEN);
const _: () = assert!(offset_of!(ExecEvent, header) == 0);
const _: () = assert!(offset_of!(ExecEvent, ts_ns) == 8);
const _: () = assert!(offset_of!(ExecEvent, comm) == 32);
const _: () = assert!(size_of::<ProcEvent>() == 24);
const _: () = assert!(offset_of!(ProcEvent, header) == 0);
const _: () = assert!(offset_of!(ProcEvent, ts_ns) == 8);

/// Names of the globals the daemon fills in at load time.
pub mod globals {
    /// The `KernelOffsets` the programs read kernel memory and tracepoint records with.
    pub const KERNEL_OFFSETS: &str = "KERNEL_OFFSETS";
    /// Bytes waiting in the ring buffer above which a record wakes the reader (a `u32`;
    /// `UNKNOWN_OFFSET`: wake on every record).
    pub const WAKEUP_BYTES: &str = "WAKEUP_BYTES";
}

/// An offset that is not known: the programs do not read what it locates.
pub const UNKNOWN_OFFSET: u32 = u32::MAX;

/// Where the programs find what they read: kernel struct members (from the running kernel's BTF)
/// and tracepoint record fields (from tracefs `format` files), in bytes. aya-ebpf has no CO-RE, so
/// the daemon finds these at load time and hands them over once, as the global
/// `globals::KERNEL_OFFSETS`; nothing kernel-internal is hard-coded on the eBPF side.
///
/// Every field is a `u32`, `UNKNOWN_OFFSET` when not known. Adding an offset takes a field here,
/// the code that finds it (`portwatch/src/kernel/attach`: `btf.rs` for struct members,
/// `KernelLayout::discover` for tracepoint fields) and its use (`offsets::get(|o| &o.field)` in
/// the eBPF crate).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `sock.__sk_common.skc_num`: the local port, host order.
    pub sock_num: u32,
    pub sock_family: u32,
    pub sock_state: u32,
    pub sock_protocol: u32,
    pub sock_daddr: u32,
    pub sock_dport: u32,
    pub sock_v6_daddr: u32,
    pub sock_rcv_saddr: u32,
    pub sock_v6_rcv_saddr: u32,
    pub sock_net: u32,
    pub sock_cookie: u32,
    /// `sock.sk_err`: the error a failed handshake left on the socket.
    pub sock_err: u32,
    /// `sock.sk_socket`: the `struct socket` of a socket a process holds.
    pub sock_socket: u32,
    /// `sock.sk_sndtimeo`: a blocking connect with a send timeout can return EINPROGRESS.
    pub sock_sndtimeo: u32,
    /// `socket.state`: a connect on a socket not `SS_UNCONNECTED` is no new connect.
    pub socket_state: u32,
    /// `file.f_flags`: whether a socket's descriptor is non-blocking.
    pub file_flags: u32,
    /// `inet_sock.inet_sport`: the local port, network order; still set once a closed TCP
    /// socket has given the port back.
    pub inet_sport: u32,
    pub socket_sk: u32,
    pub socket_file: u32,
    /// `net.ns.inum`: the network namespace's inode number.
    pub net_ns_inum: u32,
    pub task_real_parent: u32,
    pub task_tgid: u32,
    pub task_mm: u32,
    pub task_comm: u32,
    pub task_files: u32,
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    pub files_fdt: u32,
    pub fdtable_max_fds: u32,
    pub fdtable_fd: u32,
    pub file_private_data: u32,
    /// What `bpf_get_current_{pid_tgid,uid_gid,cgroup_id}` read, for `sock_ops` programs, which
    /// may not call those helpers on every kernel: `task_struct.pid`, `.cred` (`cred.uid`,
    /// `.gid`) and `.cgroups` (`css_set.dfl_cgrp`, `cgroup.kn`, `kernfs_node.id`).
    pub task_pid: u32,
    pub task_cred: u32,
    pub cred_uid: u32,
    pub cred_gid: u32,
    pub task_cgroups: u32,
    pub css_set_dfl_cgrp: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,
    /// `struct pt_regs` members holding a syscall's first two arguments at its exit; unknown
    /// where the architecture's layout is not known, and then every bind is parked instead.
    pub regs_arg0: u32,
    pub regs_arg1: u32,
    /// The `fd` field of a `syscalls:sys_enter_listen` record.
    pub tp_listen_fd: u32,
    /// The `ret` field of a `syscalls:sys_exit_{bind,listen,connect}` record (one offset for all
    /// three).
    pub tp_sys_exit_ret: u32,
    /// The `filename` field (`__data_loc`) of a `sched:sched_process_exec` record.
    pub tp_exec_filename: u32,
    /// The `child_pid` field of a `sched:sched_process_fork` record.
    pub tp_fork_child_pid: u32,
}

impl KernelOffsets {
    /// Every offset unknown: the global's value until the daemon overrides it.
    // SAFETY: plain integers, valid for any bit pattern; `transmute` checks at compile time that
    // the array is exactly as large as the struct.
    pub const UNKNOWN: KernelOffsets =
        unsafe { core::mem::transmute([UNKNOWN_OFFSET; size_of::<KernelOffsets>() / 4]) };
}

// Every field is a u32, which `UNKNOWN` relies on: a wider one would show as alignment 8.
const _: () = assert!(core::mem::align_of::<KernelOffsets>() == 4);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` data with explicit padding fields; every bit pattern is valid.
    unsafe impl aya::Pod for super::RecordHeader {}
    unsafe impl aya::Pod for super::PortEvent {}
    unsafe impl aya::Pod for super::Pending {}
    unsafe impl aya::Pod for super::SockState {}
    unsafe impl aya::Pod for super::CpuCounters {}
    unsafe impl aya::Pod for super::ExecEvent {}
    unsafe impl aya::Pod for super::ProcEvent {}
    unsafe impl aya::Pod for super::KernelOffsets {}
}
