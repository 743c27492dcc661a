//! SendEmail: a template (or, where allowed, content of its own) rendered
//! for the recipients, built as MIME, then admitted like any SMTP message
//! (policy, DKIM, queue). The MessageId is returned once it is durable.

use super::Call;
use crate::intake::admission::Refusal;
use crate::intake::api::params::Params;
use crate::intake::api::tencent::ApiError;
use crate::intake::compose::{Attachment, Draft};
use crate::intake::submission::TriggerType;
use crate::intake::submission::{Envelope, Submission, Trace};
use crate::ses::addresses::normalize_address;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value, json};
use std::collections::BTreeSet;

const MAX_TO: usize = 50;
const MAX_CC: usize = 20;
const MAX_ATTACHMENTS: usize = 10;

/// Headers SmtpHeaders may not set: Kiln writes them, or they decide where
/// the message goes and how it is read.
const RESERVED_HEADERS: &[&str] = &[
    "from",
    "to",
    "cc",
    "bcc",
    "subject",
    "message-id",
    "date",
    "sender",
    "reply-to",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "dkim-signature",
    "received",
    "return-path",
    "list-unsubscribe",
    "list-unsubscribe-post",
];

fn invalid(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(code, message)
}

/// `addr` or `Name <addr>` → (name, address).
pub(super) fn parse_mailbox(field: &str, text: &str) -> Result<(String, String), ApiError> {
    let text = text.trim();
    let (name, addr) = match (text.rfind('<'), text.ends_with('>')) {
        (Some(open), true) => (text[..open].trim(), &text[open + 1..text.len() - 1]),
        _ => ("", text),
    };
    let name = name.trim_matches('"').trim();
    if name.contains([':', '"', '\r', '\n', '<', '>']) {
        return Err(invalid(
            "InvalidParameterValue.IllegalSenderName",
            format!("{field}: the name {name:?} may not contain ':', quotes or angle brackets"),
        ));
    }
    let addr = normalize_address(addr).ok_or_else(|| {
        invalid(
            "InvalidParameterValue.IllegalEmailAddress",
            format!("{field}: {addr:?} is not an email address"),
        )
    })?;
    Ok((name.to_string(), addr))
}

fn recipients(p: &Params, field: &str, max: usize) -> Result<Vec<String>, ApiError> {
    let list = p.strings(field)?;
    if list.len() > max {
        return Err(invalid(
            "FailedOperation.TooManyRecipients",
            format!("{field} has {} addresses; at most {max}", list.len()),
        ));
    }
    list.iter()
        .map(|a| {
            normalize_address(a).ok_or_else(|| {
                invalid(
                    "InvalidParameterValue.IllegalEmailAddress",
                    format!("{field}: {a:?} is not an email address"),
                )
            })
        })
        .collect()
}

/// The attachments, at most `max_bytes` in all (the message limit).
fn attachments(p: &Params, max_bytes: usize) -> Result<Vec<Attachment>, ApiError> {
    let list = p.objects("Attachments")?;
    if list.len() > MAX_ATTACHMENTS {
        return Err(invalid(
            "FailedOperation.TooManyAttachments",
            format!("{} attachments; at most {MAX_ATTACHMENTS}", list.len()),
        ));
    }
    let mut out = Vec::new();
    let mut total = 0;
    for (i, a) in list.iter().enumerate() {
        a.only(&["FileName", "Content", "FileURL"])?;
        let name = a.str("FileName")?;
        if name.len() > 255 || name.contains(['/', '\\', '\r', '\n', '"']) || name.trim().is_empty()
        {
            return Err(invalid(
                "FailedOperation.InvalidAttachName",
                format!("Attachments.{i}.FileName {name:?} is not a valid file name"),
            ));
        }
        if a.str_opt("FileURL")?.is_some() {
            return Err(invalid(
                "UnsupportedOperation",
                format!("Attachments.{i}.FileURL: Kiln does not fetch attachments; send Content"),
            ));
        }
        let content = a.str("Content")?;
        let bytes = B64.decode(content.trim()).map_err(|_| {
            invalid(
                "InvalidParameterValue.AttachContentIsWrong",
                format!("Attachments.{i}.Content is not valid base64"),
            )
        })?;
        total += bytes.len();
        if total > max_bytes {
            return Err(invalid(
                "FailedOperation.AttachContentToolarge",
                format!("the attachments are larger than {max_bytes} bytes in total"),
            ));
        }
        out.push(Attachment {
            content_type: crate::intake::compose::content_type_of(&name),
            name,
            bytes,
        });
    }
    Ok(out)
}

