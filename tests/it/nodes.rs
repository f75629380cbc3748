//! Several engines ("nodes") on one database: the guarantees a cluster relies on. On SQLite
//! the nodes share a file in one process; with TTHC_TEST_DATABASE on PostgreSQL they share a
//! server, as `tthc serve` nodes do.

use std::collections::BTreeSet;

use chrono::Duration;
use engine::EngineError;
use engine::dossier::Command;
use serde_json::json;

use crate::engine_support::*;

async fn two_nodes() -> (Harness, engine::Engine) {
    let h = harness().await;
    let other = open_engine(&h.dir, h.clock.clone()).await;
    attach_recorders(&other);
    (h, other)
}

#[tokio::test]
async fn dossier_codes_stay_unique_across_nodes() {
    let (h, b) = two_nodes().await;
    let mut handles = Vec::new();
    for i in 0..16 {
        let node = if i % 2 == 0 {
            h.engine.clone()
        } else {
            b.clone()
        };
        handles.push(tokio::spawn(async move {
            node.file(&citizen(), &lltp_filing(1))
                .await
                .unwrap()
                .code
                .to_string()
        }));
    }
    let mut codes = BTreeSet::new();
    for handle in handles {
        assert!(
            codes.insert(handle.await.unwrap()),
            "a dossier code was given twice"
        );
    }
    let expected: BTreeSet<String> = (1..=16)
        .map(|n| format!("{AGENCY}-260302-{n:04}"))
        .collect();
    assert_eq!(codes, expected);
}

#[tokio::test]
async fn concurrent_writes_from_two_nodes_end_in_one_success_and_one_conflict() {
    let (h, b) = two_nodes().await;
    let d = h.file_lltp(1).await;
    let d = h.receive(&d.code).await;
    let task = task_at(&d, "tham_dinh");
    let cmd = Command::CompleteTask {
        task,
        outcome: None,
        data: Some(json!({"co_an_tich": false, "can_xac_minh": false})),
        reason: None,
    };
    let (x, y) = (
        officer("x", &["chuyen_vien"]),
        officer("y", &["chuyen_vien"]),
    );
    let (ra, rb) = tokio::join!(
        h.engine.execute(&d.code, Some(d.seq), &x, &cmd),
        b.execute(&d.code, Some(d.seq), &y, &cmd)
    );
    assert_eq!(
        [ra.is_ok(), rb.is_ok()].iter().filter(|ok| **ok).count(),
        1,
        "{ra:?} {rb:?}"
    );
    assert!(matches!(
        ra.err().or(rb.err()),
        Some(EngineError::Conflict { .. })
    ));
    h.assert_replays_and_verifies(&d.code).await;
}

/// Each node keeps folded states in memory; a command on one node must still decide on what
/// the other appended since.
#[tokio::test]
async fn nodes_taking_turns_each_see_what_the_other_appended() {
    let (h, b) = two_nodes().await;
    let d = h.file_lltp(1).await;
    // Both nodes now hold the dossier as filed.
    assert_eq!(b.dossier(&d.code).await.unwrap(), d);
    b.execute(&d.code, Some(d.seq), &desk(), &Command::Receive)
        .await
        .unwrap();
    b.drain_jobs().await.unwrap();
    let received = b.dossier(&d.code).await.unwrap();
    // Node A's copy is stale; its view and its decisions must follow node B's append.
    assert_eq!(h.engine.dossier(&d.code).await.unwrap(), received);
    let stale = h
        .engine
        .execute(&d.code, Some(d.seq), &desk(), &Command::Receive)
        .await;
    assert!(
        matches!(stale, Err(EngineError::Conflict { current, .. }) if current == received.seq),
        "{stale:?}"
    );
    let task = task_at(&received, "tham_dinh");
    let claimed = h
        .engine
        .execute(
            &d.code,
            Some(received.seq),
            &specialist(),
            &Command::ClaimTask { task: task.clone() },
        )
        .await
        .unwrap();
    assert_eq!(b.dossier(&d.code).await.unwrap(), claimed);
    assert!(claimed.tasks[task.as_str()].claimed_by.is_some());
    h.assert_replays_and_verifies(&d.code).await;
}

/// A node decides first on its copy of the dossier; a command its copy would refuse (a task
/// another node opened) is decided again on the stored state, not refused.
#[tokio::test]
async fn a_command_refused_on_a_stale_copy_is_decided_again_on_the_stored_state() {
    let (h, b) = two_nodes().await;
    let d = h.file_lltp(1).await;
    // Node A holds the dossier as filed; node B receives it, which opens the first task.
    b.execute(&d.code, None, &desk(), &Command::Receive)
        .await
        .unwrap();
    b.drain_jobs().await.unwrap();
    let received = b.dossier(&d.code).await.unwrap();
    let task = task_at(&received, "tham_dinh");
    let claimed = h
        .engine
        .execute(
            &d.code,
            None,
            &specialist(),
            &Command::ClaimTask { task: task.clone() },
        )
        .await
        .unwrap();
    assert!(claimed.tasks[task.as_str()].claimed_by.is_some());
    assert!(claimed.seq > received.seq);
    h.assert_replays_and_verifies(&d.code).await;
}

