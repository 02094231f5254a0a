//! `/etc/portwatch/portwatch.toml`: every setting has a default; command-line flags override the
//! file; unknown keys and wrong types are errors naming the file, line and column.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

use crate::{bounds::within, kernel::attach::AttachMode};

/// What `portwatch run` runs with: the file's settings with the command line's flags on top
/// (`cli::RunArgs::options`).
#[derive(Debug)]
pub struct RunOptions {
    pub attach: AttachMode,
    pub log_file: Option<PathBuf>,
    pub stdout: bool,
    pub format: crate::output::Format,
    pub rotation: Option<crate::output::sink::Rotation>,
    pub ring_buffer_bytes: u32,
    pub tables: KernelTables,
    pub status_socket: PathBuf,
    pub cache: CacheConfig,
    pub state_dir: PathBuf,
    pub retention: crate::history::store::Retention,
    /// The listener policy; None: no alerts.
    pub policy: Option<PathBuf>,
    /// Seconds between canary rounds (blinding detection); 0: off.
    pub canary_interval_seconds: u64,
    /// Seconds between periodic `status` lines; 0: only at start and stop.
    pub status_interval_seconds: u64,
    pub metrics: MetricsOptions,
    /// Write `holding` lines (`[log] holdings`).
    pub holdings: bool,
}

/// Where the Prometheus metrics go (`ops::metrics`).
#[derive(Debug, Clone)]
pub struct MetricsOptions {
    /// The textfile for node_exporter; None: not written.
    pub textfile: Option<PathBuf>,
    /// The loopback address of the `/metrics` endpoint; None: no endpoint.
    pub listen: Option<std::net::SocketAddr>,
    pub interval_seconds: u64,
}

pub const DEFAULT_PATH: &str = "/etc/portwatch/portwatch.toml";
pub const DEFAULT_STATUS_SOCKET: &str = "/run/portwatch/status.sock";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/portwatch";
/// Debian's prometheus-node-exporter reads `*.prom` here (its textfile collector's directory).
pub const DEFAULT_METRICS_TEXTFILE: &str = "/var/lib/prometheus/node-exporter/portwatch.prom";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `auto`, `fentry`, `kprobe` or `tracepoint`.
    pub attach: AttachMode,
    /// Ring buffer size in KiB: a power of two from 4 to 1048576.
    #[serde(deserialize_with = "ring_kib")]
    pub ring_buffer_kib: u32,
    /// The kernel side's tables: what each can hold is counted when exceeded, never evicted.
    pub kernel: KernelTables,
    pub log: LogConfig,
    pub status: StatusConfig,
    pub cache: CacheConfig,
    pub store: StoreConfig,
    pub policy: PolicyConfig,
    pub metrics: MetricsConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// The file node_exporter's textfile collector reads; "" writes none.
    pub textfile: PathBuf,
    /// Serve `/metrics` over HTTP on this loopback address; unset: no endpoint.
    #[serde(deserialize_with = "loopback")]
    pub listen: Option<std::net::SocketAddr>,
    /// Seconds between textfile writes (1 to 3600).
    #[serde(deserialize_with = "within::<_, _, 1, 3600>")]
    pub interval_seconds: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            textfile: PathBuf::from(DEFAULT_METRICS_TEXTFILE),
            listen: None,
            interval_seconds: 15,
        }
    }
}

