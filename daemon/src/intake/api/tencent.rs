//! `POST /`: the Tencent Cloud SES API (version 2020-10-02) as its SDKs call
//! it. The action is in `X-TC-Action`, the request is signed with
//! TC3-HMAC-SHA256 by an account's SecretId/SecretKey, and every answer is
//! `{"Response": {..., "RequestId": "..."}}` with HTTP 200, errors as
//! `{"Response": {"Error": {"Code", "Message"}, "RequestId"}}`.
//!
//! Authentication and the envelope are here; the actions are in `ses`.

use super::body::BodyError;
use super::params::Params;
use super::ses::Call;
use super::tc3;
use crate::services::Services;
use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;

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
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub fn new(code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            code: code.to_string(),
            message: message.into(),
        }
    }

    /// A code decided at run time (e.g. by a policy script).
    pub fn dynamic(code: String, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
        }
    }

    /// A failure on our side: logged in full, answered without details.
    pub fn internal(e: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %e, "API request failed");
        ApiError::new(
            "InternalError",
            "an internal error occurred; the server log has the details",
        )
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
    State(ctx): State<Arc<Services>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let refused = |error: ApiError| {
        tracing::info!(%request_id, code = %error.code, message = %error.message, "API request refused");
        count(&headers, error.code.clone());
        envelope(&request_id, Err(error))
    };
    let max = ctx.settings.max_api_request_size();
    let pace = super::body::Pace {
        timeout: ctx.settings.http.body_timeout,
        grace: ctx.settings.http.body_rate_grace,
        min_rate: ctx.settings.http.min_body_rate,
    };
    // Who signs it and when, from the headers: a stranger's body is not
    // read (the signature itself covers the body's hash, checked below).
    // A body declared too large is refused first, for what it says.
    let signer = if super::body::declared_over(&headers, max) {
        None
    } else {
        match signer(&ctx, &headers).await {
            Ok(signer) => Some(signer),
            Err(e) => {
                super::body::refuse_unread(&headers, body).await;
                return refused(e);
            }
        }
    };
    let body = match super::body::read(&headers, body, max, pace).await {
        Ok(b) => b,
        // Answered as the SDKs read errors (HTTP 200, a JSON Error), not
        // as a bare 413 they report as a network failure.
        Err(e) => {
            let error = match e {
                BodyError::TooLarge(max) => ApiError::new(
                    "InvalidParameterValue",
                    format!(
                        "the request is larger than {max} bytes (a message may have {} bytes, attachments included, base64-encoded in the request)",
                        ctx.settings.smtp.max_message_size
                    ),
                ),
                BodyError::Unreadable(_) | BodyError::TooSlow { .. } => {
                    ApiError::new("InvalidParameter", e.to_string())
                }
            };
            return refused(error);
        }
    };
    let Some(signer) = signer else {
        return refused(ApiError::internal("a request over the limit was read"));
    };
    let mut once = Once::Read;
    let authenticated = authenticate(&ctx, signer, &uri, &headers, &body, &mut once).await;
    // The same signed request again: the first one's answer, and nothing
    // done twice.
    if let (Ok(_), Once::Answered(first_id, answer)) = (&authenticated, &once) {
        tracing::info!(%request_id, first = %first_id, "a signed request came again: answered as the first time");
        count(&headers, "ok".into());
        return envelope(first_id, Ok(answer.clone()));
    }
    let result = match authenticated {
        Ok((action, account)) => match Params::parse(&body) {
            Ok(params) => {
                let call = Call {
                    ctx: &ctx,
                    ses: &ctx.ses,
                    account: &account,
                    params,
                    request_id: &request_id,
                    peer: peer.ip(),
                };
                match super::ses::dispatch(&action, call).await {
                    Some(r) => r,
                    None => Err(ApiError::new(
                        "UnsupportedOperation",
                        format!("{action} is not implemented by this Kiln yet"),
                    )),
                }
            }
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    if let Err(e) = &result {
        tracing::info!(%request_id, code = %e.code, message = %e.message, "API request refused");
        // A refused request changed nothing: the same request may come
        // again (after the client fixed what was wrong).
        if let Once::First(key) = &once
            && let Err(e) = ctx.store.delete(key).await
        {
            tracing::warn!(error = %e, "could not forget a refused request's signature");
        }
    }
    if let (Once::First(key), Ok(answer)) = (&once, &result) {
        let kept = crate::store::encode(&json!({"request_id": request_id, "answer": answer}));
        if let Err(e) = ctx.store.put(key, &kept, Some(replay_window())).await {
            tracing::warn!(error = %e, "a request's answer was not kept for a repeat of it");
        }
    }
    let code = match &result {
        Ok(_) => "ok".to_string(),
        Err(e) => e.code.clone(),
    };
    count(&headers, code);
    envelope(&request_id, result)
}

/// Counts a request by action (one Kiln knows, else `unknown`) and code.
fn count(headers: &HeaderMap, code: String) {
    let action = header(headers, "x-tc-action").map_or("unknown", |a| super::ses::action_label(&a));
    if let Some(m) = crate::metrics::get() {
        m.api_requests
            .get_or_create(&crate::metrics::ApiRequest { action, code })
            .inc();
    }
}

/// Who signs a request, as its headers say, before its body is read.
struct Signer {
    action: String,
    auth: tc3::Authorization,
    timestamp: String,
    secret_key: String,
    account: String,
}

/// The request's action, signature and account, from its headers: the
/// version, the SecretId (known, enabled) and the timestamp (within the
/// allowed skew) are checked here.
async fn signer(ctx: &Services, headers: &HeaderMap) -> Result<Signer, ApiError> {
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
    tc3::check_timestamp(&auth, &timestamp, crate::clock::system_now_ms() / 1000)
        .map_err(|e| ApiError::new(e.code(), e.to_string()))?;
    let (secret_key, account) = match ctx.accounts().api_key(&auth.secret_id) {
        Some((key, account)) => (key, account.name.clone()),
        None => match ctx.ses.account_by_secret_id(&auth.secret_id).await? {
            Some(a) => {
                if a.disabled {
                    return Err(ApiError::new(
                        "AuthFailure.UnauthorizedOperation",
                        format!("account {} is disabled", a.name),
                    ));
                }
                (a.secret_key, a.name)
            }
            None => {
                return Err(ApiError::new(
                    "AuthFailure.SecretIdNotFound",
                    format!("SecretId {} does not exist", auth.secret_id),
                ));
            }
        },
    };
    Ok(Signer {
        action,
        auth,
        timestamp,
        secret_key,
        account,
    })
}

/// What the store knows of a signed request that changes something.
enum Once {
    /// A read (Get, List): it may repeat.
    Read,
    /// The first time: the key its answer is kept under.
    First(String),
    /// It came before: the first one's request id and answer.
    Answered(String, Value),
}

/// How long a signature's first answer is kept: a timestamp is accepted
/// MAX_SKEW_SECS either side of now.
fn replay_window() -> std::time::Duration {
    std::time::Duration::from_secs(2 * tc3::MAX_SKEW_SECS as u64 + 60)
}

/// The action and the account name of a correctly signed request.
/// `once` says whether it came before (see [`claim_signature`]).
async fn authenticate(
    ctx: &Services,
    signer: Signer,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    once: &mut Once,
) -> Result<(String, String), ApiError> {
    let Signer {
        action,
        auth,
        timestamp,
        secret_key,
        account,
    } = signer;
    {
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
            crate::clock::system_now_ms() / 1000,
            &secret_key,
            &request,
        )
        .map_err(|e| ApiError::new(e.code(), e.to_string()))?;
    }
    if !ACTIONS.contains(&action.as_str()) {
        return Err(ApiError::new(
            "InvalidAction",
            format!("the action {action:?} does not exist in SES {VERSION}"),
        ));
    }
    *once = claim_signature(ctx, &auth, &action).await?;
    Ok((action, account))
}

