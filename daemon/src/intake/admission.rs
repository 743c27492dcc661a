//! Admission: what every message goes through between "a client handed it
//! over" and "it is durable in the queue", whoever the client is (an SMTP
//! session or an API call). The policy's `content_filter`, `check_limits`
//! and `select_egress` hooks, DKIM signing, then the queue. Callers turn a
//! [`Refusal`] into their own protocol's answer.

pub use crate::intake::submission::Submission;
use crate::intake::submission::{Door, TriggerType};
use crate::message::{decode_subject, first_values, header_block};
use crate::net::domain_of;
use crate::policy::Policy;
use crate::policy::decisions::{Action, Decision, Egress, MessageInfo, MessageView};
use crate::queued::{IntakeStep, NewMessage};
use crate::services::Services;
use crate::ses::stats::Metric;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug)]
pub enum Refusal {
    /// `content_filter` said no (reject, or defer for later).
    Content(Decision),
    /// `check_limits` refused the message.
    Limits(Decision),
    /// Every recipient was dropped: recipient → reason code.
    AllDropped(BTreeMap<String, String>),
    /// The From header or the envelope sender is on a domain the account
    /// may not send as (it would be signed with another tenant's key).
    ForeignDomain {
        domain: String,
        account: String,
    },
    /// The message could not be delivered as it is: lines too long, bare
    /// line ends, no single From header.
    Malformed(String),
    /// Larger than any message may be built
    /// ([`crate::config::Settings::max_built_message_size`]).
    TooBig(usize),
    /// A hook failed: the client should try again later.
    PolicyUnavailable,
    Signing,
    Store,
    /// The store's disk is below its reserve (`store.min_free_mb`).
    NoSpace,
}

#[derive(Debug)]
pub struct Admitted {
    pub id: String,
    pub queued: usize,
    /// Recipient → reason code, for those the policy dropped.
    pub dropped: BTreeMap<String, String>,
}

/// What the policy decided for a message it lets through.
#[derive(Debug)]
pub struct Verdict {
    /// Recipient index → reason code, for those the policy dropped.
    pub dropped: BTreeMap<usize, String>,
    pub ready_at_ms: i64,
    pub source_ip: Option<std::net::IpAddr>,
    /// The egress pool ("": the default).
    pub pool: String,
    /// The hooks' answers, for the message's story.
    pub story: Vec<IntakeStep>,
}

fn step(what: &str, text: String) -> IntakeStep {
    IntakeStep {
        what: what.to_string(),
        text,
    }
}

/// A hook's answer as the story tells it.
fn told(d: Option<&Decision>) -> String {
    let Some(d) = d else {
        return "no answer (go on)".into();
    };
    let action = match d.action {
        Action::Accept => "accept",
        Action::Send => "send",
        Action::Reject => "reject",
        Action::Defer => "defer",
    };
    if d.message.is_none() && d.reasons.is_empty() && d.retry_at.is_none() && d.drop.is_empty() {
        return action.to_string();
    }
    let mut parts = vec![action.to_string()];
    if let Some(m) = &d.message {
        parts.push(m.clone());
    }
    if !d.reasons.is_empty() {
        parts.push(d.reasons.join("; "));
    }
    if let Some(at) = d.retry_at {
        parts.push(format!("not before {}", crate::clock::format_ms(at)));
    }
    if !d.drop.is_empty() {
        parts.push(format!("{} recipient(s) dropped", d.drop.len()));
    }
    parts.join(": ")
}

