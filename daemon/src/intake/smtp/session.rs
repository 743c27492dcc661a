//! One SMTP session: greeting, EHLO, STARTTLS, AUTH, transactions.
//!
//! Replies follow RFC 5321 with RFC 3463 enhanced codes. Output is buffered
//! and flushed only when the client has nothing more pipelined.

use super::auth_throttle;
use super::parser::{Command, ParseError, parse_command};
use crate::config::{ListenerSettings, ListenerTls};
use crate::intake::admission::Refusal;
use crate::intake::admission::note_refused;
use crate::intake::submission::{Envelope, Submission, Trace};
use crate::line_io::{LineError, LineIo};
use crate::net::domain_of;
use crate::policy::decisions::{ConnectInfo, Decision, TransactionInfo};
use crate::services::Services;
use crate::ses::config_accounts::Account;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

mod verbs;

enum Step {
    Quit,
    StartTls,
}

/// A policy hook failed: the client keeps the message and tries later.
const POLICY_UNAVAILABLE_421: &str = "421 4.3.0 Policy temporarily unavailable, try again later";
const POLICY_UNAVAILABLE: &str = "451 4.3.0 Policy temporarily unavailable, try again later";
/// Nothing is queued that a next hop would refuse (RFC 5322 section 2.1.1).
pub const LINE_TOO_LONG: &str =
    "554 5.6.0 Message has a line longer than 998 characters (RFC 5322 section 2.1.1)";
/// Postfix's `smtpd_forbid_bare_newline = reject`, for bare CR as well.
const BARE_LINE_ENDING: &str =
    "550 5.5.2 Bare LF or CR in message data; lines must end with CRLF (RFC 5321 section 2.3.8)";

/// What a hook's answer means for an SMTP command: None to go on, or the
/// reply that refuses it.
fn refusal(
    answer: Result<Option<Decision>, crate::policy::PolicyError>,
    permanent: &str,
    temporary: &str,
) -> Option<String> {
    match answer {
        Ok(Some(d)) if d.is_reject() => Some(d.smtp_reply(permanent)),
        Ok(Some(d)) if d.is_defer() => Some(d.smtp_reply(temporary)),
        Ok(_) => None,
        Err(_) => Some(POLICY_UNAVAILABLE.into()),
    }
}

pub struct Session {
    ctx: Arc<Services>,
    peer: SocketAddr,
    listener_name: String,
    listener_tls: ListenerTls,
    trusted: bool,
    relay_allowed: bool,
    shutdown: CancellationToken,
    helo: Option<String>,
    esmtp: bool,
    tls: bool,
    account: Option<Arc<Account>>,
    mail_from: Option<String>,
    require_tls: bool,
    /// MAIL carried SMTPUTF8: addresses may be UTF-8.
    smtputf8: bool,
    rcpt_to: Vec<String>,
    /// `rcpt_to` in lower case, to find a repeat at once.
    rcpt_seen: std::collections::HashSet<String>,
    /// How many of `rcpt_to` are report addresses (VERP return paths).
    report_rcpts: usize,
    errors: usize,
}

impl Session {
    pub fn new(
        ctx: Arc<Services>,
        listener: &ListenerSettings,
        peer: SocketAddr,
        relay_allowed: bool,
        shutdown: CancellationToken,
    ) -> Session {
        Session {
            ctx,
            peer,
            listener_name: listener.address.to_string(),
            listener_tls: listener.tls,
            trusted: listener.trusted,
            relay_allowed,
            shutdown,
            helo: None,
            esmtp: false,
            tls: listener.tls == ListenerTls::Implicit,
            account: None,
            mail_from: None,
            require_tls: false,
            smtputf8: false,
            rcpt_to: Vec::new(),
            rcpt_seen: std::collections::HashSet::new(),
            report_rcpts: 0,
            errors: 0,
        }
    }

    pub async fn run(mut self, io: LineIo) {
        self.converse(io).await;
        if let Some(m) = crate::metrics::get() {
            m.smtp_sessions
                .get_or_create(&crate::metrics::Tls {
                    tls: if self.tls { "yes" } else { "no" },
                })
                .inc();
        }
    }

