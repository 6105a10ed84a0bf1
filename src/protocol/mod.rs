//! The SignalFlow wire format: pure code, no I/O.
//!
//! - [`requests`]: client → server JSON requests (serialise strictly, parse leniently).
//! - [`messages`]: server → client messages and their websocket frames.
//! - [`control`], [`info`], [`metadata`], [`error_message`]: the typed server messages.
//! - [`binary`]: the 20-byte binary header, compression, JSON-in-binary.
//! - [`data`]: binary data bodies, values, and the one-line JSON renderer of a data batch.
//! - [`tsid`]: 8-byte ids ↔ 11-character base64url strings.
//! - [`lenient`]: readers for loosely typed JSON fields.

pub mod binary;
pub mod control;
pub mod data;
pub mod error_message;
pub mod info;
pub mod lenient;
pub mod messages;
pub mod metadata;
pub mod requests;
pub mod tsid;

pub use binary::{ChannelName, DecodeLimits, HeaderVersion};
pub use data::{DataBody, DataPoint, Value};
pub use messages::{DataMessage, ServerMessage, WsFrame};
pub use requests::Request;
pub use tsid::Tsid;