/// The policy's part of admission: `content_filter`, `check_limits`,
/// `select_egress`. Public so that its cost can be measured on its own
/// (contrib/bench: kiln-policy-bench).
pub async fn apply_policy(policy: &Policy, s: &Submission) -> Result<Verdict, Refusal> {
    let policy = policy.current();
    if !(policy.has_hook(crate::policy::hooks::ContentFilter)
        || policy.has_hook(crate::policy::hooks::CheckLimits)
        || policy.has_hook(crate::policy::hooks::SelectEgress))
    {
        // No hook to ask: nothing to parse out of the message.
        return Ok(Verdict {
            dropped: BTreeMap::new(),
            ready_at_ms: s.now,
            source_ip: None,
            pool: String::new(),
            story: vec![step("policy", "no admission hook defined".into())],
        });
    }
    let block = header_block(&s.message);
    let [subject, scenario] = first_values(block, ["Subject", "X-Kiln-Scenario"]);
    let (subject, subject_valid_utf8) = decode_subject(subject);
    let info = MessageInfo {
        kind: "message",
        id: Cow::Borrowed(&s.id),
        account: Cow::Borrowed(&s.account),
        sender: Cow::Borrowed(&s.sender),
        sender_domain: Cow::Borrowed(&s.sender_domain),
        recipients: Cow::Borrowed(&s.recipients),
        size: s.message.len(),
        subject,
        subject_valid_utf8,
        trigger_type: s.trigger_type.as_str(),
        scenario: scenario
            .map(|v| String::from_utf8_lossy(&v).to_ascii_lowercase())
            .unwrap_or_default(),
        now: s.now,
        headers: MessageView {
            headers: Arc::from(block),
            // The body, for a content filter of messages only.
            message: policy
                .has_hook_for(crate::policy::hooks::ContentFilter, "message")
                .then(|| Arc::from(&s.message[..])),
            max_body: policy.max_body(),
        },
    };
    let mut story = Vec::new();
    match policy
        .call_for(crate::policy::hooks::ContentFilter, Some("message"), &info)
        .await
    {
        Ok(Some(d)) if d.is_reject() || d.is_defer() => return Err(Refusal::Content(d)),
        Ok(d) => story.push(step("content_filter", told(d.as_ref()))),
        Err(_) => return Err(Refusal::PolicyUnavailable),
    }
    let decision = match policy.call(crate::policy::hooks::CheckLimits, &info).await {
        Ok(Some(d)) => d,
        Ok(None) => Decision::default(),
        Err(_) => return Err(Refusal::PolicyUnavailable),
    };
    story.push(step("check_limits", told(Some(&decision))));
    // A batch task pauses rather than queue mail for tomorrow.
    if decision.is_reject() || (decision.is_defer() && s.trigger_type == TriggerType::Batch) {
        return Err(Refusal::Limits(decision));
    }
    let ready_at_ms = if decision.is_defer() {
        decision.retry_at.unwrap_or(s.now).max(s.now)
    } else {
        s.now
    };
    let mut dropped = BTreeMap::new();
    for (i, rcpt) in s.recipients.iter().enumerate() {
        if let Some(reason) = decision.drop.get(rcpt) {
            tracing::info!(msg_id = %s.id, recipient = %rcpt, %reason, "recipient dropped by policy");
            dropped.insert(i, reason.clone());
        }
    }
    if dropped.len() == s.recipients.len() {
        return Err(Refusal::AllDropped(
            dropped
                .into_iter()
                .filter_map(|(i, r)| Some((s.recipients.get(i)?.clone(), r)))
                .collect(),
        ));
    }
    let (source_ip, pool) = match policy.call(crate::policy::hooks::SelectEgress, &info).await {
        Ok(Some(Egress { pool, source_ip })) => match source_ip.map(|ip| ip.parse()) {
            Some(Ok(ip)) => (Some(ip), pool),
            Some(Err(_)) => {
                tracing::error!(msg_id = %s.id, "select_egress: source_ip is not an IP address");
                return Err(Refusal::PolicyUnavailable);
            }
            None => (None, pool),
        },
        Ok(None) => (None, String::new()),
        Err(_) => return Err(Refusal::PolicyUnavailable),
    };
    story.push(step(
        "select_egress",
        match (&source_ip, pool.as_str()) {
            (Some(ip), _) => format!("source address {ip}"),
            (None, "") => "the default pool".into(),
            (None, p) => format!("pool {p}"),
        },
    ));
    Ok(Verdict {
        dropped,
        ready_at_ms,
        source_ip,
        pool,
        story,
    })
}

/// What a next hop would refuse, and what would be signed for a domain the
/// account does not own: checked for every message, whoever sent it.
async fn check_message(ctx: &Services, s: &Submission) -> Result<(), Refusal> {
    // SMTP's own limit is enforced as the data is read.
    let max = ctx.settings.max_built_message_size();
    if s.message.len() > max {
        return Err(Refusal::TooBig(max));
    }
    crate::message::check_lines(&s.message).map_err(|e| Refusal::Malformed(e.to_string()))?;
    let authors = crate::message::author_domains(&s.message)
        .map_err(|e| Refusal::Malformed(e.to_string()))?;
    let envelope = (!s.sender.is_empty()).then(|| domain_of(&s.sender));
    let mut checked: Vec<&str> = Vec::with_capacity(authors.len() + 2);
    let domains = authors
        .iter()
        .map(String::as_str)
        .chain(envelope.as_deref())
        .chain(std::iter::once(s.sender_domain.as_str()));
    for domain in domains {
        if domain.is_empty() || checked.contains(&domain) {
            continue;
        }
        if !may_send_as(ctx, &s.account, domain).await? {
            tracing::warn!(
                msg_id = %s.id,
                origin = %s.origin,
                account = %s.account,
                %domain,
                "message refused: a sender domain the account may not use"
            );
            return Err(Refusal::ForeignDomain {
                domain: domain.to_string(),
                account: s.account.clone(),
            });
        }
        checked.push(domain);
    }
    Ok(())
}

