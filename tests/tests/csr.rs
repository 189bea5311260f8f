//! `POST /v1/pki/{mount}/sign` through the real daemons, with CSRs made by
//! the `openssl` command: what it signs, what it rejects, and that a
//! rejected CSR leaves nothing behind.

use std::path::{Path, PathBuf};
use std::process::Command;

use metacrypt_tests::{ADMIN_PASSWORD, ADMIN_USER, Cluster, USER, USER_PASSWORD, run};
use serde_json::{Value, json};
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::{OID_EC_P256, OID_NIST_EC_P384};
use x509_parser::prelude::{FromDer, X509Certificate};

struct Fixture {
    cluster: Cluster,
    token: String,
    dir: PathBuf,
}

fn fixture() -> Fixture {
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
    let dir = cluster.path("csr");
    std::fs::create_dir_all(&dir).expect("create csr dir");
    Fixture {
        cluster,
        token,
        dir,
    }
}

/// Makes a CSR with `openssl req` and returns its path. `key` is the
/// `-newkey` argument and `options` go after it.
fn make_csr(dir: &Path, name: &str, key: &[&str], options: &[&str]) -> PathBuf {
    let csr = dir.join(format!("{name}.csr"));
    run(Command::new("openssl")
        .args(["req", "-new", "-nodes", "-keyout"])
        .arg(dir.join(format!("{name}.key")))
        .args(key)
        .args(options)
        .arg("-out")
        .arg(&csr));
    csr
}

fn p256() -> Vec<&'static str> {
    vec!["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).expect("read CSR")
}

impl Fixture {
    fn sign(&self, csr: &str, profile: &str) -> (u16, Value) {
        self.cluster.post(
            "/v1/pki/pki/sign",
            Some(&self.token),
            json!({"issuer": "web", "profile": profile, "csr": csr, "ttl": "24h"}),
        )
    }

    fn stored(&self) -> usize {
        let (status, body) = self
            .cluster
            .get_json("/v1/pki/pki/certs?limit=1000", Some(&self.token));
        assert_eq!(status, 200, "{body}");
        body["certs"].as_array().map_or(0, Vec::len)
    }

    /// Asserts a 400 naming `named` and that nothing was stored.
    fn assert_rejected(&self, csr: &str, profile: &str, named: &str) {
        let before = self.stored();
        let (status, reply) = self.sign(csr, profile);
        assert_eq!(status, 400, "{named}: {reply}");
        let message = reply["error"].as_str().unwrap_or_default();
        assert!(message.contains(named), "{message:?} names {named:?}");
        assert_eq!(self.stored(), before, "{named}: nothing stored");
    }
}

fn certificate_der(reply: &Value) -> Vec<u8> {
    metacrypt_tests::pem_certificates(reply["certificate"].as_str().expect("certificate")).remove(0)
}

