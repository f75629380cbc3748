//! Digital signatures (ký số) of documents with Ed25519: officers' and agencies' keys, signing,
//! verification, and electronic certified copies (bản sao y điện tử).
//!
//! Decree 30/2020 (art. 13.7, 14.3, 17.2) has the competent person sign first, then the
//! organization apply its seal-signature; here the organization's [`SignatureRecord`] names the
//! signer's record it follows (`countersigns`, the hash of that whole record), so the seal covers
//! the signer's signature and the order can be checked. A certified copy (art. 25.1c) carries
//! the organization's signature alone.
//!
//! What is signed is a canonical encoding: the document's SHA-256, the SHA-256 of the
//! metadata as canonical JSON (object keys sorted, no whitespace; see [`canonical_json`]), and
//! who signed, with which key, when, after whom. Nothing outside that encoding is trusted.
//!
//! This is tthc's own signature format, for documents it issues and keeps. It is not a PKI:
//! qualified signatures under the Law on Electronic Transactions need CA-issued certificates,
//! which a deployment plugs in at this boundary.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, SecondsFormat, Utc};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::definition::DocumentKind;
use crate::hash::{is_sha256_hex, sha256_hex};

/// The only algorithm tthc signs with.
pub const ALGORITHM: &str = "ed25519";

/// Key files larger than this are refused before parsing.
const MAX_KEY_FILE_BYTES: u64 = 1024 * 1024;

/// Canonical JSON nested deeper than this is refused (no metadata needs it).
const MAX_DEPTH: usize = 64;

/// Domain separation: a tthc signature can never be replayed as a signature of anything else.
const MESSAGE_TAG: &str = "tthc-signature-v1";

/// Why signing or verifying failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigningError {
    #[error("no signing key for {kind} `{id}`")]
    UnknownSigner { kind: SignerKind, id: String },
    #[error("no public key with id {key_id}")]
    UnknownKey { key_id: String },
    #[error("key {key_id} does not belong to {kind} `{id}`")]
    KeyNotOfSigner {
        key_id: String,
        kind: SignerKind,
        id: String,
    },
    #[error("the signature was made with key {record} but verified against key {given}")]
    KeyMismatch { record: String, given: String },
    #[error("`{0}` is not a document hash (64 lower-case hex digits)")]
    InvalidDocumentHash(String),
    #[error("the signature covers document {signed}, not {given}")]
    DocumentMismatch { signed: String, given: String },
    #[error(
        "the metadata was changed after signing: it hashes to {given}, the signature covers {signed}"
    )]
    MetadataMismatch { signed: String, given: String },
    #[error("the signature does not match: the document, metadata or signature was altered")]
    SignatureInvalid,
    #[error("the signature is not valid base64 of 64 bytes")]
    MalformedSignature,
    #[error("unsupported signature algorithm `{0}`")]
    UnsupportedAlgorithm(String),
    #[error("metadata cannot be encoded canonically: {0}")]
    Metadata(String),
    #[error("signatures out of order: {0}")]
    Order(String),
    #[error("not a certified copy: {0}")]
    NotACopy(String),
    #[error("key file {path}: {reason}")]
    KeyFile { path: String, reason: String },
    #[error("invalid key for {kind} `{id}`: {reason}")]
    InvalidKey {
        kind: SignerKind,
        id: String,
        reason: String,
    },
}

impl SigningError {
    /// A stable code for APIs and logs.
    pub fn code(&self) -> &'static str {
        match self {
            SigningError::UnknownSigner { .. } => "unknown_signer",
            SigningError::UnknownKey { .. } => "unknown_key",
            SigningError::KeyNotOfSigner { .. } => "key_not_of_signer",
            SigningError::KeyMismatch { .. } => "key_mismatch",
            SigningError::InvalidDocumentHash(_) => "invalid_hash",
            SigningError::DocumentMismatch { .. } => "document_mismatch",
            SigningError::MetadataMismatch { .. } => "metadata_mismatch",
            SigningError::SignatureInvalid => "signature_invalid",
            SigningError::MalformedSignature => "signature_malformed",
            SigningError::UnsupportedAlgorithm(_) => "unsupported_algorithm",
            SigningError::Metadata(_) => "invalid_metadata",
            SigningError::Order(_) => "signature_order",
            SigningError::NotACopy(_) => "not_a_certified_copy",
            SigningError::KeyFile { .. } => "key_file",
            SigningError::InvalidKey { .. } => "invalid_key",
        }
    }
}

/// Who signs: a person with authority, or the organization's seal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignerKind {
    Officer,
    Agency,
}

impl SignerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SignerKind::Officer => "officer",
            SignerKind::Agency => "agency",
        }
    }
}

