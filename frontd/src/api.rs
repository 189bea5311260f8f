//! The REST API: routes, the request id and access log, and seal gating.
//!
//! Every error is JSON `{"error": "..."}`, unknown routes and methods
//! included. Routes fall in two groups:
//! - open routes (status, init, unseal and the public PKI routes that serve
//!   CA certificates) are passed to keyd in every state;
//! - every other route is gated on the seal state that keyd last reported,
//!   before authentication is attempted. The status is 503 `sealed` while
//!   sealed or initializing, and 412 `not initialized` before init, which is
//!   also what keyd returns for an unseal then. While no connection to keyd
//!   is up it is 503 `keyd unavailable`. `/v1/seal` is one of them, so a
//!   seal of a sealed service is 503 `sealed`.
//!
//! Request paths must be canonical (see [`canonical`]); any other path is a
//! 400 before routing has any effect.
//!
//! Request bodies are read in full, within the route's limit and a budget
//! shared by all requests, before any route or gate can reject the request.
//! An HTTP/2 response sent while the client is still sending its body
//! resets the stream, and curl 7.88 then reports a framing error instead of
//! the JSON error. Every response carries
//! `Cache-Control: no-store`, since responses contain tokens and private
//! keys.

mod canonical;
mod extract;
mod mounts;
mod pki;
mod policy;
mod secret_json;
mod session;
mod system;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metacrypt_protocol::{Caller, RequestBody, ResponseBody, SealState};
use tracing::Instrument;

pub use extract::{BodyBudget, JsonBody, NoBody, PathParams, QueryParams};
pub use secret_json::SecretJson;

use crate::AppState;
use crate::auth::Authenticated;
use crate::error::ApiError;
use crate::keyd::Origin;
use crate::secret_buf;

/// The request id header, read from the client when it is sane and always
/// returned.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Maximum length of a client-supplied request id that is kept.
const MAX_REQUEST_ID_LEN: usize = 64;

/// Maximum time from a request's headers to its response, reading the body
/// included. It is longer than the keyd and MCIAS timeouts, so those fire
/// first.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Maximum time spent reading and throwing away an oversized body before the
/// 413 is sent.
const DISCARD_TIMEOUT: Duration = Duration::from_secs(10);

/// Routes that read a request body before the caller is authenticated.
const UNAUTHENTICATED_BODY_ROUTES: [&str; 3] = ["/v1/init", "/v1/unseal", "/v1/auth/login"];

/// Body limit of [`UNAUTHENTICATED_BODY_ROUTES`]: their bodies carry a
/// password and a few short fields, and a small limit keeps clients that are
/// not logged in from using much of the [`BodyBudget`].
const UNAUTHENTICATED_BODY_LIMIT: usize = 16 * 1024;

/// Builds the router with every route and middleware.
pub fn router(state: AppState) -> Router {
    let open = Router::new()
        .route("/v1/status", get(system::status))
        .route("/v1/init", post(system::init))
        .route("/v1/unseal", post(system::unseal))
        .route("/v1/pki/{mount}/ca", get(pki::root_certificate))
        .route("/v1/pki/{mount}/ca/chain", get(pki::chain))
        .route(
            "/v1/pki/{mount}/issuer/{name}",
            get(pki::issuer_certificate),
        )
        .route("/v1/pki/{mount}/crl", get(pki::crl));
    let gated = Router::new()
        .route("/v1/seal", post(system::seal))
        .route("/v1/auth/login", post(session::login))
        .route("/v1/auth/tokeninfo", get(session::tokeninfo))
        .route("/v1/auth/logout", post(session::logout))
        .route("/v1/mounts", get(mounts::list).post(mounts::create))
        .route("/v1/mounts/{name}", axum::routing::delete(mounts::remove))
        .route(
            "/v1/pki/{mount}/issuers",
            get(pki::list_issuers).post(pki::create_issuer),
        )
        .route("/v1/pki/{mount}/issue", post(pki::issue))
        .route("/v1/pki/{mount}/sign", post(pki::sign_csr))
        .route("/v1/pki/{mount}/certs", get(pki::list_certs))
        .route("/v1/pki/{mount}/certs/{serial}", get(pki::get_cert))
        .route("/v1/policy/rules", get(policy::list))
        .route(
            "/v1/policy/rules/{name}",
            get(policy::get).put(policy::put).delete(policy::delete),
        )
        .route("/v1/policy/check", get(policy::check))
        .route("/v1/pki/{mount}/certs/{serial}/revoke", post(pki::revoke))
        .route("/v1/pki/{mount}/certs/{serial}/renew", post(pki::renew))
        .route(
            "/v1/pki/{mount}/issuers/{name}",
            axum::routing::delete(pki::delete_issuer),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_unsealed,
        ));
    open.merge(gated)
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .layer(middleware::from_fn(reject_body_on_read_methods))
        .layer(middleware::from_fn_with_state(state.clone(), buffer_body))
        .layer(middleware::from_fn(canonical::require_canonical_path))
        .layer(middleware::from_fn_with_state(state.clone(), track_request))
        .with_state(state)
}