fn dns_sans(cert: &X509Certificate<'_>) -> Vec<String> {
    cert.subject_alternative_name()
        .expect("SAN parses")
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::DNSName(text) => Some((*text).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn csr_keys_are_certified_with_profile_extensions() {
    let f = fixture();
    // The CSR requests nonRepudiation and an organization, which the
    // certificate leaves out because its extensions come from the profile.
    let csr = make_csr(
        &f.dir,
        "p256",
        &p256(),
        &[
            "-subj",
            "/CN=App.Example.com/O=Ignored Org",
            "-addext",
            "subjectAltName=DNS:alt.example.com,IP:192.0.2.10,URI:spiffe://example.com/web",
            "-addext",
            "keyUsage=critical,digitalSignature,nonRepudiation",
            "-addext",
            "extendedKeyUsage=serverAuth",
        ],
    );
    let (status, reply) = f.sign(&read(&csr), "server");
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["chain"].as_array().map(Vec::len), Some(2));
    assert!(reply.get("private_key").is_none(), "no key in a sign reply");
    let der = certificate_der(&reply);
    let (_, cert) = X509Certificate::from_der(&der).expect("parse");
    assert_eq!(cert.subject().to_string(), "CN=app.example.com");
    let mut dns = dns_sans(&cert);
    dns.sort();
    assert_eq!(dns, ["alt.example.com", "app.example.com"]);
    let key_usage = cert.key_usage().unwrap().expect("keyUsage").value;
    assert!(key_usage.digital_signature());
    assert!(!key_usage.non_repudiation(), "CSR key usage ignored");
    assert!(
        cert.basic_constraints()
            .unwrap()
            .is_some_and(|bc| !bc.value.ca)
    );
    assert_eq!(
        cert.public_key()
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok()),
        Some(OID_EC_P256)
    );

    let serial = reply["serial_number"].as_str().expect("serial");
    let (status, record) = f
        .cluster
        .get_json(&format!("/v1/pki/pki/certs/{serial}"), Some(&f.token));
    assert_eq!(status, 200, "{record}");
    assert_eq!(record["key_algorithm"], "ecdsa-p256");
    assert_eq!(record["uris"], json!(["spiffe://example.com/web"]));

    // P-384 signed with SHA-384, RSA-2048 and Ed25519 are accepted, and the
    // certificate keeps the CSR's curve.
    let p384 = make_csr(
        &f.dir,
        "p384",
        &[
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
            "-sha384",
        ],
        &["-subj", "/CN=p384.example.com"],
    );
    let (status, reply) = f.sign(&read(&p384), "peer");
    assert_eq!(status, 200, "{reply}");
    let der = certificate_der(&reply);
    let (_, cert) = X509Certificate::from_der(&der).expect("parse");
    assert_eq!(
        cert.public_key()
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok()),
        Some(OID_NIST_EC_P384)
    );
    for (name, key) in [
        ("rsa", vec!["-newkey", "rsa:2048"]),
        ("ed", vec!["-newkey", "ed25519"]),
    ] {
        let csr = make_csr(
            &f.dir,
            name,
            &key,
            &[
                "-subj",
                "/CN=Client B",
                "-addext",
                "subjectAltName=email:b@example.com",
            ],
        );
        let (status, reply) = f.sign(&read(&csr), "client");
        assert_eq!(status, 200, "{name}: {reply}");
    }

    // A CSR with a host name as CN and no SAN: the CN becomes a DNS SAN.
    let bare = make_csr(&f.dir, "bare", &p256(), &["-subj", "/CN=bare.example.com"]);
    let (status, reply) = f.sign(&read(&bare), "server");
    assert_eq!(status, 200, "{reply}");
    let cert_path = f.dir.join("bare.pem");
    std::fs::write(&cert_path, reply["certificate"].as_str().unwrap()).unwrap();
    let output = run(Command::new("openssl")
        .args(["x509", "-noout", "-checkhost", "bare.example.com", "-in"])
        .arg(&cert_path));
    assert!(output.contains("does match"), "{output}");

    // A user without the admin role may sign once a policy rule allows
    // sign-csr with this issuer; a request without a token may not.
    let user = f.cluster.login(USER, USER_PASSWORD);
    let body = json!({"issuer": "web", "profile": "server", "csr": read(&bare)});
    let (status, reply) = f
        .cluster
        .post("/v1/pki/pki/sign", Some(&user), body.clone());
    assert_eq!(status, 403, "{reply}");
    let (status, reply) = f.cluster.call(
        reqwest::Method::PUT,
        "/v1/policy/rules/sign-web",
        Some(&f.token),
        Some(json!({"effect": "allow", "users": [USER], "resources": ["pki/sign-csr/web"]})),
    );
    assert_eq!(status, 200, "{reply}");
    let (status, reply) = f
        .cluster
        .post("/v1/pki/pki/sign", Some(&user), body.clone());
    assert_eq!(status, 200, "{reply}");
    let (status, reply) = f.cluster.post("/v1/pki/pki/sign", None, body);
    assert_eq!(status, 401, "{reply}");
}

#[test]
fn csrs_asking_too_much_are_rejected() {
    let f = fixture();
    let cases: [(&str, Vec<&str>, Vec<&str>, &str); 7] = [
        (
            "ca",
            p256(),
            vec!["-addext", "basicConstraints=critical,CA:TRUE"],
            "CA:TRUE",
        ),
        (
            "certsign",
            p256(),
            vec!["-addext", "keyUsage=critical,keyCertSign"],
            "keyCertSign",
        ),
        (
            "codesign",
            p256(),
            vec!["-addext", "extendedKeyUsage=codeSigning"],
            "extended key usages",
        ),
        (
            "clientauth",
            p256(),
            vec!["-addext", "extendedKeyUsage=clientAuth"],
            "extended key usages",
        ),
        (
            "constraints",
            p256(),
            vec!["-addext", "nameConstraints=permitted;DNS:example.com"],
            "name constraints",
        ),
        (
            "mismatch",
            vec![
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-384",
                "-sha256",
            ],
            vec![],
            "does not match",
        ),
        ("rsa1024", vec!["-newkey", "rsa:1024"], vec![], "2048"),
    ];
    for (name, key, extra, named) in cases {
        let mut options = vec!["-subj", "/CN=app.example.com"];
        options.extend(extra);
        let csr = make_csr(&f.dir, name, &key, &options);
        f.assert_rejected(&read(&csr), "server", named);
    }

    let no_san = make_csr(&f.dir, "nosan", &p256(), &["-subj", "/CN=Client C"]);
    f.assert_rejected(&read(&no_san), "client", "subject alternative name");
    let text = make_csr(&f.dir, "text", &p256(), &["-subj", "/CN=Example Server A"]);
    f.assert_rejected(&read(&text), "server", "Example Server A");
    let outside = make_csr(
        &f.dir,
        "badsan",
        &p256(),
        &[
            "-subj",
            "/CN=a.example.com",
            "-addext",
            "subjectAltName=DNS:*.*.example.com",
        ],
    );
    f.assert_rejected(&read(&outside), "server", "*.*.example.com");
    f.assert_rejected("not a CSR", "server", "PEM");
}

