//! SHA-256 as tthc writes it everywhere (blobs, documents, papers, signatures): 64 lower-case
//! hex digits.

use sha2::{Digest, Sha256};

/// Whether `s` is a SHA-256 hash as tthc writes them: 64 lower-case hex digits.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The SHA-256 of `bytes`, as 64 lower-case hex digits.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