/// The id and, once known, the username of one request, shared between the
/// middleware that logs the request and the handlers.
#[derive(Clone)]
pub struct RequestContext {
    inner: Arc<ContextInner>,
}

struct ContextInner {
    id: String,
    /// The client's address on the TCP connection; `None` only where no
    /// connection information is attached, as in router tests.
    remote_addr: Option<SocketAddr>,
    username: OnceLock<String>,
    caller: OnceLock<Caller>,
}

impl RequestContext {
    fn new(id: String, remote_addr: Option<SocketAddr>) -> Self {
        Self {
            inner: Arc::new(ContextInner {
                id,
                remote_addr,
                username: OnceLock::new(),
                caller: OnceLock::new(),
            }),
        }
    }

    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// Returns the request id and the client's address, for requests to
    /// keyd. X-Forwarded-For and similar headers are not read, because
    /// frontd terminates TLS itself and any client can set them.
    pub fn origin(&self) -> Origin<'_> {
        Origin::new(&self.inner.id, self.inner.remote_addr)
    }

    /// Records the caller's username for the access log. The first value set
    /// is kept.
    pub fn set_username(&self, username: &str) {
        let _ = self.inner.username.set(username.to_owned());
    }

    pub fn username(&self) -> Option<&str> {
        self.inner.username.get().map(String::as_str)
    }

    /// Records the authenticated caller, for the audit line of a request
    /// that frontd rejects. The first value set is kept.
    pub fn set_caller(&self, caller: Caller) {
        let _ = self.inner.caller.set(caller);
    }

    pub fn caller(&self) -> Option<&Caller> {
        self.inner.caller.get()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestContext {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<RequestContext>()
            .cloned()
            .unwrap_or_else(|| {
                RequestContext::new(generate_request_id(), connection_peer(&parts.extensions))
            }))
    }
}

/// Returns the address of the TCP peer, which the server attaches to every
/// request of a connection.
fn connection_peer(extensions: &axum::http::Extensions) -> Option<SocketAddr> {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| *addr)
}

/// Returns the client's request id if it is 1 to 64 characters of
/// `[A-Za-z0-9._:-]`.
fn sane_request_id(value: &HeaderValue) -> Option<String> {
    let text = value.to_str().ok()?;
    let sane = !text.is_empty()
        && text.len() <= MAX_REQUEST_ID_LEN
        && text
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b':' | b'-'));
    sane.then(|| text.to_owned())
}

/// Returns 16 random lowercase hex characters.
fn generate_request_id() -> String {
    let mut bytes = [0u8; 8];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        // A failing system random source is no reason to drop a request,
        // because a time-based id is still unique enough for logs.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos() as u64)
            .unwrap_or_default();
        bytes = nanos.to_be_bytes();
    }
    hex::encode(bytes)
}

