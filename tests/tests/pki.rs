//! The CA engine through the REST API of the real daemons: mounts, issuers,
//! issuance for every profile and key algorithm, strict verification with
//! openssl, parsed-field checks, and a real TLS handshake with an issued
//! certificate.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

use metacrypt_tests::{ADMIN_PASSWORD, ADMIN_USER, Cluster, USER, USER_PASSWORD, pem_certificates};
use serde_json::{Value, json};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

const PROFILES: [&str; 3] = ["server", "client", "peer"];
const KEY_ALGORITHMS: [&str; 6] = [
    "ecdsa-p256",
    "ecdsa-p384",
    "ed25519",
    "rsa-2048",
    "rsa-3072",
    "rsa-4096",
];

/// Starts an initialized cluster with a CA mount `pki` and issuer `default`.
fn cluster_with_ca() -> (Cluster, String) {
    let cluster = Cluster::start();
    cluster.init();
    let token = cluster.login(ADMIN_USER, ADMIN_PASSWORD);
    let (status, body) = cluster.post(
        "/v1/mounts",
        Some(&token),
        json!({"name": "pki", "type": "ca", "config": {
            "common_name": "Test Root CA", "organization": "Metacrypt Tests"}}),
    );
    assert_eq!(status, 200, "mount: {body}");
    let (status, body) = cluster.post(
        "/v1/pki/pki/issuers",
        Some(&token),
        json!({"name": "default"}),
    );
    assert_eq!(status, 200, "create issuer: {body}");
    (cluster, token)
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    path
}

fn openssl_verify(dir: &Path, root: &str, chain: &[String], leaf: &str, purpose: Option<&str>) {
    let root_path = write(dir, "root.pem", root);
    let untrusted = write(dir, "untrusted.pem", &chain.concat());
    let leaf_path = write(dir, "leaf.pem", leaf);
    let mut command = Command::new("openssl");
    command
        .args(["verify", "-x509_strict", "-CAfile"])
        .arg(&root_path)
        .arg("-untrusted")
        .arg(&untrusted);
    if let Some(purpose) = purpose {
        command.args(["-purpose", purpose]);
    }
    let output = command
        .arg(&leaf_path)
        .output()
        .expect("run openssl verify");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains(": OK"),
        "openssl verify failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    X509Certificate::from_der(der).expect("parse certificate").1
}

fn subject_key_id(cert: &X509Certificate<'_>) -> Vec<u8> {
    cert.extensions()
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
            _ => None,
        })
        .expect("subjectKeyIdentifier present")
}

fn authority_key_id(cert: &X509Certificate<'_>) -> Vec<u8> {
    cert.extensions()
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|id| id.0.to_vec())
            }
            _ => None,
        })
        .expect("authorityKeyIdentifier with a key id present")
}

