//! A syscall's own arguments, read back at its exit from the task's saved user registers
//! (`bpf_task_pt_regs`), and the socket behind a file descriptor.
//!
//! This is how a failed bind that named no port is reported: parking every bind's address at
//! entry only for the rare call that fails cost two hash-map operations per bind (measured in
//! docs/benchmarks.md). Reading the arguments again costs a dozen kernel reads, on the failure
//! path only.
use aya_ebpf::helpers::generated::{
    bpf_get_current_task, bpf_get_current_task_btf, bpf_probe_read_user, bpf_task_pt_regs,
};
use portwatch_common::{PortEvent, family, kind, probe};

use crate::{
    emit::{self, read_kernel},
    kfunc, offsets,
};

/// Whether this kernel's register layout is known, so that binds need not be parked.
#[inline(always)]
pub fn syscall_args_known() -> bool {
    offsets::get(|o| &o.regs_arg0).is_some() && offsets::get(|o| &o.regs_arg1).is_some()
}

/// The record of a bind(2) that failed with `errno` and parked nothing: its socket from the file
/// descriptor in the first argument, the address it asked for from the second. `None` when the
/// descriptor is not a TCP or UDP socket (a failed bind of any other kind of socket).
#[inline(always)]
pub fn failed_bind(errno: i32) -> Option<PortEvent> {
    let (fd, uaddr) = syscall_args()?;
    let socket = socket_of_fd(fd)?;
    let (sk, protocol, fam) = kfunc::sock_of(socket)?;
    let mut ev = emit::task_event(kind::BIND, probe::TP_SYS_EXIT_BIND, sk);
    ev.protocol = protocol;
    ev.family = fam;
    ev.errno = errno;
    if let Some((addr_family, addr, port)) = user_sockaddr(uaddr) {
        ev.local_port = port;
        // Normally a named port was parked and never gets here; its entry can still have been
        // evicted from the LRU table under pressure.
        if port != 0 {
            ev.flags |= portwatch_common::flags::PORT_REQUESTED;
        }
        // An address of the other family is reported as unspecified rather than misread.
        if addr_family == fam {
            ev.local_addr = addr;
        }
    }
    if let Some(off) = offsets::get(|o| &o.sock_cookie) {
        // SAFETY: a kernel read; 0 when no cookie was ever taken for this socket.
        ev.cookie = unsafe { read_kernel::<u64>(sk, off) }.unwrap_or(0);
    }
    Some(ev)
}

/// The first two arguments of the current syscall.
#[inline(always)]
fn syscall_args() -> Option<(u64, u64)> {
    let (arg0, arg1) = (
        offsets::get(|o| &o.regs_arg0)?,
        offsets::get(|o| &o.regs_arg1)?,
    );
    // SAFETY: the helpers take the current task; the registers are read through
    // bpf_probe_read_kernel.
    unsafe {
        let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as usize;
        if regs == 0 {
            return None;
        }
        Some((read_kernel(regs, arg0)?, read_kernel(regs, arg1)?))
    }
}

/// `current->files->fdt->fd[fd]->private_data`, if that file is a socket.
#[inline(always)]
pub fn socket_of_fd(fd: u64) -> Option<usize> {
    // SAFETY: kernel reads through bpf_probe_read_kernel, each checked before it is followed.
    unsafe {
        let task = bpf_get_current_task() as usize;
        let files: usize = read_kernel(task, offsets::get(|o| &o.task_files)?)?;
        if files == 0 {
            return None;
        }
        let fdt: usize = read_kernel(files, offsets::get(|o| &o.files_fdt)?)?;
        if fdt == 0 {
            return None;
        }
        let max_fds: u32 = read_kernel(fdt, offsets::get(|o| &o.fdtable_max_fds)?)?;
        if fd >= max_fds as u64 {
            return None;
        }
        let fds: usize = read_kernel(fdt, offsets::get(|o| &o.fdtable_fd)?)?;
        let file: usize = read_kernel(fds, (fd as usize) * core::mem::size_of::<usize>())?;
        if file == 0 {
            return None;
        }
        let socket: usize = read_kernel(file, offsets::get(|o| &o.file_private_data)?)?;
        if socket == 0 {
            return None;
        }
        // Any file has private data; only a socket's points back at the file.
        let back: usize = read_kernel(socket, offsets::get(|o| &o.socket_file)?)?;
        (back == file).then_some(socket)
    }
}

/// Family, address and port of a `sockaddr_in`/`sockaddr_in6` in the caller's memory.
#[inline(always)]
fn user_sockaddr(uaddr: u64) -> Option<(u8, [u8; 16], u16)> {
    if uaddr == 0 {
        return None;
    }
    // sockaddr_in6 is 28 bytes; a sockaddr_in (16) may end at a page boundary, so it is read at
    // its own size first.
    let mut buf = [0u8; 28];
    // SAFETY: user memory read through bpf_probe_read_user into a stack buffer of that size.
    unsafe {
        if bpf_probe_read_user(buf.as_mut_ptr().cast(), 16, uaddr as *const _) != 0 {
            return None;
        }
        let fam = u16::from_ne_bytes([buf[0], buf[1]]);
        let port = u16::from_be_bytes([buf[2], buf[3]]);
        let mut addr = [0u8; 16];
        if fam == family::INET as u16 {
            addr[..4].copy_from_slice(&buf[4..8]);
        } else if fam == family::INET6 as u16 {
            if bpf_probe_read_user(buf.as_mut_ptr().cast(), 28, uaddr as *const _) != 0 {
                return None;
            }
            addr.copy_from_slice(&buf[8..24]);
        } else {
            return None;
        }
        Some((fam as u8, addr, port))
    }
}
