//! [`MetricsServer`]: `/metrics` (Prometheus text) and `/health` over HTTP/1.1 (hyper).
//!
//! It shares the receiver's runtime, so a client must never be able to hold it up:
//! requests are bounded (16 KiB of headers, read within [`HEADER_TIMEOUT`]), every
//! connection ends after one response or [`CONNECTION_TIMEOUT`], at most
//! [`MAX_CONNECTIONS`] are served at once (more are closed at once), bodies are never
//! read, and the one call that may block (the free space of the archive directories) runs
//! on a blocking thread with a deadline ([`DiskProbe`]).
//!
//! `/health`: `200 ok` when every source is healthy ([`SourceState::health`]), else `503`
//! with one line per failing source, `NAME: REASON`. A source that is reconnecting
//! counts as failing.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::Sources;
use crate::disk::DiskProbe;
use crate::metrics;

#[cfg(doc)]
use walsink_receiver::SourceState;

/// How long a client may take to send its request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection may last in all.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(15);
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 16;
/// Largest request head accepted (hyper's smallest buffer limit).
const MAX_HEAD: usize = 16 * 1024;

/// A bound listener for `/metrics` and `/health`.
#[derive(Debug)]
pub struct MetricsServer {
    listener: TcpListener,
}

impl MetricsServer {
    /// Binds `addr` (a busy or forbidden address is an error at startup, not later).
    pub async fn bind(addr: SocketAddr) -> std::io::Result<MetricsServer> {
        Ok(MetricsServer {
            listener: TcpListener::bind(addr).await?,
        })
    }

    /// The bound address (the port, when bound to port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `cancel`.
    pub async fn serve(self, sources: Sources, cancel: CancellationToken) {
        if let Ok(a) = self.local_addr() {
            info!("serving metrics at http://{a}/metrics and health at http://{a}/health");
        }
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let probe = DiskProbe::default();
        loop {
            let (stream, peer) = tokio::select! {
                _ = cancel.cancelled() => return,
                a = self.listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: do not spin.
                        debug!("metrics listener: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                debug!("metrics listener: too many connections, closing the one from {peer}");
                continue;
            };
            let (sources, probe, cancel) = (sources.clone(), probe.clone(), cancel.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let (sources, probe) = (sources.clone(), probe.clone());
                    async move { Ok::<_, Infallible>(respond(req, &sources, &probe).await) }
                });
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .max_buf_size(MAX_HEAD)
                    .keep_alive(false);
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    r = tokio::time::timeout(CONNECTION_TIMEOUT, conn) => match r {
                        Ok(Err(e)) => debug!("metrics connection from {peer}: {e}"),
                        Err(_) => debug!("metrics connection from {peer}: timed out"),
                        Ok(Ok(())) => {}
                    },
                    _ = cancel.cancelled() => {}
                }
                drop(permit);
            });
        }
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

async fn respond(
    req: Request<Incoming>,
    sources: &Sources,
    probe: &DiskProbe,
) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "only GET and HEAD\n".into(),
        );
        r.headers_mut()
            .insert(hyper::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        "/metrics" => {
            let list = sources.list();
            let dirs = list
                .iter()
                .filter_map(|(_, s)| s.directory().map(|d| d.to_path_buf()))
                .collect();
            let disk = probe.probe(dirs).await;
            let body = metrics::encode(metrics::rows(&list, &disk));
            // OpenMetrics for those who ask for it (Prometheus does), else the classic format.
            let openmetrics = req
                .headers()
                .get_all(hyper::header::ACCEPT)
                .iter()
                .any(|v| {
                    v.to_str()
                        .is_ok_and(|v| v.contains("application/openmetrics-text"))
                });
            if openmetrics {
                text(StatusCode::OK, metrics::CONTENT_TYPE, body)
            } else {
                text(
                    StatusCode::OK,
                    metrics::CLASSIC_CONTENT_TYPE,
                    metrics::classic_text(&body),
                )
            }
        }
        "/health" => {
            let (ok, body) = health_report(sources);
            let status = if ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            text(status, PLAIN, body)
        }
        _ => text(
            StatusCode::NOT_FOUND,
            PLAIN,
            "not found: try /metrics or /health\n".into(),
        ),
    }
}

/// Whether every source is healthy, and the body of `/health`: `ok`, or one line per
/// failing source (`NAME: REASON`, newlines in reasons flattened).
pub fn health_report(sources: &Sources) -> (bool, String) {
    let list = sources.list();
    if list.is_empty() {
        return (false, "no sources\n".into());
    }
    let mut body = String::new();
    for (name, s) in &list {
        let h = s.health();
        if !h.is_ok() {
            let reason = h.to_string().replace(['\n', '\r'], " ");
            body.push_str(&format!("{name}: {reason}\n"));
        }
    }
    if body.is_empty() {
        (true, "ok\n".into())
    } else {
        (false, body)
    }
}
