//! keyd's request handling, independent of sockets: the seal state machine,
//! the barrier and the engine registry behind one `handle` call.
//!
//! Every method blocks (Argon2, SQLite, key generation), so the server calls
//! them on blocking threads.
#![forbid(unsafe_code)]

use std::sync::{Arc, Mutex};

use aws_lc_rs::hmac;
use metacrypt_protocol::{
    Caller, ErrorBody, ErrorCode, Request, RequestBody, ResponseBody, SealState,
};
use tokio::sync::watch;
use zeroize::Zeroizing;

use crate::audit::AuditLog;
use crate::barrier::{Barrier, SYSTEM_SCOPE, ScopeView, WriteBatch};
use crate::clock::{Clock, SystemClock};
use crate::db::Database;
use crate::engine::registry::Registry;
use crate::engine::{EngineFactory, EngineRequest, EngineResponse, RequestContext};
use crate::policy::PolicyStore;
use crate::seal::{KdfParams, SealManager};
use crate::store::Store;

/// The system-scope path of the key that turns session hashes into audit
/// ids.
const AUDIT_KEY_PATH: &str = "audit/hmac-key";

/// Settings of [`Service::start`] besides the database.
pub struct ServiceOptions {
    /// One factory per engine type that mounts may use.
    pub factories: Vec<Box<dyn EngineFactory>>,
    /// The Argon2id parameters that init stores.
    pub kdf: KdfParams,
    pub clock: Arc<dyn Clock>,
    /// The audit log that every audited request is written to; `None` only
    /// in tests that do not audit.
    pub audit: Option<Arc<AuditLog>>,
}

impl Default for ServiceOptions {
    /// Uses the engines of this build, [`KdfParams::DEFAULT`] and the
    /// system clock, without an audit log.
    fn default() -> Self {
        Self {
            factories: crate::engine::factories(),
            kdf: KdfParams::DEFAULT,
            clock: Arc::new(SystemClock),
            audit: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("db: failed to start the database writer thread: {0}")]
    Writer(std::io::Error),
    #[error("db: failed to read the seal configuration: {0}")]
    SealConfig(crate::barrier::BarrierError),
}

pub struct Service {
    seal: SealManager,
    registry: Arc<Registry>,
    policy: PolicyStore,
    audit: Option<Arc<AuditLog>>,
    system: ScopeView,
    audit_key_creation: Mutex<()>,
}

impl Service {
    /// Starts the database writer thread and reads whether the database is
    /// initialized. The service starts sealed (or uninitialized).
    pub fn start(database: Database, options: ServiceOptions) -> Result<Service, StartError> {
        let store = Store::start(database).map_err(StartError::Writer)?;
        let barrier = Arc::new(Barrier::new(store));
        let registry = Arc::new(Registry::new(Arc::clone(&barrier), options.factories));
        let policy = PolicyStore::new(Arc::clone(&barrier));
        let system = ScopeView::new(Arc::clone(&barrier), SYSTEM_SCOPE);
        let seal = SealManager::new(barrier, Arc::clone(&registry), options.clock, options.kdf)
            .map_err(StartError::SealConfig)?;
        Ok(Service {
            seal,
            registry,
            policy,
            audit: options.audit,
            system,
            audit_key_creation: Mutex::new(()),
        })
    }

    pub fn state(&self) -> SealState {
        self.seal.state()
    }

    pub fn audit(&self) -> Option<&AuditLog> {
        self.audit.as_deref()
    }

    /// Returns the audit id of a session: the first 16 bytes, in hex, of
    /// HMAC-SHA256 over `session` keyed by a random key in the barrier,
    /// so audit lines of one token can be joined but the token cannot be
    /// recovered. `None` unless unsealed, because the key is in the
    /// barrier.
    pub fn session_id(&self, session: &str) -> Option<String> {
        if self.state() != SealState::Unsealed {
            return None;
        }
        let key = match self.audit_key() {
            Ok(key) => key,
            Err(error) => {
                tracing::error!(error = %error.message, "failed to read the audit HMAC key");
                return None;
            }
        };
        let key = hmac::Key::new(hmac::HMAC_SHA256, &key);
        let tag = hmac::sign(&key, session.as_bytes());
        Some(hex::encode(&tag.as_ref()[..16]))
    }

    /// Returns the audit HMAC key, creating it on first use.
    fn audit_key(&self) -> Result<Zeroizing<Vec<u8>>, ErrorBody> {
        // The key is never replaced, so the keyring keeps it after the first
        // read, and an audited request reads no row for it.
        if let Some(key) = self.system.get_kept(AUDIT_KEY_PATH)? {
            return Ok(key);
        }
        let _guard = self
            .audit_key_creation
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(key) = self.system.get(AUDIT_KEY_PATH)? {
            return Ok(key);
        }
        let mut key = Zeroizing::new(vec![0u8; 32]);
        aws_lc_rs::rand::fill(&mut key)
            .map_err(|_| ErrorBody::internal("the system random source failed"))?;
        let mut batch = WriteBatch::new();
        batch.put(AUDIT_KEY_PATH, &key);
        self.system.commit(batch)?;
        Ok(key)
    }

