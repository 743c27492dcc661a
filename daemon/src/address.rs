//! Mail addresses as RFC 5321 defines them (with RFC 6531's UTF-8), parsed
//! in one place for SMTP commands and the API; no I/O.
//!
//! An address is kept in one canonical form, the one a next hop accepts:
//! the local part unquoted when it is a dot-string and quoted (with only
//! `"` and `\` escaped) when it is not, the domain in lower case, an
//! address literal as `[192.0.2.1]` or `[IPv6:2001:db8::1]`.

use std::net::IpAddr;

/// The most an address may have (RFC 5321 section 4.5.3.1.3: a path of 256
/// octets, angle brackets included).
const MAX_ADDRESS: usize = 254;
const MAX_LOCAL: usize = 64;
const MAX_DOMAIN: usize = 253;
const MAX_LABEL: usize = 63;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("no @ between local part and domain")]
    NoAt,
    #[error("the local part is empty, too long, or not a dot-string or quoted string")]
    LocalPart,
    #[error("the domain is not a domain name or address literal")]
    Domain,
    #[error("the address is longer than 254 characters")]
    TooLong,
    #[error("non-ASCII characters need SMTPUTF8 (RFC 6531)")]
    NeedsUtf8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Domain {
    Name(String),
    Literal(IpAddr),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    /// Canonical: quoted only when it must be.
    pub local: String,
    pub domain: Domain,
}

impl Mailbox {
    /// Parses `local@domain` (no angle brackets). `utf8` allows RFC 6531's
    /// non-ASCII local parts and domain labels.
    pub fn parse(text: &str, utf8: bool) -> Result<Mailbox, AddressError> {
        if !utf8 && !text.is_ascii() {
            return Err(AddressError::NeedsUtf8);
        }
        if text.len() > MAX_ADDRESS {
            return Err(AddressError::TooLong);
        }
        let (local, rest) = split_local(text)?;
        let domain = rest.strip_prefix('@').ok_or(AddressError::NoAt)?;
        let local = canonical_local(local)?;
        let domain = parse_domain(domain)?;
        Ok(Mailbox { local, domain })
    }

    pub fn is_literal(&self) -> bool {
        matches!(self.domain, Domain::Literal(_))
    }

    /// A domain name with at least two labels (RFC 5321 section 2.3.5:
    /// only fully-qualified names are used in SMTP).
    pub fn is_qualified(&self) -> bool {
        match &self.domain {
            Domain::Name(d) => d.contains('.'),
            Domain::Literal(_) => true,
        }
    }
}

impl std::fmt::Display for Mailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.domain {
            Domain::Name(d) => write!(f, "{}@{d}", self.local),
            Domain::Literal(IpAddr::V4(ip)) => write!(f, "{}@[{ip}]", self.local),
            Domain::Literal(IpAddr::V6(ip)) => write!(f, "{}@[IPv6:{ip}]", self.local),
        }
    }
}

/// Parses and writes back in canonical form.
pub fn canonical(text: &str, utf8: bool) -> Result<String, AddressError> {
    Mailbox::parse(text, utf8).map(|m| m.to_string())
}

/// RFC 5322 atext, plus RFC 6531's non-ASCII characters.
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

/// The local part as written (quotes and all) and what follows it.
fn split_local(text: &str) -> Result<(&str, &str), AddressError> {
    if let Some(inner) = text.strip_prefix('"') {
        let mut escaped = false;
        for (i, c) in inner.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => return Ok(text.split_at(i + 2)),
                _ => {}
            }
        }
        return Err(AddressError::LocalPart);
    }
    let end = text.find('@').ok_or(AddressError::NoAt)?;
    Ok(text.split_at(end))
}

/// The local part in canonical form.
fn canonical_local(local: &str) -> Result<String, AddressError> {
    let value = match local.strip_prefix('"').and_then(|l| l.strip_suffix('"')) {
        Some(quoted) => {
            let mut value = String::with_capacity(quoted.len());
            let mut chars = quoted.chars();
            while let Some(c) = chars.next() {
                let c = if c == '\\' {
                    chars.next().ok_or(AddressError::LocalPart)?
                } else {
                    c
                };
                // qtextSMTP and quoted-pairSMTP: printable, space, non-ASCII.
                if c.is_control() || (c.is_ascii() && !(' '..='~').contains(&c)) {
                    return Err(AddressError::LocalPart);
                }
                value.push(c);
            }
            value
        }
        None => {
            if !is_dot_string(local) {
                return Err(AddressError::LocalPart);
            }
            local.to_string()
        }
    };
    if value.is_empty() || value.len() > MAX_LOCAL {
        return Err(AddressError::LocalPart);
    }
    if is_dot_string(&value) {
        return Ok(value);
    }
    let mut quoted = String::with_capacity(value.len() + 4);
    quoted.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    Ok(quoted)
}

