//! Sending the TLS reports (RFC 8460 section 3 and 5): once a UTC day has
//! ended, each receiving domain Kiln connected to that publishes
//! `_smtp._tls` (`v=TLSRPTv1; rua=...`) gets the day's aggregate report,
//! gzipped JSON (`application/tlsrpt+gzip`): by mail to its `mailto:`
//! addresses, DKIM-signed for the reporting domain and queued like any
//! message (so the retry schedule carries it), and by POST to its `https:`
//! ones. One node sends each domain's report: the first to claim it in the
//! store.

use super::mta_sts;
use super::tls_report;
use crate::dns::MxResolver;
use crate::outbound_http::Destinations;
use crate::services::Services;
use serde::Serialize;
use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

/// How often a node looks for reports due.
const ROUND: Duration = Duration::from_secs(300);
/// How long a report's POST may take.
const POST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a claim on a day's report is kept (past the counts it reads).
const CLAIM_KEPT: Duration = Duration::from_secs(9 * 86_400);
/// The most addresses of each kind one record may name.
const MAX_RUA: usize = 10;

/// What became of a report for one of its addresses.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Sent {
    pub domain: String,
    pub day: String,
    /// `mailto:...` or `https://...`; empty when the domain asks for none.
    pub to: String,
    /// `queued MESSAGE-ID`, `posted HTTP-STATUS`, or why it was not sent.
    pub result: String,
}

/// Where a domain's `_smtp._tls` record asks reports to go: its `rua`
/// URIs of the two kinds RFC 8460 defines. None when the text is not a
/// TLSRPTv1 record.
pub fn parse_rua(txt: &str) -> Option<Vec<String>> {
    let mut fields = txt.split(';').map(str::trim);
    let version = fields.next()?;
    if !version.replace(' ', "").eq_ignore_ascii_case("v=TLSRPTv1") {
        return None;
    }
    let rua = fields.find_map(|f| {
        let (k, v) = f.split_once('=')?;
        k.trim().eq_ignore_ascii_case("rua").then(|| v.trim())
    })?;
    let uris: Vec<String> = rua
        .split(',')
        .map(str::trim)
        .filter(|u| {
            let lower = u.to_ascii_lowercase();
            (lower.starts_with("mailto:") && u.len() > 7 && u.contains('@'))
                || lower.starts_with("https://")
        })
        .take(MAX_RUA)
        .map(String::from)
        .collect();
    (!uris.is_empty()).then_some(uris)
}

/// The address of a `mailto:` URI (its query, if any, left off).
fn mailbox(uri: &str) -> String {
    let address = &uri["mailto:".len()..];
    let address = address.split('?').next().unwrap_or(address);
    address.replace("%40", "@").trim().to_string()
}

/// Gzip of `bytes`.
fn gzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(bytes)?;
    z.finish()
}

/// The report mail RFC 8460 section 5.3 describes: a `multipart/report`
/// of type `tlsrpt`, a line for people, the gzipped JSON attached.
#[allow(clippy::too_many_arguments)]
fn report_mail(
    from: &str,
    to: &[String],
    submitter: &str,
    domain: &str,
    report_id: &str,
    day_start_s: i64,
    gz: Vec<u8>,
    message_id: &str,
) -> std::io::Result<Vec<u8>> {
    use mail_builder::MessageBuilder;
    use mail_builder::headers::content_type::ContentType;
    use mail_builder::headers::raw::Raw;
    use mail_builder::mime::MimePart;
    let file = format!(
        "{submitter}!{domain}!{day_start_s}!{}!{}.json.gz",
        day_start_s + 86_399,
        report_id.replace(['@', '!', '/'], "_"),
    );
    let text = format!(
        "This is an aggregate TLS report (RFC 8460) from {submitter} for {domain}: \
         the TLS sessions of its mail to {domain}'s MX hosts.\n"
    );
    let parts = vec![
        MimePart::new("text/plain", text),
        MimePart::new("application/tlsrpt+gzip", gz).attachment(file),
    ];
    MessageBuilder::new()
        .from(from)
        .to(to.iter().map(String::as_str).collect::<Vec<_>>())
        .subject(format!(
            "Report Domain: {domain} Submitter: {submitter} Report-ID: <{report_id}>"
        ))
        .message_id(message_id)
        .header("TLS-Report-Domain", Raw::new(domain.to_string()))
        .header("TLS-Report-Submitter", Raw::new(submitter.to_string()))
        .body(MimePart::new(
            ContentType::new("multipart/report").attribute("report-type", "tlsrpt"),
            parts,
        ))
        .write_to_vec()
}

