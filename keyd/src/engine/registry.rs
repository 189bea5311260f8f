//! The engine registry: which mounts exist, and their engine instances while
//! unsealed.
//!
//! Each mount has a record in the system scope at `mounts/NAME` (JSON:
//! name, engine type, creation time) and its own scope `mount:NAME` with its
//! own DEK. Mounting creates the DEK, lets the engine factory initialize the
//! mount's state, then writes the record. Unmounting deletes the mount's
//! entries, serial rows, DEK and record in one transaction.
//!
//! Engine requests, mounts and unmounts hold the registry's gate for
//! reading while they run; unloading at seal takes it for writing, so it
//! waits for them before the engines (and their keys) are dropped.
//!
//! An unmount does not wait for the requests still running on the mount.
//! Their [`MountStore`] is bound to the mount's DEK, which the unmount
//! deletes, so their later reads and commits fail with "mount NAME was
//! unmounted while the request ran", even once a new mount has the name.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use metacrypt_protocol::{ErrorBody, ErrorCode, MountConfig, MountInfo};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::barrier::{Barrier, MountStore, SYSTEM_SCOPE, ScopeView, WriteBatch, mount_scope};
use crate::engine::{Engine, EngineFactory, EngineRequest, EngineResponse, RequestContext};
use crate::store::WriteOp;

/// Path prefix of mount records in the system scope.
const MOUNT_RECORD_PREFIX: &str = "mounts/";

/// Maximum length of a mount name.
const MAX_MOUNT_NAME_LEN: usize = 64;

