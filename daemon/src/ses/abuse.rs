//! Complaint (abuse) reports against a sender domain, filed per domain and
//! day when a feedback report comes back, listed by GetAbuseReport.

use super::{Records, RecordsError};
use serde::{Deserialize, Serialize};
use std::time::Duration;

const RETENTION: Duration = Duration::from_secs(400 * 86400);

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AbuseReport {
    pub id: String,
    pub from_domain: String,
    pub mail_from: String,
    pub rcpt_to: String,
    /// The receiving mailbox provider (recipient domain).
    pub mta: String,
    pub source_ip: String,
    pub message_id: String,
    pub template_id: String,
    pub task_id: String,
    pub subject: String,
    pub delivered_at_ms: i64,
    pub complained_at_ms: i64,
    pub received_at_ms: i64,
}

fn record_key(id: &str) -> String {
    format!("abuse:{id}")
}

fn day_index(domain: &str, day: &str) -> String {
    format!("abuse:{domain}:{day}")
}

impl Records {
    pub async fn file_abuse_report(&self, mut r: AbuseReport) -> Result<(), RecordsError> {
        if r.id.is_empty() {
            r.id = uuid::Uuid::now_v7().simple().to_string();
        }
        let day = self.day(r.received_at_ms);
        self.store
            .put(
                &record_key(&r.id),
                &crate::store::encode(&r),
                Some(RETENTION),
            )
            .await?;
        self.store
            .set_add(&day_index(&r.from_domain, &day), &r.id, Some(RETENTION))
            .await?;
        Ok(())
    }

    /// How many reports a domain had on one day.
    pub async fn abuse_count(&self, domain: &str, day: &str) -> Result<usize, RecordsError> {
        Ok(self.store.set_members(&day_index(domain, day)).await?.len())
    }

    /// A domain's reports of one day, oldest first.
    pub async fn abuse_reports(
        &self,
        domain: &str,
        day: &str,
    ) -> Result<Vec<AbuseReport>, RecordsError> {
        let mut ids = self.store.set_members(&day_index(domain, day)).await?;
        ids.sort();
        let mut out = Vec::new();
        for id in ids {
            if let Some(r) = self.load(&record_key(&id)).await? {
                out.push(r);
            }
        }
        Ok(out)
    }
}
