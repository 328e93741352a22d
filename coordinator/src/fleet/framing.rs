//! Moves protocol frames over quinn streams: the tokio side of `gpuaas_proto::codec`.

use gpuaas_proto::codec::{CodecError, FrameDecoder, LEN_PREFIX};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Reading a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum FrameReadError {
    /// The stream failed or ended inside a frame.
    #[error("stream read failed: {0}")]
    Stream(#[from] quinn::ReadExactError),
    /// The frame is oversized or its payload is invalid.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// Writing a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum FrameWriteError {
    /// The message could not be encoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The stream failed.
    #[error("stream write failed: {0}")]
    Stream(#[from] quinn::WriteError),
}

/// Reads one frame; `Ok(None)` when the peer finished the stream cleanly between frames.
/// The payload buffer is sized only after the declared length passed the decoder's limit.
pub async fn read_frame<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
    decoder: &FrameDecoder,
) -> Result<Option<T>, FrameReadError> {
    match read_payload(recv, decoder).await? {
        Some(payload) => Ok(Some(decoder.decode_payload(&payload)?)),
        None => Ok(None),
    }
}

/// Reads one frame's payload without decoding it (for the first message of a stream, whose
/// version is peeked when it does not decode).
pub async fn read_payload(
    recv: &mut quinn::RecvStream,
    decoder: &FrameDecoder,
) -> Result<Option<Vec<u8>>, FrameReadError> {
    let mut prefix = [0u8; LEN_PREFIX];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = decoder.payload_len(prefix)?;
    let mut payload = vec![0u8; len];
    recv.read_exact(&mut payload).await?;
    Ok(Some(payload))
}

/// Writes one frame.
pub async fn write_frame<T: Serialize>(
    send: &mut quinn::SendStream,
    message: &T,
) -> Result<(), FrameWriteError> {
    let mut buf = Vec::new();
    gpuaas_proto::encode_frame(message, &mut buf)?;
    send.write_all(&buf).await?;
    Ok(())
}
