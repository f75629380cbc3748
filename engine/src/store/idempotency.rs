//! Idempotency memory: answers remembered by actor and Idempotency-Key.

#[allow(unused_imports)]
use super::*;

/// A remembered answer to a request with an Idempotency-Key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RememberedResponse {
    pub scope: String,
    pub request_hash: String,
    pub status: u16,
    pub body: String,
}

impl Store {
    pub async fn recall_response(
        &self,
        actor_id: &str,
        key: &str,
    ) -> Result<Option<RememberedResponse>, StoreError> {
        let row: Option<(String, String, i64, String)> = sqlx::query_as(sql(self.backend, "SELECT scope, request_hash, status, body FROM idempotency_keys WHERE actor_id = ? AND key = ?"),
        )
        .bind(actor_id)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        Ok(
            row.map(|(scope, request_hash, status, body)| RememberedResponse {
                scope,
                request_hash,
                status: u16::try_from(status).unwrap_or(500),
                body,
            }),
        )
    }

    /// Keeps the first answer for a key; a concurrent duplicate keeps the one stored first.
    pub async fn remember_response(
        &self,
        actor_id: &str,
        key: &str,
        response: &RememberedResponse,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        sqlx::query(sql(self.backend, "INSERT INTO idempotency_keys (actor_id, key, scope, request_hash, status, body, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (actor_id, key) DO NOTHING"),
        )
        .bind(actor_id)
        .bind(key)
        .bind(&response.scope)
        .bind(&response.request_hash)
        .bind(i64::from(response.status))
        .bind(&response.body)
        .bind(micros(at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
