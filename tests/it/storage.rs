//! Storage as an operator meets it, through the real `tthc` binary: the audit tools read an
//! existing database and create, migrate or write nothing; a database SQLite cannot use is
//! named at once; processes starting together on a new file do not race on its migrations.

use std::path::Path;
use std::process::{Command, Output};

use crate::engine_support::*;
use crate::support::{stderr, stdout};

/// Runs `tthc` in `dir`, with no `--root` and no configuration from the environment.
fn tthc_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tthc"))
        .args(args)
        .current_dir(dir)
        .env_remove("TTHC_ROOT")
        .env_remove("TTHC_SCHEMAS")
        .env_remove("TTHC_DATABASE_URL")
        .output()
        .expect("the tthc binary runs")
}

fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// The names in a folder, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The three read-only tools on `database` (`None`: no `--database`), run in `dir`.
fn audit_tools(dir: &Path, database: Option<&str>) -> Vec<(&'static str, Output)> {
    let with = |args: &[&str]| {
        let mut all: Vec<&str> = Vec::new();
        if let Some(d) = database {
            all.extend(["--database", d]);
        }
        all.extend(args);
        tthc_in(dir, &all)
    };
    vec![
        ("audit verify", with(&["audit", "verify"])),
        ("replay", with(&["replay", "000.00.01.H59-260302-0001"])),
        (
            "verify-result",
            with(&["verify-result", "000.00.01.H59-260302-0001", "KQ.LLTP.01"]),
        ),
    ]
}

#[test]
fn audit_tools_on_a_missing_database_fail_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.db");
    for database in [Some(sqlite_url(&missing)), None] {
        for (tool, out) in audit_tools(dir.path(), database.as_deref()) {
            assert_eq!(out.status.code(), Some(1), "{tool}: {}", stdout(&out));
            let shown = if database.is_some() {
                missing.display().to_string()
            } else {
                "tthc.db".to_owned()
            };
            assert!(
                stderr(&out).contains(&format!("no database at {shown}: nothing was created")),
                "{tool}: {}",
                stderr(&out)
            );
            assert!(
                !stdout(&out).contains("intact"),
                "{tool} vouched for a history it never read: {}",
                stdout(&out)
            );
        }
    }
    assert_eq!(
        entries(dir.path()),
        Vec::<String>::new(),
        "the tools created files"
    );
}

/// A SQLite database with one table that is not tthc's.
async fn foreign_database(path: &Path) {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(&format!("{}?mode=rwc", sqlite_url(path)))
        .await
        .unwrap();
    sqlx::query("CREATE TABLE notes (body TEXT)")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn audit_tools_refuse_an_empty_or_foreign_database_and_never_migrate_it() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, b"").unwrap();
    let foreign = dir.path().join("foreign.db");
    foreign_database(&foreign).await;
    for path in [&empty, &foreign] {
        let before = std::fs::read(path).unwrap();
        for (tool, out) in audit_tools(dir.path(), Some(&sqlite_url(path))) {
            assert_eq!(out.status.code(), Some(1), "{tool}: {}", stdout(&out));
            assert!(
                stderr(&out).contains(&format!(
                    "{} is not a tthc database, or was never migrated",
                    path.display()
                )),
                "{tool}: {}",
                stderr(&out)
            );
        }
        assert_eq!(
            std::fs::read(path).unwrap(),
            before,
            "{} was written",
            path.display()
        );
    }
}

#[tokio::test]
async fn audit_tools_refuse_a_database_short_of_this_versions_migrations() {
    let h = harness().await;
    let d = h.file_lltp(1).await;
    let store = h.engine.store();
    sqlx::query(
        "DELETE FROM _sqlx_migrations WHERE version = (SELECT MAX(version) FROM _sqlx_migrations)",
    )
    .execute(store.pool())
    .await
    .unwrap();
    let last: i64 = sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations")
        .fetch_one(store.pool())
        .await
        .unwrap();
    let url = db_url(&h.dir).await;
    let out = tthc_in(h.dir.path(), &["--database", &url, "replay", &d.code]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("is not migrated to this version of tthc: migration(s)")
            && stderr(&out).contains("`tthc serve` applies them"),
        "{}",
        stderr(&out)
    );
    // Nothing was migrated meanwhile.
    let now: i64 = sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(now, last);
}

