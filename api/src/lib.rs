//! The `tthc` command-line tool and HTTP server, as a library so that tests can start the
//! real server in-process. Only this crate knows HTTP; the engine does not.

pub mod auth;
pub mod bench;
pub mod config;
pub mod definitions;
pub mod demo;
pub mod extract;
pub mod history;
pub mod integrations;
pub mod metrics;
pub mod openapi;
/// The portal simulator, its own crate (`portal-sim/`): `tthc portal-sim` and the in-process one.
pub use tthc_portal_sim as portal_sim;
pub mod problem;
pub mod routes;
pub mod server;
pub mod state;
pub mod views;
