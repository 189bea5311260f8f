//! `metacrypt-frontd [--config PATH]`: the HTTPS REST API of Metacrypt.
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use metacrypt_config::{Config, FrontdSettings, LogConfig, LogFormat, SandboxMode};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "metacrypt-frontd",
    version,
    about = "The HTTPS REST API of Metacrypt"
)]
struct Args {
    /// Configuration file; without it METACRYPT_CONFIG, ./metacrypt.toml
    /// and /srv/metacrypt/metacrypt.toml are tried in that order.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
}

/// Crates whose debug output is about connection internals. They stay at
/// info unless `log.level` names them, so `level = "debug"` shows frontd's
/// own debug lines without frame dumps.
const QUIET_CRATES: [&str; 6] = [
    "h2",
    "hyper",
    "hyper_util",
    "reqwest",
    "rustls",
    "tokio_rustls",
];

fn filter_directives(level: &str) -> String {
    let mut directives = level.trim().to_owned();
    for name in QUIET_CRATES {
        let named = level.split(',').any(|directive| {
            let target = directive.split('=').next().unwrap_or_default().trim();
            target == name || target.starts_with(&format!("{name}::"))
        });
        if !named {
            directives.push_str(&format!(",{name}=info"));
        }
    }
    directives
}

fn init_logging(log: &LogConfig) -> Result<(), String> {
    let filter = EnvFilter::try_new(filter_directives(&log.level))
        .map_err(|error| format!("config: log.level: {error}"))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let result = match log.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder
            .with_ansi(std::io::stdout().is_terminal())
            .try_init(),
    };
    result.map_err(|error| format!("failed to set up logging: {error}"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::load(args.config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("metacrypt-frontd: {error}");
            return ExitCode::FAILURE;
        }
    };
    let settings = match config.validate_frontd() {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("metacrypt-frontd: {error}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(error) = init_logging(&config.log) {
        eprintln!("metacrypt-frontd: {error}");
        return ExitCode::FAILURE;
    }
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %config.source.as_deref().map(|path| path.display().to_string()).unwrap_or_default(),
        "metacrypt-frontd starting"
    );
    // Sized here: the sandbox hides the cgroup files tokio would read.
    let workers = std::thread::available_parallelism().map_or(2, |cores| cores.get());
    if let Err(error) = apply_sandbox(&config, &settings) {
        tracing::error!(%error, "metacrypt-frontd failed");
        eprintln!("metacrypt-frontd: {error}");
        return ExitCode::FAILURE;
    }

    // Every thread of frontd, the runtime's workers included, starts here
    // and copies the empty capability sets, the landlock domain and the
    // seccomp filter of the main thread.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(workers)
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(error = %error, "failed to start the async runtime");
            eprintln!("metacrypt-frontd: failed to start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(metacrypt_frontd::server::run(&config, settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %error, "metacrypt-frontd failed");
            eprintln!("metacrypt-frontd: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Sets RLIMIT_CORE to 0 and clears the dumpable flag, so neither a core
/// dump nor another process of the same user can read the TLS key or the
/// tokens in memory, and sets no-new-privs.
fn harden_process() -> Result<(), String> {
    use nix::sys::{prctl, resource};
    resource::setrlimit(resource::Resource::RLIMIT_CORE, 0, 0)
        .map_err(|err| format!("failed to set RLIMIT_CORE to 0: {err}"))?;
    prctl::set_dumpable(false)
        .map_err(|err| format!("failed to clear the dumpable flag: {err}"))?;
    prctl::set_no_new_privs().map_err(|err| format!("failed to set no-new-privs: {err}"))?;
    Ok(())
}

/// Logs a failed sandbox step, or makes it fatal under `enforce` with a
/// message naming the step. frontd follows keyd.sandbox, the one sandbox
/// setting of the shared configuration.
fn step_failed(mode: SandboxMode, step: &str, error: String) -> Result<(), String> {
    match mode {
        SandboxMode::Enforce => Err(format!("sandbox step {step} failed: {error}")),
        SandboxMode::BestEffort | SandboxMode::Off => {
            tracing::warn!(step, %error, sandbox = %mode, "sandbox step failed; continuing");
            Ok(())
        }
    }
}

/// Confines frontd before it starts any thread, in this order: no core
/// dumps, non-dumpable and no-new-privs; an empty bounding set, the switch
/// to frontd.user when started as root, and empty capability sets; then,
/// unless keyd.sandbox is off, landlock and the seccomp allow-list.
///
/// The TLS files are read and the listener is bound inside the runtime,
/// after all of this, so none of that may need a capability. A port below
/// 1024 would need CAP_NET_BIND_SERVICE: such a port has to come from
/// systemd socket activation (LISTEN_FDS), which passes a socket that is
/// already bound.
fn apply_sandbox(config: &Config, settings: &FrontdSettings) -> Result<(), String> {
    let mode = config.keyd.sandbox;
    if mode == SandboxMode::Off {
        tracing::warn!(
            "keyd.sandbox is off: frontd applies no landlock or seccomp restriction; use it for \
             debugging only"
        );
    }
    let target_user = match (&config.frontd.user, &config.frontd.group) {
        (Some(user), group) => Some(metacrypt_sandbox::resolve_user(
            user,
            group.as_deref(),
            "frontd.user",
            "frontd.group",
        )?),
        (None, Some(_)) => {
            return Err("config: frontd.group is set without frontd.user".to_owned());
        }
        (None, None) => None,
    };

    harden_process()?;
    tracing::info!("disabled core dumps, cleared the dumpable flag and set no-new-privs");

    match metacrypt_sandbox::drop_bounding_set() {
        Ok(bounding) => tracing::info!(bounding, "emptied the capability bounding set"),
        Err(error) => step_failed(mode, "capabilities", error)?,
    }
    let euid = nix::unistd::geteuid().as_raw();
    match &target_user {
        Some(target) if euid == 0 => match metacrypt_sandbox::switch_user(target) {
            Ok(()) => tracing::info!(
                uid = target.uid,
                gid = target.gid,
                "switched to frontd.user with no supplementary groups"
            ),
            Err(error) => step_failed(mode, "user", error)?,
        },
        Some(target) if euid == target.uid => {
            tracing::info!(uid = euid, "already running as frontd.user");
        }
        Some(target) => step_failed(
            mode,
            "user",
            format!(
                "frontd.user is uid {}, but frontd runs as uid {euid} and cannot switch",
                target.uid
            ),
        )?,
        None if euid == 0 => tracing::warn!(
            "frontd runs as root because frontd.user is not set; set it to an unprivileged user"
        ),
        None => tracing::info!(
            uid = euid,
            "frontd.user is not set; keeping the current user"
        ),
    }
    match metacrypt_sandbox::clear_capabilities() {
        Ok(()) => tracing::info!(
            "dropped every capability: the bounding, effective, permitted, inheritable and ambient sets are empty"
        ),
        Err(error) => step_failed(mode, "capabilities", error)?,
    }
    if mode == SandboxMode::Off {
        return Ok(());
    }

    let policy = metacrypt_frontd::sandbox::landlock_policy(config, settings);
    match metacrypt_sandbox::restrict_paths_and_network(&policy) {
        Ok(report) => tracing::info!(
            status = report.status,
            abi = report.abi,
            read_only = ?policy.read_only,
            tcp_bind = ?policy.tcp_bind,
            tcp_connect = ?policy.tcp_connect,
            tcp_restricted = report.tcp_restricted,
            scoped = report.scoped,
            "landlock restricts files to frontd's own and TCP to its ports"
        ),
        Err(error) => step_failed(mode, "landlock", error)?,
    }
    let allowed = metacrypt_frontd::sandbox::allowed_syscalls(settings);
    match metacrypt_sandbox::install_syscall_filter(&allowed) {
        Ok(()) => tracing::info!(
            allowed = allowed.len(),
            "seccomp allows only the listed system calls and kills frontd on any other"
        ),
        Err(error) => step_failed(mode, "seccomp", error)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_crates_are_capped() {
        let directives = filter_directives("debug");
        assert!(directives.starts_with("debug,"), "{directives}");
        assert!(directives.contains(",h2=info"), "{directives}");
    }

    #[test]
    fn named_crate_keeps_its_level() {
        let directives = filter_directives("info,rustls=debug");
        assert!(!directives.contains(",rustls=info"), "{directives}");
        assert!(directives.contains("hyper=info"), "{directives}");
    }
}
