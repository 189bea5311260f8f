//! keyd's two Unix sockets: `front` for frontd and `admin` for the CLI.
//!
//! Each accepted connection is checked with SO_PEERCRED against the uids
//! and gids allowed on its socket. The client's first frame must be a
//! `Hello` with this protocol version and the socket's role. After that,
//! requests are read in a loop and each runs in its own task, so up to
//! [`MAX_IN_FLIGHT`] are in flight per connection. Replies and seal state
//! changes go out through one writer per connection. Blocking work (Argon2,
//! SQLite, signing) runs on blocking threads, and engine operations take a
//! permit from a semaphore sized by `keyd.signing_threads`, which they give
//! up while they wait for their commit (see [`crate::slot`]).
#![forbid(unsafe_code)]

use std::fs::{self, DirBuilder, Permissions};
use std::io;
use std::os::fd::RawFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metacrypt_config::KeydConfig;
use metacrypt_protocol::{
    ClientMessage, ErrorBody, ErrorCode, FrameError, Hello, HelloReply, PROTOCOL_VERSION, Reply,
    Request, RequestBody, ResponseBody, SealState, ServerMessage, SocketRole, encode_frame,
    read_frame_async,
};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use zeroize::Zeroizing;

use crate::audit::{self, AuditLog, AuditRecord};
use crate::service::Service;
use crate::slot;

/// Requests in flight on one connection; the next frame is not read until
/// one finishes.
pub const MAX_IN_FLIGHT: usize = 256;

/// How long a new connection may take to send its `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Replies gathered into one socket write at most.
const MAX_REPLIES_PER_WRITE: usize = 64;

/// Maximum length of a trace id copied into log lines, in characters.
const MAX_TRACE_ID_CHARS: usize = 128;

/// Maximum length of a Hello's client name copied into log lines, in
/// characters.
const MAX_LOGGED_CLIENT_CHARS: usize = 128;

/// Returns whether `role`'s socket accepts a request. Seal operations are
/// accepted on both sockets, mounts and engine requests only on the front
/// socket.
pub fn accepts(role: SocketRole, body: &RequestBody) -> bool {
    match body {
        RequestBody::Status
        | RequestBody::Init { .. }
        | RequestBody::Unseal { .. }
        | RequestBody::Seal => true,
        RequestBody::ListMounts
        | RequestBody::Mount { .. }
        | RequestBody::Unmount { .. }
        | RequestBody::Ca { .. }
        | RequestBody::ListPolicyRules
        | RequestBody::PutPolicyRule { .. }
        | RequestBody::DeletePolicyRule { .. }
        | RequestBody::RecordDenial { .. } => role == SocketRole::Front,
    }
}

/// The rules for which peers may connect to each socket.
///
/// NOTE: SO_PEERCRED reports the peer's effective gid only, not its
/// supplementary groups, so a gid rule matches a client whose primary group
/// is that gid (systemd `Group=`), not one that merely has it in
/// `SupplementaryGroups=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessPolicy {
    own_uid: u32,
    front_uids: Vec<u32>,
    front_gids: Vec<u32>,
    admin_uids: Vec<u32>,
    admin_gids: Vec<u32>,
}

impl AccessPolicy {
    /// Builds the rules of `config` for a keyd running as `own_uid`.
    pub fn new(config: &KeydConfig, own_uid: u32) -> Self {
        Self {
            own_uid,
            front_uids: config.front_allowed_uids.clone(),
            front_gids: config.front_allowed_gids.clone(),
            admin_uids: config.admin_allowed_uids.clone(),
            admin_gids: config.admin_allowed_gids.clone(),
        }
    }

    /// keyd's own uid is allowed on both sockets, root on the admin socket,
    /// and anyone whose uid or gid the socket's lists name.
    pub fn allows(&self, role: SocketRole, uid: u32, gid: u32) -> bool {
        if uid == self.own_uid {
            return true;
        }
        match role {
            SocketRole::Front => self.front_uids.contains(&uid) || self.front_gids.contains(&gid),
            SocketRole::Admin => {
                uid == 0 || self.admin_uids.contains(&uid) || self.admin_gids.contains(&gid)
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("socket: failed to read the sockets passed by systemd: {0}")]
    Systemd(io::Error),
    #[error(
        "socket: systemd passed sockets named {names:?}; keyd needs two Unix sockets named \
         front and admin (FileDescriptorName= in the .socket unit)"
    )]
    SystemdNames { names: Vec<String> },
    #[error("socket: systemd socket {name}: {source}")]
    SystemdSocket { name: String, source: io::Error },
    #[error("socket: failed to create directory {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("socket: {path} exists and is not a socket; remove it or choose another path")]
    NotASocket { path: PathBuf },
    #[error("socket: another process is listening on {path}; is keyd already running?")]
    InUse { path: PathBuf },
    #[error("socket: failed to remove stale socket {path}: {source}")]
    RemoveStale { path: PathBuf, source: io::Error },
    #[error("socket: failed to bind {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("socket: failed to set mode {mode:04o} on {path}: {source}")]
    Chmod {
        path: PathBuf,
        mode: u32,
        source: io::Error,
    },
}

/// A socket file this process created, identified by its inode and change
/// time so that a socket another process bound later at the same path is
/// left alone.
#[derive(Debug, Clone)]
struct CreatedSocket {
    path: PathBuf,
    inode: u64,
    changed: (i64, i64),
    /// The socket's directory, when this process created it.
    created_dir: Option<PathBuf>,
}

impl CreatedSocket {
    fn is(&self, metadata: &fs::Metadata) -> bool {
        metadata.file_type().is_socket()
            && metadata.ino() == self.inode
            && (metadata.ctime(), metadata.ctime_nsec()) == self.changed
    }
}

/// The two listening sockets, opened before the runtime starts.
#[derive(Debug)]
pub struct Listeners {
    pub front: std::os::unix::net::UnixListener,
    pub admin: std::os::unix::net::UnixListener,
    /// `true` when systemd passed the sockets.
    pub from_systemd: bool,
    created: Vec<CreatedSocket>,
}