impl std::fmt::Display for SignerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One signature of one document, self-describing and verifiable with the signer's public key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureRecord {
    pub signer_kind: SignerKind,
    /// The officer's id or the agency's code.
    pub signer_id: String,
    /// Fingerprint of the public key: hex of the first 16 bytes of its SHA-256.
    pub key_id: String,
    pub algorithm: String,
    /// The Ed25519 signature, base64 (standard alphabet, padded).
    pub signature: String,
    pub signed_at: DateTime<Utc>,
    /// SHA-256 of the signed document's content, hex.
    pub document_sha256: String,
    /// SHA-256 of the canonical JSON of the metadata signed with the document.
    pub covered: String,
    /// For a signature made after another (the organization's after the signer's): the
    /// SHA-256 of that record's canonical JSON, so this one covers it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub countersigns: Option<String>,
}

impl SignatureRecord {
    /// The SHA-256 of this whole record (signature included), as a later signature names it.
    pub fn fingerprint(&self) -> String {
        let value = serde_json::to_value(self).unwrap_or(Value::Null);
        sha256_hex(canonical_json(&value).unwrap_or_default().as_bytes())
    }

    /// The bytes the signature is made over.
    fn message(&self) -> Result<Vec<u8>, SigningError> {
        let body = json!({
            "tag": MESSAGE_TAG,
            "algorithm": self.algorithm,
            "signer_kind": self.signer_kind,
            "signer_id": self.signer_id,
            "key_id": self.key_id,
            "signed_at": self.signed_at.to_rfc3339_opts(SecondsFormat::Micros, true),
            "document_sha256": self.document_sha256,
            "covered": self.covered,
            "countersigns": self.countersigns,
        });
        Ok(canonical_json(&body)?.into_bytes())
    }
}

/// JSON with object keys sorted by their UTF-8 bytes and no whitespace: the same value always
/// gives the same text, whatever order its keys were built or parsed in. (serde_json's own
/// key order depends on a crate feature another dependency may switch on, so it is not relied
/// on here.)
pub fn canonical_json(value: &Value) -> Result<String, SigningError> {
    let mut out = String::new();
    write_canonical(value, &mut out, 0)?;
    Ok(out)
}

fn write_canonical(value: &Value, out: &mut String, depth: usize) -> Result<(), SigningError> {
    if depth > MAX_DEPTH {
        return Err(SigningError::Metadata(format!(
            "nested deeper than {MAX_DEPTH} levels"
        )));
    }
    let encode = |v: &dyn erased::Ser| v.json().map_err(SigningError::Metadata);
    match value {
        Value::Null | Value::Bool(_) | Value::Number(_) => out.push_str(&encode(value)?),
        Value::String(s) => out.push_str(&encode(s)?),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out, depth + 1)?;
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&encode(k)?);
                out.push(':');
                write_canonical(v, out, depth + 1)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

mod erased {
    pub trait Ser {
        fn json(&self) -> Result<String, String>;
    }
    impl<T: serde::Serialize + ?Sized> Ser for T {
        fn json(&self) -> Result<String, String> {
            serde_json::to_string(self).map_err(|e| e.to_string())
        }
    }
}

/// SHA-256 of the metadata's canonical JSON: what a signature's `covered` holds.
pub fn metadata_hash(metadata: &Value) -> Result<String, SigningError> {
    Ok(sha256_hex(canonical_json(metadata)?.as_bytes()))
}

/// The key id of a public key: hex of the first 16 bytes of its SHA-256.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..16])
}

fn checked_document(document_sha256: &str) -> Result<(), SigningError> {
    if is_sha256_hex(document_sha256) {
        Ok(())
    } else {
        Err(SigningError::InvalidDocumentHash(
            document_sha256.chars().take(80).collect(),
        ))
    }
}

/// Verifies one signature against the document, the metadata and the signer's public key.
/// The errors say which part does not match.
pub fn verify(
    record: &SignatureRecord,
    document_sha256: &str,
    metadata: &Value,
    key: &VerifyingKey,
) -> Result<(), SigningError> {
    if record.algorithm != ALGORITHM {
        return Err(SigningError::UnsupportedAlgorithm(
            record.algorithm.chars().take(40).collect(),
        ));
    }
    checked_document(document_sha256)?;
    let given_key = key_id(key);
    if record.key_id != given_key {
        return Err(SigningError::KeyMismatch {
            record: record.key_id.clone(),
            given: given_key,
        });
    }
    if record.document_sha256 != document_sha256 {
        return Err(SigningError::DocumentMismatch {
            signed: record.document_sha256.clone(),
            given: document_sha256.to_owned(),
        });
    }
    let covered = metadata_hash(metadata)?;
    if record.covered != covered {
        return Err(SigningError::MetadataMismatch {
            signed: record.covered.clone(),
            given: covered,
        });
    }
    let bytes = BASE64
        .decode(record.signature.as_bytes())
        .map_err(|_| SigningError::MalformedSignature)?;
    let signature = Signature::from_slice(&bytes).map_err(|_| SigningError::MalformedSignature)?;
    // Strict verification refuses malleable signatures and small-order keys.
    key.verify_strict(&record.message()?, &signature)
        .map_err(|_| SigningError::SignatureInvalid)
}

