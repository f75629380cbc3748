//! The hooks `portal.sync_dossier` and `portal.push_result`, run as engine jobs outside any transaction.

#[allow(unused_imports)]
use super::*;

/// The outcome text of a failed attempt: what failed, and whether waiting can fix it (the
/// engine retries either way; a non-retryable failure will end in an incident).
pub(super) fn failed(hook: &str, what: &str, e: &PortalError) -> HookOutcome {
    let advice = if e.is_retryable() {
        "retryable"
    } else {
        "not retryable: fix the cause, then retry the incident"
    };
    HookOutcome::Failed {
        error: format!("{hook}: {what}: {e} ({advice})"),
    }
}

/// `portal.sync_dossier`: sends the dossier's current state to the portal.
pub struct PortalSyncHook {
    pub(super) client: PortalClient,
    pub(super) history: Option<Store>,
    pub(super) catalog: Option<ResultCatalog>,
}

impl PortalSyncHook {
    pub fn new(client: PortalClient) -> PortalSyncHook {
        PortalSyncHook {
            client,
            history: None,
            catalog: None,
        }
    }

    /// Reads the dossier's events from `store` to send every supplement round with its due
    /// dates; without it only the open round is sent (plus the count).
    pub fn with_history(mut self, store: Store) -> PortalSyncHook {
        self.history = Some(store);
        self
    }

    /// Names results as the catalog does.
    pub fn with_catalog(mut self, catalog: ResultCatalog) -> PortalSyncHook {
        self.catalog = Some(catalog);
        self
    }

    /// The payload this hook sends for `request`.
    pub async fn payload(&self, request: &HookRequest<'_>) -> Result<wire::SyncDossier, String> {
        let d = request.dossier;
        let supplements = match &self.history {
            Some(store) => {
                // Read outside any transaction; only events up to the state being synced.
                let events = store
                    .events(&d.code)
                    .await
                    .map_err(|e| format!("cannot read the history of {}: {e}", d.code))?;
                supplement_rounds(&events, d.seq)
            }
            None => open_round(d),
        };
        Ok(sync_payload(
            d,
            &request.procedure.procedure().agency.field,
            supplements,
            self.catalog.as_ref(),
        ))
    }
}

impl HookHandler for PortalSyncHook {
    fn call<'a>(&'a self, request: HookRequest<'a>) -> HookFuture<'a> {
        Box::pin(async move {
            const HOOK: &str = "portal.sync_dossier";
            let payload = match self.payload(&request).await {
                Ok(p) => p,
                Err(error) => {
                    return HookOutcome::Failed {
                        error: format!("{HOOK}: {error}"),
                    };
                }
            };
            match self
                .client
                .sync_dossier(&request.idempotency_key, &payload)
                .await
            {
                Ok(answer) => HookOutcome::Succeeded {
                    detail: json!({
                        "dossier_code": answer.dossier_code,
                        "sequence": payload.sequence,
                        "status": payload.status,
                        "applied": answer.applied,
                        "portal_sequence": answer.sequence,
                    }),
                    notification: None,
                },
                // The portal holds an answer for this key with another body: an earlier attempt
                // of this job was applied (its answer was lost) and this retry read a newer
                // state, which the later sync job scheduled by that change carries.
                Err(PortalError::Rejected {
                    status: 409, code, ..
                }) if code == "idempotency_key_reused" => HookOutcome::Succeeded {
                    detail: json!({
                        "sequence": payload.sequence,
                        "status": payload.status,
                        "already_applied": true,
                    }),
                    notification: None,
                },
                Err(e) => failed(HOOK, &format!("sequence {}", payload.sequence), &e),
            }
        })
    }
}

/// `portal.push_result`: pushes every signed result of the dossier to the owner's Kho DL on
/// the portal, one paper per signed result code, each under its own idempotency key derived
/// from the job's (`{job key}/{result code}`), so a retry after a partial failure re-sends
/// only what the portal does not have yet (it answers the rest from its idempotency record).
pub struct PortalPushHook {
    pub(super) client: PortalClient,
    pub(super) content: Arc<dyn ContentSource>,
    pub(super) catalog: Option<ResultCatalog>,
    pub(super) calendar: Option<Calendar>,
    pub(super) agency_names: BTreeMap<String, String>,
}

