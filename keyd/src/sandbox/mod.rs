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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use caps::CapSet;
use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, LandlockStatus,
    PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
};
use nix::unistd::{Gid, Group, Uid, User};
use seccompiler::{
    SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch,
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

/// The user and group a daemon switches to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetUser {
    pub uid: u32,
    pub gid: u32,
}

/// Resolves `user` and `group` (names or numeric ids) from the
/// configuration keys named `user_key` and `group_key`. Without `group`, the
/// user's primary group from the passwd database is used.
pub fn resolve_user(
    user: &str,
    group: Option<&str>,
    user_key: &str,
    group_key: &str,
) -> Result<TargetUser, String> {
    let user = user.trim();
    let entry = match user.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid))
            .map_err(|err| format!("{user_key}: failed to look up uid {uid}: {err}"))?,
        Err(_) => Some(
            User::from_name(user)
                .map_err(|err| format!("{user_key}: failed to look up {user:?}: {err}"))?
                .ok_or_else(|| format!("{user_key}: no user named {user:?}"))?,
        ),
    };
    let uid = match (&entry, user.parse::<u32>()) {
        (_, Ok(uid)) => uid,
        (Some(entry), Err(_)) => entry.uid.as_raw(),
        (None, Err(_)) => return Err(format!("{user_key}: no user named {user:?}")),
    };
    let gid = match group.map(str::trim) {
        Some(group) => match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => Group::from_name(group)
                .map_err(|err| format!("{group_key}: failed to look up {group:?}: {err}"))?
                .ok_or_else(|| format!("{group_key}: no group named {group:?}"))?
                .gid
                .as_raw(),
        },
        None => entry.map(|entry| entry.gid.as_raw()).ok_or_else(|| {
            format!(
                "{group_key} is required: uid {uid} of {user_key} has no passwd entry to take the \
                 primary group from"
            )
        })?,
    };
    if uid == 0 {
        return Err(format!(
            "{user_key}: uid 0 is root; name an unprivileged user"
        ));
    }
    Ok(TargetUser { uid, gid })
}

/// Empties the capability bounding set and returns how many capabilities it
/// held. It must run before [`switch_user`] and [`clear_capabilities`]:
/// dropping from the bounding set needs CAP_SETPCAP in the effective set,
/// which both of them remove. With an empty bounding set no later execve or
/// setuid to 0 can give a capability back.
pub fn drop_bounding_set() -> Result<usize, String> {
    let mut dropped = 0;
    for cap in caps::all() {
        // A capability the running kernel does not know reads as absent.
        if caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(|err| format!("failed to drop {cap} from the bounding set: {err}"))?;
            dropped += 1;
        }
    }
    Ok(dropped)
}

/// Drops every supplementary group, then sets the real, effective and saved
/// gid and uid to `target`, and checks that none of them is left behind.
/// Needs CAP_SETUID and CAP_SETGID, so it runs after [`drop_bounding_set`]
/// (which leaves the effective set alone) and no-new-privs.
pub fn switch_user(target: &TargetUser) -> Result<(), String> {
    use nix::unistd::{getresgid, getresuid, setgroups, setresgid, setresuid};
    let uid = Uid::from_raw(target.uid);
    let gid = Gid::from_raw(target.gid);
    setgroups(&[]).map_err(|err| format!("setgroups([]) failed: {err}"))?;
    setresgid(gid, gid, gid).map_err(|err| format!("setresgid({gid}) failed: {err}"))?;
    setresuid(uid, uid, uid).map_err(|err| format!("setresuid({uid}) failed: {err}"))?;
    let uids = getresuid().map_err(|err| format!("getresuid failed: {err}"))?;
    let gids = getresgid().map_err(|err| format!("getresgid failed: {err}"))?;
    let uid_ok = [uids.real, uids.effective, uids.saved]
        .iter()
        .all(|id| *id == uid);
    let gid_ok = [gids.real, gids.effective, gids.saved]
        .iter()
        .all(|id| *id == gid);
    if !uid_ok || !gid_ok {
        return Err(format!(
            "after the switch the uids are {}/{}/{} and the gids {}/{}/{}",
            uids.real, uids.effective, uids.saved, gids.real, gids.effective, gids.saved
        ));
    }
    // Going back to root must be impossible now.
    if setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0)).is_ok() {
        return Err("setresuid(0) still succeeds after the switch".to_owned());
    }
    Ok(())
}

