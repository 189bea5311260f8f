//! The REST router against a keyd double on a Unix socket and an MCIAS
//! double over TLS, driven with `oneshot`.

mod common;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request as HttpRequest, StatusCode};
use common::{
    Harness, ISSUER_PEM, LEAF_KEY, LOCKED_PASSWORD, MciasMode, ROOT_PEM, SEAL_PASSWORD, Settings,
    canned_reply, request,
};
use metacrypt_frontd::api::BodyBudget;
use metacrypt_protocol::{CaRequest, RequestBody, SealState};
use serde_json::{Value, json};

/// Builds a request with a body of any content type.
fn raw_request(
    method: &str,
    path: &str,
    token: Option<&str>,
    content_type: &str,
    body: &'static str,
) -> HttpRequest<Body> {
    let mut builder = HttpRequest::builder()
        .method(method)
        .uri(path)
        .header("content-type", content_type);
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    builder.body(Body::from(body)).unwrap()
}

#[tokio::test]
async fn status_reports_tracked_state() {
    let harness = Harness::start(SealState::Sealed).await;
    let response = harness.get("/v1/status", None).await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.json(), json!({"state": "sealed"}));
    let status_requests = harness
        .keyd
        .requests()
        .into_iter()
        .filter(|request| request.body == RequestBody::Status)
        .count();
    assert_eq!(status_requests, 0, "status needs no round trip");
}

#[tokio::test]
async fn status_follows_state_changed() {
    let harness = Harness::start(SealState::Unsealed).await;
    harness.keyd.set_state(SealState::Sealed);
    common::wait_for_state(&harness.state.keyd, Some(SealState::Sealed)).await;
    let response = harness.get("/v1/status", None).await;
    assert_eq!(response.json(), json!({"state": "sealed"}));
}

#[tokio::test]
async fn unknown_route_is_json_404() {
    let harness = Harness::start(SealState::Unsealed).await;
    let response = harness.get("/v1/nothing/here", None).await;
    assert_eq!(response.status, StatusCode::NOT_FOUND);
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(response.error(), "no such route");
    assert!(response.header("x-request-id").is_some());
}

#[tokio::test]
async fn wrong_method_is_json_405() {
    let harness = Harness::start(SealState::Unsealed).await;
    let response = harness
        .send(request("DELETE", "/v1/status", None, None))
        .await;
    assert_eq!(response.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.error(), "method not allowed");
}

#[tokio::test]
async fn sealed_rejects_before_authentication() {
    let harness = Harness::start(SealState::Sealed).await;
    let token = harness.mcias.admin_token();
    for (method, path) in [
        ("GET", "/v1/mounts"),
        ("GET", "/v1/pki/pki/issuers"),
        ("GET", "/v1/pki/pki/certs/5eed"),
        ("GET", "/v1/auth/tokeninfo"),
    ] {
        let response = harness
            .send(request(method, path, Some(&token), None))
            .await;
        assert_eq!(response.status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert_eq!(response.error(), "sealed", "{path}");
    }
    let response = harness
        .post(
            "/v1/auth/login",
            None,
            json!({"username": "alice", "password": "alice-password"}),
        )
        .await;
    assert_eq!(response.status, StatusCode::SERVICE_UNAVAILABLE);
    let response = harness.get("/v1/mounts", None).await;
    assert_eq!(
        response.error(),
        "sealed",
        "no token needed to learn the state"
    );
    assert_eq!(
        harness.mcias.validations(),
        0,
        "MCIAS is not asked while sealed"
    );
    assert_eq!(harness.mcias.logins(), 0, "no login while sealed");
}

#[tokio::test]
async fn seal_while_sealed_is_503_sealed() {
    let harness = Harness::start(SealState::Sealed).await;
    let token = harness.mcias.admin_token();
    for token in [Some(token.as_str()), None] {
        let response = harness.post("/v1/seal", token, json!({})).await;
        assert_eq!(response.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.error(), "sealed");
    }
    let seals = harness
        .keyd
        .requests()
        .into_iter()
        .filter(|request| request.body == RequestBody::Seal)
        .count();
    assert_eq!(seals, 0, "seal forwarded to keyd");
}

#[tokio::test]
async fn seal_with_parameters_is_400() {
    let harness = Harness::start(SealState::Unsealed).await;
    let token = harness.mcias.admin_token();
    let response = harness
        .post("/v1/seal", Some(&token), json!({"force": true}))
        .await;
    assert_eq!(response.status, StatusCode::BAD_REQUEST);
    assert!(
        response.error().contains("no parameters"),
        "{}",
        response.text
    );
    let response = harness
        .send(raw_request(
            "POST",
            "/v1/seal",
            Some(&token),
            "text/plain",
            "garbage",
        ))
        .await;
    assert_eq!(response.status, StatusCode::BAD_REQUEST);
    assert_eq!(harness.state.keyd.state(), Some(SealState::Unsealed));
}

#[tokio::test]
async fn json_array_body_is_400() {
    let harness = Harness::start(SealState::Unsealed).await;
    let token = harness.mcias.user_token();
    let response = harness
        .post(
            "/v1/pki/pki/issue",
            Some(&token),
            json!(["default", "server", "seq.example.com"]),
        )
        .await;
    assert_eq!(response.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        response.error(),
        "invalid JSON body: expected a JSON object"
    );
    let issued = harness
        .keyd
        .requests()
        .into_iter()
        .filter(|request| matches!(request.body, RequestBody::Ca { .. }))
        .count();
    assert_eq!(issued, 0, "issue forwarded to keyd");
}

#[tokio::test]
async fn get_with_body_is_400() {
    let harness = Harness::start(SealState::Unsealed).await;
    let token = harness.mcias.user_token();
    let response = harness
        .send(raw_request(
            "GET",
            "/v1/mounts",
            Some(&token),
            "application/json",
            "{}",
        ))
        .await;
    assert_eq!(response.status, StatusCode::BAD_REQUEST);
    assert!(
        response.error().contains("take no body"),
        "{}",
        response.text
    );
}

#[tokio::test]
async fn unauthenticated_route_has_small_body_limit() {
    let harness = Harness::start(SealState::Sealed).await;
    let password = "p".repeat(20 * 1024);
    let response = harness
        .post("/v1/unseal", None, json!({"password": password}))
        .await;
    assert_eq!(response.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        response.error().contains("16384 bytes"),
        "{}",
        response.text
    );
}

#[tokio::test]
async fn rejected_authenticated_request_is_audited() {
    let harness = Harness::start(SealState::Unsealed).await;
    let token = harness.mcias.admin_token();
    let before = harness.keyd.requests().len();
    let response = harness
        .post(
            "/v1/mounts",
            Some(&token),
            json!({"name": "Upper", "type": "ca"}),
        )
        .await;
    assert_eq!(response.status, StatusCode::BAD_REQUEST);
    let recorded = harness.keyd.requests();
    assert_eq!(recorded.len(), before + 1, "one request to keyd");
    let last = recorded.last().unwrap();
    let RequestBody::RecordDenial {
        operation,
        resource,
        reason,
        status,
    } = &last.body
    else {
        panic!("expected a rejection record, got {:?}", last.body);
    };
    assert_eq!(operation, "POST /v1/mounts");
    assert_eq!(resource, &None);
    assert_eq!(reason, &response.error());
    assert_eq!(*status, 400);
    assert_eq!(last.caller.as_ref().expect("caller").username, "alice");

    // A request that reached keyd is audited there, not again by frontd.
    let before = harness.keyd.requests().len();
    let response = harness.get("/v1/mounts", Some(&token)).await;
    assert_eq!(response.status, StatusCode::OK);
    let recorded = harness.keyd.requests();
    assert_eq!(recorded.len(), before + 1);
    assert_eq!(recorded.last().unwrap().body, RequestBody::ListMounts);

    // Unknown routes and methods of a logged-in caller are audited too.
    for (method, path, status) in [("GET", "/v1/nothing", 404), ("DELETE", "/v1/status", 405)] {
        let response = harness
            .send(request(method, path, Some(&token), None))
            .await;
        assert_eq!(response.status.as_u16(), status, "{path}");
        let last = harness.keyd.requests().pop().unwrap();
        assert!(
            matches!(&last.body, RequestBody::RecordDenial { status: recorded, .. } if *recorded == status),
            "{path}: {:?}",
            last.body
        );
    }

    // Anonymous requests are not audited.
    let before = harness.keyd.requests().len();
    let response = harness.get("/v1/nothing", None).await;
    assert_eq!(response.status, StatusCode::NOT_FOUND);
    assert_eq!(harness.keyd.requests().len(), before);
}

#[tokio::test]
async fn anonymous_body_takes_no_budget() {
    let mut harness = Harness::start(SealState::Unsealed).await;
    harness.state.body_budget = BodyBudget::with_bytes(4 * 1024);
    let common_name = "a".repeat(8 * 1024);
    let body = json!({"issuer": "default", "profile": "client", "common_name": common_name});
    let response = harness.post("/v1/pki/pki/issue", None, body).await;
    assert_eq!(
        response.status,
        StatusCode::UNAUTHORIZED,
        "{}",
        response.text
    );
    assert_eq!(harness.state.body_budget.available_kib(), 4);
}

#[tokio::test]
async fn spent_body_budget_is_503() {
    let mut harness = Harness::start(SealState::Unsealed).await;
    harness.state.body_budget = BodyBudget::with_bytes(4 * 1024);
    let token = harness.mcias.admin_token();
    let common_name = "a".repeat(8 * 1024);
    let response = harness
        .post(
            "/v1/pki/pki/issue",
            Some(&token),
            json!({"issuer": "default", "profile": "client", "common_name": common_name}),
        )
        .await;
    assert_eq!(response.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers.get("retry-after").unwrap(), "1");
    assert!(
        response.error().starts_with("server busy"),
        "{}",
        response.text
    );
    // Small bodies still fit, and the budget is whole again afterwards.
    let response = harness
        .post(
            "/v1/pki/pki/issue",
            Some(&token),
            json!({"issuer": "default", "profile": "client", "common_name": "bob"}),
        )
        .await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text);
    assert_eq!(harness.state.body_budget.available_kib(), 4);
}

