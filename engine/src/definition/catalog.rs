//! What definitions refer to and where it is found: the catalogs (results, roles, agency
//! kinds), the notification templates, the form schemas.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::model::{AgencyKindCatalog, ResultCatalog, RoleCatalog};

/// What to do when files are looked for under the wrong folder.
pub(crate) const ROOT_HINT: &str = "run tthc from the repository root (the folder that holds procedures/ and schemas/), or pass `--root PATH` (or set TTHC_ROOT)";

/// Where the loader finds what definitions refer to.
#[derive(Debug, Clone)]
pub struct LoaderConfig {
    /// Form schema paths in definitions are relative to this folder.
    pub schemas_dir: PathBuf,
    /// Holds `results.yaml` and `roles.yaml`.
    pub catalog_dir: PathBuf,
    /// Holds the notification templates (`NAME.hbs`).
    pub templates_dir: PathBuf,
}

impl LoaderConfig {
    /// The layout of a tthc repository rooted at `root`.
    pub fn at_root(root: &Path) -> LoaderConfig {
        LoaderConfig {
            schemas_dir: root.join("schemas"),
            catalog_dir: root.join("procedures").join("catalog"),
            templates_dir: root.join("procedures").join("templates"),
        }
    }
}

/// What definitions may refer to: result codes, roles, notification templates.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub results: ResultCatalog,
    pub roles: RoleCatalog,
    /// Empty when the catalog folder has no `agency-kinds.yaml`.
    pub agency_kinds: AgencyKindCatalog,
    pub templates: BTreeSet<String>,
}
