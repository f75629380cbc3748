//! The portal connector (`engine::portal`) against the portal simulator (`tthc portal-sim`):
//! tokens, syncs kept by sequence, Kho DL papers, idempotency keys, typed faults, the hooks
//! inside the real engine with its backoff, and the simulator as a real process.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command as Process, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chrono::Duration as Span;
use engine::definition::{Loader, LoaderConfig};
use engine::dossier::{Command, DocumentRef, JobState, Status};
use engine::portal::{
    PortalClient, PortalConfig, PortalError, PortalPushHook, PortalSyncHook, sha256_hex, wire,
};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tthc_api::portal_sim::{self, SimConfig, Stats};

use crate::engine_support::*;
use crate::support::repo_root;

const CLIENT_ID: &str = "tthc-test";
const SECRET: &str = "s3cret-for-tests";
const OWNER: &str = CITIZEN_ID;

/// A simulator on a free loopback port with its own database; stopped when dropped.
struct Sim {
    addr: SocketAddr,
    handle: JoinHandle<std::io::Result<()>>,
    _dir: TempDir,
    http: reqwest::Client,
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

async fn sim() -> Sim {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("portal-sim.db").display());
    let (addr, handle) = portal_sim::start(SimConfig::local(db, CLIENT_ID, SECRET))
        .await
        .unwrap();
    Sim {
        addr,
        handle,
        _dir: dir,
        http: reqwest::Client::new(),
    }
}

impl Sim {
    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn client(&self) -> PortalClient {
        PortalClient::new(PortalConfig::new(self.base(), CLIENT_ID, SECRET)).unwrap()
    }

