//! The `metacrypt` binary against a keyd double on a real Unix socket, an
//! HTTPS server run by `openssl s_server`, and missing services.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread::JoinHandle;

use metacrypt_protocol::{
    ClientMessage, ErrorBody, HelloReply, PROTOCOL_VERSION, Reply, Request, RequestBody,
    ResponseBody, SealState, ServerMessage, SocketRole, read_frame, write_frame,
};

const BIN: &str = env!("CARGO_BIN_EXE_metacrypt");

/// Starts a keyd double that serves one connection on `socket`, replies to
/// Hello with `state`, and replies to every request with `reply`. Returns the request
/// bodies it received.
fn keyd_double(
    socket: &Path,
    state: SealState,
    reply: impl Fn(&Request) -> Result<ResponseBody, ErrorBody> + Send + 'static,
) -> JoinHandle<Vec<RequestBody>> {
    let listener = UnixListener::bind(socket).unwrap();
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let hello: ClientMessage = read_frame(&mut stream).unwrap();
        assert!(matches!(hello, ClientMessage::Hello(_)), "{hello:?}");
        let answer = ServerMessage::Hello(Ok(HelloReply {
            version: PROTOCOL_VERSION,
            role: SocketRole::Admin,
            state,
        }));
        write_frame(&mut stream, &answer).unwrap();
        let mut seen = Vec::new();
        while let Ok(ClientMessage::Request(request)) = read_frame(&mut stream) {
            let message = ServerMessage::Reply(Reply {
                id: request.id,
                result: reply(&request),
            });
            write_frame(&mut stream, &message).unwrap();
            seen.push(request.body);
        }
        seen
    })
}

fn metacrypt(args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env_remove("METACRYPT_ADDR")
        .env_remove("METACRYPT_CA_CERT")
        .env_remove("METACRYPT_CONFIG")
        .stdin(Stdio::null());
    command
}

fn run_with_stdin(command: &mut Command, input: &str) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Writes a password file with mode 0600, as an operator would.
fn write_password_file(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn socket_arg(path: &Path) -> String {
    path.to_str().unwrap().to_owned()
}

#[test]
fn status_prints_state() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let double = keyd_double(&socket, SealState::Sealed, |_| {
        Ok(ResponseBody::State(SealState::Sealed))
    });
    let output = metacrypt(&["status", "--socket", &socket_arg(&socket)])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), "state: sealed\n");
    assert_eq!(double.join().unwrap(), vec![RequestBody::Status]);
}

#[test]
fn unseal_sends_password_file_line() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let password_file = dir.path().join("pw");
    write_password_file(&password_file, "correct horse battery staple\n");
    let double = keyd_double(&socket, SealState::Sealed, |_| {
        Ok(ResponseBody::State(SealState::Unsealed))
    });
    let output = metacrypt(&[
        "unseal",
        "--socket",
        &socket_arg(&socket),
        "--password-file",
        password_file.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), "state: unsealed\n");
    let seen = double.join().unwrap();
    let [RequestBody::Unseal { password }] = seen.as_slice() else {
        panic!("expected one unseal request, got {seen:?}");
    };
    assert_eq!(password.expose(), "correct horse battery staple");
}

#[test]
fn init_reads_password_from_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let double = keyd_double(&socket, SealState::Uninitialized, |_| {
        Ok(ResponseBody::State(SealState::Unsealed))
    });
    let output = run_with_stdin(
        &mut metacrypt(&["init", "--socket", &socket_arg(&socket)]),
        "piped seal password\n",
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), "state: unsealed\n");
    let seen = double.join().unwrap();
    let [RequestBody::Init { password }] = seen.as_slice() else {
        panic!("expected one init request, got {seen:?}");
    };
    assert_eq!(password.expose(), "piped seal password");
}

#[test]
fn seal_uses_socket_from_config() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let config = dir.path().join("metacrypt.toml");
    std::fs::write(
        &config,
        format!("[keyd]\nadmin_socket = \"{}\"\n", socket.display()),
    )
    .unwrap();
    let double = keyd_double(&socket, SealState::Unsealed, |_| {
        Ok(ResponseBody::State(SealState::Sealed))
    });
    let output = metacrypt(&["seal", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), "state: sealed\n");
    assert_eq!(double.join().unwrap(), vec![RequestBody::Seal]);
}

#[test]
fn seal_uses_socket_from_config_env() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let config = dir.path().join("other.toml");
    std::fs::write(
        &config,
        format!("[keyd]\nadmin_socket = \"{}\"\n", socket.display()),
    )
    .unwrap();
    let double = keyd_double(&socket, SealState::Unsealed, |_| {
        Ok(ResponseBody::State(SealState::Sealed))
    });
    let output = metacrypt(&["seal"])
        .env("METACRYPT_CONFIG", &config)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(double.join().unwrap(), vec![RequestBody::Seal]);
}

