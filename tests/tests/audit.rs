//! The audit log of the real daemons: its lines for REST and admin socket
//! requests, the client address of REST lines, its file mode, and failing
//! closed when the file is removed or its file system is full.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use metacrypt_protocol::{Caller, RequestBody, ResponseBody, SealState, SocketRole};
use metacrypt_tests::{
    ADMIN_PASSWORD, ADMIN_USER, AdminClient, Cluster, SEAL_PASSWORD, USER, USER_PASSWORD,
};
use serde_json::{Value, json};

fn audit_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .expect("read the audit log")
        .lines()
        .map(|line| serde_json::from_str(line).expect("audit line is JSON"))
        .collect()
}

fn find<'a>(lines: &'a [Value], operation: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|line| line["operation"] == operation)
        .collect()
}

fn mount(cluster: &Cluster, token: &str, name: &str) -> (u16, Value) {
    cluster.post(
        "/v1/mounts",
        Some(token),
        json!({"name": name, "type": "ca", "config": {}}),
    )
}

#[test]
fn requests_are_audited_without_secrets() {
    let cluster = Cluster::start();
    cluster.init();
    let admin = cluster.login(ADMIN_USER, ADMIN_PASSWORD);
    let user = cluster.login(USER, USER_PASSWORD);
    let (status, body) = mount(&cluster, &admin, "pki");
    assert_eq!(status, 200, "{body}");
    let (status, body) = cluster.post("/v1/pki/pki/issuers", Some(&admin), json!({"name": "web"}));
    assert_eq!(status, 200, "{body}");
    let (status, body) = cluster.post(
        "/v1/pki/pki/issue",
        Some(&admin),
        json!({"issuer": "web", "profile": "server", "common_name": "a.example.com"}),
    );
    assert_eq!(status, 200, "{body}");
    let serial = body["serial_number"].as_str().expect("serial").to_owned();
    let (status, body) = cluster.post(
        "/v1/pki/pki/issue",
        Some(&user),
        json!({"issuer": "web", "profile": "server", "common_name": "b.example.com"}),
    );
    assert_eq!(status, 403, "{body}");
    // Rejected by frontd before it reaches keyd: an uppercase mount name.
    let (status, body) = mount(&cluster, &admin, "Upper");
    assert_eq!(status, 400, "{body}");
    let upper_error = body["error"].clone();
    let (status, body) = cluster.post("/v1/seal", Some(&admin), json!({}));
    assert_eq!(status, 200, "{body}");
    let (status, body) = cluster.post("/v1/unseal", None, json!({"password": "wrong password!"}));
    assert_eq!(status, 401, "{body}");

    let path = cluster.path("audit.log");
    let mode = std::fs::metadata(&path)
        .expect("audit log exists")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let text = std::fs::read_to_string(&path).expect("read the audit log");
    for secret in [
        admin.as_str(),
        user.as_str(),
        SEAL_PASSWORD,
        ADMIN_PASSWORD,
        USER_PASSWORD,
        "wrong password!",
    ] {
        assert!(!text.contains(secret), "the audit log contains a secret");
    }
    let lines = audit_lines(&path);
    for line in &lines {
        for field in [
            "time",
            "request_id",
            "source",
            "operation",
            "outcome",
            "status",
        ] {
            assert!(line.get(field).is_some(), "{field} missing in {line}");
        }
    }

    let init = find(&lines, "init");
    assert_eq!(init.len(), 1, "{lines:?}");
    assert_eq!(init[0]["source"]["kind"], "socket");
    assert_eq!(init[0]["outcome"], "ok");
    assert_eq!(init[0]["caller"], Value::Null);
    assert!(
        init[0]["source"].get("remote_addr").is_none(),
        "no remote address on the admin socket: {}",
        init[0]
    );

    let issued = find(&lines, "issue");
    assert_eq!(issued.len(), 2, "{issued:?}");
    assert_eq!(issued[0]["source"]["kind"], "rest");
    assert_eq!(issued[0]["caller"]["username"], ADMIN_USER);
    assert_eq!(issued[0]["caller"]["roles"], json!(["admin"]));
    assert_eq!(issued[0]["resource"], "pki/issue/web");
    assert_eq!(issued[0]["status"], 200);
    assert_eq!(issued[0]["serial"], serial.as_str());
    for line in &issued {
        let address: SocketAddr = line["source"]["remote_addr"]
            .as_str()
            .expect("remote_addr of a REST line")
            .parse()
            .expect("remote_addr is a socket address");
        assert_eq!(address.ip(), Ipv4Addr::LOCALHOST);
        assert_ne!(address.port(), 0);
    }
    assert_eq!(issued[1]["caller"]["username"], USER);
    assert_eq!(issued[1]["outcome"], "denied");
    assert_eq!(issued[1]["status"], 403);
    assert_eq!(
        issued[1]["reason"],
        format!("no rule allows pki/issue/web for {USER}")
    );
    assert_eq!(issued[1]["serial"], Value::Null);

    let rejected = find(&lines, "POST /v1/mounts");
    assert_eq!(rejected.len(), 1, "{lines:?}");
    assert_eq!(rejected[0]["outcome"], "rejected");
    assert_eq!(rejected[0]["status"], 400);
    assert_eq!(rejected[0]["caller"]["username"], ADMIN_USER);
    assert_eq!(rejected[0]["reason"], upper_error);

    // One token, one session id; another token, another id.
    let admin_session = issued[0]["session"].as_str().expect("session id");
    assert_eq!(admin_session.len(), 32, "{admin_session}");
    assert!(admin_session.bytes().all(|byte| byte.is_ascii_hexdigit()));
    let mounted = find(&lines, "mount");
    assert_eq!(mounted[0]["session"], admin_session);
    let user_session = issued[1]["session"].as_str().expect("session id");
    assert_ne!(user_session, admin_session);
    assert_eq!(init[0]["session"], Value::Null);

    let seal = find(&lines, "seal");
    assert_eq!(seal.len(), 1, "{lines:?}");
    assert_eq!(seal[0]["caller"]["username"], ADMIN_USER);
    let unseal = find(&lines, "unseal");
    assert_eq!(unseal.len(), 1, "{lines:?}");
    assert_eq!(unseal[0]["outcome"], "invalid_password");
    assert_eq!(unseal[0]["status"], 401);
    assert_eq!(unseal[0]["source"]["kind"], "rest");
}

