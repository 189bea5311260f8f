//! keyd's sandbox, checked from outside the way an attacker would meet it:
//! the real `metacrypt-keyd` binary runs with `keyd.sandbox = "enforce"`,
//! and the tests read `/proc/PID/status`, make keyd try forbidden actions
//! with the test-only `--sandbox-probe` option, and trace every system call
//! keyd makes under a full workload.
//!
//! The tests run as root in CI, where keyd switches to uid and gid 65534
//! (`keyd.user`/`keyd.group`); as another user keyd keeps that user.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use metacrypt_keyd::sandbox::syscalls;
use metacrypt_protocol::{
    CaRequest, CaResponse, IssueRequest, MountConfig, Profile, RequestBody, ResponseBody,
    SealState, SocketRole,
};
use metacrypt_tests::{AdminClient, SEAL_PASSWORD, binary, wait_for};

/// The unprivileged uid and gid keyd switches to when the tests run as root.
const SANDBOX_ID: u32 = 65534;

/// Set in keyd's environment to check that keyd removes what it does not
/// use.
const STRAY_VARIABLE: &str = "STRAY_VARIABLE_FOR_THE_SANDBOX_TEST";

fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A data directory, a socket directory and a config file for keyd alone.
struct Layout {
    dir: tempfile::TempDir,
    config: PathBuf,
    data: PathBuf,
    admin_socket: PathBuf,
    front_socket: PathBuf,
}