#[tokio::test]
async fn audit_tools_read_the_deployed_definitions_from_the_database_without_a_root() {
    let h = harness().await;
    let d = h.file_lltp(1).await;
    h.receive(&d.code).await;
    let url = db_url(&h.dir).await;
    // An empty folder: no procedures/, no templates, no configuration.
    let elsewhere = tempfile::tempdir().unwrap();
    let out = tthc_in(elsewhere.path(), &["--database", &url, "audit", "verify"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).starts_with("intact: ") && stdout(&out).contains("in 1 dossier(s)"),
        "{}",
        stdout(&out)
    );
    let out = tthc_in(elsewhere.path(), &["--database", &url, "replay", &d.code]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("State check: the stored read models match the events."),
        "{}",
        stdout(&out)
    );
    // verify-result too, with no blob store there: the result is not signed, and nothing is
    // made (no data/blobs, no development secret).
    let out = tthc_in(
        elsewhere.path(),
        &["--database", &url, "verify-result", &d.code, "KQ.LLTP.01"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("is not signed on this dossier"),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(entries(elsewhere.path()), Vec::<String>::new());
}

/// `tthc serve` on `database`, in `dir`, which must stop on its own. (A server that kept
/// running, as it did on a file SQLite cannot use, is stopped after two minutes and fails the
/// test.)
fn serve_until_it_stops(dir: &Path, database: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tthc"))
        .args(["--database", database, "serve", "--listen", "127.0.0.1:0"])
        .current_dir(dir)
        .env_remove("TTHC_ROOT")
        .env_remove("TTHC_DATABASE_URL")
        .env("TTHC_JWT_SECRET", "a test secret of at least 32 characters")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > std::time::Duration::from_secs(120) {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "tthc serve kept running on {database}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// A small SQLite database that is not tthc's, then damaged: its schema page overwritten.
async fn damaged_database(path: &Path) {
    foreign_database(path).await;
    use std::io::{Seek, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    // Past the 100-byte file header: the first b-tree page's header, which holds the schema.
    f.seek(std::io::SeekFrom::Start(100)).unwrap();
    f.write_all(&[0xff; 8]).unwrap();
}

#[tokio::test]
async fn serve_and_audit_verify_stop_at_once_on_a_file_sqlite_cannot_use() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, [0x5au8; 8192]).unwrap();
    let damaged = dir.path().join("damaged.db");
    damaged_database(&damaged).await;
    for (path, cause) in [
        (&garbage, "file is not a database"),
        (&damaged, "database disk image is malformed"),
    ] {
        let expected = format!("{}: {cause}", path.display());
        let url = sqlite_url(path);
        let out = serve_until_it_stops(dir.path(), &url);
        assert_eq!(out.status.code(), Some(1), "serve: {}", stdout(&out));
        assert!(stderr(&out).contains(&expected), "serve: {}", stderr(&out));
        assert!(!stderr(&out).contains("timed out"), "{}", stderr(&out));
        let out = tthc_in(dir.path(), &["--database", &url, "audit", "verify"]);
        assert_eq!(out.status.code(), Some(1), "audit verify: {}", stdout(&out));
        assert!(
            stderr(&out).contains(&expected),
            "audit verify: {}",
            stderr(&out)
        );
    }
}

#[tokio::test]
async fn a_read_only_database_is_refused_by_serve_and_read_by_the_audit_tools() {
    let h = harness().await;
    let d = h.file_lltp(1).await;
    let url = db_url(&h.dir).await;
    let Some(path) = url.strip_prefix("sqlite://").map(std::path::PathBuf::from) else {
        return; // PostgreSQL (TTHC_TEST_DATABASE): no file to protect.
    };
    h.engine.store().pool().close().await;
    drop(h.engine);
    let mut permissions = std::fs::metadata(&path).unwrap().permissions();
    permissions.set_readonly(true);
    std::fs::set_permissions(&path, permissions).unwrap();
    let before = std::fs::read(&path).unwrap();

    let out = serve_until_it_stops(h.dir.path(), &url);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).contains(&format!("{} is read-only", path.display())),
        "{}",
        stderr(&out)
    );

    let out = tthc_in(h.dir.path(), &["--database", &url, "audit", "verify"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).starts_with("intact: "), "{}", stdout(&out));
    let out = tthc_in(h.dir.path(), &["--database", &url, "replay", &d.code]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the file was written"
    );
}

/// Starts `tthc serve` on `database` in its own folder; `Ok` once it listens, else what it
/// said before it stopped.
fn serve_until_listening(dir: &Path, database: &str) -> (std::process::Child, Result<(), String>) {
    use std::io::{BufRead, Read};
    let mut child = Command::new(env!("CARGO_BIN_EXE_tthc"))
        .args(["--database", database, "--root"])
        .arg(crate::support::repo_root())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .current_dir(dir)
        .env_remove("TTHC_DATABASE_URL")
        .env("TTHC_JWT_SECRET", "a test secret of at least 32 characters")
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let listening = lines.any(|l| l.is_ok_and(|l| l.starts_with("tthc listening on")));
    if listening {
        return (child, Ok(()));
    }
    let mut said = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut said)
        .unwrap();
    (child, Err(said))
}

