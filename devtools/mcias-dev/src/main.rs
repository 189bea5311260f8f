//! `metacrypt-mcias-dev`: an identity server that speaks the MCIAS API, for
//! development and tests only.
//!
//! Users, Argon2id password hashes and roles come from a TOML file. Tokens
//! are 32 random bytes in hex, kept in memory and honoured until they expire.
//! The server listens on loopback unless `--allow-non-loopback` is given.
#![forbid(unsafe_code)]

mod api;
mod server;
mod store;
mod users;

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;
use zeroize::Zeroizing;

use crate::api::AppState;
use crate::store::{Clock, LoginLimiter, SystemClock, TokenStore};
use crate::users::Users;

#[derive(Parser)]
#[command(
    name = "metacrypt-mcias-dev",
    version,
    about = "An MCIAS-compatible identity server for development and tests only",
    long_about = "An MCIAS-compatible identity server for development and tests only.\n\n\
                  Without a subcommand it serves the MCIAS API over HTTPS.",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Read a password from the first line of stdin and print its Argon2id
    /// PHC string for the users file.
    HashPassword,
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on. Port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8444")]
    listen: SocketAddr,
    /// Allow a --listen address that is not loopback.
    #[arg(long)]
    allow_non_loopback: bool,
    /// PEM certificate chain of the HTTPS listener.
    #[arg(long, value_name = "FILE", required = true)]
    tls_cert: Option<PathBuf>,
    /// PEM private key of the HTTPS listener.
    #[arg(long, value_name = "FILE", required = true)]
    tls_key: Option<PathBuf>,
    /// TOML file of [[users]] with username, password_hash and roles.
    #[arg(long, value_name = "FILE", required = true)]
    users: Option<PathBuf>,
    /// Lifetime of issued tokens, such as 90s, 30m, 1h or 2d.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    token_ttl: Duration,
    /// File to write the bound port to (atomically, once listening).
    #[arg(long, value_name = "PATH")]
    port_file: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::HashPassword) => hash_password_from_stdin(),
        None => serve(cli.serve),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("metacrypt-mcias-dev: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Parses a duration such as `45s`, `30m`, `1h` or `2d`. A bare number is
/// seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected a number and s, m, h or d"))?;
    let unit_secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "invalid duration {text:?}: unit {unit:?} is not one of s, m, h, d"
            ));
        }
    };
    let secs = value
        .checked_mul(unit_secs)
        .ok_or_else(|| format!("invalid duration {text:?}: too large"))?;
    if secs == 0 {
        return Err(format!("invalid duration {text:?}: must be positive"));
    }
    Ok(Duration::from_secs(secs))
}

fn hash_password_from_stdin() -> Result<(), String> {
    let mut line = Zeroizing::new(String::with_capacity(256));
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|err| format!("failed to read the password from stdin: {err}"))?;
    let password = line.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        return Err("the password read from stdin is empty".to_owned());
    }
    let hash = users::hash_password(password.as_bytes())
        .map_err(|err| format!("failed to hash the password: {err}"))?;
    println!("{hash}");
    Ok(())
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .init();
}

fn serve(args: ServeArgs) -> Result<(), String> {
    if !args.listen.ip().is_loopback() && !args.allow_non_loopback {
        return Err(format!(
            "--listen {} is not a loopback address; this server is for development only \
             (pass --allow-non-loopback to listen there anyway)",
            args.listen
        ));
    }
    init_logging();
    tracing::warn!(
        "metacrypt-mcias-dev is for development and tests only; never use it in production"
    );
    if !args.listen.ip().is_loopback() {
        tracing::warn!(listen = %args.listen, "listening on a non-loopback address");
    }

    // clap requires these three whenever no subcommand is given.
    let (Some(users_path), Some(cert), Some(key)) = (&args.users, &args.tls_cert, &args.tls_key)
    else {
        return Err("--users, --tls-cert and --tls-key are required".to_owned());
    };
    let users = Users::load(users_path).map_err(|err| err.to_string())?;
    let tls = server::load_tls_config(cert, key).map_err(|err| err.to_string())?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let user_count = users.len();
    let state = Arc::new(AppState {
        users,
        decoy: users::decoy_user(),
        tokens: TokenStore::new(args.token_ttl, clock.clone()),
        limiter: LoginLimiter::new(clock),
    });

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|err| format!("failed to start the async runtime: {err}"))?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(args.listen)
            .await
            .map_err(|err| format!("failed to listen on {}: {err}", args.listen))?;
        let local = listener
            .local_addr()
            .map_err(|err| format!("failed to read the bound address: {err}"))?;
        // Installed before the port file exists, because a process waiting
        // for that file may send SIGTERM at once, which kills a process
        // without handlers.
        let shutdown = shutdown_signal();
        if let Some(path) = &args.port_file {
            write_port_file(path, local.port())
                .map_err(|err| format!("failed to write port file {}: {err}", path.display()))?;
        }
        tracing::info!(
            listen = %local,
            users = user_count,
            token_ttl_secs = args.token_ttl.as_secs(),
            "metacrypt-mcias-dev started"
        );
        server::serve(listener, tls, api::router(state), shutdown).await;
        if let Some(path) = &args.port_file {
            let _ = std::fs::remove_file(path);
        }
        tracing::info!("metacrypt-mcias-dev stopped");
        Ok(())
    })
}

/// Writes the port to a temporary file beside `path` and renames it, so a
/// reader sees either no file or the whole number.
fn write_port_file(path: &Path, port: u16) -> std::io::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let mut file = std::fs::File::create(&temporary)?;
    writeln!(file, "{port}")?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}

/// Installs the SIGTERM and SIGINT handlers at once and returns a future
/// that completes when either signal arrives.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut terminate), Ok(mut interrupt)) = handlers else {
            tracing::error!("failed to install signal handlers; stop the server with SIGKILL");
            std::future::pending::<()>().await;
            return;
        };
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM received, stopping"),
            _ = interrupt.recv() => tracing::info!("SIGINT received, stopping"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("45s"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
    }

    #[test]
    fn bad_durations_are_rejected() {
        assert!(parse_duration("0h").is_err());
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn port_file_holds_port() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("port");
        write_port_file(&path, 4242).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "4242\n");
        assert!(!dir.path().join("port.tmp").exists());
    }
}