impl Layout {
    fn new(sandbox: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("metacrypt-sandbox-")
            .tempdir()
            .expect("temp dir");
        let root = dir.path();
        let data = root.join("data");
        let run = root.join("run");
        std::fs::create_dir(&data).unwrap();
        std::fs::create_dir(&run).unwrap();
        let mut user = String::new();
        if running_as_root() {
            // keyd runs as SANDBOX_ID after setup: it needs to reach and
            // write both directories (WAL files, socket files at shutdown).
            std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
            for path in [&data, &run] {
                nix::unistd::chown(
                    path.as_path(),
                    Some(nix::unistd::Uid::from_raw(SANDBOX_ID)),
                    Some(nix::unistd::Gid::from_raw(SANDBOX_ID)),
                )
                .unwrap();
            }
            user = format!("user = \"{SANDBOX_ID}\"\ngroup = \"{SANDBOX_ID}\"\n");
        }
        let me = nix::unistd::geteuid().as_raw();
        let admin_socket = run.join("admin.sock");
        let front_socket = run.join("front.sock");
        let config = root.join("metacrypt.toml");
        std::fs::write(
            &config,
            format!(
                "[database]\npath = \"{db}\"\n\n[keyd]\nfront_socket = \"{front}\"\n\
                 admin_socket = \"{admin}\"\nfront_allowed_uids = [{me}]\n\
                 sandbox = \"{sandbox}\"\nsigning_threads = 2\n{user}\n[log]\nlevel = \"debug\"\n",
                db = data.join("metacrypt.db").display(),
                front = front_socket.display(),
                admin = admin_socket.display(),
            ),
        )
        .unwrap();
        Layout {
            dir,
            config,
            data,
            admin_socket,
            front_socket,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// keyd with this config, stdout and stderr to `log`, and a stray
    /// environment variable.
    fn keyd(&self, log: &Path) -> Command {
        let mut command = Command::new(binary("metacrypt-keyd"));
        self.prepare(&mut command, log);
        command
    }

    fn prepare(&self, command: &mut Command, log: &Path) {
        let file = std::fs::File::create(log).unwrap();
        command
            .arg("--config")
            .arg(&self.config)
            .env(STRAY_VARIABLE, "1")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
    }
}

/// Stops `child` with SIGTERM (by pid) and waits up to 20 s.
fn stop(child: &mut Child) -> ExitStatus {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    panic!("keyd did not stop within 20 s of SIGTERM");
}

fn wait_ready(child: &mut Child, socket: &Path, log: &Path) {
    let ready = wait_for(Duration::from_secs(30), || {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "keyd exited with {status}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        AdminClient::connect(socket).ok()
    });
    assert!(
        ready.is_some(),
        "keyd did not open its admin socket:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// The value of `field` in /proc/PID/status.
fn status_field(status: &str, field: &str) -> String {
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in:\n{status}"))
        .trim()
        .to_owned()
}

#[test]
fn proc_status_shows_the_sandbox() {
    let layout = Layout::new("enforce");
    let log = layout.path("keyd.log");
    // A descriptor keyd must close: bash opens it without close-on-exec.
    let marker = layout.path("inherited-marker");
    std::fs::write(&marker, b"inherited\n").unwrap();
    let mut command = Command::new("bash");
    command
        .arg("-c")
        .arg("exec 7<\"$0\"; exec \"$@\"")
        .arg(&marker)
        .arg(binary("metacrypt-keyd"));
    layout.prepare(&mut command, &log);
    let mut keyd = command.spawn().expect("start keyd through bash");
    wait_ready(&mut keyd, &layout.admin_socket, &log);

    let pid = keyd.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let lines: Vec<&str> = status
        .lines()
        .filter(|line| {
            [
                "Uid:",
                "Gid:",
                "Groups:",
                "NoNewPrivs:",
                "Seccomp:",
                "Seccomp_filters:",
                "CapInh:",
                "CapPrm:",
                "CapEff:",
                "CapBnd:",
                "CapAmb:",
            ]
            .iter()
            .any(|prefix| line.starts_with(prefix))
        })
        .collect();
    println!(
        "/proc/{pid}/status of a sandboxed keyd:\n{}",
        lines.join("\n")
    );
    assert_eq!(status_field(&status, "Seccomp"), "2");
    // The ENOSYS filter for clone3 and the allow-list.
    assert_eq!(status_field(&status, "Seccomp_filters"), "2");
    assert_eq!(status_field(&status, "NoNewPrivs"), "1");
    for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(&status, caps), "0000000000000000", "{caps}");
    }
    // Every thread carries the same sandbox as the main thread.
    let tasks: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert!(tasks.len() > 2, "keyd runs {} threads", tasks.len());
    for task in &tasks {
        let text = std::fs::read_to_string(task.join("status")).unwrap();
        assert_eq!(status_field(&text, "Seccomp"), "2", "{}", task.display());
        assert_eq!(
            status_field(&text, "CapBnd"),
            "0000000000000000",
            "{}",
            task.display()
        );
    }

    let me = nix::unistd::geteuid().as_raw();
    let expected = if running_as_root() { SANDBOX_ID } else { me };
    let ids = format!("{expected}\t{expected}\t{expected}\t{expected}");
    assert_eq!(status_field(&status, "Uid"), ids);
    assert_eq!(status_field(&status, "Gid"), ids);
    if running_as_root() {
        assert_eq!(status_field(&status, "Groups"), "");
        // A process that is not dumpable has its /proc files owned by root,
        // whatever its own uid.
        let owner = std::fs::metadata(format!("/proc/{pid}/status")).unwrap();
        assert_eq!(
            std::os::unix::fs::MetadataExt::uid(&owner),
            0,
            "keyd is dumpable"
        );
    }
    let keyd_log = std::fs::read_to_string(&log).unwrap();
    assert!(
        keyd_log.contains("disabled core dumps, cleared the dumpable flag"),
        "{keyd_log}"
    );
    // The kernel enforced every landlock right keyd requested.
    let landlock = keyd_log
        .lines()
        .find(|line| line.contains("landlock restricts files"))
        .unwrap_or_else(|| panic!("no landlock line in:\n{keyd_log}"));
    assert!(landlock.contains("\"status\":\"full\""), "{landlock}");

    // The inherited descriptor is closed, and the stray variable gone.
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let target = std::fs::read_link(entry.unwrap().path()).unwrap_or_default();
        assert_ne!(target, marker, "keyd kept the inherited descriptor");
    }
    assert!(keyd_log.contains(STRAY_VARIABLE), "{keyd_log}");

    // keyd works in its sandbox: init, then seal.
    let mut admin = AdminClient::connect(&layout.admin_socket).unwrap();
    assert_eq!(
        admin.request(RequestBody::Init {
            password: SEAL_PASSWORD.into()
        }),
        Ok(ResponseBody::State(SealState::Unsealed))
    );
    assert_eq!(
        admin.request(RequestBody::Seal),
        Ok(ResponseBody::State(SealState::Sealed))
    );
    drop(admin);
    let exit = stop(&mut keyd);
    assert!(exit.success(), "keyd exit status {exit}");
    assert!(!layout.admin_socket.exists(), "the admin socket was left");
    assert!(!layout.front_socket.exists(), "the front socket was left");
}

/// Runs keyd with `--sandbox-probe ACTION` in `layout` and returns its
/// exit status and output.
fn probe(layout: &Layout, action: &str) -> (ExitStatus, String) {
    let log = layout.path(&format!("probe-{}.log", action.replace(['/', ':'], "_")));
    let mut command = layout.keyd(&log);
    command.arg("--sandbox-probe").arg(action);
    let status = command.status().expect("run keyd");
    let output = std::fs::read_to_string(&log).unwrap();
    if output.contains("unexpected argument '--sandbox-probe'") {
        panic!(
            "this metacrypt-keyd has no --sandbox-probe: build it with \
             `cargo build -p metacrypt-keyd --features sandbox-probe`"
        );
    }
    (status, output)
}

fn probe_line<'a>(output: &'a str, action: &str) -> &'a str {
    let prefix = format!("sandbox-probe {action}: ");
    output
        .lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no result for {action}:\n{output}"))
}

fn assert_killed_by_sigsys(status: ExitStatus, output: &str) {
    assert_eq!(
        status.signal(),
        Some(libc::SIGSYS),
        "keyd was not killed by SIGSYS ({status}):\n{output}"
    );
    assert!(!output.contains("sandbox-probe"), "{output}");
}