impl Listeners {
    /// Takes the sockets named `front` and `admin` from systemd
    /// (`LISTEN_FDS`/`LISTEN_FDNAMES`) when it passed any, else binds
    /// `keyd.front_socket` (mode 0660) and `keyd.admin_socket` (mode 0600).
    /// Must run before any other thread exists, because it edits the
    /// process environment and umask.
    pub fn open(config: &KeydConfig) -> Result<Listeners, SocketError> {
        let named: Vec<(RawFd, String)> = sd_notify::listen_fds_with_names()
            .map_err(SocketError::Systemd)?
            .collect();
        if !named.is_empty() {
            return Self::from_systemd(named);
        }
        let front = bind_socket(&config.front_socket, 0o660)?;
        let admin = match bind_socket(&config.admin_socket, 0o600) {
            Ok(admin) => admin,
            Err(err) => {
                remove_socket_file(&front.1);
                return Err(err);
            }
        };
        Ok(Listeners {
            front: front.0,
            admin: admin.0,
            from_systemd: false,
            created: vec![front.1, admin.1],
        })
    }

    fn from_systemd(named: Vec<(RawFd, String)>) -> Result<Listeners, SocketError> {
        let names: Vec<String> = named.iter().map(|(_, name)| name.clone()).collect();
        let has = |wanted: &str| names.iter().filter(|name| *name == wanted).count() == 1;
        if named.len() != 2 || !has("front") || !has("admin") {
            return Err(SocketError::SystemdNames { names });
        }
        // listenfd validates the fd type and converts it without unsafe
        // code; it reads LISTEN_FDS again and clears it from the environment.
        let mut fds = listenfd::ListenFd::from_env();
        let mut front = None;
        let mut admin = None;
        for (index, (_, name)) in named.iter().enumerate() {
            let listener = fds
                .take_unix_listener(index)
                .map_err(|source| SocketError::SystemdSocket {
                    name: name.clone(),
                    source,
                })?
                .ok_or_else(|| SocketError::SystemdSocket {
                    name: name.clone(),
                    source: io::Error::new(io::ErrorKind::NotFound, "the descriptor is missing"),
                })?;
            if name == "front" {
                front = Some(listener);
            } else {
                admin = Some(listener);
            }
        }
        match (front, admin) {
            (Some(front), Some(admin)) => Ok(Listeners {
                front,
                admin,
                from_systemd: true,
                created: Vec::new(),
            }),
            _ => Err(SocketError::SystemdNames { names }),
        }
    }

    /// Gives the socket files this process bound, and the directories it
    /// created for them, to `uid` and `gid`. Records the sockets' new
    /// change time, so that [`remove_socket_files`] still recognizes them
    /// as its own. Returns the paths changed.
    ///
    /// [`remove_socket_files`]: Listeners::remove_socket_files
    pub fn chown_created_sockets(&mut self, uid: u32, gid: u32) -> Result<Vec<PathBuf>, String> {
        let mut paths = Vec::new();
        for socket in &mut self.created {
            if let Some(dir) = &socket.created_dir
                && !paths.contains(dir)
            {
                std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(|err| {
                    format!(
                        "failed to change the owner of {} to {uid}:{gid}: {err}",
                        dir.display()
                    )
                })?;
                paths.push(dir.clone());
            }
            let path = socket.path.clone();
            let chown = std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                .and_then(|()| fs::symlink_metadata(&path));
            let metadata = chown.map_err(|err| {
                format!(
                    "failed to change the owner of {} to {uid}:{gid}: {err}",
                    path.display()
                )
            })?;
            socket.changed = (metadata.ctime(), metadata.ctime_nsec());
            paths.push(path);
        }
        Ok(paths)
    }

    /// Removes the socket files this process bound, if they are still the
    /// ones it created.
    pub fn remove_socket_files(&self) {
        for socket in &self.created {
            remove_socket_file(socket);
        }
    }
}

fn bind_socket(
    path: &Path,
    mode: u32,
) -> Result<(std::os::unix::net::UnixListener, CreatedSocket), SocketError> {
    let mut created_dir = None;
    if let Some(parent) = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        && !parent.exists()
    {
        created_dir = Some(parent.to_path_buf());
        DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(parent)
            .map_err(|source| SocketError::CreateDir {
                path: parent.to_path_buf(),
                source,
            })?;
        // The umask may have narrowed the mode; frontd's group needs to
        // search this directory to reach the front socket.
        fs::set_permissions(parent, Permissions::from_mode(0o750)).map_err(|source| {
            SocketError::CreateDir {
                path: parent.to_path_buf(),
                source,
            }
        })?;
    }
    match fs::symlink_metadata(path) {
        Ok(metadata) if metadata.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(SocketError::InUse {
                    path: path.to_path_buf(),
                });
            }
            fs::remove_file(path).map_err(|source| SocketError::RemoveStale {
                path: path.to_path_buf(),
                source,
            })?;
            tracing::info!(path = %path.display(), "removed stale socket");
        }
        Ok(_) => {
            return Err(SocketError::NotASocket {
                path: path.to_path_buf(),
            });
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(SocketError::Bind {
                path: path.to_path_buf(),
                source,
            });
        }
    }
    // The socket file is created with mode 0777 minus the umask. A umask of
    // 0177 makes it 0600 until the chmod below, so it is never wider than
    // `mode`.
    let previous = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = std::os::unix::net::UnixListener::bind(path);
    nix::sys::stat::umask(previous);
    let listener = bound.map_err(|source| SocketError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    let chmod =
        fs::set_permissions(path, Permissions::from_mode(mode)).and_then(|()| fs::metadata(path));
    let metadata = match chmod {
        Ok(metadata) => metadata,
        Err(source) => {
            let _ = fs::remove_file(path);
            return Err(SocketError::Chmod {
                path: path.to_path_buf(),
                mode,
                source,
            });
        }
    };
    Ok((
        listener,
        CreatedSocket {
            path: path.to_path_buf(),
            inode: metadata.ino(),
            changed: (metadata.ctime(), metadata.ctime_nsec()),
            created_dir,
        },
    ))
}

fn remove_socket_file(socket: &CreatedSocket) {
    match fs::symlink_metadata(&socket.path) {
        Ok(metadata) if socket.is(&metadata) => {
            if let Err(err) = fs::remove_file(&socket.path) {
                tracing::warn!(path = %socket.path.display(), error = %err, "failed to remove socket file");
            }
        }
        _ => {}
    }
}

