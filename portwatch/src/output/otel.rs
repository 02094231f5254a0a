//! The event log as OpenTelemetry logs (`[log] format = "otel"`): each line is one OTLP/JSON
//! `ExportLogsServiceRequest` holding one log record — what the OpenTelemetry Collector's
//! `otlpjsonfile` receiver reads — with the record's facts as attributes named by the semantic
//! conventions (`network.*`, `server.*`/`client.*`, `process.*`, `container.*`, `error.type`)
//! and the rest as `portwatch.*` attributes, named as docs/schema.md names them. The OTLP/JSON
//! encoding writes 64-bit integers as strings and every value as a typed `AnyValue`.
use serde_json::{Map, Value, json};

/// `AnyValue` for a JSON value; objects are flattened by the caller.
fn any(v: &Value) -> Option<Value> {
    Some(match v {
        Value::Null | Value::Object(_) => return None,
        Value::Bool(b) => json!({"boolValue": b}),
        Value::Number(n) if n.is_i64() || n.is_u64() => json!({"intValue": n.to_string()}),
        Value::Number(n) => json!({"doubleValue": n.as_f64()}),
        Value::String(s) => json!({"stringValue": s}),
        Value::Array(a) => {
            json!({"arrayValue": {"values": a.iter().filter_map(any).collect::<Vec<_>>()}})
        }
    })
}

struct Attributes(Vec<Value>);

impl Attributes {
    fn put(&mut self, key: &str, v: &Value) {
        if let Some(value) = any(v) {
            self.0.push(json!({"key": key, "value": value}));
        }
    }

    /// Every leaf of `v` as `prefix.path` attributes.
    fn flatten(&mut self, prefix: &str, v: &Value) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    self.flatten(&format!("{prefix}.{k}"), x);
                }
            }
            other => self.put(prefix, other),
        }
    }
}

fn endpoint(a: &mut Attributes, at: &str, e: &Value) {
    if e.is_object() {
        a.put(&format!("{at}.address"), &e["address"]);
        a.put(&format!("{at}.port"), &e["port"]);
    }
}

/// The OTLP/JSON line for a line of the portwatch schema.
pub fn line(v: &Value) -> Value {
    let event = v["event"].as_str().unwrap_or("");
    let mut a = Attributes(Vec::new());
    a.put("event.name", &json!(format!("portwatch.{event}")));
    let net = &v["network"];
    a.put("network.transport", &net["transport"]);
    a.put("network.type", &net["type"]);
    endpoint(&mut a, "network.local", &net["local"]);
    endpoint(&mut a, "network.peer", &net["peer"]);
    // Who is the server: the peer a connect reaches; the local end a listener or a bound socket
    // serves on.
    match event {
        "connect" | "connect_result" => {
            endpoint(&mut a, "client", &net["local"]);
            endpoint(&mut a, "server", &net["peer"]);
        }
        "listen" | "bind" => endpoint(&mut a, "server", &net["local"]),
        _ => {}
    }
    a.put("error.type", &v["error"]);
    let p = &v["process"];
    // pid 0: no process holds the socket; no process attributes rather than false ones.
    if p.is_object() && p["pid"].as_u64().unwrap_or(0) != 0 {
        a.put("process.pid", &p["pid"]);
        a.put("process.parent_pid", &p["ppid"]);
        a.put("process.executable.name", &p["comm"]);
        a.put("process.executable.path", &p["executable"]);
        if let Some(args) = p["command_line"].as_array() {
            a.put("process.command_args", &Value::Array(args.clone()));
            let line: Vec<&str> = args.iter().map(|x| x.as_str().unwrap_or("")).collect();
            a.put("process.command_line", &json!(line.join(" ")));
        }
        a.put("process.user.id", &p["user"]["id"]);
        a.put("process.user.name", &p["user"]["name"]);
        a.put("process.group.id", &p["group"]["id"]);
        a.put("container.id", &p["container"]["id"]);
        a.put("container.runtime", &p["container"]["runtime"]);
        a.put("thread.id", &p["tid"]);
    }
    // The rest, named as the portwatch schema names it.
    if let Value::Object(fields) = v {
        for (k, x) in fields {
            match k.as_str() {
                "timestamp" | "event" | "error" => {}
                // host.name is the resource's; the boot id has no semantic convention.
                "host" => a.put("portwatch.host.boot_id", &x["boot_id"]),
                "network" => a.put("portwatch.network.netns", &x["netns"]),
                "process" => {
                    for key in [
                        "tid",
                        "comm",
                        "parent_comm",
                        "unit",
                        "cgroup",
                        "executable_truncated",
                        "command_line_truncated",
                    ] {
                        a.put(&format!("portwatch.process.{key}"), &x[key]);
                    }
                }
                _ => a.flatten(&format!("portwatch.{k}"), x),
            }
        }
    }
    let (number, text) = match (event, v["outcome"].as_str()) {
        ("alert", _) => (13, "WARN"),
        ("loss", _) => (17, "ERROR"),
        (_, Some("failure")) => (13, "WARN"),
        _ => (9, "INFO"),
    };
    let nanos = v["timestamp"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .and_then(|t| t.timestamp_nanos_opt())
        .unwrap_or(0);
    let mut record = Map::new();
    record.insert("timeUnixNano".into(), json!(nanos.to_string()));
    record.insert(
        "observedTimeUnixNano".into(),
        json!(crate::clock::now_unix_ns().to_string()),
    );
    record.insert("severityNumber".into(), json!(number));
    record.insert("severityText".into(), json!(text));
    record.insert("eventName".into(), json!(format!("portwatch.{event}")));
    record.insert("body".into(), json!({"stringValue": summary(v)}));
    record.insert("attributes".into(), Value::Array(a.0));
    json!({"resourceLogs": [{
        "resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": "portwatch"}},
            {"key": "service.version", "value": {"stringValue": env!("CARGO_PKG_VERSION")}},
            {"key": "host.name", "value": {"stringValue": v["host"]["name"].as_str().unwrap_or("")}},
        ]},
        "scopeLogs": [{
            "scope": {"name": "portwatch", "version": env!("CARGO_PKG_VERSION")},
            "logRecords": [Value::Object(record)],
        }],
    }]})
}

