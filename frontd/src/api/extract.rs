//! Extractors whose rejections are JSON errors that name the bad value.

use std::pin::Pin;

use axum::body::{Body, HttpBody};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;

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
        let mut deserializer = serde_json::Deserializer::from_slice(bytes);
        let value = serde_path_to_error::deserialize(&mut deserializer)
            .map_err(|error| ApiError::bad_request(json_error_message(&error)))?;
        deserializer
            .end()
            .map_err(|error| ApiError::bad_request(format!("invalid JSON body: {error}")))?;
        Ok(Self(value))
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
        if let Ok(data) = frame.into_data() {
            buffer.push(&data).map_err(|_| body_too_large(limit))?;
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
