//! CreateEmailTemplate, GetEmailTemplate, ListEmailTemplates,
//! UpdateEmailTemplate, DeleteEmailTemplate. Content travels base64-encoded.

use super::{Call, page_json, secs};
use crate::intake::api::params::Params;
use crate::intake::api::tencent::ApiError;
use crate::ses::templates::TemplateError;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

impl From<TemplateError> for ApiError {
    fn from(e: TemplateError) -> Self {
        let code = match &e {
            TemplateError::NotFound(_) => "InvalidParameterValue.TemplateNotExist",
            TemplateError::TooMany(_) => "FailedOperation.ExceedTemplateLimit",
            TemplateError::NotApproved(..) => "OperationDenied.TemplateStatusError",
            TemplateError::MissingVariable(_) => "InvalidParameterValue.TemplateNotMatchData",
            TemplateError::Records(p) => return ApiError::internal(p),
        };
        ApiError::new(code, e.to_string())
    }
}

/// Largest decoded template body (HTML or text).
const MAX_CONTENT: usize = 1024 * 1024;

fn decode_part(p: &Params, field: &str) -> Result<String, ApiError> {
    let Some(encoded) = p.str_opt(field)? else {
        return Ok(String::new());
    };
    let bytes = B64.decode(encoded.trim()).map_err(|_| {
        ApiError::new(
            "InvalidParameterValue.TemplateContentIsWrong",
            format!("TemplateContent.{field} is not valid base64"),
        )
    })?;
    if bytes.len() > MAX_CONTENT {
        return Err(ApiError::new(
            "FailedOperation.TemplateContentToolarge",
            format!("TemplateContent.{field} is larger than {MAX_CONTENT} bytes"),
        ));
    }
    String::from_utf8(bytes).map_err(|_| {
        ApiError::new(
            "InvalidParameterValue.TemplateContentIsWrong",
            format!("TemplateContent.{field} is not UTF-8 text"),
        )
    })
}

/// (name, html, text) from TemplateName and TemplateContent.
fn content(c: &Call<'_>) -> Result<(String, String, String), ApiError> {
    let name = c.params.str_opt("TemplateName")?.unwrap_or_default();
    if name.trim().is_empty() {
        return Err(ApiError::new(
            "InvalidParameterValue.TemplateNameIsNULL",
            "the parameter TemplateName is required",
        ));
    }
    if name.chars().count() > 64 || name.contains(['\r', '\n']) {
        return Err(ApiError::new(
            "InvalidParameterValue.TemplateNameIllegal",
            "TemplateName must be at most 64 characters on one line",
        ));
    }
    let Some(content) = c.params.object_opt("TemplateContent")? else {
        return Err(ApiError::new(
            "InvalidParameterValue.TemplateContentIsNULL",
            "the parameter TemplateContent is required",
        ));
    };
    content.only(&["Html", "Text"])?;
    let html = decode_part(&content, "Html")?;
    let text = decode_part(&content, "Text")?;
    if html.trim().is_empty() && text.trim().is_empty() {
        return Err(ApiError::new(
            "InvalidParameterValue.TemplateContentIsNULL",
            "TemplateContent needs Html or Text",
        ));
    }
    Ok((name.trim().to_string(), html, text))
}

fn template_id(c: &Call<'_>) -> Result<u64, ApiError> {
    let id = c.params.int("TemplateID")?;
    u64::try_from(id).map_err(|_| {
        ApiError::new(
            "InvalidParameterValue.TemplateNotExist",
            format!("template {id} does not exist in this account"),
        )
    })
}

pub async fn create(c: Call<'_>) -> Result<Value, ApiError> {
    c.params.only(&["TemplateName", "TemplateContent"])?;
    let (name, html, text) = content(&c)?;
    let t = c
        .ses
        .create_template(c.account, &name, &html, &text)
        .await?;
    Ok(json!({ "TemplateID": t.id }))
}

pub async fn get(c: Call<'_>) -> Result<Value, ApiError> {
    c.params.only(&["TemplateID"])?;
    let t = c.ses.template(c.account, template_id(&c)?).await?;
    Ok(json!({
        "TemplateContent": {"Html": B64.encode(&t.html), "Text": B64.encode(&t.text)},
        "TemplateStatus": t.status,
        "TemplateName": t.name,
    }))
}

pub async fn list(c: Call<'_>) -> Result<Value, ApiError> {
    c.params.only(&["Limit", "Offset"])?;
    let range = c.params.page(100, 1000)?;
    let all = c.ses.list_templates(c.account).await?;
    let total = all.len();
    let items: Vec<Value> = all
        .into_iter()
        .map(|t| {
            json!({
                "CreatedTimestamp": secs(t.created_at_ms),
                "TemplateName": t.name,
                "TemplateStatus": t.status,
                "TemplateID": t.id,
                "ReviewReason": t.reasons.join("; "),
            })
        })
        .collect();
    Ok(json!({
        "TemplatesMetadata": page_json(items, range),
        "TotalCount": total,
    }))
}

pub async fn update(c: Call<'_>) -> Result<Value, ApiError> {
    c.params
        .only(&["TemplateContent", "TemplateID", "TemplateName"])?;
    let id = template_id(&c)?;
    let (name, html, text) = content(&c)?;
    c.ses
        .update_template(c.account, id, &name, &html, &text)
        .await?;
    Ok(json!({}))
}

pub async fn delete(c: Call<'_>) -> Result<Value, ApiError> {
    c.params.only(&["TemplateID"])?;
    c.ses.delete_template(c.account, template_id(&c)?).await?;
    Ok(json!({}))
}