    async fn converse(&mut self, mut io: LineIo) {
        let conn = ConnectInfo {
            ip: self.peer.ip().to_string(),
            port: self.peer.port(),
            listener: self.listener_name.clone(),
            tls: self.tls,
        };
        match self
            .ctx
            .policy
            .call(crate::policy::hooks::OnConnect, &conn)
            .await
        {
            Ok(Some(d)) if d.is_reject() || d.is_defer() => {
                let fallback = if d.is_defer() {
                    "421 4.7.0"
                } else {
                    "554 5.7.1"
                };
                self.reply(&mut io, &d.smtp_reply(fallback));
                let _ = io.flush().await;
                return;
            }
            Ok(_) => {}
            Err(_) => {
                self.reply(&mut io, POLICY_UNAVAILABLE_421);
                let _ = io.flush().await;
                return;
            }
        }
        let greeting = format!("220 {} ESMTP Kiln\r\n", self.ctx.settings.server.hostname);
        io.queue(greeting.as_bytes());
        loop {
            match self.serve(&mut io).await {
                Step::Quit => {
                    let _ = io.flush().await;
                    return;
                }
                Step::StartTls => {
                    let Some(acceptor) = self.ctx.tls() else {
                        return;
                    };
                    // Anything pipelined after STARTTLS was sent in clear
                    // text and must not be acted on (RFC 3207 section 5).
                    let (stream, _discarded) = io.into_parts();
                    let Either::Left(tcp) = stream else { return };
                    match acceptor.accept(tcp).await {
                        Ok(tls) => {
                            io = LineIo::new(Either::Right(tokio_rustls::TlsStream::Server(tls)));
                            self.tls = true;
                            self.helo = None;
                            self.reset();
                        }
                        Err(e) => {
                            tracing::debug!(peer = %self.peer, error = %e, "STARTTLS handshake failed");
                            return;
                        }
                    }
                }
            }
        }
    }

    fn add_recipient(&mut self, to: String, report: bool) {
        self.rcpt_seen.insert(to.to_ascii_lowercase());
        self.report_rcpts += usize::from(report);
        self.rcpt_to.push(to);
    }

    fn reset(&mut self) {
        self.mail_from = None;
        self.require_tls = false;
        self.smtputf8 = false;
        self.rcpt_to.clear();
        self.rcpt_seen.clear();
        self.report_rcpts = 0;
    }

    fn reply(&mut self, io: &mut LineIo, text: &str) {
        tracing::debug!(peer = %self.peer, reply = text.get(..3).unwrap_or(text), "reply");
        io.queue(text.as_bytes());
        io.queue(b"\r\n");
    }

    /// A client error; returns true when the client has made too many.
    fn error(&mut self, io: &mut LineIo, text: &str) -> bool {
        self.reply(io, text);
        self.errors += 1;
        if self.errors >= self.ctx.settings.smtp.max_errors {
            self.reply(io, "421 4.7.0 Too many errors, closing connection");
            return true;
        }
        false
    }

    /// Reads commands and answers each (`verbs`), until the session ends
    /// or turns to TLS.
    async fn serve(&mut self, io: &mut LineIo) -> Step {
        loop {
            let command = match self.next_command(io).await {
                Ok(Some(c)) => c,
                Ok(None) => continue,
                Err(step) => return step,
            };
            let step = match command {
                Command::Ehlo(host) => self.ehlo(io, host, true),
                Command::Helo(host) => self.ehlo(io, host, false),
                Command::StartTls => self.starttls(io).await,
                Command::Auth { mechanism, initial } => self
                    .auth(io, &mechanism, initial)
                    .await
                    .then_some(Step::Quit),
                Command::Mail { from, params } => self.mail(io, from, params).await,
                Command::Rcpt { to } => self.rcpt(io, to).await,
                Command::Data => self.data(io).await,
                Command::Rset => {
                    self.reset();
                    self.reply(io, "250 2.0.0 Ok");
                    None
                }
                Command::Noop => {
                    self.reply(io, "250 2.0.0 Ok");
                    None
                }
                Command::Vrfy => {
                    self.reply(io, "252 2.5.2 Cannot VRFY user");
                    None
                }
                Command::Help => {
                    self.reply(io, "214 2.0.0 See RFC 5321");
                    None
                }
                Command::Quit => {
                    self.reply(io, "221 2.0.0 Bye");
                    Some(Step::Quit)
                }
            };
            if let Some(step) = step {
                return step;
            }
        }
    }

