//! A pool of multiplexed connections to keyd's front socket.
//!
//! Each connection sends `Hello` once and then carries many requests at a
//! time: a writer sends request frames as they come, a reader matches each
//! reply to its waiting caller by request id. Requests are spread over the
//! connections round-robin. A connection that fails is reconnected with
//! exponential backoff, and its callers get [`KeydError::Unavailable`].
//!
//! The pool also tracks the seal state that keyd reports in its `Hello`
//! reply, in `StateChanged` notifications and in replies that carry a
//! state. frontd then serves status and rejects requests while sealed
//! without a round trip.

use std::cell::Cell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use metacrypt_protocol::{
    Caller, ClientMessage, ErrorBody, FrameError, Hello, HelloReply, PROTOCOL_VERSION, Request,
    RequestBody, ResponseBody, SealState, ServerMessage, SocketRole, encode_frame,
    read_frame_async,
};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

/// Requests queued for one connection's writer before callers wait.
const QUEUE_DEPTH: usize = 256;

/// The origin of a request to keyd: the id of the HTTP request that keyd
/// logs, and the client's address on the TCP connection, which keyd writes
/// in the audit line.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub trace_id: &'a str,
    pub remote_addr: Option<SocketAddr>,
}

impl<'a> Origin<'a> {
    pub fn new(trace_id: &'a str, remote_addr: Option<SocketAddr>) -> Self {
        Self {
            trace_id,
            remote_addr,
        }
    }
}

/// Settings of a [`KeydPool`].
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// keyd's front socket.
    pub socket: PathBuf,
    /// Connections kept open.
    pub connections: usize,
    /// Time a caller waits for a reply. RSA key generation inside keyd can
    /// take around half a second, so this is generous.
    pub request_timeout: Duration,
    /// Time allowed for connecting and exchanging `Hello`.
    pub hello_timeout: Duration,
    /// First delay before a reconnect; it doubles after each failure.
    pub backoff_min: Duration,
    /// Maximum delay between reconnect attempts.
    pub backoff_max: Duration,
}

impl PoolOptions {
    pub fn new(socket: PathBuf, connections: usize) -> Self {
        Self {
            socket,
            connections: connections.max(1),
            request_timeout: Duration::from_secs(30),
            hello_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
        }
    }
}

/// Failure of a request to keyd.
#[derive(Debug, thiserror::Error)]
pub enum KeydError {
    /// No connection is up, or the connection died before the reply came.
    #[error("keyd unavailable")]
    Unavailable,
    #[error("keyd did not reply within {} ms", .0.as_millis())]
    Timeout(Duration),
    /// keyd replied with an error.
    #[error("{0}")]
    Remote(ErrorBody),
}

/// Failure of a connection attempt.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("failed to connect to {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("hello exchange failed: {0}")]
    Frame(#[from] FrameError),
    #[error("keyd rejected the hello: {0}")]
    Rejected(String),
    #[error("keyd replied to the hello with protocol version {0}, expected {PROTOCOL_VERSION}")]
    Version(u32),
    #[error("{path} is keyd's {role} socket, expected the front socket")]
    WrongRole { path: String, role: SocketRole },
    #[error("keyd sent another message before its hello reply")]
    NoHello,
    #[error("no hello reply within {} ms", .0.as_millis())]
    Timeout(Duration),
}

tokio::task_local! {
    /// Whether the HTTP request being served sent keyd a request that keyd
    /// writes an audit line for.
    static AUDITED_REQUEST_SENT: Cell<bool>;
}

/// Runs `future`, the handling of one HTTP request, and returns its output
/// with whether it sent keyd an audited request.
pub async fn track_audited_requests<F: Future>(future: F) -> (F::Output, bool) {
    AUDITED_REQUEST_SENT
        .scope(Cell::new(false), async move {
            let output = future.await;
            (output, AUDITED_REQUEST_SENT.with(Cell::get))
        })
        .await
}

/// A cloneable handle to the pool. The connection tasks stop when the last
/// handle is dropped.
#[derive(Clone)]
pub struct KeydPool {
    shared: Arc<Shared>,
    _tasks: Arc<Tasks>,
}

struct Shared {
    options: PoolOptions,
    slots: Vec<Mutex<Option<Arc<Connection>>>>,
    next_slot: AtomicUsize,
    next_id: AtomicU64,
    tracker: Mutex<Tracker>,
    state: watch::Sender<Option<SealState>>,
}

