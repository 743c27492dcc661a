//! What egress makes of a reply: asks the policy whether it is a
//! throttling signal (`egress_signal`, acted on by shaping), then reports
//! the attempt to the queue, which classifies the refusal, decides what it
//! means, records it and tells feedback.

use super::Delivery;
use super::shaping::Shape;
use crate::net::domain_of;
use crate::policy::decisions::{Signal, SignalInfo};
use crate::policy::hooks;
use crate::queue::outcome::Verdict;
use crate::queue::report::Report;
use crate::queued::{Attempt, QueueEntry};

impl Delivery {
    /// Asks `egress_signal` about a refusal (`stage`: connect, mail, rcpt,
    /// data) and acts on a signal: the pair is suspended or slowed for
    /// every node. Answers the signal, if the reply was one.
    pub(super) async fn throttling_signal(
        &self,
        shape: &Shape,
        code: u16,
        enhanced: Option<&str>,
        text: &str,
        stage: &'static str,
    ) -> Option<Signal> {
        if code < 400 {
            return None;
        }
        let info = SignalInfo {
            code,
            enhanced_code: enhanced.unwrap_or_default().to_string(),
            text: text.to_string(),
            stage,
            provider: shape.provider.to_string(),
            source: shape.source.to_string(),
        };
        let signal = self
            .policy
            .call(hooks::EgressSignal, &info)
            .await
            .ok()
            .flatten()?;
        let reply = match enhanced {
            Some(x) => format!("{code} {x} {text}"),
            None => format!("{code} {text}"),
        };
        self.shaper.signal(shape, &signal, &reply, stage).await;
        Some(signal)
    }

    /// The envelope sender for one attempt: account mail leaves with a
    /// VERP address, on its sender domain's own return-path domain when
    /// that domain publishes one, else on the bounce domain (null senders
    /// and relayed mail keep theirs).
    pub(super) async fn return_path(&self, entry: &QueueEntry) -> String {
        match &self.verp {
            Some(v) if !entry.account.is_empty() && !entry.sender.is_empty() => {
                let sender_domain = domain_of(&entry.sender);
                let own = self
                    .return_paths
                    .domain_for(&sender_domain, || {
                        crate::ses::identities::return_path_domain(
                            &self.store,
                            &self.settings,
                            &sender_domain,
                        )
                    })
                    .await;
                v.address(&entry.msg_id, entry.rcpt_idx, own.as_deref())
            }
            _ => entry.sender.clone(),
        }
    }

    /// Reports an attempt to the queue, which decides what it means. A
    /// throttling signal that says "retry" makes a refusal temporary,
    /// whatever its code.
    pub(super) async fn settle(
        &self,
        entry: &QueueEntry,
        verdict: Verdict,
        attempt: Attempt,
        signal: Option<&Signal>,
        provider: Option<&str>,
    ) {
        self.queue
            .report(
                entry,
                Report::Attempt {
                    verdict,
                    attempt,
                    signal: signal.cloned(),
                    provider: provider.map(str::to_string),
                },
            )
            .await;
    }
}
