//! portwatch: eBPF-traced port events. The modules follow the data flow:
//! attach → read → decode → enrich → event (schema) → sink, driven by `daemon`; `config`, `cli`
//! and `status` are the operator's side.
pub mod alert;
pub mod attach;
pub mod baseline;
pub mod canary;
pub mod cgroup;
pub mod cli;
pub mod clock;
pub mod config;
pub mod containers;
pub mod daemon;
pub mod decode;
pub mod enrich;
pub mod errno;
pub mod event;
pub mod hook;
pub mod lineage;
pub mod policy;
pub mod ports;
pub mod private_dir;
pub mod privileges;
pub mod read;
pub mod sink;
pub mod sockets;
pub mod status;
pub mod store;
pub mod tenancy;
pub mod who;
