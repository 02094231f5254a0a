//! Command-line interface. Flags of `run` override the config file.
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::{
    kernel::attach::AttachMode,
    ops::config::{Config, RunOptions},
    output::sink::Rotation,
};

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
    /// Ask the running daemon how it is doing.
    Status(StatusArgs),
    /// Configuration file helpers.
    Config(ConfigArgs),
    /// Who holds these ports now, and who held them before.
    Who(WhoArgs),
    /// The event log live, as columns a person reads (or filtered JSON lines).
    Tail(TailArgs),
    /// A full-screen view: listeners, the busiest processes, ephemeral ports per namespace.
    Top(TopArgs),
    /// Validate a policy file; every problem is named with its line and column.
    CheckPolicy(CheckPolicyArgs),
    /// Print a commented policy that allows what listens now (review it before installing).
    Baseline,
    /// Print a shell completion script (bash: `portwatch completions bash >
    /// /etc/bash_completion.d/portwatch`).
    Completions(CompletionsArgs),
    /// Write a man page for portwatch and one for each subcommand into DIR (for packaging).
    #[command(hide = true)]
    ManPages(ManPagesArgs),
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManPagesArgs {
    /// Where to write portwatch.1, portwatch-who.1, ...
    pub dir: PathBuf,
}

/// Writes `portwatch.1` and `portwatch-SUBCOMMAND.1` for every visible subcommand into `dir`;
/// returns the files written.
pub fn man_pages(dir: &std::path::Path) -> std::io::Result<Vec<PathBuf>> {
    let cmd = <Cli as clap::CommandFactory>::command();
    let mut written = Vec::new();
    let mut write = |name: String, c: clap::Command| -> std::io::Result<()> {
        let mut out = Vec::new();
        clap_mangen::Man::new(c).render(&mut out)?;
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, out)?;
        written.push(path);
        Ok(())
    };
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("portwatch-{}", sub.get_name());
        let synopsis = format!("portwatch {}", sub.get_name());
        write(name.clone(), sub.clone().name(name).bin_name(synopsis))?;
    }
    write("portwatch".into(), cmd)?;
    Ok(written)
}

/// The completion script for `shell`: every subcommand and flag this binary knows.
pub fn completions(shell: clap_complete::Shell) -> Vec<u8> {
    let mut out = Vec::new();
    clap_complete::generate(
        shell,
        &mut <Cli as clap::CommandFactory>::command(),
        "portwatch",
        &mut out,
    );
    out
}

#[derive(Debug, Args)]
pub struct CheckPolicyArgs {
    /// The policy file.
    pub file: PathBuf,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  portwatch who 60481\n  portwatch who http --since 2h\n  portwatch who 53/udp --at 10m\n  portwatch who 8000-8100 --listening -o wide\n  portwatch who 1-65535 --user www-data --listening"
)]
pub struct WhoArgs {
    /// PORT, PORT/tcp, PORT/udp, a service name from /etc/services (http, domain/udp) or a range
    /// (8000-8100, 8000-8100/udp).
    #[arg(value_name = "PORTS")]
    pub ports: String,
    /// Who held it at this time (RFC 3339, or an age like 10m, 2h).
    #[arg(long, value_name = "TIME", conflicts_with = "since")]
    pub at: Option<String>,
    /// Everyone who held it since this time.
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only this transport (the same as PORTS/tcp or PORTS/udp).
    #[arg(long, value_enum)]
    pub transport: Option<TransportArg>,
    #[command(flatten)]
    pub process: ProcessFilterArgs,
    /// Only listening sockets.
    #[arg(long)]
    pub listening: bool,
    /// `table`: short times, the command cut to the terminal; `wide`: every column whole;
    /// `json`: one JSON object per holding.
    #[arg(short, long, value_enum, default_value_t = WhoFormat::Table)]
    pub output: WhoFormat,
    /// The same as `-o json`.
    #[arg(long, hide = true, conflicts_with = "output")]
    pub json: bool,
    /// History rows at most (newest first), 1 to 100000.
    #[arg(long, value_name = "N", default_value_t = 200, value_parser = crate::bounds::flag_within::<1, 100_000>)]
    pub limit: u64,
    /// Where the daemon keeps its history [default: from the config file].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WhoFormat {
    Table,
    Wide,
    Json,
}

