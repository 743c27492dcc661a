//! Intake: where mail comes in. SMTP submission (`smtp`), the Tencent Cloud
//! SES API (`api`), the batch-task runner (`batch`); every message, whoever
//! hands it over, becomes a `Submission` and takes the one path of
//! `admission` (checks, policy, DKIM, the queue). `submission` makes a
//! message ready for it (the one path of all three); `compose` builds the
//! messages the API and batch tasks send. Owns nothing durable: it hands messages to the queue.

pub mod admission;
pub mod api;
pub mod batch;
pub mod compose;
pub mod smtp;
pub mod submission;
