//! The scenario client: makes real socket calls from its own process (so the test knows the pid
//! the daemon must report) and prints what it did as one JSON object on stdout. Shared by the
//! host integration tests and, later, the VM tests.
use std::{
    io::ErrorKind,
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::ExitCode,
};

use serde_json::{Value, json};

fn addr(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| format!("not a socket address: {s}"))
}

fn errno_of(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

fn run(args: &[String]) -> Result<Value, String> {
    // `after-line OP ...`: wait for one line on stdin first (the test changes something, e.g.
    // deletes this executable, before the socket calls happen).
    if args.first().map(String::as_str) == Some("after-line") {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        return run(&args[1..]);
    }
    let op = args.first().map(String::as_str).unwrap_or("");
    let arg = args.get(1).map(String::as_str).unwrap_or("");
    let io = |e: std::io::Error| e.to_string();
    let out = match op {
        "tcp-listen" => {
            let l = TcpListener::bind(addr(arg)?).map_err(io)?;
            json!({"local": l.local_addr().map_err(io)?.to_string()})
        }
        "listen-unbound" => {
            // listen() on a socket never bound: the kernel picks the port in listen itself.
            use socket2::{Domain, Socket, Type};
            let v6 = arg == "v6";
            let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
            let l = Socket::new(domain, Type::STREAM, None).map_err(io)?;
            l.listen(8).map_err(io)?;
            let local = l.local_addr().map_err(io)?.as_socket().ok_or("address")?;
            json!({"local": local.to_string()})
        }
        "udp-bind" => {
            let u = UdpSocket::bind(addr(arg)?).map_err(io)?;
            json!({"local": u.local_addr().map_err(io)?.to_string()})
        }
        "tcp-connect" => {
            let l = TcpListener::bind(addr(arg)?).map_err(io)?;
            let server = l.local_addr().map_err(io)?;
            let c = TcpStream::connect(server).map_err(io)?;
            let (_accepted, _) = l.accept().map_err(io)?;
            json!({"listener": server.to_string(), "local": c.local_addr().map_err(io)?.to_string(),
                   "peer": c.peer_addr().map_err(io)?.to_string()})
        }
        "tcp-connect-reset" => {
            // The client resets its connection (SO_LINGER 0) before the server closes the
            // accepted socket: that socket is closed by the peer first, released after.
            let l = TcpListener::bind(addr(arg)?).map_err(io)?;
            let server = l.local_addr().map_err(io)?;
            let c = socket2::Socket::from(TcpStream::connect(server).map_err(io)?);
            let (accepted, _) = l.accept().map_err(io)?;
            let local = c.local_addr().map_err(io)?.as_socket().ok_or("local")?;
            c.set_linger(Some(std::time::Duration::ZERO)).map_err(io)?;
            drop(c);
            // Until the reset has arrived: a read then fails (ECONNRESET) or ends.
            let mut buf = [0u8; 1];
            let _ = std::io::Read::read(&mut &accepted, &mut buf);
            drop(accepted);
            json!({"listener": server.to_string(), "local": local.to_string()})
        }
        "udp-connect" => {
            let target = addr(arg)?;
            // std's UdpSocket always binds first; here connect must pick the port itself, so the
            // socket is created unbound through libc.
            let u = unbound_udp(target.is_ipv6())?;
            u.connect(target).map_err(io)?;
            json!({"local": u.local_addr().map_err(io)?.to_string(), "peer": target.to_string()})
        }
        "bind-in-use" => {
            let first = TcpListener::bind(addr(arg)?).map_err(io)?;
            let taken = first.local_addr().map_err(io)?;
            match TcpListener::bind(taken) {
                Ok(_) => return Err(format!("second bind to {taken} unexpectedly succeeded")),
                Err(e) => json!({"local": taken.to_string(), "errno": errno_of(&e)}),
            }
        }
        // listen(2) on a connected TCP socket: EINVAL.
        "listen-connected" => {
            use std::os::fd::AsRawFd;
            let l = TcpListener::bind(addr(arg)?).map_err(io)?;
            let server = l.local_addr().map_err(io)?;
            let c = TcpStream::connect(server).map_err(io)?;
            // SAFETY: listen(2) on a socket this process owns.
            if unsafe { libc::listen(c.as_raw_fd(), 1) } == 0 {
                return Err("listen on a connected socket unexpectedly succeeded".into());
            }
            let e = std::io::Error::last_os_error();
            json!({"listener": server.to_string(), "local": c.local_addr().map_err(io)?.to_string(),
                   "errno": errno_of(&e)})
        }
        // bind(2) again on a socket already bound: EINVAL, for a call that named no port.
        "rebind-tcp" | "rebind-udp" => {
            use socket2::{Domain, Socket, Type};
            let requested = addr(arg)?;
            let ty = if op == "rebind-tcp" {
                Type::STREAM
            } else {
                Type::DGRAM
            };
            let s = Socket::new(Domain::for_address(requested), ty, None).map_err(io)?;
            s.bind(&requested.into()).map_err(io)?;
            let local = s
                .local_addr()
                .map_err(io)?
                .as_socket()
                .ok_or("bound to a non-inet address")?;
            match s.bind(&requested.into()) {
                Ok(()) => return Err(format!("second bind to {requested} unexpectedly succeeded")),
                Err(e) => json!({"local": local.to_string(), "requested": requested.to_string(),
                                 "errno": errno_of(&e)}),
            }
        }
        "connect-refused" => {
            let port = {
                let probe = TcpListener::bind(addr(arg)?).map_err(io)?;
                probe.local_addr().map_err(io)?
            };
            match TcpStream::connect(port) {
                Ok(_) => return Err(format!("connect to closed {port} unexpectedly succeeded")),
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                    json!({"peer": port.to_string(), "errno": errno_of(&e)})
                }
                Err(e) => return Err(format!("connect to {port}: {e}")),
            }
        }
        "connect-nonblocking" => {
            // As an event loop connects: the call returns EINPROGRESS, the refusal comes later
            // (SO_ERROR once the socket is writable).
            use socket2::{Domain, Socket, Type};
            let port = {
                let probe = TcpListener::bind(addr(arg)?).map_err(io)?;
                probe.local_addr().map_err(io)?
            };
            let s = Socket::new(Domain::for_address(port), Type::STREAM, None).map_err(io)?;
            s.set_nonblocking(true).map_err(io)?;
            let started = match s.connect(&port.into()) {
                Ok(()) => 0,
                Err(e) => errno_of(&e),
            };
            let mut fds = [libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(&s),
                events: libc::POLLOUT,
                revents: 0,
            }];
            // SAFETY: poll(2) on one descriptor this function owns.
            unsafe { libc::poll(fds.as_mut_ptr(), 1, 5000) };
            let outcome = match s.take_error().map_err(io)? {
                Some(e) => errno_of(&e),
                None => 0,
            };
            let local = s
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .map(|a| a.to_string());
            json!({"peer": port.to_string(), "call_errno": started, "so_error": outcome,
                   "local": local})
        }
        "connect-nonblocking-ok" => {
            // An event loop's connect to a listener: EINPROGRESS, then writable with no error.
            // The listener accepts it; the accepted socket's release is no port event.
            use socket2::{Domain, Socket, Type};
            let l = TcpListener::bind(addr(arg)?).map_err(io)?;
            let server = l.local_addr().map_err(io)?;
            let s = Socket::new(Domain::for_address(server), Type::STREAM, None).map_err(io)?;
            s.set_nonblocking(true).map_err(io)?;
            let started = match s.connect(&server.into()) {
                Ok(()) => 0,
                Err(e) => errno_of(&e),
            };
            let outcome = wait_connected(&s, 5000)?;
            // As libuv and APR do: connect() again, to learn how it went. No new connect.
            let again = match s.connect(&server.into()) {
                Ok(()) => 0,
                Err(e) => errno_of(&e),
            };
            let (accepted, _) = l.accept().map_err(io)?;
            drop(accepted);
            let local = local_of(&s);
            drop(s);
            json!({"listener": server.to_string(), "local": local, "call_errno": started,
                   "so_error": outcome, "again_errno": again})
        }
        "connect-abort" => {
            // A non-blocking connect whose SYN is dropped (as in connect-timeout), closed by its
            // owner while the handshake is still under way.
            use socket2::{Domain, Socket, Type};
            let (l, filler, server) = syn_dropping_listener()?;
            let s = Socket::new(Domain::IPV4, Type::STREAM, None).map_err(io)?;
            s.set_nonblocking(true).map_err(io)?;
            let started = match s.connect(&server.into()) {
                Ok(()) => 0,
                Err(e) => errno_of(&e),
            };
            let local = local_of(&s);
            drop(s);
            drop((filler, l));
            json!({"listener": server.to_string(), "local": local, "call_errno": started})
        }
        "connect-self" => {
            // A non-blocking connect of a socket to its own address: a simultaneous open, whose
            // handshake the kernel ends as it ends an accepted connection's.
            use socket2::{Domain, Socket, Type};
            let s = Socket::new(Domain::IPV4, Type::STREAM, None).map_err(io)?;
            s.bind(&addr(arg)?.into()).map_err(io)?;
            let me = s
                .local_addr()
                .map_err(io)?
                .as_socket()
                .ok_or("own address")?;
            s.set_nonblocking(true).map_err(io)?;
            let started = match s.connect(&me.into()) {
                Ok(()) => 0,
                Err(e) => errno_of(&e),
            };
            let outcome = wait_connected(&s, 5000)?;
            json!({"local": me.to_string(), "call_errno": started, "so_error": outcome})
        }
        "connect-timeout" => {
            // A network namespace of our own, where a SYN is dropped: a listener whose accept
            // queue is full (backlog 0, one connection never accepted) drops every further SYN.
            // With one SYN retry the non-blocking connect times out after about 3 s.
            use socket2::{Domain, Socket, Type};
            let (l, filler, server) = syn_dropping_listener()?;
            let s = Socket::new(Domain::IPV4, Type::STREAM, None).map_err(io)?;
            set_syncnt(&s, 1)?;
            s.set_nonblocking(true).map_err(io)?;
            let started = match s.connect(&server.into()) {
                Ok(()) => 0,
                Err(e) => errno_of(&e),
            };
            let began = std::time::Instant::now();
            let outcome = wait_connected(&s, 15000)?;
            let local = local_of(&s);
            drop((s, filler, l));
            json!({"listener": server.to_string(), "local": local, "call_errno": started,
                   "so_error": outcome, "waited_ms": began.elapsed().as_millis() as u64})
        }
        "connect-parallel" => {
            // `N`: N threads, each a blocking connect that hangs on a dropped SYN (as in
            // connect-timeout) for about 3 s, all in flight at once.
            use socket2::{Domain, Socket, Type};
            let n: usize = arg.parse().map_err(|_| format!("not a count: {arg}"))?;
            let (l, filler, server) = syn_dropping_listener()?;
            let threads: Vec<_> = (0..n)
                .map(|_| {
                    std::thread::spawn(move || {
                        let s = Socket::new(Domain::IPV4, Type::STREAM, None).ok()?;
                        set_syncnt(&s, 1).ok()?;
                        s.connect(&server.into())
                            .err()
                            .and_then(|e| e.raw_os_error())
                    })
                })
                .collect();
            let errnos: Vec<Option<i32>> = threads
                .into_iter()
                .map(|t| t.join().ok().flatten())
                .collect();
            let timed_out = errnos
                .iter()
                .filter(|e| **e == Some(libc::ETIMEDOUT))
                .count();
            drop((filler, l));
            json!({"connects": n, "timed_out": timed_out, "listener": server.to_string()})
        }
        "udp-sendto" => {
            // DNS and statsd clients: sendto() on sockets never bound, over IPv4 and IPv6 (the
            // kernel picks each port), and one on a socket that was bound (no implicit bind).
            let v4 = unbound_udp(false)?;
            v4.send_to(b"x", "127.0.0.1:9").map_err(io)?;
            v4.send_to(b"y", "127.0.0.1:9").map_err(io)?;
            let v6 = unbound_udp(true)?;
            v6.send_to(b"x", "[::1]:9").map_err(io)?;
            let bound = UdpSocket::bind("127.0.0.1:0").map_err(io)?;
            bound.send_to(b"z", "127.0.0.1:9").map_err(io)?;
            let out = json!({"local4": v4.local_addr().map_err(io)?.to_string(),
                             "local6": v6.local_addr().map_err(io)?.to_string(),
                             "bound": bound.local_addr().map_err(io)?.to_string()});
            if arg == "hold" {
                std::mem::forget((v4, v6, bound));
            }
            out
        }
        "udp-sendto-again" => {
            // An IPv6 socket sending to an IPv4-mapped address (its port is an IPv6 socket's),
            // and a socket that connect(AF_UNSPEC) made give its autobound port back, so that
            // its next send takes another.
            let v6 = unbound_udp(true)?;
            v6.send_to(b"x", "[::ffff:127.0.0.1]:9").map_err(io)?;
            let mapped = v6.local_addr().map_err(io)?.to_string();
            drop(v6);
            let u = unbound_udp(false)?;
            u.send_to(b"x", "127.0.0.1:9").map_err(io)?;
            let first = u.local_addr().map_err(io)?.to_string();
            u.connect("127.0.0.1:9").map_err(io)?;
            disconnect(&u)?;
            u.send_to(b"y", "127.0.0.1:9").map_err(io)?;
            let second = u.local_addr().map_err(io)?.to_string();
            json!({"mapped": mapped, "first": first, "second": second})
        }
        "udp-disconnect-bind" => {
            // Connected while unbound (the kernel picks its port), disconnected (the port goes
            // back, unseen by any hook), then bound to a port it names: that bind makes the
            // socket a listener, whatever the socket's past.
            let named = {
                let probe = std::net::UdpSocket::bind("127.0.0.1:0").map_err(io)?;
                probe.local_addr().map_err(io)?.port()
            };
            let u = unbound_udp(false)?;
            u.connect("127.0.0.1:9").map_err(io)?;
            let connected = u.local_addr().map_err(io)?.to_string();
            disconnect(&u)?;
            let addr = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: named.to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: bind(2) with a valid sockaddr_in on a socket we own.
            if unsafe {
                libc::bind(
                    std::os::fd::AsRawFd::as_raw_fd(&u),
                    (&raw const addr).cast(),
                    size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            } != 0
            {
                return Err(format!("bind: {}", std::io::Error::last_os_error()));
            }
            json!({"connected": connected, "named": named, "local": u.local_addr().map_err(io)?.to_string()})
        }
        "thread-churn" => {
            // Threads started and joined one after another: each a fork record that no exec or
            // exit record follows.
            let n: u64 = arg.parse().map_err(|_| format!("not a count: {arg}"))?;
            for _ in 0..n {
                std::thread::spawn(|| ())
                    .join()
                    .map_err(|_| "thread panicked")?;
            }
            json!({"threads": n})
        }
        "udp-storm" => {
            let n: u64 = arg.parse().map_err(|_| format!("not a count: {arg}"))?;
            for _ in 0..n {
                UdpSocket::bind("127.0.0.1:0").map_err(io)?;
            }
            json!({"binds": n, "closes": n})
        }
        "rename" => {
            // The new comm is given in hex so any byte (quote, newline, invalid UTF-8) can be used.
            set_comm(&hex(arg)?)?;
            let l = TcpListener::bind("127.0.0.1:0").map_err(io)?;
            json!({"local": l.local_addr().map_err(io)?.to_string()})
        }
        "udp-named-storm" => {
            // `START COUNT`: a UDP socket bound to each named port, closed at once: every one a
            // listener (a named port) of its own, so every one a new alert key.
            let start: u16 = arg.parse().map_err(|_| format!("not a port: {arg}"))?;
            let count: u16 = args
                .get(2)
                .and_then(|c| c.parse().ok())
                .ok_or("not a count")?;
            let mut bound = 0u32;
            for p in start..start.saturating_add(count) {
                if UdpSocket::bind(("127.0.0.1", p)).is_ok() {
                    bound += 1;
                }
            }
            json!({"bound": bound})
        }
        "hold-as" => {
            // `HEXCOMM ADDR`: renamed (any bytes), a TCP listener on ADDR held until stdin closes.
            set_comm(&hex(arg)?)?;
            let a = args.get(2).ok_or("no address")?;
            let l = TcpListener::bind(addr(a)?).map_err(io)?;
            let v = json!({"local": l.local_addr().map_err(io)?.to_string()});
            std::mem::forget(l);
            v
        }
        "listen-exec" => {
            // A listener, the report, then exec /bin/cat (which exits when stdin closes): the
            // listen event must name this image, not the one /proc shows by then.
            let l = TcpListener::bind(addr(arg)?).map_err(io)?;
            let v = json!({"local": l.local_addr().map_err(io)?.to_string(),
                           "executable": std::env::current_exe().map_err(io)?,
                           "pid": std::process::id()});
            println!("{v}");
            use std::os::unix::process::CommandExt as _;
            let e = std::process::Command::new("/bin/cat").exec();
            return Err(format!("exec /bin/cat: {e}"));
        }
        "hold-listen" => {
            // The listener stays open until the process exits (when stdin closes).
            let l = TcpListener::bind(addr(arg)?).map_err(io)?;
            let v = json!({"local": l.local_addr().map_err(io)?.to_string()});
            std::mem::forget(l);
            v
        }
        "exhaust-ports" => {
            // A network namespace of our own with an ephemeral range of two ports: the third
            // connect to one destination finds no free local port (EADDRNOTAVAIL).
            // SAFETY: unshare(2) on this single-threaded process.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(format!("unshare: {}", std::io::Error::last_os_error()));
            }
            let up = std::process::Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status()
                .map_err(io)?;
            if !up.success() {
                return Err("ip link set lo up failed".into());
            }
            std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "40000 40001").map_err(io)?;
            let l = TcpListener::bind("127.0.0.1:5000").map_err(io)?;
            let mut held = Vec::new();
            let mut failed = None;
            for _ in 0..5 {
                match TcpStream::connect("127.0.0.1:5000") {
                    Ok(c) => held.push(c),
                    Err(e) => {
                        failed = Some(errno_of(&e));
                        break;
                    }
                }
            }
            drop(l);
            json!({"connected": held.len(), "errno": failed, "peer": "127.0.0.1:5000"})
        }
        "hold-udp" => {
            // A UDP socket bound to ADDR, held until stdin closes.
            let u = UdpSocket::bind(addr(arg)?).map_err(io)?;
            let v = json!({"local": u.local_addr().map_err(io)?.to_string()});
            std::mem::forget(u);
            v
        }
        "hold-in-flight" => {
            // A TCP listener on ADDR whose only descriptor is sent over a Unix socket pair and
            // closed before anyone receives it: the kernel holds it (in flight), no process's
            // descriptor table does.
            let l = TcpListener::bind(addr(arg)?).map_err(io)?;
            let v = json!({"local": l.local_addr().map_err(io)?.to_string()});
            let (a, b) = std::os::unix::net::UnixStream::pair().map_err(io)?;
            send_fd(&a, std::os::fd::AsRawFd::as_raw_fd(&l))?;
            drop(l);
            std::mem::forget((a, b));
            v
        }
        "fill-range" => {
            // `HELD LOW HIGH`: in a network namespace of our own whose ephemeral range is
            // LOW-HIGH, HELD connections to a listener on 127.0.0.1:5000 stay open while a
            // thread connects and resets another every 20 ms (the churn).
            let held: usize = arg.parse().map_err(|_| "HELD: a number")?;
            let range = format!(
                "{} {}",
                args.get(2).ok_or("no LOW")?,
                args.get(3).ok_or("no HIGH")?
            );
            own_netns()?;
            std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", &range).map_err(io)?;
            let l = TcpListener::bind("127.0.0.1:5000").map_err(io)?;
            let mut conns = Vec::new();
            for _ in 0..held {
                conns.push(TcpStream::connect("127.0.0.1:5000").map_err(io)?);
            }
            let netns = std::fs::metadata("/proc/self/ns/net")
                .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
                .map_err(io)?;
            std::thread::spawn(move || {
                let _keep = (l, conns);
                loop {
                    if let Ok(c) = TcpStream::connect("127.0.0.1:5000") {
                        // SO_LINGER 0: closed with a reset, so no TIME_WAIT piles up.
                        let _ =
                            socket2::SockRef::from(&c).set_linger(Some(std::time::Duration::ZERO));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
            });
            json!({"netns": netns, "held": held})
        }
        "exit-fast" => {
            let l = TcpListener::bind(addr(arg)?).map_err(io)?;
            let v = json!({"pid": std::process::id(), "local": l.local_addr().map_err(io)?.to_string()});
            println!("{v}");
            // Leave without closing anything: the kernel releases the socket during exit.
            std::process::exit(0);
        }
        _ => return Err(format!("unknown scenario `{op}`")),
    };
    Ok(out)
}

