//! Open and click tracking: HTML parts get a 1×1 pixel and their links
//! point at Kiln, which records the event and redirects to the original.
//! Every URL carries a token signed with HMAC-SHA256 (`tracking.secret`),
//! so nobody can forge an event or use Kiln as an open redirector: a token
//! that does not verify is a 404 and records nothing. Plain-text parts are
//! left alone (a text message cannot be tracked). A link opts out with the
//! attribute `data-kiln-notrack`.

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;

/// What a token stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    /// 'o' (open), 'c' (click) or 'u' (unsubscribe).
    pub kind: char,
    pub message_id: String,
    /// The recipient, when the message had one ("" when it went to several).
    pub recipient: String,
    /// The original link (clicks), or the language (unsubscribe).
    pub url: String,
}

pub struct Tracker {
    key: hmac::Key,
    /// Base URL per sender domain, and the default.
    hosts: std::collections::HashMap<String, String>,
    default_base: String,
}

const MAC_LEN: usize = 16;

impl Tracker {
    pub fn new(
        secret: &[u8],
        default_base: &str,
        hosts: std::collections::HashMap<String, String>,
    ) -> Tracker {
        Tracker {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            hosts: hosts
                .into_iter()
                .map(|(d, b)| (d.to_ascii_lowercase(), b.trim_end_matches('/').to_string()))
                .collect(),
            default_base: default_base.trim_end_matches('/').to_string(),
        }
    }

    fn base(&self, sender_domain: &str) -> &str {
        self.hosts
            .get(&sender_domain.to_ascii_lowercase())
            .map(String::as_str)
            .unwrap_or(&self.default_base)
    }

    pub fn token(&self, m: &Mark) -> String {
        let payload = format!("{}|{}|{}|{}", m.kind, m.message_id, m.recipient, m.url);
        let tag = hmac::sign(&self.key, payload.as_bytes());
        format!(
            "{}.{}",
            B64URL.encode(payload.as_bytes()),
            B64URL.encode(&tag.as_ref()[..MAC_LEN])
        )
    }

    /// The mark a token stands for, if its signature holds.
    pub fn verify(&self, token: &str) -> Option<Mark> {
        let (payload, mac) = token.split_once('.')?;
        let payload = B64URL.decode(payload).ok()?;
        let mac = B64URL.decode(mac).ok()?;
        let tag = hmac::sign(&self.key, &payload);
        if mac.len() != MAC_LEN || !constant_time_eq(&tag.as_ref()[..MAC_LEN], &mac) {
            return None;
        }
        let text = String::from_utf8(payload).ok()?;
        let mut parts = text.splitn(4, '|');
        let kind = parts.next()?.chars().next()?;
        let mark = Mark {
            kind,
            message_id: parts.next()?.to_string(),
            recipient: parts.next()?.to_string(),
            url: parts.next()?.to_string(),
        };
        matches!(kind, 'o' | 'c' | 'u').then_some(mark)
    }

    /// The unsubscribe URL for one recipient of a message, in a language.
    pub fn unsubscribe_url(
        &self,
        sender_domain: &str,
        message_id: &str,
        recipient: &str,
        lang: u8,
    ) -> String {
        let token = self.token(&Mark {
            kind: 'u',
            message_id: message_id.to_string(),
            recipient: recipient.to_string(),
            url: lang.to_string(),
        });
        format!("{}/u/{token}", self.base(sender_domain))
    }

