//! Durable storage under the barrier: one writer thread with group commit,
//! and a pool of read connections.
//!
//! Callers encrypt in their own thread and queue a batch of [`WriteOp`]s.
//! The writer thread takes every batch queued at that moment and applies
//! them all in one transaction. Each batch runs inside its own SAVEPOINT, so
//! a batch that fails (for example on a duplicate serial) rolls back alone
//! and gets its own error. One COMMIT, and with `synchronous=FULL` one fsync
//! of the WAL, then makes the whole group durable before any caller gets its
//! result.
//!
//! After a group that purged a scope's rows, the writer checkpoints the WAL and
//! truncates it, so the frames that still hold the purged rows (a wrapped
//! DEK among them) leave the disk along with the rows. `secure_delete`
//! zeroes the rows in the database file itself.
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, ErrorCode, Transaction, params};

use crate::barrier::BarrierError;
use crate::db::Database;

/// Maximum number of batches applied in one transaction. A longer queue is
/// committed in several groups.
const MAX_GROUP: usize = 512;

/// One change inside a batch. Secret values arrive already encrypted.
#[derive(Debug)]
pub(crate) enum WriteOp {
    /// Fails the batch with [`BarrierError::Unmounted`] unless `dek_id` is
    /// the active DEK of `scope`.
    RequireActiveDek {
        scope: String,
        dek_id: i64,
    },
    /// Stores an entry. With `replace` false, an entry already at the path
    /// fails the batch with [`BarrierError::Duplicate`] instead.
    PutEntry {
        scope: String,
        path: String,
        dek_id: i64,
        nonce: Vec<u8>,
        ciphertext: Vec<u8>,
        replace: bool,
    },
    DeleteEntry {
        scope: String,
        path: String,
    },
    /// Adds a serial index row. `profile` is `None` for the rows of the
    /// root and the issuers.
    InsertSerial {
        scope: String,
        issuer: String,
        serial: String,
        not_after: i64,
        profile: Option<String>,
    },
    /// Sets the profile and revocation flag of a serial index row and marks
    /// it indexed.
    UpdateSerial {
        scope: String,
        issuer: String,
        serial: String,
        profile: Option<String>,
        revoked: bool,
    },
    /// Sets the lowercased common name of a leaf's serial index row.
    SetSerialCommonName {
        scope: String,
        issuer: String,
        serial: String,
        common_name: String,
    },
    /// Deletes every entry, serial row and DEK of a scope.
    PurgeScope {
        scope: String,
    },
    InsertDek {
        dek_id: i64,
        scope: String,
        wrapped: Vec<u8>,
        nonce: Vec<u8>,
    },
    InsertSealConfig(SealRecord),
}

/// The `seal_config` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SealRecord {
    pub format_version: u32,
    pub salt: Vec<u8>,
    pub time_cost: u32,
    pub memory_kib: u32,
    pub parallelism: u32,
    pub wrapped_mek: Vec<u8>,
    pub mek_nonce: Vec<u8>,
    pub created_at: i64,
}

/// A `keyring` row.
#[derive(Debug, Clone)]
pub(crate) struct DekRecord {
    pub dek_id: i64,
    pub scope: String,
    pub wrapped: Vec<u8>,
    pub nonce: Vec<u8>,
}

/// A `barrier_entries` row, still encrypted.
#[derive(Debug, Clone)]
pub(crate) struct EntryRecord {
    pub dek_id: i64,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

struct Job {
    ops: Vec<WriteOp>,
    reply: mpsc::SyncSender<Result<(), BarrierError>>,
}

pub(crate) struct Store {
    sender: Option<mpsc::Sender<Job>>,
    writer: Option<JoinHandle<()>>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    /// The database lock, kept for as long as the store exists so that no
    /// second keyd opens the same database.
    _lock: std::fs::File,
}

impl Store {
    /// Starts the writer thread on the database's write connection.
    pub fn start(database: Database) -> std::io::Result<Store> {
        let Database {
            writer,
            readers,
            lock,
            ..
        } = database;
        let (sender, receiver) = mpsc::channel();
        let writer = std::thread::Builder::new()
            .name("keyd-db-writer".to_owned())
            .spawn(move || run_writer(writer, receiver))?;
        Ok(Store {
            sender: Some(sender),
            writer: Some(writer),
            readers: readers.into_iter().map(Mutex::new).collect(),
            next_reader: AtomicUsize::new(0),
            _lock: lock,
        })
    }

