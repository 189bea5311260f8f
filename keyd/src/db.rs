//! The SQLite file: creation with mode 0600, connection settings and schema
//! migrations.
//!
//! Migrations are the files `migrations/NNNN_name.sql` of the repository,
//! compiled into the binary, applied in order inside one transaction and
//! tracked with `PRAGMA user_version`. A database whose version is newer than
//! this binary's is rejected, so an old binary never writes a newer schema.
#![forbid(unsafe_code)]

use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

/// The schema migrations, in order; the version of migration `i` is `i + 1`.
const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_initial",
        include_str!("../../migrations/0001_initial.sql"),
    ),
    (
        "0002_cert_index",
        include_str!("../../migrations/0002_cert_index.sql"),
    ),
];

/// The schema version this binary writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// How long a connection waits for a lock held by another connection.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Prepared statements kept per connection; keyd runs fewer distinct
/// statements than this.
const STATEMENT_CACHE_CAPACITY: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("db: create file {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "db: {path} is in use by another metacrypt-keyd (the lock on {lock} is held); \
         stop that process first"
    )]
    InUse { path: PathBuf, lock: PathBuf },
    #[error("db: lock {lock}: {source}")]
    Lock {
        lock: PathBuf,
        source: std::io::Error,
    },
    #[error("db: open {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("db: {path}: failed to set {setting}: {source}")]
    Setting {
        path: PathBuf,
        setting: &'static str,
        source: rusqlite::Error,
    },
    #[error(
        "db: {path}: journal_mode is {mode} after setting WAL (is the file on a network file system?)"
    )]
    NotWal { path: PathBuf, mode: String },
    #[error(
        "db: {path}: schema version {found} is newer than version {supported} of this \
         metacrypt-keyd; run a newer metacrypt-keyd"
    )]
    TooNew {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("db: {path}: migration {name} failed: {source}")]
    Migration {
        path: PathBuf,
        name: &'static str,
        source: rusqlite::Error,
    },
}

/// The open database: one connection for the writer thread and a pool of
/// read connections, all opened before keyd starts any thread.
pub struct Database {
    pub path: PathBuf,
    pub(crate) writer: Connection,
    pub(crate) readers: Vec<Connection>,
    /// The exclusive lock on `PATH.lock`, held while the database is open.
    /// The store that takes over the connections keeps it too.
    pub(crate) lock: File,
}

impl Database {
    /// Creates the file if needed (mode 0600), applies the settings and the
    /// migrations, and opens `readers` read connections (at least one).
    pub fn open(path: &Path, readers: usize) -> Result<Database, DbError> {
        create_file(path)?;
        let lock = lock_database(path)?;
        warn_on_loose_permissions(path);
        let mut writer = open_connection(path)?;
        migrate(&mut writer, path)?;
        let readers = (0..readers.max(1))
            .map(|_| {
                let reader = open_connection(path)?;
                set_pragma(&reader, path, "query_only", true)?;
                Ok(reader)
            })
            .collect::<Result<Vec<_>, DbError>>()?;
        Ok(Database {
            path: path.to_path_buf(),
            writer,
            readers,
            lock,
        })
    }

    /// The schema version recorded in the file.
    pub fn schema_version(&self) -> Result<u32, DbError> {
        user_version(&self.writer, &self.path)
    }
}

/// Takes an exclusive `flock` on `PATH.lock` (created 0600), so that a
/// second keyd started on the same database fails instead of serving it
/// with a seal state and a mount registry of its own. SQLite's own locks
/// only protect single transactions. A separate file is used because closing
/// any other descriptor of the database file would release SQLite's POSIX
/// locks on it.
///
/// The lock is released when the descriptor is closed, not by an unlock
/// call, because keyd's seccomp filter does not allow `flock` once setup
/// is done.
fn lock_database(path: &Path) -> Result<File, DbError> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|source| DbError::Lock {
            lock: lock_path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(DbError::InUse {
            path: path.to_path_buf(),
            lock: lock_path,
        }),
        Err(TryLockError::Error(source)) => Err(DbError::Lock {
            lock: lock_path,
            source,
        }),
    }
}

/// Creates the file with mode 0600 before SQLite opens it, so that it never
/// exists with the process umask's mode. An existing file keeps its mode.
fn create_file(path: &Path) -> Result<(), DbError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map(drop)
        .map_err(|source| DbError::Create {
            path: path.to_path_buf(),
            source,
        })
}

