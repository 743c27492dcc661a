//! Submission rules: relay, AUTH over TLS only, size limit, recipients.

use crate::harness::{BOTH, env, queued, submit_session};
use kiln_testkit::client::{SmtpClient, message};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_relay_plain_auth_and_oversize() {
    for backend in BOTH {
        let e = env(backend, |_| {}).await;
        let addr = e.kiln.smtp;

        // Unauthenticated: no relaying, ever.
        let mut c = SmtpClient::connect(addr).await.unwrap();
        let ehlo = c.cmd("EHLO client.test").await.unwrap();
        for ext in [
            "PIPELINING",
            "SIZE 4194304",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
            "STARTTLS",
        ] {
            assert!(
                ehlo.text.contains(ext),
                "{backend:?}: EHLO lacks {ext}: {}",
                ehlo.text
            );
        }
        assert!(
            !ehlo.text.contains("AUTH"),
            "AUTH must not be offered in clear text"
        );
        assert_eq!(c.cmd("MAIL FROM:<a@shop.test>").await.unwrap().code, 250);
        let r = c.cmd("RCPT TO:<victim@dest.test>").await.unwrap();
        assert_eq!(r.code, 550, "{r:?}");
        assert!(r.text.contains("5.7.1"), "{r:?}");

        // AUTH before STARTTLS on a public listener is refused.
        assert_eq!(c.cmd("RSET").await.unwrap().code, 250);
        let r = c.auth_plain("shop", "shop-password").await.unwrap();
        assert_eq!(r.code, 538, "{r:?}");
        assert!(r.text.contains("5.7.11"));
        c.quit().await;

        // Wrong password, after TLS.
        let mut c = SmtpClient::connect(addr).await.unwrap();
        c.cmd("EHLO client.test").await.unwrap();
        c.starttls().await.unwrap();
        c.cmd("EHLO client.test").await.unwrap();
        let r = c.auth_plain("shop", "nope").await.unwrap();
        assert_eq!(r.code, 535, "{r:?}");
        c.quit().await;

        // Authenticated, but a sender domain the account does not own.
        let mut c = submit_session(addr).await;
        let r = c.cmd("MAIL FROM:<ceo@bank.test>").await.unwrap();
        assert_eq!(r.code, 553, "{r:?}");

        // Oversize: announced with SIZE, and sent anyway.
        let r = c.cmd("MAIL FROM:<a@shop.test> SIZE=5000000").await.unwrap();
        assert_eq!(r.code, 552, "{r:?}");
        assert!(r.text.contains("5.3.4"));
        let big = message("a@shop.test", "r@dest.test", "big", 4 * 1024 * 1024 + 10);
        let r = c.send("a@shop.test", &["r@dest.test"], &big).await.unwrap();
        assert_eq!(r.code, 552, "{r:?}");
        assert!(r.text.contains("5.3.4"));
        assert_eq!(
            queued(&e.kiln).await,
            0,
            "an oversize message must not be stored"
        );

        // Too many recipients.
        assert_eq!(c.cmd("MAIL FROM:<a@shop.test>").await.unwrap().code, 250);
        for i in 0..50 {
            let r = c.cmd(&format!("RCPT TO:<r{i}@dest.test>")).await.unwrap();
            assert_eq!(r.code, 250, "{r:?}");
        }
        let r = c.cmd("RCPT TO:<r50@dest.test>").await.unwrap();
        assert_eq!(r.code, 452, "{r:?}");
        assert_eq!(c.cmd("RSET").await.unwrap().code, 250);

        // Bad syntax and sequence errors carry enhanced codes.
        let r = c.cmd("RCPT TO:<x@dest.test>").await.unwrap();
        assert_eq!(r.code, 503, "{r:?}");
        let r = c.cmd("MAIL FROM:<not an address>").await.unwrap();
        assert_eq!(r.code, 501, "{r:?}");
        let r = c.cmd("BOGUS").await.unwrap();
        assert_eq!(r.code, 500, "{r:?}");
        let long = format!("NOOP {}", "x".repeat(2000));
        let r = c.cmd(&long).await.unwrap();
        assert_eq!(r.code, 500, "{r:?}");
        assert!(r.text.contains("5.5.2"));
        assert_eq!(
            c.cmd("NOOP").await.unwrap().code,
            250,
            "session survives a long line"
        );
        c.quit().await;

        // Implicit TLS listener: AUTH offered at once.
        let mut c = SmtpClient::connect_tls(e.kiln.smtp_tls).await.unwrap();
        let ehlo = c.cmd("EHLO client.test").await.unwrap();
        assert!(ehlo.text.contains("AUTH PLAIN LOGIN"), "{}", ehlo.text);
        assert!(!ehlo.text.contains("STARTTLS"));
        assert_eq!(
            c.auth_plain("shop", "shop-password").await.unwrap().code,
            235
        );
        c.quit().await;
    }
}
