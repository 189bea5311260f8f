//! The MCIAS contract, checked against the real binary over real TLS.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use reqwest::StatusCode;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const BIN: &str = env!("CARGO_BIN_EXE_metacrypt-mcias-dev");
const PASSWORD: &str = "correct horse battery staple";

/// A running server; killed when dropped.
struct Server {
    child: Child,
    port_file: PathBuf,
    log: PathBuf,
    base: String,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn hash_with_binary(password: &str) -> String {
    let mut child = Command::new(BIN)
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

fn write_tls(dir: &Path) -> (PathBuf, PathBuf, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let cert_path = dir.join("mcias.crt");
    let key_path = dir.join("mcias.key");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path, cert.pem())
}

fn start(token_ttl: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, cert_pem) = write_tls(dir.path());
    let hash = hash_with_binary(PASSWORD);
    let users = dir.path().join("users.toml");
    std::fs::write(
        &users,
        format!(
            "[[users]]\nusername = \"alice\"\npassword_hash = '{hash}'\nroles = [\"admin\"]\n\n\
             [[users]]\nusername = \"bob\"\npassword_hash = '{hash}'\nroles = []\n"
        ),
    )
    .unwrap();

    let port_file = dir.path().join("port");
    let log_path = dir.path().join("log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--token-ttl", token_ttl])
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .arg("--users")
        .arg(&users)
        .arg("--port-file")
        .arg(&port_file)
        .stdout(log)
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    let port = loop {
        if let Ok(text) = std::fs::read_to_string(&port_file) {
            break text.trim().parse::<u16>().unwrap();
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("server exited before listening: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "server did not write its port file"
        );
        std::thread::sleep(Duration::from_millis(20));
    };

    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap()])
        .no_proxy()
        .build()
        .unwrap();
    Server {
        child,
        port_file,
        log: log_path,
        base: format!("https://127.0.0.1:{port}"),
        client,
        _dir: dir,
    }
}

