//! Appending and the hash chain: deployed procedures, filings, appends with their projections, reading a dossier's events, verifying the chains.

#[allow(unused_imports)]
use super::*;

impl Store {
    /// Records a procedure version. Returns false when that version is already deployed.
    pub async fn save_procedure(&self, p: &StoredProcedure) -> Result<bool, StoreError> {
        let _turn = self.write_turn().await;
        let r = sqlx::query(sql(
            self.backend,
            "INSERT INTO procedures (code, version, name, source, forms, deployed_at)
             VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (code, version) DO NOTHING",
        ))
        .bind(&p.code)
        .bind(i64::from(p.version))
        .bind(&p.name)
        .bind(&p.source)
        .bind(p.forms.to_string())
        .bind(micros(p.deployed_at))
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn procedures(&self) -> Result<Vec<StoredProcedure>, StoreError> {
        let rows = sqlx::query(sql(self.backend, "SELECT code, version, name, source, forms, deployed_at FROM procedures ORDER BY code, version"),
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                let forms: String = r.try_get("forms")?;
                Ok(StoredProcedure {
                    code: r.try_get("code")?,
                    version: u32::try_from(r.try_get::<i64, _>("version")?).unwrap_or(0),
                    name: r.try_get("name")?,
                    source: r.try_get("source")?,
                    forms: serde_json::from_str(&forms)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    deployed_at: from_micros(r.try_get("deployed_at")?),
                })
            })
            .collect()
    }

    /// The stored events of a dossier, in order.
    pub async fn events(&self, code: &str) -> Result<Vec<EventRecord>, StoreError> {
        self.events_after(code, 0).await
    }

    /// The stored events of a dossier after event `seq`, in order: what a state folded up to
    /// `seq` still lacks. Each record's `prev_hash` is the hash of the event before it (event
    /// `seq` itself is read for the first one). Events of a sealed stream come from its
    /// archive, with their hashes recomputed from the records (the archive keeps a check of
    /// each; `audit verify` compares them).
    pub async fn events_after(&self, code: &str, seq: u64) -> Result<Vec<EventRecord>, StoreError> {
        let from = seq.max(1);
        let mut stored = self.event_rows(code, from).await?;
        let mut hashes: Vec<Vec<u8>> = Vec::new();
        if stored.is_empty() && seq > 0 && self.head_seq(code).await? == Some(seq) {
            // Nothing after `seq`, whose row was sealed: no need to open the archive.
            return Ok(Vec::new());
        }
        if stored.first().map(|e| e.seq) != Some(from) {
            // The events before the first row (all of them, if none) may be sealed.
            if let Some(archive) = self.archive(code).await?
                && archive.upto >= from
            {
                let archived =
                    self.unpack(&archive)
                        .await?
                        .map_err(|e| StoreError::ArchiveDamaged {
                            dossier: code.to_owned(),
                            problem: e.to_string(),
                        })?;
                let (digests, _) = archive::recompute_hashes(code, &archived);
                let skip = usize::try_from(from - 1).unwrap_or(usize::MAX);
                hashes.extend(digests.iter().skip(skip).map(|d| d.to_vec()));
                let mut all: Vec<StoredEvent> = archived.into_iter().skip(skip).collect();
                all.append(&mut stored);
                stored = all;
            }
        }
        hashes.extend(stored.iter().skip(hashes.len()).map(|e| e.hash.clone()));
        if stored.is_empty() {
            if seq > 0 {
                return Err(StoreError::Corrupt(format!(
                    "{code}: event {seq} is missing from its stream"
                )));
            }
            return Ok(Vec::new());
        }
        let mut prev = audit::GENESIS.to_owned();
        let mut out = Vec::with_capacity(stored.len());
        for (i, (e, hash)) in stored.into_iter().zip(hashes).enumerate() {
            let expected = from + i as u64;
            if e.seq != expected {
                return Err(StoreError::Corrupt(format!(
                    "{code}: event {expected} is missing from its stream"
                )));
            }
            let hash = hex::encode(hash);
            if i == 0 && seq > 0 {
                prev = hash;
                continue;
            }
            out.push(EventRecord {
                event: serde_json::from_str(&e.payload)
                    .map_err(|err| StoreError::Corrupt(format!("{code} event {}: {err}", e.seq)))?,
                dossier: code.to_owned(),
                seq: e.seq,
                at: from_micros(e.at),
                actor_id: e.actor_id,
                actor_name: e.actor_name,
                prev_hash: std::mem::replace(&mut prev, hash.clone()),
                hash,
            });
        }
        Ok(out)
    }