    async fn stats(&self) -> Stats {
        self.http
            .get(format!("{}/_sim/stats", self.base()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn set_faults(&self, patch: Value) {
        let r = self
            .http
            .put(format!("{}/_sim/faults", self.base()))
            .json(&patch)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }
}

fn sync_body(code: &str, sequence: u64, status: u8) -> wire::SyncDossier {
    wire::SyncDossier {
        dossier_code: code.into(),
        sequence,
        procedure_code: "2.000488".into(),
        procedure_name: "Cấp Phiếu lý lịch tư pháp".into(),
        field: "Lý lịch tư pháp".into(),
        agency_code: AGENCY.into(),
        owner: wire::Owner {
            id: OWNER.into(),
            name: "Nguyễn Văn An".into(),
            owner_type: 1,
        },
        channel: 2,
        online_level: Some(2),
        status,
        status_name: String::new(),
        filed_at: "20260302080000".into(),
        received_at: Some("20260302090000".into()),
        due_at: Some("20260316080000".into()),
        promised_at: None,
        finished_at: None,
        returned_at: None,
        reason: None,
        files: Vec::new(),
        fees: Vec::new(),
        supplement_count: 0,
        supplements: Vec::new(),
        results: Vec::new(),
    }
}

fn paper_body(paper_id: &str, content: &[u8]) -> wire::PushPaper {
    use base64::Engine as _;
    wire::PushPaper {
        metadata: wire::PaperMetadata {
            paper_id: paper_id.into(),
            owner_id: OWNER.into(),
            owner_name: "Nguyễn Văn An".into(),
            result_code: "KQ.LLTP.01".into(),
            name: "Phiếu lý lịch tư pháp số 1".into(),
            number: Some("123/2026/LLTP".into()),
            issued_at: "20260310090000".into(),
            issuing_agency_code: AGENCY.into(),
            issuing_agency_name: Some("Sở Tư pháp tỉnh Hưng Yên".into()),
            signer: "Lãnh đạo Sở".into(),
            valid_until: Some("20260910090000".into()),
            permanent: false,
            dossier_code: "000.00.01.H59-260302-0001".into(),
            procedure_code: "2.000488".into(),
            content_type: "application/pdf".into(),
            note: None,
            signed_metadata: None,
            signatures: Vec::new(),
        },
        content: base64::engine::general_purpose::STANDARD.encode(content),
        sha256: sha256_hex(content),
    }
}

#[tokio::test]
async fn the_client_syncs_pushes_lists_and_downloads() {
    let s = sim().await;
    let client = s.client();
    let token = client.fetch_token().await.unwrap();
    assert!(!token.access_token.is_empty() && token.expires_in > 0);

    let code = "000.00.01.H59-260302-0001";
    let newer = client
        .sync_dossier("sync-5", &sync_body(code, 5, 4))
        .await
        .unwrap();
    assert!(newer.applied);
    // An older state arriving late is ignored: the portal keeps sequence 5.
    let older = client
        .sync_dossier("sync-3", &sync_body(code, 3, 2))
        .await
        .unwrap();
    assert!(!older.applied);
    assert_eq!((older.sequence, older.status), (5, 4));
    let held = client.synced_dossier(code).await.unwrap();
    assert_eq!((held.sequence, held.status), (5, 4));
    assert_eq!(held.dossier.owner.id, OWNER);

    let content = b"%PDF-1.7 Phieu ly lich tu phap so 1".to_vec();
    let paper = paper_body("P-1", &content);
    let pushed = client.push_paper("push-1", &paper).await.unwrap();
    assert!(pushed.created);
    assert_eq!(pushed.sha256, sha256_hex(&content));
    assert_eq!(pushed.size, content.len() as u64);

    let listed = client.list_papers(OWNER, Some("KQ.LLTP.01")).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].metadata, paper.metadata);
    assert_eq!(listed[0].sha256, sha256_hex(&content));
    assert!(
        client
            .list_papers(OWNER, Some("KQ.LLTP.02"))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(client.list_papers(OWNER, None).await.unwrap().len(), 1);
    assert!(
        client
            .list_papers("0101234567", None)
            .await
            .unwrap()
            .is_empty()
    );

    let info = client.paper("P-1").await.unwrap();
    assert_eq!(info.metadata.valid_until.as_deref(), Some("20260910090000"));
    let (bytes, hash) = client.paper_content("P-1").await.unwrap();
    assert_eq!(bytes, content);
    assert_eq!(hash, sha256_hex(&content));
    let missing = client.paper("P-404").await.unwrap_err();
    assert_eq!(missing.status(), Some(404), "{missing}");

    let stats = s.stats().await;
    assert_eq!((stats.syncs_applied, stats.syncs_ignored), (1, 1));
    assert_eq!((stats.pushes, stats.papers, stats.dossiers), (1, 1, 1));
    assert_eq!(stats.tokens_issued, 1, "one token serves every call");
}

#[tokio::test]
async fn a_repeated_key_replays_the_same_request_and_refuses_another_with_409() {
    let s = sim().await;
    let client = s.client();
    let code = "000.00.01.H59-260302-0002";

    let first = client
        .sync_dossier("D2/j3", &sync_body(code, 7, 9))
        .await
        .unwrap();
    // The same key with the same body replays the first answer.
    let again = client
        .sync_dossier("D2/j3", &sync_body(code, 7, 9))
        .await
        .unwrap();
    assert_eq!(again, first);
    // The same key with another body is refused, never answered with the first body's result
    // (the caller would believe its second request applied).
    let reused = client
        .sync_dossier("D2/j3", &sync_body(code, 9, 10))
        .await
        .unwrap_err();
    assert!(
        matches!(&reused, PortalError::Rejected { status: 409, code, .. } if code == "idempotency_key_reused"),
        "{reused}"
    );
    let held = client.synced_dossier(code).await.unwrap();
    assert_eq!((held.sequence, held.status), (7, 9));

    let content = b"result".to_vec();
    let a = client
        .push_paper("D2/j5/paper-1", &paper_body("P-2", &content))
        .await
        .unwrap();
    let b = client
        .push_paper("D2/j5/paper-1", &paper_body("P-2", &content))
        .await
        .unwrap();
    assert_eq!(a, b);
    assert!(b.created, "the replayed answer is the first one");
    // Another key for the same paper and content stores nothing new.
    let c = client
        .push_paper("other-key", &paper_body("P-2", &content))
        .await
        .unwrap();
    assert!(!c.created);
    // Papers are immutable: other content under the same id is refused, for good.
    let conflict = client
        .push_paper("third-key", &paper_body("P-2", b"changed"))
        .await
        .unwrap_err();
    assert!(
        matches!(&conflict, PortalError::Rejected { status: 409, code, .. } if code == "paper_exists"),
        "{conflict}"
    );
    assert!(!conflict.is_retryable());
    // A key first used for a sync cannot answer a push.
    let reused = client
        .push_paper("D2/j3", &paper_body("P-3", &content))
        .await
        .unwrap_err();
    assert_eq!(reused.status(), Some(409), "{reused}");

    let stats = s.stats().await;
    assert_eq!(stats.duplicates, 2);
    assert_eq!(stats.syncs_applied, 1);
    assert_eq!(stats.papers, 1);
    assert_eq!(
        client.list_papers(OWNER, None).await.unwrap().len(),
        1,
        "one stored paper"
    );

    // A write without a key is refused before anything is stored.
    let token = client.fetch_token().await.unwrap().access_token;
    let r = s
        .http
        .post(format!("{}/dossiers/sync", s.base()))
        .bearer_auth(token)
        .json(&sync_body(code, 99, 10))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "missing_idempotency_key");
}

#[tokio::test]
async fn wrong_credentials_and_missing_tokens_get_401() {
    let s = sim().await;
    let wrong = PortalClient::new(PortalConfig::new(s.base(), CLIENT_ID, "wrong")).unwrap();
    let e = wrong.fetch_token().await.unwrap_err();
    assert!(matches!(e, PortalError::Unauthorized { .. }), "{e}");
    assert!(!e.is_retryable());
    let e = wrong
        .sync_dossier("k", &sync_body("D-401", 1, 1))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(401), "{e}");