/// Signing keys of officers and agencies, and public keys of the signers this deployment
/// trusts. Secrets are never printed by `Debug`.
#[derive(Clone, Default)]
pub struct KeyRing {
    signing: BTreeMap<(SignerKind, String), SigningKey>,
    public: BTreeMap<(SignerKind, String), VerifyingKey>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("signers", &self.signing.keys().collect::<Vec<_>>())
            .field("trusted", &self.public.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The key file: hex-encoded 32-byte Ed25519 seeds by officer id and agency code, and hex
/// public keys of other signers to verify (other provinces' agencies, former officers).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    #[serde(default)]
    officers: BTreeMap<String, String>,
    #[serde(default)]
    agencies: BTreeMap<String, String>,
    #[serde(default)]
    trusted: TrustedKeys,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrustedKeys {
    #[serde(default)]
    officers: BTreeMap<String, String>,
    #[serde(default)]
    agencies: BTreeMap<String, String>,
}

fn decode_32(kind: SignerKind, id: &str, text: &str) -> Result<[u8; 32], SigningError> {
    let invalid = |reason: &str| SigningError::InvalidKey {
        kind,
        id: id.to_owned(),
        reason: reason.to_owned(),
    };
    let bytes = hex::decode(text.trim()).map_err(|_| invalid("not hex"))?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| invalid("not 32 bytes (64 hex digits)"))
}

impl KeyRing {
    /// An empty key ring.
    pub fn new() -> KeyRing {
        KeyRing::default()
    }