/// One line a person reads in a log viewer: `connect failure ECONNREFUSED tcp
/// 127.0.0.1:40001 -> 127.0.0.1:9 pid 42`.
fn summary(v: &Value) -> String {
    let s = |p: &str| v.pointer(p).and_then(Value::as_str).unwrap_or("");
    let ep = |p: &str| {
        v.pointer(p)
            .filter(|e| e.is_object())
            .map(|e| format!("{}:{}", e["address"].as_str().unwrap_or(""), e["port"]))
    };
    let mut out = s("/event").to_string();
    for part in [s("/outcome"), s("/error"), s("/alert/kind"), s("/reason")] {
        if !part.is_empty() {
            out.push(' ');
            out.push_str(part);
        }
    }
    if let Some(l) = ep("/network/local") {
        out.push_str(&format!(" {} {l}", s("/network/transport")));
    }
    if let Some(p) = ep("/network/peer") {
        out.push_str(&format!(" -> {p}"));
    }
    if let Some(pid) = v
        .pointer("/process/pid")
        .and_then(Value::as_u64)
        .filter(|p| *p != 0)
    {
        out.push_str(&format!(" pid {pid}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr<'a>(l: &'a Value, key: &str) -> &'a Value {
        l.pointer("/resourceLogs/0/scopeLogs/0/logRecords/0/attributes")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().find(|x| x["key"] == key))
            .map_or(&Value::Null, |x| &x["value"])
    }

    #[test]
    fn a_connect_failure_is_one_otlp_record_with_semantic_attributes() {
        let v = json!({"schema": 1, "timestamp": "2026-12-02T03:22:50.522922382Z", "seq": 7,
            "host": {"name": "web1"}, "event": "connect", "outcome": "failure",
            "error": "ECONNREFUSED", "errno": 111,
            "network": {"transport": "tcp", "type": "ipv4", "netns": 4026531840u64,
                "local": {"address": "127.0.0.1", "port": 40001}, "peer": {"address": "127.0.0.1", "port": 9}},
            "port": {"class": "dynamic", "ephemeral": true},
            "process": {"pid": 42, "tid": 42, "ppid": 1, "comm": "curl",
                "command_line": ["curl", "-s"], "user": {"id": 1000, "name": "alice"}, "group": {"id": 1000}},
            "probe": "cgroup:connect4", "origin": "kernel"});
        let l = line(&v);
        let r = &l["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0];
        assert_eq!(r["timeUnixNano"], "1796181770522922382");
        assert_eq!(
            (&r["severityNumber"], &r["severityText"]),
            (&json!(13), &json!("WARN"))
        );
        assert_eq!(
            r["body"]["stringValue"],
            "connect failure ECONNREFUSED tcp 127.0.0.1:40001 -> 127.0.0.1:9 pid 42"
        );
        assert_eq!(attr(&l, "server.port"), &json!({"intValue": "9"}));
        assert_eq!(attr(&l, "client.port"), &json!({"intValue": "40001"}));
        assert_eq!(
            attr(&l, "error.type"),
            &json!({"stringValue": "ECONNREFUSED"})
        );
        assert_eq!(
            attr(&l, "process.command_args")["arrayValue"]["values"][1],
            json!({"stringValue": "-s"})
        );
        assert_eq!(attr(&l, "portwatch.errno"), &json!({"intValue": "111"}));
        assert_eq!(
            attr(&l, "portwatch.port.ephemeral"),
            &json!({"boolValue": true})
        );
        assert_eq!(
            attr(&l, "portwatch.network.netns"),
            &json!({"intValue": "4026531840"})
        );
    }
}
