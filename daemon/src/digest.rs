//! Fingerprints of secrets: what the store keeps of a token or a key it
//! only compares (operator tokens, console sessions).

/// SHA-256 of the parts (each length-prefixed), in hex: what the store
/// keeps of a secret it only compares.
pub fn fingerprint(parts: &[&str]) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for p in parts {
        ctx.update(&(p.len() as u64).to_be_bytes());
        ctx.update(p.as_bytes());
    }
    ctx.finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