#[test]
fn issue_every_profile_and_key_algorithm() {
    let (cluster, token) = cluster_with_ca();
    let work = cluster.path("verify");
    std::fs::create_dir_all(&work).expect("create work dir");

    let root_pem = cluster
        .get("/v1/pki/pki/ca")
        .expect("GET root")
        .text()
        .expect("root text");
    let root_der = pem_certificates(&root_pem).remove(0);
    let root = parse(&root_der);
    let mut serials = HashSet::new();

    for profile in PROFILES {
        for algorithm in KEY_ALGORITHMS {
            let (status, body) = cluster.post(
                "/v1/pki/pki/issue",
                Some(&token),
                json!({
                    "issuer": "default",
                    "profile": profile,
                    "common_name": "App.Example.com",
                    "dns_names": ["alt.example.com"],
                    "ip_addresses": ["192.0.2.10", "2001:db8::1"],
                    "ttl": "24h",
                    "key_algorithm": algorithm,
                }),
            );
            assert_eq!(status, 200, "{profile}/{algorithm}: {body}");
            let leaf_pem = body["certificate"].as_str().expect("certificate");
            let chain: Vec<String> = body["chain"]
                .as_array()
                .expect("chain")
                .iter()
                .map(|pem| pem.as_str().expect("chain PEM").to_owned())
                .collect();
            assert_eq!(chain.len(), 2, "chain is issuer then root");
            assert_eq!(body["issuing_ca"].as_str(), Some(chain[0].as_str()));
            let key = body["private_key"].as_str().expect("private key");
            assert!(key.contains("BEGIN PRIVATE KEY"), "PKCS#8 key");
            let expected_type = match algorithm {
                "ed25519" => "ed25519",
                "rsa-2048" | "rsa-3072" | "rsa-4096" => "rsa",
                _ => "ec",
            };
            assert_eq!(body["private_key_type"], expected_type);

            let purpose = match profile {
                "server" => Some("sslserver"),
                "client" => Some("sslclient"),
                _ => None,
            };
            openssl_verify(&work, &root_pem, &chain[..1], leaf_pem, purpose);

            let leaf_der = pem_certificates(leaf_pem).remove(0);
            let leaf = parse(&leaf_der);
            let issuer_der = pem_certificates(&chain[0]).remove(0);
            let issuer = parse(&issuer_der);
            check_leaf(profile, algorithm, &leaf, &issuer);
            assert_eq!(authority_key_id(&issuer), subject_key_id(&root));

            let serial = body["serial_number"].as_str().expect("serial").to_owned();
            assert_eq!(serial, hex::encode(leaf.raw_serial()));
            assert!(serials.insert(serial), "serial repeated");
        }
    }

    let (status, body) = cluster.get_json("/v1/pki/pki/certs", Some(&token));
    assert_eq!(status, 200, "{body}");
    let listed = body["certs"].as_array().expect("certs array");
    assert_eq!(listed.len(), PROFILES.len() * KEY_ALGORITHMS.len());
    for record in listed {
        assert!(record.get("private_key").is_none(), "no key in listings");
    }
}

fn check_leaf(
    profile: &str,
    algorithm: &str,
    leaf: &X509Certificate<'_>,
    issuer: &X509Certificate<'_>,
) {
    let context = format!("{profile}/{algorithm}");
    assert_eq!(
        authority_key_id(leaf),
        subject_key_id(issuer),
        "{context}: AKI"
    );
    assert!(
        leaf.validity().not_after <= issuer.validity().not_after,
        "{context}: leaf outlives issuer"
    );
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let not_before = leaf.validity().not_before.timestamp();
    assert!(not_before <= now - 20, "{context}: NotBefore not backdated");
    assert!(not_before >= now - 300, "{context}: NotBefore too far back");

    let serial = leaf.raw_serial();
    assert!(
        serial.len() <= 20,
        "{context}: serial longer than 20 octets"
    );
    assert!(serial[0] & 0x80 == 0, "{context}: serial negative");
    assert!(serial.len() >= 8, "{context}: serial under 64 bits");

    let basic = leaf
        .basic_constraints()
        .expect("basicConstraints parses")
        .map(|ext| ext.value.ca);
    assert_ne!(basic, Some(true), "{context}: leaf is a CA");

    let key_usage = leaf
        .key_usage()
        .expect("keyUsage parses")
        .expect("keyUsage present");
    assert!(key_usage.critical, "{context}: keyUsage critical");
    assert!(
        key_usage.value.digital_signature(),
        "{context}: digitalSignature"
    );
    assert!(
        !key_usage.value.key_cert_sign(),
        "{context}: keyCertSign on a leaf"
    );
    assert!(
        !key_usage.value.key_encipherment(),
        "{context}: keyEncipherment"
    );

    let eku = leaf
        .extended_key_usage()
        .expect("EKU parses")
        .expect("EKU present")
        .value;
    match profile {
        "server" => {
            assert!(eku.server_auth, "{context}: serverAuth");
            assert!(!eku.client_auth, "{context}: no clientAuth");
        }
        "client" => {
            assert!(eku.client_auth, "{context}: clientAuth");
            assert!(!eku.server_auth, "{context}: no serverAuth");
        }
        _ => {
            assert!(eku.server_auth, "{context}: serverAuth");
            assert!(eku.client_auth, "{context}: clientAuth");
        }
    }

    let san = leaf
        .subject_alternative_name()
        .expect("SAN parses")
        .expect("SAN present")
        .value;
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    for name in &san.general_names {
        match name {
            GeneralName::DNSName(text) => dns.push(text.to_string()),
            GeneralName::IPAddress(bytes) => ips.push(bytes.to_vec()),
            other => panic!("{context}: unexpected SAN {other:?}"),
        }
    }
    if profile != "client" {
        assert!(
            dns.contains(&"app.example.com".to_owned()),
            "{context}: lowercased CN is a DNS SAN: {dns:?}"
        );
    }
    assert!(
        dns.contains(&"alt.example.com".to_owned()),
        "{context}: {dns:?}"
    );
    for text in &dns {
        assert_eq!(text, &text.to_lowercase(), "{context}: DNS name case");
        assert!(text.parse::<IpAddr>().is_err(), "{context}: IP as dNSName");
    }
    let v4: IpAddr = "192.0.2.10".parse().unwrap();
    let v6: IpAddr = "2001:db8::1".parse().unwrap();
    let IpAddr::V4(v4) = v4 else { unreachable!() };
    let IpAddr::V6(v6) = v6 else { unreachable!() };
    assert!(
        ips.contains(&v4.octets().to_vec()),
        "{context}: 4-octet IP SAN"
    );
    assert!(
        ips.contains(&v6.octets().to_vec()),
        "{context}: 16-octet IP SAN"
    );
}

