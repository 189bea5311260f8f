//! The HTTPS server over real TLS on 127.0.0.1, and the built binary run
//! from a config file.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{Harness, KeydDouble, canned, localhost_certificate};
use metacrypt_frontd::server::{ServeOptions, serve};
use metacrypt_frontd::tls::{CertificateStore, server_config};
use metacrypt_protocol::SealState;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

struct Server {
    port: u16,
    cert_pem: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    _harness: Harness,
    _dir: tempfile::TempDir,
}

async fn start_server() -> Server {
    start_server_with(ServeOptions::default()).await
}

async fn start_server_with(options: ServeOptions) -> Server {
    let harness = Harness::start(SealState::Sealed).await;
    let dir = tempfile::tempdir().unwrap();
    let (cert_pem, key_pem) = localhost_certificate();
    let cert = dir.path().join("server.crt");
    let key = dir.path().join("server.key");
    std::fs::write(&cert, &cert_pem).unwrap();
    std::fs::write(&key, &key_pem).unwrap();
    let store = Arc::new(CertificateStore::load(&cert, &key).unwrap());
    let tls = Arc::new(server_config(store).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = oneshot::channel::<()>();
    let router = harness.router();
    let task = tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        serve(listener, tls, router, shutdown, options).await;
    });
    Server {
        port,
        cert_pem,
        stop: Some(stop),
        task,
        _harness: harness,
        _dir: dir,
    }
}

fn client_config(cert_pem: &str, alpn: &[&[u8]]) -> rustls::ClientConfig {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    config
}

/// Opens a TLS connection to the server with the given ALPN protocols.
async fn tls_connect(
    server: &Server,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(client_config(&server.cert_pem, alpn)));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await.unwrap()
}

