//! Event log schema version 1, as docs/schema.md describes it, checked field by field. Unknown
//! fields are errors too: the contract changes deliberately, with this file and the doc.
use std::net::IpAddr;

use serde_json::{Map, Value};

type R = Result<(), String>;

fn obj<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>, String> {
    v.as_object()
        .ok_or_else(|| format!("{what} is not an object: {v}"))
}

fn only_keys(m: &Map<String, Value>, allowed: &[&str], what: &str) -> R {
    for k in m.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(format!("{what}: unexpected field `{k}`"));
        }
    }
    Ok(())
}

fn uint(v: &Value, what: &str, max: u64) -> Result<u64, String> {
    match v.as_u64() {
        Some(n) if n <= max => Ok(n),
        _ => Err(format!("{what} is not an integer in 0..={max}: {v}")),
    }
}

fn string<'a>(v: &'a Value, what: &str) -> Result<&'a str, String> {
    v.as_str()
        .ok_or_else(|| format!("{what} is not a string: {v}"))
}

fn nullable(v: &Value, f: impl FnOnce(&Value) -> R) -> R {
    if v.is_null() { Ok(()) } else { f(v) }
}

fn with(extra: &[&'static str]) -> Vec<&'static str> {
    HEADER.iter().chain(extra).copied().collect()
}

/// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`: RFC 3339, UTC, nanoseconds.
fn timestamp(v: &Value) -> R {
    let s = string(v, "timestamp")?;
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| r.into_iter().all(|i| b[i].is_ascii_digit());
    let ok = b.len() == 30
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19] == b'.'
        && digits(20..29)
        && b[29] == b'Z';
    if ok {
        Ok(())
    } else {
        Err(format!(
            "timestamp is not RFC 3339 UTC with nanoseconds: {s}"
        ))
    }
}

fn endpoint(v: &Value, ip_type: &str, what: &str) -> R {
    let m = obj(v, what)?;
    only_keys(m, &["address", "port"], what)?;
    let a: IpAddr = string(&v["address"], what)?
        .parse()
        .map_err(|_| format!("{what}.address is not an IP address: {}", v["address"]))?;
    if (ip_type == "ipv4") != a.is_ipv4() {
        return Err(format!("{what}.address {a} does not match type {ip_type}"));
    }
    uint(&v["port"], &format!("{what}.port"), 65535)?;
    Ok(())
}

fn header(m: &Map<String, Value>, v: &Value) -> R {
    if v["schema"] != 1 {
        return Err(format!("schema is not 1: {}", v["schema"]));
    }
    timestamp(&v["timestamp"])?;
    if uint(&v["seq"], "seq", u64::MAX)? == 0 {
        return Err("seq starts at 1".into());
    }
    let host = obj(&v["host"], "host")?;
    only_keys(host, &["name", "boot_id"], "host")?;
    string(&v["host"]["name"], "host.name")?;
    if let Some(b) = v["host"].get("boot_id") {
        let b = string(b, "host.boot_id")?;
        if b.len() != 36 || b.split('-').count() != 5 {
            return Err(format!("host.boot_id is not a UUID: {b}"));
        }
    }
    let _ = m;
    Ok(())
}

const HEADER: [&str; 5] = ["schema", "timestamp", "seq", "host", "event"];

/// Checks one parsed line.
pub fn check(v: &Value) -> R {
    let m = obj(v, "line")?;
    header(m, v)?;
    let event = string(&v["event"], "event")?;
    match event {
        "bind" | "listen" | "connect" | "close" | "connect_result" => {
            only_keys(
                m,
                &with(&[
                    "outcome",
                    "error",
                    "errno",
                    "duration_ns",
                    "implicit",
                    "network",
                    "port",
                    "process",
                    "probe",
                    "origin",
                    "cookie",
                ]),
                event,
            )?;
            if let Some(c) = v.get("cookie")
                && uint(c, "cookie", u64::MAX)? == 0
            {
                return Err("cookie 0 is written as no cookie".into());
            }
            port_event(v, event)
        }
        "holding" => {
            only_keys(
                m,
                &with(&[
                    "role",
                    "network",
                    "process",
                    "opened",
                    "closed",
                    "duration_ns",
                    "close_note",
                    "cookie",
                ]),
                event,
            )?;
            holding(v)
        }
        "status" => {
            only_keys(
                m,
                &with(&[
                    "daemon",
                    "kernel",
                    "attach",
                    "ring_buffer_bytes",
                    "reason",
                    "counters",
                ]),
                event,
            )?;
            match string(&v["reason"], "reason")? {
                "start" | "periodic" | "stop" => {}
                r => return Err(format!("unknown status reason {r}")),
            }
            let c = obj(&v["counters"], "counters")?;
            only_keys(
                c,
                &[
                    "events",
                    "lost",
                    "attribution",
                    "caches",
                    "log",
                    "store",
                    "alerts",
                    "canary",
                ],
                "counters",
            )?;
            for k in [
                "bind",
                "listen",
                "connect",
                "close",
                "connect_result",
                "total",
                "snapshot",
            ] {
                uint(&v["counters"]["events"][k], "counters.events", u64::MAX)?;
            }
            for k in [
                "ring_buffer",
                "pending_table_full",
                "pending_stale",
                "socket_table_full",
                "log_write_failed",
                "undecodable",
            ] {
                uint(&v["counters"]["lost"][k], "counters.lost", u64::MAX)?;
            }
            for cache in ["processes", "users", "process_table"] {
                for k in ["size", "max", "evictions"] {
                    uint(
                        &v["counters"]["caches"][cache][k],
                        "counters.caches",
                        u64::MAX,
                    )?;
                }
            }
            string(&v["daemon"]["version"], "daemon.version")?;
            uint(&v["daemon"]["pid"], "daemon.pid", u32::MAX as u64)?;
            string(&v["kernel"]["release"], "kernel.release")?;
            uint(
                &v["ring_buffer_bytes"],
                "ring_buffer_bytes",
                u32::MAX as u64,
            )?;
            let attach = obj(&v["attach"], "attach")?;
            for fam in HOOK_FAMILIES {
                let f = attach
                    .get(fam)
                    .ok_or_else(|| format!("attach.{fam} missing"))?;
                let s = string(&f["strategy"], "attach strategy")?;
                if !["fentry", "kprobe", "tracepoint"].contains(&s) {
                    return Err(format!("attach.{fam}.strategy unknown: {s}"));
                }
                if f["hooks"].as_array().is_none_or(|h| h.is_empty()) {
                    return Err(format!("attach.{fam}.hooks empty"));
                }
            }
            Ok(())
        }
        "alert" => {
            only_keys(
                m,
                &with(&["alert", "network", "port", "process", "origin"]),
                event,
            )?;
            alert_event(v)
        }
        "loss" => {
            only_keys(m, &with(&["loss"]), event)?;
            let count = uint(&v["loss"]["count"], "loss.count", u64::MAX)?;
            let total = uint(&v["loss"]["total"], "loss.total", u64::MAX)?;
            let reason = string(&v["loss"]["reason"], "loss.reason")?;
            if ![
                "ring_buffer_full",
                "pending_table_full",
                "pending_stale",
                "socket_table_full",
                "log_write_failed",
            ]
            .contains(&reason)
            {
                return Err(format!("unknown loss reason {reason}"));
            }
            if count == 0 || total < count {
                return Err(format!(
                    "loss counts inconsistent: count {count}, total {total}"
                ));
            }
            Ok(())
        }
        other => Err(format!("unknown event `{other}`")),
    }
}

/// A `holding` line: its span, its role, and the socket and process as port events carry them.
fn holding(v: &Value) -> R {
    let role = string(&v["role"], "role")?;
    if !["bound", "listening", "connected"].contains(&role) {
        return Err(format!("unknown role {role}"));
    }
    timestamp(&v["opened"]).map_err(|e| format!("opened: {e}"))?;
    timestamp(&v["closed"]).map_err(|e| format!("closed: {e}"))?;
    // Same format, so the strings order as the times do.
    if v["opened"].as_str() > v["closed"].as_str() || v["closed"] != v["timestamp"] {
        return Err("a holding closes after it opens, at its line's timestamp".into());
    }
    uint(&v["duration_ns"], "duration_ns", u64::MAX)?;
    nullable(&v["close_note"], |s| string(s, "close_note").map(drop))?;
    if let Some(c) = v.get("cookie") {
        uint(c, "cookie", u64::MAX)?;
    }
    if (role == "connected") != v["network"].get("peer").is_some() {
        return Err("a connected holding has a peer, and only it".into());
    }
    // The history keeps the holder it attributed; pid 0 is a socket no process held at start-up.
    subject(v, "holding", true)
}

fn port_event(v: &Value, event: &str) -> R {
    // What only some events carry.
    match v.get("duration_ns") {
        Some(d) if event == "connect_result" => {
            uint(d, "duration_ns", u64::MAX)?;
            if v["origin"] != "kernel" {
                return Err("a connect_result comes from the kernel only".into());
            }
        }
        Some(_) => return Err(format!("duration_ns on a {event}")),
        None if event == "connect_result" => {
            return Err("connect_result without duration_ns".into());
        }
        None => {}
    }
    match v.get("implicit") {
        Some(i) if event == "bind" && v["origin"] == "kernel" => {
            if i != &Value::Bool(true) {
                return Err(format!("implicit is {i}, only ever true"));
            }
            if v["network"]["transport"] != "udp" || v["outcome"] != "success" {
                return Err("implicit on anything but a successful UDP bind".into());
            }
            if v["port"]["requested"] != false {
                return Err("an implicit bind named no port".into());
            }
        }
        Some(_) => return Err(format!("implicit on a {event} of origin {}", v["origin"])),
        None => {}
    }
    match string(&v["outcome"], "outcome")? {
        "aborted" => {
            if event != "connect_result" {
                return Err(format!("outcome aborted on a {event}"));
            }
            if v.get("error").is_some() || v.get("errno").is_some() {
                return Err("aborted with error fields".into());
            }
        }
        "success" => {
            if v.get("error").is_some() || v.get("errno").is_some() {
                return Err("success with error fields".into());
            }
        }
        "in_progress" => {
            if event != "connect" {
                return Err(format!("outcome in_progress on a {event}"));
            }
            if v.get("error").is_some() || v.get("errno").is_some() {
                return Err("in_progress with error fields".into());
            }
        }
        "failure" => {
            let e = string(&v["error"], "error")?;
            if !e.starts_with('E') {
                return Err(format!("error is not an errno name: {e}"));
            }
            if uint(&v["errno"], "errno", 4095)? == 0 {
                return Err("errno 0 on failure".into());
            }
        }
        o => return Err(format!("unknown outcome {o}")),
    }
    let origin = string(&v["origin"], "origin")?;
    if !["kernel", "snapshot"].contains(&origin) {
        return Err(format!("unknown origin {origin}"));
    }
    if (origin == "snapshot") != (v["probe"] == "sock_diag") {
        return Err("probe sock_diag goes with origin snapshot, and only with it".into());
    }
    if string(&v["probe"], "probe")?.is_empty() {
        return Err("probe is empty".into());
    }
    // pid 0 is how a scan says no process holds the socket; the kernel always knows.
    subject(v, event, origin != "kernel")
}

/// `network`, `port` and `process`, as port events and alerts carry them.
fn subject(v: &Value, event: &str, pid0_allowed: bool) -> R {
    let net = obj(&v["network"], "network")?;
    only_keys(
        net,
        &["transport", "type", "local", "peer", "netns"],
        "network",
    )?;
    let transport = string(&v["network"]["transport"], "network.transport")?;
    if !["tcp", "udp"].contains(&transport) {
        return Err(format!("network.transport unknown: {transport}"));
    }
    let ip_type = string(&v["network"]["type"], "network.type")?;
    if !["ipv4", "ipv6"].contains(&ip_type) {
        return Err(format!("network.type unknown: {ip_type}"));
    }
    endpoint(&v["network"]["local"], ip_type, "network.local")?;
    match v["network"].get("peer") {
        Some(p) => endpoint(p, ip_type, "network.peer")?,
        None if event == "connect" || event == "connect_result" => {
            return Err(format!("{event} without network.peer"));
        }
        None => {}
    }
    nullable(&v["network"]["netns"], |n| {
        uint(n, "network.netns", u32::MAX as u64).map(drop)
    })?;

    let p = obj(&v["process"], "process")?;
    only_keys(
        p,
        &[
            "pid",
            "tid",
            "ppid",
            "parent_comm",
            "comm",
            "executable",
            "executable_truncated",
            "command_line",
            "command_line_truncated",
            "cgroup",
            "unit",
            "container",
            "user",
            "group",
        ],
        "process",
    )?;
    let pr = &v["process"];
    if uint(&pr["pid"], "process.pid", u32::MAX as u64)? == 0 && !pid0_allowed {
        return Err("process.pid is 0".into());
    }
    nullable(&pr["parent_comm"], |s| {
        string(s, "process.parent_comm").map(drop)
    })?;
    uint(&pr["tid"], "process.tid", u32::MAX as u64)?;
    nullable(&pr["ppid"], |n| {
        uint(n, "process.ppid", u32::MAX as u64).map(drop)
    })?;
    string(&pr["comm"], "process.comm")?;
    nullable(&pr["executable"], |s| {
        string(s, "process.executable").map(drop)
    })?;
    nullable(&pr["command_line"], |a| {
        a.as_array()
            .filter(|a| a.iter().all(Value::is_string))
            .map(drop)
            .ok_or_else(|| format!("process.command_line is not an array of strings: {a}"))
    })?;
    nullable(&pr["cgroup"], |s| {
        string(s, "process.cgroup").and_then(|s| {
            if s.starts_with('/') {
                Ok(())
            } else {
                Err(format!("process.cgroup is not a path: {s}"))
            }
        })
    })?;
    nullable(&pr["unit"], |s| string(s, "process.unit").map(drop))?;
    nullable(&pr["container"], |c| {
        only_keys(
            obj(c, "process.container")?,
            &["id", "runtime"],
            "process.container",
        )?;
        string(&c["id"], "process.container.id")?;
        match string(&c["runtime"], "process.container.runtime")? {
            "docker" | "containerd" | "cri-o" | "podman" | "lxc" | "cri" => Ok(()),
            r => Err(format!("unknown container runtime {r}")),
        }
    })?;
    for key in ["ppid", "parent_comm", "cgroup", "unit", "container"] {
        if pr.get(key).is_none() {
            return Err(format!("process.{key} missing (null when unknown)"));
        }
    }
    // A holding line has no `port` object: it is about a span, not an event on the port.
    if event != "holding" {
        let port = obj(&v["port"], "port")?;
        only_keys(port, &["class", "ephemeral", "requested"], "port")?;
        // Kernel bind events say whether the caller named the port; nothing else does.
        let kernel_bind = event == "bind" && v["origin"] == "kernel";
        match v["port"].get("requested") {
            Some(Value::Bool(_)) if kernel_bind || event == "alert" => {}
            None if !kernel_bind => {}
            r => {
                return Err(format!(
                    "port.requested {r:?} on a {event} event of origin {}",
                    v["origin"]
                ));
            }
        }
        let class = string(&v["port"]["class"], "port.class")?;
        let local_port = v["network"]["local"]["port"].as_u64().unwrap_or(0);
        let expected = match local_port {
            0..=1023 => "well-known",
            1024..=49151 => "registered",
            _ => "dynamic",
        };
        if class != expected {
            return Err(format!(
                "port.class {class} for port {local_port}, expected {expected}"
            ));
        }
        if !v["port"]["ephemeral"].is_boolean() {
            return Err("port.ephemeral is not a boolean".into());
        }
    }
    for flag in ["command_line_truncated", "executable_truncated"] {
        if let Some(t) = pr.get(flag)
            && t != &Value::Bool(true)
        {
            return Err(format!("process.{flag} is only ever true: {t}"));
        }
    }
    only_keys(
        obj(&pr["user"], "process.user")?,
        &["id", "name"],
        "process.user",
    )?;
    uint(&pr["user"]["id"], "process.user.id", u32::MAX as u64)?;
    nullable(&pr["user"]["name"], |s| {
        string(s, "process.user.name").map(drop)
    })?;
    only_keys(
        obj(&pr["group"], "process.group")?,
        &["id"],
        "process.group",
    )?;
    uint(&pr["group"]["id"], "process.group.id", u32::MAX as u64)?;
    Ok(())
}

const ALERT_KINDS: [&str; 7] = [
    "alerts_forgotten",
    "monitoring_blind",
    "unexpected_listener",
    "wildcard_listener",
    "ephemeral_port_listener",
    "required_listener_missing",
    "ephemeral_port_exhaustion",
];

fn alert_event(v: &Value) -> R {
    let a = obj(&v["alert"], "alert")?;
    only_keys(
        a,
        &[
            "kind",
            "severity",
            "rule",
            "first_seen",
            "count",
            "summary",
            "detail",
        ],
        "alert",
    )?;
    let kind = string(&v["alert"]["kind"], "alert.kind")?;
    if !ALERT_KINDS.contains(&kind) {
        return Err(format!("unknown alert kind {kind}"));
    }
    match string(&v["alert"]["severity"], "alert.severity")? {
        "high" | "medium" => {}
        s => return Err(format!("unknown alert severity {s}")),
    }
    if string(&v["alert"]["rule"], "alert.rule")?.is_empty() {
        return Err("alert.rule is empty".into());
    }
    timestamp(&v["alert"]["first_seen"]).map_err(|e| format!("alert.first_seen: {e}"))?;
    if uint(&v["alert"]["count"], "alert.count", u64::MAX)? == 0 {
        return Err("alert.count is 0".into());
    }
    if let Some(s) = a.get("summary")
        && s != &Value::Bool(true)
    {
        return Err(format!("alert.summary is only ever true: {s}"));
    }
    nullable(&v["alert"]["detail"], |d| obj(d, "alert.detail").map(drop))?;
    let origin = string(&v["origin"], "origin")?;
    if !["kernel", "snapshot", "reconcile", "summary", "canary"].contains(&origin) {
        return Err(format!("unknown alert origin {origin}"));
    }
    // A busy destination (exhaustion found by a scan) is about many sockets, not one.
    let busy_destination = kind == "ephemeral_port_exhaustion" && v["network"].is_null();
    let about_a_socket = ![
        "required_listener_missing",
        "monitoring_blind",
        "alerts_forgotten",
    ]
    .contains(&kind)
        && !busy_destination;
    if about_a_socket {
        subject(v, "alert", origin != "kernel")
    } else if v["network"].is_null() && v["port"].is_null() && v["process"].is_null() {
        Ok(())
    } else {
        Err(format!(
            "{kind} alert carries no socket: network, port and process are null"
        ))
    }
}

/// Checks every line, and that `seq` goes up by one from 1 — or, when the log says it lost lines
/// it could not write (`log_write_failed`), that it only ever goes up.
pub fn check_log(lines: &[Value]) -> R {
    let gaps_explained = lines
        .iter()
        .any(|l| l["loss"]["reason"] == "log_write_failed");
    let mut prev = 0u64;
    for (i, l) in lines.iter().enumerate() {
        check(l).map_err(|e| format!("line {}: {e}\n{l}", i + 1))?;
        let seq = l["seq"].as_u64().unwrap_or(0);
        let ok = if gaps_explained {
            seq > prev
        } else {
            seq == prev + 1
        };
        if !ok {
            return Err(format!("line {}: seq {seq} after {prev}", i + 1));
        }
        prev = seq;
    }
    if lines.first().is_some_and(|l| l["event"] != "status") {
        return Err("the first line is not the status event".into());
    }
    Ok(())
}

/// The status event's `attach` keys whose events a scenario can show (lineage makes none).
pub const HOOK_FAMILIES: [&str; 6] = [
    "bind",
    "listen",
    "connect",
    "release",
    "handshake",
    "implicit_bind",
];

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bind_line() -> Value {
        json!({"schema":1,"timestamp":"2026-11-27T04:51:23.521035472Z","seq":2,"host":{"name":"vm"},
            "event":"bind","outcome":"success",
            "network":{"transport":"tcp","type":"ipv4","local":{"address":"127.0.0.1","port":51899},"netns":4026531833u32},
            "port":{"class":"dynamic","ephemeral":true,"requested":false},
            "process":{"pid":8552,"tid":8552,"ppid":8412,"parent_comm":"bash","comm":"python3","executable":"/usr/bin/python3",
                "cgroup":"/system.slice/a.service","unit":"a.service","container":null,
                "command_line":["python3"],"user":{"id":0,"name":"root"},"group":{"id":0}},
            "probe":"cgroup:post_bind4","origin":"kernel"})
    }

    #[test]
    fn accepts_a_real_line() {
        check(&bind_line()).unwrap();
    }

    #[test]
    fn rejects_drift() {
        let mut v = bind_line();
        v["extra"] = json!(1);
        assert!(check(&v).unwrap_err().contains("unexpected field `extra`"));
        let mut v = bind_line();
        v["timestamp"] = json!("2026-11-27T04:51:23Z");
        assert!(check(&v).is_err());
        let mut v = bind_line();
        v["network"]["local"]["address"] = json!("::1");
        assert!(check(&v).unwrap_err().contains("does not match type"));
        let mut v = bind_line();
        v["outcome"] = json!("failure");
        assert!(check(&v).is_err());
        let mut v = bind_line();
        v["event"] = json!("connect");
        assert!(check(&v).unwrap_err().contains("without network.peer"));
        let mut v = bind_line();
        v["process"]["pid"] = json!(0);
        assert!(check(&v).unwrap_err().contains("pid is 0"));
        v["origin"] = json!("snapshot");
        assert!(check(&v).unwrap_err().contains("sock_diag"));
        v["probe"] = json!("sock_diag");
        // Only kernel binds know whether the port was named.
        assert!(check(&v).unwrap_err().contains("port.requested"));
        v["port"].as_object_mut().unwrap().remove("requested");
        check(&v).unwrap();
    }

    #[test]
    fn alerts_about_a_socket_and_about_an_absence() {
        let b = bind_line();
        let mut a = json!({"schema":1,"timestamp":"2026-11-27T04:51:23.521035472Z","seq":3,"host":{"name":"vm"},
            "event":"alert","alert":{"kind":"unexpected_listener","severity":"high","rule":"no rule",
            "first_seen":"2026-11-27T04:51:23.521035472Z","count":1},
            "network":b["network"],"port":b["port"],"process":b["process"],"origin":"kernel"});
        check(&a).unwrap();
        a["alert"]["kind"] = json!("made_up");
        assert!(check(&a).unwrap_err().contains("unknown alert kind"));
        a["alert"]["kind"] = json!("required_listener_missing");
        assert!(check(&a).unwrap_err().contains("carries no socket"));
        for k in ["network", "port", "process"] {
            a[k] = Value::Null;
        }
        a["alert"]["detail"] = json!({"ports": ["22"]});
        check(&a).unwrap();
    }
}
