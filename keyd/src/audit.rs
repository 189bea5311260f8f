//! The audit log: one JSON line per audited request, appended to a file
//! that keyd opens at start and keeps open.
//!
//! Audited requests fail closed. Before an audited request runs,
//! [`AuditLog::check`] confirms that the configured path still names the
//! open file and that disk space past its end is reserved, so a removed,
//! replaced or full target rejects the request before it changes anything.
//! The line is written after the request, with its outcome.
//!
//! keyd never reopens the path, so the file must be rotated in place (as
//! logrotate's `copytruncate` does). A rename fails requests until restart.
#![forbid(unsafe_code)]

use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use metacrypt_protocol::{
    CaResponse, ErrorBody, ErrorCode, Request, RequestBody, ResponseBody, SocketRole,
};
use nix::fcntl::{FallocateFlags, fallocate};
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Disk space that is allocated past the end of the file before each
/// audited request runs, in bytes. It is larger than [`MAX_LINE_BYTES`], so
/// the line written after the request fits in space that is already
/// allocated.
const RESERVED_BYTES: u64 = 64 * 1024;

/// Extra space allocated with each new reservation, in bytes, so that one
/// `fallocate` covers the lines of this many bytes before the next one.
const REFILL_BYTES: u64 = 8 * 1024;

/// Maximum length of one audit line in bytes; longer string fields are
/// cut to fit.
pub const MAX_LINE_BYTES: usize = 16 * 1024;

/// Maximum length of each string field copied from a request, in
/// characters.
const MAX_FIELD_CHARS: usize = 256;

/// Maximum number of caller roles recorded.
const MAX_ROLES: usize = 64;

/// Maximum length in bytes of a remote address that keyd parses. It fits
/// every socket address in written form, up to a bracketed IPv6 address in
/// its longest notation (45 characters) with a 10-digit scope id and a port.
pub const MAX_REMOTE_ADDR_LEN: usize = 64;

/// The `source.remote_addr` of a REST request whose remote address from
/// frontd is too long or not a socket address.
pub const INVALID_REMOTE_ADDR: &str = "invalid";

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit: failed to open {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("audit: {path} is not the file keyd opened: {reason}")]
    Replaced { path: PathBuf, reason: String },
    #[error("audit: failed to reserve space in {path}: {source}")]
    Reserve { path: PathBuf, source: io::Error },
    #[error("audit: failed to write to {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("audit: failed to encode a line: {0}")]
    Encode(String),
}

/// The origin of an audited request.
#[derive(Debug, Clone, Serialize)]
pub struct Source {
    /// `rest` for the front socket (frontd), `socket` for the admin socket.
    pub kind: &'static str,
    /// The peer's uid from SO_PEERCRED.
    pub peer_uid: u32,
    /// The REST client's `IP:port` as frontd saw it on the TCP connection,
    /// or [`INVALID_REMOTE_ADDR`]. Absent for the admin socket and when
    /// frontd sent no address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_addr: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditCaller {
    pub username: String,
    pub roles: Vec<String>,
}

/// One audit line.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    /// RFC 3339 UTC with nanoseconds.
    pub time: String,
    pub request_id: String,
    pub source: Source,
    /// `None` for unauthenticated requests (init and unseal over REST, and
    /// every admin socket request).
    pub caller: Option<AuditCaller>,
    /// The HMAC of the caller's token hash, the same for every request made
    /// with one token; `None` without a token or while sealed.
    pub session: Option<String>,
    pub operation: String,
    /// `{mount}/{operation}[/{issuer}]` for engine requests.
    pub resource: Option<String>,
    /// `ok`, `denied`, or the keyd error code name.
    pub outcome: String,
    /// The HTTP status that frontd sends for this outcome.
    pub status: u16,
    /// Lowercase hex serial of the certificate that the request issued.
    pub serial: Option<String>,
    /// The reason for a denial.
    pub reason: Option<String>,
}

impl AuditRecord {
    /// Cuts every string a client chose to [`MAX_FIELD_CHARS`] characters
    /// without control characters, and the roles to [`MAX_ROLES`].
    fn bounded(mut self) -> Self {
        let cut = |text: &mut String| {
            *text = text
                .chars()
                .filter(|c| !c.is_control())
                .take(MAX_FIELD_CHARS)
                .collect();
        };
        cut(&mut self.request_id);
        if let Some(caller) = &mut self.caller {
            cut(&mut caller.username);
            caller.roles.truncate(MAX_ROLES);
            caller.roles.iter_mut().for_each(cut);
        }
        if let Some(reason) = &mut self.reason {
            cut(reason);
        }
        self
    }
}

