//! Client of the MCIAS identity service: login proxy, token validation with
//! a short cache, logout.
//!
//! MCIAS calls (all JSON over HTTPS):
//! - `POST /v1/auth/login` `{username, password, totp_code?}` returns 200
//!   `{token, expires_at}`, 401 for bad credentials, 429 when rate limited.
//! - `POST /v1/token/validate` with `Authorization: Bearer TOKEN` returns 200
//!   `{valid: true, sub, username, roles, expires_at}` or `{valid: false}`.
//! - `POST /v1/auth/logout` with the bearer token returns 204.
//!
//! A failed validation is never cached, and only a valid validation lets a
//! request through. MCIAS unreachable, timing out or returning 5xx is
//! [`MciasError::Unavailable`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use metacrypt_protocol::SecretString;
use reqwest::StatusCode;
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use zeroize::Zeroizing;

use crate::secret_buf::{self, BodyBuffer};

/// Largest MCIAS response body read; the replies are small JSON objects.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Longest MCIAS error message passed on to a client.
const MAX_MESSAGE_CHARS: usize = 200;

/// Default number of cached validations.
pub const DEFAULT_CACHE_CAPACITY: usize = 10_000;

/// The source of the current time for cache expiry; tests substitute a
/// clock they move by hand.
pub trait Clock: Send + Sync {
    fn now(&self) -> OffsetDateTime;
}

/// The system's UTC clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// The identity of a validated token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub username: String,
    pub roles: Vec<String>,
    /// The MCIAS role `admin` makes a Metacrypt admin.
    pub admin: bool,
    pub expires_at: OffsetDateTime,
}

/// Failure of an MCIAS call.
#[derive(Debug, thiserror::Error)]
pub enum MciasError {
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("invalid token")]
    InvalidToken,
    #[error("MCIAS rate limited the request")]
    RateLimited { retry_after_secs: Option<u64> },
    /// MCIAS rejected a login request as malformed (400), with its message.
    #[error("{message}")]
    Rejected { message: String },
    /// MCIAS could not be reached, timed out, returned 5xx or sent a reply
    /// that breaks its contract. `reason` is for the log only.
    #[error("authentication service unavailable: {reason}")]
    Unavailable { reason: String },
}

impl MciasError {
    fn unavailable(reason: impl Into<String>) -> Self {
        Self::Unavailable {
            reason: reason.into(),
        }
    }
}

/// Errors in the MCIAS client settings, found at start.
#[derive(Debug, thiserror::Error)]
pub enum MciasSetupError {
    #[error("mcias.ca_cert: failed to read {path}: {message}")]
    ReadCa { path: PathBuf, message: String },
    #[error("mcias.ca_cert: no certificates found in {path}")]
    EmptyCa { path: PathBuf },
    #[error("mcias.ca_cert: invalid certificate in {path}: {source}")]
    BadCa {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("mcias: no system root certificates found; set mcias.ca_cert")]
    NoSystemRoots,
    #[error("mcias: TLS configuration failed: {0}")]
    Tls(#[from] rustls::Error),
    #[error("mcias: failed to build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Settings of an [`MciasClient`].
#[derive(Debug, Clone)]
pub struct MciasOptions {
    /// Base URL without a trailing slash, such as `https://mcias:8443`.
    pub base_url: String,
    /// PEM bundle to trust instead of the system roots.
    pub ca_cert: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// How long a valid validation is reused; zero disables the cache.
    pub cache_ttl: Duration,
    pub cache_capacity: usize,
}

impl MciasOptions {
    pub fn from_config(config: &metacrypt_config::MciasConfig, base_url: &str) -> Self {
        Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            ca_cert: config.ca_cert.clone(),
            connect_timeout: Duration::from_secs(config.connect_timeout_secs),
            request_timeout: Duration::from_secs(config.request_timeout_secs),
            cache_ttl: Duration::from_secs(config.cache_secs),
            cache_capacity: DEFAULT_CACHE_CAPACITY,
        }
    }
}

/// A login as the REST caller sent it.
pub struct Login {
    pub username: String,
    pub password: SecretString,
    pub totp_code: Option<SecretString>,
}

/// A successful login: the bearer token and its expiry as MCIAS wrote it.
pub struct LoginGrant {
    pub token: SecretString,
    pub expires_at: String,
}

#[derive(Serialize)]
struct LoginBody<'a> {
    username: &'a str,
    password: &'a SecretString,
    #[serde(skip_serializing_if = "Option::is_none")]
    totp_code: Option<&'a SecretString>,
}

