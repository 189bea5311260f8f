//! JSON responses whose bodies contain a secret: a bearer token or a private
//! key.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::error::ApiError;
use crate::secret_buf;

/// A JSON response serialized into one zeroizing buffer of its final size.
/// axum's `Json` serializes into a growing buffer, which would free unwiped
/// copies of the secret.
pub struct SecretJson<T>(pub T);

impl<T: Serialize> IntoResponse for SecretJson<T> {
    fn into_response(self) -> Response {
        let buffer = match secret_buf::json_to_vec(&self.0) {
            Ok(buffer) => buffer,
            Err(error) => {
                tracing::error!(error = %error, "failed to serialize a response");
                return ApiError::internal().into_response();
            }
        };
        // The buffer is wiped when hyper drops the body after sending it.
        // NOTE: hyper and rustls handle the bytes in buffers of their own
        // (TLS records, HTTP/2 frames), which frontd cannot wipe.
        let mut response = secret_buf::into_bytes(buffer).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Reply {
        token: &'static str,
    }

    #[tokio::test]
    async fn response_is_json_with_length() {
        let response = SecretJson(Reply { token: "abc" }).into_response();
        assert_eq!(
            response.headers().get(header::CONTENT_TYPE).unwrap(),
            "application/json"
        );
        let exact_len = axum::body::HttpBody::size_hint(response.body()).exact();
        assert_eq!(exact_len, Some(15), "hyper sends this as Content-Length");
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        assert_eq!(&body[..], br#"{"token":"abc"}"#);
    }
}