/// Returns whether a request gets an audit line: every init, unseal and
/// seal, and every other request made for an authenticated caller, except
/// the rule fetches that frontd makes for its policy checks.
pub fn is_audited(request: &Request) -> bool {
    match request.body {
        RequestBody::Status | RequestBody::ListPolicyRules => false,
        RequestBody::Init { .. } | RequestBody::Unseal { .. } | RequestBody::Seal => true,
        _ => request.caller.is_some(),
    }
}

/// Returns whether a request still runs when the audit log is unavailable,
/// so that an operator can unseal and see the status.
pub fn runs_without_audit(body: &RequestBody) -> bool {
    matches!(body, RequestBody::Status | RequestBody::Unseal { .. })
}

/// Returns the error of a request rejected because no audit line can be
/// written.
pub fn unavailable() -> ErrorBody {
    ErrorBody::new(ErrorCode::Unavailable, "audit log unavailable")
}

/// Returns the remote address that frontd sent, in the standard form of a
/// socket address, or [`INVALID_REMOTE_ADDR`] when the text is longer than
/// [`MAX_REMOTE_ADDR_LEN`] or is not a socket address. frontd is a separate
/// process, so its text is parsed and never copied into the line as it is.
pub fn checked_remote_addr(text: &str, trace_id: &str) -> String {
    let parsed = if text.len() > MAX_REMOTE_ADDR_LEN {
        None
    } else {
        text.parse::<SocketAddr>().ok()
    };
    match parsed {
        Some(address) => address.to_string(),
        None => {
            tracing::warn!(
                trace_id,
                length = text.len(),
                "frontd sent a remote address that is not a socket address; recorded as invalid"
            );
            INVALID_REMOTE_ADDR.to_owned()
        }
    }
}

/// Starts the audit line of `request`, before it runs.
pub fn start_record(request: &Request, role: SocketRole, peer_uid: u32) -> AuditRecord {
    let (operation, resource, reason, status) = match &request.body {
        RequestBody::RecordDenial {
            operation,
            resource,
            reason,
            status,
        } => (
            operation.clone(),
            resource.clone(),
            Some(reason.clone()),
            *status,
        ),
        body => (
            body.operation().to_owned(),
            body.resource()
                .and_then(Result::ok)
                .map(|resource| resource.to_string()),
            None,
            0,
        ),
    };
    AuditRecord {
        time: OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .unwrap_or_default(),
        request_id: request.trace_id.clone(),
        source: Source {
            kind: match role {
                SocketRole::Front => "rest",
                SocketRole::Admin => "socket",
            },
            peer_uid,
            // The admin socket has no network client, so an address sent
            // there is ignored.
            remote_addr: match role {
                SocketRole::Front => request
                    .remote_addr
                    .as_deref()
                    .map(|text| checked_remote_addr(text, &request.trace_id)),
                SocketRole::Admin => None,
            },
        },
        caller: request.caller.as_ref().map(|caller| AuditCaller {
            username: caller.username.clone(),
            roles: caller.roles.clone(),
        }),
        session: None,
        operation,
        resource,
        outcome: String::new(),
        status,
        serial: None,
        reason,
    }
}

/// Completes an audit line with the request's result. `code_name` maps an
/// error code to the name used in logs.
pub fn finish_record(
    mut record: AuditRecord,
    result: &Result<ResponseBody, ErrorBody>,
    code_name: fn(ErrorCode) -> &'static str,
) -> AuditRecord {
    match result {
        Ok(ResponseBody::DenialRecorded) => {
            let denied = ErrorCode::PermissionDenied.http_status();
            // frontd sends the status it returned, only 4xx and 5xx.
            if !(400..600).contains(&record.status) {
                record.status = denied;
            }
            record.outcome = if record.status == denied {
                "denied".to_owned()
            } else {
                "rejected".to_owned()
            };
        }
        Ok(body) => {
            record.outcome = "ok".to_owned();
            record.status = 200;
            record.serial = serial_of(&record.operation, body).map(str::to_owned);
        }
        Err(error) => {
            record.outcome = code_name(error.code).to_owned();
            record.status = error.code.http_status();
        }
    }
    record
}

