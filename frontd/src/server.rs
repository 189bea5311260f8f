//! The HTTPS server: listener, TLS handshakes, HTTP/1.1 and HTTP/2
//! connections, reload on SIGHUP and graceful shutdown on SIGTERM or SIGINT.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use metacrypt_config::{Config, FrontdSettings};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio_rustls::TlsAcceptor;

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

/// Timeouts of [`serve`].
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// Time a client has to complete the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time an HTTP/1.1 client has to send its request headers.
    pub header_read_timeout: Duration,
    /// Time open connections get to finish after shutdown starts.
    pub shutdown_grace: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
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
    let state = AppState {
        keyd,
        mcias: Arc::new(mcias),
        max_body_bytes: config.frontd.max_body_bytes,
    };

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
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let connection = serve_connection(
                        stream,
                        peer,
                        acceptor.clone(),
                        router.clone(),
                        graceful.watcher(),
                        options,
                    );
                    tokio::spawn(connection);
                }
                Err(error) => {
                    // Usually out of file descriptors; pausing lets
                    // connections close instead of spinning on accept.
                    tracing::error!(error = %error, "failed to accept a connection");
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
    builder.http2().timer(TokioTimer::new());
    let connection = builder.serve_connection(TokioIo::new(tls), TowerToHyperService::new(router));
    if let Err(error) = watcher.watch(connection).await {
        tracing::debug!(peer = %peer, error = %error, "connection closed with an error");
    }
}
