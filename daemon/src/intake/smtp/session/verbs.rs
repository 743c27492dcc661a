//! One handler per SMTP verb that does more than answer: EHLO/HELO,
//! STARTTLS, MAIL, RCPT, DATA. Each answers the client and says whether
//! the session goes on (None) or how it ends.

use super::{BARE_LINE_ENDING, LINE_TOO_LONG, Session, Step, refusal};
use crate::config::ListenerTls;
use crate::intake::admission::count_refused;
use crate::intake::smtp::parser::MailParams;
use crate::line_io::{Data, LineError, LineIo};

impl Session {
    pub(super) fn ehlo(&mut self, io: &mut LineIo, host: String, esmtp: bool) -> Option<Step> {
        self.helo = Some(host);
        self.esmtp = esmtp;
        self.reset();
        let reply = if esmtp {
            self.ehlo_reply()
        } else {
            format!("250 {}", self.ctx.settings.server.hostname)
        };
        self.reply(io, &reply);
        None
    }

    pub(super) async fn starttls(&mut self, io: &mut LineIo) -> Option<Step> {
        if self.tls {
            self.reply(io, "503 5.5.1 TLS already active");
        } else if self.listener_tls == ListenerTls::None || self.ctx.tls().is_none() {
            self.reply(io, "502 5.5.1 STARTTLS not available");
        } else {
            self.reply(io, "220 2.0.0 Ready to start TLS");
            if io.flush().await.is_err() {
                return Some(Step::Quit);
            }
            return Some(Step::StartTls);
        }
        None
    }

    pub(super) async fn mail(
        &mut self,
        io: &mut LineIo,
        from: String,
        params: MailParams,
    ) -> Option<Step> {
        let max_size = self.ctx.settings.smtp.max_message_size;
        if self.helo.is_none() {
            self.error(io, "503 5.5.1 Send EHLO/HELO first");
        } else if self.mail_from.is_some() {
            self.error(io, "503 5.5.1 Sender already specified");
        } else if params.size.is_some_and(|s| s > max_size) {
            self.reply(
                io,
                "552 5.3.4 Message size exceeds fixed maximum message size",
            );
        } else if params.require_tls && !self.tls {
            // RFC 8689 section 4.1: only offered, and only accepted, over TLS.
            self.reply(io, "530 5.7.10 REQUIRETLS needs a TLS session");
        } else if let Some(acct) = self.account.as_ref().filter(|a| !a.owns_sender(&from)) {
            // Bland to the peer; the log says whose it is not.
            tracing::info!(peer = %self.peer, account = %acct.name, sender = %from, "sender address refused: not the account's");
            let text = format!("553 5.7.1 <{from}>: Sender address not allowed");
            self.reply(io, &text);
        } else if let Some(refused) = refusal(
            self.ctx
                .policy
                .call(
                    crate::policy::hooks::OnMailFrom,
                    &self.transaction(&from, ""),
                )
                .await,
            "550 5.7.1",
            "451 4.7.1",
        ) {
            self.reply(io, &refused);
        } else {
            self.mail_from = Some(from);
            self.require_tls = params.require_tls;
            self.smtputf8 = params.smtputf8;
            self.reply(io, "250 2.1.0 Ok");
        }
        None
    }

