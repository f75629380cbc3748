//! Uploads: who sent which blob.

#[allow(unused_imports)]
use super::*;

/// An upload: content in the blob store, and who sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    pub sha256: String,
    pub content_type: String,
    pub size: u64,
}

impl Store {
    pub async fn record_upload(
        &self,
        upload: &Upload,
        uploader: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let r = self.record_upload_unnoted(upload, uploader, at).await;
        self.noted(r)
    }

    pub(super) async fn record_upload_unnoted(
        &self,
        upload: &Upload,
        uploader: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        sqlx::query(sql(self.backend, "INSERT INTO uploads (sha256, uploader_id, content_type, size, uploaded_at) VALUES (?, ?, ?, ?, ?)
             ON CONFLICT (sha256, uploader_id) DO NOTHING"),
        )
        .bind(&upload.sha256)
        .bind(uploader)
        .bind(&upload.content_type)
        .bind(i64::try_from(upload.size).unwrap_or(i64::MAX))
        .bind(micros(at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The upload of this content by this uploader, if they sent it.
    pub async fn upload_of(
        &self,
        sha256: &str,
        uploader: &str,
    ) -> Result<Option<Upload>, StoreError> {
        let row: Option<(String, i64)> = sqlx::query_as(sql(
            self.backend,
            "SELECT content_type, size FROM uploads WHERE sha256 = ? AND uploader_id = ?",
        ))
        .bind(sha256)
        .bind(uploader)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(content_type, size)| Upload {
            sha256: sha256.to_owned(),
            content_type,
            size: u64::try_from(size).unwrap_or(0),
        }))
    }
}
