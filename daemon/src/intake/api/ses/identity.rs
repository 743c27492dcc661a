//! CreateEmailIdentity, GetEmailIdentity, ListEmailIdentities,
//! UpdateEmailIdentity, DeleteEmailIdentity.

use super::{Call, page_json};
use crate::intake::api::tencent::ApiError;
use crate::ses::identities::{DnsAttribute, Identity, IdentityError};
use serde_json::{Value, json};

impl From<IdentityError> for ApiError {
    fn from(e: IdentityError) -> Self {
        let code = match &e {
            IdentityError::InvalidDomain(_) => "InvalidParameterValue.InvalidEmailIdentity",
            IdentityError::OwnedByOther(_) => "InvalidParameterValue.CreatedByOther",
            IdentityError::Exists(_) => "InvalidParameterValue.RepeatCreation",
            IdentityError::TooMany(_) => "OperationDenied.ExceedDomainLimit",
            IdentityError::NotFound(_) | IdentityError::Dropped(..) => {
                "InvalidParameterValue.NotExistDomain"
            }
            IdentityError::DkimOption(_) => "InvalidParameterValue",
            IdentityError::HasAddresses(_) => "OperationDenied.SenderWithDomainIsNotEmpty",
            IdentityError::Records(p) => return ApiError::internal(p),
        };
        ApiError::new(code, e.to_string())
    }
}

fn attributes_json(attributes: &[DnsAttribute]) -> Value {
    attributes
        .iter()
        .map(|a| {
            json!({
                "Type": a.kind,
                "SendDomain": a.name,
                "ExpectedValue": a.expected,
                "CurrentValue": a.current,
                "Status": a.ok,
            })
        })
        .collect()
}

fn tags_json(identity: &Identity) -> Value {
    identity
        .tags
        .iter()
        .map(|(k, v)| json!({"TagKey": k, "TagValue": v}))
        .collect()
}

fn identity_json(identity: &Identity, attributes: &[DnsAttribute]) -> Value {
    json!({
        "IdentityType": "DOMAIN",
        "VerifiedForSendingStatus": identity.verified,
        "Attributes": attributes_json(attributes),
        "DKIMOption": identity.dkim_option,
        "TagList": tags_json(identity),
    })
}

pub async fn create(c: Call<'_>) -> Result<Value, ApiError> {
    c.params.only(&["EmailIdentity", "DKIMOption", "TagList"])?;
    let domain = c.params.str("EmailIdentity")?;
    let option = c.params.int_opt("DKIMOption")?.unwrap_or(0);
    let mut tags = Vec::new();
    for t in c.params.objects("TagList")? {
        tags.push((t.str("TagKey")?, t.str_opt("TagValue")?.unwrap_or_default()));
    }
    let (identity, attributes) = c
        .ses
        .create_identity(c.account, &domain, option, tags)
        .await?;
    c.ctx.signers.clear();
    Ok(identity_json(&identity, &attributes))
}

/// Looks the records up in DNS: what GetEmailIdentity shows is what DNS
/// holds now (and a domain that now passes becomes verified).
pub async fn get(c: Call<'_>) -> Result<Value, ApiError> {
    c.params.only(&["EmailIdentity"])?;
    let domain = c.params.str("EmailIdentity")?;
    let (identity, attributes) = c.ses.verify_identity(c.account, &domain, None).await?;
    Ok(identity_json(&identity, &attributes))
}

pub async fn update(c: Call<'_>) -> Result<Value, ApiError> {
    c.params.only(&["EmailIdentity", "NewAPI", "DKIMOption"])?;
    let domain = c.params.str("EmailIdentity")?;
    let option = c.params.int_opt("DKIMOption")?;
    let (identity, attributes) = c.ses.verify_identity(c.account, &domain, option).await?;
    c.ctx.signers.clear();
    let mut out = identity_json(&identity, &attributes);
    if let Some(o) = out.as_object_mut() {
        o.remove("TagList");
    }
    Ok(out)
}

pub async fn delete(c: Call<'_>) -> Result<Value, ApiError> {
    c.params.only(&["EmailIdentity"])?;
    let domain = c.params.str("EmailIdentity")?;
    c.ses.delete_identity(c.account, &domain).await?;
    c.ctx.signers.clear();
    Ok(json!({}))
}

pub async fn list(c: Call<'_>) -> Result<Value, ApiError> {
    c.params.only(&["TagList", "Limit", "Offset"])?;
    let (offset, limit) = c.params.page(100, 1000)?;
    let mut wanted = Vec::new();
    for t in c.params.objects("TagList")? {
        wanted.push((t.str("TagKey")?, t.str_opt("TagValue")?));
    }
    let mut identities = c.ses.list_identities(c.account).await?;
    identities.retain(|i| {
        wanted.iter().all(|(k, v)| {
            i.tags
                .iter()
                .any(|(tk, tv)| tk == k && v.as_ref().is_none_or(|v| v == tv))
        })
    });
    let total = identities.len();
    let mut out = Vec::new();
    let (mut max_level, mut max_quota) = (0, 0);
    for i in identities.iter() {
        // A state the policy cannot read shows as level 0, quota 0 here
        // (the API has no field for it); the console and `kiln domain
        // show` name the problem.
        let (level, quota) = c
            .ses
            .reputation(c.account, &i.domain)
            .await
            .unwrap_or((0, 0));
        max_level = max_level.max(level);
        max_quota = max_quota.max(quota);
        out.push(json!({
            "IdentityName": i.domain,
            "IdentityType": "DOMAIN",
            "SendingEnabled": i.verified,
            "CurrentReputationLevel": level,
            "DailyQuota": quota,
            "SendIp": [],
            "TagList": tags_json(i),
            "DKIMOption": i.dkim_option,
        }));
    }
    Ok(json!({
        "EmailIdentities": page_json(out, (offset, limit)),
        "MaxReputationLevel": max_level,
        "MaxDailyQuota": max_quota,
        "Total": total,
    }))
}
