//! Bearer-token authentication of REST callers through MCIAS.

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use metacrypt_protocol::{Caller, SecretString};

use crate::AppState;
use crate::api::RequestContext;
use crate::error::ApiError;
use crate::mcias::Identity;

/// Maximum length of a bearer token; MCIAS tokens are far shorter.
const MAX_TOKEN_LEN: usize = 4096;

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
    if token.len() > MAX_TOKEN_LEN || !token.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err(ApiError::unauthorized("invalid token"));
    }
    Ok(SecretString::from(token))
}

/// An extractor for handlers that need a caller validated by MCIAS.
pub struct Authenticated {
    pub identity: Identity,
    pub token: SecretString,
}

impl Authenticated {
    /// Returns the caller in the form keyd records.
    pub fn caller(&self) -> Caller {
        Caller {
            username: self.identity.username.clone(),
            roles: self.identity.roles.clone(),
            admin: self.identity.admin,
        }
    }
}

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer_token(&parts.headers)?;
        let identity = state.mcias.validate(&token).await?;
        if let Some(context) = parts.extensions.get::<RequestContext>() {
            context.set_username(&identity.username);
        }
        Ok(Self { identity, token })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

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

    #[test]
    fn empty_token_is_missing_token() {
        let error = bearer_token(&headers("Bearer  ")).unwrap_err();
        assert_eq!(error.message(), "missing token");
    }
}
