//! Length-prefixed postcard frames.
//!
//! A frame is a 4-byte big-endian payload length followed by the postcard
//! encoding of one message. The length is checked against
//! [`MAX_FRAME_LEN`] before any buffer is allocated, so a peer cannot make the
//! reader allocate more than that. Frame buffers are zeroized after use
//! because requests and replies may carry passwords and private keys.

use std::io::{Read, Write};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use zeroize::Zeroizing;

/// Maximum payload length of one frame in bytes (4 MiB).
pub const MAX_FRAME_LEN: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("malformed frame: {0}")]
    Decode(postcard::Error),
    #[error("failed to encode frame: {0}")]
    Encode(postcard::Error),
    #[error("socket I/O failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes `message` as a complete frame, length prefix included.
///
/// The payload size is computed first and the message is serialized straight
/// into one buffer of the final size, so no reallocation leaves an unzeroed
/// copy of a secret behind.
pub fn encode_frame<T: Serialize>(message: &T) -> Result<Zeroizing<Vec<u8>>, FrameError> {
    let len = postcard::experimental::serialized_size(message).map_err(FrameError::Encode)?;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    let mut frame = Zeroizing::new(vec![0u8; 4 + len]);
    // The length fits in u32 because MAX_FRAME_LEN does.
    frame[..4].copy_from_slice(&(len as u32).to_be_bytes());
    postcard::to_slice(message, &mut frame[4..]).map_err(FrameError::Encode)?;
    Ok(frame)
}

/// Decodes one payload (without its length prefix).
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    postcard::from_bytes(payload).map_err(FrameError::Decode)
}

fn checked_len(prefix: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    Ok(len)
}

/// Writes one frame to a blocking stream.
pub fn write_frame<W: Write, T: Serialize>(writer: &mut W, message: &T) -> Result<(), FrameError> {
    let frame = encode_frame(message)?;
    writer.write_all(&frame)?;
    writer.flush()?;
    Ok(())
}

/// Reads one frame from a blocking stream. A stream that ends before the
/// first byte of a frame gives [`FrameError::Closed`].
pub fn read_frame<R: Read, T: DeserializeOwned>(reader: &mut R) -> Result<T, FrameError> {
    let mut prefix = [0u8; 4];
    match reader.read_exact(&mut prefix) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(FrameError::Closed);
        }
        Err(err) => return Err(err.into()),
    }
    let len = checked_len(prefix)?;
    let mut payload = Zeroizing::new(vec![0u8; len]);
    reader.read_exact(&mut payload)?;
    decode_payload(&payload)
}

/// Writes one frame to an async stream.
pub async fn write_frame_async<W, T>(writer: &mut W, message: &T) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let frame = encode_frame(message)?;
    writer.write_all(&frame).await?;
    writer.flush().await?;
    Ok(())
}

/// Reads one frame from an async stream. A stream that ends before the first
/// byte of a frame gives [`FrameError::Closed`].
pub async fn read_frame_async<R, T>(reader: &mut R) -> Result<T, FrameError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut prefix = [0u8; 4];
    match reader.read_exact(&mut prefix).await {
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(FrameError::Closed);
        }
        Err(err) => return Err(err.into()),
    }
    let len = checked_len(prefix)?;
    let mut payload = Zeroizing::new(vec![0u8; len]);
    reader.read_exact(&mut payload).await?;
    decode_payload(&payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_prefix_is_rejected_before_allocation() {
        let mut input: &[u8] = &[0xff, 0xff, 0xff, 0xff];
        let err = read_frame::<_, u32>(&mut input).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { len, .. } if len == u32::MAX as usize));
    }

    #[test]
    fn empty_stream_is_closed() {
        let mut input: &[u8] = &[];
        assert!(matches!(
            read_frame::<_, u32>(&mut input),
            Err(FrameError::Closed)
        ));
    }

    #[test]
    fn truncated_payload_is_io_error() {
        let mut input: &[u8] = &[0, 0, 0, 8, 1, 2];
        assert!(matches!(
            read_frame::<_, u64>(&mut input),
            Err(FrameError::Io(_))
        ));
    }

    #[test]
    fn oversized_message_is_not_encoded() {
        let big = vec![0u8; MAX_FRAME_LEN + 1];
        assert!(matches!(
            encode_frame(&big),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn async_round_trip() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        write_frame_async(&mut client, &"hello".to_owned())
            .await
            .unwrap();
        let text: String = read_frame_async(&mut server).await.unwrap();
        assert_eq!(text, "hello");
        drop(client);
        assert!(matches!(
            read_frame_async::<_, String>(&mut server).await,
            Err(FrameError::Closed)
        ));
    }
}
