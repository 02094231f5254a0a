//! `portwatch tail`: the event log as a person reads it live — aligned columns, filtered by
//! event, outcome, port and process — or, with `-o json`, the matching lines unchanged.
use std::{
    io::{self, BufRead as _, Write},
    path::PathBuf,
    time::Duration,
};

use serde_json::Value;

use crate::{
    facts::Transport,
    output::text::printable,
    views::{
        filter::{ProcessFilter, Subject},
        follow::{BACKLOG_BYTES, FollowError, Follower, MAX_LINE},
        identity::{self, Judge},
        ports::PortSpec,
        table::{address_port, cut, pad},
    },
};

/// The event kinds a log line can be (docs/schema.md).
pub const EVENTS: [&str; 8] = [
    "bind",
    "listen",
    "connect",
    "connect_result",
    "close",
    "alert",
    "loss",
    "status",
];

pub const OUTCOMES: [&str; 4] = ["success", "failure", "in_progress", "aborted"];

/// Which lines to show. An empty list allows every value; a filter on something a line does not
/// carry (a port on a `status` line) excludes it.
#[derive(Debug, Default, Clone)]
pub struct EventFilter {
    pub events: Vec<String>,
    pub outcomes: Vec<String>,
    /// Matches the local or the peer port.
    pub ports: Option<PortSpec>,
    pub process: ProcessFilter,
    pub judge: Judge,
}

impl EventFilter {
    pub fn matches(&self, v: &Value) -> bool {
        let s = |p: &str| v.pointer(p).and_then(Value::as_str);
        let event = s("/event").unwrap_or("");
        if !self.events.is_empty() && !self.events.iter().any(|e| e == event) {
            return false;
        }
        if !self.outcomes.is_empty()
            && !s("/outcome").is_some_and(|o| self.outcomes.iter().any(|w| w == o))
        {
            return false;
        }
        if let Some(spec) = &self.ports {
            let transport = match s("/network/transport") {
                Some("tcp") => Transport::Tcp,
                Some("udp") => Transport::Udp,
                _ => return false,
            };
            let port = |p: &str| {
                v.pointer(p)
                    .and_then(Value::as_u64)
                    .and_then(|p| u16::try_from(p).ok())
            };
            let hit = |p: Option<u16>| p.is_some_and(|p| spec.matches(p, transport));
            if !hit(port("/network/local/port")) && !hit(port("/network/peer/port")) {
                return false;
            }
        }
        if !self.process.is_empty() {
            match v.get("process").filter(|p| p.is_object()) {
                Some(p) => return self.process.matches(&Subject::of_event(p, &self.judge)),
                None => return false,
            }
        }
        true
    }
}

/// Colours for a person at a terminal; none in a pipe or a file, or with `NO_COLOR`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Colour {
    On,
    Off,
}

const RED: &str = "\x1b[31m";
const BOLD_RED: &str = "\x1b[1;31m";
const YELLOW: &str = "\x1b[33m";
const GREEN: &str = "\x1b[32m";
const RESET: &str = "\x1b[0m";

/// Formats lines into columns. The address, user and unit columns widen to the widest value
/// seen so far (up to a cap), so a stream stays aligned without knowing its lines in advance.
pub struct Columns {
    judge: Judge,
    colour: Colour,
    width: Option<usize>,
    addresses: usize,
    user: usize,
    unit: usize,
}

fn endpoint(v: Option<&Value>) -> Option<String> {
    let v = v?;
    Some(address_port(
        v.get("address")?.as_str()?,
        v.get("port")?.as_u64()?,
    ))
}

impl Columns {
    pub fn new(colour: Colour, width: Option<usize>) -> Self {
        Columns {
            judge: Judge::default(),
            colour,
            width,
            addresses: 33,
            user: 8,
            unit: 14,
        }
    }

    pub fn header(&self) -> String {
        self.line(
            [
                "TIME (UTC)",
                "EVENT",
                "OUTCOME",
                "PROTO",
                "LOCAL → PEER",
                "PID",
                "USER",
                "UNIT/CONTAINER",
                "COMMAND",
            ]
            .map(String::from),
            None,
        )
    }

    fn line(&self, c: [String; 9], colour: Option<&str>) -> String {
        // Addresses are never cut (a cut would hide the port): a long one pushes the line.
        let mut out = format!(
            "{} {} {} {} {:<w$} {} {} {} ",
            pad(&c[0], 12),
            pad(&c[1], 9),
            pad(&c[2], 13),
            pad(&c[3], 5),
            c[4],
            pad(&c[5], 7),
            pad(&c[6], self.user),
            pad(&c[7], self.unit),
            w = self.addresses,
        );
        let lead = out.chars().count();
        match self.width {
            Some(w) => out.push_str(&cut(&c[8], w.saturating_sub(lead).max(12))),
            None => out.push_str(&c[8]),
        }
        let out = out.trim_end().to_string();
        match (colour, self.colour) {
            (Some(code), Colour::On) => format!("{code}{out}{RESET}"),
            _ => out,
        }
    }

