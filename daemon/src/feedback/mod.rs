//! Feedback: what happens after an attempt, or after the recipient gets the
//! message. `listener` (what each outcome the queue records sets off: the
//! event, statistics, the reputation feed, metrics), `events` (what
//! happened, logged and filed for callbacks), `callbacks` (the POSTs to the
//! customers' receivers), `inbound_reports` (DSNs, handed to the queue, and
//! complaints that come back to the VERP address); the deliverability loop's
//! HTTP side: `endpoints` (pixel, link, unsubscribe page) and `engagement`
//! (what an open or click records); `trail` keeps each message's story
//! after it was queued, for `kiln explain`; `recent` the last refusals and
//! failures, for the console. The message side of the loop is `rewrite`,
//! below the stages.

pub mod callbacks;
pub mod endpoints;
pub mod engagement;
pub mod events;
pub mod inbound_reports;
pub mod listener;
pub mod recent;
pub mod trail;
