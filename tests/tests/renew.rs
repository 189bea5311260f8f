//! Renewal and issuer deletion through the REST API of the real daemons.

use std::process::Command;

use metacrypt_tests::{
    ADMIN_PASSWORD, ADMIN_USER, Cluster, USER, USER_PASSWORD, pem_certificates, run,
};
use serde_json::{Value, json};
use x509_parser::prelude::{FromDer, X509Certificate};

fn cluster_with_issuer() -> (Cluster, String) {
    let cluster = Cluster::start();
    cluster.init();
    let token = cluster.login(ADMIN_USER, ADMIN_PASSWORD);
    let (status, body) = cluster.post(
        "/v1/mounts",
        Some(&token),
        json!({"name": "pki", "type": "ca", "config": {}}),
    );
    assert_eq!(status, 200, "mount: {body}");
    let (status, body) = cluster.post("/v1/pki/pki/issuers", Some(&token), json!({"name": "web"}));
    assert_eq!(status, 200, "issuer: {body}");
    (cluster, token)
}

fn renew(cluster: &Cluster, token: &str, serial: &str, body: Value) -> (u16, Value) {
    cluster.post(
        &format!("/v1/pki/pki/certs/{serial}/renew"),
        Some(token),
        body,
    )
}

fn record(cluster: &Cluster, token: &str, serial: &str) -> Value {
    let (status, body) = cluster.get_json(&format!("/v1/pki/pki/certs/{serial}"), Some(token));
    assert_eq!(status, 200, "{body}");
    body
}

fn spki(pem: &str) -> Vec<u8> {
    let der = pem_certificates(pem).remove(0);
    let (_, cert) = X509Certificate::from_der(&der).expect("parse");
    cert.public_key().raw.to_vec()
}

fn subject_and_sans(pem: &str) -> (String, String) {
    let der = pem_certificates(pem).remove(0);
    let (_, cert) = X509Certificate::from_der(&der).expect("parse");
    let sans = cert
        .subject_alternative_name()
        .expect("SAN parses")
        .map(|san| format!("{:?}", san.value.general_names))
        .unwrap_or_default();
    (cert.subject().to_string(), sans)
}

#[test]
fn renew_keeps_names_and_links_records() {
    let (cluster, token) = cluster_with_issuer();
    let (status, old) = cluster.post(
        "/v1/pki/pki/issue",
        Some(&token),
        json!({"issuer": "web", "profile": "peer", "common_name": "node.example.com",
               "ip_addresses": ["192.0.2.10"], "uris": ["spiffe://example.com/node"],
               "key_algorithm": "ecdsa-p384", "ttl": "48h"}),
    );
    assert_eq!(status, 200, "{old}");
    let old_serial = old["serial_number"].as_str().unwrap().to_owned();

    // A user without the admin role may renew once a policy rule allows
    // renew for the certificate's issuer.
    let user = cluster.login(USER, USER_PASSWORD);
    let (status, body) = renew(&cluster, &user, &old_serial, json!({}));
    assert_eq!(status, 403, "{body}");
    let (status, body) = cluster.call(
        reqwest::Method::PUT,
        "/v1/policy/rules/renewers",
        Some(&token),
        Some(json!({"effect": "allow", "users": [USER], "resources": ["pki/renew/web"]})),
    );
    assert_eq!(status, 200, "{body}");
    let (status, new) = renew(&cluster, &user, &old_serial, json!({}));
    assert_eq!(status, 200, "{new}");
    let new_serial = new["serial_number"].as_str().unwrap().to_owned();
    assert_ne!(new_serial, old_serial);
    assert!(new["private_key"].as_str().unwrap().contains("PRIVATE KEY"));
    assert_ne!(new["private_key"], old["private_key"], "a new key pair");
    let old_pem = old["certificate"].as_str().unwrap();
    let new_pem = new["certificate"].as_str().unwrap();
    assert_ne!(spki(old_pem), spki(new_pem));
    assert_eq!(subject_and_sans(old_pem), subject_and_sans(new_pem));
    assert_eq!(new["issuing_ca"], old["issuing_ca"]);
    // Same lifetime as the old certificate when no TTL is given.
    let lifetime = |reply: &Value| {
        let parse = |field: &str| {
            time::OffsetDateTime::parse(
                reply[field].as_str().unwrap(),
                &time::format_description::well_known::Rfc3339,
            )
            .unwrap()
        };
        parse("not_after") - parse("not_before")
    };
    assert_eq!(lifetime(&new), lifetime(&old));

    let old_record = record(&cluster, &token, &old_serial);
    let new_record = record(&cluster, &token, &new_serial);
    assert_eq!(old_record["renewed_by"], new_serial.as_str());
    assert_eq!(new_record["renewed_from"], old_serial.as_str());
    assert_eq!(new_record["profile"], "peer");
    assert_eq!(new_record["key_algorithm"], "ecdsa-p384");
    assert_eq!(new_record["uris"], json!(["spiffe://example.com/node"]));

    // The old certificate stays listed, and it is renewed only once.
    let (status, page) = cluster.get_json("/v1/pki/pki/certs", Some(&token));
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["certs"].as_array().map(Vec::len), Some(2));
    let (status, body) = renew(&cluster, &token, &old_serial, json!({}));
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains(&new_serial)
    );

    let (status, body) = renew(&cluster, &token, &new_serial, json!({"ttl": "soon"}));
    assert_eq!(status, 400, "{body}");
    let (status, body) = renew(&cluster, &token, "7f00aa", json!({}));
    assert_eq!(status, 404, "{body}");
    let (status, body) = cluster.post(
        &format!("/v1/pki/pki/certs/{new_serial}/renew"),
        None,
        json!({}),
    );
    assert_eq!(status, 401, "{body}");

    // A revoked certificate is not renewed.
    let (status, body) = cluster.post(
        &format!("/v1/pki/pki/certs/{new_serial}/revoke"),
        Some(&token),
        json!({}),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = renew(&cluster, &token, &new_serial, json!({}));
    assert_eq!(status, 400, "{body}");
}