#[test]
fn two_servers_starting_on_a_new_file_at_once_both_migrate_it_and_listen() {
    for round in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let database = sqlite_url(&dir.path().join("tthc.db"));
        let starts: Vec<_> = ["a", "b"]
            .map(|node| {
                let here = dir.path().join(node);
                std::fs::create_dir(&here).unwrap();
                let database = database.clone();
                std::thread::spawn(move || serve_until_listening(&here, &database))
            })
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        for (mut child, outcome) in starts {
            child.kill().unwrap();
            child.wait().unwrap();
            if let Err(said) = outcome {
                panic!("round {round}: a server did not start: {said}");
            }
        }
    }
}

#[tokio::test]
async fn a_damaged_archive_row_is_named_by_verify_which_goes_on_and_reads_answer_a_problem() {
    let h = harness().await;
    let damaged = h.file_lltp(1).await;
    h.receive(&damaged.code).await;
    let intact = h.file_lltp(1).await;
    let store = h.engine.store();
    let last = store.events(&damaged.code).await.unwrap().pop().unwrap();
    let sealed = store
        .seal(&[engine::store::SealCandidate {
            code: damaged.code.to_string(),
            seq: last.seq,
            head: last.hash.clone(),
            sealed: 0,
        }])
        .await
        .unwrap();
    assert_eq!(sealed.sealed, 1, "{sealed:?}");
    let url = db_url(&h.dir).await;
    if !url.starts_with("sqlite:") {
        return; // PostgreSQL's BYTEA column holds bytes only.
    }
    // Text where the sealer wrote bytes: the driver failed on the whole row ("invalid utf-8").
    sqlx::query("UPDATE event_archives SET body = CAST(body AS TEXT) WHERE dossier_code = ?")
        .bind(&*damaged.code)
        .execute(store.pool())
        .await
        .unwrap();

    let out = tthc_in(h.dir.path(), &["--database", &url, "audit", "verify"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}{}", stderr(&out));
    assert!(
        text.contains(&format!(
            "{}: event 1: its archive of sealed events is damaged: its body is stored as text, not bytes",
            damaged.code
        )),
        "{text}"
    );
    assert!(
        text.contains("ALTERED: 1 of 2 dossier(s) fail verification"),
        "the other dossier was verified: {text}"
    );
    assert!(!text.contains(&*intact.code), "{text}");

    // A server that has not read the dossier yet (a restart, another node).
    let api = crate::api_support::start_api_with(20, |c| c.database_url = url.clone()).await;
    let token = crate::api_support::auditor_token();
    let r = api
        .get(&format!("/api/v1/dossiers/{}", damaged.code), &token)
        .await;
    assert_eq!(r.status, 409, "{}", r.text);
    assert_eq!(r.body["code"], "archive_damaged", "{}", r.text);
    let detail = r.body["detail"].as_str().unwrap();
    assert!(
        detail.contains(&*damaged.code) && detail.contains("body is stored as text"),
        "{detail}"
    );
    let r = api
        .get(&format!("/api/v1/dossiers/{}", intact.code), &token)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = api.get("/api/v1/audit/verify", &token).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["intact"], false);
    assert_eq!(r.body["dossiers"], 2);
    let breaks = r.body["breaks"].as_array().unwrap();
    assert_eq!(breaks.len(), 1, "{}", r.text);
    assert_eq!(breaks[0]["dossier"], *damaged.code);
    assert!(
        breaks[0]["problem"]
            .as_str()
            .unwrap()
            .contains("archive of sealed events is damaged"),
        "{}",
        r.text
    );
}

