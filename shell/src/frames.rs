//! Control-channel frames over a TCP stream, with size limits and timeouts.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use tasuki_core::codec::{encode_frame, FrameDecoder};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Reads frames from one half of a stream.
pub struct FrameReader<R> {
    inner: R,
    decoder: FrameDecoder,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps a reader.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            decoder: FrameDecoder::new(),
        }
    }

    /// The next frame; `Ok(None)` on a clean end of stream between frames.
    /// A frame must arrive whole within `deadline` (slow-drip senders are cut off).
    pub async fn next(&mut self, deadline: Duration) -> Result<Option<Vec<u8>>> {
        tokio::time::timeout(deadline, self.next_inner())
            .await
            .context("timed out waiting for a control frame")?
    }

    async fn next_inner(&mut self) -> Result<Option<Vec<u8>>> {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                return Ok(Some(frame));
            }
            let n = self.inner.read(&mut buf).await.context("control read")?;
            if n == 0 {
                if self.decoder.buffered() == 0 {
                    return Ok(None);
                }
                bail!("connection closed in the middle of a frame");
            }
            self.decoder.extend(&buf[..n]);
        }
    }
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, body: &[u8]) -> Result<()> {
    let frame = encode_frame(body)?;
    w.write_all(&frame).await.context("control write")?;
    w.flush().await.context("control write")?;
    Ok(())
}
