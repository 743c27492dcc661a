//! What an open or a click records: the first one per message and
//! recipient (time, address, user agent) and a total; the first one also
//! counts in the daily statistics and, for opens, in the reputation
//! counters. Every one is an event.

use crate::event::EventKind;
use crate::rewrite::tracking::Mark;
use crate::services::Services;
use crate::ses::stats::Metric;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FirstSeen {
    pub at_ms: i64,
    pub ip: String,
    pub user_agent: String,
}

fn first_key(kind: char, message_id: &str, recipient: &str) -> String {
    format!(
        "tracking:{kind}:{message_id}:{}",
        recipient.to_ascii_lowercase()
    )
}

fn total_key(kind: char, message_id: &str, recipient: &str) -> String {
    format!(
        "tracking:{kind}-total:{message_id}:{}",
        recipient.to_ascii_lowercase()
    )
}

/// Files the first `kind` ('o' open, 'c' click, 'u' unsubscribe, 's'
/// complaint) of a message for a recipient, kept as long as the message's
/// status; true when this was the first.
pub async fn mark_first(
    ctx: &Services,
    kind: char,
    message_id: &str,
    recipient: &str,
    ip: &str,
    user_agent: &str,
) -> crate::store::Result<bool> {
    let store = &ctx.ses.store;
    let key = first_key(kind, message_id, recipient);
    let value = crate::store::encode(&FirstSeen {
        at_ms: ctx.store.now_ms(),
        ip: ip.to_string(),
        user_agent: user_agent.to_string(),
    });
    let first = store.put_if_absent(&key, &value).await?;
    if first {
        store
            .put(&key, &value, Some(ctx.settings.queue.status_retention))
            .await?;
    }
    Ok(first)
}

/// From now on `domain` may not send to `recipient` (`check_limits` drops
/// them with `FailedOperation.ReceiverHasUnsubscribed`).
pub async fn suppress(ctx: &Services, domain: &str, recipient: &str) -> crate::store::Result<()> {
    ctx.ses
        .store
        .set_add(
            &crate::policy::lua_host::ns(&format!("unsubscribed:{}", domain.to_ascii_lowercase())),
            &recipient.to_ascii_lowercase(),
            None,
        )
        .await
}

pub async fn record(ctx: &Services, m: &Mark, ip: IpAddr, user_agent: &str) {
    if let Err(e) = try_record(ctx, m, ip, user_agent).await {
        tracing::warn!(msg_id = %m.message_id, error = %e, "tracking event not recorded");
    }
}

async fn try_record(
    ctx: &Services,
    m: &Mark,
    ip: IpAddr,
    user_agent: &str,
) -> crate::store::Result<()> {
    let store = &ctx.ses.store;
    // Only messages Kiln still knows: a token outlives nothing it names.
    let Some(status) = store.status(&m.message_id).await? else {
        return Ok(());
    };
    let is_first = mark_first(
        ctx,
        m.kind,
        &m.message_id,
        &m.recipient,
        &ip.to_string(),
        user_agent,
    )
    .await?;
    store
        .incr(
            &total_key(m.kind, &m.message_id, &m.recipient),
            1,
            ctx.settings.queue.status_retention,
        )
        .await?;
    let sender = &status.meta.sender;
    let domain = crate::net::domain_of(sender).to_ascii_lowercase();
    let (kind, metric) = if m.kind == 'o' {
        (EventKind::Open, Metric::Open)
    } else {
        (EventKind::Click, Metric::Click)
    };
    let provider = if m.recipient.is_empty() {
        status
            .recipients
            .first()
            .map(|r| r.recipient.clone())
            .unwrap_or_default()
    } else {
        m.recipient.clone()
    };
    if is_first {
        ctx.stats.record(&domain, &provider, metric, 1);
        if m.kind == 'o' {
            ctx.outcomes.record(&domain, "open");
        }
    }
    let mut e = crate::event::Event::new(
        ctx.store.now_ms(),
        kind,
        &m.message_id,
        &m.recipient,
        sender,
        &status.meta.account,
    );
    e.link = m.url.clone();
    e.ip = ip.to_string();
    e.user_agent = user_agent.to_string();
    e.sent_at = status.meta.received_at_ms;
    ctx.feedback.emit(e).await;
    Ok(())
}

/// A recipient unsubscribes: from now on the message's sender domain may
/// not send to them (`check_limits` drops them with
/// `FailedOperation.ReceiverHasUnsubscribed`). Done before the answer, so
/// the page that says "unsubscribed" tells the truth. Returns the sender
/// domain, for the page.
pub async fn unsubscribe(
    ctx: &Services,
    m: &Mark,
    ip: IpAddr,
    user_agent: &str,
) -> crate::store::Result<Option<String>> {
    let store = &ctx.ses.store;
    let Some(status) = store.status(&m.message_id).await? else {
        return Ok(None);
    };
    let sender = &status.meta.sender;
    let domain = crate::net::domain_of(sender).to_ascii_lowercase();
    let recipient = m.recipient.to_ascii_lowercase();
    suppress(ctx, &domain, &recipient).await?;
    if mark_first(
        ctx,
        'u',
        &m.message_id,
        &m.recipient,
        &ip.to_string(),
        user_agent,
    )
    .await?
    {
        ctx.stats
            .record(&domain, &recipient, Metric::Unsubscribe, 1);
        let mut e = crate::event::Event::new(
            ctx.store.now_ms(),
            EventKind::Unsubscribe,
            &m.message_id,
            &m.recipient,
            sender,
            &status.meta.account,
        );
        e.ip = ip.to_string();
        e.user_agent = user_agent.to_string();
        e.sent_at = status.meta.received_at_ms;
        ctx.feedback.emit(e).await;
    }
    Ok(Some(domain))
}

/// What a recipient did with a message, for GetSendEmailStatus.
#[derive(Debug, Default, Clone, Copy)]
pub struct Flags {
    /// Opened / clicked: by this recipient, or, for a message to several,
    /// by anyone.
    pub opened: bool,
    pub clicked: bool,
    /// Through this message's link.
    pub unsubscribed: bool,
    /// A complaint report about this message.
    pub complained: bool,
}

/// All four flags in one read (one round trip on Redis).
pub async fn flags(
    store: &crate::store::Store,
    message_id: &str,
    recipient: &str,
) -> crate::store::Result<Flags> {
    use crate::store::{BatchOp, BatchValue};
    let got = store
        .batch(&[
            BatchOp::Get(first_key('o', message_id, recipient)),
            BatchOp::Get(first_key('o', message_id, "")),
            BatchOp::Get(first_key('c', message_id, recipient)),
            BatchOp::Get(first_key('c', message_id, "")),
            BatchOp::Get(first_key('u', message_id, recipient)),
            BatchOp::Get(first_key('s', message_id, recipient)),
        ])
        .await?;
    let some = |i: usize| matches!(got.get(i), Some(BatchValue::Bytes(Some(_))));
    Ok(Flags {
        opened: some(0) || some(1),
        clicked: some(2) || some(3),
        unsubscribed: some(4),
        complained: some(5),
    })
}