/// Whether `account` ("" for a relay client) may send as `domain`.
///
/// - A config account: the domains on its list, its own verified sender
///   domains, and (without a list) any domain nobody owns.
/// - A relay client (the operator's own networks): the config accounts'
///   domains and domains nobody owns, never a store account's.
/// - A store account: its own verified sender domains.
async fn may_send_as(ctx: &Services, account: &str, domain: &str) -> Result<bool, Refusal> {
    let accounts = ctx.accounts();
    let configured = accounts.configured(account);
    if configured.is_some_and(|a| a.lists_domain(domain)) {
        return Ok(true);
    }
    if accounts.configured_owner(domain).is_some() {
        return Ok(account.is_empty());
    }
    let identity = ctx.ses.identity_of_domain(domain).await.map_err(|e| {
        tracing::error!(%domain, error = %e, "reading the sender domain's owner failed");
        Refusal::Store
    })?;
    Ok(match identity {
        Some(i) => !account.is_empty() && i.account == account && i.verified,
        None => account.is_empty() || configured.is_some_and(|a| !a.has_domain_list()),
    })
}

impl Refusal {
    /// Why, for the operator (names what the client is not told).
    pub fn reason(&self) -> String {
        let decision = |what: &str, d: &Decision| {
            let why = if d.reasons.is_empty() {
                d.message.clone().unwrap_or_default()
            } else {
                d.reasons.join("; ")
            };
            let code = d.code.as_deref().unwrap_or("");
            match (code.is_empty(), why.is_empty()) {
                (false, false) => format!("{what}: {code}: {why}"),
                (false, true) => format!("{what}: {code}"),
                (true, false) => format!("{what}: {why}"),
                (true, true) => what.to_string(),
            }
        };
        match self {
            Refusal::Content(d) if d.is_defer() => decision("deferred by the content filter", d),
            Refusal::Content(d) => decision("refused by the content filter", d),
            Refusal::Limits(d) => decision("over a limit", d),
            Refusal::AllDropped(dropped) => format!(
                "every recipient dropped ({})",
                dropped
                    .iter()
                    .map(|(r, why)| format!("{r}: {why}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Refusal::ForeignDomain { domain, account } => {
                format!("sender domain {domain} is not account {account:?}'s to send as")
            }
            Refusal::Malformed(why) => format!("malformed: {why}"),
            Refusal::TooBig(n) => format!("too big to build ({n} bytes)"),
            Refusal::PolicyUnavailable => "a policy hook failed (see the log)".into(),
            Refusal::Signing => "DKIM signing failed (see the log)".into(),
            Refusal::Store => "the store failed (see the log)".into(),
            Refusal::NoSpace => "the store's disk is below its reserve".into(),
        }
    }

    /// The reason as a metrics label.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Content(d) if d.is_defer() => "content_deferred",
            Refusal::Content(_) => "content",
            Refusal::Limits(_) => "limits",
            Refusal::AllDropped(_) => "all_recipients_dropped",
            Refusal::ForeignDomain { .. } => "foreign_domain",
            Refusal::Malformed(_) => "malformed",
            Refusal::TooBig(_) => "too_big",
            Refusal::PolicyUnavailable => "policy_unavailable",
            Refusal::Signing => "signing",
            Refusal::Store => "store",
            Refusal::NoSpace => "no_space",
        }
    }
}

