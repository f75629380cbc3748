//! Reuse (seed §IV): an owner's earlier results, from this system's Kho DL first and then the
//! portal's, offered for a component that accepts them; with consent, attached instead of an
//! upload. A paper from the portal is downloaded, its hash checked against what the portal
//! listed, its signatures verified against this deployment's trusted keys (the outcome is
//! recorded in the reuse event, and [`UnverifiedPolicy`] decides what an unverified paper
//! may do), stored locally, and only then attached.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::dossier::{Actor, Command, Dossier, OwnerId, PaperSource, ReusedPaper};
use crate::khodl::{
    BlobStore, KhoDl, NewPaper, PaperFile, PaperFilter, PaperKind, PaperValidity, Provenance,
};
use crate::portal::{PortalClient, parse_portal_time, wire};
use crate::signing::{
    KeyRing, PaperCheck, PaperVerification, SignatureRecord, TrustStore, verify_paper,
};
use crate::{Engine, EngineError};

/// What this deployment does with a paper from elsewhere (the portal's Kho DL) whose
/// signatures it cannot verify: signed with a key it does not trust, or not signed at all. A
/// paper whose content or metadata is not what was signed is refused whatever the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnverifiedPolicy {
    /// Refused: the owner brings or uploads the paper instead.
    #[default]
    Refuse,
    /// Taken only by an officer who checked it with the issuing agency and says so
    /// (`unverified_confirmed`); the officer is recorded with the outcome.
    Confirm,
}

#[derive(Debug, thiserror::Error)]
pub enum ReuseError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("component `{0}` does not take papers from Kho DL")]
    NotReusable(String),
    #[error("paper {0} is not among the owner's papers that this component accepts")]
    UnknownPaper(String),
    #[error("the portal's Kho DL: {0}")]
    Portal(String),
    #[error("paper {paper}: the downloaded content does not match the hash the portal listed")]
    HashMismatch { paper: String },
    #[error("storing the paper: {0}")]
    Storage(String),
    #[error("paper {paper} is {}: {}{}", check.outcome.as_str(), check.problem.as_deref().unwrap_or_default(), if *confirmable { "; an officer may take it after checking it with the issuing agency (unverified_confirmed)" } else { "; this deployment refuses unverified papers (reuse.unverified: refuse)" })]
    Unverified {
        paper: String,
        check: Box<PaperVerification>,
        confirmable: bool,
    },
    #[error("paper {paper} is altered: {}", check.problem.as_deref().unwrap_or_default())]
    Altered {
        paper: String,
        check: Box<PaperVerification>,
    },
}

impl ReuseError {
    pub fn code(&self) -> &'static str {
        match self {
            ReuseError::Engine(e) => e.code(),
            ReuseError::NotReusable(_) => "not_reusable",
            ReuseError::UnknownPaper(_) => "unknown_paper",
            ReuseError::Portal(_) => "portal_unavailable",
            ReuseError::HashMismatch { .. } => "hash_mismatch",
            ReuseError::Storage(_) => "storage",
            ReuseError::Unverified { .. } => "paper_unverified",
            ReuseError::Altered { .. } => "paper_altered",
        }
    }
}

/// Which paper to take, for which component, and whether the desk recorded the owner's
/// confirmation (online, the owner's own choice is the consent).
#[derive(Debug, Clone, Copy)]
pub struct Pick<'a> {
    pub component: &'a str,
    pub paper_id: &'a str,
    pub source: PaperSource,
    pub owner_confirmed: bool,
    /// An officer checked an unverified paper with its issuer (policy `confirm`).
    pub unverified_confirmed: bool,
}

/// What a paper's signatures are checked with: its records and the metadata they cover, and
/// whether it comes from elsewhere (the portal) rather than from this deployment.
#[derive(Debug, Clone, Default)]
struct Evidence {
    signatures: Vec<SignatureRecord>,
    signed_metadata: Option<Value>,
    /// Fields the paper is listed with that the signed metadata must agree with.
    claimed: Vec<(&'static str, Option<String>)>,
    from_elsewhere: bool,
}

/// Finds and attaches reusable papers.
#[derive(Clone)]
pub struct Reuse {
    khodl: KhoDl,
    blobs: Arc<BlobStore>,
    portal: Option<PortalClient>,
    trust: Arc<dyn TrustStore>,
    policy: UnverifiedPolicy,
}

impl Reuse {
    pub fn new(khodl: KhoDl, blobs: Arc<BlobStore>, portal: Option<PortalClient>) -> Reuse {
        Reuse {
            khodl,
            blobs,
            portal,
            trust: Arc::new(KeyRing::new()),
            policy: UnverifiedPolicy::default(),
        }
    }

