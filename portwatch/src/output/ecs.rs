//! The event log in Elastic Common Schema 8.x (`[log] format = "ecs"`): each line is the same
//! record as the portwatch schema (docs/schema.md), its fields put where ECS has them —
//! `@timestamp`, `event.*`, `source` (the local end) and `destination` (the peer), `process.*`,
//! `user.*`, `container.*`, `error.code` — and whatever ECS has no field for kept under
//! `portwatch.*` (a custom field set, as ECS asks). Every field outside `portwatch.*` is one ECS
//! defines, with its type: `tests/src/ecs.rs` holds the ECS definitions every line the
//! integration tests produce in this format is checked against.
use serde_json::{Map, Value, json};

pub const ECS_VERSION: &str = "8.11.0";

fn set(obj: &mut Map<String, Value>, path: &str, v: Value) {
    if v.is_null() {
        return;
    }
    let mut parts = path.split('.').peekable();
    let mut cur = obj;
    while let Some(p) = parts.next() {
        if parts.peek().is_none() {
            cur.insert(p.to_string(), v);
            return;
        }
        let next = cur
            .entry(p.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if !next.is_object() {
            *next = Value::Object(Map::new());
        }
        let Value::Object(m) = next else { return };
        cur = m;
    }
}

/// An endpoint's `{address, port}` as ECS's `{ip, port}`.
fn endpoint(out: &mut Map<String, Value>, at: &str, e: Option<&Value>) {
    if let Some(e) = e.filter(|e| e.is_object()) {
        set(out, &format!("{at}.ip"), e["address"].clone());
        set(out, &format!("{at}.port"), e["port"].clone());
    }
}

fn process(out: &mut Map<String, Value>, p: &Value) {
    // pid 0: no process holds the socket; ECS gets no process rather than a false one.
    if !p.is_object() || p["pid"].as_u64().unwrap_or(0) == 0 {
        return;
    }
    set(out, "process.pid", p["pid"].clone());
    set(out, "process.thread.id", p["tid"].clone());
    set(out, "process.name", p["comm"].clone());
    set(out, "process.executable", p["executable"].clone());
    if let Some(args) = p["command_line"].as_array() {
        set(out, "process.args", Value::Array(args.clone()));
        set(out, "process.args_count", json!(args.len()));
        let line: Vec<&str> = args.iter().map(|a| a.as_str().unwrap_or("")).collect();
        set(out, "process.command_line", json!(line.join(" ")));
    }
    set(out, "process.parent.pid", p["ppid"].clone());
    set(out, "process.parent.name", p["parent_comm"].clone());
    // ECS ids are keywords.
    if let Some(id) = p.pointer("/user/id").and_then(Value::as_u64) {
        set(out, "user.id", json!(id.to_string()));
    }
    set(
        out,
        "user.name",
        p.pointer("/user/name").cloned().unwrap_or(Value::Null),
    );
    if let Some(id) = p.pointer("/group/id").and_then(Value::as_u64) {
        set(out, "group.id", json!(id.to_string()));
    }
    if let Some(c) = p.get("container").filter(|c| c.is_object()) {
        set(out, "container.id", c["id"].clone());
        set(out, "container.runtime", c["runtime"].clone());
    }
}

/// The ECS line for a line of the portwatch schema.
pub fn line(v: &Value) -> Value {
    let mut out = Map::new();
    let event = v["event"].as_str().unwrap_or("");
    set(&mut out, "@timestamp", v["timestamp"].clone());
    set(&mut out, "ecs.version", json!(ECS_VERSION));
    set(&mut out, "agent.type", json!("portwatch"));
    set(&mut out, "agent.version", json!(env!("CARGO_PKG_VERSION")));
    set(&mut out, "event.action", json!(event));
    set(&mut out, "event.sequence", v["seq"].clone());
    set(&mut out, "event.module", json!("portwatch"));
    set(&mut out, "event.dataset", json!("portwatch.events"));
    set(
        &mut out,
        "host.name",
        v.pointer("/host/name").cloned().unwrap_or(Value::Null),
    );
    set(
        &mut out,
        "host.boot.id",
        v.pointer("/host/boot_id").cloned().unwrap_or(Value::Null),
    );
    let (kind, category, types): (&str, &[&str], &[&str]) = match event {
        "bind" | "listen" => ("event", &["network"], &["start"]),
        "connect" => ("event", &["network"], &["connection", "start"]),
        "connect_result" => ("event", &["network"], &["connection"]),
        "close" => ("event", &["network"], &["end"]),
        "holding" => ("event", &["network"], &["end"]),
        "alert" => ("alert", &["network", "intrusion_detection"], &["info"]),
        "loss" => ("event", &["host"], &["error"]),
        _ => ("metric", &["host"], &["info"]),
    };
    set(&mut out, "event.kind", json!(kind));
    set(&mut out, "event.category", json!(category));
    set(&mut out, "event.type", json!(types));
    // ECS outcomes are success, failure and unknown: a connect still in progress, or one its
    // owner abandoned, is unknown (its `portwatch.outcome` says which).
    if let Some(o) = v["outcome"].as_str() {
        let ecs = match o {
            "success" | "failure" => o,
            _ => "unknown",
        };
        set(&mut out, "event.outcome", json!(ecs));
    }
    set(&mut out, "event.duration", v["duration_ns"].clone());
    // A holding's span.
    set(&mut out, "event.start", v["opened"].clone());
    set(&mut out, "event.end", v["closed"].clone());
    set(&mut out, "error.code", v["error"].clone());
    set(
        &mut out,
        "network.transport",
        v.pointer("/network/transport")
            .cloned()
            .unwrap_or(Value::Null),
    );
    set(
        &mut out,
        "network.type",
        v.pointer("/network/type").cloned().unwrap_or(Value::Null),
    );
    endpoint(&mut out, "source", v.pointer("/network/local"));
    endpoint(&mut out, "destination", v.pointer("/network/peer"));
    process(&mut out, &v["process"]);
    if let Some(a) = v.get("alert").filter(|a| a.is_object()) {
        set(&mut out, "rule.name", a["kind"].clone());
        set(&mut out, "rule.description", a["rule"].clone());
        set(&mut out, "event.reason", a["rule"].clone());
        let severity = match a["severity"].as_str() {
            Some("high") => 73,
            _ => 47,
        };
        set(&mut out, "event.severity", json!(severity));
    }
    if let Some(r) = v.pointer("/loss/reason") {
        set(&mut out, "event.reason", r.clone());
    }
    // The rest, as the portwatch schema names it: nothing of the record is lost.
    let mut rest = Map::new();
    if let Value::Object(fields) = v {
        for (k, val) in fields {
            match k.as_str() {
                "timestamp" | "seq" | "host" | "event" | "outcome" | "error" | "duration_ns" => {}
                "network" => {
                    if let Some(ns) = val.get("netns") {
                        rest.insert("netns".into(), ns.clone());
                    }
                }
                "process" => {
                    let mut p = Map::new();
                    if let Value::Object(pf) = val {
                        for key in [
                            "unit",
                            "cgroup",
                            "executable_truncated",
                            "command_line_truncated",
                        ] {
                            if let Some(x) = pf.get(key).filter(|x| !x.is_null()) {
                                p.insert(key.into(), x.clone());
                            }
                        }
                    }
                    if !p.is_empty() {
                        rest.insert("process".into(), Value::Object(p));
                    }
                }
                _ => {
                    rest.insert(k.clone(), val.clone());
                }
            }
        }
    }
    if let Some(o) = v["outcome"].as_str() {
        rest.insert("outcome".into(), json!(o));
    }
    if let Some(e) = v.get("errno") {
        rest.insert("errno".into(), e.clone());
    }
    out.insert("portwatch".into(), Value::Object(rest));
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connect_failure_maps_to_ecs_fields_of_their_types() {
        let v = json!({"schema": 1, "timestamp": "2026-12-02T03:22:50.522922382Z", "seq": 7,
            "host": {"name": "web1"}, "event": "connect", "outcome": "failure",
            "error": "ECONNREFUSED", "errno": 111,
            "network": {"transport": "tcp", "type": "ipv6", "netns": 4026531840u64,
                "local": {"address": "::1", "port": 40001}, "peer": {"address": "::1", "port": 9}},
            "port": {"class": "dynamic", "ephemeral": true},
            "process": {"pid": 42, "tid": 43, "ppid": 1, "parent_comm": "systemd", "comm": "curl",
                "executable": "/usr/bin/curl", "command_line": ["curl", "-s", "http://[::1]:9/"],
                "cgroup": "/system.slice/x.service", "unit": "x.service",
                "container": {"id": "ab".repeat(32), "runtime": "docker"},
                "user": {"id": 1000, "name": "alice"}, "group": {"id": 1000}},
            "probe": "cgroup:connect6", "origin": "kernel"});
        let e = line(&v);
        assert_eq!(e["event"]["outcome"], "failure");
        assert_eq!(e["error"]["code"], "ECONNREFUSED");
        assert_eq!(
            (&e["source"]["port"], &e["destination"]["port"]),
            (&json!(40001), &json!(9))
        );
        assert_eq!(e["process"]["args_count"], 3);
        assert_eq!(e["user"]["id"], "1000");
        assert_eq!(e["portwatch"]["errno"], 111);
        assert_eq!(e["portwatch"]["probe"], "cgroup:connect6");
        assert_eq!(e["portwatch"]["process"]["unit"], "x.service");
        assert_eq!(e["@timestamp"], "2026-12-02T03:22:50.522922382Z");
        assert_eq!(e["event"]["category"], json!(["network"]));
        assert_eq!(e["container"]["runtime"], "docker");
        // A socket no process holds: no ECS process at all.
        let kernel = json!({"event": "listen", "outcome": "success", "process": {"pid": 0}});
        assert!(line(&kernel).get("process").is_none());
        // In progress is unknown to ECS, said precisely under portwatch.
        let p = line(&json!({"event": "connect", "outcome": "in_progress"}));
        assert_eq!(
            (&p["event"]["outcome"], &p["portwatch"]["outcome"]),
            (&json!("unknown"), &json!("in_progress"))
        );
    }
}