#[tokio::test]
async fn seal_before_init_is_412() {
    let harness = Harness::start(SealState::Uninitialized).await;
    let token = harness.mcias.admin_token();
    let response = harness.post("/v1/seal", Some(&token), json!({})).await;
    assert_eq!(response.status, StatusCode::PRECONDITION_FAILED);
}

#[tokio::test]
async fn responses_are_not_stored() {
    let harness = Harness::start(SealState::Unsealed).await;
    let token = harness.mcias.user_token();
    let issued = harness
        .post(
            "/v1/pki/pki/issue",
            Some(&token),
            json!({"issuer": "default", "profile": "client", "common_name": "bob"}),
        )
        .await;
    assert_eq!(issued.header("cache-control"), Some("no-store"));
    let login = harness
        .post(
            "/v1/auth/login",
            None,
            json!({"username": "alice", "password": "alice-password"}),
        )
        .await;
    assert_eq!(login.header("cache-control"), Some("no-store"));
    let missing = harness.get("/v1/nothing/here", None).await;
    assert_eq!(missing.header("cache-control"), Some("no-store"));
}

#[tokio::test]
async fn uninitialized_rejects_with_412() {
    let harness = Harness::start(SealState::Uninitialized).await;
    let response = harness.get("/v1/mounts", Some("anything")).await;
    assert_eq!(response.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(response.error(), "not initialized");
}

#[tokio::test]
async fn public_routes_pass_while_sealed() {
    let harness = Harness::start(SealState::Sealed).await;
    let response = harness.get("/v1/pki/pki/ca", None).await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(
        response.header("content-type"),
        Some("application/x-pem-file")
    );
    assert_eq!(response.text, ROOT_PEM);
}

#[tokio::test]
async fn chain_is_issuers_then_root() {
    let harness = Harness::start(SealState::Unsealed).await;
    let response = harness.get("/v1/pki/pki/ca/chain", None).await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.text, format!("{ISSUER_PEM}{ROOT_PEM}"));

    let response = harness
        .get("/v1/pki/pki/ca/chain?issuer=default", None)
        .await;
    assert_eq!(response.status, StatusCode::OK);
    let last = harness.keyd.requests().pop().expect("a request");
    assert_eq!(
        last.body,
        RequestBody::Ca {
            mount: "pki".to_owned(),
            op: CaRequest::GetChain {
                issuer: Some("default".to_owned())
            }
        }
    );
}

