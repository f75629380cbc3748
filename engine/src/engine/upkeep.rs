//! Upkeep: the overdue scan, replay and verification, sealing, and the background loop that runs them with the worker.

#[allow(unused_imports)]
use super::*;

impl Engine {
    /// Sends apology letters for dossiers due within one working day, and flags those past due.
    pub async fn scan_overdue(&self) -> Result<ScanReport, EngineError> {
        let now = self.now();
        let horizon = now + chrono::Duration::days(7);
        let mut report = ScanReport::default();
        for row in self
            .inner
            .store
            .dossiers_due_before(horizon, 10_000)
            .await?
        {
            let Some(due) = row.due_at else { continue };
            let day = i64::from(self.inner.calendar.working_day_minutes().max(1) as i32);
            let left = self.inner.calendar.working_minutes_between(now, due);
            if !row.apology_sent && left <= day {
                let new_due_at = self
                    .inner
                    .calendar
                    .add(due, self.inner.config.apology_extension);
                let cmd = Command::Apologize {
                    reason: self.inner.config.apology_reason.clone(),
                    new_due_at,
                };
                match self.execute(&row.code, None, &Actor::System, &cmd).await {
                    Ok(_) => report.apologies.push(row.code.clone()),
                    Err(EngineError::Command(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            if !row.overdue && due < now {
                match self
                    .execute(&row.code, None, &Actor::System, &Command::FlagOverdue)
                    .await
                {
                    Ok(_) => report.flagged.push(row.code.clone()),
                    Err(EngineError::Command(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(report)
    }

    /// Rebuilds a dossier from its events and compares the result with the stored read
    /// models. Calls no external system.
    pub async fn replay(&self, code: &str) -> Result<ReplayReport, EngineError> {
        let events = self.inner.store.events(code).await?;
        let state = Dossier::fold(events.iter().map(|e| (e.at, &e.event)))
            .ok_or_else(|| EngineError::DossierNotFound(code.to_owned()))?;
        let stored = self.inner.store.projection(code).await?;
        let rebuilt = Projection::of(&state);
        let differences = match &stored {
            None => vec!["no read model is stored for this dossier".to_owned()],
            Some(stored) => differences(stored, &rebuilt),
        };
        Ok(ReplayReport {
            events,
            matches: differences.is_empty(),
            state,
            differences,
        })
    }

    /// Seals the events of settled dossiers unchanged for `after`, at most `limit` of them in
    /// one transaction (see [`crate::archive`]). A stream that does not verify is never sealed:
    /// it is logged once and left for the auditors.
    pub async fn seal_settled(
        &self,
        after: chrono::Duration,
        limit: u32,
    ) -> Result<SealReport, EngineError> {
        let refused = self
            .inner
            .seal_refused
            .lock()
            .expect("seal_refused")
            .clone();
        let candidates: Vec<_> = self
            .inner
            .store
            .settled_unsealed(
                self.now() - after,
                limit.saturating_add(u32::try_from(refused.len()).unwrap_or(u32::MAX)),
            )
            .await?
            .into_iter()
            .filter(|c| !refused.contains(&c.code))
            .take(limit as usize)
            .collect();
        if candidates.is_empty() {
            return Ok(SealReport::default());
        }
        let report = self.inner.store.seal(&candidates).await?;
        {
            let mut refused = self.inner.seal_refused.lock().expect("seal_refused");
            for b in &report.broken {
                tracing::error!(dossier = %b.dossier, seq = b.seq, problem = %b.problem,
                    "events not sealed: the stream does not verify");
                refused.insert(b.dossier.clone());
            }
        }
        self.train_archive_dictionary(report.sealed).await?;
        Ok(report)
    }

    /// Archives compress several times better with a zstd dictionary made of earlier streams
    /// (see [`crate::archive`]): one is made once enough archives exist, and again after
    /// every `RETRAIN_AFTER` seals on this node (procedures and their letters change).
    pub(super) async fn train_archive_dictionary(&self, sealed: u64) -> Result<(), EngineError> {
        const SAMPLES: u32 = archive::MIN_SAMPLES as u32;
        const RETRAIN_AFTER: u64 = 20_000;
        let since = {
            let mut n = self
                .inner
                .sealed_since_training
                .lock()
                .expect("sealed_since_training");
            *n += sealed;
            *n
        };
        let due = if since >= RETRAIN_AFTER {
            true
        } else if sealed == 0 || self.inner.store.current_dictionary().await? != 0 {
            false
        } else {
            self.inner.store.archive_count(SAMPLES).await? >= archive::MIN_SAMPLES as u64
        };
        if due
            && let Some(id) = self
                .inner
                .store
                .train_dictionary(SAMPLES, self.now())
                .await?
        {
            tracing::info!(dictionary = id, "archive dictionary trained");
            *self
                .inner
                .sealed_since_training
                .lock()
                .expect("sealed_since_training") = 0;
        }
        Ok(())
    }

    /// Verifies the hash chains of every dossier (or one).
    pub async fn verify(&self, only: Option<&str>) -> Result<VerifyReport, EngineError> {
        Ok(self.inner.store.verify(only).await?)
    }
}

pub(super) fn differences(stored: &Projection, rebuilt: &Projection) -> Vec<String> {
    let mut out = Vec::new();
    let mut cmp = |what: &str, a: Value, b: Value| {
        if a != b {
            out.push(format!("{what}: stored {a} but the events give {b}"));
        }
    };
    cmp("dossier", j(&stored.dossier), j(&rebuilt.dossier));
    let mut rebuilt_tasks = rebuilt.tasks.clone();
    rebuilt_tasks.sort_by(|a, b| a.task_id.cmp(&b.task_id));
    cmp("tasks", j(&stored.tasks), j(&rebuilt_tasks));
    cmp("jobs", j(&stored.jobs), j(&rebuilt.jobs));
    cmp("incidents", j(&stored.incidents), j(&rebuilt.incidents));
    let mut rebuilt_notes = rebuilt.notifications.clone();
    rebuilt_notes.sort_by(|a, b| {
        (a.created_at, &a.notification_id).cmp(&(b.created_at, &b.notification_id))
    });
    cmp("notifications", j(&stored.notifications), j(&rebuilt_notes));
    out
}

/// A read model as JSON, to compare stored and rebuilt rows field by field.
pub(super) fn j<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or_default()
}

/// Schedules of the engine's background work.
#[derive(Debug, Clone)]
pub struct Background {
    /// When the overdue scan runs (cron, seconds first, in the calendar's time zone).
    pub overdue_scan: cron::Schedule,
    /// The longest an idle worker sleeps before looking for due jobs again.
    pub poll: std::time::Duration,
    /// Seal the events of dossiers settled at least this long ago (`None`: never seal).
    pub seal_after: Option<chrono::Duration>,
}

impl Background {
    /// Parses a cron expression (`sec min hour day month weekday [year]`).
    pub fn parse_schedule(expr: &str) -> Result<cron::Schedule, String> {
        use std::str::FromStr;
        cron::Schedule::from_str(expr).map_err(|e| format!("invalid cron schedule `{expr}`: {e}"))
    }
}

impl Engine {
    /// Runs the job worker and the overdue scan until `shutdown` turns true. A job being run
    /// when shutdown comes is finished first, so its outcome is recorded.
    pub async fn run_background(
        &self,
        background: Background,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let worker = {
            let engine = self.clone();
            let mut shutdown = shutdown.clone();
            let poll = background.poll;
            async move {
                // On PostgreSQL other nodes' new jobs wake this worker at once.
                let mut listener = match engine.store().job_listener().await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %e, "no job notifications; polling");
                        None
                    }
                };
                loop {
                    if *shutdown.borrow() {
                        break;
                    }
                    let idle = match engine.run_due_jobs(8).await {
                        Ok(r) => r.claimed == 0,
                        Err(e) => {
                            tracing::error!(error = %e, "worker pass failed");
                            true
                        }
                    };
                    if idle {
                        let wait = match engine.store().next_job_at().await {
                            Ok(Some(at)) => {
                                (at - engine.now()).to_std().unwrap_or_default().min(poll)
                            }
                            _ => poll,
                        };
                        let wait = wait.max(std::time::Duration::from_millis(20));
                        match listener.as_mut() {
                            Some(l) => {
                                tokio::select! {
                                    _ = tokio::time::sleep(wait) => {}
                                    _ = engine.inner.jobs_scheduled.notified() => {}
                                    _ = shutdown.changed() => {}
                                    n = l.recv() => {
                                        if let Err(e) = n {
                                            tracing::warn!(error = %e, "job notifications lost; polling");
                                            listener = None;
                                        }
                                    }
                                }
                            }
                            None => {
                                tokio::select! {
                                    _ = tokio::time::sleep(wait) => {}
                                    _ = engine.inner.jobs_scheduled.notified() => {}
                                    _ = shutdown.changed() => {}
                                }
                            }
                        }
                    }
                }
            }
        };
        let sealer = {
            let engine = self.clone();
            let mut shutdown = shutdown.clone();
            let (after, poll) = (background.seal_after, background.poll);
            async move {
                let Some(after) = after else { return };
                const BATCH: u32 = 64;
                loop {
                    if *shutdown.borrow() {
                        break;
                    }
                    let more = match engine.seal_settled(after, BATCH).await {
                        Ok(r) => {
                            if r.sealed > 0 {
                                tracing::debug!(dossiers = r.sealed, events = r.events, "sealed");
                            }
                            r.sealed + r.changed >= u64::from(BATCH)
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "sealing failed");
                            false
                        }
                    };
                    if !more {
                        tokio::select! {
                            _ = tokio::time::sleep(poll.max(std::time::Duration::from_secs(1))) => {}
                            _ = shutdown.changed() => {}
                        }
                    }
                }
            }
        };
        let scanner = {
            let engine = self.clone();
            let schedule = background.overdue_scan.clone();
            async move {
                let tz = engine.calendar().timezone();
                loop {
                    let now = engine.now().with_timezone(&tz);
                    let Some(next) = schedule.after(&now).next() else {
                        break;
                    };
                    let wait = (next.with_timezone(&Utc) - engine.now())
                        .to_std()
                        .unwrap_or_default();
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.changed() => {}
                    }
                    if *shutdown.borrow() {
                        break;
                    }
                    // With several nodes, the one that claims the tick runs it.
                    match engine
                        .store()
                        .claim_tick("overdue_scan", next.with_timezone(&Utc))
                        .await
                    {
                        Ok(true) => {}
                        Ok(false) => continue,
                        Err(e) => {
                            tracing::error!(error = %e, "overdue scan not claimed");
                            continue;
                        }
                    }
                    match engine.scan_overdue().await {
                        Ok(r) => tracing::info!(
                            apologies = r.apologies.len(),
                            flagged = r.flagged.len(),
                            "overdue scan"
                        ),
                        Err(e) => tracing::error!(error = %e, "overdue scan failed"),
                    }
                }
            }
        };
        tokio::join!(worker, scanner, sealer);
    }
}