#[test]
fn forbidden_actions_fail_under_enforce() {
    let layout = Layout::new("enforce");
    let outside = layout.path("outside.txt");
    std::fs::write(&outside, b"not for keyd\n").unwrap();
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o644)).unwrap();
    let inside = layout.data.join("inside.txt");
    std::fs::write(&inside, b"keyd's own\n").unwrap();
    std::fs::set_permissions(&inside, std::fs::Permissions::from_mode(0o644)).unwrap();

    // seccomp: a TCP socket, a bind or an execve kills keyd.
    let (status, output) = probe(&layout, "tcp-socket");
    assert_killed_by_sigsys(status, &output);
    let (status, output) = probe(&layout, "tcp-bind");
    assert_killed_by_sigsys(status, &output);
    let (status, output) = probe(&layout, "exec:/bin/true");
    assert_killed_by_sigsys(status, &output);

    // seccomp: clone only starts threads. A child process (clone without
    // CLONE_THREAD) and a user namespace kill keyd; a thread works.
    let (status, output) = probe(&layout, "spawn:/bin/true");
    assert_killed_by_sigsys(status, &output);
    let (status, output) = probe(&layout, "userns");
    assert_killed_by_sigsys(status, &output);
    let (status, output) = probe(&layout, "thread");
    assert!(status.success(), "{status}:\n{output}");
    assert_eq!(
        probe_line(&output, "thread"),
        "allowed: the thread returned 42"
    );

    // landlock: a TCP socket made before the sandbox cannot connect, and
    // nothing reaches the listener.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let action = format!("tcp-connect:{port}");
    let (status, output) = probe(&layout, &action);
    assert!(status.success(), "{status}:\n{output}");
    let line = probe_line(&output, &action);
    assert!(line.starts_with("denied: EACCES"), "{line}");
    assert!(
        listener.accept().is_err(),
        "a connection reached the listener"
    );

    // landlock: no file outside the data and socket directories.
    let action = format!("read:{}", outside.display());
    let (_, output) = probe(&layout, &action);
    let line = probe_line(&output, &action);
    assert!(line.starts_with("denied: Permission denied"), "{line}");
    for path in ["/etc/hostname", "/proc/1/status"] {
        let action = format!("read:{path}");
        let (_, output) = probe(&layout, &action);
        let line = probe_line(&output, &action);
        assert!(line.starts_with("denied: Permission denied"), "{line}");
    }
    // The directory is open to everyone (0777), so only landlock can deny
    // the write.
    let created = open_directory(&layout).join("created-by-keyd.txt");
    let action = format!("write:{}", created.display());
    let (_, output) = probe(&layout, &action);
    let line = probe_line(&output, &action);
    assert!(line.starts_with("denied: Permission denied"), "{line}");
    assert!(!created.exists());

    // The data directory itself stays usable.
    let action = format!("read:{}", inside.display());
    let (_, output) = probe(&layout, &action);
    assert_eq!(probe_line(&output, &action), "allowed: read 11 bytes");

    // Only the variables keyd reads are left in its environment.
    let (_, output) = probe(&layout, "env");
    let line = probe_line(&output, "env");
    assert!(line.starts_with("allowed: "), "{line}");
    for name in line["allowed: ".len()..]
        .split(',')
        .filter(|n| !n.is_empty())
    {
        assert!(
            name.starts_with("METACRYPT_")
                || [
                    "LISTEN_PID",
                    "LISTEN_FDS",
                    "LISTEN_FDNAMES",
                    "NOTIFY_SOCKET"
                ]
                .contains(&name),
            "keyd kept {name}"
        );
    }
}

#[test]
fn probes_succeed_without_the_sandbox() {
    // The same probes with keyd.sandbox = "off" show that they detect a
    // missing sandbox: each forbidden action then works.
    let layout = Layout::new("off");
    let outside = layout.path("outside.txt");
    std::fs::write(&outside, b"not for keyd\n").unwrap();
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o644)).unwrap();

    let (status, output) = probe(&layout, "tcp-socket");
    assert!(status.success(), "{status}:\n{output}");
    assert!(probe_line(&output, "tcp-socket").starts_with("allowed"));
    let action = format!("read:{}", outside.display());
    let (_, output) = probe(&layout, &action);
    assert_eq!(probe_line(&output, &action), "allowed: read 13 bytes");
    let (status, output) = probe(&layout, "exec:/bin/true");
    assert!(status.success(), "{status}:\n{output}");
    assert!(output.contains("keyd.sandbox is off"), "{output}");
    let (status, output) = probe(&layout, "spawn:/bin/true");
    assert!(status.success(), "{status}:\n{output}");
    assert_eq!(
        probe_line(&output, "spawn:/bin/true"),
        "allowed: child exited with exit status: 0"
    );
    let (status, output) = probe(&layout, "userns");
    assert!(status.success(), "{status}:\n{output}");
    assert_eq!(
        probe_line(&output, "userns"),
        "allowed: created a user namespace"
    );
    let created = open_directory(&layout).join("created-by-keyd.txt");
    let action = format!("write:{}", created.display());
    let (_, output) = probe(&layout, &action);
    assert_eq!(probe_line(&output, &action), "allowed: written");
    assert!(created.exists());
}

