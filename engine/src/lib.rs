//! The tthc engine: procedure definitions, dossiers, the runtime that advances them, and
//! their storage. It serves no HTTP (the `tthc` binary in `api/` does); it only calls the
//! national portal as a client (`portal`).

pub mod agency;
pub mod archive;
pub mod audit;
pub mod calendar;
pub mod definition;
pub mod dossier;
pub mod engine;
pub mod formats;
pub mod hash;
pub mod khodl;
pub mod notify;
mod plan;
pub mod portal;
pub mod reuse;
pub mod runtime;
pub mod signing;
pub mod store;

/// A unit enum variant as it is written in definitions, events and the database
/// (`"snake_case"`); another value as its JSON text.
pub fn wire_name<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

pub use engine::{Clock, Engine, EngineConfig, EngineError, HookHandler, HookRequest};
