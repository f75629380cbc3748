//! Jobs and schedules: claims with leases, their renewal and release, the next due time, scheduled ticks and PostgreSQL's job notifications.

#[allow(unused_imports)]
use super::*;

impl Store {
    /// Claims up to `limit` jobs due at `now`, each under a lease until `now + lease`.
    /// A job whose lease ran out (its worker died) is claimed again.
    pub async fn claim_due_jobs(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        lease: chrono::Duration,
    ) -> Result<Vec<ClaimedJob>, StoreError> {
        let r = self.claim_due_jobs_unnoted(now, limit, lease).await;
        self.noted(r)
    }

    pub(super) async fn claim_due_jobs_unnoted(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        lease: chrono::Duration,
    ) -> Result<Vec<ClaimedJob>, StoreError> {
        let lease_until = micros(now + lease);
        if let Some(w) = &self.sqlite_writer {
            // The look and the claim in one hand-off to the writer thread.
            let (now, limit) = (micros(now), i64::from(limit));
            return self
                .in_write_turn(w, move |conn| claim_on(conn, now, lease_until, limit))
                .await?;
        }
        // Look before taking the write lock: an idle worker polling must not commit an empty
        // write transaction each time (on SQLite that would queue behind every writer).
        let due: Option<i64> = sqlx::query_scalar(sql(self.backend, ANY_JOB_DUE))
            .bind(micros(now))
            .bind(micros(now))
            .fetch_optional(&self.pool)
            .await?;
        if due.is_none() {
            return Ok(Vec::new());
        }
        // One statement, atomic on its own: no transaction around it.
        let _turn = self.write_turn().await;
        let statement = match self.backend {
            // SQLite has one writer at a time: the statement is the claim.
            Backend::Sqlite => sql(self.backend, CLAIM_JOBS_SQLITE),
            // Several nodes claim at once: each takes rows no one else has locked.
            Backend::Postgres => sql(
                self.backend,
                "UPDATE jobs SET lease_until = ?
                 WHERE (dossier_code, job_id) IN (
                     SELECT dossier_code, job_id FROM jobs
                     WHERE state = 'pending' AND run_at <= ? AND (lease_until IS NULL OR lease_until < ?)
                     ORDER BY run_at LIMIT ?
                     FOR UPDATE SKIP LOCKED)
                 RETURNING dossier_code, job_id",
            ),
        };
        let rows = sqlx::query(statement)
            .bind(lease_until)
            .bind(micros(now))
            .bind(micros(now))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|r| {
                Ok(ClaimedJob {
                    dossier: r.try_get("dossier_code")?,
                    job: r.try_get("job_id")?,
                    lease_until,
                })
            })
            .collect()
    }

    /// Extends a claimed job's lease just before running it, so a batch does not outlive its
    /// lease while earlier jobs run. False when the lease was lost (another node took the job
    /// over): the job must not be run.
    pub async fn renew_lease(
        &self,
        job: &mut ClaimedJob,
        until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let _turn = self.write_turn().await;
        let r = sqlx::query(sql(
            self.backend,
            "UPDATE jobs SET lease_until = ? WHERE dossier_code = ? AND job_id = ? AND lease_until = ?",
        ))
        .bind(micros(until))
        .bind(&job.dossier)
        .bind(&job.job)
        .bind(job.lease_until)
        .execute(&self.pool)
        .await?;
        let renewed = r.rows_affected() == 1;
        if renewed {
            job.lease_until = micros(until);
        }
        Ok(renewed)
    }

    /// Gives a claimed job back without recording an attempt (the worker could not run it).
    pub async fn release_job(&self, job: &ClaimedJob) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        sqlx::query(sql(
            self.backend,
            "UPDATE jobs SET lease_until = NULL WHERE dossier_code = ? AND job_id = ?",
        ))
        .bind(&job.dossier)
        .bind(&job.job)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// When the next pending job is due, if any.
    pub async fn next_job_at(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let m: Option<i64> = sqlx::query_scalar(sql(
            self.backend,
            "SELECT MIN(run_at) FROM jobs WHERE state = 'pending'",
        ))
        .fetch_one(&self.pool)
        .await?;
        Ok(m.map(from_micros))
    }
}

impl Store {
    /// Claims one tick of a schedule for this node: true for exactly one caller per tick,
    /// however many nodes ask.
    pub async fn claim_tick(
        &self,
        schedule: &str,
        tick: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let _turn = self.write_turn().await;
        let r = sqlx::query(sql(
            self.backend,
            "INSERT INTO schedules (name, last_tick) VALUES (?, ?)
             ON CONFLICT (name) DO UPDATE SET last_tick = excluded.last_tick
             WHERE schedules.last_tick < excluded.last_tick",
        ))
        .bind(schedule)
        .bind(micros(tick))
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// On PostgreSQL, a listener woken whenever a transaction adds or reschedules jobs, so idle
    /// workers need not poll hard. `None` on SQLite, where one process does all the work.
    pub async fn job_listener(&self) -> Result<Option<sqlx::postgres::PgListener>, StoreError> {
        match (&self.backend, &self.url) {
            (Backend::Postgres, url) => {
                let mut listener = sqlx::postgres::PgListener::connect(url).await?;
                listener.listen(JOBS_CHANNEL).await?;
                Ok(Some(listener))
            }
            _ => Ok(None),
        }
    }
}

/// The PostgreSQL notification channel for new or rescheduled jobs.
pub(super) const JOBS_CHANNEL: &str = "tthc_jobs";