/// The client address in a REST line is the TCP peer that frontd saw,
/// which curl reports with `--write-out`, and forwarding headers that a
/// client sets are ignored.
#[test]
fn rest_line_records_client_address() {
    let cluster = Cluster::start();
    cluster.init();
    let admin = cluster.login(ADMIN_USER, ADMIN_PASSWORD);
    let port = cluster.addr.port();
    let request_id = "remote-addr-check";
    let forged = "203.0.113.9";
    let output = Command::new("curl")
        .args(["--silent", "--show-error", "--output", "/dev/null"])
        .args(["--write-out", "%{http_code} %{local_ip} %{local_port}"])
        .arg("--cacert")
        .arg(&cluster.tls_cert)
        .arg("--resolve")
        .arg(format!("localhost:{port}:127.0.0.1"))
        .arg("--header")
        .arg(format!("Authorization: Bearer {admin}"))
        .arg("--header")
        .arg(format!("X-Request-Id: {request_id}"))
        .arg("--header")
        .arg(format!("X-Forwarded-For: {forged}"))
        .arg("--header")
        .arg(format!("Forwarded: for={forged}"))
        .arg(cluster.url("/v1/mounts"))
        .output()
        .expect("run curl");
    let written = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "curl failed: {written}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let fields: Vec<&str> = written.split(' ').collect();
    assert_eq!(fields.len(), 3, "curl wrote {written:?}");
    assert_eq!(fields[0], "200", "status");
    assert_eq!(fields[1], "127.0.0.1", "curl's local address");
    let local_port: u16 = fields[2].parse().expect("curl's local port");

    let path = cluster.path("audit.log");
    let lines = audit_lines(&path);
    let line = lines
        .iter()
        .find(|line| line["request_id"] == request_id)
        .unwrap_or_else(|| panic!("no line with request id {request_id}: {lines:?}"));
    assert_eq!(line["operation"], "list-mounts");
    assert_eq!(line["source"]["kind"], "rest");
    assert_eq!(
        line["source"]["remote_addr"],
        format!("127.0.0.1:{local_port}")
    );
    let text = std::fs::read_to_string(&path).expect("read the audit log");
    assert!(
        !text.contains(forged),
        "a forwarding header reached the log"
    );
}

