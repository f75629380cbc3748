//! The SQLite group-commit writer's work (appends, filings, seals, claims) and the WAL checkpointer.

#[allow(unused_imports)]
use super::*;

/// An append waiting to be committed with others.
pub(super) struct GroupWrite {
    pub(super) expected_seq: u64,
    pub(super) prepared: Prepared,
    pub(super) outcome: std::sync::Mutex<Option<Result<(), StoreError>>>,
    /// Told once the outcome is set, so that the append's caller learns it at once.
    pub(super) decided: tokio::sync::Notify,
}

impl std::fmt::Debug for GroupWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupWrite")
            .field("dossier", &self.prepared.dossier.code)
            .field("expected_seq", &self.expected_seq)
            .finish_non_exhaustive()
    }
}

impl GroupWrite {
    pub(super) fn take_outcome(&self) -> Option<Result<(), StoreError>> {
        self.outcome
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    pub(super) fn set_outcome(&self, outcome: Result<(), StoreError>) {
        *self.outcome.lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome);
        self.decided.notify_one();
    }
}

/// Commits appends to SQLite in one transaction, on the writer thread's connection. A conflict
/// leaves its own append out (nothing of it was written); any other failure rolls the group
/// back, and each append is then tried alone, so that only the failing one reports the error.
pub(super) fn commit_group(conn: &mut rusqlite::Connection, writes: &[std::sync::Arc<GroupWrite>]) {
    let together = |conn: &mut rusqlite::Connection| {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut outcomes = Vec::with_capacity(writes.len());
        for w in writes {
            match apply_on(&tx, w.expected_seq, &w.prepared) {
                Ok(()) => outcomes.push(Ok(())),
                Err(e @ StoreError::Conflict { .. }) => outcomes.push(Err(e)),
                // Dropping the transaction rolls it back.
                Err(e) => return Err(e),
            }
        }
        tx.commit()?;
        Ok::<_, StoreError>(outcomes)
    };
    match together(conn) {
        Ok(outcomes) => {
            for (w, outcome) in writes.iter().zip(outcomes) {
                w.set_outcome(outcome);
            }
        }
        Err(_) => {
            for w in writes {
                let alone = |conn: &mut rusqlite::Connection| {
                    let tx =
                        conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                    apply_on(&tx, w.expected_seq, &w.prepared)?;
                    tx.commit()?;
                    Ok::<_, StoreError>(())
                };
                w.set_outcome(alone(conn));
            }
        }
    }
}

/// [`apply`] on the writer thread's connection: the conditional update of the dossier row,
/// then the batch, each statement kept prepared.
pub(super) fn apply_on(
    tx: &rusqlite::Transaction<'_>,
    expected_seq: u64,
    prepared: &Prepared,
) -> Result<(), StoreError> {
    let d = &prepared.dossier;
    let changed = tx
        .prepare_cached(UPDATE_DOSSIER)?
        .execute(rusqlite::params![
            i64::from(d.status),
            i64::try_from(d.seq).unwrap_or(i64::MAX),
            prepared.head,
            micros(d.updated_at),
            opt_micros(d.received_at),
            opt_micros(d.due_at),
            i64::from(d.closed),
            i64::from(d.paused),
            i64::from(d.overdue),
            i64::from(d.apology_sent),
            d.code,
            i64::try_from(expected_seq).unwrap_or(i64::MAX),
        ])?;
    if changed != 1 {
        use rusqlite::OptionalExtension;
        let current: Option<i64> = tx
            .prepare_cached(DOSSIER_SEQ)?
            .query_row([&d.code], |r| r.get(0))
            .optional()?;
        let Some(current) = current else {
            return Err(StoreError::Corrupt(format!(
                "dossier {} has no row",
                d.code
            )));
        };
        return Err(StoreError::Conflict {
            code: d.code.clone(),
            expected: expected_seq,
            current: u64::try_from(current).unwrap_or(0),
        });
    }
    run_on(tx, &prepared.batch.statements)
}

/// Runs statements on the writer thread's transaction, each kept prepared.
pub(super) fn run_on<'a>(
    tx: &rusqlite::Transaction<'_>,
    statements: impl IntoIterator<Item = &'a (String, Vec<Arg>)>,
) -> Result<(), StoreError> {
    for (statement, args) in statements {
        tx.prepare_cached(statement)?
            .execute(rusqlite::params_from_iter(args))?;
    }
    Ok(())
}