/// Extra headers from SmtpHeaders (a JSON object of name → value).
fn extra_headers(p: &Params) -> Result<Vec<(String, String)>, ApiError> {
    let Some(raw) = p.str_opt("SmtpHeaders")? else {
        return Ok(Vec::new());
    };
    if raw.trim().is_empty() {
        return Ok(Vec::new());
    }
    let bad = |m: String| invalid("InvalidParameterValue", m);
    let map: Map<String, Value> = serde_json::from_str(&raw)
        .map_err(|_| bad("SmtpHeaders must be a JSON object of header names to values".into()))?;
    let mut out = Vec::new();
    for (name, value) in map {
        let name_ok = !name.is_empty()
            && name.len() <= 76
            && name.bytes().all(|b| b.is_ascii_graphic() && b != b':');
        if !name_ok {
            return Err(bad(format!("SmtpHeaders: {name:?} is not a header name")));
        }
        if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(bad(format!(
                "SmtpHeaders: {name} is set by Kiln and may not be given"
            )));
        }
        let value = match value {
            Value::String(s) => s,
            other => other.to_string(),
        };
        if value.contains(['\r', '\n']) || value.len() > 998 {
            return Err(bad(format!(
                "SmtpHeaders: the value of {name} must be one line of at most 998 characters"
            )));
        }
        out.push((name, value));
    }
    Ok(out)
}

/// Subject, HTML and text of the message.
async fn content(
    c: &Call<'_>,
    subject: &str,
) -> Result<(String, String, String, Option<u64>), ApiError> {
    if let Some(t) = c.params.object_opt("Template")? {
        t.only(&["TemplateID", "TemplateData"])?;
        let id = t.int("TemplateID")?;
        let id = u64::try_from(id).map_err(|_| {
            invalid(
                "InvalidParameterValue.TemplateNotExist",
                format!("template {id} does not exist in this account"),
            )
        })?;
        let template = c.ses.template(c.account, id).await?;
        if template.status != crate::ses::templates::APPROVED {
            return Err(
                crate::ses::templates::TemplateError::NotApproved(id, template.status).into(),
            );
        }
        let raw = t.str_opt("TemplateData")?.unwrap_or_else(|| "{}".into());
        let max = c.ses.settings.platform.max_template_data;
        if raw.len() > max {
            return Err(invalid(
                "InvalidParameterValue.TemplateDataLenLimit",
                format!(
                    "Template.TemplateData is {} bytes; at most {max}",
                    raw.len()
                ),
            ));
        }
        let data: Map<String, Value> =
            match serde_json::from_str::<Value>(if raw.trim().is_empty() { "{}" } else { &raw }) {
                Ok(Value::Object(m)) => m,
                _ => {
                    return Err(invalid(
                        "InvalidParameterValue.TemplateDataError",
                        "Template.TemplateData must be a JSON object, e.g. {\"name\":\"Ann\"}",
                    ));
                }
            };
        use crate::ses::templates::render;
        return Ok((
            render(subject, &data, false)?,
            render(&template.html, &data, true)?,
            render(&template.text, &data, false)?,
            Some(id),
        ));
    }
    if let Some(simple) = c.params.object_opt("Simple")? {
        if !c.ses.settings.platform.allow_simple {
            return Err(invalid(
                "FailedOperation.WithOutPermission",
                "this account must send with a Template (Simple content is not enabled)",
            ));
        }
        simple.only(&["Html", "Text"])?;
        let decode = |field: &str| -> Result<String, ApiError> {
            let Some(v) = simple.str_opt(field)? else {
                return Ok(String::new());
            };
            B64.decode(v.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    invalid(
                        "InvalidParameterValue.EmailContentIsWrong",
                        format!("Simple.{field} is not base64 UTF-8 text"),
                    )
                })
        };
        let (html, text) = (decode("Html")?, decode("Text")?);
        if html.is_empty() && text.is_empty() {
            return Err(invalid(
                "FailedOperation.MissingEmailContent",
                "Simple needs Html or Text",
            ));
        }
        return Ok((subject.to_string(), html, text, None));
    }
    Err(invalid(
        "MissingParameter.SendParamNecessary",
        "the parameter Template is required",
    ))
}

