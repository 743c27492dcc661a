//! TC3-HMAC-SHA256: how the Tencent Cloud SDKs sign API requests, verified
//! here so that applications written for the SES API can call Kiln with
//! their official SDK unchanged.
//!
//! The client hashes a canonical form of the request (method, path, query,
//! the signed headers, the payload's SHA-256), signs that digest with a key
//! derived from its secret, the day and the service, and sends
//! `Authorization: TC3-HMAC-SHA256 Credential=<id>/<day>/<service>/tc3_request,
//! SignedHeaders=content-type;host, Signature=<hex>` with `X-TC-Timestamp`.

use aws_lc_rs::{digest, hmac};

pub const ALGORITHM: &str = "TC3-HMAC-SHA256";
/// How far the client's clock may be from ours.
pub const MAX_SKEW_SECS: i64 = 300;

/// Failures, each with the API error code the SDKs know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Tc3Error {
    #[error("the Authorization header is missing or malformed: {0}")]
    Malformed(String),
    #[error("the request timestamp is more than {MAX_SKEW_SECS} seconds from the server's time")]
    Expired,
    #[error("the signature does not match the request")]
    Mismatch,
}

impl Tc3Error {
    pub fn code(&self) -> &'static str {
        match self {
            Tc3Error::Malformed(_) => "AuthFailure.InvalidAuthorization",
            Tc3Error::Expired => "AuthFailure.SignatureExpire",
            Tc3Error::Mismatch => "AuthFailure.SignatureFailure",
        }
    }
}

/// The parts of an `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub secret_id: String,
    pub date: String,
    pub service: String,
    pub signed_headers: Vec<String>,
    pub signature: String,
}

pub fn parse_authorization(value: &str) -> Result<Authorization, Tc3Error> {
    let bad = |why: &str| Tc3Error::Malformed(why.to_string());
    let rest = value
        .trim()
        .strip_prefix(ALGORITHM)
        .ok_or_else(|| bad("the algorithm is not TC3-HMAC-SHA256"))?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let (k, v) = part
            .trim()
            .split_once('=')
            .ok_or_else(|| bad("expected key=value parts"))?;
        match k.trim() {
            "Credential" => credential = Some(v.trim()),
            "SignedHeaders" => signed = Some(v.trim()),
            "Signature" => signature = Some(v.trim()),
            _ => {}
        }
    }
    let credential = credential.ok_or_else(|| bad("no Credential"))?;
    let mut scope = credential.split('/');
    let (Some(id), Some(date), Some(service), Some("tc3_request"), None) = (
        scope.next(),
        scope.next(),
        scope.next(),
        scope.next(),
        scope.next(),
    ) else {
        return Err(bad("Credential is not <id>/<date>/<service>/tc3_request"));
    };
    let signed_headers: Vec<String> = signed
        .ok_or_else(|| bad("no SignedHeaders"))?
        .split(';')
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    for required in ["content-type", "host"] {
        if !signed_headers.iter().any(|h| h == required) {
            return Err(bad("SignedHeaders must include content-type and host"));
        }
    }
    let signature = signature.ok_or_else(|| bad("no Signature"))?;
    if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("Signature is not 64 hex digits"));
    }
    if id.is_empty() || service.is_empty() {
        return Err(bad("empty SecretId or service"));
    }
    Ok(Authorization {
        secret_id: id.to_string(),
        date: date.to_string(),
        service: service.to_string(),
        signed_headers,
        signature: signature.to_ascii_lowercase(),
    })
}

/// The request as the signature covers it.
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    /// Looks up a header value by lower-case name.
    pub header: &'a dyn Fn(&str) -> Option<String>,
    pub payload: &'a [u8],
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

fn sha256_hex(data: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, data).as_ref())
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    hmac::sign(&key, data).as_ref().to_vec()
}

/// The hex signature of a request for `secret_key`.
pub fn sign(auth: &Authorization, timestamp: &str, secret_key: &str, req: &Request<'_>) -> String {
    let mut canonical_headers = String::new();
    for name in &auth.signed_headers {
        let value = (req.header)(name).unwrap_or_default();
        canonical_headers.push_str(name);
        canonical_headers.push(':');
        canonical_headers.push_str(value.trim());
        canonical_headers.push('\n');
    }
    let canonical_request = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method,
        req.path,
        req.query,
        canonical_headers,
        auth.signed_headers.join(";"),
        sha256_hex(req.payload)
    );
    let scope = format!("{}/{}/tc3_request", auth.date, auth.service);
    let string_to_sign = format!(
        "{ALGORITHM}\n{timestamp}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    );
    let k_date = hmac_sha256(format!("TC3{secret_key}").as_bytes(), auth.date.as_bytes());
    let k_service = hmac_sha256(&k_date, auth.service.as_bytes());
    let k_signing = hmac_sha256(&k_service, b"tc3_request");
    hex(&hmac_sha256(&k_signing, string_to_sign.as_bytes()))
}