/// Claims an idempotency key for a filing; no row changes when it was seen before (binds:
/// actor, key, request hash, now).
pub(super) const IDEMPOTENCY_CLAIM: &str =
    "INSERT INTO idempotency_keys (actor_id, key, scope, request_hash, status, body, created_at)
     VALUES (?, ?, 'file_dossier', ?, 201, '', ?) ON CONFLICT (actor_id, key) DO NOTHING";
/// What a key seen before filed (binds: actor, key).
pub(super) const IDEMPOTENCY_EARLIER: &str =
    "SELECT body, request_hash FROM idempotency_keys WHERE actor_id = ? AND key = ?";
/// Records the dossier a key filed (binds: code, actor, key).
pub(super) const IDEMPOTENCY_FILED: &str =
    "UPDATE idempotency_keys SET body = ? WHERE actor_id = ? AND key = ?";
/// The next number of an agency's day (binds: agency, day as YYMMDD).
pub(super) const NEXT_DOSSIER_NUMBER: &str =
    "INSERT INTO dossier_sequences (agency_code, day, last) VALUES (?, ?, 1)
     ON CONFLICT (agency_code, day) DO UPDATE SET last = dossier_sequences.last + 1
     RETURNING last";

/// A filing's facts for [`create_on`], owned: it runs on the writer thread.
pub(super) struct NewDossier {
    pub(super) agency_code: String,
    pub(super) day_key: String,
    pub(super) at: DateTime<Utc>,
    /// Id and name.
    pub(super) actor: (String, String),
    /// The idempotency key and the request's hash.
    pub(super) key: Option<(String, String)>,
}

/// [`Store::create`] on the writer thread's connection: the key, the number, the decision and
/// the new dossier's rows in one transaction; nothing is kept when `decide` refuses.
pub(super) fn create_on<E>(
    conn: &mut rusqlite::Connection,
    f: &NewDossier,
    decide: impl FnOnce(&str) -> Result<(Vec<Event>, Dossier), E>,
) -> Result<Result<Created, E>, StoreError> {
    let (actor_id, actor_name) = (f.actor.0.as_str(), f.actor.1.as_str());
    // Dropping the transaction without committing rolls it back.
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    if let Some((key, hash)) = &f.key {
        let claimed = tx
            .prepare_cached(IDEMPOTENCY_CLAIM)?
            .execute(rusqlite::params![actor_id, key, hash, micros(f.at)])?;
        if claimed == 0 {
            let (code, request_hash) = tx
                .prepare_cached(IDEMPOTENCY_EARLIER)?
                .query_row([actor_id, key.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))?;
            return Ok(Ok(Created::Earlier { code, request_hash }));
        }
    }
    let n: i64 = tx
        .prepare_cached(NEXT_DOSSIER_NUMBER)?
        .query_row([&f.agency_code, &f.day_key], |r| r.get(0))?;
    let code = format!("{}-{}-{n:04}", f.agency_code, f.day_key);
    let (events, state) = match decide(&code) {
        Ok(v) => v,
        Err(e) => return Ok(Err(e)),
    };
    let prepared = prepare(
        Backend::Sqlite,
        &Append {
            at: f.at,
            actor_id,
            actor_name,
            events: &events,
            state: &state,
            before: None,
        },
        0,
        audit::GENESIS.to_owned(),
    )?;
    let mut row = Batch::default();
    insert_dossier(&mut row, &prepared.dossier, &prepared.head);
    run_on(&tx, row.statements.iter().chain(&prepared.batch.statements))?;
    if let Some((key, _)) = &f.key {
        tx.prepare_cached(IDEMPOTENCY_FILED)?
            .execute([code.as_str(), actor_id, key.as_str()])?;
    }
    tx.commit()?;
    Ok(Ok(Created::New(Box::new(state), prepared.head)))
}

