//! The Authority Information Access extension through the REST API of the
//! real daemons. The mount's public base URL names the test's frontd. The
//! caIssuers URI of every issued, CSR-signed and renewed leaf and of every
//! issuer is fetched from frontd and must return the signer's certificate
//! in DER. The tests also check the PEM and DER negotiation of the
//! certificate and CRL downloads.

use std::process::Command;

use metacrypt_tests::{ADMIN_PASSWORD, ADMIN_USER, Cluster};
use serde_json::{Value, json};
use x509_parser::extensions::{DistributionPointName, GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_PKIX_ACCESS_DESCRIPTOR_CA_ISSUERS, OID_PKIX_AUTHORITY_INFO_ACCESS,
};
use x509_parser::prelude::{FromDer, X509Certificate};

const PEM_CONTENT_TYPE: &str = "application/x-pem-file";
const DER_CONTENT_TYPE: &str = "application/pkix-cert";
const CRL_CONTENT_TYPE: &str = "application/pkix-crl";

fn der_of(pem: &str) -> Vec<u8> {
    let mut blocks = metacrypt_tests::pem_certificates(pem);
    assert_eq!(blocks.len(), 1, "one certificate in {pem}");
    blocks.remove(0)
}

/// Returns the caIssuers URIs of the certificate's Authority Information
/// Access extension, and `None` without the extension. The extension must
/// be non-critical and hold only caIssuers URIs.
fn ca_issuers(der: &[u8]) -> Option<Vec<String>> {
    let (rest, cert) = X509Certificate::from_der(der).expect("parse certificate");
    assert!(rest.is_empty(), "trailing data after the certificate");
    let extension = cert
        .iter_extensions()
        .find(|extension| extension.oid == OID_PKIX_AUTHORITY_INFO_ACCESS)?;
    assert!(!extension.critical, "AIA must be non-critical");
    let ParsedExtension::AuthorityInfoAccess(access) = extension.parsed_extension() else {
        panic!("AIA did not parse: {:?}", extension.parsed_extension());
    };
    let uris = access
        .accessdescs
        .iter()
        .map(|description| {
            assert_eq!(
                description.access_method,
                OID_PKIX_ACCESS_DESCRIPTOR_CA_ISSUERS
            );
            match &description.access_location {
                GeneralName::URI(uri) => (*uri).to_owned(),
                other => panic!("access location is not a URI: {other:?}"),
            }
        })
        .collect();
    Some(uris)
}

/// Returns the one caIssuers URI of a certificate.
fn ca_issuers_uri(der: &[u8], what: &str) -> String {
    let uris = ca_issuers(der).unwrap_or_else(|| panic!("{what} has no AIA extension"));
    assert_eq!(uris.len(), 1, "{what}: {uris:?}");
    uris[0].clone()
}