/// Sends `fd` over `sock` (SCM_RIGHTS).
fn send_fd(sock: &std::os::unix::net::UnixStream, fd: libc::c_int) -> Result<(), String> {
    use std::os::fd::AsRawFd as _;
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(size_of::<libc::c_int>() as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: msghdr is plain data; every pointer in it refers to a live local buffer.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: the control buffer is CMSG_SPACE(sizeof(int)) bytes, enough for one header and
    // one descriptor; sendmsg(2) reads only the buffers set above.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<libc::c_int>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), fd);
        if libc::sendmsg(sock.as_raw_fd(), &msg, 0) != 1 {
            return Err(format!("sendmsg: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Sets this process's comm to `bytes` (at most 15 of them are kept).
fn set_comm(bytes: &[u8]) -> Result<(), String> {
    let mut name = [0u8; 16];
    let n = bytes.len().min(15);
    name[..n].copy_from_slice(&bytes[..n]);
    // SAFETY: PR_SET_NAME reads a NUL-terminated buffer of at most 16 bytes.
    if unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0, 0, 0) } != 0 {
        return Err("prctl(PR_SET_NAME) failed".into());
    }
    Ok(())
}

/// connect(AF_UNSPEC): a UDP socket drops its peer, and gives back a port the kernel picked.
fn disconnect(u: &std::net::UdpSocket) -> Result<(), String> {
    let unspec = libc::sockaddr {
        sa_family: libc::AF_UNSPEC as libc::sa_family_t,
        sa_data: [0; 14],
    };
    // SAFETY: connect(2) with a zeroed AF_UNSPEC address on a socket we own.
    if unsafe {
        libc::connect(
            std::os::fd::AsRawFd::as_raw_fd(u),
            &unspec,
            size_of::<libc::sockaddr>() as libc::socklen_t,
        )
    } != 0
    {
        return Err(format!("disconnect: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn unbound_udp(v6: bool) -> Result<UdpSocket, String> {
    use std::os::fd::FromRawFd;
    let domain = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    // SAFETY: plain socket(2); the fd is owned by the UdpSocket from here on.
    let fd = unsafe { libc::socket(domain, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    // SAFETY: fd is a fresh, valid socket.
    Ok(unsafe { UdpSocket::from_raw_fd(fd) })
}

fn hex(s: &str) -> Result<Vec<u8>, String> {
    if !s.len().is_multiple_of(2) {
        return Err(format!("odd-length hex: {s}"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|_| format!("bad hex: {s}")))
        .collect()
}

/// In a network namespace of this process's own, a loopback listener that drops every SYN: its
/// accept queue (backlog 0) is full with one connection never accepted. Returns the listener, that
/// connection and the listener's address.
fn syn_dropping_listener() -> Result<(socket2::Socket, TcpStream, SocketAddr), String> {
    use socket2::{Domain, Socket, Type};
    let io = |e: std::io::Error| e.to_string();
    own_netns()?;
    let l = Socket::new(Domain::IPV4, Type::STREAM, None).map_err(io)?;
    l.bind(&addr("127.0.0.1:0")?.into()).map_err(io)?;
    l.listen(0).map_err(io)?;
    let server = l
        .local_addr()
        .map_err(io)?
        .as_socket()
        .ok_or("listener address")?;
    let filler = TcpStream::connect(server).map_err(io)?;
    Ok((l, filler, server))
}

/// How many times a connect sends its SYN again before it gives up (TCP_SYNCNT).
fn set_syncnt(s: &socket2::Socket, n: libc::c_int) -> Result<(), String> {
    // SAFETY: setsockopt(2) with a c_int option value on a socket the caller owns.
    if unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(s),
            libc::IPPROTO_TCP,
            libc::TCP_SYNCNT,
            (&raw const n).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    } != 0
    {
        return Err(format!("TCP_SYNCNT: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Waits up to `ms` for a non-blocking connect to end: its SO_ERROR (0: connected).
fn wait_connected(s: &socket2::Socket, ms: i32) -> Result<i32, String> {
    let mut fds = [libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(s),
        events: libc::POLLOUT,
        revents: 0,
    }];
    // SAFETY: poll(2) on one descriptor the caller owns.
    if unsafe { libc::poll(fds.as_mut_ptr(), 1, ms) } != 1 {
        return Err(format!("the connect did not end within {ms} ms"));
    }
    Ok(match s.take_error().map_err(|e| e.to_string())? {
        Some(e) => errno_of(&e),
        None => 0,
    })
}

fn local_of(s: &socket2::Socket) -> Option<String> {
    s.local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .map(|a| a.to_string())
}

/// Moves this (single-threaded) process into a network namespace of its own, loopback up.
fn own_netns() -> Result<(), String> {
    // SAFETY: unshare(2) on this single-threaded process.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(format!("unshare: {}", std::io::Error::last_os_error()));
    }
    // SIOCGIFFLAGS/SIOCSIFFLAGS on "lo": no `ip` binary needed (the VM has none).
    // SAFETY: a socket and two ioctls on a zeroed, NUL-terminated ifreq.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        if fd < 0 {
            return Err(format!("socket: {}", std::io::Error::last_os_error()));
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        req.ifr_name[..2].copy_from_slice(&[b'l' as libc::c_char, b'o' as libc::c_char]);
        let ok = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) == 0 && {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) == 0
        };
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if !ok {
            return Err(format!("bringing lo up: {err}"));
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    // Extra arguments may be deliberately invalid UTF-8 (hostile command-line tests).
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    match run(&args) {
        Ok(mut v) => {
            v["pid"] = json!(std::process::id());
            v["netns"] = json!(
                std::fs::metadata("/proc/self/ns/net")
                    .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
                    .unwrap_or(0)
            );
            println!("{v}");
            // Every socket is closed by now. Stay alive until stdin closes, so the test decides
            // when this process disappears from /proc.
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("portwatch-scenario: {e}");
            ExitCode::FAILURE
        }
    }
}