    /// Widens the columns for `v` without writing it: lines already in the log are seen before
    /// the header is written, so it lines up with them.
    pub fn observe(&mut self, v: &Value) {
        let _ = self.row(v);
    }

    /// One event line as a row; every text a process controls is escaped.
    pub fn row(&mut self, v: &Value) -> String {
        let s = |p: &str| v.pointer(p).and_then(Value::as_str).unwrap_or("");
        let event = s("/event");
        let time = s("/timestamp")
            .split_once('T')
            .map(|(_, t)| t.chars().take(12).collect::<String>())
            .unwrap_or_default();
        let outcome = match (event, s("/outcome")) {
            ("alert", _) => s("/alert/severity").to_string(),
            ("loss", _) => s("/loss/reason").to_string(),
            ("status", _) => s("/reason").to_string(),
            // The kernel took the port at a UDP send, without a bind() call.
            ("bind", "success") if v["implicit"] == true => "ok, implicit".to_string(),
            (_, "success") => "ok".to_string(),
            (_, "failure") => v
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("failed")
                .to_string(),
            (_, "in_progress") => "in-progress".to_string(),
            (_, o) => o.to_string(),
        };
        let proto = match (s("/network/transport"), s("/network/type")) {
            ("", _) => "-".to_string(),
            (t, "ipv6") => format!("{t}6"),
            (t, _) => t.to_string(),
        };
        let local = endpoint(v.pointer("/network/local"));
        let peer = endpoint(v.pointer("/network/peer"));
        let addresses = match (local, peer) {
            (Some(l), Some(p)) => format!("{l} → {p}"),
            (Some(l), None) => l,
            (None, _) => "-".to_string(),
        };
        let process = v.get("process").filter(|p| p.is_object());
        let pid = process
            .and_then(|p| p.get("pid"))
            .and_then(Value::as_u64)
            .filter(|p| *p != 0)
            .map_or("-".to_string(), |p| p.to_string());
        let user = process.map_or("-".to_string(), identity::user_of_event);
        let unit = match process {
            Some(p) if pid != "-" => {
                let container: Option<crate::facts::Container> = p
                    .get("container")
                    .and_then(|c| serde_json::from_value(c.clone()).ok());
                let s = |k: &str| p.get(k).and_then(Value::as_str);
                self.judge
                    .identity(s("cgroup"), s("unit"), container.as_ref())
                    .label
            }
            _ => "-".to_string(),
        };
        let what = match event {
            "alert" => {
                let kind = s("/alert/kind");
                match process.filter(|p| p.get("pid").and_then(Value::as_u64) != Some(0)) {
                    Some(p) => format!("{kind}: {}", identity::command_of_event(p, false)),
                    None => format!("{kind}: {}", s("/alert/rule")),
                }
            }
            "loss" => format!(
                "{} lost ({} since start)",
                v.pointer("/loss/count")
                    .and_then(Value::as_u64)
                    .unwrap_or(0),
                v.pointer("/loss/total")
                    .and_then(Value::as_u64)
                    .unwrap_or(0)
            ),
            "status" => format!(
                "daemon {} on {}: {} events",
                v.pointer("/daemon/pid")
                    .and_then(Value::as_u64)
                    .unwrap_or(0),
                s("/kernel/release"),
                v.pointer("/counters/events/total")
                    .and_then(Value::as_u64)
                    .unwrap_or(0)
            ),
            _ => match process {
                Some(p) if pid != "-" => identity::command_of_event(p, false),
                _ => crate::history::who::UNKNOWN_HOLDER.to_string(),
            },
        };
        // A line read from `tail -` can hold anything: every cell is escaped.
        let [time, proto, addresses, user, unit, what] =
            [time, proto, addresses, user, unit, what].map(|t| printable(&t).into_owned());
        self.addresses = self.addresses.max(addresses.chars().count().min(47));
        self.user = self.user.max(user.chars().count().min(16));
        self.unit = self.unit.max(unit.chars().count().min(24));
        let colour = match (event, s("/outcome")) {
            ("alert", _) | ("loss", _) => Some(BOLD_RED),
            (_, "failure") => Some(RED),
            (_, "in_progress") | (_, "aborted") => Some(YELLOW),
            ("listen", _) => Some(GREEN),
            _ => None,
        };
        let event = match event {
            "connect_result" => "handshake".to_string(),
            e => printable(e).into_owned(),
        };
        self.line(
            [
                time,
                event,
                printable(&outcome).into_owned(),
                proto,
                addresses,
                pid,
                user,
                unit,
                what,
            ],
            colour,
        )
    }
}

