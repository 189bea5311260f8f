//! `metacrypt-keyd [--config PATH]`: loads the configuration, opens the
//! database and the sockets, and serves until SIGTERM or SIGINT, which seal
//! the service (zeroizing every key) before keyd exits.
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use metacrypt_config::{Config, LogConfig, LogFormat, SandboxMode};
use metacrypt_keyd::audit::AuditLog;
use metacrypt_keyd::db::{Database, loose_file_mode};
use metacrypt_keyd::secure::{self, LockPolicy};
use metacrypt_keyd::server::{AccessPolicy, Listeners, Server};
use metacrypt_keyd::service::{Service, ServiceOptions};
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

/// How long shutdown waits for blocking work after sealing.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Read connections besides one per signing thread, for seal operations
/// and listings.
const EXTRA_READ_CONNECTIONS: usize = 2;

#[derive(Debug, Parser)]
#[command(
    name = "metacrypt-keyd",
    version,
    about = "The Metacrypt key daemon: keeps every key in locked memory and serves frontd and the CLI on Unix sockets"
)]
struct Args {
    /// Configuration file; without it METACRYPT_CONFIG, ./metacrypt.toml and
    /// /srv/metacrypt/metacrypt.toml are tried in that order.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!(error = %message, "metacrypt-keyd failed");
            eprintln!("metacrypt-keyd: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    // Setup runs on the main thread, in this order, before any other thread
    // exists.
    // 1. Configuration.
    let config = Config::load(args.config.as_deref()).map_err(|err| err.to_string())?;
    let db_path = config
        .validate_keyd()
        .map_err(|err| err.to_string())?
        .to_path_buf();

    // 2. Logging (JSON lines or text on stdout).
    init_logging(&config.log)?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = config
            .source
            .as_ref()
            .map(|path| path.display().to_string()),
        "metacrypt-keyd starting"
    );
    if let Some(path) = &config.source {
        warn_on_writable_config(path);
    }

    // 3. Locked memory: enforce mode requires it, the other modes fall back
    //    to zeroized heap memory with a warning.
    let policy = match config.keyd.sandbox {
        SandboxMode::Enforce => LockPolicy::Require,
        SandboxMode::BestEffort | SandboxMode::Off => LockPolicy::BestEffort,
    };
    let method = secure::set_lock_policy(policy).map_err(|err| format!("secure memory: {err}"))?;
    let report = secure::lock_report();
    tracing::info!(
        method = method.as_str(),
        policy = policy.as_str(),
        vm_locked_kib = report.vm_locked_kib,
        "locked memory for keys"
    );

    // 4. The database file (created 0600) and its connections.
    let signing_threads = match config.keyd.signing_threads {
        0 => std::thread::available_parallelism().map_or(1, |cores| cores.get()),
        threads => threads,
    };
    let database = Database::open(&db_path, signing_threads + EXTRA_READ_CONNECTIONS)
        .map_err(|err| err.to_string())?;
    tracing::info!(path = %db_path.display(), "opened database");

    // 4b. The audit log (created 0600), opened here and kept open so that a
    //     later sandbox need not allow opening its directory.
    let audit_path = config.audit_log_path(&db_path);
    let audit = AuditLog::open(&audit_path).map_err(|err| err.to_string())?;
    tracing::info!(path = %audit_path.display(), "opened audit log");

    // 5. The sockets, bound here or received from systemd.
    let listeners = Listeners::open(&config.keyd).map_err(|err| err.to_string())?;
    if listeners.from_systemd {
        tracing::info!("listening on the front and admin sockets passed by systemd");
    } else {
        tracing::info!(
            front = %config.keyd.front_socket.display(),
            admin = %config.keyd.admin_socket.display(),
            "listening"
        );
    }

    // 6. Process hardening. No core dump may contain a key, and no program
    //    keyd could be tricked into running may gain privileges. The
    //    landlock and seccomp restrictions also belong at this point, because
    //    they apply to the calling thread and the threads it creates later.
    //
    // INVARIANT: every thread (the database writer, the tokio runtime and
    // its blocking pool) is created after this point.
    harden_process()?;
    tracing::info!("disabled core dumps and set no-new-privs");

    // 7. Capabilities. The database and both sockets are open, so keyd
    //    needs no capability from here on: locked memory counts against
    //    RLIMIT_MEMLOCK without CAP_IPC_LOCK. The bounding set is emptied
    //    first, while CAP_SETPCAP is still effective, then the other sets.
    match metacrypt_keyd::sandbox::drop_capabilities() {
        Ok(bounding) => tracing::info!(
            bounding,
            "dropped every capability: the bounding, effective, permitted, inheritable and ambient sets are empty"
        ),
        Err(err) if config.keyd.sandbox == SandboxMode::Enforce => {
            listeners.remove_socket_files();
            return Err(format!("capability drop: {err}"));
        }
        Err(err) => tracing::warn!(
            error = %err,
            sandbox = %config.keyd.sandbox,
            "failed to drop capabilities; continuing"
        ),
    }

