//! The local Kho DL, its blob store, signatures, and the `khodl.save` hook inside the engine.

use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Duration, TimeZone, Utc};
use engine::HookRequest;
use engine::calendar::Calendar;
use engine::definition::{Duration as Period, Loader, LoaderConfig, ResultCatalog};
use engine::dossier::{Command, DocumentRef, HookOutcome, JobState, OwnerId, Status};
use engine::khodl::{
    Approval, BlobError, BlobStore, Digitization, KhoDl, KhoDlError, KhoDlSaveHook, NewPaper,
    PROVENANCE_SIGNATURES, PROVENANCE_SIGNED_METADATA, PaperFile, PaperFilter, PaperKind,
    PaperValidity, Provenance, Visibility, result_paper_id, sha256_hex,
};
use engine::signing::{
    self, KeyRing, SignatureRecord, SignerKind, SigningError, certified_copy, verify_certified_copy,
};
use engine::store::Store;
use serde_json::{Value, json};

use crate::engine_support::*;
use crate::support::repo_root;

// ---------------------------------------------------------------------------------------------
// Blob store

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn blob_round_trip_under_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = BlobStore::open(dir.path().join("blobs")).unwrap();
    let content = "Phiếu lý lịch tư pháp số 1".as_bytes();
    let hash = blobs.put(content).unwrap();
    assert_eq!(hash, sha256_hex(content));
    assert!(blobs.contains(&hash).unwrap());
    assert_eq!(blobs.get(&hash).unwrap().as_deref(), Some(content));
    let path = dir
        .path()
        .join("blobs")
        .join(&hash[0..2])
        .join(&hash[2..4])
        .join(&hash);
    assert!(path.is_file(), "content-addressed path {}", path.display());

    let missing = sha256_hex(b"never stored");
    assert!(!blobs.contains(&missing).unwrap());
    assert_eq!(blobs.get(&missing).unwrap(), None);
}

#[test]
fn blob_same_content_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = BlobStore::open(dir.path()).unwrap();
    let a = blobs.put(b"the same scan").unwrap();
    let b = blobs.put(b"the same scan").unwrap();
    assert_eq!(a, b);
    let c = blobs.put(b"another scan").unwrap();
    assert_ne!(a, c);
    let files = files_under(dir.path());
    assert_eq!(
        files.len(),
        2,
        "one file per content, no temp files left: {files:?}"
    );
}

#[test]
fn blob_refuses_names_that_are_not_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = BlobStore::open(dir.path().join("blobs")).unwrap();
    // A file beside the store that a path-based lookup could reach.
    std::fs::write(dir.path().join("secret"), b"not yours").unwrap();
    let upper = sha256_hex(b"x").to_uppercase();
    for bad in [
        "../../etc/passwd",
        "../secret",
        "/etc/passwd",
        "",
        upper.as_str(),
        &format!("{}/..", &sha256_hex(b"x")[..61]),
    ] {
        assert!(
            matches!(blobs.get(bad), Err(BlobError::InvalidHash(_))),
            "get({bad:?})"
        );
        assert!(
            matches!(blobs.contains(bad), Err(BlobError::InvalidHash(_))),
            "contains({bad:?})"
        );
    }
    let e = blobs.get("../../etc/passwd").unwrap_err();
    assert_eq!(
        e.to_string(),
        "`../../etc/passwd` is not a sha-256 hash (64 lower-case hex digits)"
    );
}

#[test]
fn blob_corruption_is_detected_on_read_and_repaired_by_a_new_put() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = BlobStore::open(dir.path()).unwrap();
    let hash = blobs.put(b"signed result").unwrap();
    let path = dir.path().join(&hash[0..2]).join(&hash[2..4]).join(&hash);
    std::fs::write(&path, b"signed resulT").unwrap();
    match blobs.get(&hash) {
        Err(BlobError::Corrupt { sha256, actual }) => {
            assert_eq!(sha256, hash);
            assert_eq!(actual, sha256_hex(b"signed resulT"));
        }
        other => panic!("corruption not reported: {other:?}"),
    }
    assert_eq!(blobs.put(b"signed result").unwrap(), hash);
    assert_eq!(
        blobs.get(&hash).unwrap().as_deref(),
        Some(&b"signed result"[..])
    );
}

#[test]
fn blob_size_is_limited() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = BlobStore::open(dir.path()).unwrap().with_max_size(8);
    assert!(blobs.put(b"12345678").is_ok());
    assert!(matches!(
        blobs.put(b"123456789"),
        Err(BlobError::TooLarge { size: 9, limit: 8 })
    ));
    assert!(
        files_under(dir.path()).len() == 1,
        "nothing written for the refused one"
    );
}

// ---------------------------------------------------------------------------------------------
// Kho DL

const OTHER_OWNER: &str = "001088000111";

