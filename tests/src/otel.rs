//! OpenTelemetry: the OTLP/JSON shape of a logs export request, and the semantic-convention
//! attributes (name and type, semantic conventions 1.26+) portwatch's `otel` format may write.
//! A line passes when it is one request of one record, encoded as OTLP/JSON encodes (64-bit
//! integers as decimal strings, typed `AnyValue`s), and every attribute outside `portwatch.*`
//! is one of these, of its type.
use serde_json::Value;

/// Attribute name and type (`string`, `int`, `string[]`).
pub const ATTRIBUTES: &[(&str, &str)] = &[
    ("event.name", "string"),
    ("network.transport", "string"),
    ("network.type", "string"),
    ("network.local.address", "string"),
    ("network.local.port", "int"),
    ("network.peer.address", "string"),
    ("network.peer.port", "int"),
    ("server.address", "string"),
    ("server.port", "int"),
    ("client.address", "string"),
    ("client.port", "int"),
    ("error.type", "string"),
    ("process.pid", "int"),
    ("process.parent_pid", "int"),
    ("process.executable.name", "string"),
    ("process.executable.path", "string"),
    ("process.command_args", "string[]"),
    ("process.command_line", "string"),
    ("process.user.id", "int"),
    ("process.user.name", "string"),
    ("process.group.id", "int"),
    ("container.id", "string"),
    ("container.runtime", "string"),
    ("thread.id", "int"),
];

const RESOURCE: &[&str] = &["service.name", "service.version", "host.name"];

fn digits(v: &Value) -> bool {
    v.as_str().is_some_and(|s| {
        !s.is_empty()
            && s.trim_start_matches('-')
                .bytes()
                .all(|b| b.is_ascii_digit())
    })
}

/// Is `v` an OTLP/JSON `AnyValue` (recursively)?
fn any_value(v: &Value) -> bool {
    let Some(m) = v.as_object().filter(|m| m.len() == 1) else {
        return false;
    };
    match m.iter().next() {
        Some((k, x)) => match k.as_str() {
            "stringValue" => x.is_string(),
            "boolValue" => x.is_boolean(),
            "intValue" => digits(x),
            "doubleValue" => x.is_number(),
            "arrayValue" => x["values"]
                .as_array()
                .is_some_and(|a| a.iter().all(any_value)),
            _ => false,
        },
        None => false,
    }
}

fn of_type(ty: &str, v: &Value) -> bool {
    match ty {
        "string" => v["stringValue"].is_string(),
        "int" => digits(&v["intValue"]),
        "string[]" => v["arrayValue"]["values"]
            .as_array()
            .is_some_and(|a| a.iter().all(|x| x["stringValue"].is_string())),
        _ => false,
    }
}

/// The single log record of an OTLP/JSON line.
pub fn record(line: &Value) -> &Value {
    &line["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]
}

/// An attribute's value, or Null.
pub fn attribute<'a>(line: &'a Value, key: &str) -> &'a Value {
    record(line)["attributes"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["key"] == key))
        .map_or(&Value::Null, |x| &x["value"])
}

pub fn check_line(line: &Value) -> Result<(), String> {
    let rl = line["resourceLogs"]
        .as_array()
        .filter(|a| a.len() == 1)
        .ok_or_else(|| format!("one resourceLogs: {line}"))?;
    for a in rl[0]["resource"]["attributes"]
        .as_array()
        .ok_or("resource attributes")?
    {
        let key = a["key"].as_str().unwrap_or("");
        if !RESOURCE.contains(&key) || !any_value(&a["value"]) {
            return Err(format!("resource attribute {a}: {line}"));
        }
    }
    let sl = rl[0]["scopeLogs"]
        .as_array()
        .filter(|a| a.len() == 1)
        .ok_or("one scopeLogs")?;
    if !sl[0]["scope"]["name"].is_string() {
        return Err(format!("no scope name: {line}"));
    }
    let records = sl[0]["logRecords"]
        .as_array()
        .filter(|a| a.len() == 1)
        .ok_or("one logRecord")?;
    let r = &records[0];
    if !digits(&r["timeUnixNano"]) || !digits(&r["observedTimeUnixNano"]) {
        return Err(format!("times must be decimal strings: {line}"));
    }
    if !r["severityNumber"]
        .as_u64()
        .is_some_and(|n| (1..=24).contains(&n))
    {
        return Err(format!("severityNumber: {line}"));
    }
    if !r["body"]["stringValue"].is_string() {
        return Err(format!("body: {line}"));
    }
    for a in r["attributes"].as_array().ok_or("attributes")? {
        let key = a["key"].as_str().unwrap_or("");
        if !any_value(&a["value"]) {
            return Err(format!("`{key}` is not an AnyValue: {line}"));
        }
        if key.starts_with("portwatch.") {
            continue;
        }
        let ty = ATTRIBUTES
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, t)| *t)
            .ok_or_else(|| format!("`{key}` is not a semantic-convention attribute: {line}"))?;
        if !of_type(ty, &a["value"]) {
            return Err(format!("`{key}` is not a {ty}: {line}"));
        }
    }
    Ok(())
}
