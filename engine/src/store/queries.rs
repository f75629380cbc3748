//! Read queries: the worklist, projections, an owner's dossiers, due dates, search and open incidents.

#[allow(unused_imports)]
use super::*;

impl Store {
    /// Open tasks for an officer: their agency, any of their roles; earliest due first.
    pub async fn worklist(
        &self,
        agency: &str,
        roles: &[String],
        claimed_by: Option<&str>,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<TaskRow>, StoreError> {
        if roles.is_empty() {
            return Ok(Vec::new());
        }
        let placeholders = vec!["?"; roles.len()].join(", ");
        let statement = format!(
            "SELECT * FROM tasks WHERE agency_code = ? AND role IN ({placeholders})
             {} ORDER BY due_at IS NULL, due_at, opened_at LIMIT ? OFFSET ?",
            if claimed_by.is_some() {
                "AND claimed_by = ?"
            } else {
                ""
            }
        );
        let mut q = sqlx::query(sql_dyn(self.backend, statement)).bind(agency);
        for r in roles {
            q = q.bind(r);
        }
        if let Some(c) = claimed_by {
            q = q.bind(c);
        }
        let rows = q
            .bind(i64::from(limit))
            .bind(i64::from(offset))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(task_row).collect()
    }

    /// A dossier's stored rows (for views and for the replay check).
    pub async fn projection(&self, code: &str) -> Result<Option<Projection>, StoreError> {
        let Some(row) = sqlx::query(sql(self.backend, "SELECT * FROM dossiers WHERE code = ?"))
            .bind(code)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let dossier = dossier_row(&row)?;
        let tasks = sqlx::query(sql(
            self.backend,
            "SELECT * FROM tasks WHERE dossier_code = ? ORDER BY task_id",
        ))
        .bind(code)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(task_row)
        .collect::<Result<Vec<_>, _>>()?;
        let jobs = sqlx::query(sql(
            self.backend,
            "SELECT * FROM jobs WHERE dossier_code = ? ORDER BY job_id",
        ))
        .bind(code)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(job_row)
        .collect::<Result<Vec<_>, _>>()?;
        let incidents = sqlx::query(sql(
            self.backend,
            "SELECT * FROM incidents WHERE dossier_code = ? ORDER BY incident_id",
        ))
        .bind(code)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(incident_row)
        .collect::<Result<Vec<_>, _>>()?;
        // A sealed dossier's letters are in its archive (their rows were dropped when it was
        // sealed): they are read from its events.
        let notifications = if row.try_get::<i64, _>("sealed_seq")? > 0 {
            let events = self.events(code).await?;
            Dossier::fold(events.iter().map(|e| (e.at, &e.event)))
                .map(|d| Projection::of(&d).notifications)
                .unwrap_or_default()
        } else {
            sqlx::query(sql(
                self.backend,
                "SELECT * FROM notifications WHERE dossier_code = ? ORDER BY created_at, notification_id",
            ))
            .bind(code)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(notification_row)
            .collect::<Result<Vec<_>, _>>()?
        };
        Ok(Some(Projection {
            dossier,
            tasks,
            jobs,
            incidents,
            notifications,
        }))
    }

    /// Dossiers of one owner, newest first.
    pub async fn dossiers_of_owner(
        &self,
        owner_id: &str,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<DossierRow>, StoreError> {
        sqlx::query(sql(self.backend, "SELECT * FROM dossiers WHERE owner_id = ? ORDER BY filed_at DESC, code LIMIT ? OFFSET ?"))
            .bind(owner_id)
            .bind(i64::from(limit))
            .bind(i64::from(offset))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(dossier_row)
            .collect()
    }

    /// Open dossiers whose due date is at or before `before`.
    pub async fn dossiers_due_before(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<DossierRow>, StoreError> {
        sqlx::query(sql(self.backend, "SELECT * FROM dossiers WHERE closed = 0 AND paused = 0 AND due_at IS NOT NULL AND due_at <= ?
             AND status NOT IN (9, 10) AND (apology_sent = 0 OR overdue = 0)
             ORDER BY due_at LIMIT ?"),
        )
        .bind(micros(before))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(dossier_row)
        .collect()
    }

    /// Dossiers of an agency, filtered, newest first.
    pub async fn search(&self, q: &DossierQuery) -> Result<Vec<DossierRow>, StoreError> {
        let mut statement = String::from("SELECT * FROM dossiers WHERE 1 = 1");
        if q.agency.is_some() {
            statement.push_str(" AND agency_code = ?");
        }
        if q.code.is_some() {
            statement.push_str(" AND code = ?");
        }
        if q.owner_id.is_some() {
            statement.push_str(" AND owner_id = ?");
        }
        if q.status.is_some() {
            statement.push_str(" AND status = ?");
        }
        if let Some(now) = q.overdue_at {
            statement.push_str(&format!(
                " AND closed = 0 AND status NOT IN (9, 10) AND due_at IS NOT NULL AND due_at < {}",
                micros(now)
            ));
        }
        statement.push_str(" ORDER BY filed_at DESC, code LIMIT ? OFFSET ?");
        let mut query = sqlx::query(sql_dyn(self.backend, statement));
        for v in [&q.agency, &q.code, &q.owner_id].into_iter().flatten() {
            query = query.bind(v.clone());
        }
        if let Some(s) = q.status {
            query = query.bind(i64::from(s));
        }
        query
            .bind(i64::from(q.limit))
            .bind(i64::from(q.offset))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(dossier_row)
            .collect()
    }

    pub async fn open_incidents(&self) -> Result<Vec<IncidentRow>, StoreError> {
        sqlx::query(sql(
            self.backend,
            "SELECT * FROM incidents WHERE resolution IS NULL ORDER BY opened_at",
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(incident_row)
        .collect()
    }
}

/// Filters for searching dossiers.
#[derive(Debug, Clone, Default)]
pub struct DossierQuery {
    pub agency: Option<String>,
    pub code: Option<String>,
    pub owner_id: Option<String>,
    pub status: Option<u8>,
    /// Only dossiers past their due date at this instant.
    pub overdue_at: Option<DateTime<Utc>>,
    pub limit: u32,
    pub offset: u32,
}

pub(super) fn task_row(r: &AnyRow) -> Result<TaskRow, StoreError> {
    Ok(TaskRow {
        dossier_code: r.try_get("dossier_code")?,
        task_id: r.try_get("task_id")?,
        step: r.try_get("step")?,
        name: r.try_get("name")?,
        role: r.try_get("role")?,
        agency_code: r.try_get("agency_code")?,
        claimed_by: r.try_get("claimed_by")?,
        opened_at: from_micros(r.try_get("opened_at")?),
        due_at: r.try_get::<Option<i64>, _>("due_at")?.map(from_micros),
    })
}

pub(super) fn dossier_row(r: &AnyRow) -> Result<DossierRow, StoreError> {
    Ok(DossierRow {
        code: r.try_get("code")?,
        procedure_code: r.try_get("procedure_code")?,
        procedure_version: u32::try_from(r.try_get::<i64, _>("procedure_version")?).unwrap_or(0),
        agency_code: r.try_get("agency_code")?,
        owner_id: r.try_get("owner_id")?,
        owner_name: r.try_get("owner_name")?,
        channel: r.try_get("channel")?,
        status: u8::try_from(r.try_get::<i64, _>("status")?).unwrap_or(0),
        seq: u64::try_from(r.try_get::<i64, _>("seq")?).unwrap_or(0),
        filed_at: from_micros(r.try_get("filed_at")?),
        updated_at: from_micros(r.try_get("updated_at")?),
        received_at: r.try_get::<Option<i64>, _>("received_at")?.map(from_micros),
        due_at: r.try_get::<Option<i64>, _>("due_at")?.map(from_micros),
        closed: r.try_get::<i64, _>("closed")? != 0,
        paused: r.try_get::<i64, _>("paused")? != 0,
        overdue: r.try_get::<i64, _>("overdue")? != 0,
        apology_sent: r.try_get::<i64, _>("apology_sent")? != 0,
    })
}

pub(super) fn job_row(r: &AnyRow) -> Result<JobRow, StoreError> {
    Ok(JobRow {
        dossier_code: r.try_get("dossier_code")?,
        job_id: r.try_get("job_id")?,
        kind: r.try_get("kind")?,
        call: r.try_get("call")?,
        state: r.try_get("state")?,
        attempts: u32::try_from(r.try_get::<i64, _>("attempts")?).unwrap_or(0),
        run_at: from_micros(r.try_get("run_at")?),
        last_error: r.try_get("last_error")?,
    })
}

pub(super) fn incident_row(r: &AnyRow) -> Result<IncidentRow, StoreError> {
    Ok(IncidentRow {
        dossier_code: r.try_get("dossier_code")?,
        incident_id: r.try_get("incident_id")?,
        job_id: r.try_get("job_id")?,
        error: r.try_get("error")?,
        opened_at: from_micros(r.try_get("opened_at")?),
        resolution: r.try_get("resolution")?,
        kind: r.try_get("kind")?,
    })
}

pub(super) fn notification_row(r: &AnyRow) -> Result<NotificationRow, StoreError> {
    Ok(NotificationRow {
        dossier_code: r.try_get("dossier_code")?,
        notification_id: r.try_get("notification_id")?,
        template: r.try_get("template")?,
        recipient: r.try_get("recipient")?,
        subject: r.try_get("subject")?,
        body: r.try_get("body")?,
        created_at: from_micros(r.try_get("created_at")?),
    })
}