/// Logs a warning when the database file is readable or writable by group
/// or others, or its directory is writable by group or open to others. A
/// directory that the group may only enter and list is reported at info,
/// because frontd may share it to read the configuration.
fn warn_on_loose_permissions(path: &Path) {
    match loose_file_mode(path, 0o077) {
        Ok(None) => {}
        Ok(Some(mode)) => {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{mode:04o}"),
                "the database file is accessible to group or others; run chmod 0600 on it"
            );
        }
        Err(err) => {
            tracing::warn!(path = %path.display(), error = %err, "failed to stat the database file")
        }
    }
    let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) else {
        return;
    };
    match std::fs::metadata(dir) {
        Ok(metadata) => {
            let mode = metadata.permissions().mode() & 0o777;
            if mode & 0o027 != 0 {
                tracing::warn!(
                    dir = %dir.display(),
                    mode = format!("{mode:04o}"),
                    "the database directory is writable by its group or accessible to others; \
                     run chmod 0700 (or 0750) on it"
                );
            } else if mode & 0o070 != 0 {
                tracing::info!(
                    dir = %dir.display(),
                    mode = format!("{mode:04o}"),
                    "the database directory is readable by its group"
                );
            }
        }
        Err(err) => {
            tracing::warn!(dir = %dir.display(), error = %err, "failed to stat the database directory")
        }
    }
}

/// Returns the permission bits (`mode & 0o777`) of the file at `path` when
/// any of the bits in `forbidden` is set, and `None` when none is.
pub fn loose_file_mode(path: &Path, forbidden: u32) -> std::io::Result<Option<u32>> {
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
    Ok((mode & forbidden != 0).then_some(mode))
}

fn open_connection(path: &Path) -> Result<Connection, DbError> {
    // Each connection is used by one thread at a time (the writer thread, or
    // a reader behind its mutex), so SQLite's own mutex is not needed.
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|source| DbError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|source| DbError::Setting {
            path: path.to_path_buf(),
            setting: "busy_timeout",
            source,
        })?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(|source| DbError::Setting {
            path: path.to_path_buf(),
            setting: "journal_mode",
            source,
        })?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(DbError::NotWal {
            path: path.to_path_buf(),
            mode,
        });
    }
    set_pragma(&conn, path, "synchronous", "FULL")?;
    set_pragma(&conn, path, "foreign_keys", true)?;
    set_pragma(&conn, path, "secure_delete", true)?;
    // Temporary tables and indices stay in memory: SQLite would otherwise
    // create their files in /var/tmp or /tmp, outside the data directory
    // that the landlock sandbox leaves open.
    set_pragma(&conn, path, "temp_store", "MEMORY")?;
    Ok(conn)
}

fn set_pragma<V: rusqlite::ToSql>(
    conn: &Connection,
    path: &Path,
    name: &'static str,
    value: V,
) -> Result<(), DbError> {
    conn.pragma_update(None, name, value)
        .map_err(|source| DbError::Setting {
            path: path.to_path_buf(),
            setting: name,
            source,
        })
}

fn user_version(conn: &Connection, path: &Path) -> Result<u32, DbError> {
    conn.pragma_query_value(None, "user_version", |row| row.get::<_, i64>(0))
        .map(|version| u32::try_from(version).unwrap_or(u32::MAX))
        .map_err(|source| DbError::Setting {
            path: path.to_path_buf(),
            setting: "user_version",
            source,
        })
}

