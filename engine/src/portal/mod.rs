//! Connector to the National Public Service Portal (Cổng DVCQG).
//!
//! The portal publishes no API for its Kho DL, so tthc speaks its own documented contract
//! (`docs/portal-api.md`), modelled on the real `DongBoHoSoMC` service; a real deployment puts an
//! adapter between that contract and the portal, and `tthc portal-sim` implements it for tests
//! and demos. This module holds:
//!
//! - [`wire`]: the contract's JSON types, kept apart from the engine's own types so the engine
//!   can change without changing what goes over the wire;
//! - the mapping from a [`Dossier`] to those types ([`sync_payload`], [`submitted_file`],
//!   [`supplement_rounds`], [`paper_metadata`]);
//! - [`PortalClient`]: token auth, timeouts, `Idempotency-Key` on every write, typed errors;
//!   (`client.rs`; the mapping is `mapping.rs`, the hooks `hook.rs`)
//! - the hooks `portal.sync_dossier` ([`PortalSyncHook`]) and `portal.push_result`
//!   ([`PortalPushHook`]). Both run as engine jobs, outside any transaction; every attempt of a
//!   job carries the same idempotency key, so a retry after a lost answer changes nothing twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use chrono::{DateTime, Datelike, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Asia::Ho_Chi_Minh;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap};
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::calendar::Calendar;
use crate::definition::{Duration as Period, ResultCatalog, Validity};
use crate::dossier::{
    DocumentRef, Dossier, Event, EventRecord, HookOutcome, OnlineLevel, Signature, Status,
};
use crate::engine::{HookFuture, HookHandler, HookRequest};
use crate::runtime::CompiledProcedure;
use crate::store::Store;

/// The header a write carries so the portal applies it at most once.
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";
/// The header carrying the SHA-256 (hex) of a paper's content on download.
pub const CONTENT_SHA256: &str = "X-Content-SHA256";
/// `yyyyMMddHHmmss`, the portal's time format, always in Asia/Ho_Chi_Minh.
pub const TIME_FORMAT: &str = "%Y%m%d%H%M%S";
/// Validity of a paper when neither the procedure nor the result catalog gives one
/// (the default of real one-stop systems).
pub const DEFAULT_VALIDITY: Validity = Validity::For(Period::Months(6));

mod client;
mod hook;
mod mapping;
pub mod wire;

