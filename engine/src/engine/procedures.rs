//! Procedure versions: registering them with this deployment's agencies resolved, deploying, finding, loading what other nodes deployed; the deployment's agencies and identity.

#[allow(unused_imports)]
use super::*;

impl Engine {
    pub(super) fn register(
        &self,
        definition: Definition,
    ) -> Result<Arc<CompiledProcedure>, EngineError> {
        let definition = self.resolve_agencies(definition)?;
        self.register_unresolved(definition)
    }

    pub(super) fn register_unresolved(
        &self,
        definition: Definition,
    ) -> Result<Arc<CompiledProcedure>, EngineError> {
        let key = (
            definition.procedure.code.clone(),
            definition.procedure.version,
        );
        let compiled = CompiledProcedure::compile(definition).map_err(EngineError::Definition)?;
        let mut map = self
            .inner
            .procedures
            .write()
            .unwrap_or_else(|e| e.into_inner());
        map.insert(key, compiled.clone());
        Ok(compiled)
    }

    /// The definition with its tasks' kinds of agency replaced by this deployment's codes
    /// (`receiving` and the competent kind stay: each dossier says which agency they are).
    pub(super) fn resolve_agencies(
        &self,
        mut definition: Definition,
    ) -> Result<Definition, EngineError> {
        let agencies = &self.inner.config.agencies;
        let day = self.calendar().local_date(self.now());
        let p = &mut definition.procedure;
        let label = format!("{} version {}", p.code, p.version);
        let competent = p.agency.competent.clone();
        if let Some(kind) = &competent
            && !agencies.has_kind(kind)
        {
            return Err(EngineError::AgencyKindUnmapped {
                procedure: label,
                at: "agency.competent".into(),
                kind: kind.clone(),
                error: Box::new(AgencyError::NoAgencyOfKind(kind.clone())),
            });
        }
        for step in &mut p.steps {
            let Step::UserTask(t) = step else { continue };
            let Some(kind) = t.agency.clone() else {
                continue;
            };
            t.agency = match agencies.resolve_task_agency(&kind, competent.as_deref(), day) {
                Ok(TaskAgency::Receiving) => Some(RECEIVING.to_owned()),
                Ok(TaskAgency::Competent) => None,
                Ok(TaskAgency::Code(code)) => Some(code),
                Err(error) => {
                    return Err(EngineError::AgencyKindUnmapped {
                        procedure: label,
                        at: format!("step {}", t.id),
                        kind,
                        error: Box::new(error),
                    });
                }
            };
        }
        Ok(definition)
    }

    /// Deployed procedure versions (loaded from the database) that name a kind of agency
    /// this deployment has none of. `tthc serve` refuses to start while there are any.
    pub fn agency_problems(&self) -> Vec<String> {
        self.inner
            .agency_problems
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    /// Deploys a checked definition. A version already deployed must be identical: a changed
    /// procedure gets a new version, so running dossiers keep the one they started with.
    pub async fn deploy(&self, definition: &Definition) -> Result<Deployed, EngineError> {
        let p = &definition.procedure;
        let (code, version) = (p.code.clone(), p.version);
        if let Some(existing) = self.procedure(&code, Some(version)) {
            if existing.definition.text == definition.text {
                return Ok(Deployed::Unchanged { code, version });
            }
            return Err(EngineError::Definition(format!(
                "{code} version {version} is already deployed with different content; raise `version`"
            )));
        }
        let forms: serde_json::Map<String, Value> = definition
            .forms
            .iter()
            .map(|(k, v)| (k.clone(), (**v).clone()))
            .collect();
        let stored = StoredProcedure {
            code: code.clone(),
            version,
            name: p.name.clone(),
            source: definition.text.clone(),
            forms: Value::Object(forms),
            deployed_at: self.now(),
        };
        self.register(definition.clone())?;
        self.inner.store.save_procedure(&stored).await?;
        Ok(Deployed::New { code, version })
    }

    /// A deployed procedure: the given version, or the newest.
    pub fn procedure(&self, code: &str, version: Option<u32>) -> Option<Arc<CompiledProcedure>> {
        let map = self
            .inner
            .procedures
            .read()
            .unwrap_or_else(|e| e.into_inner());
        match version {
            Some(v) => map.get(&(code.to_owned(), v)).cloned(),
            None => map
                .iter()
                .filter(|((c, _), _)| c == code)
                .max_by_key(|((_, v), _)| *v)
                .map(|(_, p)| p.clone()),
        }
    }

    /// Every deployed procedure version.
    pub fn procedures(&self) -> Vec<Arc<CompiledProcedure>> {
        let map = self
            .inner
            .procedures
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = map.values().cloned().collect();
        all.sort_by(|a, b| {
            (&a.procedure().code, a.procedure().version)
                .cmp(&(&b.procedure().code, b.procedure().version))
        });
        all
    }

    /// Files a new dossier on the newest version of its procedure.
    /// This deployment's identity, made at the first start and stored in its database.
    pub fn deployment_id(&self) -> &str {
        &self.inner.deployment_id
    }

    /// Whether `code` is one of this deployment's agencies.
    pub fn has_agency(&self, code: &str) -> bool {
        self.inner.config.agencies.contains(code)
    }

    /// This deployment's agencies.
    pub fn agencies(&self) -> &Agencies {
        &self.inner.config.agencies
    }

    /// The key a hook's external system deduplicates by: the same on every attempt of the job,
    /// and never the same in two deployments (the national portal is shared by all of them).
    pub fn hook_key(&self, job: &Job, dossier: &str) -> String {
        format!(
            "{}/{}",
            self.inner.deployment_id,
            job.idempotency_key(dossier)
        )
    }
}

impl Engine {
    /// Loads the procedure versions other nodes deployed since this one started. Deployed
    /// versions never change, so only missing ones are read.
    pub async fn refresh(&self) -> Result<(), EngineError> {
        let known: Vec<(String, u32)> = {
            let map = self
                .inner
                .procedures
                .read()
                .unwrap_or_else(|e| e.into_inner());
            map.keys().cloned().collect()
        };
        let deployed = self.inner.store.procedure_versions().await?;
        if deployed.iter().all(|k| known.contains(k)) {
            return Ok(());
        }
        for p in self.inner.store.procedures().await? {
            if known.contains(&(p.code.clone(), p.version)) {
                continue;
            }
            let definition =
                Definition::from_stored(&format!("{} v{}", p.code, p.version), &p.source, &p.forms)
                    .map_err(EngineError::Definition)?;
            match self.register(definition.clone()) {
                // Deployed earlier with agencies this configuration lacks: its dossiers still
                // read and replay; `serve` refuses to start until the agencies are configured.
                Err(e @ EngineError::AgencyKindUnmapped { .. }) => {
                    self.register_unresolved(definition)?;
                    self.inner
                        .agency_problems
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(e);
                }
                other => {
                    other?;
                }
            }
        }
        Ok(())
    }
}
