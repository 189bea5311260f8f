//! Subject alternative names, issuer constraints, the expiry clamp and
//! profile overrides through the REST API of the real daemons, checked on
//! the parsed certificates.

use std::net::IpAddr;

use metacrypt_tests::{ADMIN_PASSWORD, ADMIN_USER, Cluster, pem_certificates};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Starts a cluster with mount `pki` and returns it with an admin token.
fn cluster_with_mount() -> (Cluster, String) {
    let cluster = Cluster::start();
    cluster.init();
    let token = cluster.login(ADMIN_USER, ADMIN_PASSWORD);
    let (status, body) = cluster.post(
        "/v1/mounts",
        Some(&token),
        json!({"name": "pki", "type": "ca", "config": {}}),
    );
    assert_eq!(status, 200, "mount: {body}");
    (cluster, token)
}

fn create_issuer(cluster: &Cluster, token: &str, body: Value) -> Value {
    let (status, reply) = cluster.post("/v1/pki/pki/issuers", Some(token), body.clone());
    assert_eq!(status, 200, "create issuer {body}: {reply}");
    reply
}

fn issue(cluster: &Cluster, token: &str, body: Value) -> (u16, Value) {
    cluster.post("/v1/pki/pki/issue", Some(token), body)
}

fn issue_ok(cluster: &Cluster, token: &str, body: Value) -> Value {
    let (status, reply) = issue(cluster, token, body.clone());
    assert_eq!(status, 200, "{body}: {reply}");
    reply
}

/// Asserts a 400 whose message contains `named`.
fn assert_rejected(cluster: &Cluster, token: &str, body: Value, named: &str) {
    let (status, reply) = issue(cluster, token, body.clone());
    assert_eq!(status, 400, "{body}: {reply}");
    let message = reply["error"].as_str().unwrap_or_default();
    assert!(
        message.contains(named),
        "{body}: {message:?} names {named:?}"
    );
}

fn stored_count(cluster: &Cluster, token: &str) -> usize {
    let (status, body) = cluster.get_json("/v1/pki/pki/certs?limit=1000", Some(token));
    assert_eq!(status, 200, "{body}");
    body["certs"].as_array().map_or(0, Vec::len)
}

fn der_of(reply: &Value, field: &str) -> Vec<u8> {
    pem_certificates(reply[field].as_str().expect("PEM field")).remove(0)
}

/// Returns the SANs of a certificate as (type, text) pairs, with the octet
/// count in the type of IP addresses.
fn san_entries(der: &[u8]) -> Vec<(String, String)> {
    let (_, cert) = X509Certificate::from_der(der).expect("parse certificate");
    let san = cert
        .subject_alternative_name()
        .expect("SAN parses")
        .expect("SAN present");
    san.value
        .general_names
        .iter()
        .map(|name| match name {
            GeneralName::DNSName(text) => ("dns".to_owned(), (*text).to_owned()),
            GeneralName::RFC822Name(text) => ("email".to_owned(), (*text).to_owned()),
            GeneralName::URI(text) => ("uri".to_owned(), (*text).to_owned()),
            GeneralName::IPAddress(bytes) => {
                let address: IpAddr = match bytes.len() {
                    4 => <[u8; 4]>::try_from(*bytes).unwrap().into(),
                    16 => <[u8; 16]>::try_from(*bytes).unwrap().into(),
                    other => panic!("iPAddress of {other} octets"),
                };
                (format!("ip{}", bytes.len()), address.to_string())
            }
            other => panic!("unexpected SAN {other:?}"),
        })
        .collect()
}

fn entries(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(kind, text)| ((*kind).to_owned(), (*text).to_owned()))
        .collect()
}

fn rfc3339(value: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(value.as_str().expect("time string"), &Rfc3339).expect("RFC 3339")
}

