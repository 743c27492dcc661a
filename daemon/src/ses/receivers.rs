//! Recipient lists for batch tasks. A list is stored in chunks of
//! [`CHUNK`] entries, so a task reads one chunk at a time and a list of any
//! length is never held in memory whole; a store set of its addresses keeps
//! each address in a list once.

use super::{Records, RecordsError, account_key};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

pub const CHUNK: usize = 500;
/// Addresses one CreateReceiverDetail call may add.
pub const MAX_PER_REQUEST: usize = 20_000;
/// TemplateData per recipient.
pub const MAX_DATA: usize = 800;

/// ReceiversStatus: 1 awaiting upload, 2 uploading, 3 uploaded.
pub const AWAITING: u8 = 1;
pub const UPLOADED: u8 = 3;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Receiver {
    pub id: u64,
    pub account: String,
    pub name: String,
    pub desc: String,
    pub created_at_ms: i64,
    pub count: u64,
    pub invalid_count: u64,
    pub chunks: u32,
    pub status: u8,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReceiverEntry {
    pub id: u64,
    pub email: String,
    #[serde(default)]
    pub data: String,
    pub created_at_ms: i64,
    /// 1 valid, 2 invalid.
    pub status: u8,
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ReceiverError {
    #[error("ReceiversName must be 1 to 200 characters on one line")]
    BadName,
    #[error("Desc must be at most 300 characters on one line")]
    BadDesc,
    #[error("a recipient list named {0:?} exists already")]
    NameTaken(String),
    #[error("recipient list {0} does not exist in this account")]
    NotFound(u64),
    #[error("at most {MAX_PER_REQUEST} recipients per request")]
    TooMany,
    #[error("recipient list {0} is used by a batch task that has not finished")]
    InUse(u64),
    #[error(transparent)]
    Records(#[from] RecordsError),
}

impl From<crate::store::StoreError> for ReceiverError {
    fn from(e: crate::store::StoreError) -> Self {
        ReceiverError::Records(e.into())
    }
}

/// What an upload did with each address.
#[derive(Debug, Default)]
pub struct UploadReport {
    pub total: usize,
    pub valid: usize,
    pub too_long: usize,
    pub empty: usize,
    pub repeated: usize,
}

fn record_key(id: &str) -> String {
    format!("receiver:{id}")
}

pub fn chunk_key(id: u64, n: u32) -> String {
    format!("receiver:{id}:chunk:{n}")
}

fn emails_set(id: u64) -> String {
    format!("receiver:{id}:emails")
}

fn index(account: &str) -> String {
    account_key(account, "receivers")
}

fn name_key(account: &str, name: &str) -> String {
    account_key(account, &format!("receiver-name:{name}"))
}

impl Records {
    pub async fn create_receiver(
        &self,
        account: &str,
        name: &str,
        desc: &str,
    ) -> Result<Receiver, ReceiverError> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 200 || name.contains(['\r', '\n']) {
            return Err(ReceiverError::BadName);
        }
        if desc.chars().count() > 300 || desc.contains(['\r', '\n']) {
            return Err(ReceiverError::BadDesc);
        }
        let id = loop {
            let id = rand::random_range(100_000..2_000_000_000u64);
            if self
                .store
                .get(&record_key(&id.to_string()))
                .await?
                .is_none()
            {
                break id;
            }
        };
        if !self
            .store
            .put_if_absent(&name_key(account, name), id.to_string().as_bytes())
            .await?
        {
            return Err(ReceiverError::NameTaken(name.to_string()));
        }
        let r = Receiver {
            id,
            account: account.to_string(),
            name: name.to_string(),
            desc: desc.to_string(),
            created_at_ms: self.store.now_ms(),
            count: 0,
            invalid_count: 0,
            chunks: 0,
            status: AWAITING,
        };
        self.save(&record_key(&id.to_string()), &r).await?;
        self.store
            .set_add(&index(account), &id.to_string(), None)
            .await?;
        Ok(r)
    }

    pub async fn receiver(&self, account: &str, id: u64) -> Result<Receiver, ReceiverError> {
        self.load::<Receiver>(&record_key(&id.to_string()))
            .await?
            .filter(|r| r.account == account)
            .ok_or(ReceiverError::NotFound(id))
    }

    pub async fn list_receivers(&self, account: &str) -> Result<Vec<Receiver>, RecordsError> {
        let mut all: Vec<Receiver> = self.load_all(&index(account), record_key).await?;
        all.retain(|r| r.account == account);
        all.sort_by_key(|r| (std::cmp::Reverse(r.created_at_ms), r.id));
        Ok(all)
    }

    pub async fn receiver_chunk(
        &self,
        id: u64,
        n: u32,
    ) -> Result<Vec<ReceiverEntry>, RecordsError> {
        Ok(self.load(&chunk_key(id, n)).await?.unwrap_or_default())
    }

    /// Adds (address, template data) pairs; invalid addresses are kept as
    /// invalid entries, repeats and empty ones are not kept.
    pub async fn add_receiver_details(
        &self,
        account: &str,
        id: u64,
        items: Vec<(String, String)>,
    ) -> Result<UploadReport, ReceiverError> {
        if items.len() > MAX_PER_REQUEST {
            return Err(ReceiverError::TooMany);
        }
        // One upload at a time on this node: they append to the same chunks.
        let _guard = self.uploads.lock().await;
        let mut r = self.receiver(account, id).await?;
        let mut report = UploadReport {
            total: items.len(),
            ..UploadReport::default()
        };
        let mut fresh = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (email, data) in items {
            let email = email.trim().to_string();
            if email.is_empty() {
                report.empty += 1;
                continue;
            }
            if email.len() > 254 {
                report.too_long += 1;
                continue;
            }
            if !seen.insert(email.to_ascii_lowercase()) {
                report.repeated += 1;
                continue;
            }
            fresh.push((email, data));
        }
        // Already in the list? One read each, all at once.
        let set = emails_set(id);
        let lowered: Vec<String> = fresh.iter().map(|(e, _)| e.to_ascii_lowercase()).collect();
        let known: Vec<bool> = futures::stream::iter(lowered)
            .map(|e| {
                let set = set.clone();
                let store = self.store.clone();
                async move { store.set_contains(&set, &e).await }
            })
            .buffered(64)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        let now = self.store.now_ms();
        let mut entries = Vec::new();
        for ((email, data), known) in fresh.into_iter().zip(known) {
            if known {
                report.repeated += 1;
                continue;
            }
            let (status, reason, email) = match super::addresses::normalize_address(&email) {
                Some(e) if data.len() <= MAX_DATA => (1, String::new(), e),
                Some(e) => (2, format!("TemplateData longer than {MAX_DATA} bytes"), e),
                None => (2, "not an email address".to_string(), email),
            };
            if status == 1 {
                report.valid += 1;
            }
            entries.push(ReceiverEntry {
                id: 0,
                email,
                data,
                created_at_ms: now,
                status,
                reason,
            });
        }
        let new_emails: Vec<String> = entries
            .iter()
            .map(|e| e.email.to_ascii_lowercase())
            .collect();
        // Fill the last chunk, then new ones.
        let mut n = r.chunks.saturating_sub(1);
        let mut chunk = if r.chunks == 0 {
            Vec::new()
        } else {
            self.receiver_chunk(id, n).await?
        };
        let mut next_id = r.count + r.invalid_count;
        for mut e in entries {
            if chunk.len() >= CHUNK {
                self.save(&chunk_key(id, n), &chunk).await?;
                n += 1;
                chunk = Vec::new();
            }
            next_id += 1;
            e.id = next_id;
            if e.status == 1 {
                r.count += 1;
            } else {
                r.invalid_count += 1;
            }
            chunk.push(e);
        }
        if !chunk.is_empty() {
            self.save(&chunk_key(id, n), &chunk).await?;
            r.chunks = n + 1;
        }
        // The addresses now in the list, written all at once (group commit).
        let results: Vec<_> = futures::stream::iter(new_emails)
            .map(|e| {
                let set = set.clone();
                let store = self.store.clone();
                async move { store.set_add(&set, &e, None).await }
            })
            .buffer_unordered(256)
            .collect()
            .await;
        for res in results {
            res?;
        }
        r.status = UPLOADED;
        self.save(&record_key(&id.to_string()), &r).await?;
        Ok(report)
    }

    pub async fn delete_receiver(&self, account: &str, id: u64) -> Result<(), ReceiverError> {
        let r = self.receiver(account, id).await?;
        if self.receiver_in_use(account, id).await? {
            return Err(ReceiverError::InUse(id));
        }
        for n in 0..r.chunks {
            self.store.delete(&chunk_key(id, n)).await?;
        }
        // The address set is dropped member by member.
        for e in self.store.set_members(&emails_set(id)).await? {
            self.store.set_remove(&emails_set(id), &e).await?;
        }
        self.store.delete(&name_key(account, &r.name)).await?;
        self.store.delete(&record_key(&id.to_string())).await?;
        self.store
            .set_remove(&index(account), &id.to_string())
            .await?;
        Ok(())
    }
}
