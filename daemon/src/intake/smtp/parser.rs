//! SMTP command parsing (RFC 5321), no I/O: a line in, a command out.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ehlo(String),
    Helo(String),
    Mail {
        from: String,
        params: MailParams,
    },
    Rcpt {
        to: String,
    },
    Data,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Help,
    StartTls,
    Auth {
        mechanism: String,
        initial: Option<String>,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailParams {
    pub size: Option<usize>,
    pub smtputf8: bool,
    /// RFC 8689: deliver only over TLS with a verified certificate.
    pub require_tls: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("500 5.5.2 Syntax error, command unrecognized")]
    Unknown,
    #[error("501 5.5.4 Syntax error in parameters or arguments")]
    Syntax,
    #[error("501 5.1.7 Bad sender address syntax")]
    BadSender,
    #[error("501 5.1.3 Bad recipient address syntax")]
    BadRecipient,
    #[error("555 5.5.4 Unsupported MAIL parameter")]
    UnknownParam,
    #[error("553 5.6.7 Non-ASCII address needs the SMTPUTF8 parameter (RFC 6531)")]
    NeedsUtf8,
}

pub fn parse_command(line: &str) -> Result<Command, ParseError> {
    let line = line.trim_end_matches(['\r', '\n']);
    let (verb, rest) = match line.find(' ') {
        Some(i) => (&line[..i], line[i + 1..].trim()),
        None => (line, ""),
    };
    let verb = verb.to_ascii_uppercase();
    let no_args = |cmd: Command| {
        if rest.is_empty() {
            Ok(cmd)
        } else {
            Err(ParseError::Syntax)
        }
    };
    match verb.as_str() {
        "EHLO" | "HELO" => {
            let host = rest.split_whitespace().next().ok_or(ParseError::Syntax)?;
            Ok(if verb == "EHLO" {
                Command::Ehlo(host.to_string())
            } else {
                Command::Helo(host.to_string())
            })
        }
        "MAIL" => parse_mail(rest),
        "RCPT" => {
            let arg = strip_prefix_ci(rest, "TO:").ok_or(ParseError::Syntax)?;
            let (path, _params) = split_path(arg).ok_or(ParseError::BadRecipient)?;
            // Whether UTF-8 may be used is the transaction's (MAIL's
            // SMTPUTF8): the session checks.
            let to = parse_mailbox(path, true).map_err(|e| match e {
                crate::address::AddressError::NeedsUtf8 => ParseError::NeedsUtf8,
                _ => ParseError::BadRecipient,
            })?;
            if to.is_empty() {
                return Err(ParseError::BadRecipient);
            }
            Ok(Command::Rcpt { to })
        }
        "DATA" => no_args(Command::Data),
        "RSET" => no_args(Command::Rset),
        "NOOP" => Ok(Command::Noop),
        "QUIT" => no_args(Command::Quit),
        "VRFY" | "EXPN" => Ok(Command::Vrfy),
        "HELP" => Ok(Command::Help),
        "STARTTLS" => no_args(Command::StartTls),
        "AUTH" => {
            let mut parts = rest.split_whitespace();
            let mechanism = parts.next().ok_or(ParseError::Syntax)?.to_ascii_uppercase();
            let initial = parts.next().map(|s| s.to_string());
            if parts.next().is_some() {
                return Err(ParseError::Syntax);
            }
            Ok(Command::Auth { mechanism, initial })
        }
        _ => Err(ParseError::Unknown),
    }
}

fn parse_mail(rest: &str) -> Result<Command, ParseError> {
    let arg = strip_prefix_ci(rest, "FROM:").ok_or(ParseError::Syntax)?;
    let (path, params) = split_path(arg).ok_or(ParseError::BadSender)?;
    let mut out = MailParams::default();
    for p in params.split_whitespace() {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        match k.to_ascii_uppercase().as_str() {
            "SIZE" => out.size = Some(v.parse().map_err(|_| ParseError::Syntax)?),
            "BODY" => {
                if !v.eq_ignore_ascii_case("7BIT") && !v.eq_ignore_ascii_case("8BITMIME") {
                    return Err(ParseError::UnknownParam);
                }
            }
            "SMTPUTF8" => out.smtputf8 = true,
            "REQUIRETLS" if v.is_empty() => out.require_tls = true,
            "AUTH" | "RET" | "ENVID" => {}
            _ => return Err(ParseError::UnknownParam),
        }
    }
    let from = parse_mailbox(path, out.smtputf8).map_err(|e| match e {
        crate::address::AddressError::NeedsUtf8 => ParseError::NeedsUtf8,
        _ => ParseError::BadSender,
    })?;
    Ok(Command::Mail { from, params: out })
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| s[prefix.len()..].trim_start())
}