    /// Returns a receiver of every later seal state change.
    pub fn subscribe(&self) -> watch::Receiver<SealState> {
        self.seal.subscribe()
    }

    /// Returns the number of Argon2 derivations run since start.
    pub fn derivation_count(&self) -> u64 {
        self.seal.derivation_count()
    }

    /// Seals unless already sealed or uninitialized, as keyd does at
    /// shutdown.
    pub fn seal(&self) -> Result<SealState, ErrorBody> {
        self.seal.seal()
    }

    /// Handles one request and returns its reply body.
    pub fn handle(&self, request: Request) -> Result<ResponseBody, ErrorBody> {
        let Request {
            trace_id,
            caller,
            body,
            ..
        } = request;
        match body {
            RequestBody::Status => Ok(ResponseBody::State(self.state())),
            RequestBody::Init { password } => self.seal.init(&password).map(ResponseBody::State),
            RequestBody::Unseal { password } => {
                self.seal.unseal(&password).map(ResponseBody::State)
            }
            RequestBody::Seal => self.seal.seal().map(ResponseBody::State),
            RequestBody::ListMounts => {
                self.require_unsealed()?;
                self.registry.list().map(ResponseBody::Mounts)
            }
            RequestBody::Mount { name, config } => {
                self.require_unsealed()?;
                self.registry.mount(&name, &config).map(ResponseBody::Mount)
            }
            RequestBody::Unmount { name } => {
                self.require_unsealed()?;
                self.registry
                    .unmount(&name)
                    .map(|()| ResponseBody::Unmounted)
            }
            RequestBody::Ca { mount, op } => {
                self.require_unsealed()?;
                let context = RequestContext {
                    caller: caller.as_ref(),
                    trace_id: &trace_id,
                };
                match self
                    .registry
                    .handle(&mount, "ca", context, EngineRequest::Ca(op))?
                {
                    EngineResponse::Ca(response) => Ok(ResponseBody::Ca(response)),
                }
            }
            RequestBody::ListPolicyRules => {
                self.require_unsealed()?;
                require_caller(caller.as_ref())?;
                self.policy.list().map(ResponseBody::PolicyRules)
            }
            RequestBody::PutPolicyRule { name, rule } => {
                self.require_unsealed()?;
                require_admin(caller.as_ref())?;
                self.policy.put(&name, rule).map(ResponseBody::PolicyRule)
            }
            RequestBody::RecordDenial { .. } => {
                require_caller(caller.as_ref())?;
                Ok(ResponseBody::DenialRecorded)
            }
            RequestBody::DeletePolicyRule { name } => {
                self.require_unsealed()?;
                require_admin(caller.as_ref())?;
                self.policy
                    .delete(&name)
                    .map(|()| ResponseBody::PolicyRuleDeleted)
            }
        }
    }

