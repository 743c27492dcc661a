//! The queue as the operator steers it (`kiln queue ...`): summaries and
//! pages of what is queued, and suspend, resume, bounce and retry-now for
//! a selection (`domain:`, `sender_domain:`, `provider:`, `account:`,
//! `task:`, `source:`).
//! Rules are kept by `queue::control` for every node; each action is
//! logged (target `kiln::ops`) with who asked.

use crate::queue::control::{Action, Field, Rule, Selector, parked_by};
use crate::queued::QueueEntry;
use crate::services::Services;
use crate::store::EntryState;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::Value;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

/// Entries read from the store at a time.
const PAGE: usize = 1000;
/// Entries `list` answers at most at once.
const LIST_MAX: usize = 1000;

pub fn routes() -> Router<Arc<Services>> {
    Router::new()
        .route("/admin/queue/summary", get(summary))
        .route("/admin/queue/list", get(list))
        .route("/admin/queue/controls", get(controls))
        // suspend, resume, bounce, retry-now
        .route("/admin/queue/{action}", post(control))
}

fn bad(message: impl Into<String>) -> Response {
    super::admin::error(StatusCode::BAD_REQUEST, "InvalidParameter", message)
}

fn store_error(e: impl std::fmt::Display) -> Response {
    super::admin::error(
        StatusCode::SERVICE_UNAVAILABLE,
        "StoreUnavailable",
        e.to_string(),
    )
}

/// Who asked: what the `kiln` command says (the user it runs as), and the
/// client's address.
pub(super) fn who(headers: &HeaderMap, peer: SocketAddr) -> String {
    let named = headers
        .get("x-kiln-operator")
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.chars()
                .filter(|c| !c.is_control())
                .take(64)
                .collect::<String>()
        })
        .filter(|v| !v.is_empty());
    match named {
        Some(n) => format!("{n} from {}", peer.ip()),
        None => format!("operator token from {}", peer.ip()),
    }
}

/// Entries of the selection, with what a selection by provider needs:
/// each domain's provider, looked up once.
struct Matcher<'a> {
    ctx: &'a Services,
    select: Option<Selector>,
    providers: HashMap<String, Option<String>>,
}

impl Matcher<'_> {
    async fn matches(&mut self, e: &QueueEntry) -> bool {
        let Some(select) = &self.select else {
            return true;
        };
        match select.field {
            Field::Provider => {
                let domain = e.domain().to_ascii_lowercase();
                if !self.providers.contains_key(&domain) {
                    let p = self.ctx.egress.provider_of(&domain).await;
                    self.providers.insert(domain.clone(), p);
                }
                let provider = self.providers.get(&domain).cloned().flatten();
                select.matches(e, provider.as_deref(), None)
            }
            _ => select.matches(e, None, None),
        }
    }
}

/// Calls `each` for every queued entry of the selection, page by page.
async fn scan(
    ctx: &Services,
    select: Option<Selector>,
    mut each: impl FnMut(QueueEntry, EntryState),
) -> Result<(), crate::store::StoreError> {
    let mut m = Matcher {
        ctx,
        select,
        providers: HashMap::new(),
    };
    let mut cursor: Option<String> = None;
    loop {
        let page = ctx.store.scan_queue(cursor.as_deref(), PAGE).await?;
        for (e, state) in page.entries {
            if m.matches(&e).await {
                each(e, state);
            }
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => return Ok(()),
        }
    }
}

#[derive(Deserialize)]
struct SummaryQuery {
    by: Option<String>,
}

#[derive(Default)]
struct Group {
    count: u64,
    due: u64,
    waiting: u64,
    leased: u64,
    /// Held by an operator's suspension.
    suspended: u64,
    oldest_ms: Option<i64>,
}

