//! SMTP client for delivery: one connection to one MX address, reused for
//! several messages (RSET between), PIPELINING when offered, opportunistic or
//! required STARTTLS. Timeouts are those of RFC 5321 section 4.5.3.2.

use crate::line_io::{LineError, LineIo, dot_stuff};
use crate::tls::ClientConfigs;
use rustls::pki_types::ServerName;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::net::TcpSocket;
use tokio_util::either::Either;

const GREETING_TIMEOUT: Duration = Duration::from_secs(300);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);
const DATA_INIT_TIMEOUT: Duration = Duration::from_secs(120);
const DATA_END_TIMEOUT: Duration = Duration::from_secs(600);
const MAX_REPLY_LINE: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub enhanced: Option<String>,
    pub text: String,
}

impl Reply {
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    fn parse(lines: &[String]) -> Option<Reply> {
        let first = lines.first()?;
        let code: u16 = first.get(..3)?.parse().ok()?;
        if !(200..600).contains(&code) {
            return None;
        }
        let text: Vec<&str> = lines
            .iter()
            .map(|l| l.get(4..).unwrap_or("").trim())
            .collect();
        let mut text = text.join(" ");
        let enhanced = text
            .split_whitespace()
            .next()
            .filter(|t| is_enhanced_code(t, code))
            .map(|t| t.to_string());
        if let Some(e) = &enhanced {
            text = text[e.len()..].trim_start().to_string();
        }
        Some(Reply {
            code,
            enhanced,
            text,
        })
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.enhanced {
            Some(e) => write!(f, "{} {} {}", self.code, e, self.text),
            None => write!(f, "{} {}", self.code, self.text),
        }
    }
}

fn is_enhanced_code(token: &str, code: u16) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3
        && parts[0] == (code / 100).to_string()
        && parts[1..]
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.chars().all(|c| c.is_ascii_digit()))
}

/// The stage of a reply Kiln made up itself (the next hop cannot take
/// the message as it is): not the receiver's word.
pub const LOCAL: &str = "local";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connection to {0} failed: {1}")]
    Connect(SocketAddr, String),
    /// The source address cannot be used (not on this host, say).
    #[error("source address {0} unusable: {1}")]
    Source(IpAddr, String),
    #[error("{0}")]
    Io(#[from] LineError),
    #[error("malformed reply from server")]
    Malformed,
    #[error("server replied {0}")]
    Rejected(Reply),
    #[error("TLS: {0}")]
    Tls(TlsError),
}

/// Why TLS to an MX failed, as TLS reports (RFC 8460 4.3) name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFailure {
    StarttlsNotSupported,
    CertificateHostMismatch,
    CertificateExpired,
    CertificateNotTrusted,
    ValidationFailure,
}

