//! Elastic Common Schema 8.x: the definitions (name and type) of the ECS fields portwatch's
//! `ecs` format may write, as the ECS field reference gives them, and a check that a line uses
//! no others (outside its own `portwatch.*` field set) and fits each type — what an index with
//! the ECS template would otherwise reject as a mapping conflict.
use serde_json::Value;

/// Name and ECS type (ECS 8.11 field reference).
pub const FIELDS: &[(&str, &str)] = &[
    ("@timestamp", "date"),
    ("ecs.version", "keyword"),
    ("agent.type", "keyword"),
    ("agent.version", "keyword"),
    ("event.kind", "keyword"),
    ("event.category", "keyword"),
    ("event.type", "keyword"),
    ("event.action", "keyword"),
    ("event.outcome", "keyword"),
    ("event.sequence", "long"),
    ("event.dataset", "keyword"),
    ("event.module", "keyword"),
    ("event.duration", "long"),
    ("event.start", "date"),
    ("host.boot.id", "keyword"),
    ("event.end", "date"),
    ("event.reason", "keyword"),
    ("event.severity", "long"),
    ("host.name", "keyword"),
    ("network.transport", "keyword"),
    ("network.type", "keyword"),
    ("source.ip", "ip"),
    ("source.port", "long"),
    ("destination.ip", "ip"),
    ("destination.port", "long"),
    ("process.pid", "long"),
    ("process.thread.id", "long"),
    ("process.name", "keyword"),
    ("process.executable", "keyword"),
    ("process.args", "keyword"),
    ("process.args_count", "long"),
    ("process.command_line", "wildcard"),
    ("process.parent.pid", "long"),
    ("process.parent.name", "keyword"),
    ("user.id", "keyword"),
    ("user.name", "keyword"),
    ("group.id", "keyword"),
    ("container.id", "keyword"),
    ("container.runtime", "keyword"),
    ("error.code", "keyword"),
    ("rule.name", "keyword"),
    ("rule.description", "keyword"),
];

/// ECS's allowed values for the categorization fields.
const KINDS: &[&str] = &[
    "alert",
    "enrichment",
    "event",
    "metric",
    "state",
    "pipeline_error",
    "signal",
];
const CATEGORIES: &[&str] = &[
    "api",
    "authentication",
    "configuration",
    "database",
    "driver",
    "email",
    "file",
    "host",
    "iam",
    "intrusion_detection",
    "library",
    "malware",
    "network",
    "package",
    "process",
    "registry",
    "session",
    "threat",
    "vulnerability",
    "web",
];
const TYPES: &[&str] = &[
    "access",
    "admin",
    "allowed",
    "change",
    "connection",
    "creation",
    "deletion",
    "denied",
    "end",
    "error",
    "group",
    "indicator",
    "info",
    "installation",
    "protocol",
    "start",
    "user",
];
const OUTCOMES: &[&str] = &["failure", "success", "unknown"];

fn leaves(v: &Value, prefix: &str, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let name = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                if name != "portwatch" {
                    leaves(x, &name, out);
                }
            }
        }
        _ => out.push((prefix.to_string(), v.clone())),
    }
}

fn fits(ty: &str, v: &Value) -> bool {
    match (ty, v) {
        ("keyword", Value::Array(a)) => a.iter().all(Value::is_string),
        ("keyword" | "wildcard", Value::String(_)) => true,
        ("long", Value::Number(n)) => n.is_u64() || n.is_i64(),
        ("ip", Value::String(s)) => s.parse::<std::net::IpAddr>().is_ok(),
        ("date", Value::String(s)) => {
            // RFC 3339 with a zone: what Elasticsearch's default date format takes.
            s.len() >= 20 && s.as_bytes()[10] == b'T' && (s.ends_with('Z') || s.contains('+'))
        }
        _ => false,
    }
}

/// Checks one ECS line: every field outside `portwatch.*` is an ECS field of its type, the
/// categorization fields take ECS's allowed values, and `portwatch` is an object.
pub fn check_line(line: &Value) -> Result<(), String> {
    let mut all = Vec::new();
    leaves(line, "", &mut all);
    for (name, value) in &all {
        let ty = FIELDS
            .iter()
            .find(|(f, _)| f == name)
            .map(|(_, t)| *t)
            .ok_or_else(|| format!("`{name}` is not an ECS field: {line}"))?;
        if !fits(ty, value) {
            return Err(format!("`{name}`: {value} is not an ECS {ty}: {line}"));
        }
    }
    let allowed = |field: &str, values: &[&str]| -> Result<(), String> {
        let v = line.pointer(field).cloned().unwrap_or(Value::Null);
        let list: Vec<Value> = match v {
            Value::Array(a) => a,
            Value::Null => return Err(format!("no {field}: {line}")),
            one => vec![one],
        };
        for x in list {
            if !x.as_str().is_some_and(|s| values.contains(&s)) {
                return Err(format!("{field} {x} is not an ECS value: {line}"));
            }
        }
        Ok(())
    };
    allowed("/event/kind", KINDS)?;
    allowed("/event/category", CATEGORIES)?;
    allowed("/event/type", TYPES)?;
    if line.pointer("/event/outcome").is_some() {
        allowed("/event/outcome", OUTCOMES)?;
    }
    if !line["portwatch"].is_object() {
        return Err(format!("no portwatch object: {line}"));
    }
    Ok(())
}
