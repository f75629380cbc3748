//! 2 and 3. Durable on SQLite (and PostgreSQL), then audit verify and the bytes stored.

#[allow(unused_imports)]
use super::*;

pub(super) fn durable_row() -> Row {
    Row::new(
        "durable",
        "durable: SQLite (WAL), a transaction per command",
        "dossiers/s",
        ">= 2 x SpiffWorkflow's in-memory rate",
    )
}

pub(super) fn verify_row() -> Row {
    Row::new(
        "audit_verify",
        "audit verify (hash chains)",
        "events/s",
        ">= 500,000 events/s",
    )
}

pub(super) fn storage_row() -> Row {
    Row::new(
        "storage",
        "stored per completed dossier",
        "bytes",
        "<= 4 KB (4,096 B)",
    )
}

/// A hook that succeeds at once, standing in for an external system.
pub(super) struct StandIn;

impl HookHandler for StandIn {
    fn call<'a>(&'a self, request: HookRequest<'a>) -> HookFuture<'a> {
        Box::pin(async move {
            HookOutcome::Succeeded {
                detail: json!({ "key": request.idempotency_key }),
                notification: None,
            }
        })
    }
}

pub(super) fn register_stand_ins(engine: &Engine) {
    for name in STAND_INS {
        engine.register_hook(name, Arc::new(StandIn));
    }
}

pub(super) async fn open_engine(root: &Path, url: &str) -> Result<Engine> {
    let mut config = EngineConfig::new(url, root.join("procedures").join("templates"));
    config.agencies =
        crate::config::agency_catalog(&root.join("procedures/catalog/agencies.yaml"))?;
    debug_assert!(config.agencies.contains(AGENCY));
    // As `tthc serve` runs with a portal: every status change is synced (a hook job).
    config.sync_status_to_portal = true;
    Ok(Engine::open(config, Calendar::default_vietnam()?, Clock::System).await?)
}

/// A plain SQLite connection pool on a database file, beside the engine's own, for what is
/// SQLite-specific here: bulk inserts, PRAGMAs, byte counts.
pub(super) async fn sqlite_pool(db: &Path) -> Result<sqlx::SqlitePool> {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
    let options = SqliteConnectOptions::new()
        .filename(db)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(30));
    Ok(SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?)
}

/// Size of the database file with the WAL folded in.
pub(super) async fn db_bytes(pool: &sqlx::SqlitePool) -> Result<i64> {
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(pool)
        .await?;
    let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
        .fetch_one(pool)
        .await?;
    let size: i64 = sqlx::query_scalar("PRAGMA page_size")
        .fetch_one(pool)
        .await?;
    Ok(pages * size)
}

/// The happy path's next act on a dossier, through the engine, as the officer whose act it is.
pub(super) async fn act_on(
    engine: &Engine,
    officers: &[(Who, Actor)],
    who: Who,
    act: Act,
    d: &Dossier,
) -> Result<Dossier> {
    let officer = officers
        .iter()
        .find(|(w, _)| *w == who)
        .map(|(_, a)| a)
        .ok_or_else(|| anyhow!("no officer"))?;
    let cmd = command(act, d)?;
    engine
        .execute(&d.code, None, officer, &cmd)
        .await
        .with_context(|| format!("{}: {}", d.code, cmd.name()))
}

/// One dossier down the happy path, every command through the engine and every hook through
/// the job worker: its code, the commands it took, and the worker's claim passes (each a write
/// transaction of its own).
pub(super) async fn durable_dossier(
    engine: &Engine,
    officers: &[(Who, Actor)],
    n: u64,
) -> Result<(String, u64, u64)> {
    let mut passes = 0u64;
    let (actor, owner) = citizen(n)?;
    let mut d = engine.file(&actor, &filing(owner)).await?;
    let code = d.code.clone();
    let mut commands = 1u64;
    for (who, act) in HAPPY_PATH {
        d = act_on(engine, officers, who, act, &d).await?;
        commands += 1;
        if pending_hook(&d).is_some() {
            let r = engine.drain_jobs().await?;
            passes += r.passes as u64;
            if r.failed > 0 || r.stale > 0 {
                bail!("durable: dossier {code}: hooks failed: {r:?}");
            }
            commands += r.claimed as u64;
            d = engine.dossier(&code).await?;
        }
    }
    if !d.is_closed() {
        bail!("durable: dossier {code} did not end: {:?}", d.tokens);
    }
    Ok((code.to_string(), commands, passes))
}