/// Creates a directory with mode 0777 outside keyd's data and socket
/// directories, where file permissions let keyd's user write.
fn open_directory(layout: &Layout) -> PathBuf {
    let dir = layout.path("open");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

/// The names of the system calls in an `strace -f` trace that follow the
/// last installation of a seccomp filter.
fn calls_after_filter(trace: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    let mut filtered = false;
    for line in trace.lines() {
        // "PID name(args" or "PID <... name resumed>".
        let Some((_, rest)) = line.split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        let name = if let Some(resumed) = rest.strip_prefix("<... ") {
            // The call was counted when it started.
            let _ = resumed;
            continue;
        } else {
            match rest.split_once('(') {
                Some((name, _)) if name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
                    name
                }
                _ => continue,
            }
        };
        // keyd installs two filters, the ENOSYS one first: counting
        // restarts after each installation, so it covers the calls made
        // under the allow-list.
        if name == "seccomp" && rest.contains("SECCOMP_SET_MODE_FILTER") {
            filtered = true;
            counts.clear();
            continue;
        }
        if !filtered {
            continue;
        }
        *counts.entry(name.to_owned()).or_insert(0) += 1;
    }
    assert!(filtered, "the trace has no seccomp filter installation");
    counts
}

#[test]
fn every_allowed_syscall_is_used() {
    let Ok(strace) = which("strace") else {
        panic!("strace is not installed; .ci/run installs it");
    };
    let layout = Layout::new("enforce");
    let log = layout.path("keyd.log");
    let trace = layout.path("strace.txt");
    // systemd's notification socket, so the READY=1 path runs too.
    let notify_path = layout.path("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    // keyd sends from its unprivileged uid.
    std::fs::set_permissions(&notify_path, std::fs::Permissions::from_mode(0o666)).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut command = Command::new(strace);
    command
        .arg("-f")
        .arg("-qq")
        .arg("-o")
        .arg(&trace)
        .arg(binary("metacrypt-keyd"))
        .env("NOTIFY_SOCKET", &notify_path);
    layout.prepare(&mut command, &log);
    let mut keyd = command.spawn().expect("start keyd under strace");
    wait_ready(&mut keyd, &layout.admin_socket, &log);
    let mut buffer = [0u8; 256];
    let read = notify.recv(&mut buffer).expect("READY=1 from keyd");
    assert!(
        String::from_utf8_lossy(&buffer[..read]).contains("READY=1"),
        "{:?}",
        &buffer[..read]
    );

    let private_keys = workload(&layout);

    // SIGTERM goes to keyd, strace's only child; strace then exits with
    // keyd's status.
    let strace_pid = keyd.id();
    let children =
        std::fs::read_to_string(format!("/proc/{strace_pid}/task/{strace_pid}/children")).unwrap();
    let keyd_pid: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(keyd_pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let exit = stop(&mut keyd);
    assert!(
        exit.success(),
        "keyd exit status {exit}:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // No secret reaches the log, at debug level: neither seal password nor
    // any line of the leaf keys keyd generated.
    let keyd_log = std::fs::read_to_string(&log).unwrap();
    assert!(keyd_log.contains("sealed"), "{keyd_log}");
    assert!(!keyd_log.contains(SEAL_PASSWORD));
    assert!(!keyd_log.contains("a wrong seal password"));
    assert!(!keyd_log.contains("PRIVATE KEY"));
    for key in &private_keys {
        for line in key.lines().filter(|line| !line.starts_with("-----")) {
            assert!(!keyd_log.contains(line), "the log contains a key line");
        }
    }

    let trace = std::fs::read_to_string(&trace).unwrap();
    let used = calls_after_filter(&trace);
    let allowed: BTreeSet<&str> = metacrypt_keyd_syscalls()
        .iter()
        .map(|(name, _)| *name)
        .collect();
    println!(
        "{} allowed system calls: {}",
        allowed.len(),
        allowed.iter().copied().collect::<Vec<_>>().join(" ")
    );
    println!(
        "system calls after the filter, with counts: {}",
        used.iter()
            .map(|(name, count)| format!("{name}={count}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let outside: Vec<&String> = used
        .keys()
        .filter(|name| !allowed.contains(name.as_str()))
        .collect();
    assert!(outside.is_empty(), "calls outside the list: {outside:?}");
    let unused: Vec<&str> = metacrypt_keyd_syscalls()
        .iter()
        .filter(|(name, workload)| *workload && !used.contains_key(*name))
        .map(|(name, _)| *name)
        .collect();
    assert!(
        unused.is_empty(),
        "allowed calls the workload never made (remove them, or mark the rare path \
         that needs them): {unused:?}"
    );
}

/// The allow-list as (name, whether the workload must make the call).
fn metacrypt_keyd_syscalls() -> Vec<(&'static str, bool)> {
    syscalls::ALLOWED
        .iter()
        .map(|entry| (entry.name, entry.coverage == syscalls::Coverage::Workload))
        .collect()
}

/// init, seal, unseal, mount, create an issuer, issue, list, seal. Returns
/// the private keys of the issued certificates.
fn workload(layout: &Layout) -> Vec<String> {
    let mut admin = AdminClient::connect(&layout.admin_socket).unwrap();
    let state = |body| ResponseBody::State(body);
    assert_eq!(
        admin.request(RequestBody::Init {
            password: SEAL_PASSWORD.into()
        }),
        Ok(state(SealState::Unsealed))
    );
    assert_eq!(
        admin.request(RequestBody::Seal),
        Ok(state(SealState::Sealed))
    );
    // A wrong password, then the right one.
    assert!(
        admin
            .request(RequestBody::Unseal {
                password: "a wrong seal password".into()
            })
            .is_err()
    );
    assert_eq!(
        admin.request(RequestBody::Unseal {
            password: SEAL_PASSWORD.into()
        }),
        Ok(state(SealState::Unsealed))
    );

    let mut front = AdminClient::connect_as(&layout.front_socket, SocketRole::Front).unwrap();
    front
        .request(RequestBody::Mount {
            name: "pki".to_owned(),
            config: MountConfig::Ca(Default::default()),
        })
        .expect("mount");
    front
        .request(RequestBody::Ca {
            mount: "pki".to_owned(),
            op: CaRequest::CreateIssuer {
                name: "default".to_owned(),
                key_algorithm: None,
                ttl: None,
                constraints: Default::default(),
            },
        })
        .expect("create issuer");
    let mut private_keys = Vec::new();
    for name in ["a.example.com", "b.example.com"] {
        let reply = front
            .request(RequestBody::Ca {
                mount: "pki".to_owned(),
                op: CaRequest::Issue(IssueRequest {
                    issuer: "default".to_owned(),
                    profile: Profile::Server,
                    common_name: name.to_owned(),
                    dns_names: vec![name.to_owned()],
                    ip_addresses: Vec::new(),
                    ttl: Some("24h".to_owned()),
                    key_algorithm: None,
                    email_addresses: Vec::new(),
                    uris: Vec::new(),
                    key_usages: None,
                    extended_key_usages: None,
                }),
            })
            .expect("issue");
        let ResponseBody::Ca(CaResponse::Issued(issued)) = reply else {
            panic!("unexpected reply to issue: {reply:?}");
        };
        assert!(issued.certificate.contains("BEGIN CERTIFICATE"));
        private_keys.push(issued.private_key.expose().to_owned());
    }
    front
        .request(RequestBody::Ca {
            mount: "pki".to_owned(),
            op: CaRequest::ListCerts {
                issuer: None,
                limit: None,
                after: None,
            },
        })
        .expect("list certificates");
    front
        .request(RequestBody::Unmount {
            name: "pki".to_owned(),
        })
        .expect("unmount");
    assert_eq!(
        admin.request(RequestBody::Seal),
        Ok(state(SealState::Sealed))
    );
    private_keys
}

fn which(program: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
        .ok_or(())
}

#[test]
fn frontd_runs_confined_as_its_user() {
    let dir = tempfile::Builder::new()
        .prefix("metacrypt-frontd-sandbox-")
        .tempdir()
        .unwrap();
    let root = dir.path();
    let (cert, key) = metacrypt_tests::self_signed_tls(root, "frontd");
    let mut user = String::new();
    if running_as_root() {
        // frontd reads its TLS files after switching to SANDBOX_ID.
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        user = format!("user = \"{SANDBOX_ID}\"\ngroup = \"{SANDBOX_ID}\"\n");
    }
    let port = metacrypt_tests::free_port();
    let mcias_port = metacrypt_tests::free_port();
    let config = root.join("metacrypt.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten_addr = \"127.0.0.1:{port}\"\ntls_cert = \"{cert}\"\n\
             tls_key = \"{key}\"\n\n[keyd]\nfront_socket = \"{socket}\"\nsandbox = \"enforce\"\n\n\
             [frontd]\n{user}\n[mcias]\nserver_url = \"https://localhost:{mcias_port}\"\n\
             ca_cert = \"{cert}\"\n",
            cert = cert.display(),
            key = key.display(),
            socket = root.join("front.sock").display(),
        ),
    )
    .unwrap();
    let log = root.join("frontd.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut frontd = Command::new(binary("metacrypt-frontd"))
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .expect("start frontd");
    let listening = wait_for(Duration::from_secs(30), || {
        if let Some(status) = frontd.try_wait().unwrap() {
            panic!(
                "frontd exited with {status}:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    assert!(listening.is_some(), "frontd did not listen");

    let pid = frontd.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert_eq!(status_field(&status, "Seccomp"), "2");
    assert_eq!(status_field(&status, "NoNewPrivs"), "1");
    for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(&status, caps), "0000000000000000", "{caps}");
    }
    let expected = if running_as_root() {
        SANDBOX_ID
    } else {
        nix::unistd::geteuid().as_raw()
    };
    let ids = format!("{expected}\t{expected}\t{expected}\t{expected}");
    assert_eq!(status_field(&status, "Uid"), ids);
    assert_eq!(status_field(&status, "Gid"), ids);

    let frontd_log = std::fs::read_to_string(&log).unwrap();
    let landlock = frontd_log
        .lines()
        .find(|line| line.contains("landlock restricts files"))
        .unwrap_or_else(|| panic!("no landlock line in:\n{frontd_log}"));
    assert!(landlock.contains("\"status\":\"full\""), "{landlock}");

    // HTTPS still works: /v1/status answers (503, keyd is not running).
    let output = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(&cert)
        .arg(format!("https://localhost:{port}/v1/status"))
        .output()
        .expect("run curl");
    let code = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(code == "503" || code == "200", "HTTP status {code}");

    // A login makes frontd look up the MCIAS host name (glibc's resolver and
    // its NSS modules run inside the sandbox) and connect to it. Nothing
    // listens there, so the login fails, but frontd must survive it.
    let output = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(&cert)
        .args(["-H", "Content-Type: application/json", "-d"])
        .arg(r#"{"username":"alice","password":"a password for the test"}"#)
        .arg(format!("https://localhost:{port}/v1/auth/login"))
        .output()
        .expect("run curl");
    let code = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(code.starts_with('5'), "HTTP status {code}");
    assert!(
        frontd.try_wait().unwrap().is_none(),
        "frontd died:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    // SIGHUP reloads the TLS files inside the sandbox.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let reloaded = wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("reloaded the TLS certificate")
            .then_some(())
    });
    assert!(
        reloaded.is_some(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let exit = stop(&mut frontd);
    assert!(
        exit.success(),
        "frontd exit status {exit}:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

/// Starts keyd as uid and gid SANDBOX_ID through setpriv, with `keyd.user`
/// naming another uid it cannot switch to, and returns whether it served and
/// its log.
fn start_unable_to_switch(sandbox: &str) -> (Option<ExitStatus>, String) {
    let layout = Layout::new(sandbox);
    let text = std::fs::read_to_string(&layout.config).unwrap();
    let other = SANDBOX_ID - 1;
    let text = text.replace(
        &format!("user = \"{SANDBOX_ID}\"\ngroup = \"{SANDBOX_ID}\"\n"),
        &format!("user = \"{other}\"\ngroup = \"{other}\"\n"),
    );
    std::fs::write(&layout.config, text).unwrap();
    let log = layout.path("keyd.log");
    let mut command = Command::new("setpriv");
    command
        .arg(format!("--reuid={SANDBOX_ID}"))
        .arg(format!("--regid={SANDBOX_ID}"))
        .arg("--clear-groups")
        .arg("--bounding-set=-all")
        .arg(binary("metacrypt-keyd"));
    layout.prepare(&mut command, &log);
    let mut keyd = command.spawn().expect("start keyd through setpriv");
    let served = wait_for(Duration::from_secs(30), || {
        if keyd.try_wait().unwrap().is_some() {
            return Some(false);
        }
        AdminClient::connect(&layout.admin_socket)
            .ok()
            .map(|_| true)
    });
    let status = match served {
        Some(true) => {
            let status = stop(&mut keyd);
            assert!(status.success(), "keyd exit status {status}");
            None
        }
        _ => Some(keyd.wait().unwrap()),
    };
    (status, std::fs::read_to_string(&log).unwrap())
}

#[test]
fn failed_step_is_fatal_only_under_enforce() {
    if !running_as_root() {
        eprintln!("skipped: setpriv needs root to start keyd as another user");
        return;
    }
    let (exit, log) = start_unable_to_switch("enforce");
    let exit = exit.expect("keyd served although a sandbox step failed under enforce");
    assert!(!exit.success(), "{log}");
    assert!(
        log.contains(
            "sandbox step user failed: keyd.user is uid 65533, but keyd runs as uid 65534"
        ),
        "{log}"
    );

    let (exit, log) = start_unable_to_switch("best-effort");
    assert_eq!(exit, None, "keyd did not serve under best-effort:\n{log}");
    assert!(log.contains("sandbox step failed; continuing"), "{log}");
    assert!(log.contains("\"step\":\"user\""), "{log}");
}

/// The uid of the front client that `files_belong_to_keyd_user` admits
/// through `keyd.front_allowed_uids`: neither root nor keyd's user.
const FRONT_CLIENT_UID: u32 = SANDBOX_ID - 1;

/// Environment variable that names the front socket for
/// `front_client_as_other_uid`.
const FRONT_SOCKET_VARIABLE: &str = "METACRYPT_TEST_FRONT_SOCKET";

fn owner_and_mode(path: &Path) -> (u32, u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let metadata =
        std::fs::metadata(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    (metadata.uid(), metadata.gid(), metadata.mode() & 0o7777)
}

/// Runs this test binary's `front_client_as_other_uid` through setpriv as
/// FRONT_CLIENT_UID with SANDBOX_ID as its only group, and returns whether
/// it passed and its output.
fn run_front_client(socket: &Path) -> (bool, String) {
    let output = Command::new("setpriv")
        .arg(format!("--reuid={FRONT_CLIENT_UID}"))
        .arg(format!("--regid={SANDBOX_ID}"))
        .arg("--clear-groups")
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "front_client_as_other_uid",
            "--ignored",
            "--nocapture",
        ])
        .env(FRONT_SOCKET_VARIABLE, socket)
        .output()
        .expect("run the front client through setpriv");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
#[ignore = "run by files_belong_to_keyd_user as another uid"]
fn front_client_as_other_uid() {
    let socket = std::env::var_os(FRONT_SOCKET_VARIABLE)
        .expect("METACRYPT_TEST_FRONT_SOCKET names the front socket");
    let mut client = AdminClient::connect_as(Path::new(&socket), SocketRole::Front)
        .expect("connect to the front socket");
    client
        .request(RequestBody::Status)
        .expect("status on the front socket");
}

#[test]
fn files_belong_to_keyd_user() {
    if !running_as_root() {
        eprintln!("skipped: only root can start keyd with keyd.user and chown files");
        return;
    }
    let layout = Layout::new("enforce");
    let text = std::fs::read_to_string(&layout.config).unwrap();
    let text = text.replace(
        "front_allowed_uids = [0]",
        &format!("front_allowed_uids = [0, {FRONT_CLIENT_UID}]"),
    );
    std::fs::write(&layout.config, text).unwrap();

    // Started as root, keyd creates every file and then switches users.
    let log = layout.path("keyd-root.log");
    let mut keyd = layout.keyd(&log);
    let mut child = keyd.spawn().expect("start keyd");
    wait_ready(&mut child, &layout.admin_socket, &log);
    let db = layout.data.join("metacrypt.db");
    let mut files = vec![
        (db.clone(), 0o600),
        (layout.data.join("metacrypt.db.lock"), 0o600),
        (layout.data.join("audit.log"), 0o600),
        (layout.front_socket.clone(), 0o660),
        (layout.admin_socket.clone(), 0o600),
    ];
    for suffix in ["-wal", "-shm"] {
        let path = layout.data.join(format!("metacrypt.db{suffix}"));
        assert!(path.exists(), "{} is missing", path.display());
        files.push((path, 0o600));
    }
    for (path, mode) in &files {
        let (uid, gid, actual) = owner_and_mode(path);
        assert_eq!(uid, SANDBOX_ID, "owner of {}", path.display());
        assert_eq!(gid, SANDBOX_ID, "group of {}", path.display());
        assert_eq!(actual, *mode, "mode of {}", path.display());
    }
    let (passed, output) = run_front_client(&layout.front_socket);
    assert!(passed, "front client as uid {FRONT_CLIENT_UID}:\n{output}");
    let status = stop(&mut child);
    assert!(status.success(), "keyd exit status {status}");
    // keyd still recognizes the chowned socket files as its own.
    assert!(!layout.front_socket.exists(), "stale front socket");
    assert!(!layout.admin_socket.exists(), "stale admin socket");

    // A later start as keyd.user itself opens the same database.
    let log = layout.path("keyd-user.log");
    let mut command = Command::new("setpriv");
    command
        .arg(format!("--reuid={SANDBOX_ID}"))
        .arg(format!("--regid={SANDBOX_ID}"))
        .arg("--clear-groups")
        .arg("--bounding-set=-all")
        .arg(binary("metacrypt-keyd"));
    layout.prepare(&mut command, &log);
    let mut child = command.spawn().expect("start keyd through setpriv");
    wait_ready(&mut child, &layout.admin_socket, &log);
    let (passed, output) = run_front_client(&layout.front_socket);
    assert!(passed, "front client as uid {FRONT_CLIENT_UID}:\n{output}");
    let status = stop(&mut child);
    assert!(status.success(), "keyd exit status {status}");
}

/// Starts keyd through prlimit with RLIMIT_MEMLOCK set to `bytes`.
fn keyd_with_memlock(layout: &Layout, bytes: u64, log: &Path) -> Child {
    let mut command = Command::new("prlimit");
    command
        .arg(format!("--memlock={bytes}:{bytes}"))
        .arg(binary("metacrypt-keyd"));
    layout.prepare(&mut command, log);
    command.spawn().expect("start keyd through prlimit")
}

/// Waits up to 30 s for `child` to exit.
fn wait_exit(child: &mut Child) -> Option<ExitStatus> {
    wait_for(Duration::from_secs(30), || child.try_wait().unwrap())
}

#[test]
fn memlock_limit_fails_start_under_enforce() {
    let layout = Layout::new("enforce");
    let log = layout.path("keyd.log");
    let mut child = keyd_with_memlock(&layout, 0, &log);
    let exit = wait_exit(&mut child);
    let text = std::fs::read_to_string(&log).unwrap();
    if exit.is_none() {
        let _ = stop(&mut child);
    }
    let exit = exit.unwrap_or_else(|| panic!("keyd served with a memlock limit of 0:\n{text}"));
    assert!(!exit.success(), "{text}");
    assert!(
        text.contains("sandbox step locked-memory failed: failed to lock 4096 bytes"),
        "{text}"
    );
    assert!(!layout.admin_socket.exists(), "stale admin socket");
}

#[test]
fn memlock_limit_warns_under_best_effort() {
    let layout = Layout::new("best-effort");
    let log = layout.path("keyd.log");
    let mut child = keyd_with_memlock(&layout, 0, &log);
    wait_ready(&mut child, &layout.admin_socket, &log);
    let mut admin = AdminClient::connect(&layout.admin_socket).unwrap();
    assert_eq!(
        admin.request(RequestBody::Init {
            password: SEAL_PASSWORD.into()
        }),
        Ok(ResponseBody::State(SealState::Unsealed))
    );
    drop(admin);
    let status = stop(&mut child);
    assert!(status.success(), "keyd exit status {status}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("sandbox step locked-memory failed"), "{text}");
    assert!(text.contains("keys are kept in unlocked memory"), "{text}");
}

#[test]
fn memlock_limit_at_init_names_the_cause() {
    // One page: enough for the test allocation at start, but not for the
    // MEK and the system DEK that init keeps locked at once (measured on
    // x86_64 with 4 KiB pages; 8 KiB lets init pass).
    let limit = 4096;
    let layout = Layout::new("enforce");
    let log = layout.path("keyd.log");
    let mut child = keyd_with_memlock(&layout, limit, &log);
    wait_ready(&mut child, &layout.admin_socket, &log);
    let mut admin = AdminClient::connect(&layout.admin_socket).unwrap();
    let result = admin.request(RequestBody::Init {
        password: SEAL_PASSWORD.into(),
    });
    drop(admin);
    let status = stop(&mut child);
    assert!(status.success(), "keyd exit status {status}");
    let error = result.expect_err("init succeeded with a memlock limit of one page");
    assert_eq!(
        error.code,
        metacrypt_protocol::ErrorCode::Unavailable,
        "{error:?}"
    );
    assert!(error.message.contains("failed to lock"), "{error:?}");
    assert!(
        error.message.contains("raise keyd's memlock limit"),
        "{error:?}"
    );
}

#[test]
fn hangup_and_quit_seal_like_sigterm() {
    use nix::sys::signal::Signal;
    for signal in [Signal::SIGHUP, Signal::SIGQUIT] {
        let layout = Layout::new("enforce");
        let log = layout.path("keyd.log");
        let mut child = layout.keyd(&log).spawn().expect("start keyd");
        wait_ready(&mut child, &layout.admin_socket, &log);
        let mut admin = AdminClient::connect(&layout.admin_socket).unwrap();
        assert_eq!(
            admin.request(RequestBody::Init {
                password: SEAL_PASSWORD.into()
            }),
            Ok(ResponseBody::State(SealState::Unsealed))
        );
        drop(admin);
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
        let exit = wait_exit(&mut child);
        let text = std::fs::read_to_string(&log).unwrap();
        if exit.is_none() {
            let _ = stop(&mut child);
        }
        let exit = exit.unwrap_or_else(|| panic!("keyd did not exit on {signal}:\n{text}"));
        assert!(exit.success(), "{signal}: keyd exit status {exit}:\n{text}");
        assert!(
            text.contains(&format!("\"signal\":\"{}\"", signal.as_str())),
            "{text}"
        );
        assert!(text.contains("sealed: engine keys"), "{signal}:\n{text}");
        assert!(
            !layout.front_socket.exists(),
            "{signal}: stale front socket"
        );
        assert!(
            !layout.admin_socket.exists(),
            "{signal}: stale admin socket"
        );
    }
}

#[test]
fn created_socket_directory_belongs_to_keyd_user() {
    if !running_as_root() {
        eprintln!("skipped: only root can start keyd with keyd.user and chown files");
        return;
    }
    let layout = Layout::new("enforce");
    let run = layout.admin_socket.parent().unwrap();
    let dir = run.join("created");
    let admin_socket = dir.join("admin.sock");
    let front_socket = dir.join("front.sock");
    let text = std::fs::read_to_string(&layout.config).unwrap();
    let text = text
        .replace(
            &layout.admin_socket.display().to_string(),
            &admin_socket.display().to_string(),
        )
        .replace(
            &layout.front_socket.display().to_string(),
            &front_socket.display().to_string(),
        );
    std::fs::write(&layout.config, text).unwrap();

    let log = layout.path("keyd.log");
    let mut child = layout.keyd(&log).spawn().expect("start keyd");
    wait_ready(&mut child, &admin_socket, &log);
    assert_eq!(owner_and_mode(&dir), (SANDBOX_ID, SANDBOX_ID, 0o750));
    assert_eq!(
        owner_and_mode(&front_socket),
        (SANDBOX_ID, SANDBOX_ID, 0o660)
    );
    let status = stop(&mut child);
    assert!(status.success(), "keyd exit status {status}");
    // keyd, now keyd.user, removes its sockets from the directory it made.
    assert!(!front_socket.exists(), "stale front socket");
    assert!(!admin_socket.exists(), "stale admin socket");
}