    let r = s
        .http
        .get(format!("{}/khodl/papers?owner_id={OWNER}", s.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "invalid_token");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(s.stats().await.dossiers, 0);
}

#[tokio::test]
async fn faults_come_back_typed_and_a_revoked_token_is_refreshed() {
    let s = sim().await;
    let mut config = PortalConfig::new(s.base(), CLIENT_ID, SECRET);
    config.request_timeout = Duration::from_millis(400);
    let client = PortalClient::new(config).unwrap();
    client.fetch_token().await.unwrap();

    s.set_faults(json!({ "error_rate": 1.0 })).await;
    let e = client
        .sync_dossier("k1", &sync_body("D-F", 1, 1))
        .await
        .unwrap_err();
    assert!(
        matches!(e, PortalError::Server { status: 503, .. }) && e.is_retryable(),
        "{e}"
    );

    s.set_faults(json!({ "error_rate": 0.0, "timeout_rate": 1.0, "hang_ms": 5000 }))
        .await;
    let e = client
        .sync_dossier("k1", &sync_body("D-F", 1, 1))
        .await
        .unwrap_err();
    assert!(
        matches!(e, PortalError::Timeout { .. }) && e.is_retryable(),
        "{e}"
    );

    s.set_faults(json!({ "timeout_rate": 0.0, "latency_ms": 50 }))
        .await;
    assert!(
        client
            .sync_dossier("k1", &sync_body("D-F", 1, 1))
            .await
            .unwrap()
            .applied
    );

    // The portal forgets its tokens (a restart): the client fetches a new one and goes on.
    let before = s.stats().await.tokens_issued;
    s.http
        .delete(format!("{}/_sim/tokens", s.base()))
        .send()
        .await
        .unwrap();
    assert!(client.list_papers(OWNER, None).await.unwrap().is_empty());
    let stats = s.stats().await;
    assert_eq!(stats.tokens_issued, before + 1);
    assert_eq!(stats.faults_injected, 2);

    let bad = s
        .http
        .put(format!("{}/_sim/faults", s.base()))
        .json(&json!({ "error_rate": 2.0 }))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);
}

/// Takes a received LLTP dossier to its signed certificate No. 1, with an electronic document.
async fn process_to_signed_with(h: &Harness, code: &str, document: DocumentRef) {
    h.complete(
        code,
        &specialist(),
        "tham_dinh",
        None,
        Some(json!({"co_an_tich": false, "can_xac_minh": false})),
    )
    .await;
    h.complete(code, &specialist(), "du_thao_phieu", None, None)
        .await;
    h.complete(code, &head(), "duyet_phong", Some("approve"), None)
        .await;
    let d = h.engine.dossier(code).await.unwrap();
    let task = task_at(&d, "ky_phieu_so_1");
    h.run(code, &leader(), Command::ClaimTask { task }).await;
    h.run(
        code,
        &leader(),
        Command::SignResult {
            result_code: "KQ.LLTP.01".into(),
            number: Some("123/2026/LLTP".into()),
            document: Some(document),
        },
    )
    .await;
    h.complete(code, &leader(), "ky_phieu_so_1", None, None)
        .await;
    h.complete(code, &clerk(), "phat_hanh", None, None).await;
    h.drain().await;
}

