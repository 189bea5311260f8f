//! Start-up warnings of the metacrypt-keyd binary about its configuration
//! file. Each run points the database at a missing directory, so keyd exits
//! right after opening it fails, before it binds any socket.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

const WARNING: &str = "the configuration file is writable by group or others";

/// Writes a configuration with `mode`, runs keyd on it until it exits and
/// returns its log (stdout) and the configuration path.
fn start_with_config_mode(dir: &Path, mode: u32) -> (String, String) {
    let config = dir.join("metacrypt.toml");
    let database = dir.join("absent").join("keyd.db");
    fs::write(
        &config,
        format!(
            "[database]\npath = {:?}\n\n[keyd]\nsandbox = \"off\"\n\n[log]\nformat = \"json\"\n",
            database.display().to_string()
        ),
    )
    .unwrap();
    fs::set_permissions(&config, fs::Permissions::from_mode(mode)).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_metacrypt-keyd"))
        .arg("--config")
        .arg(&config)
        .env_clear()
        .output()
        .unwrap();
    assert!(
        !output.status.success(),
        "keyd started without its database directory"
    );
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    (stdout, config.display().to_string())
}

#[test]
fn writable_config_is_reported() {
    for mode in [0o620, 0o602, 0o666] {
        let dir = tempfile::tempdir().unwrap();
        let (log, config) = start_with_config_mode(dir.path(), mode);
        let line = log
            .lines()
            .find(|line| line.contains(WARNING))
            .unwrap_or_else(|| panic!("no warning for mode {mode:04o} in:\n{log}"));
        let event: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(event["level"], "WARN", "{line}");
        assert_eq!(event["path"], config, "{line}");
        assert_eq!(event["mode"], format!("{mode:04o}"), "{line}");
    }
}

#[test]
fn private_config_is_not_reported() {
    for mode in [0o600, 0o640, 0o644] {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = start_with_config_mode(dir.path(), mode);
        assert!(
            log.contains("metacrypt-keyd starting"),
            "keyd logged nothing for mode {mode:04o}:\n{log}"
        );
        assert!(
            !log.contains(WARNING),
            "warning for mode {mode:04o}:\n{log}"
        );
    }
}
