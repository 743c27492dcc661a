//! Reports that come back to the bounce domain: delivery status
//! notifications (RFC 3464) and complaint feedback reports (ARF, RFC 5965),
//! each about the message and recipient its VERP return path names.
//!
//! A failed DSN goes to the queue (`QueueHandle::report_returned`), which
//! takes it the way it takes an SMTP refusal: `classify_bounce` (which may
//! blocklist the address), the recipient's status record bounced with the
//! report's reply as its last attempt, and `bounce` raised, once: a
//! repeated report changes nothing, and one about a recipient still in the
//! queue is left to its next attempt. A delayed one raises `deferred`.
//! A complaint raises `spamreport`, suppresses the recipient for the sender
//! domain, counts for the reputation rules and is filed for GetAbuseReport.
//! Each (message, recipient) bounces once, complains once and is reported
//! delayed once: a report that comes again is logged as a duplicate and
//! changes nothing.

use crate::event::EventKind;
use crate::queue::report::{Returned, ReturnedAs};
use crate::services::Services;

/// One recipient block of a delivery-status part.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DsnRecipient {
    pub recipient: String,
    pub action: String,
    pub status: String,
    pub diagnostic: String,
    pub remote_mta: String,
}

/// Field blocks of a message/delivery-status body (RFC 3464 section 2.1):
/// the first is about the message, the others one recipient each.
fn dsn_blocks(text: &str) -> Vec<Vec<(String, String)>> {
    let text = text.replace("\r\n", "\n");
    let mut blocks = Vec::new();
    for block in text.split("\n\n") {
        let mut fields: Vec<(String, String)> = Vec::new();
        for line in block.lines() {
            if line.starts_with([' ', '\t']) {
                if let Some(last) = fields.last_mut() {
                    last.1.push(' ');
                    last.1.push_str(line.trim());
                }
            } else if let Some((k, v)) = line.split_once(':') {
                fields.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        if !fields.is_empty() {
            blocks.push(fields);
        }
    }
    blocks
}

fn dsn_recipients(text: &str) -> Vec<DsnRecipient> {
    let value_of = |fields: &[(String, String)], name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    // "rfc822; user@host" → "user@host".
    let address = |v: String| {
        v.split_once(';')
            .map(|(_, a)| a.trim().to_string())
            .unwrap_or(v)
    };
    dsn_blocks(text)
        .into_iter()
        .filter(|f| f.iter().any(|(k, _)| k == "action"))
        .map(|f| DsnRecipient {
            recipient: address(value_of(&f, "final-recipient"))
                .trim_matches(['<', '>'])
                .to_string(),
            action: value_of(&f, "action").to_ascii_lowercase(),
            status: value_of(&f, "status"),
            diagnostic: value_of(&f, "diagnostic-code"),
            remote_mta: address(value_of(&f, "remote-mta")),
        })
        .collect()
}

/// The SMTP code and text of a Diagnostic-Code ("smtp; 550 5.1.1 ...").
pub fn smtp_reply(diagnostic: &str) -> (u16, String) {
    let text = diagnostic
        .split_once(';')
        .map(|(_, t)| t.trim())
        .unwrap_or(diagnostic)
        .to_string();
    let code = text.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, text)
}

/// The delivery-status part of a report, if it is one.
fn delivery_status(message: &mail_parser::Message<'_>) -> Option<String> {
    use mail_parser::MimeHeaders;
    message.parts.iter().find_map(|part| {
        let is_dsn = part.is_content_type("message", "delivery-status")
            || part.is_content_type("message", "global-delivery-status");
        is_dsn.then(|| String::from_utf8_lossy(part.contents()).into_owned())
    })
}

/// What a complaint report says, as Kiln keeps it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Complaint {
    pub source_ip: String,
    pub user_agent: String,
    /// The ARF feedback type, in lower case ("abuse").
    pub feedback_type: String,
    /// When the complaint was made (ms since the epoch), if the report says.
    pub arrival_ms: Option<i64>,
    /// The subject of the message complained about, if it came along.
    pub subject: String,
}

