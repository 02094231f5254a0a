//! Following the daemon's event log as it grows, across its rotations (the daemon renames
//! `events.jsonl` to `events.jsonl.1` and starts a new file; logrotate's copytruncate truncates
//! it in place) — what `tail -F` does, for `portwatch tail` and `top`.
use std::{
    fs::File,
    io::{self, Read as _, Seek as _, SeekFrom},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// At most this much of an existing file is read for its last lines: a 100 MiB log is not
/// parsed from its start to show ten lines.
pub const BACKLOG_BYTES: u64 = 8 * 1024 * 1024;

/// A line longer than this is not an event the daemon wrote (its lines are a few KiB): it is
/// dropped, counted, rather than held in memory without bound.
pub const MAX_LINE: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct FollowError {
    pub path: String,
    #[source]
    pub source: io::Error,
}

pub struct Follower {
    path: PathBuf,
    file: File,
    id: (u64, u64),
    pos: u64,
    partial: Vec<u8>,
    /// Inside a line too long to keep, until its newline.
    discarding: bool,
    /// Lines dropped for being longer than `MAX_LINE`.
    pub oversized: u64,
    /// Times the file was replaced or truncated under us.
    pub rotations: u64,
}

impl Follower {
    /// Opens `path` positioned `backlog` bytes before its end (whole lines only), or at its end
    /// when `backlog` is 0.
    pub fn open(path: &Path, backlog: u64) -> Result<Self, FollowError> {
        let err = |source| FollowError {
            path: path.display().to_string(),
            source,
        };
        let mut file = File::open(path).map_err(err)?;
        let meta = file.metadata().map_err(err)?;
        if !meta.is_file() {
            return Err(err(io::Error::other("not a regular file")));
        }
        let start = meta.len().saturating_sub(backlog);
        file.seek(SeekFrom::Start(start)).map_err(err)?;
        let mut f = Follower {
            path: path.to_path_buf(),
            file,
            id: (meta.dev(), meta.ino()),
            pos: start,
            partial: Vec::new(),
            discarding: false,
            oversized: 0,
            rotations: 0,
        };
        if start > 0 {
            // Reading from the middle of the file: unless the byte before is a newline, the
            // first line is a piece of one, and is skipped.
            f.file.seek(SeekFrom::Start(start - 1)).map_err(err)?;
            let mut before = [0u8; 1];
            // Nothing there (truncated since): as good as a line start.
            let n = f.file.read(&mut before).map_err(err)?;
            if n == 1 && before[0] != b'\n' {
                f.skip_to_newline().map_err(err)?;
            }
        }
        Ok(f)
    }

    /// Moves past the next newline (or to the end), reading in blocks.
    fn skip_to_newline(&mut self) -> io::Result<()> {
        let mut buf = [0u8; 8192];
        loop {
            let n = self.file.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            if let Some(i) = buf[..n].iter().position(|b| *b == b'\n') {
                self.pos += i as u64 + 1;
                self.file.seek(SeekFrom::Start(self.pos))?;
                return Ok(());
            }
            self.pos += n as u64;
        }
    }

    /// The complete lines written since the last call (without their newline). Reads the rest of
    /// a file that was rotated away before moving to its successor; a file truncated in place is
    /// read again from its start.
    pub fn poll(&mut self) -> io::Result<Vec<Vec<u8>>> {
        let mut lines = Vec::new();
        self.drain(&mut lines)?;
        match std::fs::metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) != self.id => {
                // Rotated. What was written to the old file between the read above and the
                // rename is read now; then the new file from its start.
                self.drain(&mut lines)?;
                if let Ok(file) = File::open(&self.path) {
                    self.file = file;
                    self.id = (m.dev(), m.ino());
                    self.pos = 0;
                    self.partial.clear();
                    self.discarding = false;
                    self.rotations += 1;
                    self.drain(&mut lines)?;
                }
            }
            Ok(m) if m.len() < self.pos => {
                self.file.seek(SeekFrom::Start(0))?;
                self.pos = 0;
                self.partial.clear();
                self.discarding = false;
                self.rotations += 1;
                self.drain(&mut lines)?;
            }
            // Missing for a moment between a rename and the new file: keep waiting.
            _ => {}
        }
        Ok(lines)
    }

    fn drain(&mut self, lines: &mut Vec<Vec<u8>>) -> io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = self.file.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            self.pos += n as u64;
            for piece in buf[..n].split_inclusive(|b| *b == b'\n') {
                let (text, ends) = match piece.split_last() {
                    Some((b'\n', text)) => (text, true),
                    _ => (piece, false),
                };
                if !self.discarding {
                    if self.partial.len() + text.len() > MAX_LINE {
                        self.partial.clear();
                        self.oversized += 1;
                        self.discarding = true;
                    } else {
                        self.partial.extend_from_slice(text);
                    }
                }
                if ends {
                    if !self.discarding {
                        lines.push(std::mem::take(&mut self.partial));
                    }
                    self.discarding = false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn lines(v: Vec<Vec<u8>>) -> Vec<String> {
        v.into_iter()
            .map(|l| String::from_utf8(l).unwrap())
            .collect()
    }

    #[test]
    fn follows_appends_renames_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, "old1\nold2\n").unwrap();
        let mut f = Follower::open(&path, BACKLOG_BYTES).unwrap();
        assert_eq!(lines(f.poll().unwrap()), ["old1", "old2"]);
        let mut w = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        write!(w, "a\npart").unwrap();
        assert_eq!(lines(f.poll().unwrap()), ["a"]);
        write!(w, "ial\nlast-of-old\n").unwrap();
        // Rotation as the daemon does it: rename, then a new file.
        std::fs::rename(&path, dir.path().join("events.jsonl.1")).unwrap();
        assert_eq!(lines(f.poll().unwrap()), ["partial", "last-of-old"]);
        std::fs::write(&path, "new1\n").unwrap();
        assert_eq!(lines(f.poll().unwrap()), ["new1"]);
        assert_eq!(f.rotations, 1);
        // copytruncate.
        std::fs::write(&path, "").unwrap();
        std::fs::write(&path, "t\n").unwrap();
        assert_eq!(lines(f.poll().unwrap()), ["t"]);
        assert_eq!(f.rotations, 2);
    }

    #[test]
    fn starts_at_the_end_or_a_whole_line_within_the_backlog() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e");
        std::fs::write(&path, "first line\nsecond\nthird\n").unwrap();
        let mut f = Follower::open(&path, 0).unwrap();
        assert!(f.poll().unwrap().is_empty());
        let mut f = Follower::open(&path, 10).unwrap();
        assert_eq!(lines(f.poll().unwrap()), ["third"]);
        // A start that falls just after a newline keeps that whole line.
        let mut f = Follower::open(&path, 13).unwrap();
        assert_eq!(lines(f.poll().unwrap()), ["second", "third"]);
        assert!(Follower::open(dir.path(), 0).is_err());
        let e = Follower::open(&dir.path().join("missing"), 0)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("missing") && e.contains("No such file"), "{e}");
    }

    #[test]
    fn an_endless_line_is_dropped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e");
        let mut text = vec![b'x'; MAX_LINE + 10];
        text.extend_from_slice(b"\nok\n");
        std::fs::write(&path, &text).unwrap();
        let mut f = Follower::open(&path, u64::MAX).unwrap();
        let got = f.poll().unwrap();
        assert_eq!(lines(got.clone()).last().map(String::as_str), Some("ok"));
        assert!(got.iter().all(|l| l.len() <= MAX_LINE));
        assert!(f.oversized >= 1);
    }
}