    /// Applies `ops` atomically and returns once they are durable.
    pub fn commit(&self, ops: Vec<WriteOp>) -> Result<(), BarrierError> {
        if ops.is_empty() {
            return Ok(());
        }
        let (reply, answer) = mpsc::sync_channel(1);
        self.sender
            .as_ref()
            .ok_or_else(writer_gone)?
            .send(Job { ops, reply })
            .map_err(|_| writer_gone())?;
        // Waiting for the disk computes nothing, so the next request may
        // sign meanwhile and join this commit's group.
        crate::slot::release();
        answer.recv().map_err(|_| writer_gone())?
    }

    /// Runs `read` on a free read connection, or waits for one.
    pub fn read<T>(
        &self,
        read: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, BarrierError> {
        let conn = self.reader();
        read(&conn).map_err(|err| {
            tracing::error!(error = %err, "database read failed");
            BarrierError::Storage(format!("database read failed: {err}"))
        })
    }

    fn reader(&self) -> MutexGuard<'_, Connection> {
        let start = self.next_reader.fetch_add(1, Ordering::Relaxed);
        let count = self.readers.len();
        for offset in 0..count {
            if let Ok(conn) = self.readers[(start + offset) % count].try_lock() {
                return conn;
            }
        }
        // A panic while reading leaves the connection itself intact, so a
        // poisoned mutex is still usable.
        self.readers[start % count]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn seal_record(&self) -> Result<Option<SealRecord>, BarrierError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT format_version, salt, argon2_time_cost, argon2_memory_kib, \
                 argon2_parallelism, wrapped_mek, mek_nonce, created_at \
                 FROM seal_config WHERE id = 1",
            )?;
            let mut rows = stmt.query([])?;
            let Some(row) = rows.next()? else {
                return Ok(None);
            };
            Ok(Some(SealRecord {
                format_version: row.get(0)?,
                salt: row.get(1)?,
                time_cost: row.get(2)?,
                memory_kib: row.get(3)?,
                parallelism: row.get(4)?,
                wrapped_mek: row.get(5)?,
                mek_nonce: row.get(6)?,
                created_at: row.get(7)?,
            }))
        })
    }

    pub fn active_deks(&self) -> Result<Vec<DekRecord>, BarrierError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT dek_id, scope, wrapped_dek, nonce FROM keyring \
                 WHERE state = 'active' ORDER BY dek_id",
            )?;
            let rows = stmt.query_map([], |row| {
                Ok(DekRecord {
                    dek_id: row.get(0)?,
                    scope: row.get(1)?,
                    wrapped: row.get(2)?,
                    nonce: row.get(3)?,
                })
            })?;
            rows.collect()
        })
    }

    pub fn entry(&self, scope: &str, path: &str) -> Result<Option<EntryRecord>, BarrierError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT dek_id, nonce, ciphertext FROM barrier_entries \
                 WHERE scope = ?1 AND path = ?2",
            )?;
            let mut rows = stmt.query(params![scope, path])?;
            let Some(row) = rows.next()? else {
                return Ok(None);
            };
            Ok(Some(EntryRecord {
                dek_id: row.get(0)?,
                nonce: row.get(1)?,
                ciphertext: row.get(2)?,
            }))
        })
    }

    /// Returns the paths of `scope` that start with `prefix`, sorted.
    pub fn paths(&self, scope: &str, prefix: &str) -> Result<Vec<String>, BarrierError> {
        self.read(|conn| {
            // Paths with the prefix form one contiguous range of the primary
            // key starting at the prefix itself.
            let mut stmt = conn.prepare_cached(
                "SELECT path FROM barrier_entries WHERE scope = ?1 AND path >= ?2 ORDER BY path",
            )?;
            let mut rows = stmt.query(params![scope, prefix])?;
            let mut paths = Vec::new();
            while let Some(row) = rows.next()? {
                let path: String = row.get(0)?;
                if !path.starts_with(prefix) {
                    break;
                }
                paths.push(path);
            }
            Ok(paths)
        })
    }
}