fn at(y: i32, m: u32, d: u32) -> DateTime<Utc> {
    // 09:00 in Hà Nội.
    Utc.with_ymd_and_hms(y, m, d, 2, 0, 0).unwrap()
}

async fn khodl(dir: &tempfile::TempDir) -> KhoDl {
    let store = Store::open(&db_url(dir).await).await.unwrap();
    KhoDl::new(store, Arc::new(Calendar::default_vietnam().unwrap()))
}

fn owner(id: &str) -> OwnerId {
    OwnerId::parse(id).unwrap()
}

fn paper(id: &str, owner_id: &str, paper_type: &str, issued_at: DateTime<Utc>) -> NewPaper {
    NewPaper {
        id: id.into(),
        code: format!("{owner_id}.{paper_type}.{id}"),
        national_code: None,
        name: format!("Giấy tờ {paper_type}"),
        owner: owner(owner_id),
        owner_name: "Nguyễn Văn An".into(),
        paper_type: paper_type.into(),
        number: Some("123/2026".into()),
        issued_at,
        issuing_agency: "Sở Tư pháp tỉnh Hưng Yên".into(),
        signer: Some("Trần Văn Ký".into()),
        summary: None,
        validity: None,
        scope: Some("Toàn quốc".into()),
        kind: PaperKind::Result,
        digitized: None,
        file: Some(PaperFile {
            sha256: sha256_hex(id.as_bytes()),
            size: 1234,
            content_type: "application/pdf".into(),
        }),
        dossier_code: Some("000.00.01.H59-260302-0001".into()),
        procedure_code: Some("2.000488".into()),
        field: Some("Lý lịch tư pháp".into()),
        approval: Approval::Approved,
        hidden: false,
        provenance: Provenance::IssuedHere,
        provenance_detail: None,
        signatures: Vec::new(),
    }
}

fn ids(papers: &[engine::khodl::Paper]) -> Vec<&str> {
    papers.iter().map(|p| p.id.as_str()).collect()
}

#[tokio::test]
async fn khodl_save_get_and_list_by_result_code() {
    let dir = tempfile::tempdir().unwrap();
    let k = khodl(&dir).await;
    let me = owner(CITIZEN_ID);
    let now = at(2026, 3, 2);
    let saved = k
        .save(paper("p1", CITIZEN_ID, "KQ.LLTP.01", at(2026, 2, 1)), now)
        .await
        .unwrap();
    assert!(saved.created);
    k.save(paper("p2", CITIZEN_ID, "KQ.HT.KS", at(2026, 1, 1)), now)
        .await
        .unwrap();
    k.save(paper("p3", CITIZEN_ID, "KQ.LLTP.02", at(2026, 2, 15)), now)
        .await
        .unwrap();

    let got = k
        .get(&me, "p1", Visibility::OwnerView)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, saved.paper, "what is read back is what was saved");
    assert_eq!(got.paper_type, "KQ.LLTP.01");
    assert_eq!(got.number.as_deref(), Some("123/2026"));
    assert_eq!(got.approval, Approval::Approved);

    let all = k.list(&me, &PaperFilter::default()).await.unwrap();
    assert_eq!(ids(&all), ["p3", "p1", "p2"], "newest first");
    let lltp = k
        .list(
            &me,
            &PaperFilter::default().result_codes(&["KQ.LLTP.01", "KQ.LLTP.02"]),
        )
        .await
        .unwrap();
    assert_eq!(ids(&lltp), ["p3", "p1"]);
    let one = k
        .list(&me, &PaperFilter::default().result_codes(&["KQ.LLTP.01"]))
        .await
        .unwrap();
    assert_eq!(ids(&one), ["p1"]);
}

