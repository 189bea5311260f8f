//! Root, issuer and leaf certificates checked with openssl and by parsing
//! each field with x509-parser.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use metacrypt_ca::{
    CaCertificate, CaError, GeneratedKey, IssuedLeaf, IssuerOptions, LeafRequest, NewCa,
    create_root, default_root_common_name,
};
use metacrypt_protocol::{CaMountConfig, ErrorCode, KeyAlgorithm, Profile};
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_PKCS1_SHA256WITHRSA, OID_PKIX_ACCESS_DESCRIPTOR_CA_ISSUERS, OID_PKIX_AUTHORITY_INFO_ACCESS,
    OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384, OID_SIG_ED25519, Oid,
};
use x509_parser::prelude::FromDer;

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc().replace_nanosecond(0).unwrap()
}

fn root(algorithm: KeyAlgorithm) -> NewCa {
    let config = CaMountConfig {
        common_name: Some("Test Root CA".to_owned()),
        organization: Some("Metacrypt Tests".to_owned()),
        key_algorithm: Some(algorithm),
        ttl: None,
        public_base_url: None,
    };
    create_root("pki", &config, now()).unwrap()
}

fn issuer(
    root: &NewCa,
    name: &str,
    algorithm: KeyAlgorithm,
    ttl: Option<&str>,
    at: OffsetDateTime,
) -> NewCa {
    let options = IssuerOptions {
        name,
        common_name: None,
        key_algorithm: Some(algorithm),
        ttl,
        policy: None,
        ca_issuers_url: None,
    };
    root.certificate
        .create_issuer(root.key.pkcs8_der(), &options, at)
        .unwrap()
}

struct Leaf {
    issued: IssuedLeaf,
    key: GeneratedKey,
}

fn issue(issuer: &NewCa, request: LeafRequest<'_>, at: OffsetDateTime) -> Result<Leaf, CaError> {
    let validated = request.validate()?;
    let key = GeneratedKey::generate(validated.key_algorithm)?;
    let issued = issuer
        .certificate
        .issue_leaf(issuer.key.pkcs8_der(), &validated, &key, at)?;
    Ok(Leaf { issued, key })
}

fn request<'a>(
    profile: Profile,
    common_name: &'a str,
    dns_names: &'a [String],
    ip_addresses: &'a [String],
) -> LeafRequest<'a> {
    LeafRequest {
        profile,
        common_name,
        organization: None,
        dns_names,
        ip_addresses,
        email_addresses: client_email(profile),
        uris: &[],
        ttl: None,
        key_algorithm: None,
        key_usages: None,
        extended_key_usages: None,
    }
}

/// Returns an email SAN for client requests, which need at least one SAN
/// whose common name is free text.
fn client_email(profile: Profile) -> &'static [String] {
    static EMAIL: std::sync::LazyLock<Vec<String>> =
        std::sync::LazyLock::new(|| vec!["client-a@example.com".to_owned()]);
    match profile {
        Profile::Client => EMAIL.as_slice(),
        Profile::Server | Profile::Peer => &[],
    }
}

fn common_name_for(profile: Profile) -> &'static str {
    match profile {
        Profile::Server | Profile::Peer => "app.example.com",
        Profile::Client => "Example Client A",
    }
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    let (rest, cert) = X509Certificate::from_der(der).unwrap();
    assert!(rest.is_empty(), "trailing data after the certificate");
    cert
}

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, contents).unwrap();
    path
}

fn openssl(args: &[&str]) -> (bool, String) {
    let output = Command::new("openssl").args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn subject_key_id(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.iter_extensions()
        .find_map(|extension| match extension.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
            _ => None,
        })
}

fn authority_key_id(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.iter_extensions()
        .find_map(|extension| match extension.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|id| id.0.to_vec())
            }
            _ => None,
        })
}

fn san_dns_names(cert: &X509Certificate<'_>) -> Vec<String> {
    let Some(san) = cert.subject_alternative_name().unwrap() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some((*dns).to_owned()),
            _ => None,
        })
        .collect()
}

fn san_ip_octets(cert: &X509Certificate<'_>) -> Vec<Vec<u8>> {
    let Some(san) = cert.subject_alternative_name().unwrap() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::IPAddress(octets) => Some(octets.to_vec()),
            _ => None,
        })
        .collect()
}

fn expected_signature_oid(issuer: KeyAlgorithm) -> Oid<'static> {
    match issuer {
        KeyAlgorithm::EcdsaP256 => OID_SIG_ECDSA_WITH_SHA256,
        KeyAlgorithm::EcdsaP384 => OID_SIG_ECDSA_WITH_SHA384,
        KeyAlgorithm::Ed25519 => OID_SIG_ED25519,
        KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => {
            OID_PKCS1_SHA256WITHRSA
        }
    }
}

