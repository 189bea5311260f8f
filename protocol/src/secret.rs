//! A string that carries a secret across the keyd socket.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

/// A password or a private key in PEM form.
///
/// The bytes are zeroized when the value is dropped, and `Debug` prints only
/// `[redacted]`, so a secret cannot reach a log line through `{:?}`.
/// Serialization writes the real text: the type exists to cross the keyd
/// socket, and every other use must go through [`SecretString::expose`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretString(Zeroizing<String>);

impl SecretString {
    pub fn new(value: String) -> Self {
        Self(Zeroizing::new(value))
    }

    /// Returns the secret text; callers must not log or store it.
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for SecretString {
    fn from(value: String) -> Self {
        Self::new(value)
    }
}

impl From<&str> for SecretString {
    fn from(value: &str) -> Self {
        Self::new(value.to_owned())
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for SecretString {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.expose())
    }
}

impl<'de> Deserialize<'de> for SecretString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let secret = SecretString::from("correct horse battery staple");
        assert_eq!(format!("{secret:?}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(secret)), "Some([redacted])");
    }

    #[test]
    fn serde_round_trip_keeps_text() {
        let secret = SecretString::from("hunter2hunter2");
        let bytes = postcard::to_allocvec(&secret).unwrap();
        let back: SecretString = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back.expose(), "hunter2hunter2");
    }
}