#[tokio::test]
async fn misspelt_query_parameter_is_400() {
    let harness = Harness::start(SealState::Unsealed).await;
    let response = harness
        .get("/v1/pki/pki/ca/chain?isuer=default", None)
        .await;
    assert_eq!(response.status, StatusCode::BAD_REQUEST);
    assert!(response.error().contains("isuer"), "{}", response.error());
}

#[tokio::test]
async fn issuer_route_serves_certificate_pem() {
    let harness = Harness::start(SealState::Unsealed).await;
    let response = harness.get("/v1/pki/pki/issuer/default", None).await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.text, ISSUER_PEM);
}

#[tokio::test]
async fn unknown_mount_is_404_from_keyd() {
    let harness = Harness::start(SealState::Unsealed).await;
    let response = harness.get("/v1/pki/other/ca", None).await;
    assert_eq!(response.status, StatusCode::NOT_FOUND);
    assert_eq!(response.error(), "mount \"other\" not found");
}

#[tokio::test]
async fn unseal_succeeds_with_right_password() {
    let harness = Harness::start(SealState::Sealed).await;
    let response = harness
        .post("/v1/unseal", None, json!({"password": SEAL_PASSWORD}))
        .await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.json(), json!({"state": "unsealed"}));
    assert_eq!(harness.state.keyd.state(), Some(SealState::Unsealed));
}

#[tokio::test]
async fn unseal_wrong_password_is_401() {
    let harness = Harness::start(SealState::Sealed).await;
    let response = harness
        .post("/v1/unseal", None, json!({"password": "not the password"}))
        .await;
    assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    assert_eq!(response.error(), "invalid password");
}

#[tokio::test]
async fn unseal_lockout_sends_retry_after() {
    let harness = Harness::start(SealState::Sealed).await;
    let response = harness
        .post("/v1/unseal", None, json!({"password": LOCKED_PASSWORD}))
        .await;
    assert_eq!(response.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.header("retry-after"), Some("42"));
    assert_eq!(response.error(), "too many attempts");
}

