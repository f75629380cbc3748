//! Helpers shared by the black-box tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root: where `procedures/`, `schemas/` and `tests/` live.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the api crate lives inside the workspace")
        .to_path_buf()
}

/// Runs the real `tthc` binary from the workspace root.
pub fn tthc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tthc"))
        .args(args)
        .current_dir(repo_root())
        .env_remove("TTHC_ROOT")
        .env_remove("TTHC_SCHEMAS")
        .output()
        .expect("the tthc binary runs")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Whether expectation files should be rewritten from the actual output
/// (`TTHC_BLESS=1 cargo test`), for when a message is deliberately changed.
pub fn bless() -> bool {
    std::env::var_os("TTHC_BLESS").is_some_and(|v| v == "1")
}
