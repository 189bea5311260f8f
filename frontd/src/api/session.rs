//! Login, token information and logout, proxied to MCIAS.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::header::SET_COOKIE;
use axum::response::{IntoResponse, Response};
use metacrypt_protocol::SecretString;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{JsonBody, NoBody, RequestContext, SecretJson};
use crate::AppState;
use crate::auth::{Authenticated, Credential, clear_session_cookie, request_token, session_cookie};
use crate::error::ApiError;
use crate::mcias::Login;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    username: String,
    password: SecretString,
    #[serde(default)]
    totp_code: Option<SecretString>,
    /// Sets the token in the session cookie instead of returning it in
    /// the body, for browsers.
    #[serde(default)]
    session_cookie: bool,
}

/// The login reply. It contains the bearer token, so it has no `Debug`.
#[derive(Serialize)]
pub struct LoginReply {
    token: SecretString,
    expires_at: String,
}

/// The login reply when the token went into the session cookie.
#[derive(Serialize)]
pub struct CookieLoginReply {
    expires_at: String,
}

#[derive(Serialize)]
pub struct TokenInfo {
    username: String,
    roles: Vec<String>,
    admin: bool,
    expires_at: String,
}

#[derive(Serialize)]
pub struct Empty {}

/// `POST /v1/auth/login`.
pub async fn login(
    State(state): State<AppState>,
    context: RequestContext,
    JsonBody(body): JsonBody<LoginBody>,
) -> Result<Response, ApiError> {
    if body.username.is_empty() {
        return Err(ApiError::bad_request("username is required"));
    }
    if body.password.is_empty() {
        return Err(ApiError::bad_request("password is required"));
    }
    context.set_username(&body.username);
    let login = Login {
        username: body.username,
        password: body.password,
        totp_code: body.totp_code.filter(|code| !code.is_empty()),
    };
    let grant = state.mcias.login(&login).await?;
    if !body.session_cookie {
        return Ok(SecretJson(LoginReply {
            token: grant.token,
            expires_at: grant.expires_at,
        })
        .into_response());
    }
    let max_age = OffsetDateTime::parse(&grant.expires_at, &Rfc3339)
        .ok()
        .map(|expires_at| (expires_at - OffsetDateTime::now_utc()).whole_seconds());
    let cookie = session_cookie(&grant.token, max_age)?;
    let mut response = Json(CookieLoginReply {
        expires_at: grant.expires_at,
    })
    .into_response();
    response.headers_mut().insert(SET_COOKIE, cookie);
    Ok(response)
}

/// `GET /v1/auth/tokeninfo`.
pub async fn tokeninfo(auth: Authenticated) -> Result<Json<TokenInfo>, ApiError> {
    let identity = auth.identity;
    let expires_at = identity.expires_at.format(&Rfc3339).map_err(|error| {
        tracing::error!(error = %error, "failed to format a token expiry");
        ApiError::internal()
    })?;
    Ok(Json(TokenInfo {
        username: identity.username,
        roles: identity.roles,
        admin: identity.admin,
        expires_at,
    }))
}

/// `POST /v1/auth/logout`: revokes the token at MCIAS, and removes the
/// session cookie when the token came from it.
pub async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    _: NoBody,
) -> Result<Response, ApiError> {
    let (token, credential) = request_token(&headers)?;
    state.mcias.logout(&token).await?;
    let mut response = Json(Empty {}).into_response();
    if credential == Credential::Cookie {
        response
            .headers_mut()
            .insert(SET_COOKIE, clear_session_cookie());
    }
    Ok(response)
}