#[test]
fn renew_of_csr_certificate_keeps_the_key() {
    let (cluster, token) = cluster_with_issuer();
    let dir = cluster.path("renew");
    std::fs::create_dir_all(&dir).unwrap();
    let csr = dir.join("app.csr");
    run(Command::new("openssl")
        .args(["req", "-new", "-nodes", "-newkey", "ec", "-pkeyopt"])
        .arg("ec_paramgen_curve:P-256")
        .arg("-keyout")
        .arg(dir.join("app.key"))
        .args(["-subj", "/CN=app.example.com", "-out"])
        .arg(&csr));
    let (status, old) = cluster.post(
        "/v1/pki/pki/sign",
        Some(&token),
        json!({"issuer": "web", "profile": "server",
               "csr": std::fs::read_to_string(&csr).unwrap()}),
    );
    assert_eq!(status, 200, "{old}");
    let old_serial = old["serial_number"].as_str().unwrap();
    assert_eq!(record(&cluster, &token, old_serial)["csr_signed"], true);

    let (status, new) = renew(&cluster, &token, old_serial, json!({"ttl": "24h"}));
    assert_eq!(status, 200, "{new}");
    assert!(
        new.get("private_key").is_none(),
        "keyd has no key to return"
    );
    assert_eq!(
        spki(old["certificate"].as_str().unwrap()),
        spki(new["certificate"].as_str().unwrap())
    );
    let new_serial = new["serial_number"].as_str().unwrap();
    assert_eq!(record(&cluster, &token, new_serial)["csr_signed"], true);
}

/// Returns the key usage and extended key usage names of a certificate, as
/// x509-parser reads them.
fn usages(pem: &str) -> (Vec<&'static str>, Vec<&'static str>) {
    let der = pem_certificates(pem).remove(0);
    let (_, cert) = X509Certificate::from_der(&der).expect("parse");
    let key_usage = cert
        .key_usage()
        .expect("key usage parses")
        .expect("key usage");
    let mut key_usages = Vec::new();
    if key_usage.value.digital_signature() {
        key_usages.push("digitalSignature");
    }
    if key_usage.value.key_encipherment() {
        key_usages.push("keyEncipherment");
    }
    let extended = cert
        .extended_key_usage()
        .expect("extended key usage parses")
        .expect("extended key usage");
    let mut extended_key_usages = Vec::new();
    if extended.value.server_auth {
        extended_key_usages.push("serverAuth");
    }
    if extended.value.client_auth {
        extended_key_usages.push("clientAuth");
    }
    (key_usages, extended_key_usages)
}

