//! An unsealed barrier on a scratch database, for tests of engines and for
//! benchmarks. It runs the same store, writer thread and encryption as keyd,
//! with a random MEK that is never written down, so the database cannot be
//! unsealed later.
//!
//! Compiled for this crate's tests and, for other crates, with the
//! `testing` feature.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::barrier::{Barrier, Keyring, MountStore, SYSTEM_SCOPE, mount_scope};
use crate::crypto::KEY_LEN;
use crate::db::Database;
use crate::secure::SecretBytes;
use crate::store::Store;

/// An unsealed barrier over the database file at a path the caller chose.
pub struct TestBarrier {
    barrier: Arc<Barrier>,
    path: PathBuf,
}

impl TestBarrier {
    /// Creates (or opens) the database at `path` and unseals a barrier over
    /// it with a new random MEK and a system DEK.
    ///
    /// # Panics
    ///
    /// When the database cannot be opened or a key cannot be made; this is
    /// test support code.
    pub fn open(path: &Path) -> TestBarrier {
        let database = Database::open(path, 4).expect("open the test database");
        let store = Store::start(database).expect("start the database writer");
        let barrier = Arc::new(Barrier::new(store));
        let mek = SecretBytes::random(KEY_LEN).expect("generate a MEK");
        barrier.install(Keyring::new(mek));
        barrier
            .create_scope_key(SYSTEM_SCOPE)
            .expect("create the system data key");
        TestBarrier {
            barrier,
            path: path.to_path_buf(),
        }
    }

    /// Returns the store of mount `name`, creating its DEK on first use.
    ///
    /// # Panics
    ///
    /// When the DEK cannot be created.
    pub fn mount_store(&self, name: &str) -> MountStore {
        let scope = mount_scope(name);
        let existing = self
            .barrier
            .active_dek_id(&scope)
            .expect("read the mount data key");
        let dek_id = match existing {
            Some(dek_id) => dek_id,
            None => self
                .barrier
                .create_scope_key(&scope)
                .expect("create the mount data key"),
        };
        MountStore::new(Arc::clone(&self.barrier), name, dek_id)
    }

    /// Deletes everything mount `name` stored and its DEK, as an unmount
    /// does. Stores made before then fail with `BarrierError::Unmounted`.
    ///
    /// # Panics
    ///
    /// When the purge fails.
    pub fn unmount(&self, name: &str) {
        self.barrier
            .purge_scope(&mount_scope(name), Vec::new())
            .expect("purge the mount scope");
    }

    /// Drops the keys, as a seal does. Every later operation then fails with
    /// `BarrierError::Sealed`.
    pub fn seal(&self) {
        self.barrier.clear();
    }

    /// Opens a plain connection to the database file, for tampering with
    /// rows.
    ///
    /// # Panics
    ///
    /// When the file cannot be opened.
    pub fn raw_connection(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(&self.path).expect("open the test database")
    }

    /// The barrier itself, for this crate's tests.
    #[cfg(test)]
    pub(crate) fn inner(&self) -> &Barrier {
        &self.barrier
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
