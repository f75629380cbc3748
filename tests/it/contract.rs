//! The contract: `/openapi.json` says what the server does. Bad query parameters are refused
//! with `invalid_query` naming them, paging bounds are enforced and declared, errors and
//! documents are documented with the content types they are sent with. (The full check of
//! every operation is schemathesis, `.ci/contract`.)

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::api_support::*;
use crate::engine_support::AGENCY;

fn media_type(headers: &reqwest::header::HeaderMap) -> String {
    headers["content-type"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .trim()
        .to_owned()
}

fn assert_invalid_query(r: &Reply, parameter: &str) {
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(r.body["code"], "invalid_query", "{}", r.text);
    assert_eq!(media_type(&r.headers), "application/problem+json");
    assert_eq!(r.body["extra"]["parameter"], parameter, "{}", r.text);
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("`{parameter}`")),
        "the detail names the parameter: {}",
        r.text
    );
}

#[tokio::test]
async fn bad_query_parameters_are_refused_naming_the_parameter() {
    let api = start_api().await;
    let citizen = citizen_token();
    let officer = officer_token("desk", &["mot_cua"]);
    let admin = admin_token();
    api.file_lltp().await;
    api.file_lltp().await;

    for (path, token, parameter) in [
        ("/api/v1/me/dossiers?limit=0", &citizen, "limit"),
        ("/api/v1/me/dossiers?limit=201", &citizen, "limit"),
        ("/api/v1/me/dossiers?limit=abc", &citizen, "limit"),
        ("/api/v1/me/dossiers?offset=-1", &citizen, "offset"),
        ("/api/v1/me/dossiers?offset=3000000000", &citizen, "offset"),
        ("/api/v1/me/dossiers?colour=red", &citizen, "colour"),
        ("/api/v1/tasks?limit=0", &officer, "limit"),
        ("/api/v1/tasks?mine=perhaps", &officer, "mine"),
        ("/api/v1/dossiers?limit=1000", &admin, "limit"),
        ("/api/v1/dossiers?status=0", &admin, "status"),
        ("/api/v1/dossiers?status=11", &admin, "status"),
        ("/api/v1/holidays?year=next", &admin, "year"),
        ("/api/v1/procedures/2.000488?version=x", &admin, "version"),
        (
            "/api/v1/audit/verify?dossier=a&dossier=b",
            &admin,
            "dossier",
        ),
    ] {
        let r = api.get(path, token).await;
        assert_invalid_query(&r, parameter);
    }

    // In bounds: answered, and the limit is the one asked for.
    let one = api.get("/api/v1/me/dossiers?limit=1", &citizen).await;
    assert_eq!(one.status, StatusCode::OK, "{}", one.text);
    assert_eq!(one.body.as_array().unwrap().len(), 1);
    let all = api
        .get("/api/v1/me/dossiers?limit=200&offset=0", &citizen)
        .await;
    assert_eq!(all.body.as_array().unwrap().len(), 2, "{}", all.text);
    let skipped = api.get("/api/v1/me/dossiers?offset=1", &citizen).await;
    assert_eq!(skipped.body.as_array().unwrap().len(), 1);
    let filed = api.get("/api/v1/dossiers?status=1&limit=5", &admin).await;
    assert_eq!(filed.body.as_array().unwrap().len(), 2, "{}", filed.text);
}

