//! Fees over HTTP: the dossier shows what it owes after reductions, a payment must be the
//! amount due and carries its channel and receipt, and a fee due at reception holds the desk.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::api_support::*;
use crate::engine_support::{AGENCY, lltp_form};

const FEE: &str = "PHI.LLTP";

/// Files a judicial record request as the citizen, a student or not.
async fn file(api: &Api, student: bool) -> Value {
    let mut form = lltp_form(1);
    form["la_sinh_vien"] = json!(student);
    let r = api
        .post(
            "/api/v1/dossiers",
            &citizen_token(),
            json!({"procedure_code": "2.000488", "agency_code": AGENCY, "data": {"to_khai": form}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    r.body
}

/// Deploys the judicial record procedure again as version 2 with its fee due `due`.
async fn deploy_with_fee_due(api: &Api, due: &str) {
    let text =
        std::fs::read_to_string(crate::support::repo_root().join("procedures/cap-phieu-lltp.yaml"))
            .unwrap();
    let v2 = text.replace("version: 1", "version: 2").replacen(
        "    amount_vnd: 200000\n",
        &format!("    amount_vnd: 200000\n    due: {due}\n"),
        1,
    );
    assert_ne!(
        v2,
        text.replace("version: 1", "version: 2"),
        "the fee is there"
    );
    let r = api
        .send(
            api.request(Method::POST, "/api/v1/admin/procedures")
                .bearer_auth(admin_token())
                .header("content-type", "application/yaml")
                .body(v2),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
}

fn fee<'a>(dossier: &'a Value, code: &str) -> &'a Value {
    dossier["fees"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == code)
        .unwrap_or_else(|| panic!("no fee {code}: {}", dossier["fees"]))
}

fn pay(amount: u64, receipt: Option<&str>, channel: &str) -> Value {
    let mut b = json!({"fee_code": FEE, "amount_vnd": amount, "channel": channel});
    if let Some(r) = receipt {
        b["receipt"] = json!(r);
    }
    b
}

fn pointer_of(r: &Reply) -> &str {
    r.body["errors"][0]["pointer"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn the_dossier_shows_its_fee_with_the_reduction_its_data_earns() {
    let api = start_api().await;
    let student = file(&api, true).await;
    let f = fee(&student, FEE);
    assert_eq!(f["full_amount_vnd"], 200000);
    assert_eq!(f["amount_due_vnd"], 100000, "{f}");
    assert_eq!(f["outstanding_vnd"], 100000);
    assert_eq!(f["paid_vnd"], 0);
    assert_eq!(f["due"], "anytime");
    assert!(
        f["reduction"].as_str().unwrap().contains("sinh viên"),
        "{f}"
    );

    let other = file(&api, false).await;
    let f = fee(&other, FEE);
    assert_eq!(f["amount_due_vnd"], 200000, "{f}");
    assert!(f["reduction"].is_null());

    // The student pays the reduced amount, not the full one; the view reads the same.
    let code = student["code"].as_str().unwrap();
    let desk = officer_token("desk", &["mot_cua"]);
    let path = format!("/api/v1/dossiers/{code}/payments");
    let r = api
        .post(&path, &desk, pay(200000, Some("BL-01"), "counter"))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert_eq!(pointer_of(&r), "/amount_vnd", "{}", r.text);
    assert!(r.text.contains("100000"), "{}", r.text);
    let r = api
        .post(&path, &desk, pay(100000, Some("BL-01"), "online"))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let f = fee(&r.body, FEE);
    assert_eq!(f["paid_vnd"], 100000);
    assert_eq!(f["outstanding_vnd"], 0);
    let read = api
        .get(&format!("/api/v1/dossiers/{code}"), &citizen_token())
        .await;
    assert_eq!(fee(&read.body, FEE)["payments"][0]["channel"], "online");
}

#[tokio::test]
async fn reception_waits_for_a_fee_due_at_reception() {
    let api = start_api().await;
    deploy_with_fee_due(&api, "at_reception").await;
    let filed = file(&api, false).await;
    assert_eq!(filed["procedure_version"], 2);
    assert_eq!(fee(&filed, FEE)["due"], "at_reception");
    let code = filed["code"].as_str().unwrap().to_owned();
    let desk = officer_token("desk", &["mot_cua"]);
    let receive = format!("/api/v1/dossiers/{code}/receive");

    let r = api.post(&receive, &desk, json!(null)).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(r.body["code"], "fee_unpaid", "{}", r.text);
    assert!(
        r.body["detail"].as_str().unwrap().contains(FEE) && r.text.contains("200000"),
        "{}",
        r.text
    );
    // Completing the reception task with `accept` is the same reception.
    let task = task_of(&filed, "tiep_nhan");
    let r = api
        .post(
            &format!("/api/v1/dossiers/{code}/tasks/{task}/complete"),
            &desk,
            json!({"outcome": "accept"}),
        )
        .await;
    assert_eq!(r.body["code"], "fee_unpaid", "{}", r.text);
    let d = api.get(&format!("/api/v1/dossiers/{code}"), &desk).await;
    assert_eq!(d.body["status"]["code"], 1, "still not received");

    // A wrong amount (the student reduction does not apply) and a missing receipt are refused.
    let path = format!("/api/v1/dossiers/{code}/payments");
    let r = api
        .post(&path, &desk, pay(100000, Some("BL-7"), "counter"))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert_eq!(r.body["code"], "invalid_input");
    assert_eq!(pointer_of(&r), "/amount_vnd", "{}", r.text);
    let r = api.post(&path, &desk, pay(200000, None, "counter")).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert_eq!(pointer_of(&r), "/receipt", "{}", r.text);
    let r = api
        .post(&path, &desk, pay(200000, Some("x"), "by_pigeon"))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    let d = api.get(&format!("/api/v1/dossiers/{code}"), &desk).await;
    let f = fee(&d.body, FEE);
    assert_eq!(f["paid_vnd"], 0, "refused payments record nothing: {f}");
    assert_eq!(f["payments"], json!([]));

    // The right amount with its receipt: recorded, then the desk receives.
    let r = api
        .post(&path, &desk, pay(200000, Some("BL-2026-0007"), "counter"))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let f = fee(&r.body, FEE);
    assert_eq!(f["paid_vnd"], 200000);
    assert_eq!(f["outstanding_vnd"], 0);
    assert_eq!(f["payments"][0]["channel"], "counter");
    assert_eq!(f["payments"][0]["receipt"], "BL-2026-0007");
    assert_eq!(f["payments"][0]["amount_vnd"], 200000);
    let r = api
        .post(&path, &desk, pay(200000, Some("BL-2026-0008"), "counter"))
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "paid once: {}", r.text);

    let r = api.post(&receive, &desk, json!(null)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status"]["code"], 2);
}

#[tokio::test]
async fn a_fee_due_before_return_needs_a_task_that_marks_the_return() {
    let api = start_api().await;
    let text =
        std::fs::read_to_string(crate::support::repo_root().join("procedures/cap-phieu-lltp.yaml"))
            .unwrap();
    let bad = text
        .replacen(
            "    amount_vnd: 200000\n",
            "    amount_vnd: 200000\n    due: before_return\n",
            1,
        )
        .replace("    marks: returned\n", "");
    let r = api
        .send(
            api.request(Method::POST, "/api/v1/admin/procedures/validate")
                .bearer_auth(admin_token())
                .header("content-type", "application/yaml")
                .body(bad),
        )
        .await;
    assert!(
        r.text
            .contains("due before_return but no task has `marks: returned`"),
        "{}",
        r.text
    );
}

/// Takes a received judicial record dossier through verification, approval, signing and
/// issue to the desk's return task; answers the view after signing.
async fn process_to_the_return_task(api: &Api, code: &str) -> Value {
    let specialist = officer_token("specialist", &["chuyen_vien"]);
    let head = officer_token("head", &["lanh_dao_phong"]);
    let leader = officer_token("leader", &["lanh_dao"]);
    let clerk = officer_token("clerk", &["van_thu"]);
    let complete = |task: String, body: Value, token: String| async move {
        let r = api
            .post(
                &format!("/api/v1/dossiers/{code}/tasks/{task}/complete"),
                &token,
                body,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        r.body
    };
    let d = api
        .wait_for(code, "the verification task", |d| has_task(d, "tham_dinh"))
        .await;
    let d = complete(
        task_of(&d, "tham_dinh"),
        json!({"data": {"co_an_tich": false, "can_xac_minh": false}}),
        specialist.clone(),
    )
    .await;
    let d = complete(task_of(&d, "du_thao_phieu"), json!({}), specialist).await;
    let d = complete(
        task_of(&d, "duyet_phong"),
        json!({"outcome": "approve"}),
        head,
    )
    .await;
    let task = task_of(&d, "ky_phieu_so_1");
    let r = api
        .post(
            &format!("/api/v1/dossiers/{code}/tasks/{task}/claim"),
            &leader,
            json!(null),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = api
        .post(
            &format!("/api/v1/dossiers/{code}/sign"),
            &leader,
            json!({"result_code": "KQ.LLTP.01", "number": "15/2026/LLTP"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let signed = complete(task, json!({}), leader).await;
    complete(task_of(&signed, "phat_hanh"), json!({}), clerk).await;
    api.wait_for(code, "the return task", |d| has_task(d, "tra_ket_qua"))
        .await;
    signed
}

#[tokio::test]
async fn a_fee_due_before_return_asks_for_payment_and_holds_the_result() {
    let api = start_api().await;
    deploy_with_fee_due(&api, "before_return").await;
    let filed = file(&api, false).await;
    let code = filed["code"].as_str().unwrap().to_owned();
    let desk = officer_token("desk", &["mot_cua"]);
    let r = api
        .post(
            &format!("/api/v1/dossiers/{code}/receive"),
            &desk,
            json!(null),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "not due at reception: {}", r.text);

    // Processed with the fee unpaid: national status 6, payment requested.
    let signed = process_to_the_return_task(&api, &code).await;
    assert_eq!(signed["status"]["code"], 6, "{}", signed["status"]);
    let r = api
        .post(
            &format!("/api/v1/dossiers/{code}/return"),
            &desk,
            json!(null),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert_eq!(r.body["code"], "fee_unpaid", "{}", r.text);

    // Paid by post: back to processed (9), and the result goes out.
    let r = api
        .post(
            &format!("/api/v1/dossiers/{code}/payments"),
            &desk,
            pay(200000, Some("VNPOST-123"), "postal"),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status"]["code"], 9, "{}", r.body["status"]);
    let r = api
        .post(
            &format!("/api/v1/dossiers/{code}/return"),
            &desk,
            json!(null),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status"]["code"], 10);

    // The portal (the simulator over HTTP) holds the payment with its channel and receipt.
    let portal = api
        .state
        .io
        .portal
        .as_ref()
        .expect("a portal is configured");
    let mut held = None;
    for _ in 0..250 {
        match portal.synced_dossier(&code).await {
            Ok(h) if h.status == 10 => {
                held = Some(h);
                break;
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
    let held = held.expect("the returned dossier reaches the portal");
    let fees = &held.dossier.fees;
    assert_eq!(fees.len(), 1, "{fees:?}");
    assert_eq!(fees[0].fee_code, FEE);
    assert_eq!(fees[0].amount_vnd, 200000);
    assert_eq!(fees[0].receipt.as_deref(), Some("VNPOST-123"));
    assert_eq!(fees[0].channel.as_deref(), Some("postal"));
}