    /// The next command: None for a line answered with an error (go on),
    /// Err with how the session ends (timeout, shutdown, too many errors).
    async fn next_command(&mut self, io: &mut LineIo) -> Result<Option<Command>, Step> {
        let smtp = &self.ctx.settings.smtp;
        let (max_line, timeout) = (smtp.max_line_length, smtp.command_timeout);
        let line = tokio::select! {
            l = io.read_line(max_line, timeout) => l,
            _ = self.shutdown.cancelled(), if !io.has_buffered_input() && self.mail_from.is_none() => {
                self.reply(io, "421 4.3.2 Service shutting down, try again later");
                return Err(Step::Quit);
            }
        };
        let line = match line {
            Ok(l) => l,
            Err(LineError::TooLong) => {
                return match self.error(io, "500 5.5.2 Line too long") {
                    true => Err(Step::Quit),
                    false => Ok(None),
                };
            }
            Err(LineError::Timeout) => {
                self.reply(io, "421 4.4.2 Timeout exceeded, closing connection");
                return Err(Step::Quit);
            }
            Err(_) => return Err(Step::Quit),
        };
        tracing::debug!(peer = %self.peer, verb = line.split(' ').next().unwrap_or(""), "command");
        match parse_command(&line) {
            Ok(c) => Ok(Some(c)),
            Err(e) => match self.error(io, &parse_error_reply(&e)) {
                true => Err(Step::Quit),
                false => Ok(None),
            },
        }
    }

    /// Why a recipient's address is one Kiln will not deliver to: UTF-8
    /// without SMTPUTF8, a domain that is not fully qualified, an address
    /// literal (unless `smtp.address_literals` allows it, and never an
    /// internal address unless `smtp.literal_networks` lists it).
    fn refuse_destination(&self, to: &str) -> Option<String> {
        use crate::address::{Domain, Mailbox, is_internal};
        if !self.smtputf8 && !to.is_ascii() {
            return Some(format!(
                "553 5.6.7 <{to}>: Non-ASCII address needs the SMTPUTF8 parameter (RFC 6531)"
            ));
        }
        let mailbox = Mailbox::parse(to, true).ok()?;
        let smtp = &self.ctx.settings.smtp;
        match mailbox.domain {
            Domain::Literal(_) if !smtp.address_literals => Some(format!(
                "550 5.1.2 <{to}>: Address literals are not accepted; use a domain name"
            )),
            Domain::Literal(ip)
                if is_internal(ip)
                    && !smtp
                        .literal_networks
                        .iter()
                        .filter_map(|n| crate::net::Cidr::parse(n))
                        .any(|n| n.contains(ip)) =>
            {
                Some(format!(
                    "550 5.1.2 <{to}>: Address literal of an internal network refused"
                ))
            }
            Domain::Name(_) if !mailbox.is_qualified() => Some(format!(
                "550 5.1.2 <{to}>: Domain must be fully qualified (RFC 5321 section 2.3.5)"
            )),
            _ => None,
        }
    }

    /// The authenticated account, or "" for a relay client.
    fn account_name(&self) -> String {
        self.account
            .as_ref()
            .map(|a| a.name.clone())
            .unwrap_or_default()
    }

    fn transaction(&self, sender: &str, recipient: &str) -> TransactionInfo {
        TransactionInfo {
            ip: self.peer.ip().to_string(),
            helo: self.helo.clone().unwrap_or_default(),
            tls: self.tls,
            account: self.account_name(),
            sender: sender.to_string(),
            sender_domain: domain_of(sender),
            recipient: recipient.to_string(),
            recipients: self.rcpt_to.clone(),
        }
    }

    fn auth_offered(&self) -> bool {
        self.tls || self.trusted
    }

