//! Feedback: events, callbacks, tracking, unsubscribes, reports that come back.

mod events;