/// The process filters `who` and `tail` share.
#[derive(Debug, Clone, Default, Args)]
pub struct ProcessFilterArgs {
    /// Only this process.
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
    /// Only this executable: a base name (nginx) or a whole path (/usr/sbin/nginx).
    #[arg(long, value_name = "NAME|PATH")]
    pub exe: Option<String>,
    /// Only this user: a name or a uid.
    #[arg(long, value_name = "NAME|UID")]
    pub user: Option<String>,
    /// Only this systemd unit (nginx or nginx.service).
    #[arg(long, value_name = "UNIT")]
    pub unit: Option<String>,
    /// Only this container: a prefix of its id.
    #[arg(long, value_name = "ID")]
    pub container: Option<String>,
}

impl ProcessFilterArgs {
    pub fn filter(&self) -> crate::views::filter::ProcessFilter {
        crate::views::filter::ProcessFilter {
            pid: self.pid,
            exe: self.exe.clone(),
            user: self.user.clone(),
            unit: self.unit.clone(),
            container: self.container.clone(),
        }
    }
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  portwatch tail\n  portwatch tail --event listen,bind --outcome failure\n  portwatch tail --port 443 --exe curl\n  portwatch tail -o json --user www-data | jq .\n  journalctl -u portwatch -o cat | portwatch tail -"
)]
pub struct TailArgs {
    /// The event log to read, `-` for standard input [default: the daemon's, `[log] file` in
    /// its config].
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Only these events (a comma-separated list; `alert`, `loss` and `status` are events too).
    #[arg(long, value_name = "EVENT", value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(crate::views::tail::EVENTS))]
    pub event: Vec<String>,
    /// Only these outcomes (a comma-separated list).
    #[arg(long, value_name = "OUTCOME", value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(crate::views::tail::OUTCOMES))]
    pub outcome: Vec<String>,
    /// Only events whose local or peer port is one of these (PORT, PORT/tcp, a service name or
    /// a range, as `who` takes them).
    #[arg(long, value_name = "PORTS")]
    pub port: Option<String>,
    #[command(flatten)]
    pub process: ProcessFilterArgs,
    /// `table`: aligned columns; `json`: the matching lines unchanged.
    #[arg(short, long, value_enum, default_value_t = TailFormat::Table)]
    pub output: TailFormat,
    /// Matching lines already in the log to show first.
    #[arg(short = 'n', long, value_name = "N", default_value_t = 10, value_parser = crate::bounds::flag_within::<0, 100_000>)]
    pub lines: u64,
    /// Print what is there and exit, rather than follow the log.
    #[arg(long)]
    pub no_follow: bool,
    /// Colour: `auto` only at a terminal (and never with NO_COLOR set).
    #[arg(long, value_enum, default_value_t = ColourArg::Auto)]
    pub color: ColourArg,
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TailFormat {
    Table,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ColourArg {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    /// The event log the churn is counted from [default: the daemon's, `[log] file` in its
    /// config].
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// Mark listeners this policy does not allow [default: the daemon's].
    #[arg(long, value_name = "PATH")]
    pub policy: Option<PathBuf>,
    /// Seconds between refreshes, 1 to 60.
    #[arg(long, value_name = "SECONDS", default_value_t = 1, value_parser = crate::bounds::flag_within::<1, 60>)]
    pub interval: u64,
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TransportArg {
    Tcp,
    Udp,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Config file [default: /etc/portwatch/portwatch.toml when it exists].
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Attach strategy: `auto` takes the best that works for each hook family.
    #[arg(long, value_enum)]
    pub attach: Option<AttachMode>,
    /// Also append events to this file (JSON Lines, mode 0640).
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,
    /// Do not write events to stdout.
    #[arg(long)]
    pub no_stdout: bool,
    /// The lines' format: `portwatch` (docs/schema.md), `ecs` (Elastic Common Schema 8.x) or
    /// `otel` (OTLP/JSON log records) [default: from the config, else portwatch].
    #[arg(long, value_enum)]
    pub format: Option<crate::output::Format>,
    /// Ring buffer size in KiB: a power of two, 4 to 1048576.
    #[arg(long, value_name = "KIB", value_parser = parse_ring_kib)]
    pub ring_buffer_kib: Option<u32>,
    /// Calls in flight the kernel side can hold, 64 to 1048576 [default: from the config, else
    /// 16384].
    #[arg(long, value_name = "N", value_parser = crate::bounds::flag_within::<64, 1_048_576>)]
    pub pending_entries: Option<u64>,
    /// Tracepoint strategy: also hook the bind, listen and connect syscalls, to report calls that
    /// fail before they touch a socket (EADDRINUSE, EADDRNOTAVAIL), at the cost of slowing every
    /// syscall on the host [default: from the config, else false].
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set)]
    pub syscall_tracepoints: Option<bool>,
    /// Unix socket for `portwatch status`.
    #[arg(long, value_name = "PATH")]
    pub status_socket: Option<PathBuf>,
    /// Directory of the tenancy history.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Seconds between canary rounds (blinding detection) [default: from the config, else 30].
    #[arg(long, value_name = "SECONDS", value_parser = crate::bounds::flag_within::<0, 86_400>)]
    pub canary_interval_seconds: Option<u64>,
    /// Listener policy [default: from the config file, else /etc/portwatch/policy.toml when it
    /// exists; with none, no alerts].
    #[arg(long, value_name = "PATH")]
    pub policy: Option<PathBuf>,
    /// Prometheus textfile for node_exporter; "" writes none [default: from the config, else
    /// /var/lib/prometheus/node-exporter/portwatch.prom].
    #[arg(long, value_name = "PATH", value_parser = parse_textfile)]
    pub metrics_textfile: Option<PathBuf>,
    /// Serve GET /metrics on this loopback address (e.g. 127.0.0.1:9617) [default: from the
    /// config, else no endpoint].
    #[arg(long, value_name = "ADDR", value_parser = parse_metrics_listen)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Write a `holding` line whenever a port's holding ends, for a central store
    /// (docs/fleet.md) [default: from the config, else false].
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set)]
    pub holdings: Option<bool>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print the daemon's answer as JSON.
    #[arg(long)]
    pub json: bool,
    /// The daemon's status socket [default: from the config file, else /run/portwatch/status.sock].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Config file to read the socket path from.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// Print a commented config file holding every default.
    #[arg(long, required = true)]
    pub print_defaults: bool,
}