#[test]
fn ca_certificates_have_ca_extensions() {
    let (cluster, _token) = cluster_with_ca();
    let chain_pem = cluster
        .get("/v1/pki/pki/ca/chain")
        .expect("GET chain")
        .text()
        .expect("chain text");
    let ders = pem_certificates(&chain_pem);
    assert_eq!(ders.len(), 2, "issuer then root");
    let issuer = parse(&ders[0]);
    let root = parse(&ders[1]);
    assert_eq!(root.subject(), root.issuer(), "root is self-signed");
    assert_eq!(issuer.issuer(), root.subject());
    assert!(
        root.subject().to_string().contains("Test Root CA"),
        "root CN from the mount config"
    );

    for (name, cert) in [("root", &root), ("issuer", &issuer)] {
        let basic = cert
            .basic_constraints()
            .expect("basicConstraints parses")
            .expect("basicConstraints present");
        assert!(basic.critical, "{name}: basicConstraints critical");
        assert!(basic.value.ca, "{name}: CA:TRUE");
        let key_usage = cert
            .key_usage()
            .expect("keyUsage parses")
            .expect("keyUsage present");
        assert!(key_usage.critical, "{name}: keyUsage critical");
        assert!(key_usage.value.key_cert_sign(), "{name}: keyCertSign");
        assert!(key_usage.value.crl_sign(), "{name}: cRLSign");
        subject_key_id(cert);
    }
    let issuer_basic = issuer.basic_constraints().unwrap().unwrap().value;
    assert_eq!(
        issuer_basic.path_len_constraint,
        Some(0),
        "issuer pathlen 0"
    );
    assert_eq!(authority_key_id(&issuer), subject_key_id(&root));
    assert!(issuer.validity().not_after <= root.validity().not_after);

    // Default algorithms: root P-384, issuer P-256.
    let root_key = root.public_key().parsed().expect("root key");
    let issuer_key = issuer.public_key().parsed().expect("issuer key");
    use x509_parser::public_key::PublicKey;
    assert!(matches!(root_key, PublicKey::EC(point) if point.key_size() == 384));
    assert!(matches!(issuer_key, PublicKey::EC(point) if point.key_size() == 256));

    // The issuer route serves the same certificate as the chain.
    let issuer_pem = cluster
        .get("/v1/pki/pki/issuer/default")
        .expect("GET issuer")
        .text()
        .expect("issuer text");
    assert_eq!(pem_certificates(&issuer_pem)[0], ders[0]);
}

