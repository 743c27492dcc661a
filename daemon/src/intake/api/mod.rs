//! The Tencent Cloud SES API (2020-10-02): `tencent` (the envelope and
//! authentication), `body` (the request, read up to its limit), `tc3`
//! (request signatures), `params` (the request's fields), `ses` (the
//! actions).

pub mod body;
pub mod params;
pub mod ses;
pub mod tc3;
pub mod tencent;