#[test]
fn san_types_are_encoded_and_checked() {
    let (cluster, token) = cluster_with_mount();
    create_issuer(&cluster, &token, json!({"name": "web"}));

    let reply = issue_ok(
        &cluster,
        &token,
        json!({"issuer": "web", "profile": "server", "common_name": "DB.Example.com.",
               "dns_names": ["Bücher.Example", "xn--bcher-kva.example", "db.example.com"],
               "ip_addresses": ["192.0.2.10", "2001:DB8:0::1"],
               "email_addresses": ["Ops@Example.COM"],
               "uris": ["SPIFFE://Example.org/ns/web"]}),
    );
    assert_eq!(
        san_entries(&der_of(&reply, "certificate")),
        entries(&[
            ("dns", "db.example.com"),
            ("dns", "xn--bcher-kva.example"),
            ("ip4", "192.0.2.10"),
            ("ip16", "2001:db8::1"),
            ("email", "Ops@example.com"),
            ("uri", "spiffe://example.org/ns/web"),
        ])
    );
    let serial = reply["serial_number"].as_str().expect("serial");
    let (status, record) = cluster.get_json(&format!("/v1/pki/pki/certs/{serial}"), Some(&token));
    assert_eq!(status, 200, "{record}");
    assert_eq!(record["email_addresses"], json!(["Ops@example.com"]));
    assert_eq!(record["uris"], json!(["spiffe://example.org/ns/web"]));
    assert_eq!(
        record["dns_names"],
        json!(["db.example.com", "xn--bcher-kva.example"])
    );

    // A common name that is an IP address becomes an iPAddress SAN only.
    let reply = issue_ok(
        &cluster,
        &token,
        json!({"issuer": "web", "profile": "server", "common_name": "192.0.2.10"}),
    );
    assert_eq!(
        san_entries(&der_of(&reply, "certificate")),
        entries(&[("ip4", "192.0.2.10")])
    );

    let before = stored_count(&cluster, &token);
    let base = json!({"issuer": "web", "profile": "server", "common_name": "a.example.com"});
    for (field, value) in [
        ("dns_names", "a..b.example.com"),
        ("dns_names", "exa_mple.com"),
        ("dns_names", "xn--a.example"),
        ("email_addresses", "no-at-sign.example.com"),
        ("email_addresses", "a b@example.com"),
        ("email_addresses", "a@*.example.com"),
        ("uris", "urn:uuid:0000"),
        ("uris", "https://user@example.com/"),
        ("uris", "https://exa mple.com/"),
        ("ip_addresses", "192.0.2.256"),
    ] {
        let mut body = base.clone();
        body[field] = json!([value]);
        assert_rejected(&cluster, &token, body, value);
    }
    assert_eq!(stored_count(&cluster, &token), before, "nothing stored");
}

#[test]
fn case_is_folded_before_policy_checks() {
    let (cluster, token) = cluster_with_mount();
    create_issuer(
        &cluster,
        &token,
        json!({"name": "corp", "allowed_domains": ["example.com"]}),
    );
    let orders = [
        ("SUB.EXAMPLE.COM", "Other.Example.com"),
        ("Other.Example.com", "SUB.EXAMPLE.COM"),
    ];
    for (common_name, alt) in orders {
        let reply = issue_ok(
            &cluster,
            &token,
            json!({"issuer": "corp", "profile": "server", "common_name": common_name,
                   "dns_names": [alt]}),
        );
        let mut names: Vec<String> = san_entries(&der_of(&reply, "certificate"))
            .into_iter()
            .map(|(_, text)| text)
            .collect();
        names.sort();
        assert_eq!(names, ["other.example.com", "sub.example.com"]);
    }
    for (common_name, alt) in [
        ("SUB.EXAMPLE.ORG", "Other.Example.com"),
        ("Other.Example.com", "SUB.EXAMPLE.ORG"),
    ] {
        assert_rejected(
            &cluster,
            &token,
            json!({"issuer": "corp", "profile": "server", "common_name": common_name,
                   "dns_names": [alt]}),
            "sub.example.org",
        );
    }
}

#[test]
fn wildcards_need_issuer_permission() {
    let (cluster, token) = cluster_with_mount();
    create_issuer(&cluster, &token, json!({"name": "plain"}));
    create_issuer(
        &cluster,
        &token,
        json!({"name": "wild", "allow_wildcards": true}),
    );

    let reply = issue_ok(
        &cluster,
        &token,
        json!({"issuer": "wild", "profile": "server", "common_name": "*.example.com"}),
    );
    assert_eq!(
        san_entries(&der_of(&reply, "certificate")),
        entries(&[("dns", "*.example.com")])
    );
    assert_rejected(
        &cluster,
        &token,
        json!({"issuer": "plain", "profile": "server", "common_name": "*.example.com"}),
        "wildcards",
    );

    let before = stored_count(&cluster, &token);
    for bad in [
        "*.*.example.com",
        "foo.*.example.com",
        "f*.example.com",
        "*.com",
        "*",
    ] {
        assert_rejected(
            &cluster,
            &token,
            json!({"issuer": "wild", "profile": "server", "common_name": "a.example.com",
                   "dns_names": [bad]}),
            bad,
        );
    }
    assert_eq!(stored_count(&cluster, &token), before, "nothing stored");
}

