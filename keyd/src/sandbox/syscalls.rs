//! The system calls keyd may make once its seccomp filter is installed.
//!
//! This list is reviewed data: each entry says why keyd needs the call.
//! `sandbox_syscalls` in the integration tests runs keyd under strace
//! through a whole workload and fails when a call listed here as
//! `Coverage::Workload` was never made, so the list cannot grow stale.
//! Calls that only rare paths make are listed as `Coverage::Rare` with
//! that path.

pub use metacrypt_sandbox::{Allowed, Args, Coverage};

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

const fn unix_only(name: &'static str, nr: i64, why: &'static str) -> Allowed {
    Allowed {
        name,
        nr,
        args: Args::UnixDomainOnly,
        coverage: Coverage::Workload,
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

const fn fionbio_only(name: &'static str, nr: i64, why: &'static str) -> Allowed {
    Allowed {
        name,
        nr,
        args: Args::FionbioOnly,
        coverage: Coverage::Workload,
        why,
    }
}

use libc::*;

pub const ALLOWED: &[Allowed] = &[
    // Memory.
    any(
        "mmap",
        SYS_mmap,
        "allocator arenas, thread stacks, memfd_secret key pages",
    ),
    any(
        "munmap",
        SYS_munmap,
        "freed allocations, thread stacks and key pages",
    ),
    any(
        "mprotect",
        SYS_mprotect,
        "guard pages of thread stacks and allocator arenas",
    ),
    any(
        "madvise",
        SYS_madvise,
        "glibc releases the stack of an exiting thread",
    ),
    any(
        "memfd_secret",
        SYS_memfd_secret,
        "key memory outside the kernel's direct map",
    ),
    any(
        "ftruncate",
        SYS_ftruncate,
        "sizing memfd_secret files; SQLite truncates the WAL",
    ),
    rare(
        "brk",
        SYS_brk,
        "the main thread's heap outgrows what setup reserved",
        "glibc grows the main arena with brk",
    ),
    rare(
        "mremap",
        SYS_mremap,
        "a large reply buffer grows (a long certificate listing)",
        "glibc's realloc of an mmap-ed allocation",
    ),
    rare(
        "mlock",
        SYS_mlock,
        "memfd_secret is unavailable (kernel without CONFIG_SECRETMEM)",
        "locks key memory allocated by memsec instead",
    ),
    rare(
        "munlock",
        SYS_munlock,
        "memfd_secret is unavailable (kernel without CONFIG_SECRETMEM)",
        "memsec unlocks such key memory before freeing it",
    ),
    // Files: every file keyd uses is open before the filter. landlock
    // limits the paths the calls below can name to the data and socket
    // directories.
    rare(
        "openat",
        SYS_openat,
        "the first fsync of a WAL file SQLite created",
        "SQLite opens the data directory to fsync it",
    ),
    any("close", SYS_close, "connections, memfd_secret files"),
    any("write", SYS_write, "log lines on stdout; audit log lines"),
    any(
        "fallocate",
        SYS_fallocate,
        "space reserved in the audit log before each audited request, so a full disk fails it first",
    ),
    any(
        "pread64",
        SYS_pread64,
        "SQLite page reads; VmLck from /proc/self/status",
    ),
    any("pwrite64", SYS_pwrite64, "SQLite page and WAL writes"),
    any("fsync", SYS_fsync, "SQLite commits (synchronous = FULL)"),
    any("fcntl", SYS_fcntl, "SQLite's POSIX file locks"),
    any(
        "newfstatat",
        SYS_newfstatat,
        "SQLite checks that the database file still exists",
    ),
    any(
        "statx",
        SYS_statx,
        "keyd checks a socket file is its own before removing it",
    ),
    any(
        "unlink",
        SYS_unlink,
        "removing the socket files at shutdown",
    ),
    any(
        "getrandom",
        SYS_getrandom,
        "keys, nonces, salts and serial numbers",
    ),
    any(
        "geteuid",
        SYS_geteuid,
        "the peer policy admits keyd's own uid",
    ),
    // Sockets: only Unix ones, and landlock denies TCP as well.
    unix_only(
        "socket",
        SYS_socket,
        "sd_notify's datagram socket to systemd",
    ),
    unix_only("socketpair", SYS_socketpair, "tokio's signal handling"),
    any(
        "connect",
        SYS_connect,
        "sd_notify's datagram socket to NOTIFY_SOCKET",
    ),
    any(
        "accept4",
        SYS_accept4,
        "connections on the front and admin sockets",
    ),
    any("recvfrom", SYS_recvfrom, "reading requests"),
    any(
        "sendto",
        SYS_sendto,
        "writing replies and sd_notify messages",
    ),
    any(
        "getsockopt",
        SYS_getsockopt,
        "SO_PEERCRED of each connection",
    ),
    any("shutdown", SYS_shutdown, "closing connections"),
    fionbio_only(
        "ioctl",
        SYS_ioctl,
        "tokio makes the listening sockets non-blocking",
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
    any(
        "futex",
        SYS_futex,
        "locks, condition variables and thread parking",
    ),
    with_args(
        "clone3",
        SYS_clone3,
        Args::Enosys,
        "fails with ENOSYS, because seccomp cannot read the flags clone3 takes in memory; \
         glibc then creates the thread with clone",
    ),
    with_args(
        "clone",
        SYS_clone,
        Args::ThreadCloneOnly,
        "the writer, runtime and blocking threads; only with CLONE_VM and CLONE_THREAD and \
         without namespace flags, so no process and no user namespace can be created",
    ),
    any(
        "set_robust_list",
        SYS_set_robust_list,
        "glibc sets up each new thread",
    ),
    any("rseq", SYS_rseq, "glibc registers each new thread"),
    any(
        "sigaltstack",
        SYS_sigaltstack,
        "Rust's stack overflow handler of each thread",
    ),
    with_args(
        "prctl",
        SYS_prctl,
        Args::PrSetNameOnly,
        "thread names; only PR_SET_NAME",
    ),
    any(
        "sched_getaffinity",
        SYS_sched_getaffinity,
        "glibc sizes each new thread",
    ),
    any("gettid", SYS_gettid, "thread ids for glibc and tokio"),
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
        "SQLite reads the time of day, which the vDSO then cannot serve",
    ),
    rare(
        "sched_yield",
        SYS_sched_yield,
        "a channel receiver waits for a sender that was preempted mid-write (heavy load)",
        "the standard library's channels yield after their spin limit",
    ),
    rare(
        "clock_nanosleep",
        SYS_clock_nanosleep,
        "a read connection retries while commits keep changing the WAL index (heavy issuance)",
        "SQLite sleeps between retries of a WAL read lock and in its busy handler",
    ),
    any(
        "rt_sigaction",
        SYS_rt_sigaction,
        "SIGTERM and SIGINT handlers",
    ),
    any(
        "rt_sigprocmask",
        SYS_rt_sigprocmask,
        "glibc masks signals while creating threads",
    ),
    any(
        "rt_sigreturn",
        SYS_rt_sigreturn,
        "return from the SIGTERM handler",
    ),
    any(
        "exit",
        SYS_exit,
        "a thread ends (idle blocking threads, shutdown)",
    ),
    any("exit_group", SYS_exit_group, "keyd exits"),
    rare(
        "getpid",
        SYS_getpid,
        "a panic in a release build (panic = abort)",
        "glibc's abort reads the process id for tgkill",
    ),
    rare(
        "tgkill",
        SYS_tgkill,
        "a panic in a release build (panic = abort)",
        "abort raises SIGABRT on itself",
    ),
];
