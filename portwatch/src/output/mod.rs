//! The event log: its schema (serde types only), errno names, and the sink that writes lines.
pub mod errno;
pub mod schema;
pub mod sink;
