//! The MCIAS routes: login, token validation, logout and health.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Deserializer};
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use zeroize::Zeroizing;

use crate::store::{LoginLimiter, TokenStore};
use crate::users::{User, Users};

pub struct AppState {
    pub users: Users,
    /// User whose random password is verified when the username is unknown.
    pub decoy: User,
    pub tokens: TokenStore,
    pub limiter: LoginLimiter,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/auth/login", post(login))
        .route("/v1/token/validate", post(validate))
        .route("/v1/auth/logout", post(logout))
        .route("/v1/health", get(health))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

/// A password that is zeroized when dropped.
struct Password(Zeroizing<String>);

impl<'de> Deserialize<'de> for Password {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(|text| Password(Zeroizing::new(text)))
    }
}

#[derive(Deserialize)]
struct LoginRequest {
    username: String,
    password: Password,
    /// Accepted for compatibility and ignored, because the development server
    /// has no TOTP.
    #[serde(rename = "totp_code")]
    _totp_code: Option<String>,
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

fn rfc3339(time: OffsetDateTime) -> String {
    time.format(&Rfc3339).unwrap_or_default()
}

async fn login(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let request: LoginRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("invalid login request: {err}"),
            );
        }
    };
    let username = request.username.clone();
    if let Err(retry_after) = state.limiter.check(&username) {
        tracing::info!(username = %username, retry_after, "login rate-limited");
        let mut response = error(StatusCode::TOO_MANY_REQUESTS, "too many attempts");
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        return response;
    }

    let verify_state = state.clone();
    let verified = tokio::task::spawn_blocking(move || {
        let password = request.password.0.as_bytes();
        match verify_state.users.get(&request.username) {
            Some(user) => user.verify_password(password),
            None => {
                verify_state.decoy.verify_password(password);
                false
            }
        }
    })
    .await
    .unwrap_or(false);

    let user = match state.users.get(&username) {
        Some(user) if verified => user,
        _ => {
            state.limiter.record_failure(&username);
            tracing::info!(username = %username, "login failed: invalid credentials");
            return error(StatusCode::UNAUTHORIZED, "invalid credentials");
        }
    };
    state.limiter.record_success(&username);
    match state.tokens.issue(user) {
        Ok((token, expires_at)) => {
            tracing::info!(username = %username, expires_at = %rfc3339(expires_at), "login succeeded");
            axum::Json(json!({ "token": token.as_str(), "expires_at": rfc3339(expires_at) }))
                .into_response()
        }
        Err(err) => {
            tracing::error!(username = %username, error = %err, "login failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
    }
}

/// Returns the token of an `Authorization: Bearer TOKEN` header.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then_some(token)
}

async fn validate(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let session = bearer_token(&headers).and_then(|token| state.tokens.validate(token));
    match session {
        Some(session) => axum::Json(json!({
            "valid": true,
            "sub": session.sub,
            "username": session.username,
            "roles": session.roles,
            "expires_at": rfc3339(session.expires_at),
        }))
        .into_response(),
        None => axum::Json(json!({ "valid": false })).into_response(),
    }
}

async fn logout(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    match bearer_token(&headers) {
        Some(token) if state.tokens.revoke(token) => StatusCode::NO_CONTENT.into_response(),
        Some(_) => error(StatusCode::UNAUTHORIZED, "invalid token"),
        None => error(StatusCode::UNAUTHORIZED, "missing token"),
    }
}

async fn health() -> Response {
    axum::Json(json!({ "status": "ok" })).into_response()
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not found")
}

async fn method_not_allowed() -> Response {
    error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
}

/// Logs one line per request: method, path, status and duration. Headers
/// and bodies are never logged, because they carry passwords and tokens.
async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    tracing::info!(
        method = %method,
        path = %path,
        status = response.status().as_u16(),
        duration_ms = started.elapsed().as_millis() as u64,
        "request"
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn bearer_token_is_extracted() {
        assert_eq!(bearer_token(&headers("Bearer abc")), Some("abc"));
        assert_eq!(bearer_token(&headers("bearer abc")), Some("abc"));
    }

    #[test]
    fn other_schemes_are_not_tokens() {
        assert_eq!(bearer_token(&headers("Basic abc")), None);
        assert_eq!(bearer_token(&headers("Bearer ")), None);
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }
}
