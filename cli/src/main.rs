//! `metacrypt`: the operator's command.
//!
//! `init`, `unseal`, `seal` and `status` talk to keyd's admin socket;
//! `status --addr` queries frontd's REST API; `dev` runs a complete development
//! setup. Exit codes: 0 on success, 1 when the service returned an error,
//! 2 for a usage error, 3 when the service could not be reached or a file
//! could not be read or written.
#![forbid(unsafe_code)]

mod admin;
mod dev;
mod error;
mod password;
mod remote;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use metacrypt_config::{Config, ConfigError, DEFAULT_ADMIN_SOCKET};
use metacrypt_protocol::RequestBody;

use crate::admin::AdminClient;
use crate::error::CliError;
use crate::password::{Confirm, read_password};
use crate::remote::{Api, StatusReply, parse_addr};

#[derive(Parser)]
#[command(name = "metacrypt", version, about = "Operate a Metacrypt service")]
struct Cli {
    /// Config file that names keyd's admin socket (keyd.admin_socket).
    /// Default: $METACRYPT_CONFIG, then ./metacrypt.toml, then
    /// /srv/metacrypt/metacrypt.toml.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Initialize a new service with a seal password and leave it unsealed.
    Init(PasswordArgs),
    /// Unseal the service with the seal password.
    Unseal(PasswordArgs),
    /// Seal the service, which drops every key from keyd's memory.
    Seal(SocketArgs),
    /// Print the seal state, from the admin socket or from the REST API.
    Status(StatusArgs),
    /// Run keyd, frontd and a development MCIAS server on this machine, ready
    /// to issue certificates.
    Dev(DevArgs),
}

#[derive(Args)]
struct SocketArgs {
    /// keyd's admin socket. Default: keyd.admin_socket from the config, or
    /// /run/metacrypt/admin.sock when no config file is found.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
}

#[derive(Args)]
struct PasswordArgs {
    #[command(flatten)]
    socket: SocketArgs,
    /// Read the seal password from the first line of FILE. Without it the
    /// password is prompted for on a terminal, or read as one line of stdin.
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
}

#[derive(Args)]
struct StatusArgs {
    /// keyd's admin socket (see `metacrypt seal --help`).
    #[arg(long, value_name = "PATH", conflicts_with = "addr")]
    socket: Option<PathBuf>,
    /// Ask frontd's REST API at this URL, such as https://localhost:8443.
    /// Default: $METACRYPT_ADDR when --socket is not given.
    #[arg(long, value_name = "URL")]
    addr: Option<String>,
    /// PEM file of the CA certificates to trust for --addr. Default:
    /// $METACRYPT_CA_CERT, else the system's roots.
    #[arg(long, value_name = "FILE")]
    ca_cert: Option<PathBuf>,
}

#[derive(Args)]
struct DevArgs {
    /// Directory for the keys, database, config and logs. Default: a new
    /// directory under /tmp. A directory from an earlier run is reused.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Loopback address for frontd's HTTPS listener, such as
    /// 127.0.0.1:9443, or a port alone, which listens on 127.0.0.1.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8443", value_parser = parse_dev_addr)]
    addr: SocketAddr,
    /// Set everything up, print the environment, then stop the daemons and
    /// exit.
    #[arg(long)]
    once: bool,
}

/// Parses `--addr` of `metacrypt dev`: an address with a port, or a port
/// alone on 127.0.0.1.
fn parse_dev_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    text.parse::<SocketAddr>().map_err(|_| {
        format!("{text:?} is not a port or an address with a port, such as 127.0.0.1:8443")
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}

fn run(cli: Cli) -> Result<(), CliError> {
    let config = cli.config.as_deref();
    match cli.command {
        Command::Init(args) => {
            let socket = admin_socket(args.socket.socket, config)?;
            let mut client = AdminClient::connect(&socket)?;
            let password = read_password(args.password_file.as_deref(), Confirm::Twice)?;
            print_state(client.call_for_state(RequestBody::Init { password })?);
        }
        Command::Unseal(args) => {
            let socket = admin_socket(args.socket.socket, config)?;
            let mut client = AdminClient::connect(&socket)?;
            let password = read_password(args.password_file.as_deref(), Confirm::Once)?;
            print_state(client.call_for_state(RequestBody::Unseal { password })?);
        }
        Command::Seal(args) => {
            let socket = admin_socket(args.socket, config)?;
            let mut client = AdminClient::connect(&socket)?;
            print_state(client.call_for_state(RequestBody::Seal)?);
        }
        Command::Status(args) => status(args, config)?,
        Command::Dev(args) => {
            if config.is_some() {
                return Err(CliError::usage(
                    "--config has no effect on metacrypt dev, which writes DIR/metacrypt.toml",
                ));
            }
            dev::run(dev::DevOptions {
                dir: args.dir,
                addr: args.addr,
                once: args.once,
            })?;
        }
    }
    Ok(())
}

fn print_state(state: impl std::fmt::Display) {
    println!("state: {state}");
}

fn status(args: StatusArgs, config: Option<&Path>) -> Result<(), CliError> {
    let addr = match (&args.socket, args.addr) {
        (Some(_), _) => None,
        (None, Some(addr)) => Some(addr),
        (None, None) => non_empty_env("METACRYPT_ADDR"),
    };
    let Some(addr) = addr else {
        if args.ca_cert.is_some() {
            return Err(CliError::usage(
                "--ca-cert applies only to --addr (or METACRYPT_ADDR)",
            ));
        }
        let socket = admin_socket(args.socket, config)?;
        let mut client = AdminClient::connect(&socket)?;
        print_state(client.call_for_state(RequestBody::Status)?);
        return Ok(());
    };
    let url = parse_addr(&addr)?;
    let ca_cert = args
        .ca_cert
        .or_else(|| non_empty_env("METACRYPT_CA_CERT").map(PathBuf::from));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| CliError::io(format!("failed to start the async runtime: {err}")))?;
    let reply: StatusReply = runtime.block_on(async {
        let api = Api::new(url, ca_cert.as_deref())?;
        api.get("/v1/status", None).await
    })?;
    print_state(reply.state);
    Ok(())
}

fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

/// Resolves the admin socket: `--socket`, else `keyd.admin_socket` from the
/// config file, else the default path when there is no config file.
fn admin_socket(explicit: Option<PathBuf>, config: Option<&Path>) -> Result<PathBuf, CliError> {
    if let Some(path) = explicit {
        return Ok(path);
    }
    match Config::load(config) {
        Ok(config) => Ok(config.keyd.admin_socket),
        Err(ConfigError::NotFound) => Ok(PathBuf::from(DEFAULT_ADMIN_SOCKET)),
        Err(err @ ConfigError::Read { .. }) => Err(CliError::io(err.to_string())),
        Err(err) => Err(CliError::usage(err.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("metacrypt").chain(args.iter().copied()))
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn unseal_takes_password_file_and_socket() {
        let cli = parse(&["unseal", "--password-file", "/tmp/pw", "--socket", "/tmp/s"]).unwrap();
        let Command::Unseal(args) = cli.command else {
            panic!("expected unseal");
        };
        assert_eq!(args.password_file, Some(PathBuf::from("/tmp/pw")));
        assert_eq!(args.socket.socket, Some(PathBuf::from("/tmp/s")));
    }

    #[test]
    fn config_is_global() {
        let cli = parse(&["seal", "--config", "/etc/m.toml"]).unwrap();
        assert_eq!(cli.config, Some(PathBuf::from("/etc/m.toml")));
    }

    #[test]
    fn status_socket_conflicts_with_addr() {
        let err = parse(&["status", "--socket", "/s", "--addr", "https://x"])
            .err()
            .unwrap();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn dev_defaults_to_loopback_8443() {
        let cli = parse(&["dev"]).unwrap();
        let Command::Dev(args) = cli.command else {
            panic!("expected dev");
        };
        assert_eq!(args.addr, "127.0.0.1:8443".parse::<SocketAddr>().unwrap());
        assert!(!args.once);
        assert!(args.dir.is_none());
    }

    #[test]
    fn dev_addr_must_be_socket_address() {
        let err = parse(&["dev", "--addr", "localhost"]).err().unwrap();
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
    }

    #[test]
    fn dev_addr_may_be_a_port() {
        let cli = parse(&["dev", "--addr", "9443"]).unwrap();
        let Command::Dev(args) = cli.command else {
            panic!("expected dev");
        };
        assert_eq!(args.addr, "127.0.0.1:9443".parse::<SocketAddr>().unwrap());
        let cli = parse(&["dev", "--addr", "[::1]:9443"]).unwrap();
        let Command::Dev(args) = cli.command else {
            panic!("expected dev");
        };
        assert_eq!(args.addr, "[::1]:9443".parse::<SocketAddr>().unwrap());
    }

    #[test]
    fn seal_takes_no_password() {
        let err = parse(&["seal", "--password-file", "x"]).err().unwrap();
        assert_eq!(err.kind(), clap::error::ErrorKind::UnknownArgument);
    }

    #[test]
    fn explicit_socket_wins() {
        let socket =
            admin_socket(Some(PathBuf::from("/x.sock")), Some(Path::new("/absent"))).unwrap();
        assert_eq!(socket, PathBuf::from("/x.sock"));
    }

    #[test]
    fn socket_comes_from_config() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("metacrypt.toml");
        std::fs::write(&config, "[keyd]\nadmin_socket = \"/run/x/admin.sock\"\n").unwrap();
        let socket = admin_socket(None, Some(&config)).unwrap();
        assert_eq!(socket, PathBuf::from("/run/x/admin.sock"));
    }

    #[test]
    fn missing_config_file_is_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = admin_socket(None, Some(&dir.path().join("absent.toml")))
            .err()
            .unwrap();
        assert_eq!(err.exit_code(), 3);
        assert!(err.message.contains("absent.toml"), "{}", err.message);
    }

    #[test]
    fn invalid_config_is_usage_error() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("metacrypt.toml");
        std::fs::write(&config, "[keyd]\nadmin_sock = \"/x\"\n").unwrap();
        let err = admin_socket(None, Some(&config)).err().unwrap();
        assert_eq!(err.exit_code(), 2);
        assert!(err.message.contains("admin_sock"), "{}", err.message);
    }
}
