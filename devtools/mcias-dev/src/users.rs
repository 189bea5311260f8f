//! The users file: accounts, Argon2id password hashes and roles.
//!
//! ```toml
//! [[users]]
//! username = "dev-admin"
//! password_hash = "$argon2id$v=19$m=19456,t=2,p=1$..."
//! roles = ["admin"]
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};
use aws_lc_rs::digest;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("users file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("users file: {0}")]
    Parse(String),
    #[error("users file: user {username:?}: {message}")]
    Invalid { username: String, message: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    users: Vec<UserEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    username: String,
    password_hash: String,
    #[serde(default)]
    roles: Vec<String>,
    /// Stable subject id. When absent, it is derived from the username.
    sub: Option<String>,
}

/// One account. The password hash stays private so it is only ever used for
/// verification.
pub struct User {
    pub username: String,
    pub sub: String,
    pub roles: Vec<String>,
    password_hash: String,
}

impl User {
    /// Verifies `password` against the stored Argon2id hash. Argon2 is slow by
    /// design (an estimated tens of milliseconds at the default parameters),
    /// so callers run this on a blocking thread.
    pub fn verify_password(&self, password: &[u8]) -> bool {
        Argon2::default()
            .verify_password(password, self.password_hash.as_str())
            .is_ok()
    }
}

pub struct Users {
    by_name: HashMap<String, User>,
}

impl Users {
    pub fn load(path: &Path) -> Result<Self, UsersError> {
        let text = std::fs::read_to_string(path).map_err(|source| UsersError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Self, UsersError> {
        let file: UsersFile =
            toml::from_str(text).map_err(|err| UsersError::Parse(err.message().to_owned()))?;
        let mut by_name = HashMap::new();
        for entry in file.users {
            let user = check_entry(entry)?;
            if by_name.contains_key(&user.username) {
                return Err(UsersError::Invalid {
                    username: user.username,
                    message: "appears more than once".to_owned(),
                });
            }
            by_name.insert(user.username.clone(), user);
        }
        Ok(Self { by_name })
    }

    pub fn get(&self, username: &str) -> Option<&User> {
        self.by_name.get(username)
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }
}

fn check_entry(entry: UserEntry) -> Result<User, UsersError> {
    let invalid = |message: &str| UsersError::Invalid {
        username: entry.username.clone(),
        message: message.to_owned(),
    };
    if entry.username.is_empty() {
        return Err(invalid("username is empty"));
    }
    let parsed = PasswordHash::new(&entry.password_hash)
        .map_err(|err| invalid(&format!("password_hash is not a PHC string: {err}")))?;
    if parsed.algorithm.as_str() != "argon2id" {
        return Err(invalid(&format!(
            "password_hash uses {:?}; expected argon2id",
            parsed.algorithm.as_str()
        )));
    }
    let sub = entry
        .sub
        .clone()
        .unwrap_or_else(|| subject_for(&entry.username));
    Ok(User {
        username: entry.username,
        sub,
        roles: entry.roles,
        password_hash: entry.password_hash,
    })
}

/// Derives a stable subject id in UUID form from the username, so the same
/// users file always yields the same `sub`.
fn subject_for(username: &str) -> String {
    let digest = digest::digest(&digest::SHA256, username.as_bytes());
    let hex = hex::encode(&digest.as_ref()[..16]);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Hashes `password` into an Argon2id PHC string with the argon2 crate's
/// default parameters (m=19456 KiB, t=2, p=1) and a random salt.
pub fn hash_password(password: &[u8]) -> Result<String, argon2::password_hash::Error> {
    let hasher = Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::default());
    let hash: PasswordHash = hasher.hash_password(password)?;
    Ok(hash.to_string())
}

/// Builds a user with the Argon2id hash of a random password. Login verifies
/// against it when the username is unknown, so unknown and known users take
/// about the same time to reject.
pub fn decoy_user() -> User {
    let mut random = [0u8; 32];
    // A failed RNG leaves the buffer zeroed. That only makes the decoy
    // password predictable, and the decoy never authenticates anyone.
    let _ = aws_lc_rs::rand::fill(&mut random);
    let password_hash = hash_password(&random).unwrap_or_default();
    User {
        username: String::new(),
        sub: String::new(),
        roles: Vec::new(),
        password_hash,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(hash: &str) -> String {
        format!(
            "[[users]]\nusername = \"alice\"\npassword_hash = '{hash}'\nroles = [\"admin\", \"ops\"]\n"
        )
    }

    #[test]
    fn hashed_password_verifies() {
        let hash = hash_password(b"correct horse").unwrap();
        let users = Users::parse(&file_with(&hash)).unwrap();
        let alice = users.get("alice").unwrap();
        assert!(alice.verify_password(b"correct horse"));
        assert!(!alice.verify_password(b"wrong horse"));
        assert_eq!(alice.roles, vec!["admin", "ops"]);
    }

    #[test]
    fn subject_is_stable_uuid_form() {
        let sub = subject_for("alice");
        assert_eq!(sub, subject_for("alice"));
        assert_ne!(sub, subject_for("bob"));
        assert_eq!(sub.len(), 36);
        assert_eq!(sub.matches('-').count(), 4);
    }

    #[test]
    fn non_argon2id_hash_is_rejected() {
        let hash = hash_password(b"pw")
            .unwrap()
            .replacen("argon2id", "argon2i", 1);
        let err = Users::parse(&file_with(&hash)).err().unwrap();
        assert!(err.to_string().contains("expected argon2id"), "{err}");
    }

    #[test]
    fn malformed_hash_names_user() {
        let err = Users::parse(&file_with("plaintext")).err().unwrap();
        assert!(err.to_string().contains("\"alice\""), "{err}");
    }

    #[test]
    fn duplicate_user_is_rejected() {
        let hash = hash_password(b"pw").unwrap();
        let text = format!("{}{}", file_with(&hash), file_with(&hash));
        let err = Users::parse(&text).err().unwrap();
        assert!(err.to_string().contains("more than once"), "{err}");
    }

    #[test]
    fn unknown_field_is_rejected() {
        let err = Users::parse("[[users]]\nusername = \"a\"\npassword = \"x\"\n")
            .err()
            .unwrap();
        assert!(err.to_string().contains("password"), "{err}");
    }
}