pub(super) fn officers() -> Vec<(Who, Actor)> {
    [
        Who::Desk,
        Who::Specialist,
        Who::Head,
        Who::Leader,
        Who::Clerk,
    ]
    .into_iter()
    .map(|w| (w, w.actor()))
    .collect()
}

/// An engine on `url` with the procedure deployed and the stand-in hooks.
pub(super) async fn prepare_engine(
    root: &Path,
    url: &str,
    definition: &Definition,
) -> Result<Engine> {
    let engine = open_engine(root, url).await?;
    engine.deploy(definition).await?;
    register_stand_ins(&engine);
    Ok(engine)
}

/// Warm-up dossiers (not timed, but stored: part of the verify and storage runs). The first
/// counts the write transactions a dossier takes: each command, each claim pass of the worker.
pub(super) async fn warm_up(engine: &Engine) -> Result<u64> {
    let officers = officers();
    let (_, commands, passes) = durable_dossier(engine, &officers, 999_999).await?;
    for n in 0..4 {
        durable_dossier(engine, &officers, 1_000_000 + n).await?;
    }
    seal(engine, 5).await?;
    Ok(commands + passes)
}

/// The sealer's pass, as `tthc serve` runs it in the background (up to 64 settled dossiers a
/// transaction): `expected` dossiers must be sealed.
pub(super) async fn seal(engine: &Engine, expected: u64) -> Result<()> {
    let r = engine.seal_settled(chrono::Duration::zero(), 64).await?;
    if r.sealed != expected || !r.broken.is_empty() {
        bail!("durable: {expected} settled dossiers, but the sealer: {r:?}");
    }
    Ok(())
}

/// Runs `n` dossiers one at a time; the seconds taken and the commands a dossier.
pub(super) async fn timed_dossiers(engine: &Engine, n: u64) -> Result<(f64, f64)> {
    let officers = officers();
    let start = Instant::now();
    let mut commands = 0u64;
    for i in 0..n {
        commands += durable_dossier(engine, &officers, i).await?.1;
        // Sealing is part of the work: a pass every 64 settled dossiers, as the background
        // sealer of `tthc serve` takes them.
        if (i + 1).is_multiple_of(64) {
            seal(engine, 64).await?;
        }
    }
    if !n.is_multiple_of(64) {
        seal(engine, n % 64).await?;
    }
    Ok((start.elapsed().as_secs_f64(), commands as f64 / n as f64))
}

pub(super) fn postgres_row() -> Row {
    Row::new(
        "postgres",
        "durable: PostgreSQL, a transaction per command",
        "dossiers/s",
        "(no target set)",
    )
}

/// The durable path on a fresh PostgreSQL database (created here, dropped afterwards).
pub(super) async fn bench_postgres(
    root: &Path,
    definition: &Definition,
    admin: &str,
    n: u64,
) -> Result<Row> {
    use sqlx::Connection;
    let name = format!(
        "tthc_bench_{}_{}",
        std::process::id(),
        hex::encode(rand::random::<[u8; 4]>())
    );
    let mut conn = sqlx::PgConnection::connect(admin)
        .await
        .with_context(|| format!("connecting to {admin}"))?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .with_context(|| format!("creating database {name}"))?;
    let (version, sync): (String, String) = sqlx::query_as(
        "SELECT current_setting('server_version'), current_setting('synchronous_commit')",
    )
    .fetch_one(&mut conn)
    .await?;
    let base = admin.rsplit_once('/').map_or(admin, |(b, _)| b);
    let url = format!("{base}/{name}");
    let result = async {
        let engine = prepare_engine(root, &url, definition).await?;
        let transactions = warm_up(&engine).await?;
        let r = timed_dossiers(&engine, n)
            .await
            .map(|(s, c)| (s, c, transactions));
        engine.store().pool().close().await;
        r
    }
    .await;
    let dropped = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await;
    let (secs, commands, transactions) = result?;
    dropped.with_context(|| format!("dropping database {name}"))?;
    let rate = n as f64 / secs;
    let mut row = postgres_row();
    row.value = Some(rate);
    row.figure = format!("{} dossiers/s", fmt_int(rate));
    row.detail = format!(
        "{commands:.0} commands a dossier = {} commands/s; {} dossiers in {:.2} s, one at a \
         time, server on loopback",
        fmt_int(rate * commands),
        fmt_int(n as f64),
        secs
    );
    row.data = json!({
        "dossiers": n, "seconds": secs, "dossiers_per_sec": rate,
        "commands_per_dossier": commands, "commands_per_sec": rate * commands,
        "write_transactions_per_dossier": transactions,
        "write_transactions_per_sec": rate * transactions as f64,
        "server_version": version, "synchronous_commit": sync,
    });
    row.notes.push(format!(
        "PostgreSQL {version} on loopback, synchronous_commit={sync}: each commit waits for the \
         disk; SQLite runs WAL with synchronous=NORMAL (no sync per commit: a power loss can \
         lose the last commits, a process crash cannot)"
    ));
    row.notes.push(STAND_IN_NOTE.into());
    Ok(row)
}

