//! Policy rules and path canonicalization through the REST API of the real
//! daemons: rule management, precedence, the policy check, and paths or
//! names that are rejected without changing anything.

use std::process::Command;

use metacrypt_tests::{ADMIN_PASSWORD, ADMIN_USER, Cluster, USER, USER_PASSWORD};
use reqwest::Method;
use serde_json::{Value, json};

/// Starts an initialized cluster with mount `pki` and the given issuers, and
/// returns it with an admin token.
fn cluster_with_issuers(issuers: &[&str]) -> (Cluster, String) {
    let cluster = Cluster::start();
    cluster.init();
    let token = cluster.login(ADMIN_USER, ADMIN_PASSWORD);
    let (status, body) = cluster.post(
        "/v1/mounts",
        Some(&token),
        json!({"name": "pki", "type": "ca", "config": {}}),
    );
    assert_eq!(status, 200, "mount: {body}");
    for issuer in issuers {
        let (status, body) =
            cluster.post("/v1/pki/pki/issuers", Some(&token), json!({"name": issuer}));
        assert_eq!(status, 200, "create issuer {issuer}: {body}");
    }
    (cluster, token)
}

fn put_rule(cluster: &Cluster, token: &str, name: &str, rule: Value) -> (u16, Value) {
    cluster.call(
        Method::PUT,
        &format!("/v1/policy/rules/{name}"),
        Some(token),
        Some(rule),
    )
}

/// Sends the request that a resource represents: an issue for
/// `MOUNT/issue/ISSUER`, a GET of the issuer list for
/// `MOUNT/list-issuers`.
fn request_resource(cluster: &Cluster, token: &str, resource: &str) -> (u16, Value) {
    let parts: Vec<&str> = resource.split('/').collect();
    match parts.as_slice() {
        [mount, "issue", issuer] => cluster.post(
            &format!("/v1/pki/{mount}/issue"),
            Some(token),
            json!({"issuer": issuer, "profile": "client", "common_name": "bob",
                   "email_addresses": ["bob@example.com"]}),
        ),
        [mount, "list-issuers"] => {
            cluster.get_json(&format!("/v1/pki/{mount}/issuers"), Some(token))
        }
        _ => panic!("no request for resource {resource}"),
    }
}

