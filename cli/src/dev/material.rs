//! The files a development setup is made of: TLS certificates, the dev user,
//! the seal password, the config file and `dev.env`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::PasswordHasher;
use argon2::password_hash::phc::PasswordHash;
use metacrypt_protocol::SecretString;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::layout::{Layout, write_file};
use crate::error::CliError;
use crate::password::read_password_file;

/// The MCIAS user that `metacrypt dev` creates, with the `admin` role.
pub const DEV_USER: &str = "dev-admin";

/// A user without the admin role, for trying policy rules. It has the role
/// `ops` and the same password as [`DEV_USER`].
pub const DEV_OPS_USER: &str = "dev-ops";
/// Subject alternative names of both development TLS certificates.
const TLS_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];
const CERT_LIFETIME: Duration = Duration::from_secs(365 * 86_400);
/// A reused certificate that expires sooner than this is replaced.
const CERT_RENEW_BEFORE: Duration = Duration::from_secs(7 * 86_400);

/// Whether a file was made now or kept from an earlier run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Generated,
    Reused,
}

impl Origin {
    pub fn verb(self) -> &'static str {
        match self {
            Origin::Generated => "generated",
            Origin::Reused => "reusing",
        }
    }
}

/// Writes a self-signed P-256 certificate and its key unless `cert` contains
/// one that is valid for at least [`CERT_RENEW_BEFORE`] and `key` exists.
pub fn ensure_tls(cert: &Path, key: &Path, common_name: &str) -> Result<Origin, CliError> {
    if key.is_file() && cert_is_current(cert) {
        return Ok(Origin::Reused);
    }
    let (cert_pem, key_pem) = self_signed(common_name)?;
    write_file(key, key_pem.as_bytes(), 0o600)?;
    write_file(cert, cert_pem.as_bytes(), 0o644)?;
    Ok(Origin::Generated)
}

fn self_signed(common_name: &str) -> Result<(String, Zeroizing<String>), CliError> {
    let fail = |err: rcgen::Error| {
        CliError::io(format!(
            "failed to generate the TLS certificate for {common_name}: {err}"
        ))
    };
    let key = KeyPair::generate().map_err(fail)?;
    let names: Vec<String> = TLS_NAMES.iter().map(|name| name.to_string()).collect();
    let mut params = CertificateParams::new(names).map_err(fail)?;
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, common_name);
    params.distinguished_name = subject;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::from_secs(3600);
    params.not_after = now + CERT_LIFETIME;
    let cert = params.self_signed(&key).map_err(fail)?;
    Ok((cert.pem(), Zeroizing::new(key.serialize_pem())))
}

/// Returns true when `path` contains a PEM certificate that is still valid for
/// at least [`CERT_RENEW_BEFORE`].
fn cert_is_current(path: &Path) -> bool {
    let Ok(pem_bytes) = std::fs::read(path) else {
        return false;
    };
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(&pem_bytes) else {
        return false;
    };
    let Ok(cert) = pem.parse_x509() else {
        return false;
    };
    let renew_after = OffsetDateTime::now_utc() + CERT_RENEW_BEFORE;
    cert.validity().not_after.timestamp() > renew_after.unix_timestamp()
}

/// Generates a random password of 32 hexadecimal characters (128 bits).
pub fn random_password() -> Result<SecretString, CliError> {
    let mut bytes = Zeroizing::new([0u8; 16]);
    aws_lc_rs::rand::fill(bytes.as_mut())
        .map_err(|_| CliError::io("failed to generate a random password"))?;
    Ok(SecretString::new(hex::encode(bytes.as_ref())))
}

