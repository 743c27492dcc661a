//! Operations: the admin endpoints the `kiln` subcommands use (`admin`),
//! and who may use them (`admin_auth`).

pub mod admin;
pub mod admin_auth;
