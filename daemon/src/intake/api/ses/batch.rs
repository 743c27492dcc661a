//! Recipient lists (CreateReceiver, CreateReceiverDetail,
//! CreateReceiverDetailWithData, ListReceivers, ListReceiverDetails,
//! DeleteReceiver) and batch tasks (BatchSendEmail, ListSendTasks).

use super::{Call, page_json};
use crate::intake::api::params::Params;
use crate::intake::api::tencent::ApiError;
use crate::ses::receivers::{MAX_PER_REQUEST, ReceiverError, UploadReport};
use crate::ses::tasks::{self, Task};
use serde_json::{Value, json};

impl From<ReceiverError> for ApiError {
    fn from(e: ReceiverError) -> Self {
        let code = match &e {
            ReceiverError::BadName => "InvalidParameterValue.ReceiverNameIllegal",
            ReceiverError::BadDesc => "InvalidParameterValue.ReceiverDescIllegal",
            ReceiverError::NameTaken(_) => "InvalidParameterValue.RepeatReceiverName",
            ReceiverError::NotFound(_) => "OperationDenied.ReceiverNotExist",
            ReceiverError::TooMany => "LimitExceeded.ReceiverDetailRequestLimit",
            ReceiverError::InUse(_) => "OperationDenied.ReceiverIsOperating",
            ReceiverError::Records(p) => return ApiError::internal(p),
        };
        ApiError::new(code, e.to_string())
    }
}

/// `2026-11-22 10:00:00` in the configured time zone → ms.
fn parse_time(c: &Call<'_>, field: &str, text: &str) -> Result<i64, ApiError> {
    jiff::civil::DateTime::strptime("%Y-%m-%d %H:%M:%S", text.trim())
        .ok()
        .and_then(|dt| dt.to_zoned(c.ses.time_zone.clone()).ok())
        .map(|z| z.timestamp().as_millisecond())
        .ok_or_else(|| {
            ApiError::new(
                "InvalidParameterValue",
                format!("{field} {text:?} is not a time like 2026-11-22 10:00:00"),
            )
        })
}

fn receiver_id(c: &Call<'_>) -> Result<u64, ApiError> {
    let id = c.params.int_opt("ReceiverId")?.ok_or_else(|| {
        ApiError::new(
            "MissingParameter.ReceiverIdNecessary",
            "the parameter ReceiverId is required",
        )
    })?;
    u64::try_from(id).map_err(|_| {
        ApiError::new(
            "OperationDenied.ReceiverNotExist",
            format!("recipient list {id} does not exist in this account"),
        )
    })
}

fn upload_json(r: UploadReport) -> Value {
    json!({
        "TotalCount": r.total,
        "ValidCount": r.valid,
        "TooLongCount": r.too_long,
        "EmptyEmailCount": r.empty,
        "RepeatCount": r.repeated,
    })
}

pub async fn create_receiver(c: Call<'_>) -> Result<Value, ApiError> {
    c.params.only(&["ReceiversName", "Desc"])?;
    let name = c.params.str("ReceiversName")?;
    let desc = c.params.str_opt("Desc")?.unwrap_or_default();
    let r = c.ses.create_receiver(c.account, &name, &desc).await?;
    Ok(json!({"ReceiverId": r.id}))
}

fn check_count(n: usize) -> Result<(), ApiError> {
    if n == 0 {
        return Err(ApiError::new(
            "MissingParameter.EmailsNecessary",
            "no recipients given",
        ));
    }
    if n > MAX_PER_REQUEST {
        return Err(ReceiverError::TooMany.into());
    }
    Ok(())
}

pub async fn create_receiver_detail(c: Call<'_>) -> Result<Value, ApiError> {
    c.params.only(&["ReceiverId", "Emails"])?;
    let id = receiver_id(&c)?;
    let emails = c.params.strings("Emails")?;
    check_count(emails.len())?;
    let items = emails.into_iter().map(|e| (e, String::new())).collect();
    let r = c.ses.add_receiver_details(c.account, id, items).await?;
    Ok(upload_json(r))
}

