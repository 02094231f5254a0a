//! Blinding detection. Every so often the daemon opens a loopback listener and connects to it
//! itself, which must come back through the ring buffer as bind, listen, connect and close events
//! of its own pid. A hook family whose event does not come back (its program was detached, or
//! filtered) is reported as blind: error diagnostics, a `monitoring_blind` alert line, `status`.
use std::net::{TcpListener, TcpStream};

use serde::{Deserialize, Serialize};

use crate::facts::{KernelEvent, Kind, Transport};

/// The initial PID namespace's inode (the kernel's PROC_PID_INIT_INO): records carry pids as
/// that namespace sees them.
const INIT_PID_NS: &str = "pid:[4026531836]";

/// The hook families as `status` and alerts name them.
pub const FAMILIES: [&str; 4] = ["bind", "listen", "connect", "release"];

/// `FAMILIES`' order is `Kind::ALL`'s: close events come from the release family.
fn family(k: Kind) -> usize {
    k.index()
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanaryFigures {
    /// Rounds sent.
    pub rounds: u64,
    /// Rounds whose every event came back.
    pub complete: u64,
    /// Rounds not judged because records were lost meanwhile (their events may be among them).
    pub unjudged: u64,
    /// The loopback sockets could not be made.
    pub failed: u64,
}

pub struct Canary {
    /// The daemon's pid as the kernel's records carry it: `getpid()` in the initial PID
    /// namespace; inside another one (a container, a test's systemd) it is learnt from the
    /// first canary bind, whose port only the daemon can hold.
    own_pid: Option<u32>,
    /// The port and socket cookie of the canary listener of the round under way.
    probe_port: Option<u16>,
    probe_cookie: u64,
    seen: [bool; 4],
    pending: bool,
    /// Families currently believed blind.
    blind: [bool; 4],
    pub figures: CanaryFigures,
    /// Records lost (ring buffer) when the round was sent.
    lost_at_send: u64,
}

/// What a round found.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Families that just went blind.
    Blind(Vec<&'static str>),
    /// Families that see again.
    Recovered(Vec<&'static str>),
}

impl Canary {
    pub fn new() -> Self {
        let initial_ns =
            std::fs::read_link("/proc/self/ns/pid").is_ok_and(|l| l.as_os_str() == INIT_PID_NS);
        Self {
            own_pid: initial_ns.then(std::process::id),
            probe_port: None,
            probe_cookie: 0,
            seen: [false; 4],
            pending: false,
            blind: [false; 4],
            figures: CanaryFigures::default(),
            lost_at_send: 0,
        }
    }

    /// Swallows the daemon's own socket events (they are the canary's); true if it did.
    pub fn absorb(&mut self, ev: &KernelEvent) -> bool {
        if self.own_pid.is_none()
            && ev.kind == Kind::Bind
            && ev.errno.is_none()
            && ev.transport == Transport::Tcp
            && ev.local.ip().is_loopback()
            && Some(ev.local.port()) == self.probe_port
            // Where the record has the socket's cookie, only the daemon's own socket has that
            // one: a user who binds the port once the canary closed it is not taken for it.
            && (ev.cookie == 0 || self.probe_cookie == 0 || ev.cookie == self.probe_cookie)
        {
            tracing::info!(
                pid = ev.pid,
                "the daemon runs in a PID namespace of its own; its pid in the kernel's records learnt from the canary"
            );
            self.own_pid = Some(ev.pid);
        }
        if Some(ev.pid) != self.own_pid {
            return false;
        }
        self.seen[family(ev.kind)] = true;
        true
    }

    pub fn blind_families(&self) -> Vec<&'static str> {
        FAMILIES
            .iter()
            .zip(self.blind)
            .filter_map(|(f, b)| b.then_some(*f))
            .collect()
    }

    /// Judges the previous round (unless records were lost since it was sent), then sends the
    /// next. `lost` is the running ring-buffer loss total.
    pub fn round(&mut self, lost: u64) -> Vec<Verdict> {
        let mut out = Vec::new();
        if self.pending {
            if lost != self.lost_at_send {
                self.figures.unjudged += 1;
            } else {
                if self.seen.iter().all(|s| *s) {
                    self.figures.complete += 1;
                }
                let went: Vec<_> = (0..4)
                    .filter(|&i| !self.seen[i] && !self.blind[i])
                    .collect();
                let back: Vec<_> = (0..4).filter(|&i| self.seen[i] && self.blind[i]).collect();
                for &i in &went {
                    self.blind[i] = true;
                }
                for &i in &back {
                    self.blind[i] = false;
                }
                if !went.is_empty() {
                    out.push(Verdict::Blind(went.iter().map(|&i| FAMILIES[i]).collect()));
                }
                if !back.is_empty() {
                    out.push(Verdict::Recovered(
                        back.iter().map(|&i| FAMILIES[i]).collect(),
                    ));
                }
            }
        }
        self.seen = [false; 4];
        self.lost_at_send = lost;
        self.figures.rounds += 1;
        match send() {
            Ok((port, cookie)) => {
                self.pending = true;
                self.probe_port = Some(port);
                self.probe_cookie = cookie;
            }
            Err(e) => {
                self.pending = false;
                self.figures.failed += 1;
                tracing::warn!(error = %e, "canary sockets on 127.0.0.1 could not be made; blinding goes undetected this round");
            }
        }
        out
    }
}

impl Default for Canary {
    fn default() -> Self {
        Self::new()
    }
}

/// bind + listen, connect, and two closes, on loopback; returns the listener's port and socket
/// cookie (0 where the kernel cannot tell it).
fn send() -> std::io::Result<(u16, u64)> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    let cookie = socket_cookie(&l);
    let c = TcpStream::connect(l.local_addr()?)?;
    drop(c);
    drop(l);
    Ok((port, cookie))
}

