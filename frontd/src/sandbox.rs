//! frontd's landlock policy and seccomp allow-list.
//!
//! frontd faces the network, so its sandbox limits what an input that took
//! it over could do. frontd may read only its own files, bind only its
//! listening port and connect over TCP only to the MCIAS port. It may make
//! only the system calls an HTTPS server needs, with no execve, ptrace or
//! process_vm_*. `main` applies both before it starts the async runtime.
#![forbid(unsafe_code)]

use std::net::IpAddr;
use std::path::PathBuf;

use metacrypt_config::{Config, FrontdSettings};
use metacrypt_sandbox::{Allowed, Args, Coverage, LandlockPolicy};

/// Files the system TLS roots may come from when `mcias.ca_cert` is unset:
/// the locations rustls-native-certs (through openssl-probe) reads on
/// Debian, Fedora and Alpine, and the trees their bundles link into.
const SYSTEM_ROOT_PATHS: [&str; 5] = [
    "/etc/ssl",
    "/etc/pki",
    "/usr/share/ca-certificates",
    "/usr/local/share/ca-certificates",
    "/usr/lib/ssl",
];

/// Files glibc's resolver reads to look up the MCIAS host name, and the
/// directories of the NSS modules it loads for that.
const RESOLVER_PATHS: [&str; 10] = [
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/run/systemd/resolve",
    "/lib",
    "/lib64",
    "/usr/lib",
    "/usr/lib64",
];

/// Builds frontd's landlock policy. Files are read-only: the config file,
/// the TLS certificate and key (reloaded on SIGHUP), the MCIAS CA bundle
/// (or the system roots without one), and the resolver's files when the
/// MCIAS URL names a host rather than an address. TCP is limited to
/// binding the configured listening port and connecting to the MCIAS
/// port. Paths that do not exist are left out.
///
/// Landlock (up to ABI 8) does not govern connecting to a Unix socket by
/// path, so keyd's front socket needs no rule: its file mode and keyd's
/// peer check decide who may connect.
pub fn landlock_policy(config: &Config, settings: &FrontdSettings) -> LandlockPolicy {
    let mut read_only: Vec<PathBuf> = Vec::new();
    read_only.extend(config.source.clone());
    read_only.push(settings.tls_cert.clone());
    read_only.push(settings.tls_key.clone());
    match &config.mcias.ca_cert {
        Some(bundle) => read_only.push(bundle.clone()),
        None => {
            read_only.extend(SYSTEM_ROOT_PATHS.iter().map(PathBuf::from));
            for variable in ["SSL_CERT_FILE", "SSL_CERT_DIR"] {
                if let Some(value) = std::env::var_os(variable) {
                    read_only.extend(std::env::split_paths(&value));
                }
            }
        }
    }
    let (host, port) = mcias_host_and_port(&settings.mcias_url);
    if host.parse::<IpAddr>().is_err() {
        read_only.extend(RESOLVER_PATHS.iter().map(PathBuf::from));
    }
    read_only.retain(|path| path.exists());
    read_only.dedup();
    LandlockPolicy {
        read_write: Vec::new(),
        read_only,
        tcp_bind: settings
            .listen_addr
            .map(|addr| vec![addr.port()])
            .unwrap_or_default(),
        tcp_connect: vec![port],
    }
}

/// Returns frontd's allow-list for `settings`: [`ALLOWED`], with `socket`
/// limited to Unix and TCP sockets when `mcias.server_url` names an IP
/// address. Only a host name needs DNS, and with it UDP sockets, which
/// landlock (up to ABI 8) does not restrict.
pub fn allowed_syscalls(settings: &FrontdSettings) -> Vec<Allowed> {
    let (host, _) = mcias_host_and_port(&settings.mcias_url);
    let needs_dns = host.parse::<IpAddr>().is_err();
    ALLOWED
        .iter()
        .map(|entry| {
            if entry.nr == libc::SYS_socket && !needs_dns {
                Allowed {
                    args: Args::UnixOrInetStreamOnly,
                    ..*entry
                }
            } else {
                *entry
            }
        })
        .collect()
}

