//! The configuration file shared by `metacrypt-keyd` and `metacrypt-frontd`.
//!
//! One TOML file serves both daemons. It is found by, in order: an explicit
//! path (`--config`), the `METACRYPT_CONFIG` environment variable,
//! `./metacrypt.toml`, `/srv/metacrypt/metacrypt.toml`. Every key can be
//! overridden by an environment variable `METACRYPT_<SECTION>_<KEY>` in upper
//! case, such as `METACRYPT_SERVER_LISTEN_ADDR`. Unknown keys, in the file or
//! in such a variable, are rejected, and every error names the key.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Paths tried, in order, when no config path is given.
pub const DEFAULT_PATHS: [&str; 2] = ["metacrypt.toml", "/srv/metacrypt/metacrypt.toml"];

pub const DEFAULT_FRONT_SOCKET: &str = "/run/metacrypt/front.sock";
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/metacrypt/admin.sock";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "config: no configuration file found (tried --config, METACRYPT_CONFIG, ./metacrypt.toml, /srv/metacrypt/metacrypt.toml)"
    )]
    NotFound,
    #[error("config: failed to read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config: {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config: {key} is required")]
    Missing { key: &'static str },
    #[error("config: {key}: {message}")]
    Invalid { key: String, message: String },
}

/// The whole file. Each daemon checks the sections it uses with
/// [`Config::validate_keyd`] or [`Config::validate_frontd`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub database: DatabaseConfig,
    #[serde(default)]
    pub keyd: KeydConfig,
    #[serde(default)]
    pub frontd: FrontdConfig,
    #[serde(default)]
    pub mcias: MciasConfig,
    #[serde(default)]
    pub log: LogConfig,
    /// The file this configuration was read from, if any.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// frontd's HTTPS listener.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to bind, such as `127.0.0.1:8443`; unused when systemd passes
    /// a listening socket.
    pub listen_addr: Option<String>,
    /// PEM certificate chain of the HTTPS listener.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the HTTPS listener.
    pub tls_key: Option<PathBuf>,
}

/// keyd's SQLite database.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    pub path: Option<PathBuf>,
}

/// keyd's sockets and who may connect to them.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeydConfig {
    /// Socket for frontd, created with mode 0660.
    pub front_socket: PathBuf,
    /// Socket for the CLI, created with mode 0600.
    pub admin_socket: PathBuf,
    /// Peer uids allowed on the front socket, besides keyd's own uid.
    pub front_allowed_uids: Vec<u32>,
    /// Peer gids allowed on the front socket.
    pub front_allowed_gids: Vec<u32>,
    /// Peer uids allowed on the admin socket, besides root and keyd's own uid.
    pub admin_allowed_uids: Vec<u32>,
    /// Peer gids allowed on the admin socket.
    pub admin_allowed_gids: Vec<u32>,
    /// Sandbox strictness: `enforce`, `best-effort` or `off`.
    pub sandbox: SandboxMode,
    /// Number of threads that sign and generate keys; 0 means one per core.
    pub signing_threads: usize,
    /// User keyd switches to when it starts as root: a name or a numeric
    /// uid. Unset means keyd keeps the uid it was started with.
    pub user: Option<String>,
    /// Group keyd switches to with `user`: a name or a numeric gid. Unset
    /// means the primary group of `user` in the passwd database. keyd
    /// refuses to start with a group but no user. When keyd starts as root,
    /// the files it creates (sockets, database, audit log) are given to
    /// `user` and this group, so the front socket (mode 0660) is open to
    /// processes whose group this is.
    pub group: Option<String>,
    /// The audit log, created with mode 0600; `audit.log` in the database's
    /// directory when unset.
    pub audit_log: Option<PathBuf>,
}

impl Default for KeydConfig {
    fn default() -> Self {
        Self {
            front_socket: PathBuf::from(DEFAULT_FRONT_SOCKET),
            admin_socket: PathBuf::from(DEFAULT_ADMIN_SOCKET),
            front_allowed_uids: Vec::new(),
            front_allowed_gids: Vec::new(),
            admin_allowed_uids: Vec::new(),
            admin_allowed_gids: Vec::new(),
            sandbox: SandboxMode::Enforce,
            signing_threads: 0,
            user: None,
            group: None,
            audit_log: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SandboxMode {
    Enforce,
    BestEffort,
    Off,
}

impl fmt::Display for SandboxMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SandboxMode::Enforce => "enforce",
            SandboxMode::BestEffort => "best-effort",
            SandboxMode::Off => "off",
        })
    }
}