#[tokio::test]
async fn the_openapi_document_declares_paging_bounds_problem_json_and_headers() {
    let api = start_api().await;
    let doc = api.get("/openapi.json", "").await.body;

    // Every error answer is documented as problem+json, never as plain JSON.
    let mut defaults = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for (status, response) in op["responses"].as_object().unwrap() {
                let content = response["content"].as_object();
                let problem = content.is_some_and(|c| {
                    c.values()
                        .any(|m| m["schema"]["$ref"] == "#/components/schemas/Problem")
                });
                if problem {
                    let types: Vec<&String> = content.unwrap().keys().collect();
                    assert_eq!(
                        types,
                        ["application/problem+json"],
                        "{method} {path} {status}"
                    );
                    defaults += 1;
                }
            }
        }
    }
    assert!(defaults >= 30, "{defaults} problem answers documented");

    // Paging bounds, as the server enforces them.
    for (path, method) in [
        ("/api/v1/me/dossiers", "get"),
        ("/api/v1/tasks", "get"),
        ("/api/v1/dossiers", "get"),
    ] {
        let params = doc["paths"][path][method]["parameters"].as_array().unwrap();
        let param = |name: &str| {
            params
                .iter()
                .find(|p| p["name"] == name)
                .unwrap_or_else(|| panic!("{path}: no {name}"))["schema"]
                .clone()
        };
        assert_eq!(
            param("limit")["type"],
            "integer",
            "{path}: absent, never null"
        );
        assert_eq!(param("limit")["minimum"], 1, "{path}");
        assert_eq!(param("limit")["maximum"], 200, "{path}");
        assert_eq!(param("offset")["minimum"], 0, "{path}");
        assert_eq!(param("offset")["maximum"], i32::MAX, "{path}");
    }

    // The Problem schema: optional members are absent, never null.
    let problem = &doc["components"]["schemas"]["Problem"];
    assert_eq!(problem["properties"]["current_seq"]["type"], "integer");
    assert_eq!(problem["properties"]["extra"]["type"], "object");
    assert_eq!(problem["properties"]["errors"]["type"], "array");
    let required: Vec<&str> = problem["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for optional in ["errors", "current_seq", "extra"] {
        assert!(!required.contains(&optional), "{optional} is optional");
    }
    // A document's provenance is null for an upload.
    let provenance = &doc["components"]["schemas"]["DocumentView"]["properties"]["provenance"];
    assert!(
        provenance["type"]
            .as_array()
            .is_some_and(|t| t.contains(&json!("null"))),
        "{provenance}"
    );

    // Conditional and idempotency headers, and the ETag answer header.
    let receive = &doc["paths"]["/api/v1/dossiers/{code}/receive"]["post"];
    let if_match = receive["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "If-Match" && p["in"] == "header")
        .expect("If-Match is declared");
    assert_eq!(if_match["schema"]["type"], "string");
    assert!(receive["responses"]["200"]["headers"]["ETag"].is_object());
    let get = &doc["paths"]["/api/v1/dossiers/{code}"]["get"];
    assert!(get["responses"]["200"]["headers"]["ETag"].is_object());
    assert!(get["responses"]["304"]["headers"]["ETag"].is_object());
    let file = &doc["paths"]["/api/v1/dossiers"]["post"];
    let key = file["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "Idempotency-Key" && p["in"] == "header")
        .expect("Idempotency-Key is declared");
    assert_eq!(key["schema"]["maxLength"], 200);
    assert!(file["responses"]["201"]["headers"]["ETag"].is_object());
    assert!(file["responses"]["201"]["headers"]["Idempotent-Replayed"].is_object());
    // A filed dossier's code leads to the operations on it.
    let links = &file["responses"]["201"]["links"];
    assert_eq!(
        links["get_dossier"]["parameters"]["code"],
        "$response.body#/code"
    );
    assert_eq!(links["receive"]["operationId"], "receive");

    // Uploads take every accepted type, not only PDF.
    let upload = doc["paths"]["/api/v1/uploads"]["post"]["requestBody"]["content"]
        .as_object()
        .unwrap();
    let mut types: Vec<&str> = upload.keys().map(String::as_str).collect();
    types.sort();
    assert_eq!(
        types,
        [
            "application/pdf",
            "application/xml",
            "image/jpeg",
            "image/png",
            "text/plain"
        ]
    );
}

#[tokio::test]
async fn metrics_and_documents_are_sent_with_their_documented_content_types() {
    let api = start_api().await;
    let doc = api.get("/openapi.json", "").await.body;
    let citizen = citizen_token();

    let metrics = api.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(metrics.status, StatusCode::OK);
    let declared = doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
        .as_object()
        .unwrap();
    assert!(
        declared.contains_key(&media_type(&metrics.headers)),
        "sent {:?}, documented {:?}",
        metrics.headers["content-type"],
        declared.keys().collect::<Vec<_>>()
    );

    // A document comes back with the type it was uploaded with, and that type is documented.
    let code = api.file_lltp().await["code"].as_str().unwrap().to_owned();
    let up = api
        .send(
            api.request(Method::POST, "/api/v1/uploads")
                .bearer_auth(&citizen)
                .header("content-type", "image/png")
                .body(&b"\x89PNG\r\n\x1a\n a scan"[..]),
        )
        .await;
    assert_eq!(up.status, StatusCode::CREATED, "{}", up.text);
    let attached = api
        .post(
            &format!("/api/v1/dossiers/{code}/documents"),
            &citizen,
            json!({"component": "giay_to_tuy_than", "name": "CCCD", "sha256": up.body["sha256"]}),
        )
        .await;
    assert_eq!(attached.status, StatusCode::OK, "{}", attached.text);
    let document = &attached.body["documents"][0];
    assert_eq!(document["provenance"], Value::Null, "an upload has none");
    let id = document["id"].as_str().unwrap();
    let content = api
        .get(
            &format!("/api/v1/dossiers/{code}/documents/{id}/content"),
            &citizen,
        )
        .await;
    assert_eq!(content.status, StatusCode::OK);
    assert_eq!(media_type(&content.headers), "image/png");
    let declared = doc["paths"]["/api/v1/dossiers/{code}/documents/{id}/content"]["get"]
        ["responses"]["200"]["content"]
        .as_object()
        .unwrap();
    assert!(declared.contains_key("image/png"), "{declared:?}");
    assert!(!declared.contains_key("application/octet-stream"));

    // An error is sent as problem+json, as documented.
    let missing = api
        .get(
            &format!("/api/v1/dossiers/{code}/documents/nothing/content"),
            &citizen,
        )
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(media_type(&missing.headers), "application/problem+json");
}

#[tokio::test]
async fn an_owner_id_of_any_characters_is_refused_not_a_crash() {
    let api = start_api().await;
    let desk = officer_token("desk", &["mot_cua"]);
    // 14 bytes whose 11th is inside `é`: cutting the 10 digits of a branch tax code off it
    // panicked the request.
    for id in ["123456789é123", "\u{4a102}d\u{99}\u{fb}\u{dae29}f"] {
        let r = api
            .post(
                "/api/v1/dossiers",
                &desk,
                json!({"procedure_code": "2.000488", "agency_code": AGENCY,
                    "owner": {"id": id, "name": "Nguyễn Văn An"}, "channel": "in_person"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
        assert_eq!(r.body["code"], "invalid_owner", "{}", r.text);
    }
}

#[tokio::test]
async fn a_whole_amount_is_accepted_written_either_way() {
    let api = start_api().await;
    let code = api.file_lltp().await["code"].as_str().unwrap().to_owned();
    let desk = officer_token("desk", &["mot_cua", "ke_toan"]);
    let path = format!("/api/v1/dossiers/{code}/payments");
    // JSON Schema's integer is any number without a fraction: 200000.0 is one.
    let r = api
        .post(
            &path,
            &desk,
            json!({"fee_code": "LLTP", "amount_vnd": 200000.0}),
        )
        .await;
    assert_ne!(r.body["code"], "invalid_body", "{}", r.text);
    for bad in [json!(200000.5), json!(-1), json!("200000")] {
        let r = api
            .post(&path, &desk, json!({"fee_code": "LLTP", "amount_vnd": bad}))
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
        assert_eq!(r.body["code"], "invalid_body", "{}", r.text);
    }
}

#[tokio::test]
async fn an_idempotency_key_is_checked_as_documented() {
    let api = start_api().await;
    let citizen = citizen_token();
    let file = |key: String| {
        api.request(Method::POST, "/api/v1/dossiers")
            .bearer_auth(&citizen)
            .header("idempotency-key", key)
            .json(&json!({"procedure_code": "2.000488", "agency_code": AGENCY,
                "data": {"to_khai": crate::engine_support::lltp_form(1)}}))
    };
    // 1 to 200 header characters, not only blanks; a tab inside is one of them.
    for key in ["k".repeat(200), "a\tb".into(), "x".into()] {
        let r = api.send(file(key.clone())).await;
        assert_eq!(r.status, StatusCode::CREATED, "{key:?}: {}", r.text);
    }
    for key in ["k".repeat(201), "\t".into()] {
        let r = api.send(file(key.clone())).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{key:?}: {}", r.text);
        assert_eq!(r.body["code"], "invalid_idempotency_key", "{}", r.text);
    }
}
