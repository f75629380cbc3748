//! Sealing: settled dossiers' events packed into archives, their dictionary, and reading archives back.

#[allow(unused_imports)]
use super::*;

impl Store {
    /// The archive of a dossier's sealed events, if it has one.
    pub async fn archive(&self, code: &str) -> Result<Option<Archive>, StoreError> {
        let statement = format!(
            "SELECT {} FROM event_archives a WHERE a.dossier_code = ?",
            archive_columns(self.backend)
        );
        let row = sqlx::query(sql_dyn(self.backend, statement))
            .bind(code)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| archive_row(code, &r)).transpose()
    }

    /// An archive's events, decompressed with the dictionary it names; `Err` inside when the
    /// archive cannot be read (damaged, or its dictionary is not stored).
    pub(super) async fn unpack(
        &self,
        archive: &Archive,
    ) -> Result<Result<Vec<StoredEvent>, ArchiveError>, StoreError> {
        Ok(match self.dictionary(archive.dictionary).await? {
            Some(d) => archive::unpack(archive, &d),
            None => Err(ArchiveError::Unreadable(format!(
                "it needs dictionary {}, which is not stored",
                archive.dictionary
            ))),
        })
    }

    /// A dictionary (0: none), prepared once per process: stored ones never change.
    pub(super) async fn dictionary(
        &self,
        id: i64,
    ) -> Result<Option<std::sync::Arc<Dictionary>>, StoreError> {
        if let Some(d) = self.dictionaries.lock().expect("dictionaries").get(&id) {
            return Ok(Some(d.clone()));
        }
        let prepared = if id == 0 {
            Dictionary::none()
        } else {
            let bytes: Option<Vec<u8>> = sqlx::query_scalar(sql(
                self.backend,
                "SELECT bytes FROM archive_dictionaries WHERE id = ?",
            ))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
            let Some(bytes) = bytes else {
                return Ok(None);
            };
            Dictionary::new(id, &bytes)
        }
        .map_err(|e| StoreError::Corrupt(format!("dictionary {id}: {e}")))?;
        let d = std::sync::Arc::new(prepared);
        self.dictionaries
            .lock()
            .expect("dictionaries")
            .insert(id, d.clone());
        Ok(Some(d))
    }

    /// The newest stored dictionary's id, which new archives are compressed with (0: none
    /// yet). Looked up at most every 10 s: any stored dictionary reads back, so one trained
    /// on another node a moment ago can wait.
    pub async fn current_dictionary(&self) -> Result<i64, StoreError> {
        if let Some((at, id)) = *self.current_dictionary.lock().expect("current_dictionary")
            && at.elapsed() < std::time::Duration::from_secs(10)
        {
            return Ok(id);
        }
        let id: Option<i64> = sqlx::query_scalar(sql(
            self.backend,
            "SELECT MAX(id) FROM archive_dictionaries",
        ))
        .fetch_one(&self.pool)
        .await?;
        let id = id.unwrap_or(0);
        *self.current_dictionary.lock().expect("current_dictionary") =
            Some((std::time::Instant::now(), id));
        Ok(id)
    }

    /// How many archives exist, up to `cap` (counting stops there).
    pub async fn archive_count(&self, cap: u32) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(sql(
            self.backend,
            "SELECT COUNT(*) FROM (SELECT 1 FROM event_archives LIMIT ?) AS a",
        ))
        .bind(i64::from(cap))
        .fetch_one(&self.pool)
        .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Makes a dictionary of the newest `samples` archives' streams (at least
    /// [`archive::MIN_SAMPLES`], else none is made) and stores it as the current one. Returns
    /// its id.
    pub async fn train_dictionary(
        &self,
        samples: u32,
        at: DateTime<Utc>,
    ) -> Result<Option<i64>, StoreError> {
        let statement = format!(
            "SELECT a.dossier_code, {} FROM event_archives a
             ORDER BY a.dossier_code DESC LIMIT ?",
            archive_columns(self.backend)
        );
        let rows = sqlx::query(sql_dyn(self.backend, statement))
            .bind(i64::from(samples))
            .fetch_all(&self.pool)
            .await?;
        let mut bodies = Vec::with_capacity(rows.len());
        for r in &rows {
            let code: String = r.try_get("dossier_code")?;
            // A damaged archive is left out: `audit verify` reports it.
            let Ok(a) = archive_row(&code, r) else {
                continue;
            };
            if let Some(d) = self.dictionary(a.dictionary).await?
                && let Ok(json) = archive::records(&a, &d)
            {
                bodies.push(json);
            }
        }
        if bodies.len() < archive::MIN_SAMPLES {
            return Ok(None);
        }
        let count = bodies.len();
        // Newest last: zstd looks back into the end of a raw dictionary first.
        bodies.reverse();
        let bytes = Dictionary::from_streams(&bodies);
        let _turn = self.write_turn().await;
        // Ids only grow; another node training at the same moment makes this insert a no-op.
        let done = sqlx::query(sql(
            self.backend,
            "INSERT INTO archive_dictionaries (id, trained_at, samples, bytes)
             SELECT COALESCE(MAX(id), 0) + 1, ?, ?, ? FROM archive_dictionaries WHERE true
             ON CONFLICT (id) DO NOTHING",
        ))
        .bind(micros(at))
        .bind(i64::try_from(count).unwrap_or(i64::MAX))
        .bind(bytes)
        .execute(&self.pool)
        .await?
        .rows_affected();
        drop(_turn);
        *self.current_dictionary.lock().expect("current_dictionary") = None;
        if done == 0 {
            return Ok(None);
        }
        Ok(Some(self.current_dictionary().await?))
    }

    /// Dossiers ready to be sealed, least recently changed first: closed, settled (no open task,
    /// no job left in the queue), with events not yet sealed, unchanged since `before`.
    pub async fn settled_unsealed(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<SealCandidate>, StoreError> {
        sqlx::query(sql(
            self.backend,
            "SELECT code, seq, last_hash, sealed_seq FROM dossiers d
             WHERE closed = 1 AND sealed_seq < seq AND updated_at <= ?
               AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.dossier_code = d.code)
               AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.dossier_code = d.code)
             ORDER BY updated_at, code LIMIT ?",
        ))
        .bind(micros(before))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(SealCandidate {
                code: r.try_get("code")?,
                seq: u64::try_from(r.try_get::<i64, _>("seq")?).unwrap_or(0),
                head: r.try_get("last_hash")?,
                sealed: u64::try_from(r.try_get::<i64, _>("sealed_seq")?).unwrap_or(0),
            })
        })
        .collect()
    }

    /// Seals the events of each candidate into its archive (see [`crate::archive`]), all in one
    /// transaction: the archive replaces the event rows and the letters' rows (the letters are in
    /// the events). A stream that does not verify is left as it is, and a dossier that changed
    /// since it was read is skipped (sealed on a later pass).
    pub async fn seal(&self, candidates: &[SealCandidate]) -> Result<SealReport, StoreError> {
        let mut report = SealReport::default();
        // Read, verify and compress before taking the writer's turn: events up to a sequence
        // never change, and the conditional update below catches a dossier that moved on.
        let mut ready = Vec::with_capacity(candidates.len());
        for c in candidates {
            match self.pack(c).await? {
                Ok(archive) => ready.push((c, archive)),
                // Read while another node sealed or appended to it: not broken, just moved on.
                Err(_) if self.moved_on(c).await? => report.changed += 1,
                Err(b) => report.broken.push(b),
            }
        }
        if ready.is_empty() {
            return Ok(report);
        }
        // A few dossiers a transaction: on SQLite the sealer holds the writer's turn meanwhile,
        // and commands wait behind it.
        const PER_TRANSACTION: usize = 8;
        if let Some(w) = &self.sqlite_writer {
            // On the writer thread, one hand-off a transaction: through sqlx each statement
            // was a round trip to its connection's thread, all of them holding the turn.
            let mut owned = Vec::with_capacity(ready.len());
            for (c, archive) in ready {
                owned.push((c.clone(), archive));
            }
            while !owned.is_empty() {
                let rest = owned.split_off(owned.len().min(PER_TRANSACTION));
                let chunk = std::mem::replace(&mut owned, rest);
                let part = self
                    .in_write_turn(w, move |conn| seal_on(conn, &chunk))
                    .await??;
                report.sealed += part.sealed;
                report.events += part.events;
                report.changed += part.changed;
            }
            return Ok(report);
        }
        let mut ready = ready.into_iter().peekable();
        while ready.peek().is_some() {
            let _turn = self.write_turn().await;
            let mut tx = self.begin().await?;
            for (c, archive) in ready.by_ref().take(PER_TRANSACTION) {
                let moved = sqlx::query(sql(self.backend, SEAL_MARK))
                    .bind(i64::try_from(archive.upto).unwrap_or(i64::MAX))
                    .bind(&c.code)
                    .bind(i64::try_from(c.seq).unwrap_or(i64::MAX))
                    .bind(i64::try_from(c.sealed).unwrap_or(i64::MAX))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if moved == 0 {
                    report.changed += 1;
                    continue;
                }
                let mut batch = Batch::default();
                batch.push(
                    SEAL_ARCHIVE,
                    vec![
                        Arg::Text(c.code.clone()),
                        Arg::Int(i64::try_from(archive.upto).unwrap_or(i64::MAX)),
                        Arg::Bytes(archive.head),
                        Arg::Bytes(archive.checks),
                        Arg::Int(archive.dictionary),
                        Arg::Bytes(archive.body),
                    ],
                );
                batch.push(
                    SEAL_DELETE_EVENTS,
                    vec![
                        Arg::Text(c.code.clone()),
                        Arg::Int(i64::try_from(archive.upto).unwrap_or(i64::MAX)),
                    ],
                );
                batch.push(SEAL_DELETE_NOTIFICATIONS, vec![Arg::Text(c.code.clone())]);
                batch.run(self.backend, &mut tx).await?;
                report.sealed += 1;
                report.events += c.seq - c.sealed;
            }
            tx.commit().await?;
        }
        Ok(report)
    }

    /// Whether a candidate's dossier changed since it was read (appended to or sealed).
    pub(super) async fn moved_on(&self, c: &SealCandidate) -> Result<bool, StoreError> {
        let row = sqlx::query(sql(
            self.backend,
            "SELECT seq, last_hash, sealed_seq FROM dossiers WHERE code = ?",
        ))
        .bind(&c.code)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else {
            return Ok(false);
        };
        let seq = u64::try_from(r.try_get::<i64, _>("seq")?).unwrap_or(0);
        let sealed = u64::try_from(r.try_get::<i64, _>("sealed_seq")?).unwrap_or(0);
        let head: String = r.try_get("last_hash")?;
        Ok(seq != c.seq || sealed != c.sealed || head != c.head)
    }

    /// A dossier's sealed events (`sealed` > 0), checked against their archive, and a verifier
    /// for the event rows after them; or where the sealed part breaks. Shared by `verify` and
    /// the sealer, so both judge an archive alike.
    pub(super) async fn open_sealed(
        &self,
        code: &str,
        archive: Option<&Archive>,
        sealed: u64,
    ) -> Result<Result<(Vec<StoredEvent>, StreamVerifier), ChainBreak>, StoreError> {
        let brk = |seq: u64, problem: String| {
            Ok(Err(ChainBreak {
                dossier: code.to_owned(),
                seq,
                problem,
            }))
        };
        let Some(archive) = archive else {
            return brk(
                1,
                format!("events 1 to {sealed} were sealed but their archive is missing"),
            );
        };
        let archived = match self.unpack(archive).await? {
            Ok(a) => a,
            Err(e) => return brk(1, format!("the archive of events 1 to {sealed}: {e}")),
        };
        let (hashes, bad) = archive::recompute_hashes(code, &archived);
        if let Some(seq) = bad {
            return brk(
                seq,
                "its content does not match its sealed hash: the event was altered".into(),
            );
        }
        if archive.upto != sealed || hashes.last().map(|h| h.as_slice()) != Some(&archive.head) {
            return brk(
                archive.upto,
                format!(
                    "the archive of events 1 to {} does not end on its recorded head (the dossier records {sealed} sealed)",
                    archive.upto
                ),
            );
        }
        let verifier = StreamVerifier::after(code, archive.upto, &hex::encode(&archive.head));
        Ok(Ok((archived, verifier)))
    }

    /// A candidate's whole stream, verified, packed into one archive; or where it breaks.
    pub(super) async fn pack(
        &self,
        c: &SealCandidate,
    ) -> Result<Result<Archive, ChainBreak>, StoreError> {
        let brk = |seq: u64, problem: String| {
            Ok(Err(ChainBreak {
                dossier: c.code.clone(),
                seq,
                problem,
            }))
        };
        let (mut stream, mut verifier) = if c.sealed > 0 {
            let archive = match self.archive(&c.code).await {
                Ok(a) => a,
                // Never sealed again: left as evidence, like any stream that does not verify.
                Err(StoreError::ArchiveDamaged { problem, .. }) => return brk(1, problem),
                Err(e) => return Err(e),
            };
            match self
                .open_sealed(&c.code, archive.as_ref(), c.sealed)
                .await?
            {
                Ok(opened) => opened,
                Err(b) => return Ok(Err(b)),
            }
        } else {
            (Vec::new(), StreamVerifier::new(&c.code))
        };
        let rows = self.event_rows_aggregated(&c.code, c.sealed + 1).await?;
        for e in rows.into_iter().take_while(|e| e.seq <= c.seq) {
            if let Some(b) = verifier.next(
                e.seq,
                from_micros(e.at),
                &e.actor_id,
                &e.actor_name,
                &e.payload,
                &hex::encode(&e.hash),
            ) {
                return Ok(Err(b));
            }
            stream.push(e);
        }
        match stream.last() {
            Some(last) if last.seq == c.seq && hex::encode(&last.hash) == c.head => {}
            _ => {
                return brk(
                    c.seq,
                    "the stream does not end on the dossier's head".into(),
                );
            }
        }
        let id = self.current_dictionary().await?;
        let Some(dictionary) = self.dictionary(id).await? else {
            return Err(StoreError::Corrupt(format!(
                "dictionary {id} is not stored"
            )));
        };
        archive::pack(&stream, &dictionary)
            .map(Ok)
            .or_else(|e| brk(1, e.to_string()))
    }
}

