//! The engine end to end on SQLite, through its public API, with the shipped procedures.

use chrono::Duration;
use engine::EngineError;
use engine::dossier::{Command, CommandError, IncidentAction, Status};
use serde_json::json;

use crate::engine_support::*;

#[tokio::test]
async fn judicial_record_happy_path_from_filing_to_returned_result() {
    let h = harness().await;
    let d = h.file_lltp(1).await;
    assert!(
        d.code.starts_with("000.00.01.H59-260302-"),
        "dossier code per Circular 01/2018: {}",
        d.code
    );
    assert_eq!(d.status, Status::Filed);
    assert_eq!(d.status.code(), 1);
    task_at(&d, "tiep_nhan");

    let d = h.receive(&d.code).await;
    assert_eq!(d.status, Status::Received);
    // 10 working days from Monday 2 March 2026, 08:00 end on Monday 16 March, 08:00.
    assert_eq!(
        d.due_at.unwrap().to_rfc3339(),
        "2026-03-16T01:00:00+00:00",
        "due date counts 10 working days"
    );
    assert_eq!(d.notifications.len(), 1, "form 01 receipt");
    let receipt = &d.notifications[0];
    assert_eq!(receipt.template, "tiep_nhan");
    assert!(receipt.subject.contains(&*d.code), "{}", receipt.subject);
    assert!(
        receipt.body.contains("Nguyễn Văn An") && receipt.body.contains("Sở Tư pháp tỉnh Hưng Yên"),
        "{}",
        receipt.body
    );
    assert_eq!(receipt.recipient, "an@example.vn");

    let claimed = h
        .run(
            &d.code,
            &specialist(),
            Command::ClaimTask {
                task: task_at(&d, "tham_dinh"),
            },
        )
        .await;
    assert_eq!(claimed.status, Status::Processing);

    let d = h.process_to_signed(&d.code).await;
    assert_eq!(d.status, Status::Processed, "signed: đã xử lý xong");
    assert_eq!(
        h.khodl.keys().len(),
        1,
        "the result is saved to Kho DL once"
    );
    assert_eq!(d.notifications.last().unwrap().template, "ket_qua");
    task_at(&d, "tra_ket_qua");

    let d = h.run(&d.code, &desk(), Command::ReturnResult).await;
    assert_eq!(d.status, Status::Returned);
    h.drain().await;
    let d = h.engine.dossier(&d.code).await.unwrap();
    assert_eq!(d.status, Status::Returned);
    assert_eq!(d.status.code(), 10);
    assert!(d.is_closed(), "the dossier ended: {:?}", d.tokens);
    let push_job = d
        .all_jobs()
        .find(|j| j.call == "portal.push_result")
        .unwrap();
    assert_eq!(
        h.push.keys(),
        vec![h.engine.hook_key(push_job, &d.code)],
        "the result is pushed once with its idempotency key"
    );
    assert!(
        d.all_jobs()
            .any(|j| j.call == "khodl.unhide" && j.state == engine::dossier::JobState::Done),
        "the result is made visible to its owner"
    );
    assert_eq!(
        h.sync.keys().len(),
        5,
        "status synced on each change: filed, received, processing, processed, returned"
    );
    assert!(d.tasks.is_empty());
    h.assert_replays_and_verifies(&d.code).await;
}

#[tokio::test]
async fn certificate_no_2_takes_the_other_branch_of_the_decision() {
    let h = harness().await;
    let d = h.file_lltp(2).await;
    h.receive(&d.code).await;
    h.complete(
        &d.code,
        &specialist(),
        "tham_dinh",
        None,
        Some(json!({"co_an_tich": false, "can_xac_minh": false})),
    )
    .await;
    h.complete(&d.code, &specialist(), "du_thao_phieu", None, None)
        .await;
    let d = h
        .complete(&d.code, &head(), "duyet_phong", Some("approve"), None)
        .await;
    task_at(&d, "ky_phieu_so_2");
    assert!(!d.tasks.values().any(|t| &*t.step == "ky_phieu_so_1"));
}

