//! Binary websocket frames (protocol doc §4): a 20-byte header in one of three layouts, then a
//! body that is either the binary data layout or UTF-8 JSON, optionally gzip/zlib-compressed.
//!
//! Decoding accepts header versions 1, 2 (`0x0200`) and 3; encoding writes any of them but the
//! simulator emits version 1, the only one every client reads. Hostile input is always an
//! [`FrameError`]: nothing here panics or allocates more than the configured decompression cap.

use super::data::{DataBody, DataBodyError};
use flate2::read::{GzDecoder, ZlibDecoder};
use flate2::write::{GzEncoder, ZlibEncoder};
use std::fmt;
use std::io::{Read, Write};

/// Length of every binary header.
pub const HEADER_LEN: usize = 20;
/// Longest channel name the header can carry.
pub const MAX_CHANNEL_LEN: usize = 16;
/// Flag bit: the body is compressed.
pub const FLAG_COMPRESSED: u8 = 0x01;
/// Flag bit: the (decompressed) body is JSON.
pub const FLAG_JSON: u8 = 0x02;
/// Default cap on a decompressed body.
pub const DEFAULT_MAX_DECOMPRESSED: usize = 64 * 1024 * 1024;

/// Header layout. V1 and V3 share a byte layout; V2 has a 16-bit version field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeaderVersion {
    V1,
    V2,
    V3,
}

impl HeaderVersion {
    /// Versions 2 and 3 carry `maxDelayMs` in data bodies.
    pub fn has_max_delay(self) -> bool {
        !matches!(self, HeaderVersion::V1)
    }
}

/// The message type code of byte 1 (v1/v3) or 2 (v2) (§4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    Control = 1,
    Info = 2,
    Event = 3,
    Metadata = 4,
    Data = 5,
    Error = 6,
    Authenticated = 7,
    ComputationStarted = 8,
    Estimation = 9,
    ExpiredTsid = 10,
    LogData = 11,
    LivetailStarted = 12,
}

impl MessageKind {
    pub fn from_code(code: u8) -> Option<Self> {
        use MessageKind::*;
        Some(match code {
            1 => Control,
            2 => Info,
            3 => Event,
            4 => Metadata,
            5 => Data,
            6 => Error,
            7 => Authenticated,
            8 => ComputationStarted,
            9 => Estimation,
            10 => ExpiredTsid,
            11 => LogData,
            12 => LivetailStarted,
            _ => return None,
        })
    }

    pub fn code(self) -> u8 {
        self as u8
    }
}

/// A channel name: at most 16 bytes of UTF-8 with no NUL, stored inline (`Copy`, no allocation).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName {
    bytes: [u8; MAX_CHANNEL_LEN],
    len: u8,
}

/// Why a string cannot be a channel name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelNameError {
    #[error("channel name is {0} bytes; at most 16 fit the binary header")]
    TooLong(usize),
    #[error("channel name is empty")]
    Empty,
    #[error("channel name contains a NUL byte")]
    Nul,
}

impl ChannelName {
    pub fn new(name: &str) -> Result<Self, ChannelNameError> {
        let raw = name.as_bytes();
        if raw.is_empty() {
            return Err(ChannelNameError::Empty);
        }
        if raw.len() > MAX_CHANNEL_LEN {
            return Err(ChannelNameError::TooLong(raw.len()));
        }
        if raw.contains(&0) {
            return Err(ChannelNameError::Nul);
        }
        let mut bytes = [0u8; MAX_CHANNEL_LEN];
        bytes[..raw.len()].copy_from_slice(raw);
        Ok(ChannelName { bytes, len: raw.len() as u8 })
    }

    pub fn as_str(&self) -> &str {
        // Only constructed from a &str or from header bytes checked as UTF-8.
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or_default()
    }

    /// Reads the 16 header bytes: the name ends at the first NUL, or fills all 16 bytes.
    fn from_header(raw: &[u8]) -> Result<Self, FrameError> {
        let len = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        let name = std::str::from_utf8(&raw[..len]).map_err(|_| FrameError::ChannelNotUtf8)?;
        let mut bytes = [0u8; MAX_CHANNEL_LEN];
        bytes[..len].copy_from_slice(name.as_bytes());
        Ok(ChannelName { bytes, len: len as u8 })
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChannelName({:?})", self.as_str())
    }
}

