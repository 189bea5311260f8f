//! The HTTPS server: listener, TLS handshakes, HTTP/1.1 and HTTP/2
//! connections, reload on SIGHUP and graceful shutdown on SIGTERM or SIGINT.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use metacrypt_config::{Config, FrontdSettings};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::AppState;
use crate::keyd::{KeydPool, PoolOptions};
use crate::mcias::{MciasClient, MciasOptions, MciasSetupError};
use crate::tls::{CertificateStore, TlsError};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Mcias(#[from] MciasSetupError),
    #[error("server: failed to listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server: the socket passed by systemd is unusable: {0}")]
    Systemd(std::io::Error),
    #[error("config: server.listen_addr is required unless systemd passes a listening socket")]
    NoListener,
    #[error("server: failed to install the {signal} handler: {source}")]
    Signal {
        signal: &'static str,
        source: std::io::Error,
    },
}

/// Limits and timeouts of [`serve`].
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// Time a client has to complete the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time an HTTP/1.1 client has to send its request headers once it has
    /// started a request.
    pub header_read_timeout: Duration,
    /// Time after which a connection with no request in flight is closed,
    /// counted from the handshake or from the end of the last request.
    pub idle_timeout: Duration,
    /// Interval of the HTTP/2 PING frames that detect a dead peer.
    pub http2_keep_alive_interval: Duration,
    /// Time an HTTP/2 peer has to acknowledge a PING before the connection
    /// is closed.
    pub http2_keep_alive_timeout: Duration,
    /// Maximum number of open connections. At the limit the server stops
    /// accepting until a connection closes, and new clients wait in the
    /// kernel's listen backlog.
    pub max_connections: usize,
    /// Time open connections get to finish after shutdown starts.
    pub shutdown_grace: Duration,
}

/// Default of [`ServeOptions::max_connections`]. Each connection uses one
/// file descriptor, so this stays well under the `LimitNOFILE=65536` of
/// the systemd unit.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            http2_keep_alive_interval: Duration::from_secs(30),
            http2_keep_alive_timeout: Duration::from_secs(20),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Starts frontd from a loaded configuration and serves until SIGTERM or
/// SIGINT.
pub async fn run(config: &Config, settings: FrontdSettings) -> Result<(), ServerError> {
    let store = Arc::new(CertificateStore::load(
        &settings.tls_cert,
        &settings.tls_key,
    )?);
    let tls = Arc::new(crate::tls::server_config(Arc::clone(&store))?);
    let mcias = MciasClient::new(&MciasOptions::from_config(
        &config.mcias,
        &settings.mcias_url,
    ))?;
    let keyd = KeydPool::start(PoolOptions::new(
        settings.keyd_socket.clone(),
        config.frontd.keyd_connections,
    ));
    let state = AppState::new(keyd, Arc::new(mcias), config.frontd.max_body_bytes);

    let mut terminate = signal(SignalKind::terminate()).map_err(|source| ServerError::Signal {
        signal: "SIGTERM",
        source,
    })?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|source| ServerError::Signal {
        signal: "SIGINT",
        source,
    })?;
    let mut hangup = signal(SignalKind::hangup()).map_err(|source| ServerError::Signal {
        signal: "SIGHUP",
        source,
    })?;

    let listener = listener(settings.listen_addr).await?;
    let local = listener
        .local_addr()
        .map(|addr| addr.to_string())
        .unwrap_or_else(|_| "unknown".to_owned());
    tracing::info!(
        addr = %local,
        keyd_socket = %settings.keyd_socket.display(),
        mcias = %settings.mcias_url,
        "metacrypt-frontd listening"
    );
    notify(&[sd_notify::NotifyState::Ready]);

    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            match store.reload() {
                Ok(()) => tracing::info!("reloaded the TLS certificate"),
                Err(error) => {
                    tracing::error!(error = %error, "TLS reload failed, keeping the old certificate");
                }
            }
        }
    });

    let shutdown = async move {
        let name = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutting down");
        notify(&[sd_notify::NotifyState::Stopping]);
    };
    serve(
        listener,
        tls,
        crate::api::router(state),
        shutdown,
        ServeOptions::default(),
    )
    .await;
    tracing::info!("metacrypt-frontd stopped");
    Ok(())
}

