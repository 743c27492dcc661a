//! The batch-task runner: on each node it takes due tasks one step at a
//! time (a few hundred recipients, under a short store lock, so nodes share
//! the work) and reads the list a chunk at a time. A task that meets the
//! day's quota or warm-up cap pauses (status 6) with the rest counted in
//! CacheCount, and resumes by itself the next day. Progress is saved every
//! `SAVE_EVERY` recipients: after a crash, at most that many may be sent
//! twice, none lost. The records are `crate::ses::tasks`.

use crate::intake::admission::Refusal;
use crate::intake::submission::{Envelope, Submission, Trace};
use crate::services::Services;
use crate::ses::receivers::{CHUNK, ReceiverEntry};
use crate::ses::tasks::{ACTIVE, DONE, FAILED, PAUSED, SENDING, Task, WAITING, record_key};
use crate::ses::{Records, RecordsError};
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const SAVE_EVERY: u64 = 20;
const STEP_RECIPIENTS: usize = 200;
const STEP_TIME: Duration = Duration::from_secs(5);
const LOCK_SLOT_MS: i64 = 30_000;

/// Runs due tasks until `stop`.
pub async fn run(ctx: Arc<Services>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let ids = match ctx.ses.store.set_members(ACTIVE).await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "batch tasks: cannot list active tasks");
                continue;
            }
        };
        for id in ids {
            if stop.is_cancelled() {
                return;
            }
            if let Err(e) = step(&ctx, &id).await {
                tracing::warn!(task = %id, error = %e, "batch task step failed; retrying");
            }
        }
    }
}

/// The store lock for one step of a task: the first node to count it in
/// this time slot runs the step. Steps end well before the slot does.
async fn lock(p: &Records, id: &str) -> Result<bool, RecordsError> {
    let now = p.store.now_ms();
    let slot = now.div_euclid(LOCK_SLOT_MS);
    let left = (slot + 1) * LOCK_SLOT_MS - now;
    if left < STEP_TIME.as_millis() as i64 + 1000 {
        return Ok(false);
    }
    let n = p
        .store
        .incr(
            &format!("task-lock:{id}:{slot}"),
            1,
            Duration::from_millis(LOCK_SLOT_MS as u64 * 2),
        )
        .await?;
    Ok(n == 1)
}

/// The template data for one recipient: the task's, overlaid with its own.
fn merged_data(task: &str, own: &str) -> Map<String, Value> {
    let parse = |s: &str| match serde_json::from_str::<Value>(s) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let mut data = parse(task);
    data.extend(parse(own));
    data
}

enum Outcome {
    Sent,
    Skipped,
    /// Over today's quota or warm-up cap: resume at this time, and why.
    Pause(i64, String),
    Fail(String),
    /// Try the same recipient again later.
    Retry,
}

async fn send_one(ctx: &Services, t: &Task, e: &ReceiverEntry) -> Outcome {
    let p = &ctx.ses;
    let template = match p.template(&t.account, t.template_id).await {
        Ok(tpl) if tpl.status == crate::ses::templates::APPROVED => tpl,
        Ok(tpl) => {
            return Outcome::Fail(format!(
                "template {} is not approved (status {})",
                tpl.id, tpl.status
            ));
        }
        Err(crate::ses::templates::TemplateError::NotFound(id)) => {
            return Outcome::Fail(format!("template {id} no longer exists"));
        }
        Err(_) => return Outcome::Retry,
    };
    let data = merged_data(&t.template_data, &e.data);
    use crate::ses::templates::render;
    let rendered = (
        render(&t.subject, &data, false),
        render(&template.html, &data, true),
        render(&template.text, &data, false),
    );
    let (subject, html, text) = match rendered {
        (Ok(s), Ok(h), Ok(x)) => (s, h, x),
        (Err(err), _, _) | (_, Err(err), _) | (_, _, Err(err)) => {
            tracing::info!(task = t.id, recipient = %e.email, error = %err, "batch recipient skipped");
            return Outcome::Skipped;
        }
    };
    let subject = match t.ad_location {
        1 => format!("<AD> {subject}"),
        2 => format!("{subject} <AD>"),
        _ => subject,
    };
    let id = uuid::Uuid::now_v7().simple().to_string();
    let hostname = &p.settings.server.hostname;
    // A setting that cannot be read leaves the link out; the send goes on.
    let lang = p
        .unsubscribe_language(&t.account, &t.from.1, &t.unsubscribe)
        .await
        .ok()
        .flatten();
    let mut draft = crate::intake::compose::Draft {
        from: t.from.clone(),
        to: vec![e.email.clone()],
        reply_to: t.reply_to.clone(),
        subject,
        html,
        text,
        message_id: format!("{id}@{hostname}"),
        ..Default::default()
    };
    draft.decorate(
        ctx.tracker.as_deref(),
        &crate::net::domain_of(&t.from.1),
        &id,
        &e.email,
        lang,
    );
    let Ok(body) = draft.build() else {
        return Outcome::Skipped;
    };
    let now = ctx.store.now_ms();
    let trace = Trace {
        id: &id,
        helo: "batch",
        peer: std::net::Ipv4Addr::LOCALHOST.into(),
        hostname,
        protocol: "HTTP",
        recipient: Some(&e.email),
        now_ms: now,
    };
    let envelope = Envelope {
        account: t.account.clone(),
        sender: t.from.1.clone(),
        recipients: vec![e.email.clone()],
        trigger_type: crate::intake::submission::TriggerType::Batch,
        require_tls: false,
        door: crate::intake::submission::Door::Batch,
        origin: format!("batch task {}", t.id),
        template_id: t.template_id.to_string(),
        task_id: t.id.to_string(),
    };
    let submission = Submission::new(&body, &trace, envelope);
    match crate::intake::admission::admit(ctx, submission).await {
        Ok(_) => {
            if let Err(err) = p.index_message(&t.account, &id, now).await {
                tracing::warn!(error = %err, "batch message not indexed for GetSendEmailStatus");
            }
            Outcome::Sent
        }
        Err(Refusal::Limits(d)) if d.is_defer() => {
            let until = d.retry_at.unwrap_or_else(|| {
                crate::policy::time::next_day_start(&p.time_zone, now).unwrap_or(now + 86_400_000)
            });
            let why = d
                .message
                .clone()
                .or_else(|| d.code.clone())
                .unwrap_or_else(|| "the day's limit is reached".into());
            Outcome::Pause(
                until,
                format!(
                    "paused today: {why}; resumes at {}",
                    crate::clock::format_ms(until)
                ),
            )
        }
        Err(Refusal::Limits(d))
            if d.code.as_deref() == Some("FailedOperation.HighRejectionRate") =>
        {
            Outcome::Fail(
                d.message
                    .unwrap_or_else(|| "sending stopped: too many bounces".into()),
            )
        }
        Err(Refusal::ForeignDomain { domain, .. }) => Outcome::Fail(format!(
            "{domain} is no longer a verified sender domain of the account"
        )),
        Err(
            Refusal::Limits(_)
            | Refusal::Content(_)
            | Refusal::AllDropped(_)
            | Refusal::Malformed(_)
            | Refusal::TooBig(_),
        ) => Outcome::Skipped,
        Err(Refusal::PolicyUnavailable | Refusal::Signing | Refusal::Store | Refusal::NoSpace) => {
            Outcome::Retry
        }
    }
}