/// The fixed 20-byte header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub version: HeaderVersion,
    /// Type code as sent; see [`MessageKind::from_code`].
    pub kind_code: u8,
    pub flags: u8,
    /// Empty for a frame that names no channel.
    pub channel: ChannelName,
}

impl FrameHeader {
    pub fn kind(&self) -> Option<MessageKind> {
        MessageKind::from_code(self.kind_code)
    }
    pub fn is_compressed(&self) -> bool {
        self.flags & FLAG_COMPRESSED != 0
    }
    pub fn is_json(&self) -> bool {
        self.flags & FLAG_JSON != 0
    }

    pub fn decode(frame: &[u8]) -> Result<Self, FrameError> {
        if frame.len() < HEADER_LEN {
            return Err(FrameError::TruncatedHeader(frame.len()));
        }
        let (version, kind_code, flags) = match (frame[0], frame[1]) {
            (1, _) => (HeaderVersion::V1, frame[1], frame[2]),
            (3, _) => (HeaderVersion::V3, frame[1], frame[2]),
            (2, 0) => (HeaderVersion::V2, frame[2], frame[3]),
            (a, b) => return Err(FrameError::Version(u16::from_be_bytes([a, b]))),
        };
        let channel = ChannelName::from_header(&frame[4..HEADER_LEN])?;
        Ok(FrameHeader { version, kind_code, flags, channel })
    }

    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self.version {
            HeaderVersion::V1 | HeaderVersion::V3 => {
                let v = if self.version == HeaderVersion::V1 { 1 } else { 3 };
                out.extend_from_slice(&[v, self.kind_code, self.flags, 0]);
            }
            HeaderVersion::V2 => out.extend_from_slice(&[2, 0, self.kind_code, self.flags]),
        }
        out.extend_from_slice(&self.channel.bytes);
    }
}

/// Data bodies shorter than this are sent uncompressed even under `compress: true`: the service
/// mixes flags 0x00 and 0x01 in one stream.
pub const MIN_COMPRESS_LEN: usize = 256;

/// Compression for encoding. Real servers use gzip; zlib exists for Node-style peers and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Zlib,
}

/// Limits applied while decoding untrusted frames.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Largest decompressed body accepted; larger is [`FrameError::TooLarge`].
    pub max_decompressed_bytes: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits { max_decompressed_bytes: DEFAULT_MAX_DECOMPRESSED }
    }
}

/// A decoded binary frame.
#[derive(Debug, Clone, PartialEq)]
pub struct BinaryFrame {
    pub header: FrameHeader,
    pub body: FrameBody,
}

/// The body of a binary frame after decompression.
#[derive(Debug, Clone, PartialEq)]
pub enum FrameBody {
    /// Type 5 without the JSON flag.
    Data(DataBody),
    /// Any frame with the JSON flag: the UTF-8 JSON object, as it would travel in a text frame.
    Json(String),
}

/// Why a binary frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes is shorter than the 20-byte header")]
    TruncatedHeader(usize),
    #[error("unsupported header version {0:#06x}")]
    Version(u16),
    #[error("channel name in the header is not UTF-8")]
    ChannelNotUtf8,
    #[error("message type {0} without the JSON flag has no binary body layout")]
    NotBinaryLayout(u8),
    #[error("compressed body is neither gzip nor zlib")]
    UnknownCompression,
    #[error("compressed body is corrupt: {0}")]
    Corrupt(String),
    #[error("decompressed body exceeds the {limit}-byte cap")]
    TooLarge { limit: usize },
    #[error("JSON body is not UTF-8")]
    JsonNotUtf8,
    #[error("data body: {0}")]
    Data(#[from] DataBodyError),
}

