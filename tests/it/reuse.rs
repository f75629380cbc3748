//! Both processes of the founding document against a running portal simulator: results saved
//! to Kho DL and pushed to the portal; reuse from the portal's Kho DL with consent, online and
//! at the desk; and every way reuse must be refused, with nothing stored.

use std::collections::BTreeMap;

use base64::Engine as _;
use chrono::Duration;
use engine::Clock;
use engine::dossier::{Channel, Command, Filing, Owner, OwnerId, PaperSource, ReusedPaper};
use engine::khodl::PaperFilter;
use engine::portal::wire;
use serde_json::json;
use tthc_api::demo::{self, Province};
use tthc_api::portal_sim::{self, SimConfig};

use crate::engine_support::{CITIZEN_ID, monday_morning};
use crate::support::repo_root;

#[tokio::test]
async fn tthc_demo_runs_both_processes_across_two_provinces() {
    let dir = tempfile::tempdir().unwrap();
    let report = demo::run(&repo_root(), dir.path(), false).await.unwrap();
    assert!(
        report.text.contains("(from the portal's Kho DL)"),
        "{}",
        report.text
    );
    assert!(
        report
            .text
            .contains("reused from the portal's Kho DL for phieu_lltp (chosen by the owner)")
    );
    assert!(
        report.text.contains("trusted keys: verified"),
        "province B verifies province A's signatures: {}",
        report.text
    );
    assert_eq!(
        report
            .text
            .matches("State check: the stored read models match the events.")
            .count(),
        2
    );
    assert_eq!(report.text.matches(": intact").count(), 2);

    // The auditor's CLI agrees, on province B's own database.
    let out = crate::support::tthc(&[
        "--database",
        &report.province_b_db,
        "replay",
        &report.licence_dossier,
    ]);
    assert!(out.status.success(), "{}", crate::support::stdout(&out));
    let text = crate::support::stdout(&out);
    assert!(
        text.contains("KQ.LLTP.01 reused from the portal's Kho DL"),
        "{text}"
    );
    assert!(
        !text.contains("document attached: Phiếu"),
        "the certificate was never uploaded: {text}"
    );
    let out = crate::support::tthc(&["--database", &report.province_a_db, "audit", "verify"]);
    assert!(out.status.success());
}

struct World {
    clock: Clock,
    b: Province,
    _dir: tempfile::TempDir,
    sim_url: String,
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let (addr, _) = portal_sim::start(SimConfig::local(
        format!("sqlite://{}", dir.path().join("sim.db").display()),
        "tthc-demo",
        "demo-secret",
    ))
    .await
    .unwrap();
    let sim_url = format!("http://{addr}");
    let clock = Clock::manual(monday_morning());
    let b = demo::province(
        &repo_root(),
        dir.path(),
        "province-b",
        "Hà Nội",
        "000.00.08.H26",
        "Sở Y tế Hà Nội",
        &sim_url,
        &clock,
    )
    .await
    .unwrap();
    World {
        clock,
        b,
        _dir: dir,
        sim_url,
    }
}

