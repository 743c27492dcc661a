//! The console's pages as HTML: every value escaped, every form with the
//! session's CSRF token.

use super::chart::{self, Series, escape};
use super::{Daily, DomainRow};
use crate::feedback::recent::Recent;
use crate::ses::blocklists::BlockedAddress;
use crate::ses::tasks::Task;
use crate::ses::templates::Template;
use serde_json::Value;

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222;background:#f6f7f9}\
header{background:#1f2a3a;color:#fff;padding:10px 20px;display:flex;justify-content:space-between;align-items:center}\
header{flex-wrap:wrap;gap:6px}header h1{font-size:18px;margin:0}main{padding:16px 20px;max-width:1100px}\
section{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:12px 16px;margin:0 0 16px}\
h2{font-size:15px;margin:0 0 8px}.scroll{overflow-x:auto;max-width:100%}table{border-collapse:collapse;width:100%}\
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eceef1;font-variant-numeric:tabular-nums}\
th{font-weight:600;color:#555}.ok{color:#1a7f37}.bad{color:#b42318}.muted{color:#777}\
.bar{background:#e6e9ee;border-radius:3px;height:8px;width:120px;display:inline-block;vertical-align:middle}\
.bar span{display:block;height:8px;border-radius:3px;background:#2f6fdf}\
form.inline{display:inline}input,select,button{font:inherit;padding:3px 6px;max-width:100%;box-sizing:border-box}\
svg.chart{display:block;width:100%;min-width:560px;height:auto;margin:0 0 8px}\
.scroll+h2{margin-top:16px}\
.chart .title{font-weight:600;font-size:15px}.chart .axis{font-size:12px;fill:#666}.chart .grid{stroke:#eceef1}\
.note{background:#eef6ff;border:1px solid #b6d4fe;padding:6px 10px;border-radius:4px;margin-bottom:12px}\
.warn{background:#fff4e5;border:1px solid #f5c27a;padding:6px 10px;border-radius:4px;margin-bottom:12px}\
@media (max-width:600px){main{padding:8px}section{padding:8px}th,td{padding:3px 4px}}";

/// A table that scrolls sideways inside its section when the screen is
/// narrower than it, rather than widening the page.
fn table(head: &str) -> String {
    format!("<div class=\"scroll\"><table><tr>{head}</tr>")
}

const TABLE_END: &str = "</table></div>";

fn layout(title: &str, who: Option<(&str, &str)>, body: &str) -> String {
    let right = match who {
        Some((name, csrf)) => format!(
            "<span>{} · <form class=\"inline\" method=\"post\" action=\"/console/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><button>Sign out</button></form></span>",
            escape(name),
            escape(csrf)
        ),
        None => String::new(),
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t} · Kiln</title>\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><style>{STYLE}</style></head>\
         <body><header><h1>Kiln · {t}</h1>{right}</header><main>{body}</main></body></html>",
        t = escape(title)
    )
}

pub fn message(text: &str) -> String {
    layout(
        "Console",
        None,
        &format!(
            "<section><p>{}</p><p><a href=\"/console\">Back</a></p></section>",
            escape(text)
        ),
    )
}

pub fn sign_in(error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p class=\"bad\" id=\"error\">{}</p>", escape(e)))
        .unwrap_or_default();
    let body = format!(
        "{error}<section><h2>Operator</h2><form method=\"post\" action=\"/console/login\">\
         <label>Operator token <input type=\"password\" name=\"token\" id=\"token\" autocomplete=\"off\" size=\"50\"></label> \
         <button id=\"operator-sign-in\">Sign in</button></form>\
         <p class=\"muted\">The token is in the data directory's admin.token; <code>kiln console token</code> prints it.</p></section>\
         <section><h2>Account</h2><form method=\"post\" action=\"/console/login\">\
         <label>SecretId <input name=\"secret_id\" id=\"secret_id\" autocomplete=\"username\" size=\"30\"></label> \
         <label>SecretKey <input type=\"password\" name=\"secret_key\" id=\"secret_key\" autocomplete=\"current-password\" size=\"30\"></label> \
         <button id=\"account-sign-in\">Sign in</button></form></section>"
    );
    layout("Sign in", None, &body)
}

fn pct(n: f64, of: f64) -> f64 {
    if of > 0.0 { 100.0 * n / of } else { 0.0 }
}

fn charts(daily: &Daily) -> String {
    // A day without mail has no rate (a gap, not 0 %).
    let rate = |num: &[f64], den: &[f64]| -> Vec<Option<f64>> {
        num.iter()
            .zip(den)
            .map(|(n, d)| (*d > 0.0).then(|| pct(*n, *d)))
            .collect()
    };
    let rates = chart::lines(
        &format!("Rates over {} days", daily.labels.len()),
        &daily.labels,
        &[
            Series {
                name: "delivered",
                color: "#1a7f37",
                points: rate(&daily.delivered, &daily.accepted),
            },
            Series {
                name: "bounced",
                color: "#b42318",
                points: rate(&daily.bounced, &daily.accepted),
            },
            Series {
                name: "complaints",
                color: "#b54708",
                points: rate(&daily.complaints, &daily.delivered),
            },
            Series {
                name: "opened",
                color: "#2f6fdf",
                points: rate(&daily.opened, &daily.delivered),
            },
        ],
        "%",
    );
    let volume = chart::bars(
        &format!("Messages accepted a day, {} days", daily.labels.len()),
        &daily.labels,
        &daily.accepted,
        "#2f6fdf",
    );
    // Below the width their labels stay readable at, charts scroll.
    format!(
        "<section id=\"charts\"><h2>Statistics</h2><div class=\"scroll\">{volume}{rates}</div></section>"
    )
}

fn domains_table(rows: &[DomainRow], with_account: bool) -> String {
    let mut t = String::from("<section id=\"domains\"><h2>Sender domains</h2>");
    let broken: Vec<&DomainRow> = rows.iter().filter(|r| r.problem.is_some()).collect();
    if !broken.is_empty() {
        t.push_str(&format!(
            "<p class=\"warn\" id=\"domain-warning\">{} sender domain(s) send nothing: the policy cannot read their reputation state ({}). <code>kiln domain show DOMAIN</code> says more; setting a level, or a reset, repairs it.</p>",
            broken.len(),
            escape(
                &broken
                    .iter()
                    .map(|r| r.domain.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        ));
    }
    let mut head = String::new();
    if with_account {
        head.push_str("<th>Account</th>");
    }
    head.push_str("<th>Domain</th><th>Verified</th><th>Reputation level</th><th>Sent today / daily quota</th><th>Warm-up day</th><th>Today's warm-up cap</th>");
    t.push_str(&table(&head));
    for r in rows {
        t.push_str("<tr>");
        if with_account {
            t.push_str(&format!("<td>{}</td>", escape(&r.account)));
        }
        t.push_str(&format!(
            "<td class=\"domain\">{}</td><td class=\"{}\">{}</td>",
            escape(&r.domain),
            if r.verified { "ok" } else { "bad" },
            if r.verified { "yes" } else { "no" },
        ));
        if let Some(problem) = &r.problem {
            t.push_str(&format!(
                "<td class=\"level bad\" colspan=\"2\" title=\"{}\">state unreadable: sends nothing</td>",
                escape(problem)
            ));
        } else {
            let share = if r.quota > 0 {
                (100 * r.sent_today / r.quota).min(100)
            } else {
                0
            };
            t.push_str(&format!(
                "<td class=\"level\">{}</td><td class=\"quota\">{} / {} <span class=\"bar\"><span style=\"width:{share}%\"></span></span></td>",
                r.level, r.sent_today, r.quota,
            ));
        }
        t.push_str(&warmup_cells(r));
        t.push_str("</tr>");
    }
    if rows.is_empty() {
        t.push_str("<tr><td colspan=\"7\" class=\"muted\">No sender domains yet.</td></tr>");
    }
    t.push_str(TABLE_END);
    t.push_str("</section>");
    t
}

/// The warm-up day and today's cap: what it holds back, and whether the
/// day's mail has reached it (the cap counts all of the domain's mail
/// today; only what it applies to waits).
fn warmup_cells(r: &DomainRow) -> String {
    let Some(w) = &r.warmup else {
        return "<td>—</td><td class=\"warmup\">no cap</td>".into();
    };
    let what = if w.applies_to.is_empty() {
        "all mail".to_string()
    } else {
        format!("{} mail", w.applies_to.join(", "))
    };
    let cap = if r.problem.is_none() && w.cap >= r.quota && r.quota > 0 {
        format!(
            "{} a day for {} <span class=\"muted\">(above the quota: the quota holds)</span>",
            w.cap,
            escape(&what)
        )
    } else if r.sent_today >= w.cap {
        format!(
            "{} a day for {}: <span class=\"bad\">reached, {} waits until tomorrow</span>",
            w.cap,
            escape(&what),
            escape(&what)
        )
    } else {
        format!(
            "{} a day for {}: {} left",
            w.cap,
            escape(&what),
            w.cap - r.sent_today
        )
    };
    format!("<td>{}</td><td class=\"warmup\">{cap}</td>", w.day + 1)
}

pub struct OperatorView<'a> {
    pub csrf: &'a str,
    pub rows: &'a [DomainRow],
    pub daily: &'a Daily,
    pub queue: &'a [Value],
    /// The operator's suspensions in force, with what each holds.
    pub suspensions: &'a [Value],
    pub shaping: &'a [Value],
    pub recent: &'a [Recent],
    /// Receiving domains whose TLS failed this week (every node's count).
    pub tls_failures: &'a [crate::egress::tls_report::DomainWeek],
    pub blocklist: Option<(String, Option<BlockedAddress>)>,
    pub done: Option<&'a str>,
}

/// A cell of a JSON value: text unquoted, numbers as they are, "—" for
/// nothing.
fn cell(v: &Value) -> String {
    match v {
        Value::String(text) => escape(text),
        Value::Null => "—".into(),
        other => escape(&other.to_string()),
    }
}

fn hidden_csrf(csrf: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        escape(csrf)
    )
}

pub fn operator(v: &OperatorView) -> String {
    let mut body = String::new();
    if let Some(done) = v.done {
        body.push_str(&format!(
            "<p class=\"note\" id=\"done\">{}</p>",
            escape(done)
        ));
    }
    body.push_str(&domains_table(v.rows, true));
    body.push_str(&format!(
        "<section id=\"domain-control\"><h2>Set a sender domain's reputation</h2>\
         <form method=\"post\" action=\"/console/domain\" id=\"domain-form\">{}\
         <input name=\"domain\" placeholder=\"news.example.com\" required size=\"28\"> \
         <select name=\"action\"><option value=\"set-level\">set level</option>\
         <option value=\"set-quota\">set daily quota (0: the level's)</option>\
         <option value=\"reset\">reset (forget its state)</option></select> \
         <input name=\"value\" placeholder=\"number\" size=\"8\"> <button>Apply</button></form>\
         <p class=\"muted\">The same as <code>kiln domain set-level | set-quota | reset</code>, logged with who asked. \
         A level set here stays until the reputation rules move it; a quota stays until set to 0.</p></section>",
        hidden_csrf(v.csrf)
    ));
    body.push_str(&charts(v.daily));

    body.push_str("<section id=\"queue\"><h2>Queue by provider</h2>");
    body.push_str(&table("<th>Provider</th><th>Queued</th><th>Due</th><th>Waiting</th><th>Being attempted</th><th>Held by a suspension</th><th>Oldest</th>"));
    for g in v.queue {
        body.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} s</td></tr>",
            cell(&g["key"]),
            cell(&g["count"]),
            cell(&g["due"]),
            cell(&g["waiting"]),
            cell(&g["leased"]),
            cell(&g["suspended"]),
            cell(&g["oldest_age_s"])
        ));
    }
    if v.queue.is_empty() {
        body.push_str("<tr><td colspan=\"7\" class=\"muted\">The queue is empty.</td></tr>");
    }
    body.push_str(TABLE_END);

    body.push_str("<h2>Suspensions</h2>");
    body.push_str(&table(
        "<th>Selection</th><th>Since</th><th>By</th><th>Holds</th><th></th>",
    ));
    for r in v.suspensions {
        let select = r["select"].as_str().unwrap_or_default();
        body.push_str(&format!(
            "<tr class=\"suspension\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>\
             <form class=\"inline\" method=\"post\" action=\"/console/queue\">{}\
             <input type=\"hidden\" name=\"action\" value=\"resume\"><input type=\"hidden\" name=\"select\" value=\"{}\">\
             <button>Resume</button></form></td></tr>",
            escape(select),
            cell(&r["since"]),
            cell(&r["by"]),
            match &r["holds"] {
                Value::Null if select.starts_with("source:") => "what is due from that source".into(),
                Value::Null => "— (a large queue: kiln queue summary)".into(),
                n => format!("{n} queued"),
            },
            hidden_csrf(v.csrf),
            escape(select),
        ));
    }
    if v.suspensions.is_empty() {
        body.push_str("<tr><td colspan=\"5\" class=\"muted\">Nothing is suspended.</td></tr>");
    }
    body.push_str(TABLE_END);

    body.push_str("<h2>Shaping</h2>");
    body.push_str(&table("<th>Provider</th><th>Source</th><th>Connections allowed now</th><th>Pace factor</th><th>Suspended until</th><th>Last signal</th>"));
    for p in v.shaping {
        let provider = p["provider"].as_str().unwrap_or_default();
        let source = p["source"].as_str().unwrap_or_default();
        // A suspension by the operator holds until resumed; shaping's
        // own (a provider's signal) until its time.
        let by_operator = v.suspensions.iter().find(|r| {
            let select = r["select"].as_str().unwrap_or_default();
            select == format!("provider:{provider}") || select == format!("source:{source}")
        });
        let until = match (by_operator, p["suspended_until_ms"].as_i64()) {
            (Some(r), _) => format!(
                "until resumed: {} suspended by {} since {}",
                cell(&r["select"]),
                cell(&r["by"]),
                cell(&r["since"])
            ),
            (None, Some(ms)) => crate::clock::format_ms(ms),
            (None, None) => "—".into(),
        };
        body.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"until\">{until}</td><td>{}</td></tr>",
            escape(provider),
            escape(source),
            cell(&p["connections_now"]),
            cell(&p["factor"]),
            escape(p["last_signal"]["rule"].as_str().unwrap_or("—")),
        ));
    }
    body.push_str(TABLE_END);
    body.push_str(&format!(
        "<h2>Steer the queue</h2><form method=\"post\" action=\"/console/queue\" id=\"queue-control\">{}\
         <select name=\"action\"><option>suspend</option><option>resume</option><option>retry-now</option><option>bounce</option></select> \
         <input name=\"select\" placeholder=\"domain:example.com\" required size=\"30\"> \
         <input name=\"reason\" placeholder=\"reason (for a bounce)\" size=\"30\"> <button>Apply</button></form>\
         <p class=\"muted\">A selection: <code>domain:</code> (recipients'), <code>sender_domain:</code> (one customer's mail), \
         <code>provider:</code>, <code>account:</code>, <code>task:</code>, <code>source:</code>.</p></section>",
        hidden_csrf(v.csrf)
    ));

    body.push_str("<section id=\"recent\"><h2>Recent refusals and failures (this node)</h2>");
    body.push_str(&table("<th>When</th><th>What</th><th>Detail</th>"));
    for r in v.recent.iter().rev() {
        body.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            crate::clock::format_ms(r.at_ms),
            escape(&r.kind),
            escape(&r.text)
        ));
    }
    if v.recent.is_empty() {
        body.push_str("<tr><td colspan=\"3\" class=\"muted\">None.</td></tr>");
    }
    body.push_str(TABLE_END);
    body.push_str("</section>");

    body.push_str("<section id=\"tls\"><h2>TLS failures in the last 7 days</h2>");
    body.push_str(&table(
        "<th>Receiving domain</th><th>Sessions</th><th>Failed</th><th>Why (RFC 8460)</th>",
    ));
    for w in v.tls_failures {
        let why: Vec<String> = w
            .failures
            .iter()
            .map(|(result, n)| format!("{} {n}", escape(result)))
            .collect();
        body.push_str(&format!(
            "<tr class=\"tls-failure\"><td>{}</td><td>{}</td><td class=\"bad\">{}</td><td>{}</td></tr>",
            escape(&w.domain),
            w.sessions,
            w.failed,
            why.join(", ")
        ));
    }
    if v.tls_failures.is_empty() {
        body.push_str("<tr><td colspan=\"4\" class=\"muted\">None.</td></tr>");
    }
    body.push_str(TABLE_END);
    body.push_str(
        "<p class=\"muted\">Per domain: <code>kiln tls-report show DOMAIN</code>.</p></section>",
    );

    body.push_str("<section id=\"blocklist\"><h2>Blocklist</h2><form method=\"get\" action=\"/console\"><input name=\"blocklist\" placeholder=\"address\" size=\"40\"> <button>Search</button></form>");
    match &v.blocklist {
        Some((address, Some(b))) => body.push_str(&format!(
            "<p class=\"bad\" id=\"blocklist-answer\">{} is blocklisted since {}: {}</p>",
            escape(address),
            crate::clock::format_ms(b.at_ms),
            escape(&b.reason)
        )),
        Some((address, None)) => body.push_str(&format!(
            "<p class=\"ok\" id=\"blocklist-answer\">{} is not blocklisted.</p>",
            escape(address)
        )),
        None => {}
    }
    body.push_str("</section>");
    layout("Operator", Some(("operator", v.csrf)), &body)
}