pub(super) async fn bench_durable(
    root: &Path,
    definition: &Definition,
    work: &Path,
    sizes: &Sizes,
    want: &impl Fn(Part) -> bool,
) -> Result<(Row, Row, Row)> {
    let db = work.join("durable.db");
    let engine = prepare_engine(root, &format!("sqlite://{}", db.display()), definition).await?;
    let transactions = warm_up(&engine).await?;
    let raw = sqlite_pool(&db).await?;
    let before = db_bytes(&raw).await?;
    let events_before: i64 = stored_events(&raw).await?;
    let (secs, commands) = timed_dossiers(&engine, sizes.durable).await?;
    let n = sizes.durable as f64;
    let rate = n / secs;
    let events: i64 = stored_events(&raw).await?;
    let per_dossier_events = (events - events_before) as f64 / n;

    let mut durable = durable_row();
    if want(Part::Durable) {
        durable.value = Some(rate);
        durable.figure = format!("{} dossiers/s", fmt_int(rate));
        durable.detail = format!(
            "{commands:.0} commands a dossier ({} by people, the rest hook outcomes) = {} \
             commands/s; {transactions} write transactions a dossier (commands + the worker's \
             claims) = {}/s, and a sealing pass per 64 dossiers; {} dossiers in {:.2} s, one at \
             a time",
            HAPPY_PATH.len() as u64 + 1,
            fmt_int(rate * commands),
            fmt_int(rate * transactions as f64),
            fmt_int(n),
            secs
        );
        durable.data = json!({
            "dossiers": sizes.durable,
            "seconds": secs,
            "dossiers_per_sec": rate,
            "commands_per_dossier": commands,
            "commands_per_sec": rate * commands,
            "write_transactions_per_dossier": transactions,
            "write_transactions_per_sec": rate * transactions as f64,
            "events_per_dossier": per_dossier_events,
            "sqlite": "WAL, synchronous=NORMAL (the store's settings), a temp file",
        });
        durable.notes.push(STAND_IN_NOTE.into());
        durable.notes.push(
            "each hook job: a claim (one UPDATE … RETURNING, its own transaction), the hook, \
             then RecordHookOutcome through Engine::execute (its own transaction)"
                .into(),
        );
    } else {
        durable = durable.skipped();
    }

    let verify = if want(Part::Verify) {
        let mut best = f64::INFINITY;
        let mut report = None;
        for _ in 0..3 {
            let t = Instant::now();
            let r = engine.verify(None).await?;
            best = best.min(t.elapsed().as_secs_f64());
            report = Some(r);
        }
        let r = report.ok_or_else(|| anyhow!("no verify run"))?;
        if !r.is_intact() {
            bail!("audit verify found breaks: {:?}", r.breaks);
        }
        let rate = r.events as f64 / best;
        let mut row = verify_row();
        row.value = Some(rate);
        row.figure = format!("{} events/s", fmt_int(rate));
        row.detail = format!(
            "{} events of {} dossiers in {:.3} s (best of 3), intact",
            fmt_int(r.events as f64),
            fmt_int(r.dossiers as f64),
            best
        );
        row.met = Some(rate >= 500_000.0);
        row.data = json!({"events": r.events, "dossiers": r.dossiers, "seconds": best, "events_per_sec": rate});
        row
    } else {
        verify_row().skipped()
    };

    let storage = if want(Part::Storage) {
        let after = db_bytes(&raw).await?;
        let mut row = storage_row();
        let delta = (after - before) as f64 / n;
        let payload = payload_bytes(&raw).await?;
        let total_payload: f64 = payload.values().sum::<f64>();
        // Events: their rows and the archives they are sealed into.
        let events_payload = payload.get("events").copied().unwrap_or(0.0)
            + payload.get("event_archives").copied().unwrap_or(0.0);
        let hashes = hash_bytes(&raw).await?;
        let dbstat = dbstat(&raw).await.unwrap_or(Value::Null);
        row.value = Some(delta);
        row.figure = format!("{} B (file growth)", fmt_int(delta));
        row.detail = format!(
            "column bytes {} B: events {} B ({} events, sealed; {} B of them hashes and checks), read models {} B",
            fmt_int(total_payload),
            fmt_int(events_payload),
            fmt_int(per_dossier_events),
            fmt_int(hashes),
            fmt_int(total_payload - events_payload)
        );
        row.met = Some(delta <= 4096.0);
        row.data = json!({
            "file_growth_per_dossier": delta,
            "column_bytes_per_dossier": payload,
            "column_bytes_total_per_dossier": total_payload,
            "hash_hex_bytes_per_dossier": hashes,
            "events_per_dossier": per_dossier_events,
            "dbstat_bytes_per_dossier": dbstat,
        });
        row.notes.push(format!(
            "file growth: (page_count x page_size after a WAL checkpoint, after minus before) / \
             {} completed dossiers: tables, indexes and B-tree slack. Column bytes: the UTF-8 \
             length of every text or blob value plus 8 per integer, in events, dossiers, tasks, jobs, \
             incidents, notifications",
            sizes.durable
        ));
        row
    } else {
        storage_row().skipped()
    };
    raw.close().await;
    Ok((durable, verify, storage))
}

