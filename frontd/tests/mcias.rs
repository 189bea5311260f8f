//! The MCIAS client against an MCIAS double over real TLS, with a clock the
//! tests move by hand: validation caching, expiry, invalid tokens, logout.

mod common;

use common::{ManualClock, MciasDouble, MciasMode, mcias_options};
use metacrypt_frontd::mcias::{Login, MciasClient, MciasError};
use metacrypt_protocol::SecretString;
use time::OffsetDateTime;

struct Setup {
    _dir: tempfile::TempDir,
    mcias: MciasDouble,
    clock: std::sync::Arc<ManualClock>,
    client: MciasClient,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let mcias = MciasDouble::start(dir.path()).await;
    let clock = ManualClock::new();
    let client =
        MciasClient::with_clock(&mcias_options(&mcias.url(), &mcias.ca_cert), clock.clone())
            .unwrap();
    Setup {
        _dir: dir,
        mcias,
        clock,
        client,
    }
}

fn secret(token: &str) -> SecretString {
    SecretString::from(token)
}

#[tokio::test]
async fn validation_is_cached_within_ttl() {
    let setup = setup().await;
    let token = secret(&setup.mcias.admin_token());
    let first = setup.client.validate(&token).await.unwrap();
    setup.clock.advance(29);
    let second = setup.client.validate(&token).await.unwrap();
    assert_eq!(first, second);
    assert_eq!(setup.mcias.validations(), 1);
}

#[tokio::test]
async fn cache_entry_expires_after_ttl() {
    let setup = setup().await;
    let token = secret(&setup.mcias.admin_token());
    setup.client.validate(&token).await.unwrap();
    setup.clock.advance(31);
    setup.client.validate(&token).await.unwrap();
    assert_eq!(setup.mcias.validations(), 2);
}

#[tokio::test]
async fn cache_never_outlives_token() {
    let setup = setup().await;
    let expires_at = setup.clock_now() + time::Duration::seconds(10);
    let token = secret(&setup.mcias.issue_token("bob", &["ops"], expires_at));
    setup.client.validate(&token).await.unwrap();
    setup.clock.advance(5);
    setup.client.validate(&token).await.unwrap();
    assert_eq!(setup.mcias.validations(), 1, "cached before expiry");
    setup.clock.advance(6);
    setup.client.validate(&token).await.unwrap();
    assert_eq!(setup.mcias.validations(), 2, "asked again after expiry");
}

#[tokio::test]
async fn expired_token_is_never_cached() {
    let setup = setup().await;
    let expires_at = setup.clock_now() - time::Duration::seconds(1);
    let token = secret(&setup.mcias.issue_token("bob", &["ops"], expires_at));
    setup.client.validate(&token).await.unwrap();
    setup.client.validate(&token).await.unwrap();
    assert_eq!(setup.mcias.validations(), 2);
    assert_eq!(setup.client.cached(), 0);
}

#[tokio::test]
async fn invalid_token_is_not_cached() {
    let setup = setup().await;
    let token = secret("never-issued");
    for _ in 0..2 {
        let result = setup.client.validate(&token).await;
        assert!(
            matches!(result, Err(MciasError::InvalidToken)),
            "{result:?}"
        );
    }
    assert_eq!(setup.mcias.validations(), 2);
    assert_eq!(setup.client.cached(), 0);
}

#[tokio::test]
async fn revoked_token_stays_valid_until_cache_expiry() {
    let setup = setup().await;
    let raw = setup.mcias.user_token();
    let token = secret(&raw);
    setup.client.validate(&token).await.unwrap();
    setup.mcias.revoke(&raw);
    assert!(
        setup.client.validate(&token).await.is_ok(),
        "served from the cache"
    );
    setup.clock.advance(31);
    let result = setup.client.validate(&token).await;
    assert!(
        matches!(result, Err(MciasError::InvalidToken)),
        "{result:?}"
    );
}

#[tokio::test]
async fn logout_evicts_cache_entry() {
    let setup = setup().await;
    let token = secret(&setup.mcias.user_token());
    setup.client.validate(&token).await.unwrap();
    assert_eq!(setup.client.cached(), 1);
    setup.client.logout(&token).await.unwrap();
    assert_eq!(setup.client.cached(), 0);
    let result = setup.client.validate(&token).await;
    assert!(
        matches!(result, Err(MciasError::InvalidToken)),
        "{result:?}"
    );
    assert_eq!(setup.mcias.validations(), 2);
}

