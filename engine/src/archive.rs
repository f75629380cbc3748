//! Sealed streams: a settled dossier's events packed into one compressed archive.
//!
//! A completed dossier keeps every event of its life for auditors, and most of what a row per
//! event costs (the dossier code, actor and time repeated in every row, a 32-byte hash, the
//! index) is repetition. Once a dossier is settled (closed, no open task, no job left to run)
//! the sealer packs its events into one archive and deletes their rows:
//!
//! - `body`: the records (time, actor id, actor name, the payload exactly as stored), as a
//!   JSON array compressed with zstd. The sequence numbers are implicit (1..=`upto`), and the
//!   dossier code is the archive's key: neither is repeated.
//! - `checks`: the first [`CHECK_LEN`] bytes of each event's stored hash, in order. Verifying an
//!   archive recomputes the chain from the records and compares each event with its check, so
//!   an altered event is still found at its exact sequence number (an alteration whose hash
//!   happens to keep the same check, one chance in 2³², is found at the next event, whose
//!   recomputed hash then differs; the whole head catches it in any case).
//! - `dictionary`: the zstd dictionary the body was compressed with (0: none). Streams of one
//!   procedure repeat the same keys, step names and letter templates, which a dictionary
//!   made of earlier streams holds once: a returned judicial record dossier's 63 events
//!   take about 500 bytes with one, 2,700 without. Dictionaries are stored in the database and
//!   never change, so every archive stays readable.
//! - `head`: the whole stored hash of the last archived event, which the recomputed chain must
//!   end on, and which events appended after the seal chain to.
//!
//! The checks and head are copied from the stored hashes, never recomputed, so sealing cannot
//! hide an alteration made before it; the sealer also refuses to seal a stream that does not
//! verify. The hash chain itself is unchanged (see [`crate::audit`]).

use std::sync::Mutex;

use serde_json::value::RawValue;

use crate::audit;

/// Bytes kept of each archived event's hash.
pub const CHECK_LEN: usize = 4;

/// zstd level: with a dictionary, higher levels gain little (about 5% from 7 to 19) for
/// several times the work.
const LEVEL: i32 = 7;

/// The largest dictionary, and the most an archive may decompress to (a damaged
/// or forged body must not exhaust memory).
pub const DICTIONARY_SIZE: usize = 16 * 1024;
/// The fewest archives a dictionary is made from.
pub const MIN_SAMPLES: usize = 8;
const MAX_STREAM_BYTES: u64 = 64 * 1024 * 1024;

/// The zstd contexts for one dictionary (id 0: none), kept for reuse: creating a context
/// costs more than compressing a stream with it.
pub struct Dictionary {
    pub id: i64,
    compressor: Mutex<zstd::bulk::Compressor<'static>>,
    decompressor: Mutex<zstd::bulk::Decompressor<'static>>,
}

impl std::fmt::Debug for Dictionary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dictionary").field("id", &self.id).finish()
    }
}

impl Dictionary {
    /// Compression without a dictionary (id 0).
    pub fn none() -> Result<Dictionary, ArchiveError> {
        Ok(Dictionary {
            id: 0,
            compressor: Mutex::new(zstd::bulk::Compressor::new(LEVEL).map_err(zstd_error)?),
            decompressor: Mutex::new(zstd::bulk::Decompressor::new().map_err(zstd_error)?),
        })
    }

    /// A stored dictionary (`id` > 0) and its bytes.
    pub fn new(id: i64, bytes: &[u8]) -> Result<Dictionary, ArchiveError> {
        Ok(Dictionary {
            id,
            compressor: Mutex::new(
                zstd::bulk::Compressor::with_dictionary(LEVEL, bytes).map_err(zstd_error)?,
            ),
            decompressor: Mutex::new(
                zstd::bulk::Decompressor::with_dictionary(bytes).map_err(zstd_error)?,
            ),
        })
    }

    /// A dictionary made of earlier streams: the decompressed bodies of recent archives
    /// ([`records`]), oldest first, of which the last [`DICTIONARY_SIZE`] bytes are kept. zstd
    /// takes bytes without its magic number as raw content: history the next stream's matches
    /// may point into. For streams of the same procedures that does as well as a trained
    /// dictionary (measured: 448 against 464 B a judicial record stream), without the
    /// trainer's memory and CPU.
    pub fn from_streams(samples: &[Vec<u8>]) -> Vec<u8> {
        let all: Vec<u8> = samples.concat();
        let start = all.len().saturating_sub(DICTIONARY_SIZE);
        let mut bytes = all[start..].to_vec();
        // Never the magic number of a trained dictionary, which zstd would parse as one.
        if bytes.starts_with(&[0x37, 0xA4, 0x30, 0xEC]) {
            bytes.remove(0);
        }
        bytes
    }
}

fn zstd_error(e: std::io::Error) -> ArchiveError {
    ArchiveError::Unreadable(format!("zstd: {e}"))
}