/// frontd's connection to keyd.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FrontdConfig {
    /// keyd's front socket; `keyd.front_socket` when unset.
    pub keyd_socket: Option<PathBuf>,
    /// Connections kept open to keyd.
    pub keyd_connections: usize,
    /// Maximum size of a request body in bytes.
    pub max_body_bytes: usize,
    /// User frontd switches to when it starts as root: a name or a numeric
    /// uid. Unset means frontd keeps the uid it was started with.
    pub user: Option<String>,
    /// Group frontd switches to with `user`: a name or a numeric gid. Unset
    /// means the primary group of `user` in the passwd database. frontd
    /// refuses to start with a group but no user.
    pub group: Option<String>,
}

impl Default for FrontdConfig {
    fn default() -> Self {
        Self {
            keyd_socket: None,
            keyd_connections: 4,
            max_body_bytes: 1024 * 1024,
            user: None,
            group: None,
        }
    }
}

/// The MCIAS identity service.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MciasConfig {
    /// Base URL, such as `https://mcias.example.com:8443`.
    pub server_url: Option<String>,
    /// PEM bundle to trust for MCIAS instead of the system roots.
    pub ca_cert: Option<PathBuf>,
    /// Connect timeout in seconds.
    pub connect_timeout_secs: u64,
    /// Timeout for a whole MCIAS request in seconds.
    pub request_timeout_secs: u64,
    /// How long a token validation is cached, in seconds (at most 30).
    pub cache_secs: u64,
}

impl Default for MciasConfig {
    fn default() -> Self {
        Self {
            server_url: None,
            ca_cert: None,
            connect_timeout_secs: 3,
            request_timeout_secs: 5,
            cache_secs: 30,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter such as `info` or `metacrypt_keyd=debug,info`.
    pub level: String,
    /// `json` (one JSON object per line) or `text`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Json,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

/// Maximum MCIAS connect and request timeout in seconds. frontd gives a
/// whole request 60 s, so an MCIAS call must time out well before that.
const MAX_MCIAS_TIMEOUT_SECS: u64 = 30;

/// The TOML type of a key, used to parse environment overrides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Integer,
    IntegerList,
}

/// Every key of the file with its type; an environment override must name
/// one of these.
const KEYS: &[(&str, &str, Kind)] = &[
    ("server", "listen_addr", Kind::Text),
    ("server", "tls_cert", Kind::Text),
    ("server", "tls_key", Kind::Text),
    ("database", "path", Kind::Text),
    ("keyd", "front_socket", Kind::Text),
    ("keyd", "admin_socket", Kind::Text),
    ("keyd", "front_allowed_uids", Kind::IntegerList),
    ("keyd", "front_allowed_gids", Kind::IntegerList),
    ("keyd", "admin_allowed_uids", Kind::IntegerList),
    ("keyd", "admin_allowed_gids", Kind::IntegerList),
    ("keyd", "sandbox", Kind::Text),
    ("keyd", "signing_threads", Kind::Integer),
    ("keyd", "user", Kind::Text),
    ("keyd", "group", Kind::Text),
    ("keyd", "audit_log", Kind::Text),
    ("frontd", "keyd_socket", Kind::Text),
    ("frontd", "keyd_connections", Kind::Integer),
    ("frontd", "max_body_bytes", Kind::Integer),
    ("frontd", "user", Kind::Text),
    ("frontd", "group", Kind::Text),
    ("mcias", "server_url", Kind::Text),
    ("mcias", "ca_cert", Kind::Text),
    ("mcias", "connect_timeout_secs", Kind::Integer),
    ("mcias", "request_timeout_secs", Kind::Integer),
    ("mcias", "cache_secs", Kind::Integer),
    ("log", "level", Kind::Text),
    ("log", "format", Kind::Text),
];

const SECTIONS: [&str; 6] = ["server", "database", "keyd", "frontd", "mcias", "log"];

impl Config {
    /// Finds and loads the file, then applies the process environment.
    pub fn load(explicit: Option<&Path>) -> Result<Self, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        let path = find_file(explicit, env_value(&env, "METACRYPT_CONFIG"))?;
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let mut config = Self::from_toml(&text, &env).map_err(|err| match err {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.clone(),
                message,
            },
            other => other,
        })?;
        config.source = Some(path);
        Ok(config)
    }