    /// Verifies papers' signatures with these keys (without, no key is trusted).
    pub fn with_trust(mut self, trust: Arc<dyn TrustStore>) -> Reuse {
        self.trust = trust;
        self
    }

    /// What an unverified paper from elsewhere may do.
    pub fn with_policy(mut self, policy: UnverifiedPolicy) -> Reuse {
        self.policy = policy;
        self
    }

    pub fn policy(&self) -> UnverifiedPolicy {
        self.policy
    }

    /// The owner's papers that may stand in for `component`: valid now, of an accepted result
    /// code, not older than the component's maximum age. Local ones first; a portal paper
    /// already copied here is listed once, as local.
    pub async fn candidates(
        &self,
        engine: &Engine,
        d: &Dossier,
        component: &str,
    ) -> Result<Vec<ReusedPaper>, ReuseError> {
        Ok(self
            .candidates_with_evidence(engine, d, component)
            .await?
            .into_iter()
            .map(|(p, _)| p)
            .collect())
    }

    async fn candidates_with_evidence(
        &self,
        engine: &Engine,
        d: &Dossier,
        component: &str,
    ) -> Result<Vec<(ReusedPaper, Evidence)>, ReuseError> {
        let procedure = engine
            .procedure(&d.procedure_code, Some(d.procedure_version))
            .ok_or_else(|| EngineError::UnknownProcedure(d.procedure_code.to_string()))?;
        let Some(reuse) = procedure
            .procedure()
            .component(component)
            .and_then(|c| c.reuse.clone())
        else {
            return Err(ReuseError::NotReusable(component.to_owned()));
        };
        let now = engine.now();
        let mut filter = PaperFilter::default()
            .result_codes(&reuse.result_codes)
            .valid_at(now);
        if let Some(age) = reuse.max_age {
            filter = filter.max_age(age, now);
        }
        let local = self
            .khodl
            .list(&d.owner.id, &filter)
            .await
            .map_err(|e| ReuseError::Storage(e.to_string()))?;
        let mut out: Vec<(ReusedPaper, Evidence)> = local
            .into_iter()
            .filter_map(|p| {
                let file = p.file.clone()?;
                let evidence = local_evidence(&p);
                let paper = ReusedPaper {
                    id: p.id.clone(),
                    source: PaperSource::Local,
                    owner_id: p.owner.clone(),
                    result_code: p.paper_type.clone(),
                    name: p.name.clone(),
                    number: p.number.clone(),
                    issued_at: p.issued_at,
                    valid_until: match p.validity {
                        PaperValidity::Permanent => None,
                        PaperValidity::Until(t) => Some(t),
                    },
                    issuing_agency: p.issuing_agency.clone(),
                    sha256: file.sha256,
                    size: file.size,
                    content_type: file.content_type,
                    signature_check: None,
                };
                Some((paper, evidence))
            })
            .collect();
        let Some(portal) = &self.portal else {
            return Ok(self.with_checks(out));
        };
        for code in &reuse.result_codes {
            let listed = portal
                .list_papers(d.owner.id.as_str(), Some(code))
                .await
                .map_err(|e| ReuseError::Portal(e.to_string()))?;
            for info in listed {
                let Some(p) = from_portal(&info, &d.owner.id) else {
                    continue;
                };
                let m = &info.metadata;
                let evidence = Evidence {
                    signatures: m.signatures.clone(),
                    signed_metadata: m.signed_metadata.clone(),
                    claimed: vec![
                        ("owner_id", Some(m.owner_id.clone())),
                        ("result_code", Some(m.result_code.clone())),
                        ("number", m.number.clone()),
                        ("dossier_code", Some(m.dossier_code.clone())),
                    ],
                    from_elsewhere: true,
                };
                let fresh = reuse
                    .max_age
                    .is_none_or(|age| engine.calendar().add(p.issued_at, age) >= now);
                let valid = p.valid_until.is_none_or(|v| v >= now);
                let known = out
                    .iter()
                    .any(|(o, _)| o.sha256 == p.sha256 || o.id == local_id(&p.id));
                if fresh && valid && !known {
                    out.push((p, evidence));
                }
            }
        }
        Ok(self.with_checks(out))
    }

