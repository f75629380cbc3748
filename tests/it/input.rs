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