pub struct AccountView<'a> {
    pub account: &'a str,
    pub csrf: &'a str,
    pub rows: &'a [DomainRow],
    pub daily: &'a Daily,
    pub templates: &'a [Template],
    pub tasks: &'a [Task],
}

fn template_status(status: u8) -> (&'static str, &'static str) {
    use crate::ses::templates::{APPROVED, PENDING, REJECTED};
    match status {
        APPROVED => ("approved", "ok"),
        PENDING => ("under review", "muted"),
        REJECTED => ("rejected", "bad"),
        _ => ("unknown", "muted"),
    }
}

fn task_status(status: u8) -> &'static str {
    use crate::ses::tasks::{DONE, FAILED, PAUSED, SENDING, WAITING};
    match status {
        WAITING => "waiting",
        SENDING => "sending",
        PAUSED => "paused",
        FAILED => "failed",
        DONE => "done",
        _ => "other",
    }
}

pub fn account(v: &AccountView) -> String {
    let mut body = domains_table(v.rows, false);
    body.push_str(&charts(v.daily));
    body.push_str("<section id=\"templates\"><h2>Templates</h2>");
    body.push_str(&table(
        "<th>Id</th><th>Name</th><th>Status</th><th>Reasons</th>",
    ));
    for t in v.templates {
        let (status, class) = template_status(t.status);
        body.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td class=\"{class}\">{status}</td><td>{}</td></tr>",
            t.id,
            escape(&t.name),
            escape(&t.reasons.join("; "))
        ));
    }
    if v.templates.is_empty() {
        body.push_str("<tr><td colspan=\"4\" class=\"muted\">No templates yet.</td></tr>");
    }
    body.push_str(TABLE_END);
    body.push_str("</section><section id=\"tasks\"><h2>Batch tasks</h2>");
    body.push_str(&table(
        "<th>Id</th><th>Subject</th><th>Status</th><th>Progress</th>",
    ));
    for t in v.tasks {
        let share = (100 * t.processed)
            .checked_div(t.request_count)
            .unwrap_or(0)
            .min(100);
        body.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} of {} <span class=\"bar\"><span style=\"width:{share}%\"></span></span></td></tr>",
            t.id,
            escape(&t.subject),
            task_status(t.status),
            t.processed,
            t.request_count
        ));
    }
    if v.tasks.is_empty() {
        body.push_str("<tr><td colspan=\"4\" class=\"muted\">No batch tasks yet.</td></tr>");
    }
    body.push_str(TABLE_END);
    body.push_str("</section>");
    layout(
        &format!("Account {}", v.account),
        Some((v.account, v.csrf)),
        &body,
    )
}
