//! The directory of a development setup and the files in it.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::error::CliError;

/// Maximum length in bytes of a Unix socket path on Linux (`sun_path` is 108
/// bytes including the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Every path of a development setup, all absolute.
pub struct Layout {
    pub root: PathBuf,
    pub frontd_cert: PathBuf,
    pub frontd_key: PathBuf,
    pub mcias_cert: PathBuf,
    pub mcias_key: PathBuf,
    /// The development MCIAS server's users file.
    pub users: PathBuf,
    /// The dev user's password, needed to log in again when the setup is
    /// reused, because the users file has only its hash.
    pub dev_password: PathBuf,
    pub seal_password: PathBuf,
    pub config: PathBuf,
    pub database: PathBuf,
    pub audit_log: PathBuf,
    pub run_dir: PathBuf,
    pub admin_socket: PathBuf,
    pub front_socket: PathBuf,
    pub mcias_port_file: PathBuf,
    pub logs: PathBuf,
    pub env_file: PathBuf,
    lock_file: PathBuf,
}

impl Layout {
    /// Builds the layout under `root`, which must already exist.
    pub fn new(root: &Path) -> Result<Self, CliError> {
        let root = std::fs::canonicalize(root).map_err(|err| {
            CliError::io(format!(
                "failed to resolve the directory {}: {err}",
                root.display()
            ))
        })?;
        if root.to_str().is_none() {
            return Err(CliError::usage(format!(
                "the directory {} is not valid UTF-8, which the config file needs",
                root.display()
            )));
        }
        let tls = root.join("tls");
        let run_dir = root.join("run");
        let layout = Self {
            frontd_cert: tls.join("frontd.crt"),
            frontd_key: tls.join("frontd.key"),
            mcias_cert: tls.join("mcias.crt"),
            mcias_key: tls.join("mcias.key"),
            users: root.join("mcias-users.toml"),
            dev_password: root.join("dev-password"),
            seal_password: root.join("seal-password"),
            config: root.join("metacrypt.toml"),
            database: root.join("metacrypt.db"),
            audit_log: root.join("audit.log"),
            admin_socket: run_dir.join("admin.sock"),
            front_socket: run_dir.join("front.sock"),
            mcias_port_file: run_dir.join("mcias.port"),
            run_dir,
            logs: root.join("logs"),
            env_file: root.join("dev.env"),
            lock_file: root.join("dev.lock"),
            root,
        };
        for socket in [&layout.admin_socket, &layout.front_socket] {
            let len = socket.as_os_str().as_bytes().len();
            if len > MAX_SOCKET_PATH {
                return Err(CliError::usage(format!(
                    "the socket path {} is {len} bytes, longer than the {MAX_SOCKET_PATH} bytes \
                     a Unix socket path may have; choose a shorter --dir",
                    socket.display()
                )));
            }
        }
        Ok(layout)
    }

    pub fn create_dirs(&self) -> Result<(), CliError> {
        for dir in [
            self.root.clone(),
            self.root.join("tls"),
            self.run_dir.clone(),
            self.logs.clone(),
        ] {
            create_private_dir(&dir)?;
        }
        Ok(())
    }

    pub fn log_file(&self, name: &str) -> PathBuf {
        self.logs.join(format!("{name}.log"))
    }

    /// Takes an exclusive lock on the directory for as long as the returned
    /// value lives, so two `metacrypt dev` runs cannot share one database.
    pub fn lock(&self) -> Result<Flock<File>, CliError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&self.lock_file)
            .map_err(|err| {
                CliError::io(format!(
                    "failed to open {}: {err}",
                    self.lock_file.display()
                ))
            })?;
        Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
            if errno == Errno::EWOULDBLOCK {
                CliError::usage(format!(
                    "another `metacrypt dev` is already running in {}",
                    self.root.display()
                ))
            } else {
                CliError::io(format!(
                    "failed to lock {}: {errno}",
                    self.lock_file.display()
                ))
            }
        })
    }
}

