//! A one-request HTTP/1.0 client for loopback servers the tests start (portwatch's `/metrics`,
//! Prometheus's API): enough to check status codes and bodies without a client library.
use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    time::Duration,
};

/// GET `target` (path and query, already encoded) from `addr`: the status code and the body.
pub fn get(addr: &str, target: &str) -> std::io::Result<(u16, String)> {
    request(addr, "GET", target)
}

pub fn request(addr: &str, method: &str, target: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "{method} {target} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {head:?}")))?;
    Ok((code, body.to_string()))
}

/// Percent-encodes a query-string value (a PromQL expression).
pub fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