#[tokio::test]
async fn verification_runs_in_parallel_and_joins() {
    let h = harness().await;
    let d = h.file_lltp(1).await;
    h.receive(&d.code).await;
    let d = h
        .complete(&d.code, &specialist(), "tham_dinh", None, Some(json!({"co_an_tich": false, "can_xac_minh": true, "ly_do_xac_minh": ["cu_tru_nhieu_noi"]})))
        .await;
    let police = d
        .tasks
        .values()
        .find(|t| &*t.step == "xac_minh_cong_an")
        .unwrap();
    assert_eq!(
        &*police.agency, POLICE,
        "the police task goes to the police"
    );
    task_at(&d, "tra_cuu_toa_an");
    assert_eq!(d.tokens.len(), 2);

    // The police officer cannot see the court's task, and vice versa.
    let police_officer = officer_at("police", POLICE, &["xac_minh"]);
    let err = h
        .engine
        .execute(
            &d.code,
            None,
            &police_officer,
            &Command::ClaimTask {
                task: task_at(&d, "tra_cuu_toa_an"),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "forbidden", "{err}");

    let d = h
        .complete(&d.code, &specialist(), "tra_cuu_toa_an", None, None)
        .await;
    assert!(
        d.tasks.values().all(|t| &*t.step != "du_thao_phieu"),
        "the join waits for the police"
    );
    let d = h
        .complete(
            &d.code,
            &police_officer,
            "xac_minh_cong_an",
            None,
            Some(json!({"co_thong_tin_an_tich": false, "so_van_ban_tra_loi": "12/CAT-PV06", "ngay_tra_loi": "2026-03-04"})),
        )
        .await;
    task_at(&d, "du_thao_phieu");
    assert_eq!(d.tokens.len(), 1);
    h.assert_replays_and_verifies(&d.code).await;
}

#[tokio::test]
async fn a_supplement_request_pauses_the_clock() {
    let h = harness().await;
    let d = h.file_lltp(1).await;
    let d = h.receive(&d.code).await;
    let due = d.due_at.unwrap();
    let task = task_at(&d, "tham_dinh");
    h.run(
        &d.code,
        &specialist(),
        Command::ClaimTask { task: task.clone() },
    )
    .await;
    h.clock.advance(Duration::hours(2));
    let d = h
        .run(
            &d.code,
            &specialist(),
            Command::RequestSupplement {
                reason: "Bản chụp CCCD không rõ".into(),
                missing: vec!["giay_to_tuy_than".into()],
            },
        )
        .await;
    assert_eq!(d.status, Status::SupplementRequested);
    assert_eq!(d.status.code(), 5);
    h.drain().await;
    let d = h.engine.dossier(&d.code).await.unwrap();
    let letter = d
        .notifications
        .iter()
        .find(|n| n.template == "bo_sung")
        .expect("form 02 sent");
    assert!(
        letter.body.contains("Bản chụp CCCD không rõ"),
        "{}",
        letter.body
    );

    // Nobody works on a dossier waiting for its owner.
    let err = h
        .engine
        .execute(
            &d.code,
            None,
            &specialist(),
            &Command::CompleteTask {
                task: task.clone(),
                outcome: None,
                data: Some(json!({"co_an_tich": false, "can_xac_minh": false})),
                reason: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_state");

    // The owner answers a week later (five working days).
    h.clock.advance(Duration::days(7));
    let d = h
        .run(
            &d.code,
            &citizen(),
            Command::Supplement {
                data: Default::default(),
                documents: vec![engine::dossier::DocumentRef {
                    id: "doc-cccd".into(),
                    component: "giay_to_tuy_than".into(),
                    name: "CCCD".into(),
                    kind: Some(engine::definition::DocumentKind::Copy),
                    sha256: "a".repeat(64),
                    size: 1024,
                    content_type: "application/pdf".into(),
                    provenance: None,
                }],
            },
        )
        .await;
    assert_eq!(d.status, Status::Processing);
    let new_due = d.due_at.unwrap();
    assert_eq!(
        h.engine.calendar().working_minutes_between(due, new_due),
        5 * 8 * 60,
        "the due date moves by the five working days spent waiting"
    );
    assert_eq!(d.supplement_rounds, 1);
    h.complete(
        &d.code,
        &specialist(),
        "tham_dinh",
        None,
        Some(json!({"co_an_tich": false, "can_xac_minh": false})),
    )
    .await;
    h.assert_replays_and_verifies(&d.code).await;
}

#[tokio::test]
async fn refusal_at_reception_ends_not_received_with_a_letter() {
    let h = harness().await;
    let d = h.file_lltp(1).await;
    let d = h
        .run(
            &d.code,
            &desk(),
            Command::RefuseReception {
                reason: "Không thuộc thẩm quyền giải quyết".into(),
            },
        )
        .await;
    h.drain().await;
    let d = h.engine.dossier(&d.code).await.unwrap();
    assert_eq!(d.status, Status::NotReceived);
    assert_eq!(d.status.code(), 3);
    assert!(d.is_closed());
    let letter = d
        .notifications
        .iter()
        .find(|n| n.template == "tu_choi")
        .expect("form 03 sent");
    assert!(
        letter.body.contains("Không thuộc thẩm quyền giải quyết"),
        "{}",
        letter.body
    );
    h.assert_replays_and_verifies(&d.code).await;
}

#[tokio::test]
async fn the_owner_withdraws_and_open_tasks_close() {
    let h = harness().await;
    let d = h.file_lltp(1).await;
    let d = h.receive(&d.code).await;
    let d = h
        .run(
            &d.code,
            &citizen(),
            Command::Withdraw {
                reason: "Không còn nhu cầu".into(),
            },
        )
        .await;
    assert_eq!(d.status, Status::Withdrawn);
    assert_eq!(d.status.code(), 7);
    assert!(d.tasks.is_empty());
    let rows = h
        .engine
        .store()
        .worklist(AGENCY, &["chuyen_vien".into()], None, 50, 0)
        .await
        .unwrap();
    assert!(
        rows.iter().all(|r| *r.dossier_code != *d.code),
        "no task is left on the worklist"
    );
    let err = h
        .engine
        .execute(
            &d.code,
            None,
            &citizen(),
            &Command::Withdraw {
                reason: "again".into(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_state");
    h.assert_replays_and_verifies(&d.code).await;
}

#[tokio::test]
async fn an_overdue_dossier_gets_its_apology_letter_then_a_flag() {
    let h = harness().await;
    let d = h.file_lltp(1).await;
    let d = h.receive(&d.code).await;
    let due = d.due_at.unwrap();

    assert!(
        h.engine.scan_overdue().await.unwrap().apologies.is_empty(),
        "too early"
    );
    // Less than one working day before the due date.
    h.clock.set(due - Duration::hours(23));
    let scan = h.engine.scan_overdue().await.unwrap();
    assert_eq!(scan.apologies, vec![d.code.to_string()]);
    h.drain().await;
    let d = h.engine.dossier(&d.code).await.unwrap();
    assert!(d.apology_sent);
    assert!(d.promised_at.unwrap() > due);
    let letter = d
        .notifications
        .iter()
        .find(|n| n.template == "xin_loi")
        .expect("form 04 sent");
    assert!(letter.body.contains(&*d.code));
    assert!(!d.overdue);

    h.clock.set(due + Duration::hours(1));
    let scan = h.engine.scan_overdue().await.unwrap();
    assert_eq!(scan.flagged, vec![d.code.to_string()]);
    assert!(scan.apologies.is_empty(), "one letter per dossier");
    let d = h.engine.dossier(&d.code).await.unwrap();
    assert!(d.overdue);
    let overdue = h
        .engine
        .store()
        .search(&engine::store::DossierQuery {
            agency: Some(AGENCY.into()),
            overdue_at: Some(h.engine.now()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(overdue.len(), 1);
    h.assert_replays_and_verifies(&d.code).await;
}

#[tokio::test]
async fn a_hook_failing_twice_then_succeeding_is_retried_with_backoff() {
    let h = harness().await;
    h.push.fail_first(2);
    let d = h.file_lltp(1).await;
    h.receive(&d.code).await;
    h.process_to_signed(&d.code).await;
    let d = h.run(&d.code, &desk(), Command::ReturnResult).await;
    h.drain().await;
    // The first attempt failed; the retry waits for its backoff.
    let d = h.engine.dossier(&d.code).await.unwrap();
    let job = d
        .all_jobs()
        .find(|j| j.call == "portal.push_result")
        .unwrap()
        .clone();
    assert_eq!(job.attempts, 1);
    assert!(job.run_at > h.engine.now());
    assert!(!d.is_closed(), "the dossier waits for its hook");
    h.clock.advance(Duration::seconds(10));
    h.drain().await;
    h.clock.advance(Duration::seconds(20));
    h.drain().await;
    let d = h.engine.dossier(&d.code).await.unwrap();
    let job = d.job(&job.id).unwrap();
    assert_eq!(job.attempts, 3);
    assert_eq!(job.state, engine::dossier::JobState::Done);
    let keys = h.push.keys();
    assert_eq!(keys.len(), 3);
    assert!(
        keys.iter().all(|k| k == &keys[0]),
        "every attempt carries the same idempotency key"
    );
    assert!(d.is_closed(), "then the dossier finishes");
    assert!(h.engine.store().open_incidents().await.unwrap().is_empty());
    h.assert_replays_and_verifies(&d.code).await;
}

#[tokio::test]
async fn a_hook_failing_for_good_opens_an_incident_an_administrator_retries() {
    let h = harness().await;
    *h.khodl.fail_always.lock().unwrap() = true;
    let d = h.file_lltp(1).await;
    h.receive(&d.code).await;
    let d = h.process_to_signed(&d.code).await;
    for _ in 0..20 {
        h.clock.advance(Duration::minutes(30));
        h.drain().await;
    }
    let incidents = h.engine.store().open_incidents().await.unwrap();
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    assert_eq!(incidents[0].dossier_code, *d.code);
    assert!(incidents[0].error.contains("khodl.save unavailable"));
    let d = h.engine.dossier(&d.code).await.unwrap();
    assert_eq!(
        d.jobs[incidents[0].job_id.as_str()].attempts,
        5,
        "the default policy makes five attempts"
    );
    assert!(d.tasks.is_empty(), "the dossier waits on the incident");

    // Only an administrator resolves it.
    let cmd = Command::ResolveIncident {
        incident: incidents[0].incident_id.clone(),
        action: IncidentAction::Retry,
        note: Some("Kho DL đã hoạt động lại".into()),
        data: std::collections::BTreeMap::new(),
    };
    let err = h
        .engine
        .execute(&d.code, None, &desk(), &cmd)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "forbidden");
    *h.khodl.fail_always.lock().unwrap() = false;
    h.run(&d.code, &admin(), cmd).await;
    h.drain().await;
    let d = h.engine.dossier(&d.code).await.unwrap();
    assert!(h.engine.store().open_incidents().await.unwrap().is_empty());
    task_at(&d, "tra_ket_qua");
    h.assert_replays_and_verifies(&d.code).await;
}

#[tokio::test]
async fn two_concurrent_completions_of_one_task_one_wins_one_conflicts() {
    let h = harness().await;
    let d = h.file_lltp(1).await;
    let d = h.receive(&d.code).await;
    let task = task_at(&d, "tham_dinh");
    let cmd = Command::CompleteTask {
        task,
        outcome: None,
        data: Some(json!({"co_an_tich": false, "can_xac_minh": false})),
        reason: None,
    };
    let a = officer("a", &["chuyen_vien"]);
    let b = officer("b", &["chuyen_vien"]);
    let (ra, rb) = tokio::join!(
        h.engine.execute(&d.code, Some(d.seq), &a, &cmd),
        h.engine.execute(&d.code, Some(d.seq), &b, &cmd)
    );
    let outcomes = [ra.is_ok(), rb.is_ok()];
    assert_eq!(
        outcomes.iter().filter(|ok| **ok).count(),
        1,
        "{ra:?} {rb:?}"
    );
    let err = ra.err().or(rb.err()).unwrap();
    match err {
        EngineError::Conflict {
            current, expected, ..
        } => {
            assert_eq!(expected, d.seq);
            assert!(current > d.seq);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let after = h.engine.dossier(&d.code).await.unwrap();
    assert_eq!(
        after
            .tasks
            .values()
            .filter(|t| &*t.step == "du_thao_phieu")
            .count(),
        1,
        "the task was completed once"
    );
    h.assert_replays_and_verifies(&d.code).await;
}

#[tokio::test]
async fn bad_input_gets_a_typed_error_and_changes_nothing() {
    let h = harness().await;
    let mut filing = lltp_filing(1);
    filing.procedure_code = "9.999999".into();
    let err = h.engine.file(&citizen(), &filing).await.unwrap_err();
    assert!(matches!(err, EngineError::UnknownProcedure(_)), "{err:?}");

    let mut filing = lltp_filing(1);
    let form = filing.data.get_mut("to_khai").unwrap();
    form["ngay_sinh"] = json!(19900517);
    form["loai_phieu"] = json!(3);
    form.as_object_mut().unwrap().remove("ho_ten");
    let err = h.engine.file(&citizen(), &filing).await.unwrap_err();
    let EngineError::Command(CommandError::InvalidForm { violations }) = &err else {
        panic!("{err:?}")
    };
    let paths: Vec<&str> = violations.iter().map(|v| v.path.as_str()).collect();
    assert!(
        paths.contains(&"/ngay_sinh") && paths.contains(&"/loai_phieu") && paths.contains(&""),
        "{violations:?}"
    );
    assert!(
        violations.iter().any(|v| v.message.contains("ho_ten")),
        "{violations:?}"
    );

    // Someone else's identity.
    let mut filing = lltp_filing(1);
    filing.owner.id = engine::dossier::OwnerId::parse("079088001234").unwrap();
    assert_eq!(
        h.engine.file(&citizen(), &filing).await.unwrap_err().code(),
        "forbidden"
    );

    let d = h.file_lltp(1).await;
    assert!(
        d.code.ends_with("-0001"),
        "refused filings spend no dossier number: {}",
        d.code
    );
    let before = h.engine.store().events(&d.code).await.unwrap();

    let wrong_role = h
        .engine
        .execute(&d.code, None, &specialist(), &Command::Receive)
        .await
        .unwrap_err();
    assert_eq!(wrong_role.code(), "forbidden", "{wrong_role}");
    let other_agency = officer_at("x", "000.00.02.H59", &["mot_cua"]);
    assert_eq!(
        h.engine
            .execute(&d.code, None, &other_agency, &Command::Receive)
            .await
            .unwrap_err()
            .code(),
        "forbidden"
    );
    let wrong_state = h
        .engine
        .execute(&d.code, None, &desk(), &Command::ReturnResult)
        .await
        .unwrap_err();
    assert_eq!(wrong_state.code(), "invalid_state");
    let bad_outcome = h
        .engine
        .execute(
            &d.code,
            None,
            &desk(),
            &Command::CompleteTask {
                task: task_at(&d, "tiep_nhan"),
                outcome: Some("maybe".into()),
                data: None,
                reason: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(bad_outcome.code(), "invalid_input");
    assert!(bad_outcome.to_string().contains("accept"), "{bad_outcome}");
    let auditor = engine::dossier::Actor::Auditor {
        id: "au".into(),
        name: "Kiểm toán".into(),
    };
    assert_eq!(
        h.engine
            .execute(&d.code, None, &auditor, &Command::Receive)
            .await
            .unwrap_err()
            .code(),
        "forbidden"
    );
    let system_only = h
        .engine
        .execute(&d.code, None, &desk(), &Command::FlagOverdue)
        .await
        .unwrap_err();
    assert_eq!(system_only.code(), "forbidden");
    assert!(matches!(
        h.engine
            .dossier("000.00.01.H59-260302-9999")
            .await
            .unwrap_err(),
        EngineError::DossierNotFound(_)
    ));

    assert_eq!(
        h.engine.store().events(&d.code).await.unwrap(),
        before,
        "nothing was stored"
    );
    h.assert_replays_and_verifies(&d.code).await;
}

#[tokio::test]
async fn in_person_filing_checks_documents_at_reception() {
    let h = harness().await;
    let mut filing = lltp_filing(1);
    filing.channel = engine::dossier::Channel::InPerson;
    assert_eq!(
        h.engine.file(&citizen(), &filing).await.unwrap_err().code(),
        "forbidden",
        "citizens file online"
    );
    let d = h.engine.file(&desk(), &filing).await.unwrap();
    let err = h
        .engine
        .execute(&d.code, None, &desk(), &Command::Receive)
        .await
        .unwrap_err();
    let EngineError::Command(CommandError::MissingComponents { components }) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(
        components,
        &vec!["giay_to_tuy_than".to_owned()],
        "the ID copy is required at the desk"
    );
}

#[tokio::test]
async fn concurrent_filings_get_distinct_sequential_codes() {
    let h = harness().await;
    let mut handles = Vec::new();
    for _ in 0..12 {
        let engine = h.engine.clone();
        handles.push(tokio::spawn(async move {
            engine
                .file(&citizen(), &lltp_filing(1))
                .await
                .unwrap()
                .code
                .to_string()
        }));
    }
    let mut codes = Vec::new();
    for handle in handles {
        codes.push(handle.await.unwrap());
    }
    codes.sort();
    let expected: Vec<String> = (1..=12)
        .map(|n| format!("{AGENCY}-260302-{n:04}"))
        .collect();
    assert_eq!(codes, expected);
}

#[tokio::test]
async fn a_new_version_leaves_running_dossiers_on_theirs() {
    let h = harness().await;
    let old = h.file_lltp(1).await;
    let v2_edits = [
        ("version: 1", "version: 2"),
        (
            "processing_time: { working_days: 10 }",
            "processing_time: { working_days: 8 }",
        ),
    ];
    let v2 = lltp_edited(&v2_edits);
    assert!(matches!(
        h.engine.deploy(&v2).await.unwrap(),
        engine::engine::Deployed::New { version: 2, .. }
    ));
    // Redeploying the same text is a no-op; different text under a deployed version is refused.
    assert!(matches!(
        h.engine.deploy(&v2).await.unwrap(),
        engine::engine::Deployed::Unchanged { .. }
    ));
    let changed = lltp_edited(&[
        v2_edits[0],
        v2_edits[1],
        ("working_days: 8", "working_days: 9"),
    ]);
    assert_eq!(
        h.engine.deploy(&changed).await.unwrap_err().code(),
        "invalid_definition"
    );

    let new = h.file_lltp(1).await;
    assert_eq!(old.procedure_version, 1);
    assert_eq!(new.procedure_version, 2);
    let old = h.receive(&old.code).await;
    let new = h.receive(&new.code).await;
    assert_eq!(
        h.engine
            .calendar()
            .working_minutes_between(old.received_at.unwrap(), old.due_at.unwrap()),
        10 * 480
    );
    assert_eq!(
        h.engine
            .calendar()
            .working_minutes_between(new.received_at.unwrap(), new.due_at.unwrap()),
        8 * 480
    );

    // After a restart the engine still runs each dossier on its own version.
    drop(h.engine);
    let engine = open_engine(&h.dir, h.clock.clone()).await;
    assert_eq!(
        engine
            .procedure("2.000488", None)
            .unwrap()
            .procedure()
            .version,
        2
    );
    assert_eq!(
        engine.dossier(&old.code).await.unwrap().procedure_version,
        1
    );
}

#[tokio::test]
async fn a_job_committed_before_a_crash_runs_exactly_once_after_restart() {
    let h = harness().await;
    let d = h.file_lltp(1).await;
    // Reception commits the receipt notification job; the process dies before any worker runs.
    h.run(&d.code, &desk(), Command::Receive).await;
    let Harness {
        engine, dir, clock, ..
    } = h;
    drop(engine);

    let engine = open_engine(&dir, clock.clone()).await;
    attach_recorders(&engine);
    // A worker claims the job and dies mid-way: its lease keeps others off until it expires.
    let claimed = engine
        .store()
        .claim_due_jobs(engine.now(), 10, chrono::Duration::seconds(60))
        .await
        .unwrap();
    // The receipt, and the syncs of the filing and the reception.
    assert_eq!(claimed.len(), 3, "{claimed:?}");
    drop(engine);

    let engine = open_engine(&dir, clock.clone()).await;
    attach_recorders(&engine);
    assert_eq!(
        engine.drain_jobs().await.unwrap().claimed,
        0,
        "the dead worker's lease still holds"
    );
    clock.advance(Duration::seconds(61));
    let report = engine.drain_jobs().await.unwrap();
    assert_eq!(report.succeeded, 3);
    assert_eq!(engine.drain_jobs().await.unwrap().claimed, 0);
    let d = engine.dossier(&d.code).await.unwrap();
    assert_eq!(
        d.notifications.len(),
        1,
        "the receipt went out exactly once"
    );
    let replay = engine.replay(&d.code).await.unwrap();
    assert!(replay.matches, "{:?}", replay.differences);
}

#[tokio::test]
async fn tthc_audit_verify_names_the_first_altered_event_and_replay_prints_the_timeline() {
    let h = harness().await;
    let d = h.file_lltp(1).await;
    h.receive(&d.code).await;
    let other = h.file_lltp(1).await;
    let url = db_url(&h.dir).await;

    let out = crate::support::tthc(&["--database", &url, "audit", "verify"]);
    assert!(out.status.success(), "{}", crate::support::stdout(&out));
    assert!(
        crate::support::stdout(&out).starts_with("intact: "),
        "{}",
        crate::support::stdout(&out)
    );

    let out = crate::support::tthc(&["--database", &url, "replay", &d.code]);
    let text = crate::support::stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("Cán bộ desk")
            && text.contains("received; due 2026-03-16")
            && text.contains("status 2"),
        "{text}"
    );
    assert!(
        text.contains("State check: the stored read models match the events."),
        "{text}"
    );

    // Someone edits the reception in the database: the refusal reason, say.
    let store = h.engine.store();
    sqlx::query(store.statement("UPDATE events SET payload = replace(payload, '\"accept\"', '\"refuse\"') WHERE dossier_code = ? AND type = 'task_completed'"))
        .bind(&*d.code)
        .execute(h.engine.store().pool())
        .await
        .unwrap();
    let seq: i64 = sqlx::query_scalar(
        store
            .statement("SELECT seq FROM events WHERE dossier_code = ? AND type = 'task_completed'"),
    )
    .bind(&*d.code)
    .fetch_one(h.engine.store().pool())
    .await
    .unwrap();
    let out = crate::support::tthc(&["--database", &url, "audit", "verify"]);
    let text = crate::support::stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.starts_with(&format!(
            "{}: event {seq}: its content does not match its hash",
            d.code
        )),
        "{text}"
    );
    assert!(
        !text.contains(&*other.code),
        "the other dossier is intact: {text}"
    );

    // Removing the last event is caught too.
    sqlx::query(h.engine.store().statement("DELETE FROM events WHERE dossier_code = ? AND seq = (SELECT MAX(seq) FROM events WHERE dossier_code = ?)"))
        .bind(&*other.code)
        .bind(&*other.code)
        .execute(h.engine.store().pool())
        .await
        .unwrap();
    let out = crate::support::tthc(&[
        "--database",
        &url,
        "audit",
        "verify",
        "--dossier",
        &other.code,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        crate::support::stdout(&out).contains("events were removed"),
        "{}",
        crate::support::stdout(&out)
    );
}

/// A procedure row of `source_bytes` whose only use is to make the store write.
fn filler_procedure(version: u32, source_bytes: usize) -> engine::store::StoredProcedure {
    engine::store::StoredProcedure {
        code: "9.999999".into(),
        version,
        name: "Thủ tục thử".into(),
        source: "x".repeat(source_bytes),
        forms: json!({}),
        deployed_at: chrono::Utc::now(),
    }
}

/// SQLite's WAL is copied back into the database file by the store's own task, not by the
/// commit that happens to cross a size limit (that commit would stall): the file must still
/// receive what was written, without anyone closing the store. SQLite-specific, so it opens
/// its own SQLite file whatever database the suite runs on.
#[tokio::test]
async fn sqlite_wal_is_checkpointed_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wal.db");
    let store = engine::store::Store::open(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    // Let the first checkpoint (after migrations) land, then measure.
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let before = std::fs::metadata(&path).unwrap().len();
    for version in 1..=8 {
        let saved = store
            .save_procedure(&filler_procedure(version, 64 * 1024))
            .await
            .unwrap();
        assert!(saved);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let now = std::fs::metadata(&path).unwrap().len();
        // Half of what was written: pages freed by the migrations are reused first. Without
        // a checkpoint the file does not grow at all.
        if now >= before + 4 * 64 * 1024 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the database file stayed at {now} bytes (from {before}): the WAL was not checkpointed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Still the same open store, and everything is readable.
    assert_eq!(store.procedures().await.unwrap().len(), 8);
}

/// Under writes that never stop, SQLite's WAL must still start again from its beginning now
/// and then: a passive checkpoint alone never finishes before the next commit, and the file
/// then grows for as long as the load lasts (it reached 1.6 GB in 12 s of the durable
/// benchmark). The WAL header's checkpoint sequence number counts those restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_wal_starts_again_while_writes_never_stop() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("busy.db");
    let store = engine::store::Store::open(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let wal = dir.path().join("busy.db-wal");
    let restarts = || {
        let header = std::fs::read(&wal).unwrap_or_default();
        header
            .get(12..16)
            .map_or(0, |b| u32::from_be_bytes(b.try_into().unwrap()))
    };
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for version in 1.. {
                store
                    .save_procedure(&filler_procedure(version, 4 * 1024))
                    .await
                    .unwrap();
            }
        })
    };
    // Writing has begun before the first count.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let first = restarts();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while restarts() == first {
        assert!(
            std::time::Instant::now() < deadline,
            "the WAL never started again under continuous writes: it is {} bytes",
            std::fs::metadata(&wal).map_or(0, |m| m.len())
        );
        assert!(!writer.is_finished(), "the writer stopped");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(!writer.is_finished(), "the writes paused");
    writer.abort();
}

/// On SQLite, appends waiting for the writer are committed together (group commit): every
/// command still succeeds or fails on its own, against its own expected state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commands_each_succeed_or_conflict_on_their_own() {
    let h = harness().await;
    let mut dossiers = Vec::new();
    for _ in 0..12 {
        dossiers.push(h.file_lltp(1).await);
    }
    // Different dossiers at once: all of them are received.
    let mut handles = Vec::new();
    for d in &dossiers {
        let (engine, code, seq) = (h.engine.clone(), d.code.clone(), d.seq);
        handles.push(tokio::spawn(async move {
            engine
                .execute(&code, Some(seq), &desk(), &Command::Receive)
                .await
        }));
    }
    for handle in handles {
        let d = handle.await.unwrap().unwrap();
        assert_eq!(d.status, Status::Received);
    }
    h.drain().await;
    // One dossier, the same command decided on the same state six times at once: one wins.
    let d = h.engine.dossier(&dossiers[0].code).await.unwrap();
    let task = task_at(&d, "tham_dinh");
    let mut handles = Vec::new();
    for _ in 0..6 {
        let (engine, code, seq, task) = (h.engine.clone(), d.code.clone(), d.seq, task.clone());
        handles.push(tokio::spawn(async move {
            engine
                .execute(
                    &code,
                    Some(seq),
                    &specialist(),
                    &Command::ClaimTask { task },
                )
                .await
        }));
    }
    let mut won = 0;
    for handle in handles {
        match handle.await.unwrap() {
            Ok(_) => won += 1,
            Err(EngineError::Conflict { expected, .. }) => assert_eq!(expected, d.seq),
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(won, 1);
    for d in &dossiers {
        h.assert_replays_and_verifies(&d.code).await;
    }
    assert!(h.engine.verify(None).await.unwrap().is_intact());
}

/// An append that fails in the database (here its event collides with a row planted at the
/// next sequence) is rolled back whole: the dossier stays where it was, the commands around it
/// commit, and no connection is left inside the failed transaction (a later writer would wait
/// for it and fail).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_append_leaves_the_dossier_as_it_was_and_the_store_writable() {
    let h = harness().await;
    let broken = h.file_lltp(1).await;
    let others = vec![h.file_lltp(1).await, h.file_lltp(1).await];
    let store = h.engine.store();
    let plant = store.statement(
        "INSERT INTO events (dossier_code, seq, type, at, actor_id, actor_name, payload, hash)
         VALUES (?, ?, 'planted', 0, 'x', 'x', '{}', ?)",
    );
    sqlx::query(plant)
        .bind(&*broken.code)
        .bind(i64::try_from(broken.seq + 1).unwrap())
        .bind(vec![0u8; 32])
        .execute(store.pool())
        .await
        .unwrap();
    // The failing append and others at the same moment, so they may share a group commit.
    let mut handles = Vec::new();
    for d in std::iter::once(&broken).chain(&others) {
        let (engine, code, seq) = (h.engine.clone(), d.code.to_string(), d.seq);
        handles.push(tokio::spawn(async move {
            engine
                .execute(&code, Some(seq), &desk(), &Command::Receive)
                .await
        }));
    }
    let mut results = Vec::new();
    for handle in handles {
        results.push(handle.await.unwrap());
    }
    assert!(
        matches!(results[0], Err(EngineError::Store(_))),
        "{:?}",
        results[0]
    );
    for r in &results[1..] {
        assert_eq!(r.as_ref().unwrap().status, Status::Received);
    }
    let row_seq = |code: String| {
        let store = store.clone();
        async move {
            sqlx::query_scalar::<_, i64>(store.statement("SELECT seq FROM dossiers WHERE code = ?"))
                .bind(code)
                .fetch_one(store.pool())
                .await
                .unwrap()
        }
    };
    assert_eq!(
        row_seq(broken.code.to_string()).await,
        i64::try_from(broken.seq).unwrap(),
        "the failed append moved the dossier row"
    );
    // Every later write commits at once: nothing holds the write lock.
    for d in &others {
        h.drain().await;
        let next = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            h.engine.execute(
                &d.code,
                None,
                &specialist(),
                &Command::ClaimTask {
                    task: task_at(&h.engine.dossier(&d.code).await.unwrap(), "tham_dinh"),
                },
            ),
        )
        .await
        .expect("a later write waited for a lock");
        next.unwrap();
    }
    // With the planted row gone, the same command on the broken dossier goes through.
    sqlx::query(store.statement("DELETE FROM events WHERE dossier_code = ? AND type = 'planted'"))
        .bind(&*broken.code)
        .execute(store.pool())
        .await
        .unwrap();
    let d = h
        .engine
        .execute(&broken.code, Some(broken.seq), &desk(), &Command::Receive)
        .await
        .unwrap();
    assert_eq!(d.status, Status::Received);
    h.drain().await;
    for d in std::iter::once(&broken).chain(&others) {
        h.assert_replays_and_verifies(&d.code).await;
    }
}

/// A hook whose every call waits (up to 5 s) for a second call to be in flight before it
/// answers: it succeeds only when two jobs run side by side.
struct Rendezvous {
    barrier: tokio::sync::Barrier,
}

impl engine::HookHandler for Rendezvous {
    fn call<'a>(&'a self, _request: engine::HookRequest<'a>) -> engine::engine::HookFuture<'a> {
        Box::pin(async move {
            match tokio::time::timeout(std::time::Duration::from_secs(5), self.barrier.wait()).await
            {
                Ok(_) => engine::dossier::HookOutcome::Succeeded {
                    detail: json!({}),
                    notification: None,
                },
                Err(_) => engine::dossier::HookOutcome::Failed {
                    error: "no other call came".into(),
                },
            }
        })
    }
}

/// The worker runs different dossiers' jobs side by side: a slow external system holds up
/// only the dossier it serves. (One dossier's jobs still run one after another.)
#[tokio::test]
async fn different_dossiers_jobs_run_side_by_side() {
    let h = harness().await;
    h.engine.register_hook(
        "portal.sync_dossier",
        std::sync::Arc::new(Rendezvous {
            barrier: tokio::sync::Barrier::new(2),
        }),
    );
    let a = h.file_lltp(1).await;
    let b = h.file_lltp(1).await;
    let report = h.engine.run_due_jobs(8).await.unwrap();
    assert_eq!(report.claimed, 2, "the two filings' syncs: {report:?}");
    assert_eq!(report.succeeded, 2, "{report:?}");
    for code in [&a.code, &b.code] {
        let d = h.engine.dossier(code).await.unwrap();
        assert!(
            d.all_jobs()
                .all(|j| j.state == engine::dossier::JobState::Done),
            "{:?}",
            d.jobs
        );
    }
}

/// A filing is one transaction: its number, its idempotency key and its rows. Filings racing
/// with one key file once and spend one number; a filing whose decision is refused inside the
/// transaction stores nothing and spends no number; the next filing takes the next number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filing_spends_its_number_only_when_it_is_stored() {
    let h = harness().await;
    let filing = lltp_filing(1);
    let mut racing = Vec::new();
    for _ in 0..8 {
        let (engine, filing) = (h.engine.clone(), filing.clone());
        racing.push(tokio::spawn(async move {
            engine
                .file_once(&citizen(), &filing, Some(("key-1", "request-1")))
                .await
        }));
    }
    let mut codes = std::collections::BTreeSet::new();
    let mut filed_now = 0;
    for r in racing {
        let (d, earlier) = r.await.unwrap().unwrap();
        codes.insert(d.code.to_string());
        filed_now += usize::from(!earlier);
    }
    assert_eq!(codes.len(), 1, "one dossier for one key: {codes:?}");
    assert_eq!(filed_now, 1, "filed once, the others answered with it");
    let first = codes.pop_first().unwrap();
    let (day, number) = day_and_number(&first);

    let refused = h
        .engine
        .store()
        .create(
            &filing.agency_code,
            day,
            |_code| Err::<(Vec<engine::dossier::Event>, engine::dossier::Dossier), _>("refused"),
            monday_morning(),
            ("desk", "Desk"),
            None,
        )
        .await
        .unwrap();
    assert!(matches!(refused, Err("refused")));

    let next = h.engine.file(&citizen(), &filing).await.unwrap();
    assert_eq!(
        day_and_number(&next.code),
        (day, number + 1),
        "{} after {first}: the refused filing spent no number",
        next.code
    );
    assert_eq!(
        h.engine
            .store()
            .dossiers_of_owner(filing.owner.id.as_str(), 10, 0)
            .await
            .unwrap()
            .len(),
        2
    );
}

/// A decision that panics while a dossier is being filed (on SQLite it runs on the store's
/// writer thread, inside the filing's transaction) fails that filing alone: nothing of it is
/// stored, no number is spent, and every later write goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filing_whose_decision_panics_leaves_the_store_writable() {
    let h = harness().await;
    let filing = lltp_filing(1);
    let first = h.engine.file(&citizen(), &filing).await.unwrap();
    let (day, number) = day_and_number(&first.code);
    let engine = h.engine.clone();
    let agency = filing.agency_code.clone();
    let panicked = tokio::spawn(async move {
        engine
            .store()
            .create(
                &agency,
                day,
                |_code| -> Result<(Vec<engine::dossier::Event>, engine::dossier::Dossier), ()> {
                    panic!("a decision that panics")
                },
                monday_morning(),
                ("desk", "Desk"),
                None,
            )
            .await
    })
    .await;
    // On SQLite the store answers with an error; elsewhere the panic is the caller's own.
    match panicked {
        Ok(answer) => assert!(answer.is_err(), "a panicked filing is not stored"),
        Err(join) => assert!(join.is_panic()),
    }

    let next = h.engine.file(&citizen(), &filing).await.unwrap();
    assert_eq!(
        day_and_number(&next.code),
        (day, number + 1),
        "{} after {}: the panicked filing spent no number",
        next.code,
        first.code
    );
    let d = h.receive(&next.code).await;
    assert_eq!(d.status, Status::Received, "commands still commit");
}

/// The day and the number of a dossier code (`AGENCY-YYMMDD-NNNN`).
fn day_and_number(code: &str) -> (chrono::NaiveDate, u32) {
    let (prefix, number) = code.rsplit_once('-').unwrap();
    let day = prefix.rsplit_once('-').unwrap().1;
    (
        chrono::NaiveDate::parse_from_str(day, "%y%m%d").unwrap(),
        number.parse().unwrap(),
    )
}

#[tokio::test]
async fn a_finished_job_leaves_the_open_jobs_and_a_late_outcome_for_it_is_stale() {
    let h = harness().await;
    let d = h.file_lltp(1).await;
    let d = h.receive(&d.code).await;
    // Filing and reception each scheduled jobs (status syncs, the receipt); all have run.
    assert!(d.jobs.is_empty(), "no open job is left: {:?}", d.jobs);
    let finished: Vec<_> = d.finished_jobs.iter().cloned().collect();
    assert!(finished.len() >= 2, "{finished:?}");
    assert_eq!(d.jobs_scheduled(), finished.len());
    assert!(
        finished
            .iter()
            .all(|j| j.state == engine::dossier::JobState::Done),
        "{finished:?}"
    );
    let newest = &finished[0];
    assert_eq!(
        d.job(&newest.id).map(|j| &j.id),
        Some(&newest.id),
        "a finished job is still found by its id"
    );

    // The worker records an outcome twice (say, its lease ran out while it called out): the
    // second is refused as stale, not as an unknown job, and nothing is appended.
    let late = h
        .engine
        .execute(
            &d.code,
            None,
            &engine::dossier::Actor::System,
            &Command::RecordHookOutcome {
                job: newest.id.to_string(),
                attempt: newest.attempts,
                outcome: engine::dossier::HookOutcome::Succeeded {
                    detail: json!({}),
                    notification: None,
                },
            },
        )
        .await;
    assert!(
        matches!(
            late,
            Err(EngineError::Command(CommandError::StaleJob { .. }))
        ),
        "{late:?}"
    );
    assert_eq!(h.engine.dossier(&d.code).await.unwrap().seq, d.seq);

    // The next job is numbered after every job scheduled, finished ones included.
    let d = h.process_to_signed(&d.code).await;
    let numbers: Vec<usize> = d
        .all_jobs()
        .map(|j| j.id.trim_start_matches('j').parse().unwrap())
        .collect();
    let mut sorted = numbers.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        numbers.len(),
        "no number given twice: {numbers:?}"
    );
    assert_eq!(sorted, (1..=numbers.len()).collect::<Vec<_>>());

    // The read models agree with the events: finished jobs left the work queue.
    h.drain().await;
    h.assert_replays_and_verifies(&d.code).await;
}

/// Luật Lý lịch tư pháp, art. 48: 10 working days, 15 for someone who lived abroad or in
/// several places, a foreigner, or a removed record to check; chosen by the filed facts.
#[tokio::test]
async fn the_judicial_record_deadline_is_ten_or_fifteen_working_days_by_the_filed_facts() {
    let h = harness().await;
    let mut cases = vec![(lltp_filing(1), 10)];
    for (field, value) in [
        ("cu_tru_nuoc_ngoai", json!(true)),
        ("cu_tru_nhieu_noi", json!(true)),
        ("da_duoc_xoa_an_tich", json!(true)),
        ("quoc_tich", json!("Hàn Quốc")),
    ] {
        let mut f = lltp_filing(1);
        f.data.get_mut("to_khai").unwrap()[field] = value;
        cases.push((f, 15));
    }
    let mut vn = lltp_filing(1);
    vn.data.get_mut("to_khai").unwrap()["quoc_tich"] = json!("Việt Nam");
    cases.push((vn, 10));
    for (filing, days) in cases {
        let d = h.engine.file(&citizen(), &filing).await.unwrap();
        let d = h.receive(&d.code).await;
        let received = d.received_at.unwrap();
        let expected = h
            .engine
            .calendar()
            .add(received, engine::definition::Duration::WorkingDays(days));
        assert_eq!(
            d.due_at,
            Some(expected),
            "{:?} should be due in {days} working days",
            filing.data["to_khai"]
        );
    }
}

/// Decree 42/2022: an online filing is recorded as fully or partly online, by the procedure's
/// online service; a filing at the desk has no online level.
#[tokio::test]
async fn an_online_filing_records_its_online_level_and_a_desk_filing_none() {
    let h = harness().await;
    let online = h.file_lltp(1).await;
    assert_eq!(
        online.online_level,
        Some(engine::dossier::OnlineLevel::Full)
    );
    let mut at_desk = lltp_filing(1);
    at_desk.channel = engine::dossier::Channel::InPerson;
    let d = h.engine.file(&desk(), &at_desk).await.unwrap();
    assert_eq!(d.online_level, None);
    // Recorded in the filing's event: a replay gives the same.
    h.assert_replays_and_verifies(&online.code).await;
}
