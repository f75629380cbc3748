//! Runtime guards: a decision whose condition cannot be evaluated holds the dossier with an
//! incident instead of taking `else`, a dossier with nothing left to wait on raises a "stuck"
//! incident, and both show in `/metrics`.
//!
//! `tthc validate` types expressions statically and rejects these definitions, so they are
//! deployed straight through the engine (`Definition::from_stored` runs no checker), as a
//! definition stored before the checker existed would be.

use std::collections::BTreeMap;

use engine::definition::Definition;
use engine::dossier::{Command, IncidentAction, IncidentKind};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::api_support::{admin_token, has_task, start_api};
use crate::engine_support::{
    admin, citizen, desk, harness, lltp_edited, lltp_filing, officer, specialist, task_at,
};

/// The shipped judicial record procedure as version `version`, with its text edited, built
/// without the checker.
fn lltp_unchecked(version: u32, edits: &[(&str, &str)]) -> Definition {
    let base = lltp_edited(&[]);
    let text = edits.iter().fold(
        base.text
            .replace("\nversion: 1\n", &format!("\nversion: {version}\n")),
        |text, (from, to)| {
            assert!(text.contains(from), "the procedure has no `{from}`");
            text.replace(from, to)
        },
    );
    let forms = Value::Object(
        base.forms
            .iter()
            .map(|(k, v)| (k.clone(), Value::clone(v)))
            .collect(),
    );
    Definition::from_stored("procedures/cap-phieu-lltp.yaml", &text, &forms).unwrap()
}

const SHIPPED_CONDITION: &str = "data.tham_dinh.can_xac_minh || data.tham_dinh.co_an_tich";
/// Reads `ghi_chu`, which the verification form does not require: with `can_xac_minh` false
/// and no note, CEL cannot evaluate it (no such key).
const OPTIONAL_READ: &str = "data.tham_dinh.can_xac_minh || data.tham_dinh.ghi_chu == 'xác minh'";

/// A verification that needs no further checks and has no note.
fn plain_verification() -> Value {
    json!({"co_an_tich": false, "can_xac_minh": false})
}

#[tokio::test]
async fn a_condition_that_cannot_be_evaluated_holds_at_its_decision_until_retried() {
    let h = harness().await;
    let def = lltp_unchecked(2, &[(SHIPPED_CONDITION, OPTIONAL_READ)]);
    h.engine.deploy(&def).await.unwrap();
    let d = h.file_lltp(1).await;
    assert_eq!(d.procedure_version, 2);
    h.receive(&d.code).await;
    let d = h
        .complete(
            &d.code,
            &specialist(),
            "tham_dinh",
            None,
            Some(plain_verification()),
        )
        .await;

    // Not `else`: no drafting task, the token waits at the decision, an incident names it.
    assert!(
        d.tasks.is_empty(),
        "the decision took a branch: {:?}",
        d.tasks
    );
    assert!(
        d.tokens.values().any(|s| &**s == "phan_loai"),
        "{:?}",
        d.tokens
    );
    let open: Vec<_> = d
        .incidents
        .values()
        .filter(|i| i.resolution.is_none())
        .collect();
    assert_eq!(open.len(), 1, "{:?}", d.incidents);
    let i = open[0].clone();
    assert_eq!(i.kind, IncidentKind::Condition);
    assert_eq!(i.step.as_deref(), Some("phan_loai"));
    assert_eq!(i.expression.as_deref(), Some(OPTIONAL_READ));
    assert_eq!(
        i.values,
        BTreeMap::from([
            ("data.tham_dinh.can_xac_minh".to_owned(), json!(false)),
            ("data.tham_dinh.ghi_chu".to_owned(), Value::Null),
        ]),
        "the values the expression read"
    );
    assert!(
        i.error.contains("phan_loai") && i.error.contains("ghi_chu"),
        "{}",
        i.error
    );
    let rows = h.engine.store().open_incidents().await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].kind, "condition");
    assert_eq!(rows[0].error, i.error);
    // Held by an open incident: not stuck as well.
    assert!(!d.incidents.values().any(|i| i.kind == IncidentKind::Stuck));

    // A decision has no branch to skip to.
    let skip = Command::ResolveIncident {
        incident: i.id.clone(),
        action: IncidentAction::Skip,
        note: None,
        data: BTreeMap::new(),
    };
    let err = h
        .engine
        .execute(&d.code, None, &admin(), &skip)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_state", "{err}");

    // Retried as is, it still fails: refused, and nothing changes.
    let seq = h.engine.dossier(&d.code).await.unwrap().seq;
    let retry = Command::ResolveIncident {
        incident: i.id.clone(),
        action: IncidentAction::Retry,
        note: Some("thử lại".into()),
        data: BTreeMap::new(),
    };
    let err = h
        .engine
        .execute(&d.code, None, &admin(), &retry)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_state", "{err}");
    assert!(err.to_string().contains("still holds"), "{err}");
    let same = h.engine.dossier(&d.code).await.unwrap();
    assert_eq!(same.seq, seq, "a refused retry records nothing");
    assert!(same.incidents[&i.id].resolution.is_none());

    // Corrected data must fit the form's schema.
    let bad = Command::ResolveIncident {
        incident: i.id.clone(),
        action: IncidentAction::Retry,
        note: None,
        data: BTreeMap::from([("tham_dinh".to_owned(), json!({"can_xac_minh": "no"}))]),
    };
    let err = h
        .engine
        .execute(&d.code, None, &admin(), &bad)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_form", "{err}");

    // Only an administrator resolves it.
    let fixed = Command::ResolveIncident {
        incident: i.id.clone(),
        action: IncidentAction::Retry,
        note: Some("bổ sung ghi chú".into()),
        data: BTreeMap::from([(
            "tham_dinh".to_owned(),
            json!({"co_an_tich": false, "can_xac_minh": false, "ghi_chu": "không"}),
        )]),
    };
    let err = h
        .engine
        .execute(&d.code, None, &desk(), &fixed)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "forbidden");

    // With the note filled in, the decision evaluates again and the dossier moves on.
    let d = h.run(&d.code, &admin(), fixed).await;
    task_at(&d, "du_thao_phieu");
    assert!(d.incidents[&i.id].resolution.is_some(), "{:?}", d.incidents);
    assert_eq!(d.data["tham_dinh"]["ghi_chu"], "không");
    assert!(h.engine.store().open_incidents().await.unwrap().is_empty());
    h.assert_replays_and_verifies(&d.code).await;
}

