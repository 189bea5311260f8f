//! Key generation and signing with keys held as PKCS#8 DER.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING, EcdsaKeyPair,
    EcdsaSigningAlgorithm, Ed25519KeyPair, KeyPair, RSA_PKCS1_SHA256, RsaKeyPair,
};
use metacrypt_protocol::KeyAlgorithm;
use rcgen::{PublicKeyData, SignatureAlgorithm, SigningKey};
use zeroize::Zeroizing;

use crate::error::CaError;
use crate::pem;

/// Returns the rcgen algorithm for a key of this type, which sets both its
/// SPKI and the signature algorithm of what it signs: ECDSA with the hash
/// matching the curve, Ed25519, and RSA PKCS#1 v1.5 with SHA-256 for every
/// RSA key size.
pub(crate) fn signature_algorithm(algorithm: KeyAlgorithm) -> &'static SignatureAlgorithm {
    match algorithm {
        KeyAlgorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        KeyAlgorithm::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        KeyAlgorithm::Ed25519 => &rcgen::PKCS_ED25519,
        KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => {
            &rcgen::PKCS_RSA_SHA256
        }
    }
}

fn ecdsa_algorithm(algorithm: KeyAlgorithm) -> Option<&'static EcdsaSigningAlgorithm> {
    match algorithm {
        KeyAlgorithm::EcdsaP256 => Some(&ECDSA_P256_SHA256_ASN1_SIGNING),
        KeyAlgorithm::EcdsaP384 => Some(&ECDSA_P384_SHA384_ASN1_SIGNING),
        KeyAlgorithm::Ed25519
        | KeyAlgorithm::Rsa2048
        | KeyAlgorithm::Rsa3072
        | KeyAlgorithm::Rsa4096 => None,
    }
}

/// Returns the `private_key_type` reported with an issued key: `ec`,
/// `ed25519` or `rsa`.
pub fn private_key_type(algorithm: KeyAlgorithm) -> &'static str {
    match algorithm {
        KeyAlgorithm::EcdsaP256 | KeyAlgorithm::EcdsaP384 => "ec",
        KeyAlgorithm::Ed25519 => "ed25519",
        KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => "rsa",
    }
}

/// Returns the modulus length in bits of an RSA algorithm, `None` for the
/// others.
pub(crate) fn rsa_bits(algorithm: KeyAlgorithm) -> Option<usize> {
    match algorithm {
        KeyAlgorithm::Rsa2048 => Some(2048),
        KeyAlgorithm::Rsa3072 => Some(3072),
        KeyAlgorithm::Rsa4096 => Some(4096),
        KeyAlgorithm::EcdsaP256 | KeyAlgorithm::EcdsaP384 | KeyAlgorithm::Ed25519 => None,
    }
}

/// Returns the aws-lc key size of an RSA algorithm, `None` for the others.
fn rsa_key_size(algorithm: KeyAlgorithm) -> Option<KeySize> {
    match algorithm {
        KeyAlgorithm::Rsa2048 => Some(KeySize::Rsa2048),
        KeyAlgorithm::Rsa3072 => Some(KeySize::Rsa3072),
        KeyAlgorithm::Rsa4096 => Some(KeySize::Rsa4096),
        KeyAlgorithm::EcdsaP256 | KeyAlgorithm::EcdsaP384 | KeyAlgorithm::Ed25519 => None,
    }
}

/// A freshly generated key pair: the PKCS#8 v1 DER private key in a
/// zeroizing buffer and the raw public key (the content of the
/// subjectPublicKey BIT STRING).
///
/// There is deliberately no `Debug`, and the private key is reachable only
/// through [`GeneratedKey::pkcs8_der`], [`GeneratedKey::into_pkcs8_der`] and
/// [`GeneratedKey::to_pkcs8_pem`].
pub struct GeneratedKey {
    algorithm: KeyAlgorithm,
    pkcs8: Zeroizing<Vec<u8>>,
    public_key: Vec<u8>,
}