#[allow(unused_imports)]
pub use client::*;
#[allow(unused_imports)]
pub use hook::*;
#[allow(unused_imports)]
pub use mapping::*;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dossier::{Channel, Owner, OwnerId};
    use chrono::TimeZone;

    fn at(y: i32, m: u32, d: u32, h: u32, min: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, min, 0).unwrap()
    }

    fn doc(provenance: Option<Value>) -> DocumentRef {
        DocumentRef {
            id: "doc-1".into(),
            component: "phieu_lltp".into(),
            name: "Phiếu LLTP số 1".into(),
            kind: None,
            sha256: "ab".repeat(32),
            size: 10,
            content_type: "application/pdf".into(),
            provenance,
        }
    }

    fn dossier() -> Dossier {
        let filed = crate::dossier::Event::Filed {
            code: "000.00.01.H59-260302-0001".into(),
            procedure_code: "2.000488".into(),
            procedure_version: 1,
            procedure_name: "Cấp Phiếu lý lịch tư pháp".into(),
            agency_code: "000.00.01.H59".into(),
            competent_agency: None,
            online_level: None,
            owner: Box::new(Owner {
                id: OwnerId::parse("001099012345").unwrap(),
                name: "Nguyễn Văn An".into(),
                email: None,
                phone: None,
            }),
            channel: Channel::Online,
            data: BTreeMap::new(),
            documents: vec![doc(None)],
        };
        Dossier::from_filed(at(2026, 3, 2, 1, 0), &filed).unwrap()
    }

    #[test]
    fn times_are_written_in_hanoi_time_to_the_second() {
        // 17:30 UTC is 00:30 the next day in Hà Nội (UTC+7).
        let t = Utc.with_ymd_and_hms(2026, 3, 2, 17, 30, 5).unwrap();
        assert_eq!(portal_time(t), "20260303003005");
        assert_eq!(parse_portal_time("20260303003005"), Some(t));
        for bad in [
            "2026030300300",
            "202603030030051",
            "20261303003005",
            "2026-03-03T00:",
            "20260230000000",
        ] {
            assert_eq!(parse_portal_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn status_channel_and_owner_type_use_the_portal_codes() {
        let mut d = dossier();
        let p = sync_payload(&d, "Lý lịch tư pháp", Vec::new(), None);
        assert_eq!(
            (p.status, p.channel, p.owner.owner_type),
            (1, 2, 1),
            "filed, online, a person"
        );
        assert_eq!(p.status_name, "Mới đăng ký");
        assert_eq!(p.sequence, 1);
        assert_eq!(p.filed_at, "20260302080000");
        assert_eq!(p.received_at, None);
        assert_eq!(p.online_level, None, "no level recorded, none sent");
        d.online_level = Some(OnlineLevel::Full);
        let p = sync_payload(&d, "Lý lịch tư pháp", Vec::new(), None);
        assert_eq!(p.online_level, Some(2), "fully online");
        d.online_level = None;

        d.status = Status::Returned;
        d.processed_at = Some(at(2026, 3, 10, 2, 0));
        d.returned_at = Some(at(2026, 3, 11, 3, 0));
        std::sync::Arc::make_mut(&mut d.owner).id = OwnerId::parse("0101234567").unwrap();
        d.channel = Channel::Postal;
        let p = sync_payload(&d, "", Vec::new(), None);
        assert_eq!((p.status, p.channel, p.owner.owner_type), (10, 3, 2));
        assert_eq!(p.finished_at.as_deref(), Some("20260310090000"));
        assert_eq!(p.returned_at.as_deref(), Some("20260311100000"));

        // Stopped without a result: finished when it closed.
        d.processed_at = None;
        d.status = Status::Stopped;
        d.closed_at = Some(at(2026, 3, 4, 1, 0));
        assert_eq!(
            sync_payload(&d, "", Vec::new(), None)
                .finished_at
                .as_deref(),
            Some("20260304080000")
        );
    }

    #[test]
    fn reuse_flags_follow_the_provenance() {
        let plain = submitted_file(&doc(None));
        assert_eq!(
            (plain.digitized, plain.reused, plain.from_portal_khodl),
            (false, 0, false)
        );
        assert_eq!(plain.component_code, "phieu_lltp");

        let scanned = submitted_file(&doc(Some(json!({"source": "digitized"}))));
        assert_eq!((scanned.digitized, scanned.reused), (true, 0));

        // A result of another procedure taken from the portal's Kho DL replaces the component.
        let from_portal = submitted_file(&doc(Some(
            json!({"source": "portal_khodl", "result_code": "KQ.LLTP.01"}),
        )));
        assert_eq!(from_portal.reused, 2);
        assert_eq!(
            from_portal.replaced_by_result_code.as_deref(),
            Some("KQ.LLTP.01")
        );
        assert!(from_portal.from_portal_khodl);

        // A digitized paper (no result code) reused from the local Kho DL.
        let local = submitted_file(&doc(Some(json!({"source": "khodl", "digitized": true}))));
        assert_eq!(
            (local.digitized, local.reused, local.from_portal_khodl),
            (true, 1, false)
        );
        assert_eq!(local.replaced_by_result_code, None);

        // What the engine records when the owner consents to reuse a paper from the portal.
        let consented = submitted_file(&doc(Some(json!({
            "reused": true, "paper_id": "P", "result_code": "KQ.LLTP.01", "from_portal": true
        }))));
        assert_eq!(
            (
                consented.reused,
                consented.replaced_by_result_code.as_deref(),
                consented.from_portal_khodl
            ),
            (2, Some("KQ.LLTP.01"), true)
        );
        let local_reuse = submitted_file(&doc(Some(
            json!({"reused": true, "result_code": "KQ.LLTP.01", "from_portal": false}),
        )));
        assert_eq!(
            (local_reuse.reused, local_reuse.from_portal_khodl),
            (2, false)
        );

        // Explicit flags win; an out-of-range `reused` is ignored.
        let explicit = submitted_file(&doc(Some(json!({"reused": 1, "from_portal_khodl": true}))));
        assert_eq!((explicit.reused, explicit.from_portal_khodl), (1, true));
        let odd = submitted_file(&doc(Some(json!({"reused": 7}))));
        assert_eq!(odd.reused, 0);
    }

    #[test]
    fn supplement_rounds_carry_the_due_dates_around_them() {
        let rec = |seq: u64, t: DateTime<Utc>, event: Event| EventRecord {
            dossier: "D".into(),
            seq,
            at: t,
            actor_id: "x".into(),
            actor_name: "x".into(),
            event,
            prev_hash: String::new(),
            hash: String::new(),
        };
        let due1 = at(2026, 3, 16, 1, 0);
        let due2 = at(2026, 3, 23, 1, 0);
        let events = vec![
            rec(2, at(2026, 3, 2, 1, 0), Event::Received { due_at: due1 }),
            rec(
                3,
                at(2026, 3, 3, 2, 0),
                Event::SupplementRequested {
                    reason: "Thiếu CCCD".into(),
                    missing: vec!["giay_to_tuy_than".into()],
                    remaining_minutes: None,
                },
            ),
            rec(
                4,
                at(2026, 3, 10, 2, 0),
                Event::Supplemented {
                    data: BTreeMap::new(),
                    documents: Vec::new(),
                    due_at: Some(due2),
                },
            ),
            rec(
                5,
                at(2026, 3, 11, 2, 0),
                Event::SupplementRequested {
                    reason: "Ảnh mờ".into(),
                    missing: Vec::new(),
                    remaining_minutes: None,
                },
            ),
        ];
        let rounds = supplement_rounds(&events, 5);
        assert_eq!(rounds.len(), 2);
        assert_eq!(rounds[0].due_before.as_deref(), Some("20260316080000"));
        assert_eq!(rounds[0].supplemented_at.as_deref(), Some("20260310090000"));
        assert_eq!(rounds[0].due_after.as_deref(), Some("20260323080000"));
        assert_eq!(rounds[1].round, 2);
        assert_eq!(rounds[1].due_before.as_deref(), Some("20260323080000"));
        assert_eq!(rounds[1].supplemented_at, None);
        // A state read at seq 4 does not see the second round.
        assert_eq!(supplement_rounds(&events, 4).len(), 1);
    }

    #[test]
    fn papers_get_validity_names_and_a_note_without_a_document() {
        let mut d = dossier();
        let signed = at(2026, 1, 31, 3, 0);
        std::sync::Arc::make_mut(&mut d.signatures).push(Signature {
            result_code: "KQ.LLTP.01".into(),
            number: Some("123/2026/LLTP".into()),
            document: None,
            signer: "Lãnh đạo Sở".into(),
            at: signed,
        });
        let catalog: ResultCatalog = serde_json::from_value(json!({"results": [{
            "code": "KQ.LLTP.01", "name": "Phiếu lý lịch tư pháp số 1",
            "procedure": "2.000488", "default_validity": {"months": 6}
        }]}))
        .unwrap();
        let validity = result_validity(None, Some(&catalog), "KQ.LLTP.01");
        assert_eq!(validity, Validity::For(Period::Months(6)));
        let end = valid_until(signed, validity, None);
        let m = paper_metadata(&d, &d.signatures[0], end, Some(&catalog), None);
        assert_eq!(m.paper_id, "000.00.01.H59-260302-0001:KQ.LLTP.01");
        assert_eq!(m.name, "Phiếu lý lịch tư pháp số 1");
        assert_eq!(m.issued_at, "20260131100000");
        // 31 January + 6 months is 31 July.
        assert_eq!(m.valid_until.as_deref(), Some("20260731100000"));
        assert!(!m.permanent);
        assert!(m.note.is_some(), "a result without a document is noted");
        assert_eq!(m.owner_id, "001099012345");

        let permanent = paper_metadata(&d, &d.signatures[0], None, None, None);
        assert!(permanent.permanent);
        assert_eq!(permanent.valid_until, None);
        assert_eq!(
            permanent.name, "KQ.LLTP.01",
            "no catalog: the code names it"
        );
        // Unknown results fall back to six months.
        assert_eq!(result_validity(None, None, "KQ.X"), DEFAULT_VALIDITY);
        // 31 August + 6 months ends on the last day of February.
        let end = valid_until(at(2026, 8, 31, 3, 0), DEFAULT_VALIDITY, None).unwrap();
        assert_eq!(portal_time(end), "20270228100000");
        // With the calendar, the end is the local Kho DL's: months agree, working days count
        // office days only.
        let cal = Calendar::default_vietnam().unwrap();
        assert_eq!(
            valid_until(signed, DEFAULT_VALIDITY, Some(&cal)),
            valid_until(signed, DEFAULT_VALIDITY, None)
        );
        let ten = Validity::For(Period::WorkingDays(10));
        assert_eq!(
            valid_until(signed, ten, Some(&cal)),
            Some(cal.add(signed, Period::WorkingDays(10)))
        );
    }

    #[test]
    fn results_are_listed_in_the_sync_under_their_paper_ids() {
        let mut d = dossier();
        std::sync::Arc::make_mut(&mut d.signatures).push(Signature {
            result_code: "KQ.LLTP.01".into(),
            number: None,
            document: Some(doc(None)),
            signer: "Lãnh đạo".into(),
            at: at(2026, 3, 9, 3, 0),
        });
        let p = sync_payload(&d, "", Vec::new(), None);
        assert_eq!(p.results.len(), 1);
        assert_eq!(p.results[0].paper_id, paper_id(&d.code, "KQ.LLTP.01"));
        assert_eq!(p.results[0].sha256.as_deref(), Some(&*"ab".repeat(32)));
        assert_eq!(p.files.len(), 1);
    }

    #[test]
    fn errors_say_whether_to_retry() {
        let server = PortalError::Server {
            what: "x".into(),
            status: 503,
            code: "unavailable".into(),
            message: "down".into(),
        };
        assert!(server.is_retryable());
        let rejected = |status| PortalError::Rejected {
            what: "x".into(),
            status,
            code: "c".into(),
            message: "m".into(),
        };
        assert!(!rejected(422).is_retryable());
        assert!(rejected(429).is_retryable());
        assert!(
            PortalError::Timeout {
                what: "x".into(),
                timeout: Duration::from_secs(1)
            }
            .is_retryable()
        );
        assert!(
            !PortalError::Unauthorized {
                client_id: "c".into(),
                message: "m".into()
            }
            .is_retryable()
        );
        let HookOutcome::Failed { error } = failed("portal.x", "sync", &server) else {
            panic!("a failure")
        };
        assert!(
            error.contains("503") && error.ends_with("(retryable)"),
            "{error}"
        );
    }

    #[test]
    fn the_base_url_keeps_its_path_prefix_and_encodes_segments() {
        let c =
            PortalClient::new(PortalConfig::new("http://127.0.0.1:9/adapter", "a", "b")).unwrap();
        assert_eq!(
            c.url(&["khodl", "papers", "a b/c"]).as_str(),
            "http://127.0.0.1:9/adapter/khodl/papers/a%20b%2Fc"
        );
        assert!(PortalClient::new(PortalConfig::new("not a url", "a", "b")).is_err());
        assert!(PortalClient::new(PortalConfig::new("ftp://x/", "a", "b")).is_err());
    }
}
