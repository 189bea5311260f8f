//! Seal lifecycle against the real daemons: init, seal, restart, unseal,
//! wrong passwords and the unseal lockout, over the admin socket and REST.

use metacrypt_protocol::{ErrorCode, RequestBody, ResponseBody, SealState, SocketRole};
use metacrypt_tests::{ADMIN_PASSWORD, ADMIN_USER, AdminClient, Cluster, SEAL_PASSWORD};
use serde_json::json;

#[test]
fn fresh_service_is_uninitialized() {
    let cluster = Cluster::start();
    assert_eq!(cluster.state(), "uninitialized");
    let mut admin = cluster.admin();
    assert_eq!(admin.state, SealState::Uninitialized);
    assert_eq!(
        admin.request(RequestBody::Status),
        Ok(ResponseBody::State(SealState::Uninitialized))
    );

    // Unseal before init is 412 on both paths.
    let (status, body) = cluster.post("/v1/unseal", None, json!({"password": SEAL_PASSWORD}));
    assert_eq!(status, 412, "{body}");
    assert_eq!(body["error"], "not initialized");
    let err = admin
        .request(RequestBody::Unseal {
            password: SEAL_PASSWORD.into(),
        })
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotInitialized);
}

#[test]
fn short_seal_password_is_rejected() {
    let cluster = Cluster::start();
    let (status, body) = cluster.post("/v1/init", None, json!({"password": "short"}));
    assert_eq!(status, 400, "{body}");
    let message = body["error"].as_str().unwrap_or_default();
    assert!(message.contains("12 characters"), "{message}");
    assert_eq!(cluster.state(), "uninitialized");
}

#[test]
fn init_seal_restart_unseal() {
    let mut cluster = Cluster::start();

    let (status, body) = cluster.post("/v1/init", None, json!({"password": SEAL_PASSWORD}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"state": "unsealed"}));
    assert_eq!(cluster.state(), "unsealed");

    let (status, body) = cluster.post("/v1/init", None, json!({"password": SEAL_PASSWORD}));
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], "already initialized");

    // Seal through the admin socket; frontd hears of it from keyd.
    let mut admin = cluster.admin();
    assert_eq!(
        admin.request(RequestBody::Seal),
        Ok(ResponseBody::State(SealState::Sealed))
    );
    cluster.wait_for_state("sealed");

    // A protected route returns 503 sealed, before authentication.
    let (status, body) = cluster.get_json("/v1/mounts", None);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "sealed");

    // Unseal through REST, then restart keyd: it comes back sealed.
    let (status, body) = cluster.post("/v1/unseal", None, json!({"password": SEAL_PASSWORD}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"state": "unsealed"}));
    let exit = cluster.stop_keyd().expect("keyd stopped");
    assert!(exit.success(), "keyd exit status {exit}");
    cluster.start_keyd();
    assert_eq!(cluster.admin().state, SealState::Sealed);
    cluster.wait_for_state("sealed");

    // Wrong password: 401, and the state does not change.
    let (status, body) = cluster.post(
        "/v1/unseal",
        None,
        json!({"password": "not the seal password"}),
    );
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "invalid password");
    assert_eq!(cluster.state(), "sealed");

    // The right password over the admin socket unseals.
    assert_eq!(
        cluster.admin().request(RequestBody::Unseal {
            password: SEAL_PASSWORD.into(),
        }),
        Ok(ResponseBody::State(SealState::Unsealed))
    );
    cluster.wait_for_state("unsealed");
}

#[test]
fn seal_over_rest_needs_admin() {
    let cluster = Cluster::start();
    cluster.init();
    let (status, body) = cluster.post("/v1/seal", None, json!({}));
    assert_eq!(status, 401, "{body}");
    let user = cluster.login(metacrypt_tests::USER, metacrypt_tests::USER_PASSWORD);
    let (status, body) = cluster.post("/v1/seal", Some(&user), json!({}));
    assert_eq!(status, 403, "{body}");
    assert_eq!(cluster.state(), "unsealed");

    let admin = cluster.login(ADMIN_USER, ADMIN_PASSWORD);
    let (status, body) = cluster.post("/v1/seal", Some(&admin), json!({}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"state": "sealed"}));
    assert_eq!(cluster.state(), "sealed");
}

#[test]
fn six_wrong_passwords_lock_unseal() {
    let mut cluster = Cluster::start();
    cluster.init();
    cluster.stop_keyd();
    cluster.start_keyd();
    cluster.wait_for_state("sealed");

    for attempt in 1..=5 {
        let (status, body) = cluster.post(
            "/v1/unseal",
            None,
            json!({"password": "wrong password here"}),
        );
        assert_eq!(status, 401, "attempt {attempt}: {body}");
    }

    // The sixth attempt is refused without a derivation, with Retry-After.
    let response = cluster
        .http()
        .post(cluster.url("/v1/unseal"))
        .json(&json!({"password": "wrong password here"}))
        .send()
        .expect("unseal request");
    assert_eq!(response.status().as_u16(), 429);
    let retry_after: u64 = response
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
        .expect("Retry-After header with seconds");
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    let body: serde_json::Value = response.json().expect("JSON body");
    assert_eq!(body["error"], "too many attempts");

    // During the lockout the right password is refused too, on both paths,
    // because the counter lives in keyd.
    let (status, _) = cluster.post("/v1/unseal", None, json!({"password": SEAL_PASSWORD}));
    assert_eq!(status, 429);
    let err = cluster
        .admin()
        .request(RequestBody::Unseal {
            password: SEAL_PASSWORD.into(),
        })
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::TooManyAttempts);
    assert!(err.retry_after_secs.is_some_and(|secs| secs <= 60));
    assert_eq!(cluster.state(), "sealed");
}