/// State shared by every connection.
pub struct Server {
    service: Arc<Service>,
    policy: AccessPolicy,
    signing: Arc<Semaphore>,
}

impl Server {
    /// `signing_threads` bounds the engine operations that compute at once; 0
    /// means one per available core.
    pub fn new(service: Arc<Service>, policy: AccessPolicy, signing_threads: usize) -> Arc<Server> {
        let threads = if signing_threads == 0 {
            std::thread::available_parallelism().map_or(1, |cores| cores.get())
        } else {
            signing_threads
        };
        Arc::new(Server {
            service,
            policy,
            signing: Arc::new(Semaphore::new(threads)),
        })
    }

    /// Starts accepting on both sockets. Must be called inside a tokio
    /// runtime.
    pub fn spawn(self: &Arc<Self>, listeners: Listeners) -> io::Result<RunningServer> {
        let Listeners {
            front,
            admin,
            created,
            ..
        } = listeners;
        let mut tasks = Vec::with_capacity(2);
        for (listener, role) in [(front, SocketRole::Front), (admin, SocketRole::Admin)] {
            listener.set_nonblocking(true)?;
            let listener = UnixListener::from_std(listener)?;
            tasks.push(tokio::spawn(accept_loop(Arc::clone(self), listener, role)));
        }
        Ok(RunningServer { tasks, created })
    }

    /// Runs one request to its reply. Status returns at once, and the rest
    /// runs on a blocking thread. `session` is the caller's session token
    /// of an audited request. Its audit id (see [`Service::session_id`]) is
    /// computed on the same blocking thread and returned with the result.
    async fn run(
        self: &Arc<Self>,
        request: Request,
        session: Option<String>,
    ) -> (Result<ResponseBody, ErrorBody>, Option<String>) {
        if matches!(request.body, RequestBody::Status) {
            let session_id = self.session_id(session).await;
            return (Ok(ResponseBody::State(self.service.state())), session_id);
        }
        let needs_signing_permit = matches!(
            request.body,
            RequestBody::Ca { .. } | RequestBody::Mount { .. }
        );
        let permit = if needs_signing_permit {
            match Arc::clone(&self.signing).acquire_owned().await {
                Ok(permit) => Some(permit),
                Err(_) => {
                    let session_id = self.session_id(session).await;
                    let error = ErrorBody::new(ErrorCode::Unavailable, "keyd is shutting down");
                    return (Err(error), session_id);
                }
            }
        } else {
            None
        };
        let service = Arc::clone(&self.service);
        tokio::task::spawn_blocking(move || {
            // Reading the audit HMAC key is a barrier read, which blocks, so
            // it runs here rather than in a blocking task of its own.
            let session_id = session.and_then(|session| service.session_id(&session));
            // The store releases the permit when the request waits for its
            // commit.
            let _slot = permit.map(slot::hold);
            (service.handle(request), session_id)
        })
        .await
        .unwrap_or_else(|err| {
            tracing::error!(error = %err, "request handler panicked");
            (Err(ErrorBody::internal("the request handler failed")), None)
        })
    }

    /// Returns the audit id of a session token, for a request that does not
    /// run on a blocking thread.
    async fn session_id(&self, session: Option<String>) -> Option<String> {
        let session = session?;
        // Reading the HMAC key is a barrier read, which blocks.
        let service = Arc::clone(&self.service);
        tokio::task::spawn_blocking(move || service.session_id(&session))
            .await
            .unwrap_or_default()
    }
}

/// The accept loops; stopping them drops every connection.
pub struct RunningServer {
    tasks: Vec<JoinHandle<()>>,
    created: Vec<CreatedSocket>,
}

impl RunningServer {
    /// Stops accepting and closes the listening sockets and every
    /// connection. Requests already on a blocking thread finish there, and
    /// their replies are dropped.
    pub async fn stop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }

    /// Removes the socket files this process bound, if they are still the
    /// ones it created.
    pub fn remove_socket_files(&self) {
        for socket in &self.created {
            remove_socket_file(socket);
        }
    }
}

