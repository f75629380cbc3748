//! The hash chain over each dossier's events, and its verification.
//!
//! Each stored event carries `hash = SHA-256(prev_hash || canonical(record))`, where
//! `prev_hash` is the previous event's hash in lowercase hex (64 zeros for the first event)
//! and the canonical form is the record's fields, length-prefixed, with the event's JSON
//! exactly as stored. Hashing the stored bytes (rather than re-encoding parsed JSON) makes
//! verification a pass of SHA-256 over the table. The store keeps each hash as 32 bytes and
//! not `prev_hash` (the row before holds it). Changing, removing or reordering any stored
//! event breaks the chain at that event.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::dossier::Event;

/// A time as events store it: microseconds since the Unix epoch.
pub fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub fn from_micros(m: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(m).unwrap_or_default()
}

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The canonical bytes of an event record, without its hashes: seq and time as big-endian
/// integers, then the dossier, the actor and the stored payload, each prefixed by its length.
pub fn canonical(
    dossier: &str,
    seq: u64,
    at: DateTime<Utc>,
    actor_id: &str,
    actor_name: &str,
    payload: &str,
) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(32 + dossier.len() + actor_id.len() + actor_name.len() + payload.len());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&at.timestamp_micros().to_be_bytes());
    for part in [dossier, actor_id, actor_name, payload] {
        out.extend_from_slice(&(part.len() as u64).to_be_bytes());
        out.extend_from_slice(part.as_bytes());
    }
    out
}

/// The hash of a record chained to the previous one (`prev_hash` in lowercase hex), as stored.
pub fn chain_digest(prev_hash: &str, canonical: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(canonical);
    h.finalize().into()
}

/// [`chain_digest`] in lowercase hex, as the next record chains to it and the API shows it.
pub fn chain(prev_hash: &str, canonical: &[u8]) -> String {
    hex::encode(chain_digest(prev_hash, canonical))
}

/// The JSON text an event is stored as, and its type name.
pub fn event_text(event: &Event) -> (String, String) {
    let text = serde_json::to_string(event).unwrap_or_default();
    // Internally tagged: the type is the first field.
    let kind = text
        .strip_prefix("{\"type\":\"")
        .and_then(|rest| rest.split('"').next())
        .map_or_else(|| event.type_name(), str::to_owned);
    (text, kind)
}

/// The first place a dossier's chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainBreak {
    pub dossier: String,
    pub seq: u64,
    pub problem: String,
}

/// The outcome of verifying chains.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub dossiers: u64,
    pub events: u64,
    pub breaks: Vec<ChainBreak>,
}

impl VerifyReport {
    pub fn is_intact(&self) -> bool {
        self.breaks.is_empty()
    }
}

/// Verifies one stream given as (seq, at, actor id, actor name, stored payload,
/// hash), in order. Returns the first break.
pub struct StreamVerifier {
    dossier: String,
    expected_seq: u64,
    prev: String,
    broken: bool,
}

impl StreamVerifier {
    pub fn new(dossier: &str) -> StreamVerifier {
        StreamVerifier {
            dossier: dossier.to_owned(),
            expected_seq: 1,
            prev: GENESIS.to_owned(),
            broken: false,
        }
    }

    /// A verifier for the events after `seq`, whose stored hash is `head` (a sealed archive's).
    pub fn after(dossier: &str, seq: u64, head: &str) -> StreamVerifier {
        StreamVerifier {
            dossier: dossier.to_owned(),
            expected_seq: seq + 1,
            prev: head.to_owned(),
            broken: false,
        }
    }

    /// Checks the next stored event. Once a stream is broken, later events are not judged.
    pub fn next(
        &mut self,
        seq: u64,
        at: DateTime<Utc>,
        actor_id: &str,
        actor_name: &str,
        payload: &str,
        hash: &str,
    ) -> Option<ChainBreak> {
        if self.broken {
            return None;
        }
        let problem = if seq != self.expected_seq {
            Some(format!(
                "expected event {} here, found {seq}: an event is missing or reordered",
                self.expected_seq
            ))
        } else {
            let computed = chain(
                &self.prev,
                &canonical(&self.dossier, seq, at, actor_id, actor_name, payload),
            );
            (computed != hash)
                .then(|| "its content does not match its hash: the event was altered".to_owned())
        };
        self.expected_seq = seq + 1;
        self.prev = hash.to_owned();
        problem.map(|problem| {
            self.broken = true;
            ChainBreak {
                dossier: self.dossier.clone(),
                seq,
                problem,
            }
        })
    }
}