/// Checks that `address` is on a verified sender domain of the account.
pub(super) async fn check_domain(c: &Call<'_>, field: &str, address: &str) -> Result<(), ApiError> {
    let domain = crate::net::domain_of(address);
    match c.ses.identity(c.account, &domain).await? {
        None => Err(invalid(
            "FailedOperation.NotAuthenticatedSender",
            format!("{field}: {domain} is not a sender domain of this account"),
        )),
        Some(i) if !i.verified => Err(invalid(
            "OperationDenied.DomainNotVerified",
            format!(
                "{field}: the domain {domain} is not verified yet (GetEmailIdentity checks its DNS records)"
            ),
        )),
        Some(_) => Ok(()),
    }
}

/// The sender address: one of the account's, on a verified domain of the
/// account.
pub(super) async fn sender_address(
    c: &Call<'_>,
    field: &str,
    address: &str,
) -> Result<crate::ses::addresses::SenderAddress, ApiError> {
    check_domain(c, field, address).await?;
    c.ses.address(c.account, address).await?.ok_or_else(|| {
        invalid(
            "InvalidParameterValue.NoSuchSender",
            format!(
                "{field}: {address} is not a sender address of this account (CreateEmailAddress)"
            ),
        )
    })
}

/// Destination, Cc and Bcc.
type Destinations = (Vec<String>, Vec<String>, Vec<String>);

/// Destination, Cc and Bcc: at least one recipient, and no Bcc that is
/// also in Destination.
fn destinations(p: &Params) -> Result<Destinations, ApiError> {
    let to = recipients(p, "Destination", MAX_TO)?;
    let cc = recipients(p, "Cc", MAX_CC)?;
    let bcc = recipients(p, "Bcc", MAX_CC)?;
    if to.is_empty() && cc.is_empty() && bcc.is_empty() {
        return Err(invalid(
            "MissingParameter.EmailsNecessary",
            "the parameter Destination is required (or Cc or Bcc)",
        ));
    }
    if let Some(b) = bcc
        .iter()
        .find(|b| to.iter().any(|t| t.eq_ignore_ascii_case(b)))
    {
        return Err(invalid(
            "InvalidParameterValue",
            format!("Bcc: {b} is also in Destination"),
        ));
    }
    Ok((to, cc, bcc))
}

/// Every recipient once (To, Cc, Bcc), in that order.
fn every_recipient_once(to: &[String], cc: &[String], bcc: &[String]) -> Vec<String> {
    let mut all: Vec<String> = Vec::new();
    let mut seen = BTreeSet::new();
    for r in to.iter().chain(cc).chain(bcc) {
        if seen.insert(r.to_ascii_lowercase()) {
            all.push(r.clone());
        }
    }
    all
}

/// What SendEmail asks besides its sender, recipients and content, each
/// checked.
struct Options {
    reply_to: Option<(String, String)>,
    header_from: Option<(String, String)>,
    /// The unsubscribe link's language ("" for none).
    unsubscribe: String,
    trigger_type: TriggerType,
    message_id: Option<String>,
}