/// Sends a request with curl, which keeps the path as written
/// (`--path-as-is`), unlike reqwest, which removes dot segments. Returns
/// the status and the JSON body.
fn raw_request(cluster: &Cluster, method: &str, path: &str, token: &str) -> (u16, Value) {
    let output = Command::new("curl")
        .args([
            "--silent",
            "--show-error",
            "--path-as-is",
            "--max-time",
            "20",
        ])
        .arg("--cacert")
        .arg(&cluster.tls_cert)
        .args(["--request", method])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--header", "Content-Type: application/json"])
        .args(["--data", r#"{"name":"x","type":"ca"}"#])
        .args(["--write-out", "\n%{http_code}"])
        .arg(format!("https://localhost:{}{path}", cluster.addr.port()))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (
        status.trim().parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

fn mount_names(cluster: &Cluster, token: &str) -> Vec<String> {
    let (status, body) = cluster.get_json("/v1/mounts", Some(token));
    assert_eq!(status, 200, "{body}");
    body["mounts"]
        .as_array()
        .expect("mounts array")
        .iter()
        .map(|mount| mount["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn policy_precedence_through_api() {
    let (cluster, admin) = cluster_with_issuers(&["root-issuer", "root-issuer2", "other"]);
    let user = cluster.login(USER, USER_PASSWORD);

    // Default deny: no rule yet.
    let (status, body) = request_resource(&cluster, &user, "pki/list-issuers");
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        body["error"],
        format!("permission denied: no rule allows pki/list-issuers for {USER}")
    );

    // Only `pki/*`: one segment, so issuing (three segments) is not allowed.
    let (status, body) = put_rule(
        &cluster,
        &admin,
        "a-allow-pki",
        json!({"effect": "allow", "roles": ["ops"], "resources": ["pki/*"]}),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = put_rule(
        &cluster,
        &admin,
        "deny-root",
        json!({"effect": "deny", "users": ["*"], "resources": ["pki/issue/root-issuer"]}),
    );
    assert_eq!(status, 200, "{body}");
    // (resource, expected status, expected rule in the check)
    let before = [
        ("pki/list-issuers", 200, Some("a-allow-pki")),
        ("pki/issue/other", 403, None),
        ("pki/issue/root-issuer", 403, Some("deny-root")),
    ];

    // Then a broader allow for every issuer; the deny still wins.
    let after = [
        ("pki/list-issuers", 200, Some("a-allow-pki")),
        ("pki/issue/other", 200, Some("b-allow-issue")),
        ("pki/issue/root-issuer", 403, Some("deny-root")),
        ("pki/issue/root-issuer2", 200, Some("b-allow-issue")),
        ("pki2/list-issuers", 403, None),
        ("pk/issue/other", 403, None),
    ];
    for (stage, table) in [("before", &before[..]), ("after", &after[..])] {
        if stage == "after" {
            let (status, body) = put_rule(
                &cluster,
                &admin,
                "b-allow-issue",
                json!({"effect": "allow", "roles": ["ops"], "resources": ["pki/issue/**"]}),
            );
            assert_eq!(status, 200, "{body}");
        }
        for (resource, expected, rule) in table {
            let (status, body) = request_resource(&cluster, &user, resource);
            assert_eq!(status, *expected, "{stage} {resource}: {body}");
            if *expected == 403 {
                let reason = match rule {
                    Some(rule) => format!("rule {rule} denies {resource} for {USER}"),
                    None => format!("no rule allows {resource} for {USER}"),
                };
                assert_eq!(
                    body["error"],
                    format!("permission denied: {reason}"),
                    "{stage} {resource}"
                );
            }
            let (status, check) = cluster.get_json(
                &format!("/v1/policy/check?resource={resource}&user={USER}&roles=ops"),
                Some(&admin),
            );
            assert_eq!(status, 200, "{check}");
            assert_eq!(check["allowed"], *expected == 200, "{stage} {resource}");
            assert_eq!(check["rule"], json!(rule), "{stage} {resource}");
        }
    }

    // The admin bypasses the deny.
    let (status, body) = request_resource(&cluster, &admin, "pki/issue/root-issuer");
    assert_eq!(status, 200, "{body}");
    let (status, check) = cluster.get_json(
        "/v1/policy/check?resource=pki/issue/root-issuer",
        Some(&admin),
    );
    assert_eq!(status, 200, "{check}");
    assert_eq!(check["allowed"], true);
    assert_eq!(check["rule"], Value::Null);
}

#[test]
fn rules_are_managed_by_admins_only() {
    let (cluster, admin) = cluster_with_issuers(&[]);
    let user = cluster.login(USER, USER_PASSWORD);
    let rule = json!({"effect": "allow", "users": [USER], "resources": ["pki/**"]});

    let (status, body) = put_rule(&cluster, &user, "mine", rule.clone());
    assert_eq!(status, 403, "{body}");
    let (status, body) = put_rule(&cluster, &admin, "mine", rule.clone());
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["name"], "mine");
    assert_eq!(body["resources"], json!(["pki/**"]));

    let (status, body) = cluster.get_json("/v1/policy/rules/mine", Some(&admin));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["effect"], "allow");
    assert_eq!(body["users"], json!([USER]));
    let (status, body) = cluster.get_json("/v1/policy/rules", Some(&admin));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rules"].as_array().map(Vec::len), Some(1));
    for path in ["/v1/policy/rules", "/v1/policy/rules/mine"] {
        let (status, body) = cluster.get_json(path, Some(&user));
        assert_eq!(status, 403, "{path}: {body}");
    }
    let (status, body) = cluster.get_json("/v1/policy/check?resource=pki/list-certs", Some(&user));
    assert_eq!(status, 403, "{body}");

    // Rules are stored in the barrier: they survive a seal and an unseal.
    let (status, body) = cluster.post("/v1/seal", Some(&admin), json!({}));
    assert_eq!(status, 200, "{body}");
    let (status, body) = cluster.get_json("/v1/policy/rules", Some(&admin));
    assert_eq!(status, 503, "{body}");
    let (status, body) = cluster.post(
        "/v1/unseal",
        None,
        json!({"password": metacrypt_tests::SEAL_PASSWORD}),
    );
    assert_eq!(status, 200, "{body}");
    cluster.wait_for_state("unsealed");
    let (status, body) = cluster.get_json("/v1/policy/rules/mine", Some(&admin));
    assert_eq!(status, 200, "{body}");

    let (status, body) = cluster.call(Method::DELETE, "/v1/policy/rules/mine", Some(&user), None);
    assert_eq!(status, 403, "{body}");
    let (status, body) = cluster.call(Method::DELETE, "/v1/policy/rules/mine", Some(&admin), None);
    assert_eq!(status, 200, "{body}");
    let (status, body) = cluster.get_json("/v1/policy/rules/mine", Some(&admin));
    assert_eq!(status, 404, "{body}");
    let (status, body) = cluster.call(Method::DELETE, "/v1/policy/rules/mine", Some(&admin), None);
    assert_eq!(status, 404, "{body}");
}

#[test]
fn invalid_rules_are_rejected() {
    let (cluster, admin) = cluster_with_issuers(&[]);
    let valid = json!({"effect": "allow", "users": ["*"], "resources": ["pki/*"]});
    let cases: Vec<(&str, Value, &str)> = vec![
        ("Upper", valid.clone(), "lowercase"),
        ("a.b", valid.clone(), "invalid rule name"),
        (
            "r",
            json!({"effect": "allow", "users": ["*"], "resources": ["pki/is*"]}),
            "whole segment",
        ),
        (
            "r",
            json!({"effect": "allow", "users": ["*"], "resources": ["pki/**/x"]}),
            "last segment",
        ),
        (
            "r",
            json!({"effect": "allow", "users": ["*"], "resources": ["PKI/*"]}),
            "lowercase",
        ),
        (
            "r",
            json!({"effect": "allow", "resources": ["pki/*"]}),
            "applies to nobody",
        ),
        (
            "r",
            json!({"effect": "permit", "users": ["*"], "resources": ["pki/*"]}),
            "effect",
        ),
        (
            "r",
            json!({"effect": "allow", "users": ["*"], "resources": ["pki/*"], "extra": 1}),
            "extra",
        ),
    ];
    for (name, rule, expected) in cases {
        let (status, body) = put_rule(&cluster, &admin, name, rule.clone());
        assert_eq!(status, 400, "{name} {rule}: {body}");
        let message = body["error"].as_str().unwrap_or_default();
        assert!(message.contains(expected), "{name} {rule}: {message}");
    }
    let (status, body) = cluster.get_json("/v1/policy/rules", Some(&admin));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rules"], json!([]));
}

#[test]
fn non_canonical_requests_change_nothing() {
    let (cluster, admin) = cluster_with_issuers(&["default"]);
    let names = mount_names(&cluster, &admin);
    assert_eq!(names, ["pki"]);

    // Mount names in the body.
    for name in [
        "../ca",
        "ca/../../sys",
        "%2e%2e",
        "ca//x",
        "a b",
        "a\u{0}b",
        "Ca",
        "",
    ] {
        let (status, body) = cluster.post(
            "/v1/mounts",
            Some(&admin),
            json!({"name": name, "type": "ca", "config": {}}),
        );
        assert_eq!(status, 400, "{name:?}: {body}");
    }
    // Paths that are not canonical, sent as written.
    for (method, path) in [
        ("POST", "/v1/mounts/../mounts"),
        ("POST", "/v1/./mounts"),
        ("POST", "/v1//mounts"),
        ("POST", "/v1/mounts/"),
        ("POST", "/v1/pki/%2e%2e/issuers"),
        ("POST", "/v1/pki/pki%2f..%2fx/issuers"),
        ("POST", "/v1/pki/a%20b/issuers"),
        ("POST", "/v1/pki/a%00b/issuers"),
        ("POST", "/v1/pki/PKI/issuers"),
        ("DELETE", "/v1/mounts/pki/"),
        ("DELETE", "/v1/mounts/./pki"),
        ("DELETE", "/v1/mounts/%70ki"),
        ("DELETE", "/v1/mounts/x/../pki"),
    ] {
        let (status, body) = raw_request(&cluster, method, path, &admin);
        assert_eq!(status, 400, "{method} {path}: {body}");
        let message = body["error"].as_str().unwrap_or_default();
        assert!(message.starts_with("invalid path"), "{path}: {message}");
    }
    assert_eq!(mount_names(&cluster, &admin), names);
    let (status, body) = cluster.get_json("/v1/pki/pki/issuers", Some(&admin));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["issuers"].as_array().map(Vec::len), Some(1));

    // An uppercase issuer name in a body is a 400 too, not folded.
    let (status, body) = cluster.post("/v1/pki/pki/issuers", Some(&admin), json!({"name": "Web"}));
    assert_eq!(status, 400, "{body}");
    let (status, body) = cluster.post(
        "/v1/pki/pki/issue",
        Some(&admin),
        json!({"issuer": "DEFAULT", "profile": "client", "common_name": "x"}),
    );
    assert_eq!(status, 400, "{body}");
}
