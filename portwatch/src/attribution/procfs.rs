//! The one reader of /proc: what a process is running (executable, command line, parent,
//! cgroup) and which process holds a socket. Used by the daemon, `who` and `baseline` alike.
//! Everything here is controlled by the process it describes: parsed defensively, read with
//! bounds.
use std::{
    collections::HashMap,
    fs,
    io::Read as _,
    path::{Path, PathBuf},
};

use crate::{attribution::cgroup, facts::ProcessFacts};

/// Longest command line written into an event (bytes of /proc/PID/cmdline); longer ones are cut
/// and marked, so one process cannot make a multi-megabyte log line.
pub const MAX_CMDLINE_BYTES: usize = 8192;
/// Longest cgroup file read: a path of up to 4 KiB per line, and a few lines.
const MAX_CGROUP_BYTES: usize = 64 * 1024;
/// /proc/PID/stat and /proc/PID/status are small; a hostile comm cannot make them large.
const MAX_SMALL_BYTES: usize = 8 * 1024;

/// At most `max` bytes of a /proc file: what a process controls costs a bounded read, however
/// long it made it.
fn read_capped(path: &Path, max: usize) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    fs::File::open(path)?
        .take(max as u64)
        .read_to_end(&mut out)?;
    Ok(out)
}

/// What /proc still has of the process in `dir` (`/proc/PID`); `None` when its directory is
/// gone. User and group are the caller's to fill (the kernel record has them).
pub fn read(dir: &Path) -> Option<ProcessFacts> {
    let stat = read_capped(&dir.join("stat"), MAX_SMALL_BYTES).ok()?;
    let ppid = parse_stat_ppid(&stat);
    let comm = read_comm(dir);
    let parent_comm = ppid.and_then(|p| {
        dir.parent()
            .and_then(|root| read_comm(&root.join(p.to_string())))
    });
    let executable = fs::read_link(dir.join("exe"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned());
    let (command_line, truncated) = match read_capped(&dir.join("cmdline"), MAX_CMDLINE_BYTES + 1) {
        Ok(mut b) => {
            let truncated = b.len() > MAX_CMDLINE_BYTES;
            b.truncate(MAX_CMDLINE_BYTES);
            (split_cmdline(&b), truncated)
        }
        Err(_) => (None, false),
    };
    let cgroup = read_capped(&dir.join("cgroup"), MAX_CGROUP_BYTES)
        .ok()
        .and_then(|t| cgroup::v2_path(&String::from_utf8_lossy(&t)));
    let cg = cgroup.as_deref().map(cgroup::parse).unwrap_or_default();
    Some(ProcessFacts {
        pid: dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0),
        ppid,
        parent_comm,
        comm: comm.unwrap_or_default(),
        executable,
        command_line,
        command_line_truncated: truncated,
        cgroup,
        unit: cg.unit,
        container: cg.container,
        ..ProcessFacts::default()
    })
}

/// /proc/PID/comm without its newline, as the kernel's bytes.
pub fn comm_bytes(dir: &Path) -> Option<Vec<u8>> {
    let mut c = read_capped(&dir.join("comm"), 64).ok()?;
    if c.last() == Some(&b'\n') {
        c.pop();
    }
    Some(c)
}

fn read_comm(dir: &Path) -> Option<String> {
    comm_bytes(dir).map(|c| String::from_utf8_lossy(&c).into_owned())
}

/// The real group id from /proc/PID/status (a socket scan has no kernel record to carry it).
pub fn gid(dir: &Path) -> Option<u32> {
    read_capped(&dir.join("status"), MAX_SMALL_BYTES)
        .ok()
        .and_then(|st| {
            String::from_utf8_lossy(&st)
                .lines()
                .find_map(|l| l.strip_prefix("Gid:"))
                .and_then(|g| g.split_whitespace().next()?.parse().ok())
        })
}

/// The parent pid from /proc/PID/stat. comm (field 2) may hold spaces and parentheses, so parse
/// from the last ')'.
pub fn parse_stat_ppid(stat: &[u8]) -> Option<u32> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let _state = fields.next()?;
    fields.next()?.parse().ok()
}

/// NUL-separated argv; an empty cmdline (kernel thread, zombie) is None.
pub fn split_cmdline(bytes: &[u8]) -> Option<Vec<String>> {
    if bytes.is_empty() {
        return None;
    }
    let trimmed = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    Some(
        trimmed
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// The pids under `proc_root`.
pub fn pids(proc_root: &Path) -> impl Iterator<Item = (u32, PathBuf)> {
    fs::read_dir(proc_root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|d| {
            let pid = d.file_name().to_str()?.parse::<u32>().ok()?;
            Some((pid, d.path()))
        })
}

/// Socket inode → pid of a process holding it, from /proc/*/fd. A socket shared by several
/// processes (a forked server) is given to the lowest pid, usually the parent.
pub fn socket_owners(proc_root: &Path) -> HashMap<u32, u32> {
    let mut owners: HashMap<u32, u32> = HashMap::new();
    for (pid, dir) in pids(proc_root) {
        let Ok(fds) = fs::read_dir(dir.join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = fs::read_link(fd.path())
                && let Some(inode) = target
                    .to_str()
                    .and_then(|t| t.strip_prefix("socket:["))
                    .and_then(|t| t.strip_suffix(']'))
                    .and_then(|t| t.parse().ok())
            {
                owners
                    .entry(inode)
                    .and_modify(|o| *o = (*o).min(pid))
                    .or_insert(pid);
            }
        }
    }
    owners
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ppid_survives_hostile_comm() {
        assert_eq!(parse_stat_ppid(b"123 (a) b) (c) S 77 123 123 0"), Some(77));
        assert_eq!(parse_stat_ppid(b"garbage"), None);
    }

    #[test]
    fn cmdline_splits_on_nul_and_keeps_empty_args() {
        assert_eq!(
            split_cmdline(b"nc\0-l\0\0x\xff\0"),
            Some(vec![
                "nc".into(),
                "-l".into(),
                "".into(),
                "x\u{fffd}".into()
            ])
        );
        assert_eq!(split_cmdline(b""), None);
    }

    #[test]
    fn own_process_is_read_and_a_gone_one_is_not() {
        let me = std::process::id();
        let f = read(&std::path::PathBuf::from(format!("/proc/{me}"))).unwrap();
        assert_eq!(f.pid, me);
        assert!(f.cgroup.is_some());
        assert!(f.ppid.is_some() && f.executable.is_some() && f.command_line.is_some());
        assert!(!f.command_line_truncated);
        assert!(read(Path::new("/proc/999999999")).is_none());
        assert!(gid(Path::new("/proc/self")).is_some());
    }

    #[test]
    fn a_socket_is_owned_by_the_process_holding_it() {
        use std::os::unix::fs::MetadataExt as _;
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let inode = std::fs::metadata(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&u)
        ))
        .unwrap()
        .ino() as u32;
        let owners = socket_owners(Path::new("/proc"));
        assert_eq!(owners.get(&inode), Some(&std::process::id()));
    }
}
