//! A test harness that runs the real daemons as processes.
//!
//! [`Cluster::start`] creates a temporary directory with TLS material made by
//! the `openssl` command, a development MCIAS user file, and one config file,
//! then starts `metacrypt-mcias-dev`, `metacrypt-keyd` and
//! `metacrypt-frontd` from the build's target directory. Tests drive keyd
//! over its admin socket with the real protocol and frontd over HTTPS with a
//! client that trusts only the generated TLS certificate. Every process is
//! stopped by its pid when the cluster is dropped.
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use metacrypt_protocol::{
    Caller, ClientMessage, ErrorBody, Hello, PROTOCOL_VERSION, Request, RequestBody, ResponseBody,
    SealState, ServerMessage, SocketRole, read_frame, write_frame,
};
use serde_json::Value;

/// Password of the admin user in the development MCIAS.
pub const ADMIN_USER: &str = "alice";
pub const ADMIN_PASSWORD: &str = "alice-password-for-tests";
/// A user without the admin role.
pub const USER: &str = "bob";
pub const USER_PASSWORD: &str = "bob-password-for-tests";
/// The seal password every test initializes with.
pub const SEAL_PASSWORD: &str = "correct horse battery staple";

/// Directory holding the built binaries: `METACRYPT_BIN_DIR`, or the
/// profile directory that contains this test executable.
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("METACRYPT_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test binary>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable inside target/<profile>/deps");
    profile_dir.to_path_buf()
}

/// Path of one of the workspace's binaries; panics with the build command
/// when it is missing.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} not found: build the binaries first with `cargo build --workspace --bins`",
        path.display()
    );
    path
}

/// Returns a loopback TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// Runs a command, panicking with its output when it fails.
pub fn run(command: &mut Command) -> String {
    let output = command.output().expect("spawn command");
    assert!(
        output.status.success(),
        "{command:?} failed with {}:\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Writes a self-signed P-256 certificate for `localhost`, 127.0.0.1 and ::1.
pub fn self_signed_tls(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    run(Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .arg("ec_paramgen_curve:P-256")
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .args(["-days", "2", "-nodes", "-subj"])
        .arg(format!("/CN={name}"))
        .args([
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1",
            // openssl marks a self-signed certificate CA:TRUE by default, and
            // rustls rejects a CA certificate as a server certificate.
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ]));
    (cert, key)
}

fn hash_password(password: &str) -> String {
    let mut child = Command::new(binary("metacrypt-mcias-dev"))
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn metacrypt-mcias-dev hash-password");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{password}\n").as_bytes())
        .expect("write password");
    let output = child.wait_with_output().expect("hash-password output");
    assert!(
        output.status.success(),
        "hash-password failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("utf-8 hash")
        .trim()
        .to_owned()
}

/// One started daemon.
struct Daemon {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn spawn(name: &'static str, command: &mut Command, log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).expect("create log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|err| panic!("failed to start {name}: {err}"));
        Self { name, child, log }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends SIGTERM, waits up to 10 s, then SIGKILL.
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        if let Some(status) = self.exited() {
            return Some(status);
        }
        let pid = nix::unistd::Pid::from_raw(self.pid());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        self.child.wait().ok()
    }

    fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(40);
        lines[start..].join("\n")
    }
}

/// mcias-dev, keyd and frontd running on a temporary directory.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub admin_socket: PathBuf,
    pub front_socket: PathBuf,
    pub database: PathBuf,
    pub tls_cert: PathBuf,
    pub addr: SocketAddr,
    mcias: Option<Daemon>,
    keyd: Option<Daemon>,
    frontd: Option<Daemon>,
    http: reqwest::blocking::Client,
}

impl Cluster {
    /// Starts all three processes and waits until frontd responds.
    pub fn start() -> Self {
        Self::start_with_keyd_config("")
    }

