//! `metacrypt-keyd [--config PATH]`: loads the configuration, opens the
//! database and the sockets, and serves until SIGTERM, SIGINT, SIGHUP or
//! SIGQUIT, which seal the service (zeroizing every key) before keyd exits.
#![forbid(unsafe_code)]

#[cfg(feature = "sandbox-probe")]
mod probe;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use metacrypt_config::{Config, LogConfig, LogFormat, SandboxMode};
use metacrypt_keyd::audit::AuditLog;
use metacrypt_keyd::db::{Database, loose_file_mode};
use metacrypt_keyd::sandbox;
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

    /// After the sandbox is up, try one forbidden action and report the
    /// result instead of serving. Only debug builds with the
    /// `sandbox-probe` feature have this option.
    #[cfg(feature = "sandbox-probe")]
    #[arg(long, value_name = "ACTION", hide = true)]
    sandbox_probe: Option<String>,
}

fn main() -> ExitCode {
    // 1. Clean the process before anything else opens a file or starts a
    //    thread: inherited descriptors other than systemd's are closed and
    //    the environment keeps only what keyd reads. Logging is not set up
    //    yet, so the outcome is logged in `run`.
    let cleaned = sandbox::clean_process();
    let args = Args::parse();
    match run(&args, cleaned) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!(error = %message, "metacrypt-keyd failed");
            eprintln!("metacrypt-keyd: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Handles a sandbox step that failed as the mode says: fatal under
/// `enforce`, with an error naming the step, and a warning otherwise.
fn step_failed(mode: SandboxMode, step: &str, error: String) -> Result<(), String> {
    match mode {
        SandboxMode::Enforce => Err(format!("sandbox step {step} failed: {error}")),
        SandboxMode::BestEffort | SandboxMode::Off => {
            tracing::warn!(step, %error, sandbox = %mode, "sandbox step failed; continuing");
            Ok(())
        }
    }
}

fn run(args: &Args, cleaned: Result<sandbox::Cleaned, String>) -> Result<(), String> {
    // Setup runs on the main thread, in this order, before any other thread
    // exists.
    //
    // INVARIANT: every thread (the database writer, the tokio runtime and
    // its blocking pool) is created in step 8, after the sandbox, so each
    // one inherits the empty capability sets, the landlock domain and the
    // seccomp filter of the main thread.

    // 2. Configuration, logging, the database and the sockets: everything
    //    keyd reads or binds outside its data directory happens here.
    let config = Config::load(args.config.as_deref()).map_err(|err| err.to_string())?;
    let db_path = config
        .validate_keyd()
        .map_err(|err| err.to_string())?
        .to_path_buf();
    init_logging(&config.log)?;
    let mode = config.keyd.sandbox;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = config
            .source
            .as_ref()
            .map(|path| path.display().to_string()),
        sandbox = %mode,
        "metacrypt-keyd starting"
    );
    if mode == SandboxMode::Off {
        tracing::warn!(
            "keyd.sandbox is off: keyd applies no landlock or seccomp restriction; use it for \
             debugging only"
        );
    }
    match cleaned {
        Ok(cleaned) => tracing::info!(
            closed_fds = ?cleaned.closed_fds,
            systemd_fds = cleaned.systemd_fds,
            removed_env = ?cleaned.removed_env,
            "closed inherited descriptors and cleared the environment"
        ),
        Err(error) => step_failed(mode, "clean-process", error)?,
    }
    if let Some(path) = &config.source {
        warn_on_writable_config(path);
    }
    // The user is looked up now, while the passwd and group files are
    // still readable.
    let target_user = match (&config.keyd.user, &config.keyd.group) {
        (Some(user), group) => Some(sandbox::resolve_user(
            user,
            group.as_deref(),
            "keyd.user",
            "keyd.group",
        )?),
        (None, Some(_)) => return Err("config: keyd.group is set without keyd.user".to_owned()),
        (None, None) => None,
    };
    let signing_threads = match config.keyd.signing_threads {
        0 => std::thread::available_parallelism().map_or(1, |cores| cores.get()),
        threads => threads,
    };
    let database = Database::open(&db_path, signing_threads + EXTRA_READ_CONNECTIONS)
        .map_err(|err| err.to_string())?;
    tracing::info!(path = %db_path.display(), "opened database");

    // The audit log (created 0600) is opened here and kept open, so that the
    // sandbox need not allow opening it again.
    let audit_path = config.audit_log_path(&db_path);
    let audit = AuditLog::open(&audit_path).map_err(|err| err.to_string())?;
    tracing::info!(path = %audit_path.display(), "opened audit log");
    let mut listeners = Listeners::open(&config.keyd).map_err(|err| err.to_string())?;
    if listeners.from_systemd {
        tracing::info!("listening on the front and admin sockets passed by systemd");
    } else {
        tracing::info!(
            front = %config.keyd.front_socket.display(),
            admin = %config.keyd.admin_socket.display(),
            "listening"
        );
    }
    // Started as root, keyd created the files above as root. They go to
    // keyd.user now, while keyd still has CAP_CHOWN: after the switch keyd
    // must still write them, frontd connects to the front socket through
    // its group, and a later start as keyd.user must open the database.
    if let Some(target) = &target_user
        && nix::unistd::geteuid().is_root()
    {
        let mut files = sandbox::database_files(&db_path);
        files.push(audit_path.clone());
        let chowned = sandbox::chown_files(&files, target)
            .and_then(|()| listeners.chown_created_sockets(target.uid, target.gid));
        match chowned {
            Ok(sockets) => files.extend(sockets),
            Err(err) => {
                listeners.remove_socket_files();
                return Err(err);
            }
        }
        tracing::info!(
            uid = target.uid,
            gid = target.gid,
            files = ?files,
            "gave the database, audit log and socket files to keyd.user"
        );
    }

    #[cfg(feature = "sandbox-probe")]
    let probe = args.sandbox_probe.as_deref().map(probe::prepare);

    // From here on a failure removes the socket files keyd created.
    let sandboxed = apply_sandbox(&config, &db_path, &listeners, target_user.as_ref());
    if let Err(err) = sandboxed {
        listeners.remove_socket_files();
        return Err(err);
    }

    #[cfg(feature = "sandbox-probe")]
    if let Some(prepared) = probe {
        listeners.remove_socket_files();
        probe::run(prepared);
        return Ok(());
    }

    // The audit log must still be reachable by its path as the user keyd
    // now runs as and inside the sandbox, or every audited request would
    // fail with 503 while keyd looked healthy.
    if let Err(err) = audit.check() {
        listeners.remove_socket_files();
        return Err(format!(
            "audit log {}: {err}; make its directory accessible to keyd's user",
            audit_path.display()
        ));
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

    //    Then the runtime, and serving until a signal. The worker count is
    //    fixed here because the sandbox hides the cgroup files tokio would
    //    otherwise read for it.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(signing_threads.max(2))
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

/// Steps 3 to 7 of the setup sequence in `run`.
fn apply_sandbox(
    config: &Config,
    db_path: &Path,
    listeners: &Listeners,
    target_user: Option<&sandbox::TargetUser>,
) -> Result<(), String> {
    let mode = config.keyd.sandbox;

    // 3. Process hardening. No core dump may contain a key, and no program
    //    keyd could be tricked into running may gain privileges. These are
    //    plain prctl and setrlimit calls that cannot fail on Linux, so a
    //    failure is fatal in every mode.
    harden_process()?;
    tracing::info!("disabled core dumps, cleared the dumpable flag and set no-new-privs");

    // 4. Capabilities and the user, in every mode. The database and both
    //    sockets are open, so keyd needs no capability from here on: locked
    //    memory counts against RLIMIT_MEMLOCK without CAP_IPC_LOCK. The
    //    bounding set goes first, while CAP_SETPCAP is still effective,
    //    then the user switch, then the other sets.
    match sandbox::drop_bounding_set() {
        Ok(bounding) => tracing::info!(bounding, "emptied the capability bounding set"),
        Err(error) => step_failed(mode, "capabilities", error)?,
    }
    let euid = nix::unistd::geteuid().as_raw();
    match target_user {
        Some(target) if euid == 0 => match sandbox::switch_user(target) {
            Ok(()) => tracing::info!(
                uid = target.uid,
                gid = target.gid,
                "switched to keyd.user with no supplementary groups"
            ),
            Err(error) => step_failed(mode, "user", error)?,
        },
        Some(target) if euid == target.uid => {
            tracing::info!(uid = euid, "already running as keyd.user");
        }
        Some(target) => step_failed(
            mode,
            "user",
            format!(
                "keyd.user is uid {}, but keyd runs as uid {euid} and cannot switch",
                target.uid
            ),
        )?,
        None if euid == 0 => tracing::warn!(
            "keyd runs as root because keyd.user is not set; set it to an unprivileged user"
        ),
        None => tracing::info!(uid = euid, "keyd.user is not set; keeping the current user"),
    }
    match sandbox::clear_capabilities() {
        Ok(()) => tracing::info!(
            "dropped every capability: the bounding, effective, permitted, inheritable and ambient sets are empty"
        ),
        Err(error) => step_failed(mode, "capabilities", error)?,
    }

    // 5. Locked memory, tested now that CAP_IPC_LOCK is gone, so that the
    //    test allocation counts against RLIMIT_MEMLOCK like every key keyd
    //    allocates later. Enforce mode requires it, the other modes fall
    //    back to zeroized heap memory with a warning.
    let policy = match mode {
        SandboxMode::Enforce => LockPolicy::Require,
        SandboxMode::BestEffort | SandboxMode::Off => LockPolicy::BestEffort,
    };
    let method = secure::set_lock_policy(policy)
        .map_err(|err| format!("sandbox step locked-memory failed: {err}"))?;
    let report = secure::lock_report();
    if method == secure::LockMethod::Unlocked {
        tracing::warn!(
            policy = policy.as_str(),
            "sandbox step locked-memory failed: keys are kept in unlocked memory because the \
             memlock limit is too low; raise it (systemd LimitMEMLOCK=, ulimit -l)"
        );
    } else {
        tracing::info!(
            method = method.as_str(),
            policy = policy.as_str(),
            vm_locked_kib = report.vm_locked_kib,
            "locked memory for keys"
        );
    }

    if mode == SandboxMode::Off {
        return Ok(());
    }

    // 6. landlock: read and write only below the data directory and the
    //    directory of the sockets keyd bound itself; no TCP at all, no
    //    abstract Unix socket and no signal outside keyd.
    let sockets: Vec<&Path> = if listeners.from_systemd {
        Vec::new()
    } else {
        vec![
            config.keyd.front_socket.as_path(),
            config.keyd.admin_socket.as_path(),
        ]
    };
    let landlock = sandbox::LandlockPolicy {
        read_write: sandbox::keyd_directories(db_path, &sockets),
        ..sandbox::LandlockPolicy::default()
    };
    match sandbox::restrict_paths_and_network(&landlock) {
        Ok(report) => tracing::info!(
            status = report.status,
            abi = report.abi,
            read_write = ?landlock.read_write,
            tcp_denied = report.tcp_restricted,
            scoped = report.scoped,
            "landlock restricts files to the data and socket directories"
        ),
        Err(error) => step_failed(mode, "landlock", error)?,
    }

    // 7. seccomp: the allow-list of `sandbox::syscalls`; any other call
    //    kills keyd with SIGSYS.
    match sandbox::install_syscall_filter() {
        Ok(allowed) => tracing::info!(
            allowed,
            "seccomp allows only the listed system calls and kills keyd on any other"
        ),
        Err(error) => step_failed(mode, "seccomp", error)?,
    }
    Ok(())
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
    // SIGHUP (a closed terminal) and SIGQUIT would otherwise end keyd
    // without sealing, leaving keys unzeroized and the socket files behind.
    let mut hangup =
        signal(SignalKind::hangup()).map_err(|err| format!("failed to handle SIGHUP: {err}"))?;
    let mut quit =
        signal(SignalKind::quit()).map_err(|err| format!("failed to handle SIGQUIT: {err}"))?;
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
        _ = hangup.recv() => "SIGHUP",
        _ = quit.recv() => "SIGQUIT",
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