/// The selectors and algorithms of DKIM-Signature headers, as `s=sel
/// a=alg` pairs.
fn selectors(headers: &str) -> String {
    let tag = |sig: &str, name: &str| {
        sig.split(';')
            .map(str::trim)
            .find_map(|t| t.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    headers
        .split("DKIM-Signature:")
        .filter(|s| !s.trim().is_empty())
        .map(|sig| format!("s={} a={}", tag(sig, "s="), tag(sig, "a=")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs the policy, signs, and makes the message durable. Ok means it is in
/// the queue (or every recipient has a final status).
pub async fn admit(ctx: &Services, s: Submission) -> Result<Admitted, Refusal> {
    let door = s.door;
    // What the operator's list of refusals names: the message, its sender
    // and where it came from.
    let who = format!(
        "{} from <{}> ({}{})",
        s.id,
        s.sender,
        s.origin,
        if s.account.is_empty() {
            String::new()
        } else {
            format!(", account {}", s.account)
        }
    );
    let admitted = admit_counted(ctx, s).await;
    match &admitted {
        Ok(a) => {
            if let Some(m) = crate::metrics::get() {
                let label = crate::metrics::Door {
                    door: door.as_str(),
                };
                m.accepted.get_or_create(&label).inc();
                m.recipients_queued
                    .get_or_create(&label)
                    .inc_by(a.queued as u64);
            }
        }
        Err(r) => {
            count_refused(door, r.label());
            note_refused(format!("{who}: {}", r.reason()));
        }
    }
    admitted
}

/// Counts a message refused at `door` (also by a door itself, before
/// admission: an SMTP DATA too big or with a bad line).
pub fn count_refused(door: Door, reason: &'static str) {
    if let Some(m) = crate::metrics::get() {
        m.refused
            .get_or_create(&crate::metrics::Refused {
                door: door.as_str(),
                reason,
            })
            .inc();
    }
}

/// Files a refusal in the operator's list of recent ones (the console).
pub fn note_refused(what: String) {
    crate::feedback::recent::note(crate::clock::system_now_ms(), "refused", what);
}

async fn admit_counted(ctx: &Services, s: Submission) -> Result<Admitted, Refusal> {
    check_message(ctx, &s).await?;
    let mut verdict = apply_policy(&ctx.policy, &s).await?;
    let mut story = vec![step("received", s.origin.clone())];
    story.append(&mut verdict.story);
    let mut message = s.message;
    if s.sender_domain.is_empty() {
        story.push(step("dkim", "not signed: no sender domain".into()));
    } else {
        let domain = &s.sender_domain;
        match ctx.signers.sign(domain, &message).await {
            Ok(None) => story.push(step("dkim", format!("not signed: {domain} has no key"))),
            Ok(Some(header)) => {
                story.push(step(
                    "dkim",
                    format!("signed for {domain} ({})", selectors(&header)),
                ));
                let mut signed = Vec::with_capacity(header.len() + message.len());
                signed.extend_from_slice(header.as_bytes());
                signed.extend_from_slice(&message);
                message = signed;
            }
            Err(e) => {
                tracing::error!(msg_id = %s.id, %domain, error = %e, "DKIM signing failed");
                return Err(Refusal::Signing);
            }
        }
    }
    let dropped: BTreeMap<String, String> = verdict
        .dropped
        .iter()
        .filter_map(|(i, r)| Some((s.recipients.get(*i)?.clone(), r.clone())))
        .collect();
    let msg = NewMessage {
        id: s.id.clone(),
        account: s.account,
        sender: s.sender.clone(),
        recipients: s.recipients,
        dropped: verdict.dropped,
        body: Arc::from(message),
        received_at_ms: s.now,
        ready_at_ms: verdict.ready_at_ms,
        require_tls: s.require_tls,
        source_ip: verdict.source_ip,
        pool: verdict.pool,
        template_id: s.template_id,
        task_id: s.task_id,
        story,
    };
    match ctx.queue.submit(&msg).await {
        Ok(()) => {
            let queued = msg.queued_count();
            ctx.outcomes
                .record_n(&s.sender_domain, "sent", queued as i64);
            let stats = &ctx.stats;
            for (i, r) in msg.recipients.iter().enumerate() {
                stats.record(&s.sender_domain, r, Metric::Request, 1);
                if !msg.dropped.contains_key(&i) {
                    stats.record(&s.sender_domain, r, Metric::Accepted, 1);
                }
            }
            tracing::info!(
                msg_id = %s.id,
                origin = %s.origin,
                sender = %s.sender,
                recipients = queued,
                size = msg.body.len(),
                "message accepted"
            );
            Ok(Admitted {
                id: s.id,
                queued,
                dropped,
            })
        }
        Err(e @ crate::store::StoreError::NoSpace { .. }) => {
            tracing::warn!(msg_id = %s.id, error = %e, "message refused: disk space low");
            Err(Refusal::NoSpace)
        }
        Err(e) => {
            tracing::error!(msg_id = %s.id, error = %e, "could not queue message");
            Err(Refusal::Store)
        }
    }
}
