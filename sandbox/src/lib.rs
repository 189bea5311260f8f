//! The confinement steps that metacrypt-keyd and metacrypt-frontd apply to
//! themselves once setup is done: dropping capabilities, switching to an
//! unprivileged user, landlock and a seccomp allow-list.
//!
//! Capabilities, the landlock domain and the seccomp filter belong to each
//! thread, and a new thread copies them from the thread that creates it. A
//! daemon therefore calls these functions on its main thread before it
//! starts any other thread, so every thread it creates later carries all of
//! them.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use caps::CapSet;
use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, LandlockStatus, NetPort,
    PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
};
use nix::unistd::{Gid, Group, Uid, User};
use seccompiler::{
    SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch,
};

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
        // A set that is already empty is left alone: clearing it would call
        // capset, which a systemd unit with SystemCallFilter=~@privileged
        // answers with EPERM although nothing is left to drop.
        let current = caps::read(None, *set)
            .map_err(|err| format!("failed to read the {name} capability set: {err}"))?;
        if current.is_empty() {
            continue;
        }
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

/// The newest landlock ABI whose access rights the daemons request. Newer
/// kernels get these rights; older ones get the subset they know.
const LANDLOCK_ABI: ABI = ABI::V6;

/// What a daemon may still reach once [`restrict_paths_and_network`] has
/// run. Everything else on the file system, every other TCP port, abstract
/// Unix sockets and signals to processes outside the domain are denied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LandlockPolicy {
    /// Directories whose whole tree may be read and written (but nothing in
    /// them executed).
    pub read_write: Vec<PathBuf>,
    /// Files or directories that may only be read.
    pub read_only: Vec<PathBuf>,
    /// TCP ports the daemon may bind.
    pub tcp_bind: Vec<u16>,
    /// TCP ports the daemon may connect to.
    pub tcp_connect: Vec<u16>,
}

/// The landlock restrictions the kernel enforced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LandlockReport {
    /// `full` or `partial`: partial means the kernel lacks some of the
    /// rights requested (TCP rules need ABI 4, scopes ABI 6).
    pub status: &'static str,
    /// The ABI both the kernel and the landlock crate support.
    pub abi: i32,
    /// Whether TCP bind and connect are limited to the policy's ports (ABI 4
    /// or later).
    pub tcp_restricted: bool,
    /// Whether abstract Unix sockets and signals outside the domain are
    /// denied (ABI 6 or later).
    pub scoped: bool,
}

/// Restricts the calling thread, and the threads it creates later, to
/// `policy`. A path of the policy that cannot be opened is an error.
pub fn restrict_paths_and_network(policy: &LandlockPolicy) -> Result<LandlockReport, String> {
    let handled = AccessFs::from_all(LANDLOCK_ABI);
    let mut read_write: BitFlags<AccessFs> = handled;
    read_write.remove(AccessFs::Execute);
    // A rule on a file may only carry file rights; asking for ReadDir on a
    // file would make the kernel report the ruleset as partly enforced.
    let read_only_dir = AccessFs::ReadFile | AccessFs::ReadDir;
    let read_only_file: BitFlags<AccessFs> = AccessFs::ReadFile.into();
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(handled)
        .and_then(|ruleset| ruleset.handle_access(AccessNet::from_all(LANDLOCK_ABI)))
        .and_then(|ruleset| ruleset.scope(Scope::from_all(LANDLOCK_ABI)))
        .and_then(Ruleset::create)
        .map_err(|err| format!("failed to create the landlock ruleset: {err}"))?;
    let paths = policy
        .read_write
        .iter()
        .map(|path| (path, read_write))
        .chain(policy.read_only.iter().map(|path| {
            let access = if path.is_dir() {
                read_only_dir
            } else {
                read_only_file
            };
            (path, access)
        }));
    for (path, access) in paths {
        let fd = PathFd::new(path)
            .map_err(|err| format!("failed to open {} for landlock: {err}", path.display()))?;
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd, access))
            .map_err(|err| format!("failed to allow {}: {err}", path.display()))?;
    }
    for port in &policy.tcp_bind {
        ruleset = ruleset
            .add_rule(NetPort::new(*port, AccessNet::BindTcp))
            .map_err(|err| format!("failed to allow binding TCP port {port}: {err}"))?;
    }
    for port in &policy.tcp_connect {
        ruleset = ruleset
            .add_rule(NetPort::new(*port, AccessNet::ConnectTcp))
            .map_err(|err| format!("failed to allow connecting to TCP port {port}: {err}"))?;
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
        tcp_restricted: abi >= ABI::V4,
        scoped: abi >= ABI::V6,
    })
}

