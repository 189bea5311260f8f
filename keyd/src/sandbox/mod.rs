//! The sandbox keyd applies to itself during setup.
//!
//! `main` calls one function per step, in this order, on the main thread
//! before any other thread exists:
//! 1. close inherited file descriptors and clear the environment
//!    ([`clean_process`]);
//! 2. (in `main`) no core dumps, non-dumpable, no-new-privs;
//! 3. empty the bounding set, switch users, clear the other capability sets
//!    ([`drop_bounding_set`], [`switch_user`], [`clear_capabilities`]);
//! 4. landlock ([`restrict_paths_and_network`]);
//! 5. seccomp, with the list in [`syscalls`] ([`install_syscall_filter`]).
//!
//! Capabilities, the landlock domain and the seccomp filter belong to each
//! thread, and a new thread copies them from the thread that creates it, so
//! every thread keyd starts afterwards carries all of them.
//!
//! The unsafe code of this module is the descriptor and environment
//! clean-up, which must run while keyd is still single-threaded.
#![allow(unsafe_code)]

pub mod syscalls;

use std::path::{Path, PathBuf};

pub use metacrypt_sandbox::{
    LandlockPolicy, LandlockReport, TargetUser, clear_capabilities, drop_bounding_set,
    drop_capabilities, resolve_user, restrict_paths_and_network, switch_user,
};

/// Environment variables keyd reads after [`clean_process`]: its
/// configuration (`METACRYPT_CONFIG` and `METACRYPT_<SECTION>_<KEY>`), the
/// sockets systemd passes and systemd's notification socket.
const KEPT_ENV_PREFIX: &str = "METACRYPT_";
const KEPT_ENV: [&str; 4] = [
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
];

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: i32 = 3;

/// What [`clean_process`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cleaned {
    /// Descriptors closed, in ascending order.
    pub closed_fds: Vec<i32>,
    /// Descriptors kept because systemd passed them (`LISTEN_FDS`).
    pub systemd_fds: i32,
    /// Names of the environment variables removed, sorted.
    pub removed_env: Vec<String>,
}

/// Closes every descriptor above standard error except the ones systemd
/// passed for this process, and removes every environment variable keyd
/// does not read. Must run before keyd starts any thread or opens any file.
pub fn clean_process() -> Result<Cleaned, String> {
    let systemd_fds = systemd_fd_count();
    let mut fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map_err(|err| format!("failed to list /proc/self/fd: {err}"))?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort_unstable();
    // The directory handle of read_dir is closed by now; its number may
    // appear in the list and is skipped by the EBADF check below.
    let mut closed_fds = Vec::new();
    for fd in fds {
        if fd < LISTEN_FDS_START || fd < LISTEN_FDS_START + systemd_fds {
            continue;
        }
        // SAFETY: keyd is single-threaded here and has opened no file of its
        // own, so no Rust value owns this descriptor: it was inherited from
        // the parent. Closing it cannot invalidate a live OwnedFd or File.
        let result = unsafe { libc::close(fd) };
        if result == 0 {
            closed_fds.push(fd);
        } else {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EBADF) {
                return Err(format!("failed to close descriptor {fd}: {err}"));
            }
        }
    }

    let names: Vec<std::ffi::OsString> = std::env::vars_os()
        .map(|(name, _)| name)
        .filter(|name| !name.to_str().is_some_and(keeps_env))
        .collect();
    let mut removed_env: Vec<String> = names
        .iter()
        .map(|name| name.to_string_lossy().into_owned())
        .collect();
    removed_env.sort();
    for name in names {
        // SAFETY: keyd is single-threaded here, so no other thread reads or
        // writes the environment while it changes.
        unsafe { std::env::remove_var(&name) };
    }
    Ok(Cleaned {
        closed_fds,
        systemd_fds,
        removed_env,
    })
}

fn keeps_env(name: &str) -> bool {
    name.starts_with(KEPT_ENV_PREFIX) || KEPT_ENV.contains(&name)
}

/// Counts the descriptors systemd passed to this process: `LISTEN_FDS`
/// when `LISTEN_PID` names this process, otherwise 0.
fn systemd_fd_count() -> i32 {
    let for_us = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|pid| pid.trim().parse::<u32>().ok())
        == Some(std::process::id());
    if !for_us {
        return 0;
    }
    std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|count| count.trim().parse::<i32>().ok())
        .filter(|count| (0..=1024).contains(count))
        .unwrap_or(0)
}

/// Installs keyd's seccomp filter, the list of [`syscalls::ALLOWED`], on
/// the calling thread. Returns the number of allowed calls.
pub fn install_syscall_filter() -> Result<usize, String> {
    metacrypt_sandbox::install_syscall_filter(syscalls::ALLOWED)?;
    Ok(syscalls::ALLOWED.len())
}

/// Lists the database file and those of its companions that exist: the
/// `-wal` and `-shm` files of SQLite's WAL mode and keyd's `.lock` file.
pub fn database_files(database: &Path) -> Vec<PathBuf> {
    let mut files = vec![database.to_path_buf()];
    for suffix in ["-wal", "-shm", ".lock"] {
        let mut name = database.as_os_str().to_owned();
        name.push(suffix);
        let path = PathBuf::from(name);
        if path.exists() {
            files.push(path);
        }
    }
    files
}

/// Gives each of `files` to the uid and gid of `target`, keeping its mode.
/// keyd calls it as root, while it still has CAP_CHOWN, for the files it
/// created before it switches to `target`.
pub fn chown_files(files: &[PathBuf], target: &TargetUser) -> Result<(), String> {
    for file in files {
        std::os::unix::fs::chown(file, Some(target.uid), Some(target.gid)).map_err(|err| {
            format!(
                "failed to change the owner of {} to {}:{}: {err}",
                file.display(),
                target.uid,
                target.gid
            )
        })?;
    }
    Ok(())
}

/// Lists the directories landlock leaves readable and writable for keyd: the
/// database's directory, and the directories of the sockets keyd created
/// itself (it removes them at shutdown). Duplicates are removed.
pub fn keyd_directories(database: &Path, sockets: &[&Path]) -> Vec<PathBuf> {
    let mut dirs = vec![parent_dir(database)];
    for socket in sockets {
        let dir = parent_dir(socket);
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    dirs
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_compiles_from_the_list() {
        let program = metacrypt_sandbox::build_syscall_filter(syscalls::ALLOWED).unwrap();
        // At least one instruction per allowed call.
        assert!(program.len() > syscalls::ALLOWED.len(), "{}", program.len());
    }

    #[test]
    fn directories_are_parents_without_duplicates() {
        let dirs = keyd_directories(
            Path::new("/srv/metacrypt/metacrypt.db"),
            &[
                Path::new("/run/metacrypt/front.sock"),
                Path::new("/run/metacrypt/admin.sock"),
            ],
        );
        assert_eq!(
            dirs,
            vec![
                PathBuf::from("/srv/metacrypt"),
                PathBuf::from("/run/metacrypt")
            ]
        );
        assert_eq!(
            keyd_directories(Path::new("keyd.db"), &[]),
            vec![PathBuf::from(".")]
        );
    }
}