    /// Reads a key file, JSON or YAML (by extension: `.yaml`/`.yml` is YAML, anything else
    /// JSON):
    ///
    /// ```yaml
    /// officers: { leader: "<64 hex digits: the Ed25519 seed>" }
    /// agencies: { "000.00.01.H59": "<64 hex digits>" }
    /// trusted:                       # public keys, to verify only
    ///   agencies: { "000.00.01.H29": "<64 hex digits: the public key>" }
    /// ```
    ///
    /// The file holds secrets: keep it readable by the service's user only.
    pub fn load(path: &Path) -> Result<KeyRing, SigningError> {
        let fail = |reason: String| SigningError::KeyFile {
            path: path.display().to_string(),
            reason,
        };
        let size = std::fs::metadata(path)
            .map_err(|e| fail(e.to_string()))?
            .len();
        if size > MAX_KEY_FILE_BYTES {
            return Err(fail(format!(
                "{size} bytes, over the limit of {MAX_KEY_FILE_BYTES}"
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        let yaml = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        );
        if yaml {
            KeyRing::from_yaml_str(&text).map_err(|e| match e {
                SigningError::KeyFile { reason, .. } => fail(reason),
                other => other,
            })
        } else {
            KeyRing::from_json_str(&text).map_err(|e| match e {
                SigningError::KeyFile { reason, .. } => fail(reason),
                other => other,
            })
        }
    }

    /// Parses the key file format of [`KeyRing::load`] from JSON text.
    pub fn from_json_str(text: &str) -> Result<KeyRing, SigningError> {
        let file: KeyFile = serde_json::from_str(text).map_err(|e| SigningError::KeyFile {
            path: "(json)".into(),
            reason: e.to_string(),
        })?;
        KeyRing::from_file(file)
    }

    /// Parses the key file format of [`KeyRing::load`] from YAML text.
    pub fn from_yaml_str(text: &str) -> Result<KeyRing, SigningError> {
        let file: KeyFile = serde_saphyr::from_str(text).map_err(|e| SigningError::KeyFile {
            path: "(yaml)".into(),
            reason: e.to_string(),
        })?;
        KeyRing::from_file(file)
    }

    fn from_file(file: KeyFile) -> Result<KeyRing, SigningError> {
        let mut ring = KeyRing::new();
        for (kind, keys) in [
            (SignerKind::Officer, &file.officers),
            (SignerKind::Agency, &file.agencies),
        ] {
            for (id, seed) in keys {
                ring.add_seed(kind, id, decode_32(kind, id, seed)?);
            }
        }
        for (kind, keys) in [
            (SignerKind::Officer, &file.trusted.officers),
            (SignerKind::Agency, &file.trusted.agencies),
        ] {
            for (id, public) in keys {
                let key =
                    VerifyingKey::from_bytes(&decode_32(kind, id, public)?).map_err(|_| {
                        SigningError::InvalidKey {
                            kind,
                            id: id.clone(),
                            reason: "not an Ed25519 public key".into(),
                        }
                    })?;
                ring.trust(kind, id, key)?;
            }
        }
        Ok(ring)
    }

    /// Adds a signing key from its 32-byte seed (its public key is trusted too).
    pub fn add_seed(&mut self, kind: SignerKind, id: &str, seed: [u8; 32]) {
        let key = SigningKey::from_bytes(&seed);
        self.public
            .insert((kind, id.to_owned()), key.verifying_key());
        self.signing.insert((kind, id.to_owned()), key);
    }

    /// Trusts a public key for verification only. A signer keeps one key here: replacing the
    /// key of a signer this ring signs for is refused.
    pub fn trust(
        &mut self,
        kind: SignerKind,
        id: &str,
        key: VerifyingKey,
    ) -> Result<(), SigningError> {
        if let Some(own) = self.signing.get(&(kind, id.to_owned()))
            && own.verifying_key() != key
        {
            return Err(SigningError::InvalidKey {
                kind,
                id: id.to_owned(),
                reason: "a different signing key is already held for this signer".into(),
            });
        }
        if key.is_weak() {
            return Err(SigningError::InvalidKey {
                kind,
                id: id.to_owned(),
                reason: "a weak (small-order) public key".into(),
            });
        }
        self.public.insert((kind, id.to_owned()), key);
        Ok(())
    }

    /// Fresh random keys for the given officers and agencies: for tests.
    pub fn generate_for_tests(officers: &[&str], agencies: &[&str]) -> KeyRing {
        let mut ring = KeyRing::new();
        for (kind, ids) in [
            (SignerKind::Officer, officers),
            (SignerKind::Agency, agencies),
        ] {
            for id in ids {
                ring.add_seed(kind, id, rand::random::<[u8; 32]>());
            }
        }
        ring
    }

    /// Keys derived from a passphrase, the same on every run: for demos and fixtures only,
    /// since anyone who knows the passphrase can sign.
    pub fn derived(passphrase: &str, officers: &[&str], agencies: &[&str]) -> KeyRing {
        let mut ring = KeyRing::new();
        for (kind, ids) in [
            (SignerKind::Officer, officers),
            (SignerKind::Agency, agencies),
        ] {
            for id in ids {
                let mut h = Sha256::new();
                // NUL separators keep ("a", "b c") and ("a b", "c") apart.
                for part in ["tthc-demo-key-v1", passphrase, kind.as_str(), id] {
                    h.update(part.as_bytes());
                    h.update([0u8]);
                }
                ring.add_seed(kind, id, h.finalize().into());
            }
        }
        ring
    }

    /// The public key of a signer, when trusted.
    pub fn public_key(&self, kind: SignerKind, id: &str) -> Option<VerifyingKey> {
        self.public.get(&(kind, id.to_owned())).copied()
    }

    /// Public keys as hex, in the `trusted` shape of the key file: what to hand to another
    /// system that verifies this one's signatures.
    pub fn public_keys_json(&self) -> Value {
        let mut officers = serde_json::Map::new();
        let mut agencies = serde_json::Map::new();
        for ((kind, id), key) in &self.public {
            let target = match kind {
                SignerKind::Officer => &mut officers,
                SignerKind::Agency => &mut agencies,
            };
            target.insert(id.clone(), Value::String(hex::encode(key.as_bytes())));
        }
        json!({ "officers": officers, "agencies": agencies })
    }

    fn make(
        &self,
        kind: SignerKind,
        id: &str,
        document_sha256: &str,
        metadata: &Value,
        countersigns: Option<String>,
        at: DateTime<Utc>,
    ) -> Result<SignatureRecord, SigningError> {
        checked_document(document_sha256)?;
        let key = self.signing.get(&(kind, id.to_owned())).ok_or_else(|| {
            SigningError::UnknownSigner {
                kind,
                id: id.to_owned(),
            }
        })?;
        // Microseconds, like the store: the time read back verifies exactly.
        let signed_at = DateTime::from_timestamp_micros(at.timestamp_micros()).unwrap_or(at);
        let mut record = SignatureRecord {
            signer_kind: kind,
            signer_id: id.to_owned(),
            key_id: key_id(&key.verifying_key()),
            algorithm: ALGORITHM.to_owned(),
            signature: String::new(),
            signed_at,
            document_sha256: document_sha256.to_owned(),
            covered: metadata_hash(metadata)?,
            countersigns,
        };
        let signature = key.sign(&record.message()?);
        record.signature = BASE64.encode(signature.to_bytes());
        Ok(record)
    }

    /// The competent officer's signature (người có thẩm quyền ký), the first one.
    pub fn sign_as_officer(
        &self,
        officer_id: &str,
        document_sha256: &str,
        metadata: &Value,
        at: DateTime<Utc>,
    ) -> Result<SignatureRecord, SigningError> {
        self.make(
            SignerKind::Officer,
            officer_id,
            document_sha256,
            metadata,
            None,
            at,
        )
    }

    /// The organization's seal-signature. After an officer's signature (`after`), it covers
    /// that signature, which must verify and precede it; without one (a certified copy), it
    /// stands alone.
    pub fn seal_as_agency(
        &self,
        agency_code: &str,
        document_sha256: &str,
        metadata: &Value,
        after: Option<&SignatureRecord>,
        at: DateTime<Utc>,
    ) -> Result<SignatureRecord, SigningError> {
        let countersigns = match after {
            None => None,
            Some(prior) => {
                if prior.signer_kind != SignerKind::Officer {
                    return Err(SigningError::Order(
                        "the organization seals after the signer's signature, not another seal"
                            .into(),
                    ));
                }
                // Never seal over a signature that does not hold.
                self.verify(prior, document_sha256, metadata)?;
                if prior.signed_at > at {
                    return Err(SigningError::Order(
                        "the seal cannot be dated before the signer's signature".into(),
                    ));
                }
                Some(prior.fingerprint())
            }
        };
        self.make(
            SignerKind::Agency,
            agency_code,
            document_sha256,
            metadata,
            countersigns,
            at,
        )
    }

    /// Signs as the officer, then seals as the agency: the two signatures of an issued result.
    pub fn sign_and_seal(
        &self,
        officer_id: &str,
        agency_code: &str,
        document_sha256: &str,
        metadata: &Value,
        at: DateTime<Utc>,
    ) -> Result<Vec<SignatureRecord>, SigningError> {
        let officer = self.sign_as_officer(officer_id, document_sha256, metadata, at)?;
        let agency =
            self.seal_as_agency(agency_code, document_sha256, metadata, Some(&officer), at)?;
        Ok(vec![officer, agency])
    }

    /// Verifies one signature with the public key this ring trusts for its signer.
    pub fn verify(
        &self,
        record: &SignatureRecord,
        document_sha256: &str,
        metadata: &Value,
    ) -> Result<(), SigningError> {
        let key = self
            .public_key(record.signer_kind, &record.signer_id)
            .ok_or_else(|| SigningError::UnknownKey {
                key_id: record.key_id.clone(),
            })?;
        if key_id(&key) != record.key_id {
            return Err(SigningError::KeyNotOfSigner {
                key_id: record.key_id.clone(),
                kind: record.signer_kind,
                id: record.signer_id.clone(),
            });
        }
        verify(record, document_sha256, metadata, &key)
    }

    /// Verifies a document's signatures in order: each one, and that they come as Decree
    /// 30/2020 has them: officers' signatures first, the organization's seal after, each
    /// later signature covering the one before it.
    pub fn verify_chain(
        &self,
        records: &[SignatureRecord],
        document_sha256: &str,
        metadata: &Value,
    ) -> Result<(), SigningError> {
        verify_chain_with(records, |record| {
            self.verify(record, document_sha256, metadata)
        })
    }
}

/// The order checks of [`KeyRing::verify_chain`], each record checked by `check`.
fn verify_chain_with(
    records: &[SignatureRecord],
    mut check: impl FnMut(&SignatureRecord) -> Result<(), SigningError>,
) -> Result<(), SigningError> {
    if records.is_empty() {
        return Err(SigningError::Order(
            "the document carries no signature".into(),
        ));
    }
    let mut seen_seal = false;
    for (i, record) in records.iter().enumerate() {
        check(record)?;
        match record.signer_kind {
            SignerKind::Officer if seen_seal => {
                return Err(SigningError::Order(
                    "a signer's signature comes after the organization's seal".into(),
                ));
            }
            SignerKind::Officer => {}
            SignerKind::Agency => seen_seal = true,
        }
        let expected = i.checked_sub(1).map(|p| records[p].fingerprint());
        if record.countersigns != expected {
            return Err(SigningError::Order(format!(
                "signature {} does not follow the one before it",
                i + 1
            )));
        }
        if i > 0 && records[i - 1].signed_at > record.signed_at {
            return Err(SigningError::Order(format!(
                "signature {} is dated before the one it follows",
                i + 1
            )));
        }
    }
    Ok(())
}

/// Where a verifier finds the public keys it trusts for some signers: a configured ring, or
/// (development) keys derived for whichever signers are asked about.
pub trait TrustStore: Send + Sync {
    fn ring_for(&self, officers: &[&str], agencies: &[&str]) -> KeyRing;
}

impl TrustStore for KeyRing {
    fn ring_for(&self, _officers: &[&str], _agencies: &[&str]) -> KeyRing {
        self.clone()
    }
}

/// What checking a paper's signatures found, from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaperCheck {
    /// Every signature verifies with a trusted key, over this content and metadata, in order.
    Verified,
    /// A signature is made with a key this deployment does not trust (named by `key_id`).
    UntrustedKey,
    /// The paper carries no signature.
    Unsigned,
    /// The content or the metadata is not what was signed, or a signature does not hold.
    Altered,
}

impl PaperCheck {
    pub fn as_str(self) -> &'static str {
        match self {
            PaperCheck::Verified => "verified",
            PaperCheck::UntrustedKey => "untrusted_key",
            PaperCheck::Unsigned => "unsigned",
            PaperCheck::Altered => "altered",
        }
    }
}

/// The outcome of checking a paper's signatures, as recorded with its reuse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaperVerification {
    pub outcome: PaperCheck,
    /// The key that decided the outcome: the untrusted one, or the one that does not verify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// Why it is not verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// Who signed, as the records say: `officer:leader`, `agency:000.00.01.H59`.
    #[serde(default)]
    pub signers: Vec<String>,
    /// The officer who took an unverified paper after checking it (policy `confirm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed_by: Option<String>,
    /// Keys of officers' signatures not held here but covered by a trusted agency's seal.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vouched_by_seal: Vec<String>,
}

impl PaperVerification {
    fn new(outcome: PaperCheck, records: &[SignatureRecord]) -> PaperVerification {
        PaperVerification {
            outcome,
            key_id: None,
            problem: None,
            signers: records
                .iter()
                .map(|r| format!("{}:{}", r.signer_kind, r.signer_id))
                .collect(),
            confirmed_by: None,
            vouched_by_seal: Vec::new(),
        }
    }