#[derive(Deserialize)]
struct LoginReply {
    token: SecretString,
    expires_at: String,
}

#[derive(Deserialize)]
struct ValidateReply {
    valid: bool,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    expires_at: Option<String>,
}

#[derive(Deserialize)]
struct MciasErrorReply {
    error: String,
}

pub struct MciasClient {
    http: reqwest::Client,
    base_url: String,
    cache_ttl: Duration,
    cache: Mutex<TokenCache>,
    clock: Arc<dyn Clock>,
}

impl MciasClient {
    pub fn new(options: &MciasOptions) -> Result<Self, MciasSetupError> {
        Self::with_clock(options, Arc::new(SystemClock))
    }

    pub fn with_clock(
        options: &MciasOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, MciasSetupError> {
        let tls = client_tls_config(options.ca_cert.as_deref())?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .https_only(true)
            // MCIAS is an internal service reached directly; proxy
            // variables meant for outbound traffic do not apply to it.
            .no_proxy()
            // A redirect would send the bearer token somewhere else.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(options.connect_timeout)
            .timeout(options.request_timeout)
            .user_agent(concat!("metacrypt-frontd/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            base_url: options.base_url.trim_end_matches('/').to_owned(),
            cache_ttl: options.cache_ttl,
            cache: Mutex::new(TokenCache::new(options.cache_capacity)),
            clock,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    fn cache(&self) -> MutexGuard<'_, TokenCache> {
        // Every cache operation leaves the map consistent, so a panic in
        // another holder does not invalidate it.
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Proxies a login to MCIAS.
    pub async fn login(&self, login: &Login) -> Result<LoginGrant, MciasError> {
        let body = secret_buf::json_to_vec(&LoginBody {
            username: &login.username,
            password: &login.password,
            totp_code: login.totp_code.as_ref(),
        })
        .map_err(|error| {
            MciasError::unavailable(format!("failed to encode the login request: {error}"))
        })?;
        // reqwest's `json` would serialize into a growing buffer. This buffer
        // is wiped when reqwest drops the body. NOTE: hyper and rustls handle
        // the bytes in buffers of their own, which frontd cannot wipe.
        let response = self
            .http
            .post(self.url("/v1/auth/login"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(secret_buf::into_bytes(body))
            .send()
            .await
            .map_err(|error| request_failed("login", &error))?;
        let status = response.status();
        let retry_after_secs = retry_after(&response);
        let bytes = read_body(response).await?;
        match status {
            StatusCode::OK => {
                let reply: LoginReply = serde_json::from_slice(&bytes).map_err(|error| {
                    MciasError::unavailable(format!("malformed login reply: {error}"))
                })?;
                Ok(LoginGrant {
                    token: reply.token,
                    expires_at: reply.expires_at,
                })
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(MciasError::InvalidCredentials),
            StatusCode::TOO_MANY_REQUESTS => Err(MciasError::RateLimited { retry_after_secs }),
            StatusCode::BAD_REQUEST => Err(MciasError::Rejected {
                message: error_message(&bytes)
                    .unwrap_or_else(|| "invalid login request".to_owned()),
            }),
            other => Err(unexpected_status("login", other)),
        }
    }

    /// Returns the identity of `token`, from the cache when a validation of
    /// it is recent enough.
    ///
    /// A validation that is still running when the token is logged out
    /// returns its result to its caller but is not cached.
    pub async fn validate(&self, token: &SecretString) -> Result<Identity, MciasError> {
        let key = token_key(token);
        // The time before the MCIAS call starts the cache period, so an
        // entry never outlives the validation by more than the TTL.
        let now = self.clock.now();
        let ticket = {
            let mut cache = self.cache();
            if let Some(identity) = cache.get(&key, now) {
                return Ok(identity);
            }
            cache.ticket()
        };
        let identity = self.validate_remote(token).await?;
        self.cache()
            .insert(key, identity.clone(), now, self.cache_ttl, ticket);
        Ok(identity)
    }

    async fn validate_remote(&self, token: &SecretString) -> Result<Identity, MciasError> {
        let response = self
            .http
            .post(self.url("/v1/token/validate"))
            .bearer_auth(token.expose())
            .send()
            .await
            .map_err(|error| request_failed("token validation", &error))?;
        let status = response.status();
        let retry_after_secs = retry_after(&response);
        let bytes = read_body(response).await?;
        match status {
            StatusCode::OK => parse_validation(&bytes),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(MciasError::InvalidToken),
            StatusCode::TOO_MANY_REQUESTS => Err(MciasError::RateLimited { retry_after_secs }),
            other => Err(unexpected_status("token validation", other)),
        }
    }

    /// Revokes `token` at MCIAS. First the cached validation is removed, and
    /// validations of the token already running will not cache their result.
    /// From then on the cache serves the token only after a new MCIAS
    /// validation, even if the logout at MCIAS fails.
    pub async fn logout(&self, token: &SecretString) -> Result<(), MciasError> {
        self.cache()
            .revoke(token_key(token), self.clock.now(), self.cache_ttl);
        let response = self
            .http
            .post(self.url("/v1/auth/logout"))
            .bearer_auth(token.expose())
            .send()
            .await
            .map_err(|error| request_failed("logout", &error))?;
        match response.status() {
            StatusCode::OK | StatusCode::NO_CONTENT => Ok(()),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(MciasError::InvalidToken),
            other => Err(unexpected_status("logout", other)),
        }
    }

    /// Number of cached validations.
    pub fn cached(&self) -> usize {
        self.cache().len()
    }
}

fn parse_validation(bytes: &[u8]) -> Result<Identity, MciasError> {
    let reply: ValidateReply = serde_json::from_slice(bytes)
        .map_err(|error| MciasError::unavailable(format!("malformed validation reply: {error}")))?;
    if !reply.valid {
        return Err(MciasError::InvalidToken);
    }
    let username = reply
        .username
        .filter(|name| !name.is_empty())
        .ok_or_else(|| MciasError::unavailable("validation reply has no username"))?;
    let expires_text = reply
        .expires_at
        .ok_or_else(|| MciasError::unavailable("validation reply has no expires_at"))?;
    let expires_at = OffsetDateTime::parse(&expires_text, &Rfc3339).map_err(|error| {
        MciasError::unavailable(format!(
            "validation reply has an invalid expires_at {expires_text:?}: {error}"
        ))
    })?;
    let admin = reply.roles.iter().any(|role| role == "admin");
    Ok(Identity {
        username,
        roles: reply.roles,
        admin,
        expires_at,
    })
}

fn request_failed(call: &str, error: &reqwest::Error) -> MciasError {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "failed"
    };
    // reqwest's message names the URL but never a header, so the token
    // does not reach the log.
    MciasError::unavailable(format!("MCIAS {call} request {kind}: {error}"))
}

fn unexpected_status(call: &str, status: StatusCode) -> MciasError {
    MciasError::unavailable(format!("MCIAS returned {status} for the {call} request"))
}

fn retry_after(response: &reqwest::Response) -> Option<u64> {
    response
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Reads a reply body into zeroizing memory, because a login reply contains
/// a bearer token.
async fn read_body(mut response: reqwest::Response) -> Result<Zeroizing<Vec<u8>>, MciasError> {
    let mut body = BodyBuffer::new(response.content_length(), MAX_RESPONSE_BYTES);
    while let Some(chunk) = response.chunk().await.map_err(|error| {
        MciasError::unavailable(format!("failed to read the MCIAS reply: {error}"))
    })? {
        body.push(&chunk).map_err(|_| {
            MciasError::unavailable(format!("MCIAS reply exceeds {MAX_RESPONSE_BYTES} bytes"))
        })?;
    }
    Ok(body.into_inner())
}

fn error_message(bytes: &[u8]) -> Option<String> {
    let reply: MciasErrorReply = serde_json::from_slice(bytes).ok()?;
    let message: String = reply
        .error
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_MESSAGE_CHARS)
        .collect();
    (!message.is_empty()).then_some(message)
}

/// Builds the TLS settings for MCIAS: roots from `ca_cert` or the system,
/// TLS 1.2 and 1.3, certificate and host name always verified.
fn client_tls_config(ca_cert: Option<&Path>) -> Result<rustls::ClientConfig, MciasSetupError> {
    let mut roots = RootCertStore::empty();
    match ca_cert {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
                .map_err(|error| MciasSetupError::ReadCa {
                    path: path.to_path_buf(),
                    message: error.to_string(),
                })?;
            if certs.is_empty() {
                return Err(MciasSetupError::EmptyCa {
                    path: path.to_path_buf(),
                });
            }
            for cert in certs {
                roots.add(cert).map_err(|source| MciasSetupError::BadCa {
                    path: path.to_path_buf(),
                    source,
                })?;
            }
        }
        None => {
            let loaded = rustls_native_certs::load_native_certs();
            for error in &loaded.errors {
                tracing::warn!(error = %error, "failed to load a system root certificate");
            }
            roots.add_parsable_certificates(loaded.certs);
            if roots.is_empty() {
                return Err(MciasSetupError::NoSystemRoots);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Returns the SHA-256 of a token, the cache key, so the cache never
/// contains a token.
fn token_key(token: &SecretString) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.expose().as_bytes());
    let mut key = [0u8; 32];
    key.copy_from_slice(digest.as_ref());
    key
}

struct CacheEntry {
    identity: Identity,
    valid_until: OffsetDateTime,
}

/// A logout of one token: its number in the sequence of logouts and when it
/// happened.
struct Revocation {
    number: u64,
    at: OffsetDateTime,
}

/// Recent successful validations, keyed by [`token_key`] and bounded in
/// size, and recent logouts.
///
/// A validation takes a [`TokenCache::ticket`] before it calls MCIAS, and
/// its result is cached only if the token was not logged out after that.
/// At most `capacity` logouts are kept. When that many are kept, those older
/// than one cache lifetime are dropped first, else the oldest one. Dropping
/// a logout raises `ticket_floor`, so validations that started before it
/// are not cached.
struct TokenCache {
    entries: HashMap<[u8; 32], CacheEntry>,
    capacity: usize,
    revoked: HashMap<[u8; 32], Revocation>,
    /// Number of logouts so far.
    revocations: u64,
    /// Minimum ticket whose validation may still be cached.
    ticket_floor: u64,
}

impl TokenCache {
    fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            capacity,
            revoked: HashMap::new(),
            revocations: 0,
            ticket_floor: 0,
        }
    }

    /// Returns the ticket of a validation that starts now.
    fn ticket(&self) -> u64 {
        self.revocations
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn get(&mut self, key: &[u8; 32], now: OffsetDateTime) -> Option<Identity> {
        let entry = self.entries.get(key)?;
        if now < entry.valid_until {
            return Some(entry.identity.clone());
        }
        self.entries.remove(key);
        None
    }

    /// Caches `identity` until `now + ttl` or the token's expiry, whichever
    /// comes first. Nothing is cached when that moment has passed, or when
    /// the token was logged out after the validation took `ticket`.
    fn insert(
        &mut self,
        key: [u8; 32],
        identity: Identity,
        now: OffsetDateTime,
        ttl: Duration,
        ticket: u64,
    ) {
        if self.capacity == 0 || ttl.is_zero() {
            return;
        }
        if ticket < self.ticket_floor {
            return;
        }
        if let Some(revocation) = self.revoked.get(&key)
            && revocation.number > ticket
        {
            return;
        }
        let valid_until = (now + ttl).min(identity.expires_at);
        if valid_until <= now {
            return;
        }
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            self.entries.retain(|_, entry| entry.valid_until > now);
        }
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            let soonest = self
                .entries
                .iter()
                .min_by_key(|(_, entry)| entry.valid_until)
                .map(|(key, _)| *key);
            if let Some(soonest) = soonest {
                self.entries.remove(&soonest);
            }
        }
        self.entries.insert(
            key,
            CacheEntry {
                identity,
                valid_until,
            },
        );
    }

    /// Removes the cached validation of a token that is being logged out and
    /// records the logout, so that validations already running do not cache
    /// the token again.
    fn revoke(&mut self, key: [u8; 32], now: OffsetDateTime, ttl: Duration) {
        self.entries.remove(&key);
        if self.capacity == 0 || ttl.is_zero() {
            return;
        }
        if self.revoked.len() >= self.capacity && !self.revoked.contains_key(&key) {
            self.drop_revocations(|revocation| revocation.at + ttl <= now);
        }
        if self.revoked.len() >= self.capacity && !self.revoked.contains_key(&key) {
            let oldest = self
                .revoked
                .values()
                .map(|revocation| revocation.number)
                .min();
            if let Some(oldest) = oldest {
                self.drop_revocations(|revocation| revocation.number == oldest);
            }
        }
        self.revocations += 1;
        self.revoked.insert(
            key,
            Revocation {
                number: self.revocations,
                at: now,
            },
        );
    }

    /// Forgets the logouts that match `condition`. Validations that started
    /// before the latest of them can no longer be checked against it, so
    /// they are not cached.
    fn drop_revocations(&mut self, condition: impl Fn(&Revocation) -> bool) {
        let mut floor = self.ticket_floor;
        self.revoked.retain(|_, revocation| {
            if condition(revocation) {
                floor = floor.max(revocation.number);
                false
            } else {
                true
            }
        });
        self.ticket_floor = floor;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(expires_at: OffsetDateTime) -> Identity {
        Identity {
            username: "alice".to_owned(),
            roles: vec!["admin".to_owned()],
            admin: true,
            expires_at,
        }
    }

    fn at(secs: i64) -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(1_800_000_000 + secs)
    }

    #[test]
    fn cache_full_evicts_soonest_entry() {
        let mut cache = TokenCache::new(2);
        let ttl = Duration::from_secs(30);
        cache.insert([1; 32], identity(at(10)), at(0), ttl, 0);
        cache.insert([2; 32], identity(at(100)), at(0), ttl, 0);
        cache.insert([3; 32], identity(at(100)), at(1), ttl, 0);
        assert_eq!(cache.len(), 2);
        assert!(cache.get(&[1; 32], at(2)).is_none());
        assert!(cache.get(&[2; 32], at(2)).is_some());
        assert!(cache.get(&[3; 32], at(2)).is_some());
    }

    #[test]
    fn cache_full_drops_expired_first() {
        let mut cache = TokenCache::new(2);
        let ttl = Duration::from_secs(30);
        cache.insert([1; 32], identity(at(100)), at(0), ttl, 0);
        cache.insert([2; 32], identity(at(100)), at(20), ttl, 0);
        cache.insert([3; 32], identity(at(100)), at(40), ttl, 0);
        assert!(cache.get(&[1; 32], at(40)).is_none());
        assert!(cache.get(&[2; 32], at(40)).is_some());
        assert!(cache.get(&[3; 32], at(40)).is_some());
    }

    #[test]
    fn expired_token_is_not_cached() {
        let mut cache = TokenCache::new(4);
        cache.insert([1; 32], identity(at(-1)), at(0), Duration::from_secs(30), 0);
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn zero_ttl_disables_cache() {
        let mut cache = TokenCache::new(4);
        cache.insert([1; 32], identity(at(100)), at(0), Duration::ZERO, 0);
        assert_eq!(cache.len(), 0);
    }

    const TTL: Duration = Duration::from_secs(30);

    #[test]
    fn logout_blocks_running_validation() {
        let mut cache = TokenCache::new(4);
        let ticket = cache.ticket();
        cache.revoke([1; 32], at(0), TTL);
        cache.insert([1; 32], identity(at(100)), at(0), TTL, ticket);
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn logout_removes_cached_entry() {
        let mut cache = TokenCache::new(4);
        cache.insert([1; 32], identity(at(100)), at(0), TTL, cache.ticket());
        cache.revoke([1; 32], at(1), TTL);
        assert!(cache.get(&[1; 32], at(2)).is_none());
    }

    #[test]
    fn validation_after_logout_is_cached() {
        let mut cache = TokenCache::new(4);
        cache.revoke([1; 32], at(0), TTL);
        let ticket = cache.ticket();
        cache.insert([1; 32], identity(at(100)), at(1), TTL, ticket);
        assert!(cache.get(&[1; 32], at(2)).is_some());
    }

    #[test]
    fn logout_of_other_token_keeps_caching() {
        let mut cache = TokenCache::new(4);
        let ticket = cache.ticket();
        cache.revoke([2; 32], at(0), TTL);
        cache.insert([1; 32], identity(at(100)), at(0), TTL, ticket);
        assert!(cache.get(&[1; 32], at(1)).is_some());
    }

    #[test]
    fn dropped_logout_blocks_older_validations() {
        let mut cache = TokenCache::new(1);
        let old_ticket = cache.ticket();
        cache.revoke([1; 32], at(0), TTL);
        // The second logout drops the first, because only one is kept.
        cache.revoke([2; 32], at(1), TTL);
        cache.insert([1; 32], identity(at(100)), at(1), TTL, old_ticket);
        assert_eq!(cache.len(), 0, "validation older than a dropped logout");
        let new_ticket = cache.ticket();
        cache.insert([1; 32], identity(at(100)), at(2), TTL, new_ticket);
        assert_eq!(cache.len(), 1, "validation after every logout");
    }

    #[test]
    fn full_logouts_drop_expired_first() {
        let mut cache = TokenCache::new(2);
        cache.revoke([1; 32], at(0), TTL);
        let ticket = cache.ticket();
        cache.revoke([2; 32], at(20), TTL);
        // At 40 s two logouts fill the cache. The first is older than the
        // TTL, so it is the one dropped.
        cache.revoke([3; 32], at(40), TTL);
        assert!(!cache.revoked.contains_key(&[1; 32]), "expired logout kept");
        assert!(
            cache.revoked.contains_key(&[2; 32]),
            "recent logout dropped"
        );
        cache.insert([2; 32], identity(at(100)), at(40), TTL, ticket);
        assert_eq!(cache.len(), 0, "recent logout no longer blocks");
    }

    #[test]
    fn logouts_stay_bounded() {
        let mut cache = TokenCache::new(3);
        for byte in 0..10u8 {
            cache.revoke([byte; 32], at(i64::from(byte)), TTL);
        }
        assert_eq!(cache.revoked.len(), 3);
    }

    #[test]
    fn validation_without_username_is_unavailable() {
        let reply = br#"{"valid": true, "roles": [], "expires_at": "2030-01-01T00:00:00Z"}"#;
        assert!(matches!(
            parse_validation(reply),
            Err(MciasError::Unavailable { .. })
        ));
    }

    #[test]
    fn validation_false_is_invalid_token() {
        assert!(matches!(
            parse_validation(br#"{"valid": false}"#),
            Err(MciasError::InvalidToken)
        ));
    }

    #[test]
    fn admin_role_makes_admin() {
        let reply = br#"{"valid": true, "sub": "u1", "username": "alice",
            "roles": ["ops", "admin"], "expires_at": "2030-01-01T00:00:00Z"}"#;
        let identity = parse_validation(reply).unwrap();
        assert!(identity.admin);
        assert_eq!(identity.roles, vec!["ops", "admin"]);
    }

    #[test]
    fn token_key_is_sha256() {
        let key = token_key(&SecretString::from("abc"));
        assert_eq!(
            hex::encode(key),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