    /// The event rows of a dossier from event `from` on (not the sealed ones), as stored.
    pub(super) async fn event_rows(
        &self,
        code: &str,
        from: u64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        sqlx::query(sql(
            self.backend,
            "SELECT seq, at, actor_id, actor_name, payload, hash FROM events
             WHERE dossier_code = ? AND seq >= ? ORDER BY seq",
        ))
        .bind(code)
        .bind(i64::try_from(from).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(StoredEvent {
                seq: u64::try_from(r.try_get::<i64, _>("seq")?).unwrap_or(0),
                at: r.try_get("at")?,
                actor_id: r.try_get("actor_id")?,
                actor_name: r.try_get("actor_name")?,
                payload: r.try_get("payload")?,
                hash: r.try_get("hash")?,
            })
        })
        .collect()
    }

    /// [`Self::event_rows`] as one aggregated row, as `verify` reads streams: each row crossing
    /// from sqlx's connection thread costs more than its content, so the sealer reads whole
    /// streams this way. The stored payload text comes back exactly (JSON string escaping
    /// round-trips).
    pub(super) async fn event_rows_aggregated(
        &self,
        code: &str,
        from: u64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let statement = match self.backend {
            Backend::Sqlite => {
                "SELECT json_group_array(json_array(seq, at, actor_id, actor_name, payload,
                    lower(hex(hash))) ORDER BY seq)
                 FROM events WHERE dossier_code = ? AND seq >= ?"
            }
            Backend::Postgres => {
                "SELECT COALESCE(json_agg(json_build_array(seq, at, actor_id, actor_name,
                    payload, encode(hash, 'hex')) ORDER BY seq)::text, '[]')
                 FROM events WHERE dossier_code = ? AND seq >= ?"
            }
        };
        let text: String = sqlx::query_scalar(sql(self.backend, statement))
            .bind(code)
            .bind(i64::try_from(from).unwrap_or(i64::MAX))
            .fetch_one(&self.pool)
            .await?;
        type Row = (i64, i64, String, String, String, String);
        let rows: Vec<Row> = serde_json::from_str(&text)
            .map_err(|e| StoreError::Corrupt(format!("{code}: events unreadable: {e}")))?;
        rows.into_iter()
            .map(|(seq, at, actor_id, actor_name, payload, hash)| {
                Ok(StoredEvent {
                    seq: u64::try_from(seq).unwrap_or(0),
                    at,
                    actor_id,
                    actor_name,
                    payload,
                    hash: hex::decode(&hash)
                        .map_err(|e| StoreError::Corrupt(format!("{code} event {seq}: {e}")))?,
                })
            })
            .collect()
    }

    /// The sequence number of a dossier's last event.
    pub(super) async fn head_seq(&self, code: &str) -> Result<Option<u64>, StoreError> {
        let seq: Option<i64> =
            sqlx::query_scalar(sql(self.backend, "SELECT seq FROM dossiers WHERE code = ?"))
                .bind(code)
                .fetch_optional(&self.pool)
                .await?;
        Ok(seq.map(|s| u64::try_from(s).unwrap_or(0)))
    }
}

