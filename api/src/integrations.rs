//! The engine's connections to the world: the local Kho DL and its blob store, the national
//! portal (or, in development, the built-in portal simulator), and the signing keys. `serve`
//! and `demo` install them the same way.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use engine::Engine;
use engine::definition::ResultCatalog;
use engine::khodl::{BlobStore, KhoDl, KhoDlSaveHook, KhoDlUnhideHook};
use engine::portal::{PortalClient, PortalConfig, PortalPushHook, PortalSyncHook};
use engine::reuse::Reuse;
use engine::signing::KeyRing;

/// Where the pieces live.
#[derive(Debug, Clone)]
pub struct Settings {
    pub blobs_dir: PathBuf,
    /// The portal to sync with; `None` leaves the portal hooks unconfigured (their jobs fail
    /// and open incidents).
    pub portal: Option<PortalConfig>,
    pub keys: Keys,
    pub agencies: BTreeMap<String, String>,
    /// What reuse does with a paper from elsewhere whose signatures do not verify.
    pub reuse_unverified: engine::reuse::UnverifiedPolicy,
}

/// The keys results are signed with.
#[derive(Debug, Clone)]
pub enum Keys {
    /// Configured keys: officers' and agencies' seeds, and other provinces' public keys.
    Ring(KeyRing),
    /// Keys derived from a passphrase for any signer, for development and demos only:
    /// anyone who knows the passphrase can sign.
    Development(String),
}

impl Keys {
    /// A ring that holds the keys of these signers.
    pub fn ring_for(&self, officers: &[&str], agencies: &[&str]) -> KeyRing {
        match self {
            Keys::Ring(r) => r.clone(),
            Keys::Development(passphrase) => KeyRing::derived(passphrase, officers, agencies),
        }
    }
}

impl engine::signing::TrustStore for Keys {
    fn ring_for(&self, officers: &[&str], agencies: &[&str]) -> KeyRing {
        Keys::ring_for(self, officers, agencies)
    }
}

/// What is installed, for the routes and the demo.
#[derive(Clone)]
pub struct Integrations {
    pub khodl: KhoDl,
    pub blobs: Arc<BlobStore>,
    pub portal: Option<PortalClient>,
    pub keys: Arc<Keys>,
    pub reuse: Reuse,
    pub catalog: ResultCatalog,
    pub agencies: BTreeMap<String, String>,
}

/// Registers the Kho DL and portal hooks on the engine.
pub fn install(
    engine: &Engine,
    catalog: &ResultCatalog,
    settings: Settings,
) -> Result<Integrations> {
    let blobs =
        Arc::new(BlobStore::open(&settings.blobs_dir).with_context(|| {
            format!("opening the blob store in {}", settings.blobs_dir.display())
        })?);
    let khodl = KhoDl::for_engine(engine);
    engine.register_hook(
        "khodl.save",
        Arc::new(
            KhoDlSaveHook::new(khodl.clone(), catalog).with_agency_names(settings.agencies.clone()),
        ),
    );
    engine.register_hook(
        "khodl.unhide",
        Arc::new(KhoDlUnhideHook::new(khodl.clone())),
    );
    let portal = match settings.portal {
        None => None,
        Some(config) => {
            let client = PortalClient::new(config).map_err(|e| anyhow::anyhow!("portal: {e}"))?;
            engine.register_hook(
                "portal.sync_dossier",
                Arc::new(
                    PortalSyncHook::new(client.clone())
                        .with_history(engine.store().clone())
                        .with_catalog(catalog.clone()),
                ),
            );
            let source = blobs.clone();
            let content: Arc<dyn engine::portal::ContentSource> =
                Arc::new(move |sha: &str| match source.get(sha) {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::error!(sha256 = sha, error = %e, "blob unreadable");
                        None
                    }
                });
            engine.register_hook(
                "portal.push_result",
                Arc::new(
                    PortalPushHook::new(client.clone(), content)
                        .with_calendar(engine.calendar().clone())
                        .with_catalog(catalog.clone())
                        .with_agency_names(settings.agencies.clone()),
                ),
            );
            Some(client)
        }
    };
    let keys = Arc::new(settings.keys);
    let reuse = Reuse::new(khodl.clone(), blobs.clone(), portal.clone())
        .with_trust(keys.clone())
        .with_policy(settings.reuse_unverified);
    Ok(Integrations {
        khodl,
        blobs,
        portal,
        keys,
        reuse,
        catalog: catalog.clone(),
        agencies: settings.agencies,
    })
}

