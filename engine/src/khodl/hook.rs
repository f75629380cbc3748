//! The `khodl.save` hook: files a dossier's signed results into its owner's local Kho DL,
//! hidden until the result is returned (seed §III, step 3).
//!
//! Each paper's id comes from the dossier code and the result code alone, so every attempt of
//! the job, a duplicate execution, or a re-run after an incident stores the same single paper.
//!
//! When the result was signed with [`crate::signing`], the signing step records it in the
//! signed document's provenance as
//! `{"signed_metadata": {…}, "signatures": [SignatureRecord, …]}`: the records go into the
//! paper's `signatures`, the rest into its `provenance_detail`, so
//! `keys.verify_chain(&paper.signatures, &file.sha256, &detail["signed_metadata"])` checks them.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Value, json};

use super::{Approval, KhoDl, NewPaper, PaperFile, PaperKind, PaperValidity, Provenance};
use crate::definition::{ResultCatalog, Validity};
use crate::dossier::{Dossier, HookOutcome, Signature};
use crate::engine::{HookFuture, HookHandler, HookRequest};
use crate::signing::SignatureRecord;

/// Key of a signed document's provenance holding its `SignatureRecord`s.
pub const PROVENANCE_SIGNATURES: &str = "signatures";
/// Key of a signed document's provenance holding the metadata its signatures cover.
pub const PROVENANCE_SIGNED_METADATA: &str = "signed_metadata";

/// The Kho DL id of the paper that holds `result_code` issued for `dossier_code`.
pub fn result_paper_id(dossier_code: &str, result_code: &str) -> String {
    format!("{dossier_code}:{result_code}")
}

/// One paper the hook saved, as its outcome reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SavedPaper {
    pub id: String,
    pub result_code: String,
    /// False when an earlier attempt had already saved it.
    pub created: bool,
}

/// What the hook knows of a result code from the catalog.
#[derive(Debug, Clone)]
struct CatalogEntry {
    name: String,
    default_validity: Validity,
}

/// The `khodl.save` hook. Register it with
/// `engine.register_hook("khodl.save", Arc::new(KhoDlSaveHook::new(khodl, &catalog)))`.
#[derive(Debug, Clone)]
pub struct KhoDlSaveHook {
    khodl: KhoDl,
    catalog: BTreeMap<String, CatalogEntry>,
    agencies: BTreeMap<String, String>,
}

impl KhoDlSaveHook {
    /// A hook saving into `khodl`, naming papers and counting their validity from the result
    /// catalog (a procedure's own `validity:` wins; a code missing from the catalog is valid
    /// for [`super::DEFAULT_VALIDITY`]).
    pub fn new(khodl: KhoDl, catalog: &ResultCatalog) -> KhoDlSaveHook {
        KhoDlSaveHook {
            khodl,
            catalog: catalog
                .results
                .iter()
                .map(|r| {
                    (
                        r.code.clone(),
                        CatalogEntry {
                            name: r.name.clone(),
                            default_validity: r.default_validity,
                        },
                    )
                })
                .collect(),
            agencies: BTreeMap::new(),
        }
    }

    /// Agency names by code, for the issuing agency (CoQuanBanHanh); without one, the code.
    pub fn with_agency_names(mut self, agencies: BTreeMap<String, String>) -> KhoDlSaveHook {
        self.agencies = agencies;
        self
    }

