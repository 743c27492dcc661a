//! Which sender domains have a return-path domain of their own (their
//! identity record says so), remembered a minute: the record changes when
//! GetEmailIdentity checks DNS again, and every attempt asks.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const FRESH: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct ReturnPaths {
    known: Mutex<HashMap<String, (Option<String>, Instant)>>,
}

impl ReturnPaths {
    /// `domain`'s return-path domain, from `look_up` when not known lately.
    pub async fn domain_for<F>(&self, domain: &str, look_up: impl FnOnce() -> F) -> Option<String>
    where
        F: Future<Output = Option<String>>,
    {
        if let Some((known, at)) = self
            .known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(domain)
            && at.elapsed() < FRESH
        {
            return known.clone();
        }
        let found = look_up().await;
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(domain.to_string(), (found.clone(), Instant::now()));
        found
    }
}