#[test]
fn every_profile_and_key_verifies_with_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let root = root(KeyAlgorithm::EcdsaP384);
    let root_pem = write(dir.path(), "root.pem", root.certificate.pem());
    for issuer_algorithm in KeyAlgorithm::ALL {
        let issuer = issuer(&root, "test", issuer_algorithm, None, now());
        let issuer_pem = write(dir.path(), "issuer.pem", issuer.certificate.pem());
        for leaf_algorithm in KeyAlgorithm::ALL {
            for profile in Profile::ALL {
                let case = format!("issuer {issuer_algorithm}, leaf {leaf_algorithm}, {profile}");
                let mut leaf_request = request(profile, common_name_for(profile), &[], &[]);
                leaf_request.key_algorithm = Some(leaf_algorithm);
                let leaf = issue(&issuer, leaf_request, now()).unwrap();
                let leaf_pem = write(dir.path(), "leaf.pem", &leaf.issued.pem);
                let purpose = match profile {
                    Profile::Server | Profile::Peer => "sslserver",
                    Profile::Client => "sslclient",
                };
                let (ok, output) = openssl(&[
                    "verify",
                    "-x509_strict",
                    "-purpose",
                    purpose,
                    "-CAfile",
                    root_pem.to_str().unwrap(),
                    "-untrusted",
                    issuer_pem.to_str().unwrap(),
                    leaf_pem.to_str().unwrap(),
                ]);
                assert!(ok, "{case}: {output}");
                assert!(output.trim_end().ends_with(": OK"), "{case}: {output}");

                let cert = parse(&leaf.issued.der);
                assert_eq!(
                    cert.signature_algorithm.algorithm,
                    expected_signature_oid(issuer_algorithm),
                    "{case}: signature algorithm"
                );
            }
        }
    }
}

/// Returns the caIssuers URIs of a certificate's Authority Information
/// Access extension and whether the extension is critical, or `None`
/// without the extension.
fn ca_issuers(cert: &X509Certificate<'_>) -> Option<(Vec<String>, bool)> {
    let extension = cert
        .iter_extensions()
        .find(|extension| extension.oid == OID_PKIX_AUTHORITY_INFO_ACCESS)?;
    let ParsedExtension::AuthorityInfoAccess(access) = extension.parsed_extension() else {
        panic!("unparsed AIA: {:?}", extension.parsed_extension());
    };
    let uris = access
        .accessdescs
        .iter()
        .map(|description| {
            assert_eq!(
                description.access_method, OID_PKIX_ACCESS_DESCRIPTOR_CA_ISSUERS,
                "access method"
            );
            match &description.access_location {
                GeneralName::URI(uri) => (*uri).to_owned(),
                other => panic!("access location is not a URI: {other:?}"),
            }
        })
        .collect();
    Some((uris, extension.critical))
}

#[test]
fn ca_issuers_urls_are_in_aia() {
    let dir = tempfile::tempdir().unwrap();
    let root = root(KeyAlgorithm::EcdsaP384);
    let root_url = "http://pki.example.com/v1/pki/pki/ca?format=der";
    let issuer_url = "http://pki.example.com/v1/pki/pki/issuer/web?format=der";
    let options = IssuerOptions {
        name: "web",
        ca_issuers_url: Some(root_url),
        ..IssuerOptions::default()
    };
    let issuer = root
        .certificate
        .create_issuer(root.key.pkcs8_der(), &options, now())
        .unwrap();
    let mut leaf = request(Profile::Server, "app.example.com", &[], &[])
        .validate()
        .unwrap();
    leaf.ca_issuers_url = Some(issuer_url.to_owned());
    let key = GeneratedKey::generate(leaf.key_algorithm).unwrap();
    let issued = issuer
        .certificate
        .issue_leaf(issuer.key.pkcs8_der(), &leaf, &key, now())
        .unwrap();

    assert_eq!(ca_issuers(&parse(root.certificate.der())), None);
    assert_eq!(
        ca_issuers(&parse(issuer.certificate.der())),
        Some((vec![root_url.to_owned()], false))
    );
    assert_eq!(
        ca_issuers(&parse(&issued.der)),
        Some((vec![issuer_url.to_owned()], false))
    );

    let root_pem = write(dir.path(), "root.pem", root.certificate.pem());
    let issuer_pem = write(dir.path(), "issuer.pem", issuer.certificate.pem());
    let leaf_pem = write(dir.path(), "leaf.pem", &issued.pem);
    for (path, url) in [(&issuer_pem, root_url), (&leaf_pem, issuer_url)] {
        let (ok, text) = openssl(&["x509", "-noout", "-text", "-in", path.to_str().unwrap()]);
        assert!(ok, "{text}");
        let expected =
            format!("Authority Information Access: \n                CA Issuers - URI:{url}\n");
        assert!(text.contains(&expected), "{expected:?} not in {text}");
    }
    let (ok, output) = openssl(&[
        "verify",
        "-x509_strict",
        "-purpose",
        "sslserver",
        "-CAfile",
        root_pem.to_str().unwrap(),
        "-untrusted",
        issuer_pem.to_str().unwrap(),
        leaf_pem.to_str().unwrap(),
    ]);
    assert!(ok, "{output}");
    assert!(output.trim_end().ends_with(": OK"), "{output}");
}

