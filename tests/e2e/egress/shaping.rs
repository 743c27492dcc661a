//! Traffic shaping, checked at the receivers: simulated providers on their
//! own loopback addresses, named in the test DNS by MX hosts under real
//! providers' suffixes, each counting on its own side what every sending
//! address did and answering 421 to what breaks a limit.

use crate::harness::{BOTH, Backend, env, second_node};
use kiln_testkit::client::{SmtpClient, message};
use kiln_testkit::dns::DnsServer;
use kiln_testkit::provider::{Limits, Provider};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// The sources Kiln sends from in these tests.
const SOURCE_A: &str = "127.0.0.5";
const SOURCE_B: &str = "127.0.0.6";

/// A simulated provider at `ip` on the MX port, its MX host `mx`, and
/// `domains` recipient domains hosted there.
pub async fn provider(
    dns: &DnsServer,
    port: u16,
    name: &str,
    ip: &str,
    mx: &str,
    domains: &[String],
    limits: Limits,
) -> Provider {
    let addr = SocketAddr::new(ip.parse().unwrap(), port);
    let p = Provider::start(name, addr, limits).await;
    dns.add_ip(mx, ip.parse().unwrap());
    for d in domains {
        dns.add_mx(d, 10, mx);
    }
    p
}

fn domains(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}.test")).collect()
}

/// The permissive policy, with `egress` settings.
pub fn policy_with_egress(egress: &str) -> String {
    format!(
        r#"
return {{ config = {{
  limits = {{ rate_per_second = 1e9, account_daily_limit = 1e12, per_recipient_per_hour = 1e12 }},
  reputation = {{ initial_level = 20 }},
  warmup = {{ curve = {{ 1e12 }} }},
  egress = {{ {egress} }},
}} }}
"#
    )
}

/// Queues one recipient for each of `rcpts`, 50 to a message, over one
/// relay session; panics unless every message is taken.
pub async fn queue_for(smtp: SocketAddr, rcpts: &[String]) {
    let mut c = SmtpClient::connect(smtp).await.unwrap();
    c.cmd("EHLO load.test").await.unwrap();
    for chunk in rcpts.chunks(50) {
        let to: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let body = message("load@shop.test", to[0], "shaped", 1024);
        let r = c.send("load@shop.test", &to, &body).await.unwrap();
        assert_eq!(r.code, 250, "{r:?}");
    }
    c.quit().await;
}

/// Every recipient of `n` per domain, for each domain.
fn recipients(domains: &[String], per_domain: usize) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..per_domain {
        for d in domains {
            out.push(format!("r{i}@{d}"));
        }
    }
    out
}

/// Checks what one provider saw: no breach, both sources used, and each
/// address within the connection limits.
fn assert_within(p: &Provider, limits: Limits, what: &str) {
    let v = p.violations();
    assert!(
        v.is_empty(),
        "{what}: {}: {} breaches: {:?}",
        p.name,
        v.len(),
        &v[..v.len().min(5)]
    );
    let peers = p.peers();
    for ip in [SOURCE_A, SOURCE_B] {
        let ip: IpAddr = ip.parse().unwrap();
        let seen = peers.get(&ip);
        assert!(
            seen.is_some_and(|s| s.messages > 0),
            "{what}: {}: nothing from {ip}: {peers:?}",
            p.name
        );
        let seen = seen.unwrap();
        if let Some(max) = limits.connections {
            assert!(
                seen.peak_open <= max,
                "{what}: {}: {ip} had {} open",
                p.name,
                seen.peak_open
            );
        }
        if let Some(max) = limits.messages_per_connection {
            assert!(
                seen.peak_per_connection <= max,
                "{what}: {}: {ip}: {} on one connection",
                p.name,
                seen.peak_per_connection
            );
        }
    }
    for ip in peers.keys() {
        assert!(
            [SOURCE_A, SOURCE_B].contains(&ip.to_string().as_str()),
            "{what}: {}: mail from {ip}, not a configured source",
            p.name
        );
    }
}

