//! Health: gauges for metrics, the readiness ping and the storage-full probe.

#[allow(unused_imports)]
use super::*;

impl Store {
    /// Open incidents by kind (`hook`, `condition`, `stuck`), for metrics.
    pub async fn open_incidents_by_kind(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(sql(
            self.backend,
            "SELECT kind, COUNT(*) FROM incidents WHERE resolution IS NULL GROUP BY kind ORDER BY kind",
        ))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    /// Counts for metrics: pending jobs, open incidents, open dossiers past due at `now`.
    pub async fn gauges(&self, now: DateTime<Utc>) -> Result<(i64, i64, i64), StoreError> {
        let jobs: i64 = sqlx::query_scalar(sql(
            self.backend,
            "SELECT COUNT(*) FROM jobs WHERE state = 'pending'",
        ))
        .fetch_one(&self.pool)
        .await?;
        let incidents: i64 = sqlx::query_scalar(sql(
            self.backend,
            "SELECT COUNT(*) FROM incidents WHERE resolution IS NULL",
        ))
        .fetch_one(&self.pool)
        .await?;
        let overdue: i64 = sqlx::query_scalar(sql(self.backend, "SELECT COUNT(*) FROM dossiers WHERE closed = 0 AND status NOT IN (9, 10) AND due_at IS NOT NULL AND due_at < ?"),
        )
        .bind(micros(now))
        .fetch_one(&self.pool)
        .await?;
        Ok((jobs, incidents, overdue))
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query(sql(self.backend, "SELECT 1"))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Notes a write that found the storage full (an error that
    /// [`StoreError::is_storage_full`]), and passes its result on. Only the probe of
    /// [`Store::storage_full`] clears the note: a small write may still fit while the next
    /// one does not, and readiness should not flap with them.
    pub(super) fn noted<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        use std::sync::atomic::Ordering;
        if let Err(e) = &r
            && e.is_storage_full()
            && !self.full.swap(true, Ordering::Relaxed)
        {
            tracing::error!(error = %e, "the storage is full: writes fail until space returns");
        }
        r
    }

    /// Whether the storage is full: a write failed for want of space, and no probe has found
    /// room since. While it is, each call tries one small write that needs fresh pages (a table of
    /// its own made, filled with 64 KiB and dropped, in two transactions), so that space coming
    /// back is seen without waiting for a client's write.
    pub async fn storage_full(&self) -> bool {
        use std::sync::atomic::Ordering;
        if !self.full.load(Ordering::Relaxed) {
            return false;
        }
        let probe = async {
            let _turn = self.write_turn().await;
            let mut tx = self.begin().await?;
            sqlx::query(sql(
                self.backend,
                "CREATE TABLE IF NOT EXISTS tthc_storage_probe (filler BYTEA)",
            ))
            .execute(&mut *tx)
            .await?;
            sqlx::query(sql(
                self.backend,
                "INSERT INTO tthc_storage_probe (filler) VALUES (?)",
            ))
            .bind(vec![0x5au8; 64 * 1024])
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            sqlx::query(sql(self.backend, "DROP TABLE tthc_storage_probe"))
                .execute(&self.pool)
                .await?;
            Ok::<_, StoreError>(())
        };
        match probe.await {
            Ok(()) => {
                tracing::info!("the storage has room again");
                self.full.store(false, Ordering::Relaxed);
                false
            }
            Err(_) => true,
        }
    }
}