fn socket_cookie(s: &impl std::os::fd::AsRawFd) -> u64 {
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: SO_COOKIE writes one u64 into the buffer whose size is passed.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc == 0 { cookie } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_family_whose_event_stops_coming_is_blind_until_it_comes_back() {
        let mut c = Canary::new();
        let me = std::process::id();
        c.own_pid = Some(me);
        let ev = crate::facts::fixture::event_of;
        assert!(c.round(0).is_empty(), "nothing to judge yet");
        for k in [Kind::Bind, Kind::Listen, Kind::Connect, Kind::Close] {
            assert!(c.absorb(&ev(me, k)));
        }
        assert!(
            !c.absorb(&ev(me + 1, Kind::Bind)),
            "others' events are not the canary's"
        );
        assert!(c.round(0).is_empty());
        c.absorb(&ev(me, Kind::Listen));
        c.absorb(&ev(me, Kind::Connect));
        assert_eq!(c.round(0), vec![Verdict::Blind(vec!["bind", "release"])]);
        assert_eq!(c.blind_families(), ["bind", "release"]);
        // Records lost meanwhile: no verdict either way.
        assert!(c.round(5).is_empty());
        assert_eq!(c.figures.unjudged, 1);
        for k in [Kind::Bind, Kind::Listen, Kind::Connect, Kind::Close] {
            c.absorb(&ev(me, k));
        }
        assert_eq!(
            c.round(5),
            vec![Verdict::Recovered(vec!["bind", "release"])]
        );
        assert_eq!(c.figures.complete, 2);
    }

    #[test]
    fn inside_a_pid_namespace_the_pid_is_learnt_from_the_canarys_own_bind() {
        let mut c = Canary::new();
        c.own_pid = None;
        c.probe_port = Some(40_000);
        let mut other = crate::facts::fixture::event(Kind::Bind, Transport::Tcp, "127.0.0.1:41000");
        other.pid = 71;
        assert!(!c.absorb(&other), "another port is not the canary's");
        let mut mine = crate::facts::fixture::event(Kind::Bind, Transport::Tcp, "127.0.0.1:40000");
        mine.pid = 8623;
        assert!(c.absorb(&mine));
        assert!(!c.absorb(&other));
        mine.kind = Kind::Listen;
        assert!(c.absorb(&mine));
    }

    #[test]
    fn a_user_binding_the_port_after_the_canary_is_not_taken_for_it() {
        let mut c = Canary::new();
        c.own_pid = None;
        (c.probe_port, c.probe_cookie) = (Some(40_000), 77);
        let mut theirs =
            crate::facts::fixture::event(Kind::Bind, Transport::Tcp, "127.0.0.1:40000");
        (theirs.pid, theirs.cookie) = (5000, 78);
        assert!(!c.absorb(&theirs));
        assert_eq!(c.own_pid, None);
        let mut mine = theirs.clone();
        (mine.pid, mine.cookie) = (8623, 77);
        assert!(c.absorb(&mine));
    }
}
