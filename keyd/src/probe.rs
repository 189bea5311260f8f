//! `--sandbox-probe ACTION`: after the sandbox is up, keyd tries one action
//! the sandbox must forbid, prints the outcome on standard output and exits.
//! The integration tests use it to check the sandbox from outside. It
//! exists only in debug builds with the `sandbox-probe` feature, which
//! `lib.rs` refuses to compile in a release build.
//!
//! Actions:
//! - `tcp-socket`: create a TCP socket (seccomp kills keyd with SIGSYS);
//! - `tcp-connect:PORT`: connect to 127.0.0.1:PORT with a TCP socket created
//!   before the sandbox (landlock denies it);
//! - `tcp-bind`: bind such a socket to 127.0.0.1 (seccomp kills keyd);
//! - `exec:PATH`: execve PATH (seccomp kills keyd with SIGSYS);
//! - `spawn:PATH`: start PATH as a child process, which needs a clone
//!   without CLONE_THREAD (seccomp kills keyd with SIGSYS);
//! - `userns`: `unshare(CLONE_NEWUSER)` (seccomp kills keyd with SIGSYS);
//! - `thread`: start and join a thread, which clone with the thread flags
//!   allows;
//! - `read:PATH` and `write:PATH`: open PATH (landlock denies it outside the
//!   data and socket directories);
//! - `env`: print the names of the environment variables keyd kept.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::OwnedFd;

use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn};

/// State a probe needs from before the sandbox.
pub struct Prepared {
    action: String,
    tcp: Option<OwnedFd>,
}

/// Runs before the sandbox: creates the TCP socket of `tcp-connect` and
/// `tcp-bind`.
pub fn prepare(action: &str) -> Prepared {
    let tcp = (action.starts_with("tcp-connect:") || action == "tcp-bind").then(|| {
        nix::sys::socket::socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .expect("create a TCP socket before the sandbox")
    });
    Prepared {
        action: action.to_owned(),
        tcp,
    }
}

/// Runs after the sandbox: tries the action and prints
/// `sandbox-probe ACTION: allowed` or `sandbox-probe ACTION: denied: ERROR`.
pub fn run(prepared: Prepared) {
    let action = prepared.action.as_str();
    let outcome: Result<String, String> = if action == "tcp-socket" {
        std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map(|listener| format!("{:?}", listener.local_addr()))
            .map_err(|err| err.to_string())
    } else if let Some(port) = action.strip_prefix("tcp-connect:") {
        let port: u16 = port.parse().expect("a port number");
        let address = SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
        let socket = prepared.tcp.as_ref().expect("socket from prepare");
        nix::sys::socket::connect(std::os::fd::AsRawFd::as_raw_fd(socket), &address)
            .map(|()| "connected".to_owned())
            .map_err(|err| err.to_string())
    } else if action == "tcp-bind" {
        let address = SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0));
        let socket = prepared.tcp.as_ref().expect("socket from prepare");
        nix::sys::socket::bind(std::os::fd::AsRawFd::as_raw_fd(socket), &address)
            .map(|()| "bound".to_owned())
            .map_err(|err| err.to_string())
    } else if let Some(path) = action.strip_prefix("exec:") {
        let program = std::ffi::CString::new(path).expect("a path without NUL");
        nix::unistd::execv(&program, &[&program])
            .map(|_| "executed".to_owned())
            .map_err(|err| err.to_string())
    } else if let Some(path) = action.strip_prefix("spawn:") {
        std::process::Command::new(path)
            .status()
            .map(|status| format!("child exited with {status}"))
            .map_err(|err| err.to_string())
    } else if action == "userns" {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER)
            .map(|()| "created a user namespace".to_owned())
            .map_err(|err| err.to_string())
    } else if action == "thread" {
        std::thread::Builder::new()
            .name("sandbox-probe".to_owned())
            .spawn(|| 42)
            .map_err(|err| err.to_string())
            .and_then(|handle| handle.join().map_err(|_| "the thread panicked".to_owned()))
            .map(|value| format!("the thread returned {value}"))
    } else if let Some(path) = action.strip_prefix("read:") {
        // pread, because keyd's filter has no plain read.
        use std::os::unix::fs::FileExt;
        let mut buffer = [0u8; 4096];
        std::fs::File::open(path)
            .and_then(|file| file.read_at(&mut buffer, 0))
            .map(|read| format!("read {read} bytes"))
            .map_err(|err| err.to_string())
    } else if let Some(path) = action.strip_prefix("write:") {
        std::fs::write(path, b"written by a sandbox probe\n")
            .map(|()| "written".to_owned())
            .map_err(|err| err.to_string())
    } else if action == "env" {
        let mut names: Vec<String> = std::env::vars_os()
            .map(|(name, _)| name.to_string_lossy().into_owned())
            .collect();
        names.sort();
        Ok(names.join(","))
    } else {
        Err(format!("unknown probe action {action:?}"))
    };
    match outcome {
        Ok(detail) => println!("sandbox-probe {action}: allowed: {detail}"),
        Err(error) => println!("sandbox-probe {action}: denied: {error}"),
    }
}