pub async fn create_receiver_detail_with_data(c: Call<'_>) -> Result<Value, ApiError> {
    c.params.only(&["ReceiverId", "Datas"])?;
    let id = receiver_id(&c)?;
    let datas = c.params.objects("Datas")?;
    check_count(datas.len())?;
    let mut items = Vec::with_capacity(datas.len());
    for d in datas {
        d.only(&["Email", "TemplateData"])?;
        let data = d.str_opt("TemplateData")?.unwrap_or_default();
        if !data.trim().is_empty()
            && !matches!(serde_json::from_str::<Value>(&data), Ok(Value::Object(_)))
        {
            return Err(ApiError::new(
                "InvalidParameterValue.TemplateDataError",
                "each Datas.TemplateData must be a JSON object",
            ));
        }
        items.push((d.str_opt("Email")?.unwrap_or_default(), data));
    }
    let r = c.ses.add_receiver_details(c.account, id, items).await?;
    Ok(upload_json(r))
}

pub async fn list_receivers(c: Call<'_>) -> Result<Value, ApiError> {
    c.params.only(&["Offset", "Limit", "Status", "KeyWord"])?;
    let range = c.params.page(100, 100)?;
    let status = c.params.int_opt("Status")?;
    let keyword = c.params.str_opt("KeyWord")?.unwrap_or_default();
    let mut rows = Vec::new();
    for r in c.ses.list_receivers(c.account).await? {
        if status.is_some_and(|s| s != i64::from(r.status)) || !r.name.contains(&keyword) {
            continue;
        }
        rows.push(json!({
            "ReceiverId": r.id,
            "ReceiversName": r.name,
            "Count": r.count,
            "Desc": r.desc,
            "ReceiversStatus": r.status,
            "CreateTime": c.ses.time_text(r.created_at_ms),
            "InvalidCount": r.invalid_count,
        }));
    }
    let total = rows.len();
    Ok(json!({"TotalCount": total, "Data": page_json(rows, range)}))
}

/// Reads the list a chunk at a time, keeping only the page asked for.
pub async fn list_receiver_details(c: Call<'_>) -> Result<Value, ApiError> {
    c.params.only(&[
        "ReceiverId",
        "Offset",
        "Limit",
        "Email",
        "CreateTimeBegin",
        "CreateTimeEnd",
        "Status",
    ])?;
    let id = receiver_id(&c)?;
    let (offset, limit) = c.params.page(100, 100)?;
    let r = c.ses.receiver(c.account, id).await?;
    let email = c
        .params
        .str_opt("Email")?
        .unwrap_or_default()
        .to_ascii_lowercase();
    let status = c.params.int_opt("Status")?;
    let begin = match c
        .params
        .str_opt("CreateTimeBegin")?
        .filter(|s| !s.is_empty())
    {
        Some(t) => Some(parse_time(&c, "CreateTimeBegin", &t)?),
        None => None,
    };
    let end = match c.params.str_opt("CreateTimeEnd")?.filter(|s| !s.is_empty()) {
        Some(t) => Some(parse_time(&c, "CreateTimeEnd", &t)?),
        None => None,
    };
    let mut matched = 0usize;
    let mut rows = Vec::new();
    for n in 0..r.chunks {
        for e in c.ses.receiver_chunk(id, n).await? {
            let keep = e.email.to_ascii_lowercase().contains(&email)
                && status.is_none_or(|s| s == i64::from(e.status))
                && begin.is_none_or(|b| e.created_at_ms >= b)
                && end.is_none_or(|x| e.created_at_ms <= x);
            if !keep {
                continue;
            }
            if matched >= offset && rows.len() < limit {
                rows.push(json!({
                    "Email": e.email,
                    "CreateTime": c.ses.time_text(e.created_at_ms),
                    "TemplateData": e.data,
                    "Reason": e.reason,
                    "Status": e.status,
                    "EmailId": e.id,
                }));
            }
            matched += 1;
        }
    }
    Ok(json!({
        "TotalCount": matched,
        "Data": rows,
        "ValidCount": r.count,
        "InvalidCount": r.invalid_count,
    }))
}

pub async fn delete_receiver(c: Call<'_>) -> Result<Value, ApiError> {
    c.params.only(&["ReceiverId"])?;
    let id = receiver_id(&c)?;
    c.ses.delete_receiver(c.account, id).await?;
    Ok(json!({}))
}