/// Reads until the server closes the connection and returns what it sent,
/// failing the test if it stays open for 20 s.
async fn read_until_closed(
    stream: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(len) => received.extend_from_slice(&chunk[..len]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("server kept the idle connection open");
    received
}

fn short_idle() -> ServeOptions {
    ServeOptions {
        idle_timeout: Duration::from_secs(1),
        ..ServeOptions::default()
    }
}

#[tokio::test]
async fn silent_connection_is_closed() {
    let server = start_server_with(short_idle()).await;
    let mut stream = tls_connect(&server, &[b"http/1.1"]).await;
    let received = read_until_closed(&mut stream).await;
    assert!(received.is_empty(), "{received:?}");
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed() {
    use tokio::io::AsyncWriteExt;
    let server = start_server_with(short_idle()).await;
    let mut stream = tls_connect(&server, &[b"http/1.1"]).await;
    stream
        .write_all(b"GET /v1/status HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let received = String::from_utf8_lossy(&read_until_closed(&mut stream).await).into_owned();
    assert!(received.starts_with("HTTP/1.1 200"), "{received}");
    assert!(received.ends_with(r#"{"state":"sealed"}"#), "{received}");
}

#[tokio::test]
async fn idle_http2_connection_is_closed() {
    use tokio::io::AsyncWriteExt;
    let server = start_server_with(short_idle()).await;
    let mut stream = tls_connect(&server, &[b"h2"]).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    // The connection preface, then an empty SETTINGS frame.
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let received = read_until_closed(&mut stream).await;
    // The server's own SETTINGS frame (type 4) comes first.
    assert_eq!(received.get(3), Some(&4), "{received:?}");
}

#[tokio::test]
async fn connection_limit_holds_back_handshakes() {
    let server = start_server_with(ServeOptions {
        max_connections: 1,
        ..ServeOptions::default()
    })
    .await;
    let first = tls_connect(&server, &[b"http/1.1"]).await;
    let second = tokio::spawn({
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(
            &server.cert_pem,
            &[b"http/1.1"],
        )));
        let port = server.port;
        async move {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            connector.connect(name, tcp).await
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!second.is_finished(), "second handshake done at the limit");
    drop(first);
    let second = tokio::time::timeout(Duration::from_secs(20), second)
        .await
        .expect("second handshake never finished")
        .unwrap();
    assert!(second.is_ok(), "second handshake failed");
}

fn client(
    cert_pem: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> reqwest::Client {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

#[tokio::test]
async fn tls13_client_gets_http2() {
    let server = start_server().await;
    let client = client(&server.cert_pem, &[&rustls::version::TLS13]);
    let response = client
        .get(format!("https://localhost:{}/v1/status", server.port))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert!(response.headers().contains_key("x-request-id"));
    assert_eq!(response.text().await.unwrap(), r#"{"state":"sealed"}"#);
}

#[tokio::test]
async fn tls12_client_is_served() {
    let server = start_server().await;
    let client = client(&server.cert_pem, &[&rustls::version::TLS12]);
    let response = client
        .get(format!("https://localhost:{}/v1/status", server.port))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
}

#[tokio::test]
async fn tls11_handshake_is_refused() {
    let server = start_server().await;
    let port = server.port;
    let output = tokio::task::spawn_blocking(move || {
        Command::new("openssl")
            .args(["s_client", "-tls1_1", "-connect"])
            .arg(format!("127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .output()
            .expect("run openssl s_client")
    })
    .await
    .unwrap();
    assert!(!output.status.success(), "TLS 1.1 handshake succeeded");
}

#[tokio::test]
async fn failed_handshake_leaves_server_serving() {
    let server = start_server().await;
    let port = server.port;
    tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stream, &mut rest);
    })
    .await
    .unwrap();
    let client = client(&server.cert_pem, &[&rustls::version::TLS13]);
    let response = client
        .get(format!("https://localhost:{port}/v1/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
}

#[tokio::test]
async fn shutdown_stops_accepting() {
    let mut server = start_server().await;
    server.stop.take().unwrap().send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(20), &mut server.task)
        .await
        .expect("serve returned after shutdown")
        .unwrap();
    let refused = tokio::net::TcpStream::connect(("127.0.0.1", server.port)).await;
    assert!(refused.is_err(), "listener still open");
}

fn write_config(
    dir: &Path,
    listen: &str,
    cert: &Path,
    key: &Path,
    keyd_socket: &Path,
) -> std::path::PathBuf {
    let config = dir.join("metacrypt.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten_addr = \"{listen}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n\n\
             [frontd]\nkeyd_socket = \"{}\"\n\n\
             [mcias]\nserver_url = \"https://127.0.0.1:1\"\nca_cert = \"{}\"\n\n\
             [log]\nlevel = \"debug\"\n",
            cert.display(),
            key.display(),
            keyd_socket.display(),
            cert.display(),
        ),
    )
    .unwrap();
    config
}

fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_metacrypt-frontd"))
}

#[test]
fn binary_rejects_cert_without_pem() {
    let dir = tempfile::tempdir().unwrap();
    let (_, key_pem) = localhost_certificate();
    let cert = dir.path().join("server.crt");
    let key = dir.path().join("server.key");
    std::fs::write(&cert, "this is not PEM\n").unwrap();
    std::fs::write(&key, key_pem).unwrap();
    let config = write_config(
        dir.path(),
        "127.0.0.1:0",
        &cert,
        &key,
        &dir.path().join("k.sock"),
    );
    let output = binary().arg("--config").arg(&config).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let expected = format!(
        "server: tls: failed to find any PEM data in {}",
        cert.display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
}

#[test]
fn binary_names_missing_config_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("metacrypt.toml");
    std::fs::write(&config, "[mcias]\nserver_url = \"https://127.0.0.1:1\"\n").unwrap();
    let output = binary().arg("--config").arg(&config).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("config: server.tls_cert is required"),
        "{stderr}"
    );
}

/// Polls `GET /v1/status` until the server responds or the deadline passes.
async fn wait_for_status(client: &reqwest::Client, url: &str) -> reqwest::Response {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(response) = client.get(url).send().await {
            return response;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "frontd never answered {url}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
    for _ in 0..600 {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("frontd did not exit after SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serves_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let keyd = KeydDouble::start(dir.path(), SealState::Sealed, canned());
    let (cert_pem, key_pem) = localhost_certificate();
    let cert = dir.path().join("server.crt");
    let key = dir.path().join("server.key");
    std::fs::write(&cert, &cert_pem).unwrap();
    std::fs::write(&key, &key_pem).unwrap();
    let port = free_port();
    let config = write_config(
        dir.path(),
        &format!("127.0.0.1:{port}"),
        &cert,
        &key,
        &keyd.socket,
    );
    let log = std::fs::File::create(dir.path().join("frontd.log")).unwrap();
    let mut child = binary()
        .arg("--config")
        .arg(&config)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();

    let client = client(
        &cert_pem,
        &[&rustls::version::TLS13, &rustls::version::TLS12],
    );
    let url = format!("https://localhost:{port}/v1/status");
    let mut response = wait_for_status(&client, &url).await;
    // The pool may still be connecting to keyd on the first response.
    while response.status().as_u16() == 503 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        response = wait_for_status(&client, &url).await;
    }
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.text().await.unwrap(), r#"{"state":"sealed"}"#);

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || wait_for_exit(&mut child))
        .await
        .unwrap();
    assert!(status.success(), "exit status {status}");

    let logs = std::fs::read_to_string(dir.path().join("frontd.log")).unwrap();
    let access = logs
        .lines()
        .find(|line| line.contains("metacrypt_frontd::access"))
        .unwrap_or_else(|| panic!("no access log line in:\n{logs}"));
    let entry: serde_json::Value = serde_json::from_str(access).unwrap();
    assert_eq!(entry["path"], "/v1/status");
    assert_eq!(entry["method"], "GET");
    let client = entry["client"].as_str().unwrap_or_default();
    assert!(client.starts_with("127.0.0.1:"), "{entry}");
    assert!(entry["request_id"].is_string(), "{entry}");
    assert!(entry["duration_ms"].is_u64(), "{entry}");
    assert!(logs.contains("shutting down"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_takes_socket_from_systemd() {
    let dir = tempfile::tempdir().unwrap();
    let keyd = KeydDouble::start(dir.path(), SealState::Unsealed, canned());
    let (cert_pem, key_pem) = localhost_certificate();
    let cert = dir.path().join("server.crt");
    let key = dir.path().join("server.key");
    std::fs::write(&cert, &cert_pem).unwrap();
    std::fs::write(&key, &key_pem).unwrap();
    let port = free_port();
    // listen_addr names a port that is not used: the socket from
    // systemd-socket-activate must win.
    let config = write_config(dir.path(), "127.0.0.1:1", &cert, &key, &keyd.socket);
    let mut child = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(format!("127.0.0.1:{port}"))
        .arg(env!("CARGO_BIN_EXE_metacrypt-frontd"))
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let client = client(&cert_pem, &[&rustls::version::TLS13]);
    let url = format!("https://localhost:{port}/v1/status");
    let mut response = wait_for_status(&client, &url).await;
    while response.status().as_u16() == 503 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        response = wait_for_status(&client, &url).await;
    }
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.text().await.unwrap(), r#"{"state":"unsealed"}"#);

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = tokio::task::spawn_blocking(move || wait_for_exit(&mut child))
        .await
        .unwrap();
    assert!(status.success(), "exit status {status}");
}

/// Sends one request with the system's curl over HTTP/2 and returns the
/// status code and the body, or curl's error output when it fails.
fn curl_http2(
    port: u16,
    cert: &Path,
    path: &str,
    content_type: &str,
    body: &str,
) -> Result<(u16, String), String> {
    let output = Command::new("curl")
        .args(["--silent", "--show-error", "--http2", "--noproxy", "*"])
        .arg("--resolve")
        .arg(format!("localhost:{port}:127.0.0.1"))
        .arg("--cacert")
        .arg(cert)
        .args(["--request", "POST", "--header"])
        .arg(format!("content-type: {content_type}"))
        .arg("--data-binary")
        .arg(body)
        .args(["--write-out", "\n%{http_code}"])
        .arg(format!("https://localhost:{port}{path}"))
        .output()
        .expect("run curl");
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = stdout
        .rsplit_once('\n')
        .ok_or_else(|| format!("no status line in {stdout:?}"))?;
    let code = code
        .parse()
        .map_err(|_| format!("invalid status {code:?}"))?;
    Ok((code, body.to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_http2_gets_early_errors() {
    let dir = tempfile::tempdir().unwrap();
    let keyd = KeydDouble::start(dir.path(), SealState::Sealed, canned());
    let (cert_pem, key_pem) = localhost_certificate();
    let cert = dir.path().join("server.crt");
    let key = dir.path().join("server.key");
    std::fs::write(&cert, &cert_pem).unwrap();
    std::fs::write(&key, &key_pem).unwrap();
    let port = free_port();
    let config = write_config(
        dir.path(),
        &format!("127.0.0.1:{port}"),
        &cert,
        &key,
        &keyd.socket,
    );
    let mut child = binary()
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = client(&cert_pem, &[&rustls::version::TLS13]);
    let url = format!("https://localhost:{port}/v1/status");
    let mut response = wait_for_status(&client, &url).await;
    while response.status().as_u16() == 503 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        response = wait_for_status(&client, &url).await;
    }

    let body = format!(r#"{{"password": "{}"}}"#, "p".repeat(2000));
    // Over the 16 KiB limit of the routes read before authentication.
    let oversized = format!(r#"{{"password": "{}"}}"#, "p".repeat(20 * 1024));
    let cases = [
        ("/v1/seal", "application/json", 503, &body),
        ("/v1/unseal", "text/plain", 415, &body),
        ("/v1/unseal", "application/json", 413, &oversized),
        ("/v1/mounts", "application/json", 503, &body),
        ("/v1/nothing", "application/json", 404, &body),
    ]
    .map(|(path, content_type, expected, body)| (path, content_type, expected, body.clone()));
    let results = tokio::task::spawn_blocking(move || {
        let mut results = Vec::new();
        for (path, content_type, expected, body) in cases {
            for _ in 0..20 {
                let result = curl_http2(port, &cert, path, content_type, &body);
                results.push((path, expected, result));
            }
        }
        results
    })
    .await
    .unwrap();
    let _ = child.kill();
    let _ = child.wait();

    for (path, expected, result) in results {
        let (code, body) = result.unwrap_or_else(|error| panic!("{path}: curl failed: {error}"));
        assert_eq!(code, expected, "{path}: {body}");
        let json: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|error| panic!("{path}: {body:?}: {error}"));
        assert!(json["error"].is_string(), "{path}: {body}");
    }
}