    fn because(mut self, key_id: Option<&str>, problem: impl Into<String>) -> PaperVerification {
        self.key_id = key_id.map(str::to_owned);
        self.problem = Some(problem.into());
        self
    }
}

/// Checks the signatures a paper carries against the keys `trust` holds for its signers:
/// each covers `content_sha256` (the content as received) and `signed_metadata`, made with a
/// trusted key, in Decree 30/2020 order. `claimed` are fields the paper is listed with (owner,
/// result code, number…) that the signed metadata must agree with, so a listing cannot pass a
/// paper off as someone else's. Content or metadata that is not what was signed is `Altered`
/// whatever the keys; then a key not trusted is `UntrustedKey`.
pub fn verify_paper(
    trust: &dyn TrustStore,
    records: &[SignatureRecord],
    content_sha256: &str,
    signed_metadata: Option<&Value>,
    claimed: &[(&str, Option<&str>)],
) -> PaperVerification {
    if records.is_empty() {
        return PaperVerification::new(PaperCheck::Unsigned, records)
            .because(None, "the paper carries no signature");
    }
    let altered = |key: Option<&str>, why: String| {
        PaperVerification::new(PaperCheck::Altered, records).because(key, why)
    };
    if let Some(r) = records.iter().find(|r| r.document_sha256 != content_sha256) {
        return altered(
            Some(&r.key_id),
            format!(
                "the content hashes to {content_sha256}, the signature covers {}",
                r.document_sha256
            ),
        );
    }
    let Some(metadata) = signed_metadata else {
        return altered(None, "the metadata the signatures cover is missing".into());
    };
    for (field, value) in claimed {
        let signed = metadata.get(*field).and_then(Value::as_str);
        if let Some(v) = value
            && signed != Some(*v)
        {
            return altered(
                None,
                format!(
                    "the paper is listed with {field} `{v}`, the signed metadata says {}",
                    signed.map_or("nothing".to_owned(), |s| format!("`{s}`"))
                ),
            );
        }
    }
    let ids = |kind: SignerKind| -> Vec<&str> {
        records
            .iter()
            .filter(|r| r.signer_kind == kind)
            .map(|r| r.signer_id.as_str())
            .collect()
    };
    let ring = trust.ring_for(&ids(SignerKind::Officer), &ids(SignerKind::Agency));
    let trusted = |r: &SignatureRecord| {
        ring.public_key(r.signer_kind, &r.signer_id)
            .is_some_and(|k| key_id(&k) == r.key_id)
    };
    // An officer's signature whose key is not held here is vouched for by a later seal of a
    // trusted agency: the seal covers the officer's whole record (`countersigns`), and an
    // agency seals only over a signature that verifies (see `KeyRing::seal_as_agency`). So a
    // deployment needs other provinces' agency keys only, whose ids (agency codes) are unique.
    let mut vouched = Vec::new();
    for (i, r) in records.iter().enumerate() {
        if trusted(r) {
            continue;
        }
        let sealed_later = r.signer_kind == SignerKind::Officer
            && records[i + 1..]
                .iter()
                .any(|later| later.signer_kind == SignerKind::Agency && trusted(later));
        if sealed_later {
            vouched.push(r.key_id.clone());
            continue;
        }
        // Only a signature that cannot verify for want of a trusted key is `untrusted`; one
        // made with a trusted key that does not hold is `altered`.
        return PaperVerification::new(PaperCheck::UntrustedKey, records).because(
            Some(&r.key_id),
            format!(
                "{} `{}` signed with key {}, which this deployment does not trust",
                r.signer_kind, r.signer_id, r.key_id
            ),
        );
    }
    let chain = verify_chain_with(records, |r| {
        if trusted(r) {
            return ring.verify(r, content_sha256, metadata);
        }
        // Vouched for: it must claim the same content and metadata the seal covers.
        let covered = metadata_hash(metadata)?;
        if r.covered != covered {
            return Err(SigningError::MetadataMismatch {
                signed: r.covered.clone(),
                given: covered,
            });
        }
        Ok(())
    });
    match chain {
        Ok(()) => {
            let mut v = PaperVerification::new(PaperCheck::Verified, records);
            v.vouched_by_seal = vouched;
            v
        }
        Err(e) => altered(None, e.to_string()),
    }
}

/// An electronic certified copy (bản sao y điện tử): the copy's metadata and the agency's
/// signature over it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertifiedCopy {
    /// `{"kind": "electronic_certified_copy", "copy_of": {"sha256", "metadata"}, "certified_by",
    /// "number", "certified_at"}`.
    pub metadata: Value,
    pub signature: SignatureRecord,
}

