//! The opt-in `/metrics` endpoint (`[metrics] listen`): HTTP/1.1 on a loopback address only, served
//! from its own thread. A scrape asks the daemon's loop for the metrics (the loop owns every
//! counter; it renders at most once a second for scrapes) and waits at most `RENDER_WAIT`. Any local user can connect, so connections are few and short: at most
//! `MAX_CONNECTIONS` at once, `REQUEST_WAIT` for a request's headers, one request each.
use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{Semaphore, mpsc, oneshot};

const MAX_CONNECTIONS: usize = 32;
const REQUEST_WAIT: Duration = Duration::from_secs(3);
const RENDER_WAIT: Duration = Duration::from_secs(5);
/// Longest a connection lives, whatever the client does.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(15);
/// The text exposition format's content type.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A scrape's request to the loop: the rendered metrics go back on this channel.
pub type Render = oneshot::Sender<Arc<str>>;

#[derive(Debug, thiserror::Error)]
pub enum MetricsHttpError {
    #[error(
        "metrics listen address {0}: not a loopback address (the endpoint is for a local Prometheus or a proxy; docs/metrics.md)"
    )]
    NotLoopback(SocketAddr),
    #[error("metrics listen address {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Checks that `addr` is loopback, for the config's and the command line's validation.
pub fn check_loopback(addr: SocketAddr) -> Result<SocketAddr, MetricsHttpError> {
    if addr.ip().is_loopback() {
        Ok(addr)
    } else {
        Err(MetricsHttpError::NotLoopback(addr))
    }
}

/// Binds `addr` (before the daemon reports ready, so a taken port is a start-up error) and
/// serves it from a task; scrapes arrive on the returned receiver. Runs inside the runtime.
pub fn start(addr: SocketAddr) -> Result<mpsc::Receiver<Render>, MetricsHttpError> {
    check_loopback(addr)?;
    let bind = |source| MetricsHttpError::Bind { addr, source };
    let listener = std::net::TcpListener::bind(addr).map_err(bind)?;
    listener.set_nonblocking(true).map_err(bind)?;
    // Its own thread and runtime: parsing what local clients send never runs on the event
    // loop's thread, which only answers each scrape from a render at most a second old.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(bind)?;
    let (tx, rx) = mpsc::channel(MAX_CONNECTIONS);
    std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || {
            runtime.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => serve(l, tx).await,
                    Err(e) => tracing::error!(error = %e, "the metrics endpoint could not start"),
                }
            })
        })
        .map_err(bind)?;
    tracing::info!(%addr, "serving /metrics");
    Ok(rx)
}

/// The next scrape waiting for a render; never ready without an endpoint.
pub async fn next(rx: &mut Option<mpsc::Receiver<Render>>) -> Option<Render> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn serve(listener: tokio::net::TcpListener, tx: mpsc::Sender<Render>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut refused: u64 = 0;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(
                    refused,
                    "metrics endpoint busy: connection closed unanswered"
                );
            }
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(REQUEST_WAIT)
                .keep_alive(false)
                .serve_connection(
                    TokioIo::new(stream),
                    service_fn(move |req| answer(req, tx.clone())),
                );
            match tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "metrics connection ended"),
                Err(_) => tracing::debug!("metrics connection outlived its time; closed"),
            }
            drop(slot);
        });
    }
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(CONTENT_TYPE),
    );
    r
}

async fn answer(
    req: Request<Incoming>,
    tx: mpsc::Sender<Render>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() != "/metrics" {
        return Ok(reply(StatusCode::NOT_FOUND, "only /metrics is served\n"));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(reply(StatusCode::METHOD_NOT_ALLOWED, "GET /metrics\n"));
    }
    let (back, rendered) = oneshot::channel();
    if tx.send(back).await.is_err() {
        return Ok(reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "the daemon is stopping\n",
        ));
    }
    Ok(match tokio::time::timeout(RENDER_WAIT, rendered).await {
        Ok(Ok(text)) if !text.is_empty() => reply(StatusCode::OK, Bytes::from(text.to_string())),
        Ok(_) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "rendering the metrics failed (see the daemon's log)\n",
        ),
        Err(_) => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "the daemon's loop did not answer in time\n",
        ),
    })
}