#[tokio::test]
async fn unseal_before_init_is_412() {
    let harness = Harness::start(SealState::Uninitialized).await;
    let response = harness
        .post("/v1/unseal", None, json!({"password": SEAL_PASSWORD}))
        .await;
    assert_eq!(response.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(response.error(), "not initialized");
}

#[tokio::test]
async fn init_short_password_is_400() {
    let harness = Harness::start(SealState::Uninitialized).await;
    let response = harness
        .post("/v1/init", None, json!({"password": "short"}))
        .await;
    assert_eq!(response.status, StatusCode::BAD_REQUEST);
    assert!(
        response.error().contains("12 characters"),
        "{}",
        response.error()
    );
}

#[tokio::test]
async fn init_twice_is_409() {
    let harness = Harness::start(SealState::Uninitialized).await;
    let response = harness
        .post("/v1/init", None, json!({"password": SEAL_PASSWORD}))
        .await;
    assert_eq!(response.json(), json!({"state": "unsealed"}));
    let response = harness
        .post("/v1/init", None, json!({"password": SEAL_PASSWORD}))
        .await;
    assert_eq!(response.status, StatusCode::CONFLICT);
    assert_eq!(response.error(), "already initialized");
}

#[tokio::test]
async fn empty_password_is_400() {
    let harness = Harness::start(SealState::Sealed).await;
    let response = harness
        .post("/v1/unseal", None, json!({"password": ""}))
        .await;
    assert_eq!(response.status, StatusCode::BAD_REQUEST);
    assert!(harness.keyd.requests().is_empty(), "keyd is not asked");
}

#[tokio::test]
async fn unknown_field_is_400_naming_it() {
    let harness = Harness::start(SealState::Sealed).await;
    let response = harness
        .post(
            "/v1/unseal",
            None,
            json!({"password": SEAL_PASSWORD, "colour": "red"}),
        )
        .await;
    assert_eq!(response.status, StatusCode::BAD_REQUEST);
    assert!(response.error().contains("colour"), "{}", response.error());
}

#[tokio::test]
async fn wrong_field_type_names_the_field() {
    let harness = Harness::start(SealState::Unsealed).await;
    let token = harness.mcias.admin_token();
    let body = json!({"issuer": "default", "profile": "server", "common_name": "a.example.com",
                      "dns_names": "a.example.com"});
    let response = harness.post("/v1/pki/pki/issue", Some(&token), body).await;
    assert_eq!(response.status, StatusCode::BAD_REQUEST);
    assert!(
        response.error().contains("dns_names"),
        "{}",
        response.error()
    );
}

#[tokio::test]
async fn malformed_json_is_400() {
    let harness = Harness::start(SealState::Sealed).await;
    let request = HttpRequest::post("/v1/unseal")
        .header("content-type", "application/json")
        .body(Body::from("{\"password\": "))
        .unwrap();
    let response = harness.send(request).await;
    assert_eq!(response.status, StatusCode::BAD_REQUEST);
    assert!(
        response.error().starts_with("invalid JSON body"),
        "{}",
        response.error()
    );
}

#[tokio::test]
async fn trailing_data_is_400() {
    let harness = Harness::start(SealState::Sealed).await;
    let request = HttpRequest::post("/v1/unseal")
        .header("content-type", "application/json")
        .body(Body::from(format!(
            "{{\"password\": \"{SEAL_PASSWORD}\"}} {{}}"
        )))
        .unwrap();
    let response = harness.send(request).await;
    assert_eq!(response.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn wrong_content_type_is_415() {
    let harness = Harness::start(SealState::Sealed).await;
    let request = HttpRequest::post("/v1/unseal")
        .header("content-type", "text/plain")
        .body(Body::from(format!("{{\"password\": \"{SEAL_PASSWORD}\"}}")))
        .unwrap();
    let response = harness.send(request).await;
    assert_eq!(response.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(
        response.error().contains("application/json"),
        "{}",
        response.error()
    );
}

fn small_body_limit() -> Settings {
    Settings {
        seal: SealState::Sealed,
        max_body_bytes: 1024,
        ..Settings::default()
    }
}

#[tokio::test]
async fn declared_large_body_is_413() {
    let harness = Harness::with(small_body_limit()).await;
    let body = json!({"password": "x".repeat(2048)}).to_string();
    let request = HttpRequest::post("/v1/unseal")
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .body(Body::from(body))
        .unwrap();
    let response = harness.send(request).await;
    assert_eq!(response.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        response.error(),
        "request body exceeds the limit of 1024 bytes"
    );
    assert!(harness.keyd.requests().is_empty());
}

#[tokio::test]
async fn streamed_large_body_is_413() {
    let harness = Harness::with(small_body_limit()).await;
    let body = json!({"password": "x".repeat(2048)}).to_string();
    let chunks: Vec<Result<String, std::io::Error>> = body
        .as_bytes()
        .chunks(100)
        .map(|chunk| Ok(String::from_utf8(chunk.to_vec()).unwrap()))
        .collect();
    let request = HttpRequest::post("/v1/unseal")
        .header("content-type", "application/json")
        .body(Body::from_stream(futures_stream(chunks)))
        .unwrap();
    let response = harness.send(request).await;
    assert_eq!(response.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        response.error(),
        "request body exceeds the limit of 1024 bytes"
    );
}

#[tokio::test]
async fn streamed_password_body_is_read_whole() {
    let harness = Harness::with(small_body_limit()).await;
    let body = json!({"password": SEAL_PASSWORD}).to_string();
    let chunks: Vec<Result<String, std::io::Error>> = body
        .as_bytes()
        .chunks(5)
        .map(|chunk| Ok(String::from_utf8(chunk.to_vec()).unwrap()))
        .collect();
    let request = HttpRequest::post("/v1/unseal")
        .header("content-type", "application/json")
        .body(Body::from_stream(futures_stream(chunks)))
        .unwrap();
    let response = harness.send(request).await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text);
    assert_eq!(response.json(), json!({"state": "unsealed"}));
}

#[tokio::test]
async fn body_longer_than_declared_is_413() {
    let harness = Harness::with(small_body_limit()).await;
    let body = json!({"password": "x".repeat(2048)}).to_string();
    // The declared length passes the early check; the body read enforces
    // the limit on the bytes that actually arrive.
    let request = HttpRequest::post("/v1/unseal")
        .header("content-type", "application/json")
        .header("content-length", "100")
        .body(Body::from(body))
        .unwrap();
    let response = harness.send(request).await;
    assert_eq!(response.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        response.error(),
        "request body exceeds the limit of 1024 bytes"
    );
}

/// Returns a body stream without a declared length, made of ready chunks.
fn futures_stream(
    chunks: Vec<Result<String, std::io::Error>>,
) -> impl futures_core::Stream<Item = Result<String, std::io::Error>> + Send + 'static {
    struct Chunks(std::vec::IntoIter<Result<String, std::io::Error>>);
    impl futures_core::Stream for Chunks {
        type Item = Result<String, std::io::Error>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            std::task::Poll::Ready(self.0.next())
        }
    }
    Chunks(chunks.into_iter())
}

#[tokio::test]
async fn request_id_is_generated_and_sent_to_keyd() {
    let harness = Harness::start(SealState::Unsealed).await;
    let response = harness.get("/v1/pki/pki/ca", None).await;
    let id = response
        .header("x-request-id")
        .expect("request id header")
        .to_owned();
    assert_eq!(id.len(), 16);
    assert!(id.bytes().all(|byte| byte.is_ascii_hexdigit()), "{id}");
    let sent = harness.keyd.requests().pop().expect("a keyd request");
    assert_eq!(sent.trace_id, id);
}

#[tokio::test]
async fn client_request_id_is_kept() {
    let harness = Harness::start(SealState::Unsealed).await;
    let request = HttpRequest::get("/v1/pki/pki/ca")
        .header("x-request-id", "client-id-42")
        .body(Body::empty())
        .unwrap();
    let response = harness.send(request).await;
    assert_eq!(response.header("x-request-id"), Some("client-id-42"));
    let sent = harness.keyd.requests().pop().expect("a keyd request");
    assert_eq!(sent.trace_id, "client-id-42");
}

#[tokio::test]
async fn odd_request_id_is_replaced() {
    let harness = Harness::start(SealState::Unsealed).await;
    let request = HttpRequest::get("/v1/status")
        .header("x-request-id", "has spaces and {braces}")
        .body(Body::empty())
        .unwrap();
    let response = harness.send(request).await;
    let id = response.header("x-request-id").expect("request id header");
    assert_eq!(id.len(), 16, "{id}");
}

#[tokio::test]
async fn missing_token_is_401() {
    let harness = Harness::start(SealState::Unsealed).await;
    let response = harness.get("/v1/mounts", None).await;
    assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    assert_eq!(response.error(), "missing token");
    assert_eq!(response.header("www-authenticate"), Some("Bearer"));
}

#[tokio::test]
async fn unknown_token_is_401() {
    let harness = Harness::start(SealState::Unsealed).await;
    let response = harness.get("/v1/mounts", Some("not-a-token")).await;
    assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    assert_eq!(response.error(), "invalid token");
}

#[tokio::test]
async fn mcias_down_is_502() {
    // A port that was just free and is closed again refuses connections.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let harness = Harness::with(Settings {
        mcias_url: Some(format!("https://127.0.0.1:{port}")),
        ..Settings::default()
    })
    .await;
    let response = harness.get("/v1/mounts", Some("some-token")).await;
    assert_eq!(response.status, StatusCode::BAD_GATEWAY);
    assert_eq!(response.error(), "authentication service unavailable");
    let response = harness
        .post(
            "/v1/auth/login",
            None,
            json!({"username": "alice", "password": "alice-password"}),
        )
        .await;
    assert_eq!(response.status, StatusCode::BAD_GATEWAY);
    let mounts = harness
        .keyd
        .requests()
        .into_iter()
        .filter(|request| request.body == RequestBody::ListMounts)
        .count();
    assert_eq!(mounts, 0, "nothing reaches keyd without a validation");
}

#[tokio::test]
async fn mcias_server_error_is_502() {
    let harness = Harness::start(SealState::Unsealed).await;
    let token = harness.mcias.admin_token();
    harness.mcias.set_mode(MciasMode::Broken);
    let response = harness.get("/v1/mounts", Some(&token)).await;
    assert_eq!(response.status, StatusCode::BAD_GATEWAY);
    assert_eq!(response.error(), "authentication service unavailable");
}

#[tokio::test]
async fn mcias_rate_limit_is_429() {
    let harness = Harness::start(SealState::Unsealed).await;
    harness.mcias.set_mode(MciasMode::RateLimited);
    let response = harness
        .post(
            "/v1/auth/login",
            None,
            json!({"username": "alice", "password": "alice-password"}),
        )
        .await;
    assert_eq!(response.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.header("retry-after"), Some("7"));
}