/// Sends reports, on the daily round or when an operator asks.
pub struct TlsReportSender {
    resolver: Arc<MxResolver>,
    http: reqwest::Client,
    /// Where reports may be posted (an endpoint's address literal is
    /// checked against it before the request).
    allowed: Destinations,
    /// The last day whose every domain this node has claimed or seen
    /// claimed: nothing of it is left to do here.
    swept: std::sync::Mutex<String>,
}

impl TlsReportSender {
    /// `tls`: the verifying client configuration (the platform's roots and
    /// `delivery.tls_ca_file`), as for MTA-STS policy hosts.
    pub fn new(
        resolver: Arc<MxResolver>,
        tls: &Arc<rustls::ClientConfig>,
        allowed: Destinations,
    ) -> reqwest::Result<TlsReportSender> {
        let http = mta_sts::https_client(&resolver, tls, POST_TIMEOUT, &allowed)?;
        Ok(TlsReportSender {
            resolver,
            http,
            allowed,
            swept: std::sync::Mutex::new(String::new()),
        })
    }

    /// Every node, every few minutes: the reports of the day before, each
    /// sent by the node that claims it first.
    pub async fn run(
        self: Arc<Self>,
        ctx: Arc<Services>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(ROUND) => {}
            }
            for sent in self.send_due(&ctx, false).await {
                tracing::info!(domain = %sent.domain, day = %sent.day, to = %sent.to, result = %sent.result, "TLS report");
            }
        }
    }

    /// The reports due: yesterday's (UTC) not yet claimed by a node, and
    /// with `today_too` today's so far (not claimed: the full day's goes
    /// out tomorrow as well).
    pub async fn send_due(&self, ctx: &Services, today_too: bool) -> Vec<Sent> {
        let now = ctx.store.now_ms();
        let yesterday = tls_report::day_of(now - 86_400_000);
        let swept = |day: &str| *self.swept.lock().unwrap_or_else(|p| p.into_inner()) == day;
        // Once a day is swept, each round would only count its claims up.
        let mut days = Vec::new();
        if !swept(&yesterday) {
            days.push((yesterday, true));
        }
        if today_too {
            days.push((tls_report::day_of(now), false));
        }
        let mut out = Vec::new();
        for (day, claim) in days {
            let domains = match ctx.store.set_members(&format!("tlsrpt:{day}")).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(%day, error = %e, "TLS reports: the day's domains could not be read");
                    continue;
                }
            };
            let mut all_claimed = true;
            for domain in domains {
                if claim {
                    let claimed = ctx
                        .store
                        .incr(&format!("tlsrpt:sent:{day}:{domain}"), 1, CLAIM_KEPT)
                        .await;
                    all_claimed &= claimed.is_ok();
                    if !matches!(claimed, Ok(1)) {
                        continue;
                    }
                }
                out.extend(self.send(ctx, &domain, &day).await);
            }
            if claim && all_claimed {
                *self.swept.lock().unwrap_or_else(|p| p.into_inner()) = day;
            }
        }
        out
    }

    /// `domain`'s report for `day`, to every address its record names.
    pub async fn send(&self, ctx: &Services, domain: &str, day: &str) -> Vec<Sent> {
        let sent = |to: &str, result: String| Sent {
            domain: domain.to_string(),
            day: day.to_string(),
            to: to.to_string(),
            result,
        };
        let rua = match self.rua_of(domain).await {
            Ok(Some(rua)) => rua,
            Ok(None) => return vec![sent("", "no _smtp._tls record: no report wanted".into())],
            Err(e) => return vec![sent("", format!("_smtp._tls lookup failed: {e}"))],
        };
        let submitter = ctx.settings.server.hostname.clone();
        let policy = mta_sts::kept_policy(&ctx.store, domain).await;
        let report =
            match tls_report::report(&ctx.store, domain, day, &submitter, policy.as_ref()).await {
                Ok(Some(r)) => r,
                Ok(None) => return vec![sent("", "no session counted".into())],
                Err(e) => return vec![sent("", format!("the counts could not be read: {e}"))],
            };
        let report_id = report["report-id"].as_str().unwrap_or_default().to_string();
        let gz = match serde_json::to_vec(&report)
            .map_err(std::io::Error::other)
            .and_then(|json| gzip(&json))
        {
            Ok(gz) => gz,
            Err(e) => return vec![sent("", format!("the report could not be made: {e}"))],
        };
        let (mail, web): (Vec<String>, Vec<String>) = rua
            .into_iter()
            .partition(|u| u.to_ascii_lowercase().starts_with("mailto:"));
        let mut out = Vec::new();
        for url in web {
            if let Err(refused) = self.allowed.check_url(&url, mta_sts::HTTPS_ALLOW_NETWORKS) {
                out.push(sent(&url, format!("not posted: {refused}")));
                continue;
            }
            let result = match self
                .http
                .post(&url)
                .header(reqwest::header::CONTENT_TYPE, "application/tlsrpt+gzip")
                .body(gz.clone())
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => format!("posted {}", r.status().as_u16()),
                Ok(r) => format!("refused: HTTP {}", r.status().as_u16()),
                Err(e) => format!("not posted: {}", crate::outbound_http::error_chain(&e)),
            };
            out.push(sent(&url, result));
        }
        if !mail.is_empty() {
            let result = self
                .mail(ctx, domain, day, &submitter, &report_id, gz, &mail)
                .await;
            out.extend(mail.iter().map(|to| sent(to, result.clone())));
        }
        out
    }

    /// The report queued for the `mailto:` addresses `to`, signed for the
    /// reporting domain.
    #[allow(clippy::too_many_arguments)]
    async fn mail(
        &self,
        ctx: &Services,
        domain: &str,
        day: &str,
        submitter: &str,
        report_id: &str,
        gz: Vec<u8>,
        to: &[String],
    ) -> String {
        use crate::intake::submission::{Door, Envelope, Submission, Trace, TriggerType};
        let from = ctx.settings.tls_report_from();
        let from_domain = crate::net::domain_of(&from);
        // RFC 8460 5.3: a report by mail is DKIM-signed by its submitter.
        match crate::ses::dkim::load_keys(&ctx.store, &from_domain).await {
            Ok(keys) if !keys.is_empty() => {}
            Ok(_) => {
                return format!(
                    "not sent: {from_domain} has no DKIM key to sign it with (kiln dkim create {from_domain})"
                );
            }
            Err(e) => return format!("not sent: the DKIM key could not be read: {e}"),
        }
        let day_start_s = format!("{day}T00:00:00Z")
            .parse::<jiff::Timestamp>()
            .map(|t| t.as_second())
            .unwrap_or_default();
        let id = uuid::Uuid::now_v7().simple().to_string();
        let hostname = &ctx.settings.server.hostname;
        let recipients: Vec<String> = to.iter().map(|u| mailbox(u)).collect();
        let body = match report_mail(
            &from,
            &recipients,
            submitter,
            domain,
            report_id,
            day_start_s,
            gz,
            &format!("{id}@{hostname}"),
        ) {
            Ok(b) => b,
            Err(e) => return format!("not sent: the mail could not be made: {e}"),
        };
        let trace = Trace {
            id: &id,
            helo: "localhost",
            peer: std::net::Ipv4Addr::LOCALHOST.into(),
            hostname,
            protocol: "local",
            recipient: None,
            now_ms: ctx.store.now_ms(),
        };
        let envelope = Envelope {
            account: String::new(),
            sender: from.clone(),
            recipients,
            trigger_type: TriggerType::Regular,
            require_tls: false,
            door: Door::Report,
            origin: format!("TLS report for {domain}"),
            template_id: String::new(),
            task_id: String::new(),
        };
        match crate::intake::admission::admit(ctx, Submission::new(&body, &trace, envelope)).await {
            Ok(admitted) => format!("queued {}", admitted.id),
            Err(refused) => format!("not sent: {}", refused.reason()),
        }
    }

    /// The `rua` of `domain`'s `_smtp._tls` record; None without one (or
    /// with more than one, RFC 8460 3).
    async fn rua_of(&self, domain: &str) -> Result<Option<Vec<String>>, String> {
        let name = format!("_smtp._tls.{}", domain.trim_end_matches('.'));
        let records: Vec<Vec<String>> = self
            .resolver
            .txt(&name)
            .await?
            .iter()
            .filter_map(|t| parse_rua(t))
            .collect();
        Ok((records.len() == 1).then(|| records[0].clone()))
    }
}