#[tokio::test]
async fn a_push_in_the_engine_fails_twice_then_succeeds_after_backoff() {
    let h = harness().await;
    let s = sim().await;
    let client = s.client();

    let content = b"%PDF-1.7 Phieu LLTP so 1, ky so".to_vec();
    let sha = sha256_hex(&content);
    let blobs = HashMap::from([(sha.clone(), content.clone())]);
    let catalog = Loader::new(LoaderConfig::at_root(&repo_root()))
        .unwrap()
        .catalog()
        .results
        .clone();
    h.engine.register_hook(
        "portal.sync_dossier",
        Arc::new(
            PortalSyncHook::new(client.clone())
                .with_history(h.engine.store().clone())
                .with_catalog(catalog.clone()),
        ),
    );
    h.engine.register_hook(
        "portal.push_result",
        Arc::new(
            PortalPushHook::new(
                client.clone(),
                Arc::new(move |sha: &str| blobs.get(sha).cloned()),
            )
            .with_catalog(catalog.clone()),
        ),
    );

    let d = h.file_lltp(1).await;
    let code = d.code.to_string();
    h.receive(&code).await;
    let document = DocumentRef {
        id: "phieu-1".into(),
        component: "ket_qua".into(),
        name: "Phiếu LLTP số 1".into(),
        kind: None,
        sha256: sha.clone(),
        size: content.len() as u64,
        content_type: "application/pdf".into(),
        provenance: None,
    };
    process_to_signed_with(&h, &code, document).await;
    let held = client.synced_dossier(&code).await.unwrap();
    assert_eq!(
        held.status,
        Status::Processed.code(),
        "synced when processed"
    );
    let d = h.engine.dossier(&code).await.unwrap();
    let syncs_so_far = d
        .all_jobs()
        .filter(|j| j.call == "portal.sync_dossier")
        .count() as u64;
    assert_eq!(
        syncs_so_far, 4,
        "one sync per status change: filed, received, processing, processed"
    );
    assert_eq!(s.stats().await.syncs_applied, syncs_so_far);

    // The portal fails the next two requests: the first attempts of the jobs the return
    // schedules (the push, and the sync of the new status), whichever runs first.
    s.set_faults(json!({ "fail_first": 2 })).await;
    h.run(&code, &desk(), Command::ReturnResult).await;
    let before: Vec<std::sync::Arc<str>> = d.all_jobs().map(|j| j.id.clone()).collect();
    h.drain().await;
    let d = h.engine.dossier(&code).await.unwrap();
    let push = d
        .all_jobs()
        .find(|j| j.call == "portal.push_result")
        .unwrap()
        .clone();
    let failed: Vec<_> = d
        .all_jobs()
        .filter(|j| {
            !before.contains(&j.id)
                && j.call.starts_with("portal.")
                && j.attempts >= 1
                && j.state == JobState::Pending
        })
        .cloned()
        .collect();
    assert!(
        !failed.is_empty(),
        "a portal job failed and waits: {:?}",
        d.jobs
    );
    for job in &failed {
        let error = job.last_error.clone().unwrap_or_default();
        assert!(
            error.contains("503") && error.contains("(retryable)"),
            "{error}"
        );
        assert!(
            job.run_at > h.engine.now(),
            "the retry waits for its backoff"
        );
    }

    for _ in 0..4 {
        h.clock.advance(Span::seconds(20));
        h.drain().await;
    }

    let d = h.engine.dossier(&code).await.unwrap();
    let done = d.job(&push.id).unwrap();
    assert_eq!(done.state, JobState::Done);
    let new_portal_jobs: Vec<_> = d
        .all_jobs()
        .filter(|j| !before.contains(&j.id) && j.call.starts_with("portal."))
        .collect();
    let attempts: u32 = new_portal_jobs.iter().map(|j| j.attempts).sum();
    assert_eq!(
        attempts as usize,
        new_portal_jobs.len() + 2,
        "two failed attempts were retried, nothing more"
    );
    assert!(new_portal_jobs.iter().all(|j| j.state == JobState::Done));
    assert_eq!(d.status, Status::Returned);
    assert!(d.is_closed());
    assert!(h.engine.store().open_incidents().await.unwrap().is_empty());

    let stats = s.stats().await;
    assert_eq!(stats.faults_injected, 2);
    assert_eq!((stats.pushes, stats.papers), (1, 1), "{stats:?}");
    let syncs = d
        .all_jobs()
        .filter(|j| j.call == "portal.sync_dossier")
        .count() as u64;
    assert_eq!(
        stats.syncs_applied + stats.syncs_ignored,
        syncs,
        "every sync delivered once: {stats:?}"
    );
    assert_eq!(stats.duplicates, 0);
    assert_eq!(
        client.synced_dossier(&code).await.unwrap().status,
        Status::Returned.code(),
        "the latest state wins"
    );

    let papers = client.list_papers(OWNER, Some("KQ.LLTP.01")).await.unwrap();
    assert_eq!(papers.len(), 1);
    let p = &papers[0];
    assert_eq!(p.sha256, sha);
    assert_eq!(p.metadata.dossier_code, code);
    assert_eq!(
        p.metadata.paper_id,
        engine::khodl::result_paper_id(&code, "KQ.LLTP.01"),
        "the same id as the paper in the local Kho DL"
    );
    assert_eq!(
        p.metadata.name, "Phiếu lý lịch tư pháp số 1",
        "named by the catalog"
    );
    assert_eq!(p.metadata.number.as_deref(), Some("123/2026/LLTP"));
    assert!(!p.metadata.permanent && p.metadata.valid_until.is_some());
    let (bytes, _) = client.paper_content(&p.metadata.paper_id).await.unwrap();
    assert_eq!(bytes, content);

    let held = client.synced_dossier(&code).await.unwrap();
    assert_eq!(held.status, 10);
    assert_eq!(held.dossier.results.len(), 1);
    assert_eq!(held.dossier.results[0].paper_id, p.metadata.paper_id);
    assert!(held.dossier.returned_at.is_some());

    // A retry whose answer was lost carries the same key: the portal answers from its record.
    let key = format!("{}/KQ.LLTP.01", h.engine.hook_key(&push, &code));
    let bytes = content.clone();
    let procedure = h
        .engine
        .procedure(&d.procedure_code, Some(d.procedure_version))
        .unwrap();
    // The same request as the engine's: the portal replays only an identical body.
    let paper = PortalPushHook::new(client.clone(), Arc::new(move |_: &str| Some(bytes.clone())))
        .with_catalog(catalog)
        .paper(&d, Some(&procedure), &d.signatures[0])
        .await
        .unwrap();
    let replay = client.push_paper(&key, &paper).await.unwrap();
    assert!(replay.created, "the first answer, replayed");
    let stats = s.stats().await;
    assert_eq!((stats.duplicates, stats.papers, stats.pushes), (1, 1, 1));
    h.assert_replays_and_verifies(&code).await;
}

