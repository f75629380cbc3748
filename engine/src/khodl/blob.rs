//! Content-addressed storage of files (scans, signed results, certified copies) in a folder.
//!
//! A blob's path is derived only from the SHA-256 of its content (`ab/cd/abcd…`), so the same
//! content is stored once, and no caller-chosen name ever reaches the filesystem: a hash is
//! checked to be 64 lower-case hex digits before any path is built from it. Writes go to a
//! temporary file in the blob's own folder and are renamed into place, so a crash never
//! leaves a partial blob under a real name. Reads re-hash the content and report corruption.
//!
//! The API is synchronous (plain file IO); async callers moving large files should call it
//! through `tokio::task::spawn_blocking`.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// Files larger than this are refused unless the store is opened with another limit.
pub const DEFAULT_MAX_BLOB_BYTES: u64 = 32 * 1024 * 1024;

/// Why the blob store refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("`{0}` is not a sha-256 hash (64 lower-case hex digits)")]
    InvalidHash(String),
    #[error("the content is {size} bytes, over the limit of {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
    #[error("blob {sha256} is corrupt: its content hashes to {actual}")]
    Corrupt { sha256: String, actual: String },
    #[error("blob store at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl BlobError {
    /// A stable code for APIs and logs.
    pub fn code(&self) -> &'static str {
        match self {
            BlobError::InvalidHash(_) => "invalid_hash",
            BlobError::TooLarge { .. } => "blob_too_large",
            BlobError::Corrupt { .. } => "blob_corrupt",
            BlobError::Io { .. } => "blob_io",
        }
    }

    /// Whether the disk (or the quota) holding the blobs is full.
    pub fn is_storage_full(&self) -> bool {
        matches!(self, BlobError::Io { source, .. }
            if source.kind() == io::ErrorKind::StorageFull
                || source.kind() == io::ErrorKind::QuotaExceeded)
    }

    /// Whether trying again later may succeed (a full disk, a busy file system).
    pub fn is_retryable(&self) -> bool {
        match self {
            BlobError::Io { .. } => true,
            BlobError::InvalidHash(_) | BlobError::TooLarge { .. } | BlobError::Corrupt { .. } => {
                false
            }
        }
    }
}

pub use crate::hash::{is_sha256_hex, sha256_hex};

fn checked_hash(sha256: &str) -> Result<&str, BlobError> {
    if is_sha256_hex(sha256) {
        Ok(sha256)
    } else {
        // Echo at most a short prefix: the input is the caller's and may be huge.
        let shown: String = sha256.chars().take(80).collect();
        Err(BlobError::InvalidHash(shown))
    }
}

/// A folder of content-addressed blobs. Cheap to clone.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
    max_size: u64,
}

