//! The keyd connection pool against a keyd double on a real Unix socket:
//! state tracking, multiplexing, reconnects and failures.

mod common;

use std::sync::Arc;

use common::{HelloMode, KeydDouble, canned, canned_reply, test_pool_options, wait_for_state};
use metacrypt_frontd::keyd::{KeydError, KeydPool, Origin};
use metacrypt_protocol::{ErrorCode, RequestBody, ResponseBody, SealState};

#[tokio::test]
async fn hello_state_is_tracked() {
    let dir = tempfile::tempdir().unwrap();
    let keyd = KeydDouble::start(dir.path(), SealState::Sealed, canned());
    let pool = KeydPool::start(test_pool_options(&keyd.socket, 2));
    wait_for_state(&pool, Some(SealState::Sealed)).await;
    common::eventually("both connections up", || pool.connected() == 2).await;
}

#[tokio::test]
async fn state_changed_updates_state() {
    let dir = tempfile::tempdir().unwrap();
    let keyd = KeydDouble::start(dir.path(), SealState::Sealed, canned());
    let pool = KeydPool::start(test_pool_options(&keyd.socket, 2));
    wait_for_state(&pool, Some(SealState::Sealed)).await;
    keyd.set_state(SealState::Unsealed);
    wait_for_state(&pool, Some(SealState::Unsealed)).await;
}

#[tokio::test]
async fn no_keyd_fails_fast() {
    let dir = tempfile::tempdir().unwrap();
    let pool = KeydPool::start(test_pool_options(&dir.path().join("absent.sock"), 2));
    let result = pool
        .call(Origin::new("t", None), None, RequestBody::Status)
        .await;
    assert!(matches!(result, Err(KeydError::Unavailable)), "{result:?}");
    assert_eq!(pool.state(), None);
}

#[tokio::test]
async fn requests_spread_round_robin() {
    let dir = tempfile::tempdir().unwrap();
    let keyd = KeydDouble::start(dir.path(), SealState::Unsealed, canned());
    let pool = KeydPool::start(test_pool_options(&keyd.socket, 3));
    common::eventually("three connections up", || pool.connected() == 3).await;
    for _ in 0..6 {
        pool.call(Origin::new("t", None), None, RequestBody::Status)
            .await
            .unwrap();
    }
    let mut per_connection = [0usize; 3];
    for received in keyd.received() {
        per_connection[received.connection] += 1;
    }
    assert_eq!(per_connection, [2, 2, 2]);
}

#[tokio::test]
async fn one_connection_carries_many_requests() {
    // keyd leaves the seal request without a reply, and a status request
    // sent after it on the same connection still gets its reply.
    let handler: common::Handler = Arc::new(|request, state| {
        if request.body == RequestBody::Seal {
            return None;
        }
        Some(canned_reply(request, state))
    });
    let dir = tempfile::tempdir().unwrap();
    let keyd = KeydDouble::start(dir.path(), SealState::Unsealed, handler);
    let pool = KeydPool::start(test_pool_options(&keyd.socket, 1));
    wait_for_state(&pool, Some(SealState::Unsealed)).await;
    let pending_seal = {
        let pool = pool.clone();
        tokio::spawn(async move {
            pool.call(Origin::new("held", None), None, RequestBody::Seal)
                .await
        })
    };
    common::eventually("seal request received", || keyd.requests().len() == 1).await;
    for _ in 0..10 {
        let reply = pool
            .call(Origin::new("t", None), None, RequestBody::Status)
            .await
            .unwrap();
        assert_eq!(reply, ResponseBody::State(SealState::Unsealed));
    }
    pending_seal.abort();
}

#[tokio::test]
async fn keyd_error_is_remote() {
    let dir = tempfile::tempdir().unwrap();
    let keyd = KeydDouble::start(dir.path(), SealState::Sealed, canned());
    let pool = KeydPool::start(test_pool_options(&keyd.socket, 1));
    wait_for_state(&pool, Some(SealState::Sealed)).await;
    let unseal = RequestBody::Unseal {
        password: "wrong password".into(),
    };
    let Err(KeydError::Remote(body)) = pool.call(Origin::new("t", None), None, unseal).await else {
        panic!("expected an error reply");
    };
    assert_eq!(body.code, ErrorCode::InvalidPassword);
}

