//! The operator's side: configuration, the command line, the status socket, privileges.
pub mod cli;
pub mod commands;
pub mod config;
pub mod metrics;
pub mod metrics_http;
pub mod privileges;
pub mod status;
