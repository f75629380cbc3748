//! A deployment serves its own agencies only, and its identity keeps what it sends to shared
//! systems (the national portal) apart from every other deployment's.

use reqwest::StatusCode;
use serde_json::json;
use tthc_api::auth::UserKind;

use engine::agency::{Agencies, Agency};
use tthc_api::server;

use crate::api_support::*;
use crate::engine_support::{AGENCY, harness, lltp_form, open_engine};

/// Province B's agencies (Thái Nguyên after the 2025 merger, H55 in this test): departments,
/// the service centre and two communes, each with the kind definitions name.
fn province_b_agencies() -> Agencies {
    let a = |code: &str, name: &str, kind: &str| Agency {
        code: code.into(),
        name: name.into(),
        kind: Some(kind.into()),
        valid_from: None,
        valid_until: None,
    };
    Agencies::new([
        a("000.00.01.H55", "Sở Tư pháp tỉnh Thái Nguyên", "so_tu_phap"),
        a("000.00.08.H55", "Sở Y tế tỉnh Thái Nguyên", "so_y_te"),
        a("000.00.17.H55", "Công an tỉnh Thái Nguyên", "cong_an_tinh"),
        a(
            CENTRE_B,
            "Trung tâm Phục vụ hành chính công tỉnh Thái Nguyên",
            "trung_tam_phvhcc",
        ),
        a(COMMUNE_B, "UBND phường Phan Đình Phùng", "ubnd_xa"),
        a("000.20.02.H55", "UBND xã Đại Phúc", "ubnd_xa"),
    ])
}

const CENTRE_B: &str = "000.00.90.H55";
const COMMUNE_B: &str = "000.20.01.H55";

/// Province B, whose agencies are configured.
async fn province_b() -> Api {
    start_api_with(20, |c| c.agencies = province_b_agencies()).await
}

fn officer_b(sub: &str, agency: &str, roles: &[&str]) -> String {
    token_for(UserKind::Officer, sub, roles, Some(agency), None)
}

fn birth_form() -> serde_json::Value {
    json!({
        "nguoi_yeu_cau": {"ho_ten": "Nguyễn Văn An", "so_cccd": "001099012345",
                          "noi_cu_tru": "Phường Phan Đình Phùng", "quan_he_voi_tre": "cha"},
        "tre": {"ho_ten": "Nguyễn Minh Khang", "gioi_tinh": "nam", "ngay_sinh": "2026-11-30",
                "noi_sinh": "Bệnh viện Trung ương Thái Nguyên", "dan_toc": "Kinh", "quoc_tich": "Việt Nam"},
        "co_giay_chung_sinh": true,
        "nop_qua_uy_quyen": false
    })
}