impl Store {
    /// Files a new dossier: allocates its code for the agency and day, lets `decide` turn it
    /// into events, and stores them, all in one transaction. With an idempotency key (actor's
    /// key, request hash), the key is recorded in the same transaction: a key seen before
    /// returns the dossier it filed and files nothing.
    pub async fn create<E: Send + 'static>(
        &self,
        agency_code: &str,
        day: NaiveDate,
        decide: impl FnOnce(&str) -> Result<(Vec<Event>, Dossier), E> + Send + 'static,
        at: DateTime<Utc>,
        actor: (&str, &str),
        key: Option<(&str, &str)>,
    ) -> Result<Result<Created, E>, StoreError> {
        let r = self
            .create_unnoted(agency_code, day, decide, at, actor, key)
            .await;
        self.noted(r)
    }

    pub(super) async fn create_unnoted<E: Send + 'static>(
        &self,
        agency_code: &str,
        day: NaiveDate,
        decide: impl FnOnce(&str) -> Result<(Vec<Event>, Dossier), E> + Send + 'static,
        at: DateTime<Utc>,
        actor: (&str, &str),
        key: Option<(&str, &str)>,
    ) -> Result<Result<Created, E>, StoreError> {
        let day_key = day.format("%y%m%d").to_string();
        if let Some(w) = &self.sqlite_writer {
            // The whole filing in one hand-off to the writer thread, as a group commit is:
            // through sqlx it was five round trips to a connection's thread, all holding the
            // turn every command waits for.
            let filing = NewDossier {
                agency_code: agency_code.to_owned(),
                day_key,
                at,
                actor: (actor.0.to_owned(), actor.1.to_owned()),
                key: key.map(|(k, h)| (k.to_owned(), h.to_owned())),
            };
            return self
                .in_write_turn(w, move |conn| create_on(conn, &filing, decide))
                .await?;
        }
        let _turn = self.write_turn().await;
        let mut tx = self.begin().await?;
        if let Some((key, hash)) = key {
            // On PostgreSQL a concurrent filing with the same key waits here for the first
            // to commit, then finds its row.
            let claimed = sqlx::query(sql(self.backend, IDEMPOTENCY_CLAIM))
                .bind(actor.0)
                .bind(key)
                .bind(hash)
                .bind(micros(at))
                .execute(&mut *tx)
                .await?;
            if claimed.rows_affected() == 0 {
                let (body, request_hash): (String, String) =
                    sqlx::query_as(sql(self.backend, IDEMPOTENCY_EARLIER))
                        .bind(actor.0)
                        .bind(key)
                        .fetch_one(&mut *tx)
                        .await?;
                tx.rollback().await?;
                return Ok(Ok(Created::Earlier {
                    code: body,
                    request_hash,
                }));
            }
        }
        let n: i64 = sqlx::query_scalar(sql(self.backend, NEXT_DOSSIER_NUMBER))
            .bind(agency_code)
            .bind(&day_key)
            .fetch_one(&mut *tx)
            .await?;
        let code = format!("{agency_code}-{day_key}-{n:04}");
        let (events, state) = match decide(&code) {
            Ok(v) => v,
            Err(e) => {
                tx.rollback().await?;
                return Ok(Err(e));
            }
        };
        let head = write(
            self.backend,
            &mut tx,
            &Append {
                at,
                actor_id: actor.0,
                actor_name: actor.1,
                events: &events,
                state: &state,
                before: None,
            },
        )
        .await?;
        if let Some((key, _)) = key {
            sqlx::query(sql(self.backend, IDEMPOTENCY_FILED))
                .bind(&code)
                .bind(actor.0)
                .bind(key)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Ok(Created::New(Box::new(state), head)))
    }

    /// The (code, version) of every deployed procedure.
    pub async fn procedure_versions(&self) -> Result<Vec<(String, u32)>, StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as(sql(self.backend, "SELECT code, version FROM procedures"))
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(c, v)| (c, u32::try_from(v).unwrap_or(0)))
            .collect())
    }

    /// Appends events to an existing dossier whose state was `append.before`.
    /// Returns the hash of the last event appended: the new head of the dossier's chain.
    pub async fn append(&self, append: &Append<'_>) -> Result<String, StoreError> {
        let r = self.append_unnoted(append).await;
        self.noted(r)
    }

    pub(super) async fn append_unnoted(&self, append: &Append<'_>) -> Result<String, StoreError> {
        if let (Some(writer), Some((before, head))) = (&self.sqlite_writer, append.before) {
            return self.append_grouped(writer, append, before.seq, head).await;
        }
        let _turn = self.write_turn().await;
        let mut tx = self.begin().await?;
        let head = write(self.backend, &mut tx, append).await?;
        tx.commit().await?;
        Ok(head)
    }

    /// SQLite's one writer, shared: the append is prepared (hashes, statements) before the
    /// writer's turn and queued; the writer that gets the turn commits every queued append in
    /// one transaction. Under load many commands share a commit; alone, it is one transaction
    /// as before. The caller returns only once its append is committed (or refused).
    pub(super) async fn append_grouped(
        &self,
        writer: &sqlite::Writer,
        append: &Append<'_>,
        expected_seq: u64,
        head: &str,
    ) -> Result<String, StoreError> {
        let prepared = prepare(self.backend, append, expected_seq, head.to_owned())?;
        let head = prepared.head.clone();
        let write = std::sync::Arc::new(GroupWrite {
            expected_seq,
            prepared,
            outcome: std::sync::Mutex::new(None),
            decided: tokio::sync::Notify::new(),
        });
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(std::sync::Arc::clone(&write));
        // An append another writer's group carried is answered as soon as that group is
        // committed. Waiting for the turn to learn it made a convoy: every waiter, woken one
        // after the other, held the turn until the runtime got to it (p99 8.7 ms for such an
        // append under the HTTP benchmark, while the commits themselves took 0.9 ms).
        let turn = tokio::select! {
            _ = write.decided.notified() => match write.take_outcome() {
                Some(outcome) => return outcome.map(|()| head),
                None => std::sync::Arc::clone(&self.writer).lock_owned().await,
            },
            turn = std::sync::Arc::clone(&self.writer).lock_owned() => turn,
        };
        if let Some(outcome) = write.take_outcome() {
            // Committed (or refused) by the writer before us.
            return outcome.map(|()| head);
        }
        let writes = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        // The commit holds the turn and finishes even if this caller goes away: the writers
        // whose appends it carries wait for it.
        writer
            .run(move |conn| {
                let _turn = turn;
                commit_group(conn, &writes);
            })
            .await?;
        write
            .take_outcome()
            .unwrap_or_else(|| {
                Err(StoreError::Unavailable(
                    "the append was not committed".into(),
                ))
            })
            .map(|()| head)
    }
}