/// A report as read from its bytes, before Kiln knows whom it is about.
#[derive(Debug, PartialEq, Eq)]
pub enum Report {
    Complaint(Complaint),
    /// The recipient blocks of a delivery-status part (maybe none).
    Dsn(Vec<DsnRecipient>),
    NotAReport,
}

/// Reads a report; no I/O, so the fuzzer drives it too.
pub fn read(raw: &[u8]) -> Report {
    if let Ok(feedback) = mail_auth::report::Feedback::parse_rfc5322(raw) {
        let original = mail_parser::MessageParser::default().parse(raw);
        let subject = original
            .as_ref()
            .and_then(|m| {
                m.parts.iter().find_map(|p| match &p.body {
                    mail_parser::PartType::Message(inner) => inner.subject().map(str::to_string),
                    _ => None,
                })
            })
            .unwrap_or_default();
        return Report::Complaint(Complaint {
            source_ip: feedback
                .source_ip()
                .map(|i| i.to_string())
                .unwrap_or_default(),
            user_agent: feedback.user_agent().unwrap_or_default().to_string(),
            feedback_type: format!("{:?}", feedback.feedback_type()).to_ascii_lowercase(),
            arrival_ms: feedback.arrival_date().map(|s| s.saturating_mul(1000)),
            subject,
        });
    }
    let parsed = mail_parser::MessageParser::default().parse(raw);
    match parsed.as_ref().and_then(delivery_status) {
        Some(dsn) => Report::Dsn(dsn_recipients(&dsn)),
        None => Report::NotAReport,
    }
}

/// Handles one report sent to `return_path`; returns what it was, for the
/// log.
pub async fn process(ctx: &Services, return_path: &str, raw: &[u8]) -> &'static str {
    match try_process(ctx, return_path, raw).await {
        Ok(kind) => kind,
        Err(e) => {
            tracing::error!(%return_path, error = %e, "report not processed");
            "failed"
        }
    }
}

/// The message and recipient a report is about.
struct About<'a> {
    message_id: &'a str,
    recipient: &'a str,
    meta: &'a crate::queued::MessageMeta,
    /// The sender's domain, in lower case.
    domain: String,
}

impl About<'_> {
    fn event(&self, now: i64, kind: EventKind) -> crate::event::Event {
        let mut e = crate::event::Event::new(
            now,
            kind,
            self.message_id,
            self.recipient,
            &self.meta.sender,
            &self.meta.account,
        );
        e.sent_at = self.meta.received_at_ms;
        e
    }
}

/// A complaint: the recipient suppressed for the sender domain, and the
/// first one about the message counted, filed and raised as `spamreport`.
async fn complained(
    ctx: &Services,
    about: &About<'_>,
    complaint: &Complaint,
) -> crate::store::Result<&'static str> {
    let now = ctx.store.now_ms();
    crate::feedback::engagement::suppress(ctx, &about.domain, about.recipient).await?;
    // A recipient complains about a message once: a report replayed
    // (a thousand times, to lower its sender's reputation) changes
    // nothing more.
    let first = crate::feedback::engagement::mark_first(
        ctx,
        's',
        about.message_id,
        about.recipient,
        &complaint.source_ip,
        &complaint.user_agent,
    )
    .await?;
    if !first {
        return Ok("duplicate complaint");
    }
    ctx.outcomes.record(&about.domain, "complaint");
    ctx.ses
        .file_abuse_report(crate::ses::abuse::AbuseReport {
            from_domain: about.domain.clone(),
            mail_from: about.meta.sender.clone(),
            rcpt_to: about.recipient.to_string(),
            mta: crate::net::domain_of(about.recipient),
            source_ip: complaint.source_ip.clone(),
            message_id: about.message_id.to_string(),
            subject: complaint.subject.clone(),
            delivered_at_ms: about.meta.received_at_ms,
            complained_at_ms: complaint.arrival_ms.unwrap_or(now),
            received_at_ms: now,
            ..Default::default()
        })
        .await
        .map_err(|e| crate::store::StoreError::Corrupt {
            key: "abuse report".into(),
            reason: e.to_string(),
        })?;
    let mut e = about.event(now, EventKind::SpamReport);
    e.user_agent = complaint.user_agent.clone();
    e.reason = complaint.feedback_type.clone();
    ctx.feedback.emit(e).await;
    Ok("complaint")
}