async fn summary(State(ctx): State<Arc<Services>>, Query(q): Query<SummaryQuery>) -> Response {
    let by = q.by.unwrap_or_else(|| "domain".into());
    match summarize(&ctx, &by).await {
        Ok(summary) => {
            let total: u64 = summary
                .groups
                .iter()
                .filter_map(|g| g["count"].as_u64())
                .sum();
            Json(json!({
                "by": by,
                "total": total,
                "groups": summary.groups,
                "suspensions": summary.suspensions,
            }))
            .into_response()
        }
        Err(ControlError::Bad(why)) => bad(why),
        Err(e) => store_error(e),
    }
}

/// The queue grouped, and what each suspension holds.
pub struct Summary {
    /// Counts by state, held by a suspension, and the oldest age; largest
    /// group first.
    pub groups: Vec<Value>,
    /// Each suspension in force: its rule and how many entries it holds
    /// (null for a source's: an entry's source is chosen when it is
    /// attempted).
    pub suspensions: Vec<Value>,
}

/// What `summarize` groups by.
pub const GROUP_BY: [&str; 7] = [
    "domain",
    "sender_domain",
    "provider",
    "account",
    "task",
    "pool",
    "state",
];

/// The queue grouped `by` one of [`GROUP_BY`].
pub async fn summarize(ctx: &Services, by: &str) -> Result<Summary, ControlError> {
    if !GROUP_BY.contains(&by) {
        return Err(ControlError::Bad(format!(
            "by {by:?}: summarise by {}",
            GROUP_BY.join(", ")
        )));
    }
    let rules = ctx.queue.controls().rules();
    let suspensions: Vec<&Rule> = rules
        .iter()
        .filter(|r| r.action == Action::Suspend)
        .collect();
    let by_provider = by == "provider"
        || suspensions
            .iter()
            .any(|r| r.select.field == Field::Provider);
    let mut rows: Vec<(QueueEntry, EntryState)> = Vec::new();
    scan(ctx, None, |e, st| rows.push((e, st))).await?;
    let mut providers: HashMap<String, String> = HashMap::new();
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    let mut holds = vec![0u64; suspensions.len()];
    for (e, state) in rows {
        let provider = if by_provider {
            let domain = e.domain().to_ascii_lowercase();
            if !providers.contains_key(&domain) {
                let p = ctx.egress.provider_of(&domain).await;
                providers.insert(domain.clone(), p.unwrap_or_else(|| "(no MX)".into()));
            }
            providers.get(&domain).cloned()
        } else {
            None
        };
        let key = match by {
            "domain" => e.domain().to_ascii_lowercase(),
            "sender_domain" => crate::net::domain_of(&e.sender),
            "account" => e.account.clone(),
            "task" => e.task_id.clone(),
            "pool" => e.pool.clone(),
            "state" => state.as_str().to_string(),
            _ => provider.clone().unwrap_or_default(),
        };
        // The first suspension that holds it is the one counted.
        let held = suspensions
            .iter()
            .position(|r| r.select.matches(&e, provider.as_deref(), None));
        if let Some(i) = held {
            holds[i] += 1;
        }
        let g = groups.entry(key).or_default();
        g.count += 1;
        g.suspended += u64::from(held.is_some());
        match state {
            EntryState::Due => g.due += 1,
            EntryState::Waiting => g.waiting += 1,
            EntryState::Leased => g.leased += 1,
        }
        g.oldest_ms = Some(
            g.oldest_ms
                .map_or(e.received_at_ms, |o| o.min(e.received_at_ms)),
        );
    }
    let now = ctx.store.now_ms();
    let mut out: Vec<Value> = groups
        .into_iter()
        .map(|(key, g)| {
            json!({
                "key": key,
                "count": g.count,
                "due": g.due,
                "waiting": g.waiting,
                "leased": g.leased,
                "suspended": g.suspended,
                "oldest_age_s": g.oldest_ms.map_or(0, |o| (now - o).max(0) / 1000),
            })
        })
        .collect();
    out.sort_by(|a, b| b["count"].as_u64().cmp(&a["count"].as_u64()));
    let suspensions = suspensions
        .iter()
        .zip(holds)
        .map(|(r, n)| {
            json!({
                "select": r.select.to_string(),
                "by": r.by,
                "since": crate::clock::format_ms(r.at_ms),
                "holds": (r.select.field != Field::Source).then_some(n),
            })
        })
        .collect();
    Ok(Summary {
        groups: out,
        suspensions,
    })
}

