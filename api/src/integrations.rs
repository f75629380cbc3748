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
    pub keys: KeyRing,
    pub agencies: BTreeMap<String, String>,
}

/// What is installed, for the routes and the demo.
#[derive(Clone)]
pub struct Integrations {
    pub khodl: KhoDl,
    pub blobs: Arc<BlobStore>,
    pub portal: Option<PortalClient>,
    pub keys: Arc<KeyRing>,
    pub reuse: Reuse,
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
    let reuse = Reuse::new(khodl.clone(), blobs.clone(), portal.clone());
    Ok(Integrations {
        khodl,
        blobs,
        portal,
        keys: Arc::new(settings.keys),
        reuse,
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
        at.to_rfc3339(),
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
        .sign_and_seal(signer_id, agency_code, &sha, &metadata, at)
        .map_err(|e| anyhow::anyhow!("signing {result_code}: {e}"))?;
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
