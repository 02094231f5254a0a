//! `portwatch status`: the running daemon answers one JSON object on a unix socket that only root
//! can open (mode 0600 in a 0700 directory). The socket doubles as the single-instance lock: a
//! second daemon finds it answering and refuses to start.
use std::{
    io::Read as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::Value;
use tokio::io::AsyncWriteExt as _;

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("another portwatch is already running: its status socket {0} answers")]
    AlreadyRunning(String),
    #[error("status socket {path}: {source}")]
    Socket {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no portwatch daemon answers on {path} ({reason}); is it running? (`systemctl status portwatch`)"
    )]
    NoDaemon { path: String, reason: String },
    #[error("permission denied on {0}: the status socket is root-only")]
    Denied(String),
    #[error("the daemon on {path} sent an unreadable answer: {reason}")]
    BadAnswer { path: String, reason: String },
}

pub struct StatusServer {
    listener: tokio::net::UnixListener,
    path: PathBuf,
}

impl StatusServer {
    pub fn bind(path: &Path) -> Result<Self, StatusError> {
        let io = |source| StatusError::Socket {
            path: path.display().to_string(),
            source,
        };
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(StatusError::AlreadyRunning(path.display().to_string()));
            }
            // Left behind by a daemon that died: nobody answers on it.
            std::fs::remove_file(path).map_err(io)?;
        }
        crate::ops::private_dir::ensure_parent(path).map_err(io)?;
        let listener = tokio::net::UnixListener::bind(path).map_err(io)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the next client.
    pub async fn accept(&self) -> std::io::Result<tokio::net::UnixStream> {
        self.listener.accept().await.map(|(s, _)| s)
    }
}

impl Drop for StatusServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Sends the answer without holding up the event loop.
pub fn answer(mut stream: tokio::net::UnixStream, mut body: Vec<u8>) {
    body.push(b'\n');
    tokio::spawn(async move {
        let write = async {
            stream.write_all(&body).await?;
            stream.shutdown().await
        };
        if tokio::time::timeout(Duration::from_secs(5), write)
            .await
            .is_err()
        {
            tracing::debug!("status client too slow; dropped");
        }
    });
}

/// Client side: asks the daemon.
pub fn query(path: &Path) -> Result<Value, StatusError> {
    let p = || path.display().to_string();
    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied => StatusError::Denied(p()),
        _ => StatusError::NoDaemon {
            path: p(),
            reason: e.to_string(),
        },
    })?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .map_err(|e| StatusError::BadAnswer {
            path: p(),
            reason: e.to_string(),
        })?;
    serde_json::from_str(&text).map_err(|e| StatusError::BadAnswer {
        path: p(),
        reason: e.to_string(),
    })
}

/// The human-readable form of a status answer.
pub fn render(v: &Value) -> String {
    let mut out = String::new();
    let line = |out: &mut String, k: &str, val: String| out.push_str(&format!("{k:<18} {val}\n"));
    line(
        &mut out,
        "version",
        v["version"].as_str().unwrap_or("?").to_string(),
    );
    line(&mut out, "pid", v["pid"].to_string());
    line(&mut out, "uptime", format!("{} s", v["uptime_seconds"]));
    line(
        &mut out,
        "kernel",
        v["kernel"].as_str().unwrap_or("?").to_string(),
    );
    if let Some(a) = v["attach"].as_object() {
        let s: Vec<String> = a
            .iter()
            .map(|(f, s)| format!("{f}={}", s.as_str().unwrap_or("?")))
            .collect();
        line(&mut out, "attach", s.join(" "));
    }
    for kind in ["bind", "listen", "connect", "close", "total"] {
        line(
            &mut out,
            &format!("events {kind}"),
            format!(
                "{} ({:.1}/s over the last {} s)",
                v["events"][kind],
                v["events_per_second"][kind].as_f64().unwrap_or(0.0),
                v["rate_window_seconds"]
            ),
        );
    }
    line(
        &mut out,
        "lost (kernel)",
        v["lost"]["ring_buffer"].to_string(),
    );
    line(
        &mut out,
        "log lines failed",
        v["lost"]["log_write_failed"].to_string(),
    );
    line(
        &mut out,
        "undecodable",
        v["lost"]["undecodable"].to_string(),
    );
    line(
        &mut out,
        "process gone",
        v["attribution"]["process_gone"].to_string(),
    );
    let cache = |c: &Value| format!("{}/{} ({} evicted)", c["size"], c["max"], c["evictions"]);
    line(
        &mut out,
        "caches",
        format!(
            "processes {}, users {}, process table {}",
            cache(&v["caches"]["processes"]),
            cache(&v["caches"]["users"]),
            cache(&v["caches"]["process_table"])
        ),
    );
    line(
        &mut out,
        "snapshot events",
        v["events"]["snapshot"].to_string(),
    );
    if v["store"].is_object() {
        line(
            &mut out,
            "history",
            format!(
                "{} open sockets, {} intervals not recorded, {} closed after lost releases",
                v["store"]["open_sockets"], v["store"]["writes_dropped"], v["store"]["swept"]
            ),
        );
    }
    let blind: Vec<&str> = v["canary"]["blind"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    line(
        &mut out,
        "canary",
        if blind.is_empty() {
            format!(
                "every hook family seen ({} of {} rounds complete)",
                v["canary"]["rounds"]["complete"], v["canary"]["rounds"]["rounds"]
            )
        } else {
            format!("BLIND: {} deliver no events", blind.join(", "))
        },
    );
    match v["alerts"].as_object() {
        None => line(&mut out, "alerts", "no policy".into()),
        Some(a) => {
            let c = &a["counters"];
            line(
                &mut out,
                "alerts",
                format!(
                    "{} rules from {}; {} raised, {} repeats, {} rate-limited, {} listeners known",
                    a["rules"],
                    a["policy"].as_str().unwrap_or("?"),
                    c["raised"],
                    c["repeats"],
                    c["rate_limited"],
                    a["listeners"]
                ),
            );
            let h = &a["hook"];
            line(
                &mut out,
                "alert hook",
                format!(
                    "{} started, {} failed, {} timed out, {} skipped",
                    h["started"], h["failed"], h["timed_out"], h["skipped"]
                ),
            );
        }
    }
    line(
        &mut out,
        "log",
        match v["log"]["path"].as_str() {
            Some(p) => format!("{p} ({} bytes)", v["log"]["bytes"]),
            None => "stdout only".into(),
        },
    );
    out
}
