//! CreateEmailAddress, ListEmailAddress, DeleteEmailAddress,
//! UpdateEmailSmtpPassWord.

use super::{Call, secs};
use crate::intake::api::tencent::ApiError;
use crate::ses::addresses::AddressError;
use serde_json::{Value, json};

impl From<AddressError> for ApiError {
    fn from(e: AddressError) -> Self {
        let code = match &e {
            AddressError::Invalid(_) => "InvalidParameterValue.IllegalEmailAddress",
            AddressError::BadName(_) => "InvalidParameterValue.IllegalSenderName",
            AddressError::NoDomain(_) => "InvalidParameterValue.NotExistDomain",
            AddressError::NotVerified(_) => "OperationDenied.DomainNotVerified",
            AddressError::Exists(_) => "InvalidParameterValue.RepeatEmailAddress",
            AddressError::TooMany(_) => "OperationDenied.ExceedSenderLimit",
            AddressError::NotFound(_) => "InvalidParameterValue.NoSuchSender",
            AddressError::WeakPassword => "InvalidParameterValue.InvalidSmtpPassWord",
            AddressError::SamePassword => "OperationDenied.RepeatPassWord",
            AddressError::Records(p) => return ApiError::internal(p),
        };
        ApiError::new(code, e.to_string())
    }
}

pub async fn create(c: Call<'_>) -> Result<Value, ApiError> {
    c.params.only(&["EmailAddress", "EmailSenderName"])?;
    let address = c.params.str("EmailAddress")?;
    let name = c.params.str_opt("EmailSenderName")?.unwrap_or_default();
    c.ses.create_address(c.account, &address, &name).await?;
    Ok(json!({}))
}

pub async fn list(c: Call<'_>) -> Result<Value, ApiError> {
    c.params.only(&[])?;
    let senders: Vec<Value> = c
        .ses
        .list_addresses(c.account)
        .await?
        .into_iter()
        .map(|a| {
            json!({
                "EmailAddress": a.address,
                "EmailSenderName": a.sender_name,
                "CreatedTimestamp": secs(a.created_at_ms),
                "SmtpPwdType": u8::from(a.smtp_password.is_some()),
            })
        })
        .collect();
    Ok(json!({ "EmailSenders": senders }))
}

pub async fn delete(c: Call<'_>) -> Result<Value, ApiError> {
    c.params.only(&["EmailAddress"])?;
    let address = c.params.str("EmailAddress")?;
    c.ses.delete_address(c.account, &address).await?;
    Ok(json!({}))
}

pub async fn set_password(c: Call<'_>) -> Result<Value, ApiError> {
    c.params.only(&["Password", "EmailAddress"])?;
    let password = c.params.str("Password")?;
    let address = c.params.str("EmailAddress")?;
    c.ses
        .set_smtp_password(c.account, &address, &password)
        .await?;
    Ok(json!({}))
}
