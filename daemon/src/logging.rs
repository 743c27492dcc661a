//! The log is one line per event, whatever a logged value holds. Values
//! come from outside (a domain in an API request, a HELO name, a script's
//! text): one with a newline and a made-up line after it would forge a
//! line of its own in the human format. So every control character an
//! event's text holds is written escaped (`\n`, `\r`, `\x1b` ...), all but
//! the newline that ends the event (and, on a terminal, the colour codes
//! the formatter makes). The JSON format escapes by itself; this changes
//! nothing there.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// A writer of formatted events (each written whole, as the formatter
/// does) that escapes what could break a line.
pub struct OneLine<W> {
    inner: W,
    /// Let ESC through: the formatter colours a terminal's output.
    colours: bool,
}

impl<W> OneLine<W> {
    pub fn new(inner: W, colours: bool) -> OneLine<W> {
        OneLine { inner, colours }
    }
}

/// `event` with its control characters escaped, but a final newline.
pub fn escape_event(event: &[u8], colours: bool) -> std::borrow::Cow<'_, [u8]> {
    let (body, end) = match event.strip_suffix(b"\n") {
        Some(body) => (body, &b"\n"[..]),
        None => (event, &b""[..]),
    };
    let keep = |b: u8| b == b'\t' || (colours && b == 0x1b) || !(b < 0x20 || b == 0x7f);
    // Nearly every line has no control character at all: a branch-free
    // test over the whole line first (the compiler vectorises it).
    let printable = body.iter().fold(true, |all, &b| {
        all & ((b >= 0x20) & (b != 0x7f) | (b == b'\t'))
    });
    if printable || body.iter().all(|b| keep(*b)) {
        return std::borrow::Cow::Borrowed(event);
    }
    let mut out = Vec::with_capacity(event.len() + 16);
    for &b in body {
        match b {
            _ if keep(b) => out.push(b),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
        }
    }
    out.extend_from_slice(end);
    std::borrow::Cow::Owned(out)
}

impl<W: Write> Write for OneLine<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write_all(&escape_event(buf, self.colours))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// [`OneLine`] for every writer a `MakeWriter` makes.
#[derive(Clone)]
pub struct OneLineWriters<M> {
    make: M,
    colours: bool,
}

impl<M> OneLineWriters<M> {
    pub fn new(make: M, colours: bool) -> OneLineWriters<M> {
        OneLineWriters { make, colours }
    }
}

impl<'a, M: tracing_subscriber::fmt::MakeWriter<'a>> tracing_subscriber::fmt::MakeWriter<'a>
    for OneLineWriters<M>
{
    type Writer = OneLine<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        OneLine::new(self.make.make_writer(), self.colours)
    }
}

/// Lines wait here until the writer thread takes them all in one write.
/// When the thread writes twice within [`BATCH_INTERVAL`], the node is busy:
/// it sleeps that long before the next write, so a busy node makes a few
/// hundred writes a second whatever its rate. On a quiet node a line is
/// written at once, and the thread parks while nothing comes, so an idle
/// node does not wake at all. Nothing is dropped: past [`MAX_WAITING`]
/// bytes a caller waits for the thread.
pub struct LogBuffer {
    shared: Arc<Shared>,
}

/// How long the writer thread of a busy node lets lines gather.
pub const BATCH_INTERVAL: Duration = Duration::from_millis(10);
/// Bytes of lines that may wait before callers are held back.
pub const MAX_WAITING: usize = 4 << 20;

struct Shared {
    state: Mutex<Waiting>,
    /// The writer thread waits here for a first line.
    lines: Condvar,
    /// Callers wait here for room.
    room: Condvar,
}

#[derive(Default)]
struct Waiting {
    bytes: Vec<u8>,
    parked: bool,
    closed: bool,
}

/// Keep it until the process exits: dropping it writes what waits and
/// stops the thread.
pub struct LogBufferGuard {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LogBuffer {
    /// Starts the thread that writes to `out`.
    pub fn start<W: Write + Send + 'static>(mut out: W) -> io::Result<(LogBuffer, LogBufferGuard)> {
        let shared = Arc::new(Shared {
            state: Mutex::new(Waiting::default()),
            lines: Condvar::new(),
            room: Condvar::new(),
        });
        let theirs = shared.clone();
        let thread = std::thread::Builder::new()
            .name("kiln-log".into())
            .spawn(move || {
                let mut spare = Vec::new();
                let mut last_write: Option<std::time::Instant> = None;
                loop {
                    let closed = {
                        let mut w = theirs.lock();
                        while w.bytes.is_empty() && !w.closed {
                            w.parked = true;
                            w = theirs.lines.wait(w).unwrap_or_else(|e| e.into_inner());
                            w.parked = false;
                        }
                        std::mem::swap(&mut w.bytes, &mut spare);
                        // Callers wait only for a full buffer.
                        if spare.len() >= MAX_WAITING {
                            theirs.room.notify_all();
                        }
                        w.closed
                    };
                    // A log that cannot be written has nowhere to say so.
                    let _ = out.write_all(&spare).and_then(|()| out.flush());
                    spare.clear();
                    if closed && theirs.lock().bytes.is_empty() {
                        return;
                    }
                    if last_write.is_some_and(|t| t.elapsed() < BATCH_INTERVAL) {
                        std::thread::sleep(BATCH_INTERVAL);
                    }
                    last_write = Some(std::time::Instant::now());
                }
            })?;
        let guard = LogBufferGuard {
            shared: shared.clone(),
            thread: Some(thread),
        };
        Ok((LogBuffer { shared }, guard))
    }
}