/// Clears the effective, permitted, inheritable and ambient sets of the
/// calling thread, and checks that all five sets, the bounding set
/// included, are empty.
pub fn clear_capabilities() -> Result<(), String> {
    for (set, name) in &ALL_SETS[1..] {
        caps::clear(None, *set)
            .map_err(|err| format!("failed to clear the {name} capability set: {err}"))?;
    }
    for (set, name) in ALL_SETS {
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
    Ok(())
}

/// Empties the bounding set, then every other set: the order keyd uses when
/// it does not switch users.
pub fn drop_capabilities() -> Result<usize, String> {
    let dropped = drop_bounding_set()?;
    clear_capabilities()?;
    Ok(dropped)
}

/// Every capability set; all but the first (bounding) are emptied by
/// `caps::clear`. The kernel already removes ambient capabilities with the
/// permitted or inheritable ones, so clearing the ambient set only makes
/// that explicit.
const ALL_SETS: [(CapSet, &str); 5] = [
    (CapSet::Bounding, "bounding"),
    (CapSet::Effective, "effective"),
    (CapSet::Permitted, "permitted"),
    (CapSet::Inheritable, "inheritable"),
    (CapSet::Ambient, "ambient"),
];

/// The newest landlock ABI whose access rights keyd requests. Newer
/// kernels get these rights; older ones get the subset they know.
const LANDLOCK_ABI: ABI = ABI::V6;

/// What [`restrict_paths_and_network`] enforced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LandlockReport {
    /// `full` or `partial`: partial means the kernel lacks some of the
    /// rights requested (TCP rules need ABI 4, scopes ABI 6).
    pub status: &'static str,
    /// The ABI both the kernel and the landlock crate support.
    pub abi: i32,
    /// Whether TCP bind and connect are denied (ABI 4 or later).
    pub tcp_denied: bool,
    /// Whether abstract Unix sockets and signals outside the domain are
    /// denied (ABI 6 or later).
    pub scoped: bool,
}

/// Restricts the calling thread and the threads it creates later. File
/// access is denied except below the directories in `read_write`, where
/// everything but execution is allowed. TCP bind and connect, connections
/// to abstract Unix sockets and signals to processes outside the domain are
/// denied too.
pub fn restrict_paths_and_network(read_write: &[PathBuf]) -> Result<LandlockReport, String> {
    let handled = AccessFs::from_all(LANDLOCK_ABI);
    let mut allowed: BitFlags<AccessFs> = handled;
    allowed.remove(AccessFs::Execute);
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(handled)
        .and_then(|ruleset| ruleset.handle_access(AccessNet::from_all(LANDLOCK_ABI)))
        .and_then(|ruleset| ruleset.scope(Scope::from_all(LANDLOCK_ABI)))
        .and_then(Ruleset::create)
        .map_err(|err| format!("failed to create the landlock ruleset: {err}"))?;
    for dir in read_write {
        let fd = PathFd::new(dir)
            .map_err(|err| format!("failed to open {} for landlock: {err}", dir.display()))?;
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd, allowed))
            .map_err(|err| format!("failed to allow {}: {err}", dir.display()))?;
    }
    let status = ruleset
        .restrict_self()
        .map_err(|err| format!("landlock_restrict_self failed: {err}"))?;
    let abi = match status.landlock {
        LandlockStatus::Available { effective_abi, .. } => effective_abi,
        LandlockStatus::NotEnabled => {
            return Err("landlock is built into the kernel but not enabled".to_owned());
        }
        LandlockStatus::NotImplemented => {
            return Err("the kernel has no landlock support".to_owned());
        }
    };
    let level = match status.ruleset {
        RulesetStatus::FullyEnforced => "full",
        RulesetStatus::PartiallyEnforced => "partial",
        RulesetStatus::NotEnforced => {
            return Err("the kernel enforced none of the landlock rules".to_owned());
        }
    };
    Ok(LandlockReport {
        status: level,
        abi: abi as i32,
        tcp_denied: abi >= ABI::V4,
        scoped: abi >= ABI::V6,
    })
}