/// Kills and reaps a frontd started by a test when the test ends.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// For a frontd whose IPv6 socket is bound to the IPv4-mapped loopback
/// address, the kernel reports IPv4 clients as `[::ffff:127.0.0.1]:PORT`,
/// as it does for a dual-stack listener on `[::]`. The audit line names them by their IPv4
/// address.
#[test]
fn mapped_ipv4_client_is_recorded_as_ipv4() {
    let cluster = Cluster::start();
    cluster.init();
    let admin = cluster.login(ADMIN_USER, ADMIN_PASSWORD);
    let port = metacrypt_tests::free_port();
    let log = std::fs::File::create(cluster.path("frontd-mapped.log")).expect("create log");
    let child = Command::new(metacrypt_tests::binary("metacrypt-frontd"))
        .arg("--config")
        .arg(&cluster.config)
        .env(
            "METACRYPT_SERVER_LISTEN_ADDR",
            format!("[::ffff:127.0.0.1]:{port}"),
        )
        .stdout(log.try_clone().expect("clone log"))
        .stderr(log)
        .spawn()
        .expect("start a second frontd");
    let _frontd = ChildGuard(child);

    let request_id = "mapped-ipv4-check";
    let curl = || {
        Command::new("curl")
            .args(["--silent", "--show-error", "--output", "/dev/null"])
            .args(["--write-out", "%{http_code} %{local_ip} %{local_port}"])
            .arg("--cacert")
            .arg(&cluster.tls_cert)
            .arg("--resolve")
            .arg(format!("localhost:{port}:127.0.0.1"))
            .arg("--header")
            .arg(format!("Authorization: Bearer {admin}"))
            .arg("--header")
            .arg(format!("X-Request-Id: {request_id}"))
            .arg(format!("https://localhost:{port}/v1/mounts"))
            .output()
            .expect("run curl")
    };
    let written = metacrypt_tests::wait_for(std::time::Duration::from_secs(30), || {
        let output = curl();
        let written = String::from_utf8_lossy(&output.stdout).into_owned();
        (output.status.success() && written.starts_with("200 ")).then_some(written)
    })
    .unwrap_or_else(|| {
        panic!(
            "the second frontd did not answer:\n{}",
            std::fs::read_to_string(cluster.path("frontd-mapped.log")).unwrap_or_default()
        )
    });
    let fields: Vec<&str> = written.split(' ').collect();
    assert_eq!(fields.len(), 3, "curl wrote {written:?}");
    assert_eq!(fields[1], "127.0.0.1", "curl's local address");
    let local_port: u16 = fields[2].parse().expect("curl's local port");

    let lines = audit_lines(&cluster.path("audit.log"));
    let line = lines
        .iter()
        .rfind(|line| line["request_id"] == request_id)
        .unwrap_or_else(|| panic!("no line with request id {request_id}: {lines:?}"));
    assert_eq!(line["operation"], "list-mounts");
    assert_eq!(
        line["source"]["remote_addr"],
        format!("127.0.0.1:{local_port}")
    );
}

/// keyd parses the remote address that frontd sends and records anything
/// that is not a socket address as `invalid`, without failing the request.
#[test]
fn invalid_remote_addr_is_recorded_as_invalid() {
    let cluster = Cluster::start();
    cluster.init();
    let mut front = AdminClient::connect_as(&cluster.front_socket, SocketRole::Front)
        .expect("connect to the front socket");
    let caller = Caller {
        username: ADMIN_USER.to_owned(),
        roles: vec!["admin".to_owned()],
        admin: true,
        session: None,
    };
    let long = "9".repeat(100_000);
    let cases = [
        (
            "addr-valid",
            Some("[0:0:0:0:0:0:0:1]:8443"),
            Some("[::1]:8443"),
        ),
        ("addr-text", Some("not an address"), Some("invalid")),
        ("addr-no-port", Some("127.0.0.1"), Some("invalid")),
        (
            "addr-control",
            Some("127.0.0.1:80\n{\"x\":1}"),
            Some("invalid"),
        ),
        ("addr-long", Some(long.as_str()), Some("invalid")),
        ("addr-none", None, None),
    ];
    for (trace_id, remote_addr, _) in &cases {
        let reply = front.request_as(
            trace_id,
            Some(caller.clone()),
            remote_addr.map(str::to_owned),
            RequestBody::ListMounts,
        );
        assert!(
            matches!(reply, Ok(ResponseBody::Mounts(_))),
            "{trace_id}: {reply:?}"
        );
    }

    let lines = audit_lines(&cluster.path("audit.log"));
    for (trace_id, _, expected) in cases {
        let line = lines
            .iter()
            .find(|line| line["request_id"] == trace_id)
            .unwrap_or_else(|| panic!("no line for {trace_id}: {lines:?}"));
        assert_eq!(line["outcome"], "ok", "{trace_id}");
        assert_eq!(
            line["source"].get("remote_addr").and_then(Value::as_str),
            expected,
            "{trace_id}: {line}"
        );
    }
}