/// Splits an `https://host[:port][/path]` URL into the host (without IPv6
/// brackets) and the port, 443 when the URL has none.
fn mcias_host_and_port(url: &str) -> (String, u16) {
    let rest = url.strip_prefix("https://").unwrap_or(url);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit('@').next().unwrap_or_default();
    let (host, port) = match authority.strip_prefix('[') {
        Some(bracketed) => match bracketed.split_once(']') {
            Some((host, after)) => (host, after.strip_prefix(':')),
            None => (bracketed, None),
        },
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    let port = port.and_then(|port| port.parse().ok()).unwrap_or(443);
    (host.to_owned(), port)
}

const fn any(name: &'static str, nr: i64, why: &'static str) -> Allowed {
    Allowed {
        name,
        nr,
        args: Args::Any,
        coverage: Coverage::Workload,
        why,
    }
}

const fn rare(name: &'static str, nr: i64, path: &'static str, why: &'static str) -> Allowed {
    Allowed {
        name,
        nr,
        args: Args::Any,
        coverage: Coverage::Rare(path),
        why,
    }
}

const fn with_args(name: &'static str, nr: i64, args: Args, why: &'static str) -> Allowed {
    Allowed {
        name,
        nr,
        args,
        coverage: Coverage::Workload,
        why,
    }
}

use libc::*;

/// The system calls frontd may make once its seccomp filter is installed;
/// any other call kills frontd with SIGSYS.
// NOTE: no test checks that frontd uses every call listed, as the keyd
// syscall test does. The list is what strace showed for frontd under the
// integration tests (HTTPS, MCIAS logins, keyd restarts), plus calls that
// those traces did not reach: glibc's DNS lookups over UDP, reading a
// directory of system roots, and exits.
pub const ALLOWED: &[Allowed] = &[
    // Memory.
    any("mmap", SYS_mmap, "allocator arenas and thread stacks"),
    any("munmap", SYS_munmap, "freed allocations and thread stacks"),
    any(
        "mprotect",
        SYS_mprotect,
        "guard pages of thread stacks and arenas",
    ),
    any(
        "madvise",
        SYS_madvise,
        "glibc releases the stack of an exiting thread",
    ),
    any("brk", SYS_brk, "glibc grows the main arena"),
    any("mremap", SYS_mremap, "glibc's realloc of large buffers"),
    // Files: landlock limits them to the config, TLS and CA files.
    any(
        "openat",
        SYS_openat,
        "TLS files on SIGHUP, CA bundle, resolver files",
    ),
    any("close", SYS_close, "every descriptor"),
    any("read", SYS_read, "files and sockets"),
    any("write", SYS_write, "log lines and sockets"),
    any("writev", SYS_writev, "HTTP responses in several buffers"),
    any("newfstatat", SYS_newfstatat, "files and directories"),
    any("statx", SYS_statx, "files"),
    any(
        "getdents64",
        SYS_getdents64,
        "a directory of CA certificates",
    ),
    any("fcntl", SYS_fcntl, "descriptor flags"),
    any("getrandom", SYS_getrandom, "TLS randomness and hash seeds"),
    any(
        "uname",
        SYS_uname,
        "glibc's resolver (a host name in mcias.server_url)",
    ),
    // Sockets: landlock limits TCP to the listening port and MCIAS.
    with_args(
        "socket",
        SYS_socket,
        Args::UnixOrInetOnly,
        "keyd's Unix socket, MCIAS over TCP, DNS over UDP (only with a host name in \
         mcias.server_url, see `allowed_syscalls`), sd_notify",
    ),
    with_args(
        "socketpair",
        SYS_socketpair,
        Args::UnixDomainOnly,
        "tokio's signal handling",
    ),
    any(
        "connect",
        SYS_connect,
        "keyd, MCIAS, DNS servers, sd_notify",
    ),
    any("bind", SYS_bind, "the HTTPS listener"),
    any("listen", SYS_listen, "the HTTPS listener"),
    any("accept4", SYS_accept4, "HTTPS connections"),
    any(
        "getsockname",
        SYS_getsockname,
        "the listener's address for the log",
    ),
    any("getpeername", SYS_getpeername, "client addresses"),
    any(
        "setsockopt",
        SYS_setsockopt,
        "TCP_NODELAY, SO_REUSEADDR, keep-alive",
    ),
    any(
        "getsockopt",
        SYS_getsockopt,
        "SO_ERROR after a non-blocking connect",
    ),
    any("recvfrom", SYS_recvfrom, "socket reads"),
    any("sendto", SYS_sendto, "socket writes and sd_notify"),
    any(
        "recvmsg",
        SYS_recvmsg,
        "DNS replies (a host name in mcias.server_url)",
    ),
    any("sendmsg", SYS_sendmsg, "socket writes"),
    any(
        "sendmmsg",
        SYS_sendmmsg,
        "glibc sends the A and AAAA queries at once",
    ),
    any("shutdown", SYS_shutdown, "closing connections"),
    any("poll", SYS_poll, "glibc's resolver waits for DNS replies"),
    with_args(
        "ioctl",
        SYS_ioctl,
        Args::FionbioOnly,
        "tokio makes sockets non-blocking",
    ),
    // The async runtime and threads.
    any(
        "epoll_create1",
        SYS_epoll_create1,
        "the runtime's event loop",
    ),
    any("epoll_ctl", SYS_epoll_ctl, "registering sockets with it"),
    any("epoll_wait", SYS_epoll_wait, "waiting for events"),
    any("eventfd2", SYS_eventfd2, "the runtime's waker"),
    any("futex", SYS_futex, "locks and thread parking"),
    any("clone3", SYS_clone3, "runtime and blocking threads"),
    any(
        "set_robust_list",
        SYS_set_robust_list,
        "glibc sets up each new thread",
    ),
    any("rseq", SYS_rseq, "glibc registers each new thread"),
    any(
        "sigaltstack",
        SYS_sigaltstack,
        "Rust's stack overflow handler",
    ),
    any("prctl", SYS_prctl, "thread names (PR_SET_NAME)"),
    any(
        "sched_getaffinity",
        SYS_sched_getaffinity,
        "glibc sizes each new thread",
    ),
    any("gettid", SYS_gettid, "thread ids"),
    any("getpid", SYS_getpid, "listenfd compares LISTEN_PID with it"),
    any(
        "rt_sigaction",
        SYS_rt_sigaction,
        "SIGTERM, SIGINT and SIGHUP handlers",
    ),
    any(
        "rt_sigprocmask",
        SYS_rt_sigprocmask,
        "glibc masks signals around thread creation",
    ),
    any(
        "rt_sigreturn",
        SYS_rt_sigreturn,
        "return from a signal handler",
    ),
    rare(
        "clock_gettime",
        SYS_clock_gettime,
        "the kernel's clocksource has no vDSO support (for example a VM whose TSC was marked unstable)",
        "the vDSO then falls back to the system call for every clock read",
    ),
    rare(
        "gettimeofday",
        SYS_gettimeofday,
        "the kernel's clocksource has no vDSO support",
        "time-of-day reads that the vDSO then cannot serve",
    ),
    rare(
        "sched_yield",
        SYS_sched_yield,
        "a channel receiver waits for a sender that was preempted mid-write (heavy load)",
        "the standard library's channels yield after their spin limit",
    ),
    any("exit", SYS_exit, "a thread ends"),
    any("exit_group", SYS_exit_group, "frontd exits"),
    any(
        "tgkill",
        SYS_tgkill,
        "abort after a panic in a release build",
    ),
];

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// Whether `path` is one of the files frontd may read after the sandbox.
    fn allows_reading(policy: &LandlockPolicy, path: &Path) -> bool {
        policy
            .read_only
            .iter()
            .any(|allowed| path.starts_with(allowed))
    }

    #[test]
    fn mcias_url_gives_host_and_port() {
        assert_eq!(
            mcias_host_and_port("https://mcias.example.com:8443"),
            ("mcias.example.com".to_owned(), 8443)
        );
        assert_eq!(
            mcias_host_and_port("https://mcias.example.com/base"),
            ("mcias.example.com".to_owned(), 443)
        );
        assert_eq!(
            mcias_host_and_port("https://127.0.0.1:9443"),
            ("127.0.0.1".to_owned(), 9443)
        );
        assert_eq!(
            mcias_host_and_port("https://[::1]:9443/"),
            ("::1".to_owned(), 9443)
        );
    }

    #[test]
    fn filter_has_no_exec_or_ptrace() {
        for forbidden in [
            SYS_execve,
            SYS_execveat,
            SYS_ptrace,
            SYS_process_vm_readv,
            SYS_process_vm_writev,
        ] {
            assert!(ALLOWED.iter().all(|entry| entry.nr != forbidden));
        }
        assert!(metacrypt_sandbox::build_syscall_filter(ALLOWED).is_ok());
    }

    fn socket_args(settings: &FrontdSettings) -> Args {
        let allowed = allowed_syscalls(settings);
        assert_eq!(allowed.len(), ALLOWED.len());
        assert!(metacrypt_sandbox::build_syscall_filter(&allowed).is_ok());
        allowed
            .iter()
            .find(|entry| entry.nr == SYS_socket)
            .expect("socket is allowed")
            .args
    }

    #[test]
    fn host_name_allows_udp_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("server.crt");
        let key = dir.path().join("server.key");
        for path in [&cert, &key] {
            std::fs::write(path, b"x").unwrap();
        }
        let text = format!(
            "[server]\nlisten_addr = \"127.0.0.1:8443\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n\
             [mcias]\nserver_url = \"https://mcias.example.com:9443\"\n",
            cert.display(),
            key.display(),
        );
        let config = Config::from_toml(&text, &[]).unwrap();
        let settings = config.validate_frontd().unwrap();
        assert_eq!(socket_args(&settings), Args::UnixOrInetOnly);
    }

    #[test]
    fn policy_reads_only_frontd_files() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("server.crt");
        let key = dir.path().join("server.key");
        let bundle = dir.path().join("mcias-ca.crt");
        for path in [&cert, &key, &bundle] {
            std::fs::write(path, b"x").unwrap();
        }
        let text = format!(
            "[server]\nlisten_addr = \"127.0.0.1:8443\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n\
             [mcias]\nserver_url = \"https://127.0.0.1:9443\"\nca_cert = \"{}\"\n",
            cert.display(),
            key.display(),
            bundle.display()
        );
        let config = Config::from_toml(&text, &[]).unwrap();
        let settings = config.validate_frontd().unwrap();
        let policy = landlock_policy(&config, &settings);
        assert_eq!(socket_args(&settings), Args::UnixOrInetStreamOnly);
        assert_eq!(policy.read_only, vec![cert.clone(), key, bundle]);
        assert!(policy.read_write.is_empty());
        assert_eq!(policy.tcp_bind, vec![8443]);
        assert_eq!(policy.tcp_connect, vec![9443]);
        assert!(allows_reading(&policy, &cert));
        assert!(!allows_reading(&policy, Path::new("/etc/passwd")));
    }
}
