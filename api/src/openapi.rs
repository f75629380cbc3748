//! The finishing pass over `/openapi.json`: what holds for every route alike and so is said
//! once here rather than in each annotation. Errors are `application/problem+json`; dossier
//! answers carry their version in `ETag`; the conditional and idempotency headers have the
//! syntax the server checks; and the links between operations (a filed dossier's `code`
//! feeds every operation on it) let clients and contract tests follow the API's flows.

use serde_json::{Map, Value, json};

const PROBLEM: &str = "#/components/schemas/Problem";
const DOSSIER: &str = "#/components/schemas/DossierView";
const METHODS: &[&str] = &["get", "put", "post", "delete", "patch"];

/// What `If-Match` takes: an entity tag naming a dossier's `seq`, `"12"`
/// or the weak `W/"12"` (the quotes may be left out).
const ETAG_PATTERN: &str = r#"^(W/)?"?[0-9]{1,18}"?$"#;

pub fn finish(doc: &mut Value) {
    let operations = operation_ids(doc);
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        for method in METHODS {
            let Some(op) = item.get_mut(*method).and_then(Value::as_object_mut) else {
                continue;
            };
            parameters(op);
            let idempotent = op
                .get("parameters")
                .and_then(Value::as_array)
                .is_some_and(|ps| ps.iter().any(|p| p["name"] == "Idempotency-Key"));
            if let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) {
                for (status, response) in responses.iter_mut() {
                    if let Some(r) = response.as_object_mut() {
                        problem_json(r);
                        etag(r, status);
                        if idempotent && status.starts_with('2') {
                            replayed(r);
                        }
                    }
                }
            }
            links(path, method, op, &operations);
        }
    }
}

/// Every operation id with its path and its path parameters.
fn operation_ids(doc: &Value) -> Vec<(String, String, Vec<String>)> {
    let mut out = Vec::new();
    let Some(paths) = doc.get("paths").and_then(Value::as_object) else {
        return out;
    };
    for (path, item) in paths {
        for method in METHODS {
            let Some(op) = item.get(*method) else {
                continue;
            };
            let Some(id) = op.get("operationId").and_then(Value::as_str) else {
                continue;
            };
            let params = op
                .get("parameters")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|p| p["in"] == "path")
                .filter_map(|p| p["name"].as_str().map(str::to_owned))
                .collect();
            out.push((id.to_owned(), path.clone(), params));
        }
    }
    out
}

fn refers_to(content: &Value, schema: &str) -> bool {
    content.pointer("/schema/$ref").and_then(Value::as_str) == Some(schema)
}

/// Problem details are sent as `application/problem+json` (RFC 9457), not `application/json`.
fn problem_json(response: &mut Map<String, Value>) {
    let Some(content) = response.get_mut("content").and_then(Value::as_object_mut) else {
        return;
    };
    if content
        .get("application/json")
        .is_some_and(|c| refers_to(c, PROBLEM))
        && let Some(c) = content.remove("application/json")
    {
        content.insert("application/problem+json".into(), c);
    }
    if response.get("description").and_then(Value::as_str) == Some("") {
        response.insert(
            "description".into(),
            json!("A problem detail; branch on `code`."),
        );
    }
}

/// A dossier answer (and its `304`) carries the dossier's version as `ETag: "SEQ"`.
fn etag(response: &mut Map<String, Value>, status: &str) {
    let is_dossier = response
        .get("content")
        .and_then(|c| c.get("application/json"))
        .is_some_and(|c| refers_to(c, DOSSIER));
    if !is_dossier && status != "304" {
        return;
    }
    let headers = response
        .entry("headers")
        .or_insert_with(|| json!({}))
        .as_object_mut();
    if let Some(h) = headers {
        h.insert(
            "ETag".into(),
            json!({
                "description": "The dossier's version, its `seq`: send it back in `If-Match` to act on this version, or in `If-None-Match` to poll",
                "required": true,
                "schema": {"type": "string", "pattern": r#"^"[0-9]+"$"#},
            }),
        );
    }
}

/// A repeated request with the same `Idempotency-Key` gets the first answer, marked.
fn replayed(response: &mut Map<String, Value>) {
    if let Some(h) = response
        .entry("headers")
        .or_insert_with(|| json!({}))
        .as_object_mut()
    {
        h.insert(
            "Idempotent-Replayed".into(),
            json!({
                "description": "`true` when this is the first answer to an earlier request with the same Idempotency-Key",
                "schema": {"type": "string", "enum": ["true"]},
            }),
        );
    }
}

/// The syntax the server checks for its conditional and idempotency headers; an optional
/// query parameter is left out, never `null` (a query string has no null).
fn parameters(op: &mut Map<String, Value>) {
    let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) else {
        return;
    };
    for p in params.iter_mut().filter(|p| p["in"] == "query") {
        if let Some(types) = p.pointer_mut("/schema/type").and_then(Value::as_array_mut) {
            types.retain(|t| t != "null");
            if let [only] = types.as_slice() {
                let only = only.clone();
                p["schema"]["type"] = only;
            }
        }
    }
    for p in params.iter_mut().filter(|p| p["in"] == "header") {
        let schema = match p["name"].as_str() {
            Some("If-Match") => json!({"type": "string", "pattern": ETAG_PATTERN}),
            // A list of tags or `*`; a tag that names no version of the dossier never matches.
            Some("If-None-Match") => json!({"type": "string"}),
            Some("Idempotency-Key") => json!({
                "type": "string", "minLength": 1, "maxLength": 200,
                // ASCII a header value may carry, not only blanks (which are trimmed).
                "pattern": "^[\t -~]*[!-~][\t -~]*$",
            }),
            _ => continue,
        };
        p["schema"] = schema;
    }
}

/// Links from the answers that name a dossier to the operations on it.
fn links(
    path: &str,
    method: &str,
    op: &mut Map<String, Value>,
    operations: &[(String, String, Vec<String>)],
) {
    let own = op
        .get("operationId")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    // (the response's status, how to read the dossier's code, how to read a task id)
    let source: (&str, &str, Option<&str>) = match (method, path) {
        ("post", "/api/v1/dossiers") => ("201", "$response.body#/code", None),
        ("get", "/api/v1/dossiers/{code}") => (
            "200",
            "$response.body#/code",
            Some("$response.body#/tasks/0/task_id"),
        ),
        ("get", "/api/v1/tasks") => (
            "200",
            "$response.body#/0/dossier_code",
            Some("$response.body#/0/task_id"),
        ),
        _ => return,
    };
    let (status, code, task) = source;
    let mut links = Map::new();
    for (id, target, params) in operations {
        if *id == own || !target.starts_with("/api/v1/dossiers/{code}") {
            continue;
        }
        let mut parameters = Map::new();
        for p in params {
            let value = match (p.as_str(), task) {
                ("code", _) => code,
                ("task", Some(t)) => t,
                _ => {
                    parameters.clear();
                    break;
                }
            };
            parameters.insert(p.clone(), json!(value));
        }
        if parameters.is_empty() {
            continue;
        }
        links.insert(
            id.clone(),
            json!({"operationId": id, "parameters": parameters}),
        );
    }
    if let Some(r) = op
        .get_mut("responses")
        .and_then(|r| r.get_mut(status))
        .and_then(Value::as_object_mut)
    {
        r.insert("links".into(), Value::Object(links));
    }
}
