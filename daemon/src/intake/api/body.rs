//! The API request's body, read up to the request limit.
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

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the request is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the request body could not be read: {0}")]
    Unreadable(String),
}

/// The whole body, if it has at most `max` bytes.
pub async fn read(headers: &HeaderMap, body: Body, max: usize) -> Result<Bytes, BodyError> {
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
    let mut buf = BytesMut::with_capacity(declared.map_or(0, |n| n as usize));
    while let Some(chunk) = data.next().await {
        let chunk = chunk.map_err(|e| BodyError::Unreadable(e.to_string()))?;
        if buf.len() + chunk.len() > max {
            drain(&mut data, buf.len() + chunk.len()).await;
            return Err(BodyError::TooLarge(max));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
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