/// `field` (TimedParam, CycleParam), required for `task_type`: itself, its
/// BeginTime as given and when that is (not in the past).
fn begin(
    c: &Call<'_>,
    field: &str,
    task_type: i64,
    now: i64,
) -> Result<(Params, String, i64), ApiError> {
    let p = c.params.object_opt(field)?.ok_or_else(|| {
        ApiError::new(
            &format!("MissingParameter.{field}Necessary"),
            format!("the parameter {field} is required for TaskType {task_type}"),
        )
    })?;
    let text = p.str("BeginTime")?;
    let at = parse_time(c, &format!("{field}.BeginTime"), &text)?;
    if at < now {
        return Err(ApiError::new(
            "InvalidParameterValue.BeginTimeBeforeNow",
            format!("{field}.BeginTime is in the past"),
        ));
    }
    Ok((p, text, at))
}

/// When a task of `task_type` runs: its begin time as given, when that
/// is, its interval in hours and whether it ends after one cycle.
fn schedule(
    c: &Call<'_>,
    task_type: i64,
    now: i64,
) -> Result<(Option<String>, i64, Option<i64>, bool), ApiError> {
    Ok(match task_type {
        2 => {
            let (_, text, at) = begin(c, "TimedParam", 2, now)?;
            (Some(text), at, None, false)
        }
        3 => {
            let (p, text, at) = begin(c, "CycleParam", 3, now)?;
            let hours = p.int("IntervalTime")?;
            if hours < 1 {
                return Err(ApiError::new(
                    "InvalidParameterValue",
                    "CycleParam.IntervalTime must be at least 1 (hour)",
                ));
            }
            (
                Some(text),
                at,
                Some(hours),
                p.int_opt("TermCycle")?.unwrap_or(0) == 1,
            )
        }
        _ => (None, now, None, false),
    })
}

/// The task's template, approved, and its data (a JSON object).
async fn approved_template(
    c: &Call<'_>,
) -> Result<(crate::ses::templates::Template, String), ApiError> {
    let template = c.params.object_opt("Template")?.ok_or_else(|| {
        ApiError::new(
            "MissingParameter.SendParamNecessary",
            "the parameter Template is required",
        )
    })?;
    template.only(&["TemplateID", "TemplateData"])?;
    let template_id = u64::try_from(template.int("TemplateID")?).unwrap_or(0);
    let t = c.ses.template(c.account, template_id).await?;
    if t.status != crate::ses::templates::APPROVED {
        return Err(crate::ses::templates::TemplateError::NotApproved(t.id, t.status).into());
    }
    let template_data = template.str_opt("TemplateData")?.unwrap_or_default();
    if !template_data.trim().is_empty()
        && !matches!(
            serde_json::from_str::<Value>(&template_data),
            Ok(Value::Object(_))
        )
    {
        return Err(ApiError::new(
            "InvalidParameterValue.TemplateDataError",
            "Template.TemplateData must be a JSON object",
        ));
    }
    Ok((t, template_data))
}

