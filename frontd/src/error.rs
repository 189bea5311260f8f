//! Errors of the REST API, sent to clients as `{"error": "..."}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use metacrypt_protocol::{ErrorBody, ErrorCode};

use crate::keyd::KeydError;
use crate::mcias::MciasError;

/// Seconds sent in `Retry-After` when a rate limit gave no wait time. Unseal
/// locks out for 60 s, so a client that waits this long can retry.
const DEFAULT_RETRY_AFTER_SECS: u64 = 60;

/// An error response: a status, a message for the client, and for 429 the
/// seconds until a retry may succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn sealed() -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "sealed")
    }

    pub fn not_initialized() -> Self {
        Self::new(StatusCode::PRECONDITION_FAILED, "not initialized")
    }

    /// Creates the 503 returned when the buffered bodies of the requests in
    /// flight have used up their shared budget.
    pub fn bodies_busy() -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "server busy: too many request bodies in flight; retry later".to_owned(),
            retry_after_secs: Some(1),
        }
    }

    pub fn keyd_unavailable() -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "keyd unavailable")
    }

    pub fn keyd_timeout() -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, "keyd did not reply in time")
    }

    pub fn auth_unavailable() -> Self {
        Self::new(
            StatusCode::BAD_GATEWAY,
            "authentication service unavailable",
        )
    }

    pub fn too_many_requests(message: impl Into<String>, retry_after_secs: u64) -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: message.into(),
            retry_after_secs: Some(retry_after_secs),
        }
    }

    /// Returns a 500 whose details stay in the server log.
    pub fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after_secs
    }
}

impl From<ErrorBody> for ApiError {
    /// Maps a keyd error to its HTTP status. keyd's message is passed on,
    /// except for internal errors, which are logged and replaced by a
    /// generic message.
    fn from(body: ErrorBody) -> Self {
        match body.code {
            ErrorCode::Internal => {
                tracing::error!(error = %body.message, "keyd reported an internal error");
                Self::internal()
            }
            ErrorCode::TooManyAttempts => Self::too_many_requests(
                body.message,
                body.retry_after_secs.unwrap_or(DEFAULT_RETRY_AFTER_SECS),
            ),
            code => {
                let status = StatusCode::from_u16(code.http_status())
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                Self::new(status, body.message)
            }
        }
    }
}

impl From<KeydError> for ApiError {
    fn from(error: KeydError) -> Self {
        match error {
            KeydError::Unavailable => Self::keyd_unavailable(),
            KeydError::Timeout(after) => {
                tracing::warn!(
                    timeout_ms = after.as_millis() as u64,
                    "keyd request timed out"
                );
                Self::keyd_timeout()
            }
            KeydError::Remote(body) => body.into(),
        }
    }
}

impl From<MciasError> for ApiError {
    fn from(error: MciasError) -> Self {
        match error {
            MciasError::InvalidCredentials => Self::unauthorized("invalid credentials"),
            MciasError::InvalidToken => Self::unauthorized("invalid token"),
            MciasError::RateLimited { retry_after_secs } => Self::too_many_requests(
                "too many requests to the authentication service",
                retry_after_secs.unwrap_or(DEFAULT_RETRY_AFTER_SECS),
            ),
            MciasError::Rejected { message } => Self::bad_request(message),
            MciasError::Unavailable { reason } => {
                tracing::warn!(reason = %reason, "MCIAS request failed");
                Self::auth_unavailable()
            }
        }
    }
}

#[derive(serde::Serialize)]
struct ErrorJson<'a> {
    error: &'a str,
}

/// The message of an error response, kept in the response's extensions for
/// the audit line of a rejected request.
#[derive(Clone)]
pub struct ErrorMessage(pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(ErrorJson {
                error: &self.message,
            }),
        )
            .into_response();
        response
            .extensions_mut()
            .insert(ErrorMessage(self.message.clone()));
        let headers = response.headers_mut();
        if let Some(secs) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyd_codes_keep_their_status() {
        for code in ErrorCode::ALL {
            let error = ApiError::from(ErrorBody::new(code, "message"));
            assert_eq!(error.status().as_u16(), code.http_status(), "{code:?}");
        }
    }

    #[test]
    fn internal_message_is_hidden() {
        let error = ApiError::from(ErrorBody::internal("barrier integrity check failed for x"));
        assert_eq!(error.message(), "internal error");
    }

    #[test]
    fn too_many_attempts_keeps_retry_after() {
        let error = ApiError::from(ErrorBody::too_many_attempts(42));
        assert_eq!(error.retry_after_secs(), Some(42));
        let response = error.into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "42");
    }

    #[test]
    fn unauthorized_carries_bearer_challenge() {
        let response = ApiError::unauthorized("missing token").into_response();
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }
}
