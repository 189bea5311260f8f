//! Revocation and CRLs through the REST API of the real daemons, checked
//! with x509-parser and the `openssl` command.

use std::path::{Path, PathBuf};
use std::process::Command;

use metacrypt_tests::{ADMIN_PASSWORD, ADMIN_USER, Cluster, USER, USER_PASSWORD};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

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

fn issue(cluster: &Cluster, token: &str, common_name: &str) -> Value {
    let (status, body) = cluster.post(
        "/v1/pki/pki/issue",
        Some(token),
        json!({"issuer": "web", "profile": "server", "common_name": common_name}),
    );
    assert_eq!(status, 200, "{body}");
    body
}

fn revoke(cluster: &Cluster, token: Option<&str>, serial: &str, body: Value) -> (u16, Value) {
    cluster.post(&format!("/v1/pki/pki/certs/{serial}/revoke"), token, body)
}

fn crl_der(cluster: &Cluster) -> Vec<u8> {
    let response = cluster.get("/v1/pki/pki/crl?issuer=web").expect("GET crl");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/pkix-crl")
    );
    response.bytes().expect("CRL body").to_vec()
}

/// Returns (CRL number, revoked serials with reason codes, thisUpdate,
/// nextUpdate).
fn parse_crl(der: &[u8]) -> (u64, Vec<(String, Option<u8>)>, i64, i64) {
    let (rest, crl) = CertificateRevocationList::from_der(der).expect("parse CRL");
    assert!(rest.is_empty(), "trailing data after the CRL");
    let number = crl
        .crl_number()
        .expect("CRL number present")
        .to_u64_digits()
        .first()
        .copied()
        .unwrap_or(0);
    let revoked = crl
        .iter_revoked_certificates()
        .map(|entry| {
            let reason = entry.reason_code().map(|(_, code)| code.0);
            (hex::encode(entry.raw_serial()), reason)
        })
        .collect();
    let next = crl.next_update().expect("nextUpdate present").timestamp();
    (number, revoked, crl.last_update().timestamp(), next)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write file");
    path
}

fn openssl_output(command: &mut Command) -> String {
    let output = command.output().expect("run openssl");
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn revoke_is_idempotent_and_listed_in_the_crl() {
    let (cluster, token) = cluster_with_issuer();
    let dir = cluster.path("crl");
    std::fs::create_dir_all(&dir).unwrap();
    let first = issue(&cluster, &token, "first.example.com");
    let second = issue(&cluster, &token, "second.example.com");
    let kept = issue(&cluster, &token, "kept.example.com");
    let first_serial = first["serial_number"].as_str().unwrap().to_owned();
    let second_serial = second["serial_number"].as_str().unwrap().to_owned();

    // Before any revocation the CRL is empty, number 1, signed by the
    // issuer, and served without a token.
    let empty = crl_der(&cluster);
    let (number, revoked, this_update, next_update) = parse_crl(&empty);
    assert_eq!(number, 1);
    assert!(revoked.is_empty(), "{revoked:?}");
    assert!(next_update > this_update);
    assert!(next_update - this_update <= 7 * 86_400);
    let issuer_pem = first["issuing_ca"].as_str().unwrap();
    let issuer_path = write(&dir, "issuer.pem", issuer_pem.as_bytes());
    let crl_path = write(&dir, "empty.crl", &empty);
    let output = openssl_output(
        Command::new("openssl")
            .args(["crl", "-inform", "DER", "-noout", "-verify", "-in"])
            .arg(&crl_path)
            .arg("-CAfile")
            .arg(&issuer_path),
    );
    assert!(output.contains("verify OK"), "{output}");

    let (status, record) = revoke(
        &cluster,
        Some(&token),
        &first_serial,
        json!({"reason": "keyCompromise"}),
    );
    assert_eq!(status, 200, "{record}");
    assert_eq!(record["revocation_reason"], "keyCompromise");
    let revoked_at = OffsetDateTime::parse(record["revoked_at"].as_str().unwrap(), &Rfc3339)
        .expect("RFC 3339 revoked_at");
    assert!(
        (OffsetDateTime::now_utc() - revoked_at)
            .whole_seconds()
            .abs()
            < 60
    );

    // Again, with another reason: the first revocation stands.
    let (status, again) = revoke(
        &cluster,
        Some(&token),
        &first_serial,
        json!({"reason": "superseded"}),
    );
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["revoked_at"], record["revoked_at"]);
    assert_eq!(again["revocation_reason"], "keyCompromise");

    // A user without the admin role may revoke once a policy rule allows
    // revoke for the certificate's issuer, and the reason is optional.
    let user = cluster.login(USER, USER_PASSWORD);
    let allow = |resource: &str| {
        let (status, body) = cluster.call(
            reqwest::Method::PUT,
            "/v1/policy/rules/revokers",
            Some(&token),
            Some(json!({"effect": "allow", "users": [USER], "resources": [resource]})),
        );
        assert_eq!(status, 200, "{body}");
    };
    let (status, body) = revoke(&cluster, Some(&user), &second_serial, json!({}));
    assert_eq!(status, 403, "{body}");
    allow("pki/revoke/other");
    let (status, body) = revoke(&cluster, Some(&user), &second_serial, json!({}));
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("pki/revoke/web"),
        "{body}"
    );
    allow("pki/revoke/web");
    let (status, record) = revoke(&cluster, Some(&user), &second_serial, json!({}));
    assert_eq!(status, 200, "{record}");
    assert_eq!(record["revocation_reason"], "unspecified");

    let (status, body) = revoke(&cluster, None, &second_serial, json!({}));
    assert_eq!(status, 401, "{body}");
    let (status, body) = revoke(
        &cluster,
        Some(&token),
        &first_serial,
        json!({"reason": "cACompromise"}),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("cACompromise")
    );
    let (status, body) = revoke(&cluster, Some(&token), "7f00aa", json!({}));
    assert_eq!(status, 404, "{body}");
    let (status, body) = revoke(&cluster, Some(&token), "not-hex", json!({}));
    assert_eq!(status, 400, "{body}");

    let (status, record) =
        cluster.get_json(&format!("/v1/pki/pki/certs/{first_serial}"), Some(&token));
    assert_eq!(status, 200, "{record}");
    assert_eq!(record["revocation_reason"], "keyCompromise");

    // The CRL lists both, keyCompromise with reason code 1 and the
    // unspecified one without a reasonCode, under a higher number.
    let der = crl_der(&cluster);
    let (number, mut revoked, _, _) = parse_crl(&der);
    assert!(number > 1, "CRL number {number}");
    revoked.sort();
    let mut expected = vec![
        (first_serial.clone(), Some(1)),
        (second_serial.clone(), None),
    ];
    expected.sort();
    assert_eq!(revoked, expected);

    // openssl rejects the revoked certificate and accepts the other with
    // the CRL.
    let root = cluster.get("/v1/pki/pki/ca").unwrap().text().unwrap();
    let root_path = write(&dir, "root.pem", root.as_bytes());
    let crl_pem = cluster
        .get("/v1/pki/pki/crl?issuer=web&format=pem")
        .unwrap()
        .text()
        .unwrap();
    assert!(
        crl_pem.starts_with("-----BEGIN X509 CRL-----\n"),
        "{crl_pem}"
    );
    let crl_pem_path = write(&dir, "crl.pem", crl_pem.as_bytes());
    for (leaf, expect_ok) in [(&first, false), (&kept, true)] {
        let leaf_path = write(
            &dir,
            "leaf.pem",
            leaf["certificate"].as_str().unwrap().as_bytes(),
        );
        let output = openssl_output(
            Command::new("openssl")
                .args(["verify", "-x509_strict", "-crl_check", "-CAfile"])
                .arg(&root_path)
                .arg("-untrusted")
                .arg(&issuer_path)
                .arg("-CRLfile")
                .arg(&crl_pem_path)
                .arg(&leaf_path),
        );
        if expect_ok {
            assert!(output.contains(": OK"), "{output}");
        } else {
            assert!(output.contains("certificate revoked"), "{output}");
        }
    }
}