const GMAIL: Limits = Limits {
    connections: Some(2),
    messages_per_connection: Some(10),
    per_second: Some(30),
    per_minute: None,
    new_connections_per_minute: Some(240),
};
const QQ: Limits = Limits {
    connections: Some(1),
    messages_per_connection: Some(5),
    per_second: Some(10),
    per_minute: None,
    new_connections_per_minute: Some(120),
};
/// A site of its own (no provider's MX): the default limits.
const SITE: Limits = Limits {
    connections: Some(2),
    messages_per_connection: Some(20),
    per_second: Some(20),
    per_minute: None,
    new_connections_per_minute: None,
};

/// Kiln's side of the same limits, and two sources in the default pool.
const EGRESS: &str = r#"
  sources = { a = { address = "127.0.0.5", ehlo = "a.kiln.test" },
              b = { address = "127.0.0.6", ehlo = "b.kiln.test" } },
  pools = { default = { "a", "b" } },
  providers = { gmail = { connections = 2, messages_per_connection = 10, per_second = 30,
                          new_connections_per_minute = 240 },
                qq = { connections = 1, messages_per_connection = 5, per_second = 10,
                       new_connections_per_minute = 120 } },
  defaults = { connections = 2, messages_per_connection = 20, per_second = 20 },
"#;

/// Two providers and a site hosting ten domains on one MX, mail from two
/// sources: every limit holds at every receiver, on one node of each store
/// and on two nodes sharing one Redis, and the mail drains near the pace
/// the limits allow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_hold_at_every_receiver() {
    for (backend, nodes) in [
        (Backend::Embedded, 1),
        (Backend::Redis, 1),
        (Backend::Redis, 2),
        (Backend::RedisCluster, 2),
        (Backend::Sentinel, 2),
    ] {
        let what = format!("{backend:?}, {nodes} node(s)");
        let setup = |o: &mut kiln_testkit::process::KilnOptions| {
            o.listener = "relay_networks = [\"127.0.0.0/8\"]".into();
            o.policy = policy_with_egress(EGRESS);
        };
        let e = env(backend, setup).await;
        let port = e.sink.addr.port();
        let (gd, qd, sd) = (
            domains("gw", 5),
            domains("qqhosted", 2),
            domains("shared", 10),
        );
        let gmail = provider(
            &e.dns,
            port,
            "gmail",
            "127.0.0.21",
            "alt1.aspmx.l.google.com",
            &gd,
            GMAIL,
        )
        .await;
        let qq = provider(&e.dns, port, "qq", "127.0.0.22", "mx3.qq.com", &qd, QQ).await;
        let site = provider(
            &e.dns,
            port,
            "site",
            "127.0.0.23",
            "mx.shared.test",
            &sd,
            SITE,
        )
        .await;
        let b = (nodes == 2).then(|| second_node(&e, setup));

        let (g, q, s) = (
            recipients(&gd, 60),
            recipients(&qd, 50),
            recipients(&sd, 20),
        );
        let started = Instant::now();
        match &b {
            Some(b) => {
                let (half_g, rest_g) = g.split_at(g.len() / 2);
                tokio::join!(
                    queue_for(e.kiln.smtp, half_g),
                    queue_for(b.smtp, rest_g),
                    queue_for(e.kiln.smtp, &q),
                    queue_for(b.smtp, &s)
                );
            }
            None => {
                tokio::join!(
                    queue_for(e.kiln.smtp, &g),
                    queue_for(e.kiln.smtp, &q),
                    queue_for(e.kiln.smtp, &s)
                );
            }
        }
        // The shortest drains the limits allow, two sources each:
        // gmail 300 at 60/s, qq 100 at 20/s, the site 200 at 40/s.
        let bound = [300.0 / 60.0, 100.0 / 20.0, 200.0 / 40.0f64]
            .into_iter()
            .fold(0.0, f64::max);
        let all = crate::harness::wait_until(Duration::from_secs(60), || {
            gmail.delivered() >= 300 && qq.delivered() >= 100 && site.delivered() >= 200
        })
        .await;
        let took = started.elapsed().as_secs_f64();
        assert!(
            all,
            "{what}: delivered gmail {}, qq {}, site {}; breaches {:?} {:?} {:?}\n{}",
            gmail.delivered(),
            qq.delivered(),
            site.delivered(),
            gmail.violations(),
            qq.violations(),
            site.violations(),
            e.kiln
                .log_text()
                .lines()
                .filter(|l| !l.contains("outcome=Delivered") && !l.contains("event=delivered"))
                .take(40)
                .collect::<Vec<_>>()
                .join("\n")
        );
        let shown = String::from_utf8_lossy(&e.kiln.command(&["egress"]).stdout).to_string();
        for name in ["\"gmail\"", "\"qq\"", "\"a\"", "\"b\""] {
            assert!(
                shown.contains(name),
                "{what}: kiln egress shows no {name}: {shown}"
            );
        }
        assert_within(&gmail, GMAIL, &what);
        assert_within(&qq, QQ, &what);
        assert_within(&site, SITE, &what);
        // Each recipient once: nothing sent twice by two nodes.
        for p in [&gmail, &qq, &site] {
            let mut r = p.recipients();
            let n = r.len();
            r.sort();
            r.dedup();
            assert_eq!(r.len(), n, "{what}: {} got duplicates", p.name);
        }
        // Near the limits' pace (generous: CI machines are loaded).
        assert!(
            took < bound * 2.5 + 3.0,
            "{what}: drained in {took:.1} s, bound {bound:.1} s"
        );
        eprintln!("{what}: drained in {took:.2} s, bound {bound:.2} s");
        for p in [&gmail, &qq, &site] {
            for (ip, r) in p.peers() {
                let mut per_s = vec![0; 40];
                for t in &r.times {
                    let i = t.duration_since(started).as_secs() as usize;
                    if i < 40 {
                        per_s[i] += 1;
                    }
                }
                eprintln!("{} {ip}: conns {} {:?}", p.name, r.connections, per_s);
            }
        }
    }
}

