//! The barrier: every value keyd stores is encrypted under a data
//! encryption key (DEK) of its scope, and every DEK is wrapped by the MEK.
//!
//! Scopes are `system` (mount records and other service state) and
//! `mount:NAME` for each mount. Each entry is AES-256-GCM ciphertext with a
//! fresh random nonce, and its associated data binds the format version, the
//! scope, the path and the DEK id. A row that was moved to another path or
//! scope, altered, encrypted under another DEK or truncated therefore fails
//! authentication and reads as [`BarrierError::Integrity`], never as data.
//!
//! A [`MountStore`] is bound to the DEK its mount had when the store was
//! made. Once that DEK is no longer the active key of the scope (the mount
//! was unmounted, and perhaps mounted again under the same name), every
//! read and commit through the store fails with [`BarrierError::Unmounted`].
//! Commits check this inside the writer's transaction, so a request that
//! outlives its mount cannot write into a new mount of the same name.
//!
//! While unsealed the keyring (MEK and DEKs, in locked memory) sits behind a
//! read-write lock. Every read and every commit keeps a read lock on it until
//! it is done. Sealing takes the write lock, so it waits for the operations
//! already running and then drops the keys.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use metacrypt_protocol::{ErrorBody, ErrorCode};
use zeroize::Zeroizing;

use crate::crypto::{self, FORMAT_VERSION, KEY_LEN};
use crate::secure::SecretBytes;
pub use crate::store::{CertIndexQuery, IndexedState, serial_sort_key};
use crate::store::{EntryRecord, Store, WriteOp};

/// The scope of keyd's own entries, such as mount records.
pub const SYSTEM_SCOPE: &str = "system";

/// Maximum length of an entry path in bytes.
const MAX_PATH_LEN: usize = 512;

/// Returns the scope of a mount's entries.
pub fn mount_scope(mount: &str) -> String {
    format!("mount:{mount}")
}

