//! GetSendEmailStatus: one row per message and recipient, for one day of
//! the account's API sends, with the codes the SDK documents.

use super::{Call, secs};
use crate::intake::api::tencent::ApiError;
use crate::queued::{MessageStatus, RecipientState, RecipientStatus};
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

fn row(m: &MessageStatus, r: &RecipientStatus, f: crate::feedback::engagement::Flags) -> Value {
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
        "UserOpened": f.opened,
        "UserClicked": f.clicked,
        "UserUnsubscribed": f.unsubscribed,
        "UserComplainted": f.complained,
        "UserComplained": f.complained,
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
    let ids = c.ses.messages_of_day(c.account, &date).await?;
    // Rows before the page are counted, not built.
    let (mut matched, mut rows) = (0usize, Vec::new());
    'messages: for id in ids.iter().rev() {
        if message_id.as_ref().is_some_and(|m| m != id) {
            continue;
        }
        let Some(status) = c.ctx.store.status(id).await? else {
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
            matched += 1;
            if matched <= offset {
                continue;
            }
            let flags =
                crate::feedback::engagement::flags(&c.ctx.store, &status.meta.id, &r.recipient)
                    .await?;
            rows.push(row(&status, r, flags));
            if rows.len() >= limit {
                break 'messages;
            }
        }
    }
    Ok(json!({ "EmailStatusList": rows }))
}

fn day_param(c: &Call<'_>, field: &str, code: &str) -> Result<jiff::civil::Date, ApiError> {
    let text = c.params.str(field)?;
    text.trim().parse().map_err(|_| {
        ApiError::new(
            code,
            format!("{field} {text:?} is not a date like 2026-11-22"),
        )
    })
}

/// Longest range GetStatisticsReport covers at once.
const MAX_REPORT_DAYS: i32 = 92;

fn volume(date: Option<&str>, counts: &[i64; 7]) -> Value {
    let mut v = json!({
        "RequestCount": counts[0],
        "AcceptedCount": counts[1],
        "DeliveredCount": counts[2],
        "BounceCount": counts[3],
        "OpenedCount": counts[4],
        "ClickedCount": counts[5],
        "UnsubscribeCount": counts[6],
    });
    if let (Some(d), Some(o)) = (date, v.as_object_mut()) {
        o.insert("SendDate".into(), json!(d));
    }
    v
}

/// Per day, over the account's sender domains (or one of them), for all
/// receiving mailbox providers (or one).
pub async fn get_statistics_report(c: Call<'_>) -> Result<Value, ApiError> {
    c.params
        .only(&["StartDate", "EndDate", "Domain", "ReceivingMailboxType"])?;
    let start = day_param(&c, "StartDate", "InvalidParameter.InvalidStartTimeFormat")?;
    let end = day_param(&c, "EndDate", "InvalidParameter.InvalidEndTimeFormat")?;
    let days = (end - start).get_days();
    if !(0..MAX_REPORT_DAYS).contains(&days) {
        return Err(ApiError::new(
            "InvalidParameterValue.WrongDate",
            format!("EndDate must be on or after StartDate, at most {MAX_REPORT_DAYS} days later"),
        ));
    }
    // The account's own domains only, each from when it became theirs: a
    // claim sees nothing, a domain's former owner's days are not shown.
    let mut owned = c.ses.owned_identities(c.account).await?;
    if let Some(d) = c.params.str_opt("Domain")?.filter(|d| !d.is_empty()) {
        let d = crate::ses::identities::normalize_domain(&d).unwrap_or(d);
        owned.retain(|i| i.domain == d);
        if owned.is_empty() {
            return Err(ApiError::new(
                "InvalidParameterValue.NotExistDomain",
                format!("the domain {d} is not a verified sender domain of this account"),
            ));
        }
    }
    let domains: Vec<(String, String)> = owned
        .into_iter()
        .map(|i| {
            let since = c.ses.day(i.owned_since_ms);
            (i.domain, since)
        })
        .collect();
    let provider = c
        .params
        .str_opt("ReceivingMailboxType")?
        .filter(|p| !p.is_empty());
    let mut daily = Vec::new();
    let mut overall = [0i64; 7];
    let mut day = start;
    loop {
        let text = day.to_string();
        let mut counts = [0i64; 7];
        for (d, _) in domains
            .iter()
            .filter(|(_, since)| since.as_str() <= text.as_str())
        {
            let got = c
                .ctx
                .stats
                .day_counts(d, &text, provider.as_deref())
                .await?;
            for (sum, n) in counts.iter_mut().zip(got) {
                *sum += n;
            }
        }
        for (sum, n) in overall.iter_mut().zip(counts) {
            *sum += n;
        }
        daily.push(volume(Some(&text), &counts));
        if day >= end {
            break;
        }
        day = day.tomorrow().map_err(ApiError::internal)?;
    }
    Ok(json!({"DailyVolumes": daily, "OverallVolume": volume(None, &overall)}))
}

