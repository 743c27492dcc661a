//! Templates: subject-less HTML and text bodies with `{{name}}`
//! placeholders, reviewed by the policy's `content_filter` hook (approved,
//! pending or rejected, with every reason). Only approved templates send.

use super::{Records, RecordsError, account_key};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// TemplateStatus as the API reports it.
pub const APPROVED: u8 = 0;
pub const PENDING: u8 = 1;
pub const REJECTED: u8 = 2;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Template {
    pub id: u64,
    pub account: String,
    pub name: String,
    pub html: String,
    pub text: String,
    pub status: u8,
    #[serde(default)]
    pub reasons: Vec<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("template {0} does not exist in this account")]
    NotFound(u64),
    #[error("an account has at most {0} templates")]
    TooMany(usize),
    #[error("template {0} is not approved (status {1})")]
    NotApproved(u64, u8),
    #[error("the template needs a value for {{{{{0}}}}}, and TemplateData has none")]
    MissingVariable(String),
    #[error(transparent)]
    Records(#[from] RecordsError),
}

impl From<crate::store::StoreError> for TemplateError {
    fn from(e: crate::store::StoreError) -> Self {
        TemplateError::Records(e.into())
    }
}

fn record_key(id: &str) -> String {
    format!("template:{id}")
}

fn index(account: &str) -> String {
    account_key(account, "templates")
}

/// Placeholders `{{ name }}`: (start, end, name) for each.
fn placeholders(text: &str) -> Vec<(usize, usize, &str)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(open) = text[from..].find("{{").map(|i| i + from) {
        let Some(close) = text[open + 2..].find("}}").map(|i| i + open + 2) else {
            break;
        };
        let name = text[open + 2..close].trim();
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if valid {
            out.push((open, close + 2, name));
            from = close + 2;
        } else {
            from = open + 2;
        }
    }
    out
}

/// Every variable a text uses.
pub fn variables(text: &str) -> BTreeSet<String> {
    placeholders(text)
        .into_iter()
        .map(|(_, _, n)| n.to_string())
        .collect()
}

pub fn html_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Fills the placeholders from `data`; in HTML the values are escaped, so
/// data cannot inject markup.
pub fn render(
    text: &str,
    data: &serde_json::Map<String, serde_json::Value>,
    html: bool,
) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(text.len() + 64);
    let mut last = 0;
    for (start, end, name) in placeholders(text) {
        let value = match data.get(name) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Null) | None => {
                return Err(TemplateError::MissingVariable(name.to_string()));
            }
            Some(v) => v.to_string(),
        };
        out.push_str(&text[last..start]);
        if html {
            out.push_str(&html_escape(&value));
        } else {
            out.push_str(&value);
        }
        last = end;
    }
    out.push_str(&text[last..]);
    Ok(out)
}

impl Records {
    /// Reviews a template through `content_filter`: (status, reasons). A
    /// hook that fails leaves the template pending.
    async fn review(&self, account: &str, name: &str, html: &str, text: &str) -> (u8, Vec<String>) {
        let item = serde_json::json!({
            "kind": "template",
            "account": account,
            "type": "notification",
            "subject": name,
            "html": html,
            "text": text,
        });
        match self
            .policy
            .current()
            .call_for(crate::policy::hooks::ContentFilter, Some("template"), &item)
            .await
        {
            Ok(Some(d)) if d.is_reject() => {
                let mut reasons = d.reasons;
                if reasons.is_empty() {
                    reasons.extend(d.message.or(d.code));
                }
                (REJECTED, reasons)
            }
            Ok(Some(d)) if d.is_defer() => (PENDING, d.reasons),
            Ok(_) => (APPROVED, Vec::new()),
            Err(_) => (
                PENDING,
                vec!["the review could not run; update the template to review it again".into()],
            ),
        }
    }

    pub async fn create_template(
        &self,
        account: &str,
        name: &str,
        html: &str,
        text: &str,
    ) -> Result<Template, TemplateError> {
        let max = self.settings.platform.max_templates;
        if self.store.set_members(&index(account)).await?.len() >= max {
            return Err(TemplateError::TooMany(max));
        }
        let (status, reasons) = self.review(account, name, html, text).await;
        let now = self.store.now_ms();
        loop {
            let id = rand::random_range(100_000..2_000_000_000u64);
            let template = Template {
                id,
                account: account.to_string(),
                name: name.to_string(),
                html: html.to_string(),
                text: text.to_string(),
                status,
                reasons: reasons.clone(),
                created_at_ms: now,
                updated_at_ms: now,
            };
            if self.create(&record_key(&id.to_string()), &template).await? {
                self.store
                    .set_add(&index(account), &id.to_string(), None)
                    .await?;
                return Ok(template);
            }
        }
    }

    pub async fn template(&self, account: &str, id: u64) -> Result<Template, TemplateError> {
        self.load::<Template>(&record_key(&id.to_string()))
            .await?
            .filter(|t| t.account == account)
            .ok_or(TemplateError::NotFound(id))
    }

    pub async fn list_templates(&self, account: &str) -> Result<Vec<Template>, RecordsError> {
        let mut all: Vec<Template> = self.load_all(&index(account), record_key).await?;
        all.retain(|t| t.account == account);
        all.sort_by_key(|t| (std::cmp::Reverse(t.created_at_ms), t.id));
        Ok(all)
    }

    /// New content (or name) is reviewed again.
    pub async fn update_template(
        &self,
        account: &str,
        id: u64,
        name: &str,
        html: &str,
        text: &str,
    ) -> Result<Template, TemplateError> {
        let mut template = self.template(account, id).await?;
        let (status, reasons) = self.review(account, name, html, text).await;
        template.name = name.to_string();
        template.html = html.to_string();
        template.text = text.to_string();
        template.status = status;
        template.reasons = reasons;
        template.updated_at_ms = self.store.now_ms();
        self.save(&record_key(&id.to_string()), &template).await?;
        Ok(template)
    }

    pub async fn delete_template(&self, account: &str, id: u64) -> Result<(), TemplateError> {
        let template = self.template(account, id).await?;
        self.store.delete(&record_key(&id.to_string())).await?;
        self.store
            .set_remove(&index(account), &template.id.to_string())
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn data(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn renders_and_escapes() {
        let d = data(json!({"name": "<Ann & Bo>", "n": 3}));
        assert_eq!(
            render("Hi {{ name }}, {{n}} items {{", &d, true).unwrap(),
            "Hi &lt;Ann &amp; Bo&gt;, 3 items {{"
        );
        assert_eq!(render("Hi {{name}}", &d, false).unwrap(), "Hi <Ann & Bo>");
        assert!(matches!(
            render("{{missing}}", &d, false),
            Err(TemplateError::MissingVariable(v)) if v == "missing"
        ));
        assert_eq!(
            render("{{ not a var }}", &d, false).unwrap(),
            "{{ not a var }}"
        );
        assert_eq!(
            variables("{{a}} {{ b }} {{a}}")
                .into_iter()
                .collect::<Vec<_>>(),
            vec!["a".to_string(), "b".to_string()]
        );
    }
}
