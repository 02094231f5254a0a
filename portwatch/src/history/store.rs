//! Tenancy history: which process held which port, from when to when. SQLite in WAL mode under
//! the state directory: the daemon writes from its own thread in batches (the event path only
//! queues, and counts what it could not queue), and `portwatch who` reads at the same time.
use std::{
    path::{Path, PathBuf},
    sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel},
    time::{Duration, Instant},
};

use rusqlite::{Connection, OpenFlags, params};
use serde::Serialize;

use crate::facts::{
    Container, ContainerRuntime, Endpoint, ProcessFacts, SocketRole, Transport, User,
};

pub const FILE_NAME: &str = "history.sqlite";
/// Intervals handed to the writer and not yet committed, at most (about 150 bytes each). The
/// writer gathers a batch for up to `BATCH_WAIT` before it commits, and counts it out only then:
/// the queue must hold a batch and the next. With 4,096 and 100 ms batches, history was dropped
/// at any speed of the writer once a web server made 41,000 connections a second.
const QUEUE: usize = 8192;
/// The event loop hands intervals over in batches (one channel message, at most one wake-up of
/// the writer, per drain of the ring rather than per interval); a batch goes once it is this big
/// even if the loop has not flushed.
const HANDOVER: usize = 256;
/// Batches in the channel at most (the interval bound is `QUEUE`).
const BATCHES: usize = QUEUE / 16;

/// One holding of a port by a process. The store keeps of the process what `who` shows: pid,
/// executable, command line, user, unit and container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Interval {
    pub id: i64,
    pub netns: Option<u32>,
    pub transport: Transport,
    pub local: Endpoint,
    pub role: SocketRole,
    pub peer: Option<Endpoint>,
    /// Shared with the events that opened it (`tenancy::kept_process`).
    pub process: std::sync::Arc<ProcessFacts>,
    /// Unix nanoseconds.
    pub opened_ns: i64,
    pub closed_ns: Option<i64>,
    /// Why `closed_ns` is what it is when it is not a release the kernel reported.
    pub close_note: Option<String>,
    /// The socket cookie of the event that opened it (0: none); for `holding` lines, not stored.
    #[serde(skip)]
    pub cookie: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("tenancy store {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("tenancy store {path}: cannot create its directory: {source}")]
    Dir {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS intervals (
    id INTEGER PRIMARY KEY,
    netns INTEGER, transport TEXT NOT NULL, address TEXT NOT NULL, port INTEGER NOT NULL,
    role TEXT NOT NULL, peer_address TEXT, peer_port INTEGER,
    pid INTEGER NOT NULL, executable TEXT, command_line TEXT,
    user_id INTEGER NOT NULL, user_name TEXT, unit TEXT, container_id TEXT, container_runtime TEXT,
    opened_ns INTEGER NOT NULL, closed_ns INTEGER, close_note TEXT,
    cgroup TEXT,
    process_id INTEGER
);
-- What a holder ran, written once per set of facts and referenced by its intervals
-- (process_id): a server's thousands of connections share one row. Intervals written before
-- this table have these columns inline instead.
CREATE TABLE IF NOT EXISTS processes (
    id INTEGER PRIMARY KEY,
    executable TEXT, command_line TEXT, user_name TEXT, unit TEXT, container_id TEXT,
    container_runtime TEXT, cgroup TEXT
);
-- Intervals by port within segments of 16,384 ids (id >> 14; ids are handed out in opening
-- order). An index by port alone took each write to a page anywhere in it: on a store of a
-- million rows every commit rewrote thousands of pages, and the writer fell behind a busy web
-- server (docs/benchmarks.md). Within the newest segment the pages written stay few and cached;
-- a query seeks each segment that holds rows (`SEGMENTS`). The row bound deletes the oldest
-- ids, which sit in the oldest segments: a range, in order.
CREATE INDEX IF NOT EXISTS intervals_segment_port ON intervals (id >> 14, port, opened_ns);
DROP INDEX IF EXISTS intervals_port;
-- Ids are handed out in opening order, so the row bound prunes by id (the rowid) and needs no
-- index of its own: one index fewer to update per interval (earlier stores had one).
DROP INDEX IF EXISTS intervals_opened;
-- Stretches of time in which intervals were not recorded (the writer fell behind).
CREATE TABLE IF NOT EXISTS gaps (from_ns INTEGER NOT NULL, to_ns INTEGER NOT NULL, intervals INTEGER NOT NULL);
";

fn err(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |source| StoreError::Sqlite {
        path: path.display().to_string(),
        source,
    }
}

/// Opens (creating) the store for writing.
pub fn open_rw(path: &Path) -> Result<Connection, StoreError> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir_err = |dir: &Path| {
        let dir = dir.display().to_string();
        move |source| StoreError::Dir { path: dir, source }
    };
    let dir = path.parent().unwrap_or(path);
    crate::files::ensure_parent(path).map_err(dir_err(dir))?;
    crate::files::check_parent(path, "tenancy store").map_err(dir_err(dir))?;
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(StoreError::Dir {
            path: path.display().to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "the tenancy store is a symbolic link; refusing to follow it",
            ),
        });
    }
    let c = Connection::open(path).map_err(err(path))?;
    // Command lines can hold secrets: the history is as private as the event log (SQLite gives
    // its -wal and -shm files the same mode).
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o640))
        .map_err(dir_err(path))?;
    c.pragma_update(None, "journal_mode", "WAL")
        .map_err(err(path))?;
    c.pragma_update(None, "synchronous", "NORMAL")
        .map_err(err(path))?;
    // 2 MiB of page cache (negative: KiB): the daemon's memory stays bounded.
    c.pragma_update(None, "cache_size", -2048)
        .map_err(err(path))?;
    c.execute_batch(SCHEMA).map_err(err(path))?;
    // Stores written before the cgroup was kept (it tells a unit the system manager set from one
    // a user named) gain the column; their earlier rows have none.
    if !has_column(&c, "cgroup").map_err(err(path))? {
        c.execute_batch("ALTER TABLE intervals ADD COLUMN cgroup TEXT")
            .map_err(err(path))?;
    }
    // Stores written before the processes table gain the reference; their earlier rows keep
    // their facts inline.
    if !has_column(&c, "process_id").map_err(err(path))? {
        c.execute_batch("ALTER TABLE intervals ADD COLUMN process_id INTEGER")
            .map_err(err(path))?;
    }
    Ok(c)
}