#[test]
fn roots_of_every_key_verify_with_openssl() {
    let dir = tempfile::tempdir().unwrap();
    for algorithm in KeyAlgorithm::ALL {
        let root = root(algorithm);
        let root_pem = write(dir.path(), "root.pem", root.certificate.pem());
        let (ok, output) = openssl(&[
            "verify",
            "-x509_strict",
            "-CAfile",
            root_pem.to_str().unwrap(),
            root_pem.to_str().unwrap(),
        ]);
        assert!(ok, "{algorithm}: {output}");
        assert_eq!(root.certificate.key_algorithm(), algorithm);
        let cert = parse(root.certificate.der());
        assert_eq!(
            cert.signature_algorithm.algorithm,
            expected_signature_oid(algorithm),
            "{algorithm}"
        );
    }
}

#[test]
fn leaf_key_usage_follows_profile_and_key() {
    let root = root(KeyAlgorithm::EcdsaP384);
    let issuer = issuer(&root, "test", KeyAlgorithm::EcdsaP256, None, now());
    for algorithm in KeyAlgorithm::ALL {
        for profile in Profile::ALL {
            let case = format!("{profile} with {algorithm}");
            let mut leaf_request = request(profile, common_name_for(profile), &[], &[]);
            leaf_request.key_algorithm = Some(algorithm);
            let leaf = issue(&issuer, leaf_request, now()).unwrap();
            let cert = parse(&leaf.issued.der);

            let key_usage = cert.key_usage().unwrap().expect("keyUsage present");
            assert!(key_usage.critical, "{case}: keyUsage critical");
            assert!(
                key_usage.value.digital_signature(),
                "{case}: digitalSignature"
            );
            assert!(
                !key_usage.value.key_encipherment(),
                "{case}: keyEncipherment"
            );
            assert!(!key_usage.value.key_cert_sign(), "{case}: keyCertSign");
            assert!(!key_usage.value.crl_sign(), "{case}: cRLSign");
            assert!(!key_usage.value.key_agreement(), "{case}: keyAgreement");
            assert!(!key_usage.value.non_repudiation(), "{case}: nonRepudiation");
            assert!(
                !key_usage.value.data_encipherment(),
                "{case}: dataEncipherment"
            );

            let eku = cert
                .extended_key_usage()
                .unwrap()
                .expect("extendedKeyUsage present");
            assert_eq!(
                eku.value.server_auth,
                profile != Profile::Client,
                "{case}: serverAuth"
            );
            assert_eq!(
                eku.value.client_auth,
                profile != Profile::Server,
                "{case}: clientAuth"
            );
            assert!(!eku.value.any, "{case}: anyExtendedKeyUsage");
            assert!(!eku.value.code_signing, "{case}: codeSigning");
            assert!(eku.value.other.is_empty(), "{case}: other EKUs");

            let constraints = cert
                .basic_constraints()
                .unwrap()
                .expect("basicConstraints present");
            assert!(!constraints.value.ca, "{case}: CA:FALSE");
            assert!(constraints.critical, "{case}: basicConstraints critical");
        }
    }
}