/// Puts a paper on the portal's Kho DL as another province would.
async fn publish(
    w: &World,
    id: &str,
    owner: &str,
    result_code: &str,
    issued: chrono::DateTime<chrono::Utc>,
    valid_until: Option<chrono::DateTime<chrono::Utc>>,
) -> String {
    let content = format!("{result_code} {id} of {owner}").into_bytes();
    let sha = engine::portal::sha256_hex(&content);
    // Signed as province B's development keys would sign: keys B trusts.
    let signed_metadata = json!({"owner_id": owner, "result_code": result_code,
        "number": "9/2026/LLTP", "dossier_code": "000.00.01.H59-260101-0001"});
    let signatures = engine::signing::KeyRing::derived(
        "tthc-demo-province-b",
        &["officer-a"],
        &["000.00.01.H59"],
    )
    .sign_and_seal("officer-a", "000.00.01.H59", &sha, &signed_metadata, issued)
    .unwrap();
    let paper = wire::PushPaper {
        metadata: wire::PaperMetadata {
            paper_id: id.into(),
            owner_id: owner.into(),
            owner_name: "Nguyễn Văn An".into(),
            result_code: result_code.into(),
            name: "Phiếu lý lịch tư pháp số 1".into(),
            number: Some("9/2026/LLTP".into()),
            issued_at: engine::portal::portal_time(issued),
            issuing_agency_code: "000.00.01.H59".into(),
            issuing_agency_name: Some("Sở Tư pháp tỉnh Hưng Yên".into()),
            signer: "Đỗ Minh Khoa".into(),
            valid_until: valid_until.map(engine::portal::portal_time),
            permanent: valid_until.is_none(),
            dossier_code: "000.00.01.H59-260101-0001".into(),
            procedure_code: "2.000488".into(),
            content_type: "text/plain".into(),
            note: None,
            signed_metadata: Some(signed_metadata),
            signatures,
        },
        content: base64::engine::general_purpose::STANDARD.encode(&content),
        sha256: sha.clone(),
    };
    w.b.io
        .portal
        .as_ref()
        .unwrap()
        .push_paper(&format!("publish-{id}"), &paper)
        .await
        .unwrap();
    sha
}

async fn file_licence(w: &World, channel: Channel) -> String {
    let actor = match channel {
        Channel::Online => engine::dossier::Actor::Citizen {
            id: "an".into(),
            name: "Nguyễn Văn An".into(),
            owner_id: OwnerId::parse(CITIZEN_ID).unwrap(),
        },
        _ => w.b.actor("desk", "mot_cua"),
    };
    let filing = Filing {
        procedure_code: "1.012265".into(),
        agency_code: w.b.agency.clone(),
        competent_agency: None,
        owner: Owner {
            id: OwnerId::parse(CITIZEN_ID).unwrap(),
            name: "Nguyễn Văn An".into(),
            email: None,
            phone: None,
        },
        channel,
        data: BTreeMap::from([(
            "don_de_nghi".to_owned(),
            json!({"ho_ten": "Nguyễn Văn An", "ngay_sinh": "1990-05-17", "gioi_tinh": "nam", "so_cccd": CITIZEN_ID,
                   "noi_cu_tru": "Hà Nội", "chuc_danh": "bac_si", "pham_vi_hanh_nghe": "Nội khoa",
                   "van_bang_chuyen_mon": "Bác sĩ đa khoa", "co_so_thuc_hanh": "Bệnh viện Bạch Mai", "thoi_gian_thuc_hanh_thang": 12}),
        )]),
        documents: vec![],
    };
    w.b.engine
        .file(&actor, &filing)
        .await
        .unwrap()
        .code
        .to_string()
}

fn citizen() -> engine::dossier::Actor {
    engine::dossier::Actor::Citizen {
        id: "an".into(),
        name: "Nguyễn Văn An".into(),
        owner_id: OwnerId::parse(CITIZEN_ID).unwrap(),
    }
}

