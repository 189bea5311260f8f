//! Request path canonicalization, done once before routing.
//!
//! Paths are checked rather than rewritten: a path that is not already in
//! canonical form is a 400 before any handler runs, so the router, the path
//! extractors and the policy resource all see the same string. Identifiers
//! in paths are lowercase ASCII and need no percent-encoding, so every
//! percent-encoded byte is rejected too.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// Checks that `path` is canonical: it starts with `/`, has no empty, `.`
/// or `..` segment, no percent-encoding and no uppercase letter. Returns
/// the reason otherwise.
pub fn check_path(path: &str) -> Result<(), String> {
    if path == "/" {
        return Ok(());
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err("it does not start with '/'".to_owned());
    };
    for segment in rest.split('/') {
        match segment {
            "" => return Err("it has an empty segment".to_owned()),
            "." | ".." => return Err("it has a dot segment".to_owned()),
            _ => {}
        }
    }
    if let Some(index) = path.find('%') {
        let encoded = path.get(index + 1..index + 3).unwrap_or_default();
        let reason = match u8::from_str_radix(encoded, 16) {
            Ok(b'/') => "it has a percent-encoded slash",
            Ok(b'\\') => "it has a percent-encoded backslash",
            Ok(b'.') => "it has a percent-encoded dot",
            Ok(b' ') => "it has a space",
            Ok(byte) if byte.is_ascii_control() => "it has a control character",
            _ => "it has a percent-encoded character",
        };
        return Err(reason.to_owned());
    }
    if let Some(c) = path.chars().find(|c| c.is_control() || *c == ' ') {
        return Err(if c == ' ' {
            "it has a space".to_owned()
        } else {
            "it has a control character".to_owned()
        });
    }
    let segments: Vec<&str> = rest.split('/').collect();
    for (index, segment) in segments.iter().enumerate() {
        // A certificate serial after `certs/` is hex, which `openssl x509
        // -serial` prints in uppercase; keyd reads it case-insensitively.
        let serial = index > 0
            && segments[index - 1] == "certs"
            && segment
                .bytes()
                .all(|byte| byte.is_ascii_hexdigit() || byte == b':');
        if !serial && segment.bytes().any(|byte| byte.is_ascii_uppercase()) {
            return Err("it has an uppercase letter, and identifiers are lowercase".to_owned());
        }
    }
    Ok(())
}

/// Rejects requests whose path is not canonical with a 400.
pub async fn require_canonical_path(request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if let Err(reason) = check_path(path) {
        let shown: String = path.chars().take(200).collect();
        let error = ApiError::bad_request(format!("invalid path {shown:?}: {reason}"));
        // The body is read and thrown away, so that an HTTP/2 client gets
        // the 400 instead of a reset stream.
        super::discard_body_briefly(request.into_body()).await;
        return error.into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonicalization_table() {
        // (path, expected reason or None when accepted)
        let table = [
            ("/v1/mounts", None),
            ("/v1/pki/pki/issue", None),
            ("/v1/pki/pki-2/certs/5eed", None),
            ("/v1/pki/pki/certs/5EED", None),
            ("/v1/pki/pki/certs/5E:ED/revoke", None),
            (
                "/v1/pki/pki/certs/5EEZ",
                Some("it has an uppercase letter, and identifiers are lowercase"),
            ),
            (
                "/v1/pki/PKI/certs/5eed",
                Some("it has an uppercase letter, and identifiers are lowercase"),
            ),
            ("/", None),
            ("/v1/mounts/", Some("it has an empty segment")),
            ("/v1//mounts", Some("it has an empty segment")),
            ("/v1/pki/ca//x/issue", Some("it has an empty segment")),
            ("/v1/pki/../mounts", Some("it has a dot segment")),
            ("/v1/pki/./pki/issue", Some("it has a dot segment")),
            ("/v1/pki/ca/../../sys/issue", Some("it has a dot segment")),
            ("/v1/pki/%2e%2e/issue", Some("it has a percent-encoded dot")),
            ("/v1/pki/%2E/issue", Some("it has a percent-encoded dot")),
            (
                "/v1/pki/a%2fb/issue",
                Some("it has a percent-encoded slash"),
            ),
            (
                "/v1/pki/a%2Fb/issue",
                Some("it has a percent-encoded slash"),
            ),
            (
                "/v1/pki/a%5cb/issue",
                Some("it has a percent-encoded backslash"),
            ),
            ("/v1/pki/a%20b/issue", Some("it has a space")),
            ("/v1/pki/a%00b/issue", Some("it has a control character")),
            ("/v1/pki/a%0ab/issue", Some("it has a control character")),
            (
                "/v1/pki/a%41/issue",
                Some("it has a percent-encoded character"),
            ),
            (
                "/v1/pki/a%/issue",
                Some("it has a percent-encoded character"),
            ),
            ("/v1/pki/a b/issue", Some("it has a space")),
            ("/v1/pki/a\u{1}b/issue", Some("it has a control character")),
            (
                "/v1/pki/PKI/issue",
                Some("it has an uppercase letter, and identifiers are lowercase"),
            ),
            ("v1/mounts", Some("it does not start with '/'")),
        ];
        for (path, expected) in table {
            assert_eq!(check_path(path).err().as_deref(), expected, "{path:?}");
        }
    }
}