#[tokio::test]
async fn logout_during_validation_is_not_cached() {
    let setup = setup().await;
    let token = secret(&setup.mcias.user_token());
    let hold = setup.mcias.hold_validations();
    // MCIAS finds the token valid, then the reply waits while the token is
    // logged out.
    let (validation, logout) = tokio::join!(setup.client.validate(&token), async {
        hold.arrived.notified().await;
        let result = setup.client.logout(&token).await;
        hold.release.add_permits(1);
        result
    });
    assert!(validation.is_ok(), "{validation:?}");
    assert!(logout.is_ok(), "{logout:?}");
    assert_eq!(setup.client.cached(), 0);

    hold.release.add_permits(1);
    let result = setup.client.validate(&token).await;
    assert!(
        matches!(result, Err(MciasError::InvalidToken)),
        "{result:?}"
    );
}

#[tokio::test]
async fn server_error_is_unavailable_and_not_cached() {
    let setup = setup().await;
    let token = secret(&setup.mcias.admin_token());
    setup.mcias.set_mode(MciasMode::Broken);
    let result = setup.client.validate(&token).await;
    assert!(
        matches!(result, Err(MciasError::Unavailable { .. })),
        "{result:?}"
    );
    setup.mcias.set_mode(MciasMode::Normal);
    assert!(setup.client.validate(&token).await.is_ok());
}

#[tokio::test]
async fn login_returns_grant() {
    let setup = setup().await;
    let login = Login {
        username: "bob".to_owned(),
        password: secret("bob-password"),
        totp_code: None,
    };
    let grant = setup.client.login(&login).await.unwrap();
    let identity = setup.client.validate(&grant.token).await.unwrap();
    assert_eq!(identity.username, "bob");
    assert!(!identity.admin);
}

#[tokio::test]
async fn login_rate_limit_keeps_retry_after() {
    let setup = setup().await;
    setup.mcias.set_mode(MciasMode::RateLimited);
    let login = Login {
        username: "bob".to_owned(),
        password: secret("bob-password"),
        totp_code: None,
    };
    let result = setup.client.login(&login).await;
    assert!(
        matches!(
            result,
            Err(MciasError::RateLimited {
                retry_after_secs: Some(7)
            })
        ),
        "{:?}",
        result.err()
    );
}

#[tokio::test]
async fn untrusted_certificate_is_rejected() {
    let setup = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let (other_cert, _) = common::localhost_certificate();
    let other_ca = dir.path().join("other.pem");
    std::fs::write(&other_ca, other_cert).unwrap();
    let client = MciasClient::new(&mcias_options(&setup.mcias.url(), &other_ca)).unwrap();
    let result = client.validate(&secret(&setup.mcias.admin_token())).await;
    assert!(
        matches!(result, Err(MciasError::Unavailable { .. })),
        "{result:?}"
    );
    assert_eq!(setup.mcias.validations(), 0);
}

#[tokio::test]
async fn empty_ca_file_is_a_setup_error() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let error = MciasClient::new(&mcias_options("https://127.0.0.1:1", &empty))
        .err()
        .expect("setup error");
    assert!(error.to_string().contains("empty.pem"), "{error}");
}

impl Setup {
    fn clock_now(&self) -> OffsetDateTime {
        use metacrypt_frontd::mcias::Clock;
        self.clock.now()
    }
}

#[tokio::test]
async fn silent_server_times_out_as_unavailable() {
    // Accepts connections and never answers, not even the TLS handshake.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accept = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let mcias = MciasDouble::start(dir.path()).await;
    let mut options = mcias_options(&format!("https://127.0.0.1:{port}"), &mcias.ca_cert);
    options.request_timeout = std::time::Duration::from_millis(500);
    let client = MciasClient::with_clock(&options, ManualClock::new()).unwrap();

    let started = std::time::Instant::now();
    let result = client.validate(&secret("some-token")).await;
    let elapsed = started.elapsed();
    accept.abort();
    let Err(MciasError::Unavailable { reason }) = result else {
        panic!("expected Unavailable, got {result:?}");
    };
    assert!(reason.contains("timed out"), "{reason}");
    assert!(elapsed < std::time::Duration::from_secs(3), "{elapsed:?}");
    assert_eq!(client.cached(), 0);
}