/// One stored event as the store holds it: the payload is the exact stored text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub seq: u64,
    /// Microseconds since the epoch, as stored.
    pub at: i64,
    pub actor_id: String,
    pub actor_name: String,
    pub payload: String,
    /// The stored hash: all 32 bytes for a row, the first [`CHECK_LEN`] for an archived event.
    pub hash: Vec<u8>,
}

/// An archive as stored: events `1..=upto`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archive {
    pub upto: u64,
    pub head: Vec<u8>,
    pub checks: Vec<u8>,
    /// The dictionary `body` was compressed with; 0 for none.
    pub dictionary: i64,
    pub body: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("the stream to seal must start at event 1 and have no gaps (found {found} at {at})")]
    Gap { at: usize, found: u64 },
    #[error("nothing to seal")]
    Empty,
    #[error("the archive is unreadable: {0}")]
    Unreadable(String),
}

type Packed<'a> = (i64, &'a str, &'a str, &'a RawValue);
/// As read back: names may hold escapes, so they cannot always borrow from the text.
type Unpacked<'a> = (i64, String, String, &'a RawValue);

/// Packs a whole stream (events 1..=n with their stored hashes) into an archive, compressed
/// with `dictionary`.
pub fn pack(events: &[StoredEvent], dictionary: &Dictionary) -> Result<Archive, ArchiveError> {
    let last = events.last().ok_or(ArchiveError::Empty)?;
    let mut records: Vec<Packed<'_>> = Vec::with_capacity(events.len());
    let mut checks = Vec::with_capacity(events.len() * CHECK_LEN);
    for (i, e) in events.iter().enumerate() {
        if e.seq != i as u64 + 1 || e.hash.len() < CHECK_LEN {
            return Err(ArchiveError::Gap {
                at: i,
                found: e.seq,
            });
        }
        let payload: &RawValue = serde_json::from_str(&e.payload)
            .map_err(|err| ArchiveError::Unreadable(format!("event {}: {err}", e.seq)))?;
        records.push((e.at, &e.actor_id, &e.actor_name, payload));
        checks.extend_from_slice(&e.hash[..CHECK_LEN]);
    }
    let json = serde_json::to_vec(&records).map_err(|e| ArchiveError::Unreadable(e.to_string()))?;
    let body = dictionary
        .compressor
        .lock()
        .expect("compressor")
        .compress(&json)
        .map_err(zstd_error)?;
    Ok(Archive {
        upto: last.seq,
        head: last.hash.clone(),
        checks,
        dictionary: dictionary.id,
        body,
    })
}

/// The decompressed body of an archive: its records as JSON. `dictionary` must be the one
/// the archive names.
pub fn records(archive: &Archive, dictionary: &Dictionary) -> Result<Vec<u8>, ArchiveError> {
    if archive.dictionary != dictionary.id {
        return Err(ArchiveError::Unreadable(format!(
            "it was compressed with dictionary {}, not {}",
            archive.dictionary, dictionary.id
        )));
    }
    // The frame records its size; a damaged or forged one must not exhaust memory.
    let size = zstd::zstd_safe::get_frame_content_size(&archive.body)
        .ok()
        .flatten()
        .filter(|n| *n <= MAX_STREAM_BYTES)
        .ok_or_else(|| ArchiveError::Unreadable("not a zstd frame of a known size".into()))?;
    dictionary
        .decompressor
        .lock()
        .expect("decompressor")
        .decompress(&archive.body, usize::try_from(size).unwrap_or(0))
        .map_err(zstd_error)
}

/// The archived events, in order, each with its check as `hash`. `dictionary` must be the one
/// the archive names.
pub fn unpack(
    archive: &Archive,
    dictionary: &Dictionary,
) -> Result<Vec<StoredEvent>, ArchiveError> {
    let json = records(archive, dictionary)?;
    let records: Vec<Unpacked<'_>> =
        serde_json::from_slice(&json).map_err(|e| ArchiveError::Unreadable(e.to_string()))?;
    let n = records.len();
    if u64::try_from(n).ok() != Some(archive.upto) || archive.checks.len() != n * CHECK_LEN {
        return Err(ArchiveError::Unreadable(format!(
            "{n} events, {} check bytes, for events 1..={}",
            archive.checks.len(),
            archive.upto
        )));
    }
    Ok(records
        .into_iter()
        .zip(archive.checks.chunks_exact(CHECK_LEN))
        .enumerate()
        .map(
            |(i, ((at, actor_id, actor_name, payload), check))| StoredEvent {
                seq: i as u64 + 1,
                at,
                actor_id,
                actor_name,
                payload: payload.get().to_owned(),
                hash: check.to_vec(),
            },
        )
        .collect())
}