/// Splits `<path> params` (also tolerates a missing `<>` around the path).
/// The path ends at the `>` outside a quoted local part.
fn split_path(arg: &str) -> Option<(&str, &str)> {
    if let Some(inner) = arg.strip_prefix('<') {
        let (mut quoted, mut escaped) = (false, false);
        for (i, c) in inner.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                '>' if !quoted => return Some((&inner[..i], inner[i + 1..].trim())),
                _ => {}
            }
        }
        None
    } else {
        let end = arg.find(' ').unwrap_or(arg.len());
        Some((&arg[..end], arg[end..].trim()))
    }
}

/// A path's mailbox in canonical form (source routes dropped); `""` is the
/// null path.
pub fn parse_mailbox(path: &str, utf8: bool) -> Result<String, crate::address::AddressError> {
    let path = match path.find(':') {
        Some(i) if path.starts_with('@') => &path[i + 1..],
        _ => path,
    };
    if path.is_empty() {
        return Ok(String::new());
    }
    crate::address::canonical(path, utf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands() {
        assert_eq!(
            parse_command("EHLO client.example\r\n"),
            Ok(Command::Ehlo("client.example".into()))
        );
        assert_eq!(
            parse_command("mail from:<A@Example.COM> SIZE=1000 BODY=8BITMIME"),
            Ok(Command::Mail {
                from: "A@example.com".into(),
                params: MailParams {
                    size: Some(1000),
                    ..MailParams::default()
                }
            })
        );
        assert_eq!(
            parse_command("MAIL FROM:<>"),
            Ok(Command::Mail {
                from: String::new(),
                params: MailParams::default()
            })
        );
        assert_eq!(
            parse_command("RCPT TO:<@relay.example:user@dest.example>"),
            Ok(Command::Rcpt {
                to: "user@dest.example".into()
            })
        );
        assert_eq!(
            parse_command("AUTH PLAIN dGVzdA=="),
            Ok(Command::Auth {
                mechanism: "PLAIN".into(),
                initial: Some("dGVzdA==".into())
            })
        );
    }

    #[test]
    fn addresses_in_commands() {
        assert_eq!(
            parse_command("RCPT TO:<\"john doe\"@Dest.Test>"),
            Ok(Command::Rcpt {
                to: "\"john doe\"@dest.test".into()
            })
        );
        assert_eq!(
            parse_command("RCPT TO:<\"a>b\"@dest.test>"),
            Ok(Command::Rcpt {
                to: "\"a>b\"@dest.test".into()
            })
        );
        assert_eq!(
            parse_command("RCPT TO:<x@@dest.test>"),
            Err(ParseError::BadRecipient)
        );
        assert_eq!(
            parse_command("MAIL FROM:<üser@shop.test>"),
            Err(ParseError::NeedsUtf8)
        );
        assert!(matches!(
            parse_command("MAIL FROM:<üser@shop.test> SMTPUTF8"),
            Ok(Command::Mail { .. })
        ));
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(parse_command("FOO"), Err(ParseError::Unknown));
        assert_eq!(parse_command("RCPT TO:<>"), Err(ParseError::BadRecipient));
        assert_eq!(
            parse_command("RCPT TO:<no-at-sign>"),
            Err(ParseError::BadRecipient)
        );
        assert_eq!(
            parse_command("MAIL FROM:<a@-bad-.com>"),
            Err(ParseError::BadSender)
        );
        assert_eq!(
            parse_command("MAIL FROM:<a@b.com> X=1"),
            Err(ParseError::UnknownParam)
        );
        assert_eq!(
            parse_command("MAIL FROM:<a@b.com> REQUIRETLS=yes"),
            Err(ParseError::UnknownParam)
        );
        assert_eq!(
            parse_command("MAIL FROM:<a@b.com> requiretls"),
            Ok(Command::Mail {
                from: "a@b.com".into(),
                params: MailParams {
                    require_tls: true,
                    ..MailParams::default()
                }
            })
        );
        assert_eq!(
            parse_command("MAIL FROM:<a@b.com> SIZE=abc"),
            Err(ParseError::Syntax)
        );
        assert_eq!(parse_command("DATA now"), Err(ParseError::Syntax));
        assert_eq!(parse_command("EHLO"), Err(ParseError::Syntax));
        assert_eq!(parse_command("MAIL TO:<a@b.com>"), Err(ParseError::Syntax));
    }
}