#[test]
fn ca_extensions_chain_byte_for_byte() {
    let root = root(KeyAlgorithm::EcdsaP384);
    let issuer = issuer(&root, "web", KeyAlgorithm::EcdsaP256, None, now());
    let names = ["app.example.com".to_owned()];
    let leaf = issue(
        &issuer,
        request(Profile::Server, "app.example.com", &names, &[]),
        now(),
    )
    .unwrap();

    let root_cert = parse(root.certificate.der());
    let issuer_cert = parse(issuer.certificate.der());
    let leaf_cert = parse(&leaf.issued.der);

    for (label, cert, path_len) in [("root", &root_cert, 1), ("issuer", &issuer_cert, 0)] {
        let constraints = cert
            .basic_constraints()
            .unwrap()
            .expect("basicConstraints present");
        assert!(constraints.critical, "{label}: basicConstraints critical");
        assert!(constraints.value.ca, "{label}: CA:TRUE");
        assert_eq!(
            constraints.value.path_len_constraint,
            Some(path_len),
            "{label}: path length"
        );
        let key_usage = cert.key_usage().unwrap().expect("keyUsage present");
        assert!(key_usage.critical, "{label}: keyUsage critical");
        assert!(key_usage.value.key_cert_sign(), "{label}: keyCertSign");
        assert!(key_usage.value.crl_sign(), "{label}: cRLSign");
        assert!(
            !key_usage.value.key_encipherment(),
            "{label}: keyEncipherment"
        );
        assert!(
            cert.extended_key_usage().unwrap().is_none(),
            "{label}: no EKU"
        );
        assert!(subject_key_id(cert).is_some(), "{label}: SKI present");
    }

    let root_ski = subject_key_id(&root_cert).unwrap();
    let issuer_ski = subject_key_id(&issuer_cert).unwrap();
    assert_eq!(root_ski.len(), 20);
    assert_eq!(
        authority_key_id(&root_cert),
        Some(root_ski.clone()),
        "root AKI = root SKI"
    );
    assert_eq!(
        authority_key_id(&issuer_cert),
        Some(root_ski.clone()),
        "issuer AKI = root SKI"
    );
    assert_eq!(
        authority_key_id(&leaf_cert),
        Some(issuer_ski.clone()),
        "leaf AKI = issuer SKI"
    );
    assert!(subject_key_id(&leaf_cert).is_some(), "leaf SKI present");
    assert_ne!(
        subject_key_id(&leaf_cert),
        Some(issuer_ski.clone()),
        "leaf SKI differs"
    );
    assert_eq!(root.certificate.subject_key_id(), root_ski.as_slice());

    assert_eq!(
        issuer_cert.issuer().as_raw(),
        root_cert.subject().as_raw(),
        "issuer name DER"
    );
    assert_eq!(
        leaf_cert.issuer().as_raw(),
        issuer_cert.subject().as_raw(),
        "leaf issuer name DER"
    );
    assert_eq!(
        root_cert.issuer().as_raw(),
        root_cert.subject().as_raw(),
        "root is self-issued"
    );
}

#[test]
fn issuer_subject_extends_root_name() {
    let root = root(KeyAlgorithm::EcdsaP384);
    let issuer = issuer(&root, "web", KeyAlgorithm::EcdsaP256, None, now());
    assert_eq!(issuer.certificate.common_name(), "Test Root CA Issuer web");
    assert_eq!(issuer.certificate.organization(), Some("Metacrypt Tests"));
    assert_eq!(
        issuer.certificate.subject(),
        "O=Metacrypt Tests, CN=Test Root CA Issuer web"
    );
}

#[test]
fn root_defaults_apply() {
    let at = now();
    let root = create_root("pki", &CaMountConfig::default(), at).unwrap();
    assert_eq!(root.certificate.common_name(), "Metacrypt Root CA (pki)");
    assert_eq!(root.certificate.organization(), None);
    assert_eq!(root.certificate.key_algorithm(), KeyAlgorithm::EcdsaP384);
    assert_eq!(root.certificate.not_before(), at - Duration::seconds(30));
    assert_eq!(root.certificate.not_after(), at + Duration::days(3650));
}

#[test]
fn default_root_names_differ_per_mount() {
    let at = now();
    let pki = create_root("pki", &CaMountConfig::default(), at).unwrap();
    let web = create_root("web", &CaMountConfig::default(), at).unwrap();
    assert_ne!(
        pki.certificate.subject(),
        web.certificate.subject(),
        "two mounts' roots have the same subject"
    );
    assert_eq!(web.certificate.common_name(), "Metacrypt Root CA (web)");
}

#[test]
fn default_root_name_shortens_for_long_mounts() {
    let cases = [
        (
            "a".repeat(44),
            format!("Metacrypt Root CA ({})", "a".repeat(44)),
        ),
        ("b".repeat(45), format!("Root CA ({})", "b".repeat(45))),
        ("c".repeat(54), format!("Root CA ({})", "c".repeat(54))),
        ("d".repeat(55), "d".repeat(55)),
        ("e".repeat(64), "e".repeat(64)),
    ];
    for (mount, expected) in cases {
        let common_name = default_root_common_name(&mount);
        assert_eq!(
            common_name,
            expected,
            "mount name of {} characters",
            mount.len()
        );
        assert!(common_name.len() <= 64, "{common_name}");
    }
}

#[test]
fn default_names_fit_for_longest_mount_and_issuer() {
    let at = now();
    let mount = "m".repeat(64);
    let root = create_root(&mount, &CaMountConfig::default(), at).unwrap();
    assert_eq!(root.certificate.common_name(), mount);
    let name = "i".repeat(64);
    let issuer = issuer(&root, &name, KeyAlgorithm::EcdsaP256, None, at);
    let common_name = issuer.certificate.common_name();
    assert!(common_name.chars().count() <= 64, "{common_name}");
    assert!(common_name.contains(&name), "{common_name}");
}