/// The sealer's transaction on the writer thread's connection: for each dossier still where it
/// was read, its archive stored and its event rows and letters deleted; one that moved on is
/// counted as changed and left.
pub(super) fn seal_on(
    conn: &mut rusqlite::Connection,
    ready: &[(SealCandidate, crate::archive::Archive)],
) -> Result<SealReport, StoreError> {
    let mut report = SealReport::default();
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    for (c, archive) in ready {
        let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let moved = tx.prepare_cached(SEAL_MARK)?.execute(rusqlite::params![
            int(archive.upto),
            c.code,
            int(c.seq),
            int(c.sealed)
        ])?;
        if moved == 0 {
            report.changed += 1;
            continue;
        }
        tx.prepare_cached(SEAL_ARCHIVE)?.execute(rusqlite::params![
            c.code,
            int(archive.upto),
            archive.head,
            archive.checks,
            archive.dictionary,
            archive.body
        ])?;
        tx.prepare_cached(SEAL_DELETE_EVENTS)?
            .execute(rusqlite::params![c.code, int(archive.upto)])?;
        tx.prepare_cached(SEAL_DELETE_NOTIFICATIONS)?
            .execute([&c.code])?;
        report.sealed += 1;
        report.events += c.seq - c.sealed;
    }
    tx.commit()?;
    Ok(report)
}

/// Marks a dossier sealed up to an event, if it is still where the sealer read it (binds:
/// upto, code, seq, sealed).
pub(super) const SEAL_MARK: &str =
    "UPDATE dossiers SET sealed_seq = ? WHERE code = ? AND seq = ? AND sealed_seq = ?";
/// Stores a dossier's archive, replacing an earlier one (binds: code, upto, head, checks,
/// dictionary, body).
pub(super) const SEAL_ARCHIVE: &str =
    "INSERT INTO event_archives (dossier_code, upto_seq, head, checks, dictionary, body)
     VALUES (?, ?, ?, ?, ?, ?)
     ON CONFLICT (dossier_code) DO UPDATE SET upto_seq = excluded.upto_seq,
        head = excluded.head, checks = excluded.checks,
        dictionary = excluded.dictionary, body = excluded.body";
/// The event rows an archive now holds (binds: code, upto).
pub(super) const SEAL_DELETE_EVENTS: &str =
    "DELETE FROM events WHERE dossier_code = ? AND seq <= ?";
/// A sealed dossier's letters: their text is in its events (binds: code).
pub(super) const SEAL_DELETE_NOTIFICATIONS: &str =
    "DELETE FROM notifications WHERE dossier_code = ?";

/// Whether any job is due and not leased (binds: now, now).
pub(super) const ANY_JOB_DUE: &str = "SELECT 1 FROM jobs WHERE state = 'pending' AND run_at <= ?
     AND (lease_until IS NULL OR lease_until < ?) LIMIT 1";

/// SQLite has one writer at a time: the statement is the claim (binds: lease until, now, now,
/// limit).
pub(super) const CLAIM_JOBS_SQLITE: &str = "UPDATE jobs SET lease_until = ?
     WHERE rowid IN (
         SELECT rowid FROM jobs
         WHERE state = 'pending' AND run_at <= ? AND (lease_until IS NULL OR lease_until < ?)
         ORDER BY run_at LIMIT ?)
     RETURNING dossier_code, job_id";