async fn accept_loop(server: Arc<Server>, listener: UnixListener, role: SocketRole) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(Arc::clone(&server), stream, role));
                }
                Err(err) => {
                    // Typically EMFILE; pausing lets connections close.
                    tracing::error!(socket = role.as_str(), error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// The peer credentials of a connection, for logs and access checks.
#[derive(Debug, Clone, Copy)]
struct Peer {
    uid: u32,
    gid: u32,
    pid: Option<i32>,
}

async fn serve_connection(server: Arc<Server>, stream: tokio::net::UnixStream, role: SocketRole) {
    let peer = match stream.peer_cred() {
        Ok(cred) => Peer {
            uid: cred.uid(),
            gid: cred.gid(),
            pid: cred.pid(),
        },
        Err(err) => {
            tracing::warn!(socket = role.as_str(), error = %err, "failed to read peer credentials; closing connection");
            return;
        }
    };
    if !server.policy.allows(role, peer.uid, peer.gid) {
        tracing::warn!(
            socket = role.as_str(),
            uid = peer.uid,
            gid = peer.gid,
            pid = peer.pid,
            "rejected connection: peer uid and gid are not allowed on this socket"
        );
        reject_peer(stream, role, peer).await;
        return;
    }
    tracing::info!(
        socket = role.as_str(),
        uid = peer.uid,
        gid = peer.gid,
        pid = peer.pid,
        "accepted connection"
    );
    let (mut reader, mut writer) = stream.into_split();

    let Some(state_rx) = exchange_hello(&server, &mut reader, &mut writer, role, peer).await else {
        return;
    };
    let (replies, reply_rx) = mpsc::channel(MAX_IN_FLIGHT);
    let write = write_loop(writer, reply_rx, state_rx);
    tokio::pin!(write);
    let end = tokio::select! {
        end = read_loop(&server, reader, role, peer, replies) => end,
        result = &mut write => {
            if let Err(err) = result {
                tracing::debug!(socket = role.as_str(), uid = peer.uid, error = %err, "connection write failed");
            }
            return;
        }
    };
    if end == ReadEnd::Drain
        && let Err(err) = write.await
    {
        tracing::debug!(socket = role.as_str(), uid = peer.uid, error = %err, "connection write failed");
    }
    tracing::info!(
        socket = role.as_str(),
        uid = peer.uid,
        pid = peer.pid,
        "connection closed"
    );
}

/// Tells a peer whose uid and gid the socket does not allow why it is
/// rejected, as the reply to its `Hello`, then closes the connection. The
/// client's `Hello` is read (or waited for, briefly) first, so that its write
/// does not fail with a broken pipe before it can read the reason.
async fn reject_peer(stream: tokio::net::UnixStream, role: SocketRole, peer: Peer) {
    let (mut reader, mut writer) = stream.into_split();
    let _ = tokio::time::timeout(
        REJECT_TIMEOUT,
        read_frame_async::<_, ClientMessage>(&mut reader),
    )
    .await;
    let reason = ErrorBody::new(
        ErrorCode::PermissionDenied,
        format!(
            "uid {} (gid {}) is not allowed on the {role} socket; \
             add it to keyd.{role}_allowed_uids or keyd.{role}_allowed_gids",
            peer.uid, peer.gid
        ),
    );
    let _ = tokio::time::timeout(
        REJECT_TIMEOUT,
        write_message(&mut writer, &ServerMessage::Hello(Err(reason))),
    )
    .await;
}

/// Reads the `Hello` and replies to it. Returns the state receiver for the
/// writer when the client may go on.
async fn exchange_hello(
    server: &Arc<Server>,
    reader: &mut OwnedReadHalf,
    writer: &mut OwnedWriteHalf,
    role: SocketRole,
    peer: Peer,
) -> Option<watch::Receiver<SealState>> {
    let first =
        match tokio::time::timeout(HELLO_TIMEOUT, read_frame_async::<_, ClientMessage>(reader))
            .await
        {
            Ok(Ok(message)) => message,
            Ok(Err(err)) => {
                log_read_error(role, peer, &err);
                return None;
            }
            Err(_) => {
                tracing::warn!(
                    socket = role.as_str(),
                    uid = peer.uid,
                    "no Hello within {} s; closing connection",
                    HELLO_TIMEOUT.as_secs()
                );
                return None;
            }
        };
    let ClientMessage::Hello(hello) = first else {
        tracing::warn!(
            socket = role.as_str(),
            uid = peer.uid,
            "first message was not Hello; closing connection"
        );
        return None;
    };
    let mut state_rx = server.service.subscribe();
    let reply = match check_hello(&hello, role) {
        Ok(()) => Ok(HelloReply {
            version: PROTOCOL_VERSION,
            role,
            state: *state_rx.borrow_and_update(),
        }),
        Err(err) => Err(err),
    };
    let accepted = reply.is_ok();
    let client = loggable(&hello.client, MAX_LOGGED_CLIENT_CHARS);
    if let Err(err) = &reply {
        tracing::warn!(socket = role.as_str(), uid = peer.uid, client, error = %err.message, "rejected Hello");
    } else {
        tracing::debug!(
            socket = role.as_str(),
            uid = peer.uid,
            client,
            "Hello accepted"
        );
    }
    if let Err(err) = write_message(writer, &ServerMessage::Hello(reply)).await {
        tracing::debug!(socket = role.as_str(), uid = peer.uid, error = %err, "connection write failed");
        return None;
    }
    accepted.then_some(state_rx)
}

/// Checks the client's protocol version and expected socket role.
fn check_hello(hello: &Hello, role: SocketRole) -> Result<(), ErrorBody> {
    if hello.version != PROTOCOL_VERSION {
        return Err(ErrorBody::invalid_request(format!(
            "protocol version mismatch: the client speaks version {}, keyd speaks version {PROTOCOL_VERSION}",
            hello.version
        )));
    }
    if hello.role != role {
        return Err(ErrorBody::invalid_request(format!(
            "socket role mismatch: the client expected the {} socket, but this is the {role} socket",
            hello.role
        )));
    }
    Ok(())
}

/// Time a rejected peer gets to send its `Hello` and read the rejection.
const REJECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadEnd {
    /// The client closed its side: send the replies still running.
    Drain,
    /// A protocol error: close without sending anything more.
    Abort,
}

async fn read_loop(
    server: &Arc<Server>,
    mut reader: OwnedReadHalf,
    role: SocketRole,
    peer: Peer,
    replies: mpsc::Sender<ServerMessage>,
) -> ReadEnd {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
            return ReadEnd::Abort;
        };
        match read_frame_async::<_, ClientMessage>(&mut reader).await {
            Ok(ClientMessage::Request(request)) => {
                let server = Arc::clone(server);
                let replies = replies.clone();
                tokio::spawn(async move {
                    let reply = answer(&server, request, role, peer).await;
                    // The writer is gone when the connection closed; the reply
                    // is dropped with it.
                    let _ = replies.send(ServerMessage::Reply(reply)).await;
                    drop(permit);
                });
            }
            Ok(ClientMessage::Hello(_)) => {
                tracing::warn!(
                    socket = role.as_str(),
                    uid = peer.uid,
                    "second Hello on one connection; closing connection"
                );
                return ReadEnd::Abort;
            }
            Err(FrameError::Closed) => return ReadEnd::Drain,
            Err(err) => {
                log_read_error(role, peer, &err);
                return ReadEnd::Abort;
            }
        }
    }
}

fn log_read_error(role: SocketRole, peer: Peer, err: &FrameError) {
    match err {
        FrameError::Closed => {}
        FrameError::Decode(_) | FrameError::TooLarge { .. } => tracing::warn!(
            socket = role.as_str(),
            uid = peer.uid,
            pid = peer.pid,
            error = %err,
            "malformed frame; closing connection"
        ),
        FrameError::Io(_) | FrameError::Encode(_) => tracing::info!(
            socket = role.as_str(),
            uid = peer.uid,
            error = %err,
            "connection read failed"
        ),
    }
}

/// Returns `text` without control characters and cut to `max_chars`
/// characters, for copying a string that a peer sent into log lines.
fn loggable(text: &str, max_chars: usize) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(max_chars)
        .collect()
}

