//! Feedback: what happens after an attempt, or after the recipient gets the
//! message. `events` (what happened, logged and filed for callbacks),
//! `callbacks` (the POSTs to the customers' receivers), `stats` (the daily
//! statistics), `outcomes` (the reputation hook's feed), `inbound_reports`
//! (DSNs and complaints that come back to the VERP address), `verp` (those
//! return paths); the deliverability loop in three sides: `rewrite` (the
//! message: tracking pixel and links, unsubscribe footer and headers),
//! `endpoints` (the HTTP side: pixel, link, unsubscribe page) and
//! `engagement` (what an open or click records); `trail` keeps each
//! message's story after it was queued, for `kiln explain`; `recent` the
//! last refusals and failures, for the console.

pub mod callbacks;
pub mod endpoints;
pub mod engagement;
pub mod events;
pub mod inbound_reports;
pub mod outcomes;
pub mod recent;
pub mod rewrite;
pub mod stats;
pub mod trail;
pub mod verp;
