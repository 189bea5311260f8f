//! Lints every kind of certificate the CA engine produces through the real
//! daemons: a root and an issuer for each key algorithm, leaves of each
//! profile and key algorithm, leaves signed for CSRs, renewed leaves, and an
//! issuer with
//! name constraints with leaves that use every SAN type and usage override;
//! and the CRL of every issuer, two of them listing revoked leaves. CRLs
//! must pass `openssl crl -verify` and pkilint's RFC 5280 CRL validator.
//!
//! The full-matrix mount has a public base URL, so its issuers and leaves
//! carry a CRL distribution point and an Authority Information Access
//! extension, and the test checks that they do.
//!
//! Each certificate must pass `openssl verify -x509_strict` against its
//! chain and have no pkilint finding of severity WARNING or higher from the
//! RFC 5280 validator. Leaves must also build a path in the strict verifier
//! of the Python `cryptography` package (server verifier for `server` and
//! `peer`, client verifier for `client` and `peer`), and server-side leaves
//! are linted with pkilint's CA/Browser Forum TLS validator. The findings of
//! that validator which do not apply to a private CA are listed in
//! [`CABF_EXCEPTIONS`] with the reason. Any other finding fails the test.
//!
//! The Python side is `tests/lint/lint_certs.py`, which needs `pkilint` and
//! `cryptography` (installed by `.ci/run`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use metacrypt_tests::{ADMIN_PASSWORD, ADMIN_USER, Cluster};
use serde_json::{Value, json};
use x509_parser::oid_registry::OID_PKIX_AUTHORITY_INFO_ACCESS;
use x509_parser::prelude::{FromDer, X509Certificate};

const KEY_ALGORITHMS: [&str; 6] = [
    "ecdsa-p256",
    "ecdsa-p384",
    "ed25519",
    "rsa-2048",
    "rsa-3072",
    "rsa-4096",
];
const PROFILES: [&str; 3] = ["server", "client", "peer"];

/// Key algorithm of the issuer under which leaves of every key algorithm are
/// issued. Under the other issuers, leaves use the issuer's own algorithm.
const FULL_MATRIX_ISSUER: &str = "ecdsa-p256";

const HOSTNAME: &str = "app.example.com";

/// Public base URL of the full-matrix mount, so its leaves carry a CRL
/// distribution point and an Authority Information Access extension with
/// the issuer's caIssuers URI, and its issuers one with the root's. The
/// other mounts have none.
const PUBLIC_BASE_URL: &str = "http://pki.example.com";