/// [`Store::claim_due_jobs`] on the writer thread's connection: nothing is written when no job
/// is due.
pub(super) fn claim_on(
    conn: &mut rusqlite::Connection,
    now: i64,
    lease_until: i64,
    limit: i64,
) -> Result<Vec<ClaimedJob>, StoreError> {
    if !conn.prepare_cached(ANY_JOB_DUE)?.exists([now, now])? {
        return Ok(Vec::new());
    }
    let mut claim = conn.prepare_cached(CLAIM_JOBS_SQLITE)?;
    let claimed = claim
        .query_map(rusqlite::params![lease_until, now, now, limit], |r| {
            Ok(ClaimedJob {
                dossier: r.get(0)?,
                job: r.get(1)?,
                lease_until,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(claimed)
}

/// Copies the SQLite WAL back into the database file every [`Checkpointer::EVERY`], and keeps
/// the WAL from growing without bound.
///
/// First a passive checkpoint beside the writers (it takes no lock they wait for) copies what
/// is there. But the WAL only starts again from its beginning when a commit begins with every
/// frame copied, and under continuous writes some commit always lands while the passive
/// checkpoint runs: the file grew for as long as the load lasted (1.6 GB in 12 s of the
/// durable benchmark, where the kernel's zeroing of its new pages took 16% of the time). So a
/// `RESTART` checkpoint follows on the writer thread, between two group commits: it copies
/// the frames committed since the passive checkpoint and makes the next commit start the WAL
/// from its beginning. It is skipped while nothing is written.
///
/// Every commit waits while the restart runs, and what it copies it must also sync to disk
/// first: 6–13 ms under the HTTP benchmark when it followed one passive pass (the pass takes
/// long, and all that was committed during it was left to the restart), twice a second, a
/// part of a task completion's p99. So passive passes repeat, beside the writers, until
/// one finds that almost nothing was committed during the pass before; the restart then has
/// only that little to copy.
#[derive(Debug)]
pub(super) struct Checkpointer {
    pub(super) stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Checkpointer {
    const EVERY: std::time::Duration = std::time::Duration::from_millis(500);
    const WAIT_FOR_READERS: std::time::Duration = std::time::Duration::from_millis(10);
    /// Passive passes after the first, at most, before the restart.
    const CATCH_UP_PASSES: usize = 4;
    /// Frames committed during a passive pass small enough to leave to the restart (a
    /// command writes about five).
    const FEW_FRAMES: i64 = 64;

    pub(super) fn start(pool: AnyPool, writer: std::sync::Arc<sqlite::Writer>) -> Checkpointer {
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Checkpointer::EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut seen = None;
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tick.tick() => {
                        match Checkpointer::pass(&pool, &writer, seen).await {
                            Ok(frames) => seen = Some(frames),
                            Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed"),
                        }
                    }
                }
            }
            // Dropping this clone of the pool: its last connection to close checkpoints the
            // rest of the WAL.
        });
        Checkpointer { stop: Some(stop) }
    }

    /// One pass; `seen` is the WAL's frame count the last pass left. Returns the frame count
    /// this pass leaves.
    pub(super) async fn pass(
        pool: &AnyPool,
        writer: &sqlite::Writer,
        seen: Option<i64>,
    ) -> Result<i64, StoreError> {
        // The WAL's frame count when a pass starts, and how many of them are copied.
        let passive = || async {
            let (_busy, frames, copied): (i64, i64, i64) =
                sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
                    .fetch_one(pool)
                    .await?;
            Ok::<_, StoreError>((frames, copied))
        };
        let (mut frames, copied) = passive().await?;
        if frames == 0 || (frames == copied && seen == Some(frames)) {
            // Nothing written since the last pass.
            return Ok(frames);
        }
        for _ in 0..Checkpointer::CATCH_UP_PASSES {
            let (now, _) = passive().await?;
            // Committed during the pass before (fewer if the WAL started again meanwhile).
            let during = now - frames;
            frames = now;
            if during <= Checkpointer::FEW_FRAMES {
                break;
            }
        }
        writer
            .run(move |conn| {
                // On the writer thread between two group commits, which wait meanwhile. Not
                // in the write turn: waiting for it behind every queued command let more
                // frames in for the restart to copy. A writer through the pool (an upload, a
                // lease renewed) that holds the write lock makes the restart wait for it like
                // a reader, and it waits for the restart through its busy timeout.
                //
                // RESTART waits for readers still on the WAL, and commits wait meanwhile, so
                // it waits briefly: a long reader (an audit, a search) only defers the restart
                // to a later pass.
                let started = std::time::Instant::now();
                let usual: i64 = conn.pragma_query_value(None, "busy_timeout", |r| r.get(0))?;
                conn.busy_timeout(Checkpointer::WAIT_FOR_READERS)?;
                let restart =
                    conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| r.get::<_, i64>(1));
                conn.pragma_update(None, "busy_timeout", usual)?;
                tracing::debug!(elapsed = ?started.elapsed(), "WAL restart checkpoint");
                match restart {
                    Ok(frames) => Ok(frames),
                    Err(rusqlite::Error::SqliteFailure(e, _))
                        if e.code == rusqlite::ErrorCode::DatabaseBusy =>
                    {
                        Ok(frames)
                    }
                    Err(e) => Err(StoreError::from(e)),
                }
            })
            .await?
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
