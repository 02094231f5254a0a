//! Offsets the daemon fills in at load time: kernel struct members from BTF and tracepoint fields
//! from tracefs. aya-ebpf has no CO-RE, so nothing kernel-internal is hard-coded here.
use portwatch_common::UNKNOWN_OFFSET;

macro_rules! offset_globals {
    ($($name:ident),* $(,)?) => {
        $(
            #[unsafe(no_mangle)]
            static $name: u32 = UNKNOWN_OFFSET;
        )*
    };
}

offset_globals!(
    OFF_SOCK_NUM,
    OFF_INET_SPORT,
    OFF_SOCKET_SK,
    OFF_SOCK_PROTOCOL,
    OFF_SOCK_FAMILY,
    OFF_SOCK_STATE,
    OFF_SOCK_DADDR,
    OFF_SOCK_DPORT,
    OFF_SOCK_V6_DADDR,
    OFF_SOCK_NET,
    OFF_TASK_REAL_PARENT,
    OFF_TASK_TGID,
    OFF_TASK_MM,
    OFF_MM_ARG_START,
    OFF_MM_ARG_END,
    TP_EXEC_FILENAME,
    TP_FORK_CHILD_PID,
    OFF_SOCK_RCV_SADDR,
    OFF_SOCK_V6_RCV_SADDR,
    OFF_NET_NS_INUM,
    TP_SYS_EXIT_RET,
    WAKEUP_BYTES,
    OFF_TASK_COMM,
    OFF_TASK_FILES,
    OFF_FILES_FDT,
    OFF_FDTABLE_MAX_FDS,
    OFF_FDTABLE_FD,
    OFF_FILE_PRIVATE_DATA,
    OFF_SOCKET_FILE,
    OFF_SOCK_COOKIE,
    OFF_REGS_ARG0,
    OFF_REGS_ARG1,
    TP_LISTEN_FD,
);

/// Reads a global through a volatile load so the compiler cannot fold in the default value.
#[inline(always)]
pub fn get(global: &'static u32) -> Option<usize> {
    // SAFETY: a plain static; the volatile read only stops constant folding.
    let v = unsafe { core::ptr::read_volatile(global) };
    (v != UNKNOWN_OFFSET).then_some(v as usize)
}

pub fn sock_num() -> Option<usize> {
    get(&OFF_SOCK_NUM)
}
pub fn inet_sport() -> Option<usize> {
    get(&OFF_INET_SPORT)
}
pub fn socket_sk() -> Option<usize> {
    get(&OFF_SOCKET_SK)
}
pub fn sock_protocol() -> Option<usize> {
    get(&OFF_SOCK_PROTOCOL)
}
pub fn sock_family() -> Option<usize> {
    get(&OFF_SOCK_FAMILY)
}
pub fn sock_state() -> Option<usize> {
    get(&OFF_SOCK_STATE)
}
pub fn sock_daddr() -> Option<usize> {
    get(&OFF_SOCK_DADDR)
}
pub fn sock_dport() -> Option<usize> {
    get(&OFF_SOCK_DPORT)
}
pub fn sock_v6_daddr() -> Option<usize> {
    get(&OFF_SOCK_V6_DADDR)
}
pub fn task_real_parent() -> Option<usize> {
    get(&OFF_TASK_REAL_PARENT)
}
pub fn task_tgid() -> Option<usize> {
    get(&OFF_TASK_TGID)
}
pub fn task_mm() -> Option<usize> {
    get(&OFF_TASK_MM)
}
pub fn mm_arg_start() -> Option<usize> {
    get(&OFF_MM_ARG_START)
}
pub fn mm_arg_end() -> Option<usize> {
    get(&OFF_MM_ARG_END)
}
pub fn tp_exec_filename() -> Option<usize> {
    get(&TP_EXEC_FILENAME)
}
pub fn tp_fork_child_pid() -> Option<usize> {
    get(&TP_FORK_CHILD_PID)
}
pub fn sock_net() -> Option<usize> {
    get(&OFF_SOCK_NET)
}
pub fn sock_rcv_saddr() -> Option<usize> {
    get(&OFF_SOCK_RCV_SADDR)
}
pub fn sock_v6_rcv_saddr() -> Option<usize> {
    get(&OFF_SOCK_V6_RCV_SADDR)
}
pub fn task_comm() -> Option<usize> {
    get(&OFF_TASK_COMM)
}
pub fn net_ns_inum() -> Option<usize> {
    get(&OFF_NET_NS_INUM)
}
/// See `emit::submit`; unset means "wake on every record".
pub fn wakeup_bytes() -> Option<usize> {
    get(&WAKEUP_BYTES)
}
pub fn tp_sys_exit_ret() -> Option<usize> {
    get(&TP_SYS_EXIT_RET)
}
pub fn task_files() -> Option<usize> {
    get(&OFF_TASK_FILES)
}
pub fn files_fdt() -> Option<usize> {
    get(&OFF_FILES_FDT)
}
pub fn fdtable_max_fds() -> Option<usize> {
    get(&OFF_FDTABLE_MAX_FDS)
}
pub fn fdtable_fd() -> Option<usize> {
    get(&OFF_FDTABLE_FD)
}
pub fn file_private_data() -> Option<usize> {
    get(&OFF_FILE_PRIVATE_DATA)
}
pub fn socket_file() -> Option<usize> {
    get(&OFF_SOCKET_FILE)
}
pub fn sock_cookie() -> Option<usize> {
    get(&OFF_SOCK_COOKIE)
}
/// `struct pt_regs` members holding a syscall's first two arguments at its exit; unset where the
/// architecture's layout is not known, and then every bind is parked instead.
pub fn regs_arg0() -> Option<usize> {
    get(&OFF_REGS_ARG0)
}
pub fn regs_arg1() -> Option<usize> {
    get(&OFF_REGS_ARG1)
}
/// The `fd` field of a `syscalls:sys_enter_listen` record.
pub fn tp_listen_fd() -> Option<usize> {
    get(&TP_LISTEN_FD)
}