#[tokio::test]
async fn khodl_saving_the_same_id_twice_stores_one_paper() {
    let dir = tempfile::tempdir().unwrap();
    let k = khodl(&dir).await;
    let me = owner(CITIZEN_ID);
    let p = paper("p1", CITIZEN_ID, "KQ.LLTP.01", at(2026, 2, 1));
    let first = k.save(p.clone(), at(2026, 3, 2)).await.unwrap();
    let again = k.save(p.clone(), at(2026, 3, 3)).await.unwrap();
    assert!(first.created && !again.created);
    assert_eq!(again.paper, first.paper, "the stored paper is unchanged");
    assert_eq!(k.list(&me, &PaperFilter::default()).await.unwrap().len(), 1);

    let mut changed = p.clone();
    changed.number = Some("999/2026".into());
    let e = k.save(changed, at(2026, 3, 3)).await.unwrap_err();
    assert!(matches!(e, KhoDlError::Conflict { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "paper p1 already exists with different content"
    );

    // The id is taken by another owner's paper: refused, and nothing about it is shown.
    let theirs = paper("p1", OTHER_OWNER, "KQ.LLTP.01", at(2026, 2, 1));
    let e = k.save(theirs, at(2026, 3, 3)).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "paper p1 already exists with different content"
    );
}

#[tokio::test]
async fn khodl_refuses_bad_papers() {
    let dir = tempfile::tempdir().unwrap();
    let k = khodl(&dir).await;
    let now = at(2026, 3, 2);
    let mut bad_id = paper("../x", CITIZEN_ID, "KQ.LLTP.01", now);
    assert!(matches!(
        k.save(bad_id.clone(), now).await,
        Err(KhoDlError::Invalid(_))
    ));
    bad_id.id = "ok".into();
    bad_id.file.as_mut().unwrap().sha256 = "../../etc/passwd".into();
    assert!(matches!(
        k.save(bad_id, now).await,
        Err(KhoDlError::Invalid(_))
    ));
    let mut backwards = paper("p", CITIZEN_ID, "KQ.LLTP.01", now);
    backwards.validity = Some(PaperValidity::Until(now - Duration::days(1)));
    let e = k.save(backwards, now).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid paper: the validity ends before the issue date"
    );
    let mut nameless = paper("q", CITIZEN_ID, "KQ.LLTP.01", now);
    nameless.name = "  ".into();
    assert_eq!(
        k.save(nameless, now).await.unwrap_err().to_string(),
        "invalid paper: name is empty"
    );
}

#[tokio::test]
async fn khodl_validity_defaults_to_six_months_and_filters() {
    let dir = tempfile::tempdir().unwrap();
    let k = khodl(&dir).await;
    let me = owner(CITIZEN_ID);
    let issued = at(2026, 1, 10);
    let saved = k
        .save(paper("default", CITIZEN_ID, "KQ.LLTP.01", issued), issued)
        .await
        .unwrap();
    assert_eq!(
        saved.paper.validity,
        PaperValidity::Until(at(2026, 7, 10)),
        "6 months from the issue date when none is given"
    );
    let mut forever = paper("forever", CITIZEN_ID, "KQ.HT.KS", at(2020, 5, 1));
    forever.validity = Some(PaperValidity::Permanent);
    k.save(forever, issued).await.unwrap();
    let mut short = paper("short", CITIZEN_ID, "KQ.LLTP.02", issued);
    short.validity = Some(PaperValidity::Until(at(2026, 2, 1)));
    k.save(short, issued).await.unwrap();

    let valid = |t| PaperFilter::default().valid_at(t);
    assert_eq!(
        ids(&k.list(&me, &valid(at(2026, 1, 20))).await.unwrap()),
        ["default", "short", "forever"]
    );
    assert_eq!(
        ids(&k.list(&me, &valid(at(2026, 3, 1))).await.unwrap()),
        ["default", "forever"],
        "an expired paper is left out"
    );
    assert_eq!(
        ids(&k.list(&me, &valid(at(2026, 7, 10))).await.unwrap()),
        ["default", "forever"],
        "valid through its last instant"
    );
    assert_eq!(
        ids(&k.list(&me, &valid(at(2026, 7, 11))).await.unwrap()),
        ["forever"],
        "a permanent paper never expires"
    );
}

#[tokio::test]
async fn khodl_max_age_counts_from_the_issue_date() {
    let dir = tempfile::tempdir().unwrap();
    let k = khodl(&dir).await;
    let me = owner(CITIZEN_ID);
    for (id, issued) in [("new", at(2026, 2, 1)), ("old", at(2025, 8, 1))] {
        let mut p = paper(id, CITIZEN_ID, "KQ.LLTP.01", issued);
        p.validity = Some(PaperValidity::Permanent);
        k.save(p, issued).await.unwrap();
    }
    let now = at(2026, 3, 2);
    let recent = PaperFilter::default()
        .result_codes(&["KQ.LLTP.01"])
        .max_age(Period::Months(6), now);
    assert_eq!(ids(&k.list(&me, &recent).await.unwrap()), ["new"]);
    let a_year = PaperFilter::default().max_age(Period::Months(12), now);
    assert_eq!(ids(&k.list(&me, &a_year).await.unwrap()), ["new", "old"]);
}

