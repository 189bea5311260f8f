//! Locked memory for keys.
//!
//! This is the one module of keyd that contains unsafe code. Every key that
//! keyd holds while unsealed (the MEK, the DEKs, engine keys) lives in a
//! [`SecretBytes`]: a fixed-length buffer that is kept out of swap and core
//! dumps and is zeroized before its memory is released.
//!
//! Memory comes from, in order of preference:
//! 1. `memfd_secret(2)` pages (Linux 5.14+ with `CONFIG_SECRETMEM`), which are
//!    also removed from the kernel's direct map;
//! 2. a guard-paged allocation from memsec whose `mlock(2)` result keyd
//!    checks itself, because memsec 0.7 ignores a failed mlock;
//! 3. under [`LockPolicy::BestEffort`] only, plain heap memory that is still
//!    zeroized on drop. keyd logs one warning when it first falls back to it.
//!
//! Both kinds of locked memory count against `RLIMIT_MEMLOCK` unless the
//! process has `CAP_IPC_LOCK`.
#![allow(unsafe_code)]

use std::fmt;
use std::ptr::NonNull;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};

use zeroize::Zeroize;

/// The policy for a secret whose memory cannot be locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockPolicy {
    /// Allocation fails with [`SecureError::LockFailed`] (sandbox `enforce`).
    Require,
    /// keyd logs one warning and keeps such secrets in zeroized heap memory.
    BestEffort,
}

/// The protection of a secret's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMethod {
    MemfdSecret,
    Mlock,
    /// Plain heap memory, zeroized on drop but neither locked nor guarded.
    Unlocked,
}

impl LockPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            LockPolicy::Require => "require",
            LockPolicy::BestEffort => "best-effort",
        }
    }
}

impl LockMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            LockMethod::MemfdSecret => "memfd_secret",
            LockMethod::Mlock => "mlock",
            LockMethod::Unlocked => "unlocked",
        }
    }
}

impl fmt::Display for LockMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecureError {
    #[error(
        "failed to lock {len} bytes of memory for a key: {reason}; raise keyd's memlock limit \
         (systemd LimitMEMLOCK=, docker --ulimit memlock, ulimit -l), because keyd drops \
         CAP_IPC_LOCK at start, or set keyd.sandbox = \"best-effort\" to allow unlocked memory"
    )]
    LockFailed { len: usize, reason: String },
    #[error("failed to allocate {len} bytes for a key")]
    OutOfMemory { len: usize },
    #[error("the random number generator failed")]
    Random,
    #[error("the locked-memory policy was already set to {current:?}")]
    PolicyAlreadySet { current: LockPolicy },
}

impl From<SecureError> for metacrypt_protocol::ErrorBody {
    /// Maps a failed lock to `Unavailable` with the message that names the
    /// memlock limit, so that clients see the cause instead of an internal
    /// error. Other failures are internal.
    fn from(err: SecureError) -> Self {
        match err {
            SecureError::LockFailed { .. } => metacrypt_protocol::ErrorBody::new(
                metacrypt_protocol::ErrorCode::Unavailable,
                err.to_string(),
            ),
            _ => metacrypt_protocol::ErrorBody::internal(err.to_string()),
        }
    }
}

/// Counts of the secrets alive now, for [`lock_report`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockReport {
    /// The policy in force, which is [`LockPolicy::BestEffort`] until one is
    /// set.
    pub policy: LockPolicy,
    /// The method of the latest allocation (memfd_secret before any).
    pub method: LockMethod,
    pub memfd_secrets: usize,
    pub mlocked_secrets: usize,
    pub unlocked_secrets: usize,
    /// Bytes of key material in locked memory (memfd_secret or mlock).
    pub locked_secret_bytes: usize,
    /// The kernel's count of this process's locked memory (`VmLck` in
    /// `/proc/self/status`), which includes page rounding and guard pages;
    /// `None` when that file cannot be read.
    pub vm_locked_kib: Option<u64>,
}