/// Checks the access table, runs the request and logs one line for it. The
/// trace id is made [`loggable`] first, so the engines log it in that form
/// too.
async fn answer(server: &Arc<Server>, mut request: Request, role: SocketRole, peer: Peer) -> Reply {
    let started = Instant::now();
    let id = request.id;
    let operation = request.body.operation();
    request.trace_id = loggable(&request.trace_id, MAX_TRACE_ID_CHARS);
    let trace_id = request.trace_id.clone();
    let pending = start_audit(server, &request, role, peer);
    let session = pending.as_ref().and_then(|_| {
        request
            .caller
            .as_ref()
            .and_then(|caller| caller.session.clone())
    });
    let (mut result, session_id) = if pending.as_ref().is_some_and(|pending| !pending.ready) {
        (Err(audit::unavailable()), server.session_id(session).await)
    } else if accepts(role, &request.body) {
        server.run(request, session).await
    } else {
        let error = ErrorBody::new(
            ErrorCode::PermissionDenied,
            format!("operation {operation} is not accepted on the {role} socket"),
        );
        (Err(error), server.session_id(session).await)
    };
    if let Some(mut pending) = pending {
        pending.record.session = session_id;
        finish_audit(pending, &mut result, &trace_id, operation);
    }
    let outcome = match &result {
        Ok(_) => "ok",
        Err(err) => error_code_name(err.code),
    };
    tracing::info!(
        trace_id,
        operation,
        socket = role.as_str(),
        peer_uid = peer.uid,
        outcome,
        duration_ms = started.elapsed().as_micros() as f64 / 1000.0,
        "request"
    );
    Reply { id, result }
}

/// The audit line of a request that is running.
struct PendingAudit<'a> {
    log: &'a AuditLog,
    record: AuditRecord,
    /// `false` when the audit log failed its check, so the request must not
    /// run unless it runs without an audit log.
    ready: bool,
    /// Whether the request fails when its line cannot be written.
    required: bool,
}

/// Starts the audit line of `request` and checks the audit log, or returns
/// `None` when the request is not audited. The line's session id is filled
/// in after the request.
fn start_audit<'a>(
    server: &'a Arc<Server>,
    request: &Request,
    role: SocketRole,
    peer: Peer,
) -> Option<PendingAudit<'a>> {
    let log = server.service.audit()?;
    if !audit::is_audited(request) {
        return None;
    }
    let record = audit::start_record(request, role, peer.uid);
    let required = !audit::runs_without_audit(&request.body);
    let ready = match log.check() {
        Ok(()) => true,
        Err(error) => {
            tracing::error!(
                trace_id = %request.trace_id,
                operation = request.body.operation(),
                error = %error,
                "audit log unavailable"
            );
            !required
        }
    };
    Some(PendingAudit {
        log,
        record,
        ready,
        required,
    })
}

/// Writes the audit line with the request's result, and replaces the result
/// with 503 `audit log unavailable` when a required line cannot be written.
fn finish_audit(
    pending: PendingAudit<'_>,
    result: &mut Result<ResponseBody, ErrorBody>,
    trace_id: &str,
    operation: &str,
) {
    let record = audit::finish_record(pending.record, result, error_code_name);
    if let Err(error) = pending.log.write(record) {
        tracing::error!(trace_id, operation, error = %error, "failed to write the audit line");
        if pending.required {
            *result = Err(audit::unavailable());
        }
    }
}

fn error_code_name(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::NotInitialized => "not_initialized",
        ErrorCode::Sealed => "sealed",
        ErrorCode::InvalidPassword => "invalid_password",
        ErrorCode::TooManyAttempts => "too_many_attempts",
        ErrorCode::AlreadyInitialized => "already_initialized",
        ErrorCode::PermissionDenied => "permission_denied",
        ErrorCode::NotFound => "not_found",
        ErrorCode::InvalidRequest => "invalid_request",
        ErrorCode::Conflict => "conflict",
        ErrorCode::Internal => "internal",
        ErrorCode::Unavailable => "unavailable",
    }
}

async fn write_message(writer: &mut OwnedWriteHalf, message: &ServerMessage) -> io::Result<()> {
    let frame = encode_frame(message).map_err(io::Error::other)?;
    writer.write_all(&frame).await
}

/// Sends replies and state changes until every reply sender is gone.
/// Replies waiting together are sent in one write. Replies can carry private
/// keys, so every buffer is zeroized, and the write buffer is allocated at
/// its final size so that growing it leaves no copy behind.
async fn write_loop(
    mut writer: OwnedWriteHalf,
    mut replies: mpsc::Receiver<ServerMessage>,
    mut state_rx: watch::Receiver<SealState>,
) -> io::Result<()> {
    let mut watching_state = true;
    loop {
        tokio::select! {
            message = replies.recv() => {
                let Some(message) = message else {
                    return Ok(());
                };
                let mut frames = vec![encode_reply(message)?];
                while frames.len() < MAX_REPLIES_PER_WRITE {
                    let Ok(message) = replies.try_recv() else {
                        break;
                    };
                    frames.push(encode_reply(message)?);
                }
                let total = frames.iter().map(|frame| frame.len()).sum();
                let mut buffer = Zeroizing::new(Vec::with_capacity(total));
                for frame in &frames {
                    buffer.extend_from_slice(frame);
                }
                drop(frames);
                writer.write_all(&buffer).await?;
            }
            changed = state_rx.changed(), if watching_state => {
                if changed.is_err() {
                    watching_state = false;
                    continue;
                }
                let state = *state_rx.borrow_and_update();
                write_message(&mut writer, &ServerMessage::StateChanged(state)).await?;
            }
        }
    }
}

/// Encodes a message for the writer. A reply too large for one frame is
/// replaced by an error reply with the same id, so its caller still gets a
/// reply.
fn encode_reply(message: ServerMessage) -> io::Result<Zeroizing<Vec<u8>>> {
    match encode_frame(&message) {
        Ok(frame) => Ok(frame),
        Err(err) => {
            let ServerMessage::Reply(reply) = message else {
                return Err(io::Error::other(err));
            };
            tracing::error!(id = reply.id, error = %err, "failed to encode reply");
            let replacement = ServerMessage::Reply(Reply {
                id: reply.id,
                result: Err(ErrorBody::internal(format!(
                    "failed to encode the reply: {err}"
                ))),
            });
            encode_frame(&replacement).map_err(io::Error::other)
        }
    }
}