    /// The paper for one signed result.
    fn paper(
        &self,
        request: &HookRequest<'_>,
        signature: &Signature,
        override_validity: Option<Validity>,
    ) -> Result<NewPaper, String> {
        let d: &Dossier = request.dossier;
        let result_code = &signature.result_code;
        let entry = self.catalog.get(result_code);
        let validity = override_validity
            .or(entry.map(|e| e.default_validity))
            .map(|v| PaperValidity::from_definition(v, signature.at, self.khodl.calendar()));
        let document = signature.document.as_ref();
        // When the result was signed cryptographically, the API keeps the signature records in
        // the document's provenance; they travel with the paper.
        let signatures: Vec<SignatureRecord> =
            match document.and_then(|doc| doc.provenance.as_ref()?.get(PROVENANCE_SIGNATURES)) {
                None | Some(Value::Null) => Vec::new(),
                Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
                    format!("the signatures of {result_code} in the document's provenance: {e}")
                })?,
            };
        // The rest of the provenance (the metadata that was signed, say) is kept with the
        // paper, so its signatures can be verified later.
        let provenance_detail = match document.and_then(|doc| doc.provenance.clone()) {
            Some(Value::Object(mut m)) => {
                m.remove(PROVENANCE_SIGNATURES);
                (!m.is_empty()).then_some(Value::Object(m))
            }
            Some(Value::Null) | None => None,
            Some(other) => Some(other),
        };
        Ok(NewPaper {
            id: result_paper_id(&d.code, result_code),
            // The national format of the paper code is unverified (DOMAIN.md); owner, type
            // and dossier make it unique and readable.
            code: format!("{}.{}.{}", d.owner.id, result_code, d.code),
            national_code: None,
            name: entry
                .map(|e| e.name.clone())
                .unwrap_or_else(|| format!("Kết quả {result_code}")),
            owner: d.owner.id.clone(),
            owner_name: d.owner.name.clone(),
            paper_type: result_code.clone(),
            number: signature.number.clone(),
            issued_at: signature.at,
            issuing_agency: self
                .agencies
                .get(&*d.agency_code)
                .cloned()
                .unwrap_or_else(|| d.agency_code.to_string()),
            signer: Some(signature.signer.clone()),
            summary: Some(format!("{} (hồ sơ {})", d.procedure_name, d.code)),
            validity,
            scope: None,
            kind: PaperKind::Result,
            digitized: None,
            file: document.map(|doc| PaperFile {
                sha256: doc.sha256.clone(),
                size: doc.size,
                content_type: doc.content_type.clone(),
            }),
            dossier_code: Some(d.code.to_string()),
            procedure_code: Some(d.procedure_code.to_string()),
            field: Some(request.procedure.procedure().agency.field.clone()),
            // Signed by the competent officer: nothing is left to approve.
            approval: Approval::Approved,
            hidden: true,
            provenance: Provenance::IssuedHere,
            provenance_detail,
            signatures,
        })
    }

    async fn save_all(&self, request: &HookRequest<'_>) -> Result<Vec<SavedPaper>, String> {
        let results = &request.procedure.procedure().results;
        let mut saved = Vec::new();
        for signature in request.dossier.signatures.iter() {
            let Some(spec) = results
                .iter()
                .find(|r| r.result_code == signature.result_code && r.save_to_khodl)
            else {
                continue;
            };
            let paper = self.paper(request, signature, spec.validity)?;
            let s = self
                .khodl
                .save(paper, request.now)
                .await
                .map_err(|e| format!("saving {} to Kho DL: {e}", signature.result_code))?;
            saved.push(SavedPaper {
                id: s.paper.id,
                result_code: signature.result_code.clone(),
                created: s.created,
            });
        }
        Ok(saved)
    }
}

impl HookHandler for KhoDlSaveHook {
    fn call<'a>(&'a self, request: HookRequest<'a>) -> HookFuture<'a> {
        Box::pin(async move {
            match self.save_all(&request).await {
                Ok(papers) => HookOutcome::Succeeded {
                    detail: json!({ "papers": papers, "key": request.idempotency_key }),
                    notification: None,
                },
                Err(error) => HookOutcome::Failed { error },
            }
        })
    }
}

/// The `khodl.unhide` job the engine schedules when a result is returned: the owner's papers
/// from this dossier become visible to them. Idempotent: unhiding twice changes nothing.
#[derive(Debug, Clone)]
pub struct KhoDlUnhideHook {
    khodl: KhoDl,
}

impl KhoDlUnhideHook {
    pub fn new(khodl: KhoDl) -> KhoDlUnhideHook {
        KhoDlUnhideHook { khodl }
    }
}

impl HookHandler for KhoDlUnhideHook {
    fn call<'a>(&'a self, request: HookRequest<'a>) -> HookFuture<'a> {
        Box::pin(async move {
            let d = request.dossier;
            match self
                .khodl
                .unhide_dossier(&d.owner.id, &d.code, request.now)
                .await
            {
                Ok(n) => HookOutcome::Succeeded {
                    detail: serde_json::json!({ "unhidden": n }),
                    notification: None,
                },
                Err(e) => HookOutcome::Failed {
                    error: format!("unhiding the papers of {}: {e}", d.code),
                },
            }
        })
    }
}