#[test]
fn issuer_defaults_apply() {
    let at = now();
    let root = root(KeyAlgorithm::EcdsaP384);
    let options = IssuerOptions {
        name: "default",
        ..IssuerOptions::default()
    };
    let issuer = root
        .certificate
        .create_issuer(root.key.pkcs8_der(), &options, at)
        .unwrap();
    assert_eq!(issuer.certificate.key_algorithm(), KeyAlgorithm::EcdsaP256);
    assert_eq!(issuer.certificate.not_before(), at - Duration::seconds(30));
    assert_eq!(issuer.certificate.not_after(), at + Duration::days(5 * 365));
}

#[test]
fn issuer_is_capped_at_root_expiry() {
    let at = now();
    let config = CaMountConfig {
        ttl: Some("30d".to_owned()),
        ..CaMountConfig::default()
    };
    let root = create_root("pki", &config, at).unwrap();
    let issuer = issuer(&root, "short", KeyAlgorithm::EcdsaP256, Some("5y"), at);
    assert_eq!(issuer.certificate.not_after(), root.certificate.not_after());
}

#[test]
fn leaf_not_before_is_backdated_30s() {
    let root = root(KeyAlgorithm::EcdsaP384);
    let issuer = issuer(&root, "test", KeyAlgorithm::EcdsaP256, None, now());
    let at = now();
    let leaf = issue(
        &issuer,
        request(Profile::Server, "app.example.com", &[], &[]),
        at,
    )
    .unwrap();
    let cert = parse(&leaf.issued.der);
    let not_before = cert.validity().not_before.to_datetime();
    assert_eq!(not_before, at - Duration::seconds(30));
    assert!(not_before < at, "NotBefore is in the past");
    assert!(
        not_before >= at - Duration::seconds(60),
        "NotBefore is at most a minute back"
    );
    assert_eq!(leaf.issued.fields.not_before, not_before);
    assert_eq!(
        cert.validity().not_after.to_datetime(),
        at + Duration::days(90)
    );
    assert!(
        leaf.issued.warnings.is_empty(),
        "{:?}",
        leaf.issued.warnings
    );
}

#[test]
fn leaf_ttl_is_capped_at_issuer_expiry() {
    let root = root(KeyAlgorithm::EcdsaP384);
    let at = now();
    let issuer = issuer(&root, "short", KeyAlgorithm::EcdsaP256, Some("10d"), at);
    let mut leaf_request = request(Profile::Server, "app.example.com", &[], &[]);
    leaf_request.ttl = Some("720h");
    let leaf = issue(&issuer, leaf_request, at).unwrap();

    let cert = parse(&leaf.issued.der);
    let not_after = cert.validity().not_after.to_datetime();
    assert_eq!(not_after, issuer.certificate.not_after());
    assert!(
        not_after <= root.certificate.not_after(),
        "leaf outlives the root"
    );
    assert_eq!(leaf.issued.warnings.len(), 1, "{:?}", leaf.issued.warnings);
    let warning = &leaf.issued.warnings[0];
    assert!(warning.contains("720h"), "{warning}");
    assert!(
        warning.contains("capped at the issuer's expiry"),
        "{warning}"
    );
    assert!(
        warning.contains(&issuer.certificate.fields().not_after_rfc3339()),
        "{warning}"
    );
}

#[test]
fn expired_issuer_is_rejected() {
    let created = now() - Duration::days(20);
    let config = CaMountConfig {
        ttl: Some("1y".to_owned()),
        ..CaMountConfig::default()
    };
    let old_root = create_root("pki", &config, created).unwrap();
    let expired = issuer(
        &old_root,
        "old",
        KeyAlgorithm::EcdsaP256,
        Some("10d"),
        created,
    );
    let error = issue(
        &expired,
        request(Profile::Server, "app.example.com", &[], &[]),
        now(),
    )
    .err()
    .expect("an expired issuer must not sign");
    assert!(matches!(error, CaError::IssuerExpired { .. }), "{error:?}");
    assert_eq!(error.code(), ErrorCode::InvalidRequest);
    assert!(error.to_string().contains("expired"), "{error}");
}

#[test]
fn future_issuer_is_rejected() {
    let root = root(KeyAlgorithm::EcdsaP384);
    let future = issuer(
        &root,
        "future",
        KeyAlgorithm::EcdsaP256,
        None,
        now() + Duration::days(1),
    );
    let error = issue(
        &future,
        request(Profile::Server, "app.example.com", &[], &[]),
        now(),
    )
    .err()
    .expect("a not yet valid issuer must not sign");
    assert!(
        matches!(error, CaError::IssuerNotYetValid { .. }),
        "{error:?}"
    );
    assert_eq!(error.code(), ErrorCode::InvalidRequest);
}

