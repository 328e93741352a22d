//! The frame codec: a big-endian u32 length prefix followed by a bincode 2 payload.
//!
//! # Limits
//! A frame's declared length is checked against the decoder's maximum **before** any buffer is
//! sized from it, and the payload is decoded by bincode under a byte limit of [`MAX_FRAME_LEN`]
//! (a compile-time constant, so a decoder built with a smaller maximum still lets bincode
//! pre-allocate up to `MAX_FRAME_LEN`), so a hostile length field (even `u32::MAX`) or a hostile
//! collection length inside the payload can never make the receiver allocate more than
//! `MAX_FRAME_LEN` at once. Collections of structs are bounded by their own deserializers (see
//! `Inventory::gpus`), since bincode's serde path claims the limit per byte, not per element. A payload must be consumed exactly: trailing
//! bytes are an error, not ignored.
//!
//! # Incomplete versus invalid
//! [`FrameDecoder::decode`] tells *need more bytes* ([`Decoded::Incomplete`]) apart from
//! *invalid* ([`CodecError`]), so a stream reader knows whether to wait or to close.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;
/// The hard maximum payload size of one frame (1 MiB).
pub const MAX_FRAME_LEN: u32 = 1 << 20;

const MAX_FRAME_USIZE: usize = MAX_FRAME_LEN as usize;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME_USIZE>()
}

/// A frame that cannot be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The declared (or produced) payload length is over the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The declared or produced length.
        len: u64,
        /// The limit in force.
        max: u32,
    },
    /// The payload is not a valid message.
    #[error("invalid frame payload: {0}")]
    Decode(#[source] bincode::error::DecodeError),
    /// The payload decoded but left bytes unread.
    #[error("invalid frame payload: {unread} trailing bytes after the message")]
    TrailingBytes {
        /// Bytes left after the message.
        unread: usize,
    },
    /// The message could not be serialised.
    #[error("cannot encode frame: {0}")]
    Encode(#[source] bincode::error::EncodeError),
}

/// Result of trying to decode one frame from the front of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<T> {
    /// The buffer holds no whole frame yet; at least `needed` bytes in total are required.
    Incomplete {
        /// Total bytes (from the start of the buffer) needed before trying again.
        needed: usize,
    },
    /// A whole frame.
    Frame {
        /// The message.
        message: T,
        /// Bytes of the buffer the frame took (prefix included).
        consumed: usize,
    },
}

/// Appends one frame holding `message` to `out`.
pub fn encode_frame<T: Serialize>(message: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
    let start = out.len();
    out.extend_from_slice(&[0; LEN_PREFIX]);
    let written = bincode::serde::encode_into_std_write(message, out, config()).map_err(|e| {
        out.truncate(start);
        CodecError::Encode(e)
    })?;
    let len = match u32::try_from(written) {
        Ok(len) if len <= MAX_FRAME_LEN => len,
        _ => {
            out.truncate(start);
            return Err(CodecError::TooLarge {
                len: written as u64,
                max: MAX_FRAME_LEN,
            });
        }
    };
    out[start..start + LEN_PREFIX].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Decodes frames under a byte limit.
#[derive(Debug, Clone, Copy)]
pub struct FrameDecoder {
    max_len: u32,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(MAX_FRAME_LEN)
    }
}

impl FrameDecoder {
    /// A decoder that refuses payloads longer than `max_len` (capped at [`MAX_FRAME_LEN`]).
    pub fn new(max_len: u32) -> Self {
        Self {
            max_len: max_len.min(MAX_FRAME_LEN),
        }
    }

    /// The limit in force.
    pub fn max_len(&self) -> u32 {
        self.max_len
    }

    /// Reads a length prefix and returns the payload length it declares, or an error if it is
    /// over the limit. Stream readers call this before reading (or allocating for) the payload.
    pub fn payload_len(&self, prefix: [u8; LEN_PREFIX]) -> Result<usize, CodecError> {
        let len = u32::from_be_bytes(prefix);
        if len > self.max_len {
            return Err(CodecError::TooLarge {
                len: u64::from(len),
                max: self.max_len,
            });
        }
        Ok(len as usize)
    }

