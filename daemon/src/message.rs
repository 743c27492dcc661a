//! Reading a message, no I/O: its header block and fields (unfolded on
//! demand), the subject decoded, the authors of its From header, and
//! whether its lines are ones a next hop accepts.

/// The header block (without the blank line that ends it).
pub fn header_block(message: &[u8]) -> &[u8] {
    &message[..header_end(message)]
}

/// Offset of the blank line that ends the header block (or the body length).
fn header_end(message: &[u8]) -> usize {
    // The first empty line: at the start, or after a CRLF.
    if message.starts_with(b"\r\n") {
        return 0;
    }
    memchr::memmem::find(message, b"\r\n\r\n").map_or(message.len(), |at| at + 2)
}

/// The lines of a message: split at CRLF only (a bare LF stays in its
/// line).
fn lines(block: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = block;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut from = 0;
        loop {
            match memchr::memchr(b'\n', &rest[from..]) {
                Some(p) if from + p > 0 && rest[from + p - 1] == b'\r' => {
                    let line = &rest[..from + p - 1];
                    rest = &rest[from + p + 1..];
                    return Some(line);
                }
                Some(p) => from += p + 1,
                None => return Some(std::mem::take(&mut rest)),
            }
        }
    })
}

/// Every header of a block as (name, raw value), in order: the value runs
/// from after the colon to the end of its last continuation line, folding
/// and all (see [`unfold`]), so a header nobody asks for costs no copy.
fn fields(block: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let mut lines = lines(block).peekable();
    let offset = move |part: &[u8]| part.as_ptr() as usize - block.as_ptr() as usize;
    std::iter::from_fn(move || {
        loop {
            let line = lines.next()?;
            // A continuation line without a field before it is skipped, and
            // so is a line that is no field.
            if line.starts_with(b" ") || line.starts_with(b"\t") {
                continue;
            }
            let Some(colon) = line.iter().position(|b| *b == b':') else {
                continue;
            };
            let start = offset(line) + colon + 1;
            let mut end = offset(line) + line.len();
            while let Some(next) = lines.next_if(|l| l.starts_with(b" ") || l.starts_with(b"\t")) {
                end = offset(next) + next.len();
            }
            return Some((line[..colon].trim_ascii(), &block[start..end]));
        }
    })
}

/// A raw header value unfolded: its lines trimmed and joined by a space.
fn unfold(raw: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(raw.len());
    for (i, line) in lines(raw).enumerate() {
        if i > 0 {
            value.push(b' ');
        }
        value.extend_from_slice(line.trim_ascii());
    }
    value
}

/// Unfolded header values named `name` (case-insensitive).
/// The text a reader of an HTML part sees: tags, comments, scripts and
/// styles left out, entities decoded. One pass, whatever the markup (mail
/// parsing's own reader, as receivers' filters read HTML).
pub fn html_text(html: &str) -> String {
    mail_parser::decoders::html::html_to_text(html)
}

pub fn header_values(message: &[u8], name: &str) -> Vec<String> {
    fields(header_block(message))
        .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, v)| String::from_utf8_lossy(&unfold(v)).into_owned())
        .collect()
}

/// The first value of each of `names` (case-insensitive) in a header
/// block, unfolded and raw, found in one pass.
pub fn first_values<const N: usize>(block: &[u8], names: [&str; N]) -> [Option<Vec<u8>>; N] {
    let mut out: [Option<Vec<u8>>; N] = std::array::from_fn(|_| None);
    for (name, value) in fields(block) {
        if let Some(i) = names
            .iter()
            .position(|n| name.eq_ignore_ascii_case(n.as_bytes()))
            && out[i].is_none()
        {
            out[i] = Some(unfold(value));
            if out.iter().all(Option::is_some) {
                break;
            }
        }
    }
    out
}

/// A raw Subject value decoded (RFC 2047 words), and whether it was valid
/// UTF-8 (an absent Subject is an empty, valid one).
pub fn decode_subject(raw: Option<Vec<u8>>) -> (String, bool) {
    let Some(raw) = raw else {
        return (String::new(), true);
    };
    let (raw, valid) = match String::from_utf8(raw) {
        Ok(text) => (text, true),
        Err(e) => (String::from_utf8_lossy(e.as_bytes()).into_owned(), false),
    };
    // Encoded words all start with "=?": without one there is nothing to
    // decode (most subjects), and no need for the parser.
    if !raw.contains("=?") {
        return (raw, valid);
    }
    // Only the Subject goes through the parser (for its RFC 2047 words):
    // parsing every header, Received lines and all, costs more than it saves.
    let one = format!("Subject: {raw}\r\n\r\n");
    let decoded = mail_parser::MessageParser::default()
        .parse_headers(one.as_bytes())
        .and_then(|m| m.subject().map(str::to_string))
        .unwrap_or(raw);
    (decoded, valid)
}