#[test]
fn removed_audit_log_fails_closed() {
    let mut cluster = Cluster::start();
    cluster.init();
    let admin = cluster.login(ADMIN_USER, ADMIN_PASSWORD);
    let (status, body) = mount(&cluster, &admin, "pki");
    assert_eq!(status, 200, "{body}");
    let (status, body) = cluster.post("/v1/pki/pki/issuers", Some(&admin), json!({"name": "web"}));
    assert_eq!(status, 200, "{body}");
    let path = cluster.path("audit.log");

    std::fs::remove_file(&path).expect("remove the audit log");
    let (status, body) = mount(&cluster, &admin, "other");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "audit log unavailable");
    let (status, body) = cluster.post(
        "/v1/pki/pki/issue",
        Some(&admin),
        json!({"issuer": "web", "profile": "server", "common_name": "a.example.com"}),
    );
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "audit log unavailable");
    let error = cluster
        .admin()
        .request(RequestBody::Seal)
        .expect_err("seal without an audit log");
    assert_eq!(error.message, "audit log unavailable");
    assert_eq!(cluster.state(), "unsealed");

    // A restart opens a new audit file: nothing above changed anything.
    cluster.stop_keyd();
    cluster.start_keyd();
    cluster.wait_for_state("sealed");
    std::fs::remove_file(&path).expect("remove the new audit log");
    // Unseal still works without an audit log.
    let (status, body) = cluster.post("/v1/unseal", None, json!({"password": SEAL_PASSWORD}));
    assert_eq!(status, 200, "{body}");
    cluster.wait_for_state("unsealed");
    assert!(!path.exists());

    cluster.stop_keyd();
    cluster.start_keyd();
    let state = cluster
        .admin()
        .request(RequestBody::Unseal {
            password: SEAL_PASSWORD.into(),
        })
        .expect("unseal");
    assert_eq!(state, ResponseBody::State(SealState::Unsealed));
    cluster.wait_for_state("unsealed");
    let (status, body) = cluster.get_json("/v1/mounts", Some(&admin));
    assert_eq!(status, 200, "{body}");
    let names: Vec<&str> = body["mounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .filter_map(|mount| mount["name"].as_str())
        .collect();
    assert_eq!(names, ["pki"]);
    let (status, body) = cluster.get_json("/v1/pki/pki/certs", Some(&admin));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["certs"], json!([]));
}

/// A tmpfs mounted for one test and unmounted when dropped.
struct SmallFilesystem {
    dir: PathBuf,
}

impl SmallFilesystem {
    fn mount(dir: &Path, size: &str) -> Result<Self, String> {
        std::fs::create_dir_all(dir).expect("create the mount point");
        let output = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .map_err(|error| format!("failed to run mount: {error}"))?;
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).into_owned());
        }
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// Writes a file until the file system is full.
    fn fill(&self) -> PathBuf {
        let path = self.dir.join("filler");
        let mut file = std::fs::File::create(&path).expect("create the filler");
        let block = vec![0u8; 4096];
        while file.write_all(&block).is_ok() {}
        path
    }
}

impl Drop for SmallFilesystem {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

#[test]
fn full_audit_filesystem_fails_closed() {
    let mount_point = tempfile::Builder::new()
        .prefix("metacrypt-audit-")
        .tempdir()
        .expect("temp dir");
    // NOTE: mounting a tmpfs needs CAP_SYS_ADMIN. Without it this test
    // prints why on stderr and checks nothing, and only the removal test
    // above covers failing closed.
    let filesystem = match SmallFilesystem::mount(mount_point.path(), "1m") {
        Ok(filesystem) => filesystem,
        Err(error) => {
            eprintln!("skipping: cannot mount a tmpfs: {error}");
            return;
        }
    };
    let audit_path = mount_point.path().join("audit.log");
    let cluster =
        Cluster::start_with_keyd_config(&format!("audit_log = \"{}\"", audit_path.display()));
    cluster.init();
    let admin = cluster.login(ADMIN_USER, ADMIN_PASSWORD);
    let (status, body) = mount(&cluster, &admin, "pki");
    assert_eq!(status, 200, "{body}");

    let filler = filesystem.fill();
    let mut created = vec!["pki".to_owned()];
    let mut rejected = None;
    for number in 0..100 {
        let name = format!("m{number}");
        let (status, body) = mount(&cluster, &admin, &name);
        match status {
            200 => created.push(name),
            503 => {
                assert_eq!(body["error"], "audit log unavailable");
                rejected = Some(name);
                break;
            }
            other => panic!("mount {name}: {other} {body}"),
        }
    }
    let rejected = rejected.expect("a full file system never failed a request");

    std::fs::remove_file(&filler).expect("remove the filler");
    let (status, body) = cluster.get_json("/v1/mounts", Some(&admin));
    assert_eq!(status, 200, "{body}");
    let mut names: Vec<String> = body["mounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .filter_map(|mount| mount["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    created.sort();
    assert_eq!(names, created);
    assert!(!names.contains(&rejected));
    let lines = audit_lines(&audit_path);
    let mounted = find(&lines, "mount")
        .into_iter()
        .filter(|line| line["outcome"] == "ok")
        .count();
    assert_eq!(mounted, created.len());
    drop(cluster);
}