    fn ehlo_reply(&self) -> String {
        let smtp = &self.ctx.settings.smtp;
        let mut lines = vec![
            self.ctx.settings.server.hostname.clone(),
            "PIPELINING".into(),
            format!("SIZE {}", smtp.max_message_size),
            "8BITMIME".into(),
            "SMTPUTF8".into(),
            "ENHANCEDSTATUSCODES".into(),
        ];
        if !self.tls && self.listener_tls == ListenerTls::Starttls && self.ctx.tls().is_some() {
            lines.push("STARTTLS".into());
        }
        if self.tls {
            lines.push("REQUIRETLS".into());
        }
        if self.auth_offered() && self.account.is_none() {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        let n = lines.len();
        lines
            .iter()
            .enumerate()
            .map(|(i, l)| format!("250{}{l}", if i + 1 == n { ' ' } else { '-' }))
            .collect::<Vec<_>>()
            .join("\r\n")
    }

    /// Runs an AUTH exchange; returns true when the session must end.
    async fn auth(&mut self, io: &mut LineIo, mechanism: &str, initial: Option<String>) -> bool {
        if self.account.is_some() {
            self.reply(io, "503 5.5.1 Already authenticated");
            return false;
        }
        if self.mail_from.is_some() {
            self.reply(io, "503 5.5.1 AUTH not allowed during a mail transaction");
            return false;
        }
        if !self.auth_offered() {
            return self.error(
                io,
                "538 5.7.11 Encryption required for requested authentication mechanism",
            );
        }
        let credentials = match mechanism {
            "PLAIN" => {
                let response = match initial {
                    Some(r) if r != "=" => Some(r),
                    Some(_) => Some(String::new()),
                    None => self.challenge(io, "").await,
                };
                response.and_then(|r| decode_plain(&r))
            }
            "LOGIN" => {
                let user = match initial {
                    Some(u) => Some(u),
                    None => self.challenge(io, "VXNlcm5hbWU6").await,
                };
                let user = user.and_then(|u| decode_b64(&u));
                match user {
                    Some(u) => self
                        .challenge(io, "UGFzc3dvcmQ6")
                        .await
                        .and_then(|p| decode_b64(&p))
                        .map(|p| (u, p)),
                    None => None,
                }
            }
            _ => {
                return self.error(io, "504 5.5.4 Unrecognized authentication type");
            }
        };
        let Some((user, password)) = credentials else {
            return self.error(
                io,
                "501 5.5.2 Cannot decode AUTH response or AUTH cancelled",
            );
        };
        let store = &self.ctx.store;
        let smtp = &self.ctx.settings.smtp;
        // Counted per address only outside the operator's own networks.
        let counted_ip = (!self.relay_allowed).then(|| self.peer.ip());
        match auth_throttle::blocked(store, smtp, counted_ip, &user).await {
            Ok(Some(subject)) => {
                tracing::info!(peer = %self.peer, user = %user, %subject, "AUTH refused: blocked after repeated failures");
                return self.error(
                    io,
                    "454 4.7.0 Too many failed authentication attempts, try again later",
                );
            }
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "reading AUTH failure counts failed"),
        }
        let mut authenticated = self.ctx.accounts().authenticate(&user, &password);
        if authenticated.is_none() {
            authenticated = self.address_account(&user, &password).await;
        }
        match authenticated {
            Some(account) => {
                tracing::info!(peer = %self.peer, account = %account.name, "authenticated");
                self.account = Some(account);
                self.reply(io, "235 2.7.0 Authentication successful");
                false
            }
            None => {
                tracing::info!(peer = %self.peer, user = %user, "authentication failed");
                match auth_throttle::failed(store, smtp, counted_ip, &user).await {
                    Ok(delay) => tokio::time::sleep(delay).await,
                    Err(e) => tracing::error!(error = %e, "counting an AUTH failure failed"),
                }
                self.error(io, "535 5.7.8 Authentication credentials invalid")
            }
        }
    }

    /// SMTP AUTH as a sender address (its password set through the API):
    /// the address's account, limited to its verified domains.
    async fn address_account(&self, user: &str, password: &str) -> Option<Arc<Account>> {
        let ses = &self.ctx.ses;
        let name = match ses.authenticate_address(user, password).await {
            Ok(name) => name?,
            Err(e) => {
                tracing::error!(error = %e, "looking up SMTP credentials failed");
                return None;
            }
        };
        let domains = ses
            .list_identities(&name)
            .await
            .ok()?
            .into_iter()
            .filter(|i| i.verified)
            .map(|i| i.domain)
            .collect();
        Some(Arc::new(Account::new(&name, domains)))
    }

    async fn challenge(&mut self, io: &mut LineIo, prompt: &str) -> Option<String> {
        io.queue(format!("334 {prompt}\r\n").as_bytes());
        let smtp = &self.ctx.settings.smtp;
        let line = io
            .read_line(smtp.max_line_length, smtp.command_timeout)
            .await
            .ok()?;
        (line != "*").then_some(line)
    }

