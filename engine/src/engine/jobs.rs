//! The job worker: claiming due jobs, running each dossier's in order, recording outcomes; the built-in `notify` hook.

#[allow(unused_imports)]
use super::*;

impl Engine {
    /// One pass of the worker: claims the jobs due now and runs them: the jobs of one dossier
    /// one after another, in the order claimed, and different dossiers' jobs concurrently, so
    /// that a slow external system or a queue of outcomes waiting for the writer holds up only
    /// its own dossier (on SQLite the outcomes then share group commits).
    pub async fn run_due_jobs(&self, limit: u32) -> Result<WorkReport, EngineError> {
        let now = self.now();
        let claimed = self
            .inner
            .store
            .claim_due_jobs(now, limit, self.inner.config.job_lease)
            .await?;
        let mut report = WorkReport {
            passes: usize::from(!claimed.is_empty()),
            claimed: claimed.len(),
            ..WorkReport::default()
        };
        let mut by_dossier: Vec<Vec<ClaimedJob>> = Vec::new();
        for job in claimed {
            match by_dossier.iter_mut().find(|g| g[0].dossier == job.dossier) {
                Some(group) => group.push(job),
                None => by_dossier.push(vec![job]),
            }
        }
        let outcomes = futures_util::future::join_all(
            by_dossier
                .into_iter()
                .map(|jobs| self.run_claimed_in_order(jobs)),
        )
        .await;
        // Every group ran to its end before an error is reported: none is left half done.
        for outcome in outcomes {
            let part = outcome?;
            report.succeeded += part.succeeded;
            report.failed += part.failed;
            report.stale += part.stale;
        }
        Ok(report)
    }

    /// Runs one dossier's claimed jobs in order; the counts are in the report.
    pub(super) async fn run_claimed_in_order(
        &self,
        jobs: Vec<ClaimedJob>,
    ) -> Result<WorkReport, EngineError> {
        let mut report = WorkReport::default();
        for mut job in jobs {
            // Renew the lease as the job starts once half of it is spent: a long batch must not
            // lose the jobs at its end to another node while the first ones run. A lease with
            // more than half left cannot have been taken over.
            let now = self.now();
            let half = self.inner.config.job_lease / 2;
            if job.lease_until < crate::store::micros(now + half) {
                let until = now + self.inner.config.job_lease;
                if !self.inner.store.renew_lease(&mut job, until).await? {
                    report.stale += 1;
                    continue;
                }
            }
            match self.run_job(&job).await {
                Ok(true) => report.succeeded += 1,
                Ok(false) => report.failed += 1,
                Err(EngineError::Command(CommandError::StaleJob { .. })) => report.stale += 1,
                Err(e) => {
                    tracing::warn!(dossier = %job.dossier, job = %job.job, error = %e, "job could not be recorded");
                    self.inner.store.release_job(&job).await?;
                    report.failed += 1;
                }
            }
        }
        Ok(report)
    }

    /// Runs one claimed job; true when it succeeded.
    pub(super) async fn run_job(&self, claimed: &ClaimedJob) -> Result<bool, EngineError> {
        let read = self.current(&claimed.dossier).await?;
        let state = Arc::clone(&read.state);
        let Some(job) = state.job(&claimed.job).cloned() else {
            return Err(EngineError::Command(CommandError::not_found_job(
                &claimed.job,
            )));
        };
        if job.state != JobState::Pending {
            return Err(EngineError::Command(CommandError::StaleJob {
                job: (*job.id).to_owned(),
                attempt: job.attempts + 1,
            }));
        }
        if job.kind == JobKind::Timer {
            self.execute_from(
                Some(read),
                &state.code,
                None,
                &Actor::System,
                &Command::FireTimer {
                    job: (*job.id).to_owned(),
                },
            )
            .await?;
            return Ok(true);
        }
        let procedure = self.procedure_of(&state).await?;
        let attempt = job.attempts + 1;
        let handler = {
            let hooks = self.inner.hooks.read().unwrap_or_else(|e| e.into_inner());
            hooks.get(&job.call).cloned()
        };
        let outcome = match handler {
            None => HookOutcome::Failed {
                error: format!("hook `{}` is not configured on this engine", job.call),
            },
            Some(h) => {
                let request = HookRequest {
                    dossier: &state,
                    procedure: &procedure,
                    job: &job,
                    attempt,
                    idempotency_key: self.hook_key(&job, &state.code),
                    now: self.now(),
                };
                match tokio::time::timeout(self.inner.config.hook_timeout, h.call(request)).await {
                    Ok(o) => o,
                    Err(_) => HookOutcome::Failed {
                        error: format!("hook `{}` timed out", job.call),
                    },
                }
            }
        };
        let ok = matches!(outcome, HookOutcome::Succeeded { .. });
        // Decided first on the state read before the hook ran: if anything was appended
        // meanwhile, the append conflicts and the outcome is decided again on a fresh read.
        self.execute_from(
            Some(read),
            &state.code,
            None,
            &Actor::System,
            &Command::RecordHookOutcome {
                job: (*job.id).to_owned(),
                attempt,
                outcome,
            },
        )
        .await?;
        Ok(ok)
    }

    /// Runs jobs until none is due now (bounded), for tests, demos and the CLI.
    pub async fn drain_jobs(&self) -> Result<WorkReport, EngineError> {
        let mut total = WorkReport::default();
        for _ in 0..1000 {
            let r = self.run_due_jobs(64).await?;
            if r.claimed == 0 {
                break;
            }
            total.passes += r.passes;
            total.claimed += r.claimed;
            total.succeeded += r.succeeded;
            total.failed += r.failed;
            total.stale += r.stale;
        }
        Ok(total)
    }
}

/// The built-in `notify` hook: renders the template into the dossier's outbox.
pub(super) struct NotifyHook {
    pub(super) engine: std::sync::Weak<Inner>,
}

impl HookHandler for NotifyHook {
    fn call<'a>(&'a self, request: HookRequest<'a>) -> HookFuture<'a> {
        Box::pin(async move {
            let Some(inner) = self.engine.upgrade() else {
                return HookOutcome::Failed {
                    error: "the engine is shutting down".into(),
                };
            };
            let Some(template) = request.job.args.get("template").and_then(Value::as_str) else {
                return HookOutcome::Failed {
                    error: "notify needs a template".into(),
                };
            };
            let agency_name = inner.agency_name(&request.dossier.agency_code);
            let ctx = NotifyContext {
                dossier: request.dossier,
                procedure: request.procedure,
                calendar: &inner.calendar,
                agency_name: &agency_name,
                now: request.now,
            };
            let id = format!("n{}", request.dossier.notifications.len() + 1);
            match inner.templates.render(template, id, &ctx) {
                Ok(n) => HookOutcome::Succeeded {
                    detail: serde_json::json!({ "notification": n.id }),
                    notification: Some(n),
                },
                Err(error) => HookOutcome::Failed { error },
            }
        })
    }
}