fn notify(states: &[sd_notify::NotifyState<'_>]) {
    // Without NOTIFY_SOCKET this does nothing.
    if let Err(error) = sd_notify::notify(states) {
        tracing::warn!(error = %error, "failed to notify systemd");
    }
}

/// Returns the socket systemd passed (`LISTEN_FDS`), or binds `addr`.
async fn listener(addr: Option<SocketAddr>) -> Result<TcpListener, ServerError> {
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() > 0 {
        if fds.len() > 1 {
            tracing::warn!(
                count = fds.len(),
                "systemd passed several sockets; using the first"
            );
        }
        let std_listener = fds
            .take_tcp_listener(0)
            .map_err(ServerError::Systemd)?
            .ok_or_else(|| {
                ServerError::Systemd(std::io::Error::other(
                    "file descriptor 3 is not a TCP listening socket",
                ))
            })?;
        std_listener
            .set_nonblocking(true)
            .map_err(ServerError::Systemd)?;
        if addr.is_some() {
            tracing::info!("using the socket passed by systemd instead of server.listen_addr");
        }
        return TcpListener::from_std(std_listener).map_err(ServerError::Systemd);
    }
    let addr = addr.ok_or(ServerError::NoListener)?;
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Listen { addr, source })
}

/// Accepts TLS connections on `listener` and serves `router` on them until
/// `shutdown` completes, then lets open connections finish within the
/// grace period.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    shutdown: impl Future<Output = ()>,
    options: ServeOptions,
) {
    let acceptor = TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(options.max_connections.max(1)));
    let mut accept_errors = RepeatLog::new(Duration::from_secs(10));
    let mut limit_reached = RepeatLog::new(Duration::from_secs(60));
    tokio::pin!(shutdown);
    loop {
        // A slot is taken before accept, so at the limit connections wait
        // in the listen backlog instead of being accepted and dropped.
        let slot = match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if let Some(repeats) = limit_reached.record() {
                    tracing::warn!(
                        max_connections = options.max_connections,
                        repeats,
                        "connection limit reached; waiting for a connection to close"
                    );
                }
                tokio::select! {
                    slot = Arc::clone(&slots).acquire_owned() => match slot {
                        Ok(slot) => slot,
                        // The semaphore is never closed.
                        Err(_) => break,
                    },
                    () = &mut shutdown => break,
                }
            }
        };
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if let Some(errors) = accept_errors.take_repeats() {
                        tracing::info!(errors, "accepting connections again");
                    }
                    let connection = serve_connection(
                        stream,
                        canonical_peer(peer),
                        acceptor.clone(),
                        router.clone(),
                        graceful.watcher(),
                        options,
                    );
                    tokio::spawn(async move {
                        connection.await;
                        drop(slot);
                    });
                }
                Err(error) => {
                    // Usually EMFILE or ENFILE (out of file descriptors).
                    // Pausing lets connections close instead of spinning on
                    // accept, and the log line is rate-limited.
                    if let Some(repeats) = accept_errors.record() {
                        tracing::error!(
                            error = %error,
                            repeats,
                            "failed to accept a connection"
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let open = graceful.count();
    if open > 0 {
        tracing::info!(connections = open, "waiting for open connections to finish");
    }
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(options.shutdown_grace) => {
            tracing::warn!(
                grace_secs = options.shutdown_grace.as_secs(),
                "connections still open after the grace period; closing them"
            );
        }
    }
}

/// Rate limit of a repeating log line: the first event is logged, then at
/// most one per `interval`, each with the number of events not logged
/// since the last line.
struct RepeatLog {
    interval: Duration,
    last_logged: Option<Instant>,
    unlogged: u64,
    total: u64,
}

impl RepeatLog {
    fn new(interval: Duration) -> Self {
        Self {
            interval,
            last_logged: None,
            unlogged: 0,
            total: 0,
        }
    }

    /// Counts one event. Returns the number of events since the last
    /// logged line when this one is to be logged.
    fn record(&mut self) -> Option<u64> {
        self.total += 1;
        let now = Instant::now();
        let due = self
            .last_logged
            .is_none_or(|last| now.duration_since(last) >= self.interval);
        if due {
            self.last_logged = Some(now);
            let repeats = self.unlogged;
            self.unlogged = 0;
            Some(repeats)
        } else {
            self.unlogged += 1;
            None
        }
    }

    /// Returns the number of events since the last call, if there were any,
    /// and resets the limit so the next event is logged at once.
    fn take_repeats(&mut self) -> Option<u64> {
        let total = std::mem::take(&mut self.total);
        self.last_logged = None;
        self.unlogged = 0;
        (total > 0).then_some(total)
    }
}

/// Requests in flight on one connection and the time the last one ended.
struct Activity {
    in_flight: AtomicUsize,
    last_done: Mutex<Instant>,
}

impl Activity {
    fn new() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            last_done: Mutex::new(Instant::now()),
        }
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(Arc::clone(self))
    }

    /// Returns the instant at which the connection will have been idle for
    /// `timeout`, or `None` while a request is in flight.
    fn idle_deadline(&self, timeout: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let last_done = *self
            .last_done
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Some(last_done + timeout)
    }
}

