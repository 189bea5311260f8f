//! Authentication of REST callers through MCIAS.
//!
//! A caller presents its MCIAS token either as `Authorization: Bearer
//! TOKEN` or, for browser sessions, in the cookie [`SESSION_COOKIE`] that
//! login sets on request. Both are validated the same way, so they end in
//! the same caller identity. When a request carries both, the header wins.
//!
//! NOTE: the cookie is `SameSite=Strict`, which keeps browsers from sending
//! it with cross-site requests. No CSRF token is checked on top of that.

use axum::extract::FromRequestParts;
use axum::http::header::{AUTHORIZATION, COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};
use metacrypt_protocol::{Caller, SecretString};

use crate::AppState;
use crate::api::RequestContext;
use crate::error::ApiError;
use crate::mcias::Identity;

/// Maximum length of a bearer token; MCIAS tokens are far shorter.
const MAX_TOKEN_LEN: usize = 4096;

/// The name of the session cookie that contains an MCIAS token.
pub const SESSION_COOKIE: &str = "metacrypt_session";

/// The source of a request's token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    Bearer,
    Cookie,
}

/// Extracts the caller's token from the `Authorization` header or, without
/// one, from the session cookie.
pub fn request_token(headers: &HeaderMap) -> Result<(SecretString, Credential), ApiError> {
    if headers.contains_key(AUTHORIZATION) {
        return bearer_token(headers).map(|token| (token, Credential::Bearer));
    }
    match cookie_token(headers)? {
        Some(token) => Ok((token, Credential::Cookie)),
        None => Err(ApiError::unauthorized("missing token")),
    }
}

/// Extracts the token of the session cookie, if the request has one.
pub fn cookie_token(headers: &HeaderMap) -> Result<Option<SecretString>, ApiError> {
    for value in headers.get_all(COOKIE) {
        let Ok(text) = value.to_str() else {
            continue;
        };
        for pair in text.split(';') {
            let Some((name, token)) = pair.trim().split_once('=') else {
                continue;
            };
            if name != SESSION_COOKIE {
                continue;
            }
            if token.is_empty() {
                return Err(ApiError::unauthorized("missing token"));
            }
            if !valid_token(token) {
                return Err(ApiError::unauthorized("invalid token"));
            }
            return Ok(Some(SecretString::from(token)));
        }
    }
    Ok(None)
}

fn valid_token(token: &str) -> bool {
    token.len() <= MAX_TOKEN_LEN
        && token
            .bytes()
            .all(|byte| byte.is_ascii_graphic() && byte != b';' && byte != b',')
}

/// Returns the `Set-Cookie` value that stores `token` for `max_age_secs`,
/// or for the browser session without it. Browsers send the cookie back on
/// every path, over HTTPS only, never to scripts and never with a
/// cross-site request.
pub fn session_cookie(
    token: &SecretString,
    max_age_secs: Option<i64>,
) -> Result<HeaderValue, ApiError> {
    let max_age = max_age_secs
        .map(|secs| format!(" Max-Age={};", secs.max(0)))
        .unwrap_or_default();
    let text = format!(
        "{SESSION_COOKIE}={}; Path=/;{max_age} HttpOnly; Secure; SameSite=Strict",
        token.expose()
    );
    HeaderValue::from_str(&text).map_err(|_| {
        tracing::error!("MCIAS returned a token that cannot be put in a cookie");
        ApiError::auth_unavailable()
    })
}

/// Returns the lowercase hex SHA-256 of a token, which identifies its
/// session without revealing it.
fn token_hash(token: &SecretString) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.expose().as_bytes());
    hex::encode(digest.as_ref())
}

/// Returns the `Set-Cookie` value that removes the session cookie.
pub fn clear_session_cookie() -> HeaderValue {
    HeaderValue::from_static(
        "metacrypt_session=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Strict",
    )
}