/// Returns the error for a store of `scope` whose DEK is gone.
pub(crate) fn scope_key_removed(scope: &str) -> BarrierError {
    BarrierError::Unmounted {
        mount: scope.strip_prefix("mount:").unwrap_or(scope).to_owned(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BarrierError {
    #[error("sealed")]
    Sealed,
    /// `path` is the entry's scope and path, such as `mount:pki/root/key`.
    #[error("barrier integrity check failed for {path}")]
    Integrity { path: String },
    #[error("{what} already exists")]
    Duplicate { what: String },
    /// The store's DEK is no longer the active key of its scope.
    #[error("mount {mount} was unmounted while the request ran")]
    Unmounted { mount: String },
    /// No locked memory for a key (the memlock limit is reached).
    #[error("{0}")]
    LockedMemory(String),
    #[error("{0}")]
    Storage(String),
}

impl From<BarrierError> for ErrorBody {
    fn from(err: BarrierError) -> Self {
        match err {
            BarrierError::Sealed => ErrorBody::sealed(),
            BarrierError::Duplicate { .. } => ErrorBody::new(ErrorCode::Conflict, err.to_string()),
            BarrierError::Unmounted { .. } => ErrorBody::not_found(err.to_string()),
            BarrierError::LockedMemory(_) => {
                ErrorBody::new(ErrorCode::Unavailable, err.to_string())
            }
            BarrierError::Integrity { .. } | BarrierError::Storage(_) => {
                ErrorBody::internal(err.to_string())
            }
        }
    }
}

impl From<crate::secure::SecureError> for BarrierError {
    fn from(err: crate::secure::SecureError) -> Self {
        match err {
            crate::secure::SecureError::LockFailed { .. } => {
                BarrierError::LockedMemory(err.to_string())
            }
            _ => BarrierError::Storage(err.to_string()),
        }
    }
}

impl From<crypto::CryptoError> for BarrierError {
    fn from(err: crypto::CryptoError) -> Self {
        BarrierError::Storage(err.to_string())
    }
}

struct Dek {
    scope: String,
    key: SecretBytes,
}

/// The MEK and every active DEK, held while unsealed.
pub(crate) struct Keyring {
    mek: SecretBytes,
    deks: HashMap<i64, Dek>,
    /// The DEK new entries of each scope are encrypted under.
    active: HashMap<String, i64>,
    /// Decrypted entries that [`Barrier::get_kept`] read, by
    /// `scope\npath`.
    kept: Mutex<HashMap<String, SecretBytes>>,
}

impl Keyring {
    pub fn new(mek: SecretBytes) -> Self {
        Self {
            mek,
            deks: HashMap::new(),
            active: HashMap::new(),
            kept: Mutex::new(HashMap::new()),
        }
    }

    fn kept(&self) -> MutexGuard<'_, HashMap<String, SecretBytes>> {
        // Every operation on the map is a single lookup or insert, so a
        // panic elsewhere cannot leave it half-written.
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn mek(&self) -> &SecretBytes {
        &self.mek
    }

    pub(crate) fn insert(&mut self, dek_id: i64, scope: &str, key: SecretBytes) {
        self.active.insert(scope.to_owned(), dek_id);
        self.deks.insert(
            dek_id,
            Dek {
                scope: scope.to_owned(),
                key,
            },
        );
    }

    fn remove_scope(&mut self, scope: &str) {
        self.active.remove(scope);
        self.deks.retain(|_, dek| dek.scope != scope);
    }

    /// Fails unless `dek_id` is still the active DEK of `scope`.
    fn check_bound(&self, scope: &str, dek_id: Option<i64>) -> Result<(), BarrierError> {
        match dek_id {
            Some(id) if self.active.get(scope) != Some(&id) => Err(scope_key_removed(scope)),
            _ => Ok(()),
        }
    }

    fn active_dek(&self, scope: &str) -> Result<(i64, &Dek), BarrierError> {
        self.active
            .get(scope)
            .and_then(|id| self.deks.get(id).map(|dek| (*id, dek)))
            .ok_or_else(|| {
                BarrierError::Storage(format!(
                    "scope {scope} has no data key (was the mount removed?)"
                ))
            })
    }

    /// Decrypts an entry read from `scope`/`path`.
    fn open_entry(
        &self,
        scope: &str,
        path: &str,
        record: &EntryRecord,
    ) -> Result<Zeroizing<Vec<u8>>, BarrierError> {
        let plaintext = self
            .deks
            .get(&record.dek_id)
            .filter(|dek| dek.scope == scope)
            .and_then(|dek| {
                crypto::decrypt(
                    dek.key.as_bytes(),
                    &record.nonce,
                    &entry_aad(scope, path, record.dek_id),
                    &record.ciphertext,
                )
            });
        plaintext.ok_or_else(|| {
            tracing::error!(
                scope,
                path,
                dek_id = record.dek_id,
                "barrier integrity check failed"
            );
            BarrierError::Integrity {
                path: format!("{scope}/{path}"),
            }
        })
    }
}

fn entry_aad(scope: &str, path: &str, dek_id: i64) -> Vec<u8> {
    crypto::associated_data(&[
        b"metacrypt barrier entry",
        &FORMAT_VERSION.to_be_bytes(),
        scope.as_bytes(),
        path.as_bytes(),
        &dek_id.to_be_bytes(),
    ])
}

fn dek_aad(dek_id: i64, scope: &str) -> Vec<u8> {
    crypto::associated_data(&[
        b"metacrypt data key",
        &FORMAT_VERSION.to_be_bytes(),
        &dek_id.to_be_bytes(),
        scope.as_bytes(),
    ])
}

/// Generates a random DEK for `scope` and wraps it with `mek`. Returns the
/// id, the key and the `keyring` row to insert.
pub(crate) fn generate_dek(
    mek: &SecretBytes,
    scope: &str,
) -> Result<(i64, SecretBytes, WriteOp), BarrierError> {
    let dek_id = random_dek_id()?;
    let key = SecretBytes::random(KEY_LEN)?;
    let (nonce, wrapped) =
        crypto::encrypt(mek.as_bytes(), &dek_aad(dek_id, scope), key.as_bytes())?;
    let op = WriteOp::InsertDek {
        dek_id,
        scope: scope.to_owned(),
        wrapped,
        nonce: nonce.to_vec(),
    };
    Ok((dek_id, key, op))
}

/// Draws a random positive key id. Random ids (rather than a counter) keep
/// an id from being reused after its key is deleted.
fn random_dek_id() -> Result<i64, BarrierError> {
    loop {
        let mut bytes = [0u8; 8];
        aws_lc_rs::rand::fill(&mut bytes)
            .map_err(|_| BarrierError::Storage("the random number generator failed".to_owned()))?;
        let id = i64::from_be_bytes(bytes) & i64::MAX;
        if id != 0 {
            return Ok(id);
        }
    }
}

fn check_path(path: &str) -> Result<(), BarrierError> {
    if path.is_empty() || path.len() > MAX_PATH_LEN || path.chars().any(char::is_control) {
        return Err(BarrierError::Storage(format!(
            "invalid barrier path {path:?}: it must be 1 to {MAX_PATH_LEN} bytes without control characters"
        )));
    }
    Ok(())
}

/// The barrier over the database: the keyring while unsealed, and the store.
pub struct Barrier {
    keyring: RwLock<Option<Keyring>>,
    store: Store,
}

impl Barrier {
    pub(crate) fn new(store: Store) -> Self {
        Self {
            keyring: RwLock::new(None),
            store,
        }
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    pub fn is_unsealed(&self) -> bool {
        self.read_keyring().is_some()
    }

    fn read_keyring(&self) -> RwLockReadGuard<'_, Option<Keyring>> {
        // Keyring updates are single assignments, so a panic elsewhere cannot
        // leave the keyring half-written.
        self.keyring.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_keyring(&self) -> RwLockWriteGuard<'_, Option<Keyring>> {
        self.keyring.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `keyring` the keyring of the unsealed barrier.
    pub(crate) fn install(&self, keyring: Keyring) {
        *self.write_keyring() = Some(keyring);
    }

    /// Waits for the reads and commits already running, then drops (and so
    /// zeroizes) the MEK and every DEK.
    pub(crate) fn clear(&self) {
        let keyring = self.write_keyring().take();
        drop(keyring);
    }

    /// Copies the address and bytes of the MEK and of every DEK.
    #[cfg(test)]
    pub(crate) fn key_snapshot(&self) -> Vec<(usize, Vec<u8>)> {
        let keyring = self.read_keyring();
        let Some(keyring) = keyring.as_ref() else {
            return Vec::new();
        };
        let kept = keyring.kept();
        std::iter::once(&keyring.mek)
            .chain(keyring.deks.values().map(|dek| &dek.key))
            .chain(kept.values())
            .map(|key| (key.address(), key.as_bytes().to_vec()))
            .collect()
    }

    /// Unwraps every active DEK with `mek` into a new keyring.
    pub(crate) fn unwrap_keyring(&self, mek: SecretBytes) -> Result<Keyring, BarrierError> {
        let mut keyring = Keyring::new(mek);
        for record in self.store.active_deks()? {
            let key = crypto::decrypt(
                keyring.mek.as_bytes(),
                &record.nonce,
                &dek_aad(record.dek_id, &record.scope),
                &record.wrapped,
            )
            .filter(|key| key.len() == KEY_LEN)
            .ok_or_else(|| {
                tracing::error!(
                    dek_id = record.dek_id,
                    scope = record.scope,
                    "data key integrity check failed"
                );
                BarrierError::Integrity {
                    path: format!("keyring/{}", record.dek_id),
                }
            })?;
            keyring.insert(record.dek_id, &record.scope, SecretBytes::from_slice(&key)?);
        }
        Ok(keyring)
    }

    /// Returns the id of the active DEK of `scope`, if it has one.
    pub(crate) fn active_dek_id(&self, scope: &str) -> Result<Option<i64>, BarrierError> {
        let guard = self.read_keyring();
        let keyring = guard.as_ref().ok_or(BarrierError::Sealed)?;
        Ok(keyring.active.get(scope).copied())
    }

    /// Creates a DEK for `scope` after deleting whatever the scope held
    /// (left over from a mount that failed half-way), in one transaction.
    /// Returns the new DEK's id.
    pub(crate) fn create_scope_key(&self, scope: &str) -> Result<i64, BarrierError> {
        let (dek_id, key) = {
            let guard = self.read_keyring();
            let keyring = guard.as_ref().ok_or(BarrierError::Sealed)?;
            let (dek_id, key, insert) = generate_dek(keyring.mek(), scope)?;
            let purge = WriteOp::PurgeScope {
                scope: scope.to_owned(),
            };
            self.store.commit(vec![purge, insert])?;
            (dek_id, key)
        };
        let mut guard = self.write_keyring();
        let keyring = guard.as_mut().ok_or(BarrierError::Sealed)?;
        keyring.insert(dek_id, scope, key);
        Ok(dek_id)
    }

    /// Deletes every entry, serial and DEK of `scope` together with `extra`
    /// in one transaction, then removes the scope's DEK from the keyring.
    pub(crate) fn purge_scope(&self, scope: &str, extra: Vec<WriteOp>) -> Result<(), BarrierError> {
        {
            let guard = self.read_keyring();
            guard.as_ref().ok_or(BarrierError::Sealed)?;
            let mut ops = vec![WriteOp::PurgeScope {
                scope: scope.to_owned(),
            }];
            ops.extend(extra);
            self.store.commit(ops)?;
        }
        if let Some(keyring) = self.write_keyring().as_mut() {
            keyring.remove_scope(scope);
        }
        Ok(())
    }

    // The reads below check the bound DEK while holding the keyring's read
    // lock. An unmount removes the DEK from the keyring under the write lock
    // before a new mount of the name can start, so a read that passes the
    // check sees the old mount's rows, or none once they are purged.

    fn get(
        &self,
        scope: &str,
        dek_id: Option<i64>,
        path: &str,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, BarrierError> {
        let guard = self.read_keyring();
        let keyring = guard.as_ref().ok_or(BarrierError::Sealed)?;
        keyring.check_bound(scope, dek_id)?;
        match self.store.entry(scope, path)? {
            Some(record) => keyring.open_entry(scope, path, &record).map(Some),
            None => Ok(None),
        }
    }

    /// Like [`Barrier::get`], but the first read of an entry keeps its
    /// plaintext in the keyring, and later reads copy it from there without
    /// a database read. The kept copy is zeroized with the keyring at seal.
    /// Only for entries that are written once and never replaced or deleted.
    fn get_kept(
        &self,
        scope: &str,
        dek_id: Option<i64>,
        path: &str,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, BarrierError> {
        let guard = self.read_keyring();
        let keyring = guard.as_ref().ok_or(BarrierError::Sealed)?;
        keyring.check_bound(scope, dek_id)?;
        let name = format!("{scope}\n{path}");
        if let Some(value) = keyring.kept().get(&name) {
            return Ok(Some(Zeroizing::new(value.as_bytes().to_vec())));
        }
        let Some(record) = self.store.entry(scope, path)? else {
            return Ok(None);
        };
        let value = keyring.open_entry(scope, path, &record)?;
        keyring
            .kept()
            .insert(name, SecretBytes::from_slice(&value)?);
        Ok(Some(value))
    }

    /// Runs a read of the serial index of `scope`, which needs the barrier
    /// unsealed and the scope's DEK still active, like reading an entry.
    fn read_index<T>(
        &self,
        scope: &str,
        dek_id: Option<i64>,
        read: impl FnOnce(&Store) -> Result<T, BarrierError>,
    ) -> Result<T, BarrierError> {
        let guard = self.read_keyring();
        let keyring = guard.as_ref().ok_or(BarrierError::Sealed)?;
        keyring.check_bound(scope, dek_id)?;
        read(&self.store)
    }

    fn list(
        &self,
        scope: &str,
        dek_id: Option<i64>,
        prefix: &str,
    ) -> Result<Vec<String>, BarrierError> {
        let guard = self.read_keyring();
        let keyring = guard.as_ref().ok_or(BarrierError::Sealed)?;
        keyring.check_bound(scope, dek_id)?;
        self.store.paths(scope, prefix)
    }

    /// Encrypts and commits `batch`. With a bound `dek_id`, the batch starts
    /// with a check that the writer runs in its transaction, so an unmount
    /// committed just before fails the whole batch.
    fn commit(
        &self,
        scope: &str,
        dek_id: Option<i64>,
        batch: WriteBatch,
    ) -> Result<(), BarrierError> {
        let guard = self.read_keyring();
        let keyring = guard.as_ref().ok_or(BarrierError::Sealed)?;
        keyring.check_bound(scope, dek_id)?;
        let mut ops = Vec::with_capacity(batch.items.len() + 1);
        if let Some(dek_id) = dek_id {
            ops.push(WriteOp::RequireActiveDek {
                scope: scope.to_owned(),
                dek_id,
            });
        }
        for item in batch.items {
            ops.push(match item {
                BatchItem::Put {
                    path,
                    value,
                    replace,
                } => encrypt_entry(keyring, scope, &path, &value, replace)?,
                BatchItem::Delete { path } => {
                    check_path(&path)?;
                    WriteOp::DeleteEntry {
                        scope: scope.to_owned(),
                        path,
                    }
                }
                BatchItem::Serial {
                    issuer,
                    serial,
                    not_after,
                    profile,
                } => WriteOp::InsertSerial {
                    scope: scope.to_owned(),
                    issuer,
                    serial,
                    not_after,
                    profile,
                },
                BatchItem::SerialUpdate {
                    issuer,
                    serial,
                    profile,
                    revoked,
                } => WriteOp::UpdateSerial {
                    scope: scope.to_owned(),
                    issuer,
                    serial,
                    profile,
                    revoked,
                },
                BatchItem::SerialCommonName {
                    issuer,
                    serial,
                    common_name,
                } => WriteOp::SetSerialCommonName {
                    scope: scope.to_owned(),
                    issuer,
                    serial,
                    common_name,
                },
            });
        }
        // The read guard stays held until the write is durable, so a seal
        // waits for this commit.
        self.store.commit(ops)
    }
}

fn encrypt_entry(
    keyring: &Keyring,
    scope: &str,
    path: &str,
    value: &[u8],
    replace: bool,
) -> Result<WriteOp, BarrierError> {
    check_path(path)?;
    let (dek_id, dek) = keyring.active_dek(scope)?;
    let (nonce, ciphertext) =
        crypto::encrypt(dek.key.as_bytes(), &entry_aad(scope, path, dek_id), value)?;
    Ok(WriteOp::PutEntry {
        scope: scope.to_owned(),
        path: path.to_owned(),
        dek_id,
        nonce: nonce.to_vec(),
        ciphertext,
        replace,
    })
}

/// A view of one scope of the barrier; cheap to clone.
#[derive(Clone)]
pub(crate) struct ScopeView {
    barrier: Arc<Barrier>,
    scope: Arc<str>,
    /// The DEK the view is bound to, or `None` to follow whichever DEK is
    /// active (for the system scope, whose DEK never changes).
    dek_id: Option<i64>,
}

impl ScopeView {
    pub fn new(barrier: Arc<Barrier>, scope: &str) -> Self {
        Self {
            barrier,
            scope: Arc::from(scope),
            dek_id: None,
        }
    }

    fn bound(barrier: Arc<Barrier>, scope: &str, dek_id: i64) -> Self {
        Self {
            barrier,
            scope: Arc::from(scope),
            dek_id: Some(dek_id),
        }
    }

    pub fn scope(&self) -> &str {
        &self.scope
    }

    pub fn get(&self, path: &str) -> Result<Option<Zeroizing<Vec<u8>>>, BarrierError> {
        self.barrier.get(&self.scope, self.dek_id, path)
    }

    /// Reads an entry that is never replaced or deleted, from the keyring
    /// after the first read (see [`Barrier::get_kept`]).
    pub fn get_kept(&self, path: &str) -> Result<Option<Zeroizing<Vec<u8>>>, BarrierError> {
        self.barrier.get_kept(&self.scope, self.dek_id, path)
    }

    pub fn list(&self, prefix: &str) -> Result<Vec<String>, BarrierError> {
        self.barrier.list(&self.scope, self.dek_id, prefix)
    }

    pub fn commit(&self, batch: WriteBatch) -> Result<(), BarrierError> {
        self.barrier.commit(&self.scope, self.dek_id, batch)
    }
}

/// The barrier view of one mount's scope (`mount:NAME`), bound to the
/// mount's DEK; cheap to clone.
#[derive(Clone)]
pub struct MountStore {
    view: ScopeView,
    mount_name: Arc<str>,
}

impl MountStore {
    /// Makes the store of mount `mount_name`, whose DEK is `dek_id`.
    pub(crate) fn new(barrier: Arc<Barrier>, mount_name: &str, dek_id: i64) -> Self {
        Self {
            view: ScopeView::bound(barrier, &mount_scope(mount_name), dek_id),
            mount_name: Arc::from(mount_name),
        }
    }

    pub fn mount_name(&self) -> &str {
        &self.mount_name
    }

    /// `mount:NAME`.
    pub fn scope(&self) -> &str {
        self.view.scope()
    }

    /// Decrypts the entry at `path`; `None` when there is none. Fails with
    /// [`BarrierError::Unmounted`] once the mount is gone.
    pub fn get(&self, path: &str) -> Result<Option<Zeroizing<Vec<u8>>>, BarrierError> {
        self.view.get(path)
    }

    /// Returns the full paths of the entries that start with `prefix`, sorted.
    pub fn list(&self, prefix: &str) -> Result<Vec<String>, BarrierError> {
        self.view.list(prefix)
    }

    /// Returns `(sort_key, serial)` of the mount's leaf index rows that
    /// match `query`, in ascending serial order.
    pub fn cert_index_page(
        &self,
        query: &CertIndexQuery,
    ) -> Result<Vec<(String, String)>, BarrierError> {
        let view = &self.view;
        view.barrier.read_index(view.scope(), view.dek_id, |store| {
            store.cert_index_page(view.scope(), query)
        })
    }

    /// Counts the leaves of `issuer` in the serial index that are neither
    /// revoked nor expired at `now` (Unix seconds).
    pub fn count_active_certs(&self, issuer: &str, now: i64) -> Result<u64, BarrierError> {
        let view = &self.view;
        view.barrier.read_index(view.scope(), view.dek_id, |store| {
            store.count_active_serials(view.scope(), issuer, now)
        })
    }

    /// Returns whether a serial index row of the mount lacks its profile
    /// and revocation columns.
    pub fn has_unindexed_certs(&self) -> Result<bool, BarrierError> {
        let view = &self.view;
        view.barrier.read_index(view.scope(), view.dek_id, |store| {
            store.has_unindexed_serials(view.scope())
        })
    }

    /// Returns `(issuer, serial)` of at most `limit` serial index rows of
    /// the mount that lack their profile and revocation columns.
    pub fn unindexed_certs(&self, limit: u32) -> Result<Vec<(String, String)>, BarrierError> {
        let view = &self.view;
        view.barrier.read_index(view.scope(), view.dek_id, |store| {
            store.unindexed_serials(view.scope(), limit)
        })
    }

    /// Applies the batch atomically; it is durable when this returns `Ok`.
    pub fn commit(&self, batch: WriteBatch) -> Result<(), BarrierError> {
        self.view.commit(batch)
    }
}

impl fmt::Debug for MountStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MountStore")
            .field("scope", &self.scope())
            .finish_non_exhaustive()
    }
}

enum BatchItem {
    Put {
        path: String,
        value: Zeroizing<Vec<u8>>,
        /// Whether an entry already at the path is replaced; if not, the
        /// commit fails with [`BarrierError::Duplicate`].
        replace: bool,
    },
    Delete {
        path: String,
    },
    Serial {
        issuer: String,
        serial: String,
        not_after: i64,
        profile: Option<String>,
    },
    SerialUpdate {
        issuer: String,
        serial: String,
        profile: Option<String>,
        revoked: bool,
    },
    SerialCommonName {
        issuer: String,
        serial: String,
        common_name: String,
    },
}

/// Changes that [`MountStore::commit`] applies together or not at all.
#[derive(Default)]
pub struct WriteBatch {
    items: Vec<BatchItem>,
}

impl WriteBatch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores `value` at `path`, replacing what was there. The batch keeps a
    /// copy that is zeroized when the batch is dropped.
    pub fn put(&mut self, path: &str, value: &[u8]) {
        self.items.push(BatchItem::Put {
            path: path.to_owned(),
            value: Zeroizing::new(value.to_vec()),
            replace: true,
        });
    }

    /// Stores `value` at a new `path`. Fails the whole commit with
    /// [`BarrierError::Duplicate`] if an entry is already there. The batch
    /// keeps a copy that is zeroized when the batch is dropped.
    pub fn insert(&mut self, path: &str, value: &[u8]) {
        self.items.push(BatchItem::Put {
            path: path.to_owned(),
            value: Zeroizing::new(value.to_vec()),
            replace: false,
        });
    }

    pub fn delete(&mut self, path: &str) {
        self.items.push(BatchItem::Delete {
            path: path.to_owned(),
        });
    }

    /// Adds a serial index row; `profile` is the leaf's profile, `None` for
    /// the root and the issuers. Fails the whole commit with
    /// [`BarrierError::Duplicate`] if (scope, issuer, serial) exists.
    pub fn insert_cert_serial(
        &mut self,
        issuer: &str,
        serial_hex: &str,
        not_after_unix: i64,
        profile: Option<&str>,
    ) {
        self.items.push(BatchItem::Serial {
            issuer: issuer.to_owned(),
            serial: serial_hex.to_owned(),
            not_after: not_after_unix,
            profile: profile.map(str::to_owned),
        });
    }

    /// Sets the profile and revocation flag of a serial index row and marks
    /// it indexed. A row that does not exist is left alone.
    pub fn update_cert_serial(
        &mut self,
        issuer: &str,
        serial_hex: &str,
        profile: Option<&str>,
        revoked: bool,
    ) {
        self.items.push(BatchItem::SerialUpdate {
            issuer: issuer.to_owned(),
            serial: serial_hex.to_owned(),
            profile: profile.map(str::to_owned),
            revoked,
        });
    }

    /// Sets the common name of a leaf's serial index row, lowercased for the
    /// case-insensitive substring filter of list-certs.
    pub fn set_cert_common_name(&mut self, issuer: &str, serial_hex: &str, common_name: &str) {
        self.items.push(BatchItem::SerialCommonName {
            issuer: issuer.to_owned(),
            serial: serial_hex.to_owned(),
            common_name: common_name.to_lowercase(),
        });
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

impl fmt::Debug for WriteBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteBatch")
            .field("len", &self.items.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestBarrier;

    fn open() -> (tempfile::TempDir, TestBarrier) {
        let dir = tempfile::tempdir().unwrap();
        let barrier = TestBarrier::open(&dir.path().join("keyd.db"));
        (dir, barrier)
    }

    fn put(store: &MountStore, path: &str, value: &[u8]) {
        let mut batch = WriteBatch::new();
        batch.put(path, value);
        store.commit(batch).unwrap();
    }

    fn integrity(path: &str) -> BarrierError {
        BarrierError::Integrity {
            path: path.to_owned(),
        }
    }

    #[test]
    fn key_types_have_no_debug_or_serialize() {
        crate::secure::assert_not_debug_or_serialize!(Keyring, Dek, Barrier);
    }

    #[test]
    fn seal_zeroes_every_key() {
        let (_dir, barrier) = open();
        put(&barrier.mount_store("pki"), "root/key", b"secret key");
        // The MEK, the system DEK and the DEK of the mount.
        let before = barrier.inner().key_snapshot();
        assert_eq!(before.len(), 3);
        for (_, bytes) in &before {
            assert_eq!(bytes.len(), KEY_LEN);
            assert!(bytes.iter().any(|byte| *byte != 0), "a key is all zero");
        }

        let dropped = crate::secure::capture_dropped(|| barrier.seal());
        assert!(barrier.inner().key_snapshot().is_empty());
        for (address, _) in &before {
            let (_, after) = dropped
                .iter()
                .find(|(freed, _)| freed == address)
                .expect("every key of the keyring is dropped at seal");
            assert_eq!(after, &vec![0u8; KEY_LEN]);
        }
    }

    #[test]
    fn kept_entry_is_read_once_and_zeroed_at_seal() {
        let (_dir, barrier) = open();
        put(&barrier.mount_store("pki"), "hmac/key", b"kept secret");
        let inner = barrier.inner();
        let kept = || inner.get_kept("mount:pki", None, "hmac/key");
        assert_eq!(kept().unwrap().unwrap().as_slice(), b"kept secret");
        // With the row gone, the value still comes from the keyring.
        barrier
            .raw_connection()
            .execute("DELETE FROM barrier_entries WHERE path = 'hmac/key'", [])
            .unwrap();
        assert_eq!(kept().unwrap().unwrap().as_slice(), b"kept secret");
        assert_eq!(inner.get_kept("mount:pki", None, "other").unwrap(), None);

        let before = inner.key_snapshot();
        let (address, _) = before
            .iter()
            .find(|(_, bytes)| bytes.as_slice() == b"kept secret")
            .expect("the kept entry is in the keyring");
        let dropped = crate::secure::capture_dropped(|| barrier.seal());
        let (_, after) = dropped
            .iter()
            .find(|(freed, _)| freed == address)
            .expect("the kept entry is dropped at seal");
        assert_eq!(after, &vec![0u8; b"kept secret".len()]);
        assert!(matches!(kept(), Err(BarrierError::Sealed)));
    }

    #[test]
    fn put_then_get_returns_value() {
        let (_dir, barrier) = open();
        let store = barrier.mount_store("pki");
        put(&store, "root/key", b"secret key");
        assert_eq!(
            store.get("root/key").unwrap().unwrap().as_slice(),
            b"secret key"
        );
        assert_eq!(store.get("root/other").unwrap(), None);
        assert_eq!(store.mount_name(), "pki");
        assert_eq!(store.scope(), "mount:pki");
    }

    #[test]
    fn ciphertext_does_not_contain_plaintext() {
        let (_dir, barrier) = open();
        let store = barrier.mount_store("pki");
        put(&store, "root/key", b"plaintext marker 0123456789");
        let raw: Vec<u8> = barrier
            .raw_connection()
            .query_row(
                "SELECT ciphertext FROM barrier_entries WHERE scope = 'mount:pki'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert!(!raw.windows(16).any(|window| window == b"plaintext marker"));
    }

    #[test]
    fn list_returns_sorted_paths_with_prefix() {
        let (_dir, barrier) = open();
        let store = barrier.mount_store("pki");
        let mut batch = WriteBatch::new();
        for path in [
            "certs/03",
            "certs/01",
            "issuers/a/cert",
            "certs/02",
            "certsx",
        ] {
            batch.put(path, b"x");
        }
        store.commit(batch).unwrap();
        assert_eq!(
            store.list("certs/").unwrap(),
            ["certs/01", "certs/02", "certs/03"]
        );
        assert_eq!(store.list("").unwrap().len(), 5);
        assert!(store.list("none/").unwrap().is_empty());
    }

    #[test]
    fn scopes_do_not_see_each_other() {
        let (_dir, barrier) = open();
        let one = barrier.mount_store("one");
        let two = barrier.mount_store("two");
        put(&one, "a", b"1");
        assert_eq!(two.get("a").unwrap(), None);
        assert!(two.list("").unwrap().is_empty());
    }

    #[test]
    fn delete_removes_entry() {
        let (_dir, barrier) = open();
        let store = barrier.mount_store("pki");
        put(&store, "a", b"1");
        let mut batch = WriteBatch::new();
        batch.delete("a");
        store.commit(batch).unwrap();
        assert_eq!(store.get("a").unwrap(), None);
    }

    #[test]
    fn put_replaces_value() {
        let (_dir, barrier) = open();
        let store = barrier.mount_store("pki");
        put(&store, "a", b"1");
        put(&store, "a", b"2");
        assert_eq!(store.get("a").unwrap().unwrap().as_slice(), b"2");
    }

    #[test]
    fn invalid_path_is_rejected() {
        let (_dir, barrier) = open();
        let store = barrier.mount_store("pki");
        for path in ["", "a\nb", &"x".repeat(MAX_PATH_LEN + 1)] {
            let mut batch = WriteBatch::new();
            batch.put(path, b"1");
            assert!(
                matches!(store.commit(batch), Err(BarrierError::Storage(_))),
                "{path:?}"
            );
        }
    }

    #[test]
    fn sealed_barrier_answers_sealed() {
        let (_dir, barrier) = open();
        let store = barrier.mount_store("pki");
        put(&store, "a", b"1");
        barrier.seal();
        assert_eq!(store.get("a"), Err(BarrierError::Sealed));
        assert_eq!(store.list(""), Err(BarrierError::Sealed));
        let mut batch = WriteBatch::new();
        batch.put("b", b"2");
        assert_eq!(store.commit(batch), Err(BarrierError::Sealed));
    }

    #[test]
    fn duplicate_serial_fails_whole_batch() {
        let (_dir, barrier) = open();
        let store = barrier.mount_store("pki");
        let mut batch = WriteBatch::new();
        batch.put("certs/aa", b"first");
        batch.insert_cert_serial("web", "aa", 1_900_000_000, None);
        store.commit(batch).unwrap();

        let mut batch = WriteBatch::new();
        batch.put("certs/aa", b"second");
        batch.put("certs/bb", b"other");
        batch.insert_cert_serial("web", "aa", 1_900_000_000, None);
        let err = store.commit(batch).unwrap_err();
        assert!(matches!(err, BarrierError::Duplicate { .. }), "{err}");
        assert_eq!(store.get("certs/aa").unwrap().unwrap().as_slice(), b"first");
        assert_eq!(store.get("certs/bb").unwrap(), None);
    }

    #[test]
    fn same_serial_under_other_issuer_is_allowed() {
        let (_dir, barrier) = open();
        let store = barrier.mount_store("pki");
        for issuer in ["web", "mail"] {
            let mut batch = WriteBatch::new();
            batch.insert_cert_serial(issuer, "aa", 1_900_000_000, None);
            store.commit(batch).unwrap();
        }
    }

    #[test]
    fn concurrent_commits_all_land() {
        let (_dir, barrier) = open();
        let store = barrier.mount_store("pki");
        let threads: Vec<_> = (0..16)
            .map(|thread| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        let mut batch = WriteBatch::new();
                        let serial = format!("{thread:02x}{i:04x}");
                        batch.put(&format!("certs/{serial}"), serial.as_bytes());
                        batch.insert_cert_serial("web", &serial, 1_900_000_000, None);
                        store.commit(batch).unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let paths = store.list("certs/").unwrap();
        assert_eq!(paths.len(), 16 * 50);
        for path in paths {
            let value = store.get(&path).unwrap().unwrap();
            assert_eq!(
                value.as_slice(),
                path.strip_prefix("certs/").unwrap().as_bytes()
            );
        }
    }

    #[test]
    fn concurrent_duplicates_fail_only_their_batch() {
        let (_dir, barrier) = open();
        let store = barrier.mount_store("pki");
        // Every thread writes its own path and the same serial: exactly one
        // batch may win the serial, the others fail alone.
        let threads: Vec<_> = (0..16)
            .map(|thread| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let mut batch = WriteBatch::new();
                    batch.put(&format!("certs/{thread}"), b"x");
                    batch.insert_cert_serial("web", "shared", 1_900_000_000, None);
                    let contested = store.commit(batch);
                    let mut batch = WriteBatch::new();
                    batch.put(&format!("own/{thread}"), b"y");
                    batch.insert_cert_serial("web", &format!("own-{thread}"), 1_900_000_000, None);
                    (contested, store.commit(batch))
                })
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let winners = results
            .iter()
            .filter(|(contested, _)| contested.is_ok())
            .count();
        assert_eq!(winners, 1);
        for (contested, own) in &results {
            if let Err(err) = contested {
                assert!(matches!(err, BarrierError::Duplicate { .. }), "{err}");
            }
            assert_eq!(own, &Ok(()));
        }
        assert_eq!(store.list("certs/").unwrap().len(), 1);
        assert_eq!(store.list("own/").unwrap().len(), 16);
    }

    /// Writes three rows and returns the store.
    fn store_with_rows(barrier: &TestBarrier) -> MountStore {
        let store = barrier.mount_store("pki");
        let mut batch = WriteBatch::new();
        batch.put("a", b"value of a, long enough to truncate");
        batch.put("b", b"value of b, long enough to truncate");
        batch.put("keep", b"untouched");
        store.commit(batch).unwrap();
        store
    }

    fn assert_untouched_row_readable(store: &MountStore) {
        assert_eq!(store.get("keep").unwrap().unwrap().as_slice(), b"untouched");
    }

    #[test]
    fn row_copied_to_other_path_fails_integrity() {
        let (_dir, barrier) = open();
        let store = store_with_rows(&barrier);
        barrier
            .raw_connection()
            .execute(
                "INSERT INTO barrier_entries (scope, path, dek_id, nonce, ciphertext, updated_at) \
                 SELECT scope, 'moved', dek_id, nonce, ciphertext, updated_at \
                 FROM barrier_entries WHERE scope = 'mount:pki' AND path = 'a'",
                [],
            )
            .unwrap();
        assert_eq!(store.get("moved"), Err(integrity("mount:pki/moved")));
        assert!(store.get("a").unwrap().is_some());
        assert_untouched_row_readable(&store);
    }

    #[test]
    fn row_copied_to_other_scope_fails_integrity() {
        let (_dir, barrier) = open();
        let store = store_with_rows(&barrier);
        let other = barrier.mount_store("other");
        barrier
            .raw_connection()
            .execute(
                "INSERT INTO barrier_entries (scope, path, dek_id, nonce, ciphertext, updated_at) \
                 SELECT 'mount:other', path, dek_id, nonce, ciphertext, updated_at \
                 FROM barrier_entries WHERE scope = 'mount:pki' AND path = 'a'",
                [],
            )
            .unwrap();
        assert_eq!(other.get("a"), Err(integrity("mount:other/a")));
        assert_untouched_row_readable(&store);
    }

    #[test]
    fn row_reencrypted_under_other_scope_key_fails_integrity() {
        let (_dir, barrier) = open();
        let store = store_with_rows(&barrier);
        let other = barrier.mount_store("other");
        put(&other, "a", b"written under the other mount's key");
        // Copy other's row (its DEK id, nonce and ciphertext) over pki's `a`.
        barrier
            .raw_connection()
            .execute(
                "UPDATE barrier_entries SET (dek_id, nonce, ciphertext) = \
                 (SELECT dek_id, nonce, ciphertext FROM barrier_entries \
                  WHERE scope = 'mount:other' AND path = 'a') \
                 WHERE scope = 'mount:pki' AND path = 'a'",
                [],
            )
            .unwrap();
        assert_eq!(store.get("a"), Err(integrity("mount:pki/a")));
        assert_untouched_row_readable(&store);
    }

    #[test]
    fn flipped_bytes_fail_integrity() {
        for column in ["ciphertext", "nonce"] {
            let (_dir, barrier) = open();
            let store = store_with_rows(&barrier);
            let conn = barrier.raw_connection();
            let mut value: Vec<u8> = conn
                .query_row(
                    &format!("SELECT {column} FROM barrier_entries WHERE scope = 'mount:pki' AND path = 'a'"),
                    [],
                    |row| row.get(0),
                )
                .unwrap();
            value[3] ^= 0x01;
            conn.execute(
                &format!("UPDATE barrier_entries SET {column} = ?1 WHERE scope = 'mount:pki' AND path = 'a'"),
                [&value],
            )
            .unwrap();
            assert_eq!(store.get("a"), Err(integrity("mount:pki/a")), "{column}");
            assert_untouched_row_readable(&store);
        }
    }

    #[test]
    fn changed_dek_id_fails_integrity() {
        let (_dir, barrier) = open();
        let store = store_with_rows(&barrier);
        let conn = barrier.raw_connection();
        // Someone editing the file is not bound by the foreign key.
        conn.pragma_update(None, "foreign_keys", false).unwrap();
        let system_dek: i64 = conn
            .query_row(
                "SELECT dek_id FROM keyring WHERE scope = 'system'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        for dek_id in [system_dek, 424242] {
            conn.execute(
                "UPDATE barrier_entries SET dek_id = ?1 WHERE scope = 'mount:pki' AND path = 'a'",
                [dek_id],
            )
            .unwrap();
            assert_eq!(
                store.get("a"),
                Err(integrity("mount:pki/a")),
                "dek {dek_id}"
            );
        }
        assert_untouched_row_readable(&store);
    }

    #[test]
    fn truncated_ciphertext_fails_integrity() {
        for length in [10usize, 0] {
            let (_dir, barrier) = open();
            let store = store_with_rows(&barrier);
            barrier
                .raw_connection()
                .execute(
                    "UPDATE barrier_entries SET ciphertext = substr(ciphertext, 1, ?1) \
                     WHERE scope = 'mount:pki' AND path = 'a'",
                    [length as i64],
                )
                .unwrap();
            assert_eq!(
                store.get("a"),
                Err(integrity("mount:pki/a")),
                "length {length}"
            );
            assert_untouched_row_readable(&store);
        }
    }

    #[test]
    fn swapped_ciphertexts_fail_integrity() {
        let (_dir, barrier) = open();
        let store = store_with_rows(&barrier);
        barrier
            .raw_connection()
            .execute_batch(
                "CREATE TEMP TABLE saved AS SELECT path, nonce, ciphertext FROM barrier_entries \
                   WHERE scope = 'mount:pki' AND path IN ('a', 'b');
                 UPDATE barrier_entries SET \
                   nonce = (SELECT nonce FROM saved WHERE path = 'b'), \
                   ciphertext = (SELECT ciphertext FROM saved WHERE path = 'b') \
                   WHERE scope = 'mount:pki' AND path = 'a';
                 UPDATE barrier_entries SET \
                   nonce = (SELECT nonce FROM saved WHERE path = 'a'), \
                   ciphertext = (SELECT ciphertext FROM saved WHERE path = 'a') \
                   WHERE scope = 'mount:pki' AND path = 'b';",
            )
            .unwrap();
        assert_eq!(store.get("a"), Err(integrity("mount:pki/a")));
        assert_eq!(store.get("b"), Err(integrity("mount:pki/b")));
        assert_untouched_row_readable(&store);
    }

    #[test]
    fn integrity_error_message_names_path() {
        let err = integrity("mount:pki/root/key");
        assert_eq!(
            err.to_string(),
            "barrier integrity check failed for mount:pki/root/key"
        );
        let body = ErrorBody::from(err);
        assert_eq!(body.code, ErrorCode::Internal);
        assert_eq!(
            body.message,
            "barrier integrity check failed for mount:pki/root/key"
        );
    }

    #[test]
    fn errors_map_to_protocol_codes() {
        assert_eq!(ErrorBody::from(BarrierError::Sealed), ErrorBody::sealed());
        let duplicate = ErrorBody::from(BarrierError::Duplicate {
            what: "serial aa".to_owned(),
        });
        assert_eq!(duplicate.code, ErrorCode::Conflict);
        assert_eq!(duplicate.message, "serial aa already exists");
        let storage = ErrorBody::from(BarrierError::Storage("disk full".to_owned()));
        assert_eq!(storage.code, ErrorCode::Internal);
    }

    #[test]
    fn store_of_unmounted_mount_fails() {
        let (_dir, barrier) = open();
        let stale = barrier.mount_store("pki");
        put(&stale, "a", b"old mount");
        barrier.unmount("pki");
        let unmounted = BarrierError::Unmounted {
            mount: "pki".to_owned(),
        };
        assert_eq!(stale.get("a"), Err(unmounted.clone()));
        assert_eq!(stale.list(""), Err(unmounted.clone()));

        let fresh = barrier.mount_store("pki");
        put(&fresh, "b", b"new mount");
        assert_eq!(stale.get("b"), Err(unmounted.clone()));
        let mut batch = WriteBatch::new();
        batch.put("stale", b"written after the unmount");
        batch.insert_cert_serial("web", "aa", 1_900_000_000, None);
        assert_eq!(stale.commit(batch), Err(unmounted));

        assert_eq!(fresh.list("").unwrap(), ["b"]);
        let serials: i64 = barrier
            .raw_connection()
            .query_row("SELECT count(*) FROM ca_cert_serials", [], |row| row.get(0))
            .unwrap();
        assert_eq!(serials, 0);
    }

    #[test]
    fn unmounted_error_is_not_found() {
        let body = ErrorBody::from(BarrierError::Unmounted {
            mount: "pki".to_owned(),
        });
        assert_eq!(body.code, ErrorCode::NotFound);
        assert_eq!(
            body.message,
            "mount pki was unmounted while the request ran"
        );
    }
}
