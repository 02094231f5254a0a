//! Files and directories the daemon creates, truncates or trusts: the event log, the alert state,
//! the history, the status socket, the config and policy. A local user must not be able to point
//! one of them elsewhere (a symbolic link, a file of theirs in a directory they can write), so
//! paths are opened without following links, temporary files are created exclusively, and the
//! directories are checked for owner and mode, each refusal a clear error.
use std::{
    fs::{File, OpenOptions},
    io,
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _},
    path::Path,
};

/// Creates `path`'s parent directory, mode 0700, if it does not exist yet (an existing one is left
/// as the operator or systemd made it).
pub fn ensure_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() && !dir.exists() => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir),
        _ => Ok(()),
    }
}

fn refused(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, msg)
}

/// The directory holding `path` belongs to the daemon's user (or root) and no other user can
/// create or replace names in it: not writable by group or others, unless sticky (like /tmp,
/// where only a name's owner may replace it).
pub fn check_parent(path: &Path, what: &str) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let m = std::fs::metadata(dir)?;
    let me = nix::unistd::geteuid().as_raw();
    if m.uid() != me && m.uid() != 0 {
        return Err(refused(format!(
            "{what} directory {} belongs to uid {}, not to this daemon's user (uid {me}) or root: \
             another user could replace the {what}",
            dir.display(),
            m.uid()
        )));
    }
    let mode = m.mode();
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(refused(format!(
            "{what} directory {} is writable by group or others (mode {:04o}): another user could \
             replace the {what}; `chmod go-w {}`",
            dir.display(),
            mode & 0o7777,
            dir.display()
        )));
    }
    Ok(())
}

/// `file`, opened at `path`, is a regular file of the daemon's user (or root).
pub fn check_owned(file: &File, path: &Path, what: &str) -> io::Result<()> {
    let m = file.metadata()?;
    let me = nix::unistd::geteuid().as_raw();
    if !m.file_type().is_file() {
        return Err(refused(format!(
            "{what} {} is not a regular file",
            path.display()
        )));
    }
    if m.uid() != me && m.uid() != 0 {
        return Err(refused(format!(
            "{what} {} belongs to uid {}, not to this daemon's user (uid {me}) or root",
            path.display(),
            m.uid()
        )));
    }
    // A second name for it, which someone else may have made (where protected_hardlinks is off).
    if m.nlink() > 1 {
        return Err(refused(format!(
            "{what} {} has {} hard links; refusing a file with another name",
            path.display(),
            m.nlink()
        )));
    }
    Ok(())
}

/// Opens `path` without following a symbolic link at its last component; a link is an error
/// that says so.
pub fn open_nofollow(options: &mut OpenOptions, path: &Path, what: &str) -> io::Result<File> {
    options
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                refused(format!(
                    "{what} {} is a symbolic link; refusing to follow it",
                    path.display()
                ))
            } else {
                e
            }
        })
}

/// A fresh file at `path` (whatever stood there is removed first; a link is removed, not
/// followed), created exclusively with `mode`.
pub fn create_exclusive(path: &Path, mode: u32) -> io::Result<File> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// A file the daemon trusts (config, policy): a regular file of root or the daemon's user, in a
/// directory no other user can write.
pub fn check_trusted(path: &Path, what: &str) -> io::Result<()> {
    check_parent(path, what)?;
    let f = open_nofollow(OpenOptions::new().read(true), path, what)?;
    check_owned(&f, path, what)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn links_and_writable_directories_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "x").unwrap();
        let link = dir.path().join("log");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = open_nofollow(OpenOptions::new().append(true), &link, "event log").unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(check_parent(&link, "event log").is_ok());
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = check_parent(&link, "event log").unwrap_err();
        assert!(e.to_string().contains("writable by group or others"), "{e}");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(
            check_parent(&link, "event log").is_ok(),
            "sticky, like /tmp"
        );
        // An exclusive create replaces the link itself, never its target.
        create_exclusive(&link, 0o600).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "x");
        assert!(std::fs::symlink_metadata(&link).unwrap().is_file());
    }
}
