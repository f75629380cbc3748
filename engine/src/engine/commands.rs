//! Filing and commands: deciding on the current state (from the cache, brought up to date), appending, retrying conflicts.

#[allow(unused_imports)]
use super::*;

impl Engine {
    pub async fn file(&self, actor: &Actor, filing: &Filing) -> Result<Dossier, EngineError> {
        Ok(self.file_once(actor, filing, None).await?.0)
    }

    /// Files a dossier at most once per idempotency key of this actor: the key is recorded in
    /// the filing's own transaction, so a retry (on any node, after any crash) finds the first
    /// dossier instead of filing again. Returns the dossier and whether it was filed earlier.
    /// The same key with another request (`request_hash`) is refused.
    pub async fn file_once(
        &self,
        actor: &Actor,
        filing: &Filing,
        key: Option<(&str, &str)>,
    ) -> Result<(Dossier, bool), EngineError> {
        // A key seen before answers before anything else is judged.
        if let Some((k, hash)) = key
            && let Some(earlier) = self.inner.store.recall_response(actor.id(), k).await?
        {
            if earlier.request_hash != hash {
                return Err(EngineError::IdempotencyKeyReused);
            }
            if !earlier.body.is_empty() {
                return Ok((self.dossier(&earlier.body).await?, true));
            }
        }
        let now = self.now();
        let day = self.calendar().local_date(now);
        // The dossier code starts with the agency's code, which carries its province: filing
        // only at this deployment's own agencies keeps codes unique across deployments.
        let agencies = &self.inner.config.agencies;
        agencies
            .current(&filing.agency_code, day)
            .map_err(|error| EngineError::Agency {
                error: Box::new(error),
                pointer: "/agency_code",
            })?;
        // The newest version may have been deployed through another node.
        self.refresh().await?;
        let procedure = self
            .procedure(&filing.procedure_code, None)
            .ok_or_else(|| EngineError::UnknownProcedure(filing.procedure_code.clone()))?;
        let spec = &procedure.procedure().agency;
        let competent = agencies
            .competent(
                spec.competent.as_deref(),
                &filing.agency_code,
                filing.competent_agency.as_deref(),
                day,
            )
            .map_err(|error| EngineError::Agency {
                pointer: if matches!(error, AgencyError::NotReceiving { .. }) {
                    "/agency_code"
                } else {
                    "/competent_agency"
                },
                error: Box::new(error),
            })?;
        let mut resolved = filing.clone();
        resolved.competent_agency = Some(competent);
        let filing = &resolved;
        let ctx = Context {
            procedure: &procedure,
            calendar: &self.inner.calendar,
            now,
            actor,
            sync_status: self.inner.config.sync_status_to_portal,
        };
        // Refuse bad input before a dossier number is spent on it.
        decide_filing(&ctx, "probe", filing)?;
        let created = self
            .inner
            .store
            .create(
                &filing.agency_code,
                day,
                filing_decision(
                    Arc::clone(&procedure),
                    Arc::clone(&self.inner.calendar),
                    &ctx,
                    filing,
                ),
                now,
                (actor.id(), actor.name()),
                key,
            )
            .await?;
        match created? {
            crate::store::Created::New(d, head) => {
                if !d.jobs.is_empty() {
                    self.inner.jobs_scheduled.notify_one();
                }
                self.remember(Cached {
                    state: Arc::new(Dossier::clone(&d)),
                    head: head.into(),
                });
                Ok((*d, false))
            }
            crate::store::Created::Earlier { code, request_hash } => {
                if key.is_some_and(|(_, h)| h != request_hash) {
                    return Err(EngineError::IdempotencyKeyReused);
                }
                Ok((self.dossier(&code).await?, true))
            }
        }
    }

    /// The dossier's current state.
    pub async fn dossier(&self, code: &str) -> Result<Dossier, EngineError> {
        Ok(Dossier::clone(&self.current(code).await?.state))
    }

    /// The dossier's current state: the cached fold brought up to date with the events stored
    /// after it (one query, which returns no rows when nothing changed elsewhere).
    pub(super) async fn current(&self, code: &str) -> Result<Cached, EngineError> {
        let cached = self.cached(code);
        let from = cached.as_ref().map_or(0, |c| c.state.seq);
        let tail = self.inner.store.events_after(code, from).await?;
        let Some(last) = tail.last() else {
            return cached.ok_or_else(|| EngineError::DossierNotFound(code.to_owned()));
        };
        let (last_seq, head) = (last.seq, Arc::<str>::from(last.hash.as_str()));
        let state = match cached {
            Some(c) => {
                let mut d = Dossier::clone(&c.state);
                for e in &tail {
                    d.apply(e.at, &e.event);
                }
                d
            }
            None => Dossier::fold(tail.iter().map(|e| (e.at, &e.event))).ok_or_else(|| {
                StoreError::Corrupt(format!("{code} does not start with a filing"))
            })?,
        };
        if state.seq != last_seq {
            return Err(StoreError::Corrupt(format!(
                "{code}: events are not numbered 1..{last_seq} without gaps"
            ))
            .into());
        }
        let current = Cached {
            state: Arc::new(state),
            head,
        };
        self.remember(current.clone());
        Ok(current)
    }