/// `phan_loai`'s `else` leads straight into the join of the parallel checks, which then waits
/// for a branch nothing started.
fn lltp_into_the_join(version: u32) -> Definition {
    lltp_unchecked(
        version,
        &[(
            "        then: xac_minh_song_song\n    else: du_thao_phieu",
            "        then: xac_minh_song_song\n    else: ket_qua_xac_minh",
        )],
    )
}

#[tokio::test]
async fn a_dossier_with_nothing_to_wait_on_raises_a_stuck_incident() {
    let h = harness().await;
    h.engine.deploy(&lltp_into_the_join(2)).await.unwrap();
    let d = h.file_lltp(1).await;
    h.receive(&d.code).await;
    let before = h.engine.dossier(&d.code).await.unwrap();
    assert!(
        before.incidents.is_empty(),
        "a dossier with a task is not stuck"
    );
    let d = h
        .complete(
            &d.code,
            &specialist(),
            "tham_dinh",
            None,
            Some(plain_verification()),
        )
        .await;
    assert!(d.tasks.is_empty() && !d.is_closed());
    let stuck: Vec<_> = d
        .incidents
        .values()
        .filter(|i| i.kind == IncidentKind::Stuck)
        .collect();
    assert_eq!(stuck.len(), 1, "{:?}", d.incidents);
    let i = stuck[0].clone();
    assert!(
        i.error
            .contains("join ket_qua_xac_minh waits with 1 of 2 branches"),
        "{}",
        i.error
    );
    assert_eq!(
        h.engine.store().open_incidents().await.unwrap()[0].kind,
        "stuck"
    );

    // Nothing moved it: a retry is refused.
    let retry = Command::ResolveIncident {
        incident: i.id.clone(),
        action: IncidentAction::Retry,
        note: None,
        data: BTreeMap::new(),
    };
    let err = h
        .engine
        .execute(&d.code, None, &admin(), &retry)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("still holds"), "{err}");
    // Skipping acknowledges it, without raising another.
    let d = h
        .run(
            &d.code,
            &admin(),
            Command::ResolveIncident {
                incident: i.id.clone(),
                action: IncidentAction::Skip,
                note: Some("sẽ dừng hồ sơ".into()),
                data: BTreeMap::new(),
            },
        )
        .await;
    assert_eq!(d.incidents.len(), 1, "{:?}", d.incidents);
    assert!(h.engine.store().open_incidents().await.unwrap().is_empty());
    // The agency stops the dossier; a closed dossier is not stuck.
    let d = h
        .run(
            &d.code,
            &officer("head", &["lanh_dao_phong"]),
            Command::Stop {
                reason: "quy trình lỗi".into(),
            },
        )
        .await;
    assert!(d.is_closed());
    assert_eq!(d.incidents.len(), 1);
    h.assert_replays_and_verifies(&d.code).await;
}