/// Why the From header names no author Kiln can check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FromProblem {
    #[error("the message has more than one From header (RFC 5322 section 3.6)")]
    Several,
    #[error("the From header has no address with a domain")]
    NoAddress,
}

/// The domain of every mailbox in the From header (RFC 5322.From, which
/// DMARC aligns on), lower case, in order; empty when there is no From
/// header. Parsed as receivers parse it (display names, comments, quoted
/// strings, groups), so the domains checked are the ones a reader sees.
pub fn author_domains(message: &[u8]) -> Result<Vec<String>, FromProblem> {
    let mut from = fields(header_block(message)).filter(|(n, _)| n.eq_ignore_ascii_case(b"From"));
    let Some((_, raw)) = from.next() else {
        return Ok(Vec::new());
    };
    if from.next().is_some() {
        return Err(FromProblem::Several);
    }
    let mut one = Vec::with_capacity(raw.len() + 10);
    one.extend_from_slice(b"From:");
    one.extend_from_slice(raw);
    one.extend_from_slice(b"\r\n\r\n");
    let parsed = mail_parser::MessageParser::default().parse_headers(&one);
    let mut domains = Vec::new();
    for addr in parsed
        .as_ref()
        .and_then(|m| m.from())
        .into_iter()
        .flat_map(|a| a.iter())
    {
        let domain = addr
            .address()
            .and_then(|a| a.rsplit_once('@'))
            .map(|(_, d)| d.trim().trim_end_matches('.').to_ascii_lowercase())
            .filter(|d| !d.is_empty())
            .ok_or(FromProblem::NoAddress)?;
        domains.push(domain);
    }
    if domains.is_empty() {
        return Err(FromProblem::NoAddress);
    }
    Ok(domains)
}

/// The domain of the first address in the From header.
pub fn from_domain(message: &[u8]) -> Option<String> {
    author_domains(message).ok()?.into_iter().next()
}

/// Why a message's lines would not survive the next hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LineProblem {
    #[error("a line is longer than 998 characters (RFC 5322 section 2.1.1)")]
    TooLong,
    #[error("a bare LF or CR (lines must end with CRLF)")]
    BareLineEnding,
}