#[test]
fn admin_socket_rejects_engine_requests() {
    let cluster = Cluster::start();
    cluster.init();
    let err = cluster
        .admin()
        .request(RequestBody::ListMounts)
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::PermissionDenied);
}

#[test]
fn hello_with_wrong_role_is_rejected() {
    let cluster = Cluster::start();
    let result = AdminClient::connect_as(&cluster.admin_socket, SocketRole::Front);
    let message = result
        .err()
        .expect("front role on the admin socket is rejected");
    assert!(message.contains("admin"), "{message}");
}

#[test]
fn killed_keyd_restarts_sealed_and_database_is_intact() {
    let mut cluster = Cluster::start();
    cluster.init();
    cluster.kill_keyd();
    // frontd returns 503 while keyd is away.
    let status = metacrypt_tests::wait_for(std::time::Duration::from_secs(10), || {
        let (status, _) = cluster.get_json("/v1/status", None);
        (status == 503).then_some(status)
    });
    assert_eq!(status, Some(503));
    cluster.start_keyd();
    cluster.wait_for_state("sealed");
    let output = std::process::Command::new("sqlite3")
        .arg(&cluster.database)
        .arg("PRAGMA integrity_check;")
        .output()
        .expect("run sqlite3");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "ok");
}

#[test]
fn database_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let cluster = Cluster::start();
    cluster.init();
    let mode = std::fs::metadata(&cluster.database)
        .expect("database exists")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "database mode {mode:o}");
    let admin_mode = std::fs::metadata(&cluster.admin_socket)
        .expect("admin socket exists")
        .permissions()
        .mode();
    assert_eq!(
        admin_mode & 0o777,
        0o600,
        "admin socket mode {admin_mode:o}"
    );
    let front_mode = std::fs::metadata(&cluster.front_socket)
        .expect("front socket exists")
        .permissions()
        .mode();
    assert_eq!(
        front_mode & 0o777,
        0o660,
        "front socket mode {front_mode:o}"
    );
}

#[test]
fn logs_carry_no_secrets() {
    let cluster = Cluster::start();
    cluster.init();
    let token = cluster.login(ADMIN_USER, ADMIN_PASSWORD);
    let _ = cluster.get_json("/v1/auth/tokeninfo", Some(&token));
    let logs = format!("{}{}", cluster.keyd_log(), cluster.frontd_log());
    assert!(!logs.contains(SEAL_PASSWORD), "seal password in a log");
    assert!(!logs.contains(ADMIN_PASSWORD), "user password in a log");
    assert!(!logs.contains(&token), "token in a log");
}

#[test]
fn daemons_refuse_core_dumps_and_new_privileges() {
    let cluster = Cluster::start();
    for (name, pid) in [
        ("keyd", cluster.keyd_pid()),
        ("frontd", cluster.frontd_pid()),
    ] {
        let pid = pid.expect("daemon running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        assert!(
            status
                .lines()
                .any(|line| line.split_whitespace().eq(["NoNewPrivs:", "1"])),
            "{name}: NoNewPrivs is not set"
        );
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
        let core = limits
            .lines()
            .find(|line| line.starts_with("Max core file size"))
            .expect("core limit line");
        let fields: Vec<&str> = core.split_whitespace().collect();
        assert_eq!(&fields[4..6], ["0", "0"], "{name}: {core}");
    }
}

#[test]
fn daemons_have_no_capabilities() {
    let cluster = Cluster::start();
    for (name, pid) in [
        ("keyd", cluster.keyd_pid()),
        ("frontd", cluster.frontd_pid()),
    ] {
        let pid = pid.expect("daemon running");
        // Every thread, not only the main one: capabilities are per thread.
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("task directory");
        for task in tasks {
            let task = task.expect("task entry").file_name();
            let task = task.to_string_lossy();
            let path = format!("/proc/{pid}/task/{task}/status");
            let status = std::fs::read_to_string(&path).expect("status");
            for field in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
                let line = status
                    .lines()
                    .find(|line| line.starts_with(field))
                    .expect("capability line");
                if task == pid.to_string() {
                    eprintln!("{name} {path}: {line}");
                }
                assert!(
                    line.split_whitespace().eq([field, "0000000000000000"]),
                    "{name} thread {task}: {line}"
                );
            }
        }
    }
}