/// Connections that are up, and the last seal state one of them reported.
struct Tracker {
    connected: usize,
    state: Option<SealState>,
}

struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

type ReplySender = oneshot::Sender<Result<ResponseBody, ErrorBody>>;

/// One live connection: the writer's queue and the callers waiting for
/// replies.
struct Connection {
    outgoing: mpsc::Sender<ClientMessage>,
    pending: Mutex<Pending>,
}

struct Pending {
    open: bool,
    waiters: HashMap<u64, ReplySender>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data behind these locks stays consistent even if a holder
    // panicked, because every critical section is a single insert or remove.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Connection {
    fn register(&self, id: u64, waiter: ReplySender) -> Result<(), KeydError> {
        let mut pending = lock(&self.pending);
        if !pending.open {
            return Err(KeydError::Unavailable);
        }
        pending.waiters.insert(id, waiter);
        Ok(())
    }

    fn take(&self, id: u64) -> Option<ReplySender> {
        lock(&self.pending).waiters.remove(&id)
    }

    /// Closes the connection to new requests and drops every waiter, so
    /// each caller still waiting gets [`KeydError::Unavailable`].
    fn close(&self) -> usize {
        let mut pending = lock(&self.pending);
        pending.open = false;
        let count = pending.waiters.len();
        pending.waiters.clear();
        count
    }
}

/// Removes a caller's waiter when the caller stops waiting (timeout or a
/// dropped HTTP request), so the map does not grow with abandoned ids.
struct WaiterGuard<'a> {
    connection: &'a Connection,
    id: u64,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.connection.take(self.id);
    }
}

impl KeydPool {
    /// Starts one task per connection. Must be called inside a tokio
    /// runtime. Requests fail with [`KeydError::Unavailable`] until the
    /// first connection is up.
    pub fn start(options: PoolOptions) -> Self {
        let count = options.connections.max(1);
        let (state, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            options,
            slots: (0..count).map(|_| Mutex::new(None)).collect(),
            next_slot: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            tracker: Mutex::new(Tracker {
                connected: 0,
                state: None,
            }),
            state,
        });
        let tasks = (0..count)
            .map(|slot| tokio::spawn(run_slot(Arc::clone(&shared), slot)))
            .collect();
        Self {
            shared,
            _tasks: Arc::new(Tasks(tasks)),
        }
    }

    /// Returns the seal state last reported by keyd, or `None` while no
    /// connection is up.
    pub fn state(&self) -> Option<SealState> {
        *self.shared.state.borrow()
    }

    /// Returns a receiver that is notified of every change of
    /// [`KeydPool::state`].
    pub fn subscribe(&self) -> watch::Receiver<Option<SealState>> {
        self.shared.state.subscribe()
    }

    /// Connections that are up now.
    pub fn connected(&self) -> usize {
        lock(&self.shared.tracker).connected
    }

    /// Sends one request and waits for its reply.
    pub async fn call(
        &self,
        origin: Origin<'_>,
        caller: Option<Caller>,
        body: RequestBody,
    ) -> Result<ResponseBody, KeydError> {
        // keyd audits every request that names a caller, except rule fetches.
        if caller.is_some() && body != RequestBody::ListPolicyRules {
            let _ = AUDITED_REQUEST_SENT.try_with(|sent| sent.set(true));
        }
        let connection = self.pick().ok_or(KeydError::Unavailable)?;
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (waiter, reply) = oneshot::channel();
        connection.register(id, waiter)?;
        let _guard = WaiterGuard {
            connection: &connection,
            id,
        };
        let message = ClientMessage::Request(Request {
            id,
            trace_id: origin.trace_id.to_owned(),
            remote_addr: origin.remote_addr.map(|address| address.to_string()),
            caller,
            body,
        });
        let timeout = self.shared.options.request_timeout;
        let exchange = async {
            connection
                .outgoing
                .send(message)
                .await
                .map_err(|_| KeydError::Unavailable)?;
            reply.await.map_err(|_| KeydError::Unavailable)
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(result)) => result.map_err(KeydError::Remote),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(KeydError::Timeout(timeout)),
        }
    }

    /// Returns the next live connection in round-robin order.
    fn pick(&self) -> Option<Arc<Connection>> {
        let slots = &self.shared.slots;
        let start = self.shared.next_slot.fetch_add(1, Ordering::Relaxed);
        (0..slots.len()).find_map(|offset| lock(&slots[(start + offset) % slots.len()]).clone())
    }
}