fn loopback<'de, D: Deserializer<'de>>(d: D) -> Result<Option<std::net::SocketAddr>, D::Error> {
    let addr = std::net::SocketAddr::deserialize(d)?;
    crate::ops::metrics_http::check_loopback(addr)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KernelTables {
    /// Calls in flight (bind, listen, connect between entry and return), one per thread at most;
    /// a call that finds it full is lost and counted (`pending_table_full`).
    #[serde(deserialize_with = "within::<_, _, 64, 1_048_576>")]
    pub pending_entries: u32,
    /// Sockets the kernel side follows (accepted, connecting, UDP that sent); memory is taken only
    /// for those present. What does not fit is counted (`socket_table_full`).
    #[serde(deserialize_with = "within::<_, _, 1024, 4_194_304>")]
    pub socket_entries: u32,
    /// Whether the tracepoint strategy hooks the bind, listen and connect syscalls' returns, which
    /// alone tell why a call failed before the kernel touched the socket (EADDRINUSE,
    /// EADDRNOTAVAIL, ...). Any syscall tracepoint puts every task on the host on the kernel's
    /// slow syscall path (docs/benchmarks.md); without them the socket hooks report every call
    /// that succeeded and every handshake's outcome. fentry and kprobe never pay this. Off by
    /// default: a watcher must not tax every syscall of the host it watches.
    pub syscall_tracepoints: bool,
}

impl Default for KernelTables {
    fn default() -> Self {
        Self {
            pending_entries: 16_384,
            socket_entries: 65_536,
            syscall_tracepoints: false,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// The listener policy. Unset: /etc/portwatch/policy.toml when it exists, else no alerts.
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Where the tenancy history (history.sqlite) lives.
    pub state_dir: PathBuf,
    /// Closed intervals older than this many days are deleted (1 to 3650).
    #[serde(deserialize_with = "within::<_, _, 1, 3650>")]
    pub max_age_days: u32,
    /// At most this many intervals are kept, by id: the newest (1 to 1e9); the oldest go
    /// first, checked every 16,384 new ones.
    #[serde(deserialize_with = "within::<_, _, 1, 1_000_000_000>")]
    pub max_rows: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            max_age_days: 30,
            max_rows: 1_000_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Processes whose /proc facts are remembered (each for 2 s) so storms do not re-read /proc
    /// (1 to 1048576).
    #[serde(deserialize_with = "within::<_, _, 1, 1_048_576>")]
    pub processes: usize,
    /// User names remembered from the user database (1 to 1048576).
    #[serde(deserialize_with = "within::<_, _, 1, 1_048_576>")]
    pub users: usize,
    /// Processes the lineage table remembers (from exec records and the start-up scan), so
    /// events of processes already gone are still attributed (1 to 4194304).
    #[serde(deserialize_with = "within::<_, _, 1, 4_194_304>")]
    pub process_table: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            processes: 4096,
            users: 4096,
            process_table: 32768,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Append events to this file (JSON Lines, mode 0640). Unset: no file.
    pub file: Option<PathBuf>,
    /// Also write events to stdout.
    pub stdout: bool,
    /// Rotate the file when it would grow past this many MiB (0: never; at most 1048576).
    #[serde(deserialize_with = "within::<_, _, 0, 1_048_576>")]
    pub rotate_size_mib: u64,
    /// Rotated files to keep, `events.jsonl.1` is the newest (1 to 1000).
    #[serde(deserialize_with = "within::<_, _, 1, 1000>")]
    pub rotate_keep: u32,
    /// `portwatch` (docs/schema.md), `ecs` (Elastic Common Schema 8.x) or `otel` (OTLP/JSON).
    pub format: crate::output::Format,
    /// A `holding` line whenever a port's holding ends, for a central store (docs/fleet.md).
    pub holdings: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatusConfig {
    /// Unix socket `portwatch status` asks (created mode 0600).
    pub socket: PathBuf,
    /// A `status` line with the daemon's counters goes into the event log this often (seconds);
    /// 0: only at start and stop; at most a day.
    #[serde(deserialize_with = "within::<_, _, 0, 86_400>")]
    pub event_interval_seconds: u64,
    /// Seconds between canary rounds: the daemon's own loopback sockets must come back as events,
    /// or the hook families that stayed silent are reported blind. 0: off; at most a day.
    #[serde(deserialize_with = "within::<_, _, 0, 86_400>")]
    pub canary_interval_seconds: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            attach: AttachMode::Auto,
            ring_buffer_kib: 1024,
            kernel: KernelTables::default(),
            log: LogConfig::default(),
            status: StatusConfig::default(),
            cache: CacheConfig::default(),
            store: StoreConfig::default(),
            policy: PolicyConfig::default(),
            metrics: MetricsConfig::default(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            file: None,
            stdout: true,
            rotate_size_mib: 100,
            rotate_keep: 5,
            format: crate::output::Format::Portwatch,
            holdings: false,
        }
    }
}

impl Default for StatusConfig {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(DEFAULT_STATUS_SOCKET),
            event_interval_seconds: 300,
            canary_interval_seconds: 30,
        }
    }
}

pub fn valid_ring_kib(v: u32) -> Result<u32, String> {
    if (4..=1 << 20).contains(&v) && v.is_power_of_two() {
        Ok(v)
    } else {
        Err(format!(
            "{v} KiB: the ring buffer must be a power of two between 4 and 1048576 KiB"
        ))
    }
}

fn ring_kib<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    valid_ring_kib(u32::deserialize(d)?).map_err(serde::de::Error::custom)
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// toml's message names the line and column and quotes the offending line.
    #[error("config {path}: {message}")]
    Parse { path: String, message: String },
}