#[tokio::test]
async fn khodl_hidden_until_unhidden_and_other_owners_never_listed() {
    let dir = tempfile::tempdir().unwrap();
    let k = khodl(&dir).await;
    let me = owner(CITIZEN_ID);
    let them = owner(OTHER_OWNER);
    let now = at(2026, 3, 2);
    let mut result = paper("mine", CITIZEN_ID, "KQ.LLTP.01", now);
    result.hidden = true;
    k.save(result, now).await.unwrap();
    let mut theirs = paper("theirs", OTHER_OWNER, "KQ.LLTP.01", now);
    theirs.dossier_code = Some("000.00.01.H59-260302-0001".into());
    k.save(theirs, now).await.unwrap();

    assert!(
        k.list(&me, &PaperFilter::default())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        k.get(&me, "mine", Visibility::OwnerView).await.unwrap(),
        None,
        "hidden from the owner until returned"
    );
    let officer_view = k
        .list(&me, &PaperFilter::default().include_hidden())
        .await
        .unwrap();
    assert_eq!(
        ids(&officer_view),
        ["mine"],
        "officers see it, and only my papers"
    );
    assert!(officer_view[0].hidden);

    assert_eq!(
        k.unhide_dossier(&me, "000.00.01.H59-260302-0001", now)
            .await
            .unwrap(),
        1,
        "only my paper of that dossier"
    );
    assert_eq!(
        ids(&k.list(&me, &PaperFilter::default()).await.unwrap()),
        ["mine"]
    );
    assert_eq!(
        k.unhide_dossier(&me, "000.00.01.H59-260302-0001", now)
            .await
            .unwrap(),
        0
    );

    for visibility in [Visibility::OwnerView, Visibility::IncludeHidden] {
        assert_eq!(k.get(&me, "theirs", visibility).await.unwrap(), None);
        assert_eq!(k.get(&them, "mine", visibility).await.unwrap(), None);
    }
    assert_eq!(
        ids(&k
            .list(&them, &PaperFilter::default().include_hidden())
            .await
            .unwrap()),
        ["theirs"]
    );
    assert!(matches!(
        k.set_approval(&them, "mine", Approval::Rejected, "officer", now)
            .await,
        Err(KhoDlError::NotFound { .. })
    ));
}

#[tokio::test]
async fn khodl_digitized_papers_await_approval() {
    let dir = tempfile::tempdir().unwrap();
    let k = khodl(&dir).await;
    let me = owner(CITIZEN_ID);
    let now = at(2026, 3, 2);
    for id in ["scan1", "scan2"] {
        let mut scan = paper(id, CITIZEN_ID, "GT.CCCD", at(2021, 6, 1));
        scan.kind = PaperKind::Component;
        scan.provenance = Provenance::DigitizedHere;
        scan.approval = Approval::Awaiting;
        scan.digitized = Some(Digitization {
            by: "desk".into(),
            at: now,
        });
        k.save(scan, now).await.unwrap();
    }
    let approved = k
        .set_approval(&me, "scan1", Approval::Approved, "head", now)
        .await
        .unwrap();
    assert_eq!(approved.approval, Approval::Approved);
    assert_eq!(approved.approval_by.as_deref(), Some("head"));
    assert_eq!(approved.digitized.as_ref().unwrap().by, "desk");
    // Deciding the same again is a no-op; changing the decision is refused.
    k.set_approval(&me, "scan1", Approval::Approved, "head", now)
        .await
        .unwrap();
    let e = k
        .set_approval(&me, "scan1", Approval::Rejected, "head", now)
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "paper scan1 is approved: it cannot become rejected"
    );

    k.set_approval(&me, "scan2", Approval::Rejected, "head", now)
        .await
        .unwrap();
    let components = PaperFilter {
        kind: Some(PaperKind::Component),
        ..PaperFilter::default()
    };
    assert_eq!(
        ids(&k.list(&me, &components).await.unwrap()),
        ["scan1"],
        "rejected papers are not offered"
    );
    let with_rejected = PaperFilter {
        include_rejected: true,
        ..components
    };
    assert_eq!(
        ids(&k.list(&me, &with_rejected).await.unwrap()),
        ["scan1", "scan2"]
    );
}

// ---------------------------------------------------------------------------------------------
// Signing

fn signed_at() -> DateTime<Utc> {
    monday_morning()
}

fn result_metadata() -> Value {
    json!({
        "dossier_code": "000.00.01.H59-260302-0001",
        "result_code": "KQ.LLTP.01",
        "number": "123/2026/LLTP",
        "owner_id": CITIZEN_ID,
        "owner_name": "Nguyễn Văn An",
    })
}

fn keys() -> KeyRing {
    KeyRing::generate_for_tests(&["leader"], &[AGENCY])
}

