//! The error type of every command, and the exit code each kind maps to.

use std::error::Error as StdError;
use std::fmt;

/// What went wrong, which decides the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The service (keyd or frontd) returned an error, or a daemon started
    /// by `metacrypt dev` failed: exit code 1.
    Service,
    /// An argument or the configuration is invalid: exit code 2, the same
    /// code clap uses for usage errors.
    Usage,
    /// The service could not be reached, or a file could not be read or
    /// written: exit code 3.
    Io,
}

/// An error for the operator. The message names the value or the path
/// involved and never contains a password or a token.
#[derive(Debug)]
pub struct CliError {
    pub kind: ErrorKind,
    pub message: String,
}

impl CliError {
    pub fn service(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Service,
            message: message.into(),
        }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Usage,
            message: message.into(),
        }
    }

    pub fn io(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Io,
            message: message.into(),
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self.kind {
            ErrorKind::Service => 1,
            ErrorKind::Usage => 2,
            ErrorKind::Io => 3,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl StdError for CliError {}

/// Formats an error with its chain of sources, such as
/// `error sending request: client error (Connect): tcp connect error: Connection refused`.
pub fn with_sources(err: &dyn StdError) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some libraries repeat their source in their own message.
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_exit_codes() {
        assert_eq!(CliError::service("x").exit_code(), 1);
        assert_eq!(CliError::usage("x").exit_code(), 2);
        assert_eq!(CliError::io("x").exit_code(), 3);
    }

    #[derive(Debug)]
    struct Chained(&'static str, Option<Box<Chained>>);

    impl fmt::Display for Chained {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl StdError for Chained {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            self.1
                .as_deref()
                .map(|inner| inner as &(dyn StdError + 'static))
        }
    }

    #[test]
    fn sources_are_joined_once() {
        let err = Chained(
            "request failed",
            Some(Box::new(Chained(
                "connect",
                Some(Box::new(Chained("connection refused", None))),
            ))),
        );
        assert_eq!(
            with_sources(&err),
            "request failed: connect: connection refused"
        );
        let repeated = Chained("failed: inner", Some(Box::new(Chained("inner", None))));
        assert_eq!(with_sources(&repeated), "failed: inner");
    }
}