#[test]
fn lockout_prints_retry_time() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let password_file = dir.path().join("pw");
    write_password_file(&password_file, "whatever password\n");
    let _double = keyd_double(&socket, SealState::Sealed, |_| {
        Err(ErrorBody::too_many_attempts(42))
    });
    let output = metacrypt(&[
        "unseal",
        "--socket",
        &socket_arg(&socket),
        "--password-file",
        password_file.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output),
        "error: too many attempts (retry in 42 s)\n"
    );
    assert_eq!(stdout(&output), "");
}

#[test]
fn readable_password_file_warns() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let password_file = dir.path().join("pw");
    std::fs::write(&password_file, "correct horse battery staple\n").unwrap();
    std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let _double = keyd_double(&socket, SealState::Sealed, |_| {
        Ok(ResponseBody::State(SealState::Unsealed))
    });
    let output = metacrypt(&[
        "unseal",
        "--socket",
        &socket_arg(&socket),
        "--password-file",
        password_file.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        stderr(&output).starts_with("warning: password file"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn wrong_password_is_exit_one() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let _double = keyd_double(&socket, SealState::Sealed, |_| {
        Err(ErrorBody::new(
            metacrypt_protocol::ErrorCode::InvalidPassword,
            "invalid password",
        ))
    });
    let output = run_with_stdin(
        &mut metacrypt(&["unseal", "--socket", &socket_arg(&socket)]),
        "wrong one\n",
    );
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stderr(&output), "error: invalid password\n");
}

#[test]
fn missing_socket_is_exit_three() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("absent.sock");
    let output = metacrypt(&["status", "--socket", &socket_arg(&socket)])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3));
    assert!(
        stderr(&output).contains(&socket_arg(&socket)),
        "{}",
        stderr(&output)
    );
}