/// The state condition of a [`CertIndexQuery`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexedState {
    /// Not revoked, and `not_after` is after the given Unix time.
    ValidAt(i64),
    /// Not revoked, and `not_after` is at or before the given Unix time.
    ExpiredAt(i64),
    Revoked,
}

/// Conditions on the plain columns of the serial index, for selecting leaf
/// serials in numeric order. Only rows with `indexed = 1` match the profile
/// and state conditions correctly.
#[derive(Debug, Clone, Default)]
pub struct CertIndexQuery {
    pub issuer: Option<String>,
    pub profile: Option<String>,
    pub state: Option<IndexedState>,
    /// `not_after` strictly before this Unix time.
    pub not_after_before: Option<i64>,
    /// A lowercase fragment of the common name.
    pub common_name_contains: Option<String>,
    /// Only rows whose `sort_key` is greater than this one.
    pub after_sort_key: Option<String>,
    pub limit: u32,
}

/// The `sort_key` of a lowercase hex serial: the digits without leading
/// zeros, left-padded with zeros to 40, so that text order is numeric order.
/// The SQL of `InsertSerial` and of the migration computes the same value.
pub fn serial_sort_key(serial_hex: &str) -> String {
    format!("{:0>40}", serial_hex.trim_start_matches('0'))
}

impl Store {
    /// Returns `(sort_key, serial)` of the leaf rows of `scope` that match
    /// `query`, in ascending serial order. A serial stored under two issuers
    /// appears twice, next to itself.
    pub fn cert_index_page(
        &self,
        scope: &str,
        query: &CertIndexQuery,
    ) -> Result<Vec<(String, String)>, BarrierError> {
        use rusqlite::types::Value;
        let mut sql = String::from(
            "SELECT sort_key, serial FROM ca_cert_serials WHERE scope = ? AND issuer <> '@root'",
        );
        let mut values: Vec<Value> = vec![Value::Text(scope.to_owned())];
        if let Some(issuer) = &query.issuer {
            sql.push_str(" AND issuer = ?");
            values.push(Value::Text(issuer.clone()));
        }
        if let Some(profile) = &query.profile {
            sql.push_str(" AND profile = ?");
            values.push(Value::Text(profile.clone()));
        }
        match query.state {
            None => {}
            Some(IndexedState::Revoked) => sql.push_str(" AND revoked = 1"),
            Some(IndexedState::ValidAt(now)) => {
                sql.push_str(" AND revoked = 0 AND not_after > ?");
                values.push(Value::Integer(now));
            }
            Some(IndexedState::ExpiredAt(now)) => {
                sql.push_str(" AND revoked = 0 AND not_after <= ?");
                values.push(Value::Integer(now));
            }
        }
        if let Some(before) = query.not_after_before {
            sql.push_str(" AND not_after < ?");
            values.push(Value::Integer(before));
        }
        if let Some(fragment) = &query.common_name_contains {
            sql.push_str(" AND instr(common_name, ?) > 0");
            values.push(Value::Text(fragment.clone()));
        }
        if let Some(after) = &query.after_sort_key {
            sql.push_str(" AND sort_key > ?");
            values.push(Value::Text(after.clone()));
        }
        sql.push_str(" ORDER BY sort_key, serial LIMIT ?");
        values.push(Value::Integer(i64::from(query.limit)));
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(values), |row| {
                Ok((row.get(0)?, row.get(1)?))
            })?;
            rows.collect()
        })
    }

    /// Counts the leaf rows of `issuer` in `scope` that are not revoked and
    /// expire after `now` (Unix seconds).
    pub fn count_active_serials(
        &self,
        scope: &str,
        issuer: &str,
        now: i64,
    ) -> Result<u64, BarrierError> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT count(*) FROM ca_cert_serials \
                 WHERE scope = ?1 AND issuer = ?2 AND revoked = 0 AND not_after > ?3",
            )?
            .query_row(params![scope, issuer, now], |row| row.get::<_, i64>(0))
            .map(|count| count.unsigned_abs())
        })
    }

    /// Returns whether `scope` has a serial index row that is not indexed
    /// yet (stored before the index had profile and revocation columns).
    pub fn has_unindexed_serials(&self, scope: &str) -> Result<bool, BarrierError> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM ca_cert_serials WHERE scope = ?1 AND indexed = 0)",
            )?
            .query_row(params![scope], |row| row.get(0))
        })
    }

    /// Returns `(issuer, serial)` of at most `limit` rows of `scope` that are
    /// not indexed yet.
    pub fn unindexed_serials(
        &self,
        scope: &str,
        limit: u32,
    ) -> Result<Vec<(String, String)>, BarrierError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT issuer, serial FROM ca_cert_serials \
                 WHERE scope = ?1 AND indexed = 0 LIMIT ?2",
            )?;
            let rows =
                stmt.query_map(params![scope, limit], |row| Ok((row.get(0)?, row.get(1)?)))?;
            rows.collect()
        })
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Closing the channel ends the writer loop after the queued batches.
        drop(self.sender.take());
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!("the database writer thread panicked");
        }
    }
}

