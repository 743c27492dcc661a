//! The API request's body, read up to the request limit, at a pace: within
//! `http.body_timeout`, and after `http.body_rate_grace` at
//! `http.min_body_rate` bytes a second on average (a body trickled in a
//! byte at a time held its memory for minutes). Memory grows with what
//! arrived, never with what the client says it will send.
//!
//! A request over the limit is answered with an SES error, and the answer
//! must reach a client that is still sending: closing a connection with
//! unread data in it makes the kernel reset it, and the client then reports
//! a network failure instead of the error (curl saw only its `100
//! Continue`). So a client that waits for `100 Continue` is answered before
//! it sends anything, and the rest of any other oversized body is read and
//! thrown away, within bounds, before the answer goes out (nginx's lingering
//! close does the same after its 413).

use axum::body::{Body, Bytes};
use axum::http::HeaderMap;
use axum::http::header::{CONTENT_LENGTH, EXPECT};
use bytes::BytesMut;
use futures::StreamExt;
use std::time::Duration;

/// How much of an oversized body is read and discarded, at most.
const DRAIN_BYTES: usize = 64 << 20;
/// How long an oversized body is read and discarded, at most.
const DRAIN_TIME: Duration = Duration::from_secs(30);

/// Memory set aside for a body before any of it came: a client's
/// Content-Length is a claim, not a reason to allocate.
const FIRST_CAPACITY: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the request is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the request body could not be read: {0}")]
    Unreadable(String),
    #[error("the request body came too slowly ({received} bytes in {seconds} s)")]
    TooSlow { received: usize, seconds: u64 },
}

/// How fast a body must come (the `http` settings).
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub timeout: Duration,
    pub grace: Duration,
    pub min_rate: u64,
}

impl Pace {
    /// When more than `received` bytes must have come, counted from
    /// `started`.
    fn next_by(&self, started: tokio::time::Instant, received: usize) -> tokio::time::Instant {
        let owed = if self.min_rate == 0 {
            self.timeout
        } else {
            Duration::from_secs_f64(received as f64 / self.min_rate as f64)
        };
        started + owed.max(self.grace).min(self.timeout)
    }
}

/// The whole body, if it has at most `max` bytes and comes at `pace`.
pub async fn read(
    headers: &HeaderMap,
    body: Body,
    max: usize,
    pace: Pace,
) -> Result<Bytes, BodyError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let mut data = body.into_data_stream();
    if declared.is_some_and(|n| n > max as u64) {
        // Not polling the body keeps hyper from sending `100 Continue`.
        if !expects_continue(headers) {
            drain(&mut data, 0).await;
        }
        return Err(BodyError::TooLarge(max));
    }
    let mut buf = BytesMut::with_capacity(declared.map_or(0, |n| (n as usize).min(FIRST_CAPACITY)));
    let started = tokio::time::Instant::now();
    loop {
        let next = tokio::time::timeout_at(pace.next_by(started, buf.len()), data.next()).await;
        let chunk = match next {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(_) => {
                return Err(BodyError::TooSlow {
                    received: buf.len(),
                    seconds: started.elapsed().as_secs(),
                });
            }
        };
        let chunk = chunk.map_err(|e| BodyError::Unreadable(e.to_string()))?;
        if buf.len() + chunk.len() > max {
            drain(&mut data, buf.len() + chunk.len()).await;
            return Err(BodyError::TooLarge(max));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Whether the request says its body is larger than `max`.
pub fn declared_over(headers: &HeaderMap, max: usize) -> bool {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|n| n > max as u64)
}

/// A request refused from its headers: its body is not read, and the
/// answer still reaches a client that is sending it (see the top).
pub async fn refuse_unread(headers: &HeaderMap, body: Body) {
    let has_body = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.trim() != "0");
    if has_body && !expects_continue(headers) {
        drain(&mut body.into_data_stream(), 0).await;
    }
}

fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get(EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"))
}

/// Reads and discards the rest of a body, `read` bytes of which are in.
async fn drain(data: &mut axum::body::BodyDataStream, mut read: usize) {
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while read < DRAIN_BYTES {
            match data.next().await {
                Some(Ok(chunk)) => read += chunk.len(),
                _ => break,
            }
        }
    })
    .await;
}
