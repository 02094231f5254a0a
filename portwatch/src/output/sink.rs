//! Where JSON lines go: stdout and/or an append-only log file. Lines are batched per ring-buffer
//! drain and written whole; a write that fails is counted and reported, never fatal.
use std::{
    fs::{File, OpenOptions},
    io::{self, Read, Seek, SeekFrom, Write},
    os::unix::fs::{MetadataExt as _, OpenOptionsExt},
    path::{Path, PathBuf},
};

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SinkStats {
    pub lines_written: u64,
    /// Lines that could not be written to the log file (disk full, directory gone, ...).
    pub lines_failed: u64,
    pub rotations: u64,
    /// Lines that could not be written to stdout (a closed pipe, a full one that errored).
    pub stdout_failed: u64,
}

/// Size-based rotation: `events.jsonl` → `events.jsonl.1` → ... → `events.jsonl.<keep>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    pub max_bytes: u64,
    pub keep: u32,
}

struct LogFile {
    path: PathBuf,
    file: File,
    bytes: u64,
    /// (device, inode) of the open file, to notice when the path stops naming it.
    id: (u64, u64),
}

/// Queued lines are written once they reach this size, whatever the caller's flush rhythm.
const MAX_BATCH_BYTES: usize = 256 * 1024;

pub struct Sink {
    stdout: Option<io::Stdout>,
    /// The log file; `None` inside while it could not be (re)opened.
    file: Option<LogFile>,
    path: Option<PathBuf>,
    /// Lines lost since the last successful write, not yet reported in the log.
    unreported_failed: u64,
    rotation: Option<Rotation>,
    batch: Vec<u8>,
    batch_lines: u64,
    pub stats: SinkStats,
}

impl Sink {
    pub fn new(
        stdout: bool,
        log_file: Option<&Path>,
        rotation: Option<Rotation>,
    ) -> io::Result<Self> {
        let file = match log_file {
            Some(p) => Some(LogFile::open(p)?),
            None => None,
        };
        Ok(Self {
            stdout: stdout.then(io::stdout),
            path: log_file.map(Path::to_path_buf),
            unreported_failed: 0,
            file,
            rotation: rotation.filter(|r| r.max_bytes > 0),
            batch: Vec::with_capacity(64 * 1024),
            batch_lines: 0,
            stats: SinkStats::default(),
        })
    }

    pub fn log_path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Lines lost to failed writes that the log itself does not yet say it lost.
    pub fn unreported_failed(&self) -> u64 {
        self.unreported_failed
    }

    /// Writes the queued lines (a loss notice) to the log file only; on success the backlog of
    /// unreported failures is cleared, on failure the notice is dropped without being counted as
    /// an event line and is tried again later.
    pub fn flush_notice(&mut self, covers: u64) -> bool {
        let written = match &mut self.file {
            Some(f) => match f.file.write_all(&self.batch) {
                Ok(()) => {
                    f.bytes += self.batch.len() as u64;
                    true
                }
                Err(_) => {
                    let _ = f.file.set_len(f.bytes);
                    false
                }
            },
            None => false,
        };
        if written {
            self.unreported_failed -= covers.min(self.unreported_failed);
            self.stats.lines_written += self.batch_lines;
        }
        self.batch.clear();
        self.batch_lines = 0;
        written
    }

    /// Notices a log file whose path no longer names it (deleted, moved, its directory removed):
    /// writes would vanish into an unlinked inode. Reopens by path, or stops writing (and counts
    /// the lines) until the path can be created again.
    pub fn check_path(&mut self) {
        let Some(path) = self.path.clone() else {
            return;
        };
        let current = std::fs::metadata(&path).ok().map(|m| (m.dev(), m.ino()));
        match (&self.file, current) {
            (Some(f), Some(id)) if f.id == id => {}
            (Some(_), _) => {
                tracing::warn!(path = %path.display(), "the event log is no longer at its path; reopening");
                self.file = None;
                self.try_reopen();
            }
            (None, _) => self.try_reopen(),
        }
    }

