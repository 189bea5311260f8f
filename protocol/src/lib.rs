//! The protocol between `metacrypt-keyd` and its clients (`metacrypt-frontd`
//! on the front socket, the `metacrypt` CLI on the admin socket).
//!
//! A connection starts with [`ClientMessage::Hello`], and keyd replies
//! with [`ServerMessage::Hello`]. After that the client sends
//! [`ClientMessage::Request`]s, each with an id chosen by the client, and keyd
//! answers each with a [`ServerMessage::Reply`] carrying the same id. Replies
//! may come in any order, so many requests can be in flight on one
//! connection. keyd also sends [`ServerMessage::StateChanged`] whenever the
//! seal state changes.
#![forbid(unsafe_code)]

mod error;
mod frame;
mod messages;
pub mod policy;
mod secret;

pub use error::{ErrorBody, ErrorCode};
pub use frame::{
    FrameError, MAX_FRAME_LEN, decode_payload, encode_frame, read_frame, read_frame_async,
    write_frame, write_frame_async,
};
pub use messages::*;
pub use secret::SecretString;

/// Version of this protocol; both sides must send the same one in `Hello`.
pub const PROTOCOL_VERSION: u32 = 3;