impl Store {
    /// Verifies the hash chain of every dossier, or of one.
    pub async fn verify(&self, only: Option<&str>) -> Result<VerifyReport, StoreError> {
        // One row per dossier: its head, its archive if sealed, and its event rows aggregated
        // into a JSON array in order. A row crossing from the database driver costs far more
        // than hashing an event, so streams travel whole. The stored text of each payload comes
        // back exactly (JSON string escaping round-trips), so the hashes are computed over the
        // bytes that were stored.
        let filter = if only.is_some() {
            "WHERE d.code = ?"
        } else {
            ""
        };
        let archive = archive_columns(self.backend);
        let statement = match self.backend {
            Backend::Sqlite => format!(
                "SELECT d.code, d.seq, d.last_hash, d.sealed_seq, {archive},
                    (SELECT json_group_array(json_array(e.seq, e.at, e.actor_id, e.actor_name,
                        e.payload, lower(hex(e.hash))) ORDER BY e.seq)
                     FROM events e WHERE e.dossier_code = d.code) AS stream
                 FROM dossiers d LEFT JOIN event_archives a ON a.dossier_code = d.code
                 {filter} ORDER BY d.code"
            ),
            Backend::Postgres => format!(
                "SELECT d.code, d.seq, d.last_hash, d.sealed_seq, {archive},
                    COALESCE((SELECT json_agg(json_build_array(e.seq, e.at, e.actor_id,
                        e.actor_name, e.payload, encode(e.hash, 'hex')) ORDER BY e.seq)
                     FROM events e WHERE e.dossier_code = d.code)::text, '[]') AS stream
                 FROM dossiers d LEFT JOIN event_archives a ON a.dossier_code = d.code
                 {filter} ORDER BY d.code"
            ),
        };
        let mut q = sqlx::query(sql_dyn(self.backend, statement));
        if let Some(code) = only {
            q = q.bind(code);
        }
        type Row = (i64, i64, String, String, String, String);
        use futures_util::StreamExt;
        let mut rows = q.fetch(&self.pool);
        let mut report = VerifyReport::default();
        while let Some(row) = rows.next().await {
            let row = row?;
            let code: String = row.try_get("code")?;
            let head_seq = u64::try_from(row.try_get::<i64, _>("seq")?).unwrap_or(0);
            let head: String = row.try_get("last_hash")?;
            let sealed = u64::try_from(row.try_get::<i64, _>("sealed_seq")?).unwrap_or(0);
            let archive = match row.try_get::<Option<i64>, _>("upto_seq")? {
                Some(_) => match archive_row(&code, &row) {
                    Ok(a) => Some(a),
                    Err(StoreError::ArchiveDamaged { problem, .. }) => {
                        // This dossier's history cannot be checked; the others still are.
                        report.dossiers += 1;
                        report.breaks.push(ChainBreak {
                            dossier: code,
                            seq: 1,
                            problem: format!("its archive of sealed events is damaged: {problem}"),
                        });
                        continue;
                    }
                    Err(e) => return Err(e),
                },
                None => None,
            };
            let stream: String = row.try_get("stream")?;
            let events: Vec<Row> = serde_json::from_str(&stream)
                .map_err(|e| StoreError::Corrupt(format!("{code}: events unreadable: {e}")))?;
            report.dossiers += 1;
            report.events += events.len() as u64;
            // The sealed part first: the live rows chain to the archive's head.
            let mut verifier = StreamVerifier::new(&code);
            let mut end = None;
            if sealed > 0 || archive.is_some() {
                match self.open_sealed(&code, archive.as_ref(), sealed).await? {
                    Ok((archived, after)) => {
                        report.events += archived.len() as u64;
                        end = archived
                            .last()
                            .map(|e| (e.seq, hex::encode(&archive.as_ref().expect("opened").head)));
                        verifier = after;
                    }
                    Err(b) => {
                        report.breaks.push(b);
                        continue;
                    }
                }
            }
            let mut broken = false;
            for (seq, at, actor_id, actor_name, payload, hash) in &events {
                if let Some(b) = verifier.next(
                    u64::try_from(*seq).unwrap_or(0),
                    from_micros(*at),
                    actor_id,
                    actor_name,
                    payload,
                    hash,
                ) {
                    report.breaks.push(b);
                    broken = true;
                }
            }
            if let Some((seq, .., hash)) = events.into_iter().next_back() {
                end = Some((u64::try_from(seq).unwrap_or(0), hash));
            }
            // The stored head of each chain must be its last event: a truncated stream is a break.
            if !broken
                && end
                    .as_ref()
                    .is_none_or(|(s, h)| *s != head_seq || *h != head)
            {
                report.breaks.push(ChainBreak {
                    dossier: code,
                    seq: head_seq,
                    problem: "the stream ends before the dossier's last recorded event: events were removed".into(),
                });
            }
        }
        Ok(report)
    }
}