/// The full hashes of archived events, recomputed from the records (the archive keeps only
/// their checks), and the first event whose recomputed hash does not start with its check:
/// from there on the archive no longer holds what was sealed.
pub fn recompute_hashes(dossier: &str, events: &[StoredEvent]) -> (Vec<[u8; 32]>, Option<u64>) {
    let mut prev = audit::GENESIS.to_owned();
    let mut first_bad = None;
    let hashes = events
        .iter()
        .map(|e| {
            let digest = audit::chain_digest(
                &prev,
                &audit::canonical(
                    dossier,
                    e.seq,
                    audit::from_micros(e.at),
                    &e.actor_id,
                    &e.actor_name,
                    &e.payload,
                ),
            );
            if first_bad.is_none() && !digest.starts_with(&e.hash) {
                first_bad = Some(e.seq);
            }
            prev = hex::encode(digest);
            digest
        })
        .collect();
    (hashes, first_bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none() -> Dictionary {
        Dictionary::none().unwrap()
    }

    fn stream(n: u64) -> Vec<StoredEvent> {
        let mut prev = audit::GENESIS.to_owned();
        (1..=n)
            .map(|seq| {
                let at = 1_700_000_000_000_000 + seq as i64;
                // Stored payloads are kept byte for byte, spacing and escapes included; names
                // may need escapes too.
                let payload = format!("{{\"type\":\"x\",  \"n\":{seq},\"s\":\"a\\u00e9\\\"b\"}}");
                let hash = audit::chain_digest(
                    &prev,
                    &audit::canonical(
                        "D-1",
                        seq,
                        audit::from_micros(at),
                        "u",
                        "Nguyễn \"Văn\" A",
                        &payload,
                    ),
                );
                prev = hex::encode(hash);
                StoredEvent {
                    seq,
                    at,
                    actor_id: "u".into(),
                    actor_name: "Nguyễn \"Văn\" A".into(),
                    payload,
                    hash: hash.to_vec(),
                }
            })
            .collect()
    }

    #[test]
    fn an_archive_gives_back_every_record_byte_for_byte() {
        let events = stream(40);
        let archive = pack(&events, &none()).unwrap();
        assert_eq!(archive.upto, 40);
        assert_eq!(archive.head, events[39].hash);
        let back = unpack(&archive, &none()).unwrap();
        assert_eq!(back.len(), 40);
        for (a, b) in events.iter().zip(&back) {
            assert_eq!(
                (a.seq, a.at, &a.actor_id, &a.actor_name, &a.payload),
                (b.seq, b.at, &b.actor_id, &b.actor_name, &b.payload)
            );
            assert_eq!(&a.hash[..CHECK_LEN], b.hash.as_slice());
        }
        // Recomputing the chain gives the stored hashes again.
        let (hashes, bad) = recompute_hashes("D-1", &back);
        assert_eq!(bad, None);
        for (a, h) in events.iter().zip(hashes) {
            assert_eq!(a.hash.as_slice(), h.as_slice());
        }
    }

    #[test]
    fn an_altered_archived_event_is_found_at_its_sequence_number() {
        let events = stream(10);
        let mut back = unpack(&pack(&events, &none()).unwrap(), &none()).unwrap();
        back[6].payload = back[6].payload.replace("\"n\":7", "\"n\":8");
        let (hashes, bad) = recompute_hashes("D-1", &back);
        assert_eq!(bad, Some(7));
        assert_eq!(hashes[5].as_slice(), events[5].hash.as_slice());
    }

    #[test]
    fn a_stream_with_a_gap_or_a_damaged_body_is_refused() {
        let mut events = stream(5);
        events.remove(2);
        assert!(matches!(
            pack(&events, &none()),
            Err(ArchiveError::Gap { .. })
        ));
        let mut archive = pack(&stream(5), &none()).unwrap();
        archive.body.truncate(archive.body.len() / 2);
        assert!(matches!(
            unpack(&archive, &none()),
            Err(ArchiveError::Unreadable(_))
        ));
        let mut archive = pack(&stream(5), &none()).unwrap();
        archive.checks.pop();
        assert!(matches!(
            unpack(&archive, &none()),
            Err(ArchiveError::Unreadable(_))
        ));
    }

    #[test]
    fn a_dictionary_made_of_earlier_streams_shrinks_the_next_ones_and_is_needed_to_read_them() {
        let samples: Vec<Vec<u8>> = (0..64)
            .map(|n| records(&pack(&stream(30 + n % 7), &none()).unwrap(), &none()).unwrap())
            .collect();
        let bytes = Dictionary::from_streams(&samples);
        assert!(bytes.len() <= DICTIONARY_SIZE);
        let dictionary = Dictionary::new(1, &bytes).unwrap();
        let events = stream(40);
        let plain = pack(&events, &none()).unwrap();
        let small = pack(&events, &dictionary).unwrap();
        assert_eq!(small.dictionary, 1);
        assert!(
            small.body.len() * 2 < plain.body.len(),
            "{} B with the dictionary, {} B without",
            small.body.len(),
            plain.body.len()
        );
        let back = unpack(&small, &dictionary).unwrap();
        assert_eq!(back, unpack(&plain, &none()).unwrap());
        assert!(matches!(
            unpack(&small, &none()),
            Err(ArchiveError::Unreadable(_))
        ));
        let other = Dictionary::new(2, &bytes).unwrap();
        assert!(matches!(
            unpack(&small, &other),
            Err(ArchiveError::Unreadable(_))
        ));
    }
}
