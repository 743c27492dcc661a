//! Line-oriented buffered I/O over TCP or TLS, shared by the SMTP server and
//! the SMTP client: bounded line reads, dot-terminated data, buffered replies
//! (flushed only when the peer has nothing more pipelined), TLS upgrade.

use bytes::{Buf, BytesMut};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::either::Either;

pub type Stream = Either<TcpStream, tokio_rustls::TlsStream<TcpStream>>;

#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("line too long")]
    TooLong,
    #[error("connection closed by peer")]
    Closed,
}

pub enum Data {
    /// The message, dot-unstuffed, CRLF line endings.
    Complete(Vec<u8>),
    /// The peer sent more than the limit; the rest was read and discarded.
    TooBig,
}

pub struct LineIo {
    stream: Stream,
    buf: BytesMut,
    out: Vec<u8>,
}

impl LineIo {
    pub fn new(stream: Stream) -> LineIo {
        LineIo {
            stream,
            buf: BytesMut::with_capacity(8192),
            out: Vec::with_capacity(1024),
        }
    }

    pub fn stream(&self) -> &Stream {
        &self.stream
    }

    /// Hands the stream back for a TLS upgrade; returns it with whatever the
    /// peer had already sent (which must be discarded after STARTTLS).
    pub fn into_parts(self) -> (Stream, usize) {
        (self.stream, self.buf.len())
    }

    pub fn has_buffered_input(&self) -> bool {
        !self.buf.is_empty()
    }

    pub fn queue(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    pub async fn flush(&mut self) -> Result<(), LineError> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.stream.flush().await?;
            self.out.clear();
        }
        Ok(())
    }

    pub async fn write_all(&mut self, bytes: &[u8]) -> Result<(), LineError> {
        self.flush().await?;
        self.stream.write_all(bytes).await?;
        // TLS may hold the tail of what was written until flushed.
        self.stream.flush().await?;
        Ok(())
    }

    /// Sends pending output, then waits for more input.
    async fn fill(&mut self, timeout: Duration) -> Result<(), LineError> {
        self.flush().await?;
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(8192);
        }
        let n = tokio::time::timeout(timeout, self.stream.read_buf(&mut self.buf))
            .await
            .map_err(|_| LineError::Timeout)??;
        if n == 0 {
            return Err(LineError::Closed);
        }
        Ok(())
    }

    /// Reads one line (without its CRLF). Lines longer than `max` are an
    /// error once their end has been consumed, so the session can go on.
    pub async fn read_line(&mut self, max: usize, timeout: Duration) -> Result<String, LineError> {
        let mut too_long = false;
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line = self.buf.split_to(pos + 1);
                if too_long || line.len() > max + 2 {
                    return Err(LineError::TooLong);
                }
                let text = String::from_utf8_lossy(&line);
                return Ok(text.trim_end_matches(['\r', '\n']).to_string());
            }
            if self.buf.len() > max + 2 {
                too_long = true;
                self.buf.clear();
            }
            self.fill(timeout).await?;
        }
    }

    /// Reads a DATA section up to the lone dot, undoing dot-stuffing.
    pub async fn read_data(
        &mut self,
        max_size: usize,
        timeout: Duration,
    ) -> Result<Data, LineError> {
        let mut body: Vec<u8> = Vec::with_capacity(4096);
        let mut too_big = false;
        loop {
            while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line = &self.buf[..=pos];
                let content = line
                    .strip_suffix(b"\r\n")
                    .or_else(|| line.strip_suffix(b"\n"))
                    .unwrap_or(line);
                if content == b"." {
                    self.buf.advance(pos + 1);
                    return Ok(if too_big {
                        Data::TooBig
                    } else {
                        Data::Complete(body)
                    });
                }
                if !too_big {
                    let content = content.strip_prefix(b".").unwrap_or(content);
                    if body.len() + content.len() + 2 > max_size {
                        too_big = true;
                        body = Vec::new();
                    } else {
                        body.extend_from_slice(content);
                        body.extend_from_slice(b"\r\n");
                    }
                }
                self.buf.advance(pos + 1);
            }
            // A line with no end yet: bound what we hold of it.
            if self.buf.len() > 64 * 1024 && !too_big && body.len() + self.buf.len() > max_size {
                too_big = true;
                body = Vec::new();
            }
            if too_big && self.buf.len() > 64 * 1024 {
                let keep = self.buf.split_off(self.buf.len() - 4);
                self.buf = keep;
            }
            self.fill(timeout).await?;
        }
    }
}

/// Writes `body` as SMTP DATA content: dot-stuffed, ending in CRLF.CRLF.
pub fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 64);
    let mut at_line_start = true;
    for &b in body {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_stuffing() {
        assert_eq!(dot_stuff(b".a\r\nb\r\n..c"), b"..a\r\nb\r\n...c\r\n.\r\n");
        assert_eq!(dot_stuff(b""), b"\r\n.\r\n");
    }
}