impl Server {
    async fn login(&self, username: &str, password: &str) -> (StatusCode, Value) {
        let response = self
            .client
            .post(format!("{}/v1/auth/login", self.base))
            .json(&json!({ "username": username, "password": password }))
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap())
    }

    async fn token(&self) -> String {
        let (status, body) = self.login("alice", PASSWORD).await;
        assert_eq!(status, StatusCode::OK);
        body["token"].as_str().unwrap().to_owned()
    }

    async fn validate(&self, token: Option<&str>) -> Value {
        let mut request = self.client.post(format!("{}/v1/token/validate", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }

    async fn logout(&self, token: &str) -> StatusCode {
        self.client
            .post(format!("{}/v1/auth/logout", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status()
    }
}

#[tokio::test]
async fn health_is_ok() {
    let server = start("1h");
    let response = server
        .client
        .get(format!("{}/v1/health", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({ "status": "ok" }));
}

#[tokio::test]
async fn login_returns_token_and_expiry() {
    let server = start("1h");
    let (status, body) = server.login("alice", PASSWORD).await;
    assert_eq!(status, StatusCode::OK);
    let token = body["token"].as_str().unwrap();
    assert_eq!(token.len(), 64);
    assert!(token.chars().all(|c| c.is_ascii_hexdigit()));
    let expires_at = OffsetDateTime::parse(body["expires_at"].as_str().unwrap(), &Rfc3339).unwrap();
    let remaining = expires_at - OffsetDateTime::now_utc();
    assert!(remaining > time::Duration::minutes(59), "{remaining}");
    assert!(remaining <= time::Duration::hours(1), "{remaining}");
    assert!(body["expires_at"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn wrong_password_is_invalid_credentials() {
    let server = start("1h");
    let (status, body) = server.login("alice", "wrong").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body, json!({ "error": "invalid credentials" }));
}

#[tokio::test]
async fn unknown_user_is_invalid_credentials() {
    let server = start("1h");
    let (status, body) = server.login("mallory", PASSWORD).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body, json!({ "error": "invalid credentials" }));
}

#[tokio::test]
async fn malformed_login_is_bad_request() {
    let server = start("1h");
    let response = server
        .client
        .post(format!("{}/v1/auth/login", server.base))
        .body("{\"username\":")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("invalid login request")
    );
}

#[tokio::test]
async fn valid_token_reports_identity() {
    let server = start("1h");
    let (_, login) = server.login("alice", PASSWORD).await;
    let token = login["token"].as_str().unwrap();
    let body = server.validate(Some(token)).await;
    assert_eq!(body["valid"], json!(true));
    assert_eq!(body["username"], json!("alice"));
    assert_eq!(body["roles"], json!(["admin"]));
    assert_eq!(body["expires_at"], login["expires_at"]);
    assert_eq!(body["sub"].as_str().unwrap().len(), 36);
}

#[tokio::test]
async fn users_have_distinct_subjects() {
    let server = start("1h");
    let (_, alice) = server.login("alice", PASSWORD).await;
    let (_, bob) = server.login("bob", PASSWORD).await;
    let alice = server.validate(alice["token"].as_str()).await;
    let bob = server.validate(bob["token"].as_str()).await;
    assert_ne!(alice["sub"], bob["sub"]);
    assert_eq!(bob["roles"], json!([]));
}

#[tokio::test]
async fn unknown_token_is_not_valid() {
    let server = start("1h");
    let body = server.validate(Some(&"00".repeat(32))).await;
    assert_eq!(body, json!({ "valid": false }));
}

#[tokio::test]
async fn missing_token_is_not_valid() {
    let server = start("1h");
    let body = server.validate(None).await;
    assert_eq!(body, json!({ "valid": false }));
}

#[tokio::test]
async fn logout_revokes_token() {
    let server = start("1h");
    let token = server.token().await;
    assert_eq!(server.logout(&token).await, StatusCode::NO_CONTENT);
    assert_eq!(
        server.validate(Some(&token)).await,
        json!({ "valid": false })
    );
    assert_eq!(server.logout(&token).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn logout_of_unknown_token_is_unauthorized() {
    let server = start("1h");
    assert_eq!(
        server.logout(&"ab".repeat(32)).await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn expired_token_is_not_valid() {
    let server = start("1s");
    let token = server.token().await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        server.validate(Some(&token)).await,
        json!({ "valid": false })
    );
}

#[tokio::test]
async fn repeated_failures_are_rate_limited() {
    let server = start("1h");
    for attempt in 0..10 {
        let (status, _) = server.login("alice", "wrong").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "attempt {attempt}");
    }
    let response = server
        .client
        .post(format!("{}/v1/auth/login", server.base))
        .json(&json!({ "username": "alice", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let (status, _) = server.login("bob", PASSWORD).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn unknown_route_is_json_not_found() {
    let server = start("1h");
    let response = server
        .client
        .get(format!("{}/v1/nothing", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({ "error": "not found" }));
}

#[test]
fn sigterm_stops_and_removes_port_file() {
    let mut server = start("1h");
    kill(Pid::from_raw(server.child.id() as i32), Signal::SIGTERM).unwrap();
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!server.port_file.exists());
}

#[tokio::test]
async fn log_is_json_without_secrets() {
    let server = start("1h");
    let token = server.token().await;
    server.validate(Some(&token)).await;
    server.logout(&token).await;
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(!log.contains(&token));
    assert!(!log.contains(PASSWORD));
    assert!(log.contains("for development and tests only"));
    for line in log.lines() {
        serde_json::from_str::<Value>(line).unwrap();
    }
}

#[test]
fn non_loopback_listen_is_rejected() {
    let output = Command::new(BIN)
        .args(["--listen", "0.0.0.0:0"])
        .args(["--tls-cert", "c", "--tls-key", "k", "--users", "u"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--allow-non-loopback"), "{stderr}");
}

#[test]
fn missing_tls_cert_is_usage_error() {
    let output = Command::new(BIN)
        .args(["--tls-key", "k", "--users", "u"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--tls-cert"), "{stderr}");
}

#[test]
fn hash_password_prints_argon2id_phc() {
    let hash = hash_with_binary(PASSWORD);
    assert!(hash.starts_with("$argon2id$v=19$"), "{hash}");
    assert_eq!(hash.matches('$').count(), 5, "{hash}");
}