/// Where `tail` reads.
#[derive(Debug, Clone)]
pub enum Input {
    File(PathBuf),
    Stdin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

pub struct TailOptions {
    pub input: Input,
    pub filter: EventFilter,
    pub format: Format,
    pub colour: Colour,
    pub width: Option<usize>,
    /// stdout is a terminal: JSON lines are written with what a terminal acts on escaped.
    pub terminal: bool,
    /// Matching lines already in the file to show first.
    pub lines: usize,
    pub follow: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error(transparent)]
    Open(#[from] FollowError),
    #[error("reading {what}: {source}")]
    Read { what: String, source: io::Error },
}

/// What became of the lines read.
#[derive(Debug, Default)]
pub struct TailCounts {
    pub shown: u64,
    /// Lines that are not portwatch events (not JSON, or another format's).
    pub not_json: u64,
    pub oversized: u64,
}

struct Printer<'a, W: Write> {
    out: W,
    opts: &'a TailOptions,
    columns: Columns,
    counts: TailCounts,
    header_done: bool,
}

impl<W: Write> Printer<'_, W> {
    /// Shows `line` if it matches; an error means stdout is gone (a closed pipe).
    fn offer(&mut self, line: &[u8]) -> io::Result<()> {
        let Ok(v) = serde_json::from_slice::<Value>(line) else {
            self.counts.not_json += 1;
            return Ok(());
        };
        // An object without a string `event` is not a portwatch event (an `ecs` log, say).
        if !v.get("event").is_some_and(Value::is_string) {
            self.counts.not_json += 1;
            return Ok(());
        }
        if !self.opts.filter.matches(&v) {
            return Ok(());
        }
        self.counts.shown += 1;
        match self.opts.format {
            Format::Json if self.opts.terminal => {
                // Written again from the parsed value (so no raw `\r` between fields, which
                // JSON allows), then with what a terminal acts on escaped.
                let text = serde_json::to_string(&v).map_err(io::Error::other)?;
                let shown = crate::output::text::json_for_terminal(&text);
                writeln!(self.out, "{shown}")?;
            }
            Format::Json => {
                self.out.write_all(line)?;
                self.out.write_all(b"\n")?;
            }
            Format::Table => {
                if !self.header_done {
                    self.header_done = true;
                    let h = self.columns.header();
                    writeln!(self.out, "{h}")?;
                }
                let r = self.columns.row(&v);
                writeln!(self.out, "{r}")?;
            }
        }
        Ok(())
    }
}

