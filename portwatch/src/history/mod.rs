//! Who held which port when: the live table of open sockets (tenancy), the SQLite store it writes
//! to, and the `who` query over both.
pub mod store;
pub mod tenancy;
pub mod who;
