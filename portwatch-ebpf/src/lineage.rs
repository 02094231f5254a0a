//! Process lineage: exec (with the filename and argv of the new image, read from the kernel and
//! the new process's memory while it certainly exists), fork and exit. The daemon keeps a process
//! table from these so that events of processes already gone are still attributed.
use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{
            bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user,
        },
    },
    macros::{map, tracepoint},
    maps::PerCpuArray,
    programs::TracePointContext,
};
use portwatch_common::{EXEC_FIXED_LEN, ExecEvent, ProcEvent, RecordHeader, lineage};

use crate::{
    emit::{self, EVENTS, read_kernel},
    offsets,
};

/// Where an exec record is put together: a path may be PATH_MAX long, and the ring buffer takes
/// only the bytes used (`bpf_ringbuf_output` copies a length known at run time; a reservation's
/// size must be a constant).
#[map]
static EXEC_SCRATCH: PerCpuArray<ExecEvent> = PerCpuArray::with_max_entries(1, 0);

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn portwatch_sched_exec(ctx: TracePointContext) -> u32 {
    let Some(ev) = EXEC_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: `ev` points at a reserved ring-buffer record; kernel and user memory are read only
    // through the probe-read helpers, with sizes bounded for the verifier.
    unsafe {
        (*ev).ts_ns = bpf_ktime_get_ns();
        (*ev).header = RecordHeader::new(lineage::EXEC);
        (*ev).args_truncated = 0;
        (*ev).filename_len = 0;
        (*ev).args_len = 0;
        (*ev).pid = (pid_tgid >> 32) as u32;
        (*ev).uid = bpf_get_current_uid_gid() as u32;
        (*ev).filename_truncated = 0;
        (*ev).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        let task = bpf_get_current_task() as usize;
        (*ev).ppid = match (
            offsets::get(|o| &o.task_real_parent),
            offsets::get(|o| &o.task_tgid),
        ) {
            (Some(rp), Some(tg)) => read_kernel::<usize>(task, rp)
                .and_then(|parent| read_kernel::<u32>(parent, tg))
                .unwrap_or(0),
            _ => 0,
        };
        // __data_loc: offset in the low 16 bits, length in the high 16.
        if let Some(off) = offsets::get(|o| &o.tp_exec_filename)
            && let Ok(loc) = ctx.read_at::<u32>(off)
        {
            // The length counts the terminating NUL, which is left out. The kernel caps a path
            // at PATH_MAX, the buffer's size; a longer one would be cut and marked. The mask
            // keeps the bound plain to the verifier.
            let whole = (loc >> 16) as usize;
            let len = whole.min(lineage::FILENAME_LEN - 1) & (lineage::FILENAME_LEN - 1);
            (*ev).filename_truncated = (whole > lineage::FILENAME_LEN) as u8;
            let src = (ctx.as_ptr() as usize).wrapping_add((loc & 0xffff) as usize);
            if bpf_probe_read_kernel(
                (*ev).filename.as_mut_ptr().cast(),
                len as u32,
                src as *const _,
            ) == 0
            {
                (*ev).filename_len = len as u16;
            }
        }
        if let (Some(mm_off), Some(start_off), Some(end_off)) = (
            offsets::get(|o| &o.task_mm),
            offsets::get(|o| &o.mm_arg_start),
            offsets::get(|o| &o.mm_arg_end),
        ) && let Some(mm) = read_kernel::<usize>(task, mm_off)
            && mm != 0
            && let (Some(start), Some(end)) = (
                read_kernel::<usize>(mm, start_off),
                read_kernel::<usize>(mm, end_off),
            )
            && end > start
        {
            let want = end - start;
            let len = if want > lineage::ARGS_LEN - 1 {
                lineage::ARGS_LEN - 1
            } else {
                want
            };
            let len = len & (lineage::ARGS_LEN - 1);
            if bpf_probe_read_user(
                (*ev).args.as_mut_ptr().cast(),
                len as u32,
                start as *const _,
            ) == 0
            {
                (*ev).args_len = len as u32;
                (*ev).args_truncated = (want > len) as u8;
            }
        }
    }
    // SAFETY: `ev` is this CPU's scratch record, written above; the length sent is bounded by
    // its size.
    unsafe {
        let used = EXEC_FIXED_LEN + ((*ev).filename_len as usize & (lineage::FILENAME_LEN - 1));
        let len = if used > size_of::<ExecEvent>() {
            size_of::<ExecEvent>()
        } else {
            used
        };
        let bytes = core::slice::from_raw_parts(ev.cast::<u8>(), len);
        if EVENTS
            .output::<[u8]>(bytes, emit::wake_flags((*ev).ts_ns))
            .is_err()
        {
            emit::count_loss();
        }
    }
    0
}

#[inline(always)]
fn proc_event(kind: u8, pid: u32, ppid: u32) {
    let ev = ProcEvent {
        header: RecordHeader::new(kind),
        pid,
        // SAFETY: helper without arguments.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        ppid,
        _pad: 0,
    };
    match EVENTS.reserve::<ProcEvent>(0) {
        Some(mut entry) => {
            entry.write(ev);
            entry.submit(emit::wake_flags(ev.ts_ns));
        }
        None => emit::count_loss(),
    }
}

/// `child_pid` is a thread id; for a new thread it names no process, and the daemon ignores it.
#[tracepoint(category = "sched", name = "sched_process_fork")]
pub fn portwatch_sched_fork(ctx: TracePointContext) -> u32 {
    let Some(off) = offsets::get(|o| &o.tp_fork_child_pid) else {
        return 0;
    };
    // SAFETY: the offset comes from the tracepoint's format file.
    let Ok(child) = (unsafe { ctx.read_at::<i32>(off) }) else {
        return 0;
    };
    proc_event(
        lineage::FORK,
        child as u32,
        (bpf_get_current_pid_tgid() >> 32) as u32,
    );
    0
}

/// Only the thread group leader's exit ends a process; every exiting thread drops what it left
/// parked.
#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn portwatch_sched_exit(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    emit::drop_parked(pid_tgid as u32);
    if (pid_tgid >> 32) as u32 == pid_tgid as u32 {
        proc_event(lineage::EXIT, (pid_tgid >> 32) as u32, 0);
    }
    0
}
