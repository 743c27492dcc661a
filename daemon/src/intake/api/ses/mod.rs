//! The SES actions, one module per resource. Each takes the caller's
//! account and its parameters and answers the action's response fields.

mod address;
mod batch;
mod blocklist;
mod identity;
mod send;
mod status;
mod template;
mod unsubscribe;

use super::params::Params;
use super::tencent::ApiError;
use crate::services::Services;
use crate::ses::{Records, RecordsError};
use serde_json::Value;

/// What an action runs with.
pub struct Call<'a> {
    pub ctx: &'a Services,
    pub ses: &'a Records,
    pub account: &'a str,
    pub params: Params,
    pub request_id: &'a str,
    pub peer: std::net::IpAddr,
}

/// Runs `action`; None when Kiln does not have it (yet).
/// The actions [`dispatch`] answers.
const ACTIONS: [&str; 36] = [
    "CreateEmailIdentity",
    "GetEmailIdentity",
    "ListEmailIdentities",
    "UpdateEmailIdentity",
    "DeleteEmailIdentity",
    "CreateEmailAddress",
    "ListEmailAddress",
    "DeleteEmailAddress",
    "UpdateEmailSmtpPassWord",
    "CreateEmailTemplate",
    "GetEmailTemplate",
    "ListEmailTemplates",
    "UpdateEmailTemplate",
    "DeleteEmailTemplate",
    "SendEmail",
    "GetSendEmailStatus",
    "GetStatisticsReport",
    "GetAbuseReport",
    "CreateReceiver",
    "CreateReceiverDetail",
    "CreateReceiverDetailWithData",
    "ListReceivers",
    "ListReceiverDetails",
    "DeleteReceiver",
    "BatchSendEmail",
    "ListSendTasks",
    "ListBlackEmailAddress",
    "DeleteBlackList",
    "CreateCustomBlacklist",
    "ListCustomBlacklist",
    "UpdateCustomBlackList",
    "DeleteCustomBlackList",
    "CreateAddressUnsubscribeConfig",
    "ListAddressUnsubscribeConfig",
    "UpdateAddressUnsubscribeConfig",
    "DeleteAddressUnsubscribeConfig",
];

/// An action's name as a metrics label: one of [`ACTIONS`], else
/// `unknown` (a client may send any name).
pub fn action_label(action: &str) -> &'static str {
    ACTIONS
        .iter()
        .find(|a| **a == action)
        .copied()
        .unwrap_or("unknown")
}

pub async fn dispatch(action: &str, call: Call<'_>) -> Option<Result<Value, ApiError>> {
    Some(match action {
        "CreateEmailIdentity" => identity::create(call).await,
        "GetEmailIdentity" => identity::get(call).await,
        "ListEmailIdentities" => identity::list(call).await,
        "UpdateEmailIdentity" => identity::update(call).await,
        "DeleteEmailIdentity" => identity::delete(call).await,
        "CreateEmailAddress" => address::create(call).await,
        "ListEmailAddress" => address::list(call).await,
        "DeleteEmailAddress" => address::delete(call).await,
        "UpdateEmailSmtpPassWord" => address::set_password(call).await,
        "CreateEmailTemplate" => template::create(call).await,
        "GetEmailTemplate" => template::get(call).await,
        "ListEmailTemplates" => template::list(call).await,
        "UpdateEmailTemplate" => template::update(call).await,
        "DeleteEmailTemplate" => template::delete(call).await,
        "SendEmail" => send::send_email(call).await,
        "GetSendEmailStatus" => status::get_send_email_status(call).await,
        "GetStatisticsReport" => status::get_statistics_report(call).await,
        "GetAbuseReport" => status::get_abuse_report(call).await,
        "CreateReceiver" => batch::create_receiver(call).await,
        "CreateReceiverDetail" => batch::create_receiver_detail(call).await,
        "CreateReceiverDetailWithData" => batch::create_receiver_detail_with_data(call).await,
        "ListReceivers" => batch::list_receivers(call).await,
        "ListReceiverDetails" => batch::list_receiver_details(call).await,
        "DeleteReceiver" => batch::delete_receiver(call).await,
        "BatchSendEmail" => batch::batch_send_email(call).await,
        "ListSendTasks" => batch::list_send_tasks(call).await,
        "ListBlackEmailAddress" => blocklist::list_black(call).await,
        "DeleteBlackList" => blocklist::delete_black(call).await,
        "CreateCustomBlacklist" => blocklist::create_custom(call).await,
        "ListCustomBlacklist" => blocklist::list_custom(call).await,
        "UpdateCustomBlackList" => blocklist::update_custom(call).await,
        "DeleteCustomBlackList" => blocklist::delete_custom(call).await,
        "CreateAddressUnsubscribeConfig" => unsubscribe::create(call).await,
        "ListAddressUnsubscribeConfig" => unsubscribe::list(call).await,
        "UpdateAddressUnsubscribeConfig" => unsubscribe::update(call).await,
        "DeleteAddressUnsubscribeConfig" => unsubscribe::delete(call).await,
        _ => return None,
    })
}

impl From<RecordsError> for ApiError {
    fn from(e: RecordsError) -> Self {
        ApiError::internal(e)
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError::internal(e)
    }
}

/// Milliseconds since the epoch as the API's Unix seconds.
fn secs(ms: i64) -> i64 {
    ms.div_euclid(1000)
}

/// One page of a JSON list.
fn page_json(items: Vec<Value>, range: (usize, usize)) -> Value {
    Value::Array(super::params::page(items, range))
}