/// Applies the migrations the file lacks, all in one transaction.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), DbError> {
    let found = user_version(conn, path)?;
    if found > SCHEMA_VERSION {
        return Err(DbError::TooNew {
            path: path.to_path_buf(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    if found == SCHEMA_VERSION {
        return Ok(());
    }
    let migration_error = |name: &'static str| {
        move |source| DbError::Migration {
            path: path.to_path_buf(),
            name,
            source,
        }
    };
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(migration_error("begin"))?;
    for (name, sql) in &MIGRATIONS[found as usize..] {
        tx.execute_batch(sql).map_err(migration_error(name))?;
        tracing::info!(path = %path.display(), migration = *name, "applied database migration");
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(migration_error("user_version"))?;
    tx.commit().map_err(migration_error("commit"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_file_has_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyd.db");
        let _db = Database::open(&path, 1).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn open_applies_every_migration() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(&dir.path().join("keyd.db"), 1).unwrap();
        assert_eq!(db.schema_version().unwrap(), SCHEMA_VERSION);
        let tables: Vec<String> = db
            .writer
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            tables,
            [
                "barrier_entries",
                "ca_cert_serials",
                "keyring",
                "seal_config"
            ]
        );
    }

    #[test]
    fn version_1_rows_get_sort_keys_and_stay_unindexed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyd.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0].1).unwrap();
            conn.execute_batch(
                "INSERT INTO ca_cert_serials VALUES ('mount:pki', '@root', '0a', 10, 1); \
                 INSERT INTO ca_cert_serials VALUES ('mount:pki', 'web', '00ff01', 20, 1); \
                 PRAGMA user_version = 1;",
            )
            .unwrap();
        }
        let db = Database::open(&path, 1).unwrap();
        assert_eq!(db.schema_version().unwrap(), SCHEMA_VERSION);
        let rows: Vec<(String, String, Option<String>, i64)> = db
            .writer
            .prepare(
                "SELECT serial, sort_key, profile, indexed FROM ca_cert_serials ORDER BY serial",
            )
            .unwrap()
            .query_map([], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            rows,
            [
                ("00ff01".to_owned(), format!("{:0>40}", "ff01"), None, 0),
                ("0a".to_owned(), format!("{:0>40}", "a"), None, 1),
            ]
        );
    }

    #[test]
    fn reopening_keeps_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyd.db");
        drop(Database::open(&path, 1).unwrap());
        let db = Database::open(&path, 2).unwrap();
        assert_eq!(db.schema_version().unwrap(), SCHEMA_VERSION);
        assert_eq!(db.readers.len(), 2);
    }

    #[test]
    fn connection_settings_are_applied() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(&dir.path().join("keyd.db"), 1).unwrap();
        for conn in std::iter::once(&db.writer).chain(&db.readers) {
            let journal: String = conn
                .pragma_query_value(None, "journal_mode", |row| row.get(0))
                .unwrap();
            assert_eq!(journal, "wal");
            let synchronous: i64 = conn
                .pragma_query_value(None, "synchronous", |row| row.get(0))
                .unwrap();
            assert_eq!(synchronous, 2, "synchronous=FULL");
            let foreign_keys: i64 = conn
                .pragma_query_value(None, "foreign_keys", |row| row.get(0))
                .unwrap();
            assert_eq!(foreign_keys, 1);
            let secure_delete: i64 = conn
                .pragma_query_value(None, "secure_delete", |row| row.get(0))
                .unwrap();
            assert_eq!(secure_delete, 1);
        }
    }

    #[test]
    fn newer_database_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyd.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "user_version", 999).unwrap();
        }
        let err = Database::open(&path, 1).err().unwrap();
        assert!(matches!(err, DbError::TooNew { found: 999, .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains("999"), "{text}");
        assert!(
            text.contains(&format!("version {SCHEMA_VERSION}")),
            "{text}"
        );
    }

    #[test]
    fn second_open_is_rejected_while_first_is_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyd.db");
        let first = Database::open(&path, 1).unwrap();
        let err = Database::open(&path, 1).err().unwrap();
        assert!(matches!(err, DbError::InUse { .. }), "{err}");
        assert!(err.to_string().contains("another metacrypt-keyd"), "{err}");
        let lock = std::fs::metadata(dir.path().join("keyd.db.lock")).unwrap();
        assert_eq!(lock.permissions().mode() & 0o777, 0o600);
        drop(first);
        Database::open(&path, 1).unwrap();
    }

    #[test]
    fn loose_file_mode_reports_forbidden_bits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        std::fs::write(&path, b"x").unwrap();
        let cases = [
            (0o600, 0o022, None),
            (0o640, 0o022, None),
            (0o644, 0o022, None),
            (0o620, 0o022, Some(0o620)),
            (0o602, 0o022, Some(0o602)),
            (0o666, 0o022, Some(0o666)),
            (0o640, 0o077, Some(0o640)),
        ];
        for (mode, forbidden, expected) in cases {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(
                loose_file_mode(&path, forbidden).unwrap(),
                expected,
                "mode {mode:04o}, forbidden bits {forbidden:04o}"
            );
        }
        let missing = loose_file_mode(&dir.path().join("absent"), 0o022).unwrap_err();
        assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
    }

    #[test]
    fn missing_directory_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent").join("keyd.db");
        let err = Database::open(&path, 1).err().unwrap();
        let text = err.to_string();
        assert!(text.starts_with("db: create file "), "{text}");
        assert!(text.contains("absent"), "{text}");
    }
}
