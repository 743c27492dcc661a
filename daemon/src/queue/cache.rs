//! Bodies of messages this node accepted, kept in memory until every
//! recipient is final, so the first delivery attempt reads no disk.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub struct BodyCache {
    inner: Mutex<Inner>,
    capacity: usize,
}

#[derive(Default)]
struct Inner {
    bodies: HashMap<String, (Arc<[u8]>, usize)>,
    bytes: usize,
}

impl BodyCache {
    pub fn new(capacity: usize) -> BodyCache {
        BodyCache {
            inner: Mutex::new(Inner::default()),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `body` for `recipients` final outcomes, if it fits.
    pub fn insert(&self, id: &str, body: Arc<[u8]>, recipients: usize) {
        let mut inner = self.lock();
        if inner.bytes + body.len() > self.capacity {
            return;
        }
        inner.bytes += body.len();
        if let Some((old, _)) = inner.bodies.insert(id.to_string(), (body, recipients)) {
            inner.bytes -= old.len();
        }
    }

    pub fn get(&self, id: &str) -> Option<Arc<[u8]>> {
        self.lock().bodies.get(id).map(|(b, _)| b.clone())
    }

    /// One recipient is final; the body goes when the last one is.
    pub fn recipient_done(&self, id: &str) {
        let mut inner = self.lock();
        let remove = match inner.bodies.get_mut(id) {
            Some((_, left)) => {
                *left = left.saturating_sub(1);
                *left == 0
            }
            None => false,
        };
        if remove {
            self.remove_locked(&mut inner, id);
        }
    }

    /// Drops the body (a retry may be hours away; the store has it).
    pub fn remove(&self, id: &str) {
        let mut inner = self.lock();
        self.remove_locked(&mut inner, id);
    }

    fn remove_locked(&self, inner: &mut Inner, id: &str) {
        if let Some((b, _)) = inner.bodies.remove(id) {
            inner.bytes -= b.len();
        }
    }

    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_body_until_last_recipient_and_respects_capacity() {
        let cache = BodyCache::new(10);
        cache.insert("a", Arc::from(&b"12345"[..]), 2);
        cache.insert("b", Arc::from(&b"123456"[..]), 1);
        assert!(cache.get("b").is_none(), "over capacity");
        cache.recipient_done("a");
        assert!(cache.get("a").is_some());
        cache.recipient_done("a");
        assert!(cache.get("a").is_none());
        assert_eq!(cache.bytes(), 0);
    }
}