fn has_column(c: &Connection, name: &str) -> rusqlite::Result<bool> {
    c.query_row(
        "SELECT count(*) > 0 FROM pragma_table_info('intervals') WHERE name = ?1",
        [name],
        |r| r.get(0),
    )
}

/// Opens the store for reading; a file that is not a store is an error naming it.
pub fn open_ro(path: &Path) -> Result<Connection, StoreError> {
    let c = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(err(path))?;
    c.query_row("SELECT count(*) FROM intervals", [], |_| Ok(()))
        .map_err(err(path))?;
    Ok(c)
}

/// The segments of the port index (`intervals_segment_port`) that hold rows, oldest to newest,
/// for `(i.id >> 14) IN segments`: SQLite seeks the index once per segment. Each step seeks the
/// next row by id, so empty stretches between old rows and new ones cost nothing; the list ends
/// with a NULL, which matches nothing.
const SEGMENTS: &str = "WITH RECURSIVE segments(s) AS (
    SELECT (SELECT min(id) FROM intervals) >> 14
    UNION ALL SELECT (SELECT id FROM intervals WHERE id >= (s + 1) * 16384 ORDER BY id LIMIT 1) >> 14
    FROM segments WHERE s IS NOT NULL)";

/// Ids per segment of the port index (its `id >> 14`); the row bound is kept every so many.
pub const SEGMENT_IDS: i64 = 1 << 14;

/// An interval's first write. Most are written once, at their close; a plain INSERT needs no
/// statement journal, where `OR REPLACE` does (a fifth of the writer's instructions).
const INSERT_INTERVAL: &str = "INSERT INTO intervals (id, netns, transport, address,
    port, role, peer_address, peer_port, pid, user_id, opened_ns, closed_ns, close_note, process_id)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)";

/// A later write of an interval already stored (open for a second, then closed; a listen).
const REPLACE_INTERVAL: &str = "INSERT OR REPLACE INTO intervals (id, netns, transport, address,
    port, role, peer_address, peer_port, pid, user_id, opened_ns, closed_ns, close_note, process_id)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)";

const INSERT_PROCESS: &str = "INSERT INTO processes (executable, command_line, user_name, unit,
    container_id, container_runtime, cgroup) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";

/// The writer's statements, prepared once per batch.
pub struct Statements<'c> {
    interval: rusqlite::CachedStatement<'c>,
    replace: rusqlite::CachedStatement<'c>,
    process: rusqlite::CachedStatement<'c>,
}

impl<'c> Statements<'c> {
    pub fn prepare(c: &'c Connection) -> rusqlite::Result<Self> {
        Ok(Self {
            interval: c.prepare_cached(INSERT_INTERVAL)?,
            replace: c.prepare_cached(REPLACE_INTERVAL)?,
            process: c.prepare_cached(INSERT_PROCESS)?,
        })
    }
}

/// Writes intervals, and each set of process facts once: attribution shares one
/// `ProcessFacts` among the events it found the same facts for, so the `processes` row of an
/// allocation is remembered (holding its `Arc`, so the address cannot be reused meanwhile).
pub struct Rows {
    written: crate::hashing::Lru<usize, (std::sync::Arc<ProcessFacts>, i64)>,
    /// Its fill and evictions, read by `status` on the event loop.
    figures: std::sync::Arc<RowsFigures>,
}

/// What the writer thread tells the event loop's `status`.
#[derive(Debug, Default)]
struct WriterFigures {
    /// Intervals lost to failed commits.
    failed: std::sync::atomic::AtomicU64,
    /// Intervals handed over and not yet committed: how far the history lags the log.
    queued: std::sync::atomic::AtomicU64,
    /// Times keeping the row bound failed (the store is over its bound until it works again).
    bound_failed: std::sync::atomic::AtomicU64,
    rows: std::sync::Arc<RowsFigures>,
}

/// How many process rows the writer remembers, and how many it forgot (each is written again
/// when next needed).
#[derive(Debug, Default)]
pub struct RowsFigures {
    size: std::sync::atomic::AtomicUsize,
    evictions: std::sync::atomic::AtomicU64,
}