fn writer_gone() -> BarrierError {
    BarrierError::Storage("the database writer thread has stopped".to_owned())
}

fn run_writer(mut conn: Connection, receiver: mpsc::Receiver<Job>) {
    while let Ok(first) = receiver.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match receiver.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let purges_rows: Vec<bool> = group
            .iter()
            .map(|job| purges_stored_rows(&conn, &job.ops))
            .collect();
        let results = commit_group(&mut conn, &group);
        let purged = purges_rows
            .iter()
            .zip(&results)
            .any(|(purges_rows, result)| *purges_rows && result.is_ok());
        if purged {
            truncate_wal(&conn);
        }
        for (job, result) in group.into_iter().zip(results) {
            // A caller that has gone away no longer needs its result.
            let _ = job.reply.send(result);
        }
    }
}

/// Returns whether `ops` purge a scope that has rows. A new mount purges its
/// empty scope first, and that needs no checkpoint. A failed query counts as
/// rows, so the checkpoint runs.
fn purges_stored_rows(conn: &Connection, ops: &[WriteOp]) -> bool {
    ops.iter().any(|op| {
        let WriteOp::PurgeScope { scope } = op else {
            return false;
        };
        conn.prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM keyring WHERE scope = ?1) \
             OR EXISTS (SELECT 1 FROM barrier_entries WHERE scope = ?1) \
             OR EXISTS (SELECT 1 FROM ca_cert_serials WHERE scope = ?1)",
        )
        .and_then(|mut stmt| stmt.query_row(params![scope], |row| row.get::<_, bool>(0)))
        .unwrap_or(true)
    })
}

/// Copies every WAL frame into the database file and truncates the WAL to
/// zero bytes. A read transaction that lasts longer than the busy timeout
/// keeps the checkpoint from finishing. The purge is committed all the same,
/// so that case is logged, not returned, and the old frames stay in the WAL
/// file until a later purge truncates it.
fn truncate_wal(conn: &Connection) {
    let checkpoint = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
        Ok((
            row.get::<_, i64>(0)?,
            row.get::<_, i64>(1)?,
            row.get::<_, i64>(2)?,
        ))
    });
    match checkpoint {
        Ok((0, _, _)) => {}
        Ok((_, wal_frames, checkpointed_frames)) => tracing::warn!(
            wal_frames,
            checkpointed_frames,
            "WAL checkpoint after a purge did not finish because a reader held the WAL; \
             old frames of the purged rows stay in the WAL file until a later purge"
        ),
        Err(err) => tracing::warn!(
            error = %err,
            "WAL checkpoint after a purge failed; old frames of the purged rows stay in \
             the WAL file until a later purge"
        ),
    }
}

/// Applies every job of the group in one transaction; returns one result
/// per job.
fn commit_group(conn: &mut Connection, group: &[Job]) -> Vec<Result<(), BarrierError>> {
    let failed_transaction = |err: rusqlite::Error| {
        tracing::error!(error = %err, batches = group.len(), "database transaction failed");
        let message = format!("database write failed: {err}");
        group
            .iter()
            .map(|_| Err(BarrierError::Storage(message.clone())))
            .collect()
    };
    let now = unix_now();
    let mut tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(err) => return failed_transaction(err),
    };
    let mut results = Vec::with_capacity(group.len());
    for job in group {
        match apply_job(&mut tx, &job.ops, now) {
            Ok(result) => results.push(result),
            // The savepoint could not be released or rolled back, so what the
            // transaction holds is unknown: roll the whole group back.
            Err(err) => return failed_transaction(err),
        }
    }
    if let Err(err) = tx.commit() {
        return failed_transaction(err);
    }
    results
}