    /// The HTML with a pixel and tracked links, for one message.
    pub fn instrument(
        &self,
        html: &str,
        sender_domain: &str,
        message_id: &str,
        recipient: &str,
    ) -> String {
        let base = self.base(sender_domain);
        let mark = |kind, url: &str| Mark {
            kind,
            message_id: message_id.to_string(),
            recipient: recipient.to_string(),
            url: url.to_string(),
        };
        let mut out = rewrite_links(html, |url| {
            format!("{base}/t/c/{}", self.token(&mark('c', url)))
        });
        let pixel = format!(
            "<img src=\"{base}/t/o/{}\" width=\"1\" height=\"1\" alt=\"\" style=\"display:block;border:0;width:1px;height:1px\">",
            self.token(&mark('o', ""))
        );
        match find_ci(&out, "</body>") {
            Some(i) => out.insert_str(i, &pixel),
            None => out.push_str(&pixel),
        }
        out
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Byte offset of `needle` (ASCII) in `hay`, ignoring ASCII case.
fn find_ci(hay: &str, needle: &str) -> Option<usize> {
    hay.as_bytes()
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

fn html_unescape_attr(v: &str) -> String {
    v.replace("&amp;", "&").replace("&#38;", "&")
}

/// Replaces the href of every `<a>` that points at http(s) and does not
/// opt out (`data-kiln-notrack`) with `replace(original)`.
fn rewrite_links(html: &str, replace: impl Fn(&str) -> String) -> String {
    let mut out = String::with_capacity(html.len() + 256);
    let mut rest = html;
    while let Some(start) = find_ci(rest, "<a") {
        let after = &rest[start + 2..];
        // `<a` must be a whole tag name.
        if !after.starts_with(|c: char| c.is_ascii_whitespace()) {
            out.push_str(&rest[..start + 2]);
            rest = after;
            continue;
        }
        let Some(end) = after.find('>') else { break };
        let tag = &after[..end];
        out.push_str(&rest[..start + 2]);
        out.push_str(&rewrite_tag(tag, &replace));
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

fn rewrite_tag(tag: &str, replace: &impl Fn(&str) -> String) -> String {
    if find_ci(tag, "data-kiln-notrack").is_some() {
        return tag.to_string();
    }
    let Some(h) = find_ci(tag, "href") else {
        return tag.to_string();
    };
    let after = tag[h + 4..].trim_start();
    let Some(after_eq) = after.strip_prefix('=') else {
        return tag.to_string();
    };
    let value_part = after_eq.trim_start();
    let value_start = tag.len() - value_part.len();
    let (quote, body) = match value_part.chars().next() {
        Some(q @ ('"' | '\'')) => (Some(q), &value_part[1..]),
        _ => (None, value_part),
    };
    let len = match quote {
        Some(q) => body.find(q).unwrap_or(body.len()),
        None => body
            .find(|c: char| c.is_ascii_whitespace())
            .unwrap_or(body.len()),
    };
    let url = html_unescape_attr(body[..len].trim());
    let lower = url.to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return tag.to_string();
    }
    let q = quote.map(String::from).unwrap_or_default();
    let value_end = value_start + q.len() + len + q.len().min(body.len() - len);
    format!(
        "{}\"{}\"{}",
        &tag[..value_start],
        replace(&url),
        &tag[value_end.min(tag.len())..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker() -> Tracker {
        Tracker::new(b"secret", "https://t.kiln.test/", Default::default())
    }

    #[test]
    fn tokens_verify_and_refuse_tampering() {
        let t = tracker();
        let m = Mark {
            kind: 'c',
            message_id: "m1".into(),
            recipient: "ann@x.test".into(),
            url: "https://shop.test/a?b=1|2".into(),
        };
        let token = t.token(&m);
        assert_eq!(t.verify(&token), Some(m.clone()));
        let (p, mac) = token.split_once('.').unwrap();
        let forged = B64URL.encode(b"c|m1|ann@x.test|https://evil.test/");
        assert_eq!(t.verify(&format!("{forged}.{mac}")), None);
        assert_eq!(t.verify(&format!("{p}.AAAAAAAAAAAAAAAAAAAAAA")), None);
        assert_eq!(t.verify("garbage"), None);
        let other = Tracker::new(b"other", "https://t.kiln.test", Default::default());
        assert_eq!(other.verify(&token), None);
    }

    #[test]
    fn links_are_rewritten_and_a_pixel_added() {
        let t = tracker();
        let html = "<html><body><p>Hi <A class=x HREF='https://shop.test/o?a=1&amp;b=2'>order</A> \
                    <a href=\"mailto:x@y.z\">mail</a> <a data-kiln-notrack href=\"https://keep.test/\">keep</a> \
                    <abbr>x</abbr> <a href=https://bare.test/p>bare</a></p></BODY></html>";
        let out = t.instrument(html, "shop.test", "m1", "ann@x.test");
        assert!(!out.contains("https://shop.test/o"), "{out}");
        assert!(out.contains("href=\"mailto:x@y.z\""), "{out}");
        assert!(out.contains("href=\"https://keep.test/\""), "{out}");
        assert!(!out.contains("href=https://bare.test/p"), "{out}");
        assert!(out.contains("<abbr>x</abbr>"));
        assert!(out.contains(">order</A>"));
        let pixel = out.find("/t/o/").expect("pixel");
        assert!(
            pixel < out.find("</BODY>").unwrap(),
            "pixel inside the body"
        );
        // The rewritten link leads back to the original, &amp; decoded.
        let i = out.find("https://t.kiln.test/t/c/").unwrap() + "https://t.kiln.test/t/c/".len();
        let token: String = out[i..].chars().take_while(|c| *c != '"').collect();
        let mark = t.verify(&token).expect("valid token");
        assert_eq!(mark.url, "https://shop.test/o?a=1&b=2");
        assert_eq!((mark.kind, mark.recipient.as_str()), ('c', "ann@x.test"));
    }
}