#[tokio::test]
async fn login_returns_token_and_expiry() {
    let harness = Harness::start(SealState::Unsealed).await;
    let response = harness
        .post(
            "/v1/auth/login",
            None,
            json!({"username": "alice", "password": "alice-password"}),
        )
        .await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.header("content-type"), Some("application/json"));
    let body = response.json();
    let token = body["token"].as_str().expect("token").to_owned();
    assert!(body["expires_at"].is_string(), "{body}");

    let info = harness.get("/v1/auth/tokeninfo", Some(&token)).await;
    assert_eq!(info.status, StatusCode::OK);
    let info = info.json();
    assert_eq!(info["username"], "alice");
    assert_eq!(info["roles"], json!(["admin"]));
    assert_eq!(info["admin"], true);
    assert!(info["expires_at"].is_string(), "{info}");
}

#[tokio::test]
async fn login_with_wrong_password_is_401() {
    let harness = Harness::start(SealState::Unsealed).await;
    let response = harness
        .post(
            "/v1/auth/login",
            None,
            json!({"username": "alice", "password": "wrong"}),
        )
        .await;
    assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    assert_eq!(response.error(), "invalid credentials");
}

#[tokio::test]
async fn logout_revokes_token() {
    let harness = Harness::start(SealState::Unsealed).await;
    let token = harness.mcias.user_token();
    assert_eq!(
        harness.get("/v1/mounts", Some(&token)).await.status,
        StatusCode::OK
    );
    let response = harness
        .post("/v1/auth/logout", Some(&token), json!({}))
        .await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.json(), json!({}));
    let response = harness.get("/v1/mounts", Some(&token)).await;
    assert_eq!(response.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn non_admin_may_not_mount() {
    let harness = Harness::start(SealState::Unsealed).await;
    let token = harness.mcias.user_token();
    let response = harness
        .post(
            "/v1/mounts",
            Some(&token),
            json!({"name": "other", "type": "ca", "config": {}}),
        )
        .await;
    assert_eq!(response.status, StatusCode::FORBIDDEN);
    assert!(
        response.error().starts_with("permission denied: "),
        "{}",
        response.error()
    );
    let mounts = harness
        .keyd
        .requests()
        .into_iter()
        .filter(|request| matches!(request.body, RequestBody::Mount { .. }))
        .count();
    assert_eq!(mounts, 0);
}

#[tokio::test]
async fn non_admin_may_not_seal_or_create_issuers() {
    let harness = Harness::start(SealState::Unsealed).await;
    let token = harness.mcias.user_token();
    let response = harness.post("/v1/seal", Some(&token), json!({})).await;
    assert_eq!(response.status, StatusCode::FORBIDDEN);
    let response = harness
        .post("/v1/pki/pki/issuers", Some(&token), json!({"name": "mine"}))
        .await;
    assert_eq!(response.status, StatusCode::FORBIDDEN);
    let response = harness
        .send(request("DELETE", "/v1/mounts/pki", Some(&token), None))
        .await;
    assert_eq!(response.status, StatusCode::FORBIDDEN);
    assert_eq!(harness.state.keyd.state(), Some(SealState::Unsealed));
}

#[tokio::test]
async fn non_admin_may_issue_and_read() {
    let harness = Harness::start(SealState::Unsealed).await;
    let token = harness.mcias.user_token();
    let issue = json!({"issuer": "default", "profile": "client", "common_name": "bob"});
    let response = harness
        .post("/v1/pki/pki/issue", Some(&token), issue.clone())
        .await;
    assert_eq!(response.status, StatusCode::FORBIDDEN);
    assert_eq!(
        response.error(),
        "permission denied: no rule allows pki/issue/default for bob"
    );
    harness.allow_ops().await;
    let response = harness
        .post(
            "/v1/pki/pki/issue",
            Some(&token),
            json!({"issuer": "default", "profile": "client", "common_name": "bob"}),
        )
        .await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.header("content-type"), Some("application/json"));
    let body = response.json();
    assert_eq!(body["private_key"], LEAF_KEY);
    assert_eq!(body["private_key_type"], "ec");
    assert_eq!(body["chain"], json!([ISSUER_PEM, ROOT_PEM]));
    assert_eq!(body["serial_number"], "5eed");
    assert_eq!(body["warnings"], json!([]));

    let sent = harness.keyd.requests().pop().expect("issue request");
    let caller = sent.caller.expect("caller passed to keyd");
    assert_eq!(caller.username, "bob");
    assert!(!caller.admin);

    for path in [
        "/v1/mounts",
        "/v1/pki/pki/issuers",
        "/v1/pki/pki/certs",
        "/v1/pki/pki/certs/5eed",
    ] {
        let response = harness.get(path, Some(&token)).await;
        assert_eq!(response.status, StatusCode::OK, "{path}: {}", response.text);
    }
}

#[tokio::test]
async fn listings_have_their_shape() {
    let harness = Harness::start(SealState::Unsealed).await;
    harness.allow_ops().await;
    let token = harness.mcias.user_token();
    let mounts = harness.get("/v1/mounts", Some(&token)).await.json();
    assert_eq!(
        mounts,
        json!({"mounts": [{"name": "pki", "type": "ca", "created_at": "2026-01-01T00:00:00Z"}]})
    );
    let issuers = harness
        .get("/v1/pki/pki/issuers", Some(&token))
        .await
        .json();
    assert_eq!(issuers["issuers"][0]["name"], "default");
    assert_eq!(issuers["issuers"][0]["key_algorithm"], "ecdsa-p256");
    let certs = harness
        .get("/v1/pki/pki/certs?issuer=default", Some(&token))
        .await
        .json();
    assert_eq!(certs["certs"][0]["serial_number"], "5eed");
    assert_eq!(certs["certs"][0]["profile"], "server");
    assert!(certs["certs"][0].get("private_key").is_none());
}

