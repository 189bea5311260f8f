//! The one place that decides what an authenticated caller may do.
//!
//! Admins (the MCIAS role `admin`) may do everything. Engine operations are
//! decided by the policy rules that keyd stores: each request maps to the
//! resource `{mount}/{operation}[/{issuer}]` (see
//! [`metacrypt_protocol::policy`]), any matching deny wins, and without a
//! matching allow the request is denied. Service operations (seal, mount,
//! unmount, policy management) need the admin role. Listing mounts needs
//! only authentication, since it shows mount names and types only.
//!
//! The rules are fetched from keyd for every non-admin engine request. A
//! fetch is one round trip on the front socket and one barrier read of a
//! single entry, so no cache can serve a rule set that an admin already
//! replaced or deleted.

use std::collections::BTreeMap;

use metacrypt_protocol::policy::{self, PolicyRule, Resource};
use metacrypt_protocol::{Caller, RequestBody, ResponseBody};

use crate::AppState;
use crate::api::{RequestContext, unexpected_reply};
use crate::auth::Authenticated;
use crate::error::ApiError;

/// Returns 403 unless the caller is an admin. `operation` names what was
/// requested in the message.
pub async fn require_admin(
    state: &AppState,
    context: &RequestContext,
    caller: &Caller,
    operation: &str,
) -> Result<(), ApiError> {
    if caller.admin {
        return Ok(());
    }
    let reason = format!("{operation} requires the admin role");
    Err(deny(state, context, caller, operation, None, &reason).await)
}

/// Returns the policy resource of `body`, or a 400 when the mount or issuer
/// is not a valid identifier.
pub fn resource_of(body: &RequestBody) -> Result<Option<Resource>, ApiError> {
    body.resource().transpose().map_err(ApiError::bad_request)
}

/// Returns 403 unless the caller may send `body` to keyd, and 400 when the
/// request names an invalid identifier.
pub async fn authorize(
    state: &AppState,
    context: &RequestContext,
    auth: &Authenticated,
    body: &RequestBody,
) -> Result<(), ApiError> {
    let caller = auth.caller();
    let operation = body.operation();
    match body {
        RequestBody::ListMounts => return Ok(()),
        RequestBody::Ca { .. } => {}
        _ => return require_admin(state, context, &caller, operation).await,
    }
    let Some(resource) = resource_of(body)? else {
        return require_admin(state, context, &caller, operation).await;
    };
    if caller.admin {
        return Ok(());
    }
    let rules = fetch_rules(state, context, &caller).await?;
    let decision = policy::evaluate(&rules, &caller, &resource);
    if decision.allowed {
        return Ok(());
    }
    Err(deny(
        state,
        context,
        &caller,
        operation,
        Some(&resource),
        &decision.reason,
    )
    .await)
}

/// Has keyd write the denial to the audit log and returns the 403 that
/// carries `reason`. When keyd cannot record it, the client gets keyd's
/// error instead, such as 503 `audit log unavailable`.
async fn deny(
    state: &AppState,
    context: &RequestContext,
    caller: &Caller,
    operation: &str,
    resource: Option<&Resource>,
    reason: &str,
) -> ApiError {
    tracing::info!(
        username = %caller.username,
        operation,
        reason,
        "permission denied"
    );
    let body = RequestBody::RecordDenial {
        operation: operation.to_owned(),
        resource: resource.map(Resource::to_string),
        reason: reason.to_owned(),
        status: 403,
    };
    match state
        .keyd
        .call(context.origin(), Some(caller.clone()), body)
        .await
    {
        Ok(ResponseBody::DenialRecorded) => denial(reason),
        Ok(other) => unexpected_reply("record-denial", &other),
        Err(error) => error.into(),
    }
}

fn denial(reason: &str) -> ApiError {
    ApiError::forbidden(format!("permission denied: {reason}"))
}

/// Fetches every policy rule from keyd on behalf of `caller`.
pub async fn fetch_rules(
    state: &AppState,
    context: &RequestContext,
    caller: &Caller,
) -> Result<BTreeMap<String, PolicyRule>, ApiError> {
    let reply = state
        .keyd
        .call(
            context.origin(),
            Some(caller.clone()),
            RequestBody::ListPolicyRules,
        )
        .await?;
    match reply {
        ResponseBody::PolicyRules(rules) => Ok(rules),
        other => Err(unexpected_reply("list-policy-rules", &other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denial_carries_the_reason() {
        let error = denial("rule no-root denies pki/issue/root for bob");
        assert_eq!(error.status().as_u16(), 403);
        assert_eq!(
            error.message(),
            "permission denied: rule no-root denies pki/issue/root for bob"
        );
    }

    #[test]
    fn invalid_issuer_is_bad_request() {
        let body = RequestBody::Ca {
            mount: "pki".to_owned(),
            op: metacrypt_protocol::CaRequest::CreateIssuer {
                name: "Web".to_owned(),
                key_algorithm: None,
                ttl: None,
                constraints: Default::default(),
            },
        };
        let error = resource_of(&body).unwrap_err();
        assert_eq!(error.status().as_u16(), 400);
        assert!(error.message().contains("lowercase"), "{}", error.message());
    }
}
