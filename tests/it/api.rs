//! `tthc serve` over HTTP: the judicial record procedure from filing to returned result, the
//! route-by-role matrix, and what bad requests get.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tthc_api::auth::UserKind;

use crate::api_support::*;
use crate::engine_support::{AGENCY, CITIZEN_ID};

/// A command that schedules a hook wakes the worker of the node that stored it: the receipt
/// goes out and the next task opens at once, not at the worker's next poll (a minute here,
/// `job_poll_ms`; `wait_for` gives up after about five seconds).
#[tokio::test]
async fn a_scheduled_hook_runs_without_waiting_for_the_next_poll() {
    let api = start_api_polling(60_000).await;
    let desk = officer_token("desk", &["mot_cua"]);
    let code = api.file_lltp().await["code"].as_str().unwrap().to_owned();
    let r = api
        .post(
            &format!("/api/v1/dossiers/{code}/receive"),
            &desk,
            json!(null),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(
        !r.body["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["step"] == "tham_dinh"),
        "verification opens only after the receipt hook: {}",
        r.body["tasks"]
    );
    api.wait_for(&code, "the verification task", |d| has_task(d, "tham_dinh"))
        .await;
}

#[tokio::test]
async fn the_judicial_record_procedure_end_to_end_over_http() {
    let api = start_api().await;
    let desk = officer_token("desk", &["mot_cua"]);
    let specialist = officer_token("specialist", &["chuyen_vien"]);
    let head = officer_token("head", &["lanh_dao_phong"]);
    let leader = officer_token("leader", &["lanh_dao"]);
    let clerk = officer_token("clerk", &["van_thu"]);

    let filed = api.file_lltp().await;
    let code = filed["code"].as_str().unwrap().to_owned();
    assert_eq!(filed["status"]["code"], 1);
    assert_eq!(filed["owner"]["id"], CITIZEN_ID);

    // The desk finds it on its worklist and receives it.
    let work = api.get("/api/v1/tasks", &desk).await;
    assert_eq!(work.status, StatusCode::OK);
    assert!(
        work.body
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["dossier_code"] == code.as_str() && t["step"] == "tiep_nhan")
    );
    let r = api
        .post(
            &format!("/api/v1/dossiers/{code}/receive"),
            &desk,
            json!(null),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status"]["code"], 2);
    assert!(r.body["due_at"].is_string());
    assert_eq!(r.headers["etag"], format!("\"{}\"", r.body["seq"]));

    // The receipt goes out; then the specialist claims and completes verification.
    let d = api
        .wait_for(&code, "the verification task", |d| has_task(d, "tham_dinh"))
        .await;
    let task = task_of(&d, "tham_dinh");
    let r = api
        .post(
            &format!("/api/v1/dossiers/{code}/tasks/{task}/claim"),
            &specialist,
            json!(null),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status"]["code"], 4);
    let r = api
        .post(
            &format!("/api/v1/dossiers/{code}/tasks/{task}/complete"),
            &specialist,
            json!({"data": {"co_an_tich": false, "can_xac_minh": false}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let task = task_of(&r.body, "du_thao_phieu");
    let r = api
        .post(
            &format!("/api/v1/dossiers/{code}/tasks/{task}/complete"),
            &specialist,
            json!({}),
        )
        .await;
    let task = task_of(&r.body, "duyet_phong");
    let r = api
        .post(
            &format!("/api/v1/dossiers/{code}/tasks/{task}/complete"),
            &head,
            json!({"outcome": "approve"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    // The leader signs certificate No. 1 and completes; the clerk issues it.
    let task = task_of(&r.body, "ky_phieu_so_1");
    api.post(
        &format!("/api/v1/dossiers/{code}/tasks/{task}/claim"),
        &leader,
        json!(null),
    )
    .await;
    let r = api
        .post(
            &format!("/api/v1/dossiers/{code}/sign"),
            &leader,
            json!({"result_code": "KQ.LLTP.01", "number": "15/2026/LLTP"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = api
        .post(
            &format!("/api/v1/dossiers/{code}/tasks/{task}/complete"),
            &leader,
            json!({}),
        )
        .await;
    assert_eq!(r.body["status"]["code"], 9, "{}", r.text);
    let task = task_of(&r.body, "phat_hanh");
    api.post(
        &format!("/api/v1/dossiers/{code}/tasks/{task}/complete"),
        &clerk,
        json!({}),
    )
    .await;

    // Hooks run in the background; then the desk returns the result.
    api.wait_for(&code, "the return task", |d| has_task(d, "tra_ket_qua"))
        .await;
    let r = api
        .post(
            &format!("/api/v1/dossiers/{code}/return"),
            &desk,
            json!(null),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let done = api
        .wait_for(&code, "closed", |d| !d["closed_at"].is_null())
        .await;
    assert_eq!(done["status"]["code"], 10);
    assert_eq!(done["outcome"], "completed");

    // The citizen follows it.
    let mine = api.get("/api/v1/me/dossiers", &citizen_token()).await;
    assert!(
        mine.body
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["code"] == code.as_str() && d["status"] == 10)
    );
    let notes = api
        .get(
            &format!("/api/v1/dossiers/{code}/notifications"),
            &citizen_token(),
        )
        .await;
    let templates: Vec<&str> = notes
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["template"].as_str().unwrap())
        .collect();
    assert!(
        templates.contains(&"tiep_nhan") && templates.contains(&"ket_qua"),
        "{templates:?}"
    );

    // The auditor verifies it.
    let auditor = auditor_token();
    let events = api
        .get(&format!("/api/v1/dossiers/{code}/events"), &auditor)
        .await;
    let events = events.body.as_array().unwrap();
    assert_eq!(events[0]["type"], "filed");
    assert!(
        events.windows(2).all(|w| w[1]["prev_hash"] == w[0]["hash"]),
        "the chain links"
    );
    let replay = api
        .get(&format!("/api/v1/dossiers/{code}/replay"), &auditor)
        .await;
    assert_eq!(replay.body["matches"], true, "{}", replay.text);
    let verify = api.get("/api/v1/audit/verify", &auditor).await;
    assert_eq!(verify.body["intact"], true, "{}", verify.text);

    // The certificate is signed (signer, then the agency's seal) and verifies.
    let v = api
        .get(
            &format!("/api/v1/dossiers/{code}/results/KQ.LLTP.01/verification"),
            &auditor,
        )
        .await;
    assert_eq!(v.body["valid"], true, "{}", v.text);
    let kinds: Vec<&str> = v.body["signatures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["signer_kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, vec!["officer", "agency"]);
    let content = api
        .get(
            &format!("/api/v1/dossiers/{code}/documents/kq-KQ.LLTP.01/content"),
            &citizen_token(),
        )
        .await;
    assert_eq!(content.status, StatusCode::OK);
    assert!(
        content.text.contains("Phiếu lý lịch tư pháp số 1")
            && content.text.contains("15/2026/LLTP"),
        "{}",
        content.text
    );
    // Returned, it is in the citizen's Kho DL, and the portal holds the latest status.
    let papers = api.get("/api/v1/me/papers", &citizen_token()).await;
    assert!(
        papers
            .body
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["paper_type"] == "KQ.LLTP.01" && p["signatures"] == 2),
        "{}",
        papers.text
    );
    let synced = api
        .state
        .io
        .portal
        .as_ref()
        .unwrap()
        .synced_dossier(&code)
        .await
        .unwrap();
    assert!(
        serde_json::to_string(&synced)
            .unwrap()
            .contains("\"status\":10"),
        "{synced:?}"
    );

    // The citizen applies for a medical practice licence: the certificate is offered from this
    // system's Kho DL for the judicial-record component, and taken with the citizen's consent.
    let form = json!({"ho_ten": "Nguyễn Văn An", "ngay_sinh": "1990-05-17", "gioi_tinh": "nam", "so_cccd": CITIZEN_ID,
        "noi_cu_tru": "Hưng Yên", "chuc_danh": "bac_si", "pham_vi_hanh_nghe": "Nội khoa", "van_bang_chuyen_mon": "Bác sĩ",
        "co_so_thuc_hanh": "Bệnh viện tỉnh", "thoi_gian_thuc_hanh_thang": 12});
    let lic = api.post("/api/v1/dossiers", &citizen_token(), json!({"procedure_code": "1.012265", "agency_code": "000.00.08.H59", "data": {"don_de_nghi": form}})).await;
    assert_eq!(lic.status, StatusCode::CREATED, "{}", lic.text);
    let lic = lic.body["code"].as_str().unwrap().to_owned();
    let offered = api
        .get(
            &format!("/api/v1/dossiers/{lic}/components/phieu_lltp/candidates"),
            &citizen_token(),
        )
        .await;
    let offered = offered.body.as_array().unwrap().clone();
    assert_eq!(offered.len(), 1, "{offered:?}");
    assert_eq!(offered[0]["source"], "local");
    assert_eq!(offered[0]["result_code"], "KQ.LLTP.01");
    let taken = api
        .post(
            &format!("/api/v1/dossiers/{lic}/components/phieu_lltp/reuse"),
            &citizen_token(),
            json!({"paper_id": offered[0]["paper_id"], "source": "local"}),
        )
        .await;
    assert_eq!(taken.status, StatusCode::OK, "{}", taken.text);
    let doc = taken.body["documents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["component"] == "phieu_lltp")
        .unwrap()
        .clone();
    assert_eq!(doc["provenance"]["reused"], true);
    assert_eq!(doc["provenance"]["from_portal"], false);

    // The signature verifies from the command line too, and fails once the content is altered.
    let db = crate::support::database_url(api._dir.path()).await;
    let blobs = api._dir.path().join("blobs");
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tthc"))
            .args(args)
            .current_dir(crate::support::repo_root())
            .env("TTHC_BLOBS_DIR", &blobs)
            .env_remove("TTHC_ROOT")
            .output()
            .unwrap()
    };
    let out = cli(&["--database", &db, "verify-result", &code, "KQ.LLTP.01"]);
    assert!(
        out.status.success(),
        "{}{}",
        crate::support::stdout(&out),
        crate::support::stderr(&out)
    );
    assert!(crate::support::stdout(&out).contains("\"valid\": true"));
    let sha = v.body["document_sha256"].as_str().unwrap();
    let path = blobs.join(&sha[..2]).join(&sha[2..4]).join(sha);
    std::fs::write(&path, b"an altered certificate").unwrap();
    let out = cli(&["--database", &db, "verify-result", &code, "KQ.LLTP.01"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        crate::support::stdout(&out)
    );
    assert!(crate::support::stdout(&out).contains("\"valid\": false"));
}

/// Who may call what. `A` allowed (anything but 401/403), `F` forbidden (403),
/// `U` unauthenticated (401).
#[tokio::test]
async fn every_route_checks_who_may_call_it() {
    let api = start_api().await;
    let code = api.file_lltp().await["code"].as_str().unwrap().to_owned();
    let task = "tiep_nhan.1";

    let callers: Vec<(&str, Option<String>)> = vec![
        ("anonymous", None),
        ("owner", Some(citizen_token())),
        ("other citizen", Some(other_citizen_token())),
        (
            "officer",
            Some(officer_token(
                "o",
                &[
                    "mot_cua",
                    "chuyen_vien",
                    "lanh_dao_phong",
                    "lanh_dao",
                    "van_thu",
                    "ke_toan",
                ],
            )),
        ),
        ("foreign officer", Some(foreign_officer_token())),
        ("admin", Some(admin_token())),
        ("auditor", Some(auditor_token())),
    ];
    // Columns follow `callers`.
    let table: Vec<(Method, String, Value, &str)> = vec![
        (Method::GET, "/health".into(), Value::Null, "AAAAAAA"),
        (Method::GET, "/ready".into(), Value::Null, "AAAAAAA"),
        (Method::GET, "/metrics".into(), Value::Null, "AAAAAAA"),
        (Method::GET, "/openapi.json".into(), Value::Null, "AAAAAAA"),
        (
            Method::GET,
            "/api/v1/procedures".into(),
            Value::Null,
            "UAAAAAA",
        ),
        (
            Method::GET,
            "/api/v1/procedures/2.000488".into(),
            Value::Null,
            "UAAAAAA",
        ),
        (
            Method::GET,
            "/api/v1/holidays".into(),
            Value::Null,
            "UAAAAAA",
        ),
        (
            Method::POST,
            "/api/v1/admin/procedures/validate".into(),
            Value::Null,
            "UFFFFAF",
        ),
        (
            Method::POST,
            "/api/v1/admin/procedures".into(),
            Value::Null,
            "UFFFFAF",
        ),
        (
            Method::GET,
            "/api/v1/admin/incidents".into(),
            Value::Null,
            "UFFFFAF",
        ),
        (
            Method::POST,
            format!("/api/v1/admin/incidents/{code}/i1"),
            json!({"action": "retry"}),
            "UFFFFAF",
        ),
        (
            Method::POST,
            "/api/v1/dossiers".into(),
            json!({"procedure_code": "2.000488", "agency_code": AGENCY}),
            "UAAAAFF",
        ),
        (
            Method::GET,
            "/api/v1/dossiers".into(),
            Value::Null,
            "UFFAAAA",
        ),
        (
            Method::GET,
            "/api/v1/me/dossiers".into(),
            Value::Null,
            "UAAFFFF",
        ),
        (
            Method::GET,
            format!("/api/v1/dossiers/{code}"),
            Value::Null,
            "UAFAFAA",
        ),
        (
            Method::GET,
            format!("/api/v1/dossiers/{code}/notifications"),
            Value::Null,
            "UAFAFAA",
        ),
        (
            Method::GET,
            format!("/api/v1/dossiers/{code}/events"),
            Value::Null,
            "UAFAFAA",
        ),
        (
            Method::GET,
            format!("/api/v1/dossiers/{code}/replay"),
            Value::Null,
            "UFFFFAA",
        ),
        (
            Method::GET,
            "/api/v1/audit/verify".into(),
            Value::Null,
            "UFFFFAA",
        ),
        (Method::GET, "/api/v1/tasks".into(), Value::Null, "UFFAAFF"),
        (
            Method::POST,
            format!("/api/v1/dossiers/{code}/tasks/{task}/release"),
            json!(null),
            "UFFAFFF",
        ),
        (
            Method::POST,
            format!("/api/v1/dossiers/{code}/tasks/{task}/complete"),
            json!({"outcome": "bogus"}),
            "UFFAFFF",
        ),
        (
            Method::POST,
            format!("/api/v1/dossiers/{code}/request-supplement"),
            json!({"reason": "x", "missing": ["bogus"]}),
            "UFFAFFF",
        ),
        (
            Method::POST,
            format!("/api/v1/dossiers/{code}/supplement"),
            json!({"data": {}}),
            "UAFAFFF",
        ),
        (
            Method::POST,
            format!("/api/v1/dossiers/{code}/payments"),
            json!({"fee_code": "X", "amount_vnd": 1}),
            "UFFAFFF",
        ),
        (
            Method::POST,
            format!("/api/v1/dossiers/{code}/sign"),
            json!({"result_code": "KQ.LLTP.01"}),
            "UFFAFFF",
        ),
        (
            Method::POST,
            format!("/api/v1/dossiers/{code}/return"),
            json!(null),
            "UFFAFFF",
        ),
        (
            Method::POST,
            format!("/api/v1/dossiers/{code}/stop"),
            json!({"reason": " "}),
            "UFFAFFF",
        ),
        (
            Method::POST,
            format!("/api/v1/dossiers/{code}/refuse"),
            json!({"reason": " "}),
            "UFFAFFF",
        ),
        (
            Method::POST,
            format!("/api/v1/dossiers/{code}/withdraw"),
            json!({"reason": " "}),
            "UAFAFFF",
        ),
        (
            Method::POST,
            format!("/api/v1/dossiers/{code}/tasks/{task}/claim"),
            json!(null),
            "UFFAFFF",
        ),
        (
            Method::POST,
            format!("/api/v1/dossiers/{code}/receive"),
            json!(null),
            "UFFAFFF",
        ),
        (
            Method::POST,
            "/api/v1/uploads".into(),
            Value::Null,
            "UAAAAFF",
        ),
        (
            Method::POST,
            format!("/api/v1/dossiers/{code}/documents"),
            json!({"component": "to_khai", "name": "x", "sha256": "0".repeat(64)}),
            "UAFAFFF",
        ),
        (
            Method::GET,
            format!("/api/v1/dossiers/{code}/documents/none/content"),
            Value::Null,
            "UAFAFAA",
        ),
        (
            Method::GET,
            "/api/v1/me/papers".into(),
            Value::Null,
            "UAAFFFF",
        ),
        (
            Method::GET,
            format!("/api/v1/dossiers/{code}/components/giay_to_tuy_than/candidates"),
            Value::Null,
            "UAFAFFF",
        ),
        (
            Method::POST,
            format!("/api/v1/dossiers/{code}/components/giay_to_tuy_than/reuse"),
            json!({"paper_id": "x", "source": "local"}),
            "UAFAFFF",
        ),
        (
            Method::GET,
            format!("/api/v1/dossiers/{code}/results/KQ.LLTP.01/verification"),
            Value::Null,
            "UAFAFAA",
        ),
    ];

    // Every documented operation is in the table, and every row is documented.
    let doc = api.get("/openapi.json", "").await.body;
    let mut documented: Vec<String> = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            documented.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    let templated = |p: &str| {
        p.replace(&code, "{code}")
            .replace(task, "{task}")
            .replace("/i1", "/{incident}")
            .replace("2.000488", "{code}")
            .replace("/none/", "/{id}/")
            .replace("giay_to_tuy_than", "{component}")
            .replace("KQ.LLTP.01", "{result_code}")
    };
    let mut rows: Vec<String> = table
        .iter()
        .map(|(m, p, _, _)| format!("{m} {}", templated(p)))
        .collect();
    rows.retain(|r| r != "GET /openapi.json");
    documented.sort();
    rows.sort();
    assert_eq!(
        documented, rows,
        "the matrix covers exactly the documented routes"
    );

    let mut failures = Vec::new();
    for (method, path, body, expect) in &table {
        for ((who, token), want) in callers.iter().zip(expect.chars()) {
            let mut rb = api.request(method.clone(), path);
            if let Some(t) = token {
                rb = rb.bearer_auth(t);
            }
            if path.contains("/admin/procedures") {
                rb = rb
                    .header("content-type", "application/yaml")
                    .body("code: x");
            } else if path.ends_with("/uploads") {
                rb = rb.header("content-type", "text/plain").body("giấy tờ");
            } else if !body.is_null() || *method == Method::POST {
                rb = rb.json(body);
            }
            let r = api.send(rb).await;
            let got = match r.status.as_u16() {
                401 => 'U',
                403 => 'F',
                _ => 'A',
            };
            if got != want {
                failures.push(format!(
                    "{method} {path} as {who}: expected {want}, got {} {}",
                    r.status, r.text
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn bad_requests_get_documented_problems_and_never_a_server_error() {
    let api = start_api().await;
    let citizen = citizen_token();
    let filed = api.file_lltp().await;
    let code = filed["code"].as_str().unwrap().to_owned();

    let problem = |r: &Reply, status: u16, code: &str| {
        assert_eq!(r.status.as_u16(), status, "{}", r.text);
        assert_eq!(r.body["code"], code, "{}", r.text);
        assert_eq!(r.headers["content-type"], "application/problem+json");
    };

    let malformed = api
        .send(
            api.request(Method::POST, "/api/v1/dossiers")
                .bearer_auth(&citizen)
                .header("content-type", "application/json")
                .body("{\"procedure_code\": "),
        )
        .await;
    problem(&malformed, 400, "malformed_body");
    let unknown = api
        .post(
            "/api/v1/dossiers",
            &citizen,
            json!({"procedure_code": "2.000488", "agency_code": AGENCY, "colour": "red"}),
        )
        .await;
    problem(&unknown, 422, "invalid_body");
    assert!(
        unknown.body["detail"].as_str().unwrap().contains("colour"),
        "{}",
        unknown.text
    );
    let wrong_type = api
        .send(
            api.request(Method::POST, "/api/v1/dossiers")
                .bearer_auth(&citizen)
                .header("content-type", "text/plain")
                .body("{}"),
        )
        .await;
    problem(&wrong_type, 415, "unsupported_media_type");
    let huge = json!({"procedure_code": "2.000488", "agency_code": AGENCY, "data": {"to_khai": {"muc_dich": "x".repeat(100_000)}}});
    let too_big = api.post("/api/v1/dossiers", &citizen, huge).await;
    problem(&too_big, 413, "body_too_large");

    problem(
        &api.call(Method::GET, "/api/v1/me/dossiers", None, None)
            .await,
        401,
        "unauthenticated",
    );
    problem(
        &api.get("/api/v1/me/dossiers", "not-a-token").await,
        401,
        "invalid_token",
    );
    let forged = token_for(UserKind::Admin, "x", &[], None, None).replace('.', "x.");
    problem(
        &api.get("/api/v1/me/dossiers", &forged).await,
        401,
        "invalid_token",
    );
    let expired = {
        let mut c = tthc_api::auth::claims(
            UserKind::Citizen,
            "c",
            "c",
            vec![],
            None,
            Some(CITIZEN_ID.into()),
            chrono::Duration::minutes(1),
        );
        c.exp = chrono::Utc::now().timestamp() - 3600;
        tthc_api::auth::mint(SECRET.as_bytes(), &c).unwrap()
    };
    problem(
        &api.get("/api/v1/me/dossiers", &expired).await,
        401,
        "token_expired",
    );

    // Another agency's dossier.
    problem(
        &api.get(
            &format!("/api/v1/dossiers/{code}"),
            &foreign_officer_token(),
        )
        .await,
        403,
        "forbidden",
    );
    problem(
        &api.post(
            &format!("/api/v1/dossiers/{code}/receive"),
            &foreign_officer_token(),
            json!(null),
        )
        .await,
        403,
        "forbidden",
    );
    // A stranger's dossier.
    problem(
        &api.get(&format!("/api/v1/dossiers/{code}"), &other_citizen_token())
            .await,
        403,
        "forbidden",
    );
    problem(
        &api.get("/api/v1/dossiers/000.00.01.H59-991231-0001", &admin_token())
            .await,
        404,
        "dossier_not_found",
    );
    problem(
        &api.get("/api/v1/nothing-here", &admin_token()).await,
        404,
        "not_found",
    );

    // Form violations come back with JSON pointers into the request.
    let mut form = crate::engine_support::lltp_form(1);
    form["ngay_sinh"] = json!(17);
    let r = api
        .post(
            "/api/v1/dossiers",
            &citizen,
            json!({"procedure_code": "2.000488", "agency_code": AGENCY, "data": {"to_khai": form}}),
        )
        .await;
    problem(&r, 422, "invalid_form");
    assert!(
        r.body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["pointer"] == "/data/to_khai/ngay_sinh"),
        "{}",
        r.text
    );

    // A stale If-Match is a conflict with the current version.
    let desk = officer_token("desk", &["mot_cua"]);
    let stale = api
        .send(
            api.request(Method::POST, &format!("/api/v1/dossiers/{code}/receive"))
                .bearer_auth(&desk)
                .header("if-match", "\"1\""),
        )
        .await;
    problem(&stale, 409, "conflict");
    assert!(stale.body["current_seq"].as_u64().unwrap() >= filed["seq"].as_u64().unwrap());
    // The worker may record a job on the dossier meanwhile: read, act with If-Match, and on a
    // conflict read again, as a client should.
    let mut ok = None;
    for _ in 0..20 {
        let current = api
            .get(&format!("/api/v1/dossiers/{code}"), &desk)
            .await
            .body["seq"]
            .to_string();
        let r = api
            .send(
                api.request(Method::POST, &format!("/api/v1/dossiers/{code}/receive"))
                    .bearer_auth(&desk)
                    .header("if-match", format!("\"{current}\"")),
            )
            .await;
        if r.status == StatusCode::CONFLICT && r.body["code"] == "conflict" {
            continue;
        }
        ok = Some(r);
        break;
    }
    let ok = ok.expect("the dossier settles");
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    problem(
        &api.post(
            &format!("/api/v1/dossiers/{code}/receive"),
            &desk,
            json!(null),
        )
        .await,
        409,
        "invalid_state",
    );

    // Idempotency: a retried filing files once; the same key for another request is refused.
    let body = json!({"procedure_code": "2.000488", "agency_code": AGENCY, "data": {"to_khai": crate::engine_support::lltp_form(2)}});
    let first = api
        .send(
            api.request(Method::POST, "/api/v1/dossiers")
                .bearer_auth(&citizen)
                .header("idempotency-key", "k-1")
                .json(&body),
        )
        .await;
    let again = api
        .send(
            api.request(Method::POST, "/api/v1/dossiers")
                .bearer_auth(&citizen)
                .header("idempotency-key", "k-1")
                .json(&body),
        )
        .await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(first.body["code"], again.body["code"]);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    let mine = api.get("/api/v1/me/dossiers", &citizen).await;
    assert_eq!(mine.body.as_array().unwrap().len(), 2, "filed once");
    let reused = api
        .send(
            api.request(Method::POST, "/api/v1/dossiers")
                .bearer_auth(&citizen)
                .header("idempotency-key", "k-1")
                .json(&json!({"procedure_code": "2.000488", "agency_code": AGENCY})),
        )
        .await;
    problem(&reused, 422, "idempotency_key_reused");
}

#[tokio::test]
async fn administrators_validate_and_deploy_definitions_over_http() {
    let api = start_api().await;
    let admin = admin_token();
    let text =
        std::fs::read_to_string(crate::support::repo_root().join("procedures/cap-phieu-lltp.yaml"))
            .unwrap();
    let post_yaml = |path: &'static str, body: String| {
        api.request(Method::POST, path)
            .bearer_auth(&admin)
            .header("content-type", "application/yaml")
            .body(body)
    };
    let bad = text.replace("next: phan_loai", "next: phan_loaii");
    let r = api
        .send(post_yaml("/api/v1/admin/procedures/validate", bad.clone()))
        .await;
    assert_eq!(r.body["valid"], false);
    assert!(
        r.body["diagnostics"][0]["message"]
            .as_str()
            .unwrap()
            .contains("phan_loaii"),
        "{}",
        r.text
    );
    assert!(r.body["diagnostics"][0]["line"].as_u64().unwrap() > 1);
    let r = api.send(post_yaml("/api/v1/admin/procedures", bad)).await;
    assert_eq!(r.status.as_u16(), 422, "{}", r.text);
    assert_eq!(r.body["code"], "invalid_definition");

    let r = api
        .send(post_yaml("/api/v1/admin/procedures", text.clone()))
        .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "already deployed at start: {}",
        r.text
    );
    assert_eq!(r.body["result"], "unchanged");
    let v2 = text.replace("version: 1", "version: 2");
    let r = api
        .send(
            post_yaml("/api/v1/admin/procedures", v2.clone()).header("idempotency-key", "deploy-2"),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["version"], 2);
    let again = api
        .send(post_yaml("/api/v1/admin/procedures", v2).header("idempotency-key", "deploy-2"))
        .await;
    assert_eq!(again.status, StatusCode::CREATED);
    let shown = api
        .get("/api/v1/procedures/2.000488", &citizen_token())
        .await;
    assert_eq!(shown.body["version"], 2);
    let v1 = api
        .get("/api/v1/procedures/2.000488?version=1", &citizen_token())
        .await;
    assert_eq!(v1.body["version"], 1);
    let metrics = api.call(Method::GET, "/metrics", None, None).await;
    assert!(
        metrics.text.contains("tthc_http_requests_total"),
        "{}",
        metrics.text
    );
    assert!(metrics.text.contains("tthc_jobs_pending"));
}

#[tokio::test]
async fn documents_are_uploaded_attached_digitized_and_downloaded() {
    let api = start_api().await;
    let citizen = citizen_token();
    let desk = officer_token("desk", &["mot_cua"]);
    let code = api.file_lltp().await["code"].as_str().unwrap().to_owned();

    let upload = |token: &str, ct: &str, body: &'static [u8]| {
        api.request(Method::POST, "/api/v1/uploads")
            .bearer_auth(token.to_owned())
            .header("content-type", ct.to_owned())
            .body(body)
    };
    let r = api
        .send(upload(&citizen, "application/x-msdownload", b"MZ..."))
        .await;
    assert_eq!(r.status.as_u16(), 415, "{}", r.text);
    let r = api
        .send(upload(&citizen, "application/pdf", b"not a pdf"))
        .await;
    assert_eq!(r.body["code"], "content_mismatch", "{}", r.text);
    let r = api
        .send(upload(
            &citizen,
            "application/pdf",
            b"%PDF-1.7 scan of an ID card",
        ))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let sha = r.body["sha256"].as_str().unwrap().to_owned();
    let again = api
        .send(upload(
            &citizen,
            "application/pdf",
            b"%PDF-1.7 scan of an ID card",
        ))
        .await;
    assert_eq!(
        again.body["sha256"],
        sha.as_str(),
        "content-addressed: same bytes, same id"
    );

    // Someone else cannot attach content they did not upload.
    let r = api
        .post(
            &format!("/api/v1/dossiers/{code}/documents"),
            &desk,
            json!({"component": "giay_to_tuy_than", "name": "CCCD", "sha256": sha}),
        )
        .await;
    assert_eq!(r.body["code"], "unknown_upload", "{}", r.text);
    let r = api
        .post(&format!("/api/v1/dossiers/{code}/documents"), &citizen, json!({"component": "giay_to_tuy_than", "name": "Bản chụp CCCD", "kind": "copy", "sha256": sha}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let doc_id = r.body["documents"][0]["id"].as_str().unwrap().to_owned();
    let content = api
        .get(
            &format!("/api/v1/dossiers/{code}/documents/{doc_id}/content"),
            &citizen,
        )
        .await;
    assert_eq!(content.text, "%PDF-1.7 scan of an ID card");
    assert_eq!(content.headers["x-content-sha256"], sha.as_str());
    let stranger = api
        .get(
            &format!("/api/v1/dossiers/{code}/documents/{doc_id}/content"),
            &other_citizen_token(),
        )
        .await;
    assert_eq!(stranger.status.as_u16(), 403);

    // At the desk a paper is digitized: kept in the owner's Kho DL as an electronic certified
    // copy sealed by the agency.
    let scan = api
        .send(upload(
            &desk,
            "image/png",
            b"\x89PNG proof of student status",
        ))
        .await;
    let scan_sha = scan.body["sha256"].as_str().unwrap().to_owned();
    let r = api
        .post(
            &format!("/api/v1/dossiers/{code}/documents"),
            &desk,
            json!({"component": "giay_to_mien_giam", "name": "Thẻ sinh viên", "kind": "original", "sha256": scan_sha,
                   "digitized": {"number": "SV-2026-1", "issued_at": "2025-09-01T00:00:00Z", "issuing_agency": "Trường Đại học Y Hà Nội"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let digitized = r.body["documents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["component"] == "giay_to_mien_giam")
        .unwrap()
        .clone();
    assert_eq!(digitized["provenance"]["digitized"], true);
    assert_eq!(
        digitized["provenance"]["signatures"][0]["signer_kind"],
        "agency"
    );
    let papers = api.get("/api/v1/me/papers", &citizen).await;
    let paper = papers
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["provenance"] == "digitized_here")
        .cloned();
    assert!(
        paper.is_some_and(|p| p["signatures"] == 1 && p["kind"] == "component"),
        "{}",
        papers.text
    );
    // A citizen does not digitize.
    let r = api
        .post(
            &format!("/api/v1/dossiers/{code}/documents"),
            &citizen,
            json!({"component": "giay_to_mien_giam", "name": "x", "sha256": sha, "digitized": {"issued_at": "2025-09-01T00:00:00Z", "issuing_agency": "x"}}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 403, "{}", r.text);
}

/// Commands are refused with 403 to whoever may not see the dossier, and the check that
/// answers owners and the holding agency from the node's last seen state still lets an
/// officer of another agency act where a task of theirs is open, and only then.
#[tokio::test]
async fn an_officer_of_another_agency_acts_only_through_an_open_task_of_theirs() {
    let api = start_api().await;
    let forbidden = |r: &Reply| {
        assert_eq!(r.status.as_u16(), 403, "{}", r.text);
        assert_eq!(r.body["code"], "forbidden", "{}", r.text);
    };
    let desk = officer_token("desk", &["mot_cua"]);
    let specialist = officer_token("specialist", &["chuyen_vien"]);
    let police = token_for(
        UserKind::Officer,
        "police",
        &["xac_minh"],
        Some("000.00.17.H59"),
        None,
    );
    let code = api.file_lltp().await["code"].as_str().unwrap().to_owned();
    let url = |path: &str| format!("/api/v1/dossiers/{code}/{path}");

    // Before any task of theirs: not theirs to see, nor to act on.
    forbidden(&api.post(&url("receive"), &police, json!(null)).await);
    let r = api.post(&url("receive"), &desk, json!(null)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let d = api
        .wait_for(&code, "the verification task", |d| has_task(d, "tham_dinh"))
        .await;
    let task = task_of(&d, "tham_dinh");
    let r = api
        .post(
            &url(&format!("tasks/{task}/complete")),
            &specialist,
            json!({"data": {"co_an_tich": false, "can_xac_minh": true,
                            "ly_do_xac_minh": ["cu_tru_nhieu_noi"]}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    // The police's verification task is open: they claim and complete it.
    let task = task_of(&r.body, "xac_minh_cong_an");
    let r = api
        .post(&url(&format!("tasks/{task}/claim")), &police, json!(null))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = api
        .post(
            &url(&format!("tasks/{task}/complete")),
            &police,
            json!({"data": {"co_thong_tin_an_tich": false, "so_van_ban_tra_loi": "12/CV-PC",
                            "ngay_tra_loi": "2026-03-05"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    // Their task done, the dossier is no longer theirs to act on.
    forbidden(
        &api.post(&url(&format!("tasks/{task}/claim")), &police, json!(null))
            .await,
    );
}

/// A client polling a dossier sends the last `ETag` it saw: `304 Not Modified` without a body
/// while the dossier has not moved, the whole dossier once it has, and never an answer of
/// either kind to a caller who may not read it.
#[tokio::test]
async fn a_polling_client_is_told_not_modified_until_the_dossier_moves() {
    let api = start_api().await;
    let citizen = citizen_token();
    let desk = officer_token("desk", &["mot_cua"]);
    let code = api.file_lltp().await["code"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/dossiers/{code}");
    let poll_at = |path: &str, token: &str, tag: &str| {
        api.send(
            api.request(Method::GET, path)
                .bearer_auth(token)
                .header("if-none-match", tag),
        )
    };
    let poll = |token: &str, tag: &str| poll_at(&path, token, tag);
    let r = api
        .post(&format!("{path}/receive"), &desk, json!(null))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    api.wait_for(&code, "the verification task", |d| has_task(d, "tham_dinh"))
        .await;

    // The worker's hooks may still move it for a moment (a failed call is retried later):
    // take a tag now, wait until no job of it is pending, then poll until it rests.
    let mut tag = api.get(&path, &citizen).await.headers["etag"]
        .to_str()
        .unwrap()
        .to_owned();
    let pending = || async {
        let d = api.state.engine.dossier(&code).await.unwrap();
        d.all_jobs()
            .any(|j| j.state == engine::dossier::JobState::Pending)
    };
    for _ in 0..500 {
        if !pending().await {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(!pending().await, "the dossier's hooks ran within 10 s");
    let mut rested = None;
    for _ in 0..250 {
        let r = poll(&citizen, &tag).await;
        if r.status == StatusCode::NOT_MODIFIED {
            rested = Some(r);
            break;
        }
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let seq = r.body["seq"].as_u64().unwrap();
        assert!(
            seq > tag.trim_matches('"').parse::<u64>().unwrap(),
            "a full answer only when the dossier moved past {tag}: {}",
            r.text
        );
        tag = r.headers["etag"].to_str().unwrap().to_owned();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let r = rested.expect("the dossier rests once its hooks ran");
    assert_eq!(r.headers["etag"], tag.as_str(), "304 carries the same ETag");
    assert!(r.text.is_empty(), "no body with 304: {}", r.text);
    let seq: u64 = tag.trim_matches('"').parse().unwrap();

    // Weak tags, lists and `*` name it too; an older version gets the whole dossier.
    for same in [format!("W/{tag}"), format!("\"1\", {tag}"), "*".to_owned()] {
        let r = poll(&citizen, &same).await;
        assert_eq!(r.status, StatusCode::NOT_MODIFIED, "{same}: {}", r.text);
    }
    let r = poll(&citizen, &format!("\"{}\"", seq - 1)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["seq"], seq);
    assert_eq!(r.body["code"], code.as_str());

    // Not a way to learn a stranger's dossier exists or how far it went.
    for tag in [tag.as_str(), "*"] {
        let r = poll(&other_citizen_token(), tag).await;
        assert_eq!(r.status.as_u16(), 403, "{tag}: {}", r.text);
    }
    let r = poll_at("/api/v1/dossiers/000.00.01.H59-260101-9999", &citizen, "*").await;
    assert_eq!(r.status.as_u16(), 404, "{}", r.text);

    // Once it moves (the specialist claims), the old tag gets the new version in full.
    let task = task_of(&api.get(&path, &citizen).await.body, "tham_dinh");
    let specialist = officer_token("specialist", &["chuyen_vien"]);
    let r = api
        .post(
            &format!("{path}/tasks/{task}/claim"),
            &specialist,
            json!(null),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = poll(&citizen, &tag).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(r.body["seq"].as_u64().unwrap() > seq, "{}", r.text);
    assert_ne!(r.headers["etag"], tag.as_str());
}