#[test]
fn expired_root_creates_no_issuer() {
    let created = now() - Duration::days(20);
    let config = CaMountConfig {
        ttl: Some("10d".to_owned()),
        ..CaMountConfig::default()
    };
    let old_root = create_root("pki", &config, created).unwrap();
    let options = IssuerOptions {
        name: "late",
        ..IssuerOptions::default()
    };
    let error = old_root
        .certificate
        .create_issuer(old_root.key.pkcs8_der(), &options, now())
        .err()
        .expect("an expired root must not sign");
    assert!(matches!(error, CaError::IssuerExpired { .. }), "{error:?}");
}

#[test]
fn ip_sans_are_4_and_16_octets() {
    let dir = tempfile::tempdir().unwrap();
    let root = root(KeyAlgorithm::EcdsaP384);
    let issuer = issuer(&root, "test", KeyAlgorithm::EcdsaP256, None, now());
    let ips = ["192.0.2.10".to_owned(), "2001:db8::1".to_owned()];
    let leaf = issue(
        &issuer,
        request(Profile::Server, "db.example.com", &[], &ips),
        now(),
    )
    .unwrap();
    let cert = parse(&leaf.issued.der);
    assert_eq!(san_dns_names(&cert), ["db.example.com"]);
    let octets = san_ip_octets(&cert);
    assert_eq!(octets.len(), 2);
    assert_eq!(octets[0], [192, 0, 2, 10]);
    assert_eq!(octets[1].len(), 16);
    assert_eq!(octets[1][..2], [0x20, 0x01]);
    assert_eq!(octets[1][15], 1);

    let leaf_pem = write(dir.path(), "leaf.pem", &leaf.issued.pem);
    let (ok, output) = openssl(&[
        "x509",
        "-in",
        leaf_pem.to_str().unwrap(),
        "-noout",
        "-ext",
        "subjectAltName",
    ]);
    assert!(ok, "{output}");
    assert!(output.contains("IP Address:192.0.2.10"), "{output}");
    assert!(
        output.contains("IP Address:2001:DB8:0:0:0:0:0:1"),
        "{output}"
    );
    assert!(!output.contains("DNS:192"), "{output}");
    assert!(!output.contains("DNS:2001"), "{output}");
}

#[test]
fn ip_common_name_becomes_ip_san_only() {
    let root = root(KeyAlgorithm::EcdsaP384);
    let issuer = issuer(&root, "test", KeyAlgorithm::EcdsaP256, None, now());
    for (common_name, length) in [("192.0.2.10", 4), ("2001:db8::1", 16)] {
        let leaf = issue(
            &issuer,
            request(Profile::Server, common_name, &[], &[]),
            now(),
        )
        .unwrap();
        let cert = parse(&leaf.issued.der);
        assert!(
            san_dns_names(&cert).is_empty(),
            "{common_name}: dNSName present"
        );
        let octets = san_ip_octets(&cert);
        assert_eq!(octets.len(), 1, "{common_name}");
        assert_eq!(octets[0].len(), length, "{common_name}");
    }
}

#[test]
fn dns_name_that_is_an_ip_is_rejected() {
    let root = root(KeyAlgorithm::EcdsaP384);
    let issuer = issuer(&root, "test", KeyAlgorithm::EcdsaP256, None, now());
    let names = ["192.0.2.10".to_owned()];
    let error = issue(
        &issuer,
        request(Profile::Server, "app.example.com", &names, &[]),
        now(),
    )
    .err()
    .expect("an IP in dns_names must be rejected");
    assert!(matches!(error, CaError::InvalidDnsName { .. }), "{error:?}");
    assert_eq!(error.code(), ErrorCode::InvalidRequest);
}

#[test]
fn server_names_are_lowercase_in_either_order() {
    let dir = tempfile::tempdir().unwrap();
    let root = root(KeyAlgorithm::EcdsaP384);
    let issuer = issuer(&root, "test", KeyAlgorithm::EcdsaP256, None, now());
    let first = ["Other.Example.com".to_owned()];
    let second = ["SUB.EXAMPLE.COM".to_owned()];
    let leaf_a = issue(
        &issuer,
        request(Profile::Server, "SUB.EXAMPLE.COM", &first, &[]),
        now(),
    )
    .unwrap();
    let leaf_b = issue(
        &issuer,
        request(Profile::Server, "Other.Example.com", &second, &[]),
        now(),
    )
    .unwrap();

    let cert_a = parse(&leaf_a.issued.der);
    let cert_b = parse(&leaf_b.issued.der);
    assert_eq!(
        san_dns_names(&cert_a),
        ["sub.example.com", "other.example.com"]
    );
    let mut names_b = san_dns_names(&cert_b);
    names_b.sort();
    assert_eq!(names_b, ["other.example.com", "sub.example.com"]);
    let common_name = cert_a
        .subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap();
    assert_eq!(common_name, "sub.example.com");

    let leaf_pem = write(dir.path(), "leaf.pem", &leaf_a.issued.pem);
    let (ok, output) = openssl(&[
        "x509",
        "-in",
        leaf_pem.to_str().unwrap(),
        "-noout",
        "-checkhost",
        "sub.example.com",
    ]);
    assert!(ok, "{output}");
    assert!(output.contains("does match certificate"), "{output}");
}