/// Checks that every line ends with CRLF, holds no other CR, and has at
/// most 998 characters: what a next hop accepts (RFC 5322 section 2.1.1,
/// RFC 5321 section 2.3.8).
pub fn check_lines(message: &[u8]) -> Result<(), LineProblem> {
    let max = crate::line_io::MAX_DATA_LINE;
    let mut start = 0;
    for lf in memchr::memchr_iter(b'\n', message) {
        if lf == start || message[lf - 1] != b'\r' {
            return Err(LineProblem::BareLineEnding);
        }
        let line = &message[start..lf - 1];
        if line.len() > max {
            return Err(LineProblem::TooLong);
        }
        if memchr::memchr(b'\r', line).is_some() {
            return Err(LineProblem::BareLineEnding);
        }
        start = lf + 1;
    }
    let last = &message[start..];
    if last.len() > max {
        return Err(LineProblem::TooLong);
    }
    if memchr::memchr(b'\r', last).is_some() {
        return Err(LineProblem::BareLineEnding);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(message: &[u8]) -> (String, bool) {
        let [raw] = first_values(header_block(message), ["Subject"]);
        decode_subject(raw)
    }

    #[test]
    fn header_block_ends_at_the_first_blank_line() {
        assert_eq!(
            header_block(b"A: 1\r\nB: 2\r\n\r\nbody\r\n\r\n"),
            b"A: 1\r\nB: 2\r\n"
        );
        assert_eq!(header_block(b"\r\nbody"), b"");
        assert_eq!(header_block(b"A: 1\r\nB: 2"), b"A: 1\r\nB: 2");
        // A bare LF is not a line end.
        assert_eq!(
            header_block(b"A: 1\n\r\nB: 2\r\n\r\n"),
            b"A: 1\n\r\nB: 2\r\n"
        );
        assert_eq!(header_block(b"\nA: 1\r\n\r\n"), b"\nA: 1\r\n");
    }

    #[test]
    fn decodes_the_subject() {
        let m = b"Subject: =?UTF-8?B?w6nDqQ==?= x\r\nFrom: a@b.c\r\n\r\nbody";
        assert_eq!(subject(m), ("\u{e9}\u{e9} x".to_string(), true));
        let plain = b"Subject: plain =? words\r\n and more\r\n\r\nbody";
        assert_eq!(
            subject(plain),
            ("plain =? words and more".to_string(), true)
        );
        assert_eq!(
            subject(b"Subject: plain\r\n\r\n"),
            ("plain".to_string(), true)
        );
        let bad = b"Subject: \xff\xfe\r\n\r\nbody";
        assert!(!subject(bad).1);
        // Only the Subject's own bytes count.
        assert_eq!(
            subject(b"From: \xff@x\r\nSubject: ok\r\n\r\n"),
            ("ok".to_string(), true)
        );
        assert_eq!(
            subject(b"From: a@b\r\n\r\nSubject: body"),
            (String::new(), true)
        );
    }

    #[test]
    fn reads_folded_headers_and_from_domain() {
        let msg =
            b"Subject: a\r\n b\r\nFrom: \"Shop\" <News@Shop.Example>\r\n\r\nFrom: body@x.y\r\n";
        assert_eq!(header_values(msg, "subject"), vec!["a b".to_string()]);
        let many = b"X-A: 1\r\nx-a:  2 \r\n\t 3\r\nbroken line\r\n cont\r\nX-B: b\r\n\r\nX-A: body";
        assert_eq!(header_values(many, "X-A"), ["1", "2 3"]);
        assert_eq!(
            first_values(header_block(many), ["x-b", "X-A", "X-C"]),
            [Some(b"b".to_vec()), Some(b"1".to_vec()), None]
        );
        assert_eq!(from_domain(msg).as_deref(), Some("shop.example"));
        assert_eq!(from_domain(b"From: a@b.c\r\n\r\n").as_deref(), Some("b.c"));
        assert_eq!(from_domain(b"Subject: x\r\n\r\nFrom: a@b.c\r\n"), None);
    }

    #[test]
    fn every_author_is_found() {
        let domains = |h: &str| author_domains(format!("{h}\r\n\r\nbody").as_bytes());
        let ok = |list: &[&str]| Ok(list.iter().map(|d| d.to_string()).collect::<Vec<_>>());
        assert_eq!(domains("From: a@Probe.Test"), ok(&["probe.test"]));
        // The display name is no address, whatever it looks like.
        assert_eq!(
            domains("From: \"a@probe.test\" <ceo@other.test>"),
            ok(&["other.test"])
        );
        assert_eq!(
            domains("From: a@probe.test <ceo@other.test>"),
            ok(&["other.test"])
        );
        assert_eq!(
            domains("From: <a@probe.test>, CEO <ceo@other.test>"),
            ok(&["probe.test", "other.test"])
        );
        assert_eq!(
            domains("From: a@probe.test,\r\n ceo@other.test"),
            ok(&["probe.test", "other.test"])
        );
        assert_eq!(
            domains("From: Team: a@probe.test, ceo@other.test;"),
            ok(&["probe.test", "other.test"])
        );
        assert_eq!(
            domains("From: ceo@other.test (a@probe.test)"),
            ok(&["other.test"])
        );
        assert_eq!(
            domains("From: a@probe.test\r\nFROM: ceo@other.test"),
            Err(FromProblem::Several)
        );
        assert_eq!(domains("From: nobody"), Err(FromProblem::NoAddress));
        assert_eq!(domains("From: undisclosed:;"), Err(FromProblem::NoAddress));
        assert_eq!(domains("Subject: none"), Ok(Vec::new()));
    }

    #[test]
    fn lines_a_next_hop_accepts() {
        assert_eq!(check_lines(b"a\r\nb\r\n"), Ok(()));
        assert_eq!(check_lines(b""), Ok(()));
        assert_eq!(check_lines(b"no end"), Ok(()));
        let longest = format!("{}\r\n", "x".repeat(998));
        assert_eq!(check_lines(longest.as_bytes()), Ok(()));
        let long = format!("a\r\n{}\r\n", "x".repeat(999));
        assert_eq!(check_lines(long.as_bytes()), Err(LineProblem::TooLong));
        assert_eq!(
            check_lines("x".repeat(999).as_bytes()),
            Err(LineProblem::TooLong)
        );
        for bad in [
            &b"a\nb\r\n"[..],
            b"\n",
            b"a\rb\r\n",
            b"a\r\nb\r",
            b"a\r\r\n",
        ] {
            assert_eq!(
                check_lines(bad),
                Err(LineProblem::BareLineEnding),
                "{bad:?}"
            );
        }
    }
}
