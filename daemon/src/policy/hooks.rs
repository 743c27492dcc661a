//! Every hook a script may define, declared once: its name, what Kiln hands
//! it and what Kiln reads back. A caller names a hook by its type
//! (`policy.call(hooks::ClassifyBounce, &info)`), so it cannot name one
//! that does not exist nor pass or expect the wrong thing; the names
//! scripts use, their order (`HOOKS`) and the lookup by name all come from
//! the one list below.

use super::decisions::{
    BounceClass, ConnectInfo, Decision, Egress, Formatted, HookAnswer, HookArg, MessageInfo,
    Signal, SignalInfo, TransactionInfo, WarmupCap, WarmupQuery,
};
use serde_json::Value;

/// A hook: its name in scripts, its place in [`HOOKS`], its argument and
/// its answer.
pub trait Hook: Copy + Send + Sync + 'static {
    const NAME: &'static str;
    const INDEX: usize;
    type Arg<'a>: HookArg + Sync + ?Sized + 'a;
    type Answer: HookAnswer + Send;
}

macro_rules! hooks {
    ($($(#[$doc:meta])* $ty:ident = $name:literal ($arg:ty) -> $answer:ty;)*) => {
        #[allow(clippy::enum_variant_names)]
        #[derive(Clone, Copy)]
        enum Index { $($ty),* }

        $(
            $(#[$doc])*
            #[derive(Debug, Clone, Copy)]
            pub struct $ty;

            impl Hook for $ty {
                const NAME: &'static str = $name;
                const INDEX: usize = Index::$ty as usize;
                type Arg<'a> = $arg;
                type Answer = $answer;
            }
        )*

        /// Every hook's name, in declaration order.
        pub const HOOKS: &[&str] = &[$($name),*];

        /// A hook's place in [`HOOKS`] by its name (a script's function).
        pub fn hook_index(name: &str) -> Option<usize> {
            match name {
                $($name => Some(Index::$ty as usize),)*
                _ => None,
            }
        }
    };
}

hooks! {
    /// A client connects (SMTP): accept, defer or reject it.
    OnConnect = "on_connect" (ConnectInfo) -> Decision;
    /// MAIL FROM.
    OnMailFrom = "on_mail_from" (TransactionInfo) -> Decision;
    /// Each RCPT TO.
    OnRcptTo = "on_rcpt_to" (TransactionInfo) -> Decision;
    /// A message's content (`kind = "message"`, a `MessageInfo`) or a
    /// template's under review (`kind = "template"`, JSON).
    ContentFilter = "content_filter" (dyn HookArg + Sync + 'a) -> Decision;
    /// Quotas and rates: accept, defer to a time, reject, drop recipients.
    CheckLimits = "check_limits" (MessageInfo<'a>) -> Decision;
    /// Today's warm-up cap of a sending identity.
    WarmupLimit = "warmup_limit" (WarmupQuery) -> WarmupCap;
    /// A sender domain's reputation: outcomes to count (a
    /// `ReputationEvent`) and an operator's questions and changes (JSON
    /// with the same fields and what the change needs); answers the state.
    Reputation = "reputation" (dyn HookArg + Sync + 'a) -> Value;
    /// The egress pool and source address of a message.
    SelectEgress = "select_egress" (MessageInfo<'a>) -> Egress;
    /// What a refusal (an MX's reply or a returned DSN) says of the
    /// recipient.
    ClassifyBounce = "classify_bounce" (super::decisions::BounceInfo) -> BounceClass;
    /// The body and headers of an event's callback.
    CallbackFormat = "callback_format" (Value) -> Formatted;
    /// How mail leaves: sources, pools, providers and their limits.
    EgressPlan = "egress_plan" (Value) -> super::decisions::EgressPlan;
    /// Whether a refusal is a throttling signal, and what to do about it.
    EgressSignal = "egress_signal" (SignalInfo) -> Signal;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hook_is_found_by_its_name_at_its_place() {
        assert_eq!(HOOKS.len(), 12);
        for (i, name) in HOOKS.iter().enumerate() {
            assert_eq!(hook_index(name), Some(i), "{name}");
        }
        assert_eq!(hook_index("on_connnect"), None);
        assert_eq!(HOOKS[ClassifyBounce::INDEX], ClassifyBounce::NAME);
        assert_eq!(HOOKS[EgressSignal::INDEX], "egress_signal");
    }
}