/// Returns the directory to use and whether it was created now: `dir` when
/// given (created if missing), else a new directory under /tmp.
pub fn choose_root(dir: Option<PathBuf>) -> Result<(PathBuf, bool), CliError> {
    match dir {
        Some(dir) if dir.is_dir() => Ok((dir, false)),
        Some(dir) if dir.exists() => Err(CliError::usage(format!(
            "--dir {} exists and is not a directory",
            dir.display()
        ))),
        Some(dir) => {
            create_private_dir(&dir)?;
            Ok((dir, true))
        }
        None => new_temp_dir().map(|dir| (dir, true)),
    }
}

fn new_temp_dir() -> Result<PathBuf, CliError> {
    let mut last_error = None;
    for _ in 0..16 {
        let mut suffix = [0u8; 4];
        aws_lc_rs::rand::fill(&mut suffix)
            .map_err(|_| CliError::io("failed to generate a random directory name"))?;
        let dir = PathBuf::from(format!("/tmp/metacrypt-dev-{}", hex::encode(suffix)));
        match DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => last_error = Some(err),
            Err(err) => {
                return Err(CliError::io(format!(
                    "failed to create {}: {err}",
                    dir.display()
                )));
            }
        }
    }
    Err(CliError::io(format!(
        "failed to create a directory under /tmp: {}",
        last_error.map_or_else(|| "no free name".to_owned(), |err| err.to_string())
    )))
}

/// Creates `dir` (and its parents) with mode 0700, or narrows an existing
/// directory to 0700, because the setup keeps private keys and passwords.
fn create_private_dir(dir: &Path) -> Result<(), CliError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|err| CliError::io(format!("failed to create {}: {err}", dir.display())))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|err| {
        CliError::io(format!(
            "failed to set the mode of {}: {err}",
            dir.display()
        ))
    })
}

/// Writes `contents` to `path` with `mode` through a temporary file and a
/// rename, so readers never see a partial file.
pub fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), CliError> {
    let fail =
        |err: std::io::Error| CliError::io(format!("failed to write {}: {err}", path.display()));
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".tmp-{}", std::process::id()));
    let temporary = PathBuf::from(temporary);
    let _ = std::fs::remove_file(&temporary);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temporary)
        .map_err(fail)?;
    file.write_all(contents).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    drop(file);
    std::fs::rename(&temporary, path).map_err(fail)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn paths_are_under_root() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path()).unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        assert_eq!(layout.database, root.join("metacrypt.db"));
        assert_eq!(layout.admin_socket, root.join("run/admin.sock"));
        assert_eq!(
            layout.log_file("metacrypt-keyd"),
            root.join("logs/metacrypt-keyd.log")
        );
    }

    #[test]
    fn dirs_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path()).unwrap();
        layout.create_dirs().unwrap();
        for sub in ["tls", "run", "logs"] {
            let mode = std::fs::metadata(dir.path().join(sub)).unwrap().mode();
            assert_eq!(mode & 0o777, 0o700, "{sub}");
        }
    }

    #[test]
    fn long_dir_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("d".repeat(100));
        std::fs::create_dir(&deep).unwrap();
        let err = Layout::new(&deep).err().unwrap();
        assert_eq!(err.exit_code(), 2);
        assert!(err.message.contains("shorter --dir"), "{}", err.message);
    }

    #[test]
    fn second_lock_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path()).unwrap();
        let _held = layout.lock().unwrap();
        let err = layout.lock().err().unwrap();
        assert!(err.message.contains("already running"), "{}", err.message);
    }

    #[test]
    fn written_file_has_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        write_file(&path, b"one", 0o600).unwrap();
        write_file(&path, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn given_dir_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let wanted = dir.path().join("a/b");
        let (root, created) = choose_root(Some(wanted.clone())).unwrap();
        assert_eq!(root, wanted);
        assert!(created);
        assert!(wanted.is_dir());
        let (_, created_again) = choose_root(Some(wanted)).unwrap();
        assert!(!created_again);
    }

    #[test]
    fn file_as_dir_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let err = choose_root(Some(file)).err().unwrap();
        assert_eq!(err.exit_code(), 2);
    }
}
