//! A deployment serves its own agencies only, and its identity keeps what it sends to shared
//! systems (the national portal) apart from every other deployment's.

use reqwest::StatusCode;
use serde_json::json;
use tthc_api::auth::UserKind;

use crate::api_support::*;
use crate::engine_support::{AGENCY, harness, lltp_form, open_engine};

/// Province B (Thái Nguyên, H55 in this test), whose agencies are configured.
async fn province_b() -> Api {
    start_api_with(20, |c| {
        c.agencies = [(
            "000.00.01.H55".to_owned(),
            "Sở Tư pháp tỉnh Thái Nguyên".to_owned(),
        )]
        .into_iter()
        .collect();
    })
    .await
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