#[tokio::test]
async fn issue_request_is_forwarded_whole() {
    let harness = Harness::start(SealState::Unsealed).await;
    let token = harness.mcias.admin_token();
    let response = harness
        .post(
            "/v1/pki/pki/issue",
            Some(&token),
            json!({"issuer": "default", "profile": "peer", "common_name": "db.example.com",
                   "dns_names": ["db2.example.com"], "ip_addresses": ["192.0.2.10"],
                   "ttl": "9999h", "key_algorithm": "ed25519"}),
        )
        .await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(
        response.json()["warnings"][0],
        "ttl capped at the issuer's expiry"
    );

    let sent = harness.keyd.requests().pop().expect("issue request");
    let RequestBody::Ca {
        mount,
        op: CaRequest::Issue(issue),
    } = sent.body
    else {
        panic!("expected an issue request, got {:?}", sent.body);
    };
    assert_eq!(mount, "pki");
    assert_eq!(issue.profile, metacrypt_protocol::Profile::Peer);
    assert_eq!(issue.dns_names, vec!["db2.example.com"]);
    assert_eq!(issue.ip_addresses, vec!["192.0.2.10"]);
    assert_eq!(issue.ttl.as_deref(), Some("9999h"));
    assert_eq!(
        issue.key_algorithm,
        Some(metacrypt_protocol::KeyAlgorithm::Ed25519)
    );
}

#[tokio::test]
async fn unknown_profile_is_400_naming_it() {
    let harness = Harness::start(SealState::Unsealed).await;
    let token = harness.mcias.admin_token();
    let response = harness
        .post(
            "/v1/pki/pki/issue",
            Some(&token),
            json!({"issuer": "default", "profile": "admin", "common_name": "a.example.com"}),
        )
        .await;
    assert_eq!(response.status, StatusCode::BAD_REQUEST);
    assert!(response.error().contains("admin"), "{}", response.error());
}

#[tokio::test]
async fn admin_creates_mount() {
    let harness = Harness::start(SealState::Unsealed).await;
    let token = harness.mcias.admin_token();
    let response = harness
        .post(
            "/v1/mounts",
            Some(&token),
            json!({"name": "pki2", "type": "ca", "config": {"common_name": "Root",
                   "organization": "Org", "key_algorithm": "ecdsa-p384", "ttl": "87600h"}}),
        )
        .await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(
        response.json(),
        json!({"name": "pki2", "type": "ca", "created_at": "2026-01-02T00:00:00Z"})
    );
    let sent = harness.keyd.requests().pop().expect("mount request");
    let RequestBody::Mount { name, config } = sent.body else {
        panic!("expected a mount request, got {:?}", sent.body);
    };
    assert_eq!(name, "pki2");
    let metacrypt_protocol::MountConfig::Ca(ca) = config;
    assert_eq!(ca.common_name.as_deref(), Some("Root"));
    assert_eq!(
        ca.key_algorithm,
        Some(metacrypt_protocol::KeyAlgorithm::EcdsaP384)
    );
    assert_eq!(ca.ttl.as_deref(), Some("87600h"));
}

#[tokio::test]
async fn unsupported_mount_type_is_400_naming_it() {
    let harness = Harness::start(SealState::Unsealed).await;
    let token = harness.mcias.admin_token();
    let response = harness
        .post(
            "/v1/mounts",
            Some(&token),
            json!({"name": "kv", "type": "kv", "config": {"x": 1}}),
        )
        .await;
    assert_eq!(response.status, StatusCode::BAD_REQUEST);
    assert!(response.error().contains("\"kv\""), "{}", response.error());
}

#[tokio::test]
async fn unknown_mount_config_field_is_400() {
    let harness = Harness::start(SealState::Unsealed).await;
    let token = harness.mcias.admin_token();
    let response = harness
        .post(
            "/v1/mounts",
            Some(&token),
            json!({"name": "pki2", "type": "ca", "config": {"common_nam": "Root"}}),
        )
        .await;
    assert_eq!(response.status, StatusCode::BAD_REQUEST);
    assert!(
        response.error().contains("common_nam"),
        "{}",
        response.error()
    );
}

#[tokio::test]
async fn admin_unmounts_and_seals() {
    let harness = Harness::start(SealState::Unsealed).await;
    let token = harness.mcias.admin_token();
    let response = harness
        .send(request("DELETE", "/v1/mounts/pki", Some(&token), None))
        .await;
    assert_eq!(response.status, StatusCode::OK);
    let response = harness.post("/v1/seal", Some(&token), json!({})).await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.json(), json!({"state": "sealed"}));
    let status = harness.get("/v1/status", None).await;
    assert_eq!(status.json(), json!({"state": "sealed"}));
}

