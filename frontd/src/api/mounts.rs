//! Listing, creating and removing mounts.

use axum::Json;
use axum::extract::State;
use metacrypt_protocol::policy::check_identifier;
use metacrypt_protocol::{
    CaMountConfig, KeyAlgorithm, MountConfig, MountInfo, RequestBody, ResponseBody,
};
use serde::{Deserialize, Serialize};

use super::session::Empty;
use super::{JsonBody, PathParams, RequestContext, unexpected_reply};
use crate::AppState;
use crate::auth::Authenticated;
use crate::authz::{authorize, require_admin};
use crate::error::ApiError;

#[derive(Serialize)]
pub struct MountView {
    name: String,
    #[serde(rename = "type")]
    engine_type: String,
    created_at: String,
}

impl From<MountInfo> for MountView {
    fn from(info: MountInfo) -> Self {
        Self {
            name: info.name,
            engine_type: info.engine_type,
            created_at: info.created_at,
        }
    }
}

#[derive(Serialize)]
pub struct MountList {
    mounts: Vec<MountView>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateMount {
    name: String,
    #[serde(rename = "type")]
    engine_type: String,
    /// Parsed once the type is known, because each type has its own
    /// settings.
    #[serde(default)]
    config: Option<serde_json::Value>,
}

/// Root CA settings of a `ca` mount; keyd applies its defaults to what is
/// left out.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CaConfigBody {
    #[serde(default)]
    common_name: Option<String>,
    #[serde(default)]
    organization: Option<String>,
    #[serde(default)]
    key_algorithm: Option<KeyAlgorithm>,
    #[serde(default)]
    ttl: Option<String>,
    #[serde(default)]
    public_base_url: Option<String>,
}

/// `GET /v1/mounts`.
pub async fn list(
    State(state): State<AppState>,
    context: RequestContext,
    auth: Authenticated,
) -> Result<Json<MountList>, ApiError> {
    let request = RequestBody::ListMounts;
    authorize(&state, &context, &auth, &request).await?;
    let reply = state
        .keyd
        .call(context.origin(), Some(auth.caller()), request)
        .await?;
    match reply {
        ResponseBody::Mounts(mounts) => Ok(Json(MountList {
            mounts: mounts.into_iter().map(MountView::from).collect(),
        })),
        other => Err(unexpected_reply("list-mounts", &other)),
    }
}

/// `POST /v1/mounts` (admin).
pub async fn create(
    State(state): State<AppState>,
    context: RequestContext,
    auth: Authenticated,
    JsonBody(body): JsonBody<CreateMount>,
) -> Result<Json<MountView>, ApiError> {
    require_admin(&state, &context, &auth.caller(), "mount").await?;
    check_identifier("mount name", &body.name).map_err(ApiError::bad_request)?;
    if body.engine_type != "ca" {
        return Err(ApiError::bad_request(format!(
            "unsupported mount type {:?}: expected \"ca\"",
            body.engine_type
        )));
    }
    let config: CaConfigBody = match body.config {
        None | Some(serde_json::Value::Null) => CaConfigBody::default(),
        Some(value) => serde_json::from_value(value).map_err(|error| {
            ApiError::bad_request(format!("invalid JSON body: config: {error}"))
        })?,
    };
    let request = RequestBody::Mount {
        name: body.name,
        config: MountConfig::Ca(CaMountConfig {
            common_name: config.common_name,
            organization: config.organization,
            key_algorithm: config.key_algorithm,
            ttl: config.ttl,
            public_base_url: config.public_base_url,
        }),
    };
    let reply = state
        .keyd
        .call(context.origin(), Some(auth.caller()), request)
        .await?;
    match reply {
        ResponseBody::Mount(info) => Ok(Json(info.into())),
        other => Err(unexpected_reply("mount", &other)),
    }
}

/// `DELETE /v1/mounts/{name}` (admin).
pub async fn remove(
    State(state): State<AppState>,
    context: RequestContext,
    PathParams(name): PathParams<String>,
    auth: Authenticated,
) -> Result<Json<Empty>, ApiError> {
    let request = RequestBody::Unmount { name };
    authorize(&state, &context, &auth, &request).await?;
    if let RequestBody::Unmount { name } = &request {
        check_identifier("mount name", name).map_err(ApiError::bad_request)?;
    }
    let reply = state
        .keyd
        .call(context.origin(), Some(auth.caller()), request)
        .await?;
    match reply {
        ResponseBody::Unmounted => Ok(Json(Empty {})),
        other => Err(unexpected_reply("unmount", &other)),
    }
}