/// Appends the events and updates the read models; returns the new head of the chain.
pub(super) async fn write(
    b: Backend,
    tx: &mut Transaction<'static, Any>,
    a: &Append<'_>,
) -> Result<String, StoreError> {
    let (seq, prev) = match a.before {
        None => (0u64, audit::GENESIS.to_owned()),
        Some((before, head)) => (before.seq, head.to_owned()),
    };
    let prepared = prepare(b, a, seq, prev)?;
    match a.before {
        None => {
            let mut batch = Batch::default();
            insert_dossier(&mut batch, &prepared.dossier, &prepared.head);
            batch.statements.extend(prepared.batch.statements);
            batch.run(b, tx).await?;
        }
        Some((before, _)) => apply(b, tx, before.seq, &prepared).await?,
    }
    Ok(prepared.head)
}

/// An append made ready to store: the dossier row, the new head of the chain, and a batch
/// with the events and every read-model row that changed. Pure: no database.
#[derive(Clone)]
pub(super) struct Prepared {
    pub(super) dossier: DossierRow,
    pub(super) head: String,
    pub(super) batch: Batch,
}

pub(super) fn prepare(
    b: Backend,
    a: &Append<'_>,
    mut seq: u64,
    mut prev: String,
) -> Result<Prepared, StoreError> {
    let code = &a.state.code;
    let mut batch = Batch::default();
    // One multi-row INSERT per batch of events: a statement costs far more than a row.
    const COLUMNS: usize = 8;
    const ROWS_PER_STATEMENT: usize = 64;
    let row = format!("({})", ["?"; COLUMNS].join(", "));
    for chunk in a.events.chunks(ROWS_PER_STATEMENT) {
        let mut args = Vec::with_capacity(chunk.len() * COLUMNS);
        for e in chunk {
            seq += 1;
            let (payload, kind) = audit::event_text(e);
            let digest = audit::chain_digest(
                &prev,
                &audit::canonical(code, seq, a.at, a.actor_id, a.actor_name, &payload),
            );
            prev = hex::encode(digest);
            args.extend([
                Arg::Text(code.to_string()),
                Arg::Int(i64::try_from(seq).unwrap_or(i64::MAX)),
                Arg::Text(kind),
                Arg::Int(micros(a.at)),
                Arg::Text(a.actor_id.to_owned()),
                Arg::Text(a.actor_name.to_owned()),
                Arg::Text(payload),
                Arg::Bytes(digest.to_vec()),
            ]);
        }
        batch.push(
            format!(
                "INSERT INTO events (dossier_code, seq, type, at, actor_id, actor_name, payload, hash) VALUES {}",
                vec![row.as_str(); chunk.len()].join(", ")
            ),
            args,
        );
    }
    if seq != a.state.seq {
        return Err(StoreError::Corrupt(format!(
            "dossier {code}: state is at event {} but the stream at {seq}",
            a.state.seq
        )));
    }
    let p = Projection::of(a.state);
    project(b, &mut batch, a, &p);
    Ok(Prepared {
        dossier: p.dossier,
        head: prev,
        batch,
    })
}