impl TlsFailure {
    /// The RFC's `result-type`.
    pub fn result_type(self) -> &'static str {
        match self {
            TlsFailure::StarttlsNotSupported => "starttls-not-supported",
            TlsFailure::CertificateHostMismatch => "certificate-host-mismatch",
            TlsFailure::CertificateExpired => "certificate-expired",
            TlsFailure::CertificateNotTrusted => "certificate-not-trusted",
            TlsFailure::ValidationFailure => "validation-failure",
        }
    }

    /// What a failed handshake's error says, read from rustls's own.
    fn of_handshake(e: &std::io::Error) -> TlsFailure {
        use rustls::CertificateError as C;
        match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            Some(rustls::Error::InvalidCertificate(c)) => match c {
                C::NotValidForName | C::NotValidForNameContext { .. } => {
                    TlsFailure::CertificateHostMismatch
                }
                C::Expired | C::ExpiredContext { .. } => TlsFailure::CertificateExpired,
                C::UnknownIssuer => TlsFailure::CertificateNotTrusted,
                _ => TlsFailure::ValidationFailure,
            },
            _ => TlsFailure::ValidationFailure,
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{text}")]
pub struct TlsError {
    pub kind: TlsFailure,
    pub text: String,
}

impl TlsError {
    fn failed(kind: TlsFailure, text: impl Into<String>) -> ClientError {
        ClientError::Tls(TlsError {
            kind,
            text: text.into(),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Encrypt if offered, any certificate.
    Opportunistic,
    /// Encrypt and verify the certificate against the MX host name.
    Required,
    /// Plain text (fallback after a failed opportunistic handshake).
    Disabled,
}

pub struct Connection {
    io: LineIo,
    pub mx: String,
    pub ip: IpAddr,
    pub tls_version: Option<String>,
    pub verified_tls: bool,
    /// Its certificate was checked against the MX host's TLSA records
    /// (DANE), or TLS was required by them.
    pub dane: bool,
    pipelining: bool,
    size_limit: Option<usize>,
    requiretls: bool,
    smtputf8: bool,
    /// The server refused and closed the connection (a 421, or it hung up
    /// after a refusal): it carries nothing more.
    pub closed: bool,
}

#[derive(Default)]
struct Extensions {
    pipelining: bool,
    starttls: bool,
    size: Option<usize>,
    requiretls: bool,
    smtputf8: bool,
}

/// The lines of one (possibly multi-line) reply.
async fn read_reply_lines(io: &mut LineIo, timeout: Duration) -> Result<Vec<String>, ClientError> {
    let mut lines = Vec::new();
    loop {
        let line = io.read_line(MAX_REPLY_LINE, timeout).await?;
        let last = line.len() < 4 || line.as_bytes()[3] != b'-';
        lines.push(line);
        if last || lines.len() > 100 {
            return Ok(lines);
        }
    }
}

async fn read_reply(io: &mut LineIo, timeout: Duration) -> Result<Reply, ClientError> {
    let lines = read_reply_lines(io, timeout).await?;
    Reply::parse(&lines).ok_or(ClientError::Malformed)
}

async fn command(io: &mut LineIo, line: &str, timeout: Duration) -> Result<Reply, ClientError> {
    io.queue(line.as_bytes());
    io.queue(b"\r\n");
    read_reply(io, timeout).await
}

async fn ehlo(io: &mut LineIo, helo: &str) -> Result<Extensions, ClientError> {
    io.queue(format!("EHLO {helo}\r\n").as_bytes());
    let lines = read_reply_lines(io, COMMAND_TIMEOUT).await?;
    let reply = Reply::parse(&lines).ok_or(ClientError::Malformed)?;
    if reply.code != 250 {
        let helo_reply = command(io, &format!("HELO {helo}"), COMMAND_TIMEOUT).await?;
        if helo_reply.code != 250 {
            return Err(ClientError::Rejected(helo_reply));
        }
        return Ok(Extensions::default());
    }
    let mut ext = Extensions::default();
    for line in lines.iter().skip(1) {
        let kw = line.get(4..).unwrap_or("").to_ascii_uppercase();
        let mut words = kw.split_whitespace();
        match words.next() {
            Some("PIPELINING") => ext.pipelining = true,
            Some("STARTTLS") => ext.starttls = true,
            Some("REQUIRETLS") => ext.requiretls = true,
            Some("SMTPUTF8") => ext.smtputf8 = true,
            Some("SIZE") => ext.size = words.next().and_then(|s| s.parse().ok()).filter(|s| *s > 0),
            _ => {}
        }
    }
    Ok(ext)
}

impl Connection {
    pub async fn open(
        mx: &str,
        addr: SocketAddr,
        source: Option<IpAddr>,
        helo: &str,
        mode: TlsMode,
        tls: &ClientConfigs,
        connect_timeout: Duration,
    ) -> Result<Connection, ClientError> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(|e| ClientError::Connect(addr, e.to_string()))?;
        if let Some(src) = source {
            socket
                .bind(SocketAddr::new(src, 0))
                .map_err(|e| ClientError::Source(src, e.to_string()))?;
        }
        let tcp = tokio::time::timeout(connect_timeout, socket.connect(addr))
            .await
            .map_err(|_| ClientError::Connect(addr, "timed out".into()))?
            .map_err(|e| ClientError::Connect(addr, e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let mut io = LineIo::new(Either::Left(tcp));
        let greeting = read_reply(&mut io, GREETING_TIMEOUT).await?;
        if greeting.code != 220 {
            return Err(ClientError::Rejected(greeting));
        }
        let mut ext = ehlo(&mut io, helo).await?;
        let mut tls_version = None;
        let mut verified_tls = false;
        if ext.starttls && mode != TlsMode::Disabled {
            let reply = command(&mut io, "STARTTLS", COMMAND_TIMEOUT).await?;
            if reply.code != 220 {
                if mode == TlsMode::Required {
                    return Err(ClientError::Rejected(reply));
                }
            } else {
                let (stream, _) = io.into_parts();
                let Either::Left(tcp) = stream else {
                    return Err(TlsError::failed(
                        TlsFailure::ValidationFailure,
                        "already encrypted",
                    ));
                };
                let config = if mode == TlsMode::Required {
                    tls.verified.clone()
                } else {
                    tls.opportunistic.clone()
                };
                let name = ServerName::try_from(mx.trim_end_matches('.').to_string())
                    .unwrap_or_else(|_| ServerName::IpAddress(addr.ip().into()));
                let connector = tokio_rustls::TlsConnector::from(config);
                let stream = tokio::time::timeout(COMMAND_TIMEOUT, connector.connect(name, tcp))
                    .await
                    .map_err(|_| {
                        TlsError::failed(TlsFailure::ValidationFailure, "handshake timed out")
                    })?
                    .map_err(|e| TlsError::failed(TlsFailure::of_handshake(&e), e.to_string()))?;
                tls_version = stream
                    .get_ref()
                    .1
                    .protocol_version()
                    .and_then(|v| v.as_str().map(|s| s.replace('_', ".")));
                verified_tls = mode == TlsMode::Required;
                io = LineIo::new(Either::Right(tokio_rustls::TlsStream::Client(stream)));
                ext = ehlo(&mut io, helo).await?;
            }
        } else if mode == TlsMode::Required {
            return Err(TlsError::failed(
                TlsFailure::StarttlsNotSupported,
                format!("TLS required but {mx} does not offer STARTTLS"),
            ));
        }
        Ok(Connection {
            io,
            mx: mx.to_string(),
            ip: addr.ip(),
            tls_version,
            verified_tls,
            dane: false,
            pipelining: ext.pipelining,
            size_limit: ext.size,
            requiretls: ext.requiretls,
            smtputf8: ext.smtputf8,
            closed: false,
        })
    }

    /// One transaction for one recipient. `Ok` carries the deciding reply
    /// (a MAIL/RCPT refusal or the reply to the data); `Err` means the
    /// connection is no longer usable. A message sent with REQUIRETLS only
    /// goes to a server that offers it too (RFC 8689 section 4.2.1).
    /// Sends one message to one recipient. `written` is called once the
    /// MAIL command has left (or when nothing will be sent): shaping
    /// counts the message from then.
    pub async fn send(
        &mut self,
        from: &str,
        to: &str,
        body: &[u8],
        requiretls: bool,
        written: impl FnOnce(),
    ) -> Result<(Reply, &'static str), ClientError> {
        if requiretls && !self.requiretls {
            return Ok((
                Reply {
                    code: 450,
                    enhanced: Some("4.7.30".into()),
                    text: format!("{} does not offer REQUIRETLS", self.mx),
                },
                LOCAL,
            ));
        }
        if let Some(limit) = self.size_limit
            && body.len() > limit
        {
            return Ok((
                Reply {
                    code: 552,
                    enhanced: Some("5.3.4".into()),
                    text: format!(
                        "message size {} exceeds the server's limit {limit}",
                        body.len()
                    ),
                },
                LOCAL,
            ));
        }
        // A non-ASCII address goes only to a server that takes SMTPUTF8
        // (RFC 6531 section 3.4: never downgraded).
        let utf8 = !from.is_ascii() || !to.is_ascii();
        if utf8 && !self.smtputf8 {
            return Ok((
                Reply {
                    code: 553,
                    enhanced: Some("5.6.7".into()),
                    text: format!(
                        "{} does not offer SMTPUTF8 for a non-ASCII address",
                        self.mx
                    ),
                },
                LOCAL,
            ));
        }
        let mail = format!(
            "MAIL FROM:<{from}>{}{}\r\n",
            if utf8 { " SMTPUTF8" } else { "" },
            if requiretls { " REQUIRETLS" } else { "" }
        );
        let rcpt = format!("RCPT TO:<{to}>\r\n");
        let io = &mut self.io;
        let (mail_r, rcpt_r, data_r) = if self.pipelining {
            io.queue(mail.as_bytes());
            io.queue(rcpt.as_bytes());
            io.queue(b"DATA\r\n");
            let flushed = io.flush().await;
            written();
            flushed?;
            let m = read_reply(io, COMMAND_TIMEOUT).await?;
            // A server that refuses with 421 closes the connection without
            // answering the rest: its refusal is the answer.
            let r = match read_reply(io, COMMAND_TIMEOUT).await {
                Ok(r) => r,
                Err(_) if !m.is_positive() => return Ok(self.refused_and_closed(m, "mail")),
                Err(e) => return Err(e),
            };
            let d = match read_reply(io, DATA_INIT_TIMEOUT).await {
                Ok(d) => d,
                Err(_) if !r.is_positive() => return Ok(self.refused_and_closed(r, "rcpt")),
                Err(e) => return Err(e),
            };
            (m, Some(r), Some(d))
        } else {
            io.queue(mail.as_bytes());
            let flushed = io.flush().await;
            written();
            flushed?;
            let m = read_reply(io, COMMAND_TIMEOUT).await?;
            if !m.is_positive() {
                (m, None, None)
            } else {
                io.queue(rcpt.as_bytes());
                let r = read_reply(io, COMMAND_TIMEOUT).await?;
                if !r.is_positive() {
                    (m, Some(r), None)
                } else {
                    io.queue(b"DATA\r\n");
                    let d = read_reply(io, DATA_INIT_TIMEOUT).await?;
                    (m, Some(r), Some(d))
                }
            }
        };
        let data_started = data_r.as_ref().is_some_and(|d| d.code == 354);
        let refusal = if !mail_r.is_positive() {
            Some((mail_r, "mail"))
        } else if let Some(r) = rcpt_r.filter(|r| !r.is_positive()) {
            Some((r, "rcpt"))
        } else {
            data_r
                .as_ref()
                .filter(|d| d.code != 354)
                .cloned()
                .map(|d| (d, "data"))
        };
        if let Some((reply, stage)) = refusal {
            if reply.code == 421 {
                return Ok(self.refused_and_closed(reply, stage));
            }
            if data_started {
                // The server took DATA despite refusing the recipient: end it empty.
                io.queue(b".\r\n");
                read_reply(io, DATA_END_TIMEOUT).await?;
            }
            if self.reset().await.is_err() {
                self.closed = true;
            }
            return Ok((reply, stage));
        }
        io.write_all(&dot_stuff(body)).await?;
        let final_reply = read_reply(io, DATA_END_TIMEOUT).await?;
        if final_reply.code == 421 {
            return Ok(self.refused_and_closed(final_reply, "data"));
        }
        if !final_reply.is_positive() && self.reset().await.is_err() {
            self.closed = true;
        }
        Ok((final_reply, "data"))
    }

    fn refused_and_closed(&mut self, reply: Reply, stage: &'static str) -> (Reply, &'static str) {
        self.closed = true;
        (reply, stage)
    }

    async fn reset(&mut self) -> Result<(), ClientError> {
        let r = command(&mut self.io, "RSET", COMMAND_TIMEOUT).await?;
        if r.code != 250 {
            return Err(ClientError::Rejected(r));
        }
        Ok(())
    }

    pub async fn quit(mut self) {
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            command(&mut self.io, "QUIT", COMMAND_TIMEOUT),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed handshake is named by RFC 8460's result types, read from
    /// rustls's own error (as tokio-rustls hands it over, in an io::Error).
    #[test]
    fn handshake_failures_get_their_report_names() {
        use rustls::CertificateError as C;
        let named = |e: rustls::Error| {
            TlsFailure::of_handshake(&std::io::Error::new(std::io::ErrorKind::InvalidData, e))
                .result_type()
        };
        assert_eq!(
            named(rustls::Error::InvalidCertificate(C::NotValidForName)),
            "certificate-host-mismatch"
        );
        assert_eq!(
            named(rustls::Error::InvalidCertificate(C::Expired)),
            "certificate-expired"
        );
        assert_eq!(
            named(rustls::Error::InvalidCertificate(C::UnknownIssuer)),
            "certificate-not-trusted"
        );
        assert_eq!(
            named(rustls::Error::InvalidCertificate(C::BadSignature)),
            "validation-failure"
        );
        assert_eq!(
            TlsFailure::of_handshake(&std::io::Error::other("reset")).result_type(),
            "validation-failure"
        );
    }

    #[test]
    fn parses_replies() {
        let r = Reply::parse(&["250-first".into(), "250 2.0.0 Ok queued".into()]).unwrap();
        assert_eq!(r.code, 250);
        assert_eq!(r.enhanced, None, "enhanced code only on the first token");
        let r = Reply::parse(&["550 5.1.1 <a@b>: no such user".into()]).unwrap();
        assert_eq!(r.enhanced.as_deref(), Some("5.1.1"));
        assert_eq!(r.text, "<a@b>: no such user");
        let r = Reply::parse(&["451 4.7.1 try later".into()]).unwrap();
        assert!(!r.is_permanent());
        assert!(Reply::parse(&["hello".into()]).is_none());
        assert!(Reply::parse(&["999 x".into()]).is_none());
        let r = Reply::parse(&["550 5.1 nope".into()]).unwrap();
        assert_eq!(r.enhanced, None);
    }
}