    fn try_reopen(&mut self) {
        let Some(path) = &self.path else { return };
        match LogFile::open(path) {
            Ok(f) => {
                tracing::info!(path = %path.display(), "event log (re)opened");
                self.file = Some(f);
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot open the event log; counting lines lost")
            }
        }
    }

    pub fn log_bytes(&self) -> u64 {
        self.file.as_ref().map_or(0, |f| f.bytes)
    }

    /// Queues one JSON document (without newline).
    pub fn push(&mut self, line: &[u8]) {
        self.batch.extend_from_slice(line);
        self.batch.push(b'\n');
        self.batch_lines += 1;
        self.bound_batch();
    }

    /// A drain of a full ring buffer is thousands of lines: write them in slices rather than let
    /// the batch (and the daemon's memory) grow with the ring.
    fn bound_batch(&mut self) {
        if self.batch.len() >= MAX_BATCH_BYTES {
            self.flush();
        }
    }

    /// Queues one JSON document that `write` appends (without newline) to the batch.
    pub fn push_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        write(&mut self.batch);
        self.batch.push(b'\n');
        self.batch_lines += 1;
        self.bound_batch();
    }

    /// Queues one record serialized as JSON.
    pub fn push_json<T: serde::Serialize>(&mut self, rec: &T) -> serde_json::Result<()> {
        let start = self.batch.len();
        if let Err(e) = serde_json::to_writer(&mut self.batch, rec) {
            self.batch.truncate(start);
            return Err(e);
        }
        self.batch.push(b'\n');
        self.batch_lines += 1;
        self.bound_batch();
        Ok(())
    }

    /// Reopens the log file by path (after logrotate moved it away).
    pub fn reopen(&mut self) {
        let Some(path) = &self.path else { return };
        match LogFile::open(path) {
            Ok(new) => self.file = Some(new),
            Err(e) => tracing::error!(path = %path.display(), error = %e,
                "reopening the event log failed; still writing to the old file"),
        }
    }

    /// Writes the queued lines.
    pub fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let mut stdout_ok = true;
        if let Some(out) = &mut self.stdout {
            let mut lock = out.lock();
            if let Err(e) = lock.write_all(&self.batch).and_then(|_| lock.flush()) {
                stdout_ok = false;
                self.stats.stdout_failed += self.batch_lines;
                tracing::warn!(error = %e, lines = self.batch_lines, total_failed = self.stats.stdout_failed,
                    "writing events to stdout failed");
            }
        }
        if let (Some(f), Some(r)) = (&mut self.file, self.rotation)
            && f.bytes > 0
            && f.bytes + self.batch.len() as u64 > r.max_bytes
        {
            match f.rotate(r.keep) {
                Ok(()) => self.stats.rotations += 1,
                Err(e) => {
                    tracing::warn!(path = %f.path.display(), error = %e, "rotating the event log failed")
                }
            }
        }
        if let Some(f) = &mut self.file {
            match f.file.write_all(&self.batch) {
                Ok(()) => {
                    f.bytes += self.batch.len() as u64;
                    self.stats.lines_written += self.batch_lines;
                }
                Err(e) => {
                    // A short write (disk full) must not leave half a line behind.
                    let _ = f.file.set_len(f.bytes);
                    self.stats.lines_failed += self.batch_lines;
                    self.unreported_failed += self.batch_lines;
                    tracing::warn!(path = %f.path.display(), error = %e, lines = self.batch_lines,
                        total_failed = self.stats.lines_failed, "event log write failed");
                }
            }
        } else if self.path.is_some() {
            self.stats.lines_failed += self.batch_lines;
            self.unreported_failed += self.batch_lines;
        } else if stdout_ok {
            // stdout only: written is what stdout took.
            self.stats.lines_written += self.batch_lines;
        }
        self.batch.clear();
        self.batch_lines = 0;
    }
}

impl LogFile {
    fn open(path: &Path) -> io::Result<LogFile> {
        let file = open_log(path)?;
        let meta = file.metadata()?;
        Ok(LogFile {
            path: path.to_path_buf(),
            file,
            bytes: meta.len(),
            id: (meta.dev(), meta.ino()),
        })
    }

