//! The globals the daemon fills in at load time: `KERNEL_OFFSETS`, where kernel struct members
//! (from BTF) and tracepoint fields (from tracefs) are, and `WAKEUP_BYTES`. aya-ebpf has no CO-RE,
//! so nothing kernel-internal is hard-coded here.
//!
//! Both are read with volatile loads, so the compiler cannot fold in the defaults. An offset is
//! read on its own, `offsets::get(|o| &o.sock_num)`: one 4-byte load from the global's map value,
//! as for a plain `u32` global, never a copy of the whole struct.
use portwatch_common::{KernelOffsets, UNKNOWN_OFFSET};

#[unsafe(no_mangle)]
static KERNEL_OFFSETS: KernelOffsets = KernelOffsets::UNKNOWN;

#[unsafe(no_mangle)]
static WAKEUP_BYTES: u32 = UNKNOWN_OFFSET;

/// Reads a `u32` global (or a field of one) through a volatile load.
#[inline(always)]
fn read(global: &'static u32) -> Option<usize> {
    // SAFETY: a plain static; the volatile read only stops constant folding.
    let v = unsafe { core::ptr::read_volatile(global) };
    (v != UNKNOWN_OFFSET).then_some(v as usize)
}

/// One offset, `None` when the daemon did not find it: `get(|o| &o.sock_num)`.
#[inline(always)]
pub fn get(field: impl FnOnce(&'static KernelOffsets) -> &'static u32) -> Option<usize> {
    read(field(&KERNEL_OFFSETS))
}

/// See `emit::wake_flags`; unset means "wake on every record".
#[inline(always)]
pub fn wakeup_bytes() -> Option<usize> {
    read(&WAKEUP_BYTES)
}