#[test]
fn renew_keeps_usage_overrides() {
    let (cluster, token) = cluster_with_issuer();
    let cases = [
        (
            json!({"issuer": "web", "profile": "server", "common_name": "tls12.example.com",
                   "key_algorithm": "rsa-2048",
                   "key_usages": ["digitalSignature", "keyEncipherment"]}),
            (
                vec!["digitalSignature", "keyEncipherment"],
                vec!["serverAuth"],
            ),
        ),
        (
            json!({"issuer": "web", "profile": "peer", "common_name": "node.example.com",
                   "extended_key_usages": ["clientAuth"]}),
            (vec!["digitalSignature"], vec!["clientAuth"]),
        ),
        (
            json!({"issuer": "web", "profile": "peer", "common_name": "mesh.example.com"}),
            (vec!["digitalSignature"], vec!["serverAuth", "clientAuth"]),
        ),
    ];
    for (request, expected) in cases {
        let (status, old) = cluster.post("/v1/pki/pki/issue", Some(&token), request.clone());
        assert_eq!(status, 200, "{request}: {old}");
        let old_pem = old["certificate"].as_str().unwrap();
        assert_eq!(usages(old_pem), expected, "issued for {request}");

        let serial = old["serial_number"].as_str().unwrap();
        let (status, new) = renew(&cluster, &token, serial, json!({}));
        assert_eq!(status, 200, "{request}: {new}");
        let new_pem = new["certificate"].as_str().unwrap();
        assert_eq!(usages(new_pem), expected, "renewed from {request}");
    }
}

#[test]
fn delete_issuer_needs_force_while_certificates_are_active() {
    let (cluster, token) = cluster_with_issuer();
    let (status, body) = cluster.post(
        "/v1/pki/pki/issuers",
        Some(&token),
        json!({"name": "empty"}),
    );
    assert_eq!(status, 200, "{body}");
    let mut serials = Vec::new();
    for name in ["a.example.com", "b.example.com"] {
        let (status, body) = cluster.post(
            "/v1/pki/pki/issue",
            Some(&token),
            json!({"issuer": "web", "profile": "server", "common_name": name}),
        );
        assert_eq!(status, 200, "{body}");
        serials.push(body["serial_number"].as_str().unwrap().to_owned());
    }
    let delete = |name: &str, query: &str, token: &str| {
        cluster.call(
            reqwest::Method::DELETE,
            &format!("/v1/pki/pki/issuers/{name}{query}"),
            Some(token),
            None,
        )
    };

    let user = cluster.login(USER, USER_PASSWORD);
    let (status, body) = delete("empty", "", &user);
    assert_eq!(status, 403, "{body}");

    let (status, body) = delete("empty", "", &token);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["deleted"], "empty");
    assert_eq!(body["active_certificates"], 0);

    let (status, body) = delete("web", "", &token);
    assert_eq!(status, 409, "{body}");
    let message = body["error"].as_str().unwrap_or_default();
    assert!(message.contains("2 unexpired, unrevoked"), "{message}");
    assert!(message.contains("force=true"), "{message}");

    // Revoking one leaves one active certificate.
    let (status, body) = cluster.post(
        &format!("/v1/pki/pki/certs/{}/revoke", serials[0]),
        Some(&token),
        json!({}),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = delete("web", "", &token);
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("1 unexpired")
    );

    let (status, body) = delete("web", "?force=true", &token);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["active_certificates"], 1);

    let (status, body) = cluster.get_json("/v1/pki/pki/issuers", Some(&token));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["issuers"].as_array().map(Vec::len), Some(0));
    let (status, body) = delete("web", "", &token);
    assert_eq!(status, 404, "{body}");
    let (status, body) = cluster.post(
        "/v1/pki/pki/issue",
        Some(&token),
        json!({"issuer": "web", "profile": "server", "common_name": "c.example.com"}),
    );
    assert_eq!(status, 404, "{body}");
    // The records stay listed.
    let (status, body) = cluster.get_json("/v1/pki/pki/certs", Some(&token));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["certs"].as_array().map(Vec::len), Some(2));
    // The name stays taken, so no new issuer becomes the signer of record
    // of the old certificates.
    let (status, body) = cluster.post("/v1/pki/pki/issuers", Some(&token), json!({"name": "web"}));
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("belonged to a deleted issuer"),
        "{body}"
    );

    // The deletion survives a restart: the issuer does not come back.
    let mut cluster = cluster;
    cluster.stop_keyd();
    cluster.start_keyd();
    cluster.wait_for_state("sealed");
    let (status, body) = cluster.post(
        "/v1/unseal",
        None,
        json!({"password": metacrypt_tests::SEAL_PASSWORD}),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = cluster.get_json("/v1/pki/pki/issuers", Some(&token));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["issuers"].as_array().map(Vec::len), Some(0));
}
