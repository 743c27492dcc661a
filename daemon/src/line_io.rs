//! Line-oriented buffered I/O over TCP or TLS, shared by the SMTP server and
//! the SMTP client: bounded line reads, dot-terminated data, buffered replies
//! (flushed only when the peer has nothing more pipelined), TLS upgrade.

use bytes::{Buf, BytesMut};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
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

#[derive(Debug, PartialEq, Eq)]
pub enum Data {
    /// The message, dot-unstuffed, CRLF line endings.
    Complete(Vec<u8>),
    /// The peer sent more than the limit; the rest was read and discarded.
    TooBig,
    /// A line was longer than RFC 5322 allows ([`MAX_DATA_LINE`]); the
    /// rest was read and discarded.
    LineTooLong,
    /// A bare LF or a lone CR: refused (RFC 5321 section 2.3.8), never
    /// passed on. `framed` is false when the data did not end with
    /// CRLF.CRLF: the peer may think it ended elsewhere (SMTP smuggling), so
    /// the session must not read what follows as commands.
    BareLineEnding { framed: bool },
}

/// The longest line a message may have, without its CRLF (RFC 5322
/// section 2.1.1): a next hop refuses longer ones.
pub const MAX_DATA_LINE: usize = 998;

/// How long a DATA section may take: at most `max_time` in all, and after
/// `grace` no slower than `min_rate` bytes a second on average (a peer
/// trickling bytes cannot hold a connection for the whole `max_time`).
#[derive(Debug, Clone, Copy)]
pub struct DataPace {
    pub max_time: Duration,
    pub grace: Duration,
    pub min_rate: u64,
}

impl DataPace {
    /// When the read must be over, given what has arrived since `start`.
    fn deadline(&self, start: Instant, received: usize) -> Instant {
        let earned = if self.min_rate == 0 {
            self.max_time
        } else {
            Duration::from_secs_f64(received as f64 / self.min_rate as f64)
        };
        start + (self.grace + earned).min(self.max_time)
    }
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

    /// Sends pending output, then waits for more input until `deadline`.
    async fn fill(&mut self, deadline: Instant) -> Result<(), LineError> {
        tokio::time::timeout_at(deadline, self.flush())
            .await
            .map_err(|_| LineError::Timeout)??;
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(8192);
        }
        let n = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf))
            .await
            .map_err(|_| LineError::Timeout)??;
        if n == 0 {
            return Err(LineError::Closed);
        }
        Ok(())
    }

    /// Reads one line (without its CRLF). Lines longer than `max` are an
    /// error once their end has been consumed, so the session can go on.
    /// The whole line must arrive within `timeout`: a peer sending a byte
    /// at a time does not restart it.
    pub async fn read_line(&mut self, max: usize, timeout: Duration) -> Result<String, LineError> {
        let deadline = Instant::now() + timeout;
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
            self.fill(deadline).await?;
        }
    }

    /// Reads a DATA section up to CRLF.CRLF, undoing dot-stuffing (see
    /// [`DataReader`]).
    pub async fn read_data(&mut self, max_size: usize, pace: DataPace) -> Result<Data, LineError> {
        let start = Instant::now();
        let mut received = 0usize;
        let mut reader = DataReader::new(max_size);
        loop {
            if let Some(data) = reader.consume(&mut self.buf) {
                return Ok(data);
            }
            let before = self.buf.len();
            self.fill(pace.deadline(start, received)).await?;
            received += self.buf.len() - before;
        }
    }
}

/// A DATA section being read, fed whatever has arrived; no I/O. Only
/// CRLF.CRLF ends it (RFC 5321 section 4.1.1.4): a dot line after a bare LF,
/// or ending in one, is content until a bare line ending has been seen, and
/// then ends the read as [`Data::BareLineEnding`]. The outcome, and where
/// the data ends, do not depend on how the bytes were split into reads.
pub struct DataReader {
    max_size: usize,
    body: Vec<u8>,
    too_big: bool,
    long_line: bool,
    bare: bool,
    /// Whether the line before ended with CRLF (DATA's own CRLF counts).
    after_crlf: bool,
    /// Whether the start of the line being read was dropped (too long).
    partial: bool,
}