#[tokio::test]
async fn at_the_desk_the_officer_records_the_owners_consent() {
    let w = world().await;
    let now = w.b.engine.now();
    publish(
        &w,
        "P-1",
        CITIZEN_ID,
        "KQ.LLTP.01",
        now - Duration::days(30),
        Some(now + Duration::days(150)),
    )
    .await;
    let code = file_licence(&w, Channel::InPerson).await;
    let desk = w.b.actor("desk", "mot_cua");
    let before = w.b.engine.store().events(&code).await.unwrap();

    // Without the owner's confirmation the desk may not take it.
    let err =
        w.b.io
            .reuse
            .take(
                &w.b.engine,
                &code,
                &desk,
                engine::reuse::Pick {
                    component: "phieu_lltp",
                    paper_id: "P-1",
                    source: PaperSource::Portal,
                    owner_confirmed: false,
                    unverified_confirmed: false,
                },
            )
            .await
            .unwrap_err();
    assert_eq!(err.code(), "forbidden", "{err}");
    assert_eq!(
        w.b.engine.store().events(&code).await.unwrap(),
        before,
        "nothing recorded"
    );
    let local =
        w.b.io
            .khodl
            .list(
                &OwnerId::parse(CITIZEN_ID).unwrap(),
                &PaperFilter::default().include_hidden(),
            )
            .await
            .unwrap();
    assert!(
        local.is_empty(),
        "nothing downloaded or stored without consent"
    );

    let d =
        w.b.io
            .reuse
            .take(
                &w.b.engine,
                &code,
                &desk,
                engine::reuse::Pick {
                    component: "phieu_lltp",
                    paper_id: "P-1",
                    source: PaperSource::Portal,
                    owner_confirmed: true,
                    unverified_confirmed: false,
                },
            )
            .await
            .unwrap();
    let doc = d
        .documents
        .iter()
        .find(|x| x.component == "phieu_lltp")
        .unwrap();
    let prov = doc.provenance.as_ref().unwrap();
    assert_eq!(prov["from_portal"], true);
    assert_eq!(prov["reused"], true);
    assert!(
        w.b.io.blobs.get(&doc.sha256).unwrap().is_some(),
        "the content is stored locally"
    );
    // It is in the local Kho DL now, and offered from there next time, not from the portal.
    let again =
        w.b.io
            .reuse
            .candidates(&w.b.engine, &d, "phieu_lltp")
            .await
            .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].source, PaperSource::Local);
    let events = w.b.engine.store().events(&code).await.unwrap();
    let reused = events
        .iter()
        .find(|e| e.event.type_name() == "paper_reused")
        .unwrap();
    assert_eq!(
        serde_json::to_value(&reused.event).unwrap()["consent_by_owner"],
        false,
        "consent recorded at the desk"
    );
}