    fn require_unsealed(&self) -> Result<(), ErrorBody> {
        match self.state() {
            SealState::Unsealed => Ok(()),
            SealState::Uninitialized => Err(ErrorBody::not_initialized()),
            SealState::Sealed | SealState::Initializing => Err(ErrorBody::sealed()),
        }
    }
}

fn require_caller(caller: Option<&Caller>) -> Result<&Caller, ErrorBody> {
    caller.ok_or_else(|| {
        ErrorBody::new(
            ErrorCode::PermissionDenied,
            "the request carries no authenticated caller",
        )
    })
}

fn require_admin(caller: Option<&Caller>) -> Result<(), ErrorBody> {
    if require_caller(caller)?.admin {
        Ok(())
    } else {
        Err(ErrorBody::new(
            ErrorCode::PermissionDenied,
            "managing policy rules requires the admin role",
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use metacrypt_protocol::{
        CaMountConfig, CaRequest, CaResponse, ErrorCode, MountConfig, SecretString,
    };

    use super::*;
    use crate::barrier::{MountStore, WriteBatch};
    use crate::clock::ManualClock;
    use crate::engine::Engine;

    const PASSWORD: &str = "correct horse battery staple";

    /// A stand-in for the CA engine: it writes a key at mount time, reads it
    /// back at load, and returns it for GetRoot. A test may make GetRoot
    /// wait on a channel to hold a request in flight.
    struct FakeFactory {
        fail_initialize: AtomicBool,
        hold: Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>>,
        dropped: Arc<AtomicBool>,
    }

    impl FakeFactory {
        fn new() -> Arc<Self> {
            Arc::new(Self {
                fail_initialize: AtomicBool::new(false),
                hold: Mutex::new(None),
                dropped: Arc::new(AtomicBool::new(false)),
            })
        }
    }

    struct SharedFactory(Arc<FakeFactory>);

    struct FakeEngine {
        key: Vec<u8>,
        hold: Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>>,
        dropped: Arc<AtomicBool>,
    }

    impl Drop for FakeEngine {
        fn drop(&mut self) {
            self.dropped.store(true, Ordering::SeqCst);
        }
    }

    impl Engine for FakeEngine {
        fn engine_type(&self) -> &'static str {
            "ca"
        }

        fn handle(
            &self,
            store: &MountStore,
            _context: RequestContext<'_>,
            request: EngineRequest,
        ) -> Result<EngineResponse, ErrorBody> {
            let EngineRequest::Ca(CaRequest::GetRoot) = request else {
                return Err(ErrorBody::invalid_request("unsupported"));
            };
            if let Some((entered, release)) = self.hold.lock().unwrap().take() {
                entered.send(()).unwrap();
                release.recv().unwrap();
                let mut batch = WriteBatch::new();
                batch.put("in-flight", b"written by a held request");
                batch.insert_cert_serial("held", "ff", 1_900_000_000, None);
                store.commit(batch)?;
            }
            Ok(EngineResponse::Ca(CaResponse::Certificate(
                String::from_utf8_lossy(&self.key).into_owned(),
            )))
        }
    }

    impl EngineFactory for SharedFactory {
        fn engine_type(&self) -> &'static str {
            "ca"
        }

        fn initialize(
            &self,
            store: &MountStore,
            _config: &MountConfig,
        ) -> Result<Box<dyn Engine>, ErrorBody> {
            let mut batch = WriteBatch::new();
            batch.put(
                "root/key",
                format!("key of {}", store.mount_name()).as_bytes(),
            );
            batch.insert_cert_serial("root", "01", 1_900_000_000, None);
            store.commit(batch)?;
            if self.0.fail_initialize.load(Ordering::SeqCst) {
                return Err(ErrorBody::internal("root generation failed"));
            }
            self.load(store)
        }

        fn load(&self, store: &MountStore) -> Result<Box<dyn Engine>, ErrorBody> {
            let key = store
                .get("root/key")?
                .ok_or_else(|| ErrorBody::internal("root key missing"))?;
            Ok(Box::new(FakeEngine {
                key: key.to_vec(),
                hold: Mutex::new(self.0.hold.lock().unwrap().take()),
                dropped: Arc::clone(&self.0.dropped),
            }))
        }
    }

    struct Harness {
        service: Service,
        factory: Arc<FakeFactory>,
        clock: Arc<ManualClock>,
    }

    fn start(path: &Path, kdf: KdfParams) -> Harness {
        let factory = FakeFactory::new();
        let clock = Arc::new(ManualClock::new());
        let options = ServiceOptions {
            factories: vec![Box::new(SharedFactory(Arc::clone(&factory)))],
            kdf,
            clock: Arc::clone(&clock) as Arc<dyn Clock>,
            audit: None,
        };
        let service = Service::start(Database::open(path, 2).unwrap(), options).unwrap();
        Harness {
            service,
            factory,
            clock,
        }
    }

    fn fast(path: &Path) -> Harness {
        start(path, KdfParams::INSECURE_FOR_TESTS)
    }

    fn request(body: RequestBody) -> Request {
        Request {
            id: 1,
            trace_id: "test".to_owned(),
            remote_addr: None,
            caller: None,
            body,
        }
    }

    fn call(service: &Service, body: RequestBody) -> Result<ResponseBody, ErrorBody> {
        service.handle(request(body))
    }

    fn init(service: &Service, password: &str) -> Result<ResponseBody, ErrorBody> {
        call(
            service,
            RequestBody::Init {
                password: SecretString::from(password),
            },
        )
    }

    fn unseal(service: &Service, password: &str) -> Result<ResponseBody, ErrorBody> {
        call(
            service,
            RequestBody::Unseal {
                password: SecretString::from(password),
            },
        )
    }

    fn mount(service: &Service, name: &str) -> Result<ResponseBody, ErrorBody> {
        call(
            service,
            RequestBody::Mount {
                name: name.to_owned(),
                config: MountConfig::Ca(CaMountConfig::default()),
            },
        )
    }

    fn get_root(service: &Service, mount: &str) -> Result<ResponseBody, ErrorBody> {
        call(
            service,
            RequestBody::Ca {
                mount: mount.to_owned(),
                op: CaRequest::GetRoot,
            },
        )
    }

    fn state(result: Result<ResponseBody, ErrorBody>) -> SealState {
        match result {
            Ok(ResponseBody::State(state)) => state,
            other => panic!("expected a state, got {other:?}"),
        }
    }

    fn error(result: Result<ResponseBody, ErrorBody>) -> ErrorBody {
        match result {
            Err(err) => err,
            Ok(body) => panic!("expected an error, got {body:?}"),
        }
    }

    fn count(path: &Path, sql: &str) -> i64 {
        rusqlite::Connection::open(path)
            .unwrap()
            .query_row(sql, [], |row| row.get(0))
            .unwrap()
    }

    #[test]
    fn empty_database_is_uninitialized() {
        let dir = tempfile::tempdir().unwrap();
        let harness = fast(&dir.path().join("keyd.db"));
        let service = &harness.service;
        assert_eq!(
            state(call(service, RequestBody::Status)),
            SealState::Uninitialized
        );
        let err = error(unseal(service, PASSWORD));
        assert_eq!(err.code, ErrorCode::NotInitialized);
        assert_eq!(err.message, "not initialized");
        assert_eq!(
            error(call(service, RequestBody::Seal)).code,
            ErrorCode::NotInitialized
        );
        assert_eq!(
            error(call(service, RequestBody::ListMounts)).code,
            ErrorCode::NotInitialized
        );
    }

    #[test]
    fn short_password_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let harness = fast(&dir.path().join("keyd.db"));
        let err = error(init(&harness.service, "eleven char"));
        assert_eq!(err.code, ErrorCode::InvalidRequest);
        assert!(
            err.message
                .starts_with("seal password must be at least 12 characters"),
            "{}",
            err.message
        );
        assert_eq!(harness.service.state(), SealState::Uninitialized);
        assert_eq!(harness.service.derivation_count(), 0);
    }

    #[test]
    fn running_service_keeps_database_locked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyd.db");
        let harness = fast(&path);
        let err = crate::db::Database::open(&path, 1).err().unwrap();
        assert!(
            matches!(err, crate::db::DbError::InUse { .. }),
            "second open: {err}"
        );
        drop(harness);
        crate::db::Database::open(&path, 1).unwrap();
    }

