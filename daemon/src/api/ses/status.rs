//! GetSendEmailStatus: one row per message and recipient, for one day of
//! the account's API sends, with the codes the SDK documents.

use super::{Call, secs};
use crate::api::tencent::ApiError;
use crate::store::{MessageStatus, RecipientState, RecipientStatus};
use serde_json::{Value, json};

/// SendStatus for a recipient the policy dropped, by reason code.
fn send_status(reason: Option<&str>) -> i64 {
    match reason {
        None => 0,
        Some("FailedOperation.FrequencyLimit") => 1006,
        Some("FailedOperation.EmailAddrInBlacklist") => 1007,
        Some("FailedOperation.RejectedByRecipients") => 1008,
        Some("FailedOperation.ExceedSendLimit") => 1010,
        Some("FailedOperation.ReceiverHasUnsubscribed") => 1013,
        Some("FailedOperation.TemporaryBlocked") => 3008,
        Some("FailedOperation.HighRejectionRate") => 3030,
        Some(_) => 1001,
    }
}

/// DeliverStatus: 0 queued, 1 delivered, 2 dropped, 3 refused by the
/// receiver, 8 deferred.
fn deliver_status(state: RecipientState) -> i64 {
    match state {
        RecipientState::Queued => 0,
        RecipientState::Delivered => 1,
        RecipientState::Dropped | RecipientState::Expired => 2,
        RecipientState::Bounced => 3,
        RecipientState::Deferred => 8,
    }
}

fn deliver_message(r: &RecipientStatus) -> String {
    if let Some(reason) = &r.reason {
        return reason.clone();
    }
    match r.attempts.last() {
        Some(a) => match (a.code, &a.enhanced_code) {
            (Some(code), Some(e)) => format!("{code} {e} {}", a.message),
            (Some(code), None) => format!("{code} {}", a.message),
            _ => a.message.clone(),
        },
        None => String::new(),
    }
}

fn row(m: &MessageStatus, r: &RecipientStatus) -> Value {
    let delivered_at = r
        .attempts
        .last()
        .map(|a| a.at_ms)
        .filter(|_| r.state.is_final())
        .unwrap_or(0);
    json!({
        "MessageId": m.meta.id,
        "ToEmailAddress": r.recipient,
        "FromEmailAddress": m.meta.sender,
        "SendStatus": send_status(r.reason.as_deref()),
        "DeliverStatus": deliver_status(r.state),
        "DeliverMessage": deliver_message(r),
        "RequestTime": secs(m.meta.received_at_ms),
        "DeliverTime": secs(delivered_at),
        "UserOpened": false,
        "UserClicked": false,
        "UserUnsubscribed": false,
        "UserComplainted": false,
        "UserComplained": false,
    })
}

pub async fn get_send_email_status(c: Call<'_>) -> Result<Value, ApiError> {
    c.params.only(&[
        "RequestDate",
        "Offset",
        "Limit",
        "MessageId",
        "ToEmailAddress",
    ])?;
    let date = c.params.str("RequestDate")?;
    if date.parse::<jiff::civil::Date>().is_err() || date.len() != 10 {
        return Err(ApiError::new(
            "InvalidParameterValue.WrongDate",
            format!("RequestDate {date:?} is not a date like 2026-11-22"),
        ));
    }
    if c.params.int_opt("Limit")?.is_none() {
        return Err(ApiError::new(
            "MissingParameter",
            "the parameter Limit is required",
        ));
    }
    let (offset, limit) = c.params.page(100, 100)?;
    let message_id = c.params.str_opt("MessageId")?.filter(|s| !s.is_empty());
    let to = c
        .params
        .str_opt("ToEmailAddress")?
        .filter(|s| !s.is_empty())
        .map(|s| s.to_ascii_lowercase());
    let ids = c.platform.messages_of_day(c.account, &date).await?;
    let mut rows = Vec::new();
    for id in ids.iter().rev() {
        if message_id.as_ref().is_some_and(|m| m != id) {
            continue;
        }
        let Some(status) = c.state.store.status(id).await? else {
            continue;
        };
        if status.meta.account != c.account {
            continue;
        }
        for r in &status.recipients {
            if to
                .as_ref()
                .is_some_and(|t| *t != r.recipient.to_ascii_lowercase())
            {
                continue;
            }
            rows.push(row(&status, r));
            if rows.len() >= offset + limit {
                break;
            }
        }
        if rows.len() >= offset + limit {
            break;
        }
    }
    Ok(json!({ "EmailStatusList": super::page_json(rows, (offset, limit)) }))
}