/// Which arguments of an allowed system call are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Args {
    Any,
    /// The first argument (the address family) must be AF_UNIX.
    UnixDomainOnly,
    /// The first argument (the address family) must be AF_UNIX, AF_INET or
    /// AF_INET6.
    UnixOrInetOnly,
    /// The first argument (the address family) must be AF_UNIX, or
    /// AF_INET or AF_INET6 with SOCK_STREAM as the socket type (the second
    /// argument without SOCK_NONBLOCK and SOCK_CLOEXEC), so no UDP or raw
    /// socket can be created.
    UnixOrInetStreamOnly,
    /// The second argument (the ioctl request) must be FIONBIO.
    FionbioOnly,
    /// The first argument (the prctl option) must be PR_SET_NAME.
    PrSetNameOnly,
    /// The clone flags must contain CLONE_VM and CLONE_THREAD and none of
    /// the CLONE_NEW* namespace flags, so clone can only start a thread of
    /// this process, never a process or a new namespace.
    ThreadCloneOnly,
    /// The call fails with ENOSYS instead of running. `clone3` passes its
    /// flags in memory, which seccomp cannot read; with ENOSYS glibc falls
    /// back to `clone`, whose flags `ThreadCloneOnly` checks.
    Enosys,
}

/// The clone flags that create namespaces. CLONE_NEWTIME (0x80) is left
/// out: in `clone` that bit belongs to the exit signal, and only `clone3`
/// and `unshare` accept it.
const CLONE_NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u64;

/// The bits of socket's type argument that hold the type; the higher bits
/// are the SOCK_NONBLOCK and SOCK_CLOEXEC flags (linux/net.h).
const SOCKET_TYPE_MASK: u64 = 0xf;

/// The clone flags a new thread needs.
const CLONE_THREAD_FLAGS: u64 = (libc::CLONE_VM | libc::CLONE_THREAD) as u64;

/// How a daemon's syscall test covers an entry of its allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coverage {
    /// The test workload makes this call.
    Workload,
    /// Only the named path makes this call; the test does not require it.
    Rare(&'static str),
}

/// One entry of an allow-list: the call, its allowed arguments, how the
/// tests cover it and why the daemon needs it.
#[derive(Debug, Clone, Copy)]
pub struct Allowed {
    pub name: &'static str,
    pub nr: i64,
    pub args: Args,
    pub coverage: Coverage,
    pub why: &'static str,
}

