//! VERP return paths: each recipient's copy leaves with the envelope sender
//! `b-<message id>-<recipient index>-<mac>@<bounce domain>`, so a bounce or a
//! complaint that comes back names the message and recipient it is about.
//! The mac (HMAC-SHA256, 48 bits, lower-case hex so that case-folding MTAs
//! do no harm) makes forged bounces fail at RCPT TO.

use aws_lc_rs::hmac;

pub struct Verp {
    key: hmac::Key,
    domain: String,
}

impl Verp {
    pub fn new(secret: &[u8], domain: &str) -> Verp {
        let mut material = b"verp:".to_vec();
        material.extend_from_slice(secret);
        Verp {
            key: hmac::Key::new(hmac::HMAC_SHA256, &material),
            domain: domain.trim().trim_end_matches('.').to_ascii_lowercase(),
        }
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

    /// The return path for one recipient of a message.
    pub fn address(&self, message_id: &str, idx: u32) -> String {
        let id = message_id.to_ascii_lowercase();
        format!("b-{id}-{idx}-{}@{}", self.mac(&id, idx), self.domain)
    }

    pub fn is_bounce_address(&self, address: &str) -> bool {
        address
            .rsplit_once('@')
            .is_some_and(|(_, d)| d.eq_ignore_ascii_case(&self.domain))
    }

    /// (message id, recipient index) of a genuine return path.
    pub fn parse(&self, address: &str) -> Option<(String, u32)> {
        let (local, domain) = address.rsplit_once('@')?;
        if !domain.eq_ignore_ascii_case(&self.domain) {
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
        let v = Verp::new(b"secret", "Bounces.Kiln.Test.");
        let a = v.address("01a2ABCDEF", 3);
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
        assert!(Verp::new(b"other", "bounces.kiln.test").parse(&a).is_none());
    }
}
