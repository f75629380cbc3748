//! Request extractors shared by the routes: JSON bodies whose rejections are problem details,
//! and the `If-Match` version.

use axum::Json;
use axum::extract::{FromRequest, Request};
use axum::http::HeaderMap;
use serde::de::DeserializeOwned;

use crate::problem::ApiError;

/// A JSON body whose rejections are problem details.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(v) = Json::<T>::from_request(req, state).await?;
        Ok(Body(v))
    }
}

/// An entity tag's value: `"12"` and the weak `W/"12"` both name version 12.
pub fn entity_tag(tag: &str) -> &str {
    tag.trim().trim_start_matches("W/").trim_matches('"')
}

/// The version the caller acted on, from `If-Match: "SEQ"`.
pub fn expected_seq(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(v) = headers.get(axum::http::header::IF_MATCH) else {
        return Ok(None);
    };
    entity_tag(v.to_str().unwrap_or_default())
        .parse()
        .map(Some)
        .map_err(|_| {
            ApiError::bad_request(
                "invalid_if_match",
                "If-Match must be the dossier's seq, e.g. \"12\"",
            )
        })
}