/// `YYYY-MM-DD` or `YYYY-MM-DD HH:MM:SS` → its date.
fn date_of(c: &Call<'_>, field: &str, code: &str) -> Result<jiff::civil::Date, ApiError> {
    let text = c.params.str(field)?;
    let t = text.trim();
    t.get(..10)
        .filter(|_| t.len() == 10 || t.len() == 19)
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| {
            ApiError::new(
                code,
                format!("{field} {text:?} is not a date like 2026-11-22"),
            )
        })
}

/// Complaints about the account's mail, per day, with filters.
pub async fn get_abuse_report(c: Call<'_>) -> Result<Value, ApiError> {
    c.params.only(&[
        "StartTime",
        "EndTime",
        "Offset",
        "Limit",
        "FromDomain",
        "FromAddress",
        "Mta",
        "ToAddress",
        "TemplateId",
    ])?;
    let start = date_of(&c, "StartTime", "InvalidParameter.InvalidStartTimeFormat")?;
    let end = date_of(&c, "EndTime", "InvalidParameter.InvalidEndTimeFormat")?;
    if !(0..MAX_REPORT_DAYS).contains(&(end - start).get_days()) {
        return Err(ApiError::new(
            "InvalidParameterValue.WrongDate",
            format!("EndTime must be on or after StartTime, at most {MAX_REPORT_DAYS} days later"),
        ));
    }
    let range = c.params.page(1000, 1000)?;
    let filter = |field: &str| -> Result<Option<String>, ApiError> {
        Ok(c.params
            .str_opt(field)?
            .filter(|s| !s.is_empty())
            .map(|s| s.to_ascii_lowercase()))
    };
    let (from_domain, from_address, mta, to, template) = (
        filter("FromDomain")?,
        filter("FromAddress")?,
        filter("Mta")?,
        filter("ToAddress")?,
        filter("TemplateId")?,
    );
    let mut domains: Vec<(String, i64)> = c
        .ses
        .owned_identities(c.account)
        .await?
        .into_iter()
        .map(|i| (i.domain, i.owned_since_ms))
        .collect();
    if let Some(d) = &from_domain {
        domains.retain(|(x, _)| x == d);
    }
    let mut rows = Vec::new();
    let mut day = start;
    loop {
        for (d, since) in &domains {
            for r in c.ses.abuse_reports(d, &day.to_string()).await? {
                let keep = r.received_at_ms >= *since
                    && from_address
                        .as_ref()
                        .is_none_or(|f| *f == r.mail_from.to_ascii_lowercase())
                    && mta
                        .as_ref()
                        .is_none_or(|m| *m == r.mta.to_ascii_lowercase())
                    && to
                        .as_ref()
                        .is_none_or(|t| *t == r.rcpt_to.to_ascii_lowercase())
                    && template.as_ref().is_none_or(|t| *t == r.template_id);
                if keep {
                    rows.push(json!({
                        "DeliverTime": c.ses.time_text(r.delivered_at_ms),
                        "OriginalMailFrom": r.mail_from,
                        "OriginalRcptTo": r.rcpt_to,
                        "FromDomain": r.from_domain,
                        "ComplainTime": c.ses.time_text(r.complained_at_ms),
                        "Mta": r.mta,
                        "SourceIp": r.source_ip,
                        "InsertTime": c.ses.time_text(r.received_at_ms),
                        "TemplateId": r.template_id,
                        "BulkId": r.task_id,
                        "MessageId": r.message_id,
                        "AbuseTime": c.ses.time_text(r.complained_at_ms),
                        "Subject": r.subject,
                    }));
                }
            }
        }
        if day >= end {
            break;
        }
        day = day.tomorrow().map_err(ApiError::internal)?;
    }
    let total = rows.len();
    Ok(json!({"Data": super::page_json(rows, range), "TotalCount": total}))
}
