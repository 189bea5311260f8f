//! `metacrypt-frontd [--config PATH]`: the HTTPS REST API of Metacrypt.
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use caps::CapSet;
use clap::Parser;
use metacrypt_config::{Config, LogConfig, LogFormat, SandboxMode};
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
    if let Err(error) = harden_process() {
        tracing::error!(%error, "metacrypt-frontd failed");
        eprintln!("metacrypt-frontd: {error}");
        return ExitCode::FAILURE;
    }

    // The TLS files are read and the listener is bound inside the runtime,
    // as the same uid, so none of that needs a capability. A port below
    // 1024 would need CAP_NET_BIND_SERVICE, which is gone by then: such a
    // port has to come from systemd socket activation (LISTEN_FDS), which
    // passes a socket that is already bound.
    match drop_capabilities() {
        Ok(bounding) => tracing::info!(
            bounding,
            "dropped every capability: the bounding, effective, permitted, inheritable and ambient sets are empty"
        ),
        // frontd follows keyd.sandbox, the one sandbox setting of the
        // shared configuration.
        Err(error) if config.keyd.sandbox == SandboxMode::Enforce => {
            let error = format!("capability drop: {error}");
            tracing::error!(%error, "metacrypt-frontd failed");
            eprintln!("metacrypt-frontd: {error}");
            return ExitCode::FAILURE;
        }
        Err(error) => tracing::warn!(
            %error,
            sandbox = %config.keyd.sandbox,
            "failed to drop capabilities; continuing"
        ),
    }

    // Every thread of frontd, the runtime's workers included, starts here
    // and copies the empty capability sets of the main thread.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
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

/// Empties the bounding set, then the effective, permitted, inheritable
/// and ambient sets of the main thread, and checks that all five are empty.
/// The bounding set goes first, because dropping from it needs CAP_SETPCAP.
/// Returns how many capabilities the bounding set held.
fn drop_capabilities() -> Result<usize, String> {
    let mut dropped = 0;
    for cap in caps::all() {
        // A capability the running kernel does not know reads as absent.
        if caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(|err| format!("failed to drop {cap} from the bounding set: {err}"))?;
            dropped += 1;
        }
    }
    for (set, name) in &CAPABILITY_SETS[1..] {
        caps::clear(None, *set)
            .map_err(|err| format!("failed to clear the {name} capability set: {err}"))?;
    }
    for (set, name) in CAPABILITY_SETS {
        let left = caps::read(None, set)
            .map_err(|err| format!("failed to read the {name} capability set: {err}"))?;
        if !left.is_empty() {
            let mut names: Vec<String> = left.iter().map(ToString::to_string).collect();
            names.sort();
            return Err(format!(
                "the {name} capability set still contains {}",
                names.join(", ")
            ));
        }
    }
    Ok(dropped)
}

/// Every capability set; all but the first (bounding) are emptied with
/// `caps::clear`.
const CAPABILITY_SETS: [(CapSet, &str); 5] = [
    (CapSet::Bounding, "bounding"),
    (CapSet::Effective, "effective"),
    (CapSet::Permitted, "permitted"),
    (CapSet::Inheritable, "inheritable"),
    (CapSet::Ambient, "ambient"),
];

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