#[test]
fn crl_route_formats_and_errors() {
    let (cluster, _token) = cluster_with_issuer();
    let accept_pem = cluster
        .http()
        .get(cluster.url("/v1/pki/pki/crl?issuer=web"))
        .header("Accept", "application/x-pem-file")
        .send()
        .expect("GET crl");
    assert_eq!(accept_pem.status().as_u16(), 200);
    let text = accept_pem.text().unwrap();
    assert!(text.starts_with("-----BEGIN X509 CRL-----\n"), "{text}");
    let der = cluster
        .get("/v1/pki/pki/crl?issuer=web&format=der")
        .unwrap()
        .bytes()
        .unwrap();
    assert!(CertificateRevocationList::from_der(&der).is_ok());

    for (path, status) in [
        ("/v1/pki/pki/crl?issuer=web&format=txt", 400),
        ("/v1/pki/pki/crl", 400),
        ("/v1/pki/pki/crl?issuer=missing", 404),
        ("/v1/pki/other/crl?issuer=web", 404),
    ] {
        let response = cluster.get(path).expect("GET");
        assert_eq!(response.status().as_u16(), status, "{path}");
    }
}

#[test]
fn public_base_url_adds_crl_distribution_point() {
    let cluster = Cluster::start();
    cluster.init();
    let token = cluster.login(ADMIN_USER, ADMIN_PASSWORD);
    for bad in [
        "ftp://pki.example.com",
        "http://pki.example.com/?x=1",
        "pki.example.com",
    ] {
        let (status, body) = cluster.post(
            "/v1/mounts",
            Some(&token),
            json!({"name": "bad", "type": "ca", "config": {"public_base_url": bad}}),
        );
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap_or_default()
                .contains("public_base_url"),
            "{body}"
        );
    }
    let (status, body) = cluster.get_json("/v1/mounts", Some(&token));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["mounts"].as_array().map(Vec::len), Some(0));

    let (status, body) = cluster.post(
        "/v1/mounts",
        Some(&token),
        json!({"name": "pki", "type": "ca",
               "config": {"public_base_url": "http://PKI.Example.com/"}}),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = cluster.post("/v1/pki/pki/issuers", Some(&token), json!({"name": "web"}));
    assert_eq!(status, 200, "{body}");
    let leaf = issue(&cluster, &token, "app.example.com");
    let der = metacrypt_tests::pem_certificates(leaf["certificate"].as_str().unwrap()).remove(0);
    let (_, cert) = x509_parser::prelude::X509Certificate::from_der(&der).expect("parse");
    let points: Vec<String> = cert
        .extensions()
        .iter()
        .filter_map(|extension| match extension.parsed_extension() {
            x509_parser::extensions::ParsedExtension::CRLDistributionPoints(points) => {
                Some(format!("{points:?}"))
            }
            _ => None,
        })
        .collect();
    assert_eq!(points.len(), 1, "one CRL distribution point extension");
    assert!(
        points[0].contains("http://pki.example.com/v1/pki/pki/crl?issuer=web"),
        "{}",
        points[0]
    );
}
