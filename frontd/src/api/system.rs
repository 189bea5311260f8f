//! Status and the seal operations: init, unseal, seal.

use axum::Json;
use axum::extract::State;
use metacrypt_protocol::{RequestBody, ResponseBody, SealState, SecretString};
use serde::{Deserialize, Serialize};

use super::{JsonBody, NoBody, RequestContext, unexpected_reply};
use crate::AppState;
use crate::auth::Authenticated;
use crate::authz::authorize;
use crate::error::ApiError;

#[derive(Serialize)]
pub struct StateReply {
    state: SealState,
}

/// The body of init and unseal. The password is a [`SecretString`] from
/// the moment it is parsed.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordBody {
    password: SecretString,
}

fn state_reply(operation: &str, reply: ResponseBody) -> Result<Json<StateReply>, ApiError> {
    match reply {
        ResponseBody::State(state) => Ok(Json(StateReply { state })),
        other => Err(unexpected_reply(operation, &other)),
    }
}

fn require_password(password: &SecretString) -> Result<(), ApiError> {
    if password.is_empty() {
        return Err(ApiError::bad_request("password is required"));
    }
    Ok(())
}

/// `GET /v1/status`: the tracked seal state, without a round trip to keyd.
pub async fn status(State(state): State<AppState>) -> Result<Json<StateReply>, ApiError> {
    state
        .keyd
        .state()
        .map(|state| Json(StateReply { state }))
        .ok_or_else(ApiError::keyd_unavailable)
}

/// `POST /v1/init`.
pub async fn init(
    State(state): State<AppState>,
    context: RequestContext,
    JsonBody(body): JsonBody<PasswordBody>,
) -> Result<Json<StateReply>, ApiError> {
    require_password(&body.password)?;
    let request = RequestBody::Init {
        password: body.password,
    };
    let reply = state.keyd.call(context.origin(), None, request).await?;
    state_reply("init", reply)
}

/// `POST /v1/unseal`.
pub async fn unseal(
    State(state): State<AppState>,
    context: RequestContext,
    JsonBody(body): JsonBody<PasswordBody>,
) -> Result<Json<StateReply>, ApiError> {
    require_password(&body.password)?;
    let request = RequestBody::Unseal {
        password: body.password,
    };
    let reply = state.keyd.call(context.origin(), None, request).await?;
    state_reply("unseal", reply)
}

/// `POST /v1/seal` (admin), with no body.
pub async fn seal(
    State(state): State<AppState>,
    context: RequestContext,
    auth: Authenticated,
    _: NoBody,
) -> Result<Json<StateReply>, ApiError> {
    authorize(&state, &context, &auth, &RequestBody::Seal).await?;
    tracing::info!(username = %auth.identity.username, "seal requested");
    let reply = state
        .keyd
        .call(context.origin(), Some(auth.caller()), RequestBody::Seal)
        .await?;
    state_reply("seal", reply)
}
