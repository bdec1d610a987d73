//! Length-prefixed frames and bounded message (de)serialization.
//!
//! Every control-channel frame is a 2-byte big-endian length followed by that
//! many bytes. A Noise message can never exceed 65 535 bytes, so neither can a
//! frame. Parsing is split in two steps, like mini-redis: [`FrameDecoder::next_frame`]
//! returns `Ok(None)` when more bytes are needed, and errors only on input
//! that can never become valid.

use serde::{de::DeserializeOwned, Serialize};

/// Largest frame body accepted on the control channel.
pub const MAX_FRAME: usize = 65_535;

/// What went wrong while framing or decoding a message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CodecError {
    /// A frame announced more bytes than [`MAX_FRAME`].
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME}")]
    FrameTooLarge(usize),
    /// A frame had a zero length, which no message uses.
    #[error("empty frame")]
    EmptyFrame,
    /// The bytes did not decode as the expected message.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// Which message type was expected.
        what: &'static str,
        /// The decoder's description of the problem.
        detail: String,
    },
    /// A message was too large to fit in one frame.
    #[error("message of {0} bytes does not fit in a frame")]
    MessageTooLarge(usize),
}

/// Prefixes `body` with its length.
pub fn encode_frame(body: &[u8]) -> Result<Vec<u8>, CodecError> {
    if body.is_empty() {
        return Err(CodecError::EmptyFrame);
    }
    let len = u16::try_from(body.len()).map_err(|_| CodecError::MessageTooLarge(body.len()))?;
    let mut out = Vec::with_capacity(body.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    Ok(out)
}

/// Accumulates bytes from a stream and cuts them into frames.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    /// Creates an empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the stream.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Number of buffered bytes not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Returns the next whole frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, CodecError> {
        let Some(header) = self.buf.get(..2) else {
            return Ok(None);
        };
        let len = usize::from(u16::from_be_bytes([header[0], header[1]]));
        if len == 0 {
            return Err(CodecError::EmptyFrame);
        }
        if self.buf.len() < 2 + len {
            return Ok(None);
        }
        let frame = self.buf[2..2 + len].to_vec();
        self.buf.drain(..2 + len);
        Ok(Some(frame))
    }
}

/// Serializes a message into compact bytes (postcard).
pub fn to_bytes<T: Serialize>(msg: &T) -> Result<Vec<u8>, CodecError> {
    postcard::to_allocvec(msg).map_err(|e| CodecError::Malformed {
        what: std::any::type_name::<T>(),
        detail: e.to_string(),
    })
}

/// Deserializes a message, refusing trailing bytes.
pub fn from_bytes<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, CodecError> {
    let (msg, rest) = postcard::take_from_bytes(bytes).map_err(|e| CodecError::Malformed {
        what,
        detail: e.to_string(),
    })?;
    if !rest.is_empty() {
        return Err(CodecError::Malformed {
            what,
            detail: format!("{} trailing bytes", rest.len()),
        });
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_in_pieces() {
        let a = encode_frame(b"hello").unwrap();
        let b = encode_frame(&[7u8; 300]).unwrap();
        let mut all = a.clone();
        all.extend_from_slice(&b);
        let mut dec = FrameDecoder::new();
        let mut got = Vec::new();
        for byte in all {
            dec.extend(&[byte]);
            while let Some(f) = dec.next_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, vec![b"hello".to_vec(), vec![7u8; 300]]);
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn empty_and_oversized_frames_are_refused() {
        assert_eq!(encode_frame(b""), Err(CodecError::EmptyFrame));
        assert_eq!(
            encode_frame(&vec![0u8; MAX_FRAME + 1]),
            Err(CodecError::MessageTooLarge(MAX_FRAME + 1))
        );
        let mut dec = FrameDecoder::new();
        dec.extend(&[0, 0]);
        assert_eq!(dec.next_frame(), Err(CodecError::EmptyFrame));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = to_bytes(&42u32).unwrap();
        assert_eq!(from_bytes::<u32>("n", &bytes), Ok(42));
        bytes.push(0);
        assert!(matches!(
            from_bytes::<u32>("n", &bytes),
            Err(CodecError::Malformed { .. })
        ));
    }
}