#[tokio::test]
async fn keyd_internal_error_is_generic_500() {
    let handler: common::Handler = Arc::new(|request, state| {
        if request.body == RequestBody::ListMounts {
            return Some(Err(metacrypt_protocol::ErrorBody::internal(
                "barrier integrity check failed for mounts/pki",
            )));
        }
        Some(canned_reply(request, state))
    });
    let harness = Harness::with(Settings {
        handler,
        ..Settings::default()
    })
    .await;
    let token = harness.mcias.admin_token();
    let response = harness.get("/v1/mounts", Some(&token)).await;
    assert_eq!(response.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(response.error(), "internal error");
}

#[tokio::test]
async fn keyd_silence_is_504() {
    let handler: common::Handler = Arc::new(|request, state| {
        if matches!(request.body, RequestBody::Ca { .. }) {
            return None;
        }
        Some(canned_reply(request, state))
    });
    let harness = Harness::with(Settings {
        handler,
        ..Settings::default()
    })
    .await;
    let response = harness.get("/v1/pki/pki/ca", None).await;
    assert_eq!(response.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(response.error(), "keyd did not reply in time");
}

#[tokio::test]
async fn keyd_gone_is_503_keyd_unavailable() {
    let mut harness = Harness::start(SealState::Unsealed).await;
    harness.keyd.stop();
    common::wait_for_state(&harness.state.keyd, None).await;
    for path in ["/v1/status", "/v1/mounts", "/v1/pki/pki/ca"] {
        let response = harness.get(path, None).await;
        assert_eq!(response.status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert_eq!(response.error(), "keyd unavailable", "{path}");
    }
}

/// Returns a keyd double handler whose CA mount stores certificates with
/// serials 01 to 05 and pages them like keyd.
fn paging_handler() -> common::Handler {
    Arc::new(|request, state| {
        let RequestBody::Ca {
            op: CaRequest::ListCerts { limit, after, .. },
            ..
        } = &request.body
        else {
            return Some(canned_reply(request, state));
        };
        let certs = (1..=5)
            .map(|number| format!("{number:02}"))
            .filter(|serial| after.as_ref().is_none_or(|after| serial > after))
            .take(limit.map_or(100, |limit| limit as usize))
            .map(|serial| common::cert_record(&serial))
            .collect();
        Some(Ok(metacrypt_protocol::ResponseBody::Ca(
            metacrypt_protocol::CaResponse::Certs(certs),
        )))
    })
}

async fn paging_harness() -> Harness {
    let harness = Harness::with(Settings {
        handler: paging_handler(),
        ..Settings::default()
    })
    .await;
    harness.allow_ops().await;
    harness
}

fn serials(page: &serde_json::Value) -> Vec<String> {
    page["certs"]
        .as_array()
        .expect("certs array")
        .iter()
        .map(|cert| {
            cert["serial_number"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn full_cert_page_names_next() {
    let harness = paging_harness().await;
    let token = harness.mcias.user_token();
    let response = harness
        .get("/v1/pki/pki/certs?issuer=default&limit=2", Some(&token))
        .await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text);
    let page = response.json();
    assert_eq!(serials(&page), ["01", "02"]);
    assert_eq!(page["next_after"], "02");

    let sent = harness.keyd.requests().pop().expect("list request");
    assert_eq!(
        sent.body,
        RequestBody::Ca {
            mount: "pki".to_owned(),
            op: CaRequest::ListCerts {
                issuer: Some("default".to_owned()),
                limit: Some(2),
                after: None,
            }
        }
    );
}

#[tokio::test]
async fn last_cert_page_has_null_next() {
    let harness = paging_harness().await;
    let token = harness.mcias.user_token();
    let page = harness
        .get("/v1/pki/pki/certs?limit=2&after=04", Some(&token))
        .await
        .json();
    assert_eq!(serials(&page), ["05"]);
    assert_eq!(page["next_after"], serde_json::Value::Null);
    let sent = harness.keyd.requests().pop().expect("list request");
    let RequestBody::Ca {
        op: CaRequest::ListCerts { after, limit, .. },
        ..
    } = sent.body
    else {
        panic!("expected a list request, got {:?}", sent.body);
    };
    assert_eq!(after.as_deref(), Some("04"));
    assert_eq!(limit, Some(2));
}

#[tokio::test]
async fn cert_page_without_limit_uses_default() {
    let harness = paging_harness().await;
    let token = harness.mcias.user_token();
    let page = harness.get("/v1/pki/pki/certs", Some(&token)).await.json();
    assert_eq!(serials(&page).len(), 5);
    assert_eq!(page["next_after"], serde_json::Value::Null);
}

#[tokio::test]
async fn exact_cert_page_names_next() {
    let harness = paging_harness().await;
    let token = harness.mcias.user_token();
    let page = harness
        .get("/v1/pki/pki/certs?limit=5", Some(&token))
        .await
        .json();
    assert_eq!(serials(&page).len(), 5);
    assert_eq!(page["next_after"], "05");
}

#[tokio::test]
async fn invalid_cert_limit_is_400() {
    let harness = paging_harness().await;
    let token = harness.mcias.user_token();
    let response = harness
        .get("/v1/pki/pki/certs?limit=many", Some(&token))
        .await;
    assert_eq!(response.status, StatusCode::BAD_REQUEST);
    assert!(response.error().contains("limit"), "{}", response.error());
}

/// Builds a request that authenticates with the session cookie.
fn with_cookie(method: &str, path: &str, cookie: &str) -> HttpRequest<Body> {
    HttpRequest::builder()
        .method(method)
        .uri(path)
        .header("cookie", cookie)
        .body(Body::empty())
        .expect("request")
}

#[tokio::test]
async fn cookie_login_sets_strict_session_cookie() {
    let harness = Harness::start(SealState::Unsealed).await;
    let response = harness
        .post(
            "/v1/auth/login",
            None,
            json!({"username": "alice", "password": "alice-password", "session_cookie": true}),
        )
        .await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text);
    let body = response.json();
    assert!(body.get("token").is_none(), "{body}");
    assert!(body["expires_at"].is_string(), "{body}");
    let cookie = response
        .header("set-cookie")
        .expect("set-cookie")
        .to_owned();
    let (pair, flags) = cookie.split_once(';').expect("cookie flags");
    assert!(pair.starts_with("metacrypt_session="), "{cookie}");
    for flag in [
        "HttpOnly",
        "Secure",
        "SameSite=Strict",
        "Path=/",
        "Max-Age=",
    ] {
        assert!(flags.contains(flag), "{flag} missing: {cookie}");
    }

    let info = harness
        .send(with_cookie("GET", "/v1/auth/tokeninfo", pair))
        .await;
    assert_eq!(info.status, StatusCode::OK, "{}", info.text);
    assert_eq!(info.json()["username"], "alice");
}

#[tokio::test]
async fn cookie_and_bearer_give_same_identity() {
    let harness = Harness::start(SealState::Unsealed).await;
    let token = harness.mcias.user_token();
    let by_header = harness.get("/v1/auth/tokeninfo", Some(&token)).await;
    let by_cookie = harness
        .send(with_cookie(
            "GET",
            "/v1/auth/tokeninfo",
            &format!("theme=dark; metacrypt_session={token}"),
        ))
        .await;
    assert_eq!(by_header.status, StatusCode::OK);
    assert_eq!(by_cookie.status, StatusCode::OK);
    assert_eq!(by_header.json(), by_cookie.json());

    // Policy sees the same caller either way.
    let response = harness
        .send(with_cookie(
            "GET",
            "/v1/pki/pki/issuers",
            &format!("metacrypt_session={token}"),
        ))
        .await;
    assert_eq!(response.status, StatusCode::FORBIDDEN);
    assert_eq!(
        response.error(),
        "permission denied: no rule allows pki/list-issuers for bob"
    );
    harness.allow_ops().await;
    let response = harness
        .send(with_cookie(
            "GET",
            "/v1/pki/pki/issuers",
            &format!("metacrypt_session={token}"),
        ))
        .await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text);
    let sent = harness.keyd.requests().pop().expect("list request");
    assert_eq!(sent.caller.expect("caller").username, "bob");
}

#[tokio::test]
async fn cookie_logout_clears_cookie_and_cache() {
    let harness = Harness::start(SealState::Unsealed).await;
    let token = harness.mcias.user_token();
    let cookie = format!("metacrypt_session={token}");
    let info = harness
        .send(with_cookie("GET", "/v1/auth/tokeninfo", &cookie))
        .await;
    assert_eq!(info.status, StatusCode::OK);
    let response = harness
        .send(with_cookie("POST", "/v1/auth/logout", &cookie))
        .await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text);
    let cleared = response.header("set-cookie").expect("set-cookie");
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    let info = harness
        .send(with_cookie("GET", "/v1/auth/tokeninfo", &cookie))
        .await;
    assert_eq!(info.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn non_canonical_path_reaches_nothing() {
    let harness = Harness::start(SealState::Unsealed).await;
    let token = harness.mcias.admin_token();
    let before = harness.keyd.requests().len();
    let validations = harness.mcias.validations();
    // (method, path, expected message suffix)
    let table = [
        ("POST", "/v1/mounts/", "it has an empty segment"),
        ("DELETE", "/v1/mounts//pki", "it has an empty segment"),
        ("DELETE", "/v1/mounts/../mounts/pki", "it has a dot segment"),
        ("POST", "/v1/pki/./pki/issue", "it has a dot segment"),
        (
            "POST",
            "/v1/pki/%2e%2e/issue",
            "it has a percent-encoded dot",
        ),
        (
            "POST",
            "/v1/pki/a%2fb/issue",
            "it has a percent-encoded slash",
        ),
        ("POST", "/v1/pki/a%20b/issue", "it has a space"),
        ("POST", "/v1/pki/a%00b/issue", "it has a control character"),
        (
            "POST",
            "/v1/pki/Pki/issue",
            "it has an uppercase letter, and identifiers are lowercase",
        ),
    ];
    for (method, path, reason) in table {
        let body = json!({"issuer": "default", "profile": "client", "common_name": "x"});
        let response = harness
            .send(request(method, path, Some(&token), Some(body)))
            .await;
        assert_eq!(response.status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(
            response.error(),
            format!("invalid path {path:?}: {reason}"),
            "{path}"
        );
    }
    assert_eq!(harness.keyd.requests().len(), before, "keyd saw a request");
    assert_eq!(harness.mcias.validations(), validations);
}

#[tokio::test]
async fn policy_check_reports_decision() {
    let harness = Harness::start(SealState::Unsealed).await;
    let admin = harness.mcias.admin_token();
    let response = harness
        .put_rule(
            "no-root",
            json!({"effect": "deny", "users": ["*"], "resources": ["pki/issue/root"]}),
        )
        .await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text);
    harness.allow_ops().await;

    let check = |query: &'static str| {
        let harness = &harness;
        let admin = admin.clone();
        async move {
            harness
                .get(&format!("/v1/policy/check?{query}"), Some(&admin))
                .await
        }
    };
    let response = check("resource=pki/issue/root&user=bob&roles=ops").await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text);
    assert_eq!(
        response.json(),
        json!({"allowed": false, "rule": "no-root",
               "reason": "rule no-root denies pki/issue/root for bob"})
    );
    let response = check("resource=pki/issue/web&user=bob&roles=ops").await;
    assert_eq!(response.json()["rule"], "ops-on-pki");
    assert_eq!(response.json()["allowed"], true);
    let response = check("resource=pki/issue/web&user=eve").await;
    assert_eq!(response.json()["allowed"], false);
    assert_eq!(response.json()["rule"], Value::Null);
    let response = check("resource=pki/issue/root").await;
    assert_eq!(response.json()["allowed"], true, "admins bypass policy");

    for (query, message) in [
        ("resource=pki", "expected MOUNT/OPERATION"),
        ("resource=PKI/issue", "lowercase"),
        ("resource=pki/issue&roles=ops", "roles requires user"),
        ("user=bob", "resource"),
    ] {
        let response = check(query).await;
        assert_eq!(response.status, StatusCode::BAD_REQUEST, "{query}");
        assert!(
            response.error().contains(message),
            "{query}: {}",
            response.error()
        );
    }
    let user = harness.mcias.user_token();
    let response = harness
        .get("/v1/policy/check?resource=pki/issue/web", Some(&user))
        .await;
    assert_eq!(response.status, StatusCode::FORBIDDEN);
    assert_eq!(
        response.error(),
        "permission denied: check-policy requires the admin role"
    );
}

#[tokio::test]
async fn denial_is_recorded_or_fails_closed() {
    let harness = Harness::with(Settings {
        handler: Arc::new(|request, state| {
            if let RequestBody::RecordDenial { reason, .. } = &request.body
                && reason.contains("list-certs")
            {
                return Some(Err(metacrypt_protocol::ErrorBody::new(
                    metacrypt_protocol::ErrorCode::Unavailable,
                    "audit log unavailable",
                )));
            }
            Some(canned_reply(request, state))
        }),
        ..Settings::default()
    })
    .await;
    let token = harness.mcias.user_token();
    let response = harness.get("/v1/pki/pki/issuers", Some(&token)).await;
    assert_eq!(response.status, StatusCode::FORBIDDEN);
    let recorded = harness.keyd.requests().pop().expect("denial request");
    assert_eq!(
        recorded.body,
        RequestBody::RecordDenial {
            operation: "list-issuers".to_owned(),
            resource: Some("pki/list-issuers".to_owned()),
            reason: "no rule allows pki/list-issuers for bob".to_owned(),
            status: 403,
        }
    );
    assert_eq!(recorded.caller.expect("caller").username, "bob");

    let response = harness.get("/v1/pki/pki/certs", Some(&token)).await;
    assert_eq!(response.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.error(), "audit log unavailable");
}

#[tokio::test]
async fn uppercase_issuer_filter_is_400() {
    let harness = Harness::start(SealState::Unsealed).await;
    let token = harness.mcias.admin_token();
    let before = harness.keyd.requests().len();
    for path in [
        "/v1/pki/pki/certs?issuer=Default",
        "/v1/pki/pki/ca/chain?issuer=Default",
    ] {
        let response = harness.get(path, Some(&token)).await;
        assert_eq!(response.status, StatusCode::BAD_REQUEST, "{path}");
        assert!(
            response.error().contains("lowercase"),
            "{}",
            response.error()
        );
    }
    // Only the audit record of the authenticated request reaches keyd.
    let sent: Vec<_> = harness.keyd.requests().into_iter().skip(before).collect();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(
        matches!(sent[0].body, RequestBody::RecordDenial { status: 400, .. }),
        "{:?}",
        sent[0].body
    );
}