/// Marks one request as in flight until dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        *self
            .0
            .last_done
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Waits until the connection has had no request in flight for `timeout`.
/// Only requests count as activity, so HTTP/2 PINGs and bytes trickled in
/// without completing a request do not keep a connection open.
async fn idle(activity: &Activity, timeout: Duration) {
    loop {
        match activity.idle_deadline(timeout) {
            Some(deadline) if deadline <= Instant::now() => return,
            Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
            None => tokio::time::sleep(timeout).await,
        }
    }
}

/// Replaces an IPv4-mapped IPv6 address (`[::ffff:192.0.2.7]:50312`),
/// which an IPv6 listener reports for an IPv4 client, by the IPv4 address
/// (`192.0.2.7:50312`). The logs then name an IPv4 client the same way on
/// every listener.
fn canonical_peer(peer: SocketAddr) -> SocketAddr {
    match peer {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => peer,
        },
        SocketAddr::V4(_) => peer,
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    router: Router,
    watcher: Watcher,
    options: ServeOptions,
) {
    // Handshake failures are caused by the peer, so they are debug lines.
    let tls = match tokio::time::timeout(options.handshake_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            tracing::debug!(peer = %peer, error = %error, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(peer = %peer, "TLS handshake timed out");
            return;
        }
    };
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(options.http2_keep_alive_interval)
        .keep_alive_timeout(options.http2_keep_alive_timeout);

    let activity = Arc::new(Activity::new());
    let service = {
        let activity = Arc::clone(&activity);
        tower::service_fn(move |mut request: axum::http::Request<Incoming>| {
            let in_flight = activity.begin();
            request.extensions_mut().insert(ConnectInfo(peer));
            let router = router.clone();
            async move {
                let response = router.oneshot(request).await;
                drop(in_flight);
                response
            }
        })
    };
    let connection = builder.serve_connection(TokioIo::new(tls), TowerToHyperService::new(service));
    let connection = watcher.watch(connection);
    tokio::select! {
        result = connection => {
            if let Err(error) = result {
                tracing::debug!(peer = %peer, error = %error, "connection closed with an error");
            }
        }
        () = idle(&activity, options.idle_timeout) => {
            // Dropping the connection closes the socket.
            tracing::debug!(
                peer = %peer,
                idle_secs = options.idle_timeout.as_secs(),
                "closing an idle connection"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_peer_becomes_ipv4() {
        let cases = [
            ("[::ffff:192.0.2.7]:50312", "192.0.2.7:50312"),
            ("192.0.2.7:50312", "192.0.2.7:50312"),
            ("[::1]:50312", "[::1]:50312"),
            ("[fe80::1%2]:50312", "[fe80::1%2]:50312"),
            ("[::192.0.2.7]:50312", "[::c000:207]:50312"),
        ];
        for (peer, expected) in cases {
            let peer: SocketAddr = peer.parse().unwrap();
            assert_eq!(canonical_peer(peer).to_string(), expected, "{peer}");
        }
    }

    #[test]
    fn first_repeat_is_logged() {
        let mut log = RepeatLog::new(Duration::from_secs(3600));
        assert_eq!(log.record(), Some(0));
    }

    #[test]
    fn repeats_within_interval_are_counted() {
        let mut log = RepeatLog::new(Duration::from_secs(3600));
        log.record();
        assert_eq!(log.record(), None);
        assert_eq!(log.record(), None);
        assert_eq!(log.take_repeats(), Some(3));
    }

    #[test]
    fn logging_resumes_after_take() {
        let mut log = RepeatLog::new(Duration::from_secs(3600));
        log.record();
        log.record();
        log.take_repeats();
        assert_eq!(log.take_repeats(), None);
        assert_eq!(log.record(), Some(0));
    }

    #[test]
    fn zero_interval_logs_every_event() {
        let mut log = RepeatLog::new(Duration::ZERO);
        log.record();
        assert_eq!(log.record(), Some(0));
    }

    #[test]
    fn request_in_flight_is_not_idle() {
        let activity = Arc::new(Activity::new());
        let in_flight = activity.begin();
        assert_eq!(activity.idle_deadline(Duration::from_secs(1)), None);
        drop(in_flight);
        assert!(activity.idle_deadline(Duration::from_secs(1)).is_some());
    }
}