/// Returns the serial of the certificate that a reply issued (issue,
/// sign-csr, renew) or revoked.
fn serial_of<'a>(operation: &str, body: &'a ResponseBody) -> Option<&'a str> {
    match body {
        ResponseBody::Ca(CaResponse::Issued(issued)) => Some(&issued.serial_number),
        ResponseBody::Ca(CaResponse::Signed(signed)) => Some(&signed.serial_number),
        ResponseBody::Ca(CaResponse::Cert(record)) if operation == "revoke" => {
            Some(&record.serial_number)
        }
        _ => None,
    }
}

struct OpenFile {
    file: File,
    device: u64,
    inode: u64,
}

/// The open audit file.
pub struct AuditLog {
    path: PathBuf,
    open: Mutex<OpenFile>,
}

impl AuditLog {
    /// Opens `path` for appending, creating it with mode 0600. An existing
    /// file with a wider mode is set to 0600.
    pub fn open(path: &Path) -> Result<AuditLog, AuditError> {
        let open_error = |source| AuditError::Open {
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(open_error)?;
        let metadata = file.metadata().map_err(open_error)?;
        if metadata.mode() & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{:04o}", metadata.mode() & 0o7777),
                "the audit log was readable or writable by others; setting mode 0600"
            );
            file.set_permissions(Permissions::from_mode(0o600))
                .map_err(open_error)?;
        }
        Ok(AuditLog {
            path: path.to_path_buf(),
            open: Mutex::new(OpenFile {
                file,
                device: metadata.dev(),
                inode: metadata.ino(),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks that an audit line can be written: the path still names the
    /// file keyd opened, and [`RESERVED_BYTES`] past its end are allocated.
    ///
    /// One `stat` of the path checks both, because once its device and inode
    /// match the open file, its size and allocated blocks are the open file's.
    /// Only when fewer than [`RESERVED_BYTES`] are allocated past the end is
    /// more space allocated, [`RESERVED_BYTES`] plus [`REFILL_BYTES`], so
    /// `fallocate` runs about once per [`REFILL_BYTES`] of lines. A file
    /// truncated in place (rotation with `copytruncate`) loses its
    /// allocation with its data and is allocated again at the next check.
    ///
    /// NOTE: requests that pass the check together share one reservation,
    /// so more than four maximum-length lines in flight on a full file
    /// system can still fail after their requests ran. Their replies are
    /// then 503, but the change stays.
    ///
    /// NOTE: the allocated size comes from the block count, which also
    /// counts the file system's own blocks for the file (such as extent
    /// tree blocks on ext4). On a large, fragmented file the check can
    /// therefore count a few blocks as reserved that are not.
    pub fn check(&self) -> Result<(), AuditError> {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let replaced = |reason: String| AuditError::Replaced {
            path: self.path.clone(),
            reason,
        };
        let on_disk = std::fs::metadata(&self.path).map_err(|error| replaced(error.to_string()))?;
        if (on_disk.dev(), on_disk.ino()) != (open.device, open.inode) {
            return Err(replaced("another file is at that path".to_owned()));
        }
        // The data of an append-only file has no holes, so every allocated
        // byte past the data is free for the next lines.
        let allocated = on_disk.blocks().saturating_mul(512);
        if allocated.saturating_sub(on_disk.len()) >= RESERVED_BYTES {
            return Ok(());
        }
        let length = RESERVED_BYTES + REFILL_BYTES;
        let offset = i64::try_from(on_disk.len()).unwrap_or(i64::MAX);
        let length = i64::try_from(length).unwrap_or(i64::MAX);
        match fallocate(
            &open.file,
            FallocateFlags::FALLOC_FL_KEEP_SIZE,
            offset.min(i64::MAX - length),
            length,
        ) {
            Ok(()) => Ok(()),
            // A file system without fallocate cannot reserve space, so only
            // the write itself can fail there.
            Err(nix::errno::Errno::EOPNOTSUPP) => Ok(()),
            Err(errno) => Err(AuditError::Reserve {
                path: self.path.clone(),
                source: io::Error::from(errno),
            }),
        }
    }

    /// Appends one line with a single write.
    ///
    /// NOTE: the line reaches the page cache, not the disk, because there is
    /// no fsync per line; a power loss can drop the last lines.
    pub fn write(&self, record: AuditRecord) -> Result<(), AuditError> {
        let mut line = serde_json::to_vec(&record.bounded())
            .map_err(|error| AuditError::Encode(error.to_string()))?;
        if line.len() >= MAX_LINE_BYTES {
            return Err(AuditError::Encode(format!(
                "the line has {} bytes, over the maximum of {MAX_LINE_BYTES}",
                line.len()
            )));
        }
        line.push(b'\n');
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.file
            .write_all(&line)
            .map_err(|source| AuditError::Write {
                path: self.path.clone(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(operation: &str) -> AuditRecord {
        AuditRecord {
            time: "2026-01-01T00:00:00Z".to_owned(),
            request_id: "req\n1".to_owned(),
            source: Source {
                kind: "rest",
                peer_uid: 1000,
                remote_addr: Some("127.0.0.1:50312".to_owned()),
            },
            caller: Some(AuditCaller {
                username: "bob".to_owned(),
                roles: vec!["ops".to_owned()],
            }),
            session: None,
            operation: operation.to_owned(),
            resource: Some("pki/issue/web".to_owned()),
            outcome: "ok".to_owned(),
            status: 200,
            serial: Some("5eed".to_owned()),
            reason: None,
        }
    }

    #[test]
    fn file_is_created_0600_and_appended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        log.check().unwrap();
        log.write(record("issue")).unwrap();
        drop(log);
        let log = AuditLog::open(&path).unwrap();
        log.write(record("list-certs")).unwrap();

        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["operation"], "issue");
        assert_eq!(lines[0]["request_id"], "req1");
        assert_eq!(lines[0]["source"]["kind"], "rest");
        assert_eq!(lines[0]["source"]["remote_addr"], "127.0.0.1:50312");
        assert_eq!(lines[0]["serial"], "5eed");
        assert_eq!(lines[1]["operation"], "list-certs");
    }

    fn request(body: RequestBody, caller: bool) -> Request {
        Request {
            id: 1,
            trace_id: "t".to_owned(),
            remote_addr: None,
            caller: caller.then(|| metacrypt_protocol::Caller {
                username: "bob".to_owned(),
                roles: vec!["ops".to_owned()],
                admin: false,
                session: None,
            }),
            body,
        }
    }

    #[test]
    fn audited_requests() {
        let table = [
            (RequestBody::Status, true, false),
            (RequestBody::Seal, false, true),
            (
                RequestBody::Unseal {
                    password: "x".into(),
                },
                false,
                true,
            ),
            (RequestBody::ListMounts, true, true),
            (RequestBody::ListMounts, false, false),
            (RequestBody::ListPolicyRules, true, false),
        ];
        for (body, caller, expected) in table {
            let operation = body.operation();
            assert_eq!(
                is_audited(&request(body, caller)),
                expected,
                "{operation} caller={caller}"
            );
        }
        assert!(runs_without_audit(&RequestBody::Unseal {
            password: "x".into()
        }));
        assert!(!runs_without_audit(&RequestBody::Seal));
    }

    fn code_name(code: ErrorCode) -> &'static str {
        if code == ErrorCode::NotFound {
            "not_found"
        } else {
            "other"
        }
    }

    #[test]
    fn record_outcomes() {
        let denial = request(
            RequestBody::RecordDenial {
                operation: "issue".to_owned(),
                resource: Some("pki/issue/web".to_owned()),
                reason: "no rule allows pki/issue/web for bob".to_owned(),
                status: 403,
            },
            true,
        );
        let record = start_record(&denial, SocketRole::Front, 998);
        assert_eq!(record.operation, "issue");
        assert_eq!(record.resource.as_deref(), Some("pki/issue/web"));
        assert_eq!(record.source.kind, "rest");
        assert_eq!(record.source.peer_uid, 998);
        let record = finish_record(record, &Ok(ResponseBody::DenialRecorded), code_name);
        assert_eq!(record.outcome, "denied");
        assert_eq!(record.status, 403);
        assert!(record.reason.is_some());

        let seal = request(RequestBody::Seal, false);
        let record = start_record(&seal, SocketRole::Admin, 0);
        assert_eq!(record.source.kind, "socket");
        assert!(record.caller.is_none());
        let failed = Err(ErrorBody::not_found("mount x not found"));
        let record = finish_record(record, &failed, code_name);
        assert_eq!(record.outcome, "not_found");
        assert_eq!(record.status, 404);
        assert_eq!(record.serial, None);
    }

    #[test]
    fn remote_addr_is_parsed_or_invalid() {
        let longest = "[0000:0000:0000:0000:0000:ffff:255.255.255.255%4294967295]:65535";
        assert_eq!(longest.len(), MAX_REMOTE_ADDR_LEN);
        let cases = [
            ("127.0.0.1:50312", "127.0.0.1:50312"),
            ("[::1]:443", "[::1]:443"),
            ("[0:0:0:0:0:0:0:1]:443", "[::1]:443"),
            ("[fe80::1%2]:8443", "[fe80::1%2]:8443"),
            (longest, "[::ffff:255.255.255.255%4294967295]:65535"),
            ("", INVALID_REMOTE_ADDR),
            ("127.0.0.1", INVALID_REMOTE_ADDR),
            ("127.0.0.1:65536", INVALID_REMOTE_ADDR),
            ("localhost:8443", INVALID_REMOTE_ADDR),
            ("127.0.0.1:80\n", INVALID_REMOTE_ADDR),
            (" 127.0.0.1:80", INVALID_REMOTE_ADDR),
        ];
        for (text, expected) in cases {
            assert_eq!(checked_remote_addr(text, "t"), expected, "{text:?}");
        }
        let too_long = format!("127.0.0.1:{}", "0".repeat(MAX_REMOTE_ADDR_LEN));
        assert_eq!(checked_remote_addr(&too_long, "t"), INVALID_REMOTE_ADDR);
    }

    #[test]
    fn remote_addr_only_on_front_socket() {
        let mut from_front = request(RequestBody::ListMounts, true);
        from_front.remote_addr = Some("192.0.2.7:50312".to_owned());
        let record = start_record(&from_front, SocketRole::Front, 998);
        assert_eq!(
            record.source.remote_addr.as_deref(),
            Some("192.0.2.7:50312")
        );
        let line = serde_json::to_value(&record).unwrap();
        assert_eq!(line["source"]["remote_addr"], "192.0.2.7:50312");

        let record = start_record(&from_front, SocketRole::Admin, 0);
        assert_eq!(record.source.remote_addr, None);
        let line = serde_json::to_value(&record).unwrap();
        assert!(line["source"].get("remote_addr").is_none(), "{line}");

        from_front.remote_addr = Some("x".repeat(10_000));
        let record = start_record(&from_front, SocketRole::Front, 998);
        assert_eq!(
            record.source.remote_addr.as_deref(),
            Some(INVALID_REMOTE_ADDR)
        );

        from_front.remote_addr = None;
        let record = start_record(&from_front, SocketRole::Front, 998);
        assert_eq!(record.source.remote_addr, None);
    }

    #[test]
    fn wide_mode_is_narrowed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        std::fs::write(&path, b"").unwrap();
        std::fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        AuditLog::open(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    /// Bytes allocated to the file at `path` past its end.
    fn spare_bytes(path: &Path) -> u64 {
        let metadata = std::fs::metadata(path).unwrap();
        (metadata.blocks() * 512).saturating_sub(metadata.len())
    }

    #[test]
    fn check_keeps_space_reserved_past_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).unwrap();
        log.check().unwrap();
        let spare = spare_bytes(&path);
        if spare == 0 {
            eprintln!(
                "skipping: the file system of {} has no fallocate",
                path.display()
            );
            return;
        }
        assert!(spare >= RESERVED_BYTES, "{spare} bytes reserved");
        let blocks = std::fs::metadata(&path).unwrap().blocks();
        // A check with enough space reserved allocates nothing more.
        log.check().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().blocks(), blocks);

        // Lines eat into the reservation, and a check tops it up before it
        // falls below RESERVED_BYTES.
        let mut refilled = false;
        for _ in 0..200 {
            log.check().unwrap();
            assert!(spare_bytes(&path) >= RESERVED_BYTES);
            refilled |= std::fs::metadata(&path).unwrap().blocks() > blocks;
            log.write(record("issue")).unwrap();
        }
        assert!(std::fs::metadata(&path).unwrap().len() > REFILL_BYTES);
        assert!(refilled);
    }

    #[test]
    fn truncated_file_is_reserved_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).unwrap();
        log.check().unwrap();
        log.write(record("issue")).unwrap();
        if spare_bytes(&path) == 0 {
            eprintln!(
                "skipping: the file system of {} has no fallocate",
                path.display()
            );
            return;
        }
        // Rotation with copytruncate frees the reservation with the data.
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        assert_eq!(spare_bytes(&path), 0);
        log.check().unwrap();
        assert!(spare_bytes(&path) >= RESERVED_BYTES);
    }

    #[test]
    fn removed_file_fails_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(log.check(), Err(AuditError::Replaced { .. })));
    }

    #[test]
    fn replaced_file_fails_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).unwrap();
        std::fs::rename(&path, dir.path().join("old.log")).unwrap();
        std::fs::write(&path, b"").unwrap();
        let error = log.check().unwrap_err();
        assert!(error.to_string().contains("another file"), "{error}");
    }
}