/// Gmail's answer to a sender going too fast.
const GMAIL_RATE_REPLY: &str = "421 4.7.28 [127.0.0.1] Our system has detected an unusual rate of \
    unsolicited mail originating from your IP address. To protect our users from spam, mail sent \
    from your IP address has been temporarily rate limited. Please try again later.";

/// Messages a second `p` took in the two seconds after the first: a rate,
/// measured over time (these waits wait for no event).
async fn rate_after_settling(p: &Provider) -> f64 {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let from = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    p.accepted_between(from, Instant::now()) as f64 / 2.0
}

/// A provider that answers Gmail's rate reply: Kiln stops within a few
/// replies (the pair is suspended), mail to another provider goes on as
/// before, nothing bounces, and when the suspension is over the rate comes
/// back in steps, a quiet period (Kiln's clock) each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttling_provider_is_suspended_then_climbs_back_in_steps() {
    for backend in BOTH {
        let n = crate::node::node(backend, |o| {
            o.listener = "relay_networks = [\"127.0.0.0/8\"]".into();
            o.queue = "retry_schedule = [60]".into();
            o.policy = policy_with_egress(
                "providers = { gmail = { connections = 2, per_second = 20, \
                 messages_per_connection = 1000 } },",
            );
        })
        .await;
        let port = n.sink.addr.port();
        let gd = domains("gw", 10);
        let gmail = provider(
            &n.dns,
            port,
            "gmail",
            "127.0.0.31",
            "aspmx.l.google.com",
            &gd,
            Limits::default(),
        )
        .await;
        let od = domains("other", 5);
        let other = provider(
            &n.dns,
            port,
            "other",
            "127.0.0.32",
            "mx.other.test",
            &od,
            Limits::default(),
        )
        .await;
        gmail.throttle(Some(GMAIL_RATE_REPLY));

        queue_for(n.smtp, &recipients(&gd, 20)).await;
        queue_for(n.smtp, &recipients(&od, 20)).await;
        // The other provider's mail is not held up.
        let others =
            crate::harness::wait_until(Duration::from_secs(10), || other.delivered() >= 100).await;
        assert!(
            others,
            "{backend:?}: the other provider got {} of 100",
            other.delivered()
        );
        // A few replies (one per open connection at most), then silence.
        assert!(
            crate::harness::wait_until(Duration::from_secs(10), || gmail.throttled() >= 1).await
        );
        crate::harness::nothing_happens_for(
            Duration::from_secs(1),
            "more than 4 throttled attempts",
        )
        .await;
        let replies = gmail.throttled();
        assert!(
            (1..=4).contains(&replies),
            "{backend:?}: {replies} throttled attempts"
        );
        let quiet = Instant::now();
        crate::harness::nothing_happens_for(Duration::from_secs(2), "an attempt while suspended")
            .await;
        assert_eq!(
            gmail.throttled_since(quiet),
            0,
            "{backend:?}: attempts while suspended"
        );
        assert_eq!(gmail.delivered(), 0);
        // The operator sees it (`kiln egress`): suspended, by which rule.
        let view = n.ctx.egress.shaping().await;
        let pair = view
            .iter()
            .find(|p| p["provider"] == "gmail")
            .expect("gmail shown");
        assert_eq!(pair["last_signal"]["rule"], "gmail-rate", "{pair}");
        assert!(pair["suspended_until_ms"].as_i64().is_some(), "{pair}");
        assert_eq!(pair["factor"], 0.5, "{pair}");

        // The provider recovers; Kiln's clock passes the ten-minute
        // suspension: half the rate (10/s), then 15/s after five quiet
        // minutes, then the full 20/s after five more.
        gmail.throttle(None);
        let minute = 60_000;
        n.move_clock_to(n.clock.now_ms() + 10 * minute + 1_000);
        let half = rate_after_settling(&gmail).await;
        n.move_clock_to(n.clock.now_ms() + 5 * minute);
        let three_quarters = rate_after_settling(&gmail).await;
        n.move_clock_to(n.clock.now_ms() + 5 * minute);
        let full = rate_after_settling(&gmail).await;
        eprintln!(
            "{backend:?}: after the suspension {half}/s, then {three_quarters}/s, then {full}/s"
        );
        assert!(
            half > 5.0 && half <= 10.5,
            "{backend:?}: {half}/s at half the rate"
        );
        assert!(
            three_quarters > half + 2.0 && three_quarters <= 15.5,
            "{backend:?}: {three_quarters}/s"
        );
        assert!(
            full > three_quarters + 2.0 && full <= 20.5,
            "{backend:?}: {full}/s"
        );
        // Everything delivered in the end: nothing bounced.
        let all =
            crate::harness::wait_until(Duration::from_secs(20), || gmail.delivered() >= 200).await;
        assert!(
            all,
            "{backend:?}: {} of 200 delivered after the provider recovered",
            gmail.delivered()
        );
        assert!(gmail.violations().is_empty());
        n.stop().await;
    }
}