#[tokio::test]
async fn a_signed_result_without_a_document_is_pushed_as_metadata() {
    let h = harness().await;
    let s = sim().await;
    let client = s.client();
    h.engine.register_hook(
        "portal.push_result",
        Arc::new(PortalPushHook::new(
            client.clone(),
            Arc::new(|_: &str| None::<Vec<u8>>),
        )),
    );
    let d = h.file_lltp(1).await;
    h.receive(&d.code).await;
    h.process_to_signed(&d.code).await; // signs with no document
    h.run(&d.code, &desk(), Command::ReturnResult).await;
    h.drain().await;
    let d = h.engine.dossier(&d.code).await.unwrap();
    let job = d
        .all_jobs()
        .find(|j| j.call == "portal.push_result")
        .unwrap();
    assert_eq!(job.state, JobState::Done, "{:?}", job.last_error);
    let papers = client.list_papers(OWNER, None).await.unwrap();
    assert_eq!(papers.len(), 1);
    assert_eq!(papers[0].size, 0);
    assert_eq!(papers[0].sha256, sha256_hex(b""));
    assert!(
        papers[0]
            .metadata
            .note
            .as_deref()
            .is_some_and(|n| n.contains("no electronic document"))
    );
}

/// Kills the child process however the test ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn tthc_portal_sim_runs_as_a_process() {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("sim.db");
    let db = format!("sqlite://{}", db_path.display());
    let mut child = KillOnDrop(
        Process::new(env!("CARGO_BIN_EXE_tthc"))
            .args(["portal-sim", "--listen", "127.0.0.1:0", "--database", &db])
            .args(["--client-id", CLIENT_ID, "--client-secret", SECRET])
            .env_remove("TTHC_DATABASE_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the tthc binary runs"),
    );
    let stdout = child.0.stdout.take().unwrap();
    let first_line = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        }),
    )
    .await
    .expect("the simulator prints its address within 30 s")
    .unwrap()
    .unwrap();
    let url = first_line
        .trim()
        .rsplit(' ')
        .next()
        .filter(|u| u.starts_with("http://127.0.0.1:"))
        .unwrap_or_else(|| panic!("no address in {first_line:?}"))
        .to_owned();
    assert!(!url.ends_with(":0"), "the bound port is printed: {url}");

    let client = PortalClient::new(PortalConfig::new(&url, CLIENT_ID, SECRET)).unwrap();
    let answer = client
        .sync_dossier("proc-1", &sync_body("D-PROC", 3, 2))
        .await
        .unwrap();
    assert!(answer.applied);
    let stats: Stats = reqwest::get(format!("{url}/_sim/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats.syncs_applied, 1);
    drop(child);
    assert!(db_path.exists(), "the simulator keeps its own SQLite file");
}