fn options(p: &Params) -> Result<Options, ApiError> {
    let reply_to = match p.str_opt("ReplyToAddresses")? {
        Some(r) if !r.trim().is_empty() => Some(parse_mailbox("ReplyToAddresses", &r)?),
        _ => None,
    };
    let header_from = match p.str_opt("HeaderFrom")? {
        Some(h) if !h.trim().is_empty() => Some(parse_mailbox("HeaderFrom", &h)?),
        _ => None,
    };
    let unsubscribe = p.str_opt("Unsubscribe")?.unwrap_or_default();
    if !unsubscribe.is_empty() && !matches!(unsubscribe.parse::<u8>(), Ok(0..=12)) {
        return Err(invalid(
            "InvalidParameterValue",
            format!("Unsubscribe must be 0 to 12, not {unsubscribe:?}"),
        ));
    }
    let trigger_type = match p.int_opt("TriggerType")?.unwrap_or(0) {
        0 => TriggerType::Regular,
        1 => TriggerType::Trigger,
        n => {
            return Err(invalid(
                "InvalidParameterValue",
                format!("TriggerType must be 0 or 1, not {n}"),
            ));
        }
    };
    let message_id = match p.str_opt("SmtpMessageId")? {
        Some(m) if !m.trim().is_empty() => {
            let inner = m.trim().trim_start_matches('<').trim_end_matches('>');
            let ok = inner.contains('@')
                && inner.len() < 250
                && inner
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !b"<>\"\\".contains(&b));
            if !ok {
                return Err(invalid(
                    "InvalidParameterValue",
                    format!("SmtpMessageId {m:?} is not a message id like <id@domain>"),
                ));
            }
            Some(inner.to_string())
        }
        _ => None,
    };
    Ok(Options {
        reply_to,
        header_from,
        unsubscribe,
        trigger_type,
        message_id,
    })
}

pub async fn send_email(c: Call<'_>) -> Result<Value, ApiError> {
    c.params.only(&[
        "FromEmailAddress",
        "Subject",
        "Destination",
        "ReplyToAddresses",
        "Cc",
        "Bcc",
        "Template",
        "Simple",
        "Attachments",
        "Unsubscribe",
        "TriggerType",
        "SmtpMessageId",
        "SmtpHeaders",
        "HeaderFrom",
    ])?;
    let (from_name, from) = parse_mailbox("FromEmailAddress", &c.params.str("FromEmailAddress")?)?;
    let subject = c.params.str("Subject")?;
    let (to, cc, bcc) = destinations(&c.params)?;
    let Options {
        reply_to,
        header_from,
        unsubscribe,
        trigger_type,
        message_id,
    } = options(&c.params)?;
    let headers = extra_headers(&c.params)?;
    let files = attachments(&c.params, c.ses.settings.smtp.max_message_size)?;
    let sender = sender_address(&c, "FromEmailAddress", &from).await?;
    if let Some((_, h)) = &header_from {
        check_domain(&c, "HeaderFrom", h).await?;
    }
    let (subject, html, text, template_id) = content(&c, &subject).await?;
    // Without a name in the request, the address's own display name.
    let from_name = if from_name.is_empty() {
        sender.sender_name
    } else {
        from_name
    };

    let id = uuid::Uuid::now_v7().simple().to_string();
    let hostname = &c.ses.settings.server.hostname;
    let (display_name, display_addr) = header_from
        .clone()
        .unwrap_or((from_name.clone(), from.clone()));
    let all = every_recipient_once(&to, &cc, &bcc);
    // Tokens name the recipient only when there is one.
    let single = if all.len() == 1 { all[0].as_str() } else { "" };
    let lang = c
        .ses
        .unsubscribe_language(c.account, &from, &unsubscribe)
        .await?;
    let mut draft = Draft {
        from: (display_name, display_addr.clone()),
        to: to.clone(),
        cc: cc.clone(),
        reply_to,
        subject,
        html,
        text,
        headers,
        message_id: message_id.unwrap_or_else(|| format!("{id}@{hostname}")),
        attachments: files,
    };
    draft.decorate(
        c.ctx.tracker.as_deref(),
        &crate::net::domain_of(&display_addr),
        &id,
        single,
        lang,
    );
    let body = draft.build().map_err(ApiError::internal)?;
    let now = c.ses.store.now_ms();
    let trace = Trace {
        id: &id,
        helo: "api",
        peer: c.peer,
        hostname,
        protocol: "HTTP",
        recipient: None,
        now_ms: now,
    };
    let envelope = Envelope {
        account: c.account.to_string(),
        sender: from.clone(),
        recipients: all,
        trigger_type,
        require_tls: false,
        door: crate::intake::submission::Door::Api,
        origin: format!("api {} request {}", c.peer, c.request_id),
        template_id: template_id.map(|t| t.to_string()).unwrap_or_default(),
        task_id: String::new(),
    };
    let submission = Submission::new(&body, &trace, envelope);
    // Indexed alongside admission (one group commit on the embedded store);
    // an id indexed for a refused message finds no status and is skipped.
    let (admitted, indexed) = tokio::join!(
        crate::intake::admission::admit(c.ctx, submission),
        c.ses.index_message(c.account, &id, now)
    );
    match admitted {
        Ok(_) => {
            indexed?;
            Ok(json!({ "MessageId": id }))
        }
        Err(refusal) => Err(api_refusal(refusal)),
    }
}

