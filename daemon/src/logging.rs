//! The log is one line per event, whatever a logged value holds. Values
//! come from outside (a domain in an API request, a HELO name, a script's
//! text): one with a newline and a made-up line after it would forge a
//! line of its own in the human format. So every control character an
//! event's text holds is written escaped (`\n`, `\r`, `\x1b` ...), all but
//! the newline that ends the event (and, on a terminal, the colour codes
//! the formatter makes). The JSON format escapes by itself; this changes
//! nothing there.

use std::io::{self, Write};

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
}