/// A pool whose second source is not an address of this host: its mail
/// goes out from the first, at once, and nothing is deferred for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_cannot_connect_is_skipped() {
    let e = env(Backend::Embedded, |o| {
        o.listener = "relay_networks = [\"127.0.0.0/8\"]".into();
        o.policy = policy_with_egress(
            r#"sources = { a = { address = "127.0.0.5" }, gone = { address = "192.0.2.55" } },
               pools = { default = { "a", { source = "gone", weight = 3 } } },"#,
        );
    })
    .await;
    let sd = domains("site", 4);
    let site = provider(
        &e.dns,
        e.sink.addr.port(),
        "site",
        "127.0.0.41",
        "mx.site.test",
        &sd,
        Limits::default(),
    )
    .await;
    let started = Instant::now();
    queue_for(e.kiln.smtp, &recipients(&sd, 25)).await;
    let all = crate::harness::wait_until(Duration::from_secs(10), || site.delivered() >= 100).await;
    assert!(all, "{} of 100 delivered", site.delivered());
    let peers = site.peers();
    assert_eq!(
        peers.keys().map(|ip| ip.to_string()).collect::<Vec<_>>(),
        [SOURCE_A]
    );
    eprintln!(
        "delivered around a broken source in {:?}",
        started.elapsed()
    );
    let log = e.kiln.log_text();
    assert!(
        log.contains("source unusable"),
        "the broken source is not logged"
    );
    assert!(
        !log.contains("outcome=Deferred"),
        "mail was deferred for the broken source"
    );
}