/// The value of the sample `name` in Prometheus text.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

#[tokio::test]
async fn condition_and_stuck_incidents_show_in_metrics_and_resolve_over_http() {
    let api = start_api().await;
    let engine = &api.state.engine;
    let admin_t = admin_token();

    engine
        .deploy(&lltp_unchecked(2, &[(SHIPPED_CONDITION, OPTIONAL_READ)]))
        .await
        .unwrap();
    let held = engine.file(&citizen(), &lltp_filing(1)).await.unwrap();
    engine.deploy(&lltp_into_the_join(3)).await.unwrap();
    let stuck = engine.file(&citizen(), &lltp_filing(1)).await.unwrap();
    for code in [&held.code, &stuck.code] {
        engine
            .execute(code, None, &desk(), &Command::Receive)
            .await
            .unwrap();
        // The worker sends the receipt, then the verification task opens.
        api.wait_for(code, "the verification task", |d| has_task(d, "tham_dinh"))
            .await;
        let d = engine.dossier(code).await.unwrap();
        engine
            .execute(
                code,
                None,
                &specialist(),
                &Command::CompleteTask {
                    task: task_at(&d, "tham_dinh"),
                    outcome: None,
                    data: Some(plain_verification()),
                    reason: None,
                },
            )
            .await
            .unwrap();
    }

    let m = api.call(reqwest::Method::GET, "/metrics", None, None).await;
    assert_eq!(m.status, StatusCode::OK);
    for (kind, n) in [("condition", 1.0), ("stuck", 1.0), ("hook", 0.0)] {
        assert_eq!(
            sample(
                &m.text,
                &format!("tthc_incidents_open_by_kind{{kind=\"{kind}\"}}")
            ),
            Some(n),
            "{kind} in {}",
            m.text
        );
    }
    assert_eq!(sample(&m.text, "tthc_incidents_open"), Some(2.0));

    let list = api.get("/api/v1/admin/incidents", &admin_t).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    let of = |code: &str| -> Value {
        list.body
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["dossier_code"] == code)
            .cloned()
            .unwrap_or_else(|| panic!("no incident of {code}: {}", list.text))
    };
    let (ci, si) = (of(&held.code), of(&stuck.code));
    assert_eq!(ci["kind"], "condition");
    assert!(
        ci["error"].as_str().unwrap().contains(OPTIONAL_READ),
        "{ci}"
    );
    assert_eq!(si["kind"], "stuck");

    // A retry as is fails again: 409 with the reason; corrected data moves the dossier on.
    let path = |i: &Value| {
        format!(
            "/api/v1/admin/incidents/{}/{}",
            i["dossier_code"].as_str().unwrap(),
            i["incident_id"].as_str().unwrap()
        )
    };
    let r = api
        .post(&path(&ci), &admin_t, json!({"action": "retry"}))
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert!(r.text.contains("still holds"), "{}", r.text);
    let r = api
        .post(
            &path(&ci),
            &admin_t,
            json!({"action": "retry", "note": "bổ sung ghi chú",
                   "data": {"tham_dinh": {"co_an_tich": false, "can_xac_minh": false, "ghi_chu": "không"}}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(has_task(&r.body, "du_thao_phieu"), "{}", r.text);
    let r = api
        .post(&path(&si), &admin_t, json!({"action": "skip"}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    let m = api.call(reqwest::Method::GET, "/metrics", None, None).await;
    for kind in ["condition", "stuck", "hook"] {
        assert_eq!(
            sample(
                &m.text,
                &format!("tthc_incidents_open_by_kind{{kind=\"{kind}\"}}")
            ),
            Some(0.0),
            "{kind} in {}",
            m.text
        );
    }
}

/// A timer whose `until` reads the purpose of the request (text, not a date) once the
/// verification is done.
fn lltp_with_a_bad_timer(version: u32) -> Definition {
    lltp_unchecked(
        version,
        &[
            (
                "        then: xac_minh_song_song\n    else: du_thao_phieu",
                "        then: xac_minh_song_song\n    else: cho_ngay",
            ),
            (
                "  # 3. Xác minh song song",
                "  - id: cho_ngay\n    kind: timer\n    until: \"data.to_khai.muc_dich\"\n    next: du_thao_phieu\n\n  # 3. Xác minh song song",
            ),
        ],
    )
}

#[tokio::test]
async fn a_timer_date_that_cannot_be_read_holds_the_dossier_instead_of_refusing_the_task() {
    let h = harness().await;
    h.engine.deploy(&lltp_with_a_bad_timer(2)).await.unwrap();
    let d = h.file_lltp(1).await;
    h.receive(&d.code).await;
    // The specialist's completion is taken (the date is not theirs to give)…
    let d = h
        .complete(
            &d.code,
            &specialist(),
            "tham_dinh",
            None,
            Some(plain_verification()),
        )
        .await;
    // …and the dossier waits at the timer with an incident naming what it read.
    assert!(d.tasks.is_empty(), "{:?}", d.tasks);
    assert!(
        d.jobs.values().all(|j| j.step.is_none()),
        "no timer was set: {:?}",
        d.jobs
    );
    let i = d
        .incidents
        .values()
        .find(|i| i.resolution.is_none())
        .cloned()
        .unwrap_or_else(|| panic!("no incident: {:?}", d.incidents));
    assert_eq!(i.kind, IncidentKind::Condition);
    assert_eq!(i.step.as_deref(), Some("cho_ngay"));
    assert_eq!(
        i.values.get("data.to_khai.muc_dich"),
        Some(&json!("Bổ sung hồ sơ xin việc"))
    );
    assert!(i.error.contains("not a date"), "{}", i.error);

    // Corrected data that is still no date is refused where it was sent.
    let mut form = crate::engine_support::lltp_form(1);
    form["muc_dich"] = json!("sau Tết");
    let retry = |form: Value| Command::ResolveIncident {
        incident: i.id.clone(),
        action: IncidentAction::Retry,
        note: None,
        data: BTreeMap::from([("to_khai".to_owned(), form)]),
    };
    let err = h
        .engine
        .execute(&d.code, None, &admin(), &retry(form.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_form", "{err}");
    // A date sets the timer, and the dossier waits for it.
    form["muc_dich"] = json!("2026-03-20");
    let d = h.run(&d.code, &admin(), retry(form)).await;
    let timer = d
        .jobs
        .values()
        .find(|j| j.step.as_deref() == Some("cho_ngay"))
        .unwrap_or_else(|| panic!("no timer: {:?}", d.jobs));
    assert_eq!(timer.run_at.to_rfc3339(), "2026-03-19T17:00:00+00:00");
    h.assert_replays_and_verifies(&d.code).await;
}

/// The cases: a number compared with text, and a condition that gives a number. Each
/// holds at the decision with the values read, where `else` was taken before.
#[tokio::test]
async fn a_type_mismatch_or_a_non_boolean_condition_never_takes_else() {
    let h = harness().await;
    for (version, condition, message) in [
        (
            2,
            "data.to_khai.so_luong_phieu > '1'",
            "could not be evaluated",
        ),
        (3, "data.to_khai.so_luong_phieu", "not true or false"),
    ] {
        h.engine
            .deploy(&lltp_unchecked(version, &[(SHIPPED_CONDITION, condition)]))
            .await
            .unwrap();
        let d = h.file_lltp(1).await;
        assert_eq!(d.procedure_version, version);
        h.receive(&d.code).await;
        let d = h
            .complete(
                &d.code,
                &specialist(),
                "tham_dinh",
                None,
                Some(plain_verification()),
            )
            .await;
        assert!(
            d.tasks.is_empty(),
            "{condition}: took a branch: {:?}",
            d.tasks
        );
        let i = d.incidents.values().next().unwrap();
        assert_eq!(
            (i.kind, i.step.as_deref(), i.expression.as_deref()),
            (IncidentKind::Condition, Some("phan_loai"), Some(condition))
        );
        assert_eq!(
            i.values,
            BTreeMap::from([("data.to_khai.so_luong_phieu".to_owned(), json!(1))]),
            "{condition}"
        );
        assert!(i.error.contains(message), "{condition}: {}", i.error);
        assert!(
            d.tokens.values().any(|s| &**s == "phan_loai"),
            "{condition}: the token waits at the decision: {:?}",
            d.tokens
        );
    }
}