static POLICY: OnceLock<LockPolicy> = OnceLock::new();
/// `/proc/self/status`, opened by [`set_lock_policy`] before the sandbox
/// hides /proc, and read again with pread for each report.
static STATUS_FILE: OnceLock<std::fs::File> = OnceLock::new();
/// Cleared after the first failed `memfd_secret`, so later allocations go
/// straight to mlock.
static MEMFD_USABLE: AtomicBool = AtomicBool::new(true);
static UNLOCKED_WARNING_LOGGED: AtomicBool = AtomicBool::new(false);
static MEMFD_SECRETS: AtomicUsize = AtomicUsize::new(0);
static MLOCKED_SECRETS: AtomicUsize = AtomicUsize::new(0);
static UNLOCKED_SECRETS: AtomicUsize = AtomicUsize::new(0);
static LOCKED_SECRET_BYTES: AtomicUsize = AtomicUsize::new(0);
static LATEST_METHOD: AtomicU8 = AtomicU8::new(METHOD_MEMFD);
const METHOD_MEMFD: u8 = 0;
const METHOD_MLOCK: u8 = 1;
const METHOD_UNLOCKED: u8 = 2;

/// Bytes [`set_lock_policy`] allocates to test locked memory: one page,
/// more than the MEK and a DEK together need.
const PROBE_LEN: usize = 4096;

/// Sets the process-wide policy, once, and probes which method works by
/// allocating one small secret. Returns that method. Under
/// [`LockPolicy::Require`] it fails when no memory can be locked.
pub fn set_lock_policy(policy: LockPolicy) -> Result<LockMethod, SecureError> {
    POLICY
        .set(policy)
        .map_err(|_| SecureError::PolicyAlreadySet {
            current: current_policy(),
        })?;
    if let Ok(file) = std::fs::File::open("/proc/self/status") {
        let _ = STATUS_FILE.set(file);
    }
    let probe = SecretBytes::zeroed(PROBE_LEN)?;
    Ok(probe.method())
}

fn current_policy() -> LockPolicy {
    POLICY.get().copied().unwrap_or(LockPolicy::BestEffort)
}

/// Reports the policy, the method of the latest allocation and the secrets
/// alive now.
pub fn lock_report() -> LockReport {
    let method = match LATEST_METHOD.load(Ordering::Relaxed) {
        METHOD_MEMFD => LockMethod::MemfdSecret,
        METHOD_MLOCK => LockMethod::Mlock,
        _ => LockMethod::Unlocked,
    };
    LockReport {
        policy: current_policy(),
        method,
        memfd_secrets: MEMFD_SECRETS.load(Ordering::Relaxed),
        mlocked_secrets: MLOCKED_SECRETS.load(Ordering::Relaxed),
        unlocked_secrets: UNLOCKED_SECRETS.load(Ordering::Relaxed),
        locked_secret_bytes: LOCKED_SECRET_BYTES.load(Ordering::Relaxed),
        vm_locked_kib: read_vm_locked_kib(),
    }
}

