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
header h1{font-size:18px;margin:0}main{padding:16px 20px;max-width:1100px}\
section{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:12px 16px;margin:0 0 16px}\
h2{font-size:15px;margin:0 0 8px}table{border-collapse:collapse;width:100%}\
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eceef1;font-variant-numeric:tabular-nums}\
th{font-weight:600;color:#555}.ok{color:#1a7f37}.bad{color:#b42318}.muted{color:#777}\
.bar{background:#e6e9ee;border-radius:3px;height:8px;width:120px;display:inline-block;vertical-align:middle}\
.bar span{display:block;height:8px;border-radius:3px;background:#2f6fdf}\
form.inline{display:inline}input,select,button{font:inherit;padding:3px 6px}\
.chart .title{font-weight:600;font-size:13px}.chart .axis{font-size:10px;fill:#666}.chart .grid{stroke:#eceef1}\
.note{background:#eef6ff;border:1px solid #b6d4fe;padding:6px 10px;border-radius:4px;margin-bottom:12px}";

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
    let rate = |num: &[f64], den: &[f64]| -> Vec<f64> {
        num.iter().zip(den).map(|(n, d)| pct(*n, *d)).collect()
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
    format!("<section id=\"charts\"><h2>Statistics</h2>{volume}{rates}</section>")
}

fn domains_table(rows: &[DomainRow], with_account: bool) -> String {
    let mut t = String::from("<section id=\"domains\"><h2>Sender domains</h2><table><tr>");
    if with_account {
        t.push_str("<th>Account</th>");
    }
    t.push_str("<th>Domain</th><th>Verified</th><th>Reputation level</th><th>Sent today / daily quota</th><th>Warm-up day</th><th>Today's warm-up cap</th></tr>");
    for r in rows {
        t.push_str("<tr>");
        if with_account {
            t.push_str(&format!("<td>{}</td>", escape(&r.account)));
        }
        let share = if r.quota > 0 {
            (100 * r.sent_today / r.quota).min(100)
        } else {
            0
        };
        let (day, cap) = match r.warmup {
            Some((d, c)) => (d.to_string(), format!("{} of {c}", r.sent_today)),
            None => ("—".into(), "no cap".into()),
        };
        t.push_str(&format!(
            "<td class=\"domain\">{}</td><td class=\"{}\">{}</td><td class=\"level\">{}</td>\
             <td class=\"quota\">{} / {} <span class=\"bar\"><span style=\"width:{share}%\"></span></span></td><td>{day}</td><td>{cap}</td></tr>",
            escape(&r.domain),
            if r.verified { "ok" } else { "bad" },
            if r.verified { "yes" } else { "no" },
            r.level,
            r.sent_today,
            r.quota,
        ));
    }
    if rows.is_empty() {
        t.push_str("<tr><td colspan=\"7\" class=\"muted\">No sender domains yet.</td></tr>");
    }
    t.push_str("</table></section>");
    t
}

pub struct OperatorView<'a> {
    pub csrf: &'a str,
    pub rows: &'a [DomainRow],
    pub daily: &'a Daily,
    pub queue: &'a [Value],
    pub shaping: &'a [Value],
    pub recent: &'a [Recent],
    pub blocklist: Option<(String, Option<BlockedAddress>)>,
    pub done: Option<&'a str>,
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
    body.push_str(&charts(v.daily));

    body.push_str("<section id=\"queue\"><h2>Queue by provider</h2><table><tr><th>Provider</th><th>Queued</th><th>Due</th><th>Waiting</th><th>Being attempted</th><th>Oldest</th></tr>");
    for g in v.queue {
        body.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} s</td></tr>",
            escape(g["key"].as_str().unwrap_or_default()),
            g["count"],
            g["due"],
            g["waiting"],
            g["leased"],
            g["oldest_age_s"]
        ));
    }
    if v.queue.is_empty() {
        body.push_str("<tr><td colspan=\"6\" class=\"muted\">The queue is empty.</td></tr>");
    }
    body.push_str("</table><h2>Shaping</h2><table><tr><th>Provider</th><th>Source</th><th>Connections now</th><th>Pace factor</th><th>Suspended until</th><th>Last signal</th></tr>");
    for p in v.shaping {
        body.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(p["provider"].as_str().unwrap_or_default()),
            escape(p["source"].as_str().unwrap_or_default()),
            p["connections_now"],
            p["factor"],
            p["suspended_until_ms"]
                .as_i64()
                .map(crate::clock::format_ms)
                .unwrap_or_else(|| "—".into()),
            escape(p["last_signal"]["rule"].as_str().unwrap_or("—")),
        ));
    }
    body.push_str("</table>");
    body.push_str(&format!(
        "<h2>Steer the queue</h2><form method=\"post\" action=\"/console/queue\" id=\"queue-control\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <select name=\"action\"><option>suspend</option><option>resume</option><option>retry-now</option><option>bounce</option></select> \
         <input name=\"select\" placeholder=\"domain:example.com\" required size=\"30\"> \
         <input name=\"reason\" placeholder=\"reason (for a bounce)\" size=\"30\"> <button>Apply</button></form></section>",
        escape(v.csrf)
    ));

    body.push_str("<section id=\"recent\"><h2>Recent refusals and failures (this node)</h2><table><tr><th>When</th><th>What</th><th>Detail</th></tr>");
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
    body.push_str("</table></section>");

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
    body.push_str("<section id=\"templates\"><h2>Templates</h2><table><tr><th>Id</th><th>Name</th><th>Status</th><th>Reasons</th></tr>");
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
    body.push_str("</table></section><section id=\"tasks\"><h2>Batch tasks</h2><table><tr><th>Id</th><th>Subject</th><th>Status</th><th>Progress</th></tr>");
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
    body.push_str("</table></section>");
    layout(
        &format!("Account {}", v.account),
        Some((v.account, v.csrf)),
        &body,
    )
}
