//! Directories only root may enter: the status socket's and the tenancy history's.
use std::{io, os::unix::fs::DirBuilderExt as _, path::Path};

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
