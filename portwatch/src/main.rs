use std::process::ExitCode;

use clap::Parser as _;
use portwatch::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Diagnostics go to stderr; stdout carries only the event stream.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PORTWATCH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let result = match cli.command {
        Command::Run(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(portwatch::daemon::run(args.options()))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portwatch: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