#[test]
fn signing_signer_then_organization_both_verify() {
    let keys = keys();
    let doc = sha256_hex(b"the certificate");
    let meta = result_metadata();
    let chain = keys
        .sign_and_seal("leader", AGENCY, &doc, &meta, signed_at())
        .unwrap();
    assert_eq!(chain.len(), 2);
    let (officer, seal) = (&chain[0], &chain[1]);
    assert_eq!(officer.signer_kind, SignerKind::Officer);
    assert_eq!(officer.signer_id, "leader");
    assert_eq!(officer.algorithm, "ed25519");
    assert_eq!(officer.covered, signing::metadata_hash(&meta).unwrap());
    assert_eq!(BASE64.decode(&officer.signature).unwrap().len(), 64);
    assert_eq!(seal.signer_kind, SignerKind::Agency);
    assert_eq!(
        seal.countersigns.as_deref(),
        Some(officer.fingerprint().as_str()),
        "the seal covers the signer's signature"
    );

    keys.verify_chain(&chain, &doc, &meta).unwrap();
    for record in &chain {
        let key = keys
            .public_key(record.signer_kind, &record.signer_id)
            .unwrap();
        assert_eq!(record.key_id, signing::key_id(&key));
        signing::verify(record, &doc, &meta, &key).unwrap();
    }

    // The same metadata with its keys in another order is the same metadata.
    let reordered: Value = serde_json::from_str(
        r#"{"owner_name":"Nguyễn Văn An","owner_id":"001099012345","number":"123/2026/LLTP",
            "result_code":"KQ.LLTP.01","dossier_code":"000.00.01.H59-260302-0001"}"#,
    )
    .unwrap();
    keys.verify_chain(&chain, &doc, &reordered).unwrap();

    // A record survives storage as JSON.
    let stored: Vec<SignatureRecord> =
        serde_json::from_str(&serde_json::to_string(&chain).unwrap()).unwrap();
    keys.verify_chain(&stored, &doc, &meta).unwrap();
}

#[test]
fn signing_detects_tampering_with_a_clear_error() {
    let keys = keys();
    let doc = sha256_hex(b"the certificate");
    let meta = result_metadata();
    let chain = keys
        .sign_and_seal("leader", AGENCY, &doc, &meta, signed_at())
        .unwrap();
    let officer = &chain[0];

    let other_doc = sha256_hex(b"a forged certificate");
    let e = keys.verify(officer, &other_doc, &meta).unwrap_err();
    assert!(matches!(e, SigningError::DocumentMismatch { .. }), "{e:?}");
    assert!(
        e.to_string().starts_with("the signature covers document "),
        "{e}"
    );

    // Rewriting the hash inside the record too breaks the signature itself.
    let mut rehashed = officer.clone();
    rehashed.document_sha256 = other_doc.clone();
    assert_eq!(
        keys.verify(&rehashed, &other_doc, &meta),
        Err(SigningError::SignatureInvalid)
    );

    let mut meta2 = meta.clone();
    meta2["number"] = json!("124/2026/LLTP");
    let e = keys.verify(officer, &doc, &meta2).unwrap_err();
    assert!(matches!(e, SigningError::MetadataMismatch { .. }), "{e:?}");
    assert!(
        e.to_string()
            .starts_with("the metadata was changed after signing"),
        "{e}"
    );

    let mut flipped = officer.clone();
    let mut sig = BASE64.decode(&flipped.signature).unwrap();
    sig[10] ^= 0x01;
    flipped.signature = BASE64.encode(&sig);
    let e = keys.verify(&flipped, &doc, &meta).unwrap_err();
    assert_eq!(e, SigningError::SignatureInvalid);
    assert_eq!(
        e.to_string(),
        "the signature does not match: the document, metadata or signature was altered"
    );

    let mut garbage = officer.clone();
    garbage.signature = "not base64!".into();
    assert_eq!(
        keys.verify(&garbage, &doc, &meta),
        Err(SigningError::MalformedSignature)
    );

    let mut backdated = officer.clone();
    backdated.signed_at -= Duration::days(30);
    assert_eq!(
        keys.verify(&backdated, &doc, &meta),
        Err(SigningError::SignatureInvalid),
        "the time is signed too"
    );

    // A different key (another ring's "leader") is not this signer's.
    let stranger = KeyRing::generate_for_tests(&["leader"], &[]);
    let forged = stranger
        .sign_as_officer("leader", &doc, &meta, signed_at())
        .unwrap();
    assert!(matches!(
        keys.verify(&forged, &doc, &meta),
        Err(SigningError::KeyNotOfSigner { .. })
    ));
    let key = keys.public_key(SignerKind::Officer, "leader").unwrap();
    assert!(matches!(
        signing::verify(&forged, &doc, &meta, &key),
        Err(SigningError::KeyMismatch { .. })
    ));

    // The chain breaks when the signer's record under the seal is altered.
    let mut chain2 = chain.clone();
    chain2[0] = flipped;
    assert_eq!(
        keys.verify_chain(&chain2, &doc, &meta),
        Err(SigningError::SignatureInvalid)
    );
}