/// Decodes one binary frame.
pub fn decode_frame(frame: &[u8], limits: &DecodeLimits) -> Result<BinaryFrame, FrameError> {
    let header = FrameHeader::decode(frame)?;
    let raw = &frame[HEADER_LEN..];
    let decompressed;
    let body = if header.is_compressed() {
        decompressed = decompress(raw, limits.max_decompressed_bytes)?;
        &decompressed[..]
    } else {
        raw
    };
    let body = if header.is_json() {
        FrameBody::Json(String::from_utf8(body.to_vec()).map_err(|_| FrameError::JsonNotUtf8)?)
    } else if header.kind() == Some(MessageKind::Data) {
        FrameBody::Data(DataBody::decode(body, header.version.has_max_delay())?)
    } else {
        return Err(FrameError::NotBinaryLayout(header.kind_code));
    };
    Ok(BinaryFrame { header, body })
}

/// Inflates a gzip (`1f 8b`) or zlib (`78 xx` with a valid header check) body, refusing to
/// produce more than `cap` bytes.
pub fn decompress(body: &[u8], cap: usize) -> Result<Vec<u8>, FrameError> {
    let is_gzip = body.starts_with(&[0x1f, 0x8b]);
    let is_zlib = body.len() >= 2 && body[0] & 0x0f == 8 && (u16::from(body[0]) << 8 | u16::from(body[1])) % 31 == 0;
    let reader: Box<dyn Read + '_> = if is_gzip {
        Box::new(GzDecoder::new(body))
    } else if is_zlib {
        Box::new(ZlibDecoder::new(body))
    } else {
        return Err(FrameError::UnknownCompression);
    };
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(cap));
    // Reading one byte past the cap tells "exactly at the cap" from "over it".
    reader.take(cap as u64 + 1).read_to_end(&mut out).map_err(|e| FrameError::Corrupt(e.to_string()))?;
    if out.len() > cap {
        return Err(FrameError::TooLarge { limit: cap });
    }
    Ok(out)
}

/// Compresses a body on its own, for a server that encodes a body once and frames it for many
/// channels (the gateway's websocket clients).
pub fn compress(body: &[u8], how: Compression) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() / 2 + 32);
    compress_into(&mut out, body, how);
    out
}

fn compress_into(out: &mut Vec<u8>, body: &[u8], how: Compression) {
    // Level 1: the simulator and tests compress on the hot path; ratio matters less than speed.
    let level = flate2::Compression::fast();
    // Writing into a Vec cannot fail.
    let result = match how {
        Compression::Gzip => {
            let mut enc = GzEncoder::new(out, level);
            enc.write_all(body).and_then(|_| enc.finish().map(drop))
        }
        Compression::Zlib => {
            let mut enc = ZlibEncoder::new(out, level);
            enc.write_all(body).and_then(|_| enc.finish().map(drop))
        }
    };
    debug_assert!(result.is_ok());
}

/// Encodes a data frame.
pub fn encode_data_frame(
    channel: ChannelName,
    version: HeaderVersion,
    body: &DataBody,
    compression: Option<Compression>,
) -> Vec<u8> {
    let mut raw = Vec::with_capacity(20 + body.points.len() * super::data::POINT_LEN);
    body.encode_into(&mut raw, version.has_max_delay());
    finish_frame(channel, version, MessageKind::Data, false, &raw, compression)
}

/// Encodes a JSON message as a binary frame with the JSON flag (flags `0x02`, or `0x03` when
/// compressed), as the service does for channel messages under `compress: true`.
pub fn encode_json_frame(
    channel: ChannelName,
    version: HeaderVersion,
    kind: MessageKind,
    json: &[u8],
    compression: Option<Compression>,
) -> Vec<u8> {
    finish_frame(channel, version, kind, true, json, compression)
}

fn finish_frame(
    channel: ChannelName,
    version: HeaderVersion,
    kind: MessageKind,
    json: bool,
    body: &[u8],
    compression: Option<Compression>,
) -> Vec<u8> {
    let mut flags = if json { FLAG_JSON } else { 0 };
    if compression.is_some() {
        flags |= FLAG_COMPRESSED;
    }
    let header = FrameHeader { version, kind_code: kind.code(), flags, channel };
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    header.encode_into(&mut out);
    match compression {
        Some(how) => compress_into(&mut out, body, how),
        None => out.extend_from_slice(body),
    }
    out
}

/// An empty channel name, for frames that carry none.
impl Default for ChannelName {
    fn default() -> Self {
        ChannelName { bytes: [0; MAX_CHANNEL_LEN], len: 0 }
    }
}