/// Checks a mount name against `^[a-z0-9][a-z0-9_-]{0,63}$`.
pub fn validate_mount_name(name: &str) -> Result<(), ErrorBody> {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|first| first.is_ascii_lowercase() || first.is_ascii_digit());
    let rest_ok = bytes.all(|byte| {
        byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_' || byte == b'-'
    });
    if first_ok && rest_ok && name.len() <= MAX_MOUNT_NAME_LEN {
        Ok(())
    } else {
        Err(ErrorBody::invalid_request(format!(
            "invalid mount name {name:?}: it must be 1 to {MAX_MOUNT_NAME_LEN} characters of \
             a-z, 0-9, '_' and '-', starting with a letter or digit"
        )))
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct MountRecord {
    name: String,
    engine_type: String,
    /// RFC 3339 UTC.
    created_at: String,
}

struct Mounted {
    info: MountInfo,
    /// The loaded engine with its store, or why it failed to load at unseal.
    engine: Result<LoadedEngine, String>,
}

struct LoadedEngine {
    engine: Arc<dyn Engine>,
    store: MountStore,
}

pub struct Registry {
    barrier: Arc<Barrier>,
    factories: Vec<Box<dyn EngineFactory>>,
    gate: RwLock<()>,
    /// `None` while sealed.
    mounts: RwLock<Option<BTreeMap<String, Arc<Mounted>>>>,
    /// Serializes mount and unmount.
    changes: Mutex<()>,
}

impl Registry {
    pub(crate) fn new(barrier: Arc<Barrier>, factories: Vec<Box<dyn EngineFactory>>) -> Self {
        Self {
            barrier,
            factories,
            gate: RwLock::new(()),
            mounts: RwLock::new(None),
            changes: Mutex::new(()),
        }
    }

    fn system(&self) -> ScopeView {
        ScopeView::new(Arc::clone(&self.barrier), SYSTEM_SCOPE)
    }

    fn read_gate(&self) -> RwLockReadGuard<'_, ()> {
        self.gate.read().unwrap_or_else(|e| e.into_inner())
    }

    fn read_mounts(&self) -> RwLockReadGuard<'_, Option<BTreeMap<String, Arc<Mounted>>>> {
        self.mounts.read().unwrap_or_else(|e| e.into_inner())
    }

    fn factory(&self, engine_type: &str) -> Option<&dyn EngineFactory> {
        self.factories
            .iter()
            .find(|factory| factory.engine_type() == engine_type)
            .map(|factory| factory.as_ref())
    }

    /// Loads every mount after unseal. A mount whose record or state cannot
    /// be read stays listed but fails every request with the reason, so one
    /// damaged mount does not keep the others sealed.
    pub(crate) fn load_all(&self) -> Result<(), ErrorBody> {
        let _gate = self.gate.write().unwrap_or_else(|e| e.into_inner());
        let system = self.system();
        let mut mounts = BTreeMap::new();
        for path in system.list(MOUNT_RECORD_PREFIX)? {
            let name = path[MOUNT_RECORD_PREFIX.len()..].to_owned();
            let mounted = self.load_mount(&system, &path, &name);
            if let Err(reason) = &mounted.engine {
                tracing::error!(mount = name, error = %reason, "failed to load mount");
            } else {
                tracing::info!(
                    mount = name,
                    engine_type = mounted.info.engine_type,
                    "loaded mount"
                );
            }
            mounts.insert(name, Arc::new(mounted));
        }
        *self.mounts.write().unwrap_or_else(|e| e.into_inner()) = Some(mounts);
        Ok(())
    }

    fn load_mount(&self, system: &ScopeView, path: &str, name: &str) -> Mounted {
        let record = system
            .get(path)
            .map_err(|err| err.to_string())
            .and_then(|value| value.ok_or_else(|| format!("mount record {path} disappeared")))
            .and_then(|value| {
                serde_json::from_slice::<MountRecord>(&value)
                    .map_err(|err| format!("mount record {path} is not valid JSON: {err}"))
            });
        let record = match record {
            Ok(record) if record.name == name => record,
            Ok(record) => {
                return failed_mount(
                    name,
                    format!("mount record {path} names mount {:?}", record.name),
                );
            }
            Err(reason) => return failed_mount(name, reason),
        };
        let scope = mount_scope(name);
        let engine = match self.barrier.active_dek_id(&scope) {
            Ok(Some(dek_id)) => {
                let store = MountStore::new(Arc::clone(&self.barrier), name, dek_id);
                match self.factory(&record.engine_type) {
                    Some(factory) => factory
                        .load(&store)
                        .map(|engine| LoadedEngine {
                            engine: Arc::from(engine),
                            store,
                        })
                        .map_err(|err| err.message),
                    None => Err(format!("unknown engine type {:?}", record.engine_type)),
                }
            }
            Ok(None) => Err(format!("scope {scope} has no data key")),
            Err(err) => Err(err.to_string()),
        };
        Mounted {
            info: MountInfo {
                name: record.name,
                engine_type: record.engine_type,
                created_at: record.created_at,
            },
            engine,
        }
    }

    /// Drops every engine once the requests running on them are done.
    pub(crate) fn unload_all(&self) {
        let _gate = self.gate.write().unwrap_or_else(|e| e.into_inner());
        let mounts = self
            .mounts
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        drop(mounts);
    }

    pub fn list(&self) -> Result<Vec<MountInfo>, ErrorBody> {
        let mounts = self.read_mounts();
        let mounts = mounts.as_ref().ok_or_else(ErrorBody::sealed)?;
        Ok(mounts
            .values()
            .map(|mounted| mounted.info.clone())
            .collect())
    }

    pub fn mount(&self, name: &str, config: &MountConfig) -> Result<MountInfo, ErrorBody> {
        validate_mount_name(name)?;
        let _gate = self.read_gate();
        let _changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        {
            let mounts = self.read_mounts();
            let mounts = mounts.as_ref().ok_or_else(ErrorBody::sealed)?;
            if mounts.contains_key(name) {
                return Err(ErrorBody::new(
                    ErrorCode::Conflict,
                    format!("mount {name} already exists"),
                ));
            }
        }

        let engine_type = config.engine_type();
        let factory = self.factory(engine_type).ok_or_else(|| {
            ErrorBody::invalid_request(format!("unknown engine type {engine_type:?}"))
        })?;
        let scope = mount_scope(name);
        let dek_id = self.barrier.create_scope_key(&scope)?;
        let store = MountStore::new(Arc::clone(&self.barrier), name, dek_id);
        let engine = match factory.initialize(&store, config) {
            Ok(engine) => engine,
            Err(err) => {
                self.discard_scope(&scope);
                return Err(err);
            }
        };

        let info = MountInfo {
            name: name.to_owned(),
            engine_type: engine_type.to_owned(),
            created_at: now_rfc3339(),
        };
        let record = MountRecord {
            name: info.name.clone(),
            engine_type: info.engine_type.clone(),
            created_at: info.created_at.clone(),
        };
        let json = serde_json::to_vec(&record)
            .map_err(|err| ErrorBody::internal(format!("failed to encode mount record: {err}")))?;
        let mut batch = WriteBatch::new();
        batch.put(&record_path(name), &json);
        if let Err(err) = self.system().commit(batch) {
            drop(engine);
            self.discard_scope(&scope);
            return Err(err.into());
        }

        let mounted = Arc::new(Mounted {
            info: info.clone(),
            engine: Ok(LoadedEngine {
                engine: Arc::from(engine),
                store,
            }),
        });
        // The gate is held, so no seal has cleared the map since the check.
        if let Some(mounts) = self
            .mounts
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            mounts.insert(name.to_owned(), mounted);
        }
        tracing::info!(mount = name, engine_type, "mounted");
        Ok(info)
    }

    /// Deletes what a failed mount created. The next mount of the same name
    /// purges the scope first too, so a failure here does no lasting harm.
    fn discard_scope(&self, scope: &str) {
        if let Err(err) = self.barrier.purge_scope(scope, Vec::new()) {
            tracing::error!(scope, error = %err, "failed to delete the state of a failed mount");
        }
    }

    pub fn unmount(&self, name: &str) -> Result<(), ErrorBody> {
        validate_mount_name(name)?;
        let _gate = self.read_gate();
        let _changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        let removed = {
            let mut mounts = self.mounts.write().unwrap_or_else(|e| e.into_inner());
            let mounts = mounts.as_mut().ok_or_else(ErrorBody::sealed)?;
            mounts
                .remove(name)
                .ok_or_else(|| ErrorBody::not_found(format!("mount {name} not found")))?
        };

        let delete_record = WriteOp::DeleteEntry {
            scope: SYSTEM_SCOPE.to_owned(),
            path: record_path(name),
        };
        if let Err(err) = self
            .barrier
            .purge_scope(&mount_scope(name), vec![delete_record])
        {
            if let Some(mounts) = self
                .mounts
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .as_mut()
            {
                mounts.insert(name.to_owned(), removed);
            }
            return Err(err.into());
        }
        // Requests still running on this mount hold their own reference;
        // the engine and its keys are dropped after the last one.
        drop(removed);
        tracing::info!(mount = name, "unmounted");
        Ok(())
    }

    /// Routes one request to mount `name`, whose engine must be of type
    /// `engine_type`.
    pub fn handle(
        &self,
        name: &str,
        engine_type: &str,
        context: RequestContext<'_>,
        request: EngineRequest,
    ) -> Result<EngineResponse, ErrorBody> {
        let _gate = self.read_gate();
        let mounted = {
            let mounts = self.read_mounts();
            let mounts = mounts.as_ref().ok_or_else(ErrorBody::sealed)?;
            Arc::clone(
                mounts
                    .get(name)
                    .ok_or_else(|| ErrorBody::not_found(format!("mount {name} not found")))?,
            )
        };
        let LoadedEngine { engine, store } = mounted.engine.as_ref().map_err(|reason| {
            ErrorBody::internal(format!("mount {name} failed to load at unseal: {reason}"))
        })?;
        if engine.engine_type() != engine_type {
            return Err(ErrorBody::invalid_request(format!(
                "mount {name} is a {} engine, not {engine_type}",
                engine.engine_type()
            )));
        }
        engine.handle(store, context, request)
    }
}

fn failed_mount(name: &str, reason: String) -> Mounted {
    Mounted {
        info: MountInfo {
            name: name.to_owned(),
            engine_type: "unknown".to_owned(),
            created_at: String::new(),
        },
        engine: Err(reason),
    }
}

fn record_path(name: &str) -> String {
    format!("{MOUNT_RECORD_PREFIX}{name}")
}

fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| OffsetDateTime::now_utc())
        .format(&Rfc3339)
        .unwrap_or_default()
}