#[derive(Deserialize)]
struct ListQuery {
    select: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

fn parse_select(select: Option<&str>) -> Result<Option<Selector>, String> {
    match select.filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => Selector::parse(s).map(Some),
    }
}

async fn list(State(ctx): State<Arc<Services>>, Query(q): Query<ListQuery>) -> Response {
    let select = match parse_select(q.select.as_deref()) {
        Ok(sel) => sel,
        Err(why) => return bad(why),
    };
    if select
        .as_ref()
        .is_some_and(|sel| sel.field == Field::Source)
    {
        return bad(
            "a queued entry's source is chosen when it is attempted: list by domain, provider, account or task",
        );
    }
    let limit = q.limit.unwrap_or(100).clamp(1, LIST_MAX);
    let mut m = Matcher {
        ctx: &ctx,
        select,
        providers: HashMap::new(),
    };
    // A cursor is the store's cursor of a page and how many of that page's
    // entries were already gone through (`<store cursor>~<n>`): a page
    // answered in part goes on where it stopped, so `limit` holds exactly.
    let (mut cursor, mut skip) = match q.cursor.as_deref().filter(|c| !c.is_empty()) {
        None => (None, 0),
        Some(c) => match c.rsplit_once('~') {
            Some((page, n)) => (
                Some(page.to_string()).filter(|p| !p.is_empty()),
                n.parse::<usize>().unwrap_or(0),
            ),
            None => (Some(c.to_string()), 0),
        },
    };
    let mut out = Vec::new();
    let next = loop {
        let page = match ctx.store.scan_queue(cursor.as_deref(), PAGE).await {
            Ok(p) => p,
            Err(e) => return store_error(e),
        };
        let mut stopped = None;
        for (i, (e, state)) in page.entries.into_iter().enumerate().skip(skip) {
            if out.len() >= limit {
                stopped = Some(i);
                break;
            }
            if m.matches(&e).await {
                out.push(json!({
                    "message_id": e.msg_id,
                    "index": e.rcpt_idx,
                    "recipient": e.recipient,
                    "sender": e.sender,
                    "account": e.account,
                    "task": e.task_id,
                    "pool": e.pool,
                    "attempts": e.attempts,
                    "state": state.as_str(),
                    "received_at_ms": e.received_at_ms,
                    "ready_at_ms": e.ready_at_ms,
                }));
            }
        }
        if let Some(i) = stopped {
            break Some(format!("{}~{i}", cursor.unwrap_or_default()));
        }
        skip = 0;
        cursor = page.next;
        if cursor.is_none() {
            break None;
        }
        if out.len() >= limit {
            break cursor.map(|c| format!("{c}~0"));
        }
    };
    Json(json!({"entries": out, "next": next})).into_response()
}

async fn controls(State(ctx): State<Arc<Services>>) -> Response {
    if let Err(e) = ctx.queue.controls().refresh().await {
        return store_error(e);
    }
    Json(json!({"rules": *ctx.queue.controls().rules()})).into_response()
}

#[derive(Deserialize)]
struct ControlRequest {
    select: String,
    #[serde(default)]
    reason: String,
}

/// Why a control action was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0}")]
    Bad(String),
    #[error("{0} is not suspended")]
    NotSuspended(String),
    #[error("the store: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// Makes the waiting entries of the selection (all, for None) that
/// `filter` accepts due now; answers how many.
async fn make_due(
    ctx: &Services,
    select: Option<Selector>,
    filter: impl Fn(&QueueEntry) -> bool,
) -> Result<usize, crate::store::StoreError> {
    let mut keys = Vec::new();
    scan(ctx, select, |e, state| {
        if state == EntryState::Waiting && filter(&e) {
            keys.push(e.key());
        }
    })
    .await?;
    ctx.queue.make_due(&keys).await
}

