//! Input a client sends is checked, and refusals name what to fix: form formats, JSON pointers
//! into the request body, conflicts as conflicts, no server error for operator or data
//! problems. All over real HTTP against a fresh server.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::api_support::*;
use crate::engine_support::{AGENCY, lltp_form};

/// A problem+json answer with this status and code; its field pointers.
fn problem(r: &Reply, status: u16, code: &str) -> Vec<String> {
    assert_eq!(r.status.as_u16(), status, "{}", r.text);
    assert_eq!(r.body["code"], code, "{}", r.text);
    assert_eq!(r.headers["content-type"], "application/problem+json");
    r.body["errors"]
        .as_array()
        .map(|e| {
            e.iter()
                .map(|e| e["pointer"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn file_with(api: &Api, edit: impl FnOnce(&mut Value)) -> Reply {
    let mut form = lltp_form(1);
    edit(&mut form);
    api.post(
        "/api/v1/dossiers",
        &citizen_token(),
        json!({"procedure_code": "2.000488", "agency_code": AGENCY, "data": {"to_khai": form}}),
    )
    .await
}

#[tokio::test]
async fn formats_of_filed_forms_are_checked_with_pointers_to_the_field() {
    let api = start_api().await;
    let cases: &[(&str, Value)] = &[
        ("ngay_sinh", json!("17/05/1990")),
        ("ngay_sinh", json!("1990-13-45")),
        ("ngay_sinh", json!("2026-02-30")),
        ("email", json!("abc")),
        ("so_cccd", json!("12345")),
        ("so_cccd", json!("999099012345")),
        ("dien_thoai", json!("12")),
    ];
    for (field, value) in cases {
        let r = file_with(&api, |f| f[*field] = value.clone()).await;
        let pointers = problem(&r, 422, "invalid_form");
        assert_eq!(
            pointers,
            vec![format!("/data/to_khai/{field}")],
            "{field} = {value}: {}",
            r.text
        );
    }
    // The same form with well-formed values is filed.
    let r = file_with(&api, |f| {
        f["email"] = json!("an@example.vn");
        f["dien_thoai"] = json!("0912 345 678");
    })
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    // Nothing refused was stored: the citizen has exactly the one dossier.
    let mine = api.get("/api/v1/me/dossiers", &citizen_token()).await;
    assert_eq!(mine.body.as_array().unwrap().len(), 1, "{}", mine.text);
}

const HEALTH: &str = "000.00.08.H59";

fn health_officer(sub: &str, roles: &[&str]) -> String {
    token_for(
        tthc_api::auth::UserKind::Officer,
        sub,
        roles,
        Some(HEALTH),
        None,
    )
}

/// A licence dossier (1.012265) received at the health department, waiting at examination.
async fn licence_at_examination(api: &Api) -> (String, Value) {
    let form = json!({"ho_ten": "Nguyễn Văn An", "ngay_sinh": "1990-05-17", "gioi_tinh": "nam",
        "so_cccd": crate::engine_support::CITIZEN_ID, "noi_cu_tru": "Hưng Yên", "chuc_danh": "bac_si",
        "pham_vi_hanh_nghe": "Nội khoa", "van_bang_chuyen_mon": "Bác sĩ",
        "co_so_thuc_hanh": "Bệnh viện tỉnh", "thoi_gian_thuc_hanh_thang": 12});
    let r = api
        .post(
            "/api/v1/dossiers",
            &citizen_token(),
            json!({"procedure_code": "1.012265", "agency_code": HEALTH, "data": {"don_de_nghi": form}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let code = r.body["code"].as_str().unwrap().to_owned();
    let desk = health_officer("desk", &["mot_cua"]);
    let up = api
        .send(
            api.request(reqwest::Method::POST, "/api/v1/uploads")
                .bearer_auth(&desk)
                .header("content-type", "application/pdf")
                .body("%PDF-1.7 a scanned paper"),
        )
        .await;
    assert_eq!(up.status, StatusCode::CREATED, "{}", up.text);
    let sha = up.body["sha256"].as_str().unwrap().to_owned();
    for (component, kind) in [
        ("van_bang", "certified_copy"),
        ("giay_kham_suc_khoe", "original"),
        ("phieu_lltp", "original"),
        ("anh", "original"),
        ("xac_nhan_thuc_hanh", "original"),
    ] {
        let r = api
            .post(
                &format!("/api/v1/dossiers/{code}/documents"),
                &desk,
                json!({"component": component, "name": component, "kind": kind, "sha256": sha}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{component}: {}", r.text);
    }
    let r = api
        .post(
            &format!("/api/v1/dossiers/{code}/receive"),
            &desk,
            json!(null),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let d = api
        .wait_for(&code, "examination", |d| has_task(d, "tham_dinh_ho_so"))
        .await;
    (code, d)
}

#[tokio::test]
async fn an_impossible_council_date_is_refused_with_a_pointer_into_the_completion_body() {
    let api = start_api().await;
    let (code, d) = licence_at_examination(&api).await;
    let task = task_of(&d, "tham_dinh_ho_so");
    let specialist = health_officer("cv", &["chuyen_vien"]);
    let url = format!("/api/v1/dossiers/{code}/tasks/{task}/complete");
    let complete = |data: Value| api.post(&url, &specialist, json!({ "data": data }));
    for date in ["2026-02-30", "30/12/2026", "2026-13-01"] {
        let r = complete(json!({"hop_le": true, "can_hoi_dong": true, "ngay_hop_hoi_dong": date}))
            .await;
        let pointers = problem(&r, 422, "invalid_form");
        assert_eq!(
            pointers,
            vec!["/data/ngay_hop_hoi_dong"],
            "{date}: {}",
            r.text
        );
    }
    let r = complete(json!({"hop_le": "có", "can_hoi_dong": false})).await;
    assert_eq!(
        problem(&r, 422, "invalid_form"),
        vec!["/data/hop_le"],
        "{}",
        r.text
    );
    // Nothing was stored: the task is still open, and a good date is taken.
    let r =
        complete(json!({"hop_le": true, "can_hoi_dong": true, "ngay_hop_hoi_dong": "2026-12-30"}))
            .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(!has_task(&r.body, "tham_dinh_ho_so"), "{}", r.text);
}

#[tokio::test]
async fn completion_and_supplement_refusals_point_into_the_body_sent() {
    let api = start_api().await;
    let (code, task, _) = lltp_at_verification(&api).await;
    let specialist = officer_token("specialist", &["chuyen_vien"]);
    let head = officer_token("head", &["lanh_dao_phong"]);
    let url = format!("/api/v1/dossiers/{code}/tasks/{task}/complete");
    let r = api
        .post(
            &url,
            &specialist,
            json!({"data": {"co_an_tich": "không", "can_xac_minh": false}}),
        )
        .await;
    assert_eq!(
        problem(&r, 422, "invalid_form"),
        vec!["/data/co_an_tich"],
        "{}",
        r.text
    );
    let r = api.post(&url, &specialist, json!({})).await;
    assert_eq!(
        problem(&r, 422, "invalid_input"),
        vec!["/data"],
        "{}",
        r.text
    );
    let r = api
        .post(
            &url,
            &specialist,
            json!({"data": {"co_an_tich": false, "can_xac_minh": false}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    // An outcome that is not one of the task's.
    let task = task_of(&r.body, "du_thao_phieu");
    api.post(
        &format!("/api/v1/dossiers/{code}/tasks/{task}/complete"),
        &specialist,
        json!({}),
    )
    .await;
    let d = api
        .get(&format!("/api/v1/dossiers/{code}"), &head)
        .await
        .body;
    let task = task_of(&d, "duyet_phong");
    let r = api
        .post(
            &format!("/api/v1/dossiers/{code}/tasks/{task}/complete"),
            &head,
            json!({"outcome": "maybe"}),
        )
        .await;
    assert_eq!(
        problem(&r, 422, "invalid_input"),
        vec!["/outcome"],
        "{}",
        r.text
    );

    // A supplement's forms are pointed at by their id, as the body carries them.
    api.post(
        &format!("/api/v1/dossiers/{code}/tasks/{task}/claim"),
        &head,
        json!(null),
    )
    .await;
    let r = api
        .post(
            &format!("/api/v1/dossiers/{code}/request-supplement"),
            &head,
            json!({"reason": "Bổ sung ngày sinh đúng", "missing": ["to_khai"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let supplement = format!("/api/v1/dossiers/{code}/supplement");
    let mut form = lltp_form(1);
    form["ngay_sinh"] = json!("17/05/1990");
    let r = api
        .post(
            &supplement,
            &citizen_token(),
            json!({"data": {"to_khai": form}}),
        )
        .await;
    assert_eq!(
        problem(&r, 422, "invalid_form"),
        vec!["/data/to_khai/ngay_sinh"],
        "{}",
        r.text
    );
    let r = api
        .post(
            &supplement,
            &citizen_token(),
            json!({"data": {"ghi_chu": {}}}),
        )
        .await;
    assert_eq!(
        problem(&r, 422, "invalid_input"),
        vec!["/data/ghi_chu"],
        "{}",
        r.text
    );

    // A filing that lacks its required form names it where the body would carry it.
    let r = api
        .post(
            "/api/v1/dossiers",
            &citizen_token(),
            json!({"procedure_code": "2.000488", "agency_code": AGENCY, "data": {}}),
        )
        .await;
    assert_eq!(
        problem(&r, 422, "missing_components"),
        vec!["/data/to_khai"],
        "{}",
        r.text
    );
    let r = api
        .post(
            "/api/v1/dossiers",
            &citizen_token(),
            json!({"procedure_code": "2.000488", "agency_code": AGENCY, "data": {"to_khai": lltp_form(1), "la": {}}}),
        )
        .await;
    assert_eq!(
        problem(&r, 422, "invalid_input"),
        vec!["/data/la"],
        "{}",
        r.text
    );
}

/// The dossier received and waiting at verification (tham_dinh), with that task's id.
async fn lltp_at_verification(api: &Api) -> (String, String, Value) {
    let code = api.file_lltp().await["code"].as_str().unwrap().to_owned();
    let desk = officer_token("desk", &["mot_cua"]);
    let r = api
        .post(
            &format!("/api/v1/dossiers/{code}/receive"),
            &desk,
            json!(null),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let d = api
        .wait_for(&code, "verification", |d| has_task(d, "tham_dinh"))
        .await;
    let task = task_of(&d, "tham_dinh");
    // The receipt's jobs (letters, the portal sync) append their outcomes after the task
    // opens: act on the version they leave, once it holds still.
    let d = settled(api, &code).await;
    (code, task, d)
}

/// The dossier once its sequence stops moving (its background jobs have answered).
async fn settled(api: &Api, code: &str) -> Value {
    let path = format!("/api/v1/dossiers/{code}");
    let mut last = api.get(&path, &admin_token()).await.body;
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let now = api.get(&path, &admin_token()).await.body;
        if now["seq"] == last["seq"] {
            return now;
        }
        last = now;
    }
    panic!("dossier {code} kept moving: {last}");
}

/// N officers complete the same task at once; the answers' statuses and codes.
async fn complete_concurrently(
    api: &Api,
    code: &str,
    task: &str,
    n: usize,
    if_match: Option<u64>,
) -> Vec<(u16, String)> {
    let url = format!("{}/api/v1/dossiers/{code}/tasks/{task}/complete", api.base);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let mut rb = api
            .http
            .post(&url)
            .bearer_auth(officer_token(&format!("cv{i}"), &["chuyen_vien"]))
            .json(&json!({"data": {"co_an_tich": false, "can_xac_minh": false}}));
        if let Some(seq) = if_match {
            rb = rb.header("if-match", format!("\"{seq}\""));
        }
        set.spawn(async move {
            let r = rb.send().await.unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            (status, body["code"].as_str().unwrap_or_default().to_owned())
        });
    }
    set.join_all().await
}

#[tokio::test]
async fn of_concurrent_completions_of_one_task_exactly_one_wins_and_the_rest_conflict() {
    let api = start_api().await;
    for if_match in [false, true] {
        let (code, task, d) = lltp_at_verification(&api).await;
        let seq = d["seq"].as_u64().unwrap();
        let answers = complete_concurrently(&api, &code, &task, 8, if_match.then_some(seq)).await;
        let won = answers.iter().filter(|(s, _)| *s == 200).count();
        assert_eq!(won, 1, "if-match {if_match}: {answers:?}");
        for (status, problem) in answers.iter().filter(|(s, _)| *s != 200) {
            assert_eq!(*status, 409, "if-match {if_match}: {answers:?}");
            let expected: &[&str] = if if_match {
                &["conflict"]
            } else {
                &["task_not_open"]
            };
            assert!(
                expected.contains(&problem.as_str()),
                "if-match {if_match}: {answers:?}"
            );
        }
        // The dossier moved on once: one drafting task, one completion in its history.
        let after = api
            .get(&format!("/api/v1/dossiers/{code}"), &admin_token())
            .await;
        let drafts = after.body["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["step"] == "du_thao_phieu")
            .count();
        assert_eq!(drafts, 1, "{}", after.text);

        // A later completion of the completed task, with the current version or without one,
        // is a conflict too.
        let now = after.body["seq"].as_u64().unwrap();
        for later in [None, Some(now)] {
            let answers = complete_concurrently(&api, &code, &task, 1, later).await;
            // The receipt's jobs may still append after `now` was read: then the version sent
            // is stale, and that is the conflict named.
            let moved = api
                .get(&format!("/api/v1/dossiers/{code}"), &admin_token())
                .await
                .body["seq"]
                .as_u64()
                != Some(now);
            let not_open = answers == vec![(409, "task_not_open".to_owned())];
            let stale = later.is_some() && moved && answers == vec![(409, "conflict".to_owned())];
            assert!(not_open || stale, "{later:?}: {answers:?}");
        }
    }
    // A task id this dossier never opened is still not found.
    let (code, _, _) = lltp_at_verification(&api).await;
    let answers = complete_concurrently(&api, &code, "tham_dinh.99", 1, None).await;
    assert_eq!(answers, vec![(404, "not_found".to_owned())]);
}

#[tokio::test]
async fn signing_without_a_key_is_a_problem_saying_what_to_do_and_signs_nothing() {
    // The keys file holds only another agency's seal: neither the leader nor this agency
    // can sign here.
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.yaml");
    std::fs::write(
        &keys,
        format!("agencies:\n  \"{HEALTH}\": \"{}\"\n", "07".repeat(32)),
    )
    .unwrap();
    let api = start_api_with(20, |c| c.keys_file = Some(keys.clone())).await;
    let (code, task, _) = lltp_at_verification(&api).await;
    let specialist = officer_token("specialist", &["chuyen_vien"]);
    let head = officer_token("head", &["lanh_dao_phong"]);
    let leader = officer_token("leader", &["lanh_dao"]);
    let done = |r: &Reply| assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let api = &api;
    let code = code.as_str();
    let complete = |task: String, token: String, body: Value| async move {
        let url = format!("/api/v1/dossiers/{code}/tasks/{task}/complete");
        api.post(&url, &token, body).await
    };
    let r = complete(
        task,
        specialist.clone(),
        json!({"data": {"co_an_tich": false, "can_xac_minh": false}}),
    )
    .await;
    done(&r);
    let r = complete(task_of(&r.body, "du_thao_phieu"), specialist, json!({})).await;
    done(&r);
    let r = complete(
        task_of(&r.body, "duyet_phong"),
        head,
        json!({"outcome": "approve"}),
    )
    .await;
    done(&r);
    let task = task_of(&r.body, "ky_phieu_so_1");
    done(
        &api.post(
            &format!("/api/v1/dossiers/{code}/tasks/{task}/claim"),
            &leader,
            json!(null),
        )
        .await,
    );

    let r = api
        .post(
            &format!("/api/v1/dossiers/{code}/sign"),
            &leader,
            json!({"result_code": "KQ.LLTP.01", "number": "15/2026/LLTP"}),
        )
        .await;
    problem(&r, 409, "signing_key_missing");
    let detail = r.body["detail"].as_str().unwrap();
    assert!(
        detail.contains("officer `leader`") && detail.contains("keys file"),
        "{detail}"
    );
    let after = api
        .get(&format!("/api/v1/dossiers/{code}"), &leader)
        .await
        .body;
    assert_eq!(after["signed_results"], json!([]), "nothing was signed");
    assert!(has_task(&after, "ky_phieu_so_1"), "{after}");

    // Digitizing a paper at the desk needs the agency's seal: the same problem, naming it.
    let desk = officer_token("desk", &["mot_cua"]);
    let scan = api
        .send(
            api.request(reqwest::Method::POST, "/api/v1/uploads")
                .bearer_auth(&desk)
                .header("content-type", "image/png")
                .body(&b"\x89PNG proof of student status"[..]),
        )
        .await;
    assert_eq!(scan.status, StatusCode::CREATED, "{}", scan.text);
    let r = api
        .post(
            &format!("/api/v1/dossiers/{code}/documents"),
            &desk,
            json!({"component": "giay_to_mien_giam", "name": "Thẻ sinh viên", "kind": "original",
                   "sha256": scan.body["sha256"],
                   "digitized": {"number": "SV-2026-1", "issued_at": "2025-09-01T00:00:00Z", "issuing_agency": "Trường Đại học Y Hà Nội"}}),
        )
        .await;
    problem(&r, 409, "signing_key_missing");
    let detail = r.body["detail"].as_str().unwrap();
    assert!(detail.contains(&format!("agency `{AGENCY}`")), "{detail}");
}

#[tokio::test]
async fn a_supplement_of_documents_alone_is_accepted_without_sending_the_forms_again() {
    let api = start_api().await;
    let (code, task, _) = lltp_at_verification(&api).await;
    let specialist = officer_token("specialist", &["chuyen_vien"]);
    let r = api
        .post(
            &format!("/api/v1/dossiers/{code}/tasks/{task}/claim"),
            &specialist,
            json!(null),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = api
        .post(
            &format!("/api/v1/dossiers/{code}/request-supplement"),
            &specialist,
            json!({"reason": "Thiếu bản chụp giấy tờ tùy thân", "missing": ["giay_to_tuy_than"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status"]["code"], 5);
    let supplement = format!("/api/v1/dossiers/{code}/supplement");
    let citizen = citizen_token();
    // Nothing brought yet: still refused, saying what to bring.
    let r = api.post(&supplement, &citizen, json!({})).await;
    assert_eq!(
        problem(&r, 422, "invalid_input"),
        vec!["/data"],
        "{}",
        r.text
    );

    let up = api
        .send(
            api.request(reqwest::Method::POST, "/api/v1/uploads")
                .bearer_auth(&citizen)
                .header("content-type", "application/pdf")
                .body("%PDF-1.7 scan of an ID card"),
        )
        .await;
    assert_eq!(up.status, StatusCode::CREATED, "{}", up.text);
    let r = api
        .post(
            &format!("/api/v1/dossiers/{code}/documents"),
            &citizen,
            json!({"component": "giay_to_tuy_than", "name": "Bản chụp CCCD", "kind": "copy", "sha256": up.body["sha256"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = api.post(&supplement, &citizen, json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status"]["code"], 4, "processing again: {}", r.text);
    assert!(r.body["paused"].is_null(), "{}", r.text);
    assert_eq!(
        r.body["data"]["to_khai"],
        lltp_form(1),
        "the forms are as filed"
    );
}

#[tokio::test]
async fn a_refusal_after_examination_ends_processed_with_status_9() {
    let api = start_api().await;
    let (code, d) = licence_at_examination(&api).await;
    let specialist = health_officer("cv", &["chuyen_vien"]);
    let leader = health_officer("gd", &["lanh_dao"]);
    let task = task_of(&d, "tham_dinh_ho_so");
    let complete = |task: String, token: String, body: Value| {
        let url = format!("/api/v1/dossiers/{code}/tasks/{task}/complete");
        let api = &api;
        async move { api.post(&url, &token, body).await }
    };
    let r = complete(
        task,
        specialist.clone(),
        json!({"data": {"hop_le": false, "can_hoi_dong": false, "ly_do_khong_dat": "Chưa đủ thời gian thực hành"}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = complete(
        task_of(&r.body, "du_thao_van_ban_tu_choi"),
        specialist,
        json!({}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = complete(
        task_of(&r.body, "ky_van_ban_tu_choi"),
        leader,
        json!({"outcome": "approve"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let d = api
        .wait_for(&code, "the refusal letter and the end", |d| {
            d["closed_at"].is_string()
        })
        .await;
    assert_eq!(d["outcome"], "refused", "{d}");
    assert_eq!(d["status"]["code"], 9, "{d}");
    assert_eq!(d["status"]["label"], "Đã xử lý xong", "{d}");
    assert!(
        d["processed_at"].is_string(),
        "finished at the written answer: {d}"
    );

    // A refusal at the desk, before reception, stays "not received" (3).
    let filed = api.file_lltp().await;
    let code = filed["code"].as_str().unwrap();
    let r = api
        .post(
            &format!("/api/v1/dossiers/{code}/refuse"),
            &officer_token("desk", &["mot_cua"]),
            json!({"reason": "Không thuộc thẩm quyền"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let d = api
        .wait_for(code, "the end", |d| d["closed_at"].is_string())
        .await;
    assert_eq!(d["status"]["code"], 3, "{d}");
}

/// A misspelt format is caught by `tthc validate`, never left silently unchecked.
#[test]
fn tthc_validate_refuses_a_form_with_an_unknown_format() {
    let root = tempfile::tempdir().unwrap();
    for dir in ["procedures", "schemas"] {
        let copy = std::process::Command::new("cp")
            .args(["-r"])
            .arg(crate::support::repo_root().join(dir))
            .arg(root.path())
            .status()
            .unwrap();
        assert!(copy.success());
    }
    let form = root.path().join("schemas/forms/to-khai-lltp.schema.json");
    let text = std::fs::read_to_string(&form).unwrap();
    std::fs::write(
        &form,
        text.replace("\"format\": \"cccd\"", "\"format\": \"cccd-x\""),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tthc"))
        .args(["validate", "procedures/cap-phieu-lltp.yaml"])
        .current_dir(root.path())
        .env_remove("TTHC_ROOT")
        .env_remove("TTHC_SCHEMAS")
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        crate::support::stdout(&out),
        crate::support::stderr(&out)
    );
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("unknown format `cccd-x`") && all.contains("phone-vn"),
        "{all}"
    );
}
