//! What policy tests, here and in other rooms, start from: a real store
//! (embedded, or a Redis of its own) and a policy script written to a file.

use super::PolicySettings;
use super::decisions::{Decision, MessageInfo};
use super::lua_host::LuaHost;
use crate::store::Store;
use crate::store::embedded::EmbeddedStore;
use std::path::PathBuf;
use std::time::Duration;

pub(crate) struct Fixture {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) store: Store,
    _redis: Option<kiln_testkit::redis::RedisServer>,
}

fn plugins_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../plugins")
}

impl Fixture {
    pub(crate) fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::Embedded(
            EmbeddedStore::open(
                &dir.path().join("kiln.redb"),
                Duration::from_secs(3600),
                crate::clock::Clock::system(),
            )
            .expect("store"),
        );
        Fixture {
            dir,
            store,
            _redis: None,
        }
    }

    /// The same on a Redis store of its own.
    pub(crate) async fn redis() -> Fixture {
        let redis = kiln_testkit::redis::RedisServer::start();
        let url = format!("redis://127.0.0.1:{}/", redis.port);
        let store = crate::store::redis::RedisStore::connect(
            &url,
            "t",
            Duration::from_secs(3600),
            crate::clock::Clock::system(),
        )
        .await
        .expect("redis store");
        Fixture {
            dir: tempfile::tempdir().expect("tempdir"),
            store: Store::Redis(store),
            _redis: Some(redis),
        }
    }

    pub(crate) fn settings(&self, policy: &str) -> PolicySettings {
        let script = self.dir.path().join("policy.lua");
        std::fs::write(&script, policy).expect("write policy");
        PolicySettings {
            plugins_dir: plugins_dir(),
            script,
            time_zone: jiff::tz::TimeZone::UTC,
            states: 2,
            max_instructions: 2_000_000,
            max_memory_mb: 16,
            timeout: Duration::from_secs(2),
            max_input_kb: 4096,
            max_body_kb: 1024,
        }
    }

    pub(crate) fn host(&self, policy: &str) -> LuaHost {
        LuaHost::new(&self.settings(policy), self.store.clone()).expect("policy loads")
    }
}

pub(crate) fn message(
    recipients: &[&str],
    subject: &str,
    trigger: &'static str,
    now: i64,
) -> MessageInfo<'static> {
    MessageInfo {
        kind: "message",
        id: "m1".into(),
        account: "shop".into(),
        sender: "a@shop.test".into(),
        sender_domain: "shop.test".into(),
        recipients: recipients.iter().map(|r| r.to_string()).collect(),
        size: 2048,
        subject: subject.into(),
        subject_valid_utf8: true,
        trigger_type: trigger,
        scenario: String::new(),
        now,
        headers: super::decisions::MessageView::headers(
            b"Subject: hi\r\nX-Campaign: spring\r\n sale\r\nReceived: a\r\nReceived: b\r\n",
        ),
    }
}

pub(crate) async fn check_limits(host: &LuaHost, m: MessageInfo<'_>) -> Decision {
    host.call::<_, Decision>("check_limits", &m)
        .await
        .expect("check_limits")
        // nil: no objection, as admission reads it.
        .unwrap_or_else(|| Decision {
            action: super::decisions::Action::Send,
            ..Decision::default()
        })
}

/// 2026-11-22T10:00:00Z
pub(crate) const NOW: i64 = 1_795_341_600_000;