/// The API error for a message admission refused.
pub fn api_refusal(refusal: Refusal) -> ApiError {
    let from_decision = |d: crate::policy::decisions::Decision, fallback: &'static str| {
        let message = d
            .message
            .clone()
            .or_else(|| (!d.reasons.is_empty()).then(|| d.reasons.join("; ")))
            .unwrap_or_else(|| "refused by the sending policy".into());
        ApiError::dynamic(d.code.unwrap_or_else(|| fallback.to_string()), message)
    };
    match refusal {
        Refusal::Content(d) => from_decision(d, "FailedOperation.SendEmailErr"),
        Refusal::Limits(d) => from_decision(d, "FailedOperation.SendEmailErr"),
        Refusal::AllDropped(dropped) => {
            let code = dropped
                .values()
                .next()
                .cloned()
                .unwrap_or_else(|| "FailedOperation.SendEmailErr".into());
            let list: Vec<String> = dropped
                .iter()
                .map(|(r, why)| format!("{r} ({why})"))
                .collect();
            ApiError::dynamic(
                code,
                format!("no recipient may receive this message: {}", list.join(", ")),
            )
        }
        Refusal::ForeignDomain { domain, account } => ApiError::new(
            "FailedOperation.NotAuthenticatedSender",
            format!("{domain} is not a verified sender domain of account {account}"),
        ),
        Refusal::Malformed(why) => ApiError::new(
            "InvalidParameterValue.EmailContentIsWrong",
            format!("the message cannot be sent: {why}"),
        ),
        Refusal::TooBig(max) => ApiError::new(
            "FailedOperation.EmailContentToolarge",
            format!("the message is larger than {max} bytes, attachments included"),
        ),
        Refusal::PolicyUnavailable => ApiError::new(
            "FailedOperation.ServiceNotAvailable",
            "the sending policy is temporarily unavailable; try again later",
        ),
        Refusal::Signing => ApiError::new("InternalError", "DKIM signing failed; try again later"),
        Refusal::Store => ApiError::new(
            "InternalError",
            "the message could not be stored; try again later",
        ),
        Refusal::NoSpace => ApiError::new(
            "ResourceInsufficient",
            "the server is short of disk space and takes no new messages for now; try again later",
        ),
    }
}