/// Assigns the request id, enforces the declared body size and the request
/// timeout, and writes one access log line per request.
async fn track_request(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let id = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(sane_request_id)
        .unwrap_or_else(generate_request_id);
    let peer = connection_peer(request.extensions());
    let context = RequestContext::new(id, peer);
    request.extensions_mut().insert(context.clone());
    let method = request.method().clone();
    let client = peer
        .map(|addr| addr.to_string())
        .unwrap_or_else(|| "-".to_owned());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());

    let declared_len = extract::declared_length(request.headers());
    let limit = body_limit(request.uri().path(), state.max_body_bytes);
    let mut response = match declared_len {
        Some(len) if len > limit as u64 => {
            if len <= extract::MAX_DISCARDED_BODY_BYTES {
                discard_body_briefly(request.into_body()).await;
            }
            extract::body_too_large(limit).into_response()
        }
        _ => {
            let span = tracing::info_span!("request", request_id = %context.id());
            let handled = tokio::time::timeout(REQUEST_TIMEOUT, next.run(request).instrument(span));
            let (handled, audited) = crate::keyd::track_audited_requests(handled).await;
            let response = match handled {
                Ok(response) => response,
                Err(_) => {
                    ApiError::new(StatusCode::REQUEST_TIMEOUT, "request timed out").into_response()
                }
            };
            if !audited {
                let message = response
                    .extensions()
                    .get::<crate::error::ErrorMessage>()
                    .map(|message| message.0.clone());
                let status = response.status();
                audit_rejection(&state, &context, &method, &route, status, message).await;
            }
            response
        }
    };

    if let Ok(value) = HeaderValue::from_str(context.id()) {
        response.headers_mut().insert(REQUEST_ID.clone(), value);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    tracing::info!(
        target: "metacrypt_frontd::access",
        client = %client,
        method = %method,
        path = %route,
        status = response.status().as_u16(),
        duration_ms = started.elapsed().as_millis() as u64,
        request_id = %context.id(),
        username = context.username().unwrap_or("-"),
        "request"
    );
    response
}

/// Has keyd write an audit line for a request of an authenticated caller
/// that frontd rejected before any audited request reached keyd, such as a
/// 400 for a bad body or a 404 for an unknown route. A failure to record it
/// is logged; the client gets the response it would have got anyway.
async fn audit_rejection(
    state: &AppState,
    context: &RequestContext,
    method: &axum::http::Method,
    route: &str,
    status: StatusCode,
    message: Option<String>,
) {
    let Some(caller) = context.caller() else {
        return;
    };
    if !(status.is_client_error() || status.is_server_error()) {
        return;
    }
    let reason = message.unwrap_or_else(|| status.to_string());
    let body = RequestBody::RecordDenial {
        operation: format!("{method} {route}"),
        resource: None,
        reason,
        status: status.as_u16(),
    };
    match state
        .keyd
        .call(context.origin(), Some(caller.clone()), body)
        .await
    {
        Ok(ResponseBody::DenialRecorded) => {}
        Ok(other) => {
            unexpected_reply("record-denial", &other);
        }
        Err(error) => tracing::warn!(
            error = %error,
            request_id = %context.id(),
            "failed to record a rejected request in the audit log"
        ),
    }
}

/// Rejects a GET, HEAD or DELETE request that has a body with 400. It runs
/// after the body was buffered, so the error reaches an HTTP/2 client whole.
async fn reject_body_on_read_methods(request: Request, next: Next) -> Response {
    let takes_no_body = matches!(
        *request.method(),
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::DELETE
    );
    if takes_no_body && !request.body().is_end_stream() && request.body().size_hint().lower() > 0 {
        return ApiError::bad_request(format!(
            "{} requests take no body; send the request without one",
            request.method()
        ))
        .into_response();
    }
    next.run(request).await
}

/// Reads and throws away `body` for at most [`DISCARD_TIMEOUT`].
async fn discard_body_briefly(body: Body) {
    let _ = tokio::time::timeout(DISCARD_TIMEOUT, extract::discard_body(body)).await;
}

/// Returns the body limit of a request path: [`UNAUTHENTICATED_BODY_LIMIT`]
/// for the routes that read a body before any authentication, and
/// `max_body_bytes` for the others.
fn body_limit(path: &str, max_body_bytes: usize) -> usize {
    if UNAUTHENTICATED_BODY_ROUTES.contains(&path) {
        UNAUTHENTICATED_BODY_LIMIT.min(max_body_bytes)
    } else {
        max_body_bytes
    }
}

