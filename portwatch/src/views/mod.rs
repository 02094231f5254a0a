//! The operator's views at a terminal: `who`'s argument forms and table, the live `tail`, and
//! `top`. They read what the daemon writes (its log, its history) and the kernel's socket
//! tables; none of them needs the daemon's privileges beyond reading those.
pub mod filter;
pub mod follow;
pub mod identity;
pub mod ports;
pub mod table;
pub mod tail;
pub mod top;