#[test]
fn duplicate_names_are_dropped() {
    let root = root(KeyAlgorithm::EcdsaP384);
    let issuer = issuer(&root, "test", KeyAlgorithm::EcdsaP256, None, now());
    let names = ["APP.example.com.".to_owned(), "app.example.com".to_owned()];
    let ips = ["2001:db8::1".to_owned(), "2001:DB8:0::1".to_owned()];
    let leaf = issue(
        &issuer,
        request(Profile::Server, "app.example.com", &names, &ips),
        now(),
    )
    .unwrap();
    let cert = parse(&leaf.issued.der);
    assert_eq!(san_dns_names(&cert), ["app.example.com"]);
    assert_eq!(san_ip_octets(&cert).len(), 1);
}

#[test]
fn server_common_name_must_be_a_host() {
    let leaf_request = request(Profile::Server, "Example Server A", &[], &[]);
    let error = leaf_request.validate().unwrap_err();
    assert!(
        matches!(error, CaError::InvalidCommonName { .. }),
        "{error:?}"
    );
    assert_eq!(error.code(), ErrorCode::InvalidRequest);
    assert!(
        error.to_string().contains("\"Example Server A\""),
        "{error}"
    );
    assert!(
        error.to_string().contains("DNS name or an IP address"),
        "{error}"
    );
}

#[test]
fn bad_wildcards_are_rejected_on_issue() {
    for name in [
        "*.*.example.com",
        "foo.*.example.com",
        "f*.example.com",
        "*.com",
        "*",
    ] {
        let names = [name.to_owned()];
        let error = request(Profile::Server, "app.example.com", &names, &[])
            .validate()
            .unwrap_err();
        assert_eq!(error.code(), ErrorCode::InvalidRequest, "{name}");
        let error = request(Profile::Server, name, &[], &[])
            .validate()
            .unwrap_err();
        assert_eq!(
            error.code(),
            ErrorCode::InvalidRequest,
            "{name} as common name"
        );
    }
    let names = ["*.example.com".to_owned()];
    let validated = request(Profile::Server, "example.com", &names, &[])
        .validate()
        .unwrap();
    assert_eq!(
        validated.subject_alt_names.dns_names,
        ["example.com", "*.example.com"]
    );
}

#[test]
fn client_profile_takes_free_text() {
    let root = root(KeyAlgorithm::EcdsaP384);
    let issuer = issuer(&root, "test", KeyAlgorithm::EcdsaP256, None, now());
    let leaf = issue(
        &issuer,
        request(Profile::Client, "Example Client A", &[], &[]),
        now(),
    )
    .unwrap();
    let cert = parse(&leaf.issued.der);
    let san = cert
        .subject_alternative_name()
        .unwrap()
        .expect("SAN present");
    assert_eq!(
        san.value.general_names,
        [GeneralName::RFC822Name("client-a@example.com")],
        "the client name stays out of the SANs"
    );
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap();
    assert_eq!(common_name, "Example Client A");

    for bad in ["", "line\nbreak", &"x".repeat(65)] {
        let error = request(Profile::Client, bad, &[], &[])
            .validate()
            .unwrap_err();
        assert!(
            matches!(error, CaError::InvalidCommonName { .. }),
            "{bad:?}: {error:?}"
        );
    }
}

#[test]
fn client_needs_a_san() {
    let mut without = request(Profile::Client, "Example Client A", &[], &[]);
    without.email_addresses = &[];
    let error = without.validate().unwrap_err();
    assert!(
        matches!(error, CaError::MissingSubjectAltName { .. }),
        "{error:?}"
    );
}

#[test]
fn peer_needs_a_san() {
    let error = request(Profile::Peer, "Node A", &[], &[])
        .validate()
        .unwrap_err();
    assert!(
        matches!(error, CaError::MissingSubjectAltName { .. }),
        "{error:?}"
    );
    assert_eq!(error.code(), ErrorCode::InvalidRequest);

    let names = ["node-a.example.com".to_owned()];
    let validated = request(Profile::Peer, "Node A", &names, &[])
        .validate()
        .unwrap();
    assert_eq!(validated.common_name, "Node A");
    assert_eq!(
        validated.subject_alt_names.dns_names,
        ["node-a.example.com"]
    );

    let validated = request(Profile::Peer, "Node-A.Example.com", &[], &[])
        .validate()
        .unwrap();
    assert_eq!(
        validated.subject_alt_names.dns_names,
        ["node-a.example.com"]
    );
}

