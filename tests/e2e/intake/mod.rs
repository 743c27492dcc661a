//! Intake: SMTP submission, the SES API, batch tasks.

mod api;
mod batch;
mod content;
mod https;
mod isolation;
mod smtp;
