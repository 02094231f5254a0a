use std::process::ExitCode;

use clap::Parser as _;
use portwatch::{
    ops::cli::{Cli, Command},
    ops::commands,
    ops::config::{self, Config},
    ops::status,
};
use tracing_subscriber::{EnvFilter, layer::SubscriberExt as _, util::SubscriberInitExt as _};

/// Diagnostics go to the journal with structured fields when systemd connected us to it, else to
/// stderr; stdout carries only the event stream.
fn init_tracing() {
    let filter =
        EnvFilter::try_from_env("PORTWATCH_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let journald = std::env::var_os("JOURNAL_STREAM")
        .is_some()
        .then(|| tracing_journald::layer().ok())
        .flatten();
    let registry = tracing_subscriber::registry().with(filter);
    match journald {
        Some(j) => registry
            .with(j.with_syslog_identifier("portwatch".into()))
            .init(),
        None => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    // Colour codes only for a person at a terminal, not in a file or a pipe.
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            )
            .init(),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => {
            let config = Config::load_trusted(args.config.as_deref())?;
            let opts = args.options(&config);
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(portwatch::daemon::run(opts))
        }
        Command::Status(args) => {
            let socket = match args.socket {
                Some(s) => s,
                None => Config::load(args.config.as_deref())?.status.socket,
            };
            let answer = status::query(&socket)?;
            if args.json {
                println!("{}", serde_json::to_string(&answer)?);
            } else {
                print!("{}", status::render(&answer));
            }
            Ok(())
        }
        Command::Who(args) => commands::who(args),
        Command::Tail(args) => commands::tail(args),
        Command::Top(args) => commands::top(args),
        Command::CheckPolicy(args) => {
            let p = portwatch::judgement::policy::Policy::load(&args.file)?;
            let required = p.rules.iter().filter(|r| r.required).count();
            println!(
                "{}: valid; {} allow rules ({required} required), reconciliation every {} s{}",
                args.file.display(),
                p.rules.len(),
                p.settings.reconcile_interval_seconds,
                if p.hook.is_some() {
                    ", exec hook set"
                } else {
                    ""
                }
            );
            Ok(())
        }
        Command::Baseline => {
            let found = portwatch::judgement::baseline::listeners()?;
            let host = nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default();
            print!(
                "{}",
                portwatch::judgement::baseline::render(
                    &found,
                    &host,
                    &portwatch::clock::now_rfc3339()
                )
            );
            Ok(())
        }
        Command::Completions(args) => {
            use std::io::Write as _;
            std::io::stdout().write_all(&portwatch::ops::cli::completions(args.shell))?;
            Ok(())
        }
        Command::ManPages(args) => {
            for p in portwatch::ops::cli::man_pages(&args.dir).map_err(|e| {
                anyhow::anyhow!("writing man pages into {}: {e}", args.dir.display())
            })? {
                println!("{}", p.display());
            }
            Ok(())
        }
        Command::Config(_) => {
            print!("{}", config::DEFAULTS_TOML);
            Ok(())
        }
    }
}

/// The error and its causes on one line. Error messages here name their cause (so a diagnostic
/// that prints only the top error still says why) and also keep it as their source: a cause the
/// text already holds is not repeated.
fn describe(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portwatch: error: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}