/// Converts a CSR between PEM and DER with `openssl req`, which does not
/// verify the signature.
fn convert(dir: &Path, input: &Path, inform: &str, outform: &str, name: &str) -> PathBuf {
    let output = dir.join(name);
    run(Command::new("openssl")
        .args(["req", "-inform", inform, "-outform", outform, "-in"])
        .arg(input)
        .arg("-out")
        .arg(&output));
    output
}

fn spki_der(dir: &Path, csr: &Path, name: &str) -> Vec<u8> {
    let pem = dir.join(format!("{name}.pub"));
    run(Command::new("openssl")
        .args(["req", "-noout", "-pubkey", "-in"])
        .arg(csr)
        .arg("-out")
        .arg(&pem));
    let der = dir.join(format!("{name}.pub.der"));
    run(Command::new("openssl")
        .args(["pkey", "-pubin", "-outform", "DER", "-in"])
        .arg(&pem)
        .arg("-out")
        .arg(&der));
    std::fs::read(der).expect("read SPKI")
}

/// Returns whether `openssl req -verify` accepts the CSR's self-signature.
/// OpenSSL 3.0 exits with 0 either way, so the printed result decides.
fn openssl_req_verifies(csr: &Path) -> bool {
    let output = Command::new("openssl")
        .args(["req", "-verify", "-noout", "-in"])
        .arg(csr)
        .output()
        .expect("run openssl req -verify");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output.status.success() && text.contains("verify OK") && !text.contains("failure")
}

#[test]
fn csr_without_proof_of_possession_is_rejected() {
    let f = fixture();
    let subject = ["-subj", "/CN=app.example.com"];
    let first = make_csr(&f.dir, "first", &p256(), &subject);
    let second = make_csr(&f.dir, "second", &p256(), &subject);
    let first_der_path = convert(&f.dir, &first, "PEM", "DER", "first.der");
    let first_der = std::fs::read(&first_der_path).expect("read DER");

    // One flipped byte in the signature, which ends the DER.
    let mut flipped = first_der.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x01;
    let flipped_path = f.dir.join("flipped.der");
    std::fs::write(&flipped_path, &flipped).unwrap();
    let flipped_pem = convert(&f.dir, &flipped_path, "DER", "PEM", "flipped.csr");

    // The second CSR's public key in place of the first's, after signing.
    let first_spki = spki_der(&f.dir, &first, "first");
    let second_spki = spki_der(&f.dir, &second, "second");
    assert_eq!(first_spki.len(), second_spki.len());
    let start = first_der
        .windows(first_spki.len())
        .position(|window| window == first_spki.as_slice())
        .expect("SPKI inside the CSR");
    let mut swapped = first_der.clone();
    swapped[start..start + second_spki.len()].copy_from_slice(&second_spki);
    let swapped_path = f.dir.join("swapped.der");
    std::fs::write(&swapped_path, &swapped).unwrap();
    let swapped_pem = convert(&f.dir, &swapped_path, "DER", "PEM", "swapped.csr");

    assert!(openssl_req_verifies(&first), "the original verifies");
    for csr in [&flipped_pem, &swapped_pem] {
        assert!(!openssl_req_verifies(csr), "{} verifies", csr.display());
        f.assert_rejected(&read(csr), "server", "signature does not verify");
    }
    // Proof of possession is checked before the issuer is looked up.
    let (status, reply) = f.cluster.post(
        "/v1/pki/pki/sign",
        Some(&f.token),
        json!({"issuer": "missing", "profile": "server", "csr": read(&swapped_pem)}),
    );
    assert_eq!(status, 400, "{reply}");
}
