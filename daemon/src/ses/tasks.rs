//! Batch tasks, the records: one template sent to every address of a
//! recipient list, now (TaskType 1), at a set time (2) or every N hours
//! (3). The runner that sends them is intake's `batch`.

use super::{Records, RecordsError, account_key};
use serde::{Deserialize, Serialize};

/// TaskStatus.
pub const WAITING: u8 = 1;
pub const SENDING: u8 = 5;
pub const PAUSED: u8 = 6;
pub const FAILED: u8 = 7;
pub const DONE: u8 = 10;

/// The set of tasks a runner has yet to finish.
pub(crate) const ACTIVE: &str = "tasks-active";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Task {
    pub id: u64,
    pub account: String,
    /// (display name, address).
    pub from: (String, String),
    pub receiver_id: u64,
    pub receiver_name: String,
    pub subject: String,
    pub template_id: u64,
    /// Defaults for every recipient; a recipient's own data wins.
    pub template_data: String,
    pub reply_to: Option<(String, String)>,
    pub task_type: u8,
    pub status: u8,
    pub request_count: u64,
    pub send_count: u64,
    /// Recipients handled in this run (sent, dropped or refused).
    pub processed: u64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// As given: TimedParam.BeginTime / CycleParam.BeginTime.
    pub begin_time: Option<String>,
    pub begin_at_ms: i64,
    pub interval_hours: Option<i64>,
    pub term_cycle: bool,
    pub next_run_at_ms: i64,
    pub cursor_chunk: u32,
    pub cursor_index: usize,
    pub err_msg: String,
    pub unsubscribe: String,
    /// 0 none, 1 "AD" before the subject, 2 after.
    pub ad_location: u8,
}

impl Task {
    /// Recipients not handled yet in this run.
    pub fn cache_count(&self) -> u64 {
        match self.status {
            DONE | FAILED => 0,
            _ => self.request_count.saturating_sub(self.processed),
        }
    }
}

pub(crate) fn record_key(id: &str) -> String {
    format!("task:{id}")
}

fn index(account: &str) -> String {
    account_key(account, "tasks")
}

impl Records {
    pub async fn create_task(&self, mut task: Task) -> Result<Task, RecordsError> {
        loop {
            task.id = rand::random_range(100_000..2_000_000_000u64);
            if self
                .create(&record_key(&task.id.to_string()), &task)
                .await?
            {
                break;
            }
        }
        self.store
            .set_add(&index(&task.account), &task.id.to_string(), None)
            .await?;
        self.store
            .set_add(ACTIVE, &task.id.to_string(), None)
            .await?;
        Ok(task)
    }

    pub async fn list_tasks(&self, account: &str) -> Result<Vec<Task>, RecordsError> {
        let mut all: Vec<Task> = self.load_all(&index(account), record_key).await?;
        all.retain(|t| t.account == account);
        all.sort_by_key(|t| (std::cmp::Reverse(t.created_at_ms), t.id));
        Ok(all)
    }

    /// Whether a task that has not finished reads this list.
    pub async fn receiver_in_use(
        &self,
        account: &str,
        receiver: u64,
    ) -> Result<bool, RecordsError> {
        Ok(self
            .list_tasks(account)
            .await?
            .iter()
            .any(|t| t.receiver_id == receiver && !matches!(t.status, DONE | FAILED)))
    }

    pub(crate) async fn save_task(&self, t: &Task) -> Result<(), RecordsError> {
        self.save(&record_key(&t.id.to_string()), t).await
    }
}