pub async fn batch_send_email(c: Call<'_>) -> Result<Value, ApiError> {
    c.params.only(&[
        "FromEmailAddress",
        "ReceiverId",
        "Subject",
        "TaskType",
        "ReplyToAddresses",
        "Template",
        "Simple",
        "Attachments",
        "CycleParam",
        "TimedParam",
        "Unsubscribe",
        "ADLocation",
    ])?;
    let from = super::send::parse_mailbox("FromEmailAddress", &c.params.str("FromEmailAddress")?)?;
    let receiver = c.ses.receiver(c.account, receiver_id(&c)?).await?;
    let subject = c.params.str("Subject")?;
    let task_type = c.params.int("TaskType")?;
    if !(1..=3).contains(&task_type) {
        return Err(ApiError::new(
            "InvalidParameterValue",
            format!("TaskType must be 1 (now), 2 (timed) or 3 (cyclic), not {task_type}"),
        ));
    }
    if !c.params.objects("Attachments")?.is_empty() {
        return Err(ApiError::new(
            "FailedOperation.NoAttachPermission",
            "batch tasks do not take attachments",
        ));
    }
    if c.params.object_opt("Simple")?.is_some() {
        return Err(ApiError::new(
            "FailedOperation.WithOutPermission",
            "batch tasks send a Template",
        ));
    }
    let (t, template_data) = approved_template(&c).await?;
    let sender = super::send::sender_address(&c, "FromEmailAddress", &from.1).await?;
    let from = if from.0.is_empty() {
        (sender.sender_name, from.1)
    } else {
        from
    };
    let reply_to = match c.params.str_opt("ReplyToAddresses")? {
        Some(r) if !r.trim().is_empty() => {
            Some(super::send::parse_mailbox("ReplyToAddresses", &r)?)
        }
        _ => None,
    };
    let unsubscribe = c.params.str_opt("Unsubscribe")?.unwrap_or_default();
    if !unsubscribe.is_empty() && !matches!(unsubscribe.parse::<u8>(), Ok(0..=12)) {
        return Err(ApiError::new(
            "InvalidParameterValue",
            format!("Unsubscribe must be 0 to 12, not {unsubscribe:?}"),
        ));
    }
    let ad_location = c.params.int_opt("ADLocation")?.unwrap_or(0);
    if !(0..=2).contains(&ad_location) {
        return Err(ApiError::new(
            "InvalidParameterValue",
            format!("ADLocation must be 0, 1 or 2, not {ad_location}"),
        ));
    }
    let now = c.ses.store.now_ms();
    let (begin_time, begin_at, interval, term) = schedule(&c, task_type, now)?;
    let task = c
        .ses
        .create_task(Task {
            id: 0,
            account: c.account.to_string(),
            from,
            receiver_id: receiver.id,
            receiver_name: receiver.name,
            subject,
            template_id: t.id,
            template_data,
            reply_to,
            task_type: task_type as u8,
            status: tasks::WAITING,
            request_count: receiver.count,
            send_count: 0,
            processed: 0,
            created_at_ms: now,
            updated_at_ms: now,
            begin_time,
            begin_at_ms: begin_at,
            interval_hours: interval,
            term_cycle: term,
            next_run_at_ms: begin_at,
            cursor_chunk: 0,
            cursor_index: 0,
            err_msg: String::new(),
            unsubscribe,
            ad_location: ad_location as u8,
        })
        .await?;
    Ok(json!({"TaskId": task.id}))
}

pub async fn list_send_tasks(c: Call<'_>) -> Result<Value, ApiError> {
    c.params
        .only(&["Offset", "Limit", "Status", "ReceiverId", "TaskType"])?;
    let range = c.params.page(100, 100)?;
    let status = c.params.int_opt("Status")?;
    let receiver = c.params.int_opt("ReceiverId")?;
    let task_type = c.params.int_opt("TaskType")?;
    let mut rows = Vec::new();
    for t in c.ses.list_tasks(c.account).await? {
        if status.is_some_and(|s| s != i64::from(t.status))
            || receiver.is_some_and(|r| r != t.receiver_id as i64)
            || task_type.is_some_and(|x| x != i64::from(t.task_type))
        {
            continue;
        }
        let from = if t.from.0.is_empty() {
            t.from.1.clone()
        } else {
            format!("{} <{}>", t.from.0, t.from.1)
        };
        rows.push(json!({
            "TaskId": t.id,
            "FromEmailAddress": from,
            "ReceiverId": t.receiver_id,
            "TaskStatus": t.status,
            "TaskType": t.task_type,
            "RequestCount": t.request_count,
            "SendCount": t.send_count,
            "CacheCount": t.cache_count(),
            "CreateTime": c.ses.time_text(t.created_at_ms),
            "UpdateTime": c.ses.time_text(t.updated_at_ms),
            "Subject": t.subject,
            "Template": {"TemplateID": t.template_id, "TemplateData": t.template_data},
            "CycleParam": t.interval_hours.map(|h| json!({"BeginTime": t.begin_time, "IntervalTime": h, "TermCycle": u8::from(t.term_cycle)})),
            "TimedParam": (t.task_type == 2).then(|| json!({"BeginTime": t.begin_time})),
            "ErrMsg": t.err_msg,
            "ReceiversName": t.receiver_name,
        }));
    }
    let total = rows.len();
    Ok(json!({"TotalCount": total, "Data": page_json(rows, range)}))
}
