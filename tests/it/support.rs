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

/// The database a test runs on: a SQLite file in `dir`, or, when `TTHC_TEST_DATABASE` names a
/// PostgreSQL server (`postgres://root@127.0.0.1:5432/test`), a fresh database created on it.
/// The same `dir` always gets the same database, so a test can reopen it as after a restart.
pub async fn database_url(dir: &Path) -> String {
    let remembered = dir.join("database-url");
    if let Ok(url) = std::fs::read_to_string(&remembered) {
        return url;
    }
    let url = match std::env::var("TTHC_TEST_DATABASE") {
        Ok(admin) if admin.starts_with("postgres") => {
            use sqlx::Connection;
            let name = format!(
                "tthc_t_{}_{}",
                std::process::id(),
                hex::encode(rand::random::<[u8; 6]>())
            );
            let mut conn = sqlx::PgConnection::connect(&admin)
                .await
                .unwrap_or_else(|e| panic!("TTHC_TEST_DATABASE={admin} is unreachable: {e}"));
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("creating database {name}: {e}"));
            let base = admin
                .rsplit_once('/')
                .map_or(admin.as_str(), |(b, _)| b)
                .to_owned();
            format!("{base}/{name}")
        }
        _ => format!("sqlite://{}", dir.join("tthc.db").display()),
    };
    std::fs::write(&remembered, &url).expect("the test folder is writable");
    url
}