    /// Makes the message durable, then returns the reply for the client.
    async fn accept(&mut self, body: Vec<u8>) -> String {
        let reports = self.report_rcpts > 0 && self.report_rcpts == self.rcpt_to.len();
        if reports {
            for to in self.rcpt_to.clone() {
                let kind = crate::feedback::inbound_reports::process(&self.ctx, &to, &body).await;
                tracing::info!(peer = %self.peer, return_path = %to, %kind, "report received");
            }
            return "250 2.0.0 Ok: report received".into();
        }
        let Some(sender) = self.mail_from.clone() else {
            return "503 5.5.1 Need MAIL command first".into();
        };
        let id = uuid::Uuid::now_v7().simple().to_string();
        let settings = &self.ctx.settings;
        let protocol = match (self.esmtp, self.tls, self.account.is_some()) {
            (false, _, _) => "SMTP",
            (true, false, false) => "ESMTP",
            (true, true, false) => "ESMTPS",
            (true, false, true) => "ESMTPA",
            (true, true, true) => "ESMTPSA",
        };
        let helo = self.helo.clone().unwrap_or_default();
        let trace = Trace {
            id: &id,
            helo: &helo,
            peer: self.peer.ip(),
            hostname: &settings.server.hostname,
            protocol,
            recipient: (self.rcpt_to.len() == 1).then(|| self.rcpt_to[0].as_str()),
            now_ms: self.ctx.store.now_ms(),
        };
        let envelope = Envelope {
            account: self.account_name(),
            sender,
            recipients: self.rcpt_to.clone(),
            trigger_type: crate::intake::submission::TriggerType::Regular,
            require_tls: self.require_tls,
            door: crate::intake::submission::Door::Smtp,
            origin: format!("smtp {}", self.peer),
            template_id: String::new(),
            task_id: String::new(),
        };
        let submission = Submission::new(&body, &trace, envelope);
        drop(body);
        match crate::intake::admission::admit(&self.ctx, submission).await {
            Ok(_) => format!("250 2.0.0 Ok: queued as {id}"),
            Err(refusal) => smtp_refusal(refusal),
        }
    }
}

impl Session {
    /// Files a message the SMTP door refused before it had an id.
    fn note_door_refusal(&self, why: &str) {
        note_refused(format!(
            "a message from <{}> (smtp {}{}): {why}",
            self.mail_from.as_deref().unwrap_or(""),
            self.peer,
            self.account
                .as_ref()
                .map(|a| format!(", account {}", a.name))
                .unwrap_or_default()
        ));
    }
}

/// The reply for a message admission refused.
fn smtp_refusal(refusal: Refusal) -> String {
    match refusal {
        Refusal::Content(d) if d.is_defer() => d.smtp_reply("451 4.7.1"),
        Refusal::Content(d) => d.smtp_reply("554 5.7.1"),
        Refusal::Limits(d) => {
            let temporary = d.smtp.as_deref().is_some_and(|l| l.starts_with('4'));
            d.smtp_reply(if temporary { "451 4.7.1" } else { "550 5.7.1" })
        }
        Refusal::AllDropped(_) => "550 5.7.1 No recipient may receive this message".into(),
        // Bland: who owns what is for the log (admission logs it).
        Refusal::ForeignDomain { domain, .. } => {
            format!("550 5.7.1 <{domain}>: Sender domain not allowed for this client")
        }
        Refusal::Malformed(why) => format!("554 5.6.0 Message refused: {why}"),
        Refusal::TooBig(_) => "552 5.3.4 Message size exceeds fixed maximum message size".into(),
        Refusal::PolicyUnavailable => POLICY_UNAVAILABLE.into(),
        Refusal::Signing => "451 4.7.0 Temporary signing failure, try again later".into(),
        Refusal::Store => "451 4.3.0 Temporary local problem, try again later".into(),
        Refusal::NoSpace => "452 4.3.1 Insufficient system storage, try again later".into(),
    }
}

fn parse_error_reply(e: &ParseError) -> String {
    e.to_string()
}

fn decode_b64(text: &str) -> Option<String> {
    B64.decode(text.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
}

/// `authzid NUL authcid NUL password` (RFC 4616).
fn decode_plain(text: &str) -> Option<(String, String)> {
    let raw = decode_b64(text)?;
    let mut parts = raw.split('\0');
    let _authzid = parts.next()?;
    let user = parts.next()?.to_string();
    let password = parts.next()?.to_string();
    parts.next().is_none().then_some((user, password))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_auth_plain() {
        let token = B64.encode("\0user\0pass");
        assert_eq!(decode_plain(&token), Some(("user".into(), "pass".into())));
        assert_eq!(decode_plain("!!!"), None);
        assert_eq!(decode_plain(&B64.encode("user")), None);
    }
}