impl BlobStore {
    /// Opens (creating if needed) the store in `root`, with [`DEFAULT_MAX_BLOB_BYTES`].
    pub fn open(root: impl Into<PathBuf>) -> Result<BlobStore, BlobError> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(|source| BlobError::Io {
            path: root.clone(),
            source,
        })?;
        Ok(BlobStore {
            root,
            max_size: DEFAULT_MAX_BLOB_BYTES,
        })
    }

    /// The same store with another size limit for `put` and `get`.
    pub fn with_max_size(mut self, bytes: u64) -> BlobStore {
        self.max_size = bytes;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn max_size(&self) -> u64 {
        self.max_size
    }

    /// Where the blob of an already checked hash lives: `root/ab/cd/abcd…`. Two levels of
    /// 256 folders keep each folder small.
    fn path_of(&self, sha256: &str) -> PathBuf {
        self.root
            .join(&sha256[0..2])
            .join(&sha256[2..4])
            .join(sha256)
    }

    /// Stores `bytes` and returns their SHA-256. Content already stored (and intact) is not
    /// written again; a stored copy found corrupt is replaced by the good one.
    pub fn put(&self, bytes: &[u8]) -> Result<String, BlobError> {
        let size = bytes.len() as u64;
        if size > self.max_size {
            return Err(BlobError::TooLarge {
                size,
                limit: self.max_size,
            });
        }
        let sha256 = sha256_hex(bytes);
        let path = self.path_of(&sha256);
        if self.is_intact(&sha256, &path)? {
            return Ok(sha256);
        }
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        let io = |source| BlobError::Io {
            path: dir.clone(),
            source,
        };
        fs::create_dir_all(&dir).map_err(io)?;
        // The temporary file is in the blob's own folder so the rename cannot cross file
        // systems, and it is flushed to disk before it gets its real name.
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(&dir)
            .map_err(io)?;
        tmp.write_all(bytes).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        match tmp.persist_noclobber(&path) {
            Ok(_) => {}
            Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => {
                // Another writer stored the same content meanwhile; keep theirs if intact.
                if !self.is_intact(&sha256, &path)? {
                    e.file.persist(&path).map_err(|e| io(e.error))?;
                }
            }
            Err(e) => return Err(io(e.error)),
        }
        sync_dir(&dir);
        Ok(sha256)
    }

    /// The content stored under `sha256`, or `None` when there is none. The hash is checked
    /// before any path is built, and the content is re-hashed: a mismatch is
    /// [`BlobError::Corrupt`].
    pub fn get(&self, sha256: &str) -> Result<Option<Vec<u8>>, BlobError> {
        let sha256 = checked_hash(sha256)?;
        let path = self.path_of(sha256);
        let Some(bytes) = self.read(&path)? else {
            return Ok(None);
        };
        let actual = sha256_hex(&bytes);
        if actual != sha256 {
            return Err(BlobError::Corrupt {
                sha256: sha256.to_owned(),
                actual,
            });
        }
        Ok(Some(bytes))
    }

    /// Whether content is stored under `sha256` (without reading or checking it).
    pub fn contains(&self, sha256: &str) -> Result<bool, BlobError> {
        let sha256 = checked_hash(sha256)?;
        let path = self.path_of(sha256);
        match fs::symlink_metadata(&path) {
            Ok(m) => Ok(m.is_file()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(BlobError::Io { path, source }),
        }
    }

    /// Reads a blob file, refusing one over the size limit before reading it.
    fn read(&self, path: &Path) -> Result<Option<Vec<u8>>, BlobError> {
        let io = |source| BlobError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let size = file.metadata().map_err(io)?.len();
        if size > self.max_size {
            return Err(BlobError::TooLarge {
                size,
                limit: self.max_size,
            });
        }
        // Read at most one byte past the limit, in case the file grows while being read.
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        file.take(self.max_size.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(io)?;
        if bytes.len() as u64 > self.max_size {
            return Err(BlobError::TooLarge {
                size: bytes.len() as u64,
                limit: self.max_size,
            });
        }
        Ok(Some(bytes))
    }

    /// Whether an intact copy of `sha256` is already at `path`.
    fn is_intact(&self, sha256: &str, path: &Path) -> Result<bool, BlobError> {
        match self.read(path) {
            Ok(Some(bytes)) => Ok(sha256_hex(&bytes) == sha256),
            Ok(None) => Ok(false),
            // An oversized file under a hash name cannot be that content: replace it.
            Err(BlobError::TooLarge { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Makes a rename durable by syncing its folder. Best effort: not every platform can open a
/// folder for syncing, and the blob itself is already on disk.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_lower_case_hex_of_64_digits_is_a_hash() {
        assert!(is_sha256_hex(&"a".repeat(64)));
        assert!(!is_sha256_hex(&"A".repeat(64)));
        assert!(!is_sha256_hex(&"a".repeat(63)));
        assert!(!is_sha256_hex("../../etc/passwd"));
        assert!(!is_sha256_hex(&format!("{}/", "a".repeat(63))));
    }
}