fn name_constraints(der: &[u8]) -> (bool, Vec<String>, Vec<String>) {
    let (_, cert) = X509Certificate::from_der(der).expect("parse issuer");
    let extension = cert
        .extensions()
        .iter()
        .find(|extension| {
            matches!(
                extension.parsed_extension(),
                ParsedExtension::NameConstraints(_)
            )
        })
        .expect("NameConstraints present");
    let ParsedExtension::NameConstraints(constraints) = extension.parsed_extension() else {
        unreachable!()
    };
    let describe = |subtrees: &Option<Vec<x509_parser::extensions::GeneralSubtree<'_>>>| {
        subtrees
            .iter()
            .flatten()
            .map(|subtree| match &subtree.base {
                GeneralName::DNSName(text) => format!("dns:{text}"),
                GeneralName::RFC822Name(text) => format!("email:{text}"),
                GeneralName::IPAddress(bytes) => format!("ip:{}", hex::encode(bytes)),
                other => format!("{other:?}"),
            })
            .collect::<Vec<_>>()
    };
    (
        extension.critical,
        describe(&constraints.permitted_subtrees),
        describe(&constraints.excluded_subtrees),
    )
}

#[test]
fn issuer_constraints_are_enforced_and_encoded() {
    let (cluster, token) = cluster_with_mount();
    let issuer = create_issuer(
        &cluster,
        &token,
        json!({"name": "corp", "allowed_domains": ["Example.COM."],
               "allowed_ip_ranges": ["192.0.2.0/24"], "max_ttl": "48h"}),
    );
    assert_eq!(issuer["allowed_domains"], json!(["example.com"]));
    assert_eq!(issuer["allowed_ip_ranges"], json!(["192.0.2.0/24"]));
    assert_eq!(issuer["allow_wildcards"], false);
    assert_eq!(issuer["allow_ip_sans"], true);
    assert_eq!(issuer["max_ttl"], "48h");
    let (status, list) = cluster.get_json("/v1/pki/pki/issuers", Some(&token));
    assert_eq!(status, 200, "{list}");
    assert_eq!(
        list["issuers"][0]["allowed_domains"],
        json!(["example.com"])
    );

    let (critical, permitted, excluded) = name_constraints(&der_of(&issuer, "certificate"));
    assert!(critical, "NameConstraints critical");
    assert_eq!(
        permitted,
        [
            "dns:example.com",
            "email:example.com",
            "email:.example.com",
            "ip:c0000200ffffff00"
        ]
    );
    assert!(excluded.is_empty(), "{excluded:?}");

    // Inside the constraints, with a TTL beyond max_ttl: capped, with a
    // warning that names max_ttl.
    let requested_at = OffsetDateTime::now_utc();
    let reply = issue_ok(
        &cluster,
        &token,
        json!({"issuer": "corp", "profile": "server", "common_name": "app.example.com",
               "ip_addresses": ["192.0.2.10"], "email_addresses": ["ops@mail.example.com"],
               "ttl": "720h"}),
    );
    let not_after = rfc3339(&reply["not_after"]);
    assert!(not_after <= requested_at + time::Duration::hours(48) + time::Duration::seconds(5));
    assert!(not_after >= requested_at + time::Duration::hours(48) - time::Duration::seconds(5));
    let warnings = reply["warnings"].to_string();
    assert!(warnings.contains("max_ttl"), "{warnings}");
    let reply = issue_ok(
        &cluster,
        &token,
        json!({"issuer": "corp", "profile": "server", "common_name": "app.example.com",
               "ttl": "24h"}),
    );
    assert_eq!(reply["warnings"], json!([]), "no warning within max_ttl");

    let before = stored_count(&cluster, &token);
    let base = json!({"issuer": "corp", "profile": "server", "common_name": "app.example.com"});
    for (field, value) in [
        ("dns_names", json!(["app.example.org"])),
        ("dns_names", json!(["badexample.com"])),
        ("dns_names", json!(["*.example.com"])),
        ("ip_addresses", json!(["198.51.100.1"])),
        ("ip_addresses", json!(["2001:db8::1"])),
        ("email_addresses", json!(["ops@example.net"])),
        ("uris", json!(["https://example.net/"])),
    ] {
        let mut body = base.clone();
        body[field] = value.clone();
        let (status, reply) = issue(&cluster, &token, body);
        assert_eq!(status, 400, "{field} {value}: {reply}");
        let message = reply["error"].as_str().unwrap_or_default();
        assert!(message.contains("not allowed"), "{message}");
    }
    assert_rejected(
        &cluster,
        &token,
        json!({"issuer": "corp", "profile": "client", "common_name": "svc.example.org",
               "email_addresses": ["svc@example.com"]}),
        "common name",
    );
    assert_eq!(stored_count(&cluster, &token), before, "nothing stored");

    // allow_ip_sans false excludes every IPv4 and IPv6 address.
    let no_ip = create_issuer(
        &cluster,
        &token,
        json!({"name": "no-ip", "allow_ip_sans": false}),
    );
    let (critical, permitted, excluded) = name_constraints(&der_of(&no_ip, "certificate"));
    assert!(critical);
    assert!(permitted.is_empty(), "{permitted:?}");
    assert_eq!(
        excluded,
        [
            "ip:0000000000000000",
            format!("ip:{}", "0".repeat(64)).as_str()
        ]
    );
    assert_rejected(
        &cluster,
        &token,
        json!({"issuer": "no-ip", "profile": "server", "common_name": "192.0.2.10"}),
        "does not allow IP addresses",
    );

    // Invalid constraints name the field and create nothing.
    for (body, field) in [
        (
            json!({"name": "x1", "allowed_domains": ["*.example.com"]}),
            "allowed_domains",
        ),
        (
            json!({"name": "x2", "allowed_ip_ranges": ["10.0.0.1/8"]}),
            "allowed_ip_ranges",
        ),
        (json!({"name": "x3", "max_ttl": "soon"}), "max_ttl"),
        (
            json!({"name": "x4", "allow_ip_sans": false, "allowed_ip_ranges": ["10.0.0.0/8"]}),
            "allowed_ip_ranges",
        ),
    ] {
        let (status, reply) = cluster.post("/v1/pki/pki/issuers", Some(&token), body.clone());
        assert_eq!(status, 400, "{body}: {reply}");
        let message = reply["error"].as_str().unwrap_or_default();
        assert!(message.contains(field), "{message:?} names {field}");
    }
    let (status, list) = cluster.get_json("/v1/pki/pki/issuers", Some(&token));
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["issuers"].as_array().map(Vec::len), Some(2));
}

