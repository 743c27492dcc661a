//! `POST /`: the Tencent Cloud SES API (version 2020-10-02) as its SDKs call
//! it. The action is in `X-TC-Action`, the request is signed with
//! TC3-HMAC-SHA256 by an account's SecretId/SecretKey, and every answer is
//! `{"Response": {..., "RequestId": "..."}}` with HTTP 200, errors as
//! `{"Response": {"Error": {"Code", "Message"}, "RequestId"}}`.
//!
//! So far: authentication and the envelope. The SES actions themselves are
//! not implemented yet and answer `UnsupportedOperation`.

use super::{ApiState, tc3};
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

pub const VERSION: &str = "2020-10-02";

/// Every action of the SES 2020-10-02 API (the SDK's `ses_client`).
pub const ACTIONS: &[&str] = &[
    "BatchSendEmail",
    "CreateAddressUnsubscribeConfig",
    "CreateCustomBlacklist",
    "CreateEmailAddress",
    "CreateEmailIdentity",
    "CreateEmailTemplate",
    "CreateReceiver",
    "CreateReceiverDetail",
    "CreateReceiverDetailWithData",
    "DeleteAddressUnsubscribeConfig",
    "DeleteBlackList",
    "DeleteCustomBlackList",
    "DeleteEmailAddress",
    "DeleteEmailIdentity",
    "DeleteEmailTemplate",
    "DeleteReceiver",
    "GetAbuseReport",
    "GetEmailIdentity",
    "GetEmailTemplate",
    "GetSendEmailStatus",
    "GetStatisticsReport",
    "ListAddressUnsubscribeConfig",
    "ListBlackEmailAddress",
    "ListCustomBlacklist",
    "ListEmailAddress",
    "ListEmailIdentities",
    "ListEmailTemplates",
    "ListReceiverDetails",
    "ListReceivers",
    "ListSendTasks",
    "SendEmail",
    "UpdateAddressUnsubscribeConfig",
    "UpdateCustomBlackList",
    "UpdateEmailIdentity",
    "UpdateEmailSmtpPassWord",
    "UpdateEmailTemplate",
];

/// An API error: its code (one the SDKs know) and a message naming what
/// is wrong.
#[derive(Debug)]
pub struct ApiError {
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    fn new(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
        }
    }
}

fn envelope(request_id: &str, result: Result<Value, ApiError>) -> Response {
    let mut body = match result {
        Ok(Value::Object(map)) => map,
        Ok(_) => serde_json::Map::new(),
        Err(e) => {
            let mut map = serde_json::Map::new();
            map.insert(
                "Error".into(),
                json!({"Code": e.code, "Message": e.message}),
            );
            map
        }
    };
    body.insert("RequestId".into(), Value::String(request_id.to_string()));
    Json(json!({ "Response": body })).into_response()
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

pub async fn handle(
    State(s): State<ApiState>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let result = authenticate_and_dispatch(&s, &uri, &headers, &body);
    if let Err(e) = &result {
        tracing::info!(%request_id, code = e.code, message = %e.message, "API request refused");
    }
    envelope(&request_id, result)
}

fn authenticate_and_dispatch(
    s: &ApiState,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Value, ApiError> {
    let action = header(headers, "x-tc-action")
        .ok_or_else(|| ApiError::new("MissingParameter", "the X-TC-Action header is missing"))?;
    let version = header(headers, "x-tc-version")
        .ok_or_else(|| ApiError::new("MissingParameter", "the X-TC-Version header is missing"))?;
    if version != VERSION {
        return Err(ApiError::new(
            "InvalidAction",
            format!("version {version:?} is not supported; use {VERSION}"),
        ));
    }
    let authorization = header(headers, "authorization").ok_or_else(|| {
        ApiError::new(
            "AuthFailure.SignatureFailure",
            "the Authorization header is missing",
        )
    })?;
    let auth = tc3::parse_authorization(&authorization)
        .map_err(|e| ApiError::new(e.code(), e.to_string()))?;
    let timestamp = header(headers, "x-tc-timestamp")
        .ok_or_else(|| ApiError::new("MissingParameter", "the X-TC-Timestamp header is missing"))?;
    let (secret_key, account) = s.smtp.accounts().api_key(&auth.secret_id).ok_or_else(|| {
        ApiError::new(
            "AuthFailure.SecretIdNotFound",
            format!("SecretId {} does not exist", auth.secret_id),
        )
    })?;
    let lookup = |name: &str| header(headers, name);
    let request = tc3::Request {
        method: "POST",
        path: uri.path(),
        query: uri.query().unwrap_or(""),
        header: &lookup,
        payload: body,
    };
    tc3::verify(
        &auth,
        &timestamp,
        crate::net::now_ms() / 1000,
        &secret_key,
        &request,
    )
    .map_err(|e| ApiError::new(e.code(), e.to_string()))?;
    if !ACTIONS.contains(&action.as_str()) {
        return Err(ApiError::new(
            "InvalidAction",
            format!("the action {action:?} does not exist in SES {VERSION}"),
        ));
    }
    Err(ApiError::new(
        "UnsupportedOperation",
        format!(
            "{action} is not implemented by this Kiln yet (account {} authenticated)",
            account.name
        ),
    ))
}