/// Any path, and "" (no textfile), which clap's own path parser refuses.
fn parse_textfile(s: &str) -> Result<PathBuf, String> {
    Ok(PathBuf::from(s))
}

fn parse_metrics_listen(s: &str) -> Result<std::net::SocketAddr, String> {
    let addr = s
        .parse()
        .map_err(|_| format!("`{s}` is not an address with a port (127.0.0.1:9617, [::1]:9617)"))?;
    crate::ops::metrics_http::check_loopback(addr).map_err(|e| e.to_string())
}

fn parse_ring_kib(s: &str) -> Result<u32, String> {
    let v: u32 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a whole number of KiB"))?;
    crate::ops::config::valid_ring_kib(v)
}

impl RunArgs {
    /// The file's settings with this command line's flags on top.
    pub fn options(&self, config: &Config) -> RunOptions {
        let log_file = self.log_file.clone().or_else(|| config.log.file.clone());
        RunOptions {
            attach: self.attach.unwrap_or(config.attach),
            stdout: config.log.stdout && !self.no_stdout,
            format: self.format.unwrap_or(config.log.format),
            rotation: Some(Rotation {
                max_bytes: config.log.rotate_size_mib.saturating_mul(1024 * 1024),
                keep: config.log.rotate_keep,
            }),
            log_file,
            ring_buffer_bytes: self.ring_buffer_kib.unwrap_or(config.ring_buffer_kib) * 1024,
            tables: crate::ops::config::KernelTables {
                pending_entries: self
                    .pending_entries
                    .map_or(config.kernel.pending_entries, |n| n as u32),
                syscall_tracepoints: self
                    .syscall_tracepoints
                    .unwrap_or(config.kernel.syscall_tracepoints),
                ..config.kernel
            },
            status_socket: self
                .status_socket
                .clone()
                .unwrap_or_else(|| config.status.socket.clone()),
            cache: config.cache,
            policy: self
                .policy
                .clone()
                .or_else(|| config.policy.file.clone())
                .or_else(|| {
                    let default = std::path::Path::new(crate::judgement::policy::DEFAULT_PATH);
                    default.exists().then(|| default.to_path_buf())
                }),
            status_interval_seconds: config.status.event_interval_seconds,
            canary_interval_seconds: self
                .canary_interval_seconds
                .unwrap_or(config.status.canary_interval_seconds),
            state_dir: self
                .state_dir
                .clone()
                .unwrap_or_else(|| config.store.state_dir.clone()),
            retention: crate::history::store::Retention {
                max_age: std::time::Duration::from_secs(
                    u64::from(config.store.max_age_days) * 86_400,
                ),
                max_rows: config.store.max_rows,
            },
            holdings: self.holdings.unwrap_or(config.log.holdings),
            metrics: crate::ops::config::MetricsOptions {
                textfile: Some(
                    self.metrics_textfile
                        .clone()
                        .unwrap_or_else(|| config.metrics.textfile.clone()),
                )
                .filter(|p| !p.as_os_str().is_empty()),
                listen: self.metrics_listen.or(config.metrics.listen),
                interval_seconds: config.metrics.interval_seconds,
            },
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
    fn completions_know_every_subcommand_and_the_views_flags() {
        let bash = String::from_utf8(completions(clap_complete::Shell::Bash)).unwrap();
        for word in [
            "who",
            "tail",
            "top",
            "--listening",
            "--exe",
            "--container",
            "--no-follow",
        ] {
            assert!(bash.contains(word), "{word}");
        }
        let zsh = String::from_utf8(completions(clap_complete::Shell::Zsh)).unwrap();
        assert!(zsh.contains("--outcome"));
    }

    #[test]
    fn a_man_page_for_every_subcommand() {
        let dir = tempfile::tempdir().unwrap();
        let pages = man_pages(dir.path()).unwrap();
        let names: Vec<String> = pages
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for want in [
            "portwatch.1",
            "portwatch-run.1",
            "portwatch-who.1",
            "portwatch-tail.1",
            "portwatch-top.1",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("man-pages")));
        let who = std::fs::read_to_string(dir.path().join("portwatch-who.1")).unwrap();
        assert!(
            who.starts_with(".ie") || who.contains(".TH portwatch-who"),
            "{who}"
        );
        assert!(who.contains("listening"));
    }

    #[test]
    fn bad_attach_value_is_rejected() {
        let err = Cli::try_parse_from(["portwatch", "run", "--attach", "magic"]).unwrap_err();
        assert!(err.to_string().contains("magic"));
    }

    #[test]
    fn flags_override_the_file() {
        let config = Config::parse(
            "attach = \"kprobe\"\nring_buffer_kib = 64\n[log]\nfile = \"/a\"\nstdout = true\n",
            std::path::Path::new("t.toml"),
        )
        .unwrap();
        let Command::Run(args) =
            Cli::try_parse_from(["portwatch", "run", "--attach", "tracepoint", "--no-stdout"])
                .unwrap()
                .command
        else {
            panic!("run")
        };
        let o = args.options(&config);
        assert_eq!(o.attach, AttachMode::Tracepoint);
        assert!(!o.stdout);
        assert_eq!(o.ring_buffer_bytes, 64 * 1024);
        assert_eq!(o.log_file.as_deref(), Some(std::path::Path::new("/a")));
    }
}
