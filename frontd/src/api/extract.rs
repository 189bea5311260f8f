//! Extractors whose rejections are JSON errors that name the bad value.

use std::pin::Pin;
use std::sync::Arc;

use axum::body::{Body, HttpBody};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::AppState;
use crate::error::ApiError;
use crate::secret_buf::BodyBuffer;

pub(crate) fn body_too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body exceeds the limit of {limit} bytes"),
    )
}

/// A JSON request body. The content type must be `application/json` (or
/// another `+json` type) and the body at most `frontd.max_body_bytes`.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        check_json_content_type(request.headers().get(header::CONTENT_TYPE))?;
        let declared_len = declared_length(request.headers());
        let buffer = read_body(request.into_body(), declared_len, state.max_body_bytes).await?;
        let bytes = buffer.as_slice();
        if bytes.is_empty() {
            return Err(ApiError::bad_request(
                "request body is empty: expected a JSON object",
            ));
        }
        // serde reads a struct from a JSON array too, by position, so only an
        // object, whose fields are checked by name, is accepted.
        if bytes.trim_ascii_start().first() != Some(&b'{') {
            return Err(ApiError::bad_request(
                "invalid JSON body: expected a JSON object",
            ));
        }
        let mut deserializer = serde_json::Deserializer::from_slice(bytes);
        let value = serde_path_to_error::deserialize(&mut deserializer)
            .map_err(|error| ApiError::bad_request(json_error_message(&error)))?;
        deserializer
            .end()
            .map_err(|error| ApiError::bad_request(format!("invalid JSON body: {error}")))?;
        Ok(Self(value))
    }
}

/// The body of a POST route that takes no parameters: empty, or an empty
/// JSON object (`{}`), which many HTTP clients send by habit.
pub struct NoBody;

impl FromRequest<AppState> for NoBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let declared_len = declared_length(request.headers());
        let buffer = read_body(request.into_body(), declared_len, state.max_body_bytes).await?;
        let bytes = buffer.as_slice();
        let empty_object = || {
            serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(bytes)
                .is_ok_and(|object| object.is_empty())
        };
        if bytes.trim_ascii().is_empty() || empty_object() {
            Ok(Self)
        } else {
            Err(ApiError::bad_request(
                "this route takes no parameters: send no body or an empty JSON object",
            ))
        }
    }
}

/// Minimum size of the [`BodyBudget`], whatever the body limit.
const MIN_BODY_BUDGET_BYTES: usize = 64 * 1024 * 1024;

/// Bytes of an oversized body that are read and thrown away before the 413
/// is sent. Over HTTP/2, a response sent while the client is still sending
/// makes hyper reset the stream, and the client then reports a framing
/// error instead of the 413. Past this many bytes the stream is reset anyway.
pub(crate) const MAX_DISCARDED_BODY_BYTES: u64 = 8 * 1024 * 1024;

/// Memory shared by every request body that frontd buffers at one time.
///
/// Bodies are read before authentication, so without a shared budget a
/// client could hold one body-limit's worth of memory on each of many
/// connections. A request that finds the budget spent gets a 503 with
/// `Retry-After` and its body is not read.
#[derive(Clone)]
pub struct BodyBudget {
    /// One permit per KiB.
    kib: Arc<Semaphore>,
}

/// The part of the budget held by one buffered body, returned on drop.
pub struct BodyReservation {
    permit: Option<OwnedSemaphorePermit>,
    kib: usize,
}

impl BodyBudget {
    /// Creates a budget of 64 MiB or twice `max_body_bytes`, whichever is
    /// larger, so that at least two bodies of the maximum size fit at once.
    pub fn for_body_limit(max_body_bytes: usize) -> Self {
        Self::with_bytes(MIN_BODY_BUDGET_BYTES.max(max_body_bytes.saturating_mul(2)))
    }

    pub fn with_bytes(bytes: usize) -> Self {
        let kib = (bytes / 1024).clamp(1, Semaphore::MAX_PERMITS);
        Self {
            kib: Arc::new(Semaphore::new(kib)),
        }
    }

    /// Returns the KiB of the budget that are not reserved.
    pub fn available_kib(&self) -> usize {
        self.kib.available_permits()
    }

    /// Grows `reservation` to cover `bytes`, without waiting.
    fn reserve(&self, reservation: &mut BodyReservation, bytes: usize) -> Result<(), ApiError> {
        let needed = bytes.div_ceil(1024);
        if needed <= reservation.kib {
            return Ok(());
        }
        let more = u32::try_from(needed - reservation.kib).map_err(|_| ApiError::bodies_busy())?;
        let permit = Arc::clone(&self.kib)
            .try_acquire_many_owned(more)
            .map_err(|_| ApiError::bodies_busy())?;
        match &mut reservation.permit {
            Some(held) => held.merge(permit),
            None => reservation.permit = Some(permit),
        }
        reservation.kib = needed;
        Ok(())
    }
}