/// Builds the seccomp filter from [`syscalls::ALLOWED`]: each listed call
/// is allowed (`socket` and `socketpair` only for AF_UNIX, `ioctl` only for
/// FIONBIO), and any other
/// call kills the whole process with SIGSYS.
pub fn build_syscall_filter() -> Result<seccompiler::BpfProgram, String> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for entry in syscalls::ALLOWED {
        let conditions = match entry.args {
            syscalls::Args::Any => Vec::new(),
            syscalls::Args::UnixDomainOnly => vec![
                SeccompRule::new(vec![
                    SeccompCondition::new(
                        0,
                        SeccompCmpArgLen::Dword,
                        SeccompCmpOp::Eq,
                        libc::AF_UNIX as u64,
                    )
                    .map_err(|err| format!("{}: {err}", entry.name))?,
                ])
                .map_err(|err| format!("{}: {err}", entry.name))?,
            ],
            syscalls::Args::FionbioOnly => vec![
                SeccompRule::new(vec![
                    SeccompCondition::new(
                        1,
                        SeccompCmpArgLen::Qword,
                        SeccompCmpOp::Eq,
                        libc::FIONBIO,
                    )
                    .map_err(|err| format!("{}: {err}", entry.name))?,
                ])
                .map_err(|err| format!("{}: {err}", entry.name))?,
            ],
        };
        if rules.insert(entry.nr, conditions).is_some() {
            return Err(format!("{} is listed twice", entry.name));
        }
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        target_arch()?,
    )
    .map_err(|err| format!("failed to build the seccomp filter: {err}"))?;
    filter
        .try_into()
        .map_err(|err: seccompiler::BackendError| format!("failed to compile the filter: {err}"))
}

fn target_arch() -> Result<TargetArch, String> {
    if cfg!(target_arch = "x86_64") {
        Ok(TargetArch::x86_64)
    } else if cfg!(target_arch = "aarch64") {
        Ok(TargetArch::aarch64)
    } else {
        Err("seccomp filters are built for x86_64 and aarch64 only".to_owned())
    }
}

/// Installs the filter of [`build_syscall_filter`] on the calling thread,
/// which every thread created later inherits. Returns the number of
/// allowed calls.
pub fn install_syscall_filter() -> Result<usize, String> {
    let program = build_syscall_filter()?;
    seccompiler::apply_filter(&program)
        .map_err(|err| format!("failed to install the seccomp filter: {err}"))?;
    Ok(syscalls::ALLOWED.len())
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

    /// Reads a `Cap*` line of this thread from /proc.
    fn thread_status_line(field: &str) -> String {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{field}:")))
            .unwrap()
            .trim()
            .to_owned()
    }

    // Capabilities are per thread, so the drop runs on a thread of its own
    // and leaves the other tests of this process as they were.
    #[test]
    fn every_set_is_empty_after_the_drop() {
        let fields = std::thread::spawn(|| {
            drop_capabilities().unwrap();
            ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"].map(thread_status_line)
        })
        .join()
        .unwrap();
        for line in fields {
            assert_eq!(line, "0000000000000000");
        }
    }

    #[test]
    fn filter_compiles_from_the_list() {
        let program = build_syscall_filter().unwrap();
        // At least one instruction per allowed call.
        assert!(program.len() > syscalls::ALLOWED.len(), "{}", program.len());
    }

    #[test]
    fn numeric_user_needs_a_group_without_passwd_entry() {
        let err = resolve_user("4000000000", None, "keyd.user", "keyd.group").unwrap_err();
        assert!(err.contains("keyd.group is required"), "{err}");
        let target =
            resolve_user("4000000000", Some("4000000001"), "keyd.user", "keyd.group").unwrap();
        assert_eq!(
            target,
            TargetUser {
                uid: 4_000_000_000,
                gid: 4_000_000_001
            }
        );
    }

    #[test]
    fn named_user_takes_its_primary_group() {
        // Debian's passwd database has nobody with uid 65534 and nogroup.
        let target = resolve_user("nobody", None, "keyd.user", "keyd.group").unwrap();
        assert_eq!(target.uid, 65534);
        assert_eq!(target.gid, 65534);
        let err = resolve_user("root", None, "keyd.user", "keyd.group").unwrap_err();
        assert!(err.contains("uid 0"), "{err}");
        let err = resolve_user("no-such-user-here", None, "keyd.user", "keyd.group").unwrap_err();
        assert!(err.contains("no user named"), "{err}");
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