impl Shared {
    /// The lines, also after a thread panicked holding them.
    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for LogBufferGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.lines.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One formatted event on its way into a [`LogBuffer`].
pub struct LogBufferWriter<'a> {
    shared: &'a Shared,
}

impl Write for LogBufferWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut w = self.shared.lock();
        while w.bytes.len() >= MAX_WAITING && !w.closed {
            w = self.shared.room.wait(w).unwrap_or_else(|e| e.into_inner());
        }
        w.bytes.extend_from_slice(buf);
        if w.parked {
            self.shared.lines.notify_one();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBufferWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LogBufferWriter {
            shared: &self.shared,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_stays_one_line() {
        let forged = b"2026-12-06T10:00:00Z INFO api: request domain=a.test\n2026-12-06T10:00:01Z ERROR kiln: forged\n";
        let out = escape_event(forged, false);
        assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1);
        assert!(out.ends_with(b"forged\n"));
        assert!(String::from_utf8_lossy(&out).contains("a.test\\n2026-12-06T10:00:01Z ERROR"));
        assert_eq!(
            &*escape_event(b"a\rb\x1b[31mc\td\n", false),
            b"a\\rb\\x1b[31mc\td\n"
        );
        assert_eq!(
            &*escape_event(b"\x1b[31mred\x1b[0m\n", true),
            b"\x1b[31mred\x1b[0m\n"
        );
        assert!(matches!(
            escape_event(b"plain\n", false),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    /// Where the writer thread writes, readable by the test.
    #[derive(Clone, Default)]
    struct Collected(Arc<Mutex<(Vec<u8>, usize)>>);

    impl Write for Collected {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut c = self.0.lock().unwrap();
            c.0.extend_from_slice(buf);
            c.1 += 1;
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn log(buffer: &LogBuffer, line: &str) {
        use tracing_subscriber::fmt::MakeWriter;
        buffer.make_writer().write_all(line.as_bytes()).unwrap();
    }

    #[test]
    fn lines_from_busy_threads_arrive_whole_in_few_writes() {
        let out = Collected::default();
        let (buffer, guard) = LogBuffer::start(out.clone()).unwrap();
        let buffer = Arc::new(buffer);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let buffer = buffer.clone();
                std::thread::spawn(move || {
                    for i in 0..5_000 {
                        log(&buffer, &format!("thread {t} line {i}\n"));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard);
        let (bytes, writes) = out.0.lock().unwrap().clone();
        let text = String::from_utf8(bytes).unwrap();
        for t in 0..4 {
            let mine: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with(&format!("thread {t} ")))
                .collect();
            let expected: Vec<String> =
                (0..5_000).map(|i| format!("thread {t} line {i}")).collect();
            assert_eq!(mine, expected, "every line of thread {t}, in its order");
        }
        assert!(writes < 2_000, "20,000 lines took {writes} writes");
    }

    #[test]
    fn a_line_on_a_quiet_node_is_written_at_once() {
        let out = Collected::default();
        let (buffer, _guard) = LogBuffer::start(out.clone()).unwrap();
        std::thread::sleep(BATCH_INTERVAL * 3);
        log(&buffer, "alone\n");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while out.0.lock().unwrap().0.is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the line never came out"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(out.0.lock().unwrap().0, b"alone\n");
    }

    #[test]
    fn a_full_buffer_holds_callers_back_instead_of_dropping() {
        /// A destination slower than the callers.
        struct Slow(Collected);
        impl Write for Slow {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                std::thread::sleep(Duration::from_millis(20));
                self.0.write(buf)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let out = Collected::default();
        let (buffer, guard) = LogBuffer::start(Slow(out.clone())).unwrap();
        let line = format!("{}\n", "x".repeat(64 * 1024 - 1));
        for _ in 0..(3 * MAX_WAITING / line.len()) {
            log(&buffer, &line);
            assert!(buffer.shared.lock().bytes.len() <= MAX_WAITING + line.len());
        }
        drop(guard);
        assert_eq!(
            out.0.lock().unwrap().0.len(),
            3 * MAX_WAITING / line.len() * line.len()
        );
    }
}