/// An answer as it came, 5xx included.
struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: serde_json::Value,
}

async fn answer(request: reqwest::RequestBuilder) -> Answer {
    let r = request.send().await.unwrap();
    Answer {
        status: r.status().as_u16(),
        retry_after: r
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned()),
        body: r.json().await.unwrap_or_default(),
    }
}

/// Files a judicial record request over HTTP.
async fn file_over_http(api: &crate::api_support::Api) -> Answer {
    answer(
        api.request(reqwest::Method::POST, "/api/v1/dossiers")
            .bearer_auth(crate::api_support::citizen_token())
            .json(&serde_json::json!({
                "procedure_code": "2.000488",
                "agency_code": AGENCY,
                "data": {"to_khai": lltp_form(1)},
            })),
    )
    .await
}

#[tokio::test]
async fn a_full_database_answers_writes_503_storage_full_and_is_not_ready_until_space_returns() {
    let h = harness().await;
    let url = db_url(&h.dir).await;
    let Some(path) = url.strip_prefix("sqlite://").map(std::path::PathBuf::from) else {
        return; // PostgreSQL (TTHC_TEST_DATABASE): no page cap to set.
    };
    // Ballast that can be dropped later, to give space back.
    let pool = h.engine.store().pool().clone();
    sqlx::query("CREATE TABLE ballast (filler BLOB)")
        .execute(&pool)
        .await
        .unwrap();
    for _ in 0..64 {
        sqlx::query("INSERT INTO ballast (filler) VALUES (zeroblob(4096))")
            .execute(&pool)
            .await
            .unwrap();
    }
    pool.close().await;
    drop(h.engine);
    use sqlx::Connection;
    let mut own = sqlx::SqliteConnection::connect(&url).await.unwrap();
    // No free page left inside the file; the cap is its size: the database is full.
    sqlx::query("VACUUM").execute(&mut own).await.unwrap();
    let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
        .fetch_one(&mut own)
        .await
        .unwrap();
    let api = crate::api_support::start_api_with(20, |c| {
        c.database_url = format!("sqlite://{}?max_page_count={pages}", path.display());
    })
    .await;
    let mut full = None;
    for _ in 0..200 {
        let r = file_over_http(&api).await;
        if r.status != 201 {
            full = Some(r);
            break;
        }
    }
    let r = full.expect("filings never filled the capped database");
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.body["code"], "storage_full", "{}", r.body);
    assert_eq!(r.retry_after.as_deref(), Some("60"));
    let r = answer(api.request(reqwest::Method::GET, "/ready")).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.body["status"], "storage full");
    // Its probe write finds no room either, and a request that writes nothing changes nothing.
    let r = answer(
        api.request(reqwest::Method::GET, "/api/v1/dossiers")
            .bearer_auth(crate::api_support::admin_token()),
    )
    .await;
    assert_eq!(r.status, 200, "reads go on: {}", r.body);
    let r = answer(api.request(reqwest::Method::GET, "/ready")).await;
    assert_eq!(r.status, 503, "{}", r.body);

    // Space comes back: the ballast goes.
    sqlx::query("DROP TABLE ballast")
        .execute(&mut own)
        .await
        .unwrap();
    let r = answer(api.request(reqwest::Method::GET, "/ready")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = file_over_http(&api).await;
    assert_eq!(r.status, 201, "{}", r.body);
}
