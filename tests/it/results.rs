//! The citizen gets the signed result: hidden until the dossier is returned, then in the
//! dossier view with its signatures (times in Vietnam time), downloadable and verifiable.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::api_support::*;

/// Drives a judicial record dossier through verification, approval and signing (certificate
/// No. 1, number `15/2026/LLTP`) up to the desk's return task. Returns its code.
pub async fn signed_lltp(api: &Api) -> String {
    signed_lltp_as(api, &citizen_token(), crate::engine_support::AGENCY).await
}

/// [`signed_lltp`] filed by the holder of `citizen` at `agency`, handled by officers of it.
pub async fn signed_lltp_as(api: &Api, citizen: &str, agency: &str) -> String {
    let officer = |sub: &str, role: &str| {
        token_for(
            tthc_api::auth::UserKind::Officer,
            sub,
            &[role],
            Some(agency),
            None,
        )
    };
    let desk = officer("desk", "mot_cua");
    let specialist = officer("specialist", "chuyen_vien");
    let head = officer("head", "lanh_dao_phong");
    let leader = officer("leader", "lanh_dao");
    let clerk = officer("clerk", "van_thu");
    let r = api
        .post(
            "/api/v1/dossiers",
            citizen,
            json!({"procedure_code": "2.000488", "agency_code": agency,
                   "data": {"to_khai": crate::engine_support::lltp_form(1)}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let code = r.body["code"].as_str().unwrap().to_owned();
    let path = |p: &str| format!("/api/v1/dossiers/{code}/{p}");
    let r = api.post(&path("receive"), &desk, json!(null)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let d = api
        .wait_for(&code, "the verification task", |d| has_task(d, "tham_dinh"))
        .await;
    let complete = |d: Value, step: &'static str, token: String, body: Value| {
        let path = &path;
        async move {
            let task = task_of(&d, step);
            api.post(&path(&format!("tasks/{task}/claim")), &token, json!(null))
                .await;
            let r = api
                .post(&path(&format!("tasks/{task}/complete")), &token, body)
                .await;
            assert_eq!(r.status, StatusCode::OK, "{step}: {}", r.text);
            r.body
        }
    };
    let d = complete(
        d,
        "tham_dinh",
        specialist.clone(),
        json!({"data": {"co_an_tich": false, "can_xac_minh": false}}),
    )
    .await;
    let d = complete(d, "du_thao_phieu", specialist, json!({})).await;
    let d = complete(d, "duyet_phong", head, json!({"outcome": "approve"})).await;
    let task = task_of(&d, "ky_phieu_so_1");
    api.post(&path(&format!("tasks/{task}/claim")), &leader, json!(null))
        .await;
    let r = api
        .post(
            &path("sign"),
            &leader,
            json!({"result_code": "KQ.LLTP.01", "number": "15/2026/LLTP"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = api
        .post(&path(&format!("tasks/{task}/complete")), &leader, json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    complete(r.body, "phat_hanh", clerk, json!({})).await;
    api.wait_for(&code, "the return task", |d| has_task(d, "tra_ket_qua"))
        .await;
    code
}

/// The desk returns the result; waits until the dossier is closed.
pub async fn return_result(api: &Api, code: &str, desk: &str) -> Value {
    let r = api
        .post(
            &format!("/api/v1/dossiers/{code}/return"),
            desk,
            json!(null),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    api.wait_for(code, "closed", |d| !d["closed_at"].is_null())
        .await
}

/// `2026-03-03T00:30:05.123456+07:00`: an RFC 3339 time in Vietnam time.
fn assert_vietnam_time(value: &Value) {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("not a time: {value}"));
    assert!(text.ends_with("+07:00"), "{text}");
    chrono::DateTime::parse_from_rfc3339(text).unwrap();
}

#[tokio::test]
async fn signing_times_are_shown_in_vietnam_time_over_http_and_from_the_cli() {
    let api = start_api().await;
    let code = signed_lltp(&api).await;
    let v = api
        .get(
            &format!("/api/v1/dossiers/{code}/results/KQ.LLTP.01/verification"),
            &auditor_token(),
        )
        .await;
    assert_eq!(v.body["valid"], true, "{}", v.text);
    let signatures = v.body["signatures"].as_array().unwrap();
    assert_eq!(signatures.len(), 2);
    for s in signatures {
        assert_vietnam_time(&s["signed_at"]);
        assert_eq!(s["algorithm"], "ed25519");
    }
    // The same instant as the signature record's stored UTC time.
    let d = api.state.engine.dossier(&code).await.unwrap();
    let stored = &d.signatures[0]
        .document
        .as_ref()
        .unwrap()
        .provenance
        .as_ref()
        .unwrap()["signatures"][0]["signed_at"];
    let stored: chrono::DateTime<chrono::Utc> = serde_json::from_value(stored.clone()).unwrap();
    let at: chrono::DateTime<chrono::Utc> =
        chrono::DateTime::parse_from_rfc3339(signatures[0]["signed_at"].as_str().unwrap())
            .unwrap()
            .into();
    assert_eq!(at, stored);

    let db = crate::support::database_url(api._dir.path()).await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tthc"))
        .args(["--database", &db, "verify-result", &code, "KQ.LLTP.01"])
        .current_dir(crate::support::repo_root())
        .env("TTHC_BLOBS_DIR", api._dir.path().join("blobs"))
        .env_remove("TTHC_ROOT")
        .output()
        .unwrap();
    let text = crate::support::stdout(&out);
    assert!(
        out.status.success(),
        "{text}{}",
        crate::support::stderr(&out)
    );
    let printed: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(printed["valid"], true);
    for s in printed["signatures"].as_array().unwrap() {
        assert_vietnam_time(&s["signed_at"]);
    }
}

#[tokio::test]
async fn the_owner_gets_the_signed_result_once_returned_and_not_before() {
    let api = start_api().await;
    let code = signed_lltp(&api).await;
    let owner = citizen_token();
    let desk = officer_token("desk", &["mot_cua"]);
    let content = format!("/api/v1/dossiers/{code}/documents/kq-KQ.LLTP.01/content");
    let verification = format!("/api/v1/dossiers/{code}/results/KQ.LLTP.01/verification");

    // Signed and issued, not yet returned: hidden from the owner, even by a guessed id.
    let view = api.get(&format!("/api/v1/dossiers/{code}"), &owner).await;
    assert_eq!(view.status, StatusCode::OK);
    assert_eq!(view.body["results"], json!([]), "{}", view.text);
    for path in [&content, &verification] {
        let r = api.get(path, &owner).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}: {}", r.text);
        assert_eq!(r.body["code"], "not_found");
    }
    // Officers keep their access.
    assert_eq!(api.get(&content, &desk).await.status, StatusCode::OK);
    assert_eq!(api.get(&verification, &desk).await.body["valid"], true);

    return_result(&api, &code, &desk).await;
    let view = api.get(&format!("/api/v1/dossiers/{code}"), &owner).await;
    assert_eq!(view.body["status"]["code"], 10);
    let results = view.body["results"].as_array().unwrap();
    assert_eq!(results.len(), 1, "{}", view.text);
    let r = &results[0];
    assert_eq!(r["result_code"], "KQ.LLTP.01");
    assert_eq!(r["number"], "15/2026/LLTP");
    assert_eq!(r["document_id"], "kq-KQ.LLTP.01");
    assert_eq!(r["organization"], crate::engine_support::AGENCY);
    assert_vietnam_time(&r["signed_at"]);
    let kinds: Vec<&str> = r["signatures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            assert_vietnam_time(&s["signed_at"]);
            assert_eq!(s["key_id"].as_str().unwrap().len(), 32);
            s["signer_kind"].as_str().unwrap()
        })
        .collect();
    assert_eq!(kinds, ["officer", "agency"]);
    assert_eq!(r["signatures"][0]["signer_id"], "leader");

    let doc = api.get(&content, &owner).await;
    assert_eq!(doc.status, StatusCode::OK, "{}", doc.text);
    assert_eq!(
        engine::portal::sha256_hex(doc.text.as_bytes()),
        r["sha256"].as_str().unwrap()
    );
    assert!(doc.text.contains("15/2026/LLTP"), "{}", doc.text);
    let signed_line = doc
        .text
        .lines()
        .find(|l| l.starts_with("Ngày ký: "))
        .unwrap();
    assert!(signed_line.ends_with("+07:00"), "{signed_line}");
    let v = api.get(&verification, &owner).await;
    assert_eq!(v.status, StatusCode::OK, "{}", v.text);
    assert_eq!(v.body["valid"], true, "{}", v.text);
    assert_eq!(v.body["document_sha256"], r["sha256"]);
    // Another citizen sees none of it.
    let other = other_citizen_token();
    assert_eq!(
        api.get(&content, &other).await.status,
        StatusCode::FORBIDDEN
    );
}
