//! `metacrypt dev`: a complete development setup on this machine.
//!
//! It prepares a directory with TLS certificates, a dev user for the
//! development MCIAS server, a seal password and a config file. It then
//! starts `metacrypt-mcias-dev`, `metacrypt-keyd` and `metacrypt-frontd` as
//! child processes and initializes or unseals keyd through its admin socket.
//! Through the REST API it logs in, mounts a CA engine `pki` with an issuer
//! `default`, and finally prints the environment for using it. A directory from an earlier run
//! is reused: what exists is kept, and keyd is unsealed with its password.

mod children;
mod layout;
mod material;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use metacrypt_protocol::{RequestBody, SealState, SecretString};
use reqwest::Url;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::signal::unix::{Signal, SignalKind, signal};

use self::children::Supervisor;
use self::layout::{Layout, choose_root, write_file};
use self::material::{
    CURL_ISSUE, DEV_OPS_USER, DEV_USER, config_text, ensure_dev_user, ensure_seal_password,
    ensure_tls, env_lines,
};
use crate::admin::AdminClient;
use crate::error::CliError;
use crate::remote::{Api, StatusReply};

const MCIAS: &str = "metacrypt-mcias-dev";
const KEYD: &str = "metacrypt-keyd";
const FRONTD: &str = "metacrypt-frontd";
/// Lifetime of the dev user's token. A development session can last a
/// working day, so it is longer than the MCIAS server's default of 1 h.
const TOKEN_TTL: &str = "12h";
/// Time each daemon gets to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const MOUNT: &str = "pki";
const ISSUER: &str = "default";

pub struct DevOptions {
    pub dir: Option<PathBuf>,
    pub addr: SocketAddr,
    pub once: bool,
}

/// Paths of the three daemons, found next to the running executable.
struct Binaries {
    mcias: PathBuf,
    keyd: PathBuf,
    frontd: PathBuf,
}

impl Binaries {
    fn locate() -> Result<Self, CliError> {
        let exe = std::env::current_exe().map_err(|err| {
            CliError::io(format!("failed to find the path of this executable: {err}"))
        })?;
        let dir = exe.parent().unwrap_or(Path::new("/"));
        let missing: Vec<&str> = [MCIAS, KEYD, FRONTD]
            .into_iter()
            .filter(|name| !dir.join(name).is_file())
            .collect();
        if !missing.is_empty() {
            return Err(CliError::io(format!(
                "{} not found in {}, the directory of {}; build every binary with \
                 `cargo build --release` and run target/release/metacrypt",
                missing.join(", "),
                dir.display(),
                exe.display()
            )));
        }
        Ok(Self {
            mcias: dir.join(MCIAS),
            keyd: dir.join(KEYD),
            frontd: dir.join(FRONTD),
        })
    }
}

/// The secrets a setup needs to start.
struct Secrets {
    seal_password: SecretString,
    dev_password: SecretString,
}

pub fn run(options: DevOptions) -> Result<(), CliError> {
    check_loopback(options.addr)?;
    let binaries = Binaries::locate()?;
    check_port_free(options.addr)?;
    let (root, created) = choose_root(options.dir)?;
    let result = run_in(&root, created, &binaries, options.addr, options.once);
    // A directory made for a run that failed contains only keys and the
    // seal password, so it is removed.
    if result.is_err()
        && created
        && let Err(err) = std::fs::remove_dir_all(&root)
    {
        eprintln!("dev: failed to remove {}: {err}", root.display());
    }
    result
}

fn run_in(
    root: &Path,
    created: bool,
    binaries: &Binaries,
    addr: SocketAddr,
    once: bool,
) -> Result<(), CliError> {
    let layout = Layout::new(root)?;
    eprintln!(
        "dev: {} {}",
        if created { "created" } else { "using" },
        layout.root.display()
    );
    layout.create_dirs()?;
    let _lock = layout.lock()?;
    check_port_free(addr)?;
    let secrets = prepare(&layout)?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| CliError::io(format!("failed to start the async runtime: {err}")))?;
    runtime.block_on(session(&layout, binaries, &secrets, addr, once))
}

fn check_loopback(addr: SocketAddr) -> Result<(), CliError> {
    if !addr.ip().is_loopback() {
        return Err(CliError::usage(format!(
            "--addr {addr} is not a loopback address; metacrypt dev listens only on \
             127.0.0.1 or ::1, such as --addr 127.0.0.1:8443"
        )));
    }
    if addr.port() == 0 {
        return Err(CliError::usage(
            "--addr needs a fixed port, such as 127.0.0.1:8443",
        ));
    }
    Ok(())
}