/// Returns the dev user's password, creating it and the development MCIAS
/// users file when either is missing.
pub fn ensure_dev_user(
    users: &Path,
    password_file: &Path,
) -> Result<(SecretString, Origin), CliError> {
    if users.is_file() && password_file.is_file() {
        return Ok((read_password_file(password_file)?, Origin::Reused));
    }
    let password = random_password()?;
    let hash: PasswordHash = Argon2::default()
        .hash_password(password.expose().as_bytes())
        .map_err(|err| CliError::io(format!("failed to hash the dev user's password: {err}")))?;
    write_file(users, users_file(&hash.to_string()).as_bytes(), 0o600)?;
    let mut line = Zeroizing::new(password.expose().to_owned());
    line.push('\n');
    write_file(password_file, line.as_bytes(), 0o600)?;
    Ok((password, Origin::Generated))
}

fn users_file(password_hash: &str) -> String {
    let user = |name: &str, role: &str| {
        let mut user = toml::Table::new();
        user.insert("username".into(), name.into());
        user.insert("password_hash".into(), password_hash.into());
        user.insert("roles".into(), toml::Value::Array(vec![role.into()]));
        toml::Value::Table(user)
    };
    let mut file = toml::Table::new();
    file.insert(
        "users".into(),
        toml::Value::Array(vec![user(DEV_USER, "admin"), user(DEV_OPS_USER, "ops")]),
    );
    format!(
        "# Users of metacrypt-mcias-dev, written by `metacrypt dev`.\n{}",
        toml::to_string(&file).unwrap_or_default()
    )
}

/// Returns the seal password, creating it when missing. A database that
/// already exists without its seal password is an error, because a new
/// password could not unseal it.
pub fn ensure_seal_password(
    path: &Path,
    database: &Path,
) -> Result<(SecretString, Origin), CliError> {
    if path.is_file() {
        return Ok((read_password_file(path)?, Origin::Reused));
    }
    let database_in_use = std::fs::metadata(database).is_ok_and(|meta| meta.len() > 0);
    if database_in_use {
        return Err(CliError::usage(format!(
            "{} exists but its seal password file {} is missing; restore that file or \
             remove the database to start over",
            database.display(),
            path.display()
        )));
    }
    let password = random_password()?;
    let mut line = Zeroizing::new(password.expose().to_owned());
    line.push('\n');
    write_file(path, line.as_bytes(), 0o600)?;
    Ok((password, Origin::Generated))
}

/// Builds the config file that keyd and frontd share in this setup.
pub fn config_text(layout: &Layout, listen: SocketAddr, mcias_port: u16) -> String {
    let path = |path: &Path| toml_string(&path.to_string_lossy());
    format!(
        "# Written by `metacrypt dev` on every start, because the development MCIAS\n\
         # server gets a new port each time. Edits are overwritten.\n\
         \n\
         [server]\n\
         listen_addr = {listen}\n\
         tls_cert = {tls_cert}\n\
         tls_key = {tls_key}\n\
         \n\
         [database]\n\
         path = {database}\n\
         \n\
         [keyd]\n\
         front_socket = {front_socket}\n\
         admin_socket = {admin_socket}\n\
         sandbox = \"best-effort\"\n\
         audit_log = {audit_log}\n\
         \n\
         [mcias]\n\
         server_url = {mcias_url}\n\
         ca_cert = {mcias_cert}\n",
        listen = toml_string(&listen.to_string()),
        tls_cert = path(&layout.frontd_cert),
        tls_key = path(&layout.frontd_key),
        database = path(&layout.database),
        front_socket = path(&layout.front_socket),
        admin_socket = path(&layout.admin_socket),
        audit_log = path(&layout.audit_log),
        mcias_url = toml_string(&format!("https://127.0.0.1:{mcias_port}")),
        mcias_cert = path(&layout.mcias_cert),
    )
}

/// Formats `text` as a TOML string, quoted and escaped.
fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

/// Quotes `value` for a POSIX shell: single quotes, with each `'` written as
/// `'\''`.
pub fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// Formats `export NAME='VALUE'` lines for `dev.env`.
pub fn env_lines(values: &[(&str, &str)]) -> Zeroizing<String> {
    let mut text = Zeroizing::new(String::new());
    for (name, value) in values {
        text.push_str("export ");
        text.push_str(name);
        text.push('=');
        text.push_str(&shell_quote(value));
        text.push('\n');
    }
    text
}