#[test]
fn signing_order_is_signer_first_then_organization() {
    let keys = keys();
    let doc = sha256_hex(b"the certificate");
    let meta = result_metadata();
    let chain = keys
        .sign_and_seal("leader", AGENCY, &doc, &meta, signed_at())
        .unwrap();
    let reversed = vec![chain[1].clone(), chain[0].clone()];
    assert!(matches!(
        keys.verify_chain(&reversed, &doc, &meta),
        Err(SigningError::Order(_))
    ));
    // A seal over another seal, or over a signature of another document, is refused.
    let e = keys
        .seal_as_agency(AGENCY, &doc, &meta, Some(&chain[1]), signed_at())
        .unwrap_err();
    assert!(matches!(e, SigningError::Order(_)), "{e:?}");
    let other = sha256_hex(b"other");
    assert!(matches!(
        keys.seal_as_agency(AGENCY, &other, &meta, Some(&chain[0]), signed_at()),
        Err(SigningError::DocumentMismatch { .. })
    ));
    // A seal made without the signer's signature does not count as following it.
    let lone_seal = keys
        .seal_as_agency(AGENCY, &doc, &meta, None, signed_at())
        .unwrap();
    assert!(matches!(
        keys.verify_chain(&[chain[0].clone(), lone_seal], &doc, &meta),
        Err(SigningError::Order(_))
    ));
    assert!(matches!(
        keys.verify_chain(&[], &doc, &meta),
        Err(SigningError::Order(_))
    ));
    assert!(matches!(
        keys.sign_as_officer("nobody", &doc, &meta, signed_at()),
        Err(SigningError::UnknownSigner { .. })
    ));
    assert!(matches!(
        keys.sign_as_officer("leader", "../../etc/passwd", &meta, signed_at()),
        Err(SigningError::InvalidDocumentHash(_))
    ));
}

#[test]
fn signing_keys_from_a_file_and_public_keys_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let seed = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
    let json_path = dir.path().join("keys.json");
    std::fs::write(
        &json_path,
        json!({ "officers": { "leader": seed }, "agencies": { AGENCY: seed.replace('9', "8") } })
            .to_string(),
    )
    .unwrap();
    let yaml_path = dir.path().join("keys.yaml");
    std::fs::write(
        &yaml_path,
        format!(
            "officers:\n  leader: \"{seed}\"\nagencies:\n  \"{AGENCY}\": \"{}\"\n",
            seed.replace('9', "8")
        ),
    )
    .unwrap();
    let from_json = KeyRing::load(&json_path).unwrap();
    let from_yaml = KeyRing::load(&yaml_path).unwrap();
    // RFC 8032 test 1: this seed's public key.
    assert_eq!(
        hex::encode(
            from_json
                .public_key(SignerKind::Officer, "leader")
                .unwrap()
                .as_bytes()
        ),
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    );
    assert!(
        !format!("{from_json:?}").contains(seed),
        "Debug hides secrets"
    );

    let doc = sha256_hex(b"doc");
    let meta = result_metadata();
    let chain = from_json
        .sign_and_seal("leader", AGENCY, &doc, &meta, signed_at())
        .unwrap();
    from_yaml.verify_chain(&chain, &doc, &meta).unwrap();

    // Another province trusts only the public keys.
    let public = from_json.public_keys_json();
    let verifier = KeyRing::from_json_str(&json!({ "trusted": public }).to_string()).unwrap();
    verifier.verify_chain(&chain, &doc, &meta).unwrap();
    assert!(matches!(
        verifier.sign_as_officer("leader", &doc, &meta, signed_at()),
        Err(SigningError::UnknownSigner { .. })
    ));

    for bad in [
        json!({ "officers": { "leader": "xyz" } }),
        json!({ "officers": { "leader": "abcd" } }),
        json!({ "officer": {} }),
    ] {
        let e = KeyRing::from_json_str(&bad.to_string()).unwrap_err();
        assert!(
            matches!(
                e,
                SigningError::InvalidKey { .. } | SigningError::KeyFile { .. }
            ),
            "{bad}: {e:?}"
        );
    }
    let e = KeyRing::load(&dir.path().join("missing.json")).unwrap_err();
    assert!(e.to_string().starts_with("key file "), "{e}");

    // Derived demo keys are the same on every run, and differ per signer.
    let a = KeyRing::derived("demo", &["leader"], &[AGENCY]);
    let b = KeyRing::derived("demo", &["leader"], &[AGENCY]);
    assert_eq!(
        a.public_key(SignerKind::Officer, "leader"),
        b.public_key(SignerKind::Officer, "leader")
    );
    assert_ne!(
        a.public_key(SignerKind::Officer, "leader"),
        KeyRing::derived("other", &["leader"], &[]).public_key(SignerKind::Officer, "leader")
    );
}