#[tokio::test]
async fn reuse_is_refused_for_others_papers_expired_papers_wrong_codes_and_bad_downloads() {
    let w = world().await;
    let now = w.b.engine.now();
    let good = publish(
        &w,
        "OK",
        CITIZEN_ID,
        "KQ.LLTP.01",
        now - Duration::days(10),
        Some(now + Duration::days(170)),
    )
    .await;
    publish(
        &w,
        "OTHER",
        "079088001234",
        "KQ.LLTP.01",
        now - Duration::days(10),
        Some(now + Duration::days(170)),
    )
    .await;
    publish(
        &w,
        "EXPIRED",
        CITIZEN_ID,
        "KQ.LLTP.01",
        now - Duration::days(200),
        Some(now - Duration::days(20)),
    )
    .await;
    publish(
        &w,
        "OLD",
        CITIZEN_ID,
        "KQ.LLTP.01",
        now - Duration::days(250),
        None,
    )
    .await;
    publish(
        &w,
        "LICENCE",
        CITIZEN_ID,
        "KQ.GPHN.KCB",
        now - Duration::days(10),
        None,
    )
    .await;
    let code = file_licence(&w, Channel::Online).await;
    let d = w.b.engine.dossier(&code).await.unwrap();
    let before = w.b.engine.store().events(&code).await.unwrap();

    // Only the owner's valid, recent certificate is offered.
    let offered =
        w.b.io
            .reuse
            .candidates(&w.b.engine, &d, "phieu_lltp")
            .await
            .unwrap();
    assert_eq!(
        offered.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        vec!["OK"]
    );
    for id in ["OTHER", "EXPIRED", "OLD", "LICENCE"] {
        let err =
            w.b.io
                .reuse
                .take(
                    &w.b.engine,
                    &code,
                    &citizen(),
                    engine::reuse::Pick {
                        component: "phieu_lltp",
                        paper_id: id,
                        source: PaperSource::Portal,
                        owner_confirmed: false,
                        unverified_confirmed: false,
                    },
                )
                .await
                .unwrap_err();
        assert_eq!(err.code(), "unknown_paper", "{id}: {err}");
    }
    // The decision core refuses them too, should a caller build the command itself.
    let paper = |id: &str,
                 owner: &str,
                 code: &str,
                 issued: chrono::DateTime<chrono::Utc>,
                 until: Option<chrono::DateTime<chrono::Utc>>| ReusedPaper {
        id: id.into(),
        source: PaperSource::Local,
        owner_id: OwnerId::parse(owner).unwrap(),
        result_code: code.into(),
        name: "Phiếu".into(),
        number: None,
        issued_at: issued,
        valid_until: until,
        issuing_agency: "Sở Tư pháp".into(),
        sha256: good.clone(),
        size: 10,
        content_type: "text/plain".into(),
        signature_check: None,
    };
    let cases = [
        (
            paper("x", "079088001234", "KQ.LLTP.01", now, None),
            "forbidden",
            "another owner",
        ),
        (
            paper(
                "x",
                CITIZEN_ID,
                "KQ.LLTP.01",
                now - Duration::days(200),
                Some(now - Duration::days(1)),
            ),
            "invalid_input",
            "expired",
        ),
        (
            paper(
                "x",
                CITIZEN_ID,
                "KQ.LLTP.01",
                now - Duration::days(250),
                None,
            ),
            "invalid_input",
            "more than",
        ),
        (
            paper("x", CITIZEN_ID, "KQ.GPHN.KCB", now, None),
            "invalid_input",
            "accepts KQ.LLTP.01",
        ),
    ];
    for (p, code_, words) in cases {
        let err =
            w.b.engine
                .execute(
                    &code,
                    None,
                    &citizen(),
                    &Command::ReusePaper {
                        component: "phieu_lltp".into(),
                        paper: p,
                        owner_confirmed: false,
                    },
                )
                .await
                .unwrap_err();
        assert_eq!(err.code(), code_, "{err}");
        assert!(err.to_string().contains(words), "{err}");
    }
    let err =
        w.b.engine
            .execute(
                &code,
                None,
                &citizen(),
                &Command::ReusePaper {
                    component: "van_bang".into(),
                    paper: paper("x", CITIZEN_ID, "KQ.LLTP.01", now, None),
                    owner_confirmed: false,
                },
            )
            .await
            .unwrap_err();
    assert!(
        err.to_string().contains("does not take papers from Kho DL"),
        "{err}"
    );

    // The portal serves content that does not match the hash it listed.
    let sim_db = w._dir.path().join("sim.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", sim_db.display()))
        .await
        .unwrap();
    sqlx::query("UPDATE sim_papers SET content = X'00' WHERE paper_id = 'OK'")
        .execute(&pool)
        .await
        .unwrap();
    let err =
        w.b.io
            .reuse
            .take(
                &w.b.engine,
                &code,
                &citizen(),
                engine::reuse::Pick {
                    component: "phieu_lltp",
                    paper_id: "OK",
                    source: PaperSource::Portal,
                    owner_confirmed: false,
                    unverified_confirmed: false,
                },
            )
            .await
            .unwrap_err();
    assert_eq!(err.code(), "hash_mismatch", "{err}");
    assert!(
        w.b.io.blobs.get(&good).unwrap().is_none(),
        "the bad download was not stored"
    );
    let local =
        w.b.io
            .khodl
            .list(
                &OwnerId::parse(CITIZEN_ID).unwrap(),
                &PaperFilter::default().include_hidden(),
            )
            .await
            .unwrap();
    assert!(local.is_empty());
    assert_eq!(
        w.b.engine.store().events(&code).await.unwrap(),
        before,
        "nothing was recorded on the dossier"
    );
    let _ = &w.sim_url;
    let _ = &w.clock;
}