/// Returns the one URI of the certificate's CRL distribution point.
fn crl_distribution_uri(der: &[u8]) -> String {
    let (_, cert) = X509Certificate::from_der(der).expect("parse certificate");
    let uris: Vec<String> = cert
        .extensions()
        .iter()
        .filter_map(|extension| match extension.parsed_extension() {
            ParsedExtension::CRLDistributionPoints(points) => Some(points),
            _ => None,
        })
        .flat_map(|points| points.points.iter())
        .filter_map(|point| match &point.distribution_point {
            Some(DistributionPointName::FullName(names)) => Some(names),
            _ => None,
        })
        .flatten()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some((*uri).to_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(uris.len(), 1, "CRL distribution point URIs: {uris:?}");
    uris[0].clone()
}

/// GETs `url` without credentials and returns the status, the content type
/// and the body.
fn fetch(cluster: &Cluster, url: &str, accept: Option<&str>) -> (u16, String, Vec<u8>) {
    let mut request = cluster.http().get(url);
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let response = request.send().expect("GET");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (
        status,
        content_type,
        response.bytes().expect("body").to_vec(),
    )
}

/// Fetches a caIssuers URI and checks that it returns `expected` as DER.
fn check_fetch(cluster: &Cluster, uri: &str, expected: &[u8], what: &str) {
    let (status, content_type, body) = fetch(cluster, uri, None);
    assert_eq!(status, 200, "{what}: GET {uri}");
    assert_eq!(content_type, DER_CONTENT_TYPE, "{what}: GET {uri}");
    assert!(body == expected, "{what}: GET {uri} returned other DER");
}

fn mount(cluster: &Cluster, token: &str, name: &str, config: Value) {
    let (status, body) = cluster.post(
        "/v1/mounts",
        Some(token),
        json!({"name": name, "type": "ca", "config": config}),
    );
    assert_eq!(status, 200, "mount {name}: {body}");
}

fn create_issuer(cluster: &Cluster, token: &str, mount: &str) -> Vec<u8> {
    let (status, body) = cluster.post(
        &format!("/v1/pki/{mount}/issuers"),
        Some(token),
        json!({"name": "web"}),
    );
    assert_eq!(status, 200, "issuer of {mount}: {body}");
    der_of(body["certificate"].as_str().expect("issuer certificate"))
}

fn issue(cluster: &Cluster, token: &str, mount: &str) -> Value {
    let (status, body) = cluster.post(
        &format!("/v1/pki/{mount}/issue"),
        Some(token),
        json!({"issuer": "web", "profile": "server", "common_name": "app.example.com"}),
    );
    assert_eq!(status, 200, "issue under {mount}: {body}");
    body
}

#[test]
fn ca_issuers_uris_return_the_signer() {
    let cluster = Cluster::start();
    cluster.init();
    let token = cluster.login(ADMIN_USER, ADMIN_PASSWORD);
    let base_url = cluster.url("");
    mount(
        &cluster,
        &token,
        "pki",
        json!({"public_base_url": format!("{base_url}/")}),
    );
    let issuer_der = create_issuer(&cluster, &token, "pki");
    let (status, _, root_pem) = fetch(&cluster, &cluster.url("/v1/pki/pki/ca"), None);
    assert_eq!(status, 200);
    let root_der = der_of(&String::from_utf8(root_pem).expect("PEM is text"));

    assert_eq!(ca_issuers(&root_der), None, "the root has no AIA");
    let root_uri = ca_issuers_uri(&issuer_der, "issuer");
    assert_eq!(root_uri, format!("{base_url}/v1/pki/pki/ca?format=der"));
    check_fetch(&cluster, &root_uri, &root_der, "issuer");

    let issued = issue(&cluster, &token, "pki");
    let leaf_der = der_of(issued["certificate"].as_str().expect("certificate"));
    let issuer_uri = ca_issuers_uri(&leaf_der, "issued leaf");
    assert_eq!(
        issuer_uri,
        format!("{base_url}/v1/pki/pki/issuer/web?format=der")
    );
    check_fetch(&cluster, &issuer_uri, &issuer_der, "issued leaf");
    let crl_uri = crl_distribution_uri(&leaf_der);
    assert_eq!(crl_uri, format!("{base_url}/v1/pki/pki/crl?issuer=web"));
    let (status, content_type, _) = fetch(&cluster, &crl_uri, None);
    assert_eq!(status, 200, "GET {crl_uri}");
    assert_eq!(content_type, "application/pkix-crl", "GET {crl_uri}");

    let dir = cluster.path("csr");
    std::fs::create_dir_all(&dir).expect("create CSR dir");
    let csr_path = dir.join("request.csr");
    metacrypt_tests::run(
        Command::new("openssl")
            .args(["req", "-new", "-nodes", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:P-256", "-subj", "/CN=csr.example.com"])
            .arg("-keyout")
            .arg(dir.join("request.key"))
            .arg("-out")
            .arg(&csr_path),
    );
    let csr = std::fs::read_to_string(&csr_path).expect("read CSR");
    let (status, signed) = cluster.post(
        "/v1/pki/pki/sign",
        Some(&token),
        json!({"issuer": "web", "profile": "server", "csr": csr}),
    );
    assert_eq!(status, 200, "sign: {signed}");
    let signed_der = der_of(signed["certificate"].as_str().expect("certificate"));
    let uri = ca_issuers_uri(&signed_der, "CSR-signed leaf");
    check_fetch(&cluster, &uri, &issuer_der, "CSR-signed leaf");

    let serial = issued["serial_number"].as_str().expect("serial");
    let (status, renewed) = cluster.post(
        &format!("/v1/pki/pki/certs/{serial}/renew"),
        Some(&token),
        json!({}),
    );
    assert_eq!(status, 200, "renew: {renewed}");
    let renewed_der = der_of(renewed["certificate"].as_str().expect("certificate"));
    let uri = ca_issuers_uri(&renewed_der, "renewed leaf");
    check_fetch(&cluster, &uri, &issuer_der, "renewed leaf");

    // Without a public base URL there is nothing to point to.
    mount(&cluster, &token, "plain", json!({}));
    let plain_issuer = create_issuer(&cluster, &token, "plain");
    assert_eq!(ca_issuers(&plain_issuer), None, "issuer without base URL");
    let plain = issue(&cluster, &token, "plain");
    let plain_leaf = der_of(plain["certificate"].as_str().expect("certificate"));
    assert_eq!(ca_issuers(&plain_leaf), None, "leaf without base URL");

    // A deleted issuer's certificate and CRL are gone, so the URLs in its
    // leaves return 404 with a JSON error.
    let (status, body) = cluster.call(
        reqwest::Method::DELETE,
        "/v1/pki/pki/issuers/web?force=true",
        Some(&token),
        None,
    );
    assert_eq!(status, 200, "delete issuer: {body}");
    for uri in [&issuer_uri, &crl_uri] {
        let (status, content_type, body) = fetch(&cluster, uri, None);
        assert_eq!(status, 404, "GET {uri} after delete");
        assert_eq!(content_type, "application/json", "GET {uri} after delete");
        let body: Value = serde_json::from_slice(&body).expect("JSON error");
        assert_eq!(body["error"], "issuer web not found", "GET {uri}");
    }
}

#[test]
fn certificate_downloads_negotiate_pem_and_der() {
    let cluster = Cluster::start();
    cluster.init();
    let token = cluster.login(ADMIN_USER, ADMIN_PASSWORD);
    mount(&cluster, &token, "pki", json!({}));
    let issuer_der = create_issuer(&cluster, &token, "pki");
    let (_, _, root_pem) = fetch(&cluster, &cluster.url("/v1/pki/pki/ca"), None);
    let root_der = der_of(&String::from_utf8(root_pem).expect("PEM is text"));

    for (path, expected) in [
        ("/v1/pki/pki/ca", &root_der),
        ("/v1/pki/pki/issuer/web", &issuer_der),
    ] {
        let url = cluster.url(path);
        let cases = [
            ("", None, PEM_CONTENT_TYPE),
            ("?format=pem", None, PEM_CONTENT_TYPE),
            ("?format=der", None, DER_CONTENT_TYPE),
            ("", Some(DER_CONTENT_TYPE), DER_CONTENT_TYPE),
            ("", Some("*/*"), PEM_CONTENT_TYPE),
            ("?format=pem", Some(DER_CONTENT_TYPE), PEM_CONTENT_TYPE),
            ("", Some("Application/PKIX-Cert"), DER_CONTENT_TYPE),
            ("", Some("application/pkix-cert;q=0"), PEM_CONTENT_TYPE),
            ("", Some("application/pkix-certx"), PEM_CONTENT_TYPE),
            (
                "",
                Some("application/x-pem-file, application/pkix-cert;q=0.1"),
                PEM_CONTENT_TYPE,
            ),
            (
                "",
                Some("application/x-pem-file;q=0, */*"),
                DER_CONTENT_TYPE,
            ),
        ];
        for (query, accept, content_type) in cases {
            let case = format!("GET {path}{query} with Accept {accept:?}");
            let (status, received_type, body) = fetch(&cluster, &format!("{url}{query}"), accept);
            assert_eq!(status, 200, "{case}");
            assert_eq!(received_type, content_type, "{case}");
            let der = if content_type == PEM_CONTENT_TYPE {
                der_of(&String::from_utf8(body).expect("PEM is text"))
            } else {
                body
            };
            assert!(der == *expected, "{case}: another certificate");
        }
        for query in ["?format=crt", "?format=DER", "?formats=der"] {
            let (status, _, body) = fetch(&cluster, &format!("{url}{query}"), None);
            let body = String::from_utf8_lossy(&body);
            assert_eq!(status, 400, "GET {path}{query}: {body}");
        }
    }
    let (status, _, _) = fetch(
        &cluster,
        &cluster.url("/v1/pki/pki/issuer/missing?format=der"),
        None,
    );
    assert_eq!(status, 404);

    let crl_url = cluster.url("/v1/pki/pki/crl?issuer=web");
    for (accept, content_type) in [
        (None, CRL_CONTENT_TYPE),
        (Some("*/*"), CRL_CONTENT_TYPE),
        (Some("Application/X-PEM-File"), PEM_CONTENT_TYPE),
        (Some("application/x-pem-file;q=0"), CRL_CONTENT_TYPE),
        (
            Some("application/pkix-crl, application/x-pem-file;q=0.5"),
            CRL_CONTENT_TYPE,
        ),
    ] {
        let (status, received_type, _) = fetch(&cluster, &crl_url, accept);
        assert_eq!(status, 200, "CRL with Accept {accept:?}");
        assert_eq!(received_type, content_type, "CRL with Accept {accept:?}");
    }
}

/// A base URL whose certificate URLs could never be fetched as written is
/// a 400 that names the problem, and no mount is created.
#[test]
fn unusable_base_urls_are_rejected() {
    let cluster = Cluster::start();
    cluster.init();
    let token = cluster.login(ADMIN_USER, ADMIN_PASSWORD);
    let port = cluster.addr.port();
    let cases = [
        (format!("https://localhost:{port}//"), None),
        ("https://localhost:0".to_owned(), Some("port 0")),
        (format!("https://localhost:{port}//a"), Some("empty")),
        (format!("https://localhost:{port}/a/../b"), Some("segment")),
        (
            format!("https://localhost:{port}/%zz"),
            Some("two hex digits"),
        ),
        (
            format!("https://localhost:{port}/100%"),
            Some("two hex digits"),
        ),
        (format!("https://localhost:{port}/a[1]"), Some("'[' or ']'")),
    ];
    for (index, (url, expected)) in cases.iter().enumerate() {
        let name = format!("m{index}");
        let (status, body) = cluster.post(
            "/v1/mounts",
            Some(&token),
            json!({"name": name, "type": "ca", "config": {"public_base_url": url}}),
        );
        let Some(expected) = expected else {
            assert_eq!(status, 200, "{url}: {body}");
            continue;
        };
        assert_eq!(status, 400, "{url}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains("public_base_url"), "{url}: {error}");
        assert!(error.contains(expected), "{url}: {error}");
        let (status, _) = cluster.get_json(&format!("/v1/pki/{name}/ca"), None);
        assert_eq!(status, 404, "{url}: mount {name} exists");
    }

    // The error for a base URL far over the length limit shows its start.
    let long = format!("https://localhost:{port}/{}", "a".repeat(100_000));
    let (status, body) = cluster.post(
        "/v1/mounts",
        Some(&token),
        json!({"name": "long", "type": "ca", "config": {"public_base_url": long}}),
    );
    assert_eq!(status, 400);
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.len() < 300, "{} bytes: {error:.300}", error.len());
    assert!(error.contains("the maximum is 2048"), "{error:.300}");
}
