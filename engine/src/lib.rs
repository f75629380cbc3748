//! The tthc engine: procedure definitions, dossiers, the runtime that advances them, and
//! their storage. This crate knows nothing of HTTP; the `tthc` binary in `api/` does.

pub mod calendar;
pub mod definition;
