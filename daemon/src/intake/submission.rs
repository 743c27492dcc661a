//! A message handed over for admission, whoever handed it over: an SMTP
//! client, an API request or a batch task all make theirs with
//! [`Submission::new`], which puts the trace header on top, adds the
//! Message-ID and Date a client left out (RFC 6409 section 8) and finds the
//! domain the message is from.

use crate::message::{from_domain, header_values};
use crate::net::domain_of;

/// A message ready for admission.
pub struct Submission {
    pub id: String,
    /// "" for a relay client.
    pub account: String,
    /// Envelope sender.
    pub sender: String,
    /// The domain DKIM signs for and the policy counts against: the From
    /// header's, else the envelope sender's.
    pub sender_domain: String,
    pub recipients: Vec<String>,
    pub message: Vec<u8>,
    pub now: i64,
    pub trigger_type: TriggerType,
    pub require_tls: bool,
    /// The door it came in by.
    pub door: Door,
    /// Where it came from, for the log and the story, its door first:
    /// `smtp <peer>`, `api <peer> request <id>`, `batch task <id>`.
    pub origin: String,
    /// The template and batch task it was made from ("" when none).
    pub template_id: String,
    pub task_id: String,
}

/// The door a message came in by; the names are the metrics' labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    Smtp,
    Api,
    Batch,
    /// A report Kiln writes itself (TLS-RPT).
    Report,
}

impl Door {
    pub const fn as_str(self) -> &'static str {
        match self {
            Door::Smtp => "smtp",
            Door::Api => "api",
            Door::Batch => "batch",
            Door::Report => "report",
        }
    }
}

/// What kind of sending a message is (`msg.trigger_type` in the policy):
/// a regular send, a triggered one (SendEmail's TriggerType 1), a batch
/// task's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerType {
    Regular,
    Trigger,
    Batch,
}

impl TriggerType {
    pub const fn as_str(self) -> &'static str {
        match self {
            TriggerType::Regular => "regular",
            TriggerType::Trigger => "trigger",
            TriggerType::Batch => "batch",
        }
    }
}

/// Who handed a message over, as its trace header says.
pub struct Trace<'a> {
    pub id: &'a str,
    pub helo: &'a str,
    pub peer: std::net::IpAddr,
    pub hostname: &'a str,
    pub protocol: &'a str,
    /// The one recipient, when there is one (the header's `for` clause).
    pub recipient: Option<&'a str>,
    pub now_ms: i64,
}

/// Where a message goes and what it was made with.
pub struct Envelope {
    pub account: String,
    pub sender: String,
    pub recipients: Vec<String>,
    pub trigger_type: TriggerType,
    pub require_tls: bool,
    pub door: Door,
    pub origin: String,
    pub template_id: String,
    pub task_id: String,
}

impl Submission {
    /// `message` as the client gave it (or as Kiln built it), made ready.
    pub fn new(message: &[u8], trace: &Trace<'_>, envelope: Envelope) -> Submission {
        let message = prepare(message, trace);
        let sender_domain = from_domain(&message).unwrap_or_else(|| domain_of(&envelope.sender));
        Submission {
            id: trace.id.to_string(),
            account: envelope.account,
            sender: envelope.sender,
            sender_domain,
            recipients: envelope.recipients,
            message,
            now: trace.now_ms,
            trigger_type: envelope.trigger_type,
            require_tls: envelope.require_tls,
            door: envelope.door,
            origin: envelope.origin,
            template_id: envelope.template_id,
            task_id: envelope.task_id,
        }
    }
}

/// The message as queued: Received on top, Message-ID and Date ensured.
fn prepare(message: &[u8], trace: &Trace<'_>) -> Vec<u8> {
    let date = mail_builder::headers::date::Date::new(trace.now_ms / 1000).to_rfc822();
    let mut out = Vec::with_capacity(message.len() + 512);
    let for_clause = trace
        .recipient
        .map(|r| format!("\r\n\tfor <{r}>"))
        .unwrap_or_default();
    out.extend_from_slice(
        format!(
            "Received: from {} ([{}])\r\n\tby {} (Kiln) with {} id {}{};\r\n\t{}\r\n",
            trace.helo, trace.peer, trace.hostname, trace.protocol, trace.id, for_clause, date
        )
        .as_bytes(),
    );
    if header_values(message, "Message-ID").is_empty() {
        out.extend_from_slice(
            format!("Message-ID: <{}@{}>\r\n", trace.id, trace.hostname).as_bytes(),
        );
    }
    if header_values(message, "Date").is_empty() {
        out.extend_from_slice(format!("Date: {date}\r\n").as_bytes());
    }
    out.extend_from_slice(message);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(protocol: &'static str, now_ms: i64) -> Trace<'static> {
        Trace {
            id: "ID1",
            helo: "client",
            peer: "127.0.0.1".parse().unwrap(),
            hostname: "mx.kiln",
            protocol,
            recipient: None,
            now_ms,
        }
    }

    #[test]
    fn adds_missing_headers_only() {
        let trace = trace("ESMTPSA", 0);
        let out = prepare(b"Message-ID: <x@y>\r\nSubject: s\r\n\r\nbody\r\n", &trace);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("Received: from client ([127.0.0.1])"));
        assert_eq!(text.matches("Message-ID").count(), 1);
        assert_eq!(text.matches("\r\nDate: ").count(), 1);
        assert!(text.ends_with("\r\n\r\nbody\r\n"));
    }

    #[test]
    fn the_sender_domain_is_the_from_headers() {
        let envelope = |sender: &str| Envelope {
            account: String::new(),
            sender: sender.into(),
            recipients: vec!["r@x.test".into()],
            trigger_type: TriggerType::Regular,
            require_tls: false,
            door: Door::Smtp,
            origin: "test".into(),
            template_id: String::new(),
            task_id: String::new(),
        };
        let trace = trace("ESMTP", 5_000);
        let s = Submission::new(
            b"From: <a@Shop.Test>\r\n\r\nhi\r\n",
            &trace,
            envelope("b@other.test"),
        );
        assert_eq!(
            (s.sender_domain.as_str(), s.now, s.id.as_str()),
            ("shop.test", 5_000, "ID1")
        );
        let s = Submission::new(
            b"Subject: x\r\n\r\nhi\r\n",
            &trace,
            envelope("b@other.test"),
        );
        assert_eq!(s.sender_domain, "other.test");
    }
}
