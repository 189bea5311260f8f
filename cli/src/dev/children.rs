//! The daemons that `metacrypt dev` starts, watches and stops.

use std::ffi::{OsStr, OsString};
use std::fs::OpenOptions;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep, timeout};

use crate::error::CliError;

/// Time a daemon gets to exit after SIGTERM before it is sent SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Interval between checks for a daemon that exited or became ready.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Lines of a daemon's log shown when it fails.
const LOG_TAIL_LINES: usize = 20;

struct Managed {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

/// The started daemons, in start order. They are stopped in reverse order,
/// so frontd goes before keyd and keyd before the MCIAS server.
pub struct Supervisor {
    children: Vec<Managed>,
}

impl Supervisor {
    pub fn new() -> Self {
        Self {
            children: Vec::new(),
        }
    }

    /// Starts `program` with its stdout and stderr appended to `log`.
    ///
    /// The child gets its own process group, so a Ctrl-C in the terminal
    /// reaches only `metacrypt dev`, which then stops the children in order.
    /// `METACRYPT_*` variables are removed from its environment, because
    /// they would override the generated config file.
    ///
    /// NOTE: a child outlives `metacrypt dev` when that is killed with
    /// SIGKILL, because asking the kernel to signal the child on the parent's
    /// death (PR_SET_PDEATHSIG) needs unsafe code between fork and exec.
    pub fn spawn<I, S>(
        &mut self,
        name: &'static str,
        program: &Path,
        args: I,
        log: PathBuf,
        cwd: &Path,
    ) -> Result<(), CliError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let open_log = || {
            OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&log)
                .map_err(|err| CliError::io(format!("failed to open {}: {err}", log.display())))
        };
        let stdout = open_log()?;
        let stderr = open_log()?;
        let mut command = Command::new(program);
        command
            .args(args)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            // A safety net for early returns; `stop_all` normally ends the
            // child first.
            .kill_on_drop(true);
        for key in metacrypt_variables(std::env::vars_os()) {
            command.env_remove(key);
        }
        let child = command
            .spawn()
            .map_err(|err| CliError::io(format!("failed to start {}: {err}", program.display())))?;
        eprintln!(
            "dev: started {name} (pid {}), logging to {}",
            child.id().unwrap_or_default(),
            log.display()
        );
        self.children.push(Managed { name, child, log });
        Ok(())
    }

    /// Returns an error naming the first daemon that has exited, with the
    /// end of its log.
    pub fn check(&mut self) -> Result<(), CliError> {
        for managed in &mut self.children {
            if let Ok(Some(status)) = managed.child.try_wait() {
                return Err(exited_error(managed, status));
            }
        }
        Ok(())
    }

    /// Waits until any daemon exits and returns the error describing it.
    pub async fn wait_for_exit(&mut self) -> CliError {
        loop {
            if let Err(err) = self.check() {
                return err;
            }
            sleep(POLL_INTERVAL).await;
        }
    }

    /// Calls `probe` until it returns a value, failing when a daemon exits
    /// or `limit` passes first. `name` and `what` name the daemon and the
    /// condition in the error.
    pub async fn wait_ready<T, F, Fut>(
        &mut self,
        name: &str,
        what: &str,
        limit: Duration,
        mut probe: F,
    ) -> Result<T, CliError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + limit;
        loop {
            self.check()?;
            if let Some(value) = probe().await {
                return Ok(value);
            }
            if Instant::now() >= deadline {
                let log = self
                    .children
                    .iter()
                    .find(|managed| managed.name == name)
                    .map(|managed| log_tail_section(&managed.log))
                    .unwrap_or_default();
                return Err(CliError::io(format!(
                    "{name} was not ready after {} s: {what}{log}",
                    limit.as_secs()
                )));
            }
            sleep(POLL_INTERVAL).await;
        }
    }

    /// Stops every running daemon in reverse start order: SIGTERM, then
    /// SIGKILL after [`STOP_TIMEOUT`].
    pub async fn stop_all(&mut self) {
        while let Some(mut managed) = self.children.pop() {
            if let Ok(Some(_)) = managed.child.try_wait() {
                continue;
            }
            let name = managed.name;
            let pid = managed.child.id().and_then(|pid| i32::try_from(pid).ok());
            if let Some(pid) = pid
                && let Err(err) = kill(Pid::from_raw(pid), Signal::SIGTERM)
            {
                eprintln!("dev: failed to send SIGTERM to {name} (pid {pid}): {err}");
            }
            match timeout(STOP_TIMEOUT, managed.child.wait()).await {
                Ok(Ok(status)) => eprintln!("dev: stopped {name} ({status})"),
                Ok(Err(err)) => eprintln!("dev: failed to wait for {name}: {err}"),
                Err(_) => {
                    eprintln!(
                        "dev: {name} did not stop within {} s of SIGTERM, sending SIGKILL",
                        STOP_TIMEOUT.as_secs()
                    );
                    if let Err(err) = managed.child.kill().await {
                        eprintln!("dev: failed to kill {name}: {err}");
                    }
                }
            }
        }
    }
}

