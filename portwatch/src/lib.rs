//! portwatch: eBPF-traced port events. One folder per stage of the data flow (docs/architecture.md):
//! `kernel` (attach, read, decode) → `attribution` (process facts) → `history` (the live table and
//! the store) and `judgement` (policy, alerts) → `output` (the event log). `facts` holds what they
//! hand each other; `ops` is the operator's side (config, CLI, status) and `views` what they read at a
//! terminal (`who`'s forms, `tail`, `top`); `daemon` wires the stages and timers.
pub mod attribution;
pub mod bounds;
pub mod clock;
pub mod daemon;
pub mod facts;
pub mod files;
pub mod hashing;
pub mod history;
pub mod judgement;
pub mod kernel;
pub mod ops;
pub mod output;
pub mod views;
