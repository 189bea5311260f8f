//! AES-256-GCM with random 96-bit nonces, and the associated-data encoding
//! that binds each ciphertext to its place.
#![forbid(unsafe_code)]

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use zeroize::Zeroizing;

/// Version of the ciphertext and associated-data formats, bound into every
/// associated data.
pub const FORMAT_VERSION: u32 = 1;

pub const KEY_LEN: usize = 32;
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("the random number generator failed")]
    Random,
    #[error("invalid AES-256 key length {0}")]
    KeyLength(usize),
    #[error("AES-GCM encryption failed")]
    Encrypt,
}

/// Encodes associated data as the concatenation of each field preceded by its
/// length as a 4-byte big-endian integer, so that no two field lists encode
/// to the same bytes.
pub fn associated_data(fields: &[&[u8]]) -> Vec<u8> {
    let total: usize = fields.iter().map(|field| 4 + field.len()).sum();
    let mut out = Vec::with_capacity(total);
    for field in fields {
        // Fields are scope names, paths and fixed-size integers, far below
        // 4 GiB; a longer field would have been rejected by the 4 MiB frame
        // limit long before.
        out.extend_from_slice(&(field.len() as u32).to_be_bytes());
        out.extend_from_slice(field);
    }
    out
}

pub fn random_nonce() -> Result<[u8; NONCE_LEN], CryptoError> {
    let mut nonce = [0u8; NONCE_LEN];
    aws_lc_rs::rand::fill(&mut nonce).map_err(|_| CryptoError::Random)?;
    Ok(nonce)
}

/// Encrypts `plaintext` under `key` with a fresh random nonce; returns the
/// nonce and the ciphertext with its 16-byte tag appended.
pub fn encrypt(
    key: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<([u8; NONCE_LEN], Vec<u8>), CryptoError> {
    let cipher = Aes256Gcm::new_from_slice(key).map_err(|_| CryptoError::KeyLength(key.len()))?;
    let nonce = random_nonce()?;
    let ciphertext = cipher
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| CryptoError::Encrypt)?;
    Ok((nonce, ciphertext))
}

/// Decrypts and authenticates; `None` for a wrong key, nonce, associated
/// data or a damaged ciphertext, including one shorter than the tag.
pub fn decrypt(
    key: &[u8],
    nonce: &[u8],
    aad: &[u8],
    ciphertext: &[u8],
) -> Option<Zeroizing<Vec<u8>>> {
    let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
    if ciphertext.len() < TAG_LEN {
        return None;
    }
    let cipher = Aes256Gcm::new_from_slice(key).ok()?;
    cipher
        .decrypt(
            &Nonce::from(nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .ok()
        .map(Zeroizing::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; KEY_LEN] = [7u8; KEY_LEN];

    #[test]
    fn round_trip_restores_plaintext() {
        let (nonce, ciphertext) = encrypt(&KEY, b"aad", b"hello").unwrap();
        assert_eq!(ciphertext.len(), 5 + TAG_LEN);
        let plain = decrypt(&KEY, &nonce, b"aad", &ciphertext).unwrap();
        assert_eq!(plain.as_slice(), b"hello");
    }

    #[test]
    fn wrong_associated_data_fails() {
        let (nonce, ciphertext) = encrypt(&KEY, b"aad", b"hello").unwrap();
        assert!(decrypt(&KEY, &nonce, b"other", &ciphertext).is_none());
    }

    #[test]
    fn short_inputs_fail_without_panic() {
        let (nonce, ciphertext) = encrypt(&KEY, b"", b"hello").unwrap();
        assert!(decrypt(&KEY, &nonce[..11], b"", &ciphertext).is_none());
        assert!(decrypt(&KEY, &nonce, b"", &ciphertext[..10]).is_none());
        assert!(decrypt(&KEY, &nonce, b"", &[]).is_none());
        assert!(decrypt(&KEY[..16], &nonce, b"", &ciphertext).is_none());
    }

    #[test]
    fn nonces_differ() {
        let (first, _) = encrypt(&KEY, b"", b"x").unwrap();
        let (second, _) = encrypt(&KEY, b"", b"x").unwrap();
        assert_ne!(first, second);
    }

    #[test]
    fn field_boundaries_are_unambiguous() {
        assert_ne!(
            associated_data(&[b"ab", b"c"]),
            associated_data(&[b"a", b"bc"])
        );
        assert_eq!(associated_data(&[b"ab"]), [0, 0, 0, 2, b'a', b'b']);
    }
}