impl crate::services::TlsReportsView for TlsReportSender {
    fn send_now<'a>(
        &'a self,
        ctx: &'a Services,
    ) -> futures::future::BoxFuture<'a, serde_json::Value> {
        Box::pin(async move { serde_json::json!({ "sent": self.send_due(ctx, true).await }) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::MimeHeaders;

    #[test]
    fn rua_records_parse_as_the_rfc_says() {
        assert_eq!(
            parse_rua("v=TLSRPTv1;rua=mailto:reports@example.com"),
            Some(vec!["mailto:reports@example.com".to_string()])
        );
        assert_eq!(
            parse_rua(
                "v=TLSRPTv1; rua=https://reporting.example.com/v1/tlsrpt, mailto:tls@example.com"
            ),
            Some(vec![
                "https://reporting.example.com/v1/tlsrpt".to_string(),
                "mailto:tls@example.com".to_string()
            ])
        );
        // Another version, no rua, only schemes RFC 8460 does not define.
        for bad in [
            "v=TLSRPTv2; rua=mailto:a@example.com",
            "v=STSv1; id=1",
            "v=TLSRPTv1;",
            "v=TLSRPTv1; rua=http://plain.example.com/, ftp://x/",
            "rua=mailto:a@example.com; v=TLSRPTv1",
        ] {
            assert_eq!(parse_rua(bad), None, "{bad}");
        }
        assert_eq!(
            mailbox("mailto:tls%40example.com?subject=x"),
            "tls@example.com"
        );
    }

    #[test]
    fn the_mail_is_a_tlsrpt_report_with_the_json_gzipped() {
        let json = br#"{"report-id":"2026-12-05_example.com@mx.kiln.test"}"#;
        let gz = gzip(json).unwrap();
        let body = report_mail(
            "tls-reports@mx.kiln.test",
            &["tls@example.com".into()],
            "mx.kiln.test",
            "example.com",
            "2026-12-05_example.com@mx.kiln.test",
            1_796_428_800,
            gz,
            "abc@mx.kiln.test",
        )
        .unwrap();
        let parsed = mail_parser::MessageParser::default().parse(&body).unwrap();
        assert_eq!(
            parsed.subject(),
            Some(
                "Report Domain: example.com Submitter: mx.kiln.test Report-ID: <2026-12-05_example.com@mx.kiln.test>"
            )
        );
        let ct = parsed.content_type().unwrap();
        assert_eq!(ct.ctype(), "multipart");
        assert_eq!(ct.subtype(), Some("report"));
        assert_eq!(ct.attribute("report-type"), Some("tlsrpt"));
        assert_eq!(
            parsed.header_raw("TLS-Report-Domain").map(str::trim),
            Some("example.com")
        );
        let attachment = parsed.attachment(0).unwrap();
        let act = attachment.content_type().unwrap();
        assert_eq!(
            (act.ctype(), act.subtype()),
            ("application", Some("tlsrpt+gzip"))
        );
        assert_eq!(
            attachment.attachment_name(),
            Some(
                "mx.kiln.test!example.com!1796428800!1796515199!2026-12-05_example.com_mx.kiln.test.json.gz"
            )
        );
        let mut unzipped = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(attachment.contents()),
            &mut unzipped,
        )
        .unwrap();
        assert_eq!(unzipped, json);
    }
}