#[tokio::test]
async fn pool_reconnects_after_keyd_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut keyd = KeydDouble::start(dir.path(), SealState::Unsealed, canned());
    let pool = KeydPool::start(test_pool_options(&keyd.socket, 2));
    wait_for_state(&pool, Some(SealState::Unsealed)).await;

    keyd.stop();
    wait_for_state(&pool, None).await;
    let result = pool
        .call(Origin::new("t", None), None, RequestBody::Status)
        .await;
    assert!(matches!(result, Err(KeydError::Unavailable)), "{result:?}");

    // keyd comes back sealed, as it does after every start.
    keyd.set_state(SealState::Sealed);
    keyd.listen();
    wait_for_state(&pool, Some(SealState::Sealed)).await;
    common::eventually("both connections back", || pool.connected() == 2).await;
    let reply = pool
        .call(Origin::new("t", None), None, RequestBody::Status)
        .await
        .unwrap();
    assert_eq!(reply, ResponseBody::State(SealState::Sealed));
}

#[tokio::test]
async fn in_flight_request_fails_when_keyd_dies() {
    let handler: common::Handler = Arc::new(|request, state| {
        if request.body == RequestBody::Seal {
            return None;
        }
        Some(canned_reply(request, state))
    });
    let dir = tempfile::tempdir().unwrap();
    let mut keyd = KeydDouble::start(dir.path(), SealState::Unsealed, handler);
    let mut options = test_pool_options(&keyd.socket, 1);
    // Long enough that only the dead connection can end the call.
    options.request_timeout = std::time::Duration::from_secs(600);
    let pool = KeydPool::start(options);
    wait_for_state(&pool, Some(SealState::Unsealed)).await;
    let pending_seal = {
        let pool = pool.clone();
        tokio::spawn(async move {
            pool.call(Origin::new("held", None), None, RequestBody::Seal)
                .await
        })
    };
    common::eventually("seal request received", || keyd.requests().len() == 1).await;
    keyd.stop();
    let result = pending_seal.await.unwrap();
    assert!(matches!(result, Err(KeydError::Unavailable)), "{result:?}");
}

#[tokio::test]
async fn silent_keyd_times_out() {
    let handler: common::Handler = Arc::new(|_, _| None);
    let dir = tempfile::tempdir().unwrap();
    let keyd = KeydDouble::start(dir.path(), SealState::Unsealed, handler);
    let mut options = test_pool_options(&keyd.socket, 1);
    options.request_timeout = std::time::Duration::from_millis(200);
    let pool = KeydPool::start(options);
    wait_for_state(&pool, Some(SealState::Unsealed)).await;
    let result = pool
        .call(Origin::new("t", None), None, RequestBody::Status)
        .await;
    assert!(matches!(result, Err(KeydError::Timeout(_))), "{result:?}");
}

#[tokio::test]
async fn rejected_hello_leaves_pool_down() {
    let dir = tempfile::tempdir().unwrap();
    let keyd = KeydDouble::start(dir.path(), SealState::Unsealed, canned());
    keyd.set_hello(HelloMode::Reject("protocol version 1 is not 2".to_owned()));
    let pool = KeydPool::start(test_pool_options(&keyd.socket, 1));
    common::eventually("hello attempts", || keyd.connections() >= 3).await;
    assert_eq!(pool.state(), None);
    assert_eq!(pool.connected(), 0);
}

#[tokio::test]
async fn admin_socket_is_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let keyd = KeydDouble::start(dir.path(), SealState::Unsealed, canned());
    keyd.set_hello(HelloMode::AdminRole);
    let pool = KeydPool::start(test_pool_options(&keyd.socket, 1));
    common::eventually("hello attempts", || keyd.connections() >= 3).await;
    assert_eq!(pool.connected(), 0);
    assert!(keyd.requests().is_empty());
}

#[tokio::test]
async fn state_reply_updates_state() {
    let dir = tempfile::tempdir().unwrap();
    let keyd = KeydDouble::start(dir.path(), SealState::Sealed, canned());
    let pool = KeydPool::start(test_pool_options(&keyd.socket, 1));
    wait_for_state(&pool, Some(SealState::Sealed)).await;
    let unseal = RequestBody::Unseal {
        password: common::SEAL_PASSWORD.into(),
    };
    pool.call(Origin::new("t", None), None, unseal)
        .await
        .unwrap();
    assert_eq!(pool.state(), Some(SealState::Unsealed));
}
