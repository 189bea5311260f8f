//! Reading the seal password: from a file, from a no-echo prompt, or from
//! one line of stdin.

use std::fs::File;
use std::io::{BufRead, IsTerminal, Read};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use metacrypt_protocol::SecretString;
use zeroize::Zeroizing;

use crate::error::CliError;

/// Whether the password is typed twice and compared, as when it is set for
/// the first time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirm {
    Once,
    Twice,
}

/// Reads the seal password from `file` when given; else prompts without echo
/// when stdin is a terminal; else reads one line from stdin.
pub fn read_password(file: Option<&Path>, confirm: Confirm) -> Result<SecretString, CliError> {
    if let Some(path) = file {
        return read_password_file(path);
    }
    if std::io::stdin().is_terminal() {
        return prompt(confirm);
    }
    read_line(&mut std::io::stdin().lock(), "stdin")
}

/// Reads the first line of `path`, without its line ending.
pub fn read_password_file(path: &Path) -> Result<SecretString, CliError> {
    let mut file = File::open(path).map_err(|err| {
        CliError::io(format!(
            "failed to open password file {}: {err}",
            path.display()
        ))
    })?;
    if let Ok(metadata) = file.metadata()
        && metadata.mode() & 0o077 != 0
    {
        eprintln!(
            "warning: password file {} is accessible by group or others (mode {:o})",
            path.display(),
            metadata.mode() & 0o777
        );
    }
    let mut contents = Zeroizing::new(Vec::with_capacity(4096));
    file.read_to_end(&mut contents).map_err(|err| {
        CliError::io(format!(
            "failed to read password file {}: {err}",
            path.display()
        ))
    })?;
    let source = format!("password file {}", path.display());
    read_line(&mut contents.as_slice(), &source)
}

/// Reads one line from `reader` and strips `\n` or `\r\n`. An empty line is
/// rejected, because keyd would reject it with a less helpful message.
fn read_line(reader: &mut impl BufRead, source: &str) -> Result<SecretString, CliError> {
    let mut bytes = Zeroizing::new(Vec::with_capacity(1024));
    reader
        .read_until(b'\n', &mut bytes)
        .map_err(|err| CliError::io(format!("failed to read the password from {source}: {err}")))?;
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    if bytes.is_empty() {
        return Err(CliError::usage(format!(
            "no password found in {source}: its first line is empty"
        )));
    }
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| CliError::usage(format!("the password in {source} is not valid UTF-8")))?;
    Ok(SecretString::new(text.to_owned()))
}

fn prompt(confirm: Confirm) -> Result<SecretString, CliError> {
    let first = prompt_once("Seal password: ")?;
    if confirm == Confirm::Twice {
        let second = prompt_once("Repeat the seal password: ")?;
        if first.expose() != second.expose() {
            return Err(CliError::usage("the two passwords do not match"));
        }
    }
    Ok(first)
}

fn prompt_once(label: &str) -> Result<SecretString, CliError> {
    let text = Zeroizing::new(
        rpassword::prompt_password(label)
            .map_err(|err| CliError::io(format!("failed to read the password: {err}")))?,
    );
    if text.is_empty() {
        return Err(CliError::usage("the password is empty"));
    }
    Ok(SecretString::new(text.as_str().to_owned()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn file_with(contents: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seal-password");
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        (dir, path)
    }

    #[test]
    fn file_trailing_newline_is_stripped() {
        let (_dir, path) = file_with(b"correct horse battery\n");
        assert_eq!(
            read_password_file(&path).unwrap().expose(),
            "correct horse battery"
        );
    }

    #[test]
    fn file_crlf_is_stripped() {
        let (_dir, path) = file_with(b"correct horse battery\r\n");
        assert_eq!(
            read_password_file(&path).unwrap().expose(),
            "correct horse battery"
        );
    }

    #[test]
    fn file_without_newline_is_read_whole() {
        let (_dir, path) = file_with(b"no newline at end");
        assert_eq!(
            read_password_file(&path).unwrap().expose(),
            "no newline at end"
        );
    }

    #[test]
    fn file_only_first_line_counts() {
        let (_dir, path) = file_with(b"first line\nsecond line\n");
        assert_eq!(read_password_file(&path).unwrap().expose(), "first line");
    }

    #[test]
    fn inner_spaces_are_kept() {
        let (_dir, path) = file_with(b"  spaced out  \n");
        assert_eq!(
            read_password_file(&path).unwrap().expose(),
            "  spaced out  "
        );
    }

    #[test]
    fn empty_file_is_rejected() {
        let (_dir, path) = file_with(b"\n");
        let err = read_password_file(&path).err().unwrap();
        assert_eq!(err.exit_code(), 2);
        assert!(
            err.message.contains("first line is empty"),
            "{}",
            err.message
        );
        assert!(
            err.message.contains(&path.display().to_string()),
            "{}",
            err.message
        );
    }

    #[test]
    fn missing_file_is_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent");
        let err = read_password_file(&path).err().unwrap();
        assert_eq!(err.exit_code(), 3);
        assert!(
            err.message.contains(&path.display().to_string()),
            "{}",
            err.message
        );
    }

    #[test]
    fn invalid_utf8_is_rejected() {
        let (_dir, path) = file_with(b"\xff\xfe\n");
        let err = read_password_file(&path).err().unwrap();
        assert!(err.message.contains("not valid UTF-8"), "{}", err.message);
    }

    #[test]
    fn stdin_line_is_read() {
        let mut input: &[u8] = b"from a pipe\nignored\n";
        let password = read_line(&mut input, "stdin").unwrap();
        assert_eq!(password.expose(), "from a pipe");
    }

    #[test]
    fn empty_stdin_is_rejected() {
        let mut input: &[u8] = b"";
        let err = read_line(&mut input, "stdin").err().unwrap();
        assert!(err.message.contains("stdin"), "{}", err.message);
    }
}