/// Reads a body as [`read_body`] does, while keeping the memory its buffer
/// takes reserved in `budget`.
pub(crate) async fn read_body_within_budget(
    mut body: Body,
    declared_len: Option<u64>,
    limit: usize,
    budget: &BodyBudget,
) -> Result<(BodyBuffer, BodyReservation), ApiError> {
    let mut reservation = BodyReservation {
        permit: None,
        kib: 0,
    };
    let mut buffer = BodyBuffer::new(declared_len, limit);
    budget.reserve(&mut reservation, buffer.capacity())?;
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame.map_err(|error| {
            ApiError::bad_request(format!("failed to read the request body: {error}"))
        })?;
        // Trailers carry no body bytes and are ignored.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        // The buffer may grow to twice its length, so that much is reserved
        // before the bytes are added.
        let grown = buffer.len().saturating_add(data.len()).saturating_mul(2);
        budget.reserve(&mut reservation, grown.min(limit))?;
        if buffer.push(&data).is_err() {
            discard_body(body).await;
            return Err(body_too_large(limit));
        }
    }
    Ok((buffer, reservation))
}

/// Reads and throws away the rest of `body`, up to
/// [`MAX_DISCARDED_BODY_BYTES`], so that an error response reaches an
/// HTTP/2 client intact.
pub(crate) async fn discard_body(mut body: Body) {
    let mut discarded: u64 = 0;
    while let Some(Ok(frame)) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
    {
        if let Ok(data) = frame.into_data() {
            discarded = discarded.saturating_add(data.len() as u64);
            if discarded > MAX_DISCARDED_BODY_BYTES {
                return;
            }
        }
    }
}

/// Returns the `Content-Length` of a request, if it is present and valid.
pub(crate) fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<u64>().ok())
}

/// Reads a request body of at most `limit` bytes into zeroizing memory,
/// because init, unseal and login bodies contain passwords.
///
/// NOTE: hyper and rustls have already copied these bytes into buffers of
/// their own, which frontd cannot wipe.
pub(crate) async fn read_body(
    mut body: Body,
    declared_len: Option<u64>,
    limit: usize,
) -> Result<BodyBuffer, ApiError> {
    let mut buffer = BodyBuffer::new(declared_len, limit);
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame.map_err(|error| {
            ApiError::bad_request(format!("failed to read the request body: {error}"))
        })?;
        // Trailers carry no body bytes and are ignored.
        if let Ok(data) = frame.into_data()
            && buffer.push(&data).is_err()
        {
            discard_body(body).await;
            return Err(body_too_large(limit));
        }
    }
    Ok(buffer)
}

fn check_json_content_type(value: Option<&header::HeaderValue>) -> Result<(), ApiError> {
    let unsupported = |found: &str| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("unsupported Content-Type {found:?}: expected application/json"),
        )
    };
    let Some(value) = value else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "missing Content-Type: expected application/json",
        ));
    };
    let text = value.to_str().map_err(|_| unsupported("(not text)"))?;
    let essence = text
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let json = essence == "application/json"
        || (essence.starts_with("application/")
            && essence.ends_with("+json")
            && essence.len() > "application/+json".len());
    if json { Ok(()) } else { Err(unsupported(text)) }
}

fn json_error_message(error: &serde_path_to_error::Error<serde_json::Error>) -> String {
    let path = error.path().to_string();
    if path == "." {
        format!("invalid JSON body: {}", error.inner())
    } else {
        format!("invalid JSON body: {path}: {}", error.inner())
    }
}

/// Path parameters; a parameter that does not parse is a 400 naming it.
pub struct PathParams<T>(pub T);

impl<T, S> FromRequestParts<S> for PathParams<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(value)| Self(value))
            .map_err(|rejection| {
                ApiError::new(
                    rejection.status(),
                    format!("invalid path: {}", rejection.body_text()),
                )
            })
    }
}

/// Query parameters; types used with it reject unknown parameters, so a
/// misspelt filter is a 400 rather than silently ignored.
pub struct QueryParams<T>(pub T);

impl<T, S> FromRequestParts<S> for QueryParams<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| Self(value))
            .map_err(|rejection| ApiError::bad_request(rejection.body_text()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn check(value: &'static str) -> Result<(), ApiError> {
        check_json_content_type(Some(&HeaderValue::from_static(value)))
    }

    #[test]
    fn json_with_charset_is_accepted() {
        assert!(check("application/json; charset=utf-8").is_ok());
    }

    #[test]
    fn json_suffix_type_is_accepted() {
        assert!(check("application/merge-patch+json").is_ok());
    }

    #[test]
    fn form_type_is_unsupported() {
        let error = check("application/x-www-form-urlencoded").unwrap_err();
        assert_eq!(error.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }

    #[test]
    fn missing_type_is_unsupported() {
        let error = check_json_content_type(None).unwrap_err();
        assert_eq!(error.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }

    #[test]
    fn bare_suffix_is_unsupported() {
        assert!(check("application/+json").is_err());
    }
}