    #[test]
    fn whitespace_padded_password_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let harness = fast(&dir.path().join("keyd.db"));
        for password in ["            ", "  short pass  ", "\t\n eleven char \n"] {
            let err = error(init(&harness.service, password));
            assert_eq!(err.code, ErrorCode::InvalidRequest, "{password:?}");
        }
        assert_eq!(harness.service.state(), SealState::Uninitialized);
        assert_eq!(harness.service.derivation_count(), 0);
    }

    #[test]
    fn password_length_counts_characters() {
        let dir = tempfile::tempdir().unwrap();
        let harness = fast(&dir.path().join("keyd.db"));
        // Eleven characters but 22 bytes.
        assert_eq!(
            error(init(&harness.service, "ééééééééééé")).code,
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            state(init(&harness.service, "éééééééééééé")),
            SealState::Unsealed
        );
    }

    fn with_caller(body: RequestBody, admin: bool) -> Request {
        Request {
            caller: Some(Caller {
                username: "bob".to_owned(),
                roles: Vec::new(),
                admin,
                session: None,
            }),
            ..request(body)
        }
    }

    #[test]
    fn policy_rules_need_admin_and_persist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyd.db");
        let harness = fast(&path);
        let service = &harness.service;
        init(service, PASSWORD).unwrap();
        let rule: metacrypt_protocol::policy::PolicyRule =
            serde_json::from_str(r#"{"effect":"allow","users":["bob"],"resources":["pki/**"]}"#)
                .unwrap();
        let put = |admin| {
            service.handle(with_caller(
                RequestBody::PutPolicyRule {
                    name: "bob-pki".to_owned(),
                    rule: rule.clone(),
                },
                admin,
            ))
        };
        assert_eq!(error(put(false)).code, ErrorCode::PermissionDenied);
        assert_eq!(
            error(call(service, RequestBody::ListPolicyRules)).code,
            ErrorCode::PermissionDenied
        );
        put(true).unwrap();
        let bad_name = service.handle(with_caller(
            RequestBody::PutPolicyRule {
                name: "Bob".to_owned(),
                rule: rule.clone(),
            },
            true,
        ));
        assert_eq!(error(bad_name).code, ErrorCode::InvalidRequest);

        service.seal().unwrap();
        unseal(service, PASSWORD).unwrap();
        let listed = service
            .handle(with_caller(RequestBody::ListPolicyRules, false))
            .unwrap();
        let ResponseBody::PolicyRules(rules) = listed else {
            panic!("expected rules, got {listed:?}");
        };
        assert_eq!(rules.keys().collect::<Vec<_>>(), ["bob-pki"]);
        assert_eq!(rules["bob-pki"], rule);

        let delete = |name: &str| {
            service.handle(with_caller(
                RequestBody::DeletePolicyRule {
                    name: name.to_owned(),
                },
                true,
            ))
        };
        assert_eq!(delete("bob-pki"), Ok(ResponseBody::PolicyRuleDeleted));
        assert_eq!(error(delete("bob-pki")).code, ErrorCode::NotFound);
    }

    #[test]
    fn policy_rule_set_size_is_capped() {
        let dir = tempfile::tempdir().unwrap();
        let harness = fast(&dir.path().join("keyd.db"));
        let service = &harness.service;
        init(service, PASSWORD).unwrap();
        // About 66 KB per rule: 256 users and 256 roles of 128 characters.
        let subjects = |prefix: &str| -> Vec<String> {
            (0..256)
                .map(|i| format!("{prefix}{i:03}{}", "x".repeat(124 - prefix.len())))
                .collect()
        };
        let rule = metacrypt_protocol::policy::PolicyRule {
            effect: metacrypt_protocol::policy::Effect::Allow,
            users: subjects("u"),
            roles: subjects("r"),
            resources: vec!["pki/**".to_owned()],
        };
        let put = |index: usize| {
            service.handle(with_caller(
                RequestBody::PutPolicyRule {
                    name: format!("rule-{index}"),
                    rule: rule.clone(),
                },
                true,
            ))
        };
        let mut stored = 0;
        let rejected = loop {
            match put(stored) {
                Ok(_) => stored += 1,
                Err(error) => break error,
            }
            assert!(stored < 100, "no cap after {stored} rules");
        };
        assert_eq!(rejected.code, ErrorCode::InvalidRequest);
        assert!(rejected.message.contains("maximum"), "{}", rejected.message);
        assert_eq!(stored, crate::policy::MAX_RULE_SET_BYTES / 67_000);
        // The stored set still lists, and replacing a rule still works.
        let listed = service.handle(with_caller(RequestBody::ListPolicyRules, true));
        let Ok(ResponseBody::PolicyRules(rules)) = listed else {
            panic!("expected rules, got {listed:?}");
        };
        assert_eq!(rules.len(), stored);
        put(0).unwrap();
    }

    #[test]
    fn init_leaves_service_unsealed() {
        let dir = tempfile::tempdir().unwrap();
        let harness = fast(&dir.path().join("keyd.db"));
        assert_eq!(state(init(&harness.service, PASSWORD)), SealState::Unsealed);
        assert_eq!(harness.service.state(), SealState::Unsealed);
        let err = error(init(&harness.service, PASSWORD));
        assert_eq!(err.code, ErrorCode::AlreadyInitialized);
        assert_eq!(err.message, "already initialized");
    }

    #[test]
    fn init_stores_argon2_parameters_and_salt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyd.db");
        let harness = fast(&path);
        init(&harness.service, PASSWORD).unwrap();
        assert_eq!(count(&path, "SELECT argon2_time_cost FROM seal_config"), 1);
        assert_eq!(
            count(&path, "SELECT argon2_memory_kib FROM seal_config"),
            8192
        );
        assert_eq!(count(&path, "SELECT length(salt) FROM seal_config"), 16);
        assert_eq!(
            count(&path, "SELECT length(wrapped_mek) FROM seal_config"),
            48
        );
        assert_eq!(
            count(&path, "SELECT count(*) FROM keyring WHERE scope = 'system'"),
            1
        );
    }

    #[test]
    fn seal_and_unseal_cycle() {
        let dir = tempfile::tempdir().unwrap();
        let harness = fast(&dir.path().join("keyd.db"));
        let service = &harness.service;
        init(service, PASSWORD).unwrap();
        assert_eq!(state(call(service, RequestBody::Seal)), SealState::Sealed);
        assert_eq!(state(call(service, RequestBody::Seal)), SealState::Sealed);
        let err = error(call(service, RequestBody::ListMounts));
        assert_eq!(err.code, ErrorCode::Sealed);
        assert_eq!(err.message, "sealed");
        let err = error(unseal(service, "wrong password here"));
        assert_eq!(err.code, ErrorCode::InvalidPassword);
        assert_eq!(err.message, "invalid password");
        assert_eq!(state(unseal(service, PASSWORD)), SealState::Unsealed);
        let derivations = service.derivation_count();
        assert_eq!(state(unseal(service, PASSWORD)), SealState::Unsealed);
        assert_eq!(
            service.derivation_count(),
            derivations,
            "unseal while unsealed derives"
        );
    }

    #[test]
    fn restart_starts_sealed_and_unseals_with_same_password() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyd.db");
        {
            let harness = fast(&path);
            init(&harness.service, PASSWORD).unwrap();
            mount(&harness.service, "pki").unwrap();
        }
        let harness = fast(&path);
        assert_eq!(harness.service.state(), SealState::Sealed);
        assert_eq!(
            error(get_root(&harness.service, "pki")).code,
            ErrorCode::Sealed
        );
        unseal(&harness.service, PASSWORD).unwrap();
        assert_eq!(
            get_root(&harness.service, "pki").unwrap(),
            ResponseBody::Ca(CaResponse::Certificate("key of pki".to_owned()))
        );
    }

    #[test]
    fn real_argon2_parameters_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyd.db");
        let harness = start(&path, KdfParams::DEFAULT);
        init(&harness.service, PASSWORD).unwrap();
        call(&harness.service, RequestBody::Seal).unwrap();
        assert_eq!(
            state(unseal(&harness.service, PASSWORD)),
            SealState::Unsealed
        );
        assert_eq!(
            count(&path, "SELECT argon2_memory_kib FROM seal_config"),
            131_072
        );
        assert_eq!(count(&path, "SELECT argon2_time_cost FROM seal_config"), 3);
        assert_eq!(
            count(&path, "SELECT argon2_parallelism FROM seal_config"),
            4
        );
        assert_eq!(harness.service.derivation_count(), 2);
    }

    #[test]
    fn lockout_rejects_right_password_without_deriving() {
        let dir = tempfile::tempdir().unwrap();
        let harness = fast(&dir.path().join("keyd.db"));
        let service = &harness.service;
        init(service, PASSWORD).unwrap();
        call(service, RequestBody::Seal).unwrap();
        for attempt in 0..5 {
            let err = error(unseal(service, "wrong password here"));
            assert_eq!(err.code, ErrorCode::InvalidPassword, "attempt {attempt}");
            harness.clock.advance(Duration::from_secs(1));
        }
        let derivations = service.derivation_count();
        assert_eq!(derivations, 6, "one for init, five failed unseals");

        let err = error(unseal(service, PASSWORD));
        assert_eq!(err.code, ErrorCode::TooManyAttempts);
        assert_eq!(err.code.http_status(), 429);
        // The lockout began at the fifth failure, one second ago.
        assert_eq!(err.retry_after_secs, Some(59));
        let err = error(unseal(service, "wrong password here"));
        assert_eq!(err.code, ErrorCode::TooManyAttempts);
        assert_eq!(
            service.derivation_count(),
            derivations,
            "a locked attempt derived"
        );
        assert_eq!(service.state(), SealState::Sealed);

        harness.clock.advance(Duration::from_secs(59));
        assert_eq!(state(unseal(service, PASSWORD)), SealState::Unsealed);
        assert_eq!(service.derivation_count(), derivations + 1);
    }

    #[test]
    fn failures_spread_over_minutes_do_not_lock() {
        let dir = tempfile::tempdir().unwrap();
        let harness = fast(&dir.path().join("keyd.db"));
        let service = &harness.service;
        init(service, PASSWORD).unwrap();
        call(service, RequestBody::Seal).unwrap();
        for _ in 0..8 {
            assert_eq!(
                error(unseal(service, "wrong password here")).code,
                ErrorCode::InvalidPassword
            );
            harness.clock.advance(Duration::from_secs(20));
        }
        assert_eq!(state(unseal(service, PASSWORD)), SealState::Unsealed);
    }

    #[test]
    fn mount_list_and_unmount() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyd.db");
        let harness = fast(&path);
        let service = &harness.service;
        init(service, PASSWORD).unwrap();
        let Ok(ResponseBody::Mount(info)) = mount(service, "pki") else {
            panic!("mount failed");
        };
        assert_eq!(info.name, "pki");
        assert_eq!(info.engine_type, "ca");
        assert!(info.created_at.ends_with('Z'), "{}", info.created_at);
        mount(service, "other").unwrap();
        let Ok(ResponseBody::Mounts(mounts)) = call(service, RequestBody::ListMounts) else {
            panic!("list failed");
        };
        let names: Vec<&str> = mounts.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["other", "pki"]);

        let err = error(mount(service, "pki"));
        assert_eq!(err.code, ErrorCode::Conflict);
        assert_eq!(err.message, "mount pki already exists");

        call(
            service,
            RequestBody::Unmount {
                name: "pki".to_owned(),
            },
        )
        .unwrap();
        assert_eq!(error(get_root(service, "pki")).code, ErrorCode::NotFound);
        assert_eq!(
            count(
                &path,
                "SELECT count(*) FROM barrier_entries WHERE scope = 'mount:pki'"
            ),
            0
        );
        assert_eq!(
            count(
                &path,
                "SELECT count(*) FROM ca_cert_serials WHERE scope = 'mount:pki'"
            ),
            0
        );
        assert_eq!(
            count(
                &path,
                "SELECT count(*) FROM keyring WHERE scope = 'mount:pki'"
            ),
            0
        );
        assert_eq!(
            count(
                &path,
                "SELECT count(*) FROM barrier_entries WHERE path = 'mounts/pki'"
            ),
            0
        );
        assert_eq!(
            count(
                &path,
                "SELECT count(*) FROM barrier_entries WHERE scope = 'mount:other'"
            ),
            1
        );
        let err = error(call(
            service,
            RequestBody::Unmount {
                name: "pki".to_owned(),
            },
        ));
        assert_eq!(err.code, ErrorCode::NotFound);
        assert_eq!(err.message, "mount pki not found");
        mount(service, "pki").unwrap();
    }

    #[test]
    fn invalid_mount_names_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyd.db");
        let harness = fast(&path);
        init(&harness.service, PASSWORD).unwrap();
        let long = "a".repeat(65);
        for name in [
            "../ca",
            "ca/../../sys",
            "%2e%2e",
            "ca//x",
            "a b",
            "a\0b",
            "",
            "-ca",
            "_ca",
            "Ca",
            &long,
        ] {
            let err = error(mount(&harness.service, name));
            assert_eq!(err.code, ErrorCode::InvalidRequest, "{name:?}");
            assert!(
                err.message.contains(&format!("{name:?}")),
                "{}",
                err.message
            );
        }
        assert_eq!(
            count(&path, "SELECT count(*) FROM keyring"),
            1,
            "only the system key"
        );
        mount(&harness.service, &"a".repeat(64)).unwrap();
        mount(&harness.service, "0ca_x-1").unwrap();
    }

    #[test]
    fn failed_initialize_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyd.db");
        let harness = fast(&path);
        init(&harness.service, PASSWORD).unwrap();
        harness
            .factory
            .fail_initialize
            .store(true, Ordering::SeqCst);
        let err = error(mount(&harness.service, "pki"));
        assert_eq!(err.message, "root generation failed");
        assert_eq!(
            count(
                &path,
                "SELECT count(*) FROM barrier_entries WHERE scope = 'mount:pki'"
            ),
            0
        );
        assert_eq!(count(&path, "SELECT count(*) FROM ca_cert_serials"), 0);
        assert_eq!(
            count(
                &path,
                "SELECT count(*) FROM keyring WHERE scope = 'mount:pki'"
            ),
            0
        );
        let Ok(ResponseBody::Mounts(mounts)) = call(&harness.service, RequestBody::ListMounts)
        else {
            panic!("list failed");
        };
        assert!(mounts.is_empty());
        harness
            .factory
            .fail_initialize
            .store(false, Ordering::SeqCst);
        mount(&harness.service, "pki").unwrap();
    }

    #[test]
    fn damaged_mount_stays_listed_and_others_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyd.db");
        {
            let harness = fast(&path);
            init(&harness.service, PASSWORD).unwrap();
            mount(&harness.service, "good").unwrap();
            mount(&harness.service, "bad").unwrap();
        }
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute(
                "UPDATE barrier_entries SET ciphertext = substr(ciphertext, 1, 10) \
                 WHERE scope = 'mount:bad' AND path = 'root/key'",
                [],
            )
            .unwrap();
        let harness = fast(&path);
        unseal(&harness.service, PASSWORD).unwrap();
        assert!(get_root(&harness.service, "good").is_ok());
        let err = error(get_root(&harness.service, "bad"));
        assert_eq!(err.code, ErrorCode::Internal);
        assert!(
            err.message
                .contains("barrier integrity check failed for mount:bad/root/key"),
            "{}",
            err.message
        );
        let Ok(ResponseBody::Mounts(mounts)) = call(&harness.service, RequestBody::ListMounts)
        else {
            panic!("list failed");
        };
        assert_eq!(mounts.len(), 2);
    }

    #[test]
    fn tampered_data_key_fails_unseal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyd.db");
        {
            let harness = fast(&path);
            init(&harness.service, PASSWORD).unwrap();
            mount(&harness.service, "pki").unwrap();
        }
        let conn = rusqlite::Connection::open(&path).unwrap();
        let mut wrapped: Vec<u8> = conn
            .query_row(
                "SELECT wrapped_dek FROM keyring WHERE scope = 'mount:pki'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        wrapped[0] ^= 0x80;
        conn.execute(
            "UPDATE keyring SET wrapped_dek = ?1 WHERE scope = 'mount:pki'",
            [&wrapped],
        )
        .unwrap();
        let harness = fast(&path);
        let err = error(unseal(&harness.service, PASSWORD));
        assert_eq!(err.code, ErrorCode::Internal);
        assert!(
            err.message
                .starts_with("barrier integrity check failed for keyring/"),
            "{}",
            err.message
        );
        assert_eq!(harness.service.state(), SealState::Sealed);
    }

    #[test]
    fn seal_waits_for_request_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let harness = Arc::new(fast(&dir.path().join("keyd.db")));
        init(&harness.service, PASSWORD).unwrap();
        let (entered_tx, entered_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel();
        *harness.factory.hold.lock().unwrap() = Some((entered_tx, release_rx));
        mount(&harness.service, "pki").unwrap();

        let in_flight = {
            let harness = Arc::clone(&harness);
            std::thread::spawn(move || get_root(&harness.service, "pki"))
        };
        entered_rx.recv().unwrap();
        let mut state_rx = harness.service.subscribe();
        let sealing = {
            let harness = Arc::clone(&harness);
            std::thread::spawn(move || call(&harness.service, RequestBody::Seal))
        };
        // Seal publishes `sealed` first and then waits for the request.
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(state_rx.wait_for(|state| *state == SealState::Sealed))
            .unwrap();
        assert!(!harness.factory.dropped.load(Ordering::SeqCst));
        release_tx.send(()).unwrap();
        // The request's commit ran after seal began and still had its keys.
        assert!(in_flight.join().unwrap().is_ok());
        assert_eq!(state(sealing.join().unwrap()), SealState::Sealed);
        assert!(harness.factory.dropped.load(Ordering::SeqCst));
        assert_eq!(
            error(get_root(&harness.service, "pki")).code,
            ErrorCode::Sealed
        );
    }

    fn unmount(service: &Service, name: &str) -> Result<ResponseBody, ErrorBody> {
        call(
            service,
            RequestBody::Unmount {
                name: name.to_owned(),
            },
        )
    }

    #[test]
    fn held_request_cannot_write_into_remount() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyd.db");
        let harness = Arc::new(fast(&path));
        init(&harness.service, PASSWORD).unwrap();
        let (entered_tx, entered_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel();
        *harness.factory.hold.lock().unwrap() = Some((entered_tx, release_rx));
        mount(&harness.service, "pki").unwrap();

        let in_flight = {
            let harness = Arc::clone(&harness);
            std::thread::spawn(move || get_root(&harness.service, "pki"))
        };
        entered_rx.recv().unwrap();
        unmount(&harness.service, "pki").unwrap();
        mount(&harness.service, "pki").unwrap();
        release_tx.send(()).unwrap();

        let err = error(in_flight.join().unwrap());
        assert_eq!(err.code, ErrorCode::NotFound, "{}", err.message);
        assert_eq!(err.message, "mount pki was unmounted while the request ran");
        assert_eq!(
            count(
                &path,
                "SELECT count(*) FROM barrier_entries WHERE scope = 'mount:pki' AND path = 'in-flight'"
            ),
            0
        );
        assert_eq!(
            count(
                &path,
                "SELECT count(*) FROM ca_cert_serials WHERE scope = 'mount:pki' AND issuer = 'held'"
            ),
            0
        );
        assert_eq!(
            get_root(&harness.service, "pki").unwrap(),
            ResponseBody::Ca(CaResponse::Certificate("key of pki".to_owned()))
        );
    }

    #[test]
    fn unmount_truncates_wal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyd.db");
        let harness = fast(&path);
        init(&harness.service, PASSWORD).unwrap();
        mount(&harness.service, "pki").unwrap();
        let wrapped: Vec<u8> = rusqlite::Connection::open(&path)
            .unwrap()
            .query_row(
                "SELECT wrapped_dek FROM keyring WHERE scope = 'mount:pki'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        let wal_path = dir.path().join("keyd.db-wal");
        let contains_wrapped =
            |bytes: &[u8]| bytes.windows(wrapped.len()).any(|window| window == wrapped);
        assert!(
            contains_wrapped(&std::fs::read(&wal_path).unwrap()),
            "the WAL never held the wrapped data key"
        );

        unmount(&harness.service, "pki").unwrap();
        let wal = std::fs::read(&wal_path).unwrap();
        assert!(
            !contains_wrapped(&wal),
            "the WAL still holds the wrapped data key"
        );
        let database = std::fs::read(&path).unwrap();
        assert!(
            !contains_wrapped(&database),
            "the database file still holds the wrapped data key"
        );
    }

    #[test]
    fn tampered_argon2_parameters_fail_unseal() {
        // Each value is out of range; the 2 TiB memory cost would be
        // allocated if unseal used it.
        let cases = [
            ("argon2_time_cost", "0"),
            ("argon2_time_cost", "11"),
            ("argon2_memory_kib", "8"),
            ("argon2_memory_kib", "2147483648"),
            ("argon2_parallelism", "0"),
            ("argon2_parallelism", "17"),
            ("salt", "x'00'"),
        ];
        for (column, value) in cases {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("keyd.db");
            {
                let harness = fast(&path);
                init(&harness.service, PASSWORD).unwrap();
            }
            rusqlite::Connection::open(&path)
                .unwrap()
                .execute(&format!("UPDATE seal_config SET {column} = {value}"), [])
                .unwrap();
            let harness = fast(&path);
            let err = error(unseal(&harness.service, PASSWORD));
            assert_eq!(
                err.code,
                ErrorCode::Internal,
                "{column}={value}: {}",
                err.message
            );
            assert!(
                err.message.contains(column),
                "{column}={value}: {}",
                err.message
            );
            assert_eq!(harness.service.derivation_count(), 0, "{column}={value}");
            assert_eq!(harness.service.state(), SealState::Sealed);
        }
    }

    #[test]
    fn out_of_range_configured_parameters_fail_init() {
        let dir = tempfile::tempdir().unwrap();
        let kdf = KdfParams {
            memory_kib: 4 * 1024 * 1024,
            ..KdfParams::DEFAULT
        };
        let harness = start(&dir.path().join("keyd.db"), kdf);
        let err = error(init(&harness.service, PASSWORD));
        assert_eq!(err.code, ErrorCode::Internal);
        assert_eq!(
            err.message,
            "the configured Argon2 parameters are invalid: argon2_memory_kib = 4194304 is \
             outside the accepted range 8192..=1048576"
        );
        assert_eq!(harness.service.state(), SealState::Uninitialized);
        assert_eq!(harness.service.derivation_count(), 0);
    }
}