    /// Starts like [`Cluster::start`], with `keyd_lines` added to the
    /// `[keyd]` section of the config file.
    pub fn start_with_keyd_config(keyd_lines: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("metacrypt-test-")
            .tempdir()
            .expect("temp dir");
        let root = dir.path().to_path_buf();
        let (tls_cert, tls_key) = self_signed_tls(&root, "frontd");
        let (mcias_cert, mcias_key) = self_signed_tls(&root, "mcias");

        let users = root.join("users.toml");
        std::fs::write(
            &users,
            format!(
                "[[users]]\nusername = \"{ADMIN_USER}\"\npassword_hash = \"{}\"\nroles = [\"admin\"]\n\n\
                 [[users]]\nusername = \"{USER}\"\npassword_hash = \"{}\"\nroles = [\"ops\"]\n",
                hash_password(ADMIN_PASSWORD),
                hash_password(USER_PASSWORD)
            ),
        )
        .expect("write users file");

        let port_file = root.join("mcias.port");
        let mcias = Daemon::spawn(
            "metacrypt-mcias-dev",
            Command::new(binary("metacrypt-mcias-dev"))
                .arg("--listen")
                .arg("127.0.0.1:0")
                .arg("--port-file")
                .arg(&port_file)
                .arg("--tls-cert")
                .arg(&mcias_cert)
                .arg("--tls-key")
                .arg(&mcias_key)
                .arg("--users")
                .arg(&users),
            root.join("mcias.log"),
        );
        let mcias_port = wait_for(Duration::from_secs(20), || {
            std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|text| text.trim().parse::<u16>().ok())
        })
        .unwrap_or_else(|| panic!("mcias-dev did not start:\n{}", mcias.log_tail()));

        let addr: SocketAddr = (Ipv4Addr::LOCALHOST, free_port()).into();
        let run_dir = root.join("run");
        let admin_socket = run_dir.join("admin.sock");
        let front_socket = run_dir.join("front.sock");
        let database = root.join("metacrypt.db");
        let config = root.join("metacrypt.toml");
        std::fs::write(
            &config,
            format!(
                r#"[server]
listen_addr = "{addr}"
tls_cert = "{tls_cert}"
tls_key = "{tls_key}"

[database]
path = "{database}"

[keyd]
front_socket = "{front}"
admin_socket = "{admin}"
sandbox = "best-effort"
{keyd_lines}

[mcias]
server_url = "https://127.0.0.1:{mcias_port}"
ca_cert = "{mcias_cert}"

[log]
level = "debug"
"#,
                tls_cert = tls_cert.display(),
                tls_key = tls_key.display(),
                database = database.display(),
                front = front_socket.display(),
                admin = admin_socket.display(),
                mcias_cert = mcias_cert.display(),
            ),
        )
        .expect("write config");

