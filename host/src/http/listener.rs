//! The accept loop: every connection served with hyper over plain TCP or
//! TLS, within caps that keep misbehaving clients from exhausting the
//! server.
//!
//! The caps are these. A client over the cap on open connections waits in
//! the listen backlog until a slot frees. Request heads over a size or a
//! header count get 431. A client has a limited time to send a request
//! head, which also ends idle keep-alive connections and bounds the TLS
//! handshake. A write that a client does not read within the write
//! timeout drops the connection. Request bodies and processing time are
//! capped by the router's layers, WebSocket messages by the chat module.
//!
//! Each request carries the peer's address as [`ConnectInfo`] and, over
//! TLS, a [`ClientCertificate`] when the client presented a valid one.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt as _;

use super::client_stream::ClientStream;
use super::operator::ClientCertificate;
use super::tls::Tls;
use crate::config::Config;
use crate::metrics::Metrics;

/// Default cap on open connections, WebSockets included. Each costs a file
/// descriptor, buffers and a task; the cap keeps a connection flood from
/// exhausting them. Raise the process's open-file limit above it.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// Default time a client has to send a request's headers, from the first
/// byte or from the end of the previous response. It drops slowloris
/// clients that trickle headers and idle keep-alive connections.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Default time a write may wait on a client that reads nothing before the
/// connection is dropped.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest request head (request line and headers), in bytes. Requests of
/// this API need a few kilobytes; the cap stops huge header lines from
/// costing memory and parse time. Larger heads get 431.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Most header fields in one request; more get 431.
pub const MAX_HEADERS: usize = 64;

/// Pause after an accept error such as running out of file descriptors,
/// so the loop does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The connection caps in force.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Time to send a request head or finish the TLS handshake.
    pub header_read_timeout: Duration,
    /// Time a write may stall.
    pub write_timeout: Duration,
}

impl ConnectionLimits {
    /// Reads the limits from `config`, with the defaults for unset ones.
    pub fn from_config(config: &Config) -> Self {
        let extra = &config.extra;
        Self {
            max_connections: extra.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
            header_read_timeout: extra
                .header_read_timeout
                .map_or(DEFAULT_HEADER_READ_TIMEOUT, Duration::from_secs),
            write_timeout: extra
                .write_timeout
                .map_or(DEFAULT_WRITE_TIMEOUT, Duration::from_secs),
        }
    }

    fn http1(&self) -> http1::Builder {
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            .max_header_size(MAX_HEADER_BYTES)
            .max_headers(MAX_HEADERS);
        builder
    }
}

/// State shared by every connection task.
struct Shared {
    app: Router,
    tls: Option<Arc<Tls>>,
    limits: ConnectionLimits,
    http: http1::Builder,
}

/// Accepts connections on `listener` and serves `app` on each until
/// `shutdown` completes, then lets open requests finish. Upgraded
/// WebSockets are not waited for. `metrics` counts the open connections.
pub(super) async fn run(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<Tls>>,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let _watcher = tls
        .as_ref()
        .map(|tls| AbortOnDrop(tokio::spawn(Arc::clone(tls).watch())));
    let shared = Arc::new(Shared {
        app,
        tls,
        limits,
        http: limits.http1(),
    });
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (stop, stopping) = watch::channel(());
    tokio::pin!(shutdown);

    loop {
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => slot,
            () = &mut shutdown => break,
        };
        // The semaphore is never closed.
        let Ok(slot) = slot else { break };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "failed to accept a connection");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let stream = ClientStream::new(stream, limits.write_timeout, slot);
        let task = serve_connection(Arc::clone(&shared), stream, peer, stopping.clone());
        let open = metrics.connection_opened();
        tokio::spawn(async move {
            task.await;
            drop(open);
        });
    }

    drop(stopping);
    let _ = stop.send(());
    stop.closed().await;
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn serve_connection(
    shared: Arc<Shared>,
    stream: ClientStream<TcpStream>,
    peer: SocketAddr,
    stopping: watch::Receiver<()>,
) {
    let Some(tls) = shared.tls.clone() else {
        serve_http(&shared, TokioIo::new(stream), peer, None, stopping).await;
        return;
    };
    let handshake = tls.acceptor().accept(stream);
    let stream = match tokio::time::timeout(shared.limits.header_read_timeout, handshake).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            tracing::debug!(%error, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            return;
        }
    };
    let certificate = stream
        .get_ref()
        .1
        .peer_certificates()
        .is_some_and(|chain| !chain.is_empty())
        .then_some(ClientCertificate);
    serve_http(&shared, TokioIo::new(stream), peer, certificate, stopping).await;
}

async fn serve_http<I>(
    shared: &Shared,
    io: I,
    peer: SocketAddr,
    certificate: Option<ClientCertificate>,
    mut stopping: watch::Receiver<()>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let app = shared.app.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        let extensions = request.extensions_mut();
        extensions.insert(ConnectInfo(peer));
        if let Some(certificate) = certificate {
            extensions.insert(certificate);
        }
        // The router never fails: its error type is `Infallible`.
        app.clone().oneshot(request.map(Body::new))
    });
    let connection = shared.http.serve_connection(io, service).with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = stopping.changed() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        // Clients that vanish, time out or send garbage end here; the
        // server itself is fine.
        tracing::debug!(%error, "connection ended with an error");
    }
}
