//! Test doubles for frontd's peers: a keyd that speaks the real protocol on
//! a Unix socket with canned replies, and an MCIAS over real TLS on
//! 127.0.0.1 with a certificate made by rcgen.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Request as HttpRequest, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use metacrypt_frontd::AppState;
use metacrypt_frontd::keyd::{KeydPool, PoolOptions};
use metacrypt_frontd::mcias::{Clock, MciasClient, MciasOptions};
use metacrypt_protocol::policy::PolicyRule;
use metacrypt_protocol::{
    CaRequest, CaResponse, CertRecord, ClientMessage, ErrorBody, ErrorCode, HelloReply,
    IssuedCertificate, IssuerInfo, KeyAlgorithm, MountInfo, PROTOCOL_VERSION, Profile, Reply,
    Request, RequestBody, ResponseBody, SealState, ServerMessage, SocketRole, read_frame_async,
    write_frame_async,
};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::{Notify, Semaphore, broadcast};
use tokio::task::{JoinHandle, JoinSet};
use tower::ServiceExt;

pub const SEAL_PASSWORD: &str = "correct horse battery staple";
/// An unseal password that the keyd double rejects with 429 and
/// Retry-After 42.
pub const LOCKED_PASSWORD: &str = "password during lockout";
pub const ROOT_PEM: &str = "-----BEGIN CERTIFICATE-----\nUk9PVA==\n-----END CERTIFICATE-----\n";
pub const ISSUER_PEM: &str = "-----BEGIN CERTIFICATE-----\nSVNTVUVS\n-----END CERTIFICATE-----\n";
pub const LEAF_KEY: &str = "-----BEGIN PRIVATE KEY-----\nTEVBRiBLRVk=\n-----END PRIVATE KEY-----\n";