impl GeneratedKey {
    /// Generates a key pair with aws-lc-rs. RSA keys have public exponent
    /// 65537.
    pub fn generate(algorithm: KeyAlgorithm) -> Result<Self, CaError> {
        let failed = |_| CaError::KeyGeneration { algorithm };
        let (pkcs8, public_key) = match algorithm {
            KeyAlgorithm::EcdsaP256 | KeyAlgorithm::EcdsaP384 => {
                let curve =
                    ecdsa_algorithm(algorithm).ok_or(CaError::KeyGeneration { algorithm })?;
                let pair = EcdsaKeyPair::generate(curve).map_err(failed)?;
                let document = pair.to_pkcs8v1().map_err(failed)?;
                (
                    Zeroizing::new(document.as_ref().to_vec()),
                    pair.public_key().as_ref().to_vec(),
                )
            }
            KeyAlgorithm::Ed25519 => {
                let pair = Ed25519KeyPair::generate().map_err(failed)?;
                let document = pair.to_pkcs8v1().map_err(failed)?;
                (
                    Zeroizing::new(document.as_ref().to_vec()),
                    pair.public_key().as_ref().to_vec(),
                )
            }
            KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => {
                let size = rsa_key_size(algorithm).ok_or(CaError::KeyGeneration { algorithm })?;
                let pair = RsaKeyPair::generate(size).map_err(failed)?;
                let document = pair.as_der().map_err(failed)?;
                (
                    Zeroizing::new(document.as_ref().to_vec()),
                    pair.public_key().as_ref().to_vec(),
                )
            }
        };
        Ok(Self {
            algorithm,
            pkcs8,
            public_key,
        })
    }

    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// Returns the private key as PKCS#8 DER, which callers must not log or
    /// keep.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    pub fn into_pkcs8_der(self) -> Zeroizing<Vec<u8>> {
        self.pkcs8
    }

    /// Encodes the private key as PKCS#8 PEM (`BEGIN PRIVATE KEY`).
    pub fn to_pkcs8_pem(&self) -> Zeroizing<String> {
        pem::encode_secret("PRIVATE KEY", &self.pkcs8)
    }

    /// Returns the raw public key: an uncompressed EC point, 32 Ed25519
    /// octets or a PKCS#1 RSAPublicKey.
    pub fn public_key(&self) -> &[u8] {
        &self.public_key
    }
}

impl PublicKeyData for GeneratedKey {
    fn der_bytes(&self) -> &[u8] {
        &self.public_key
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        signature_algorithm(self.algorithm)
    }
}

/// Derives the raw public key of a PKCS#8 private key, checking that the key
/// is of the expected algorithm.
pub fn public_key_of(algorithm: KeyAlgorithm, pkcs8: &[u8]) -> Result<Vec<u8>, CaError> {
    let rejected = |error: aws_lc_rs::error::KeyRejected| CaError::InvalidPrivateKey {
        algorithm,
        reason: error.to_string(),
    };
    let public_key = match ecdsa_algorithm(algorithm) {
        Some(curve) => EcdsaKeyPair::from_pkcs8(curve, pkcs8)
            .map_err(rejected)?
            .public_key()
            .as_ref()
            .to_vec(),
        None => match algorithm {
            KeyAlgorithm::Ed25519 => Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
                .map_err(rejected)?
                .public_key()
                .as_ref()
                .to_vec(),
            _ => {
                let pair = RsaKeyPair::from_pkcs8(pkcs8).map_err(rejected)?;
                let bits = pair.public_modulus_len() * 8;
                if Some(bits) != rsa_bits(algorithm) {
                    return Err(CaError::InvalidPrivateKey {
                        algorithm,
                        reason: format!("the key has a {bits}-bit modulus"),
                    });
                }
                pair.public_key().as_ref().to_vec()
            }
        },
    };
    Ok(public_key)
}

/// A signing key that borrows its PKCS#8 DER from the caller.
///
/// Each signature parses the key into an aws-lc key object and drops it right
/// after signing (aws-lc clears freed key memory), so no parsed copy of the
/// private key outlives one signature. The public key is taken from the
/// caller, normally from the CA certificate.
pub struct BorrowedSigner<'k> {
    algorithm: KeyAlgorithm,
    pkcs8: &'k [u8],
    public_key: &'k [u8],
}

impl<'k> BorrowedSigner<'k> {
    /// Wraps a private key and its raw public key. The pair is not checked
    /// here, because [`crate::CaCertificate::check_private_key`] does that
    /// once when a key is loaded.
    pub fn new(algorithm: KeyAlgorithm, pkcs8: &'k [u8], public_key: &'k [u8]) -> Self {
        Self {
            algorithm,
            pkcs8,
            public_key,
        }
    }
}