/// Reads the request body, if it has one, into zeroizing memory within the
/// body limit of its route and the shared [`BodyBudget`], and passes the
/// request on with the buffered body. A body over the limit is a 413 and a
/// spent budget a 503.
async fn buffer_body(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if request.body().is_end_stream() {
        return next.run(request).await;
    }
    let (mut parts, body) = request.into_parts();
    let unauthenticated = UNAUTHENTICATED_BODY_ROUTES.contains(&parts.uri.path());
    let read_method = matches!(
        parts.method,
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::DELETE
    );
    let mut limit = body_limit(parts.uri.path(), state.max_body_bytes);
    if read_method {
        // The body is rejected after the path check; it only has to be read.
        limit = limit.min(UNAUTHENTICATED_BODY_LIMIT);
    } else if !unauthenticated {
        // Only a caller who is logged in may have a body buffered on the
        // other routes, so that anonymous clients cannot spend the budget.
        // While keyd is not unsealed the gate rejects the request anyway.
        let authenticated = match state.keyd.state() {
            Some(SealState::Unsealed) => Authenticated::from_request_parts(&mut parts, &state)
                .await
                .map(Some),
            _ => Ok(None),
        };
        match authenticated {
            Ok(Some(caller)) => {
                parts.extensions.insert(caller);
            }
            Ok(None) => {
                discard_body_briefly(body).await;
                return next.run(Request::from_parts(parts, Body::empty())).await;
            }
            Err(error) => {
                discard_body_briefly(body).await;
                return error.into_response();
            }
        }
    }
    let declared_len = extract::declared_length(&parts.headers);
    let read = extract::read_body_within_budget(body, declared_len, limit, &state.body_budget);
    let (buffer, _reservation) = match read.await {
        Ok(read) => read,
        Err(error) => return error.into_response(),
    };
    let body = Body::from(secret_buf::into_bytes(buffer.into_inner()));
    next.run(Request::from_parts(parts, body)).await
}

/// Rejects gated routes unless keyd last reported the unsealed state.
async fn require_unsealed(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match state.keyd.state() {
        Some(SealState::Unsealed) => next.run(request).await,
        Some(SealState::Uninitialized) => ApiError::not_initialized().into_response(),
        Some(SealState::Sealed | SealState::Initializing) => ApiError::sealed().into_response(),
        None => ApiError::keyd_unavailable().into_response(),
    }
}

async fn route_not_found(State(state): State<AppState>, request: Request) -> ApiError {
    identify_caller(&state, request).await;
    ApiError::not_found("no such route")
}

async fn method_not_allowed(State(state): State<AppState>, request: Request) -> ApiError {
    identify_caller(&state, request).await;
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
}

/// Authenticates a request that carries credentials, so that a 404 or 405
/// of a logged-in caller gets an audit line. A failure changes nothing: the
/// client still gets the 404 or 405.
async fn identify_caller(state: &AppState, request: Request) {
    let (mut parts, _) = request.into_parts();
    let has_credentials = crate::auth::request_token(&parts.headers).is_ok();
    if has_credentials {
        let _ = Authenticated::from_request_parts(&mut parts, state).await;
    }
}

/// Logs a keyd reply of the wrong kind and returns a 500; such a reply means
/// keyd and frontd disagree about the protocol.
pub(crate) fn unexpected_reply(operation: &str, reply: &ResponseBody) -> ApiError {
    let kind = match reply {
        ResponseBody::State(_) => "state",
        ResponseBody::Mounts(_) => "mounts",
        ResponseBody::Mount(_) => "mount",
        ResponseBody::Unmounted => "unmounted",
        ResponseBody::Ca(_) => "ca",
        ResponseBody::PolicyRules(_) => "policy-rules",
        ResponseBody::PolicyRule(_) => "policy-rule",
        ResponseBody::PolicyRuleDeleted => "policy-rule-deleted",
        ResponseBody::DenialRecorded => "denial-recorded",
    };
    tracing::error!(
        operation,
        reply = kind,
        "keyd sent a reply of the wrong kind"
    );
    ApiError::internal()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sane_request_id_is_kept() {
        let value = HeaderValue::from_static("req-42.a_b:c");
        assert_eq!(sane_request_id(&value).as_deref(), Some("req-42.a_b:c"));
    }

    #[test]
    fn request_id_with_space_is_replaced() {
        assert_eq!(sane_request_id(&HeaderValue::from_static("a b")), None);
    }

    #[test]
    fn long_request_id_is_replaced() {
        let long = "a".repeat(MAX_REQUEST_ID_LEN + 1);
        assert_eq!(
            sane_request_id(&HeaderValue::from_str(&long).unwrap()),
            None
        );
    }

    #[test]
    fn generated_request_id_is_16_hex() {
        let id = generate_request_id();
        assert_eq!(id.len(), 16);
        assert!(id.bytes().all(|byte| byte.is_ascii_hexdigit()), "{id}");
    }
}