/// Waits for `condition`, failing the test instead of hanging when the
/// condition never becomes true.
pub async fn eventually<F: FnMut() -> bool>(what: &str, mut condition: F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the pool reports `expected`.
pub async fn wait_for_state(pool: &KeydPool, expected: Option<SealState>) {
    let mut receiver = pool.subscribe();
    let wait = receiver.wait_for(|state| *state == expected);
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .unwrap_or_else(|_| panic!("pool never reported {expected:?}"))
        .expect("pool dropped");
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One request as the keyd double received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// Number of the connection it came on, counted from 0.
    pub connection: usize,
    pub request: Request,
}

/// State of the keyd double that tests read and change.
pub struct DoubleState {
    pub seal: SealState,
    pub received: Vec<Received>,
    pub rules: BTreeMap<String, PolicyRule>,
}

/// Computes the reply to one request; `None` means never reply.
pub type Handler = Arc<
    dyn Fn(&Request, &mut DoubleState) -> Option<Result<ResponseBody, ErrorBody>> + Send + Sync,
>;

/// The keyd double's reply to `Hello`.
#[derive(Debug, Clone)]
pub enum HelloMode {
    Accept,
    Reject(String),
    /// Replies as if this were the admin socket.
    AdminRole,
}

pub struct KeydDouble {
    pub socket: PathBuf,
    shared: Arc<Mutex<DoubleState>>,
    handler: Handler,
    hello: Arc<Mutex<HelloMode>>,
    notify: broadcast::Sender<SealState>,
    connections: Arc<AtomicUsize>,
    task: Option<JoinHandle<()>>,
}

impl KeydDouble {
    pub fn start(dir: &Path, seal: SealState, handler: Handler) -> Self {
        let (notify, _) = broadcast::channel(64);
        let mut double = Self {
            socket: dir.join("front.sock"),
            shared: Arc::new(Mutex::new(DoubleState {
                seal,
                received: Vec::new(),
                rules: BTreeMap::new(),
            })),
            handler,
            hello: Arc::new(Mutex::new(HelloMode::Accept)),
            notify,
            connections: Arc::new(AtomicUsize::new(0)),
            task: None,
        };
        double.listen();
        double
    }

    /// Binds the socket again after [`KeydDouble::stop`].
    pub fn listen(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let listener = UnixListener::bind(&self.socket).expect("bind the keyd double socket");
        let shared = Arc::clone(&self.shared);
        let handler = Arc::clone(&self.handler);
        let hello = Arc::clone(&self.hello);
        let notify = self.notify.clone();
        let connections = Arc::clone(&self.connections);
        self.task = Some(tokio::spawn(async move {
            // Dropping the set when this task is aborted aborts every
            // connection, as a keyd exit would close them.
            let mut tasks = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let number = connections.fetch_add(1, Ordering::SeqCst);
                let mode = lock(&hello).clone();
                tasks.spawn(serve_keyd_connection(
                    stream,
                    number,
                    mode,
                    Arc::clone(&shared),
                    Arc::clone(&handler),
                    notify.clone(),
                ));
            }
        }));
    }

    /// Closes the listener and every connection.
    pub fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        let _ = std::fs::remove_file(&self.socket);
    }

    pub fn set_hello(&self, mode: HelloMode) {
        *lock(&self.hello) = mode;
    }

    /// Changes the seal state and notifies every connection, as keyd does.
    pub fn set_state(&self, seal: SealState) {
        lock(&self.shared).seal = seal;
        let _ = self.notify.send(seal);
    }

    pub fn received(&self) -> Vec<Received> {
        lock(&self.shared).received.clone()
    }

    pub fn requests(&self) -> Vec<Request> {
        self.received().into_iter().map(|r| r.request).collect()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for KeydDouble {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve_keyd_connection(
    stream: UnixStream,
    number: usize,
    mode: HelloMode,
    shared: Arc<Mutex<DoubleState>>,
    handler: Handler,
    notify: broadcast::Sender<SealState>,
) {
    let (mut reader, mut writer) = stream.into_split();
    let Ok(ClientMessage::Hello(hello)) = read_frame_async::<_, ClientMessage>(&mut reader).await
    else {
        return;
    };
    assert_eq!(hello.version, PROTOCOL_VERSION);
    assert_eq!(hello.role, SocketRole::Front);
    let mut changes = notify.subscribe();
    let reply = match mode {
        HelloMode::Accept => Ok(HelloReply {
            version: PROTOCOL_VERSION,
            role: SocketRole::Front,
            state: lock(&shared).seal,
        }),
        HelloMode::AdminRole => Ok(HelloReply {
            version: PROTOCOL_VERSION,
            role: SocketRole::Admin,
            state: lock(&shared).seal,
        }),
        HelloMode::Reject(message) => Err(ErrorBody::invalid_request(message)),
    };
    if write_frame_async(&mut writer, &ServerMessage::Hello(reply))
        .await
        .is_err()
    {
        return;
    }
    loop {
        tokio::select! {
            message = read_frame_async::<_, ClientMessage>(&mut reader) => {
                let Ok(ClientMessage::Request(request)) = message else {
                    return;
                };
                let (result, changed) = {
                    let mut state = lock(&shared);
                    let before = state.seal;
                    state.received.push(Received { connection: number, request: request.clone() });
                    let result = handler(&request, &mut state);
                    (result, (state.seal != before).then_some(state.seal))
                };
                if let Some(result) = result {
                    let reply = ServerMessage::Reply(Reply { id: request.id, result });
                    if write_frame_async(&mut writer, &reply).await.is_err() {
                        return;
                    }
                }
                if let Some(seal) = changed {
                    let _ = notify.send(seal);
                }
            }
            change = changes.recv() => {
                let Ok(seal) = change else { continue };
                if write_frame_async(&mut writer, &ServerMessage::StateChanged(seal)).await.is_err() {
                    return;
                }
            }
        }
    }
}

pub fn issuer_info(name: &str) -> IssuerInfo {
    IssuerInfo {
        name: name.to_owned(),
        key_algorithm: KeyAlgorithm::EcdsaP256,
        subject: format!("CN={name}"),
        serial_number: "0a1b".to_owned(),
        not_before: "2026-01-01T00:00:00Z".to_owned(),
        not_after: "2031-01-01T00:00:00Z".to_owned(),
        certificate: ISSUER_PEM.to_owned(),
        constraints: metacrypt_protocol::IssuerConstraints::default(),
    }
}

pub fn cert_record(serial: &str) -> CertRecord {
    CertRecord {
        serial_number: serial.to_owned(),
        issuer: "default".to_owned(),
        profile: Profile::Server,
        common_name: "a.example.com".to_owned(),
        dns_names: vec!["a.example.com".to_owned()],
        ip_addresses: Vec::new(),
        email_addresses: Vec::new(),
        uris: Vec::new(),
        key_algorithm: KeyAlgorithm::EcdsaP256,
        not_before: "2026-01-01T00:00:00Z".to_owned(),
        not_after: "2026-02-01T00:00:00Z".to_owned(),
        issued_by: "bob".to_owned(),
        certificate: "-----BEGIN CERTIFICATE-----\nTEVBRg==\n-----END CERTIFICATE-----\n"
            .to_owned(),
        revoked_at: None,
        revocation_reason: None,
        csr_signed: false,
        renewed_from: None,
        renewed_by: None,
    }
}

/// Replies like a keyd with one CA mount `pki` holding issuer `default`.
pub fn canned_reply(request: &Request, state: &mut DoubleState) -> Result<ResponseBody, ErrorBody> {
    match &request.body {
        RequestBody::Status => Ok(ResponseBody::State(state.seal)),
        RequestBody::Init { password } => {
            if state.seal != SealState::Uninitialized {
                return Err(ErrorBody::new(
                    ErrorCode::AlreadyInitialized,
                    "already initialized",
                ));
            }
            if password.len() < 12 {
                return Err(ErrorBody::invalid_request(
                    "seal password must be at least 12 characters",
                ));
            }
            state.seal = SealState::Unsealed;
            Ok(ResponseBody::State(state.seal))
        }
        RequestBody::Unseal { password } => {
            if state.seal == SealState::Uninitialized {
                return Err(ErrorBody::not_initialized());
            }
            match password.expose() {
                SEAL_PASSWORD => {
                    state.seal = SealState::Unsealed;
                    Ok(ResponseBody::State(state.seal))
                }
                LOCKED_PASSWORD => Err(ErrorBody::too_many_attempts(42)),
                _ => Err(ErrorBody::new(
                    ErrorCode::InvalidPassword,
                    "invalid password",
                )),
            }
        }
        RequestBody::Seal => {
            state.seal = SealState::Sealed;
            Ok(ResponseBody::State(state.seal))
        }
        RequestBody::ListMounts => Ok(ResponseBody::Mounts(vec![MountInfo {
            name: "pki".to_owned(),
            engine_type: "ca".to_owned(),
            created_at: "2026-01-01T00:00:00Z".to_owned(),
        }])),
        RequestBody::Mount { name, config } => Ok(ResponseBody::Mount(MountInfo {
            name: name.clone(),
            engine_type: config.engine_type().to_owned(),
            created_at: "2026-01-02T00:00:00Z".to_owned(),
        })),
        RequestBody::Unmount { .. } => Ok(ResponseBody::Unmounted),
        RequestBody::Ca { mount, op } => {
            if mount != "pki" {
                return Err(ErrorBody::not_found(format!("mount {mount:?} not found")));
            }
            canned_ca_reply(op).map(ResponseBody::Ca)
        }
        RequestBody::ListPolicyRules => Ok(ResponseBody::PolicyRules(state.rules.clone())),
        RequestBody::PutPolicyRule { name, rule } => {
            state.rules.insert(name.clone(), rule.clone());
            Ok(ResponseBody::PolicyRule(rule.clone()))
        }
        RequestBody::RecordDenial { .. } => Ok(ResponseBody::DenialRecorded),
        RequestBody::DeletePolicyRule { name } => match state.rules.remove(name) {
            Some(_) => Ok(ResponseBody::PolicyRuleDeleted),
            None => Err(ErrorBody::not_found(format!(
                "policy rule {name} not found"
            ))),
        },
    }
}

fn canned_ca_reply(op: &CaRequest) -> Result<CaResponse, ErrorBody> {
    Ok(match op {
        CaRequest::GetRoot => CaResponse::Certificate(ROOT_PEM.to_owned()),
        CaRequest::GetChain { issuer } => match issuer.as_deref() {
            None | Some("default") => {
                CaResponse::Chain(vec![ISSUER_PEM.to_owned(), ROOT_PEM.to_owned()])
            }
            Some(other) => return Err(ErrorBody::not_found(format!("issuer {other:?} not found"))),
        },
        CaRequest::GetIssuer { name } => CaResponse::Issuer(issuer_info(name)),
        CaRequest::CreateIssuer { name, .. } => CaResponse::Issuer(issuer_info(name)),
        CaRequest::ListIssuers => CaResponse::Issuers(vec![issuer_info("default")]),
        CaRequest::Issue(issue) => CaResponse::Issued(IssuedCertificate {
            certificate: "-----BEGIN CERTIFICATE-----\nTEVBRg==\n-----END CERTIFICATE-----\n"
                .to_owned(),
            private_key: LEAF_KEY.into(),
            private_key_type: "ec".to_owned(),
            issuing_ca: ISSUER_PEM.to_owned(),
            chain: vec![ISSUER_PEM.to_owned(), ROOT_PEM.to_owned()],
            serial_number: "5eed".to_owned(),
            not_before: "2026-01-01T00:00:00Z".to_owned(),
            not_after: "2026-01-02T00:00:00Z".to_owned(),
            warnings: if issue.ttl.as_deref() == Some("9999h") {
                vec!["ttl capped at the issuer's expiry".to_owned()]
            } else {
                Vec::new()
            },
        }),
        CaRequest::GetCert { serial } => CaResponse::Cert(cert_record(serial)),
        CaRequest::ListCerts { .. } | CaRequest::ListCertsFiltered { .. } => {
            CaResponse::Certs(vec![cert_record("5eed")])
        }
        CaRequest::Revoke { serial, .. } => CaResponse::Cert(cert_record(serial)),
        CaRequest::GetCrl { .. } => CaResponse::Crl(vec![0x30, 0x00]),
        CaRequest::DeleteIssuer { name, .. } => CaResponse::IssuerDeleted {
            name: name.clone(),
            active_certificates: 0,
        },
        CaRequest::SignCsr(_) | CaRequest::Renew { .. } => {
            CaResponse::Signed(metacrypt_protocol::SignedCertificate {
                certificate: "-----BEGIN CERTIFICATE-----\nTEVBRg==\n-----END CERTIFICATE-----\n"
                    .to_owned(),
                issuing_ca: ISSUER_PEM.to_owned(),
                chain: vec![ISSUER_PEM.to_owned(), ROOT_PEM.to_owned()],
                serial_number: "5eed".to_owned(),
                not_before: "2026-01-01T00:00:00Z".to_owned(),
                not_after: "2026-01-02T00:00:00Z".to_owned(),
                warnings: Vec::new(),
            })
        }
    })
}

pub fn canned() -> Handler {
    Arc::new(|request, state| Some(canned_reply(request, state)))
}

/// A clock that moves only when a test advances it.
pub struct ManualClock {
    now: Mutex<OffsetDateTime>,
}

impl ManualClock {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            now: Mutex::new(OffsetDateTime::now_utc()),
        })
    }

    pub fn advance(&self, secs: i64) {
        let mut now = lock(&self.now);
        *now += time::Duration::seconds(secs);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *lock(&self.now)
    }
}