#[test]
fn signing_electronic_certified_copy() {
    let keys = keys();
    let original = sha256_hex(b"giay khai sinh, ban chinh");
    let original_meta = json!({ "name": "Giấy khai sinh", "number": "45/2001" });
    let copy = certified_copy(
        &keys,
        AGENCY,
        &original,
        &original_meta,
        Some("SY-12/2026"),
        signed_at(),
    )
    .unwrap();
    assert_eq!(copy.metadata["kind"], "electronic_certified_copy");
    assert_eq!(copy.metadata["copy_of"]["sha256"], original.as_str());
    assert_eq!(copy.metadata["copy_of"]["metadata"], original_meta);
    assert_eq!(copy.metadata["certified_by"], AGENCY);
    assert_eq!(copy.signature.signer_kind, SignerKind::Agency);
    assert_eq!(copy.document_sha256(), original);
    verify_certified_copy(&keys, &copy).unwrap();

    let mut altered = copy.clone();
    altered.metadata["copy_of"]["metadata"]["number"] = json!("46/2001");
    assert!(matches!(
        verify_certified_copy(&keys, &altered),
        Err(SigningError::MetadataMismatch { .. })
    ));
    let mut unmarked = copy.clone();
    unmarked.metadata["kind"] = json!("original");
    assert!(matches!(
        verify_certified_copy(&keys, &unmarked),
        Err(SigningError::NotACopy(_))
    ));
    let mut other_original = copy.clone();
    other_original.metadata["copy_of"]["sha256"] = json!(sha256_hex(b"forged"));
    assert!(verify_certified_copy(&keys, &other_original).is_err());
}

// ---------------------------------------------------------------------------------------------
// The khodl.save hook inside the engine

fn result_catalog() -> ResultCatalog {
    let loader = Loader::new(LoaderConfig::at_root(&repo_root())).unwrap();
    loader.catalog().results.clone()
}

fn attach_khodl(h: &Harness) -> (KhoDl, Arc<KhoDlSaveHook>) {
    let k = KhoDl::for_engine(&h.engine);
    let hook = Arc::new(
        KhoDlSaveHook::new(k.clone(), &result_catalog())
            .with_agency_names([(AGENCY.to_owned(), "Sở Tư pháp tỉnh Hưng Yên".to_owned())].into()),
    );
    h.engine.register_hook("khodl.save", hook.clone());
    (k, hook)
}

/// Calls the hook again for the dossier's `khodl.save` job, as a duplicate execution would.
async fn run_khodl_job_again(h: &Harness, hook: &KhoDlSaveHook, code: &str) -> HookOutcome {
    use engine::HookHandler;
    let d = h.engine.dossier(code).await.unwrap();
    let job = d
        .all_jobs()
        .find(|j| j.call == "khodl.save")
        .expect("a khodl.save job")
        .clone();
    let procedure = h
        .engine
        .procedure(&d.procedure_code, Some(d.procedure_version))
        .unwrap();
    hook.call(HookRequest {
        dossier: &d,
        procedure: &procedure,
        job: &job,
        attempt: job.attempts + 1,
        idempotency_key: h.engine.hook_key(&job, &d.code),
        now: h.engine.now(),
    })
    .await
}

#[tokio::test]
async fn khodl_save_hook_stores_one_hidden_result_for_the_owner() {
    let h = harness().await;
    let (k, hook) = attach_khodl(&h);
    let d = h.file_lltp(1).await;
    h.receive(&d.code).await;
    let d = h.process_to_signed(&d.code).await;
    assert_eq!(d.status, Status::Processed);
    let job = d.all_jobs().find(|j| j.call == "khodl.save").unwrap();
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);

    let me = owner(CITIZEN_ID);
    let all = k
        .list(&me, &PaperFilter::default().include_hidden())
        .await
        .unwrap();
    assert_eq!(all.len(), 1, "{all:#?}");
    let p = &all[0];
    assert_eq!(p.id, result_paper_id(&d.code, "KQ.LLTP.01"));
    assert_eq!(p.paper_type, "KQ.LLTP.01");
    assert_eq!(p.name, "Phiếu lý lịch tư pháp số 1");
    assert_eq!(p.owner, me);
    assert_eq!(p.owner_name, "Nguyễn Văn An");
    assert_eq!(p.kind, PaperKind::Result);
    assert_eq!(p.provenance, Provenance::IssuedHere);
    assert_eq!(p.approval, Approval::Approved);
    assert!(p.hidden, "hidden until the result is returned");
    assert_eq!(p.number.as_deref(), Some("123/2026/LLTP"));
    assert_eq!(p.issuing_agency, "Sở Tư pháp tỉnh Hưng Yên");
    assert_eq!(p.dossier_code.as_deref(), Some(&*d.code));
    assert_eq!(p.procedure_code.as_deref(), Some("2.000488"));
    assert_eq!(p.field.as_deref(), Some("Lý lịch tư pháp"));
    let signature = &d.signatures[0];
    assert_eq!(p.issued_at, signature.at);
    assert_eq!(p.signer.as_deref(), Some(signature.signer.as_str()));
    assert_eq!(
        p.validity,
        PaperValidity::from_definition(
            engine::definition::Validity::For(Period::Months(6)),
            signature.at,
            h.engine.calendar()
        ),
        "the catalog's 6 months"
    );
    assert!(
        k.list(&me, &PaperFilter::default())
            .await
            .unwrap()
            .is_empty(),
        "the owner does not see it yet"
    );
    let them = owner("001088000111");
    assert!(
        k.list(&them, &PaperFilter::default().include_hidden())
            .await
            .unwrap()
            .is_empty()
    );

    // The same job run twice more (a duplicate execution) still stores one paper.
    for _ in 0..2 {
        match run_khodl_job_again(&h, &hook, &d.code).await {
            HookOutcome::Succeeded { detail, .. } => {
                assert_eq!(detail["papers"][0]["id"], p.id.as_str());
                assert_eq!(detail["papers"][0]["created"], false);
            }
            HookOutcome::Failed { error } => panic!("{error}"),
        }
    }
    let again = k
        .list(&me, &PaperFilter::default().include_hidden())
        .await
        .unwrap();
    assert_eq!(again, all, "one paper, unchanged");

    // Returned: the owner sees it, and a late duplicate does not hide it again.
    let d = h.run(&d.code, &desk(), Command::ReturnResult).await;
    assert_eq!(d.status, Status::Returned);
    assert_eq!(
        k.unhide_dossier(&me, &d.code, h.engine.now())
            .await
            .unwrap(),
        1
    );
    assert!(matches!(
        run_khodl_job_again(&h, &hook, &d.code).await,
        HookOutcome::Succeeded { .. }
    ));
    let visible = k
        .list(
            &me,
            &PaperFilter::default()
                .result_codes(&["KQ.LLTP.01"])
                .valid_at(h.engine.now()),
        )
        .await
        .unwrap();
    assert_eq!(ids(&visible), [p.id.as_str()]);
    h.drain().await;
    h.assert_replays_and_verifies(&d.code).await;
}