/// A dossier the sealer may seal: its head as it was read, and what is already sealed.
#[derive(Debug, Clone)]
pub struct SealCandidate {
    pub code: String,
    pub seq: u64,
    pub head: String,
    pub sealed: u64,
}

/// What a sealing pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SealReport {
    /// Dossiers sealed, and the events moved into their archives.
    pub sealed: u64,
    pub events: u64,
    /// Dossiers that changed after they were read: left for a later pass.
    pub changed: u64,
    /// Streams that do not verify: never sealed.
    pub broken: Vec<ChainBreak>,
}

/// The columns of an archive (table alias `a`) as [`archive_row`] reads them. On SQLite a
/// column may hold a value of another type than the sealer wrote: text where bytes belong,
/// say, which the driver fails to read as a whole row ("invalid utf-8"), naming no dossier.
/// So each byte column is read as bytes whatever it holds, and the stored types come with
/// them, for [`archive_row`] to name the damage.
pub(super) fn archive_columns(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => {
            "a.upto_seq, CAST(a.head AS BLOB) AS head, CAST(a.checks AS BLOB) AS checks,
             CAST(a.dictionary AS INTEGER) AS dictionary, CAST(a.body AS BLOB) AS body,
             typeof(a.head) || ' ' || typeof(a.checks) || ' ' || typeof(a.dictionary) || ' '
                 || typeof(a.body) AS archive_types"
        }
        // Typed columns: a BYTEA holds bytes.
        Backend::Postgres => {
            "a.upto_seq, a.head, a.checks, a.dictionary, a.body,
             'blob blob integer blob' AS archive_types"
        }
    }
}

/// An archive row of `code`, read with [`archive_columns`]; [`StoreError::ArchiveDamaged`]
/// when a column holds another type than the sealer wrote.
pub(super) fn archive_row(code: &str, r: &AnyRow) -> Result<Archive, StoreError> {
    let types: String = r.try_get("archive_types")?;
    let expected = ["blob", "blob", "integer", "blob"];
    let names = ["head", "checks", "dictionary", "body"];
    for ((found, want), name) in types.split(' ').zip(expected).zip(names) {
        if found != want {
            return Err(StoreError::ArchiveDamaged {
                dossier: code.to_owned(),
                problem: format!(
                    "its {name} is stored as {found}, not {}",
                    if want == "blob" { "bytes" } else { want }
                ),
            });
        }
    }
    Ok(Archive {
        upto: u64::try_from(r.try_get::<i64, _>("upto_seq")?).unwrap_or(0),
        head: r.try_get("head")?,
        checks: r.try_get("checks")?,
        dictionary: r.try_get("dictionary")?,
        body: r.try_get("body")?,
    })
}