/// Generates a certificate for `localhost` and 127.0.0.1 and returns it
/// with its key, in PEM.
pub fn localhost_certificate() -> (String, String) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("generate a certificate");
    (certified.cert.pem(), certified.signing_key.serialize_pem())
}

/// Builds a rustls server configuration for `cert_pem` and `key_pem`.
pub fn server_tls(cert_pem: &str, key_pem: &str) -> Arc<rustls::ServerConfig> {
    use rustls_pki_types::pem::PemObject;
    let certs = rustls_pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("parse certificate");
    let key =
        rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("parse key");
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server certificate");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Serves `router` over TLS on `listener` until the task is aborted.
pub fn spawn_tls_server(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
) -> JoinHandle<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::spawn(async move {
        let mut tasks = JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let router = router.clone();
            tasks.spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let _ = Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), TowerToHyperService::new(router))
                    .await;
            });
        }
    })
}

/// A user of the MCIAS double.
struct User {
    password: String,
    roles: Vec<String>,
}

#[derive(Clone)]
struct TokenRecord {
    username: String,
    roles: Vec<String>,
    expires_at: OffsetDateTime,
}

/// The MCIAS double's behaviour for every call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MciasMode {
    Normal,
    /// Every call gets 429 with `Retry-After: 7`.
    RateLimited,
    /// Every call gets 500.
    Broken,
}