/// Stores a prepared append to an existing dossier that was at `expected_seq`. The dossier row
/// first: the update holds only if nobody appended since the state the events were decided
/// on; on PostgreSQL it also locks the row, so a concurrent append waits here, then finds the
/// sequence moved on. The rest follows as one batch: on SQLite a single round trip to the
/// connection's thread, where each statement used to be one.
pub(super) async fn apply(
    b: Backend,
    tx: &mut Transaction<'static, Any>,
    expected_seq: u64,
    prepared: &Prepared,
) -> Result<(), StoreError> {
    let code = &prepared.dossier.code;
    if !update_dossier(b, tx, &prepared.dossier, expected_seq, &prepared.head).await? {
        let current: Option<i64> = sqlx::query_scalar(sql(b, DOSSIER_SEQ))
            .bind(code)
            .fetch_optional(&mut **tx)
            .await?;
        let Some(current) = current else {
            return Err(StoreError::Corrupt(format!("dossier {code} has no row")));
        };
        return Err(StoreError::Conflict {
            code: code.clone(),
            expected: expected_seq,
            current: u64::try_from(current).unwrap_or(0),
        });
    }
    prepared.batch.run(b, tx).await
}

/// A value bound in a [`Batch`].
#[derive(Clone)]
pub(super) enum Arg {
    Int(i64),
    OptInt(Option<i64>),
    Text(String),
    OptText(Option<String>),
    Bytes(Vec<u8>),
}

/// Statements run in order inside the caller's transaction. SQLite takes them as one
/// multi-statement query, its parameters bound in order across the statements: one round trip
/// to the connection's thread. PostgreSQL's protocol takes one statement with parameters at a
/// time.
#[derive(Clone, Default)]
pub(super) struct Batch {
    pub(super) statements: Vec<(String, Vec<Arg>)>,
}

impl Batch {
    pub(super) fn push(&mut self, statement: impl Into<String>, args: Vec<Arg>) {
        self.statements.push((statement.into(), args));
    }

    pub(super) async fn run(
        &self,
        b: Backend,
        tx: &mut Transaction<'static, Any>,
    ) -> Result<(), StoreError> {
        if self.statements.is_empty() {
            return Ok(());
        }
        let groups: Vec<(String, Vec<&Arg>)> = match b {
            Backend::Sqlite => {
                let mut text = String::new();
                let mut all = Vec::new();
                for (statement, args) in &self.statements {
                    text.push_str(statement);
                    text.push_str(";\n");
                    all.extend(args);
                }
                vec![(text, all)]
            }
            Backend::Postgres => self
                .statements
                .iter()
                .map(|(statement, args)| (statement.clone(), args.iter().collect()))
                .collect(),
        };
        for (statement, args) in groups {
            // Not kept prepared: a batch's text varies with what changed, and every connection
            // would otherwise cache its own copy of each variant (megabytes over a pool).
            let mut query = sqlx::query(sql_dyn(b, statement)).persistent(false);
            for arg in args {
                query = match arg {
                    Arg::Int(v) => query.bind(*v),
                    Arg::OptInt(v) => query.bind(*v),
                    Arg::Text(v) => query.bind(v.as_str()),
                    Arg::OptText(v) => query.bind(v.as_deref()),
                    Arg::Bytes(v) => query.bind(v.as_slice()),
                };
            }
            query.execute(&mut **tx).await?;
        }
        Ok(())
    }
}