    /// Attaches the paper `paper_id` from `source` to the component, for `actor`. A portal
    /// paper is downloaded and checked first; nothing is stored when any check fails.
    pub async fn take(
        &self,
        engine: &Engine,
        code: &str,
        actor: &Actor,
        pick: Pick<'_>,
    ) -> Result<Dossier, ReuseError> {
        let Pick {
            component,
            paper_id,
            source,
            owner_confirmed,
            unverified_confirmed,
        } = pick;
        let d = engine.dossier(code).await?;
        let candidates = self.candidates_with_evidence(engine, &d, component).await?;
        let Some((mut paper, evidence)) = candidates
            .into_iter()
            .find(|(p, _)| p.id == paper_id && p.source == source)
        else {
            return Err(ReuseError::UnknownPaper(paper_id.to_owned()));
        };
        // The decision core judges consent, owner, code, validity and age; ask it before any
        // download so a refusal stores nothing.
        engine
            .check(
                code,
                actor,
                &Command::ReusePaper {
                    component: component.to_owned(),
                    paper: paper.clone(),
                    owner_confirmed,
                },
            )
            .await?;
        if source == PaperSource::Portal {
            paper = self
                .copy_from_portal(engine, &d, &paper, &evidence, actor, unverified_confirmed)
                .await?;
        } else {
            let check = self.check(
                &paper,
                &paper.sha256,
                &evidence,
                actor,
                unverified_confirmed,
            )?;
            paper.signature_check = Some(check);
        }
        let command = Command::ReusePaper {
            component: component.to_owned(),
            paper,
            owner_confirmed,
        };
        Ok(engine.execute(code, None, actor, &command).await?)
    }

    /// Each candidate with what its signatures verify to against the content hash it is listed
    /// with, so the owner sees before choosing whether a paper can be taken. The paper is
    /// checked again on the downloaded content when taken.
    fn with_checks(
        &self,
        candidates: Vec<(ReusedPaper, Evidence)>,
    ) -> Vec<(ReusedPaper, Evidence)> {
        candidates
            .into_iter()
            .map(|(mut p, e)| {
                p.signature_check = Some(self.verify(&p.sha256, &e));
                (p, e)
            })
            .collect()
    }

    fn verify(&self, content_sha256: &str, evidence: &Evidence) -> PaperVerification {
        let claimed: Vec<(&str, Option<&str>)> = evidence
            .claimed
            .iter()
            .map(|(k, v)| (*k, v.as_deref()))
            .collect();
        verify_paper(
            self.trust.as_ref(),
            &evidence.signatures,
            content_sha256,
            evidence.signed_metadata.as_ref(),
            &claimed,
        )
    }

    /// Verifies the paper's signatures against `content_sha256` and applies the policy: an
    /// altered paper is refused; one from elsewhere that does not verify is refused, or taken
    /// by an officer who confirmed it under `confirm`. Papers issued or digitized here are
    /// checked and the outcome recorded, their trust being this deployment's own records.
    fn check(
        &self,
        paper: &ReusedPaper,
        content_sha256: &str,
        evidence: &Evidence,
        actor: &Actor,
        unverified_confirmed: bool,
    ) -> Result<PaperVerification, ReuseError> {
        let mut check = self.verify(content_sha256, evidence);
        match check.outcome {
            PaperCheck::Verified => Ok(check),
            PaperCheck::Altered if evidence.from_elsewhere => Err(ReuseError::Altered {
                paper: paper.id.clone(),
                check: Box::new(check),
            }),
            _ if !evidence.from_elsewhere => Ok(check),
            _ => {
                let officer = matches!(actor, Actor::Officer { .. });
                let confirmable = self.policy == UnverifiedPolicy::Confirm;
                if confirmable && officer && unverified_confirmed {
                    check.confirmed_by = Some(actor.id().to_owned());
                    Ok(check)
                } else {
                    Err(ReuseError::Unverified {
                        paper: paper.id.clone(),
                        check: Box::new(check),
                        confirmable,
                    })
                }
            }
        }
    }