    /// The dossier as this node last saw it, without reading the database: possibly behind
    /// its stored events. Only for what never changes after filing (its code, owner,
    /// agency and procedure).
    pub fn last_seen(&self, code: &str) -> Option<Arc<Dossier>> {
        self.cached(code).map(|c| c.state)
    }

    pub(super) fn cached(&self, code: &str) -> Option<Cached> {
        let mut states = self.inner.states.lock().unwrap_or_else(|e| e.into_inner());
        states.get(code).cloned()
    }

    /// Keeps a state unless a newer one of the same dossier is already kept.
    pub(super) fn remember(&self, c: Cached) {
        let mut states = self.inner.states.lock().unwrap_or_else(|e| e.into_inner());
        if states
            .peek(&*c.state.code)
            .is_some_and(|d| d.state.seq > c.state.seq)
        {
            return;
        }
        states.put(Arc::clone(&c.state.code), c);
    }

    pub(super) async fn procedure_of(
        &self,
        d: &Dossier,
    ) -> Result<Arc<CompiledProcedure>, EngineError> {
        if let Some(p) = self.procedure(&d.procedure_code, Some(d.procedure_version)) {
            return Ok(p);
        }
        // Deployed through another node since this one started.
        self.refresh().await?;
        self.procedure(&d.procedure_code, Some(d.procedure_version))
            .ok_or_else(|| {
                EngineError::UnknownProcedure(format!(
                    "{} v{}",
                    d.procedure_code, d.procedure_version
                ))
            })
    }
}

impl Engine {
    /// Runs a command. With `expected_seq`, the caller states which version of the dossier it
    /// decided on, and gets [`EngineError::Conflict`] if it changed; without, the engine
    /// retries on the latest state (for system commands and idempotent operations).
    pub async fn execute(
        &self,
        code: &str,
        expected_seq: Option<u64>,
        actor: &Actor,
        command: &Command,
    ) -> Result<Dossier, EngineError> {
        self.execute_from(None, code, expected_seq, actor, command)
            .await
    }

    /// [`Engine::execute`], first on `read` when the caller has just read the state.
    ///
    /// Without one, the first attempt decides on this node's cached state without reading the
    /// database: the append only holds if the dossier is still at that state's sequence, so a
    /// stale cache can cost a retry but never a wrong append. A refusal or a conflict on the
    /// unchecked state is decided again on a fresh read before it is reported.
    pub(super) async fn execute_from(
        &self,
        read: Option<Cached>,
        code: &str,
        expected_seq: Option<u64>,
        actor: &Actor,
        command: &Command,
    ) -> Result<Dossier, EngineError> {
        let mut attempts = 0;
        let mut next = match read {
            Some(c) => Some((c, true)),
            None => self.cached(code).map(|c| (c, false)),
        };
        loop {
            let (Cached { state, head }, checked) = match next.take() {
                Some(n) => n,
                None => (self.current(code).await?, true),
            };
            // A decision on the unchecked cache is not an attempt of its own.
            if checked {
                attempts += 1;
            }
            if let Some(expected) = expected_seq
                && expected != state.seq
            {
                if !checked {
                    continue;
                }
                return Err(EngineError::Conflict {
                    code: code.to_owned(),
                    expected,
                    current: state.seq,
                });
            }
            let procedure = self.procedure_of(&state).await?;
            let now = self.now();
            let ctx = Context {
                procedure: &procedure,
                calendar: &self.inner.calendar,
                now,
                actor,
                sync_status: self.inner.config.sync_status_to_portal,
            };
            let decision = match decide(&ctx, &state, command) {
                Ok(d) => d,
                Err(_) if !checked => continue,
                Err(e) => return Err(e.into()),
            };
            let append = Append {
                at: now,
                actor_id: actor.id(),
                actor_name: actor.name(),
                events: &decision.events,
                state: &decision.state,
                before: Some((&*state, &*head)),
            };
            match self.inner.store.append(&append).await {
                Ok(head) => {
                    if schedules_jobs(&state, &decision.state) {
                        self.inner.jobs_scheduled.notify_one();
                    }
                    self.remember(Cached {
                        state: Arc::new(decision.state.clone()),
                        head: head.into(),
                    });
                    return Ok(decision.state);
                }
                Err(StoreError::Conflict { .. }) if !checked => continue,
                Err(StoreError::Conflict { .. })
                    if expected_seq.is_none() && attempts < MAX_RETRIES_ON_CONFLICT =>
                {
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Decides a command without storing anything: whether it would be accepted now.
    pub async fn check(
        &self,
        code: &str,
        actor: &Actor,
        command: &Command,
    ) -> Result<(), EngineError> {
        let state = self.current(code).await?.state;
        let procedure = self.procedure_of(&state).await?;
        let ctx = Context {
            procedure: &procedure,
            calendar: &self.inner.calendar,
            now: self.now(),
            actor,
            sync_status: self.inner.config.sync_status_to_portal,
        };
        decide(&ctx, &state, command)?;
        Ok(())
    }
}
