//! Procedure definitions: YAML files turned into a typed, checked [`Definition`].
//!
//! Loading runs in three passes, each reporting every problem it finds with its
//! `file:line:column`: the YAML parser (with budgets against hostile input), the JSON Schema
//! of the format (`schemas/procedure.schema.json`), and the semantic checks of
//! [`check`] (graph, catalogs, expressions, form schemas, times and fees).

mod catalog;
mod check;
mod diagnostic;
mod expr;
mod flow;
mod load;
pub mod model;
mod typing;
pub mod yaml;

pub use diagnostic::{Diagnostic, Severity};
pub(crate) use expr::free_names;
pub use expr::{DOSSIER_FIELDS, ExprError, compile_expression};
pub use load::{Catalog, Definition, LoadReport, Loader, LoaderConfig, MAX_FILE_BYTES};
pub use model::*;

/// The hooks the engine has built in, with the arguments each accepts.
pub const BUILTIN_HOOKS: &[(&str, &[&str])] = &[
    ("khodl.save", &[]),
    ("portal.sync_dossier", &[]),
    ("portal.push_result", &[]),
    ("notify", &["template"]),
];