impl Config {
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.to_string().trim_end().to_string(),
        })
    }

    /// Reads `explicit`, or the default path when it exists, or the defaults.
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        Self::read(explicit, false)
    }

    /// The daemon's load: a config file must be root's (or the daemon user's) in a directory no
    /// other user can write.
    pub fn load_trusted(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        Self::read(explicit, true)
    }

    fn read(explicit: Option<&Path>, trusted: bool) -> Result<Config, ConfigError> {
        let path = match explicit {
            Some(p) => p,
            None if Path::new(DEFAULT_PATH).exists() => Path::new(DEFAULT_PATH),
            None => return Ok(Config::default()),
        };
        if trusted {
            crate::files::check_trusted(path, "config").map_err(|source| ConfigError::Read {
                path: path.display().to_string(),
                source,
            })?;
        }
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text, path)
    }
}

/// `portwatch config --print-defaults`: a commented file that parses to the defaults.
pub const DEFAULTS_TOML: &str = r#"# portwatch configuration (/etc/portwatch/portwatch.toml).
# Every key is optional; the values shown are the defaults. Command-line flags of
# `portwatch run` override what is set here.

# Attach strategy: "auto" (best that works per hook family), "fentry", "kprobe" or "tracepoint".
attach = "auto"

# Ring buffer between the kernel and the daemon, in KiB (a power of two, 4 to 1048576).
ring_buffer_kib = 1024

[kernel]
# Calls in flight between their entry and return (at most one per thread), 64 to 1048576. A call
# that finds the table full is not recorded, and is counted (lost.pending_table_full).
pending_entries = 16384
# Sockets followed in the kernel (accepted, connecting, UDP sockets that sent), 1024 to 4194304;
# memory is taken only for those present. What does not fit is counted (lost.socket_table_full).
socket_entries = 65536
# The tracepoint strategy (kernels without fentry and kprobes) learns why a bind, listen or connect
# failed before it touched the socket (EADDRINUSE, EADDRNOTAVAIL, ...) only from syscall
# tracepoints, and any syscall tracepoint slows every syscall of every task on the host (+30-45%
# measured on getppid; docs/benchmarks.md). false: no syscall tracepoints; every successful call
# and every TCP handshake's outcome are still reported, those early failures are not. The status
# event's attach.*.failed_calls says which is in force. fentry and kprobe ignore this. A kernel
# that refuses the sock_ops program false needs keeps the syscall tracepoints (a warning says so).
syscall_tracepoints = false

[log]
# Append events (JSON Lines, mode 0640) to this file. Unset: no file.
# file = "/var/log/portwatch/events.jsonl"
# Also write events to stdout.
stdout = true
# Rotate the file when it would grow past this many MiB (0: never), keeping this many old files
# (events.jsonl.1 is the newest). SIGHUP also reopens the file, for logrotate.
rotate_size_mib = 100
rotate_keep = 5
# "portwatch" (docs/schema.md; what `portwatch tail` and `top` read), "ecs" (Elastic Common
# Schema 8.x, for Elasticsearch and Kibana) or "otel" (OpenTelemetry logs as OTLP/JSON, for the
# Collector's otlpjsonfile receiver); docs/schema.md maps each.
format = "portwatch"
# A `holding` line each time a port's holding ends (port, address, process, opened, closed), so
# that a central store answers "who held port X at time T" across hosts as `portwatch who` does on
# one (docs/fleet.md). One more line per socket that closes.
holdings = false

[status]
# Unix socket that `portwatch status` asks (mode 0600: root only).
socket = "/run/portwatch/status.sock"
# Seconds between `status` lines in the event log (counters: events, losses, cache sizes and
# evictions, store); 0: only at start and stop.
event_interval_seconds = 300
# Blinding detection: this often the daemon makes a loopback listener and connects to it; a hook
# family whose event does not come back (program detached, events filtered) is reported blind
# (error, `monitoring_blind` alert line, `portwatch status`). 0: off.
canary_interval_seconds = 30

