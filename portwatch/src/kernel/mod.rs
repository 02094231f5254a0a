//! The kernel side of the pipeline: attach the eBPF programs (the attach ladder), read the ring
//! buffer and loss counters, decode records, and list the kernel's sockets (sock_diag).
pub mod attach;
pub mod decode;
pub mod read;
pub mod sockets;