impl DataReader {
    pub fn new(max_size: usize) -> DataReader {
        DataReader {
            max_size,
            body: Vec::with_capacity(4096),
            too_big: false,
            long_line: false,
            bare: false,
            after_crlf: true,
            partial: false,
        }
    }

    /// Takes the complete lines in `buf` (and bounds an unfinished one);
    /// the outcome once the data has ended, with `buf` holding what
    /// follows it.
    pub fn consume(&mut self, buf: &mut BytesMut) -> Option<Data> {
        while let Some(pos) = memchr::memchr(b'\n', buf) {
            let line = &buf[..=pos];
            let crlf = line.ends_with(b"\r\n");
            let content = &line[..line.len() - if crlf { 2 } else { 1 }];
            let dot = content == b"." && !self.partial;
            if dot && crlf && self.after_crlf && !self.bare {
                buf.advance(pos + 1);
                return Some(if self.too_big {
                    Data::TooBig
                } else if self.long_line {
                    Data::LineTooLong
                } else {
                    Data::Complete(std::mem::take(&mut self.body))
                });
            }
            self.bare |= !crlf || memchr::memchr(b'\r', content).is_some();
            if self.bare && dot {
                let framed = crlf && self.after_crlf;
                buf.advance(pos + 1);
                return Some(Data::BareLineEnding { framed });
            }
            let content = content.strip_prefix(b".").unwrap_or(content);
            self.long_line |= content.len() > MAX_DATA_LINE;
            if !self.too_big && !self.long_line && !self.bare {
                if self.body.len() + content.len() + 2 > self.max_size {
                    self.too_big = true;
                    self.body = Vec::new();
                } else {
                    self.body.extend_from_slice(content);
                    self.body.extend_from_slice(b"\r\n");
                }
            } else if !self.body.is_empty() {
                self.body = Vec::new();
            }
            self.after_crlf = crlf;
            self.partial = false;
            buf.advance(pos + 1);
        }
        // A line with no end yet: bound what we hold of it.
        if buf.len() > MAX_DATA_LINE + 2 {
            self.long_line = true;
            self.body = Vec::new();
            // Keep its last bytes: they may be the start of CRLF.
            let keep = buf.split_off(buf.len() - 2);
            // A CR in what is dropped is a bare one (no LF follows it
            // there), seen as it would be had the line come whole.
            self.bare |= memchr::memchr(b'\r', buf).is_some();
            *buf = keep;
            self.partial = true;
        }
        None
    }
}

