//! Bearer tokens (JWT) and who the caller is.
//!
//! A token carries the subject, the kind of user, their roles, their agency (officers) and the
//! owner identifier they act for (citizens). HS256 with a shared secret, or RS256 verified
//! with a public key, as configured. `tthc token` mints HS256 tokens for development and tests.

use std::sync::Arc;

use chrono::Utc;
use engine::dossier::{Actor, OwnerId};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

use crate::problem::ApiError;

pub const ISSUER: &str = "tthc";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum UserKind {
    Citizen,
    Officer,
    Admin,
    Auditor,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub name: String,
    pub kind: UserKind,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agency: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_id: Option<String>,
    pub iss: String,
    pub iat: i64,
    pub exp: i64,
}

/// How tokens are checked.
#[derive(Clone)]
pub struct Verifier {
    key: Arc<DecodingKey>,
    validation: Validation,
}

impl Verifier {
    pub fn hs256(secret: &[u8]) -> Verifier {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.leeway = 5;
        Verifier {
            key: Arc::new(DecodingKey::from_secret(secret)),
            validation,
        }
    }

    pub fn rs256(public_key_pem: &[u8]) -> anyhow::Result<Verifier> {
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[ISSUER]);
        validation.leeway = 5;
        Ok(Verifier {
            key: Arc::new(DecodingKey::from_rsa_pem(public_key_pem)?),
            validation,
        })
    }

    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => ApiError::new(
                    axum::http::StatusCode::UNAUTHORIZED,
                    "token_expired",
                    "the token has expired",
                ),
                _ => ApiError::new(
                    axum::http::StatusCode::UNAUTHORIZED,
                    "invalid_token",
                    format!("the token is not valid: {e}"),
                ),
            })
    }
}

/// Mints an HS256 token.
pub fn mint(secret: &[u8], claims: &Claims) -> anyhow::Result<String> {
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )?)
}

pub fn claims(
    kind: UserKind,
    sub: &str,
    name: &str,
    roles: Vec<String>,
    agency: Option<String>,
    owner_id: Option<String>,
    ttl: chrono::Duration,
) -> Claims {
    let now = Utc::now().timestamp();
    Claims {
        sub: sub.to_owned(),
        name: name.to_owned(),
        kind,
        roles,
        agency,
        owner_id,
        iss: ISSUER.to_owned(),
        iat: now,
        exp: now + ttl.num_seconds(),
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub claims: Claims,
    pub actor: Actor,
}

impl Caller {
    pub fn kind(&self) -> UserKind {
        self.claims.kind
    }

    pub fn require(&self, kinds: &[UserKind]) -> Result<(), ApiError> {
        if kinds.contains(&self.claims.kind) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this needs one of: {}",
                kinds
                    .iter()
                    .map(|k| format!("{k:?}").to_lowercase())
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
    }

    pub fn agency(&self) -> Option<&str> {
        self.claims.agency.as_deref()
    }
}

pub(crate) fn actor_of(c: &Claims) -> Result<Actor, ApiError> {
    let bad = |m: &str| {
        ApiError::new(
            axum::http::StatusCode::UNAUTHORIZED,
            "invalid_token",
            m.to_owned(),
        )
    };
    Ok(match c.kind {
        UserKind::Citizen => {
            let raw = c
                .owner_id
                .as_deref()
                .ok_or_else(|| bad("a citizen token needs `owner_id`"))?;
            let owner_id = OwnerId::parse(raw).map_err(|e| bad(&e.to_string()))?;
            Actor::Citizen {
                id: c.sub.clone(),
                name: c.name.clone(),
                owner_id,
            }
        }
        UserKind::Officer => Actor::Officer {
            id: c.sub.clone(),
            name: c.name.clone(),
            agency: c
                .agency
                .clone()
                .ok_or_else(|| bad("an officer token needs `agency`"))?,
            roles: c.roles.clone(),
        },
        UserKind::Admin => Actor::Admin {
            id: c.sub.clone(),
            name: c.name.clone(),
        },
        UserKind::Auditor => Actor::Auditor {
            id: c.sub.clone(),
            name: c.name.clone(),
        },
    })
}