/// Builds a seccomp filter that allows the calls of `allowed` with their
/// argument conditions and kills the whole process with SIGSYS on any
/// other call. Entries with [`Args::Enosys`] are allowed here without a
/// condition, because [`build_enosys_filter`] makes them fail.
pub fn build_syscall_filter(allowed: &[Allowed]) -> Result<seccompiler::BpfProgram, String> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for entry in allowed {
        // Each inner list is one rule, whose conditions must all hold; the
        // kernel allows the call when any rule matches.
        let alternatives: Vec<Vec<(u8, SeccompCmpArgLen, SeccompCmpOp, u64)>> = match entry.args {
            Args::Any | Args::Enosys => Vec::new(),
            Args::UnixDomainOnly => vec![vec![(
                0,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                libc::AF_UNIX as u64,
            )]],
            Args::UnixOrInetOnly => [libc::AF_UNIX, libc::AF_INET, libc::AF_INET6]
                .iter()
                .map(|family| vec![(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, *family as u64)])
                .collect(),
            Args::UnixOrInetStreamOnly => {
                let mut rules = vec![vec![(
                    0,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::Eq,
                    libc::AF_UNIX as u64,
                )]];
                for family in [libc::AF_INET, libc::AF_INET6] {
                    rules.push(vec![
                        (0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, family as u64),
                        (
                            1,
                            SeccompCmpArgLen::Dword,
                            SeccompCmpOp::MaskedEq(SOCKET_TYPE_MASK),
                            libc::SOCK_STREAM as u64,
                        ),
                    ]);
                }
                rules
            }
            Args::FionbioOnly => vec![vec![(
                1,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::Eq,
                libc::FIONBIO,
            )]],
            Args::PrSetNameOnly => vec![vec![(
                0,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                libc::PR_SET_NAME as u64,
            )]],
            Args::ThreadCloneOnly => vec![vec![(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(CLONE_NAMESPACE_FLAGS | CLONE_THREAD_FLAGS),
                CLONE_THREAD_FLAGS,
            )]],
        };
        let mut conditions = Vec::new();
        for alternative in alternatives {
            let mut rule = Vec::new();
            for (index, length, op, value) in alternative {
                rule.push(
                    SeccompCondition::new(index, length, op, value)
                        .map_err(|err| format!("{}: {err}", entry.name))?,
                );
            }
            conditions
                .push(SeccompRule::new(rule).map_err(|err| format!("{}: {err}", entry.name))?);
        }
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

/// Builds the filter that makes the calls of `allowed` marked
/// [`Args::Enosys`] fail with ENOSYS and allows every other call, or
/// returns `None` when no entry is marked. The kernel runs every installed
/// filter and takes the strictest result, so the call fails although the
/// allow-list of [`build_syscall_filter`] allows it.
pub fn build_enosys_filter(allowed: &[Allowed]) -> Result<Option<seccompiler::BpfProgram>, String> {
    let rules: BTreeMap<i64, Vec<SeccompRule>> = allowed
        .iter()
        .filter(|entry| entry.args == Args::Enosys)
        .map(|entry| (entry.nr, Vec::new()))
        .collect();
    if rules.is_empty() {
        return Ok(None);
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        target_arch()?,
    )
    .map_err(|err| format!("failed to build the ENOSYS seccomp filter: {err}"))?;
    let program = filter
        .try_into()
        .map_err(|err: seccompiler::BackendError| {
            format!("failed to compile the ENOSYS filter: {err}")
        })?;
    Ok(Some(program))
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
/// which every thread created later inherits. seccompiler sets
/// no-new-privs first.
///
/// The ENOSYS filter of [`build_enosys_filter`], if any, is installed
/// first, because the allow-list does not allow the `seccomp` call that a
/// second installation makes.
pub fn install_syscall_filter(allowed: &[Allowed]) -> Result<(), String> {
    let program = build_syscall_filter(allowed)?;
    if let Some(enosys) = build_enosys_filter(allowed)? {
        seccompiler::apply_filter(&enosys)
            .map_err(|err| format!("failed to install the ENOSYS seccomp filter: {err}"))?;
    }
    seccompiler::apply_filter(&program)
        .map_err(|err| format!("failed to install the seccomp filter: {err}"))
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
    fn duplicate_entry_is_rejected() {
        let entry = Allowed {
            name: "read",
            nr: libc::SYS_read,
            args: Args::Any,
            coverage: Coverage::Workload,
            why: "test",
        };
        let err = build_syscall_filter(&[entry, entry]).unwrap_err();
        assert!(err.contains("read is listed twice"), "{err}");
        assert!(build_syscall_filter(&[entry]).is_ok());
    }

    #[test]
    fn enosys_filter_only_for_marked_entries() {
        let mut entry = Allowed {
            name: "clone3",
            nr: libc::SYS_clone3,
            args: Args::Any,
            coverage: Coverage::Workload,
            why: "test",
        };
        assert!(build_enosys_filter(&[entry]).unwrap().is_none());
        entry.args = Args::Enosys;
        assert!(build_enosys_filter(&[entry]).unwrap().is_some());
        let clone = Allowed {
            name: "clone",
            nr: libc::SYS_clone,
            args: Args::ThreadCloneOnly,
            ..entry
        };
        assert!(build_syscall_filter(&[entry, clone]).is_ok());
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
        // Debian's passwd database has the user nobody, uid 65534, whose
        // primary group is nogroup, gid 65534.
        let target = resolve_user("nobody", None, "keyd.user", "keyd.group").unwrap();
        assert_eq!(target.uid, 65534);
        assert_eq!(target.gid, 65534);
        let err = resolve_user("root", None, "keyd.user", "keyd.group").unwrap_err();
        assert!(err.contains("uid 0"), "{err}");
        let err = resolve_user("no-such-user-here", None, "keyd.user", "keyd.group").unwrap_err();
        assert!(err.contains("no user named"), "{err}");
    }
}