pub(super) fn insert_dossier(batch: &mut Batch, d: &DossierRow, last_hash: &str) {
    batch.push(
        "INSERT INTO dossiers (code, procedure_code, procedure_version, agency_code, owner_id, owner_name,
            channel, status, seq, last_hash, filed_at, updated_at, received_at, due_at, closed, paused,
            overdue, apology_sent)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        vec![
            Arg::Text(d.code.clone()),
            Arg::Text(d.procedure_code.clone()),
            Arg::Int(i64::from(d.procedure_version)),
            Arg::Text(d.agency_code.clone()),
            Arg::Text(d.owner_id.clone()),
            Arg::Text(d.owner_name.clone()),
            Arg::Text(d.channel.clone()),
            Arg::Int(i64::from(d.status)),
            Arg::Int(i64::try_from(d.seq).unwrap_or(i64::MAX)),
            Arg::Text(last_hash.to_owned()),
            Arg::Int(micros(d.filed_at)),
            Arg::Int(micros(d.updated_at)),
            Arg::OptInt(opt_micros(d.received_at)),
            Arg::OptInt(opt_micros(d.due_at)),
            Arg::Int(i64::from(d.closed)),
            Arg::Int(i64::from(d.paused)),
            Arg::Int(i64::from(d.overdue)),
            Arg::Int(i64::from(d.apology_sent)),
        ],
    );
}

/// Where a dossier's row is, when an append found it moved on.
pub(super) const DOSSIER_SEQ: &str = "SELECT seq FROM dossiers WHERE code = ?";

/// Moves a dossier row to its new state if it is still at the sequence it was decided on.
pub(super) const UPDATE_DOSSIER: &str =
    "UPDATE dossiers SET status = ?, seq = ?, last_hash = ?, updated_at = ?,
        received_at = ?, due_at = ?, closed = ?, paused = ?, overdue = ?, apology_sent = ?
     WHERE code = ? AND seq = ?";

