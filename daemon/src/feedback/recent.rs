//! This node's recent refusals (a message refused at a door) and failures
//! (a recipient bounced, or deferred by its receiver), for the operator's
//! console: the last few, in memory.

use std::collections::VecDeque;
use std::sync::Mutex;

/// How many are kept.
const KEPT: usize = 50;

#[derive(Debug, Clone)]
pub struct Recent {
    pub at_ms: i64,
    /// refused, bounced, deferred
    pub kind: String,
    pub text: String,
}

static RECENT: Mutex<VecDeque<Recent>> = Mutex::new(VecDeque::new());

pub fn note(at_ms: i64, kind: &str, text: String) {
    let mut r = RECENT.lock().unwrap_or_else(|p| p.into_inner());
    if r.len() == KEPT {
        r.pop_front();
    }
    r.push_back(Recent {
        at_ms,
        kind: kind.to_string(),
        text: text.chars().take(300).collect(),
    });
}

/// Oldest first.
pub fn list() -> Vec<Recent> {
    RECENT
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .cloned()
        .collect()
}