    fn numbered(&self, n: u32) -> PathBuf {
        let mut s = self.path.clone().into_os_string();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    }

    fn rotate(&mut self, keep: u32) -> io::Result<()> {
        let _ = std::fs::remove_file(self.numbered(keep));
        for n in (1..keep).rev() {
            match std::fs::rename(self.numbered(n), self.numbered(n + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        std::fs::rename(&self.path, self.numbered(1))?;
        *self = LogFile::open(&self.path)?;
        Ok(())
    }
}

/// Opens the log for appending (mode 0640), first cutting off a trailing partial line left by a
/// crash so the file stays valid JSON Lines.
pub fn open_log(path: &Path) -> io::Result<File> {
    use crate::files;
    // It truncates: never a file another user pointed the path at.
    files::check_parent(path, "event log")?;
    let mut file = files::open_nofollow(
        OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o640),
        path,
        "event log",
    )?;
    files::check_owned(&file, path, "event log")?;
    repair_partial_line(&mut file)?;
    Ok(file)
}

/// Truncates the file after its last newline. Returns how many bytes were cut.
pub fn repair_partial_line(file: &mut File) -> io::Result<u64> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(0);
    }
    let mut pos = len;
    let mut buf = [0u8; 4096];
    while pos > 0 {
        let start = pos.saturating_sub(buf.len() as u64);
        let n = (pos - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut buf[..n])?;
        if let Some(i) = buf[..n].iter().rposition(|&b| b == b'\n') {
            let keep = start + i as u64 + 1;
            if keep < len {
                file.set_len(keep)?;
                tracing::warn!(
                    cut_bytes = len - keep,
                    "repaired a partial last line in the event log"
                );
            }
            return Ok(len - keep);
        }
        pos = start;
    }
    file.set_len(0)?;
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_last_line_is_cut_and_appends_continue() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.jsonl");
        std::fs::write(&p, b"{\"a\":1}\n{\"b\":").unwrap();
        let mut s = Sink::new(false, Some(&p), None).unwrap();
        s.push(b"{\"c\":3}");
        s.flush();
        assert_eq!(std::fs::read(&p).unwrap(), b"{\"a\":1}\n{\"c\":3}\n");
        assert_eq!(s.stats.lines_written, 1);
    }

    #[test]
    fn rotates_by_size_and_keeps_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.jsonl");
        let rotation = Rotation {
            max_bytes: 20,
            keep: 2,
        };
        let mut s = Sink::new(false, Some(&p), Some(rotation)).unwrap();
        for i in 0..5 {
            s.push(format!("{{\"n\":{i:08}}}").as_bytes()); // 15 bytes with the newline
            s.flush();
        }
        let read = |q: &Path| std::fs::read_to_string(q).unwrap();
        assert_eq!(read(&p), "{\"n\":00000004}\n");
        assert_eq!(read(&dir.path().join("e.jsonl.1")), "{\"n\":00000003}\n");
        assert_eq!(read(&dir.path().join("e.jsonl.2")), "{\"n\":00000002}\n");
        assert!(!dir.path().join("e.jsonl.3").exists());
        assert_eq!(s.stats.rotations, 4);
        assert_eq!(s.stats.lines_written, 5);
    }

    #[test]
    fn a_large_drain_is_written_in_slices() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.jsonl");
        let mut s = Sink::new(false, Some(&p), None).unwrap();
        let line = format!("{{\"pad\":\"{}\"}}", "x".repeat(90));
        for _ in 0..5000 {
            s.push(line.as_bytes());
            assert!(s.batch.len() < MAX_BATCH_BYTES);
        }
        let written = std::fs::metadata(&p).unwrap().len() as usize;
        assert!(
            written >= MAX_BATCH_BYTES,
            "written before any flush: {written}"
        );
        s.flush();
        assert_eq!(s.stats.lines_written, 5000);
        assert_eq!(std::fs::read_to_string(&p).unwrap().lines().count(), 5000);
    }

    #[test]
    fn log_file_mode_is_0640() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.jsonl");
        open_log(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
    }
}