#[cfg(test)]
mod tests {
    use metacrypt_protocol::{
        CaMountConfig, CaRequest, MountConfig, SecretString, write_frame_async,
    };
    use tokio::io::AsyncWriteExt;
    use tokio::net::UnixStream;

    use super::*;
    use crate::db::Database;
    use crate::seal::KdfParams;
    use crate::service::ServiceOptions;

    fn every_body() -> Vec<RequestBody> {
        vec![
            RequestBody::Status,
            RequestBody::Init {
                password: SecretString::from("x"),
            },
            RequestBody::Unseal {
                password: SecretString::from("x"),
            },
            RequestBody::Seal,
            RequestBody::ListMounts,
            RequestBody::Mount {
                name: "pki".to_owned(),
                config: MountConfig::Ca(CaMountConfig::default()),
            },
            RequestBody::Unmount {
                name: "pki".to_owned(),
            },
            RequestBody::Ca {
                mount: "pki".to_owned(),
                op: CaRequest::GetRoot,
            },
        ]
    }

    #[test]
    fn access_table_per_socket() {
        for body in every_body() {
            let seal_operation = matches!(
                body,
                RequestBody::Status
                    | RequestBody::Init { .. }
                    | RequestBody::Unseal { .. }
                    | RequestBody::Seal
            );
            assert!(
                accepts(SocketRole::Front, &body),
                "front {}",
                body.operation()
            );
            assert_eq!(
                accepts(SocketRole::Admin, &body),
                seal_operation,
                "admin {}",
                body.operation()
            );
        }
    }

    fn policy() -> AccessPolicy {
        AccessPolicy {
            own_uid: 900,
            front_uids: vec![1001],
            front_gids: vec![2001],
            admin_uids: vec![1002],
            admin_gids: vec![2002],
        }
    }

    #[test]
    fn own_uid_is_allowed_everywhere() {
        let policy = policy();
        assert!(policy.allows(SocketRole::Front, 900, 5));
        assert!(policy.allows(SocketRole::Admin, 900, 5));
    }

    #[test]
    fn root_is_allowed_only_on_admin() {
        let policy = policy();
        assert!(policy.allows(SocketRole::Admin, 0, 0));
        assert!(!policy.allows(SocketRole::Front, 0, 0));
    }

    #[test]
    fn listed_uids_and_gids_are_allowed_per_socket() {
        let policy = policy();
        assert!(policy.allows(SocketRole::Front, 1001, 5));
        assert!(policy.allows(SocketRole::Front, 7, 2001));
        assert!(!policy.allows(SocketRole::Admin, 1001, 5));
        assert!(!policy.allows(SocketRole::Admin, 7, 2001));
        assert!(policy.allows(SocketRole::Admin, 1002, 5));
        assert!(policy.allows(SocketRole::Admin, 7, 2002));
        assert!(!policy.allows(SocketRole::Front, 1002, 2002));
    }

    #[test]
    fn other_peers_are_rejected() {
        let policy = policy();
        assert!(!policy.allows(SocketRole::Front, 1234, 1234));
        assert!(!policy.allows(SocketRole::Admin, 1234, 1234));
    }

    #[test]
    fn config_lists_become_policy() {
        let config = KeydConfig {
            front_allowed_uids: vec![1],
            front_allowed_gids: vec![2],
            admin_allowed_uids: vec![3],
            admin_allowed_gids: vec![4],
            ..KeydConfig::default()
        };
        let policy = AccessPolicy::new(&config, 77);
        assert!(policy.allows(SocketRole::Front, 1, 9));
        assert!(policy.allows(SocketRole::Front, 9, 2));
        assert!(policy.allows(SocketRole::Admin, 3, 9));
        assert!(policy.allows(SocketRole::Admin, 9, 4));
        assert!(policy.allows(SocketRole::Front, 77, 9));
    }

    #[test]
    fn regular_file_at_socket_path_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("front.sock");
        std::fs::write(&path, b"data").unwrap();
        let err = bind_socket(&path, 0o660).unwrap_err();
        assert!(matches!(err, SocketError::NotASocket { .. }), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
    }

    #[test]
    fn stale_socket_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("front.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let (_listener, created) = bind_socket(&path, 0o660).unwrap();
        assert_eq!(created.inode, std::fs::metadata(&path).unwrap().ino());
    }