#[test]
fn issued_server_certificate_serves_tls() {
    let (cluster, token) = cluster_with_ca();
    let (status, body) = cluster.post(
        "/v1/pki/pki/issue",
        Some(&token),
        json!({"issuer": "default", "profile": "server", "common_name": "localhost",
               "ip_addresses": ["127.0.0.1"], "ttl": "1h"}),
    );
    assert_eq!(status, 200, "{body}");
    let dir = cluster.path("tls");
    std::fs::create_dir_all(&dir).expect("create tls dir");
    let cert = write(&dir, "server.pem", body["certificate"].as_str().unwrap());
    let key = write(&dir, "server.key", body["private_key"].as_str().unwrap());
    let intermediate = write(&dir, "intermediate.pem", body["chain"][0].as_str().unwrap());
    let root = write(&dir, "root.pem", body["chain"][1].as_str().unwrap());

    let (mut server, port) = metacrypt_tests::openssl_server(&cert, &key, &intermediate);
    let output = Command::new("curl")
        .args([
            "--silent",
            "--show-error",
            "--fail",
            "--max-time",
            "10",
            "--cacert",
        ])
        .arg(&root)
        .arg(format!("https://localhost:{port}/"))
        .output()
        .expect("run curl");
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        output.status.success(),
        "curl --cacert root rejected the issued certificate: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn user_allowed_by_policy_may_issue_but_not_administer() {
    let (cluster, admin) = cluster_with_ca();
    let user = cluster.login(USER, USER_PASSWORD);
    let (status, body) = cluster.call(
        reqwest::Method::PUT,
        "/v1/policy/rules/ops-issue",
        Some(&admin),
        Some(json!({"effect": "allow", "roles": ["ops"],
                    "resources": ["pki/issue/*", "pki/get-cert"]})),
    );
    assert_eq!(status, 200, "{body}");

    let (status, body) = cluster.post(
        "/v1/pki/pki/issue",
        Some(&user),
        json!({"issuer": "default", "profile": "client", "common_name": "bob",
               "email_addresses": ["bob@example.com"]}),
    );
    assert_eq!(status, 200, "{body}");
    let serial = body["serial_number"].as_str().expect("serial").to_owned();
    let (status, body) = cluster.get_json(&format!("/v1/pki/pki/certs/{serial}"), Some(&user));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["issued_by"], USER);

    let (status, body) = cluster.post(
        "/v1/mounts",
        Some(&user),
        json!({"name": "other", "type": "ca", "config": {}}),
    );
    assert_eq!(status, 403, "{body}");
    let (status, body) = cluster.post("/v1/pki/pki/issuers", Some(&user), json!({"name": "mine"}));
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        body["error"],
        format!("permission denied: no rule allows pki/create-issuer/mine for {USER}")
    );
}

#[test]
fn requests_without_valid_token_are_rejected() {
    let (cluster, _admin) = cluster_with_ca();
    let issue = json!({"issuer": "default", "profile": "server", "common_name": "a.example.com"});
    let (status, body) = cluster.post("/v1/pki/pki/issue", None, issue.clone());
    assert_eq!(status, 401, "{body}");
    let (status, body) = cluster.post("/v1/pki/pki/issue", Some("not-a-token"), issue);
    assert_eq!(status, 401, "{body}");
    let (status, body) = cluster.post(
        "/v1/auth/login",
        None,
        json!({"username": ADMIN_USER, "password": "wrong"}),
    );
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "invalid credentials");
}

#[test]
fn bad_requests_get_clear_errors() {
    let (cluster, token) = cluster_with_ca();
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"issuer": "default", "profile": "server", "common_name": "a.example.com", "colour": "red"}),
            "colour",
        ),
        (
            json!({"issuer": "default", "profile": "server", "common_name": "Example Server A"}),
            "Example Server A",
        ),
        (
            json!({"issuer": "default", "profile": "server", "common_name": "*.*.example.com"}),
            "*.*.example.com",
        ),
        (
            json!({"issuer": "default", "profile": "server", "common_name": "a.example.com", "ttl": "soon"}),
            "soon",
        ),
        (
            json!({"issuer": "default", "profile": "admin", "common_name": "a.example.com"}),
            "admin",
        ),
        (
            json!({"issuer": "default", "profile": "server", "common_name": "a.example.com", "ip_addresses": ["300.1.1.1"]}),
            "300.1.1.1",
        ),
    ];
    for (body, named) in cases {
        let (status, reply) = cluster.post("/v1/pki/pki/issue", Some(&token), body.clone());
        assert_eq!(status, 400, "{body} → {reply}");
        let message = reply["error"].as_str().unwrap_or_default();
        assert!(
            message.contains(named),
            "{body}: message {message:?} names {named}"
        );
    }

    let (status, reply) = cluster.post(
        "/v1/pki/pki/issue",
        Some(&token),
        json!({"issuer": "missing", "profile": "server", "common_name": "a.example.com"}),
    );
    assert_eq!(status, 404, "{reply}");

    let (status, reply) = cluster.post(
        "/v1/mounts",
        Some(&token),
        json!({"name": "../ca", "type": "ca", "config": {}}),
    );
    assert_eq!(status, 400, "{reply}");
    let (status, reply) = cluster.post(
        "/v1/mounts",
        Some(&token),
        json!({"name": "pki", "type": "ca", "config": {}}),
    );
    assert_eq!(status, 409, "{reply}");

    // Nothing was stored by the rejected requests.
    let (status, reply) = cluster.get_json("/v1/pki/pki/certs", Some(&token));
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["certs"].as_array().map(Vec::len), Some(0));
}