#[test]
fn missing_password_file_is_exit_three() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let _double = keyd_double(&socket, SealState::Sealed, |_| {
        Ok(ResponseBody::State(SealState::Unsealed))
    });
    let output = metacrypt(&[
        "unseal",
        "--socket",
        &socket_arg(&socket),
        "--password-file",
        "/nonexistent/pw",
    ])
    .output()
    .unwrap();
    assert_eq!(output.status.code(), Some(3));
    assert!(
        stderr(&output).contains("/nonexistent/pw"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn unknown_command_is_exit_two() {
    let output = metacrypt(&["frobnicate"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn plain_http_addr_is_exit_two() {
    let output = metacrypt(&["status", "--addr", "http://127.0.0.1:8443"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("https://"), "{}", stderr(&output));
}

#[test]
fn closed_port_is_exit_three() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("https://127.0.0.1:{port}");
    let output = metacrypt(&["status", "--addr", &addr]).output().unwrap();
    assert_eq!(output.status.code(), Some(3));
    assert!(stderr(&output).contains(&addr), "{}", stderr(&output));
}

/// An HTTPS server run by `openssl s_server -WWW`, serving files from its
/// directory; killed when dropped.
struct OpensslServer {
    child: Child,
    port: u16,
}

impl Drop for OpensslServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes a self-signed certificate for 127.0.0.1 and returns its path.
fn write_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let cert_path = dir.join(format!("{name}.crt"));
    let key_path = dir.join(format!("{name}.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

fn openssl_status_server(dir: &Path, cert: &Path, key: &Path) -> OpensslServer {
    std::fs::create_dir_all(dir.join("v1")).unwrap();
    std::fs::write(dir.join("v1/status"), r#"{"state":"unsealed"}"#).unwrap();
    let mut child = Command::new("openssl")
        .args([
            "s_server",
            "-WWW",
            "-accept",
            "127.0.0.1:0",
            "-naccept",
            "4",
        ])
        .arg("-cert")
        .arg(cert)
        .arg("-key")
        .arg(key)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let port = loop {
        let line = lines.next().expect("openssl s_server exited").unwrap();
        if let Some(addr) = line.strip_prefix("ACCEPT ") {
            break addr.rsplit(':').next().unwrap().parse().unwrap();
        }
    };
    // Keep reading so s_server never blocks on a full stdout pipe.
    std::thread::spawn(move || for _ in lines {});
    OpensslServer { child, port }
}

#[test]
fn remote_status_trusts_ca_cert() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_cert(dir.path(), "server");
    let server = openssl_status_server(dir.path(), &cert, &key);
    let addr = format!("https://127.0.0.1:{}", server.port);
    let output = metacrypt(&[
        "status",
        "--addr",
        &addr,
        "--ca-cert",
        cert.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), "state: unsealed\n");
}

#[test]
fn remote_status_reads_env() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_cert(dir.path(), "server");
    let server = openssl_status_server(dir.path(), &cert, &key);
    let output = metacrypt(&["status"])
        .env(
            "METACRYPT_ADDR",
            format!("https://127.0.0.1:{}", server.port),
        )
        .env("METACRYPT_CA_CERT", &cert)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), "state: unsealed\n");
}

#[test]
fn untrusted_certificate_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_cert(dir.path(), "server");
    let (other_cert, _) = write_cert(dir.path(), "other");
    let server = openssl_status_server(dir.path(), &cert, &key);
    let addr = format!("https://127.0.0.1:{}", server.port);
    let output = metacrypt(&[
        "status",
        "--addr",
        &addr,
        "--ca-cert",
        other_cert.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert_eq!(output.status.code(), Some(3));
    assert!(
        stderr(&output).to_lowercase().contains("certificate"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn dev_rejects_non_loopback_addr() {
    let output = metacrypt(&["dev", "--addr", "0.0.0.0:8443"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("not a loopback address"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn dev_without_daemons_says_how_to_build() {
    let dir = tempfile::tempdir().unwrap();
    let lonely = dir.path().join("metacrypt");
    // A hard link is never open for writing. A copy is, and a child that
    // another test thread forks meanwhile inherits that descriptor until
    // it execs, so running the copy can fail with ETXTBSY for a moment.
    if std::fs::hard_link(BIN, &lonely).is_err() {
        std::fs::copy(BIN, &lonely).unwrap();
    }
    let mut attempts = 0;
    let output = loop {
        let result = Command::new(&lonely)
            .args(["dev", "--dir"])
            .arg(dir.path().join("state"))
            .output();
        match result {
            Err(err) if err.kind() == std::io::ErrorKind::ExecutableFileBusy && attempts < 100 => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => break other.unwrap(),
        }
    };
    assert_eq!(output.status.code(), Some(3));
    let text = stderr(&output);
    assert!(text.contains("metacrypt-keyd"), "{text}");
    assert!(text.contains("cargo build --release"), "{text}");
    assert!(!dir.path().join("state").exists());
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().mode() & 0o777
}

/// Returns the value of `export NAME='VALUE'` in `env`.
fn export_value(env: &str, name: &str) -> String {
    let prefix = format!("export {name}='");
    let line = env
        .lines()
        .find(|line| line.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {name} in {env}"));
    line[prefix.len()..line.len() - 1].to_owned()
}

fn dev_once(state: &Path, port: u16) -> Output {
    metacrypt(&[
        "dev",
        "--once",
        "--addr",
        &format!("127.0.0.1:{port}"),
        "--dir",
    ])
    .arg(state)
    .output()
    .unwrap()
}

#[test]
#[ignore = "needs metacrypt-keyd, -frontd and -mcias-dev next to metacrypt: \
            cargo build --workspace --bins, then cargo test -p metacrypt-cli -- --ignored"]
fn dev_once_sets_up_and_reuses() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let port = free_port();

    let first = dev_once(&state, port);
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    let printed = stdout(&first);
    let env = std::fs::read_to_string(state.join("dev.env")).unwrap();
    assert!(printed.contains(&env), "{printed}");
    assert!(printed.contains("/v1/pki/pki/issue"), "{printed}");
    assert_eq!(
        export_value(&env, "METACRYPT_ADDR"),
        format!("https://127.0.0.1:{port}")
    );
    assert_eq!(export_value(&env, "METACRYPT_DEV_USER"), "dev-admin");
    assert_eq!(export_value(&env, "METACRYPT_TOKEN").len(), 64);
    assert_eq!(mode(&state.join("dev.env")), 0o600);
    assert_eq!(mode(&state.join("seal-password")), 0o600);
    assert!(state.join("metacrypt.db").is_file());
    let log = stderr(&first);
    assert!(log.contains("initializing keyd"), "{log}");
    assert!(log.contains("mounted a CA engine at pki"), "{log}");
    assert!(log.contains("created the issuer default"), "{log}");

    let second = dev_once(&state, port);
    assert_eq!(second.status.code(), Some(0), "{}", stderr(&second));
    let log = stderr(&second);
    assert!(log.contains("unsealing keyd"), "{log}");
    assert!(log.contains("reusing the CA mount pki"), "{log}");
    assert!(log.contains("reusing the issuer default"), "{log}");
    let env_again = std::fs::read_to_string(state.join("dev.env")).unwrap();
    assert_eq!(
        export_value(&env_again, "METACRYPT_DEV_PASSWORD"),
        export_value(&env, "METACRYPT_DEV_PASSWORD")
    );
    // Every daemon is gone, so the port is free again.
    TcpListener::bind(("127.0.0.1", port)).unwrap();
}

#[test]
#[ignore = "needs metacrypt-keyd, -frontd and -mcias-dev next to metacrypt: \
            cargo build --workspace --bins, then cargo test -p metacrypt-cli -- --ignored"]
fn dev_serves_curl_until_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let port = free_port();
    let mut child = metacrypt(&["dev", "--addr", &format!("127.0.0.1:{port}"), "--dir"])
        .arg(&state)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let curl = loop {
        let line = lines
            .next()
            .expect("metacrypt dev exited before printing the curl command")
            .unwrap();
        if line.trim_start().starts_with("curl ") {
            break line.trim().to_owned();
        }
    };

    let script = format!(". '{}' && {curl}", state.join("dev.env").display());
    let output = Command::new("sh").arg("-c").arg(&script).output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let issued: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let certificate = issued["certificate"].as_str().unwrap();
    assert!(
        certificate.starts_with("-----BEGIN CERTIFICATE-----"),
        "{issued}"
    );
    assert!(
        issued["private_key"]
            .as_str()
            .unwrap()
            .contains("PRIVATE KEY")
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    TcpListener::bind(("127.0.0.1", port)).unwrap();
}