/// Fails early with a clear message when another process listens on `addr`.
/// frontd binds it again a moment later.
fn check_port_free(addr: SocketAddr) -> Result<(), CliError> {
    TcpListener::bind(addr).map(drop).map_err(|err| {
        CliError::io(format!(
            "cannot listen on {addr}: {err}; stop what uses it or choose another --addr"
        ))
    })
}

/// Creates what is missing in the directory and reads what exists.
fn prepare(layout: &Layout) -> Result<Secrets, CliError> {
    let origin = ensure_tls(
        &layout.frontd_cert,
        &layout.frontd_key,
        "metacrypt-frontd (development)",
    )?;
    eprintln!("dev: {} {}", origin.verb(), layout.frontd_cert.display());
    let origin = ensure_tls(
        &layout.mcias_cert,
        &layout.mcias_key,
        "metacrypt-mcias-dev (development)",
    )?;
    eprintln!("dev: {} {}", origin.verb(), layout.mcias_cert.display());
    let (dev_password, origin) = ensure_dev_user(&layout.users, &layout.dev_password)?;
    eprintln!(
        "dev: {} {} (user {DEV_USER})",
        origin.verb(),
        layout.users.display()
    );
    let (seal_password, origin) = ensure_seal_password(&layout.seal_password, &layout.database)?;
    eprintln!("dev: {} {}", origin.verb(), layout.seal_password.display());
    Ok(Secrets {
        seal_password,
        dev_password,
    })
}

/// SIGINT and SIGTERM.
struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
}