async fn try_process(
    ctx: &Services,
    return_path: &str,
    raw: &[u8],
) -> crate::store::Result<&'static str> {
    let Some(verp) = &ctx.verp else {
        return Ok("ignored");
    };
    let Some((message_id, idx)) = verp.parse(return_path) else {
        return Ok("forged");
    };
    let store = &ctx.ses.store;
    let Some(status) = store.status(&message_id).await? else {
        return Ok("unknown message");
    };
    let Some(rcpt) = status.recipients.get(idx as usize) else {
        return Ok("unknown recipient");
    };
    let about = About {
        message_id: &message_id,
        recipient: &rcpt.recipient,
        meta: &status.meta,
        domain: crate::net::domain_of(&status.meta.sender).to_ascii_lowercase(),
    };
    let recipient = about.recipient;
    let event = |kind: EventKind| about.event(ctx.store.now_ms(), kind);

    let report = read(raw);
    if let Report::Complaint(complaint) = &report {
        return complained(ctx, &about, complaint).await;
    }

    let Report::Dsn(blocks) = report else {
        return Ok("not a report");
    };
    let Some(block) = blocks
        .iter()
        .find(|b| b.recipient.eq_ignore_ascii_case(recipient))
        .or_else(|| blocks.first())
    else {
        return Ok("empty report");
    };
    let (code, text) = smtp_reply(&block.diagnostic);
    match block.action.as_str() {
        // A repeated report (or one after an SMTP refusal), or one for a
        // recipient still queued, changes nothing: the queue says.
        "failed" => {
            // The text without its code and status, for the attempt record.
            let detail = text
                .strip_prefix(&code.to_string())
                .unwrap_or(&text)
                .trim_start();
            let detail = detail
                .strip_prefix(block.status.as_str())
                .unwrap_or(detail)
                .trim_start()
                .to_string();
            let returned = Returned {
                msg_id: message_id.clone(),
                rcpt_idx: idx,
                code: if code >= 400 { code } else { 550 },
                status: block.status.clone(),
                detail,
                reply: text.clone(),
                remote_mta: block.remote_mta.clone(),
            };
            Ok(match ctx.queue.report_returned(&status, returned).await? {
                ReturnedAs::Bounce => "bounce",
                ReturnedAs::AlreadyBounced => "bounce already known",
                ReturnedAs::StillQueued => "recipient still queued",
                ReturnedAs::UnknownRecipient => "unknown recipient",
            })
        }
        "delayed" => {
            let first =
                crate::feedback::engagement::mark_first(ctx, 'd', &message_id, recipient, "", "")
                    .await?;
            if !first {
                return Ok("duplicate delay notice");
            }
            let mut e = event(EventKind::Deferred);
            e.reason = format!("{} {}", block.status, text).trim().to_string();
            ctx.feedback.emit(e).await;
            Ok("delay")
        }
        _ => Ok("no failure"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_delivery_status_fields() {
        let text = "Reporting-MTA: dns; mx.dest.test\r\nArrival-Date: Sun, 22 Nov 2026 10:00:00 +0000\r\n\r\n\
                    Final-Recipient: rfc822; Ann@dest.test\r\nAction: failed\r\nStatus: 5.1.1\r\n\
                    Diagnostic-Code: smtp; 550 5.1.1 <ann@dest.test>:\r\n user unknown\r\n\r\n\
                    Final-Recipient: rfc822;bob@dest.test\r\nAction: delayed\r\nStatus: 4.2.2\r\n";
        let r = dsn_recipients(text);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].recipient, "Ann@dest.test");
        assert_eq!(
            (r[0].action.as_str(), r[0].status.as_str()),
            ("failed", "5.1.1")
        );
        assert_eq!(
            smtp_reply(&r[0].diagnostic),
            (550, "550 5.1.1 <ann@dest.test>: user unknown".into())
        );
        assert_eq!(
            (r[1].recipient.as_str(), r[1].action.as_str()),
            ("bob@dest.test", "delayed")
        );
    }
}