fn is_dot_string(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
}

fn parse_domain(domain: &str) -> Result<Domain, AddressError> {
    if let Some(literal) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
        let ip = match literal.strip_prefix("IPv6:") {
            Some(v6) => v6.parse::<std::net::Ipv6Addr>().map(IpAddr::V6),
            None => literal.parse::<std::net::Ipv4Addr>().map(IpAddr::V4),
        };
        return ip.map(Domain::Literal).map_err(|_| AddressError::Domain);
    }
    if valid_domain(domain) {
        Ok(Domain::Name(domain.to_ascii_lowercase()))
    } else {
        Err(AddressError::Domain)
    }
}

/// A domain name as RFC 5321 writes one: letters, digits and inner
/// hyphens in each label (RFC 6531 U-labels too), no trailing dot.
pub fn valid_domain(domain: &str) -> bool {
    !domain.is_empty()
        && domain.len() <= MAX_DOMAIN
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= MAX_LABEL
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii())
        })
}

/// Whether a literal's address is one a stranger must never make Kiln
/// connect to: loopback, private, link-local, shared, unspecified,
/// multicast, documentation or otherwise not globally routed.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || a >= 240
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || first == 0x2001 && v6.segments()[1] == 0xdb8
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| is_internal(IpAddr::V4(v4)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_forms() {
        let ok = |text: &str, want: &str| {
            assert_eq!(canonical(text, false).as_deref(), Ok(want), "{text}")
        };
        ok("User.Name+tag@Example.COM", "User.Name+tag@example.com");
        ok("\"john\"@x.test", "john@x.test");
        ok("\"john.doe\"@x.test", "john.doe@x.test");
        ok("\"john doe\"@x.test", "\"john doe\"@x.test");
        ok("\"a\\ b\"@x.test", "\"a b\"@x.test");
        ok("\"a@b\"@x.test", "\"a@b\"@x.test");
        ok("\"a\\\"b\"@x.test", "\"a\\\"b\"@x.test");
        ok("\"a..b\"@x.test", "\"a..b\"@x.test");
        ok("x@[192.0.2.1]", "x@[192.0.2.1]");
        ok("x@[IPv6:2001:db8::1]", "x@[IPv6:2001:db8::1]");
    }

    #[test]
    fn what_a_next_hop_refuses_is_refused() {
        for bad in [
            "x@@dest.test",
            "@dest.test",
            "x@",
            "x",
            "a..b@x.test",
            ".a@x.test",
            "a.@x.test",
            "a b@x.test",
            "a\"b@x.test",
            "\"unterminated@x.test",
            "\"a\"b@x.test",
            "\"\"@x.test",
            "\"a\u{7}\"@x.test",
            "x@dest..test",
            "x@-dest.test",
            "x@dest_test.test",
            "x@dest.test.",
            "x@[127.0.0.1",
            "x@[999.0.0.1]",
            "x@[IPv6:nonsense]",
            "x@[::1]",
        ] {
            assert!(Mailbox::parse(bad, true).is_err(), "{bad} was accepted");
        }
        let long_local = format!("{}@x.test", "a".repeat(65));
        assert_eq!(
            Mailbox::parse(&long_local, false),
            Err(AddressError::LocalPart)
        );
        let long = format!("a@{}.test", "b".repeat(250));
        assert_eq!(Mailbox::parse(&long, false), Err(AddressError::TooLong));
    }

    #[test]
    fn utf8_only_when_allowed() {
        assert_eq!(
            Mailbox::parse("üser@x.test", false),
            Err(AddressError::NeedsUtf8)
        );
        assert_eq!(
            Mailbox::parse("a@dömäin.test", false),
            Err(AddressError::NeedsUtf8)
        );
        assert_eq!(
            canonical("üser@Dömäin.test", true).as_deref(),
            Ok("üser@dömäin.test")
        );
    }

    #[test]
    fn internal_addresses() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.0.1",
            "169.254.1.1",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "fc00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "2a00:1450::1", "1.1.1.1"] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
    }
}