    /// Parses `text` and applies the overrides in `env` (pairs of variable
    /// name and value).
    pub fn from_toml(text: &str, env: &[(String, String)]) -> Result<Self, ConfigError> {
        let mut table: toml::Table = toml::from_str(text).map_err(|err| ConfigError::Parse {
            path: PathBuf::new(),
            message: with_line(text, &err),
        })?;
        let overridden = apply_env(&mut table, env)?;
        let config: Config = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|err| type_error(text, &overridden, &err))?;
        config.check_common()?;
        Ok(config)
    }

    fn check_common(&self) -> Result<(), ConfigError> {
        for (key, secs) in [
            (
                "mcias.connect_timeout_secs",
                self.mcias.connect_timeout_secs,
            ),
            (
                "mcias.request_timeout_secs",
                self.mcias.request_timeout_secs,
            ),
        ] {
            if !(1..=MAX_MCIAS_TIMEOUT_SECS).contains(&secs) {
                return Err(ConfigError::Invalid {
                    key: key.to_owned(),
                    message: format!("must be 1 to {MAX_MCIAS_TIMEOUT_SECS} seconds"),
                });
            }
        }
        if self.mcias.cache_secs > 30 {
            return Err(ConfigError::Invalid {
                key: "mcias.cache_secs".to_owned(),
                message: "must be at most 30".to_owned(),
            });
        }
        for (key, value) in [
            ("keyd.user", &self.keyd.user),
            ("keyd.group", &self.keyd.group),
            ("frontd.user", &self.frontd.user),
            ("frontd.group", &self.frontd.group),
        ] {
            if value.as_deref().is_some_and(|text| text.trim().is_empty()) {
                return Err(ConfigError::Invalid {
                    key: key.to_owned(),
                    message: "must be a name or a numeric id, not empty".to_owned(),
                });
            }
        }
        if self.frontd.keyd_connections == 0 {
            return Err(ConfigError::Invalid {
                key: "frontd.keyd_connections".to_owned(),
                message: "must be at least 1".to_owned(),
            });
        }
        Ok(())
    }

    /// Checks the keys keyd needs and returns the database path.
    pub fn validate_keyd(&self) -> Result<&Path, ConfigError> {
        self.database.path.as_deref().ok_or(ConfigError::Missing {
            key: "database.path",
        })
    }

    /// Returns `keyd.audit_log`, or `audit.log` beside the database file
    /// `database` when it is unset.
    pub fn audit_log_path(&self, database: &Path) -> PathBuf {
        match &self.keyd.audit_log {
            Some(path) => path.clone(),
            None => database
                .parent()
                .unwrap_or_else(|| Path::new("."))
                .join("audit.log"),
        }
    }

    /// Checks the keys frontd needs.
    pub fn validate_frontd(&self) -> Result<FrontdSettings, ConfigError> {
        let tls_cert = self.server.tls_cert.clone().ok_or(ConfigError::Missing {
            key: "server.tls_cert",
        })?;
        let tls_key = self.server.tls_key.clone().ok_or(ConfigError::Missing {
            key: "server.tls_key",
        })?;
        let listen_addr = match &self.server.listen_addr {
            Some(text) => Some(parse_listen_addr(text)?),
            None => None,
        };
        let mcias_url = self.mcias.server_url.clone().ok_or(ConfigError::Missing {
            key: "mcias.server_url",
        })?;
        if !mcias_url.starts_with("https://") {
            return Err(ConfigError::Invalid {
                key: "mcias.server_url".to_owned(),
                message: format!("{mcias_url:?} must be an https:// URL"),
            });
        }
        let keyd_socket = self
            .frontd
            .keyd_socket
            .clone()
            .unwrap_or_else(|| self.keyd.front_socket.clone());
        Ok(FrontdSettings {
            listen_addr,
            tls_cert,
            tls_key,
            mcias_url: mcias_url.trim_end_matches('/').to_owned(),
            keyd_socket,
        })
    }
}

/// The checked settings frontd needs from [`Config`].
#[derive(Debug, Clone)]
pub struct FrontdSettings {
    /// `None` means the listener must come from systemd.
    pub listen_addr: Option<SocketAddr>,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub mcias_url: String,
    pub keyd_socket: PathBuf,
}

/// Parses `host:port`; a bare `:port` (as in the Go service) binds every
/// address.
fn parse_listen_addr(text: &str) -> Result<SocketAddr, ConfigError> {
    let full = if text.starts_with(':') {
        format!("0.0.0.0{text}")
    } else {
        text.to_owned()
    };
    full.parse().map_err(|_| ConfigError::Invalid {
        key: "server.listen_addr".to_owned(),
        message: format!("{text:?} is not an address such as 127.0.0.1:8443"),
    })
}