/// The permissive policy with a warm-up curve of 5, then 10, a day for
/// source `a`'s mail to gmail, and the `egress` settings given.
fn policy_with_warmup(egress: &str) -> String {
    policy_with_egress(egress).replace(
        "warmup = { curve = { 1e12 } },",
        r#"warmup = { curve = { 1e12 }, identities = { ["a/gmail"] = { curve = { 5, 10 } } } },"#,
    )
}

/// Messages `p` took from `ip`.
fn from(p: &Provider, ip: &str) -> usize {
    p.peers()
        .get(&ip.parse::<IpAddr>().unwrap())
        .map_or(0, |r| r.messages)
}

/// A warm-up source sends a provider its day's cap and no more: with a
/// warm source in the pool the rest leaves from that one at once; alone,
/// the rest waits for the next days (5, then 10), nothing bounced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_up_source_keeps_to_its_daily_cap() {
    for backend in BOTH {
        // With a warm source beside it.
        let n = crate::node::node(backend, |o| {
            o.listener = "relay_networks = [\"127.0.0.0/8\"]".into();
            o.policy = policy_with_warmup(
                r#"sources = { a = { address = "127.0.0.5", warmup = true }, b = { address = "127.0.0.6" } },
                   pools = { default = { { source = "a", weight = 3 }, "b" } },"#,
            );
        })
        .await;
        let gd = domains("gw", 4);
        let gmail = provider(
            &n.dns,
            n.sink.addr.port(),
            "gmail",
            "127.0.0.61",
            "aspmx.l.google.com",
            &gd,
            Limits::default(),
        )
        .await;
        queue_for(n.smtp, &recipients(&gd, 10)).await;
        let all =
            crate::harness::wait_until(Duration::from_secs(15), || gmail.delivered() >= 40).await;
        assert!(all, "{backend:?}: {} of 40 delivered", gmail.delivered());
        assert_eq!(
            from(&gmail, SOURCE_A),
            5,
            "{backend:?}: the warm-up source's day-one cap"
        );
        assert_eq!(from(&gmail, SOURCE_B), 35, "{backend:?}");
        n.stop().await;

        // Alone in its pool: the rest waits for the next day.
        let n = crate::node::node(backend, |o| {
            o.listener = "relay_networks = [\"127.0.0.0/8\"]".into();
            o.policy = policy_with_warmup(
                r#"sources = { a = { address = "127.0.0.5", warmup = true } },
                   pools = { default = { "a" } },"#,
            );
        })
        .await;
        let gmail = provider(
            &n.dns,
            n.sink.addr.port(),
            "gmail",
            "127.0.0.62",
            "aspmx.l.google.com",
            &gd,
            Limits::default(),
        )
        .await;
        queue_for(n.smtp, &recipients(&gd, 5)).await;
        assert!(
            crate::harness::wait_until(Duration::from_secs(10), || gmail.delivered() >= 5).await
        );
        crate::harness::nothing_happens_for(Duration::from_secs(1), "a delivery past the cap")
            .await;
        assert_eq!(
            gmail.delivered(),
            5,
            "{backend:?}: past the first day's cap"
        );
        let day = 86_400_000;
        n.move_clock_to(n.clock.now_ms() + day);
        assert!(
            crate::harness::wait_until(Duration::from_secs(10), || gmail.delivered() >= 15).await
        );
        crate::harness::nothing_happens_for(Duration::from_secs(1), "a delivery past the cap")
            .await;
        assert_eq!(
            gmail.delivered(),
            15,
            "{backend:?}: past the second day's cap"
        );
        n.move_clock_to(n.clock.now_ms() + day);
        let rest =
            crate::harness::wait_until(Duration::from_secs(10), || gmail.delivered() >= 20).await;
        assert!(
            rest,
            "{backend:?}: {} of 20 on the third day",
            gmail.delivered()
        );
        n.stop().await;
    }
}
