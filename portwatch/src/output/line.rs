//! The portwatch format's port lines (bind, listen, connect, close, connect_result), written
//! straight into the sink's buffer: byte for byte what serde makes of `schema::Line` with a
//! `schema::PortRecord` body (the tests hold the two together), without serde's escaping of
//! every key and its map machinery. Port lines are nearly all the daemon writes, and writing
//! them through serde was the event loop's largest cost; the other lines (status, alert, loss,
//! holding) and the other formats still go through serde.
use super::schema::{Header, PortRecord};

/// Appends the line of `header` and `r` (without its newline). `host` is `header.host` as
/// serde writes it, made once: it never changes.
pub fn write_port(out: &mut Vec<u8>, header: &Header<'_>, host: &str, r: &PortRecord<'_>) {
    let mut n = itoa::Buffer::new();
    out.extend_from_slice(b"{\"schema\":");
    out.extend_from_slice(n.format(header.schema).as_bytes());
    out.extend_from_slice(b",\"timestamp\":");
    name(out, header.timestamp);
    out.extend_from_slice(b",\"seq\":");
    out.extend_from_slice(n.format(header.seq).as_bytes());
    out.extend_from_slice(b",\"host\":");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b",\"event\":");
    name(out, header.event);
    out.extend_from_slice(b",\"outcome\":");
    name(out, r.outcome);
    if let Some(error) = &r.error {
        out.extend_from_slice(b",\"error\":");
        string(out, error);
    }
    if let Some(errno) = r.errno {
        out.extend_from_slice(b",\"errno\":");
        out.extend_from_slice(n.format(errno).as_bytes());
    }
    if let Some(d) = r.duration_ns {
        out.extend_from_slice(b",\"duration_ns\":");
        out.extend_from_slice(n.format(d).as_bytes());
    }
    if r.implicit {
        out.extend_from_slice(b",\"implicit\":true");
    }
    let net = r.network;
    out.extend_from_slice(b",\"network\":{\"transport\":");
    name(out, net.transport.as_str());
    out.extend_from_slice(b",\"type\":");
    name(out, net.ip_type.as_str());
    out.extend_from_slice(b",\"local\":");
    endpoint(out, &net.local);
    if let Some(peer) = &net.peer {
        out.extend_from_slice(b",\"peer\":");
        endpoint(out, peer);
    }
    out.extend_from_slice(b",\"netns\":");
    match net.netns {
        Some(ns) => out.extend_from_slice(n.format(ns).as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b"},\"port\":{\"class\":");
    name(out, r.port.class.as_str());
    out.extend_from_slice(b",\"ephemeral\":");
    boolean(out, r.port.ephemeral);
    if let Some(requested) = r.port.requested {
        out.extend_from_slice(b",\"requested\":");
        boolean(out, requested);
    }
    out.extend_from_slice(b"},\"process\":");
    out.extend_from_slice(r.process.get().as_bytes());
    out.extend_from_slice(b",\"probe\":");
    name(out, r.probe);
    out.extend_from_slice(b",\"origin\":");
    name(out, r.origin.as_str());
    if let Some(cookie) = r.cookie {
        out.extend_from_slice(b",\"cookie\":");
        out.extend_from_slice(n.format(cookie).as_bytes());
    }
    out.push(b'}');
}

fn endpoint(out: &mut Vec<u8>, e: &crate::facts::Endpoint) {
    out.extend_from_slice(b"{\"address\":\"");
    out.extend_from_slice(e.address_text().as_str().as_bytes());
    out.extend_from_slice(b"\",\"port\":");
    out.extend_from_slice(itoa::Buffer::new().format(e.port).as_bytes());
    out.push(b'}');
}

