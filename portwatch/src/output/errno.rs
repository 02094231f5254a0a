//! errno numbers as the names operators search for (`EADDRINUSE`, not "Address in use").
use nix::errno::Errno;

/// The symbolic name of a positive errno, or `E<number>` when libc does not know it.
pub fn name(errno: i32) -> String {
    match Errno::from_raw(errno) {
        Errno::UnknownErrno => format!("E{errno}"),
        e => format!("{e:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_port_errors() {
        assert_eq!(name(98), "EADDRINUSE");
        assert_eq!(name(99), "EADDRNOTAVAIL");
        assert_eq!(name(111), "ECONNREFUSED");
        assert_eq!(name(13), "EACCES");
        assert_eq!(name(100000), "E100000");
    }
}