/// A signature does something once: the first request that carries it is
/// done and its answer kept (in the store, so every node knows it) while
/// its timestamp is accepted; the same request again gets that answer,
/// and nothing is done twice. TC3 signs to the second and has no nonce:
/// an application that sends the same request twice within a second (a
/// double click, a retry) sends the same bytes, and gets the first one's
/// MessageId back, as from an idempotent call. A copy that comes while the
/// first is still being done waits for its answer. A request refused for
/// another reason gives its signature back. Reads (Get, List) may repeat.
async fn claim_signature(
    ctx: &Services,
    auth: &tc3::Authorization,
    action: &str,
) -> Result<Once, ApiError> {
    /// How long a copy waits for the first request's answer.
    const WAIT_FOR_FIRST: std::time::Duration = std::time::Duration::from_secs(10);
    if action.starts_with("Get") || action.starts_with("List") {
        return Ok(Once::Read);
    }
    let key = format!("api-signature:{}:{}", auth.secret_id, auth.signature);
    if ctx
        .store
        .put_if_absent(&key, b"pending")
        .await
        .map_err(ApiError::internal)?
    {
        ctx.store
            .put(&key, b"pending", Some(replay_window()))
            .await
            .map_err(ApiError::internal)?;
        return Ok(Once::First(key));
    }
    let deadline = tokio::time::Instant::now() + WAIT_FOR_FIRST;
    loop {
        match ctx.store.get(&key).await.map_err(ApiError::internal)? {
            Some(kept) if kept != b"pending" => {
                let v: Value = serde_json::from_slice(&kept).map_err(ApiError::internal)?;
                let id = v["request_id"].as_str().unwrap_or_default().to_string();
                return Ok(Once::Answered(id, v["answer"].clone()));
            }
            // The first was refused meanwhile (its signature given back):
            // this one is the first now.
            None => return Box::pin(claim_signature(ctx, auth, action)).await,
            Some(_) if tokio::time::Instant::now() >= deadline => {
                return Err(ApiError::new(
                    "FailedOperation.ServiceNotAvailable",
                    "the same signed request is still being done; ask again shortly for its answer",
                ));
            }
            Some(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
}