#[tokio::test]
async fn a_portal_that_fails_then_recovers_gets_every_sync_and_push_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, _) = portal_sim::start(SimConfig::local(
        format!("sqlite://{}", dir.path().join("sim.db").display()),
        "tthc-demo",
        "demo-secret",
    ))
    .await
    .unwrap();
    let url = format!("http://{addr}");
    let clock = Clock::manual(monday_morning());
    let a = demo::province(
        &repo_root(),
        dir.path(),
        "province-a",
        "Hưng Yên",
        "000.00.01.H59",
        "Sở Tư pháp tỉnh Hưng Yên",
        &url,
        &clock,
    )
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let set =
        |faults: serde_json::Value| http.put(format!("{url}/_sim/faults")).json(&faults).send();
    set(json!({"fail_first": 4})).await.unwrap();

    let an = citizen();
    let mut filing = crate::engine_support::lltp_filing(1);
    filing.agency_code = a.agency.clone();
    let code = a.engine.file(&an, &filing).await.unwrap().code;
    a.run(&code, &a.actor("desk", "mot_cua"), Command::Receive)
        .await
        .unwrap();
    a.settle(&clock).await.unwrap();
    a.complete(
        &code,
        &a.actor("specialist", "chuyen_vien"),
        "tham_dinh",
        None,
        Some(json!({"co_an_tich": false, "can_xac_minh": false})),
    )
    .await
    .unwrap();
    a.complete(
        &code,
        &a.actor("specialist", "chuyen_vien"),
        "du_thao_phieu",
        None,
        None,
    )
    .await
    .unwrap();
    a.complete(
        &code,
        &a.actor("head", "lanh_dao_phong"),
        "duyet_phong",
        Some("approve"),
        None,
    )
    .await
    .unwrap();
    a.sign(
        &code,
        "ky_phieu_so_1",
        "KQ.LLTP.01",
        "Phiếu lý lịch tư pháp số 1",
        "1/2026",
        "Sở Tư pháp",
    )
    .await
    .unwrap();
    a.complete(&code, &a.actor("clerk", "van_thu"), "phat_hanh", None, None)
        .await
        .unwrap();
    for _ in 0..30 {
        clock.advance(Duration::minutes(2));
        a.engine.drain_jobs().await.unwrap();
    }
    a.run(&code, &a.actor("desk", "mot_cua"), Command::ReturnResult)
        .await
        .unwrap();
    for _ in 0..30 {
        clock.advance(Duration::minutes(2));
        a.engine.drain_jobs().await.unwrap();
    }
    let d = a.engine.dossier(&code).await.unwrap();
    assert!(d.is_closed(), "the dossier finished: {:?}", d.tasks);
    let failed_attempts: u32 = d
        .all_jobs()
        .filter(|j| j.call.starts_with("portal."))
        .map(|j| j.attempts - 1)
        .sum();
    assert!(failed_attempts >= 1, "the portal failed first");
    let stats: serde_json::Value = http
        .get(format!("{url}/_sim/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let syncs = d
        .all_jobs()
        .filter(|j| j.call == "portal.sync_dossier")
        .count() as u64;
    assert_eq!(
        stats["syncs_applied"].as_u64().unwrap() + stats["syncs_ignored"].as_u64().unwrap(),
        syncs,
        "{stats}"
    );
    assert_eq!(stats["pushes"], 1, "{stats}");
    assert_eq!(stats["papers"], 1, "{stats}");
    // The portal ends on the dossier's latest state.
    let synced =
        a.io.portal
            .as_ref()
            .unwrap()
            .synced_dossier(&code)
            .await
            .unwrap();
    let synced = serde_json::to_value(&synced).unwrap();
    assert!(
        synced.to_string().contains("\"status\":10")
            || synced["dossier"]["status"] == 10
            || synced["status"] == 10,
        "{synced}"
    );
    let replay = a.engine.replay(&code).await.unwrap();
    assert!(replay.matches, "{:?}", replay.differences);
}