    // 8. The service, whose database writer thread starts now.
    let options = ServiceOptions {
        audit: Some(Arc::new(audit)),
        ..ServiceOptions::default()
    };
    let service = match Service::start(database, options) {
        Ok(service) => Arc::new(service),
        Err(err) => {
            listeners.remove_socket_files();
            return Err(err.to_string());
        }
    };
    tracing::info!(state = service.state().as_str(), "service started");

    // 9. The runtime, and serving until a signal.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("keyd-runtime")
        .build()
        .map_err(|err| format!("failed to start the async runtime: {err}"))?;
    let policy = AccessPolicy::new(&config.keyd, nix::unistd::geteuid().as_raw());
    let served = runtime.block_on(serve(
        Arc::clone(&service),
        listeners,
        policy,
        signing_threads,
    ));
    runtime.shutdown_timeout(SHUTDOWN_TIMEOUT);
    served
}

/// Logs a warning when the configuration file is writable by group or
/// others, because a user who can write it can change the database path, the
/// sockets and the peers allowed on them.
fn warn_on_writable_config(path: &Path) {
    match loose_file_mode(path, 0o022) {
        Ok(None) => {}
        Ok(Some(mode)) => tracing::warn!(
            path = %path.display(),
            mode = format!("{mode:04o}"),
            "the configuration file is writable by group or others; run chmod 0640 on it"
        ),
        Err(err) => tracing::warn!(
            path = %path.display(),
            error = %err,
            "failed to stat the configuration file"
        ),
    }
}

/// Sets RLIMIT_CORE to 0, makes the process non-dumpable (which also keeps
/// other processes of the same user from attaching with ptrace or reading
/// its memory through /proc) and sets no-new-privs.
fn harden_process() -> Result<(), String> {
    use nix::sys::{prctl, resource};
    resource::setrlimit(resource::Resource::RLIMIT_CORE, 0, 0)
        .map_err(|err| format!("failed to set RLIMIT_CORE to 0: {err}"))?;
    prctl::set_dumpable(false)
        .map_err(|err| format!("failed to clear the dumpable flag: {err}"))?;
    prctl::set_no_new_privs().map_err(|err| format!("failed to set no-new-privs: {err}"))?;
    Ok(())
}

fn init_logging(log: &LogConfig) -> Result<(), String> {
    let filter = EnvFilter::try_new(&log.level).map_err(|err| {
        format!(
            "config: log.level: {:?} is not a valid filter: {err}",
            log.level
        )
    })?;
    let installed = match log.format {
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_env_filter(filter)
            .with_writer(std::io::stdout)
            .try_init(),
        LogFormat::Text => tracing_subscriber::fmt()
            .with_ansi(std::io::stdout().is_terminal())
            .with_env_filter(filter)
            .with_writer(std::io::stdout)
            .try_init(),
    };
    installed.map_err(|err| format!("failed to set up logging: {err}"))
}

async fn serve(
    service: Arc<Service>,
    listeners: Listeners,
    policy: AccessPolicy,
    signing_threads: usize,
) -> Result<(), String> {
    let mut terminate = signal(SignalKind::terminate())
        .map_err(|err| format!("failed to handle SIGTERM: {err}"))?;
    let mut interrupt =
        signal(SignalKind::interrupt()).map_err(|err| format!("failed to handle SIGINT: {err}"))?;
    let server = Server::new(Arc::clone(&service), policy, signing_threads);
    let mut running = server
        .spawn(listeners)
        .map_err(|err| format!("failed to start serving: {err}"))?;
    tracing::info!(signing_threads, "serving");
    if let Err(err) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %err, "failed to notify systemd that keyd is ready");
    }

    let name = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    };
    tracing::info!(signal = name, "shutting down");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    running.stop().await;
    let sealing = Arc::clone(&service);
    match tokio::task::spawn_blocking(move || sealing.seal()).await {
        Ok(Ok(_)) => {}
        // An uninitialized service has no keys to zeroize.
        Ok(Err(err)) if err.code == metacrypt_protocol::ErrorCode::NotInitialized => {}
        Ok(Err(err)) => tracing::error!(error = %err, "failed to seal at shutdown"),
        Err(err) => tracing::error!(error = %err, "failed to seal at shutdown"),
    }
    running.remove_socket_files();
    tracing::info!("stopped");
    Ok(())
}