    #[test]
    fn live_socket_is_not_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("front.sock");
        let _live = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let err = bind_socket(&path, 0o660).unwrap_err();
        assert!(matches!(err, SocketError::InUse { .. }), "{err}");
    }

    #[test]
    fn removal_spares_a_newer_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("front.sock");
        let (_listener, created) = bind_socket(&path, 0o660).unwrap();
        let other = dir.path().join("other.sock");
        let _newer = std::os::unix::net::UnixListener::bind(&other).unwrap();
        std::fs::rename(&other, &path).unwrap();
        remove_socket_file(&created);
        assert!(path.exists());
    }

    struct Running {
        _dir: tempfile::TempDir,
        config: KeydConfig,
        server: RunningServer,
    }

    fn start(policy: impl FnOnce(&KeydConfig) -> AccessPolicy) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let config = KeydConfig {
            front_socket: run.join("front.sock"),
            admin_socket: run.join("admin.sock"),
            ..KeydConfig::default()
        };
        let database = Database::open(&dir.path().join("keyd.db"), 2).unwrap();
        let options = ServiceOptions {
            kdf: KdfParams::INSECURE_FOR_TESTS,
            ..ServiceOptions::default()
        };
        let service = Arc::new(Service::start(database, options).unwrap());
        let listeners = Listeners::open(&config).unwrap();
        let server = Server::new(service, policy(&config), 2)
            .spawn(listeners)
            .unwrap();
        Running {
            _dir: dir,
            config,
            server,
        }
    }

    fn own_policy(config: &KeydConfig) -> AccessPolicy {
        AccessPolicy::new(config, nix::unistd::geteuid().as_raw())
    }

    fn hello(role: SocketRole) -> ClientMessage {
        ClientMessage::Hello(Hello {
            version: PROTOCOL_VERSION,
            role,
            client: "keyd tests".to_owned(),
        })
    }

    async fn send(stream: &mut UnixStream, message: &ClientMessage) {
        write_frame_async(stream, message).await.unwrap();
    }

    async fn receive(stream: &mut UnixStream) -> ServerMessage {
        read_frame_async(stream).await.unwrap()
    }

    async fn connect(path: &Path, role: SocketRole) -> UnixStream {
        let mut stream = UnixStream::connect(path).await.unwrap();
        send(&mut stream, &hello(role)).await;
        match receive(&mut stream).await {
            ServerMessage::Hello(Ok(reply)) => assert_eq!(reply.role, role),
            other => panic!("Hello failed: {other:?}"),
        }
        stream
    }

    fn request(id: u64, body: RequestBody) -> ClientMessage {
        ClientMessage::Request(Request {
            id,
            trace_id: format!("trace-{id}"),
            remote_addr: None,
            caller: None,
            body,
        })
    }

    /// Reads until a reply arrives, skipping state changes.
    async fn reply(stream: &mut UnixStream) -> Reply {
        loop {
            match receive(stream).await {
                ServerMessage::Reply(reply) => return reply,
                ServerMessage::StateChanged(_) => continue,
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    async fn assert_closed(stream: &mut UnixStream) {
        let next = read_frame_async::<_, ServerMessage>(stream).await;
        assert!(
            matches!(next, Err(FrameError::Closed) | Err(FrameError::Io(_))),
            "{next:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sockets_get_their_modes() {
        let running = start(own_policy);
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&running.config.front_socket), 0o660);
        assert_eq!(mode(&running.config.admin_socket), 0o600);
        assert_eq!(mode(running.config.front_socket.parent().unwrap()), 0o750);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hello_reports_state() {
        let running = start(own_policy);
        let mut stream = UnixStream::connect(&running.config.front_socket)
            .await
            .unwrap();
        send(&mut stream, &hello(SocketRole::Front)).await;
        let ServerMessage::Hello(Ok(reply)) = receive(&mut stream).await else {
            panic!("Hello failed");
        };
        assert_eq!(reply.version, PROTOCOL_VERSION);
        assert_eq!(reply.state, SealState::Uninitialized);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn version_mismatch_names_both_versions() {
        let running = start(own_policy);
        let mut stream = UnixStream::connect(&running.config.front_socket)
            .await
            .unwrap();
        let message = ClientMessage::Hello(Hello {
            version: 99,
            role: SocketRole::Front,
            client: "old".to_owned(),
        });
        send(&mut stream, &message).await;
        let ServerMessage::Hello(Err(err)) = receive(&mut stream).await else {
            panic!("Hello was accepted");
        };
        assert_eq!(
            err.message,
            format!(
                "protocol version mismatch: the client speaks version 99, keyd speaks version {PROTOCOL_VERSION}"
            )
        );
        assert_closed(&mut stream).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn role_mismatch_names_both_roles() {
        let running = start(own_policy);
        let mut stream = UnixStream::connect(&running.config.admin_socket)
            .await
            .unwrap();
        send(&mut stream, &hello(SocketRole::Front)).await;
        let ServerMessage::Hello(Err(err)) = receive(&mut stream).await else {
            panic!("Hello was accepted");
        };
        assert_eq!(
            err.message,
            "socket role mismatch: the client expected the front socket, but this is the admin socket"
        );
        assert_closed(&mut stream).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn request_before_hello_closes_connection() {
        let running = start(own_policy);
        let mut stream = UnixStream::connect(&running.config.front_socket)
            .await
            .unwrap();
        send(&mut stream, &request(1, RequestBody::Status)).await;
        assert_closed(&mut stream).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn status_reply_carries_request_id() {
        let running = start(own_policy);
        let mut stream = connect(&running.config.front_socket, SocketRole::Front).await;
        send(&mut stream, &request(7, RequestBody::Status)).await;
        let reply = reply(&mut stream).await;
        assert_eq!(reply.id, 7);
        assert_eq!(
            reply.result,
            Ok(ResponseBody::State(SealState::Uninitialized))
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn admin_socket_rejects_mount_operations() {
        let running = start(own_policy);
        let mut stream = connect(&running.config.admin_socket, SocketRole::Admin).await;
        send(&mut stream, &request(1, RequestBody::ListMounts)).await;
        let err = reply(&mut stream).await.result.unwrap_err();
        assert_eq!(err.code, ErrorCode::PermissionDenied);
        assert_eq!(
            err.message,
            "operation list-mounts is not accepted on the admin socket"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn state_changes_reach_other_connections() {
        let running = start(own_policy);
        let mut front = connect(&running.config.front_socket, SocketRole::Front).await;
        let mut admin = connect(&running.config.admin_socket, SocketRole::Admin).await;
        let init = RequestBody::Init {
            password: SecretString::from("correct horse battery staple"),
        };
        send(&mut admin, &request(1, init)).await;
        assert_eq!(
            reply(&mut admin).await.result,
            Ok(ResponseBody::State(SealState::Unsealed))
        );
        // The watch channel may fold `initializing` into `unsealed`.
        let mut seen = Vec::new();
        while seen.last() != Some(&SealState::Unsealed) && seen.len() < 2 {
            match receive(&mut front).await {
                ServerMessage::StateChanged(state) => seen.push(state),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(seen.last(), Some(&SealState::Unsealed), "{seen:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn malformed_frame_closes_only_that_connection() {
        let running = start(own_policy);
        let mut stream = connect(&running.config.front_socket, SocketRole::Front).await;
        stream
            .write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff])
            .await
            .unwrap();
        assert_closed(&mut stream).await;
        let mut other = connect(&running.config.front_socket, SocketRole::Front).await;
        send(&mut other, &request(2, RequestBody::Status)).await;
        assert_eq!(reply(&mut other).await.id, 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn oversized_frame_closes_connection() {
        let running = start(own_policy);
        let mut stream = connect(&running.config.front_socket, SocketRole::Front).await;
        stream.write_all(&[0xff, 0xff, 0xff, 0xff]).await.unwrap();
        assert_closed(&mut stream).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_requests_in_flight_on_one_connection() {
        let running = start(own_policy);
        let mut stream = connect(&running.config.front_socket, SocketRole::Front).await;
        let count = MAX_IN_FLIGHT as u64 + 44;
        for id in 0..count {
            send(&mut stream, &request(id, RequestBody::ListMounts)).await;
        }
        let mut ids = Vec::new();
        for _ in 0..count {
            let reply = reply(&mut stream).await;
            assert_eq!(reply.result.unwrap_err().code, ErrorCode::NotInitialized);
            ids.push(reply.id);
        }
        ids.sort_unstable();
        assert_eq!(ids, (0..count).collect::<Vec<_>>());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn peer_outside_policy_is_closed() {
        let own_uid = nix::unistd::geteuid().as_raw();
        let running = start(|_| AccessPolicy {
            own_uid: own_uid.wrapping_add(4242),
            front_uids: Vec::new(),
            front_gids: Vec::new(),
            admin_uids: vec![own_uid],
            admin_gids: Vec::new(),
        });
        let mut front = UnixStream::connect(&running.config.front_socket)
            .await
            .unwrap();
        send(&mut front, &hello(SocketRole::Front)).await;
        match receive(&mut front).await {
            ServerMessage::Hello(Err(err)) => {
                assert_eq!(err.code, ErrorCode::PermissionDenied);
                assert!(
                    err.message.starts_with(&format!("uid {own_uid} (gid ")),
                    "{}",
                    err.message
                );
                assert!(
                    err.message.contains("keyd.front_allowed_uids"),
                    "{}",
                    err.message
                );
            }
            other => panic!("expected a rejected Hello, got {other:?}"),
        }
        assert_closed(&mut front).await;
        let mut admin = connect(&running.config.admin_socket, SocketRole::Admin).await;
        send(&mut admin, &request(1, RequestBody::Status)).await;
        assert_eq!(reply(&mut admin).await.id, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stop_then_remove_deletes_socket_files() {
        let mut running = start(own_policy);
        running.server.stop().await;
        running.server.remove_socket_files();
        assert!(!running.config.front_socket.exists());
        assert!(!running.config.admin_socket.exists());
    }

    /// A log destination that keeps every line in memory.
    #[derive(Clone, Default)]
    struct CapturedLog(Arc<std::sync::Mutex<Vec<u8>>>);

    impl CapturedLog {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
    }

    thread_local! {
        static THREAD_LOG: std::cell::RefCell<Option<CapturedLog>> =
            const { std::cell::RefCell::new(None) };
    }

    /// Writes to the capture of the thread that emits the event, if any.
    struct ThreadLogWriter;

    impl io::Write for ThreadLogWriter {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            THREAD_LOG.with(|log| {
                if let Some(log) = log.borrow().as_ref() {
                    log.0.lock().unwrap().extend_from_slice(bytes);
                }
            });
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Captures every event emitted on this thread from now on.
    ///
    /// One process-wide subscriber at DEBUG serves every test. Thread-local
    /// subscribers would change tracing's global level hint and callsite
    /// interest while other tests run in parallel, which can drop events.
    fn capture_thread_log() -> CapturedLog {
        static INSTALL: std::sync::Once = std::sync::Once::new();
        INSTALL.call_once(|| {
            let subscriber = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::DEBUG)
                .with_ansi(false)
                .with_writer(|| ThreadLogWriter)
                .finish();
            tracing::subscriber::set_global_default(subscriber)
                .expect("no other global subscriber in keyd's unit tests");
        });
        let log = CapturedLog::default();
        THREAD_LOG.with(|slot| *slot.borrow_mut() = Some(log.clone()));
        log
    }

    // A current-thread runtime polls every connection task on the test
    // thread, so the thread's capture receives their events.
    #[tokio::test(flavor = "current_thread")]
    async fn hello_client_is_capped_in_logs() {
        let log = capture_thread_log();
        let running = start(own_policy);
        let client = format!("evil\u{1b}[2J\r\n{}", "x".repeat(10_000));

        for version in [PROTOCOL_VERSION, 99] {
            let mut stream = UnixStream::connect(&running.config.front_socket)
                .await
                .unwrap();
            let message = ClientMessage::Hello(Hello {
                version,
                role: SocketRole::Front,
                client: client.clone(),
            });
            send(&mut stream, &message).await;
            receive(&mut stream).await;
        }

        let text = log.text();
        let accepted = text
            .lines()
            .find(|line| line.contains("Hello accepted"))
            .expect("no log line for the accepted Hello");
        let rejected = text
            .lines()
            .find(|line| line.contains("rejected Hello"))
            .expect("no log line for the rejected Hello");
        let capped = format!("evil[2J{}", "x".repeat(MAX_LOGGED_CLIENT_CHARS - 7));
        for line in [accepted, rejected] {
            let start: String = line.chars().take(200).collect();
            assert!(line.contains(&capped), "{start}");
            assert!(
                !line.contains(&format!("{capped}x")),
                "longer than the cap: {start}"
            );
            assert!(!line.contains("\\u{1b}"), "{start}");
            assert!(!line.contains("\\r"), "{start}");
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn trace_id_is_capped_in_logs() {
        let log = capture_thread_log();
        let running = start(own_policy);
        let mut stream = connect(&running.config.front_socket, SocketRole::Front).await;
        let trace_id = format!("t\u{7}\n{}", "y".repeat(10_000));
        let message = ClientMessage::Request(Request {
            id: 1,
            trace_id,
            remote_addr: None,
            caller: None,
            body: RequestBody::Status,
        });
        send(&mut stream, &message).await;
        assert_eq!(reply(&mut stream).await.id, 1);

        let text = log.text();
        let line = text
            .lines()
            .find(|line| line.contains(" request "))
            .expect("no log line for the request");
        let start: String = line.chars().take(200).collect();
        let capped = format!("t{}", "y".repeat(MAX_TRACE_ID_CHARS - 1));
        assert!(line.contains(&capped), "{start}");
        assert!(
            !line.contains(&format!("{capped}y")),
            "longer than the cap: {start}"
        );
        assert!(!line.contains("\\u{7}"), "{start}");
        assert!(!line.contains("\\n"), "{start}");
    }
}