/// Holds validation replies back until the test releases them.
pub struct ValidationHold {
    /// Notified when a validation has looked up its token and waits.
    pub arrived: Notify,
    /// One permit releases one waiting validation.
    pub release: Semaphore,
}

struct MciasShared {
    users: HashMap<String, User>,
    tokens: Mutex<HashMap<String, TokenRecord>>,
    mode: Mutex<MciasMode>,
    hold: Mutex<Option<Arc<ValidationHold>>>,
    validations: AtomicUsize,
    logins: AtomicUsize,
    next_token: AtomicUsize,
}

pub struct MciasDouble {
    pub addr: SocketAddr,
    pub ca_cert: PathBuf,
    shared: Arc<MciasShared>,
    task: JoinHandle<()>,
}

impl MciasDouble {
    /// Starts the double with users `alice` (role admin) and `bob` (role
    /// ops), whose passwords are `alice-password` and `bob-password`.
    pub async fn start(dir: &Path) -> Self {
        let (cert_pem, key_pem) = localhost_certificate();
        let ca_cert = dir.join("mcias-ca.pem");
        std::fs::write(&ca_cert, &cert_pem).expect("write the MCIAS certificate");

        let mut users = HashMap::new();
        users.insert(
            "alice".to_owned(),
            User {
                password: "alice-password".to_owned(),
                roles: vec!["admin".to_owned()],
            },
        );
        users.insert(
            "bob".to_owned(),
            User {
                password: "bob-password".to_owned(),
                roles: vec!["ops".to_owned()],
            },
        );
        let shared = Arc::new(MciasShared {
            users,
            tokens: Mutex::new(HashMap::new()),
            mode: Mutex::new(MciasMode::Normal),
            hold: Mutex::new(None),
            validations: AtomicUsize::new(0),
            logins: AtomicUsize::new(0),
            next_token: AtomicUsize::new(1),
        });

        let router = Router::new()
            .route("/v1/auth/login", post(mcias_login))
            .route("/v1/token/validate", post(mcias_validate))
            .route("/v1/auth/logout", post(mcias_logout))
            .with_state(Arc::clone(&shared));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind MCIAS double");
        let addr = listener.local_addr().expect("MCIAS double address");
        let task = spawn_tls_server(listener, server_tls(&cert_pem, &key_pem), router);
        Self {
            addr,
            ca_cert,
            shared,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    pub fn set_mode(&self, mode: MciasMode) {
        *lock(&self.shared.mode) = mode;
    }

    /// Creates a token for `username` that expires at `expires_at`.
    pub fn issue_token(
        &self,
        username: &str,
        roles: &[&str],
        expires_at: OffsetDateTime,
    ) -> String {
        let number = self.shared.next_token.fetch_add(1, Ordering::SeqCst);
        let token = format!("token-{number}-{username}");
        lock(&self.shared.tokens).insert(
            token.clone(),
            TokenRecord {
                username: username.to_owned(),
                roles: roles.iter().map(|role| role.to_string()).collect(),
                expires_at,
            },
        );
        token
    }

    pub fn admin_token(&self) -> String {
        self.issue_token(
            "alice",
            &["admin"],
            OffsetDateTime::now_utc() + time::Duration::hours(1),
        )
    }

    pub fn user_token(&self) -> String {
        self.issue_token(
            "bob",
            &["ops"],
            OffsetDateTime::now_utc() + time::Duration::hours(1),
        )
    }

    /// Makes every later validation look up its token, then wait for a
    /// permit of the returned hold before it replies.
    pub fn hold_validations(&self) -> Arc<ValidationHold> {
        let hold = Arc::new(ValidationHold {
            arrived: Notify::new(),
            release: Semaphore::new(0),
        });
        *lock(&self.shared.hold) = Some(Arc::clone(&hold));
        hold
    }

    pub fn revoke(&self, token: &str) {
        lock(&self.shared.tokens).remove(token);
    }

    /// Validation requests received so far.
    pub fn validations(&self) -> usize {
        self.shared.validations.load(Ordering::SeqCst)
    }

    pub fn logins(&self) -> usize {
        self.shared.logins.load(Ordering::SeqCst)
    }
}

impl Drop for MciasDouble {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn mcias_override(shared: &MciasShared) -> Option<Response> {
    match *lock(&shared.mode) {
        MciasMode::Normal => None,
        MciasMode::RateLimited => Some(
            (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "7")],
                Json(json!({"error": "slow down"})),
            )
                .into_response(),
        ),
        MciasMode::Broken => Some(
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({"error": "database is down"})),
            )
                .into_response(),
        ),
    }
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::to_owned)
}