#[test]
fn zero_ttl_is_rejected() {
    for ttl in ["0s", "0h", "-1h", "", "soon"] {
        let mut leaf_request = request(Profile::Server, "app.example.com", &[], &[]);
        leaf_request.ttl = Some(ttl);
        let error = leaf_request.validate().unwrap_err();
        assert!(
            matches!(error, CaError::InvalidTtl { .. }),
            "{ttl:?}: {error:?}"
        );
        assert_eq!(error.code(), ErrorCode::InvalidRequest, "{ttl:?}");
    }
}

#[test]
fn too_many_names_are_rejected() {
    let names: Vec<String> = (0..101).map(|i| format!("host{i}.example.com")).collect();
    let error = request(Profile::Server, "app.example.com", &names, &[])
        .validate()
        .unwrap_err();
    assert!(
        matches!(error, CaError::TooManySubjectAltNames { .. }),
        "{error:?}"
    );
}

#[test]
fn leaf_serials_are_16_positive_octets() {
    let root = root(KeyAlgorithm::EcdsaP384);
    let issuer = issuer(&root, "test", KeyAlgorithm::EcdsaP256, None, now());
    for _ in 0..20 {
        let leaf = issue(
            &issuer,
            request(Profile::Client, "serial test", &[], &[]),
            now(),
        )
        .unwrap();
        let cert = parse(&leaf.issued.der);
        let raw = cert.raw_serial();
        assert_eq!(raw.len(), 16, "{raw:02x?}");
        assert!((1..=0x7f).contains(&raw[0]), "{raw:02x?}");
        assert_eq!(leaf.issued.fields.serial_hex, hex::encode(raw));
    }
}

#[test]
fn private_key_pem_matches_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let root = root(KeyAlgorithm::EcdsaP384);
    let issuer = issuer(&root, "test", KeyAlgorithm::EcdsaP256, None, now());
    for algorithm in KeyAlgorithm::ALL {
        let mut leaf_request = request(Profile::Server, "app.example.com", &[], &[]);
        leaf_request.key_algorithm = Some(algorithm);
        let leaf = issue(&issuer, leaf_request, now()).unwrap();
        let key_pem = write(dir.path(), "key.pem", &leaf.key.to_pkcs8_pem());
        let leaf_pem = write(dir.path(), "leaf.pem", &leaf.issued.pem);
        let (ok, from_key) = openssl(&["pkey", "-in", key_pem.to_str().unwrap(), "-pubout"]);
        assert!(ok, "{algorithm}: {from_key}");
        let (ok, from_cert) = openssl(&[
            "x509",
            "-in",
            leaf_pem.to_str().unwrap(),
            "-noout",
            "-pubkey",
        ]);
        assert!(ok, "{algorithm}: {from_cert}");
        assert_eq!(from_key, from_cert, "{algorithm}");
    }
}

#[test]
fn loaded_ca_matches_created_ca() {
    let root = root(KeyAlgorithm::Ed25519);
    let loaded = CaCertificate::from_der(root.certificate.der()).unwrap();
    assert_eq!(loaded.subject(), root.certificate.subject());
    assert_eq!(loaded.serial_hex(), root.certificate.serial_hex());
    assert_eq!(loaded.pem(), root.certificate.pem());
    assert!(loaded.check_private_key(root.key.pkcs8_der()).is_ok());

    let other = GeneratedKey::generate(KeyAlgorithm::Ed25519).unwrap();
    let error = loaded.check_private_key(other.pkcs8_der()).unwrap_err();
    assert!(matches!(error, CaError::KeyMismatch { .. }), "{error:?}");
    assert_eq!(error.code(), ErrorCode::Internal);
}

#[test]
fn leaf_is_not_a_ca_certificate() {
    let root = root(KeyAlgorithm::EcdsaP384);
    let issuer = issuer(&root, "test", KeyAlgorithm::EcdsaP256, None, now());
    let leaf = issue(
        &issuer,
        request(Profile::Server, "app.example.com", &[], &[]),
        now(),
    )
    .unwrap();
    let error = CaCertificate::from_der(&leaf.issued.der).unwrap_err();
    assert!(
        matches!(error, CaError::InvalidCertificate { .. }),
        "{error:?}"
    );
}

#[test]
fn bad_issuer_names_are_rejected() {
    let root = root(KeyAlgorithm::EcdsaP384);
    for name in ["", "Web", "../ca", "a b", "-x", &"a".repeat(65)] {
        let options = IssuerOptions {
            name,
            ..IssuerOptions::default()
        };
        let error = root
            .certificate
            .create_issuer(root.key.pkcs8_der(), &options, now())
            .err()
            .expect("invalid name accepted");
        assert!(
            matches!(error, CaError::InvalidIssuerName { .. }),
            "{name:?}: {error:?}"
        );
    }
}
