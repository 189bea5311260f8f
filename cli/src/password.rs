//! Reading the seal password: from a file, from a no-echo prompt, or from
//! one line of stdin.

use std::fs::File;
use std::io::{BufRead, ErrorKind, IsTerminal, Read};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use metacrypt_protocol::SecretString;
use zeroize::Zeroizing;

use crate::error::CliError;

/// Maximum size in bytes of a password file and of the password line read
/// from stdin. Reads are bounded by it, so the buffers that contain the
/// password are allocated once and never grow.
const MAX_PASSWORD_BYTES: usize = 4096;

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
    let contents = read_bounded(&mut file).map_err(|err| {
        CliError::io(format!(
            "failed to read password file {}: {err}",
            path.display()
        ))
    })?;
    let Some(contents) = contents else {
        return Err(CliError::usage(format!(
            "password file {} exceeds the maximum size of {MAX_PASSWORD_BYTES} bytes \
             (it must contain only the password)",
            path.display()
        )));
    };
    let source = format!("password file {}", path.display());
    first_line(&contents, &source)
}

/// Reads `reader` to its end into a zeroizing buffer allocated once. Returns
/// `None` when it contains more than [`MAX_PASSWORD_BYTES`].
fn read_bounded(reader: &mut impl Read) -> std::io::Result<Option<Zeroizing<Vec<u8>>>> {
    let mut buffer = Zeroizing::new(vec![0u8; MAX_PASSWORD_BYTES + 1]);
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(count) => filled += count,
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    if filled > MAX_PASSWORD_BYTES {
        return Ok(None);
    }
    // Truncating keeps the allocation, which is wiped whole on drop.
    buffer.truncate(filled);
    Ok(Some(buffer))
}

/// Reads one line of at most [`MAX_PASSWORD_BYTES`] from `reader`, as
/// [`first_line`] does.
fn read_line(reader: &mut impl BufRead, source: &str) -> Result<SecretString, CliError> {
    // `take` stops the read at the buffer's capacity, so it never grows.
    let mut bytes = Zeroizing::new(Vec::with_capacity(MAX_PASSWORD_BYTES + 1));
    reader
        .take(MAX_PASSWORD_BYTES as u64 + 1)
        .read_until(b'\n', &mut bytes)
        .map_err(|err| CliError::io(format!("failed to read the password from {source}: {err}")))?;
    if bytes.len() > MAX_PASSWORD_BYTES && bytes.last() != Some(&b'\n') {
        return Err(CliError::usage(format!(
            "the password line from {source} exceeds the maximum of {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    first_line(&bytes, source)
}

/// Returns the first line of `bytes` without `\n` or `\r\n`. An empty line
/// is rejected, because keyd would reject it with a less helpful message.
fn first_line(bytes: &[u8], source: &str) -> Result<SecretString, CliError> {
    let mut line = match bytes.iter().position(|&byte| byte == b'\n') {
        Some(end) => &bytes[..end],
        None => bytes,
    };
    if let Some(stripped) = line.strip_suffix(b"\r") {
        line = stripped;
    }
    if line.is_empty() {
        return Err(CliError::usage(format!(
            "no password found in {source}: its first line is empty"
        )));
    }
    let text = std::str::from_utf8(line)
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
    fn file_at_maximum_size_is_read() {
        let mut contents = vec![b'p'; MAX_PASSWORD_BYTES - 1];
        contents.push(b'\n');
        let (_dir, path) = file_with(&contents);
        let password = read_password_file(&path).unwrap();
        assert_eq!(password.len(), MAX_PASSWORD_BYTES - 1);
    }

    #[test]
    fn oversized_file_is_rejected() {
        let (_dir, path) = file_with(&vec![b'p'; MAX_PASSWORD_BYTES + 1]);
        let err = read_password_file(&path).err().unwrap();
        assert_eq!(err.exit_code(), 2);
        assert!(
            err.message.contains("maximum size of 4096 bytes"),
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
    fn oversized_file_with_short_first_line_is_rejected() {
        let mut contents = b"short\n".to_vec();
        contents.extend(vec![b'x'; MAX_PASSWORD_BYTES]);
        let (_dir, path) = file_with(&contents);
        assert!(read_password_file(&path).is_err());
    }

    #[test]
    fn long_stdin_line_is_rejected() {
        let line = vec![b'p'; MAX_PASSWORD_BYTES + 1];
        let err = read_line(&mut line.as_slice(), "stdin").err().unwrap();
        assert_eq!(err.exit_code(), 2);
        assert!(err.message.contains("4096"), "{}", err.message);
    }

    #[test]
    fn stdin_line_at_maximum_is_read() {
        let mut input = vec![b'p'; MAX_PASSWORD_BYTES];
        input.extend_from_slice(b"\nrest");
        let password = read_line(&mut input.as_slice(), "stdin").unwrap();
        assert_eq!(password.len(), MAX_PASSWORD_BYTES);
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