fn env_value<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    env.iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

fn find_file(explicit: Option<&Path>, from_env: Option<&str>) -> Result<PathBuf, ConfigError> {
    if let Some(path) = explicit {
        return Ok(path.to_path_buf());
    }
    if let Some(path) = from_env.filter(|path| !path.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    DEFAULT_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|path| path.is_file())
        .ok_or(ConfigError::NotFound)
}

/// Applies `METACRYPT_<SECTION>_<KEY>` variables to the parsed table.
/// Variables whose section is not a config section (such as
/// `METACRYPT_ADDR`, which the CLI reads) are left alone.
/// Returns the dotted keys that were set, each with its variable's name.
fn apply_env(
    table: &mut toml::Table,
    env: &[(String, String)],
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut names = BTreeMap::new();
    let mut overrides: BTreeMap<(String, String), toml::Value> = BTreeMap::new();
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("METACRYPT_") else {
            continue;
        };
        let lower = rest.to_ascii_lowercase();
        let Some(section) = SECTIONS
            .iter()
            .find(|section| lower.starts_with(&format!("{section}_")))
        else {
            continue;
        };
        let key = &lower[section.len() + 1..];
        let dotted = format!("{section}.{key}");
        let kind = KEYS
            .iter()
            .find(|(s, k, _)| s == section && *k == key)
            .map(|(_, _, kind)| *kind)
            .ok_or_else(|| ConfigError::Invalid {
                key: dotted.clone(),
                message: format!("unknown key (from environment variable {name})"),
            })?;
        let parsed = parse_env_value(kind, value).map_err(|message| ConfigError::Invalid {
            key: dotted.clone(),
            message: format!("{message} (from environment variable {name})"),
        })?;
        names.insert(dotted, name.clone());
        overrides.insert((section.to_string(), key.to_owned()), parsed);
    }
    for ((section, key), value) in overrides {
        let entry = table
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let toml::Value::Table(section_table) = entry else {
            return Err(ConfigError::Invalid {
                key: section,
                message: "must be a table".to_owned(),
            });
        };
        section_table.insert(key, value);
    }
    Ok(names)
}

/// Turns a type error of the merged table into an error that names the
/// dotted key and where its value came from: the environment variable that
/// set it, or the line of the file.
fn type_error(
    text: &str,
    overridden: &BTreeMap<String, String>,
    err: &serde_path_to_error::Error<toml::de::Error>,
) -> ConfigError {
    let message = err.inner().message().to_owned();
    let mut key = err.path().to_string();
    // An unknown key at the top level has the path ".".
    if let Some(field) = unknown_field(&message)
        && key == "."
    {
        key = field.to_owned();
    }
    let origin = match overridden.get(&key) {
        Some(name) => format!(" (from environment variable {name})"),
        // The same error from the file alone carries its position.
        None => match toml::from_str::<Config>(text) {
            Err(direct) if direct.message() == message => direct
                .span()
                .map(|span| format!(" (line {})", line_of(text, span.start)))
                .unwrap_or_default(),
            _ => String::new(),
        },
    };
    ConfigError::Invalid {
        key,
        message: format!("{message}{origin}"),
    }
}

/// Returns the field name of serde's "unknown field `NAME`, expected ..."
/// message.
fn unknown_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("unknown field `")?
        .split_once('`')
        .map(|(field, _)| field)
}

/// Prefixes a syntax error's message with its line number.
fn with_line(text: &str, err: &toml::de::Error) -> String {
    match err.span() {
        Some(span) => format!("line {}: {}", line_of(text, span.start), err.message()),
        None => err.message().to_owned(),
    }
}