async fn mcias_login(State(shared): State<Arc<MciasShared>>, Json(body): Json<Value>) -> Response {
    shared.logins.fetch_add(1, Ordering::SeqCst);
    if let Some(response) = mcias_override(&shared) {
        return response;
    }
    let username = body["username"].as_str().unwrap_or_default();
    let password = body["password"].as_str().unwrap_or_default();
    let Some(user) = shared
        .users
        .get(username)
        .filter(|user| user.password == password)
    else {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid credentials"})),
        )
            .into_response();
    };
    let number = shared.next_token.fetch_add(1, Ordering::SeqCst);
    let token = format!("login-{number}-{username}");
    let expires_at = OffsetDateTime::now_utc() + time::Duration::hours(1);
    lock(&shared.tokens).insert(
        token.clone(),
        TokenRecord {
            username: username.to_owned(),
            roles: user.roles.clone(),
            expires_at,
        },
    );
    Json(json!({"token": token, "expires_at": expires_at.format(&Rfc3339).unwrap()}))
        .into_response()
}

async fn mcias_validate(State(shared): State<Arc<MciasShared>>, headers: HeaderMap) -> Response {
    shared.validations.fetch_add(1, Ordering::SeqCst);
    if let Some(response) = mcias_override(&shared) {
        return response;
    }
    let record = bearer(&headers).and_then(|token| lock(&shared.tokens).get(&token).cloned());
    let hold = lock(&shared.hold).clone();
    if let Some(hold) = hold {
        hold.arrived.notify_one();
        if let Ok(permit) = hold.release.acquire().await {
            permit.forget();
        }
    }
    match record {
        Some(record) => Json(json!({
            "valid": true,
            "sub": format!("uid-{}", record.username),
            "username": record.username,
            "roles": record.roles,
            "expires_at": record.expires_at.format(&Rfc3339).unwrap(),
        }))
        .into_response(),
        None => Json(json!({"valid": false})).into_response(),
    }
}