/// A curl command that issues a server certificate with the variables of
/// `dev.env`.
pub const CURL_ISSUE: &str = r#"curl --cacert "$METACRYPT_CA_CERT" -H "Authorization: Bearer $METACRYPT_TOKEN" -H "Content-Type: application/json" -d '{"issuer":"default","profile":"server","common_name":"app.example.com","ttl":"24h"}' "$METACRYPT_ADDR/v1/pki/pki/issue""#;

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;
    use std::process::Command;

    use argon2::password_hash::PasswordVerifier;
    use metacrypt_config::{Config, SandboxMode};
    use x509_parser::extensions::GeneralName;

    use super::*;

    fn layout() -> (tempfile::TempDir, Layout) {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path()).unwrap();
        layout.create_dirs().unwrap();
        (dir, layout)
    }

    #[test]
    fn certificate_has_loopback_names() {
        let (_dir, layout) = layout();
        let origin = ensure_tls(&layout.frontd_cert, &layout.frontd_key, "test").unwrap();
        assert_eq!(origin, Origin::Generated);
        let pem_bytes = std::fs::read(&layout.frontd_cert).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem_bytes).unwrap();
        let cert = pem.parse_x509().unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        let names: Vec<String> = san
            .value
            .general_names
            .iter()
            .map(|name| match name {
                GeneralName::DNSName(dns) => dns.to_string(),
                GeneralName::IPAddress(bytes) => format!("ip:{}", bytes.len()),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(names, vec!["localhost", "ip:4", "ip:16"]);
        assert!(!cert.is_ca());
        let key_mode = std::fs::metadata(&layout.frontd_key).unwrap().mode();
        assert_eq!(key_mode & 0o777, 0o600);
    }

    #[test]
    fn current_certificate_is_reused() {
        let (_dir, layout) = layout();
        ensure_tls(&layout.mcias_cert, &layout.mcias_key, "test").unwrap();
        let before = std::fs::read(&layout.mcias_cert).unwrap();
        let origin = ensure_tls(&layout.mcias_cert, &layout.mcias_key, "test").unwrap();
        assert_eq!(origin, Origin::Reused);
        assert_eq!(std::fs::read(&layout.mcias_cert).unwrap(), before);
    }

    #[test]
    fn damaged_certificate_is_replaced() {
        let (_dir, layout) = layout();
        ensure_tls(&layout.mcias_cert, &layout.mcias_key, "test").unwrap();
        std::fs::write(&layout.mcias_cert, b"not a certificate").unwrap();
        let origin = ensure_tls(&layout.mcias_cert, &layout.mcias_key, "test").unwrap();
        assert_eq!(origin, Origin::Generated);
        assert!(cert_is_current(&layout.mcias_cert));
    }

    #[test]
    fn certificate_verifies_with_openssl() {
        let (_dir, layout) = layout();
        ensure_tls(&layout.frontd_cert, &layout.frontd_key, "test").unwrap();
        let output = Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(&layout.frontd_cert)
            .arg(&layout.frontd_cert)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    #[test]
    fn dev_user_password_verifies() {
        let (_dir, layout) = layout();
        let (password, origin) = ensure_dev_user(&layout.users, &layout.dev_password).unwrap();
        assert_eq!(origin, Origin::Generated);
        let text = std::fs::read_to_string(&layout.users).unwrap();
        let parsed: toml::Table = toml::from_str(&text).unwrap();
        let users = parsed["users"].as_array().unwrap();
        assert_eq!(users.len(), 2);
        for (user, name, role) in [
            (&users[0], DEV_USER, "admin"),
            (&users[1], DEV_OPS_USER, "ops"),
        ] {
            assert_eq!(user["username"].as_str(), Some(name));
            assert_eq!(user["roles"].as_array().unwrap()[0].as_str(), Some(role));
            let hash = user["password_hash"].as_str().unwrap();
            assert!(hash.starts_with("$argon2id$"), "{hash}");
            Argon2::default()
                .verify_password(password.expose().as_bytes(), hash)
                .unwrap();
        }
    }

    #[test]
    fn dev_user_is_reused() {
        let (_dir, layout) = layout();
        let (first, _) = ensure_dev_user(&layout.users, &layout.dev_password).unwrap();
        let (second, origin) = ensure_dev_user(&layout.users, &layout.dev_password).unwrap();
        assert_eq!(origin, Origin::Reused);
        assert_eq!(first.expose(), second.expose());
    }

    #[test]
    fn seal_password_is_kept_private() {
        let (_dir, layout) = layout();
        let (password, origin) =
            ensure_seal_password(&layout.seal_password, &layout.database).unwrap();
        assert_eq!(origin, Origin::Generated);
        assert_eq!(password.len(), 32);
        let mode = std::fs::metadata(&layout.seal_password).unwrap().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (again, origin) =
            ensure_seal_password(&layout.seal_password, &layout.database).unwrap();
        assert_eq!(origin, Origin::Reused);
        assert_eq!(again.expose(), password.expose());
    }

    #[test]
    fn database_without_seal_password_is_rejected() {
        let (_dir, layout) = layout();
        std::fs::write(&layout.database, b"SQLite format 3\0").unwrap();
        let err = ensure_seal_password(&layout.seal_password, &layout.database)
            .err()
            .unwrap();
        assert!(
            err.message.contains("seal password file"),
            "{}",
            err.message
        );
        assert!(!layout.seal_password.exists());
    }

    #[test]
    fn config_is_valid_for_both_daemons() {
        let (_dir, layout) = layout();
        let text = config_text(&layout, "127.0.0.1:8443".parse().unwrap(), 40123);
        let config = Config::from_toml(&text, &[]).unwrap();
        assert_eq!(config.validate_keyd().unwrap(), layout.database.as_path());
        assert_eq!(config.keyd.sandbox, SandboxMode::BestEffort);
        assert_eq!(config.keyd.admin_socket, layout.admin_socket);
        assert_eq!(
            config.audit_log_path(&layout.database),
            layout.root.join("audit.log")
        );
        let frontd = config.validate_frontd().unwrap();
        assert_eq!(frontd.listen_addr, Some("127.0.0.1:8443".parse().unwrap()));
        assert_eq!(frontd.mcias_url, "https://127.0.0.1:40123");
        assert_eq!(frontd.keyd_socket, layout.front_socket);
        assert_eq!(frontd.tls_cert, layout.frontd_cert);
        assert_eq!(
            config.mcias.ca_cert.as_deref(),
            Some(layout.mcias_cert.as_path())
        );
    }

    #[test]
    fn ipv6_listen_address_is_written() {
        let (_dir, layout) = layout();
        let text = config_text(&layout, "[::1]:9443".parse().unwrap(), 1);
        let config = Config::from_toml(&text, &[]).unwrap();
        let frontd = config.validate_frontd().unwrap();
        assert_eq!(frontd.listen_addr, Some("[::1]:9443".parse().unwrap()));
    }

    #[test]
    fn config_strings_round_trip() {
        for text in [r#"/tmp/a "b"\c"#, "/tmp/it's", "/tmp/both ' and \""] {
            let parsed: toml::Table =
                toml::from_str(&format!("x = {}", toml_string(text))).unwrap();
            assert_eq!(parsed["x"].as_str(), Some(text));
        }
    }

    #[test]
    fn shell_quote_survives_sh() {
        let tricky = "it's $HOME `x` \"q\" \\";
        let script = format!("printf %s {}", shell_quote(tricky));
        let output = Command::new("sh").arg("-c").arg(script).output().unwrap();
        assert_eq!(String::from_utf8(output.stdout).unwrap(), tricky);
    }

    #[test]
    fn env_lines_are_exports() {
        let text = env_lines(&[("METACRYPT_ADDR", "https://127.0.0.1:8443"), ("A", "b'c")]);
        assert_eq!(
            text.as_str(),
            "export METACRYPT_ADDR='https://127.0.0.1:8443'\nexport A='b'\\''c'\n"
        );
    }
}