#[tokio::test]
async fn province_b_refuses_a_filing_at_province_a_s_agency() {
    let b = province_b().await;
    let r = b
        .post(
            "/api/v1/dossiers",
            &citizen_token(),
            json!({"procedure_code": "2.000488", "agency_code": AGENCY, "data": {"to_khai": lltp_form(1)}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert_eq!(r.body["code"], "unknown_agency");
    assert!(
        r.body["detail"].as_str().unwrap().contains(AGENCY),
        "{}",
        r.text
    );
    assert_eq!(r.body["errors"][0]["pointer"], "/agency_code");
    // B's own agency files, and the refusal took no number.
    let own = b
        .post(
            "/api/v1/dossiers",
            &citizen_token(),
            json!({"procedure_code": "2.000488", "agency_code": "000.00.01.H55", "data": {"to_khai": lltp_form(1)}}),
        )
        .await;
    assert_eq!(own.status, StatusCode::CREATED, "{}", own.text);
    let code = own.body["code"].as_str().unwrap();
    assert!(
        code.starts_with("000.00.01.H55-") && code.ends_with("-0001"),
        "{code}"
    );
}

#[tokio::test]
async fn province_b_refuses_an_officer_token_of_province_a_s_agency() {
    let b = province_b().await;
    let r = b
        .get("/api/v1/tasks", &officer_token("desk", &["mot_cua"]))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    assert_eq!(r.body["code"], "unknown_agency");
    assert!(
        r.body["detail"].as_str().unwrap().contains(AGENCY),
        "{}",
        r.text
    );
    let own = token_for(
        UserKind::Officer,
        "desk-b",
        &["mot_cua"],
        Some("000.00.01.H55"),
        None,
    );
    let r = b.get("/api/v1/tasks", &own).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

#[tokio::test]
async fn two_deployments_send_the_portal_different_keys_for_the_same_dossier_and_job() {
    let (a, b) = (harness().await, harness().await);
    let (da, db) = (a.file_lltp(1).await, b.file_lltp(1).await);
    // The same code and job ids in both (as after a restored backup, or a shared agency
    // list): only the deployment's identity tells their keys apart.
    assert_eq!(da.code, db.code);
    a.drain().await;
    b.drain().await;
    let (ka, kb) = (a.sync.keys(), b.sync.keys());
    assert!(!ka.is_empty() && !kb.is_empty());
    assert!(ka.iter().all(|k| !kb.contains(k)), "{ka:?} / {kb:?}");
    assert!(ka.iter().all(|k| k.starts_with(a.engine.deployment_id())));
    // The identity is stored: a restart keeps it, so a retried job keeps its key.
    let again = open_engine(&a.dir, a.clock.clone()).await;
    assert_eq!(again.deployment_id(), a.engine.deployment_id());
}

#[tokio::test]
async fn a_commune_procedure_is_received_by_the_commune_or_the_centre_and_decided_by_the_commune() {
    let b = province_b().await;
    let file = |agency: &str, competent: Option<&str>| {
        let mut body = json!({"procedure_code": "1.001193", "agency_code": agency,
                              "data": {"to_khai": birth_form()}});
        if let Some(c) = competent {
            body["competent_agency"] = json!(c);
        }
        body
    };
    // A provincial department neither receives nor decides a birth registration.
    let r = b
        .post(
            "/api/v1/dossiers",
            &citizen_token(),
            file("000.00.01.H55", None),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert_eq!(r.body["code"], "wrong_receiving_agency");
    assert_eq!(r.body["errors"][0]["pointer"], "/agency_code");
    // The centre receives for the communes, but must be told which one decides.
    let r = b
        .post("/api/v1/dossiers", &citizen_token(), file(CENTRE_B, None))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert_eq!(r.body["code"], "competent_agency_required");
    let r = b
        .post(
            "/api/v1/dossiers",
            &citizen_token(),
            file(CENTRE_B, Some("000.00.17.H55")),
        )
        .await;
    assert_eq!(r.body["code"], "wrong_agency_kind", "{}", r.text);
    // Named: the centre's desk receives, the commune examines.
    let r = b
        .post(
            "/api/v1/dossiers",
            &citizen_token(),
            file(CENTRE_B, Some(COMMUNE_B)),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let code = r.body["code"].as_str().unwrap().to_owned();
    assert!(code.starts_with(CENTRE_B), "{code}");
    assert_eq!(r.body["competent_agency"], COMMUNE_B);
    let desk = &r.body["tasks"][0];
    assert_eq!(desk["step"], "tiep_nhan");
    assert_eq!(desk["agency_code"], CENTRE_B);
    // The commune's officer sees the dossier; another commune's does not.
    let seen = b
        .get(
            &format!("/api/v1/dossiers/{code}"),
            &officer_b("ht-1", COMMUNE_B, &["chuyen_vien"]),
        )
        .await;
    assert_eq!(seen.status, StatusCode::OK, "{}", seen.text);
    let other = b
        .get(
            &format!("/api/v1/dossiers/{code}"),
            &officer_b("ht-2", "000.20.02.H55", &["chuyen_vien"]),
        )
        .await;
    assert_eq!(other.status, StatusCode::FORBIDDEN, "{}", other.text);
}

#[tokio::test]
async fn the_centre_receives_and_the_competent_department_examines() {
    let b = province_b().await;
    let r = b
        .post(
            "/api/v1/dossiers",
            &citizen_token(),
            json!({"procedure_code": "2.000488", "agency_code": CENTRE_B, "data": {"to_khai": lltp_form(1)}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["competent_agency"], "000.00.01.H55");
    let code = r.body["code"].as_str().unwrap().to_owned();
    let task = task_of(&r.body, "tiep_nhan");
    // The department's desk may not receive what the centre received.
    let path = format!("/api/v1/dossiers/{code}/tasks/{task}/complete");
    let r = b
        .post(
            &path,
            &officer_b("desk-dept", "000.00.01.H55", &["mot_cua"]),
            json!({"outcome": "accept"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let r = b
        .post(
            &path,
            &officer_b("desk-centre", CENTRE_B, &["mot_cua"]),
            json!({"outcome": "accept"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    // After the receipt letter (a hook), the examination opens at the department.
    let d = b
        .wait_for(&code, "the examination task", |d| has_task(d, "tham_dinh"))
        .await;
    let next = d["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["step"] == "tham_dinh")
        .unwrap();
    assert_eq!(next["agency_code"], "000.00.01.H55");
}

#[tokio::test]
async fn a_filing_at_a_code_no_longer_in_effect_is_refused_with_its_dates() {
    let b = start_api_with(20, |c| {
        let mut list = province_b_agencies();
        let mut old = list.get("000.00.01.H55").unwrap().clone();
        old.code = "000.00.09.H55".into();
        old.valid_until = Some("2025-06-30".parse().unwrap());
        list.insert(old);
        c.agencies = list;
    })
    .await;
    let r = b
        .post(
            "/api/v1/dossiers",
            &citizen_token(),
            json!({"procedure_code": "2.000488", "agency_code": "000.00.09.H55", "data": {"to_khai": lltp_form(1)}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert_eq!(r.body["code"], "agency_not_in_effect");
    assert!(
        r.body["detail"].as_str().unwrap().contains("2025-06-30"),
        "{}",
        r.text
    );
}

#[tokio::test]
async fn serve_refuses_to_start_when_a_definition_names_a_kind_the_deployment_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let mut list = province_b_agencies();
    list = Agencies::new(
        list.iter()
            .filter(|a| a.kind.as_deref() != Some("cong_an_tinh"))
            .cloned()
            .collect::<Vec<_>>(),
    );
    let config = tthc_api::config::ServeConfig {
        database_url: crate::support::database_url(dir.path()).await,
        root: crate::support::repo_root(),
        blobs_dir: dir.path().join("blobs"),
        portal_simulator_database: format!("sqlite://{}", dir.path().join("sim.db").display()),
        agencies: list,
        ..Default::default()
    };
    let err = match server::build(&config, engine::Clock::System).await {
        Ok(_) => panic!("serve started without an agency of kind cong_an_tinh"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("cap-phieu-lltp.yaml"), "{err}");
    assert!(err.contains("cong_an_tinh"), "{err}");
    assert!(err.contains("kind:"), "{err}");
}

#[test]
fn the_example_deployments_configure_every_kind_the_shipped_procedures_name() {
    use engine::definition::{Loader, LoaderConfig};
    let root = crate::support::repo_root();
    let loader = Loader::new(LoaderConfig::at_root(&root)).unwrap();
    let report = loader.load_paths(&[root.join("procedures")]);
    assert!(!report.has_errors());
    let mut suffixes = Vec::new();
    for example in ["hung-yen", "ha-noi"] {
        let path = root.join(format!("deploy/examples/{example}.yaml"));
        let config = tthc_api::config::ServeConfig::from_file(&path).unwrap();
        for d in &report.definitions {
            let p = &d.procedure;
            let kinds = p
                .agency
                .competent
                .iter()
                .chain(p.steps.iter().filter_map(|s| match s {
                    engine::definition::Step::UserTask(t) => t.agency.as_ref(),
                    _ => None,
                }));
            for kind in kinds.filter(|k| *k != "receiving") {
                assert!(
                    config.agencies.has_kind(kind),
                    "{example}: no agency of kind {kind} for {}",
                    p.code
                );
            }
        }
        // No district agencies, and each province's codes are its own.
        let codes: Vec<&str> = config.agencies.iter().map(|a| a.code.as_str()).collect();
        suffixes.push(codes[0].rsplit('.').next().unwrap().to_owned());
        assert!(
            codes
                .iter()
                .all(|c| c.ends_with(&suffixes[suffixes.len() - 1]))
        );
    }
    assert_ne!(suffixes[0], suffixes[1]);
}
