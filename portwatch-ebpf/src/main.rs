//! portwatch's kernel side: capture who bound, listened on, connected from or released a port,
//! and hand it to userspace through one ring buffer. Nothing here allocates, parses or decides
//! policy; a full ring buffer is counted, never silent.
#![no_std]
#![no_main]
// Atomic add for the loss counter; the build sets RUSTC_BOOTSTRAP=1 for -Zbuild-std anyway.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod args;
mod bind;
mod connect;
mod emit;
mod fentry;
mod kfunc;
mod kprobe;
mod lineage;
mod listen;
mod offsets;
mod release;
mod sockets;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