impl CertifiedCopy {
    /// The hash of the content the copy certifies: the original's (an electronic copy of an
    /// electronic original has the same content).
    pub fn document_sha256(&self) -> &str {
        &self.signature.document_sha256
    }
}

/// Makes an electronic certified copy of an original (Decree 30/2020 art. 25.1c): metadata
/// naming the original and marked as a certified copy, signed by the agency alone.
pub fn certified_copy(
    keys: &KeyRing,
    agency_code: &str,
    original_sha256: &str,
    original_metadata: &Value,
    number: Option<&str>,
    at: DateTime<Utc>,
) -> Result<CertifiedCopy, SigningError> {
    checked_document(original_sha256)?;
    let at = DateTime::from_timestamp_micros(at.timestamp_micros()).unwrap_or(at);
    let metadata = json!({
        "kind": DocumentKind::ElectronicCertifiedCopy,
        "copy_of": { "sha256": original_sha256, "metadata": original_metadata },
        "certified_by": agency_code,
        "number": number,
        "certified_at": at.to_rfc3339_opts(SecondsFormat::Micros, true),
    });
    let signature = keys.seal_as_agency(agency_code, original_sha256, &metadata, None, at)?;
    Ok(CertifiedCopy {
        metadata,
        signature,
    })
}

/// Verifies a certified copy: marked as one, of the content it names, sealed by the agency it
/// names, with a key the ring trusts.
pub fn verify_certified_copy(keys: &KeyRing, copy: &CertifiedCopy) -> Result<(), SigningError> {
    let m = &copy.metadata;
    let kind = serde_json::to_value(DocumentKind::ElectronicCertifiedCopy).unwrap_or(Value::Null);
    if m.get("kind") != Some(&kind) {
        return Err(SigningError::NotACopy(
            "the metadata is not marked as an electronic certified copy".into(),
        ));
    }
    let Some(original) = m.pointer("/copy_of/sha256").and_then(Value::as_str) else {
        return Err(SigningError::NotACopy(
            "the metadata names no original".into(),
        ));
    };
    let s = &copy.signature;
    if s.signer_kind != SignerKind::Agency
        || m.get("certified_by").and_then(Value::as_str) != Some(s.signer_id.as_str())
    {
        return Err(SigningError::NotACopy(
            "a certified copy is signed by the agency that certified it".into(),
        ));
    }
    keys.verify(s, original, m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_at_every_level_and_drops_whitespace() {
        let a: Value =
            serde_json::from_str(r#"{"b": 1, "a": {"z": [1, {"y": 2, "x": "é"}], "c": null}}"#)
                .unwrap();
        assert_eq!(
            canonical_json(&a).unwrap(),
            r#"{"a":{"c":null,"z":[1,{"x":"é","y":2}]},"b":1}"#
        );
    }

    fn signed_paper() -> (KeyRing, Vec<SignatureRecord>, String, Value) {
        let ring = KeyRing::generate_for_tests(&["leader"], &["000.00.01.H59"]);
        let sha = sha256_hex(b"phieu");
        let metadata = json!({"owner_id": "001099012345", "result_code": "KQ.LLTP.01"});
        let records = ring
            .sign_and_seal("leader", "000.00.01.H59", &sha, &metadata, Utc::now())
            .unwrap();
        (ring, records, sha, metadata)
    }

    #[test]
    fn a_paper_verifies_with_the_signers_keys_and_each_failure_is_named() {
        let (ring, records, sha, metadata) = signed_paper();
        let claimed = [("owner_id", Some("001099012345"))];
        let check =
            |trust: &KeyRing, records: &[SignatureRecord], claimed: &[(&str, Option<&str>)]| {
                verify_paper(trust, records, &sha, Some(&metadata), claimed)
            };
        assert_eq!(
            check(&ring, &records, &claimed).outcome,
            PaperCheck::Verified
        );
        // Verifying needs only the public keys.
        let public =
            KeyRing::from_json_str(&json!({"trusted": ring.public_keys_json()}).to_string())
                .unwrap();
        assert_eq!(
            check(&public, &records, &claimed).outcome,
            PaperCheck::Verified
        );

        // Listed as another owner's: altered, whatever the keys.
        let other = check(&ring, &records, &[("owner_id", Some("079088001234"))]);
        assert_eq!(other.outcome, PaperCheck::Altered, "{other:?}");
        // A signature that does not hold under a trusted key: altered.
        let mut forged = records.clone();
        forged[1].signature = records[0].signature.clone();
        assert_eq!(check(&ring, &forged, &claimed).outcome, PaperCheck::Altered);
        // The same signer names, another province's keys: untrusted, naming the first key.
        let stranger = KeyRing::generate_for_tests(&["leader"], &["000.00.01.H59"]);
        let untrusted = check(&stranger, &records, &claimed);
        assert_eq!(untrusted.outcome, PaperCheck::UntrustedKey);
        assert_eq!(
            untrusted.key_id.as_deref(),
            Some(records[0].key_id.as_str())
        );
        assert_eq!(
            check(&KeyRing::new(), &records, &claimed).outcome,
            PaperCheck::UntrustedKey
        );
        assert_eq!(check(&ring, &[], &claimed).outcome, PaperCheck::Unsigned);
        // The agency's key alone: its seal vouches for the officer's signature.
        let agency_only = KeyRing::from_json_str(
            &json!({"trusted": {"agencies": ring.public_keys_json()["agencies"]}}).to_string(),
        )
        .unwrap();
        let vouched = check(&agency_only, &records, &claimed);
        assert_eq!(vouched.outcome, PaperCheck::Verified, "{vouched:?}");
        assert_eq!(vouched.vouched_by_seal, vec![records[0].key_id.clone()]);
        // ... but not an officer's record the seal does not cover.
        let mut swapped = records.clone();
        swapped[0] = ring
            .sign_as_officer(
                "leader",
                &sha,
                &json!({"owner_id": "079088001234"}),
                Utc::now(),
            )
            .unwrap();
        assert_eq!(
            check(&agency_only, &swapped, &claimed).outcome,
            PaperCheck::Altered
        );
        // The officer's key alone does not verify the seal.
        let officer_only = KeyRing::from_json_str(
            &json!({"trusted": {"officers": ring.public_keys_json()["officers"]}}).to_string(),
        )
        .unwrap();
        let seal = check(&officer_only, &records, &claimed);
        assert_eq!(seal.outcome, PaperCheck::UntrustedKey);
        assert_eq!(seal.key_id.as_deref(), Some(records[1].key_id.as_str()));
        // Other content than was signed.
        let other_content = verify_paper(
            &ring,
            &records,
            &sha256_hex(b"x"),
            Some(&metadata),
            &claimed,
        );
        assert_eq!(other_content.outcome, PaperCheck::Altered);
        assert_eq!(
            verify_paper(&ring, &records, &sha, None, &claimed).outcome,
            PaperCheck::Altered
        );
    }

    #[test]
    fn canonical_json_refuses_absurd_nesting() {
        let mut v = json!(1);
        for _ in 0..100 {
            v = json!([v]);
        }
        assert!(matches!(canonical_json(&v), Err(SigningError::Metadata(_))));
    }
}