#[tokio::test]
async fn khodl_save_hook_keeps_the_signed_file_and_its_signatures() {
    let h = harness().await;
    let (k, _hook) = attach_khodl(&h);
    let blobs = BlobStore::open(h.dir.path().join("blobs")).unwrap();
    let keys = KeyRing::generate_for_tests(&["leader"], &[AGENCY]);

    let d = h.file_lltp(1).await;
    let code = d.code.clone();
    h.receive(&code).await;
    h.complete(
        &code,
        &specialist(),
        "tham_dinh",
        None,
        Some(json!({"co_an_tich": false, "can_xac_minh": false})),
    )
    .await;
    h.complete(&code, &specialist(), "du_thao_phieu", None, None)
        .await;
    h.complete(&code, &head(), "duyet_phong", Some("approve"), None)
        .await;
    let d = h.engine.dossier(&code).await.unwrap();
    let task = task_at(&d, "ky_phieu_so_1");
    h.run(&code, &leader(), Command::ClaimTask { task }).await;

    // What the signing step of the API does: store the file, sign, seal, record provenance.
    let pdf = b"%PDF-1.7 Phieu ly lich tu phap so 1".to_vec();
    let sha = blobs.put(&pdf).unwrap();
    let meta = json!({ "dossier_code": code, "result_code": "KQ.LLTP.01", "number": "7/2026" });
    let chain = keys
        .sign_and_seal("leader", AGENCY, &sha, &meta, h.engine.now())
        .unwrap();
    let document = DocumentRef {
        id: "kq1".into(),
        component: "KQ.LLTP.01".into(),
        name: "Phiếu lý lịch tư pháp số 1".into(),
        kind: None,
        sha256: sha.clone(),
        size: pdf.len() as u64,
        content_type: "application/pdf".into(),
        provenance: Some(json!({
            PROVENANCE_SIGNED_METADATA: meta,
            PROVENANCE_SIGNATURES: chain,
        })),
    };
    h.run(
        &code,
        &leader(),
        Command::SignResult {
            result_code: "KQ.LLTP.01".into(),
            number: Some("7/2026".into()),
            document: Some(document),
        },
    )
    .await;
    h.complete(&code, &leader(), "ky_phieu_so_1", None, None)
        .await;
    h.complete(&code, &clerk(), "phat_hanh", None, None).await;
    h.drain().await;

    let me = owner(CITIZEN_ID);
    let p = k
        .get(
            &me,
            &result_paper_id(&code, "KQ.LLTP.01"),
            Visibility::IncludeHidden,
        )
        .await
        .unwrap()
        .expect("the result is in Kho DL");
    let file = p.file.as_ref().unwrap();
    assert_eq!(file.sha256, sha);
    assert_eq!(file.size, pdf.len() as u64);
    assert_eq!(blobs.get(&file.sha256).unwrap().unwrap(), pdf);
    assert_eq!(p.signatures, chain);
    let detail = p.provenance_detail.as_ref().unwrap();
    assert!(
        detail.get(PROVENANCE_SIGNATURES).is_none(),
        "kept once, as signatures"
    );
    keys.verify_chain(
        &p.signatures,
        &file.sha256,
        &detail[PROVENANCE_SIGNED_METADATA],
    )
    .unwrap();
}