    async fn copy_from_portal(
        &self,
        engine: &Engine,
        d: &Dossier,
        paper: &ReusedPaper,
        evidence: &Evidence,
        actor: &Actor,
        unverified_confirmed: bool,
    ) -> Result<ReusedPaper, ReuseError> {
        let Some(portal) = &self.portal else {
            return Err(ReuseError::Portal("no portal is configured".into()));
        };
        let (bytes, sha) = portal.paper_content(&paper.id).await.map_err(|e| match e {
            crate::portal::PortalError::HashMismatch { .. } => ReuseError::HashMismatch {
                paper: paper.id.clone(),
            },
            other => ReuseError::Portal(other.to_string()),
        })?;
        if sha != paper.sha256 {
            return Err(ReuseError::HashMismatch {
                paper: paper.id.clone(),
            });
        }
        // Nothing is stored before the signatures are judged.
        let check = self.check(paper, &sha, evidence, actor, unverified_confirmed)?;
        // File IO with a sync to disk: off the async workers.
        let blobs = Arc::clone(&self.blobs);
        let size = bytes.len() as u64;
        let stored = tokio::task::spawn_blocking(move || blobs.put(&bytes))
            .await
            .map_err(|e| ReuseError::Storage(e.to_string()))?
            .map_err(|e| ReuseError::Storage(e.to_string()))?;
        let now = engine.now();
        let new = NewPaper {
            id: local_id(&paper.id),
            code: format!("{}.{}.{}", d.owner.id, paper.result_code, paper.id),
            national_code: Some(paper.id.clone()),
            name: paper.name.clone(),
            owner: d.owner.id.clone(),
            owner_name: d.owner.name.clone(),
            paper_type: paper.result_code.clone(),
            number: paper.number.clone(),
            issued_at: paper.issued_at,
            issuing_agency: paper.issuing_agency.clone(),
            signer: None,
            summary: None,
            validity: Some(match paper.valid_until {
                None => PaperValidity::Permanent,
                Some(t) => PaperValidity::Until(t),
            }),
            scope: None,
            kind: PaperKind::Result,
            digitized: None,
            file: Some(PaperFile {
                sha256: stored.clone(),
                size,
                content_type: paper.content_type.clone(),
            }),
            dossier_code: None,
            procedure_code: None,
            field: None,
            approval: crate::khodl::Approval::Approved,
            hidden: false,
            provenance: Provenance::FromPortal,
            provenance_detail: Some(serde_json::json!({
                "portal_paper_id": paper.id,
                crate::khodl::PROVENANCE_SIGNED_METADATA: evidence.signed_metadata,
                "signature_check": check,
            })),
            signatures: evidence.signatures.clone(),
        };
        self.khodl
            .save(new, now)
            .await
            .map_err(|e| ReuseError::Storage(e.to_string()))?;
        Ok(ReusedPaper {
            sha256: stored,
            signature_check: Some(check),
            ..paper.clone()
        })
    }
}

/// The id a portal paper gets in the local Kho DL.
fn local_id(portal_id: &str) -> String {
    format!("portal:{portal_id}")
}

fn from_portal(info: &wire::PaperInfo, owner: &OwnerId) -> Option<ReusedPaper> {
    let m = &info.metadata;
    if m.owner_id != owner.as_str() {
        return None;
    }
    let issued_at: DateTime<Utc> = parse_portal_time(&m.issued_at)?;
    let valid_until = match (&m.valid_until, m.permanent) {
        (_, true) | (None, _) => None,
        (Some(v), false) => Some(parse_portal_time(v)?),
    };
    Some(ReusedPaper {
        id: m.paper_id.clone(),
        source: PaperSource::Portal,
        owner_id: owner.clone(),
        result_code: m.result_code.clone(),
        name: m.name.clone(),
        number: m.number.clone(),
        issued_at,
        valid_until,
        issuing_agency: m
            .issuing_agency_name
            .clone()
            .unwrap_or_else(|| m.issuing_agency_code.clone()),
        sha256: info.sha256.clone(),
        size: info.size,
        content_type: m.content_type.clone(),
        signature_check: None,
    })
}

/// A local paper's signatures and the metadata they cover: a signed result's, or a certified
/// copy's (its seal covers the copy's metadata).
fn local_evidence(p: &crate::khodl::Paper) -> Evidence {
    let detail = p.provenance_detail.as_ref();
    let signed = detail.and_then(|d| d.get(crate::khodl::PROVENANCE_SIGNED_METADATA));
    let copy = detail.and_then(|d| d.get("certified_copy"));
    let (signed_metadata, claimed) = match (signed, copy) {
        (Some(m), _) if !m.is_null() => (
            Some(m.clone()),
            vec![
                ("owner_id", Some(p.owner.as_str().to_owned())),
                ("result_code", Some(p.paper_type.clone())),
            ],
        ),
        (_, Some(c)) => (Some(c.clone()), Vec::new()),
        _ => (None, Vec::new()),
    };
    Evidence {
        signatures: p.signatures.clone(),
        signed_metadata,
        claimed,
        from_elsewhere: p.provenance == Provenance::FromPortal,
    }
}