/// Makes the electronic result document for a signed result, stores it, and signs it: the
/// officer's Ed25519 signature over its hash and metadata, then the agency's seal over both.
/// The returned document carries the signed metadata and both signature records in its
/// provenance, so the Kho DL paper keeps them and anyone can verify them later.
#[allow(clippy::too_many_arguments)]
pub fn sign_result_document(
    integrations: &Integrations,
    dossier: &engine::dossier::Dossier,
    result_code: &str,
    result_name: &str,
    number: &str,
    signer_id: &str,
    signer_name: &str,
    agency_code: &str,
    agency_name: &str,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<engine::dossier::DocumentRef> {
    let text = format!(
        "{agency_name}\n{result_name}\nSố: {number}\n\nCấp cho: {} (mã định danh {})\nHồ sơ: {}\nThủ tục: {} ({})\nNgày ký: {}\nNgười ký: {signer_name}\n",
        dossier.owner.name,
        dossier.owner.id,
        dossier.code,
        dossier.procedure_name,
        dossier.procedure_code,
        engine::calendar::vietnam_time(at).to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
    );
    let bytes = text.into_bytes();
    let sha = integrations
        .blobs
        .put(&bytes)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let metadata = serde_json::json!({
        "result_code": result_code,
        "name": result_name,
        "number": number,
        "owner_id": dossier.owner.id.as_str(),
        "owner_name": dossier.owner.name,
        "dossier_code": dossier.code,
        "procedure_code": dossier.procedure_code,
        "issuing_agency": agency_code,
        "signer": signer_name,
    });
    let signatures = integrations
        .keys
        .ring_for(&[signer_id], &[agency_code])
        .sign_and_seal(signer_id, agency_code, &sha, &metadata, at)
        .map_err(|e| anyhow::Error::new(e).context(format!("signing {result_code}")))?;
    Ok(engine::dossier::DocumentRef {
        id: format!("kq-{result_code}"),
        component: "ket_qua".into(),
        name: result_name.to_owned(),
        kind: Some(engine::definition::DocumentKind::Original),
        sha256: sha,
        size: bytes.len() as u64,
        content_type: "text/plain; charset=utf-8".into(),
        provenance: Some(serde_json::json!({
            engine::khodl::PROVENANCE_SIGNED_METADATA: metadata,
            engine::khodl::PROVENANCE_SIGNATURES: signatures,
        })),
    })
}

/// The outcome of verifying a signed result.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Verification {
    pub result_code: String,
    pub valid: bool,
    /// Why it does not verify.
    pub problem: Option<String>,
    pub document_sha256: Option<String>,
    pub signatures: Vec<SignerView>,
}

/// One signature of a result: `officer` (the signer) or `agency` (the organization's seal).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct SignerView {
    pub signer_kind: String,
    /// The officer's id or the agency's code.
    pub signer_id: String,
    pub key_id: String,
    pub algorithm: String,
    /// When it was signed, in Vietnam time (RFC 3339, `+07:00`).
    #[schema(value_type = String, format = DateTime)]
    pub signed_at: chrono::DateTime<chrono::FixedOffset>,
}

impl SignerView {
    pub fn of(r: &engine::signing::SignatureRecord) -> SignerView {
        SignerView {
            signer_kind: r.signer_kind.as_str().to_owned(),
            signer_id: r.signer_id.clone(),
            key_id: r.key_id.clone(),
            algorithm: r.algorithm.clone(),
            signed_at: engine::calendar::vietnam_time(r.signed_at),
        }
    }
}

