//! Sealed streams: a settled dossier's events packed into one archive read, replay and verify
//! as before, and what is altered is still found at its sequence number.

use engine::dossier::{Command, EventRecord};
use engine::store::SealCandidate;

use crate::engine_support::*;

/// A judicial record dossier taken to its returned result, hooks run.
async fn returned(h: &Harness) -> String {
    let d = h.file_lltp(1).await;
    h.receive(&d.code).await;
    h.process_to_signed(&d.code).await;
    h.run(&d.code, &desk(), Command::ReturnResult).await;
    h.drain().await;
    assert!(h.engine.dossier(&d.code).await.unwrap().is_closed());
    d.code.to_string()
}

async fn count(h: &Harness, sql: &str, code: &str) -> i64 {
    sqlx::query_scalar(h.engine.store().statement(sql))
        .bind(code)
        .fetch_one(h.engine.store().pool())
        .await
        .unwrap()
}

fn chain(events: &[EventRecord]) -> Vec<(u64, String, String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e.seq,
                e.prev_hash.clone(),
                e.hash.clone(),
                serde_json::to_string(&e.event).unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_settled_dossier_is_sealed_and_reads_replays_and_verifies_as_before() {
    let h = harness().await;
    let code = returned(&h).await;
    let open = h.file_lltp(1).await;
    let store = h.engine.store();
    let events = store.events(&code).await.unwrap();
    let letters = store
        .projection(&code)
        .await
        .unwrap()
        .unwrap()
        .notifications;
    assert_eq!(letters.len(), 2, "receipt and result letters");
    assert_eq!(
        count(
            &h,
            "SELECT COUNT(*) FROM jobs WHERE dossier_code = ?",
            &code
        )
        .await,
        0,
        "finished jobs leave the queue"
    );

    let report = h
        .engine
        .seal_settled(chrono::Duration::zero(), 64)
        .await
        .unwrap();
    assert_eq!(report.sealed, 1, "only the settled dossier: {report:?}");
    assert_eq!(report.events, events.len() as u64);
    assert!(report.broken.is_empty());
    assert_eq!(
        count(
            &h,
            "SELECT COUNT(*) FROM events WHERE dossier_code = ?",
            &code
        )
        .await,
        0,
        "the rows are replaced by the archive"
    );
    assert!(
        count(
            &h,
            "SELECT COUNT(*) FROM events WHERE dossier_code = ?",
            &open.code
        )
        .await
            > 0,
        "an open dossier is not sealed"
    );
    let sealed_bytes = count(
        &h,
        "SELECT CAST(length(body) + length(checks) + length(head) AS BIGINT) FROM event_archives WHERE dossier_code = ?",
        &code,
    )
    .await;
    let text_bytes: usize = events
        .iter()
        .map(|e| serde_json::to_string(&e.event).unwrap().len())
        .sum();
    assert!(
        (sealed_bytes as usize) * 3 < text_bytes,
        "{} events: {text_bytes} B of payload text sealed into {sealed_bytes} B",
        events.len()
    );

    // Read back: the same events, hashes and letters; replay and verify agree.
    assert_eq!(chain(&store.events(&code).await.unwrap()), chain(&events));
    assert_eq!(
        store
            .projection(&code)
            .await
            .unwrap()
            .unwrap()
            .notifications,
        letters
    );
    h.assert_replays_and_verifies(&code).await;
    let all = h.engine.verify(None).await.unwrap();
    assert!(all.is_intact(), "{:?}", all.breaks);
    assert_eq!(all.dossiers, 2);
    // A node that never saw the dossier folds it from the archive.
    let fresh = open_engine(&h.dir, h.engine.clock().clone()).await;
    deploy_shipped(&fresh).await;
    assert_eq!(
        fresh.dossier(&code).await.unwrap(),
        h.engine.dossier(&code).await.unwrap()
    );
    // Nothing left to seal.
    let again = h
        .engine
        .seal_settled(chrono::Duration::zero(), 64)
        .await
        .unwrap();
    assert_eq!(again.sealed, 0);
}

#[tokio::test]
async fn events_after_a_seal_chain_to_the_archive_and_are_sealed_with_it() {
    let h = harness().await;
    let d = h.file_lltp(1).await;
    h.receive(&d.code).await;
    // The engine seals only settled dossiers; the store seals whatever it is given.
    let head = h.engine.store().events(&d.code).await.unwrap();
    let last = head.last().unwrap();
    let store = h.engine.store();
    let r = store
        .seal(&[SealCandidate {
            code: d.code.to_string(),
            seq: last.seq,
            head: last.hash.clone(),
            sealed: 0,
        }])
        .await
        .unwrap();
    assert_eq!(r.sealed, 1, "{r:?}");

    // The dossier goes on: new events are rows again, chained to the archive's head.
    h.process_to_signed(&d.code).await;
    h.run(&d.code, &desk(), Command::ReturnResult).await;
    h.drain().await;
    let events = store.events(&d.code).await.unwrap();
    assert_eq!(events[last.seq as usize].prev_hash, last.hash);
    h.assert_replays_and_verifies(&d.code).await;

    // Settled: sealed again, into one archive with the first part.
    let r = h
        .engine
        .seal_settled(chrono::Duration::zero(), 64)
        .await
        .unwrap();
    assert_eq!((r.sealed, r.events), (1, events.len() as u64 - last.seq));
    assert_eq!(
        count(
            &h,
            "SELECT COUNT(*) FROM events WHERE dossier_code = ?",
            &d.code
        )
        .await,
        0
    );
    assert_eq!(chain(&store.events(&d.code).await.unwrap()), chain(&events));
    h.assert_replays_and_verifies(&d.code).await;
}

#[tokio::test]
async fn a_settled_dossier_waits_for_seal_after() {
    let h = harness().await;
    let code = returned(&h).await;
    let r = h
        .engine
        .seal_settled(chrono::Duration::hours(1), 64)
        .await
        .unwrap();
    assert_eq!(r.sealed, 0, "changed less than an hour ago");
    h.engine.clock().advance(chrono::Duration::minutes(61));
    let r = h
        .engine
        .seal_settled(chrono::Duration::hours(1), 64)
        .await
        .unwrap();
    assert_eq!(r.sealed, 1);
    h.assert_replays_and_verifies(&code).await;
}

#[tokio::test]
async fn an_altered_sealed_event_is_found_at_its_sequence_number() {
    let h = harness().await;
    let code = returned(&h).await;
    let events = h.engine.store().events(&code).await.unwrap();
    let target = events
        .iter()
        .find(|e| {
            serde_json::to_string(&e.event)
                .unwrap()
                .contains("\"accept\"")
        })
        .map(|e| e.seq)
        .expect("the reception's outcome");
    h.engine
        .seal_settled(chrono::Duration::zero(), 64)
        .await
        .unwrap();

    // Someone rewrites the archive with one outcome changed, keeping its checks and head.
    let store = h.engine.store();
    let archive = store.archive(&code).await.unwrap().unwrap();
    // One dossier: too few archives for a dictionary.
    assert_eq!(archive.dictionary, 0);
    let plain = engine::archive::Dictionary::none().unwrap();
    let mut records = engine::archive::unpack(&archive, &plain).unwrap();
    let i = usize::try_from(target - 1).unwrap();
    records[i].payload = records[i].payload.replace("\"accept\"", "\"refuse\"");
    let forged = engine::archive::pack(&records, &plain).unwrap();
    sqlx::query(store.statement("UPDATE event_archives SET body = ? WHERE dossier_code = ?"))
        .bind(forged.body)
        .bind(&code)
        .execute(store.pool())
        .await
        .unwrap();
    let v = h.engine.verify(None).await.unwrap();
    assert_eq!(v.breaks.len(), 1, "{:?}", v.breaks);
    assert_eq!(
        (v.breaks[0].dossier.as_str(), v.breaks[0].seq),
        (code.as_str(), target)
    );
    assert!(
        v.breaks[0].problem.contains("altered"),
        "{}",
        v.breaks[0].problem
    );

    // A damaged archive is a break too, not a crash.
    sqlx::query(store.statement("UPDATE event_archives SET body = ? WHERE dossier_code = ?"))
        .bind(vec![1u8, 2, 3])
        .bind(&code)
        .execute(store.pool())
        .await
        .unwrap();
    let v = h.engine.verify(Some(&code)).await.unwrap();
    assert_eq!(v.breaks.len(), 1, "{:?}", v.breaks);
    assert!(
        v.breaks[0].problem.contains("unreadable"),
        "{}",
        v.breaks[0].problem
    );
}

#[tokio::test]
async fn a_stream_that_does_not_verify_is_never_sealed() {
    let h = harness().await;
    let code = returned(&h).await;
    let store = h.engine.store();
    sqlx::query(store.statement(
        "UPDATE events SET payload = replace(payload, '\"accept\"', '\"refuse\"') WHERE dossier_code = ? AND type = 'task_completed'",
    ))
    .bind(&code)
    .execute(store.pool())
    .await
    .unwrap();
    let r = h
        .engine
        .seal_settled(chrono::Duration::zero(), 64)
        .await
        .unwrap();
    assert_eq!(r.sealed, 0);
    assert_eq!(r.broken.len(), 1, "{r:?}");
    assert_eq!(r.broken[0].dossier, code);
    assert!(
        count(
            &h,
            "SELECT COUNT(*) FROM events WHERE dossier_code = ?",
            &code
        )
        .await
            > 0,
        "the altered rows stay as evidence"
    );
    // Not tried again on every pass.
    let r = h
        .engine
        .seal_settled(chrono::Duration::zero(), 64)
        .await
        .unwrap();
    assert_eq!(r, Default::default());
}

/// A dossier filed and withdrawn at once: settled, with a short stream.
async fn withdrawn(engine: &engine::engine::Engine) -> String {
    let d = engine.file(&citizen(), &lltp_filing(1)).await.unwrap();
    engine
        .execute(
            &d.code,
            None,
            &citizen(),
            &Command::Withdraw {
                reason: "Không còn nhu cầu".into(),
            },
        )
        .await
        .unwrap();
    engine.drain_jobs().await.unwrap();
    d.code.to_string()
}

#[tokio::test]
async fn once_enough_dossiers_are_sealed_a_dictionary_is_trained_and_used() {
    let h = harness().await;
    let mut codes = Vec::new();
    for _ in 0..engine::archive::MIN_SAMPLES {
        codes.push(withdrawn(&h.engine).await);
    }
    let r = h
        .engine
        .seal_settled(chrono::Duration::zero(), 100)
        .await
        .unwrap();
    assert_eq!(r.sealed, engine::archive::MIN_SAMPLES as u64);
    let store = h.engine.store();
    assert_eq!(
        store.current_dictionary().await.unwrap(),
        1,
        "trained on the first archives"
    );

    let code = withdrawn(&h.engine).await;
    let r = h
        .engine
        .seal_settled(chrono::Duration::zero(), 100)
        .await
        .unwrap();
    assert_eq!(r.sealed, 1);
    let archive = store.archive(&code).await.unwrap().unwrap();
    assert_eq!(archive.dictionary, 1, "compressed with the dictionary");
    let first = store.archive(&codes[0]).await.unwrap().unwrap();
    assert_eq!(first.dictionary, 0);
    assert!(
        archive.body.len() < first.body.len(),
        "{} B with the dictionary against {} B",
        archive.body.len(),
        first.body.len()
    );
    // Another process reads it: the dictionary comes from the database.
    let fresh = open_engine(&h.dir, h.engine.clock().clone()).await;
    deploy_shipped(&fresh).await;
    assert_eq!(
        fresh.dossier(&code).await.unwrap(),
        h.engine.dossier(&code).await.unwrap()
    );
    let v = fresh.verify(None).await.unwrap();
    assert!(v.is_intact(), "{:?}", v.breaks);
    assert_eq!(v.dossiers, engine::archive::MIN_SAMPLES as u64 + 1);
    h.assert_replays_and_verifies(&code).await;
}

#[tokio::test]
async fn a_dossier_another_node_sealed_meanwhile_is_skipped_not_reported_broken() {
    let h = harness().await;
    let code = returned(&h).await;
    let other = open_engine(&h.dir, h.engine.clock().clone()).await;
    // The other node reads the candidates, then this one seals them first.
    let candidates = other
        .store()
        .settled_unsealed(h.engine.now(), 64)
        .await
        .unwrap();
    assert_eq!(candidates.len(), 1);
    let r = h
        .engine
        .seal_settled(chrono::Duration::zero(), 64)
        .await
        .unwrap();
    assert_eq!(r.sealed, 1);
    let r = other.store().seal(&candidates).await.unwrap();
    assert_eq!((r.sealed, r.changed), (0, 1), "{r:?}");
    assert!(r.broken.is_empty(), "{:?}", r.broken);
    h.assert_replays_and_verifies(&code).await;
}