fn usages(der: &[u8]) -> (Vec<&'static str>, Vec<&'static str>) {
    let (_, cert) = X509Certificate::from_der(der).expect("parse leaf");
    let key_usage = cert.key_usage().unwrap().expect("keyUsage").value;
    let mut key_usages = Vec::new();
    if key_usage.digital_signature() {
        key_usages.push("digitalSignature");
    }
    if key_usage.key_encipherment() {
        key_usages.push("keyEncipherment");
    }
    assert_eq!(key_usage.flags.count_ones(), key_usages.len() as u32);
    let eku = cert.extended_key_usage().unwrap().expect("EKU").value;
    let mut ekus = Vec::new();
    if eku.server_auth {
        ekus.push("serverAuth");
    }
    if eku.client_auth {
        ekus.push("clientAuth");
    }
    assert!(!eku.code_signing, "codeSigning");
    assert!(!eku.any, "anyExtendedKeyUsage");
    assert!(eku.other.is_empty(), "other EKUs: {:?}", eku.other);
    (key_usages, ekus)
}

#[test]
fn profile_overrides_stay_within_profile() {
    let (cluster, token) = cluster_with_mount();
    create_issuer(&cluster, &token, json!({"name": "web"}));

    let reply = issue_ok(
        &cluster,
        &token,
        json!({"issuer": "web", "profile": "peer", "common_name": "node.example.com",
               "extended_key_usages": ["clientAuth"]}),
    );
    assert_eq!(
        usages(&der_of(&reply, "certificate")),
        (vec!["digitalSignature"], vec!["clientAuth"])
    );
    let reply = issue_ok(
        &cluster,
        &token,
        json!({"issuer": "web", "profile": "server", "common_name": "rsa.example.com",
               "key_algorithm": "rsa-2048",
               "key_usages": ["digitalSignature", "keyEncipherment"]}),
    );
    assert_eq!(
        usages(&der_of(&reply, "certificate")),
        (
            vec!["digitalSignature", "keyEncipherment"],
            vec!["serverAuth"]
        )
    );
    let reply = issue_ok(
        &cluster,
        &token,
        json!({"issuer": "web", "profile": "server", "common_name": "ec.example.com"}),
    );
    assert_eq!(
        usages(&der_of(&reply, "certificate")),
        (vec!["digitalSignature"], vec!["serverAuth"])
    );

    let before = stored_count(&cluster, &token);
    for (extra, field) in [
        (
            json!({"extended_key_usages": ["codeSigning"]}),
            "extended_key_usages",
        ),
        (
            json!({"extended_key_usages": ["clientAuth"]}),
            "extended_key_usages",
        ),
        (json!({"extended_key_usages": []}), "extended_key_usages"),
        (
            json!({"extended_key_usages": ["serverAuth", "serverAuth"]}),
            "extended_key_usages",
        ),
        (json!({"key_usages": ["keyCertSign"]}), "key_usages"),
        (json!({"key_usages": ["keyEncipherment"]}), "key_usages"),
        (
            json!({"key_usages": ["keyEncipherment"], "key_algorithm": "ed25519"}),
            "key_usages",
        ),
    ] {
        let mut body =
            json!({"issuer": "web", "profile": "server", "common_name": "x.example.com"});
        for (key, value) in extra.as_object().expect("object") {
            body[key] = value.clone();
        }
        assert_rejected(&cluster, &token, body, field);
    }
    assert_eq!(stored_count(&cluster, &token), before, "nothing stored");
}
