//! The hash chain over each dossier's events, and its verification.
//!
//! Each stored event carries `hash = SHA-256(prev_hash || canonical(record))`, where the
//! canonical form is the JSON of the record's fields with object keys sorted and no
//! whitespace. The first event's `prev_hash` is 64 zeros. Changing, removing or reordering
//! any stored event breaks the chain at that event.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::dossier::Event;

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The canonical bytes of an event record, without its hashes.
pub fn canonical(
    dossier: &str,
    seq: u64,
    at: DateTime<Utc>,
    actor_id: &str,
    actor_name: &str,
    event: &Value,
) -> Vec<u8> {
    // serde_json's map is ordered by key (no `preserve_order` feature), so this is canonical.
    let record = json!({
        "dossier": dossier,
        "seq": seq,
        "at": at.timestamp_micros(),
        "actor_id": actor_id,
        "actor_name": actor_name,
        "event": event,
    });
    serde_json::to_vec(&record).unwrap_or_default()
}

pub fn chain(prev_hash: &str, canonical: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(canonical);
    hex::encode(h.finalize())
}

/// The JSON an event is stored as.
pub fn event_json(event: &Event) -> Value {
    serde_json::to_value(event).unwrap_or(Value::Null)
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

/// Verifies one stream given as (seq, at, actor id, actor name, stored payload, prev hash,
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

    /// Checks the next stored event. Once a stream is broken, later events are not judged.
    #[allow(clippy::too_many_arguments)]
    pub fn next(
        &mut self,
        seq: u64,
        at: DateTime<Utc>,
        actor_id: &str,
        actor_name: &str,
        payload: &str,
        prev_hash: &str,
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
        } else if prev_hash != self.prev {
            Some("its link to the previous event does not match: an earlier event was altered or removed".to_owned())
        } else {
            match serde_json::from_str::<Value>(payload) {
                Err(e) => Some(format!("its payload is not valid JSON: {e}")),
                Ok(v) => {
                    let computed = chain(
                        prev_hash,
                        &canonical(&self.dossier, seq, at, actor_id, actor_name, &v),
                    );
                    (computed != hash).then(|| {
                        "its content does not match its hash: the event was altered".to_owned()
                    })
                }
            }
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