/// What the headers alone can tell: the timestamp is within the allowed
/// skew of `now` (seconds) and on the credential's day. (The signature
/// covers the body's hash: it needs the body.)
pub fn check_timestamp(auth: &Authorization, timestamp: &str, now: i64) -> Result<(), Tc3Error> {
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| Tc3Error::Malformed("X-TC-Timestamp is not a number".into()))?;
    if now.abs_diff(ts) > MAX_SKEW_SECS.unsigned_abs() {
        return Err(Tc3Error::Expired);
    }
    // The credential's day is the UTC day of the timestamp.
    let day = jiff::Timestamp::from_second(ts)
        .map(|t| t.to_zoned(jiff::tz::TimeZone::UTC).date().to_string())
        .map_err(|_| Tc3Error::Malformed("X-TC-Timestamp out of range".into()))?;
    if day != auth.date {
        return Err(Tc3Error::Mismatch);
    }
    Ok(())
}

/// Checks the timestamp and the signature; `now` in seconds since the epoch.
pub fn verify(
    auth: &Authorization,
    timestamp: &str,
    now: i64,
    secret_key: &str,
    req: &Request<'_>,
) -> Result<(), Tc3Error> {
    check_timestamp(auth, timestamp, now)?;
    let expected = sign(auth, timestamp.trim(), secret_key, req);
    // Compare in constant time: the signature is a secret-derived value.
    let same = expected.len() == auth.signature.len()
        && expected
            .bytes()
            .zip(auth.signature.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        Ok(())
    } else {
        Err(Tc3Error::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Computed by the official Python SDK (tencentcloud-sdk-python-ses,
    /// `AbstractClient._get_tc3_signature`) for this exact request.
    const SDK_SIGNATURE: &str = "5acdc8a1b3dc51e8beb2d057a851975f1dc4f27139a330c1ad27d850be926621";
    const BODY: &str =
        r#"{"FromEmailAddress": "a@shop.test", "Destination": ["b@x.test"], "Subject": "hi"}"#;
    const TS: &str = "1795341600"; // 2026-11-22T10:00:00Z

    fn header(name: &str) -> Option<String> {
        match name {
            "content-type" => Some("application/json".into()),
            "host" => Some("127.0.0.1:8080".into()),
            _ => None,
        }
    }

    fn auth(signature: &str) -> Authorization {
        parse_authorization(&format!(
            "TC3-HMAC-SHA256 Credential=AKIDkilntest/2026-11-22/ses/tc3_request, SignedHeaders=content-type;host, Signature={signature}"
        ))
        .expect("parses")
    }

    fn check(body: &str, key: &str, now: i64) -> Result<(), Tc3Error> {
        let req = Request {
            method: "POST",
            path: "/",
            query: "",
            header: &header,
            payload: body.as_bytes(),
        };
        verify(&auth(SDK_SIGNATURE), TS, now, key, &req)
    }

    #[test]
    fn accepts_what_the_official_sdk_signs() {
        let req = Request {
            method: "POST",
            path: "/",
            query: "",
            header: &header,
            payload: BODY.as_bytes(),
        };
        let a = auth(SDK_SIGNATURE);
        assert_eq!(a.secret_id, "AKIDkilntest");
        assert_eq!(sign(&a, TS, "kiln-secret-key", &req), SDK_SIGNATURE);
        assert_eq!(check(BODY, "kiln-secret-key", 1_795_341_700), Ok(()));
    }

    #[test]
    fn refuses_changed_requests_wrong_keys_and_old_timestamps() {
        let now = 1_795_341_600;
        let tampered = BODY.replace("b@x.test", "c@x.test");
        assert_eq!(
            check(&tampered, "kiln-secret-key", now),
            Err(Tc3Error::Mismatch)
        );
        assert_eq!(check(BODY, "another-key", now), Err(Tc3Error::Mismatch));
        assert_eq!(
            check(BODY, "kiln-secret-key", now + 301),
            Err(Tc3Error::Expired)
        );
        assert_eq!(
            check(BODY, "kiln-secret-key", now - 301),
            Err(Tc3Error::Expired)
        );
        assert_eq!(Tc3Error::Expired.code(), "AuthFailure.SignatureExpire");
        assert_eq!(Tc3Error::Mismatch.code(), "AuthFailure.SignatureFailure");
    }

    #[test]
    fn malformed_headers_are_named() {
        for bad in [
            "",
            "HMAC-SHA1 Credential=a/2026-11-22/ses/tc3_request, SignedHeaders=content-type;host, Signature=00",
            "TC3-HMAC-SHA256 Credential=a/2026-11-22/ses, SignedHeaders=content-type;host, Signature=0000000000000000000000000000000000000000000000000000000000000000",
            "TC3-HMAC-SHA256 Credential=a/2026-11-22/ses/tc3_request, SignedHeaders=host, Signature=0000000000000000000000000000000000000000000000000000000000000000",
            "TC3-HMAC-SHA256 Credential=a/2026-11-22/ses/tc3_request, SignedHeaders=content-type;host, Signature=xyz",
        ] {
            let e = parse_authorization(bad).expect_err(bad);
            assert_eq!(e.code(), "AuthFailure.InvalidAuthorization", "{bad}");
        }
    }
}