impl Shared {
    fn publish(&self, tracker: &Tracker) {
        let state = if tracker.connected == 0 {
            None
        } else {
            tracker.state
        };
        self.state.send_if_modified(|current| {
            let changed = *current != state;
            *current = state;
            changed
        });
    }

    fn connection_up(&self, state: SealState) {
        let mut tracker = lock(&self.tracker);
        tracker.connected += 1;
        tracker.state = Some(state);
        self.publish(&tracker);
    }

    fn connection_down(&self) {
        let mut tracker = lock(&self.tracker);
        tracker.connected = tracker.connected.saturating_sub(1);
        if tracker.connected == 0 {
            tracker.state = None;
        }
        self.publish(&tracker);
    }

    fn observe_state(&self, state: SealState) {
        let mut tracker = lock(&self.tracker);
        if tracker.state != Some(state) {
            tracing::info!(state = %state, "keyd seal state changed");
        }
        tracker.state = Some(state);
        self.publish(&tracker);
    }
}

/// Keeps one connection slot filled for the life of the pool.
async fn run_slot(shared: Arc<Shared>, slot: usize) {
    let options = shared.options.clone();
    let socket = options.socket.display().to_string();
    let mut backoff = options.backoff_min;
    let mut failures: u64 = 0;
    loop {
        match connect(&options).await {
            Ok((reader, writer, hello)) => {
                tracing::info!(
                    slot,
                    socket = %socket,
                    state = %hello.state,
                    failed_attempts = failures,
                    "connected to keyd"
                );
                failures = 0;
                backoff = options.backoff_min;
                let reason = serve_connection(&shared, slot, reader, writer, hello.state).await;
                tracing::warn!(slot, socket = %socket, reason = %reason, "lost the connection to keyd");
            }
            Err(error) => {
                failures += 1;
                // The first failure of a streak is a warning; the retries
                // that follow every few seconds are only debug lines.
                if failures == 1 {
                    tracing::warn!(slot, error = %error, "cannot connect to keyd, retrying");
                } else {
                    tracing::debug!(slot, attempt = failures, error = %error, "cannot connect to keyd");
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(options.backoff_max);
    }
}

async fn connect(
    options: &PoolOptions,
) -> Result<(OwnedReadHalf, OwnedWriteHalf, HelloReply), ConnectError> {
    let path = options.socket.display().to_string();
    let exchange = async {
        let stream = UnixStream::connect(&options.socket)
            .await
            .map_err(|source| ConnectError::Connect {
                path: path.clone(),
                source,
            })?;
        let (mut reader, mut writer) = stream.into_split();
        let hello = ClientMessage::Hello(Hello {
            version: PROTOCOL_VERSION,
            role: SocketRole::Front,
            client: format!("metacrypt-frontd {}", env!("CARGO_PKG_VERSION")),
        });
        metacrypt_protocol::write_frame_async(&mut writer, &hello).await?;
        let reply = match read_frame_async::<_, ServerMessage>(&mut reader).await? {
            ServerMessage::Hello(Ok(reply)) => reply,
            ServerMessage::Hello(Err(body)) => return Err(ConnectError::Rejected(body.message)),
            _ => return Err(ConnectError::NoHello),
        };
        if reply.version != PROTOCOL_VERSION {
            return Err(ConnectError::Version(reply.version));
        }
        if reply.role != SocketRole::Front {
            return Err(ConnectError::WrongRole {
                path: path.clone(),
                role: reply.role,
            });
        }
        Ok((reader, writer, reply))
    };
    tokio::time::timeout(options.hello_timeout, exchange)
        .await
        .map_err(|_| ConnectError::Timeout(options.hello_timeout))?
}

/// Runs one connection until it fails, and returns why it ended.
async fn serve_connection(
    shared: &Arc<Shared>,
    slot: usize,
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    state: SealState,
) -> String {
    let (outgoing, queue) = mpsc::channel(QUEUE_DEPTH);
    let connection = Arc::new(Connection {
        outgoing,
        pending: Mutex::new(Pending {
            open: true,
            waiters: HashMap::new(),
        }),
    });
    *lock(&shared.slots[slot]) = Some(Arc::clone(&connection));
    shared.connection_up(state);

    let reason = tokio::select! {
        reason = read_replies(shared, &connection, reader) => reason,
        reason = write_requests(&connection, queue, writer) => reason,
    };

    *lock(&shared.slots[slot]) = None;
    let abandoned = connection.close();
    shared.connection_down();
    if abandoned > 0 {
        tracing::warn!(
            slot,
            requests = abandoned,
            "requests in flight failed with the connection"
        );
    }
    reason
}

async fn read_replies(
    shared: &Shared,
    connection: &Connection,
    mut reader: OwnedReadHalf,
) -> String {
    loop {
        let message = match read_frame_async::<_, ServerMessage>(&mut reader).await {
            Ok(message) => message,
            Err(FrameError::Closed) => return "keyd closed the connection".to_owned(),
            Err(error) => return format!("failed to read from keyd: {error}"),
        };
        match message {
            ServerMessage::Reply(reply) => {
                // The state is recorded here, in the order keyd sent its
                // frames, so a later StateChanged on this connection wins.
                if let Ok(ResponseBody::State(state)) = &reply.result {
                    shared.observe_state(*state);
                }
                match connection.take(reply.id) {
                    Some(waiter) => {
                        let _ = waiter.send(reply.result);
                    }
                    None => tracing::debug!(
                        id = reply.id,
                        "discarded a reply whose caller stopped waiting"
                    ),
                }
            }
            ServerMessage::StateChanged(state) => shared.observe_state(state),
            ServerMessage::Hello(_) => return "keyd sent a second hello".to_owned(),
        }
    }
}

/// Writes queued requests, batching those that are already waiting into one
/// write.
async fn write_requests(
    connection: &Connection,
    mut queue: mpsc::Receiver<ClientMessage>,
    mut writer: OwnedWriteHalf,
) -> String {
    while let Some(first) = queue.recv().await {
        let mut frames = Vec::new();
        let mut next = Some(first);
        while let Some(message) = next {
            match encode_frame(&message) {
                Ok(frame) => frames.push(frame),
                Err(error) => reject_unencodable(connection, &message, &error),
            }
            next = queue.try_recv().ok();
        }
        let result = match frames.as_slice() {
            [] => Ok(()),
            [frame] => writer.write_all(frame).await,
            _ => writer.write_all(&join_frames(&frames)).await,
        };
        if let Err(error) = result {
            return format!("failed to write to keyd: {error}");
        }
    }
    "the pool was dropped".to_owned()
}

/// Concatenates encoded frames into one zeroizing buffer allocated at the
/// final size. Frames may contain passwords, and a buffer that grew while
/// frames were appended would free unwiped copies of them.
fn join_frames(frames: &[Zeroizing<Vec<u8>>]) -> Zeroizing<Vec<u8>> {
    let len = frames.iter().map(|frame| frame.len()).sum();
    let mut batch = Zeroizing::new(Vec::with_capacity(len));
    for frame in frames {
        batch.extend_from_slice(frame);
    }
    batch
}

/// Fails the caller of a request that cannot be framed (in practice one
/// larger than the maximum frame size) instead of letting it time out.
fn reject_unencodable(connection: &Connection, message: &ClientMessage, error: &FrameError) {
    let ClientMessage::Request(request) = message else {
        return;
    };
    tracing::warn!(id = request.id, error = %error, "request cannot be sent to keyd");
    if let Some(waiter) = connection.take(request.id) {
        let _ = waiter.send(Err(ErrorBody::invalid_request(format!(
            "request cannot be sent to keyd: {error}"
        ))));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joined_frames_fill_one_allocation() {
        // Three frames whose sizes make a growing Vec reallocate. With
        // std's current growth rule its capacity goes 10, 30, 60.
        let frames: Vec<Zeroizing<Vec<u8>>> = [(1u8, 10), (2, 20), (3, 5)]
            .into_iter()
            .map(|(byte, len)| Zeroizing::new(vec![byte; len]))
            .collect();
        let batch = join_frames(&frames);
        assert_eq!(batch.len(), 35);
        assert_eq!(batch.capacity(), batch.len());
    }

    #[test]
    fn joined_frames_keep_order() {
        let frames = vec![
            Zeroizing::new(vec![1u8, 2]),
            Zeroizing::new(vec![3u8]),
            Zeroizing::new(vec![4u8, 5, 6]),
        ];
        assert_eq!(join_frames(&frames).as_slice(), [1, 2, 3, 4, 5, 6]);
    }
}