/// Applies one batch inside its own savepoint. The outer error means the
/// savepoint itself failed; the inner one is this batch's own failure, after
/// which the batch has been rolled back.
fn apply_job(
    tx: &mut Transaction<'_>,
    ops: &[WriteOp],
    now: i64,
) -> rusqlite::Result<Result<(), BarrierError>> {
    let savepoint = tx.savepoint()?;
    match ops.iter().try_for_each(|op| apply_op(&savepoint, op, now)) {
        Ok(()) => savepoint.commit().map(Ok),
        // `finish` rolls back to the savepoint and releases it.
        Err(err) => savepoint.finish().map(|()| Err(err)),
    }
}

fn apply_op(conn: &Connection, op: &WriteOp, now: i64) -> Result<(), BarrierError> {
    match op {
        WriteOp::RequireActiveDek { scope, dek_id } => {
            let active: i64 = conn
                .prepare_cached(
                    "SELECT count(*) FROM keyring \
                     WHERE dek_id = ?1 AND scope = ?2 AND state = 'active'",
                )
                .and_then(|mut stmt| stmt.query_row(params![dek_id, scope], |row| row.get(0)))
                .map_err(storage_error)?;
            if active == 0 {
                return Err(crate::barrier::scope_key_removed(scope));
            }
            Ok(())
        }
        WriteOp::PutEntry {
            scope,
            path,
            dek_id,
            nonce,
            ciphertext,
            replace,
        } => conn
            .prepare_cached(if *replace {
                "INSERT INTO barrier_entries (scope, path, dek_id, nonce, ciphertext, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                 ON CONFLICT (scope, path) DO UPDATE SET dek_id = excluded.dek_id, \
                 nonce = excluded.nonce, ciphertext = excluded.ciphertext, \
                 updated_at = excluded.updated_at"
            } else {
                "INSERT INTO barrier_entries (scope, path, dek_id, nonce, ciphertext, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
            })
            .and_then(|mut stmt| stmt.execute(params![scope, path, dek_id, nonce, ciphertext, now]))
            .map(drop)
            .map_err(|err| {
                // A mount's DEK row is missing when an unmount purged the
                // scope before this batch reached the writer. The request
                // outlived its mount, which is no fault of the database.
                if is_foreign_key_violation(&err) && scope.starts_with("mount:") {
                    tracing::debug!(scope, path, dek_id, "write into a purged scope rejected");
                    crate::barrier::scope_key_removed(scope)
                } else if !*replace && is_constraint_violation(&err) {
                    BarrierError::Duplicate {
                        what: format!("entry {path}"),
                    }
                } else {
                    storage_error(err)
                }
            }),
        WriteOp::DeleteEntry { scope, path } => conn
            .prepare_cached("DELETE FROM barrier_entries WHERE scope = ?1 AND path = ?2")
            .and_then(|mut stmt| stmt.execute(params![scope, path]))
            .map(drop)
            .map_err(storage_error),
        WriteOp::InsertSerial {
            scope,
            issuer,
            serial,
            not_after,
            profile,
        } => conn
            .prepare_cached(
                "INSERT INTO ca_cert_serials (scope, issuer, serial, not_after, created_at, \
                 sort_key, profile, revoked, indexed) \
                 VALUES (?1, ?2, ?3, ?4, ?5, \
                 substr('0000000000000000000000000000000000000000' || ltrim(?3, '0'), -40), \
                 ?6, 0, 1)",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![scope, issuer, serial, not_after, now, profile])
            })
            .map(drop)
            .map_err(|err| {
                if is_constraint_violation(&err) {
                    BarrierError::Duplicate {
                        what: format!("certificate serial {serial} of issuer {issuer}"),
                    }
                } else {
                    storage_error(err)
                }
            }),
        WriteOp::UpdateSerial {
            scope,
            issuer,
            serial,
            profile,
            revoked,
        } => conn
            .prepare_cached(
                "UPDATE ca_cert_serials SET profile = ?4, revoked = ?5, indexed = 1 \
                 WHERE scope = ?1 AND issuer = ?2 AND serial = ?3",
            )
            .and_then(|mut stmt| stmt.execute(params![scope, issuer, serial, profile, revoked]))
            .map(drop)
            .map_err(storage_error),
        WriteOp::SetSerialCommonName {
            scope,
            issuer,
            serial,
            common_name,
        } => conn
            .prepare_cached(
                "UPDATE ca_cert_serials SET common_name = ?4 \
                 WHERE scope = ?1 AND issuer = ?2 AND serial = ?3",
            )
            .and_then(|mut stmt| stmt.execute(params![scope, issuer, serial, common_name]))
            .map(drop)
            .map_err(storage_error),
        WriteOp::PurgeScope { scope } => {
            for sql in [
                "DELETE FROM barrier_entries WHERE scope = ?1",
                "DELETE FROM ca_cert_serials WHERE scope = ?1",
                "DELETE FROM keyring WHERE scope = ?1",
            ] {
                conn.prepare_cached(sql)
                    .and_then(|mut stmt| stmt.execute(params![scope]))
                    .map_err(storage_error)?;
            }
            Ok(())
        }
        WriteOp::InsertDek {
            dek_id,
            scope,
            wrapped,
            nonce,
        } => conn
            .prepare_cached(
                "INSERT INTO keyring (dek_id, scope, wrapped_dek, nonce, state, created_at) \
                 VALUES (?1, ?2, ?3, ?4, 'active', ?5)",
            )
            .and_then(|mut stmt| stmt.execute(params![dek_id, scope, wrapped, nonce, now]))
            .map(drop)
            .map_err(|err| {
                if is_constraint_violation(&err) {
                    BarrierError::Duplicate {
                        what: format!("data key {dek_id} or an active data key of scope {scope}"),
                    }
                } else {
                    storage_error(err)
                }
            }),
        WriteOp::InsertSealConfig(record) => conn
            .prepare_cached(
                "INSERT INTO seal_config (id, format_version, salt, argon2_time_cost, \
                 argon2_memory_kib, argon2_parallelism, wrapped_mek, mek_nonce, created_at) \
                 VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    record.format_version,
                    record.salt,
                    record.time_cost,
                    record.memory_kib,
                    record.parallelism,
                    record.wrapped_mek,
                    record.mek_nonce,
                    record.created_at
                ])
            })
            .map(drop)
            .map_err(|err| {
                if is_constraint_violation(&err) {
                    BarrierError::Duplicate {
                        what: "the seal configuration".to_owned(),
                    }
                } else {
                    storage_error(err)
                }
            }),
    }
}