fn read_vm_locked_kib() -> Option<u64> {
    let status = match STATUS_FILE.get() {
        Some(file) => {
            use std::os::unix::fs::FileExt;
            // The file is a few KiB; one read from offset 0 returns all of
            // it.
            let mut buffer = vec![0u8; 16 * 1024];
            let read = file.read_at(&mut buffer, 0).ok()?;
            buffer.truncate(read);
            String::from_utf8(buffer).ok()?
        }
        None => std::fs::read_to_string("/proc/self/status").ok()?,
    };
    let line = status.lines().find(|line| line.starts_with("VmLck:"))?;
    line.trim_start_matches("VmLck:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

enum Backing {
    /// Returned by `memsec::memfd_secret_sized`.
    MemfdSecret(NonNull<[u8]>),
    /// Returned by `memsec::malloc_sized`, with a successful `mlock`.
    Mlock(NonNull<[u8]>),
    Heap(Box<[u8]>),
}

/// A fixed-length buffer of key material in locked memory, zeroized on drop.
///
/// It has no `Clone`, and its `Debug` prints only the length and the method.
pub struct SecretBytes {
    backing: Backing,
    len: usize,
}

// SAFETY: a SecretBytes exclusively owns its allocation, and the pointers in
// `Backing` are never shared with another value or tied to a thread.
unsafe impl Send for SecretBytes {}
// SAFETY: `&SecretBytes` only gives read access to the bytes (`as_bytes`);
// every mutation goes through `&mut self`.
unsafe impl Sync for SecretBytes {}

impl SecretBytes {
    /// Copies `bytes` into a new locked buffer.
    pub fn from_slice(bytes: &[u8]) -> Result<SecretBytes, SecureError> {
        let mut secret = Self::zeroed(bytes.len())?;
        secret.as_mut_bytes().copy_from_slice(bytes);
        Ok(secret)
    }

    /// Fills a new locked buffer of `len` bytes from the system's random
    /// number generator, without an unlocked copy.
    pub fn random(len: usize) -> Result<SecretBytes, SecureError> {
        let mut secret = Self::zeroed(len)?;
        aws_lc_rs::rand::fill(secret.as_mut_bytes()).map_err(|_| SecureError::Random)?;
        Ok(secret)
    }

    pub fn as_bytes(&self) -> &[u8] {
        match &self.backing {
            Backing::MemfdSecret(region) | Backing::Mlock(region) => {
                // SAFETY: `region` came from memsec with exactly `self.len`
                // readable and writable bytes, and it stays valid until
                // `drop` frees it. The shared borrow of `self` rules out a
                // concurrent `as_mut_bytes`.
                unsafe { std::slice::from_raw_parts(region.as_ptr() as *const u8, self.len) }
            }
            Backing::Heap(bytes) => bytes,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Returns how this buffer's memory is protected.
    pub fn method(&self) -> LockMethod {
        match self.backing {
            Backing::MemfdSecret(_) => LockMethod::MemfdSecret,
            Backing::Mlock(_) => LockMethod::Mlock,
            Backing::Heap(_) => LockMethod::Unlocked,
        }
    }

    fn as_mut_bytes(&mut self) -> &mut [u8] {
        match &mut self.backing {
            Backing::MemfdSecret(region) | Backing::Mlock(region) => {
                // SAFETY: the region is valid as in `as_bytes`, and the
                // exclusive borrow of `self` makes this the only reference
                // to it.
                unsafe { std::slice::from_raw_parts_mut(region.as_ptr() as *mut u8, self.len) }
            }
            Backing::Heap(bytes) => bytes,
        }
    }

    /// Overwrites the whole buffer with zeros using volatile writes.
    fn wipe(&mut self) {
        self.as_mut_bytes().zeroize();
    }

    /// Allocates `len` zeroed bytes with the best method available.
    fn zeroed(len: usize) -> Result<SecretBytes, SecureError> {
        if len == 0 {
            return Ok(Self::heap(0));
        }
        if MEMFD_USABLE.load(Ordering::Relaxed) {
            if let Some(secret) = Self::memfd_secret(len) {
                return Ok(secret);
            }
            MEMFD_USABLE.store(false, Ordering::Relaxed);
            tracing::info!(
                "memfd_secret is unavailable (old kernel, CONFIG_SECRETMEM off, or the memlock \
                 limit is reached), so keys use mlock-ed memory from now on"
            );
        }
        let reason = match Self::mlocked(len)? {
            Ok(secret) => return Ok(secret),
            Err(reason) => reason,
        };
        match current_policy() {
            LockPolicy::Require => Err(SecureError::LockFailed { len, reason }),
            LockPolicy::BestEffort => {
                if !UNLOCKED_WARNING_LOGGED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        error = %reason,
                        "failed to lock memory for a key; keys that cannot be locked are kept \
                         in ordinary memory (zeroized on drop) because keyd.sandbox is not \
                         enforce"
                    );
                }
                LATEST_METHOD.store(METHOD_UNLOCKED, Ordering::Relaxed);
                Ok(Self::heap(len))
            }
        }
    }

    /// Allocates from `memfd_secret`, or returns `None` when it fails.
    fn memfd_secret(len: usize) -> Option<SecretBytes> {
        // SAFETY: memfd_secret_sized either returns None or a region of `len`
        // writable bytes that stays mapped until free_memfd_secret, which
        // only `drop` calls.
        let region = unsafe { memsec::memfd_secret_sized(len) }?;
        let mut secret = SecretBytes {
            backing: Backing::MemfdSecret(region),
            len,
        };
        secret.wipe();
        MEMFD_SECRETS.fetch_add(1, Ordering::Relaxed);
        LOCKED_SECRET_BYTES.fetch_add(len, Ordering::Relaxed);
        LATEST_METHOD.store(METHOD_MEMFD, Ordering::Relaxed);
        Some(secret)
    }

    /// Allocates guard-paged memory and locks it. The inner `Err` carries the
    /// reason mlock failed, after the memory has been freed again.
    fn mlocked(len: usize) -> Result<Result<SecretBytes, String>, SecureError> {
        // SAFETY: malloc_sized either returns None or a region of `len`
        // writable bytes that stays valid until memsec::free.
        let region =
            unsafe { memsec::malloc_sized(len) }.ok_or(SecureError::OutOfMemory { len })?;
        // SAFETY: `region` points to `len` bytes owned by this function.
        // mlock rounds the range to whole pages, which memsec reserves for
        // this allocation alone.
        let locked = unsafe { memsec::mlock(region.as_ptr() as *mut u8, len) };
        if !locked {
            let reason = std::io::Error::last_os_error().to_string();
            // SAFETY: `region` came from malloc_sized, contains no secret yet
            // and is freed exactly once, here.
            unsafe { memsec::free(region) };
            return Ok(Err(reason));
        }
        let mut secret = SecretBytes {
            backing: Backing::Mlock(region),
            len,
        };
        secret.wipe();
        MLOCKED_SECRETS.fetch_add(1, Ordering::Relaxed);
        LOCKED_SECRET_BYTES.fetch_add(len, Ordering::Relaxed);
        LATEST_METHOD.store(METHOD_MLOCK, Ordering::Relaxed);
        Ok(Ok(secret))
    }

    /// Allocates unlocked memory. An empty buffer contains no secret, so it is
    /// not counted as unlocked.
    fn heap(len: usize) -> SecretBytes {
        if len > 0 {
            UNLOCKED_SECRETS.fetch_add(1, Ordering::Relaxed);
        }
        SecretBytes {
            backing: Backing::Heap(vec![0u8; len].into_boxed_slice()),
            len,
        }
    }
}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        self.wipe();
        #[cfg(test)]
        if capture::ACTIVE.with(|active| active.get()) {
            // Keeps the wiped memory allocated under a new owner, which
            // capture_dropped reads and then drops with capturing off.
            let backing = std::mem::replace(&mut self.backing, Backing::Heap(Box::new([])));
            let len = std::mem::take(&mut self.len);
            let kept = SecretBytes { backing, len };
            capture::DROPPED.with(|dropped| dropped.borrow_mut().push(kept));
            // The counters are fixed by the drop of `kept`; the empty
            // heap buffer left here counts as nothing.
            return;
        }
        match &self.backing {
            Backing::MemfdSecret(region) => {
                MEMFD_SECRETS.fetch_sub(1, Ordering::Relaxed);
                LOCKED_SECRET_BYTES.fetch_sub(self.len, Ordering::Relaxed);
                // SAFETY: the region came from memfd_secret_sized, and this is
                // the only place that frees it. No borrow of it outlives
                // `self`.
                unsafe { memsec::free_memfd_secret(*region) };
            }
            Backing::Mlock(region) => {
                MLOCKED_SECRETS.fetch_sub(1, Ordering::Relaxed);
                LOCKED_SECRET_BYTES.fetch_sub(self.len, Ordering::Relaxed);
                // SAFETY: the region came from malloc_sized, and this is the
                // only place that frees it. memsec::free also munlocks it.
                unsafe { memsec::free(*region) };
            }
            Backing::Heap(_) => {
                if self.len > 0 {
                    UNLOCKED_SECRETS.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Fails to compile when `$ty` implements `Debug` or `serde::Serialize`, so
/// no key type can reach a log line, an error message or a protocol
/// response. Each check names a method through a trait that has two blanket
/// impls: the call resolves only when exactly one impl applies, which is
/// when the type lacks the trait.
#[cfg(test)]
macro_rules! assert_not_debug_or_serialize {
    ($($ty:ty),+ $(,)?) => {{
        trait AmbiguousIfDebug<Marker> {
            fn check() {}
        }
        impl<T: ?Sized> AmbiguousIfDebug<()> for T {}
        impl<T: ?Sized + std::fmt::Debug> AmbiguousIfDebug<u8> for T {}
        trait AmbiguousIfSerialize<Marker> {
            fn check() {}
        }
        impl<T: ?Sized> AmbiguousIfSerialize<()> for T {}
        impl<T: ?Sized + serde::Serialize> AmbiguousIfSerialize<u8> for T {}
        $(
            <$ty as AmbiguousIfDebug<_>>::check();
            <$ty as AmbiguousIfSerialize<_>>::check();
        )+
    }};
}
#[cfg(test)]
pub(crate) use assert_not_debug_or_serialize;

/// Regions of dropped secrets that [`capture_dropped`] keeps mapped so a
/// test can read what the drop left in them.
#[cfg(test)]
mod capture {
    use std::cell::RefCell;

    thread_local! {
        pub(super) static ACTIVE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
        pub(super) static DROPPED: RefCell<Vec<super::SecretBytes>> = const { RefCell::new(Vec::new()) };
    }
}

/// Runs `work` and returns, for every secret dropped on this thread during
/// it, the address its bytes had and a copy of the bytes the drop left
/// behind. Their memory stays allocated until then, so reading it is
/// sound; it is freed before this function returns.
#[cfg(test)]
pub(crate) fn capture_dropped(work: impl FnOnce()) -> Vec<(usize, Vec<u8>)> {
    capture::ACTIVE.with(|active| active.set(true));
    work();
    capture::ACTIVE.with(|active| active.set(false));
    let dropped = capture::DROPPED.with(|dropped| std::mem::take(&mut *dropped.borrow_mut()));
    dropped
        .iter()
        .map(|secret| (secret.address(), secret.as_bytes().to_vec()))
        .collect()
}

#[cfg(test)]
impl SecretBytes {
    /// The address of the first byte, to match a secret with what
    /// [`capture_dropped`] returns.
    pub(crate) fn address(&self) -> usize {
        self.as_bytes().as_ptr() as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_slice_keeps_bytes_and_length() {
        let secret = SecretBytes::from_slice(b"0123456789abcdef0123456789abcdef").unwrap();
        assert_eq!(secret.len(), 32);
        assert_eq!(secret.as_bytes(), b"0123456789abcdef0123456789abcdef");
    }

    #[test]
    fn random_fills_requested_length() {
        let first = SecretBytes::random(32).unwrap();
        let second = SecretBytes::random(32).unwrap();
        assert_eq!(first.len(), 32);
        assert_ne!(first.as_bytes(), second.as_bytes());
    }

    #[test]
    fn wipe_zeroes_live_buffer() {
        let mut secret = SecretBytes::from_slice(&[0xa5; 4096 + 17]).unwrap();
        secret.wipe();
        assert!(secret.as_bytes().iter().all(|byte| *byte == 0));
        assert_eq!(secret.len(), 4096 + 17);
    }

    #[test]
    fn empty_secret_is_allowed() {
        let secret = SecretBytes::from_slice(&[]).unwrap();
        assert!(secret.is_empty());
        assert_eq!(secret.as_bytes(), &[] as &[u8]);
    }

    #[test]
    fn secret_bytes_has_no_debug_or_serialize() {
        assert_not_debug_or_serialize!(SecretBytes);
    }

    #[test]
    fn drop_zeroes_the_bytes() {
        let secret = SecretBytes::from_slice(&[0xa5; 100]).unwrap();
        let address = secret.address();
        let dropped = capture_dropped(|| drop(secret));
        assert_eq!(dropped.len(), 1);
        assert_eq!(dropped[0].0, address);
        assert_eq!(dropped[0].1, vec![0u8; 100]);
    }

    #[test]
    fn capture_sees_only_dropped_secrets() {
        let kept = SecretBytes::from_slice(&[0x5a; 32]).unwrap();
        let dropped = capture_dropped(|| {});
        assert!(dropped.is_empty());
        assert_eq!(kept.as_bytes(), &[0x5a; 32]);
    }

    #[test]
    fn small_secret_is_locked() {
        // One page fits under any memlock limit of at least 64 KiB, the
        // Linux default, even without CAP_IPC_LOCK.
        let secret = SecretBytes::random(64).unwrap();
        assert_ne!(secret.method(), LockMethod::Unlocked);
        let report = lock_report();
        assert!(report.locked_secret_bytes >= 64);
        assert!(report.vm_locked_kib.unwrap_or(0) >= 4);
    }
}
