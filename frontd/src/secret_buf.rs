//! Buffers for bytes that may contain a secret: passwords, bearer tokens,
//! private keys.
//!
//! A `Vec` that grows by pushing frees its old allocation without wiping
//! it, which leaves a copy of the secret in freed memory. The buffers here
//! are allocated at their final size, or regrown by copying into a new
//! zeroizing buffer, so every allocation they drop has been wiped.

use std::io::Write;

use axum::body::Bytes;
use serde::Serialize;
use zeroize::Zeroizing;

/// Initial capacity of a [`BodyBuffer`] whose final length is not known.
const INITIAL_CAPACITY: usize = 1024;

/// Serializes `value` as JSON into a zeroizing buffer allocated once at its
/// final size. A first pass only counts the bytes.
pub(crate) fn json_to_vec<T: Serialize + ?Sized>(
    value: &T,
) -> serde_json::Result<Zeroizing<Vec<u8>>> {
    let mut counter = ByteCounter(0);
    serde_json::to_writer(&mut counter, value)?;
    let mut buffer = Zeroizing::new(Vec::with_capacity(counter.0));
    serde_json::to_writer(&mut *buffer, value)?;
    Ok(buffer)
}

/// Wraps `buffer` in [`Bytes`] without copying it. The buffer is wiped when
/// the last clone of the returned value is dropped.
pub(crate) fn into_bytes(buffer: Zeroizing<Vec<u8>>) -> Bytes {
    Bytes::from_owner(buffer)
}

/// A writer that discards its input and counts the bytes.
struct ByteCounter(usize);

impl Write for ByteCounter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0 += bytes.len();
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The body being read would exceed the buffer's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LimitExceeded;

/// A body read chunk by chunk into zeroizing memory, at most `limit` bytes.
pub(crate) struct BodyBuffer {
    bytes: Zeroizing<Vec<u8>>,
    limit: usize,
}

impl BodyBuffer {
    /// Creates a buffer sized for `expected_len` bytes (a declared
    /// `Content-Length`) when it is known and within `limit`.
    pub(crate) fn new(expected_len: Option<u64>, limit: usize) -> Self {
        let capacity = match expected_len {
            Some(len) => usize::try_from(len).unwrap_or(usize::MAX).min(limit),
            None => INITIAL_CAPACITY.min(limit),
        };
        Self {
            bytes: Zeroizing::new(Vec::with_capacity(capacity)),
            limit,
        }
    }

    /// Appends `chunk`, or fails if the body would then exceed the limit.
    /// When the capacity runs out, the content moves to a new buffer of
    /// double the capacity (at most the limit) and the old one is wiped.
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Result<(), LimitExceeded> {
        let needed = self
            .bytes
            .len()
            .checked_add(chunk.len())
            .filter(|needed| *needed <= self.limit)
            .ok_or(LimitExceeded)?;
        if needed > self.bytes.capacity() {
            let capacity = needed
                .max(self.bytes.capacity().saturating_mul(2))
                .max(INITIAL_CAPACITY)
                .min(self.limit);
            let mut grown = Zeroizing::new(Vec::with_capacity(capacity));
            grown.extend_from_slice(&self.bytes);
            // The assignment drops the old buffer, which wipes it.
            self.bytes = grown;
        }
        self.bytes.extend_from_slice(chunk);
        Ok(())
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.bytes
    }

    pub(crate) fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Returns the bytes allocated, which may exceed the length.
    pub(crate) fn capacity(&self) -> usize {
        self.bytes.capacity()
    }

    pub(crate) fn into_inner(self) -> Zeroizing<Vec<u8>> {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Reply {
        token: String,
        expires_at: String,
    }

    #[test]
    fn json_buffer_has_final_size() {
        let reply = Reply {
            token: "t".repeat(5000),
            expires_at: "2030-01-01T00:00:00Z".to_owned(),
        };
        let buffer = json_to_vec(&reply).unwrap();
        assert_eq!(buffer.capacity(), buffer.len());
        assert_eq!(buffer.as_slice(), serde_json::to_vec(&reply).unwrap());
    }

    #[test]
    fn json_escapes_are_counted() {
        let value = "quote \" backslash \\ newline \n tab \t control \u{1}";
        let buffer = json_to_vec(value).unwrap();
        assert_eq!(buffer.capacity(), buffer.len());
        assert_eq!(buffer.as_slice(), serde_json::to_vec(value).unwrap());
    }

    #[test]
    fn bytes_share_the_buffer() {
        let buffer = Zeroizing::new(b"secret".to_vec());
        let address = buffer.as_ptr();
        let bytes = into_bytes(buffer);
        assert_eq!(bytes.as_ptr(), address);
        assert_eq!(&bytes[..], b"secret");
    }

    #[test]
    fn declared_length_is_allocated_once() {
        let mut buffer = BodyBuffer::new(Some(300), 1024);
        for _ in 0..3 {
            buffer.push(&[7; 100]).unwrap();
        }
        assert_eq!(buffer.bytes.capacity(), 300);
        assert_eq!(buffer.as_slice(), [7; 300]);
    }

    #[test]
    fn growth_keeps_content() {
        let mut buffer = BodyBuffer::new(None, 10_000);
        let mut expected = Vec::new();
        for byte in 0..30u8 {
            buffer.push(&[byte; 200]).unwrap();
            expected.extend_from_slice(&[byte; 200]);
        }
        assert_eq!(buffer.as_slice(), expected.as_slice());
        assert!(
            buffer.bytes.capacity() <= 10_000,
            "{}",
            buffer.bytes.capacity()
        );
    }

    #[test]
    fn growth_stops_at_limit() {
        let mut buffer = BodyBuffer::new(None, 1500);
        buffer.push(&[1; 1000]).unwrap();
        buffer.push(&[2; 500]).unwrap();
        assert_eq!(buffer.bytes.capacity(), 1500);
    }

    #[test]
    fn body_over_limit_is_rejected() {
        let mut buffer = BodyBuffer::new(None, 100);
        buffer.push(&[1; 60]).unwrap();
        assert_eq!(buffer.push(&[1; 41]), Err(LimitExceeded));
        assert_eq!(buffer.as_slice().len(), 60);
    }

    #[test]
    fn declared_length_over_limit_is_capped() {
        let buffer = BodyBuffer::new(Some(u64::MAX), 4096);
        assert_eq!(buffer.bytes.capacity(), 4096);
    }
}
