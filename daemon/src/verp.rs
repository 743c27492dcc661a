//! VERP return paths: each recipient's copy leaves with the envelope sender
//! `b-<message id>-<recipient index>-<mac>@<bounce domain>`, so a bounce or a
//! complaint that comes back names the message and recipient it is about.
//! A sender domain that publishes its return-path records gets them on
//! `<label>.<its domain>` instead (`platform.return_path_label`), so SPF
//! passes aligned with its From domain; Kiln is that name's MX too.
//! The mac (HMAC-SHA256, 48 bits, lower-case hex so that case-folding MTAs
//! do no harm) makes forged bounces fail at RCPT TO.

use aws_lc_rs::hmac;

pub struct Verp {
    key: hmac::Key,
    domain: String,
    /// `<label>.` of the senders' own return-path domains ("" for none).
    label_dot: String,
}

impl Verp {
    pub fn new(secret: &[u8], domain: &str, label: &str) -> Verp {
        let mut material = b"verp:".to_vec();
        material.extend_from_slice(secret);
        Verp {
            key: hmac::Key::new(hmac::HMAC_SHA256, &material),
            domain: domain.trim().trim_end_matches('.').to_ascii_lowercase(),
            label_dot: match label.trim() {
                "" => String::new(),
                l => format!("{}.", l.to_ascii_lowercase()),
            },
        }
    }

    /// Whether bounces to `domain` come to Kiln: the bounce domain, or a
    /// sender's return-path domain (whose addresses the mac still guards).
    fn ours(&self, domain: &str) -> bool {
        let domain = domain.to_ascii_lowercase();
        domain == self.domain
            || (!self.label_dot.is_empty()
                && domain
                    .strip_prefix(&self.label_dot)
                    .is_some_and(|rest| rest.contains('.')))
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    fn mac(&self, message_id: &str, idx: u32) -> String {
        let tag = hmac::sign(&self.key, format!("{message_id}-{idx}").as_bytes());
        tag.as_ref()[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The return path for one recipient of a message, on the bounce
    /// domain or on `domain` (a sender's return-path domain).
    pub fn address(&self, message_id: &str, idx: u32, domain: Option<&str>) -> String {
        let id = message_id.to_ascii_lowercase();
        let domain = domain.unwrap_or(&self.domain);
        format!("b-{id}-{idx}-{}@{domain}", self.mac(&id, idx))
    }

    /// Whether `address` is for Kiln's report intake: any address on the
    /// bounce domain (a forged one is refused there), and on a sender's
    /// return-path domain only a genuine return path: `bounces.<domain>`
    /// is also an ordinary domain of someone else's, its mail theirs.
    pub fn is_bounce_address(&self, address: &str) -> bool {
        address.rsplit_once('@').is_some_and(|(_, d)| {
            d.eq_ignore_ascii_case(&self.domain) || (self.ours(d) && self.parse(address).is_some())
        })
    }

    /// (message id, recipient index) of a genuine return path.
    pub fn parse(&self, address: &str) -> Option<(String, u32)> {
        let (local, domain) = address.rsplit_once('@')?;
        if !self.ours(domain) {
            return None;
        }
        let local = local.to_ascii_lowercase();
        let mut parts = local.strip_prefix("b-")?.split('-');
        let (id, idx, mac) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || id.is_empty() {
            return None;
        }
        let idx: u32 = idx.parse().ok()?;
        let expected = self.mac(id, idx);
        let same = expected.len() == mac.len()
            && expected
                .bytes()
                .zip(mac.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        same.then(|| (id.to_string(), idx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_paths_round_trip_and_refuse_forgeries() {
        let v = Verp::new(b"secret", "Bounces.Kiln.Test.", "bounces");
        let a = v.address("01a2ABCDEF", 3, None);
        assert!(a.ends_with("@bounces.kiln.test"), "{a}");
        assert!(a.split('@').next().unwrap().len() <= 64);
        assert_eq!(v.parse(&a), Some(("01a2abcdef".into(), 3)));
        assert_eq!(
            v.parse(&a.to_ascii_uppercase()),
            Some(("01a2abcdef".into(), 3))
        );
        assert_eq!(v.parse(&a.replace("-3-", "-4-")), None);
        assert_eq!(
            v.parse("b-01a2abcdef-3-000000000000@bounces.kiln.test"),
            None
        );
        assert_eq!(v.parse(&a.replace("bounces.kiln.test", "other.test")), None);
        assert!(v.is_bounce_address("x@BOUNCES.kiln.test"));
        assert!(
            Verp::new(b"other", "bounces.kiln.test", "bounces")
                .parse(&a)
                .is_none()
        );
        // On a sender's own return-path domain: the same mac, the same
        // answer; its other names, and the label alone, are not ours.
        let own = v.address("01a2ABCDEF", 3, Some("bounces.shop.example"));
        assert!(own.ends_with("@bounces.shop.example"), "{own}");
        assert_eq!(v.parse(&own), Some(("01a2abcdef".into(), 3)));
        assert!(v.is_bounce_address(&own.to_ascii_uppercase()));
        // Anyone else's address there is an ordinary one.
        assert!(!v.is_bounce_address("alice@Bounces.Shop.Example"));
        assert!(!v.is_bounce_address(&own.replace("-3-", "-4-")));
        assert!(!v.is_bounce_address("x@shop.example"));
        assert!(!v.is_bounce_address("x@bounces.example"));
        assert!(v.parse(&own.replace("@bounces.", "@mail.")).is_none());
        let off = Verp::new(b"secret", "bounces.kiln.test", "");
        assert!(!off.is_bounce_address("x@bounces.shop.example"));
    }
}