    /// Decodes one payload (the bytes after the prefix), which must be consumed exactly.
    pub fn decode_payload<T: DeserializeOwned>(&self, payload: &[u8]) -> Result<T, CodecError> {
        if payload.len() > self.max_len as usize {
            return Err(CodecError::TooLarge {
                len: payload.len() as u64,
                max: self.max_len,
            });
        }
        let (message, read) =
            bincode::serde::decode_from_slice(payload, config()).map_err(CodecError::Decode)?;
        if read != payload.len() {
            return Err(CodecError::TrailingBytes {
                unread: payload.len() - read,
            });
        }
        Ok(message)
    }

    /// Decodes the frame at the front of `buf`, if it is whole.
    pub fn decode<T: DeserializeOwned>(&self, buf: &[u8]) -> Result<Decoded<T>, CodecError> {
        let Some(prefix) = buf.first_chunk::<LEN_PREFIX>() else {
            return Ok(Decoded::Incomplete { needed: LEN_PREFIX });
        };
        let len = self.payload_len(*prefix)?;
        let total = LEN_PREFIX + len;
        let Some(payload) = buf.get(LEN_PREFIX..total) else {
            return Ok(Decoded::Incomplete { needed: total });
        };
        Ok(Decoded::Frame {
            message: self.decode_payload(payload)?,
            consumed: total,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{AgentMessage, Heartbeat};

    fn heartbeat() -> AgentMessage {
        AgentMessage::Heartbeat(Heartbeat {
            seq: 42,
            wall_clock_ms: 1_700_000_000_000,
            gpus_visible: 8,
        })
    }

    #[test]
    fn round_trip_and_incomplete() {
        let mut buf = Vec::new();
        encode_frame(&heartbeat(), &mut buf).unwrap();
        let dec = FrameDecoder::default();
        for cut in 0..buf.len() {
            match dec.decode::<AgentMessage>(&buf[..cut]).unwrap() {
                Decoded::Incomplete { needed } => assert!(needed > cut),
                Decoded::Frame { .. } => panic!("frame from {cut} of {} bytes", buf.len()),
            }
        }
        assert_eq!(
            dec.decode::<AgentMessage>(&buf).unwrap(),
            Decoded::Frame {
                message: heartbeat(),
                consumed: buf.len()
            }
        );
    }

    #[test]
    fn declared_length_over_limit_is_refused_before_reading() {
        let dec = FrameDecoder::new(1024);
        let err = dec
            .decode::<AgentMessage>(&u32::MAX.to_be_bytes())
            .unwrap_err();
        assert!(
            matches!(err, CodecError::TooLarge { len, max: 1024 } if len == u64::from(u32::MAX))
        );
    }

    #[test]
    fn trailing_bytes_are_invalid() {
        let mut buf = Vec::new();
        encode_frame(&heartbeat(), &mut buf).unwrap();
        buf.push(0);
        let len = u32::try_from(buf.len() - LEN_PREFIX).unwrap();
        buf[..LEN_PREFIX].copy_from_slice(&len.to_be_bytes());
        let err = FrameDecoder::default()
            .decode::<AgentMessage>(&buf)
            .unwrap_err();
        assert!(
            matches!(err, CodecError::TrailingBytes { unread: 1 }),
            "{err}"
        );
    }

    #[test]
    fn oversized_message_is_not_encoded() {
        let msg = AgentMessage::RenewCertificate {
            csr_der: vec![0; MAX_FRAME_USIZE + 1],
        };
        let mut buf = vec![9];
        assert!(encode_frame(&msg, &mut buf).is_err());
        assert_eq!(buf, vec![9], "a failed encode leaves the buffer as it was");
    }
}