/// Writes `body` as SMTP DATA content: dot-stuffed, ending in CRLF.CRLF.
pub fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 64);
    // Line by line (a line starts the body and follows every LF), copied
    // whole: a byte at a time cost 20 instructions a byte.
    let mut start = 0;
    let ends = memchr::memchr_iter(b'\n', body).map(|lf| lf + 1);
    for end in ends.chain(std::iter::once(body.len())) {
        let line = &body[start..end];
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
        start = end;
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
    use tokio::net::TcpListener;

    /// Feeds `input` in reads of `size` bytes; the outcome and what follows.
    fn read_in_pieces(input: &[u8], size: usize) -> (Option<Data>, Vec<u8>) {
        let mut reader = DataReader::new(1 << 20);
        let mut buf = BytesMut::new();
        let mut fed = 0;
        while fed < input.len() {
            let end = (fed + size).min(input.len());
            buf.extend_from_slice(&input[fed..end]);
            fed = end;
            if let Some(data) = reader.consume(&mut buf) {
                let mut rest = buf.to_vec();
                rest.extend_from_slice(&input[fed..]);
                return (Some(data), rest);
            }
        }
        (None, Vec::new())
    }

    #[test]
    fn a_bare_cr_in_an_over_long_line_counts_however_the_line_arrives() {
        // A CR deep in a line too long to hold: whole or in small reads,
        // the data is refused for its bare line ending (found writing the
        // smtp_data fuzz target: in pieces the CR was dropped with the
        // line's start, and only the line's length was refused).
        let mut input = b"Subject: x\r\n".to_vec();
        input.extend_from_slice(&[b'a'; 500]);
        input.push(b'\r');
        input.extend_from_slice(&[b'b'; 1500]);
        input.extend_from_slice(b"\r\n.\r\nMAIL FROM:<x@y.test>\r\n");
        let whole = read_in_pieces(&input, input.len());
        assert_eq!(whole.0, Some(Data::BareLineEnding { framed: true }));
        assert_eq!(whole.1, b"MAIL FROM:<x@y.test>\r\n");
        for size in [1, 7, 64, 1000, 1001] {
            assert_eq!(read_in_pieces(&input, size), whole, "reads of {size}");
        }
    }

    /// A LineIo reading what `peer` writes to a loopback connection.
    async fn pair() -> (LineIo, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (ours, _) = listener.accept().await.unwrap();
        (LineIo::new(Either::Left(ours)), peer)
    }

    const PACE: DataPace = DataPace {
        max_time: Duration::from_secs(60),
        grace: Duration::from_secs(10),
        min_rate: 100,
    };

    async fn data_of(input: &[u8]) -> (Data, LineIo) {
        let (mut io, mut peer) = pair().await;
        peer.write_all(input).await.unwrap();
        let data = io.read_data(4096, PACE).await.unwrap();
        (data, io)
    }

    /// What is left in the buffer after DATA: the next commands.
    fn rest(io: &LineIo) -> Vec<u8> {
        io.buf.to_vec()
    }

    #[tokio::test]
    async fn only_crlf_dot_crlf_ends_data() {
        let (data, io) = data_of(b"a\r\n..b\r\n.\r\nQUIT\r\n").await;
        assert!(matches!(data, Data::Complete(ref b) if b == b"a\r\n.b\r\n"));
        assert_eq!(rest(&io), b"QUIT\r\n");
        // An empty message.
        let (data, _) = data_of(b".\r\n").await;
        assert!(matches!(data, Data::Complete(ref b) if b.is_empty()));
    }

    #[tokio::test]
    async fn smuggled_ends_are_refused_and_not_framed() {
        let tail = b"MAIL FROM:<s@x.test>\r\nRCPT TO:<v@y.test>\r\nDATA\r\nz\r\n.\r\n";
        // A dot line next to a bare LF ends the read, unframed.
        for end in [&b"\n.\n"[..], b"\r\n.\n", b"\n.\r\n"] {
            let mut input = b"hello".to_vec();
            input.extend_from_slice(end);
            input.extend_from_slice(tail);
            let (data, _) = data_of(&input).await;
            assert!(
                matches!(data, Data::BareLineEnding { framed: false }),
                "{:?}",
                String::from_utf8_lossy(end)
            );
        }
        // With CR alone as the trick, no line is a dot line: the smuggled
        // message stays inside the refused one, up to the real end.
        for end in [&b"\r.\r\n"[..], b"\n.\r"] {
            let mut input = b"hello".to_vec();
            input.extend_from_slice(end);
            input.extend_from_slice(tail);
            input.extend_from_slice(b"NOOP\r\n");
            let (data, io) = data_of(&input).await;
            assert!(
                matches!(data, Data::BareLineEnding { framed: true }),
                "{:?}",
                String::from_utf8_lossy(end)
            );
            assert_eq!(rest(&io), b"NOOP\r\n");
        }
        // Bare LF or CR inside, properly ended: refused, the session may
        // go on after it.
        for body in [&b"a\nb\r\n"[..], b"a\rb\r\n", b"x\r\n\nz\r\n"] {
            let mut input = body.to_vec();
            input.extend_from_slice(b".\r\nNOOP\r\n");
            let (data, io) = data_of(&input).await;
            assert!(matches!(data, Data::BareLineEnding { framed: true }));
            assert_eq!(rest(&io), b"NOOP\r\n");
        }
    }

    #[tokio::test]
    async fn long_lines_are_refused() {
        let ok = format!("{}\r\n.\r\n", "x".repeat(MAX_DATA_LINE));
        assert!(matches!(data_of(ok.as_bytes()).await.0, Data::Complete(_)));
        // Dot-stuffing does not count.
        let ok = format!(".{}\r\n.\r\n", "x".repeat(MAX_DATA_LINE));
        assert!(matches!(data_of(ok.as_bytes()).await.0, Data::Complete(_)));
        let long = format!("{}\r\n.\r\nNOOP\r\n", "x".repeat(MAX_DATA_LINE + 1));
        let (data, io) = data_of(long.as_bytes()).await;
        assert!(matches!(data, Data::LineTooLong));
        assert_eq!(rest(&io), b"NOOP\r\n");
        // A megabyte on one line, ending in a dot: never held whole, and
        // its tail is no end of data.
        let (mut io, mut peer) = pair().await;
        let writer = tokio::spawn(async move {
            let line = vec![b'y'; 1 << 20];
            peer.write_all(&line).await.unwrap();
            peer.write_all(b".\r\n.\r\n").await.unwrap();
            peer
        });
        let data = io.read_data(4 << 20, PACE).await.unwrap();
        assert!(matches!(data, Data::LineTooLong));
        assert!(io.buf.capacity() < 64 * 1024, "{}", io.buf.capacity());
        drop(writer.await);
    }

    /// A peer that writes `byte` once a second.
    fn trickle(mut peer: TcpStream, byte: u8) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            for _ in 0..100 {
                if peer.write_all(&[byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_is_cut_off_and_a_line_has_one_deadline() {
        let (mut io, peer) = pair().await;
        let trickling = trickle(peer, b'x');
        let started = Instant::now();
        let r = io.read_data(4096, PACE).await;
        assert!(matches!(r, Err(LineError::Timeout)));
        // 10 s of grace plus a second per 100 bytes received.
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(10) && took < Duration::from_secs(12),
            "{took:?}"
        );
        trickling.abort();

        let (mut io, peer) = pair().await;
        let trickling = trickle(peer, b'N');
        let started = Instant::now();
        let r = io.read_line(1000, Duration::from_secs(5)).await;
        assert!(matches!(r, Err(LineError::Timeout)));
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(5) && took < Duration::from_secs(6),
            "{took:?}"
        );
        trickling.abort();
    }

    #[test]
    fn dot_stuffing() {
        assert_eq!(dot_stuff(b".a\r\nb\r\n..c"), b"..a\r\nb\r\n...c\r\n.\r\n");
        assert_eq!(dot_stuff(b""), b"\r\n.\r\n");
    }

    /// Line by line, the same as a byte at a time: dots at the start, after
    /// CRLF and after a bare LF; a body ending in a dot, in LF, in "\n.".
    #[test]
    fn dot_stuffing_by_lines_matches_byte_by_byte() {
        fn by_bytes(body: &[u8]) -> Vec<u8> {
            let mut out = Vec::new();
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
        let alphabet = [b'.', b'\r', b'\n', b'a'];
        // Every body of up to 7 bytes over the alphabet.
        for len in 0..=7u32 {
            for n in 0..4usize.pow(len) {
                let body: Vec<u8> = (0..len).map(|i| alphabet[(n >> (2 * i)) & 3]).collect();
                assert_eq!(dot_stuff(&body), by_bytes(&body), "{body:?}");
            }
        }
    }
}