impl PublicKeyData for BorrowedSigner<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.public_key
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        signature_algorithm(self.algorithm)
    }
}

impl SigningKey for BorrowedSigner<'_> {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let rejected =
            |error: aws_lc_rs::error::KeyRejected| rcgen::Error::RingKeyRejected(error.to_string());
        let rng = SystemRandom::new();
        if let Some(curve) = ecdsa_algorithm(self.algorithm) {
            let pair = EcdsaKeyPair::from_pkcs8(curve, self.pkcs8).map_err(rejected)?;
            let signature = pair
                .sign(&rng, message)
                .map_err(|_| rcgen::Error::RingUnspecified)?;
            return Ok(signature.as_ref().to_vec());
        }
        if self.algorithm == KeyAlgorithm::Ed25519 {
            let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(self.pkcs8).map_err(rejected)?;
            return Ok(pair.sign(message).as_ref().to_vec());
        }
        let pair = RsaKeyPair::from_pkcs8(self.pkcs8).map_err(rejected)?;
        let mut signature = vec![0u8; pair.public_modulus_len()];
        pair.sign(&RSA_PKCS1_SHA256, &rng, message, &mut signature)
            .map_err(|_| rcgen::Error::RingUnspecified)?;
        Ok(signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_public_key_matches_pkcs8() {
        for algorithm in KeyAlgorithm::ALL {
            let key = GeneratedKey::generate(algorithm).unwrap();
            let derived = public_key_of(algorithm, key.pkcs8_der()).unwrap();
            assert_eq!(derived, key.public_key(), "{algorithm}");
        }
    }

    #[test]
    fn key_of_other_algorithm_is_rejected() {
        let key = GeneratedKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        for other in [
            KeyAlgorithm::EcdsaP384,
            KeyAlgorithm::Ed25519,
            KeyAlgorithm::Rsa2048,
        ] {
            let error = public_key_of(other, key.pkcs8_der()).unwrap_err();
            assert!(
                matches!(error, CaError::InvalidPrivateKey { .. }),
                "{other}: {error:?}"
            );
        }
    }

    #[test]
    fn rsa_key_of_other_size_is_rejected() {
        let key = GeneratedKey::generate(KeyAlgorithm::Rsa3072).unwrap();
        assert!(key.public_key().len() > 384);
        for other in [KeyAlgorithm::Rsa2048, KeyAlgorithm::Rsa4096] {
            let error = public_key_of(other, key.pkcs8_der()).unwrap_err();
            assert!(
                matches!(&error, CaError::InvalidPrivateKey { reason, .. } if reason.contains("3072-bit")),
                "{other}: {error:?}"
            );
        }
    }

    #[test]
    fn pkcs8_pem_has_private_key_label() {
        let key = GeneratedKey::generate(KeyAlgorithm::Ed25519).unwrap();
        let pem = key.to_pkcs8_pem();
        assert!(
            pem.starts_with("-----BEGIN PRIVATE KEY-----\n"),
            "{}",
            pem.as_str()
        );
        assert!(pem.ends_with("-----END PRIVATE KEY-----\n"));
    }

    #[test]
    fn borrowed_signer_signature_verifies() {
        use aws_lc_rs::signature::{
            ECDSA_P256_SHA256_ASN1, ECDSA_P384_SHA384_ASN1, ED25519, RSA_PKCS1_2048_8192_SHA256,
            UnparsedPublicKey, VerificationAlgorithm,
        };
        let message = b"to be signed";
        for algorithm in KeyAlgorithm::ALL {
            let key = GeneratedKey::generate(algorithm).unwrap();
            let signer = BorrowedSigner::new(algorithm, key.pkcs8_der(), key.public_key());
            let signature = signer.sign(message).unwrap();
            let verification: &dyn VerificationAlgorithm = match algorithm {
                KeyAlgorithm::EcdsaP256 => &ECDSA_P256_SHA256_ASN1,
                KeyAlgorithm::EcdsaP384 => &ECDSA_P384_SHA384_ASN1,
                KeyAlgorithm::Ed25519 => &ED25519,
                KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => {
                    &RSA_PKCS1_2048_8192_SHA256
                }
            };
            let public_key = UnparsedPublicKey::new(verification, key.public_key());
            assert!(
                public_key.verify(message, &signature).is_ok(),
                "{algorithm}"
            );
        }
    }
}