/// Returns the 1-based line number of byte `offset` of `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn parse_env_value(kind: Kind, value: &str) -> Result<toml::Value, String> {
    match kind {
        Kind::Text => Ok(toml::Value::String(value.to_owned())),
        Kind::Integer => value
            .trim()
            .parse::<i64>()
            .map(toml::Value::Integer)
            .map_err(|_| format!("{value:?} is not an integer")),
        Kind::IntegerList => {
            let items = value
                .trim()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(|item| {
                    item.parse::<i64>()
                        .map(toml::Value::Integer)
                        .map_err(|_| format!("{item:?} is not an integer"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(toml::Value::Array(items))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcias_timeouts_are_bounded() {
        for (key, value, valid) in [
            ("CONNECT_TIMEOUT_SECS", "0", false),
            ("CONNECT_TIMEOUT_SECS", "31", false),
            ("CONNECT_TIMEOUT_SECS", "30", true),
            ("REQUEST_TIMEOUT_SECS", "0", false),
            ("REQUEST_TIMEOUT_SECS", "3600", false),
            ("REQUEST_TIMEOUT_SECS", "1", true),
        ] {
            let env = [(format!("METACRYPT_MCIAS_{key}"), value.to_owned())];
            let result = Config::from_toml("", &env);
            assert_eq!(result.is_ok(), valid, "{key}={value}");
        }
    }

    #[test]
    fn audit_log_defaults_beside_database() {
        let database = Path::new("/srv/metacrypt/metacrypt.db");
        let config = Config::from_toml("", &[]).unwrap();
        assert_eq!(
            config.audit_log_path(database),
            Path::new("/srv/metacrypt/audit.log")
        );
        let env = [(
            "METACRYPT_KEYD_AUDIT_LOG".to_owned(),
            "/var/log/metacrypt/audit.log".to_owned(),
        )];
        let config = Config::from_toml("", &env).unwrap();
        assert_eq!(
            config.audit_log_path(database),
            Path::new("/var/log/metacrypt/audit.log")
        );
    }

    const FULL: &str = r#"
[server]
listen_addr = "127.0.0.1:8443"
tls_cert = "/srv/metacrypt/certs/server.crt"
tls_key = "/srv/metacrypt/certs/server.key"

[database]
path = "/srv/metacrypt/metacrypt.db"

[keyd]
front_allowed_gids = [998]
sandbox = "best-effort"

[mcias]
server_url = "https://mcias.example.com:8443/"
"#;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn full_file_parses_for_both_daemons() {
        let config = Config::from_toml(FULL, &[]).unwrap();
        assert_eq!(
            config.validate_keyd().unwrap(),
            Path::new("/srv/metacrypt/metacrypt.db")
        );
        let front = config.validate_frontd().unwrap();
        assert_eq!(front.listen_addr, Some("127.0.0.1:8443".parse().unwrap()));
        assert_eq!(front.mcias_url, "https://mcias.example.com:8443");
        assert_eq!(front.keyd_socket, PathBuf::from(DEFAULT_FRONT_SOCKET));
        assert_eq!(config.keyd.sandbox, SandboxMode::BestEffort);
        assert_eq!(config.keyd.front_allowed_gids, vec![998]);
    }

    #[test]
    fn unknown_key_is_rejected_with_its_name() {
        let err = Config::from_toml("[server]\nlisten_adr = \":8443\"\n", &[]).unwrap_err();
        assert!(err.to_string().contains("listen_adr"), "{err}");
        let err = Config::from_toml("[nonsense]\n", &[]).unwrap_err();
        assert!(err.to_string().contains("nonsense"), "{err}");
    }

    #[test]
    fn type_errors_name_key_and_line() {
        let cases = [
            (
                "[database]\npath = 1\n",
                "config: database.path: ",
                "(line 2)",
            ),
            (
                "[log]\nlevel = \"info\"\n\n[keyd]\nsigning_threads = \"x\"\n",
                "config: keyd.signing_threads: ",
                "(line 5)",
            ),
            (
                "[keyd]\nbogus_key = 1\n",
                "config: keyd.bogus_key: ",
                "(line 2)",
            ),
            ("x = 1\n", "config: x: ", "(line 1)"),
        ];
        for (text, prefix, line) in cases {
            let message = Config::from_toml(text, &[]).unwrap_err().to_string();
            assert!(message.starts_with(prefix), "{message}");
            assert!(message.ends_with(line), "{message}");
        }
    }

    #[test]
    fn type_error_from_environment_names_variable() {
        let env = env(&[("METACRYPT_LOG_FORMAT", "xml")]);
        let message = Config::from_toml("[log]\nformat = \"json\"\n", &env)
            .unwrap_err()
            .to_string();
        assert!(message.starts_with("config: log.format: "), "{message}");
        assert!(message.contains("unknown variant `xml`"), "{message}");
        assert!(
            message.ends_with("(from environment variable METACRYPT_LOG_FORMAT)"),
            "{message}"
        );
    }

    #[test]
    fn syntax_error_names_line() {
        let message = Config::from_toml("[log]\nlevel = \n", &[])
            .unwrap_err()
            .to_string();
        assert!(message.contains("line 2: "), "{message}");
    }

    #[test]
    fn missing_key_is_named() {
        let config = Config::from_toml("[database]\npath = \"x.db\"\n", &[]).unwrap();
        let err = config.validate_frontd().unwrap_err();
        assert_eq!(err.to_string(), "config: server.tls_cert is required");
        let config = Config::from_toml("", &[]).unwrap();
        let err = config.validate_keyd().unwrap_err();
        assert_eq!(err.to_string(), "config: database.path is required");
    }

    #[test]
    fn environment_overrides_file() {
        let env = env(&[
            ("METACRYPT_SERVER_LISTEN_ADDR", "127.0.0.1:9443"),
            ("METACRYPT_KEYD_FRONT_ALLOWED_UIDS", "[1000, 1001]"),
            ("METACRYPT_FRONTD_KEYD_CONNECTIONS", "8"),
            ("METACRYPT_ADDR", "https://127.0.0.1:8443"),
            ("METACRYPT_CA_CERT", "/tmp/ca.pem"),
        ]);
        let config = Config::from_toml(FULL, &env).unwrap();
        assert_eq!(config.server.listen_addr.as_deref(), Some("127.0.0.1:9443"));
        assert_eq!(config.keyd.front_allowed_uids, vec![1000, 1001]);
        assert_eq!(config.frontd.keyd_connections, 8);
    }

    #[test]
    fn environment_creates_missing_section() {
        let env = env(&[("METACRYPT_DATABASE_PATH", "/var/lib/metacrypt/db")]);
        let config = Config::from_toml("", &env).unwrap();
        assert_eq!(
            config.validate_keyd().unwrap(),
            Path::new("/var/lib/metacrypt/db")
        );
    }

    #[test]
    fn unknown_environment_key_is_rejected() {
        let env = env(&[("METACRYPT_SERVER_TLS_CERTIFICATE", "x")]);
        let err = Config::from_toml(FULL, &env).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("server.tls_certificate"), "{text}");
        assert!(text.contains("METACRYPT_SERVER_TLS_CERTIFICATE"), "{text}");
    }

    #[test]
    fn bad_environment_integer_is_named() {
        let env = env(&[("METACRYPT_FRONTD_KEYD_CONNECTIONS", "many")]);
        let err = Config::from_toml(FULL, &env).unwrap_err();
        assert!(err.to_string().contains("frontd.keyd_connections"), "{err}");
    }

    #[test]
    fn bare_port_binds_every_address() {
        assert_eq!(
            parse_listen_addr(":8443").unwrap(),
            "0.0.0.0:8443".parse::<SocketAddr>().unwrap()
        );
        assert!(parse_listen_addr("localhost").is_err());
    }

    #[test]
    fn non_https_mcias_url_is_rejected() {
        let text = FULL.replace("https://mcias", "http://mcias");
        let config = Config::from_toml(&text, &[]).unwrap();
        let err = config.validate_frontd().unwrap_err();
        assert!(err.to_string().contains("mcias.server_url"), "{err}");
    }

    #[test]
    fn user_and_group_parse_from_file_and_environment() {
        let text =
            "[keyd]\nuser = \"metacrypt-keyd\"\n[frontd]\nuser = \"65534\"\ngroup = \"65534\"\n";
        let config = Config::from_toml(text, &env(&[("METACRYPT_KEYD_GROUP", "998")])).unwrap();
        assert_eq!(config.keyd.user.as_deref(), Some("metacrypt-keyd"));
        assert_eq!(config.keyd.group.as_deref(), Some("998"));
        assert_eq!(config.frontd.user.as_deref(), Some("65534"));
        assert_eq!(config.frontd.group.as_deref(), Some("65534"));
    }

    #[test]
    fn empty_user_is_rejected() {
        let err = Config::from_toml("[frontd]\nuser = \" \"\n", &[]).unwrap_err();
        assert!(err.to_string().contains("frontd.user"), "{err}");
    }

    #[test]
    fn cache_longer_than_thirty_seconds_is_rejected() {
        let err = Config::from_toml("[mcias]\ncache_secs = 60\n", &[]).unwrap_err();
        assert!(err.to_string().contains("mcias.cache_secs"), "{err}");
    }

    #[test]
    fn explicit_path_wins_over_environment() {
        let dir = tempfile::tempdir().unwrap();
        let explicit = dir.path().join("a.toml");
        assert_eq!(
            find_file(Some(&explicit), Some("/elsewhere.toml")).unwrap(),
            explicit
        );
        assert_eq!(
            find_file(None, Some("/elsewhere.toml")).unwrap(),
            PathBuf::from("/elsewhere.toml")
        );
    }
}
