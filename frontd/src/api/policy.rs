//! Policy rule management and the policy check (admin).

use axum::Json;
use axum::extract::State;
use metacrypt_protocol::policy::{
    self, ADMIN_ROLE, Decision, Effect, PolicyRule, Resource, check_identifier,
};
use metacrypt_protocol::{Caller, RequestBody, ResponseBody};
use serde::{Deserialize, Serialize};

use super::session::Empty;
use super::{JsonBody, PathParams, QueryParams, RequestContext, unexpected_reply};
use crate::AppState;
use crate::auth::Authenticated;
use crate::authz::{fetch_rules, require_admin};
use crate::error::ApiError;

/// A rule with its name, as the REST API shows it.
#[derive(Serialize)]
pub struct RuleView {
    name: String,
    effect: Effect,
    users: Vec<String>,
    roles: Vec<String>,
    resources: Vec<String>,
}

impl RuleView {
    fn new(name: String, rule: PolicyRule) -> Self {
        Self {
            name,
            effect: rule.effect,
            users: rule.users,
            roles: rule.roles,
            resources: rule.resources,
        }
    }
}

#[derive(Serialize)]
pub struct RuleList {
    rules: Vec<RuleView>,
}

/// Query of `GET /v1/policy/check`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckQuery {
    resource: String,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    roles: Option<String>,
}

fn check_rule_name(name: &str) -> Result<(), ApiError> {
    check_identifier("rule name", name).map_err(ApiError::bad_request)
}

/// `GET /v1/policy/rules`.
pub async fn list(
    State(state): State<AppState>,
    context: RequestContext,
    auth: Authenticated,
) -> Result<Json<RuleList>, ApiError> {
    let caller = auth.caller();
    require_admin(&state, &context, &caller, "list-policy-rules").await?;
    let rules = fetch_rules(&state, &context, &caller).await?;
    Ok(Json(RuleList {
        rules: rules
            .into_iter()
            .map(|(name, rule)| RuleView::new(name, rule))
            .collect(),
    }))
}

/// `GET /v1/policy/rules/{name}`.
pub async fn get(
    State(state): State<AppState>,
    context: RequestContext,
    PathParams(name): PathParams<String>,
    auth: Authenticated,
) -> Result<Json<RuleView>, ApiError> {
    let caller = auth.caller();
    require_admin(&state, &context, &caller, "get-policy-rule").await?;
    check_rule_name(&name)?;
    let mut rules = fetch_rules(&state, &context, &caller).await?;
    match rules.remove(&name) {
        Some(rule) => Ok(Json(RuleView::new(name, rule))),
        None => Err(ApiError::not_found(format!("policy rule {name} not found"))),
    }
}

/// `PUT /v1/policy/rules/{name}`: creates or replaces a rule.
pub async fn put(
    State(state): State<AppState>,
    context: RequestContext,
    PathParams(name): PathParams<String>,
    auth: Authenticated,
    JsonBody(rule): JsonBody<PolicyRule>,
) -> Result<Json<RuleView>, ApiError> {
    let caller = auth.caller();
    require_admin(&state, &context, &caller, "put-policy-rule").await?;
    check_rule_name(&name)?;
    rule.validate().map_err(ApiError::bad_request)?;
    let body = RequestBody::PutPolicyRule {
        name: name.clone(),
        rule,
    };
    match state
        .keyd
        .call(context.origin(), Some(caller), body)
        .await?
    {
        ResponseBody::PolicyRule(rule) => Ok(Json(RuleView::new(name, rule))),
        other => Err(unexpected_reply("put-policy-rule", &other)),
    }
}

/// `DELETE /v1/policy/rules/{name}`.
pub async fn delete(
    State(state): State<AppState>,
    context: RequestContext,
    PathParams(name): PathParams<String>,
    auth: Authenticated,
) -> Result<Json<Empty>, ApiError> {
    let caller = auth.caller();
    require_admin(&state, &context, &caller, "delete-policy-rule").await?;
    check_rule_name(&name)?;
    let body = RequestBody::DeletePolicyRule { name };
    match state
        .keyd
        .call(context.origin(), Some(caller), body)
        .await?
    {
        ResponseBody::PolicyRuleDeleted => Ok(Json(Empty {})),
        other => Err(unexpected_reply("delete-policy-rule", &other)),
    }
}

/// `GET /v1/policy/check?resource=R[&user=U][&roles=A,B]`: what the policy
/// decides for user `U` with roles `A` and `B`, or for the caller itself
/// without `user`.
pub async fn check(
    State(state): State<AppState>,
    context: RequestContext,
    QueryParams(query): QueryParams<CheckQuery>,
    auth: Authenticated,
) -> Result<Json<Decision>, ApiError> {
    let caller = auth.caller();
    require_admin(&state, &context, &caller, "check-policy").await?;
    let resource = Resource::parse(&query.resource).map_err(ApiError::bad_request)?;
    let subject = match (query.user, query.roles) {
        (Some(user), roles) => subject(user, roles.as_deref())?,
        (None, None) => caller.clone(),
        (None, Some(_)) => {
            return Err(ApiError::bad_request("roles requires user"));
        }
    };
    let rules = fetch_rules(&state, &context, &caller).await?;
    Ok(Json(policy::evaluate(&rules, &subject, &resource)))
}

/// Builds the caller that a policy check asks about; the `admin` role makes
/// it an admin, as MCIAS roles do.
fn subject(user: String, roles: Option<&str>) -> Result<Caller, ApiError> {
    if user.is_empty() || user.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(ApiError::bad_request(format!("invalid user {user:?}")));
    }
    let roles: Vec<String> = roles
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|role| !role.is_empty())
        .map(str::to_owned)
        .collect();
    Ok(Caller {
        admin: roles.iter().any(|role| role == ADMIN_ROLE),
        username: user,
        roles,
        session: None,
    })
}