async fn mcias_logout(State(shared): State<Arc<MciasShared>>, headers: HeaderMap) -> Response {
    if let Some(response) = mcias_override(&shared) {
        return response;
    }
    let removed = bearer(&headers).and_then(|token| lock(&shared.tokens).remove(&token));
    match removed {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid token"})),
        )
            .into_response(),
    }
}

/// Pool settings for tests: fast reconnects, a short request timeout.
pub fn test_pool_options(socket: &Path, connections: usize) -> PoolOptions {
    let mut options = PoolOptions::new(socket.to_path_buf(), connections);
    options.backoff_min = Duration::from_millis(10);
    options.backoff_max = Duration::from_millis(100);
    options.request_timeout = Duration::from_secs(2);
    options
}

pub fn mcias_options(url: &str, ca_cert: &Path) -> MciasOptions {
    MciasOptions {
        base_url: url.to_owned(),
        ca_cert: Some(ca_cert.to_path_buf()),
        connect_timeout: Duration::from_secs(3),
        request_timeout: Duration::from_secs(5),
        cache_ttl: Duration::from_secs(30),
        cache_capacity: 100,
    }
}

/// frontd's router in front of a keyd double and an MCIAS double.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub keyd: KeydDouble,
    pub mcias: MciasDouble,
    pub clock: Arc<ManualClock>,
    pub state: AppState,
}

