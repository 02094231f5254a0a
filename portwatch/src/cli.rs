//! Command-line interface.
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::{attach::AttachMode, daemon::RunOptions};

#[derive(Debug, Parser)]
#[command(
    name = "portwatch",
    version,
    about = "eBPF-traced port events: who bound, listened, connected and released which port"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground: one JSON line per port event.
    Run(RunArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Attach strategy: `auto` takes the best that works for each hook family.
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    pub attach: AttachMode,
    /// Also append events to this file (JSON Lines, mode 0640).
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,
    /// Do not write events to stdout (only to --log-file).
    #[arg(long, requires = "log_file")]
    pub no_stdout: bool,
    /// Ring buffer size in KiB: a power of two, at least 4.
    #[arg(long, value_name = "KIB", default_value_t = 1024, value_parser = parse_ring_kib)]
    pub ring_buffer_kib: u32,
}

fn parse_ring_kib(s: &str) -> Result<u32, String> {
    let v: u32 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a whole number of KiB"))?;
    if v < 4 || !v.is_power_of_two() || v > 1 << 20 {
        return Err(format!(
            "{v} KiB: the ring buffer must be a power of two between 4 and 1048576 KiB"
        ));
    }
    Ok(v)
}

impl RunArgs {
    pub fn options(&self) -> RunOptions {
        RunOptions {
            attach: self.attach,
            log_file: self.log_file.clone(),
            stdout: !self.no_stdout,
            ring_buffer_bytes: self.ring_buffer_kib * 1024,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_size_must_be_a_power_of_two() {
        assert_eq!(parse_ring_kib("64"), Ok(64));
        assert!(parse_ring_kib("100").unwrap_err().contains("power of two"));
        assert!(
            parse_ring_kib("x")
                .unwrap_err()
                .contains("not a whole number")
        );
    }

    #[test]
    fn bad_attach_value_is_rejected() {
        let err = Cli::try_parse_from(["portwatch", "run", "--attach", "magic"]).unwrap_err();
        assert!(err.to_string().contains("magic"));
    }
}
