//! Intake: SMTP submission, the SES API, batch tasks.

mod api;
mod batch;
mod content;
mod isolation;
mod smtp;
