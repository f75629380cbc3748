//! The tthc engine: procedure definitions, dossiers, the runtime that advances them, and
//! their storage. This crate knows nothing of HTTP; the `tthc` binary in `api/` does.

pub mod audit;
pub mod calendar;
pub mod definition;
pub mod dossier;
pub mod engine;
pub mod khodl;
pub mod notify;
pub mod portal;
pub mod runtime;
pub mod signing;
pub mod store;

pub use engine::{Clock, Engine, EngineConfig, EngineError, HookHandler, HookRequest};
