//! ListBlackEmailAddress, DeleteBlackList (the hard-bounce blocklist, as
//! far as the account's domains caused it), and the account's own
//! blocklist: CreateCustomBlacklist, ListCustomBlacklist,
//! UpdateCustomBlackList, DeleteCustomBlackList.

use super::{Call, page_json};
use crate::intake::api::tencent::ApiError;
use serde_json::{Value, json};

fn date(c: &Call<'_>, field: &str) -> Result<Option<jiff::civil::Date>, ApiError> {
    match c.params.str_opt(field)?.filter(|s| !s.trim().is_empty()) {
        None => Ok(None),
        Some(s) => s.trim().parse().map(Some).map_err(|_| {
            ApiError::new(
                "InvalidParameterValue.WrongDate",
                format!("{field} {s:?} is not a date like 2026-11-22"),
            )
        }),
    }
}

pub async fn list_black(c: Call<'_>) -> Result<Value, ApiError> {
    c.params.only(&[
        "StartDate",
        "EndDate",
        "Limit",
        "Offset",
        "EmailAddress",
        "TaskID",
    ])?;
    let (start, end) = (date(&c, "StartDate")?, date(&c, "EndDate")?);
    let range = c.params.page(100, 100)?;
    let wanted = c
        .params
        .str_opt("EmailAddress")?
        .filter(|s| !s.is_empty())
        .map(|s| s.to_ascii_lowercase());
    let mut rows = Vec::new();
    for b in c.ses.blocked_for_account(c.account).await? {
        if wanted.as_ref().is_some_and(|w| *w != b.address) {
            continue;
        }
        let day: Option<jiff::civil::Date> = c.ses.day(b.at_ms).parse().ok();
        if let (Some(s), Some(d)) = (start, day)
            && d < s
        {
            continue;
        }
        if let (Some(e), Some(d)) = (end, day)
            && d > e
        {
            continue;
        }
        rows.push(json!({
            "BounceTime": c.ses.time_text(b.at_ms),
            "EmailAddress": b.address,
            "IspDesc": b.reason,
        }));
    }
    let total = rows.len();
    Ok(json!({"BlackList": page_json(rows, range), "TotalCount": total}))
}

pub async fn delete_black(c: Call<'_>) -> Result<Value, ApiError> {
    c.params.only(&["EmailAddressList"])?;
    let list = c.params.strings("EmailAddressList")?;
    if list.is_empty() {
        return Err(ApiError::new(
            "MissingParameter",
            "the parameter EmailAddressList is required",
        ));
    }
    c.ses.unblock(c.account, &list).await?;
    Ok(json!({}))
}

fn expire_date(c: &Call<'_>) -> Result<Option<String>, ApiError> {
    Ok(date(c, "ExpireDate")?.map(|d| d.to_string()))
}

pub async fn create_custom(c: Call<'_>) -> Result<Value, ApiError> {
    c.params.only(&["Emails", "ExpireDate"])?;
    let emails = c.params.strings("Emails")?;
    if emails.is_empty() {
        return Err(ApiError::new(
            "MissingParameter.EmailsNecessary",
            "the parameter Emails is required",
        ));
    }
    let r = c
        .ses
        .add_custom_blocklist(c.account, &emails, expire_date(&c)?)
        .await?;
    Ok(json!({
        "TotalCount": r.total,
        "ValidCount": r.valid,
        "TooLongCount": r.too_long,
        "RepeatCount": r.repeated,
        "InvalidCount": r.invalid,
    }))
}

pub async fn list_custom(c: Call<'_>) -> Result<Value, ApiError> {
    c.params.only(&["Offset", "Limit", "Status", "Email"])?;
    let range = c.params.page(100, 100)?;
    let status = c.params.int_opt("Status")?.unwrap_or(2);
    let wanted = c
        .params
        .str_opt("Email")?
        .filter(|s| !s.is_empty())
        .map(|s| s.to_ascii_lowercase());
    let mut rows = Vec::new();
    for e in c.ses.list_custom_blocklist(c.account).await? {
        let active = i64::from(c.ses.custom_active(&e));
        if (status == 0 || status == 1) && active != status {
            continue;
        }
        if wanted.as_ref().is_some_and(|w| *w != e.email) {
            continue;
        }
        rows.push(json!({
            "Id": e.id,
            "Email": e.email,
            "CreateTime": c.ses.time_text(e.created_at_ms),
            "ExpireDate": e.expire_date.clone().unwrap_or_default(),
            "Status": active,
        }));
    }
    let total = rows.len();
    Ok(json!({"TotalCount": total, "Data": page_json(rows, range)}))
}

pub async fn update_custom(c: Call<'_>) -> Result<Value, ApiError> {
    c.params.only(&["Id", "Email", "ExpireDate"])?;
    let id = c.params.int("Id")?;
    let email = c.params.str("Email")?;
    let email = crate::ses::addresses::normalize_address(&email).ok_or_else(|| {
        ApiError::new(
            "InvalidParameterValue.IllegalEmailAddress",
            format!("Email {email:?} is not an email address"),
        )
    })?;
    let found = match u64::try_from(id) {
        Ok(id) => {
            c.ses
                .update_custom_blocklist(c.account, id, &email, expire_date(&c)?)
                .await?
        }
        Err(_) => false,
    };
    if !found {
        return Err(ApiError::new(
            "ResourceNotFound",
            format!("no blocklist entry {id} in this account"),
        ));
    }
    Ok(json!({}))
}

pub async fn delete_custom(c: Call<'_>) -> Result<Value, ApiError> {
    c.params.only(&["Emails"])?;
    let emails = c.params.strings("Emails")?;
    if emails.is_empty() {
        return Err(ApiError::new(
            "MissingParameter.EmailsNecessary",
            "the parameter Emails is required",
        ));
    }
    c.ses.delete_custom_blocklist(c.account, &emails).await?;
    Ok(json!({}))
}
