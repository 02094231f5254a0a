#![no_std]
//! Empty library target: lets portwatch name this crate as a build dependency so cargo
//! rebuilds the daemon when the eBPF programs change.