    pub(super) async fn rcpt(&mut self, io: &mut LineIo, to: String) -> Option<Step> {
        let max_recipients = self.ctx.settings.smtp.max_recipients;
        let report = self.ctx.verp.clone().filter(|v| v.is_bounce_address(&to));
        let repeat = self.rcpt_seen.contains(&to.to_ascii_lowercase());
        if self.mail_from.is_none() {
            self.error(io, "503 5.5.1 Need MAIL command first");
        } else if let Some(verp) = report {
            // Bounces and complaints come back here from anyone, for a
            // genuine return path only, and each once.
            if verp.parse(&to).is_none() {
                self.reply(io, &format!("550 5.1.1 <{to}>: No such mailbox"));
            } else if self.report_rcpts < self.rcpt_to.len() {
                self.reply(io, "452 4.5.3 Reports go in a message of their own");
            } else if repeat {
                let text = format!("550 5.5.1 <{to}>: Duplicate recipient");
                return self.error(io, &text).then_some(Step::Quit);
            } else if self.rcpt_to.len() >= max_recipients {
                return self
                    .error(io, "452 4.5.3 Too many recipients")
                    .then_some(Step::Quit);
            } else {
                self.add_recipient(to, true);
                self.reply(io, "250 2.1.5 Ok");
            }
        } else if self.report_rcpts > 0 {
            self.reply(io, "452 4.5.3 Reports go in a message of their own");
        } else if self.account.is_none() && !self.relay_allowed {
            let text = format!("550 5.7.1 <{to}>: Relay access denied");
            return self.error(io, &text).then_some(Step::Quit);
        } else if repeat {
            // Mailing lists repeat addresses (To and Cc): the copy is
            // delivered once, and the client is not told the address
            // failed.
            self.reply(io, "250 2.1.5 Ok (duplicate recipient, delivered once)");
        } else if let Some(refused) = self.refuse_destination(&to) {
            self.reply(io, &refused);
        } else if self.rcpt_to.len() >= max_recipients {
            self.reply(io, "452 4.5.3 Too many recipients");
        } else if let Some(refused) = refusal(
            self.ctx
                .policy
                .call(
                    crate::policy::hooks::OnRcptTo,
                    &self.transaction(self.mail_from.as_deref().unwrap_or(""), &to),
                )
                .await,
            "550 5.7.1",
            "450 4.7.1",
        ) {
            self.reply(io, &refused);
        } else {
            self.add_recipient(to, false);
            self.reply(io, "250 2.1.5 Ok");
        }
        None
    }

    pub(super) async fn data(&mut self, io: &mut LineIo) -> Option<Step> {
        if self.mail_from.is_none() {
            self.error(io, "503 5.5.1 Need MAIL command first");
            return None;
        }
        if self.rcpt_to.is_empty() {
            self.error(io, "554 5.5.1 No valid recipients");
            return None;
        }
        self.reply(io, "354 End data with <CR><LF>.<CR><LF>");
        let smtp = &self.ctx.settings.smtp;
        let max_size = smtp.max_message_size;
        let pace = crate::line_io::DataPace {
            max_time: smtp.data_timeout,
            grace: smtp.data_rate_grace,
            min_rate: smtp.min_data_rate,
        };
        match io.read_data(max_size, pace).await {
            Ok(Data::Complete(body)) => {
                let reply = self.accept(body).await;
                self.reply(io, &reply);
            }
            Ok(Data::TooBig) => {
                count_refused(crate::intake::submission::Door::Smtp, "too_big");
                self.note_door_refusal(&format!("over the {max_size} bytes a message may have"));
                self.reply(
                    io,
                    "552 5.3.4 Message size exceeds fixed maximum message size",
                )
            }
            Ok(Data::LineTooLong) => {
                count_refused(crate::intake::submission::Door::Smtp, "malformed");
                self.note_door_refusal("a line over 998 bytes");
                self.reply(io, LINE_TOO_LONG)
            }
            Ok(Data::BareLineEnding { framed }) => {
                count_refused(crate::intake::submission::Door::Smtp, "malformed");
                self.note_door_refusal("a bare LF or CR");
                tracing::info!(peer = %self.peer, framed, "bare LF or CR in DATA, message refused");
                self.reply(io, BARE_LINE_ENDING);
                if !framed {
                    // The client may think its data ended elsewhere: what
                    // follows is not ours to read as commands.
                    self.reply(
                        io,
                        "421 4.5.0 Data did not end with CRLF.CRLF, closing connection",
                    );
                    return Some(Step::Quit);
                }
            }
            Err(LineError::Timeout) => {
                self.reply(io, "421 4.4.2 Timeout exceeded, closing connection");
                return Some(Step::Quit);
            }
            Err(_) => return Some(Step::Quit),
        }
        self.reset();
        None
    }
}