pub struct Settings {
    pub seal: SealState,
    pub handler: Handler,
    pub max_body_bytes: usize,
    /// MCIAS URL to use instead of the double's.
    pub mcias_url: Option<String>,
    pub connections: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            seal: SealState::Unsealed,
            handler: canned(),
            max_body_bytes: 64 * 1024,
            mcias_url: None,
            connections: 2,
        }
    }
}

impl Harness {
    pub async fn start(seal: SealState) -> Self {
        Self::with(Settings {
            seal,
            ..Settings::default()
        })
        .await
    }

    pub async fn with(settings: Settings) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let keyd = KeydDouble::start(dir.path(), settings.seal, settings.handler);
        let mcias = MciasDouble::start(dir.path()).await;
        let clock = ManualClock::new();
        let url = settings.mcias_url.unwrap_or_else(|| mcias.url());
        let client = MciasClient::with_clock(&mcias_options(&url, &mcias.ca_cert), clock.clone())
            .expect("MCIAS client");
        let pool = KeydPool::start(test_pool_options(&keyd.socket, settings.connections));
        wait_for_state(&pool, Some(settings.seal)).await;
        let state = AppState::new(pool, Arc::new(client), settings.max_body_bytes);
        Self {
            dir,
            keyd,
            mcias,
            clock,
            state,
        }
    }

    pub fn router(&self) -> Router {
        metacrypt_frontd::api::router(self.state.clone())
    }

    pub async fn send(&self, request: HttpRequest<Body>) -> TestResponse {
        let response = self
            .router()
            .oneshot(request)
            .await
            .expect("router is infallible");
        TestResponse::read(response).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> TestResponse {
        self.send(request("GET", path, token, None)).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> TestResponse {
        self.send(request("POST", path, token, Some(body))).await
    }

    /// Stores policy rule `name` through the REST API as an admin.
    pub async fn put_rule(&self, name: &str, rule: Value) -> TestResponse {
        let token = self.mcias.admin_token();
        let path = format!("/v1/policy/rules/{name}");
        self.send(request("PUT", &path, Some(&token), Some(rule)))
            .await
    }

    /// Lets the role `ops` (the user token's role) do everything on mount
    /// `pki`.
    pub async fn allow_ops(&self) {
        let response = self
            .put_rule(
                "ops-on-pki",
                json!({"effect": "allow", "roles": ["ops"], "resources": ["pki/**"]}),
            )
            .await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.text);
    }
}

/// Builds a request; a JSON body gets its content type.
pub fn request(
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> HttpRequest<Body> {
    let mut builder = HttpRequest::builder().method(method).uri(path);
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    match body {
        Some(body) => builder
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .expect("request"),
        None => builder.body(Body::empty()).expect("request"),
    }
}

pub struct TestResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
}

impl TestResponse {
    pub async fn read(response: Response) -> Self {
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("read body");
        Self {
            status,
            headers,
            text: String::from_utf8(bytes.to_vec()).expect("UTF-8 body"),
        }
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|error| panic!("body {:?} is not JSON: {error}", self.text))
    }

    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error field in {:?}", self.text))
            .to_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }
}