        let http = reqwest::blocking::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(
                &std::fs::read(&tls_cert).expect("read cert"),
            )
            .expect("parse cert")])
            .timeout(Duration::from_secs(60))
            .build()
            .expect("http client");

        let mut cluster = Cluster {
            dir,
            config,
            admin_socket,
            front_socket,
            database,
            tls_cert,
            addr,
            mcias: Some(mcias),
            keyd: None,
            frontd: None,
            http,
        };
        cluster.start_keyd();
        cluster.start_frontd();
        cluster
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts keyd and waits until its admin socket replies to `Hello`.
    pub fn start_keyd(&mut self) {
        let log = self.path(&format!("keyd-{}.log", now_millis()));
        let keyd = Daemon::spawn(
            "metacrypt-keyd",
            Command::new(binary("metacrypt-keyd"))
                .arg("--config")
                .arg(&self.config),
            log,
        );
        self.keyd = Some(keyd);
        let ready = wait_for(Duration::from_secs(30), || {
            if let Some(status) = self.keyd.as_mut().and_then(Daemon::exited) {
                panic!(
                    "keyd exited with {status}:\n{}",
                    self.keyd.as_ref().map(Daemon::log_tail).unwrap_or_default()
                );
            }
            AdminClient::connect(&self.admin_socket).ok()
        });
        assert!(
            ready.is_some(),
            "keyd did not open its admin socket:\n{}",
            self.keyd_log()
        );
    }

    /// Starts frontd and waits until `GET /v1/status` returns 200.
    pub fn start_frontd(&mut self) {
        let log = self.path(&format!("frontd-{}.log", now_millis()));
        let frontd = Daemon::spawn(
            "metacrypt-frontd",
            Command::new(binary("metacrypt-frontd"))
                .arg("--config")
                .arg(&self.config),
            log,
        );
        self.frontd = Some(frontd);
        let ready = wait_for(Duration::from_secs(30), || {
            if let Some(status) = self.frontd.as_mut().and_then(Daemon::exited) {
                panic!(
                    "frontd exited with {status}:\n{}",
                    self.frontd
                        .as_ref()
                        .map(Daemon::log_tail)
                        .unwrap_or_default()
                );
            }
            let response = self.get("/v1/status").ok()?;
            (response.status().as_u16() == 200).then_some(())
        });
        assert!(
            ready.is_some(),
            "frontd did not answer /v1/status:\n{}",
            self.frontd
                .as_ref()
                .map(Daemon::log_tail)
                .unwrap_or_default()
        );
    }

    /// Stops keyd with SIGTERM and returns its exit status.
    pub fn stop_keyd(&mut self) -> Option<std::process::ExitStatus> {
        self.keyd.as_mut().and_then(Daemon::stop)
    }

    /// Kills keyd with SIGKILL, as a crash would.
    pub fn kill_keyd(&mut self) {
        if let Some(keyd) = self.keyd.as_mut() {
            keyd.kill_hard();
        }
    }

    pub fn stop_mcias(&mut self) {
        if let Some(mcias) = self.mcias.as_mut() {
            mcias.stop();
        }
    }

    pub fn keyd_pid(&self) -> Option<i32> {
        self.keyd.as_ref().map(Daemon::pid)
    }

    pub fn frontd_pid(&self) -> Option<i32> {
        self.frontd.as_ref().map(Daemon::pid)
    }

    /// Returns every log line keyd has written so far, across restarts.
    pub fn keyd_log(&self) -> String {
        self.logs_with_prefix("keyd-")
    }

    pub fn frontd_log(&self) -> String {
        self.logs_with_prefix("frontd-")
    }

    fn logs_with_prefix(&self, prefix: &str) -> String {
        let mut names: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|entry| entry.path())
                    .filter(|path| {
                        path.file_name()
                            .and_then(|name| name.to_str())
                            .is_some_and(|name| name.starts_with(prefix) && name.ends_with(".log"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
            .iter()
            .map(|path| std::fs::read_to_string(path).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("")
    }

    pub fn admin(&self) -> AdminClient {
        AdminClient::connect(&self.admin_socket).expect("connect to the admin socket")
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    pub fn http(&self) -> &reqwest::blocking::Client {
        &self.http
    }

    pub fn get(&self, path: &str) -> reqwest::Result<reqwest::blocking::Response> {
        self.http.get(self.url(path)).send()
    }

    /// Sends a request and returns the status and the body parsed as JSON
    /// (`Value::Null` for an empty or non-JSON body).
    pub fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().expect("HTTP request");
        let status = response.status().as_u16();
        let text = response.text().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, token, Some(body))
    }

    pub fn get_json(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, token, None)
    }

    pub fn state(&self) -> String {
        let (status, body) = self.get_json("/v1/status", None);
        assert_eq!(status, 200, "status: {body}");
        body["state"].as_str().unwrap_or_default().to_owned()
    }

    /// Logs in through frontd and returns the token.
    pub fn login(&self, username: &str, password: &str) -> String {
        let (status, body) = self.post(
            "/v1/auth/login",
            None,
            serde_json::json!({"username": username, "password": password}),
        );
        assert_eq!(status, 200, "login as {username}: {body}");
        body["token"]
            .as_str()
            .expect("token in login reply")
            .to_owned()
    }

    /// Waits until frontd reports `state`, because frontd learns of state
    /// changes made on the admin socket through keyd's notification.
    pub fn wait_for_state(&self, state: &str) {
        // frontd answers 503 `keyd unavailable` while it reconnects after a
        // keyd restart, so only a 200 with the expected state ends the wait.
        let seen = wait_for(Duration::from_secs(15), || {
            let (status, body) = self.get_json("/v1/status", None);
            (status == 200 && body["state"] == state).then_some(())
        });
        assert!(seen.is_some(), "frontd never reported state {state}");
    }

    /// Initializes through the admin socket and waits until frontd reports
    /// the unsealed state.
    pub fn init(&self) {
        let state = self
            .admin()
            .request(RequestBody::Init {
                password: SEAL_PASSWORD.into(),
            })
            .expect("init");
        assert_eq!(state, ResponseBody::State(SealState::Unsealed));
        self.wait_for_state("unsealed");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for daemon in [
            self.frontd.as_mut(),
            self.keyd.as_mut(),
            self.mcias.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            if daemon.stop().is_none() {
                eprintln!(
                    "{} (pid {}) could not be stopped",
                    daemon.name,
                    daemon.pid()
                );
            }
        }
        if std::thread::panicking() {
            eprintln!("--- keyd log ---\n{}", tail(&self.keyd_log(), 60));
            eprintln!("--- frontd log ---\n{}", tail(&self.frontd_log(), 60));
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn now_millis() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis())
        .unwrap_or_default()
}

/// Polls `probe` every 50 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A blocking client of keyd's admin socket.
pub struct AdminClient {
    stream: UnixStream,
    next_id: u64,
    pub state: SealState,
}

impl AdminClient {
    pub fn connect(path: &Path) -> Result<Self, String> {
        Self::connect_as(path, SocketRole::Admin)
    }

    /// Connects with `role` in the hello, so tests can check that keyd
    /// rejects a role that does not match the socket.
    pub fn connect_as(path: &Path, role: SocketRole) -> Result<Self, String> {
        let mut stream = UnixStream::connect(path).map_err(|err| err.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|err| err.to_string())?;
        write_frame(
            &mut stream,
            &ClientMessage::Hello(Hello {
                version: PROTOCOL_VERSION,
                role,
                client: "metacrypt-tests".to_owned(),
            }),
        )
        .map_err(|err| err.to_string())?;
        match read_frame::<_, ServerMessage>(&mut stream).map_err(|err| err.to_string())? {
            ServerMessage::Hello(Ok(reply)) => Ok(Self {
                stream,
                next_id: 1,
                state: reply.state,
            }),
            ServerMessage::Hello(Err(err)) => Err(err.message),
            other => Err(format!("unexpected first message {other:?}")),
        }
    }

    /// Sends one request and waits for its reply, skipping state
    /// notifications.
    pub fn request(&mut self, body: RequestBody) -> Result<ResponseBody, ErrorBody> {
        let trace_id = format!("test-{}", self.next_id);
        self.request_as(&trace_id, None, None, body)
    }

    /// Sends one request with the fields that frontd fills in for a REST
    /// request, and waits for its reply.
    pub fn request_as(
        &mut self,
        trace_id: &str,
        caller: Option<Caller>,
        remote_addr: Option<String>,
        body: RequestBody,
    ) -> Result<ResponseBody, ErrorBody> {
        let id = self.next_id;
        self.next_id += 1;
        write_frame(
            &mut self.stream,
            &ClientMessage::Request(Request {
                id,
                trace_id: trace_id.to_owned(),
                remote_addr,
                caller,
                body,
            }),
        )
        .map_err(|err| ErrorBody::internal(err.to_string()))?;
        loop {
            match read_frame::<_, ServerMessage>(&mut self.stream)
                .map_err(|err| ErrorBody::internal(err.to_string()))?
            {
                ServerMessage::Reply(reply) if reply.id == id => return reply.result,
                ServerMessage::StateChanged(state) => self.state = state,
                other => {
                    return Err(ErrorBody::internal(format!("unexpected message {other:?}")));
                }
            }
        }
    }
}

/// Reads `PEM` blocks of type CERTIFICATE from a string into DER.
pub fn pem_certificates(pem: &str) -> Vec<Vec<u8>> {
    let mut ders = Vec::new();
    let mut rest = pem;
    while let Ok((remaining, block)) = x509_parser::pem::parse_x509_pem(rest.as_bytes()) {
        ders.push(block.contents);
        let consumed = rest.len() - remaining.len();
        if consumed == 0 {
            break;
        }
        rest = &rest[consumed..];
    }
    ders
}

/// Starts `openssl s_server` with `cert`/`key` and the `chain` file on a
/// free loopback port, waits until it accepts, and returns the child and
/// the port.
pub fn openssl_server(cert: &Path, key: &Path, chain: &Path) -> (Child, u16) {
    let port = free_port();
    let mut child = Command::new("openssl")
        .args(["s_server", "-quiet", "-www", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(cert)
        .arg("-key")
        .arg(key)
        .arg("-cert_chain")
        .arg(chain)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn openssl s_server");
    let up = wait_for(Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", port)).ok()
    });
    if up.is_none() {
        let _ = child.kill();
        let mut stderr = String::new();
        if let Some(err) = child.stderr.take() {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                stderr.push_str(&line);
                stderr.push('\n');
            }
        }
        panic!("openssl s_server did not start: {stderr}");
    }
    (child, port)
}
