//! What the handlers share ([`AppState`]), and who calls ([`Caller`], from the bearer token
//! and this deployment's agencies).

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use engine::Engine;
use engine::definition::LoaderConfig;
use engine::dossier::Actor;

use crate::auth::{Caller, Verifier, actor_of};
use crate::metrics::Metrics;
use crate::problem::ApiError;

/// What the handlers share. axum clones the state for every request (the `State` extractor,
/// the `track` layer), so it is a handle: a clone is a reference count, not a copy of the
/// configuration, the catalog and the keys.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> AppState {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The engine, the integrations and the settings behind an [`AppState`].
pub struct Shared {
    pub engine: Engine,
    /// Kho DL, blobs, the portal and the signing keys.
    pub io: crate::integrations::Integrations,
    /// Largest uploaded document.
    pub upload_limit: usize,
    pub verifier: Verifier,
    pub loader: LoaderConfig,
    pub metrics: Arc<Metrics>,
    pub ready: Arc<std::sync::atomic::AtomicBool>,
}

/// A request's caller: its verified bearer token, as an actor of this deployment.
impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthenticated("send `Authorization: Bearer TOKEN`"))?;
        let value = header
            .to_str()
            .map_err(|_| ApiError::unauthenticated("the Authorization header is not text"))?;
        let token = value.strip_prefix("Bearer ").ok_or_else(|| {
            ApiError::unauthenticated("the Authorization header must be `Bearer TOKEN`")
        })?;
        let claims = state.verifier.verify(token.trim())?;
        let actor = actor_of(&claims)?;
        // An officer acts for an agency of this deployment; a token for another province's
        // (or a made-up) agency is refused before it reaches any route.
        if let Actor::Officer { agency, .. } = &actor
            && !state.engine.has_agency(agency)
        {
            return Err(ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "unknown_agency",
                format!("agency {agency} of this token is not one of this deployment's agencies"),
            ));
        }
        Ok(Caller { claims, actor })
    }
}
