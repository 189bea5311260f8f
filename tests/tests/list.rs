//! `list-certs` filters through the REST API of the real daemons.

use std::collections::BTreeSet;
use std::time::Duration;

use metacrypt_tests::{ADMIN_PASSWORD, ADMIN_USER, Cluster};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

fn common_names(cluster: &Cluster, token: &str, query: &str) -> BTreeSet<String> {
    let (status, body) = cluster.get_json(&format!("/v1/pki/pki/certs{query}"), Some(token));
    assert_eq!(status, 200, "{query}: {body}");
    body["certs"]
        .as_array()
        .expect("certs array")
        .iter()
        .map(|record| record["common_name"].as_str().unwrap().to_owned())
        .collect()
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|name| (*name).to_owned()).collect()
}

fn issue(cluster: &Cluster, token: &str, body: Value) -> Value {
    let (status, reply) = cluster.post("/v1/pki/pki/issue", Some(token), body.clone());
    assert_eq!(status, 200, "{body}: {reply}");
    reply
}

#[test]
fn list_certs_filters_combine() {
    let cluster = Cluster::start();
    cluster.init();
    let token = cluster.login(ADMIN_USER, ADMIN_PASSWORD);
    let (status, body) = cluster.post(
        "/v1/mounts",
        Some(&token),
        json!({"name": "pki", "type": "ca", "config": {}}),
    );
    assert_eq!(status, 200, "{body}");
    for name in ["web", "ops"] {
        let (status, body) =
            cluster.post("/v1/pki/pki/issuers", Some(&token), json!({"name": name}));
        assert_eq!(status, 200, "{body}");
    }

    issue(
        &cluster,
        &token,
        json!({"issuer": "web", "profile": "server", "common_name": "a.example.com", "ttl": "24h"}),
    );
    issue(
        &cluster,
        &token,
        json!({"issuer": "ops", "profile": "client", "common_name": "Client Bob",
               "email_addresses": ["bob@example.com"], "ttl": "72h"}),
    );
    let revoked = issue(
        &cluster,
        &token,
        json!({"issuer": "web", "profile": "peer", "common_name": "node.Example.com", "ttl": "72h"}),
    );
    issue(
        &cluster,
        &token,
        json!({"issuer": "web", "profile": "server", "common_name": "short.example.com", "ttl": "2s"}),
    );
    let serial = revoked["serial_number"].as_str().unwrap();
    let (status, body) = cluster.post(
        &format!("/v1/pki/pki/certs/{serial}/revoke"),
        Some(&token),
        json!({"reason": "superseded"}),
    );
    assert_eq!(status, 200, "{body}");
    // Let the 2-second certificate expire; NotAfter has whole seconds.
    std::thread::sleep(Duration::from_secs(4));

    let all = names(&[
        "a.example.com",
        "Client Bob",
        "node.example.com",
        "short.example.com",
    ]);
    assert_eq!(common_names(&cluster, &token, ""), all);
    assert_eq!(
        common_names(&cluster, &token, "?profile=client"),
        names(&["Client Bob"])
    );
    assert_eq!(
        common_names(&cluster, &token, "?issuer=ops"),
        names(&["Client Bob"])
    );
    assert_eq!(
        common_names(&cluster, &token, "?state=revoked"),
        names(&["node.example.com"])
    );
    assert_eq!(
        common_names(&cluster, &token, "?state=expired"),
        names(&["short.example.com"])
    );
    assert_eq!(
        common_names(&cluster, &token, "?state=valid"),
        names(&["a.example.com", "Client Bob"])
    );
    assert_eq!(
        common_names(&cluster, &token, "?common_name=EXAMPLE.COM&state=valid"),
        names(&["a.example.com"])
    );
    assert_eq!(
        common_names(&cluster, &token, "?common_name=bob"),
        names(&["Client Bob"])
    );
    let before = OffsetDateTime::now_utc() + time::Duration::hours(30);
    let before = before
        .replace_nanosecond(0)
        .unwrap()
        .format(&Rfc3339)
        .unwrap();
    assert_eq!(
        common_names(&cluster, &token, &format!("?expiring_before={before}")),
        names(&["a.example.com", "short.example.com"])
    );
    assert_eq!(
        common_names(&cluster, &token, "?issuer=web&profile=server&state=valid"),
        names(&["a.example.com"])
    );

    // Each record carries its state.
    let (status, body) = cluster.get_json("/v1/pki/pki/certs", Some(&token));
    assert_eq!(status, 200, "{body}");
    for record in body["certs"].as_array().unwrap() {
        let expected = match record["common_name"].as_str().unwrap() {
            "node.example.com" => "revoked",
            "short.example.com" => "expired",
            _ => "valid",
        };
        assert_eq!(record["state"], expected, "{record}");
    }

    // Filtered pages continue after the last serial they returned.
    let mut seen = BTreeSet::new();
    let mut after = String::new();
    for _ in 0..10 {
        let (status, page) = cluster.get_json(
            &format!("/v1/pki/pki/certs?profile=server&limit=1{after}"),
            Some(&token),
        );
        assert_eq!(status, 200, "{page}");
        for record in page["certs"].as_array().unwrap() {
            seen.insert(record["common_name"].as_str().unwrap().to_owned());
        }
        match page["next_after"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => break,
        }
    }
    assert_eq!(seen, names(&["a.example.com", "short.example.com"]));

    for (query, named) in [
        ("?state=bogus", "state"),
        ("?profile=admin", "profile"),
        ("?expiring_before=tomorrow", "expiring_before"),
    ] {
        let (status, body) = cluster.get_json(&format!("/v1/pki/pki/certs{query}"), Some(&token));
        assert_eq!(status, 400, "{query}: {body}");
        let message = body["error"].as_str().unwrap_or_default();
        assert!(message.contains(named), "{query}: {message}");
    }
}