/// Runs until the input ends (`follow` off, or stdin closed), stdout closes, or the process is
/// interrupted.
pub fn run(opts: &TailOptions, out: impl Write) -> Result<TailCounts, TailError> {
    let mut p = Printer {
        out,
        opts,
        columns: Columns::new(opts.colour, opts.width),
        counts: TailCounts::default(),
        header_done: false,
    };
    let gone = |p: Printer<'_, _>| Ok(p.counts);
    match &opts.input {
        Input::Stdin => {
            let stdin = io::stdin();
            let mut buf = Vec::new();
            let mut lock = stdin.lock();
            let read = |source| TailError::Read {
                what: "standard input".into(),
                source,
            };
            let mut oversized = false;
            loop {
                buf.clear();
                // At most MAX_LINE bytes of a line are held; the rest of a longer one is skipped.
                let n = io::Read::take(&mut lock, MAX_LINE as u64 + 1)
                    .read_until(b'\n', &mut buf)
                    .map_err(read)?;
                if n == 0 {
                    break;
                }
                let Some(line) = buf.strip_suffix(b"\n") else {
                    if n > MAX_LINE {
                        oversized = true;
                    } else if std::mem::take(&mut oversized) {
                        // The input ended inside a line too long to show.
                        p.counts.oversized += 1;
                    } else if p.offer(&buf).is_err() {
                        // The input's last line, without a newline.
                        return gone(p);
                    }
                    continue;
                };
                if std::mem::take(&mut oversized) {
                    // The end of a line too long to show.
                    p.counts.oversized += 1;
                    continue;
                }
                if p.offer(line).and_then(|_| p.out.flush()).is_err() {
                    return gone(p);
                }
            }
        }
        Input::File(path) => {
            let read = |source| TailError::Read {
                what: path.display().to_string(),
                source,
            };
            let backlog = if opts.lines == 0 { 0 } else { BACKLOG_BYTES };
            let mut f = Follower::open(path, backlog)?;
            // The last `lines` matching lines already written.
            let first = f.poll().map_err(read)?;
            let mut recent = std::collections::VecDeque::new();
            for line in first {
                let Some(v) = serde_json::from_slice::<Value>(&line)
                    .ok()
                    .filter(|v| v.get("event").is_some_and(Value::is_string))
                else {
                    p.counts.not_json += 1;
                    continue;
                };
                if opts.filter.matches(&v) {
                    recent.push_back(line);
                    if recent.len() > opts.lines {
                        recent.pop_front();
                    }
                }
            }
            for line in &recent {
                if let Ok(v) = serde_json::from_slice::<Value>(line) {
                    p.columns.observe(&v);
                }
            }
            for line in recent {
                if p.offer(&line).is_err() {
                    return gone(p);
                }
            }
            if p.out.flush().is_err() {
                return gone(p);
            }
            if opts.follow {
                loop {
                    std::thread::sleep(Duration::from_millis(200));
                    for line in f.poll().map_err(read)? {
                        if p.offer(&line).is_err() {
                            return gone(p);
                        }
                    }
                    if p.out.flush().is_err() {
                        return gone(p);
                    }
                }
            }
            p.counts.oversized = f.oversized;
        }
    }
    let _ = p.out.flush();
    Ok(p.counts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn connect() -> Value {
        json!({"schema": 1, "timestamp": "2026-12-02T03:22:50.522922382Z", "event": "connect",
            "outcome": "failure", "error": "ECONNREFUSED", "errno": 111,
            "network": {"transport": "tcp", "type": "ipv4",
                "local": {"address": "127.0.0.1", "port": 40001},
                "peer": {"address": "127.0.0.1", "port": 9}},
            "process": {"pid": 42, "comm": "curl", "executable": "/usr/bin/curl",
                "command_line": ["curl", "-s", "http://x\n\u{1b}[2J"],
                "user": {"id": 1000, "name": "alice"}, "unit": "session-3.scope"}})
    }

    #[test]
    fn filters_take_what_they_name() {
        let v = connect();
        let f = |f: EventFilter| f.matches(&v);
        assert!(f(EventFilter::default()));
        assert!(f(EventFilter {
            events: vec!["connect".into()],
            ..Default::default()
        }));
        assert!(!f(EventFilter {
            events: vec!["bind".into()],
            ..Default::default()
        }));
        assert!(f(EventFilter {
            outcomes: vec!["failure".into()],
            ..Default::default()
        }));
        assert!(!f(EventFilter {
            outcomes: vec!["success".into()],
            ..Default::default()
        }));
        let spec = |s: &str| Some(PortSpec::parse(s, std::path::Path::new("/dev/null")).unwrap());
        // The peer's port counts as much as the local one.
        assert!(f(EventFilter {
            ports: spec("9"),
            ..Default::default()
        }));
        assert!(f(EventFilter {
            ports: spec("40000-40010/tcp"),
            ..Default::default()
        }));
        assert!(!f(EventFilter {
            ports: spec("40000-40010/udp"),
            ..Default::default()
        }));
        let by_user = |u: &str| EventFilter {
            process: ProcessFilter {
                user: Some(u.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(f(by_user("alice")));
        assert!(!f(by_user("bob")));
        let status = json!({"event": "status", "reason": "start"});
        assert!(!by_user("alice").matches(&status));
        assert!(
            !EventFilter {
                ports: spec("9"),
                ..Default::default()
            }
            .matches(&status)
        );
    }

    #[test]
    fn a_row_is_one_escaped_line_with_the_errno_and_colour_only_when_asked() {
        let mut c = Columns::new(Colour::Off, None);
        let row = c.row(&connect());
        assert!(!row.contains('\n') && !row.contains('\x1b'), "{row:?}");
        for part in [
            "03:22:50.522",
            "connect",
            "ECONNREFUSED",
            "tcp",
            "127.0.0.1:40001 → 127.0.0.1:9",
            "42",
            "alice",
            "session-3.scope",
            "curl -s http://x\\n\\x1b[2J",
        ] {
            assert!(row.contains(part), "{part} in {row}");
        }
        let mut c = Columns::new(Colour::On, Some(80));
        let row = c.row(&connect());
        assert!(row.starts_with(RED) && row.ends_with(RESET), "{row:?}");
        // On a narrow terminal the command is cut (to no less than 12 characters).
        assert!(row.contains("curl -s htt…"), "{row}");
        let kernel = json!({"event": "listen", "outcome": "success", "timestamp": "x",
            "network": {"transport": "tcp", "type": "ipv6", "local": {"address": "::", "port": 22}},
            "process": {"pid": 0, "user": {"id": 0, "name": "root"}}});
        let implicit = json!({"event": "bind", "outcome": "success", "implicit": true,
            "network": {"transport": "udp", "type": "ipv4", "local": {"address": "0.0.0.0", "port": 42682}}});
        assert!(
            Columns::new(Colour::Off, None)
                .row(&implicit)
                .contains("ok, implicit")
        );
        let row = Columns::new(Colour::Off, None).row(&kernel);
        assert!(row.contains("tcp6") && row.contains("[::]:22"), "{row}");
        assert!(row.contains("(no process"), "{row}");
    }
}