fn is_constraint_violation(err: &rusqlite::Error) -> bool {
    err.sqlite_error_code() == Some(ErrorCode::ConstraintViolation)
}

fn is_foreign_key_violation(err: &rusqlite::Error) -> bool {
    err.sqlite_error()
        .is_some_and(|error| error.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY)
}

fn storage_error(err: rusqlite::Error) -> BarrierError {
    tracing::error!(error = %err, "database write failed");
    BarrierError::Storage(format!("database write failed: {err}"))
}

pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(ops: Vec<WriteOp>) -> (Job, mpsc::Receiver<Result<(), BarrierError>>) {
        let (reply, answer) = mpsc::sync_channel(1);
        (Job { ops, reply }, answer)
    }

    fn serial(serial: &str) -> WriteOp {
        WriteOp::InsertSerial {
            scope: "mount:pki".to_owned(),
            issuer: "web".to_owned(),
            serial: serial.to_owned(),
            not_after: 1_900_000_000,
            profile: Some("server".to_owned()),
        }
    }

    fn count(conn: &Connection, table: &str) -> i64 {
        conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |row| {
            row.get(0)
        })
        .unwrap()
    }

    #[test]
    fn insert_only_entry_fails_on_an_existing_path() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Database::open(&dir.path().join("keyd.db"), 1)
            .unwrap()
            .writer;
        let entry = |ciphertext: u8, replace: bool| WriteOp::PutEntry {
            scope: "system".to_owned(),
            path: "certs/01".to_owned(),
            dek_id: 1,
            nonce: vec![0; 12],
            ciphertext: vec![ciphertext; 16],
            replace,
        };
        let dek = WriteOp::InsertDek {
            dek_id: 1,
            scope: "system".to_owned(),
            wrapped: vec![0; 48],
            nonce: vec![0; 12],
        };
        let (first, _a) = job(vec![dek, entry(1, false)]);
        // The second batch adds a serial row and then an entry at a taken
        // path, so it fails as a whole.
        let (second, _b) = job(vec![serial("02"), entry(2, false)]);
        let results = commit_group(&mut conn, &[first, second]);
        assert_eq!(results[0], Ok(()));
        assert!(
            matches!(&results[1], Err(BarrierError::Duplicate { what }) if what.contains("certs/01")),
            "{:?}",
            results[1]
        );
        assert_eq!(count(&conn, "ca_cert_serials"), 0);
        let stored: Vec<u8> = conn
            .query_row("SELECT ciphertext FROM barrier_entries", [], |row| {
                row.get(0)
            })
            .unwrap();
        assert_eq!(stored, vec![1; 16]);

        // A put that replaces overwrites the same entry.
        let (third, _c) = job(vec![entry(3, true)]);
        assert_eq!(commit_group(&mut conn, &[third]), [Ok(())]);
        let stored: Vec<u8> = conn
            .query_row("SELECT ciphertext FROM barrier_entries", [], |row| {
                row.get(0)
            })
            .unwrap();
        assert_eq!(stored, vec![3; 16]);
    }

    #[test]
    fn failing_batch_rolls_back_alone_in_group() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Database::open(&dir.path().join("keyd.db"), 1)
            .unwrap()
            .writer;
        let (first, _a) = job(vec![serial("01")]);
        // The second batch inserts 02 and then repeats 01, so it must fail
        // and leave no trace of 02.
        let (second, _b) = job(vec![serial("02"), serial("01")]);
        let (third, _c) = job(vec![serial("03")]);
        let results = commit_group(&mut conn, &[first, second, third]);
        assert_eq!(results[0], Ok(()));
        assert!(matches!(results[1], Err(BarrierError::Duplicate { .. })));
        assert_eq!(results[2], Ok(()));
        let serials: Vec<String> = conn
            .prepare("SELECT serial FROM ca_cert_serials ORDER BY serial")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(serials, ["01", "03"]);
    }

    #[test]
    fn purge_scope_removes_only_that_scope() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Database::open(&dir.path().join("keyd.db"), 1)
            .unwrap()
            .writer;
        let dek = |dek_id: i64, scope: &str| WriteOp::InsertDek {
            dek_id,
            scope: scope.to_owned(),
            wrapped: vec![0; 48],
            nonce: vec![0; 12],
        };
        let entry = |scope: &str, dek_id: i64| WriteOp::PutEntry {
            scope: scope.to_owned(),
            path: "a".to_owned(),
            dek_id,
            nonce: vec![0; 12],
            ciphertext: vec![0; 16],
            replace: true,
        };
        let (setup, _a) = job(vec![
            dek(1, "mount:pki"),
            dek(2, "mount:other"),
            entry("mount:pki", 1),
            entry("mount:other", 2),
            serial("01"),
        ]);
        let (purge, _b) = job(vec![WriteOp::PurgeScope {
            scope: "mount:pki".to_owned(),
        }]);
        let results = commit_group(&mut conn, &[setup, purge]);
        assert_eq!(results, [Ok(()), Ok(())]);
        assert_eq!(count(&conn, "barrier_entries"), 1);
        assert_eq!(count(&conn, "keyring"), 1);
        assert_eq!(count(&conn, "ca_cert_serials"), 0);
    }

    #[test]
    fn second_active_key_for_scope_is_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Database::open(&dir.path().join("keyd.db"), 1)
            .unwrap()
            .writer;
        let dek = |dek_id: i64| WriteOp::InsertDek {
            dek_id,
            scope: "system".to_owned(),
            wrapped: vec![0; 48],
            nonce: vec![0; 12],
        };
        let (first, _a) = job(vec![dek(1)]);
        let (second, _b) = job(vec![dek(2)]);
        let results = commit_group(&mut conn, &[first, second]);
        assert_eq!(results[0], Ok(()));
        assert!(matches!(results[1], Err(BarrierError::Duplicate { .. })));
    }

    #[test]
    fn store_commit_replies_after_durable_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyd.db");
        let store = Store::start(Database::open(&path, 1).unwrap()).unwrap();
        store.commit(vec![serial("01")]).unwrap();
        // The row is visible to a separate connection, so it was committed.
        let other = Connection::open(&path).unwrap();
        assert_eq!(count(&other, "ca_cert_serials"), 1);
        drop(store);
    }

    #[test]
    fn batch_behind_purge_fails_key_check() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Database::open(&dir.path().join("keyd.db"), 1)
            .unwrap()
            .writer;
        let dek = |dek_id: i64| WriteOp::InsertDek {
            dek_id,
            scope: "mount:pki".to_owned(),
            wrapped: vec![0; 48],
            nonce: vec![0; 12],
        };
        let require = |dek_id: i64| WriteOp::RequireActiveDek {
            scope: "mount:pki".to_owned(),
            dek_id,
        };
        let (setup, _a) = job(vec![dek(1)]);
        assert_eq!(commit_group(&mut conn, &[setup]), [Ok(())]);

        // A batch checked against DEK 1 reaches the writer after the purge
        // and a new mount's DEK 2, all in one group.
        let (purge, _b) = job(vec![WriteOp::PurgeScope {
            scope: "mount:pki".to_owned(),
        }]);
        let (remount, _c) = job(vec![dek(2)]);
        let (stale, _d) = job(vec![require(1), serial("01")]);
        let (current, _e) = job(vec![require(2), serial("02")]);
        let results = commit_group(&mut conn, &[purge, remount, stale, current]);
        assert_eq!(results[0], Ok(()));
        assert_eq!(results[1], Ok(()));
        assert_eq!(
            results[2],
            Err(BarrierError::Unmounted {
                mount: "pki".to_owned()
            })
        );
        assert_eq!(results[3], Ok(()));
        let serials: Vec<String> = conn
            .prepare("SELECT serial FROM ca_cert_serials")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(serials, ["02"]);
    }

    #[test]
    fn put_behind_purge_is_unmounted() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Database::open(&dir.path().join("keyd.db"), 1)
            .unwrap()
            .writer;
        let (setup, _a) = job(vec![WriteOp::InsertDek {
            dek_id: 1,
            scope: "mount:pki".to_owned(),
            wrapped: vec![0; 48],
            nonce: vec![0; 12],
        }]);
        assert_eq!(commit_group(&mut conn, &[setup]), [Ok(())]);

        // The put was encrypted under DEK 1 before the unmount purged it and
        // reaches the writer after the purge, without a key check.
        let (purge, _b) = job(vec![WriteOp::PurgeScope {
            scope: "mount:pki".to_owned(),
        }]);
        let (stale, _c) = job(vec![
            WriteOp::PutEntry {
                scope: "mount:pki".to_owned(),
                path: "certs/01".to_owned(),
                dek_id: 1,
                nonce: vec![0; 12],
                ciphertext: vec![0; 16],
                replace: true,
            },
            serial("01"),
        ]);
        let results = commit_group(&mut conn, &[purge, stale]);
        assert_eq!(results[0], Ok(()));
        assert_eq!(
            results[1],
            Err(BarrierError::Unmounted {
                mount: "pki".to_owned()
            })
        );
        assert_eq!(count(&conn, "barrier_entries"), 0);
        assert_eq!(count(&conn, "ca_cert_serials"), 0);
    }

    #[test]
    fn purge_succeeds_when_reader_blocks_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyd.db");
        let database = Database::open(&path, 1).unwrap();
        // Without a busy timeout the checkpoint gives up at once instead of
        // waiting for the reader below.
        database
            .writer
            .busy_timeout(std::time::Duration::ZERO)
            .unwrap();
        let store = Store::start(database).unwrap();
        let dek = WriteOp::InsertDek {
            dek_id: 1,
            scope: "mount:pki".to_owned(),
            wrapped: vec![0; 48],
            nonce: vec![0; 12],
        };
        store.commit(vec![dek]).unwrap();

        let reader = Connection::open(&path).unwrap();
        reader
            .execute_batch("BEGIN; SELECT count(*) FROM keyring;")
            .unwrap();
        let purge = WriteOp::PurgeScope {
            scope: "mount:pki".to_owned(),
        };
        assert_eq!(store.commit(vec![purge]), Ok(()));
        let wal = std::fs::metadata(dir.path().join("keyd.db-wal")).unwrap();
        assert!(wal.len() > 0, "the reader did not block the checkpoint");
        reader.execute_batch("COMMIT").unwrap();
        assert_eq!(count(&reader, "keyring"), 0);
        drop(store);
    }
}