pub(super) fn concurrent_row() -> Row {
    Row::new(
        "durable_concurrent",
        &format!("durable: SQLite, {IN_FLIGHT} dossiers in flight"),
        "dossiers/s",
        "(none: beside target 2, which is one at a time)",
    )
}

/// Waits until the worker has recorded every pending hook of a dossier, watching the node's
/// own copy of it (the worker runs on this engine, so that copy is current).
pub(super) async fn hooks_done(engine: &Engine, code: &str) -> Result<Arc<Dossier>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(d) = engine.last_seen(code)
            && pending_hook(&d).is_none()
        {
            return Ok(d);
        }
        if Instant::now() > deadline {
            bail!("durable, concurrent: the hooks of {code} were not run within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// One dossier down the happy path while others run beside it: every command through the
/// engine, every hook run by the background worker. The commands it took.
pub(super) async fn concurrent_dossier(
    engine: &Engine,
    officers: &[(Who, Actor)],
    n: u64,
) -> Result<u64> {
    let (actor, owner) = citizen(n)?;
    let mut d = engine.file(&actor, &filing(owner)).await?;
    let code = d.code.clone();
    for (who, act) in HAPPY_PATH {
        d = act_on(engine, officers, who, act, &d).await?;
        if pending_hook(&d).is_some() {
            d = Dossier::clone(&*hooks_done(engine, &code).await?);
        }
    }
    if !d.is_closed() {
        bail!(
            "durable, concurrent: dossier {code} did not end: {:?}",
            d.tokens
        );
    }
    let hooks = d.all_jobs().filter(|j| j.kind == JobKind::Hook).count();
    Ok(HAPPY_PATH.len() as u64 + 1 + hooks as u64)
}

/// The durable path as a server runs it: `IN_FLIGHT` dossiers at once on one engine, hooks
/// run by the background worker and settled dossiers sealed by the background sealer, both
/// as `tthc serve` starts them. Every command is still acknowledged only once committed;
/// commands of different dossiers share the group commits.
pub(super) async fn bench_concurrent(
    root: &Path,
    definition: &Definition,
    work: &Path,
    n: u64,
) -> Result<Row> {
    let db = work.join("concurrent.db");
    let engine = prepare_engine(root, &format!("sqlite://{}", db.display()), definition).await?;
    warm_up(&engine).await?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let background = engine::engine::Background {
        // Never during the run: the scan is measured nowhere here.
        overdue_scan: engine::engine::Background::parse_schedule("0 0 0 1 1 * 2099")
            .map_err(anyhow::Error::msg)?,
        poll: Duration::from_millis(20),
        seal_after: Some(chrono::Duration::zero()),
    };
    let worker = tokio::spawn({
        let engine = engine.clone();
        async move { engine.run_background(background, stopped).await }
    });
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = Instant::now();
    let drivers: Vec<_> = (0..IN_FLIGHT.min(n))
        .map(|_| {
            let (engine, next) = (engine.clone(), Arc::clone(&next));
            tokio::spawn(async move {
                let officers = officers();
                let mut commands = 0u64;
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        return Ok::<u64, anyhow::Error>(commands);
                    }
                    commands += concurrent_dossier(&engine, &officers, i).await?;
                }
            })
        })
        .collect();
    let mut commands = 0u64;
    let mut failed = None;
    for d in drivers {
        match d.await {
            Ok(Ok(c)) => commands += c,
            Ok(Err(e)) => failed = failed.or(Some(e)),
            Err(e) => failed = failed.or(Some(anyhow!("a driver panicked: {e}"))),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let _ = stop.send(true);
    worker.await.context("the background worker")?;
    engine.store().pool().close().await;
    if let Some(e) = failed {
        return Err(e);
    }
    let rate = n as f64 / secs;
    let per_dossier = commands as f64 / n as f64;
    let mut row = concurrent_row();
    row.value = Some(rate);
    row.figure = format!("{} dossiers/s", fmt_int(rate));
    row.detail = format!(
        "{per_dossier:.0} commands a dossier = {} commands/s, each acknowledged once committed; \
         {} dossiers in {secs:.2} s, {IN_FLIGHT} in flight, hooks and sealing in the background",
        fmt_int(rate * per_dossier),
        fmt_int(n as f64),
    );
    row.data = json!({
        "dossiers": n,
        "in_flight": IN_FLIGHT.min(n),
        "seconds": secs,
        "dossiers_per_sec": rate,
        "commands_per_dossier": per_dossier,
        "commands_per_sec": rate * per_dossier,
        "sqlite": "WAL, synchronous=NORMAL (the store's settings), a temp file",
    });
    row.notes.push(STAND_IN_NOTE.into());
    row.notes.push(
        "the background worker (8 jobs a pass) and sealer run as `tthc serve` starts them; \
         commands of different dossiers share group commits, so a commit is not one command's \
         alone as in the durable row"
            .into(),
    );
    Ok(row)
}

/// Events stored, as rows or sealed in archives.
pub(super) async fn stored_events(pool: &sqlx::SqlitePool) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT (SELECT COUNT(*) FROM events) + (SELECT COALESCE(SUM(upto_seq), 0) FROM event_archives)",
    )
    .fetch_one(pool)
    .await?)
}