/// Names of the `METACRYPT_*` variables among `vars`.
fn metacrypt_variables(vars: impl IntoIterator<Item = (OsString, OsString)>) -> Vec<OsString> {
    vars.into_iter()
        .map(|(key, _)| key)
        .filter(|key| key.as_bytes().starts_with(b"METACRYPT_"))
        .collect()
}

fn exited_error(managed: &Managed, status: ExitStatus) -> CliError {
    CliError::service(format!(
        "{} exited unexpectedly ({status}){}",
        managed.name,
        log_tail_section(&managed.log)
    ))
}

/// Formats the last lines of `log` after a line naming the file.
fn log_tail_section(log: &Path) -> String {
    let text = match std::fs::read(log) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(err) => return format!("\n(failed to read {}: {err})", log.display()),
    };
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return format!("\n({} is empty)", log.display());
    }
    let start = lines.len().saturating_sub(LOG_TAIL_LINES);
    let mut section = format!("\nlast lines of {}:", log.display());
    for line in &lines[start..] {
        section.push_str("\n  ");
        section.push_str(line);
    }
    section
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn early_exit_shows_log_tail() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("failing.log");
        runtime().block_on(async {
            let mut supervisor = Supervisor::new();
            supervisor
                .spawn(
                    "failing",
                    Path::new("/bin/sh"),
                    ["-c", "echo config: database.path is required >&2; exit 4"],
                    log.clone(),
                    dir.path(),
                )
                .unwrap();
            let err = supervisor.wait_for_exit().await;
            assert_eq!(err.exit_code(), 1);
            assert!(
                err.message.contains("failing exited unexpectedly"),
                "{}",
                err.message
            );
            assert!(err.message.contains("exit status: 4"), "{}", err.message);
            assert!(
                err.message.contains("config: database.path is required"),
                "{}",
                err.message
            );
        });
    }

    #[test]
    fn stop_all_terminates_children() {
        let dir = tempfile::tempdir().unwrap();
        runtime().block_on(async {
            let mut supervisor = Supervisor::new();
            for name in ["first", "second"] {
                supervisor
                    .spawn(
                        name,
                        Path::new("/bin/sleep"),
                        ["600"],
                        dir.path().join(format!("{name}.log")),
                        dir.path(),
                    )
                    .unwrap();
            }
            let pids: Vec<u32> = supervisor
                .children
                .iter()
                .map(|managed| managed.child.id().unwrap())
                .collect();
            supervisor.check().unwrap();
            supervisor.stop_all().await;
            assert!(supervisor.children.is_empty());
            for pid in pids {
                let alive = kill(Pid::from_raw(pid as i32), None).is_ok();
                assert!(!alive, "pid {pid} still running");
            }
        });
    }

    #[test]
    fn wait_ready_returns_probe_value() {
        runtime().block_on(async {
            let mut supervisor = Supervisor::new();
            let mut calls = 0;
            let value = supervisor
                .wait_ready("none", "counter reaches 3", Duration::from_secs(30), || {
                    calls += 1;
                    let done = calls >= 3;
                    async move { done.then_some(calls) }
                })
                .await
                .unwrap();
            assert_eq!(value, 3);
        });
    }

    #[test]
    fn wait_ready_fails_when_child_exits() {
        let dir = tempfile::tempdir().unwrap();
        runtime().block_on(async {
            let mut supervisor = Supervisor::new();
            supervisor
                .spawn(
                    "quitter",
                    Path::new("/bin/true"),
                    Vec::<&str>::new(),
                    dir.path().join("quitter.log"),
                    dir.path(),
                )
                .unwrap();
            let err = supervisor
                .wait_ready("quitter", "never", Duration::from_secs(30), || async {
                    None::<()>
                })
                .await
                .err()
                .unwrap();
            assert!(
                err.message.contains("quitter exited unexpectedly"),
                "{}",
                err.message
            );
            assert!(err.message.contains("is empty"), "{}", err.message);
        });
    }

    #[test]
    fn only_metacrypt_variables_are_removed() {
        let vars = [
            ("METACRYPT_SERVER_LISTEN_ADDR", "0.0.0.0:8443"),
            ("METACRYPT_TOKEN", "abc"),
            ("PATH", "/usr/bin"),
            ("XMETACRYPT_Y", "z"),
        ]
        .map(|(key, value)| (OsString::from(key), OsString::from(value)));
        assert_eq!(
            metacrypt_variables(vars),
            vec![
                OsString::from("METACRYPT_SERVER_LISTEN_ADDR"),
                OsString::from("METACRYPT_TOKEN")
            ]
        );
    }
}
