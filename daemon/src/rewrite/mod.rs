//! What the deliverability loop adds to a message before it is signed: the
//! tracking pixel and rewritten links (`tracking`), the unsubscribe footer
//! and RFC 8058 headers (`unsubscribe`).

pub mod tracking;
pub mod unsubscribe;