/// Makes due what the suspensions `removed` parked.
async fn due_again(ctx: &Services, removed: &[Rule]) -> Result<usize, crate::store::StoreError> {
    make_due(ctx, None, |e| removed.iter().any(|r| parked_by(r, e))).await
}

/// Carries out `action` (suspend, resume, bounce, retry-now) on the
/// selection `select` for `by`, and logs it; answers what it did.
pub async fn act(
    ctx: &Arc<Services>,
    action: &str,
    select: &str,
    reason: &str,
    by: &str,
) -> Result<Value, ControlError> {
    let select = Selector::parse(select).map_err(ControlError::Bad)?;
    let label = select.to_string();
    let chosen_later = || {
        ControlError::Bad(format!(
            "a queued entry's source is chosen when it is attempted: {action} by domain, provider, account or task"
        ))
    };
    let done = match action {
        "suspend" => {
            let rule = Rule {
                select,
                action: Action::Suspend,
                by: by.to_string(),
                at_ms: ctx.store.now_ms(),
            };
            ctx.queue.controls().add(&rule).await?;
            json!({"rule": rule})
        }
        "resume" => {
            let removed = ctx.queue.controls().resume(&select).await?;
            if removed.is_empty() {
                return Err(ControlError::NotSuspended(label));
            }
            // What the suspension parked is due now: its park times are
            // the rule's time plus whole park periods (any selection, source
            // and provider included, without knowing where each entry would
            // have gone). Once more after every node has read the rules
            // again: one that had not yet may have parked some meanwhile.
            let made = due_again(ctx, &removed).await?;
            let (again, rules) = (ctx.clone(), removed.clone());
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                if let Err(e) = due_again(&again, &rules).await {
                    tracing::warn!(error = %e, "resumed entries not made due again");
                }
            });
            json!({"resumed": removed, "due_now": made})
        }
        "bounce" => {
            if select.field == Field::Source {
                return Err(chosen_later());
            }
            let reason = reason.trim();
            if reason.is_empty() {
                return Err(ControlError::Bad(
                    "a bounce needs a reason (--reason TEXT): it goes into each bounce event"
                        .into(),
                ));
            }
            let rule = Rule {
                select: select.clone(),
                action: Action::Bounce {
                    reason: reason.chars().take(500).collect(),
                },
                by: by.to_string(),
                at_ms: ctx.store.now_ms(),
            };
            ctx.queue.controls().add(&rule).await?;
            // Each is bounced by the node that leases it next: once.
            let at = rule.at_ms;
            let made = make_due(ctx, Some(select), |e| e.received_at_ms <= at).await?;
            json!({"rule": rule, "due_now": made})
        }
        "retry-now" => {
            if select.field == Field::Source {
                return Err(chosen_later());
            }
            json!({"due_now": make_due(ctx, Some(select), |_| true).await?})
        }
        other => {
            return Err(ControlError::Bad(format!(
                "{other:?}: the actions are suspend, resume, bounce and retry-now"
            )));
        }
    };
    tracing::info!(target: "kiln::ops", action, select = %label, by, reason, outcome = %done, "queue control");
    Ok(done)
}

/// A control action over the admin API (`act` names the unknown ones).
async fn control(
    State(ctx): State<Arc<Services>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(action): Path<String>,
    headers: HeaderMap,
    Query(req): Query<ControlRequest>,
) -> Response {
    let by = who(&headers, peer);
    match act(&ctx, &action, &req.select, &req.reason, &by).await {
        Ok(v) => Json(v).into_response(),
        Err(ControlError::Bad(why)) => bad(why),
        Err(e @ ControlError::NotSuspended(_)) => {
            super::admin::error(StatusCode::NOT_FOUND, "NotSuspended", e.to_string())
        }
        Err(e) => store_error(e),
    }
}