impl StopSignals {
    fn install() -> Result<Self, CliError> {
        let install = |kind: SignalKind| {
            signal(kind)
                .map_err(|err| CliError::io(format!("failed to install a signal handler: {err}")))
        };
        Ok(Self {
            interrupt: install(SignalKind::interrupt())?,
            terminate: install(SignalKind::terminate())?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

async fn session(
    layout: &Layout,
    binaries: &Binaries,
    secrets: &Secrets,
    addr: SocketAddr,
    once: bool,
) -> Result<(), CliError> {
    let mut signals = StopSignals::install()?;
    let mut supervisor = Supervisor::new();
    let started = tokio::select! {
        result = start(&mut supervisor, layout, binaries, secrets, addr) => result.map(Some),
        name = signals.recv() => {
            eprintln!("dev: {name} received during setup, stopping");
            Ok(None)
        }
    };
    let result = match started {
        Ok(Some(())) if once => Ok(()),
        Ok(Some(())) => {
            eprintln!("dev: running; press Ctrl-C to stop");
            tokio::select! {
                name = signals.recv() => {
                    eprintln!("dev: {name} received, stopping");
                    Ok(())
                }
                err = supervisor.wait_for_exit() => {
                    eprintln!("dev: a daemon exited unexpectedly, stopping the others");
                    Err(err)
                }
            }
        }
        Ok(None) => Ok(()),
        Err(err) => Err(err),
    };
    supervisor.stop_all().await;
    result
}

/// Starts the daemons, brings keyd to `unsealed`, creates the mount and the
/// issuer, and prints the environment.
async fn start(
    supervisor: &mut Supervisor,
    layout: &Layout,
    binaries: &Binaries,
    secrets: &Secrets,
    addr: SocketAddr,
) -> Result<(), CliError> {
    let mcias_port = start_mcias(supervisor, layout, binaries).await?;
    write_file(
        &layout.config,
        config_text(layout, addr, mcias_port).as_bytes(),
        0o600,
    )?;

    supervisor.spawn(
        KEYD,
        &binaries.keyd,
        [Path::new("--config"), &layout.config],
        layout.log_file(KEYD),
        &layout.root,
    )?;
    let socket = layout.admin_socket.clone();
    let state = supervisor
        .wait_ready(
            KEYD,
            "no Hello reply on its admin socket",
            READY_TIMEOUT,
            || admin_hello(socket.clone()),
        )
        .await?;
    eprintln!("dev: {KEYD} is {state}");

    supervisor.spawn(
        FRONTD,
        &binaries.frontd,
        [Path::new("--config"), &layout.config],
        layout.log_file(FRONTD),
        &layout.root,
    )?;
    let frontd_url = format!("https://{addr}");
    let api = Api::new(parse_url(&frontd_url)?, Some(&layout.frontd_cert))?;
    supervisor
        .wait_ready(
            FRONTD,
            "GET /v1/status did not answer",
            READY_TIMEOUT,
            || frontd_state(&api),
        )
        .await?;
    eprintln!("dev: {FRONTD} is listening on {frontd_url}");

    let state = unseal_or_init(layout, secrets.seal_password.clone()).await?;
    eprintln!("dev: keyd is {state}");
    supervisor
        .wait_ready(
            FRONTD,
            "GET /v1/status did not report unsealed",
            READY_TIMEOUT,
            || async { frontd_state(&api).await.filter(|state| state == "unsealed") },
        )
        .await?;

    let token = login(&api, &secrets.dev_password).await?;
    ensure_mount(&api, token.expose()).await?;
    ensure_issuer(&api, token.expose()).await?;

    let ca_cert = layout.frontd_cert.to_string_lossy();
    let env = env_lines(&[
        ("METACRYPT_ADDR", &frontd_url),
        ("METACRYPT_CA_CERT", &ca_cert),
        ("METACRYPT_TOKEN", token.expose()),
        ("METACRYPT_DEV_USER", DEV_USER),
        ("METACRYPT_DEV_OPS_USER", DEV_OPS_USER),
        ("METACRYPT_DEV_PASSWORD", secrets.dev_password.expose()),
    ]);
    write_file(&layout.env_file, env.as_bytes(), 0o600)?;
    print_summary(layout, &env);
    Ok(())
}

async fn start_mcias(
    supervisor: &mut Supervisor,
    layout: &Layout,
    binaries: &Binaries,
) -> Result<u16, CliError> {
    // A port file left by a run that was killed would point at a dead port.
    let _ = std::fs::remove_file(&layout.mcias_port_file);
    let args: [&std::ffi::OsStr; 12] = [
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--port-file".as_ref(),
        layout.mcias_port_file.as_os_str(),
        "--tls-cert".as_ref(),
        layout.mcias_cert.as_os_str(),
        "--tls-key".as_ref(),
        layout.mcias_key.as_os_str(),
        "--users".as_ref(),
        layout.users.as_os_str(),
        "--token-ttl".as_ref(),
        TOKEN_TTL.as_ref(),
    ];
    supervisor.spawn(
        MCIAS,
        &binaries.mcias,
        args,
        layout.log_file(MCIAS),
        &layout.root,
    )?;
    let port_file = layout.mcias_port_file.clone();
    let port = supervisor
        .wait_ready(MCIAS, "no port file written", READY_TIMEOUT, || {
            let port = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|text| text.trim().parse::<u16>().ok());
            async move { port }
        })
        .await?;
    let url = format!("https://127.0.0.1:{port}");
    let mcias = Api::new(parse_url(&url)?, Some(&layout.mcias_cert))?;
    supervisor
        .wait_ready(
            MCIAS,
            "GET /v1/health did not answer",
            READY_TIMEOUT,
            || async { mcias.get::<Value>("/v1/health", None).await.ok() },
        )
        .await?;
    eprintln!("dev: {MCIAS} is listening on {url}");
    Ok(port)
}

fn parse_url(text: &str) -> Result<Url, CliError> {
    Url::parse(text).map_err(|err| CliError::usage(format!("invalid URL {text}: {err}")))
}

/// Connects to the admin socket and returns keyd's state, or `None` while
/// keyd is not listening yet.
async fn admin_hello(socket: PathBuf) -> Option<SealState> {
    tokio::task::spawn_blocking(move || AdminClient::connect(&socket).ok().map(|c| c.state()))
        .await
        .ok()
        .flatten()
}

async fn frontd_state(api: &Api) -> Option<String> {
    api.get::<StatusReply>("/v1/status", None)
        .await
        .ok()
        .map(|reply| reply.state)
}

/// Initializes keyd with the seal password when it is uninitialized, or
/// unseals it when it is sealed, through the admin socket.
async fn unseal_or_init(layout: &Layout, password: SecretString) -> Result<SealState, CliError> {
    let socket = layout.admin_socket.clone();
    let password_file = layout.seal_password.clone();
    tokio::task::spawn_blocking(move || {
        let mut client = AdminClient::connect(&socket)?;
        match client.state() {
            SealState::Unsealed => Ok(SealState::Unsealed),
            SealState::Uninitialized => {
                eprintln!(
                    "dev: initializing keyd with the password in {}",
                    password_file.display()
                );
                client
                    .call_for_state(RequestBody::Init { password })
                    .map_err(|err| context(err, "init"))
            }
            SealState::Sealed => {
                eprintln!(
                    "dev: unsealing keyd with the password in {}",
                    password_file.display()
                );
                client
                    .call_for_state(RequestBody::Unseal { password })
                    .map_err(|err| {
                        context(err, &format!("unseal with {}", password_file.display()))
                    })
            }
            SealState::Initializing => Err(CliError::service(
                "keyd is initializing from another client; run metacrypt dev again once it is done",
            )),
        }
    })
    .await
    .map_err(|err| CliError::io(format!("the admin socket task failed: {err}")))?
}

fn context(err: CliError, what: &str) -> CliError {
    CliError {
        kind: err.kind,
        message: format!("{what} failed: {}", err.message),
    }
}

#[derive(Serialize)]
struct LoginBody<'a> {
    username: &'a str,
    password: &'a str,
}

#[derive(Deserialize)]
struct LoginReply {
    token: SecretString,
}

/// A list entry of which only the name is needed.
#[derive(Deserialize)]
struct Named {
    name: String,
}

#[derive(Deserialize)]
struct MountList {
    mounts: Vec<Named>,
}

#[derive(Deserialize)]
struct IssuerList {
    issuers: Vec<Named>,
}

async fn login(api: &Api, password: &SecretString) -> Result<SecretString, CliError> {
    let body = LoginBody {
        username: DEV_USER,
        password: password.expose(),
    };
    let reply: LoginReply = api.post("/v1/auth/login", None, &body).await?;
    eprintln!("dev: logged in as {DEV_USER}");
    Ok(reply.token)
}

async fn ensure_mount(api: &Api, token: &str) -> Result<(), CliError> {
    let list: MountList = api.get("/v1/mounts", Some(token)).await?;
    if list.mounts.iter().any(|mount| mount.name == MOUNT) {
        eprintln!("dev: reusing the CA mount {MOUNT}");
        return Ok(());
    }
    let body = json!({ "name": MOUNT, "type": "ca", "config": {} });
    let _: Value = api.post("/v1/mounts", Some(token), &body).await?;
    eprintln!("dev: mounted a CA engine at {MOUNT}");
    Ok(())
}

async fn ensure_issuer(api: &Api, token: &str) -> Result<(), CliError> {
    let path = format!("/v1/pki/{MOUNT}/issuers");
    let list: IssuerList = api.get(&path, Some(token)).await?;
    if list.issuers.iter().any(|issuer| issuer.name == ISSUER) {
        eprintln!("dev: reusing the issuer {ISSUER}");
        return Ok(());
    }
    let _: Value = api
        .post(&path, Some(token), &json!({ "name": ISSUER }))
        .await?;
    eprintln!("dev: created the issuer {ISSUER}");
    Ok(())
}

fn print_summary(layout: &Layout, env: &str) {
    println!();
    println!(
        "Metacrypt is running for development, with its data in {}.",
        layout.root.display()
    );
    println!();
    print!("{env}");
    println!();
    println!("These lines are also in {}:", layout.env_file.display());
    println!("  source {}", layout.env_file.display());
    println!();
    println!("Issue a server certificate:");
    println!("  {CURL_ISSUE}");
    println!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_addresses_are_accepted() {
        assert!(check_loopback("127.0.0.1:8443".parse().unwrap()).is_ok());
        assert!(check_loopback("[::1]:8443".parse().unwrap()).is_ok());
    }

    #[test]
    fn other_addresses_are_rejected() {
        for addr in ["0.0.0.0:8443", "192.0.2.1:8443", "[::]:8443"] {
            let err = check_loopback(addr.parse().unwrap()).err().unwrap();
            assert_eq!(err.exit_code(), 2, "{addr}");
            assert!(err.message.contains("not a loopback address"), "{addr}");
        }
    }

    #[test]
    fn port_zero_is_rejected() {
        let err = check_loopback("127.0.0.1:0".parse().unwrap())
            .err()
            .unwrap();
        assert!(err.message.contains("fixed port"), "{}", err.message);
    }

    #[test]
    fn used_port_is_reported() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let err = check_port_free(addr).err().unwrap();
        assert_eq!(err.exit_code(), 3);
        assert!(err.message.contains(&addr.to_string()), "{}", err.message);
    }

    #[test]
    fn curl_command_uses_env_names() {
        for name in ["$METACRYPT_CA_CERT", "$METACRYPT_TOKEN", "$METACRYPT_ADDR"] {
            assert!(CURL_ISSUE.contains(name), "{name}");
        }
        assert!(CURL_ISSUE.contains("/v1/pki/pki/issue"));
    }
}