/// Runs one step of a task if it is due and this node gets the lock.
async fn step(ctx: &Services, id: &str) -> Result<(), RecordsError> {
    let p = &ctx.ses;
    let Some(mut t) = p.load::<Task>(&record_key(id)).await? else {
        p.store.set_remove(ACTIVE, id).await?;
        return Ok(());
    };
    if matches!(t.status, DONE | FAILED) {
        p.store.set_remove(ACTIVE, id).await?;
        return Ok(());
    }
    let now = ctx.store.now_ms();
    if t.next_run_at_ms > now || !lock(p, id).await? {
        return Ok(());
    }
    // Another node may have moved it on before the lock: read again.
    let Some(fresh) = p.load::<Task>(&record_key(id)).await? else {
        return Ok(());
    };
    t = fresh;
    if t.status != SENDING {
        let receiver = match p.receiver(&t.account, t.receiver_id).await {
            Ok(r) => r,
            Err(_) => {
                t.status = FAILED;
                t.err_msg = format!("recipient list {} no longer exists", t.receiver_id);
                t.updated_at_ms = now;
                return p.save_task(&t).await;
            }
        };
        if t.status == WAITING {
            t.request_count = receiver.count;
            t.processed = 0;
            t.cursor_chunk = 0;
            t.cursor_index = 0;
        }
        t.status = SENDING;
        // Going again: the reason it paused is over.
        t.err_msg.clear();
        t.updated_at_ms = now;
        p.save_task(&t).await?;
    }
    let receiver_chunks = p
        .receiver(&t.account, t.receiver_id)
        .await
        .map(|r| r.chunks)
        .unwrap_or(0);
    let started = std::time::Instant::now();
    let mut handled = 0;
    let mut unsaved = 0;
    'chunks: while t.cursor_chunk < receiver_chunks {
        let chunk = p.receiver_chunk(t.receiver_id, t.cursor_chunk).await?;
        while t.cursor_index < chunk.len().min(CHUNK) {
            if handled >= STEP_RECIPIENTS || started.elapsed() > STEP_TIME {
                break 'chunks;
            }
            let e = &chunk[t.cursor_index];
            if e.status == 1 {
                match send_one(ctx, &t, e).await {
                    Outcome::Sent => {
                        t.send_count += 1;
                        t.processed += 1;
                    }
                    Outcome::Skipped => t.processed += 1,
                    Outcome::Pause(until, why) => {
                        t.status = PAUSED;
                        t.next_run_at_ms = until;
                        t.err_msg = why;
                        t.updated_at_ms = ctx.store.now_ms();
                        tracing::info!(
                            task = t.id,
                            sent = t.send_count,
                            cached = t.cache_count(),
                            "batch task paused until the quota allows more"
                        );
                        return p.save_task(&t).await;
                    }
                    Outcome::Fail(why) => {
                        t.status = FAILED;
                        t.err_msg = why;
                        t.updated_at_ms = ctx.store.now_ms();
                        p.store.set_remove(ACTIVE, id).await?;
                        return p.save_task(&t).await;
                    }
                    Outcome::Retry => break 'chunks,
                }
                handled += 1;
                unsaved += 1;
            }
            t.cursor_index += 1;
            if unsaved >= SAVE_EVERY {
                t.updated_at_ms = ctx.store.now_ms();
                p.save_task(&t).await?;
                unsaved = 0;
            }
        }
        t.cursor_chunk += 1;
        t.cursor_index = 0;
    }
    t.updated_at_ms = ctx.store.now_ms();
    if t.cursor_chunk >= receiver_chunks {
        match t.interval_hours {
            Some(h) if h > 0 && !t.term_cycle => {
                // The next run of a cyclic task, on its schedule.
                let period = h * 3_600_000;
                let mut next = t.begin_at_ms;
                while next <= t.updated_at_ms {
                    next += period;
                }
                t.next_run_at_ms = next;
                t.status = WAITING;
            }
            _ => {
                t.status = DONE;
                p.store.set_remove(ACTIVE, id).await?;
            }
        }
        tracing::info!(task = t.id, sent = t.send_count, "batch task run finished");
    }
    p.save_task(&t).await
}