#[tokio::test]
async fn each_due_job_is_claimed_by_one_node_only() {
    let (h, b) = two_nodes().await;
    for _ in 0..6 {
        let d = h.file_lltp(1).await;
        h.run(&d.code, &desk(), Command::Receive).await;
    }
    let now = h.engine.now();
    let lease = Duration::seconds(60);
    let (ca, cb) = tokio::join!(
        h.engine.store().claim_due_jobs(now, 100, lease),
        b.store().claim_due_jobs(now, 100, lease)
    );
    let (ca, cb) = (ca.unwrap(), cb.unwrap());
    assert!(!ca.is_empty() || !cb.is_empty());
    let a: BTreeSet<_> = ca
        .iter()
        .map(|j| (j.dossier.clone(), j.job.clone()))
        .collect();
    let bb: BTreeSet<_> = cb
        .iter()
        .map(|j| (j.dossier.clone(), j.job.clone()))
        .collect();
    assert!(a.is_disjoint(&bb), "a job was claimed by both nodes");
    // Nothing is left to claim while the leases hold.
    assert!(
        h.engine
            .store()
            .claim_due_jobs(now, 100, lease)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_schedule_tick_runs_on_one_node_only() {
    let (h, b) = two_nodes().await;
    let tick = h.engine.now() + Duration::hours(1);
    let (x, y) = tokio::join!(
        h.engine.store().claim_tick("overdue_scan", tick),
        b.store().claim_tick("overdue_scan", tick)
    );
    assert_eq!(
        [x.unwrap(), y.unwrap()].iter().filter(|won| **won).count(),
        1
    );
    assert!(
        !h.engine
            .store()
            .claim_tick("overdue_scan", tick)
            .await
            .unwrap(),
        "the same tick again"
    );
    assert!(
        b.store()
            .claim_tick("overdue_scan", tick + Duration::hours(24))
            .await
            .unwrap(),
        "the next tick"
    );
}

#[tokio::test]
async fn idle_workers_are_woken_by_new_jobs_on_postgresql() {
    let h = harness().await;
    let listener = h.engine.store().job_listener().await.unwrap();
    match (h.engine.store().backend(), listener) {
        (engine::store::Backend::Sqlite, None) => {}
        (engine::store::Backend::Postgres, Some(mut l)) => {
            let d = h.file_lltp(1).await;
            h.run(&d.code, &desk(), Command::Receive).await;
            let n = tokio::time::timeout(std::time::Duration::from_secs(5), l.recv()).await;
            assert!(matches!(n, Ok(Ok(_))), "no notification: {n:?}");
        }
        (backend, l) => panic!("{backend:?} with listener {}", l.is_some()),
    }
}

#[tokio::test]
async fn a_version_deployed_through_one_node_is_used_by_the_others() {
    let (h, b) = two_nodes().await;
    let v2 = lltp_edited(&[("version: 1", "version: 2")]);
    h.engine.deploy(&v2).await.unwrap();
    // Node b never deployed it: it files on it, and runs commands on its dossiers.
    let d = b.file(&citizen(), &lltp_filing(1)).await.unwrap();
    assert_eq!(d.procedure_version, 2);
    let d = b
        .execute(&d.code, None, &desk(), &Command::Receive)
        .await
        .unwrap();
    assert_eq!(d.status.code(), 2);
    assert!(b.procedures().iter().any(|p| p.procedure().version == 2));
}

#[tokio::test]
async fn one_idempotency_key_files_one_dossier_across_nodes() {
    let (h, b) = two_nodes().await;
    let filing = lltp_filing(1);
    let key = Some(("retry-1", "hash-of-the-request"));
    let an = citizen();
    let (x, y) = tokio::join!(
        h.engine.file_once(&an, &filing, key),
        b.file_once(&an, &filing, key)
    );
    let ((dx, rx), (dy, ry)) = (x.unwrap(), y.unwrap());
    assert_eq!(dx.code, dy.code, "both nodes answer with the one dossier");
    assert!(rx != ry, "one filed it, the other found it");
    let again = b.file_once(&citizen(), &filing, key).await.unwrap();
    assert_eq!(again.0.code, dx.code);
    assert!(again.1);
    let other = b
        .file_once(&citizen(), &filing, Some(("retry-1", "another-request")))
        .await;
    assert!(
        matches!(other, Err(EngineError::IdempotencyKeyReused)),
        "{other:?}"
    );
    let mine = h
        .engine
        .store()
        .dossiers_of_owner(CITIZEN_ID, 10, 0)
        .await
        .unwrap();
    assert_eq!(mine.len(), 1, "filed once");
}