/// A JSON string of the daemon's own: a name from its tables (event, outcome, probe, ...) or a
/// time it formatted, none of which has anything to escape. Checked in debug builds; the
/// tests write every one the daemon has.
fn name(out: &mut Vec<u8>, s: &str) {
    debug_assert!(!needs_escape(s), "{s:?}");
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

fn needs_escape(s: &str) -> bool {
    s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\')
}

fn boolean(out: &mut Vec<u8>, b: bool) {
    out.extend_from_slice(if b { b"true" } else { b"false" });
}

/// A JSON string, escaped as serde_json escapes it where it needs to be.
fn string(out: &mut Vec<u8>, s: &str) {
    if needs_escape(s) {
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
        return;
    }
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, SocketAddr};

    use proptest::prelude::*;

    use super::*;
    use crate::{
        facts::{Kind, Origin, PortClass, PortInfo, ProcessFacts, Transport, fixture},
        output::schema::{Host, Line},
    };

    /// Every probe name a port event can carry: the kernel's, and the start-up scan's.
    fn probes() -> Vec<&'static str> {
        (0..=u8::MAX)
            .filter_map(|id| crate::kernel::decode::probe_name(id).ok())
            .chain(["sock_diag"])
            .collect()
    }

    #[test]
    fn no_name_of_the_daemons_needs_escaping() {
        let mut names = probes();
        names.extend(Kind::ALL.map(Kind::as_str));
        names.extend([
            "success",
            "failure",
            "in_progress",
            "aborted",
            "tcp",
            "udp",
            "ipv4",
            "ipv6",
        ]);
        names.extend([
            "well-known",
            "registered",
            "dynamic",
            "kernel",
            "snapshot",
            "reconcile",
        ]);
        assert!(names.len() > 20, "{names:?}");
        for n in names {
            assert!(!needs_escape(n), "{n:?}");
        }
    }

    fn kind() -> impl Strategy<Value = Kind> {
        prop::sample::select(Kind::ALL.to_vec())
    }

    fn address() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(IpAddr::from),
            any::<[u8; 16]>().prop_map(IpAddr::from),
            any::<[u8; 4]>()
                .prop_map(|a| IpAddr::from(std::net::Ipv4Addr::from(a).to_ipv6_mapped())),
        ]
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "[a-z0-9.-]{1,12}",
            any::<String>(),
            Just("a\"b\\c\n\u{1}\u{7f}\u{202e}".to_string()),
        ]
    }

    prop_compose! {
        fn line()(
            kind in kind(),
            udp in any::<bool>(),
            local in address(),
            local_port in any::<u16>(),
            peer in prop::option::of((address(), any::<u16>())),
            netns in prop::option::of(any::<u32>()),
            errno in prop::option::of(1i32..200_000),
            in_progress in any::<bool>(),
            aborted in any::<bool>(),
            implicit in any::<bool>(),
            duration in prop::option::of(any::<u64>()),
            cookie in any::<u64>(),
            class in prop::sample::select(vec![PortClass::WellKnown, PortClass::Registered, PortClass::Dynamic]),
            ephemeral in any::<bool>(),
            requested in prop::option::of(any::<bool>()),
            origin in prop::sample::select(vec![Origin::Kernel, Origin::Snapshot, Origin::Reconcile]),
            probe in prop::sample::select(probes()),
            seq in any::<u64>(),
            host in text(),
            boot_id in prop::option::of(text()),
            comm in text(),
            argv in prop::option::of(prop::collection::vec(text(), 0..4)),
            wall_ns in any::<i64>(),
        ) -> (String, String) {
            let mut ev = fixture::event(
                kind,
                if udp { Transport::Udp } else { Transport::Tcp },
                "127.0.0.1:1",
            );
            ev.local = SocketAddr::new(local, local_port);
            ev.peer = peer.map(|(a, p)| SocketAddr::new(a, p));
            ev.netns = netns.unwrap_or(0);
            ev.errno = errno;
            ev.in_progress = in_progress;
            ev.aborted = aborted;
            ev.implicit = implicit;
            ev.duration_ns = duration;
            ev.cookie = cookie;
            let mut f = fixture::facts(ev, 1);
            f.port = PortInfo { class, ephemeral, requested };
            f.origin = origin;
            f.event.probe = probe;
            f.process = std::sync::Arc::new(ProcessFacts {
                comm,
                command_line: argv,
                ..ProcessFacts::clone(&f.process)
            });
            let process = serde_json::value::to_raw_value(&*f.process).unwrap();
            let timestamp = crate::clock::StampClock::default().format(wall_ns);
            let header = Header {
                schema: 1,
                timestamp: timestamp.as_str(),
                seq,
                host: Host { name: &host, boot_id: boot_id.as_deref() },
                event: f.event.kind.as_str(),
            };
            let body = PortRecord::new(&f, &process);
            let mut fast = Vec::new();
            write_port(&mut fast, &header, &serde_json::to_string(&header.host).unwrap(), &body);
            let serde = serde_json::to_string(&Line { header, body }).unwrap();
            (String::from_utf8(fast).unwrap(), serde)
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn a_port_line_is_what_serde_writes((fast, serde) in line()) {
            prop_assert_eq!(fast, serde);
        }
    }
}