/// Moves the dossier row from `expected_seq` to the new state; false when it is not at
/// `expected_seq` (someone appended meanwhile).
pub(super) async fn update_dossier(
    b: Backend,
    tx: &mut Transaction<'static, Any>,
    d: &DossierRow,
    expected_seq: u64,
    last_hash: &str,
) -> Result<bool, StoreError> {
    let r = sqlx::query(sql(b, UPDATE_DOSSIER))
        .bind(i64::from(d.status))
        .bind(i64::try_from(d.seq).unwrap_or(i64::MAX))
        .bind(last_hash)
        .bind(micros(d.updated_at))
        .bind(opt_micros(d.received_at))
        .bind(opt_micros(d.due_at))
        .bind(i64::from(d.closed))
        .bind(i64::from(d.paused))
        .bind(i64::from(d.overdue))
        .bind(i64::from(d.apology_sent))
        .bind(&d.code)
        .bind(i64::try_from(expected_seq).unwrap_or(i64::MAX))
        .execute(&mut **tx)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// The read-model rows that changed between `a.before` and `a.state`.
pub(super) fn project(b: Backend, batch: &mut Batch, a: &Append<'_>, p: &Projection) {
    let d = &p.dossier;
    // Tasks: the table holds the open ones, so it follows the state exactly.
    let before_tasks = a.before_state().map(|b| &b.tasks);
    if before_tasks != Some(&a.state.tasks) {
        batch.push(
            "DELETE FROM tasks WHERE dossier_code = ?",
            vec![Arg::Text(d.code.clone())],
        );
        for t in &p.tasks {
            batch.push(
                "INSERT INTO tasks (dossier_code, task_id, step, name, role, agency_code, claimed_by, opened_at, due_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                vec![
                    Arg::Text(t.dossier_code.clone()),
                    Arg::Text(t.task_id.clone()),
                    Arg::Text(t.step.clone()),
                    Arg::Text(t.name.clone()),
                    Arg::Text(t.role.clone()),
                    Arg::Text(t.agency_code.clone()),
                    Arg::OptText(t.claimed_by.clone()),
                    Arg::Int(micros(t.opened_at)),
                    Arg::OptInt(opt_micros(t.due_at)),
                ],
            );
        }
    }

    // Jobs: the table is the work queue. A job is upserted when it changed, and leaves the
    // table once finished (its outcome is an event). A job whose attempts or state changed
    // loses its lease, so the next attempt can be claimed; others keep it (a worker may be
    // running them).
    let mut jobs_changed = false;
    for j in a.state.jobs.values() {
        let old = a.before_state().and_then(|b| b.jobs.get(&*j.id));
        if old == Some(j) {
            continue;
        }
        jobs_changed = true;
        let Some(row) = job_projection(&d.code, j) else {
            batch.push(
                "DELETE FROM jobs WHERE dossier_code = ? AND job_id = ?",
                vec![Arg::Text(d.code.clone()), Arg::Text(j.id.to_string())],
            );
            continue;
        };
        batch.push(
            "INSERT INTO jobs (dossier_code, job_id, kind, call, state, attempts, run_at, last_error, lease_until)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL)
             ON CONFLICT (dossier_code, job_id) DO UPDATE SET state = excluded.state,
                attempts = excluded.attempts, run_at = excluded.run_at, last_error = excluded.last_error,
                lease_until = NULL",
            vec![
                Arg::Text(row.dossier_code),
                Arg::Text(row.job_id),
                Arg::Text(row.kind),
                Arg::Text(row.call),
                Arg::Text(row.state),
                Arg::Int(i64::from(row.attempts)),
                Arg::Int(micros(row.run_at)),
                Arg::OptText(row.last_error),
            ],
        );
    }
    // Jobs finished by this append moved from the open map to the head of the finished list.
    let finished_before = a.before_state().map_or(0, |b| b.finished_jobs.len());
    let newly_finished = a.state.finished_jobs.len().saturating_sub(finished_before);
    for j in a.state.finished_jobs.iter().take(newly_finished) {
        jobs_changed = true;
        batch.push(
            "DELETE FROM jobs WHERE dossier_code = ? AND job_id = ?",
            vec![Arg::Text(d.code.clone()), Arg::Text(j.id.to_string())],
        );
    }
    // Wake idle workers on other nodes; delivered when the transaction commits.
    if b == Backend::Postgres && jobs_changed {
        batch.push("SELECT pg_notify('tthc_jobs', '')", Vec::new());
    }

    for (i, row) in a.state.incidents.values().zip(&p.incidents) {
        if a.before_state().and_then(|b| b.incidents.get(&i.id)) == Some(i) {
            continue;
        }
        batch.push(
            "INSERT INTO incidents (dossier_code, incident_id, job_id, error, opened_at, resolution, kind)
             VALUES (?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (dossier_code, incident_id) DO UPDATE SET resolution = excluded.resolution",
            vec![
                Arg::Text(row.dossier_code.clone()),
                Arg::Text(row.incident_id.clone()),
                Arg::Text(row.job_id.clone()),
                Arg::Text(row.error.clone()),
                Arg::Int(micros(row.opened_at)),
                Arg::OptText(row.resolution.clone()),
                Arg::Text(row.kind.clone()),
            ],
        );
    }

    let known = a.before_state().map_or(0, |b| b.notifications.len());
    for n in p.notifications.iter().skip(known) {
        batch.push(
            "INSERT INTO notifications (dossier_code, notification_id, template, recipient, subject, body, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (dossier_code, notification_id) DO NOTHING",
            vec![
                Arg::Text(n.dossier_code.clone()),
                Arg::Text(n.notification_id.clone()),
                Arg::Text(n.template.clone()),
                Arg::Text(n.recipient.clone()),
                Arg::Text(n.subject.clone()),
                Arg::Text(n.body.clone()),
                Arg::Int(micros(n.created_at)),
            ],
        );
    }
}