/// When an accepted finding applies.
#[derive(Clone, Copy)]
enum Scope {
    /// Every server-side leaf.
    Always,
    /// Leaves whose key or signer uses Ed25519.
    Ed25519,
    /// Leaves whose request asked for keyEncipherment.
    KeyEncipherment,
    /// Findings whose message contains this text, which names the value.
    Value(&'static str),
    /// Leaves of mounts without a public base URL, which carry no CRL
    /// distribution point and no Authority Information Access extension.
    WithoutBaseUrl,
}

/// Findings of pkilint's RFC 5280 validator that are accepted on purpose,
/// because the value is valid under a later standard that the validator
/// does not implement.
const PKIX_EXCEPTIONS: [(&str, Scope, &str); 2] = [
    (
        "pkix.invalid_domain_name_syntax",
        Scope::Value("\"*."),
        "RFC 5280 defines no wildcard syntax, but RFC 6125 section 6.4.3 and the \
         Baseline Requirements allow a whole leftmost `*` label, and the CA/Browser \
         Forum validator accepts it",
    ),
    (
        "pkix.invalid_uri_syntax",
        Scope::Value("\"spiffe://"),
        "pkilint checks URIs with the Python `validators` package, which knows \
         only URL schemes such as https; spiffe://example.com/ns/web is a valid \
         RFC 3986 URI",
    ),
];

/// Findings of the CA/Browser Forum TLS validator that are accepted on
/// purpose, because the rule is for publicly trusted certificates and does
/// not apply to a private CA, or because it contradicts RFC 5280.
const CABF_EXCEPTIONS: [(&str, Scope, &str); 10] = [
    (
        "cabf.serverauth.dv.common_name_attribute_present",
        Scope::Always,
        "the API requires a subject common name, which for server certificates \
         is also a dNSName SAN; private TLS clients and operators still read it",
    ),
    (
        "cabf.serverauth.subscriber.subject_key_identifier_extension_present",
        Scope::Always,
        "RFC 5280 section 4.2.1.2 says end-entity certificates SHOULD carry an \
         SKI, and pkilint's RFC 5280 validator warns when it is missing \
         (pkix.certificate_skid_end_entity_missing); the CA follows RFC 5280",
    ),
    (
        "cabf.serverauth.subscriber.certificate_policies_extension_absent",
        Scope::Always,
        "the reserved CA/Browser Forum policy identifiers assert compliance with \
         the Baseline Requirements for publicly trusted certificates, which a \
         private CA does not claim",
    ),
    (
        "cabf.serverauth.subscriber.authority_info_access_extension_absent",
        Scope::WithoutBaseUrl,
        "a mount created without public_base_url does not know the URL under \
         which relying parties reach its issuer certificates, and the service \
         runs no OCSP responder, so there is no caIssuers or OCSP URL to point to",
    ),
    (
        "cabf.serverauth.subscriber.revocation_information_absent",
        Scope::WithoutBaseUrl,
        "a mount created without public_base_url does not know the URL under \
         which relying parties reach its CRL, so its certificates carry no CRL \
         distribution point",
    ),
    (
        "msft.end_entity.revocation_information_absent",
        Scope::WithoutBaseUrl,
        "the same rule in Microsoft's root program, for the same reason",
    ),
    (
        "cabf.internal_ip_address",
        Scope::Always,
        "a private CA certifies internal and reserved addresses; the test uses \
         192.0.2.10 and 2001:db8::1 from the documentation ranges",
    ),
    (
        "cabf.serverauth.prohibited_subject_public_key_algorithm_encoding",
        Scope::Ed25519,
        "the Baseline Requirements allow only RSA and ECDSA keys; Ed25519 \
         (RFC 8410) is offered for private deployments whose clients support it",
    ),
    (
        "cabf.serverauth.subscriber_rsa_digitalsignature_and_keyencipherment_present",
        Scope::KeyEncipherment,
        "keyEncipherment is only set when a request asks for it, for TLS 1.2 \
         clients that still use the RSA key exchange",
    ),
    (
        "cabf.serverauth.prohibited_signature_algorithm_encoding",
        Scope::Ed25519,
        "the same rule for an Ed25519 signature by the issuer",
    ),
];

/// One certificate produced by the engine, written to a file.
struct Produced {
    name: String,
    kind: &'static str,
    profile: Option<&'static str>,
    key_algorithm: &'static str,
    /// Key algorithm of the CA that signed the certificate.
    signer_algorithm: &'static str,
    path: PathBuf,
    root: PathBuf,
    intermediates: Vec<PathBuf>,
    /// Extended key usages of a leaf, which decide the verifiers it must
    /// pass.
    extended_key_usages: Vec<&'static str>,
}

impl Produced {
    fn profile_extended_key_usages(profile: &str) -> Vec<&'static str> {
        match profile {
            "server" => vec!["serverAuth"],
            "client" => vec!["clientAuth"],
            _ => vec!["serverAuth", "clientAuth"],
        }
    }

    fn uses_ed25519(&self) -> bool {
        self.key_algorithm == "ed25519" || self.signer_algorithm == "ed25519"
    }

