//! CreateAddressUnsubscribeConfig, ListAddressUnsubscribeConfig,
//! UpdateAddressUnsubscribeConfig, DeleteAddressUnsubscribeConfig.

use super::{Call, page_json};
use crate::intake::api::tencent::ApiError;
use crate::ses::unsubscribe::UnsubscribeConfig;
use serde_json::{Value, json};

/// The setting in the request, for one of the account's sender addresses.
async fn config(c: &Call<'_>) -> Result<UnsubscribeConfig, ApiError> {
    let address = c.params.str("Address")?;
    let record = c.ses.address(c.account, &address).await?.ok_or_else(|| {
        ApiError::new(
            "InvalidParameterValue.NoSuchSender",
            format!("{address} is not a sender address of this account"),
        )
    })?;
    let config = c.params.str("UnsubscribeConfig")?;
    if !matches!(config.trim().parse::<u8>(), Ok(0..=12)) {
        return Err(ApiError::new(
            "InvalidParameterValue",
            format!("UnsubscribeConfig must be 0 to 12, not {config:?}"),
        ));
    }
    let status = c.params.int_opt("Status")?.unwrap_or(1);
    if !(0..=1).contains(&status) {
        return Err(ApiError::new(
            "InvalidParameterValue",
            format!("Status must be 0 or 1, not {status}"),
        ));
    }
    Ok(UnsubscribeConfig {
        address: record.address,
        config: config.trim().to_string(),
        status,
    })
}

pub async fn create(c: Call<'_>) -> Result<Value, ApiError> {
    c.params.only(&["Address", "UnsubscribeConfig", "Status"])?;
    let config = config(&c).await?;
    if !c.ses.create_unsubscribe_config(c.account, &config).await? {
        return Err(ApiError::new(
            "InvalidParameterValue.RepeatCreation",
            format!("{} already has an unsubscribe setting", config.address),
        ));
    }
    Ok(json!({}))
}

pub async fn list(c: Call<'_>) -> Result<Value, ApiError> {
    c.params.only(&["Offset", "Limit"])?;
    let range = c.params.page(100, 100)?;
    let rows: Vec<Value> = c
        .ses
        .list_unsubscribe_configs(c.account)
        .await?
        .into_iter()
        .map(|u| json!({"Address": u.address, "UnsubscribeConfig": u.config, "Status": u.status}))
        .collect();
    let total = rows.len();
    Ok(json!({"AddressUnsubscribeConfigList": page_json(rows, range), "Total": total}))
}

pub async fn update(c: Call<'_>) -> Result<Value, ApiError> {
    c.params.only(&["Address", "UnsubscribeConfig", "Status"])?;
    let config = config(&c).await?;
    if !c.ses.update_unsubscribe_config(c.account, &config).await? {
        return Err(ApiError::new(
            "ResourceNotFound",
            format!("{} has no unsubscribe setting", config.address),
        ));
    }
    Ok(json!({}))
}

pub async fn delete(c: Call<'_>) -> Result<Value, ApiError> {
    c.params.only(&["Address"])?;
    let address = c.params.str("Address")?;
    let address = crate::ses::addresses::normalize_address(&address).unwrap_or(address);
    if !c.ses.delete_unsubscribe_config(c.account, &address).await? {
        return Err(ApiError::new(
            "ResourceNotFound",
            format!("{address} has no unsubscribe setting"),
        ));
    }
    Ok(json!({}))
}
