//! Load generator for `cargo xtask bench`: port-event storms from one process, at full speed or a
//! target rate. Reports operations/s and exactly how many of each event (and syscall) it caused,
//! as one JSON object on stdout.
use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    process::ExitCode,
    thread,
    time::{Duration, Instant},
};

use serde_json::json;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Workload {
    /// socket, bind(127.0.0.1:0), close: a bind and a close event.
    TcpBind,
    UdpBind,
    /// connect to a loopback listener and close with RST (no TIME_WAIT pile-up): a connect and
    /// the client's close per operation (an accepted socket's release is no port event).
    TcpConnect,
    /// bind, listen, close: short-lived listeners.
    ListenChurn,
    /// getppid(2): a syscall that has nothing to do with ports, for the tax every syscall on the
    /// host pays.
    Getppid,
    /// read(2) of one byte from /dev/zero: the same, with a file descriptor.
    ReadZero,
}

impl Workload {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "tcp-bind" => Self::TcpBind,
            "udp-bind" => Self::UdpBind,
            "tcp-connect" => Self::TcpConnect,
            "listen-churn" => Self::ListenChurn,
            "getppid" => Self::Getppid,
            "read-zero" => Self::ReadZero,
            _ => return None,
        })
    }
}

/// Paces the loop to `rate` operations per second (None: as fast as possible).
struct Pacer {
    start: Instant,
    rate: Option<f64>,
}

impl Pacer {
    fn wait(&self, done: u64) {
        if let Some(rate) = self.rate {
            let due = self.start + Duration::from_secs_f64(done as f64 / rate);
            let now = Instant::now();
            if due > now + Duration::from_micros(200) {
                thread::sleep(due - now);
            }
        }
    }
}

fn rst_on_close(s: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt with a correctly sized linger struct on a valid socket.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

fn tcp_bound() -> std::io::Result<()> {
    // SAFETY: socket/bind/close on a fresh fd we own.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be(),
            },
            sin_zero: [0; 8],
        };
        let r = libc::bind(
            fd,
            (&addr as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as u32,
        );
        libc::close(fd);
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn run(workload: Workload, ops: u64, rate: Option<f64>) -> std::io::Result<serde_json::Value> {
    let local: SocketAddr = "127.0.0.1:0"
        .parse()
        .map_err(|_| std::io::ErrorKind::InvalidInput)?;
    let (mut bind, mut listen, mut connect, mut close) = (0u64, 0u64, 0u64, 0u64);
    let mut server = None;
    if workload == Workload::TcpConnect {
        let l = TcpListener::bind(local)?;
        // std listens with a backlog of 128; a full accept queue drops SYNs and stalls the client
        // for a 1 s retransmit. Raise it (calling listen again only updates the backlog).
        // SAFETY: listen(2) on a listening socket we own.
        unsafe { libc::listen(l.as_raw_fd(), 4096) };
        let addr = l.local_addr()?;
        (bind, listen) = (1, 1);
        let ops_to_accept = ops;
        let acceptor = thread::spawn(move || {
            for _ in 0..ops_to_accept {
                if l.accept().is_err() {
                    break;
                }
            }
        });
        server = Some((addr, acceptor));
    }
    let zero = match workload {
        Workload::ReadZero => Some(std::fs::File::open("/dev/zero")?),
        _ => None,
    };
    let pacer = Pacer {
        start: Instant::now(),
        rate,
    };
    for i in 0..ops {
        pacer.wait(i);
        match workload {
            Workload::TcpBind => {
                tcp_bound()?;
                bind += 1;
                close += 1;
            }
            Workload::UdpBind => {
                drop(UdpSocket::bind(local)?);
                bind += 1;
                close += 1;
            }
            Workload::TcpConnect => {
                let (addr, _) = server.as_ref().ok_or(std::io::ErrorKind::NotConnected)?;
                let s = TcpStream::connect(addr)?;
                rst_on_close(&s);
                drop(s);
                connect += 1;
                close += 1;
            }
            Workload::ListenChurn => {
                drop(TcpListener::bind(local)?);
                bind += 1;
                listen += 1;
                close += 1;
            }
            // SAFETY: getppid(2) takes nothing and cannot fail.
            Workload::Getppid => unsafe {
                libc::getppid();
            },
            Workload::ReadZero => {
                let mut byte = 0u8;
                let fd = zero.as_ref().map_or(-1, |f| f.as_raw_fd());
                // SAFETY: a one-byte read into a local.
                if unsafe { libc::read(fd, (&raw mut byte).cast(), 1) } != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
        }
    }
    let seconds = pacer.start.elapsed().as_secs_f64();
    if let Some((_, acceptor)) = server.take() {
        let _ = acceptor.join();
        close += 1; // the listener, dropped with the acceptor thread
    }
    Ok(json!({
        "pid": std::process::id(),
        "ops": ops,
        "seconds": seconds,
        "ops_per_sec": ops as f64 / seconds,
        "ns_per_op": seconds * 1e9 / ops.max(1) as f64,
        "events": {"bind": bind, "listen": listen, "connect": connect, "close": close,
                   "total": bind + listen + connect + close},
        "syscalls": {"bind": bind, "listen": listen, "connect": connect},
    }))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: portwatch-loadgen tcp-bind|udp-bind|tcp-connect|listen-churn|getppid|read-zero OPS [--rate OPS_PER_SEC]";
    let (Some(workload), Some(ops)) = (
        args.first().and_then(|w| Workload::parse(w)),
        args.get(1).and_then(|n| n.parse::<u64>().ok()),
    ) else {
        eprintln!("{usage}");
        return ExitCode::from(2);
    };
    let rate = match args.get(2).map(String::as_str) {
        Some("--rate") => match args.get(3).and_then(|r| r.parse::<f64>().ok()) {
            Some(r) if r > 0.0 => Some(r),
            _ => {
                eprintln!("{usage}");
                return ExitCode::from(2);
            }
        },
        Some(_) => {
            eprintln!("{usage}");
            return ExitCode::from(2);
        }
        None => None,
    };
    match run(workload, ops, rate) {
        Ok(mut report) => {
            report["workload"] = json!(args[0]);
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("portwatch-loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}