#[test]
fn ttl_is_capped_at_the_issuer_expiry() {
    let cluster = Cluster::start();
    cluster.init();
    let token = cluster.login(ADMIN_USER, ADMIN_PASSWORD);
    let (status, body) = cluster.post(
        "/v1/mounts",
        Some(&token),
        json!({"name": "pki", "type": "ca", "config": {}}),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = cluster.post(
        "/v1/pki/pki/issuers",
        Some(&token),
        json!({"name": "short", "ttl": "240h"}),
    );
    assert_eq!(status, 200, "{body}");
    let issuer_not_after = time::OffsetDateTime::parse(
        body["not_after"].as_str().expect("not_after"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("RFC 3339 not_after");

    let (status, body) = cluster.post(
        "/v1/pki/pki/issue",
        Some(&token),
        json!({"issuer": "short", "profile": "server", "common_name": "a.example.com",
               "ttl": "720h"}),
    );
    assert_eq!(status, 200, "{body}");
    let leaf_not_after = time::OffsetDateTime::parse(
        body["not_after"].as_str().expect("not_after"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("RFC 3339 not_after");
    assert!(leaf_not_after <= issuer_not_after);
    let warnings = body["warnings"].as_array().expect("warnings array");
    assert!(!warnings.is_empty(), "the response says the TTL was capped");
}

#[test]
fn unmount_removes_the_mount() {
    let (cluster, token) = cluster_with_ca();
    let (status, body) = cluster.get_json("/v1/mounts", Some(&token));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["mounts"][0]["name"], "pki");
    assert_eq!(body["mounts"][0]["type"], "ca");

    let (status, body) = cluster.call(
        reqwest::Method::DELETE,
        "/v1/mounts/pki",
        Some(&token),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = cluster.get_json("/v1/mounts", Some(&token));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["mounts"].as_array().map(Vec::len), Some(0));
    let response = cluster.get("/v1/pki/pki/ca").expect("GET root");
    assert_eq!(response.status().as_u16(), 404);
}

#[test]
fn certificates_survive_seal_and_restart() {
    let (mut cluster, token) = cluster_with_ca();
    let (status, body) = cluster.post(
        "/v1/pki/pki/issue",
        Some(&token),
        json!({"issuer": "default", "profile": "server", "common_name": "keep.example.com"}),
    );
    assert_eq!(status, 200, "{body}");
    let serial = body["serial_number"].as_str().unwrap().to_owned();
    let root_before = cluster.get("/v1/pki/pki/ca").unwrap().text().unwrap();

    cluster.stop_keyd();
    cluster.start_keyd();
    cluster.wait_for_state("sealed");
    let (status, _) = cluster.get_json(&format!("/v1/pki/pki/certs/{serial}"), Some(&token));
    assert_eq!(status, 503, "sealed after restart");
    let (status, body) = cluster.post(
        "/v1/unseal",
        None,
        json!({"password": metacrypt_tests::SEAL_PASSWORD}),
    );
    assert_eq!(status, 200, "{body}");

    let (status, body) = cluster.get_json(&format!("/v1/pki/pki/certs/{serial}"), Some(&token));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["common_name"], "keep.example.com");
    let root_after = cluster.get("/v1/pki/pki/ca").unwrap().text().unwrap();
    assert_eq!(root_before, root_after);

    // The issuer key came back too: issuing still works.
    let (status, body) = cluster.post(
        "/v1/pki/pki/issue",
        Some(&token),
        json!({"issuer": "default", "profile": "server", "common_name": "again.example.com"}),
    );
    assert_eq!(status, 200, "{body}");
}