pub(super) const STORED_TABLES: [&str; 7] = [
    "events",
    "event_archives",
    "dossiers",
    "tasks",
    "jobs",
    "incidents",
    "notifications",
];

/// Bytes of column values per completed dossier, by table.
pub(super) async fn payload_bytes(pool: &sqlx::SqlitePool) -> Result<BTreeMap<String, f64>> {
    let dossiers: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM dossiers")
        .fetch_one(pool)
        .await?;
    let mut out = BTreeMap::new();
    for table in STORED_TABLES {
        let cols: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT name, type FROM pragma_table_info('{table}')"
        )))
        .fetch_all(pool)
        .await?;
        let sum = cols
            .iter()
            .map(|(c, t)| {
                if t.eq_ignore_ascii_case("TEXT") || t.eq_ignore_ascii_case("BLOB") {
                    format!("COALESCE(length(CAST(\"{c}\" AS BLOB)), 0)")
                } else {
                    format!("(CASE WHEN \"{c}\" IS NULL THEN 0 ELSE 8 END)")
                }
            })
            .collect::<Vec<_>>()
            .join(" + ");
        let bytes: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT SUM({sum}) FROM {table}"
        )))
        .fetch_one(pool)
        .await?;
        out.insert(
            table.to_owned(),
            bytes.unwrap_or(0) as f64 / dossiers.max(1) as f64,
        );
    }
    Ok(out)
}

pub(super) async fn hash_bytes(pool: &sqlx::SqlitePool) -> Result<f64> {
    let (bytes, dossiers): (Option<i64>, i64) = sqlx::query_as(
        "SELECT (SELECT COALESCE(SUM(length(hash)), 0) FROM events)
            + (SELECT COALESCE(SUM(length(head) + length(checks)), 0) FROM event_archives),
            (SELECT COUNT(*) FROM dossiers)",
    )
    .fetch_one(pool)
    .await?;
    Ok(bytes.unwrap_or(0) as f64 / dossiers.max(1) as f64)
}

/// Space by table and index per dossier, when SQLite has the `dbstat` table.
pub(super) async fn dbstat(pool: &sqlx::SqlitePool) -> Result<Value> {
    let dossiers: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM dossiers")
        .fetch_one(pool)
        .await?;
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC")
            .fetch_all(pool)
            .await?;
    Ok(Value::Object(
        rows.into_iter()
            .map(|(n, b)| (n, json!(b as f64 / dossiers.max(1) as f64)))
            .collect(),
    ))
}