impl RowsFigures {
    pub fn get(&self) -> crate::attribution::CacheFigures {
        crate::attribution::CacheFigures {
            size: self.size.load(std::sync::atomic::Ordering::Relaxed),
            max: Rows::REMEMBERED,
            evictions: self.evictions.load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

impl Default for Rows {
    fn default() -> Self {
        Self::new(Default::default())
    }
}

impl Rows {
    /// Process rows remembered at most; a forgotten one is written again when next needed.
    const REMEMBERED: usize = 1024;

    fn new(figures: std::sync::Arc<RowsFigures>) -> Self {
        Self {
            written: crate::hashing::lru(Self::REMEMBERED),
            figures,
        }
    }

    fn count(&self) {
        self.figures
            .size
            .store(self.written.len(), std::sync::atomic::Ordering::Relaxed);
    }

    /// Writes `i`, over its earlier write if it has one.
    pub fn insert(&mut self, s: &mut Statements<'_>, i: &Interval) -> rusqlite::Result<()> {
        let process_id = self.process_id(s, &i.process)?;
        let local = i.local.address_text();
        let peer = i.peer.as_ref().map(|p| p.address_text());
        let values = params![
            i.id,
            i.netns,
            i.transport.as_str(),
            local.as_str(),
            i.local.port,
            i.role.as_str(),
            peer.as_ref().map(|t| t.as_str()),
            i.peer.as_ref().map(|p| p.port),
            i.process.pid,
            i.process.user.id,
            i.opened_ns,
            i.closed_ns,
            i.close_note,
            process_id,
        ];
        // The id is checked before anything is written, so a first write that finds the row
        // changes nothing and the transaction goes on.
        match s.interval.execute(values) {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY =>
            {
                s.replace.execute(values)?;
            }
            r => {
                r?;
            }
        }
        Ok(())
    }

    fn process_id(
        &mut self,
        s: &mut Statements<'_>,
        p: &std::sync::Arc<ProcessFacts>,
    ) -> rusqlite::Result<i64> {
        let key = std::sync::Arc::as_ptr(p) as usize;
        if let Some((_, id)) = self.written.get(&key) {
            return Ok(*id);
        }
        let id = s.process.insert(params![
            p.executable,
            p.command_line
                .as_ref()
                .and_then(|a| serde_json::to_string(a).ok()),
            p.user.name,
            p.unit,
            p.container.as_ref().map(|c| &c.id),
            p.container.as_ref().map(|c| c.runtime.as_str()),
            p.cgroup,
        ])?;
        if self
            .written
            .push(key, (p.clone(), id))
            .is_some_and(|(old, _)| old != key)
        {
            self.figures
                .evictions
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.count();
        Ok(id)
    }

    /// Forgets which rows were written: after a transaction that did not commit (its rows are
    /// gone), or a prune that may have removed them.
    pub fn forget(&mut self) {
        self.written.clear();
        self.count();
    }
}

/// One interval in a transaction of its own (tests, and one-off writes).
#[cfg(test)]
pub fn insert(c: &Connection, i: &Interval) -> rusqlite::Result<()> {
    Rows::default().insert(&mut Statements::prepare(c)?, i)
}

/// A text column that must hold one of an enum's names.
fn named<T>(r: &rusqlite::Row<'_>, i: usize, parse: fn(&str) -> Option<T>) -> rusqlite::Result<T> {
    let text: String = r.get(i)?;
    parse(&text).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Text,
            format!("unknown value {text:?}").into(),
        )
    })
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Interval> {
    let argv: Option<String> = r.get(10)?;
    let container_id: Option<String> = r.get(14)?;
    let runtime: Option<String> = r.get(15)?;
    Ok(Interval {
        id: r.get(0)?,
        netns: r.get(1)?,
        transport: named(r, 2, |t| match t {
            "tcp" => Some(Transport::Tcp),
            "udp" => Some(Transport::Udp),
            _ => None,
        })?,
        local: Endpoint {
            address: named(r, 3, |a| a.parse().ok())?,
            port: r.get(4)?,
        },
        role: named(r, 5, SocketRole::parse)?,
        peer: match r.get::<_, Option<String>>(6)? {
            Some(_) => Some(Endpoint {
                address: named(r, 6, |a| a.parse().ok())?,
                port: r.get::<_, Option<u16>>(7)?.unwrap_or(0),
            }),
            None => None,
        },
        process: std::sync::Arc::new(ProcessFacts {
            pid: r.get(8)?,
            executable: r.get(9)?,
            command_line: argv.and_then(|a| serde_json::from_str(&a).ok()),
            user: User {
                id: r.get(11)?,
                name: r.get(12)?,
            },
            unit: r.get(13)?,
            cgroup: r.get(19)?,
            container: container_id.and_then(|id| {
                Some(Container {
                    id,
                    runtime: ContainerRuntime::parse(runtime.as_deref()?)?,
                })
            }),
            ..ProcessFacts::default()
        }),
        opened_ns: r.get(16)?,
        closed_ns: r.get(17)?,
        close_note: r.get(18)?,
        cookie: 0,
    })
}

/// Intervals on ports `low..=high` overlapping [`from`, `to`] (Unix ns), newest first, as
/// `pick` turns them into what the caller shows (None: left out): at most `limit`, and whether
/// more were left out.
#[allow(clippy::too_many_arguments)]
pub fn holdings<T>(
    c: &Connection,
    (low, high): (u16, u16),
    transport: Option<&str>,
    from: i64,
    to: i64,
    mut pick: impl FnMut(Interval) -> Option<T>,
    limit: usize,
) -> rusqlite::Result<(Vec<T>, bool)> {
    let mut stmt = c.prepare(&holdings_query(c)?)?;
    let mut out = Vec::new();
    for i in stmt.query_map(params![low, high, transport, from, to], row)? {
        if let Some(x) = pick(i?) {
            if out.len() == limit {
                return Ok((out, true));
            }
            out.push(x);
        }
    }
    Ok((out, false))
}

/// `holdings`' statement for this store: ?1..=?2 the ports, ?3 the transport (NULL: any),
/// ?4..=?5 the window.
fn holdings_query(c: &Connection) -> rusqlite::Result<String> {
    // A store an older daemon wrote (read-only here, so not migrated) may have no cgroup column
    // and no processes table; rows written before the table have their process facts inline.
    let cgroup = if has_column(c, "cgroup")? {
        "i.cgroup"
    } else {
        "NULL"
    };
    let (facts, join) = if has_column(c, "process_id")? {
        let f = |col: &str| format!("coalesce(p.{col}, i.{col})");
        (
            [
                f("executable"),
                f("command_line"),
                f("user_name"),
                f("unit"),
                f("container_id"),
                f("container_runtime"),
                format!("coalesce(p.cgroup, {cgroup})"),
            ],
            "LEFT JOIN processes p ON p.id = i.process_id",
        )
    } else {
        let f = |col: &str| format!("i.{col}");
        (
            [
                f("executable"),
                f("command_line"),
                f("user_name"),
                f("unit"),
                f("container_id"),
                f("container_runtime"),
                cgroup.to_string(),
            ],
            "",
        )
    };
    let [
        executable,
        command_line,
        user_name,
        unit,
        container_id,
        runtime,
        cgroup,
    ] = facts;
    Ok(format!(
        "{SEGMENTS}
         SELECT i.id, i.netns, i.transport, i.address, i.port, i.role, i.peer_address, i.peer_port,
                i.pid, {executable}, {command_line}, i.user_id, {user_name}, {unit}, {container_id},
                {runtime}, i.opened_ns, i.closed_ns, i.close_note, {cgroup}
         FROM intervals i {join}
         WHERE (i.id >> 14) IN segments AND i.port BETWEEN ?1 AND ?2 AND (?3 IS NULL OR i.transport = ?3) AND i.opened_ns <= ?5
               AND (i.closed_ns IS NULL OR i.closed_ns >= ?4)
         ORDER BY i.opened_ns DESC"
    ))
}

/// Unrecorded stretches overlapping [`from`, `to`]: (from_ns, to_ns, intervals lost), oldest
/// first.
pub fn gaps(c: &Connection, from: i64, to: i64) -> rusqlite::Result<Vec<(i64, i64, u64)>> {
    // A store written by an older daemon has no gaps table: no known gaps.
    let has: bool = c.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'gaps'",
        [],
        |r| r.get(0),
    )?;
    if !has {
        return Ok(Vec::new());
    }
    let mut stmt = c.prepare(
        "SELECT from_ns, to_ns, intervals FROM gaps WHERE from_ns <= ?2 AND to_ns >= ?1 ORDER BY from_ns",
    )?;
    stmt.query_map(params![from, to], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect()
}

/// Drops not yet written down as a gap: (first, last time, count).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PendingGap(Option<(i64, i64, u64)>);

impl PendingGap {
    pub fn note(&mut self, at_ns: i64) {
        self.0 = Some(match self.0 {
            Some((a, b, n)) => (a.min(at_ns), b.max(at_ns), n + 1),
            None => (at_ns, at_ns, 1),
        });
    }
}

/// The row bound: intervals with ids up to `below` go (ids are handed out in opening order, so
/// these are the oldest), but for the holdings still open in the live table (`live`): a flood of
/// new intervals must not erase the record of a listener that is still there. A row left open
/// that the live table no longer holds (its close was dropped with the writer behind) goes like
/// a closed one. A range of the rowid and of the oldest segments of the port index.
pub fn bound_rows(c: &mut Connection, below: i64, live: &[i64]) -> rusqlite::Result<usize> {
    let tx = c.transaction()?;
    let open: Vec<i64> = tx
        .prepare("SELECT id FROM intervals WHERE id <= ?1 AND closed_ns IS NULL")?
        .query_map([below], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut n = tx.execute(
        "DELETE FROM intervals WHERE id <= ?1 AND closed_ns IS NOT NULL",
        [below],
    )?;
    let live: std::collections::HashSet<i64> = live.iter().copied().collect();
    {
        let mut delete = tx.prepare("DELETE FROM intervals WHERE id = ?1")?;
        for id in open.into_iter().filter(|id| !live.contains(id)) {
            n += delete.execute([id])?;
        }
    }
    tx.commit()?;
    Ok(n)
}

/// Process rows beyond which the ten-minute prune looks for those no interval refers to any
/// more. That search reads every interval: at a million rows it stalled the writer long enough
/// for a busy server's history to overflow its queue, every ten minutes; a few thousand unused
/// rows cost less.
pub const PROCESS_ROWS_KEPT: i64 = 16_384;

/// Retention by age: drop closed intervals older than `max_age`, then, once there are more than
/// `keep_process_rows`, process facts no interval refers to any more. (The row bound is
/// `bound_rows`.)
///
/// Ids are handed out in opening order, so the old rows are the first ids: the delete reads the
/// rowid up to the first interval opened since the cutoff, not the whole table. One opened
/// earlier than an id before it suggests (its start moved back) waits for the row bound.
pub fn prune(
    c: &Connection,
    now_ns: i64,
    max_age: Duration,
    keep_process_rows: i64,
) -> rusqlite::Result<usize> {
    let cutoff = now_ns - max_age.as_nanos().min(i64::MAX as u128) as i64;
    let n = c.execute(
        "DELETE FROM intervals WHERE closed_ns IS NOT NULL AND closed_ns < ?1
            AND id < coalesce(
                (SELECT id FROM intervals WHERE opened_ns >= ?1 ORDER BY id LIMIT 1),
                9223372036854775807)",
        [cutoff],
    )?;
    c.execute("DELETE FROM gaps WHERE to_ns < ?1", [cutoff])?;
    let processes: i64 = c.query_row("SELECT count(*) FROM processes", [], |r| r.get(0))?;
    if processes > keep_process_rows {
        c.execute(
            "DELETE FROM processes WHERE id NOT IN
                (SELECT process_id FROM intervals WHERE process_id IS NOT NULL)",
            [],
        )?;
    }
    Ok(n)
}

/// What the event path hands the writer.
#[derive(Debug, Clone)]
pub enum StoreOp {
    Puts(Vec<Interval>),
    /// (from_ns, to_ns, intervals) that could not be queued.
    Gap(i64, i64, u64),
    /// Keep the row bound: delete up to this id, but for these live intervals (`bound_rows`).
    Bound(i64, Vec<i64>),
}

/// The event path's end of the writer: never blocks; what does not fit is counted.
pub struct StoreHandle {
    tx: Option<SyncSender<StoreOp>>,
    writer: Option<std::thread::JoinHandle<()>>,
    pub dropped: u64,
    /// What the writer thread counts: commit failures, the queue, failed bounds, its rows.
    figures: std::sync::Arc<WriterFigures>,
    pub next_id: i64,
    /// `[store] max_rows`, and the next id at which the row bound was last asked for.
    max_rows: u64,
    bounded_at: i64,
    gap: PendingGap,
    /// Intervals put since the last handover (counted in `queued`).
    pending: Vec<Interval>,
}

impl StoreHandle {
    /// Intervals lost to failed commits so far.
    pub fn commit_failed(&self) -> u64 {
        self.figures
            .failed
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Times the writer could not keep the store to its row bound.
    pub fn bound_failed(&self) -> u64 {
        self.figures
            .bound_failed
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The writer's memory of the process rows it wrote.
    pub fn process_rows(&self) -> crate::attribution::CacheFigures {
        self.figures.rows.get()
    }

    /// Intervals waiting for the writer, and how many the queue holds.
    pub fn queue(&self) -> (u64, u64) {
        (
            self.figures
                .queued
                .load(std::sync::atomic::Ordering::Relaxed),
            QUEUE as u64,
        )
    }

    /// The id up to which the row bound deletes, once `SEGMENT_IDS` ids were handed out since
    /// it was last asked for; None while it is not due (or the store is still below its bound).
    pub fn bound_due(&self) -> Option<i64> {
        let below = (self.next_id - 1).saturating_sub(self.max_rows.min(i64::MAX as u64) as i64);
        (self.next_id - self.bounded_at >= SEGMENT_IDS && below > 0).then_some(below)
    }

    #[cfg(test)]
    pub fn set_max_rows(&mut self, max_rows: u64) {
        self.max_rows = max_rows;
    }

    /// Asks the writer to keep the row bound up to `below`, keeping `live` (the ids of stored
    /// intervals still open). A full queue asks again at the next chance.
    pub fn bound(&mut self, below: i64, live: Vec<i64>) {
        self.flush();
        if let Some(tx) = &self.tx
            && tx.try_send(StoreOp::Bound(below, live)).is_ok()
        {
            self.bounded_at = self.next_id;
        }
    }

    /// Lets the writer commit everything queued, then stops it (shutdown).
    pub fn finish(&mut self) {
        self.flush();
        if let (Some(tx), PendingGap(Some((a, b, n)))) = (&self.tx, self.gap) {
            // Shutdown may wait for the writer.
            let _ = tx.send(StoreOp::Gap(a, b, n));
        }
        drop(self.tx.take());
        if let Some(w) = self.writer.take()
            && w.join().is_err()
        {
            tracing::error!("the tenancy store writer panicked");
        }
    }

    /// Queues `i` for the writer; handed over at the next `flush` (or once `HANDOVER` wait).
    /// Beyond `QUEUE` intervals waiting, it is dropped and counted, and the store is told of
    /// the gap.
    pub fn put(&mut self, i: Interval) {
        if self.tx.is_none() {
            return;
        }
        if self
            .figures
            .queued
            .load(std::sync::atomic::Ordering::Relaxed)
            >= QUEUE as u64
        {
            self.gap.note(i.closed_ns.unwrap_or(i.opened_ns));
            self.count_dropped(1);
            return;
        }
        // Counted before it is sent: the writer may take it and count it out at once.
        self.figures
            .queued
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.pending.push(i);
        if self.pending.len() >= HANDOVER {
            self.flush();
        }
    }

    /// Hands what was put to the writer: one message, whatever the number.
    pub fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let batch = std::mem::replace(&mut self.pending, Vec::with_capacity(HANDOVER));
        let sent = match &self.tx {
            Some(tx) => tx.try_send(StoreOp::Puts(batch)),
            None => return,
        };
        match sent {
            Ok(()) => {
                // Room again: the store itself says what it is missing, so `who` can warn.
                if let (Some(tx), PendingGap(Some((a, b, n)))) = (&self.tx, self.gap)
                    && tx.try_send(StoreOp::Gap(a, b, n)).is_ok()
                {
                    self.gap = PendingGap::default();
                }
            }
            Err(TrySendError::Full(op)) | Err(TrySendError::Disconnected(op)) => {
                let StoreOp::Puts(batch) = op else { return };
                self.figures
                    .queued
                    .fetch_sub(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
                for i in &batch {
                    self.gap.note(i.closed_ns.unwrap_or(i.opened_ns));
                }
                self.count_dropped(batch.len() as u64);
            }
        }
    }

    /// Counts `n` intervals dropped; says so when the total reaches another power of two.
    fn count_dropped(&mut self, n: u64) {
        let before = self.dropped;
        self.dropped += n;
        if before == 0 || before.ilog2() != self.dropped.ilog2() {
            tracing::warn!(
                dropped = self.dropped,
                "tenancy store writer behind; intervals not recorded"
            );
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub max_age: Duration,
    pub max_rows: u64,
}

/// Opens the store, closes intervals a previous run left open, and starts the writer thread.
pub fn start(
    dir: &Path,
    retention: Retention,
    now_ns: i64,
) -> Result<(StoreHandle, PathBuf), StoreError> {
    let path = dir.join(FILE_NAME);
    let c = open_rw(&path)?;
    c.execute(
        "UPDATE intervals SET closed_ns = ?1, close_note = 'open when the daemon stopped; end unknown'
         WHERE closed_ns IS NULL",
        [now_ns],
    )
    .map_err(err(&path))?;
    let next_id: i64 = c
        .query_row("SELECT coalesce(max(id), 0) + 1 FROM intervals", [], |r| {
            r.get(0)
        })
        .map_err(err(&path))?;
    // Small on purpose: when the writer lags, intervals are dropped (and counted) instead of
    // piling up in memory.
    let (tx, rx) = sync_channel(BATCHES);
    let p = path.clone();
    let figures = std::sync::Arc::new(WriterFigures::default());
    let f = figures.clone();
    let writer = std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || writer(c, rx, retention, p, &f))
        .map_err(|source| StoreError::Dir {
            path: path.display().to_string(),
            source,
        })?;
    Ok((
        StoreHandle {
            tx: Some(tx),
            writer: Some(writer),
            dropped: 0,
            figures,
            next_id,
            max_rows: retention.max_rows,
            bounded_at: next_id,
            gap: PendingGap::default(),
            pending: Vec::with_capacity(HANDOVER),
        },
        path,
    ))
}

/// How long a batch of history writes gathers before it is committed.
const BATCH_WAIT: Duration = Duration::from_millis(50);

fn writer(
    mut c: Connection,
    rx: Receiver<StoreOp>,
    retention: Retention,
    path: PathBuf,
    figures: &WriterFigures,
) {
    // History may lag (what does not fit the queue is counted); the event log must not. Yield
    // the CPU to the event loop: nice 10 for this thread only.
    // SAFETY: setpriority on this thread's own id.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10);
    }
    let mut last_prune = Instant::now() - Duration::from_secs(3600);
    let mut rows = Rows::new(figures.rows.clone());
    loop {
        let first = match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(op) => Some(op),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let puts_of = |op: &StoreOp| match op {
            StoreOp::Puts(v) => v.len(),
            StoreOp::Gap(..) | StoreOp::Bound(..) => 0,
        };
        let mut puts = first.as_ref().map_or(0, puts_of);
        let mut batch: Vec<StoreOp> = first.into_iter().collect();
        // Every commit rewrites the pages it touched (the table's last page, the port index's):
        // a commit per handful of intervals rewrote the same pages over and over. A batch gathers
        // for up to BATCH_WAIT once it has begun (measured in docs/benchmarks.md: the writer's
        // CPU per event fell by about a third).
        let deadline = Instant::now() + BATCH_WAIT;
        while puts < QUEUE / 2 {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(op) => {
                    puts += puts_of(&op);
                    batch.push(op);
                }
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            let r = c.transaction().and_then(|tx| {
                let mut statements = Statements::prepare(&tx)?;
                for op in &batch {
                    match op {
                        StoreOp::Puts(v) => {
                            for i in v {
                                rows.insert(&mut statements, i)?;
                            }
                        }
                        StoreOp::Gap(a, b, n) => {
                            tx.prepare_cached(
                                "INSERT INTO gaps (from_ns, to_ns, intervals) VALUES (?1, ?2, ?3)",
                            )?
                            .execute(params![a, b, *n as i64])?;
                        }
                        // After the commit: a bound that fails must not take the batch with it.
                        StoreOp::Bound(..) => {}
                    }
                }
                drop(statements);
                tx.commit()
            });
            let puts = puts as u64;
            if let Err(e) = r {
                rows.forget();
                let total = figures
                    .failed
                    .fetch_add(puts, std::sync::atomic::Ordering::Relaxed)
                    + puts;
                tracing::error!(path = %path.display(), error = %e, lost = puts, total, "writing the tenancy store failed");
            }
            figures
                .queued
                .fetch_sub(puts, std::sync::atomic::Ordering::Relaxed);
            let bound = batch.iter().rev().find_map(|op| match op {
                StoreOp::Bound(below, live) => Some((*below, live)),
                _ => None,
            });
            // A failed bound is asked for again once more intervals were handed out.
            if let Some((below, live)) = bound
                && let Err(e) = bound_rows(&mut c, below, live)
            {
                let n = figures
                    .bound_failed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    + 1;
                if n.is_power_of_two() {
                    tracing::error!(path = %path.display(), error = %e, times = n, "keeping the tenancy store to its row bound failed");
                }
            }
        }
        if last_prune.elapsed() > Duration::from_secs(600) {
            last_prune = Instant::now();
            let now = crate::clock::now_unix_ns();
            rows.forget();
            match prune(&c, now, retention.max_age, PROCESS_ROWS_KEPT) {
                Ok(n) if n > 0 => tracing::info!(rows = n, "tenancy store pruned"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "pruning the tenancy store failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iv(id: i64, port: u16, opened: i64, closed: Option<i64>) -> Interval {
        Interval {
            id,
            netns: Some(1),
            transport: Transport::Tcp,
            local: Endpoint {
                address: std::net::Ipv4Addr::LOCALHOST.into(),
                port,
            },
            role: SocketRole::Listening,
            peer: None,
            process: std::sync::Arc::new(ProcessFacts {
                pid: 42,
                executable: Some("/bin/x".into()),
                command_line: Some(vec!["x".into(), "-l".into()]),
                user: User {
                    id: 0,
                    name: Some("root".into()),
                },
                cgroup: Some("/system.slice/x.service".into()),
                ..ProcessFacts::default()
            }),
            opened_ns: opened,
            closed_ns: closed,
            close_note: None,
            cookie: 0,
        }
    }

    #[test]
    fn a_store_without_the_cgroup_column_is_read_and_then_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(&SCHEMA.replace(",\n    cgroup TEXT", ""))
                .unwrap();
            c.execute(
                "INSERT INTO intervals (id, transport, address, port, role, pid, user_id, opened_ns)
                 VALUES (1, 'tcp', '127.0.0.1', 80, 'listening', 7, 0, 5)",
                [],
            )
            .unwrap();
        }
        let ro = open_ro(&path).unwrap();
        assert!(!has_column(&ro, "cgroup").unwrap());
        let (old, _) = holdings(&ro, (80, 80), None, 0, i64::MAX, Some, 10).unwrap();
        assert_eq!(
            (old[0].process.pid, old[0].process.cgroup.as_deref()),
            (7, None)
        );
        let rw = open_rw(&path).unwrap();
        insert(&rw, &iv(2, 80, 10, None)).unwrap();
        let (rows, _) = holdings(&rw, (80, 80), None, 0, i64::MAX, Some, 10).unwrap();
        assert_eq!(
            rows[0].process.cgroup.as_deref(),
            Some("/system.slice/x.service")
        );
        assert_eq!(rows[1].process.cgroup, None);
    }

    #[test]
    fn holdings_overlap_the_window_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let c = open_rw(&dir.path().join(FILE_NAME)).unwrap();
        insert(&c, &iv(1, 80, 100, Some(200))).unwrap();
        insert(&c, &iv(2, 80, 300, None)).unwrap();
        insert(&c, &iv(3, 81, 100, None)).unwrap();
        let at = |t| {
            holdings(&c, (80, 80), None, t, t, Some, 10)
                .map(|h| h.0)
                .unwrap()
                .iter()
                .map(|i| i.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(at(150), vec![1]);
        assert_eq!(at(250), Vec::<i64>::new());
        assert_eq!(at(1000), vec![2]);
        let all = holdings(&c, (80, 80), Some("tcp"), 0, i64::MAX, Some, 10)
            .map(|h| h.0)
            .unwrap();
        assert_eq!(all.iter().map(|i| i.id).collect::<Vec<_>>(), vec![2, 1]);
        // A range, a filter, and a limit that says more were left out.
        let (range, more) = holdings(&c, (80, 81), None, 0, i64::MAX, Some, 10).unwrap();
        assert_eq!((range.len(), more), (3, false));
        let (odd, _) = holdings(
            &c,
            (80, 81),
            None,
            0,
            i64::MAX,
            |i| (i.id != 2).then_some(i),
            10,
        )
        .unwrap();
        let mut ids: Vec<i64> = odd.iter().map(|i| i.id).collect();
        ids.sort();
        assert_eq!(ids, vec![1, 3]);
        let (one, more) = holdings(&c, (80, 81), None, 0, i64::MAX, Some, 1).unwrap();
        assert_eq!((one.len(), more), (1, true));
        assert_eq!(
            all[1].process.command_line,
            Some(vec!["x".to_string(), "-l".to_string()])
        );
        assert!(
            holdings(&c, (80, 80), Some("udp"), 0, i64::MAX, Some, 10)
                .map(|h| h.0)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn the_history_file_is_not_world_readable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state").join(FILE_NAME);
        open_rw(&p).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640
        );
        let d = std::fs::metadata(p.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(d, 0o700);
    }

    #[test]
    fn gaps_are_found_by_overlap_and_pruned_with_age() {
        let dir = tempfile::tempdir().unwrap();
        let c = open_rw(&dir.path().join(FILE_NAME)).unwrap();
        let mut g = PendingGap::default();
        for t in [500, 100, 300] {
            g.note(t);
        }
        assert_eq!(g, PendingGap(Some((100, 500, 3))));
        c.execute("INSERT INTO gaps VALUES (100, 500, 3)", [])
            .unwrap();
        assert_eq!(gaps(&c, 0, 99).unwrap(), vec![]);
        assert_eq!(gaps(&c, 400, 1000).unwrap(), vec![(100, 500, 3)]);
        prune(&c, 10_000, Duration::from_nanos(1000), 0).unwrap();
        assert_eq!(gaps(&c, 0, i64::MAX).unwrap(), vec![]);
    }

    #[test]
    fn holdings_seek_the_port_index_segment_by_segment() {
        let dir = tempfile::tempdir().unwrap();
        let c = open_rw(&dir.path().join(FILE_NAME)).unwrap();
        let plan: Vec<String> = c
            .prepare(&format!(
                "EXPLAIN QUERY PLAN {}",
                holdings_query(&c).unwrap()
            ))
            .unwrap()
            .query_map(params![80, 80, None::<&str>, 0, 1], |r| r.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter().any(|l| l
                .contains("USING INDEX intervals_segment_port (<expr>=? AND port>? AND port<?)")),
            "{plan:#?}"
        );
        // Rows in three segments, and one in a segment between them with no row on the port.
        for (id, port) in [
            (1, 80),
            (SEGMENT_IDS + 5, 81),
            (2 * SEGMENT_IDS + 7, 80),
            (3 * SEGMENT_IDS, 80),
        ] {
            insert(&c, &iv(id, port, id, Some(id + 1))).unwrap();
        }
        let found = holdings(&c, (80, 80), None, 0, i64::MAX, Some, 10)
            .unwrap()
            .0;
        assert_eq!(
            found.iter().map(|i| i.id).collect::<Vec<_>>(),
            vec![3 * SEGMENT_IDS, 2 * SEGMENT_IDS + 7, 1]
        );
    }

    #[test]
    fn an_older_store_trades_its_port_index_for_the_segmented_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                &SCHEMA
                    .replace(
                        "intervals_segment_port ON intervals (id >> 14, port, opened_ns)",
                        "intervals_port ON intervals (port, opened_ns)",
                    )
                    .replace("DROP INDEX IF EXISTS intervals_port;", ""),
            )
            .unwrap();
            insert(&c, &iv(3, 80, 5, None)).unwrap();
        }
        let indexes = |c: &Connection| -> Vec<String> {
            c.prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'intervals' ORDER BY name")
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        let ro = open_ro(&path).unwrap();
        assert_eq!(indexes(&ro), vec!["intervals_port"]);
        // Read as it is, without the new index.
        assert_eq!(
            holdings(&ro, (80, 80), None, 0, i64::MAX, Some, 10)
                .unwrap()
                .0
                .len(),
            1
        );
        let c = open_rw(&path).unwrap();
        assert_eq!(indexes(&c), vec!["intervals_segment_port"]);
        assert_eq!(
            holdings(&c, (80, 80), None, 0, i64::MAX, Some, 10)
                .unwrap()
                .0
                .len(),
            1
        );
    }

    #[test]
    fn the_row_bound_spares_only_the_live_open_rows() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = open_rw(&dir.path().join(FILE_NAME)).unwrap();
        // A listener still open, a row left open whose close was never written, then closed
        // connections.
        insert(&c, &iv(1, 80, 1, None)).unwrap();
        insert(&c, &iv(2, 81, 2, None)).unwrap();
        for id in 3..=10 {
            insert(&c, &iv(id, 40000 + id as u16, id, Some(id + 1))).unwrap();
        }
        assert_eq!(bound_rows(&mut c, 7, &[1, 99]).unwrap(), 6);
        let ids: Vec<i64> = c
            .prepare("SELECT id FROM intervals ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(ids, vec![1, 8, 9, 10]);
        // An empty store has nothing to delete.
        let empty = tempfile::tempdir().unwrap();
        let mut e = open_rw(&empty.path().join(FILE_NAME)).unwrap();
        assert_eq!(bound_rows(&mut e, 3, &[]).unwrap(), 0);
    }

    #[test]
    fn segments_are_listed_only_where_rows_are() {
        let dir = tempfile::tempdir().unwrap();
        let c = open_rw(&dir.path().join(FILE_NAME)).unwrap();
        let segments = |c: &Connection| -> Vec<Option<i64>> {
            c.prepare(&format!("{SEGMENTS} SELECT s FROM segments"))
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        assert_eq!(segments(&c), vec![None]);
        // An old row and new ones a million segments later: three segments, not a million.
        for id in [
            5,
            1_000_000 * SEGMENT_IDS + 1,
            1_000_000 * SEGMENT_IDS + 2,
            1_000_002 * SEGMENT_IDS,
        ] {
            insert(&c, &iv(id, 80, id, Some(id + 1))).unwrap();
        }
        assert_eq!(
            segments(&c),
            vec![Some(0), Some(1_000_000), Some(1_000_002), None]
        );
        assert_eq!(
            holdings(&c, (80, 80), None, 0, i64::MAX, Some, 10)
                .unwrap()
                .0
                .len(),
            4
        );
    }

    #[test]
    fn retention_by_age_and_rows() {
        let dir = tempfile::tempdir().unwrap();
        let c = open_rw(&dir.path().join(FILE_NAME)).unwrap();
        for id in 0..10 {
            insert(
                &c,
                &iv(id, 80, id * 1_000_000_000, Some(id * 1_000_000_000 + 1)),
            )
            .unwrap();
        }
        // Older than 5 s at t = 10 s: ids 0..=4 go.
        assert_eq!(
            prune(&c, 10_000_000_000, Duration::from_secs(5), 0).unwrap(),
            5
        );
        let mut c = c;
        assert_eq!(bound_rows(&mut c, 7, &[]).unwrap(), 3);
        let left = holdings(&c, (80, 80), None, 0, i64::MAX, Some, 10)
            .map(|h| h.0)
            .unwrap();
        assert_eq!(left.iter().map(|i| i.id).collect::<Vec<_>>(), vec![9, 8]);
    }

    #[test]
    fn intervals_of_one_process_share_its_row_and_unreferenced_rows_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let c = open_rw(&dir.path().join(FILE_NAME)).unwrap();
        let mut rows = Rows::default();
        let first = iv(1, 80, 100, Some(200));
        let mut second = iv(2, 80, 300, Some(400));
        second.process = first.process.clone();
        // The same facts in another allocation: a row of their own.
        let third = iv(3, 81, 100, None);
        {
            let mut s = Statements::prepare(&c).unwrap();
            for i in [&first, &second, &third] {
                rows.insert(&mut s, i).unwrap();
            }
            // Written again once closed: the same row, its end now known.
            let mut closed = iv(3, 81, 100, Some(600));
            closed.process = third.process.clone();
            rows.insert(&mut s, &closed).unwrap();
        }
        let closed_ns = |id: i64| {
            c.query_row("SELECT closed_ns FROM intervals WHERE id = ?1", [id], |r| {
                r.get::<_, Option<i64>>(0)
            })
            .unwrap()
        };
        assert_eq!((closed_ns(2), closed_ns(3)), (Some(400), Some(600)));
        let count = |sql: &str| c.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
        assert_eq!(count("SELECT count(*) FROM processes"), 2);
        assert_eq!(count("SELECT count(DISTINCT process_id) FROM intervals"), 2);
        let (all, _) = holdings(&c, (80, 81), None, 0, i64::MAX, Some, 10).unwrap();
        for i in &all {
            assert_eq!(*i.process, *first.process, "interval {}", i.id);
        }
        // Ids 1 and 2 go by age; their process row with them once there are more process rows
        // than kept, the other stays.
        prune(&c, 1_000, Duration::from_nanos(450), 2).unwrap();
        assert_eq!(count("SELECT count(*) FROM processes"), 2);
        prune(&c, 1_000, Duration::from_nanos(450), 1).unwrap();
        assert_eq!(count("SELECT count(*) FROM processes"), 1);
        let (left, _) = holdings(&c, (80, 81), None, 0, i64::MAX, Some, 10).unwrap();
        assert_eq!((left.len(), left[0].process.pid), (1, 42));
    }

    #[test]
    fn a_store_with_facts_inline_is_read_and_then_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        {
            // The layout before the processes table: every interval with its facts.
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE intervals (
                    id INTEGER PRIMARY KEY,
                    netns INTEGER, transport TEXT NOT NULL, address TEXT NOT NULL, port INTEGER NOT NULL,
                    role TEXT NOT NULL, peer_address TEXT, peer_port INTEGER,
                    pid INTEGER NOT NULL, executable TEXT, command_line TEXT,
                    user_id INTEGER NOT NULL, user_name TEXT, unit TEXT, container_id TEXT,
                    container_runtime TEXT, opened_ns INTEGER NOT NULL, closed_ns INTEGER,
                    close_note TEXT, cgroup TEXT);
                INSERT INTO intervals (id, transport, address, port, role, peer_address, peer_port,
                    pid, executable, command_line, user_id, user_name, unit, opened_ns, cgroup)
                VALUES (1, 'tcp', '::1', 80, 'connected', '::ffff:10.0.0.1', 5, 7, '/bin/old',
                    '[\"old\"]', 3, 'u', 'old.service', 5, '/system.slice/old.service');",
            )
            .unwrap();
        }
        let check_old = |c: &Connection| {
            let (rows, _) = holdings(c, (80, 80), None, 0, i64::MAX, Some, 10).unwrap();
            let old = rows.iter().find(|i| i.id == 1).unwrap();
            assert_eq!(
                old.local.address,
                "::1".parse::<std::net::IpAddr>().unwrap()
            );
            assert_eq!(
                old.peer.unwrap().address,
                "::ffff:10.0.0.1".parse::<std::net::IpAddr>().unwrap()
            );
            assert_eq!(old.process.executable.as_deref(), Some("/bin/old"));
            assert_eq!(old.process.command_line, Some(vec!["old".to_string()]));
            assert_eq!(
                (
                    old.process.user.name.as_deref(),
                    old.process.unit.as_deref()
                ),
                (Some("u"), Some("old.service"))
            );
            assert_eq!(
                old.process.cgroup.as_deref(),
                Some("/system.slice/old.service")
            );
        };
        check_old(&open_ro(&path).unwrap());
        let rw = open_rw(&path).unwrap();
        insert(&rw, &iv(2, 80, 10, None)).unwrap();
        check_old(&rw);
        let (rows, _) = holdings(&rw, (80, 80), None, 0, i64::MAX, Some, 10).unwrap();
        let new = rows.iter().find(|i| i.id == 2).unwrap();
        assert_eq!(new.process.executable.as_deref(), Some("/bin/x"));
    }

    #[test]
    fn address_text_is_what_display_writes() {
        let addresses = [
            "0.0.0.0",
            "1.2.3.4",
            "10.20.30.40",
            "100.200.255.9",
            "255.255.255.255",
            "::",
            "::1",
            "fe80::1:2",
            "::ffff:192.168.1.10",
            "2001:db8:85a3:1:2:8a2e:370:7334",
            "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255",
        ];
        for a in addresses {
            let ip: std::net::IpAddr = a.parse().unwrap();
            let e = Endpoint {
                address: ip,
                port: 1,
            };
            assert_eq!(e.address_text().as_str(), ip.to_string());
        }
        for n in (0u32..=u32::MAX).step_by(7_919_993) {
            let ip = std::net::IpAddr::from(std::net::Ipv4Addr::from(n));
            assert_eq!(crate::facts::AddressText::of(ip).as_str(), ip.to_string());
        }
    }

    #[test]
    fn a_file_that_is_not_a_store_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(FILE_NAME);
        std::fs::write(&p, vec![0x42u8; 8192]).unwrap();
        let e = match open_ro(&p) {
            Ok(_) => panic!("garbage opened as a store"),
            Err(e) => e.to_string(),
        };
        assert!(
            e.contains(&p.display().to_string()) && e.contains("not a database"),
            "{e}"
        );
    }
}
