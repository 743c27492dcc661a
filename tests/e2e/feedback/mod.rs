//! Feedback: events, callbacks, tracking, unsubscribes, reports that come back.

pub mod events;