/// Why a paper could not be prepared for the push.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("the content of {paper_id} (sha256 {sha256}) is not in the blob store")]
    MissingContent { paper_id: String, sha256: String },
    #[error(
        "the content of {paper_id} in the blob store does not match its hash: expected {expected}, got {actual}"
    )]
    ContentMismatch {
        paper_id: String,
        expected: String,
        actual: String,
    },
    #[error("reading the content of {paper_id} failed: {message}")]
    ContentRead { paper_id: String, message: String },
}

impl PortalPushHook {
    pub fn new(client: PortalClient, content: Arc<dyn ContentSource>) -> PortalPushHook {
        PortalPushHook {
            client,
            content,
            catalog: None,
            calendar: None,
            agency_names: BTreeMap::new(),
        }
    }

    /// Computes validity ends with the working-day calendar, as the local Kho DL does.
    pub fn with_calendar(mut self, calendar: Calendar) -> PortalPushHook {
        self.calendar = Some(calendar);
        self
    }

    /// Result names and default validities (`procedures/catalog/results.yaml`).
    pub fn with_catalog(mut self, catalog: ResultCatalog) -> PortalPushHook {
        self.catalog = Some(catalog);
        self
    }

    /// Agency names by code, sent as the issuing agency's name.
    pub fn with_agency_names(mut self, names: BTreeMap<String, String>) -> PortalPushHook {
        self.agency_names = names;
        self
    }

    /// The paper for one signed result, content included.
    pub async fn paper(
        &self,
        d: &Dossier,
        procedure: Option<&CompiledProcedure>,
        signature: &Signature,
    ) -> Result<wire::PushPaper, PushError> {
        let validity = result_validity(procedure, self.catalog.as_ref(), &signature.result_code);
        let metadata = paper_metadata(
            d,
            signature,
            valid_until(signature.at, validity, self.calendar.as_ref()),
            self.catalog.as_ref(),
            self.agency_names.get(&*d.agency_code).map(String::as_str),
        );
        let content = match &signature.document {
            None => Vec::new(),
            Some(doc) => {
                let source = self.content.clone();
                let sha = doc.sha256.clone();
                let bytes = tokio::task::spawn_blocking(move || source.content(&sha))
                    .await
                    .map_err(|e| PushError::ContentRead {
                        paper_id: metadata.paper_id.clone(),
                        message: e.to_string(),
                    })?
                    .ok_or_else(|| PushError::MissingContent {
                        paper_id: metadata.paper_id.clone(),
                        sha256: doc.sha256.clone(),
                    })?;
                // Never push bytes other than those signed: the hash is what the owner and
                // whoever reuses the paper will check.
                let actual = sha256_hex(&bytes);
                if !actual.eq_ignore_ascii_case(&doc.sha256) {
                    return Err(PushError::ContentMismatch {
                        paper_id: metadata.paper_id.clone(),
                        expected: doc.sha256.clone(),
                        actual,
                    });
                }
                bytes
            }
        };
        Ok(wire::PushPaper {
            sha256: sha256_hex(&content),
            content: base64::engine::general_purpose::STANDARD.encode(&content),
            metadata,
        })
    }
}

impl HookHandler for PortalPushHook {
    fn call<'a>(&'a self, request: HookRequest<'a>) -> HookFuture<'a> {
        Box::pin(async move {
            const HOOK: &str = "portal.push_result";
            let d = request.dossier;
            let mut pushed = Vec::new();
            let mut notes = Vec::new();
            for (i, signature) in d.signatures.iter().enumerate() {
                let paper = match self.paper(d, Some(request.procedure), signature).await {
                    Ok(p) => p,
                    Err(e) => {
                        return HookOutcome::Failed {
                            error: format!("{HOOK}: {e}"),
                        };
                    }
                };
                if let Some(note) = &paper.metadata.note {
                    notes.push(format!("{}: {note}", paper.metadata.paper_id));
                }
                let key = format!("{}/{}", request.idempotency_key, signature.result_code);
                match self.client.push_paper(&key, &paper).await {
                    Ok(answer) => pushed.push(json!({
                        "paper_id": answer.paper_id,
                        "sha256": answer.sha256,
                        "size": answer.size,
                        "created": answer.created,
                    })),
                    Err(e) => {
                        let what = format!(
                            "paper {} ({} of {})",
                            paper.metadata.paper_id,
                            i + 1,
                            d.signatures.len()
                        );
                        return failed(HOOK, &what, &e);
                    }
                }
            }
            if d.signatures.is_empty() {
                notes.push("the dossier has no signed result: nothing to push".to_owned());
            }
            HookOutcome::Succeeded {
                detail: json!({ "papers": pushed, "notes": notes }),
                notification: None,
            }
        })
    }
}