    fn manifest_entry(&self) -> Value {
        json!({
            "name": self.name,
            "path": self.path,
            "kind": self.kind,
            "profile": self.profile,
            "root": self.root,
            "intermediates": self.intermediates,
            "hostname": HOSTNAME,
        })
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    path
}

fn openssl_verify(cert: &Produced) -> Result<(), String> {
    let mut command = Command::new("openssl");
    command
        .args(["verify", "-x509_strict", "-CAfile"])
        .arg(&cert.root);
    for intermediate in &cert.intermediates {
        command.arg("-untrusted").arg(intermediate);
    }
    match cert.profile {
        Some("server") => {
            command.args(["-purpose", "sslserver"]);
        }
        Some("client") => {
            command.args(["-purpose", "sslclient"]);
        }
        _ => {}
    }
    let output = command
        .arg(&cert.path)
        .output()
        .expect("run openssl verify");
    let stdout = String::from_utf8_lossy(&output.stdout);
    if output.status.success() && stdout.contains(": OK") {
        Ok(())
    } else {
        Err(format!(
            "{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Creates mount `ca-<algorithm>` with a root and an issuer of `algorithm`
/// and issues its leaves.
fn produce_mount(
    cluster: &Cluster,
    token: &str,
    dir: &Path,
    algorithm: &'static str,
) -> Vec<Produced> {
    let mount = format!("ca-{algorithm}");
    let (status, body) = cluster.post(
        "/v1/mounts",
        Some(token),
        json!({"name": mount, "type": "ca", "config": {
        "common_name": format!("Lint Root {algorithm}"),
        "organization": "Metacrypt Tests",
        "key_algorithm": algorithm,
        "public_base_url": if algorithm == FULL_MATRIX_ISSUER {
            Some(PUBLIC_BASE_URL)
        } else {
            None
        }}}),
    );
    assert_eq!(status, 200, "mount {mount}: {body}");
    let (status, issuer) = cluster.post(
        &format!("/v1/pki/{mount}/issuers"),
        Some(token),
        json!({"name": "lint", "key_algorithm": algorithm, "ttl": "365d"}),
    );
    assert_eq!(status, 200, "issuer of {mount}: {issuer}");
    assert_eq!(issuer["key_algorithm"], algorithm);

    let root_pem = cluster
        .get(&format!("/v1/pki/{mount}/ca"))
        .expect("GET root")
        .text()
        .expect("root text");
    let root_path = write(dir, &format!("root-{algorithm}.pem"), &root_pem);
    let issuer_path = write(
        dir,
        &format!("issuer-{algorithm}.pem"),
        issuer["certificate"].as_str().expect("issuer certificate"),
    );
    let mut produced = vec![
        Produced {
            name: format!("root {algorithm}"),
            kind: "root",
            profile: None,
            key_algorithm: algorithm,
            signer_algorithm: algorithm,
            path: root_path.clone(),
            root: root_path.clone(),
            intermediates: Vec::new(),
            extended_key_usages: Vec::new(),
        },
        Produced {
            name: format!("issuer {algorithm}"),
            kind: "issuer",
            profile: None,
            key_algorithm: algorithm,
            signer_algorithm: algorithm,
            path: issuer_path.clone(),
            root: root_path.clone(),
            intermediates: Vec::new(),
            extended_key_usages: Vec::new(),
        },
    ];

    let leaf_algorithms: Vec<&'static str> = if algorithm == FULL_MATRIX_ISSUER {
        KEY_ALGORITHMS.to_vec()
    } else {
        vec![algorithm]
    };
    for profile in PROFILES {
        for leaf_algorithm in &leaf_algorithms {
            let common_name = if profile == "client" {
                "Example Client A"
            } else {
                HOSTNAME
            };
            let (status, body) = cluster.post(
                &format!("/v1/pki/{mount}/issue"),
                Some(token),
                json!({
                    "issuer": "lint",
                    "profile": profile,
                    "common_name": common_name,
                    "dns_names": ["alt.example.com"],
                    "ip_addresses": ["192.0.2.10", "2001:db8::1"],
                    "ttl": "30d",
                    "key_algorithm": leaf_algorithm,
                }),
            );
            assert_eq!(status, 200, "{mount} {profile} {leaf_algorithm}: {body}");
            let name = format!("leaf {profile} {leaf_algorithm} by {algorithm}");
            let path = write(
                dir,
                &format!("{}.pem", name.replace(' ', "-")),
                body["certificate"].as_str().expect("certificate"),
            );
            produced.push(Produced {
                name,
                kind: "leaf",
                profile: Some(profile),
                key_algorithm: leaf_algorithm,
                signer_algorithm: algorithm,
                path,
                root: root_path.clone(),
                intermediates: vec![issuer_path.clone()],
                extended_key_usages: Produced::profile_extended_key_usages(profile),
            });
        }
    }
    if algorithm == FULL_MATRIX_ISSUER {
        produced.extend(produce_csr_signed(
            cluster,
            token,
            dir,
            &mount,
            &root_path,
            &issuer_path,
        ));
        produced.extend(produce_constrained(cluster, token, dir, &mount, &root_path));
        let renewed = produce_renewed(cluster, token, dir, &mount, &produced);
        produced.extend(renewed);
    }
    produced
}

/// Signs CSRs made by `openssl req` for a server-side P-384 key (signed
/// with SHA-384) and a client RSA-3072 key under issuer `lint`.
fn produce_csr_signed(
    cluster: &Cluster,
    token: &str,
    dir: &Path,
    mount: &str,
    root_path: &Path,
    issuer_path: &Path,
) -> Vec<Produced> {
    let requests = [
        (
            "peer",
            "ecdsa-p384",
            vec![
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-384",
                "-sha384",
            ],
            vec![
                "-subj",
                "/CN=app.example.com",
                "-addext",
                "subjectAltName=DNS:alt.example.com,IP:192.0.2.10",
            ],
        ),
        (
            "client",
            "rsa-3072",
            vec!["-newkey", "rsa:3072"],
            vec![
                "-subj",
                "/CN=Example Client B",
                "-addext",
                "subjectAltName=email:client-b@example.com",
            ],
        ),
    ];
    let mut produced = Vec::new();
    for (profile, key_algorithm, key, options) in requests {
        let name = format!("csr {profile} {key_algorithm} by {FULL_MATRIX_ISSUER}");
        let stem = name.replace(' ', "-");
        let csr = dir.join(format!("{stem}.csr"));
        metacrypt_tests::run(
            Command::new("openssl")
                .args(["req", "-new", "-nodes", "-keyout"])
                .arg(dir.join(format!("{stem}.key")))
                .args(&key)
                .args(&options)
                .arg("-out")
                .arg(&csr),
        );
        let (status, reply) = cluster.post(
            &format!("/v1/pki/{mount}/sign"),
            Some(token),
            json!({"issuer": "lint", "profile": profile, "ttl": "30d",
                   "csr": std::fs::read_to_string(&csr).expect("read CSR")}),
        );
        assert_eq!(status, 200, "{name}: {reply}");
        let path = write(
            dir,
            &format!("{stem}.pem"),
            reply["certificate"].as_str().expect("certificate"),
        );
        produced.push(Produced {
            name,
            kind: "leaf",
            profile: Some(profile),
            key_algorithm,
            signer_algorithm: FULL_MATRIX_ISSUER,
            path,
            root: root_path.to_path_buf(),
            intermediates: vec![issuer_path.to_path_buf()],
            extended_key_usages: Produced::profile_extended_key_usages(profile),
        });
    }
    produced
}

/// Renews the first server leaf and the first CSR-signed leaf of the mount,
/// so the lint covers successors with a new key and with the CSR's key.
fn produce_renewed(
    cluster: &Cluster,
    token: &str,
    dir: &Path,
    mount: &str,
    produced: &[Produced],
) -> Vec<Produced> {
    let mut renewed = Vec::new();
    for prefix in ["leaf server", "csr peer"] {
        let old = produced
            .iter()
            .find(|cert| cert.name.starts_with(prefix))
            .expect("a leaf to renew");
        let pem = std::fs::read_to_string(&old.path).expect("read leaf");
        let der = metacrypt_tests::pem_certificates(&pem).remove(0);
        let (_, cert) = X509Certificate::from_der(&der).expect("parse leaf");
        let serial = hex::encode(cert.raw_serial());
        let (status, reply) = cluster.post(
            &format!("/v1/pki/{mount}/certs/{serial}/renew"),
            Some(token),
            json!({}),
        );
        assert_eq!(status, 200, "renew {}: {reply}", old.name);
        let name = format!("renewed {}", old.name);
        let path = write(
            dir,
            &format!("{}.pem", name.replace(' ', "-")),
            reply["certificate"].as_str().expect("certificate"),
        );
        renewed.push(Produced {
            name,
            kind: "leaf",
            profile: old.profile,
            key_algorithm: old.key_algorithm,
            signer_algorithm: old.signer_algorithm,
            path,
            root: old.root.clone(),
            intermediates: old.intermediates.clone(),
            extended_key_usages: old.extended_key_usages.clone(),
        });
    }
    renewed
}

/// Creates issuer `constrained` with every constraint, which puts a
/// NameConstraints extension in its certificate, and issues leaves with
/// email and URI SANs and with key usage overrides under it.
fn produce_constrained(
    cluster: &Cluster,
    token: &str,
    dir: &Path,
    mount: &str,
    root_path: &Path,
) -> Vec<Produced> {
    let (status, issuer) = cluster.post(
        &format!("/v1/pki/{mount}/issuers"),
        Some(token),
        json!({"name": "constrained", "ttl": "365d",
               "allowed_domains": ["example.com"], "allow_wildcards": true,
               "allowed_ip_ranges": ["192.0.2.0/24", "2001:db8::/32"], "max_ttl": "90d"}),
    );
    assert_eq!(status, 200, "constrained issuer: {issuer}");
    let issuer_path = write(
        dir,
        "issuer-constrained.pem",
        issuer["certificate"].as_str().expect("issuer certificate"),
    );
    let mut produced = vec![Produced {
        name: "issuer constrained".to_owned(),
        kind: "issuer",
        profile: None,
        key_algorithm: FULL_MATRIX_ISSUER,
        signer_algorithm: FULL_MATRIX_ISSUER,
        path: issuer_path.clone(),
        root: root_path.to_path_buf(),
        intermediates: Vec::new(),
        extended_key_usages: Vec::new(),
    }];
    let requests = [
        (
            "server",
            "rsa-2048",
            json!({"dns_names": ["*.app.example.com"], "ip_addresses": ["192.0.2.10"],
                   "key_usages": ["digitalSignature", "keyEncipherment"]}),
        ),
        (
            "client",
            "ecdsa-p256",
            json!({"email_addresses": ["ops@example.com"],
                   "uris": ["spiffe://example.com/ns/web"]}),
        ),
        (
            "peer",
            "ecdsa-p384",
            json!({"ip_addresses": ["2001:db8::1"], "extended_key_usages": ["serverAuth"]}),
        ),
    ];
    for (profile, leaf_algorithm, extra) in requests {
        let extended_key_usages = match extra["extended_key_usages"].as_array() {
            Some(_) => vec!["serverAuth"],
            None => Produced::profile_extended_key_usages(profile),
        };
        let mut body = json!({
            "issuer": "constrained",
            "profile": profile,
            "common_name": if profile == "client" { "Example Client A" } else { HOSTNAME },
            "ttl": "30d",
            "key_algorithm": leaf_algorithm,
        });
        for (key, value) in extra.as_object().expect("object") {
            body[key] = value.clone();
        }
        let (status, reply) = cluster.post(&format!("/v1/pki/{mount}/issue"), Some(token), body);
        assert_eq!(status, 200, "constrained {profile}: {reply}");
        let name = format!("leaf {profile} {leaf_algorithm} by constrained");
        let path = write(
            dir,
            &format!("{}.pem", name.replace(' ', "-")),
            reply["certificate"].as_str().expect("certificate"),
        );
        produced.push(Produced {
            name,
            kind: "leaf",
            profile: Some(profile),
            key_algorithm: leaf_algorithm,
            signer_algorithm: FULL_MATRIX_ISSUER,
            path,
            root: root_path.to_path_buf(),
            intermediates: vec![issuer_path.clone()],
            extended_key_usages,
        });
    }
    produced
}

/// Returns whether the PEM certificate at `path` has an Authority
/// Information Access extension.
fn has_authority_info_access(path: &Path) -> bool {
    let pem = std::fs::read_to_string(path).expect("read certificate");
    let der = metacrypt_tests::pem_certificates(&pem).remove(0);
    let (_, cert) = X509Certificate::from_der(&der).expect("parse certificate");
    cert.iter_extensions()
        .any(|extension| extension.oid == OID_PKIX_AUTHORITY_INFO_ACCESS)
}

/// Runs the Python helper on every produced certificate and returns its
/// report, keyed by certificate name.
fn python_report(dir: &Path, produced: &[Produced], crls: &[Crl]) -> BTreeMap<String, Value> {
    let manifest = json!({
        "certificates": produced.iter().map(Produced::manifest_entry).collect::<Vec<_>>(),
        "crls": crls.iter().map(|crl| json!({"name": crl.name, "path": crl.path})).collect::<Vec<_>>(),
    });
    let manifest_path = write(dir, "manifest.json", &manifest.to_string());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("lint/lint_certs.py");
    let output = Command::new("python3")
        .arg(&script)
        .arg(&manifest_path)
        .output()
        .expect("run python3 (install it with pkilint and cryptography, see .ci/run)");
    assert!(
        output.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the lint report is JSON")
}

fn finding_codes(findings: &Value) -> Vec<String> {
    findings
        .as_array()
        .map(|list| {
            list.iter()
                .map(|finding| {
                    format!(
                        "{} ({}) at {}{}",
                        finding["code"].as_str().unwrap_or("?"),
                        finding["severity"].as_str().unwrap_or("?"),
                        finding["node"].as_str().unwrap_or("?"),
                        finding["message"]
                            .as_str()
                            .map(|message| format!(": {message}"))
                            .unwrap_or_default()
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Returns the findings of `cert` that no exception covers, and the codes
/// of the exceptions that matched.
fn unexpected_findings(
    cert: &Produced,
    findings: &Value,
    exceptions: &[(&str, Scope, &str)],
) -> (Vec<String>, Vec<String>) {
    let mut unexpected = Vec::new();
    let mut excepted = Vec::new();
    for finding in findings.as_array().into_iter().flatten() {
        let code = finding["code"].as_str().unwrap_or_default();
        let message = finding["message"].as_str().unwrap_or_default();
        let covered = exceptions.iter().any(|(excepted_code, scope, _)| {
            *excepted_code == code
                && match scope {
                    Scope::Always => true,
                    Scope::Ed25519 => cert.uses_ed25519(),
                    Scope::KeyEncipherment => cert.name.contains("rsa-2048 by constrained"),
                    Scope::Value(fragment) => message.contains(fragment),
                    Scope::WithoutBaseUrl => cert.signer_algorithm != FULL_MATRIX_ISSUER,
                }
        });
        if covered {
            excepted.push(code.to_owned());
        } else {
            unexpected.push(finding_codes(&Value::Array(vec![finding.clone()])).concat());
        }
    }
    (unexpected, excepted)
}

/// Checks one verifier result. The Python `cryptography` verifier follows
/// the Web PKI algorithm list, which has no Ed25519, so a chain whose CA
/// certificates have Ed25519 keys must fail for exactly that reason. It does
/// not check the key algorithm of the leaf itself, so an Ed25519 leaf under
/// an ECDSA or RSA issuer must pass.
fn check_verifier(cert: &Produced, verifier: &str, result: &Value, failures: &mut Vec<String>) {
    let Some(text) = result.as_str() else {
        failures.push(format!("{}: {verifier} verifier did not run", cert.name));
        return;
    };
    if cert.signer_algorithm == "ed25519" {
        if !(text.contains("Forbidden") && text.contains("Ed25519")) {
            failures.push(format!(
                "{}: {verifier} verifier: expected an Ed25519 rejection, got {text}",
                cert.name
            ));
        }
    } else if text != "ok" {
        failures.push(format!("{}: {verifier} verifier: {text}", cert.name));
    }
}

#[test]
fn every_certificate_kind_is_lint_clean() {
    let cluster = Cluster::start();
    cluster.init();
    let token = cluster.login(ADMIN_USER, ADMIN_PASSWORD);
    let dir = cluster.path("lint");
    std::fs::create_dir_all(&dir).expect("create lint dir");

    let produced: Vec<Produced> = KEY_ALGORITHMS
        .iter()
        .flat_map(|algorithm| produce_mount(&cluster, &token, &dir, algorithm))
        .collect();
    assert_eq!(
        produced.len(),
        KEY_ALGORITHMS.len() * 2
            + PROFILES.len() * KEY_ALGORITHMS.len()
            + PROFILES.len() * (KEY_ALGORITHMS.len() - 1)
            + 2
            + 1
            + PROFILES.len()
            + 2
    );
    let crls = produce_crls(&cluster, &token, &dir, &produced);
    let report = python_report(&dir, &produced, &crls);

    let mut failures = Vec::new();
    let mut summary = Vec::new();
    for cert in &produced {
        // The lint covers AIA only if the certificates with a base URL carry it.
        let expects_aia = cert.kind != "root" && cert.signer_algorithm == FULL_MATRIX_ISSUER;
        if has_authority_info_access(&cert.path) != expects_aia {
            failures.push(format!(
                "{}: expected {} Authority Information Access extension",
                cert.name,
                if expects_aia { "an" } else { "no" }
            ));
        }
        if let Err(output) = openssl_verify(cert) {
            failures.push(format!(
                "{}: openssl verify -x509_strict: {output}",
                cert.name
            ));
        }
        let Some(result) = report.get(&cert.name) else {
            failures.push(format!("{}: missing from the lint report", cert.name));
            continue;
        };
        let (pkix, mut pkix_excepted) =
            unexpected_findings(cert, &result["pkix"], &PKIX_EXCEPTIONS);
        if !pkix.is_empty() {
            failures.push(format!("{}: RFC 5280 lint: {pkix:?}", cert.name));
        }
        pkix_excepted.sort();
        pkix_excepted.dedup();

        let mut line = format!("{}: openssl ok, pkix excepted {pkix_excepted:?}", cert.name);
        if matches!(cert.profile, Some("server" | "peer")) {
            let (unexpected, mut excepted) =
                unexpected_findings(cert, &result["cabf"], &CABF_EXCEPTIONS);
            excepted.sort();
            excepted.dedup();
            if result["cabf"].is_null() {
                failures.push(format!("{}: CA/Browser Forum lint did not run", cert.name));
            }
            if !unexpected.is_empty() {
                failures.push(format!(
                    "{}: CA/Browser Forum lint: {unexpected:?}",
                    cert.name
                ));
            }
            line.push_str(&format!(", cabf excepted {excepted:?}"));
        }
        if cert.extended_key_usages.contains(&"serverAuth") {
            check_verifier(cert, "server", &result["server_verify"], &mut failures);
        }
        if cert.extended_key_usages.contains(&"clientAuth") {
            check_verifier(cert, "client", &result["client_verify"], &mut failures);
        }
        if cert.kind == "leaf" {
            line.push_str(&format!(
                ", verifier server {} client {}",
                result["server_verify"], result["client_verify"]
            ));
        }
        summary.push(line);
    }
    // Shown with --nocapture, and with the failures when the test fails.
    for crl in &crls {
        let output = Command::new("openssl")
            .args(["crl", "-inform", "DER", "-noout", "-verify", "-in"])
            .arg(&crl.path)
            .arg("-CAfile")
            .arg(&crl.issuer)
            .output()
            .expect("run openssl crl");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if !text.contains("verify OK") {
            failures.push(format!("{}: openssl crl -verify: {text}", crl.name));
        }
        let findings = report
            .get(&crl.name)
            .map(|result| finding_codes(&result["pkix"]));
        match findings {
            Some(codes) if codes.is_empty() => {
                summary.push(format!("{}: openssl ok, RFC 5280 CRL lint clean", crl.name));
            }
            Some(codes) => failures.push(format!("{}: RFC 5280 CRL lint: {codes:?}", crl.name)),
            None => failures.push(format!("{}: missing from the lint report", crl.name)),
        }
    }
    // Shown with --nocapture, and with the failures when the test fails.
    println!("{}", summary.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A CRL fetched from the service, with the certificate of its issuer.
struct Crl {
    name: String,
    path: PathBuf,
    issuer: PathBuf,
}

/// Revokes two leaves of issuer `lint` of the full-matrix mount, one with a
/// reason and one without, then fetches the CRL of every issuer.
fn produce_crls(cluster: &Cluster, token: &str, dir: &Path, produced: &[Produced]) -> Vec<Crl> {
    let full_mount = format!("ca-{FULL_MATRIX_ISSUER}");
    let (status, page) = cluster.get_json(
        &format!("/v1/pki/{full_mount}/certs?issuer=lint&limit=2"),
        Some(token),
    );
    assert_eq!(status, 200, "{page}");
    let serials: Vec<String> = page["certs"]
        .as_array()
        .expect("certs")
        .iter()
        .map(|record| record["serial_number"].as_str().expect("serial").to_owned())
        .collect();
    assert_eq!(serials.len(), 2);
    for (serial, body) in serials
        .iter()
        .zip([json!({"reason": "keyCompromise"}), json!({})])
    {
        let (status, reply) = cluster.post(
            &format!("/v1/pki/{full_mount}/certs/{serial}/revoke"),
            Some(token),
            body,
        );
        assert_eq!(status, 200, "revoke {serial}: {reply}");
    }

    let mut crls = Vec::new();
    for issuer in produced.iter().filter(|cert| cert.kind == "issuer") {
        let (mount, name) = if issuer.name == "issuer constrained" {
            (full_mount.clone(), "constrained")
        } else {
            (format!("ca-{}", issuer.key_algorithm), "lint")
        };
        let response = cluster
            .get(&format!("/v1/pki/{mount}/crl?issuer={name}"))
            .expect("GET crl");
        assert_eq!(response.status().as_u16(), 200, "CRL of {mount}/{name}");
        let der = response.bytes().expect("CRL body");
        let crl_name = format!("crl {mount} {name}");
        let path = dir.join(format!("{}.crl", crl_name.replace(' ', "-")));
        std::fs::write(&path, &der).expect("write CRL");
        crls.push(Crl {
            name: crl_name,
            path,
            issuer: issuer.path.clone(),
        });
    }
    crls
}