[cache]
# Bounded LRU caches; their sizes and evictions show in `portwatch status` and `status` lines. Processes' /proc facts are reused for
# 2 s per pid and comm, so a storm from one process does not re-read /proc for every event.
processes = 4096
users = 4096
# Processes remembered from exec records (and the start-up /proc scan) for attributing events of
# processes that have already exited.
process_table = 32768

[store]
# Tenancy history for `portwatch who`: which process held which port, from when to when.
state_dir = "/var/lib/portwatch"
# Closed holdings older than max_age_days are deleted (every ten minutes); so is every holding
# beyond the newest max_rows, open or not (checked every 16,384 new ones). At a web server's
# 50,000 connections a second, a million rows is 20 seconds of history: size it for your rate.
max_age_days = 30
max_rows = 1000000

[policy]
# The listener policy (docs/policy.md); SIGHUP reloads it. Unset: /etc/portwatch/policy.toml when
# it exists, else no alerts.
# file = "/etc/portwatch/policy.toml"

[metrics]
# Prometheus metrics (docs/metrics.md). The textfile is for node_exporter's textfile collector
# (Debian's prometheus-node-exporter reads this directory); it is written only while the directory
# exists, replaced whole every interval, and removed when the daemon stops. "" writes none.
textfile = "/var/lib/prometheus/node-exporter/portwatch.prom"
interval_seconds = 15
# Also serve GET /metrics over HTTP on this loopback address (127.0.0.1 or ::1; the unit allows
# only loopback traffic). Unset: no endpoint.
# listen = "127.0.0.1:9617"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(s, Path::new("/etc/portwatch/portwatch.toml"))
    }

    #[test]
    fn printed_defaults_parse_to_the_defaults() {
        assert_eq!(parse(DEFAULTS_TOML).unwrap(), Config::default());
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn settings_are_read() {
        let c =
            parse("attach = \"tracepoint\"\n[log]\nfile = \"/var/log/p.jsonl\"\nstdout = false\n")
                .unwrap();
        assert_eq!(c.attach, AttachMode::Tracepoint);
        assert_eq!(c.log.file.as_deref(), Some(Path::new("/var/log/p.jsonl")));
        assert!(!c.log.stdout);
        assert_eq!(c.log.rotate_keep, 5);
    }

    #[test]
    fn unknown_key_names_file_line_and_column() {
        let e = parse("attach = \"auto\"\n[log]\nfiel = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/etc/portwatch/portwatch.toml"), "{e}");
        assert!(e.contains("line 3, column 1"), "{e}");
        assert!(e.contains("unknown field `fiel`"), "{e}");
    }

    #[test]
    fn wrong_type_and_bad_values_are_errors_with_position() {
        let e = parse("ring_buffer_kib = \"big\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1") && e.contains("invalid type"), "{e}");
        let e = parse("\n\nring_buffer_kib = 100\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3") && e.contains("power of two"), "{e}");
        let e = parse("attach = \"magic\"\n").unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("magic"), "{e}");
        let e = parse("[log]\nrotate_keep = 0\n").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("at least 1"), "{e}");
        let e = parse("[cache]\nprocesses = 0\n").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("at least 1"), "{e}");
        assert_eq!(parse("[cache]\nusers = 16\n").unwrap().cache.users, 16);
        let e = parse("[log\n").unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn metrics_listen_must_be_loopback() {
        let c = parse("[metrics]\nlisten = \"127.0.0.1:9617\"\n").unwrap();
        assert_eq!(c.metrics.listen, Some("127.0.0.1:9617".parse().unwrap()));
        assert!(parse("[metrics]\nlisten = \"[::1]:9617\"\n").is_ok());
        let e = parse("[metrics]\nlisten = \"0.0.0.0:9617\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("not a loopback"), "{e}");
        let e = parse("[metrics]\nlisten = \"localhost\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 2") && e.contains("invalid socket address"),
            "{e}"
        );
        let e = parse("[metrics]\ninterval_seconds = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("at least 1"), "{e}");
    }
}