/// Extracts the token of the `Authorization: Bearer TOKEN` header.
pub fn bearer_token(headers: &HeaderMap) -> Result<SecretString, ApiError> {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Err(ApiError::unauthorized("missing token"));
    };
    let malformed =
        || ApiError::unauthorized("invalid authorization header: expected Bearer TOKEN");
    let text = value.to_str().map_err(|_| malformed())?.trim();
    let (scheme, token) = text.split_once(' ').unwrap_or((text, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(malformed());
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(ApiError::unauthorized("missing token"));
    }
    if !valid_token(token) {
        return Err(ApiError::unauthorized("invalid token"));
    }
    Ok(SecretString::from(token))
}

/// An extractor for handlers that need a caller validated by MCIAS.
#[derive(Clone)]
pub struct Authenticated {
    pub identity: Identity,
    pub token: SecretString,
    pub credential: Credential,
}

impl Authenticated {
    /// Returns the caller in the form keyd records.
    pub fn caller(&self) -> Caller {
        Caller {
            username: self.identity.username.clone(),
            roles: self.identity.roles.clone(),
            admin: self.identity.admin,
            session: Some(token_hash(&self.token)),
        }
    }
}

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // The body-buffering middleware authenticates callers of routes with
        // a body before it reads the body, and leaves the result here.
        if let Some(authenticated) = parts.extensions.get::<Authenticated>() {
            return Ok(authenticated.clone());
        }
        let (token, credential) = request_token(&parts.headers)?;
        let identity = state.mcias.validate(&token).await?;
        let authenticated = Self {
            identity,
            token,
            credential,
        };
        if let Some(context) = parts.extensions.get::<RequestContext>() {
            context.set_username(&authenticated.identity.username);
            context.set_caller(authenticated.caller());
        }
        Ok(authenticated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn bearer_token_is_extracted() {
        let token = bearer_token(&headers("Bearer abc.def")).unwrap();
        assert_eq!(token.expose(), "abc.def");
    }

    #[test]
    fn scheme_is_case_insensitive() {
        assert!(bearer_token(&headers("bearer abc")).is_ok());
    }

    #[test]
    fn missing_header_is_missing_token() {
        let error = bearer_token(&HeaderMap::new()).unwrap_err();
        assert_eq!(error.message(), "missing token");
    }

    #[test]
    fn basic_scheme_is_rejected() {
        let error = bearer_token(&headers("Basic YWxpY2U6cHc=")).unwrap_err();
        assert_eq!(error.status().as_u16(), 401);
        assert!(error.message().contains("Bearer"), "{}", error.message());
    }

    fn cookies(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn session_cookie_is_extracted() {
        let (token, credential) =
            request_token(&cookies("theme=dark; metacrypt_session=abc.def; x=1")).unwrap();
        assert_eq!(token.expose(), "abc.def");
        assert_eq!(credential, Credential::Cookie);
    }

    #[test]
    fn header_wins_over_cookie() {
        let mut headers = cookies("metacrypt_session=from-cookie");
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_static("Bearer from-header"),
        );
        let (token, credential) = request_token(&headers).unwrap();
        assert_eq!(token.expose(), "from-header");
        assert_eq!(credential, Credential::Bearer);
    }

    #[test]
    fn other_cookies_are_missing_token() {
        let error = request_token(&cookies("metacrypt_sessionx=abc")).unwrap_err();
        assert_eq!(error.message(), "missing token");
        let error = request_token(&cookies("metacrypt_session=")).unwrap_err();
        assert_eq!(error.message(), "missing token");
    }

    #[test]
    fn session_cookie_has_strict_flags() {
        let value = session_cookie(&SecretString::from("tok"), Some(3600)).unwrap();
        assert_eq!(
            value.to_str().unwrap(),
            "metacrypt_session=tok; Path=/; Max-Age=3600; HttpOnly; Secure; SameSite=Strict"
        );
        let cleared = clear_session_cookie();
        assert!(cleared.to_str().unwrap().contains("Max-Age=0"));
    }

    #[test]
    fn empty_token_is_missing_token() {
        let error = bearer_token(&headers("Bearer  ")).unwrap_err();
        assert_eq!(error.message(), "missing token");
    }
}