/// Verifies the signatures of a dossier's signed result against its stored content: the
/// content's hash, the signed metadata, each Ed25519 signature, and their order (signer, then
/// the organization's seal).
pub fn verify_result(
    integrations: &Integrations,
    dossier: &engine::dossier::Dossier,
    result_code: &str,
) -> Verification {
    let mut v = Verification {
        result_code: result_code.to_owned(),
        valid: false,
        problem: None,
        document_sha256: None,
        signatures: Vec::new(),
    };
    let Some(sig) = dossier
        .signatures
        .iter()
        .find(|s| s.result_code == result_code)
    else {
        v.problem = Some(format!("{result_code} is not signed on this dossier"));
        return v;
    };
    let Some(doc) = &sig.document else {
        v.problem = Some("the result was recorded as signed without an electronic document".into());
        return v;
    };
    v.document_sha256 = Some(doc.sha256.clone());
    let provenance = doc.provenance.clone().unwrap_or_default();
    let metadata = provenance
        .get(engine::khodl::PROVENANCE_SIGNED_METADATA)
        .cloned()
        .unwrap_or_default();
    let records: Vec<engine::signing::SignatureRecord> = match serde_json::from_value(
        provenance
            .get(engine::khodl::PROVENANCE_SIGNATURES)
            .cloned()
            .unwrap_or_default(),
    ) {
        Ok(r) => r,
        Err(e) => {
            v.problem = Some(format!("the signature records are unreadable: {e}"));
            return v;
        }
    };
    v.signatures = records.iter().map(SignerView::of).collect();
    match integrations.blobs.get(&doc.sha256) {
        Ok(Some(_)) => {}
        Ok(None) => {
            v.problem = Some("the signed document's content is missing".into());
            return v;
        }
        Err(e) => {
            v.problem = Some(format!("the signed document's content: {e}"));
            return v;
        }
    }
    let officers: Vec<&str> = records
        .iter()
        .filter(|r| r.signer_kind == engine::signing::SignerKind::Officer)
        .map(|r| r.signer_id.as_str())
        .collect();
    let agencies: Vec<&str> = records
        .iter()
        .filter(|r| r.signer_kind == engine::signing::SignerKind::Agency)
        .map(|r| r.signer_id.as_str())
        .collect();
    let ring = integrations.keys.ring_for(&officers, &agencies);
    match ring.verify_chain(&records, &doc.sha256, &metadata) {
        Ok(()) => v.valid = true,
        Err(e) => v.problem = Some(e.to_string()),
    }
    v
}

/// The outcome of verifying a paper held on the portal's Kho DL.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PortalPaperVerification {
    pub paper_id: String,
    /// True only when `outcome` is `verified`.
    pub valid: bool,
    #[serde(flatten)]
    pub check: engine::signing::PaperVerification,
    /// SHA-256 of the content as downloaded.
    pub document_sha256: String,
    pub signatures: Vec<SignerView>,
}

/// Fetches a paper from the portal, checks its content against the hash it is listed with,
/// and verifies its signatures against the keys `trust` holds (as reuse does).
pub async fn verify_portal_paper(
    client: &PortalClient,
    trust: &dyn engine::signing::TrustStore,
    paper_id: &str,
) -> Result<PortalPaperVerification> {
    let info = client
        .paper(paper_id)
        .await
        .map_err(|e| anyhow::anyhow!("the portal's paper {paper_id}: {e}"))?;
    let (_, sha) = client
        .paper_content(paper_id)
        .await
        .map_err(|e| anyhow::anyhow!("the content of the portal's paper {paper_id}: {e}"))?;
    let m = &info.metadata;
    let check = engine::signing::verify_paper(
        trust,
        &m.signatures,
        &sha,
        m.signed_metadata.as_ref(),
        &[
            ("owner_id", Some(m.owner_id.as_str())),
            ("result_code", Some(m.result_code.as_str())),
            ("number", m.number.as_deref()),
            ("dossier_code", Some(m.dossier_code.as_str())),
        ],
    );
    Ok(PortalPaperVerification {
        paper_id: paper_id.to_owned(),
        valid: check.outcome == engine::signing::PaperCheck::Verified,
        check,
        document_sha256: sha,
        signatures: m.signatures.iter().map(SignerView::of).collect(),
    })
}
