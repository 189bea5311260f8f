//! Cost of one leaf: key generation and signing under an issuer whose key is
//! parsed from PKCS#8 DER for every signature.
//!
//! Run with `cargo bench -p metacrypt-ca`. It prints medians and maxima per
//! step, and the cost of parsing the issuer key for each signature compared
//! with signing with a key parsed once.

use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING, EcdsaKeyPair, Ed25519KeyPair,
    RSA_PKCS1_SHA256, RsaKeyPair,
};
use metacrypt_ca::{BorrowedSigner, GeneratedKey, IssuerOptions, LeafRequest, NewCa, create_root};
use metacrypt_protocol::{CaMountConfig, KeyAlgorithm, Profile};
use rcgen::SigningKey;
use time::OffsetDateTime;

struct Samples(Vec<Duration>);

impl Samples {
    fn median(&mut self) -> Duration {
        self.0.sort();
        self.0[self.0.len() / 2]
    }

    fn max(&self) -> Duration {
        self.0.iter().copied().max().unwrap_or_default()
    }
}

fn iterations(algorithm: KeyAlgorithm) -> usize {
    match algorithm {
        KeyAlgorithm::Rsa2048 => 30,
        KeyAlgorithm::Rsa3072 => 10,
        KeyAlgorithm::Rsa4096 => 5,
        _ => 2_000,
    }
}

fn issuer(algorithm: KeyAlgorithm) -> NewCa {
    let root = create_root("pki", &CaMountConfig::default(), OffsetDateTime::now_utc()).unwrap();
    let options = IssuerOptions {
        name: "bench",
        key_algorithm: Some(algorithm),
        ..IssuerOptions::default()
    };
    root.certificate
        .create_issuer(root.key.pkcs8_der(), &options, OffsetDateTime::now_utc())
        .unwrap()
}

fn bench_leaves(issuer_algorithm: KeyAlgorithm) {
    let issuer = issuer(issuer_algorithm);
    let names = ["app.example.com".to_owned()];
    for leaf_algorithm in KeyAlgorithm::ALL {
        let request = LeafRequest {
            profile: Profile::Server,
            common_name: "app.example.com",
            organization: None,
            dns_names: &names,
            ip_addresses: &[],
            email_addresses: &[],
            uris: &[],
            ttl: Some("24h"),
            key_algorithm: Some(leaf_algorithm),
            key_usages: None,
            extended_key_usages: None,
        };
        let count = iterations(leaf_algorithm);
        let mut keygen = Samples(Vec::with_capacity(count));
        let mut sign = Samples(Vec::with_capacity(count));
        let mut total = Samples(Vec::with_capacity(count));
        for _ in 0..count {
            let start = Instant::now();
            let validated = request.validate().unwrap();
            let key = GeneratedKey::generate(validated.key_algorithm).unwrap();
            let generated = Instant::now();
            let leaf = issuer
                .certificate
                .issue_leaf(
                    issuer.key.pkcs8_der(),
                    &validated,
                    &key,
                    OffsetDateTime::now_utc(),
                )
                .unwrap();
            let signed = Instant::now();
            std::hint::black_box(leaf);
            keygen.0.push(generated - start);
            sign.0.push(signed - generated);
            total.0.push(signed - start);
        }
        println!(
            "issuer {:<10} leaf {:<10} n={count:<5} \
             keygen {:>10.1?}  sign {:>10.1?}  total {:>10.1?}  (max {:.1?})",
            issuer_algorithm.as_str(),
            leaf_algorithm.as_str(),
            keygen.median(),
            sign.median(),
            total.median(),
            total.max(),
        );
    }
}

/// Signs a 1 KiB message with the issuer key parsed for every signature
/// (what the crate does) and with a key parsed once.
fn bench_key_parsing(algorithm: KeyAlgorithm) {
    let key = GeneratedKey::generate(algorithm).unwrap();
    let message = [0x5au8; 1024];
    let count = iterations(algorithm) * 5;
    let rng = SystemRandom::new();

    let signer = BorrowedSigner::new(algorithm, key.pkcs8_der(), key.public_key());
    let start = Instant::now();
    for _ in 0..count {
        std::hint::black_box(signer.sign(&message).unwrap());
    }
    let per_signature = start.elapsed() / count as u32;

    let start = Instant::now();
    match algorithm {
        KeyAlgorithm::EcdsaP256 | KeyAlgorithm::EcdsaP384 => {
            let curve = if algorithm == KeyAlgorithm::EcdsaP256 {
                &ECDSA_P256_SHA256_ASN1_SIGNING
            } else {
                &ECDSA_P384_SHA384_ASN1_SIGNING
            };
            let pair = EcdsaKeyPair::from_pkcs8(curve, key.pkcs8_der()).unwrap();
            for _ in 0..count {
                std::hint::black_box(pair.sign(&rng, &message).unwrap());
            }
        }
        KeyAlgorithm::Ed25519 => {
            let pair = Ed25519KeyPair::from_pkcs8(key.pkcs8_der()).unwrap();
            for _ in 0..count {
                std::hint::black_box(pair.sign(&message));
            }
        }
        KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => {
            let pair = RsaKeyPair::from_pkcs8(key.pkcs8_der()).unwrap();
            let mut signature = vec![0u8; pair.public_modulus_len()];
            for _ in 0..count {
                pair.sign(&RSA_PKCS1_SHA256, &rng, &message, &mut signature)
                    .unwrap();
                std::hint::black_box(&signature);
            }
        }
    }
    let parsed_once = start.elapsed() / count as u32;
    println!(
        "signature {:<10} n={count:<6} parsed per signature {per_signature:>10.1?}  \
         parsed once {parsed_once:>10.1?}",
        algorithm.as_str()
    );
}

fn main() {
    for algorithm in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::EcdsaP384] {
        bench_leaves(algorithm);
    }
    for algorithm in KeyAlgorithm::ALL {
        bench_key_parsing(algorithm);
    }
}
