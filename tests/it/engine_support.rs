//! An engine on a fresh SQLite file with the shipped procedures deployed, a manual clock,
//! and recording stand-ins for the hooks that reach external systems (Kho DL, the portal).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, TimeZone, Utc};
use engine::calendar::Calendar;
use engine::definition::{Loader, LoaderConfig};
use engine::dossier::{Actor, Channel, Command, Dossier, Filing, HookOutcome, Owner, OwnerId};
use engine::engine::HookFuture;
use engine::{Clock, Engine, EngineConfig, HookHandler, HookRequest};
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::support::repo_root;

pub const AGENCY: &str = "000.00.01.H59";
pub const POLICE: &str = "000.00.17.H59";
pub const CITIZEN_ID: &str = "001099012345";

/// A hook that records every call and fails the first `failures` attempts of each job.
#[derive(Default)]
pub struct Recorder {
    pub calls: Mutex<Vec<(String, String, u32)>>,
    pub failures: Mutex<BTreeMap<String, u32>>,
    pub fail_always: Mutex<bool>,
    name: String,
}

impl Recorder {
    pub fn new(name: &str) -> Arc<Recorder> {
        Arc::new(Recorder {
            name: name.to_owned(),
            ..Recorder::default()
        })
    }

    /// Fails the first `n` attempts of every job.
    pub fn fail_first(&self, n: u32) {
        self.failures.lock().unwrap().insert("*".into(), n);
    }

    pub fn keys(&self) -> Vec<String> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.1.clone())
            .collect()
    }
}

impl HookHandler for Recorder {
    fn call<'a>(&'a self, request: HookRequest<'a>) -> HookFuture<'a> {
        Box::pin(async move {
            self.calls.lock().unwrap().push((
                self.name.clone(),
                request.idempotency_key.clone(),
                request.attempt,
            ));
            let fail_first = self.failures.lock().unwrap().get("*").copied().unwrap_or(0);
            if *self.fail_always.lock().unwrap() || request.attempt <= fail_first {
                return HookOutcome::Failed {
                    error: format!("{} unavailable (attempt {})", self.name, request.attempt),
                };
            }
            HookOutcome::Succeeded {
                detail: json!({ "key": request.idempotency_key }),
                notification: None,
            }
        })
    }
}

pub struct Harness {
    pub engine: Engine,
    pub dir: TempDir,
    pub clock: Clock,
    pub khodl: Arc<Recorder>,
    pub sync: Arc<Recorder>,
    pub push: Arc<Recorder>,
}

/// Monday 2 March 2026, 08:00 in Hà Nội: a working morning.
pub fn monday_morning() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 2, 1, 0, 0).unwrap()
}

pub async fn db_url(dir: &TempDir) -> String {
    crate::support::database_url(dir.path()).await
}

pub async fn open_engine(dir: &TempDir, clock: Clock) -> Engine {
    let mut config = EngineConfig::new(db_url(dir).await, repo_root().join("procedures/templates"));
    // The development deployment's agencies, with the kinds the shipped definitions name.
    config.agencies =
        tthc_api::config::agency_catalog(&repo_root().join("procedures/catalog/agencies.yaml"))
            .unwrap();
    assert!(config.agencies.contains(AGENCY));
    config.sync_status_to_portal = true;
    Engine::open(config, Calendar::default_vietnam().unwrap(), clock)
        .await
        .unwrap()
}

pub fn attach_recorders(engine: &Engine) -> (Arc<Recorder>, Arc<Recorder>, Arc<Recorder>) {
    let khodl = Recorder::new("khodl.save");
    let sync = Recorder::new("portal.sync_dossier");
    let push = Recorder::new("portal.push_result");
    engine.register_hook("khodl.save", khodl.clone());
    engine.register_hook("portal.sync_dossier", sync.clone());
    engine.register_hook("portal.push_result", push.clone());
    engine.register_hook("khodl.unhide", Recorder::new("khodl.unhide"));
    (khodl, sync, push)
}

pub async fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(monday_morning());
    let engine = open_engine(&dir, clock.clone()).await;
    deploy_shipped(&engine).await;
    let (khodl, sync, push) = attach_recorders(&engine);
    Harness {
        engine,
        dir,
        clock,
        khodl,
        sync,
        push,
    }
}

/// The shipped judicial record procedure with its text edited (`from` → `to`, in order),
/// loaded and checked as a deployment would be.
pub fn lltp_edited(edits: &[(&str, &str)]) -> engine::definition::Definition {
    let loader = Loader::new(LoaderConfig::at_root(&repo_root())).unwrap();
    let path = repo_root().join("procedures/cap-phieu-lltp.yaml");
    let text = edits.iter().fold(
        std::fs::read_to_string(&path).unwrap(),
        |text, (from, to)| text.replace(from, to),
    );
    loader.load_str(&path, &text).unwrap().0
}

pub async fn deploy_shipped(engine: &Engine) {
    let loader = Loader::new(LoaderConfig::at_root(&repo_root())).unwrap();
    let report = loader.load_paths(&[repo_root().join("procedures")]);
    assert!(!report.has_errors(), "{:?}", report.diagnostics);
    for d in &report.definitions {
        engine.deploy(d).await.unwrap();
    }
}

pub fn citizen() -> Actor {
    Actor::Citizen {
        id: "citizen-1".into(),
        name: "Nguyễn Văn An".into(),
        owner_id: OwnerId::parse(CITIZEN_ID).unwrap(),
    }
}

pub fn officer(id: &str, roles: &[&str]) -> Actor {
    officer_at(id, AGENCY, roles)
}

pub fn officer_at(id: &str, agency: &str, roles: &[&str]) -> Actor {
    Actor::Officer {
        id: id.into(),
        name: format!("Cán bộ {id}"),
        agency: agency.into(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
    }
}

pub fn desk() -> Actor {
    officer("desk", &["mot_cua"])
}
pub fn specialist() -> Actor {
    officer("specialist", &["chuyen_vien"])
}
pub fn head() -> Actor {
    officer("head", &["lanh_dao_phong"])
}
pub fn leader() -> Actor {
    officer("leader", &["lanh_dao"])
}
pub fn clerk() -> Actor {
    officer("clerk", &["van_thu"])
}
pub fn admin() -> Actor {
    Actor::Admin {
        id: "admin".into(),
        name: "Quản trị".into(),
    }
}

pub fn lltp_form(loai_phieu: u8) -> Value {
    json!({
        "ho_ten": "Nguyễn Văn An",
        "gioi_tinh": "nam",
        "ngay_sinh": "1990-05-17",
        "noi_sinh": "Hưng Yên",
        "so_cccd": CITIZEN_ID,
        "noi_thuong_tru": "Số 1 đường Nguyễn Văn Linh, TP Hưng Yên",
        "ho_ten_cha": "Nguyễn Văn Bình",
        "ho_ten_me": "Trần Thị Cúc",
        "loai_phieu": loai_phieu,
        "muc_dich": "Bổ sung hồ sơ xin việc",
        "so_luong_phieu": 1,
        "la_sinh_vien": false,
        "cu_tru_nhieu_noi": false,
        "cu_tru_nuoc_ngoai": false,
        "da_duoc_xoa_an_tich": false,
        "la_nguoi_co_cong": false,
        "uy_quyen": false
    })
}

pub fn lltp_filing(loai_phieu: u8) -> Filing {
    Filing {
        procedure_code: "2.000488".into(),
        agency_code: AGENCY.into(),
        competent_agency: None,
        owner: Owner {
            id: OwnerId::parse(CITIZEN_ID).unwrap(),
            name: "Nguyễn Văn An".into(),
            email: Some("an@example.vn".into()),
            phone: None,
        },
        channel: Channel::Online,
        data: BTreeMap::from([("to_khai".to_owned(), lltp_form(loai_phieu))]),
        documents: Vec::new(),
    }
}

/// The open task at `step`, by id.
pub fn task_at(d: &Dossier, step: &str) -> String {
    d.tasks
        .values()
        .find(|t| *t.step == *step)
        .map(|t| t.id.to_string())
        .unwrap_or_else(|| {
            panic!(
                "no open task at {step}; open: {:?}",
                d.tasks.keys().collect::<Vec<_>>()
            )
        })
}

impl Harness {
    pub async fn file_lltp(&self, loai_phieu: u8) -> Dossier {
        self.engine
            .file(&citizen(), &lltp_filing(loai_phieu))
            .await
            .unwrap()
    }

    pub async fn run(&self, code: &str, actor: &Actor, command: Command) -> Dossier {
        self.engine
            .execute(code, None, actor, &command)
            .await
            .unwrap_or_else(|e| panic!("{} failed: {e:?}", command.name()))
    }

    pub async fn complete(
        &self,
        code: &str,
        actor: &Actor,
        step: &str,
        outcome: Option<&str>,
        data: Option<Value>,
    ) -> Dossier {
        let d = self.engine.dossier(code).await.unwrap();
        let task = task_at(&d, step);
        self.run(
            code,
            actor,
            Command::CompleteTask {
                task,
                outcome: outcome.map(str::to_owned),
                data,
                reason: None,
            },
        )
        .await
    }

    pub async fn drain(&self) {
        self.engine.drain_jobs().await.unwrap();
    }

    /// Receives a filed LLTP dossier and runs the receipt notification.
    pub async fn receive(&self, code: &str) -> Dossier {
        self.run(code, &desk(), Command::Receive).await;
        self.drain().await;
        self.engine.dossier(code).await.unwrap()
    }

    /// Takes a received LLTP dossier through verification (no record, no extra checks),
    /// approval and signing of certificate No. 1, up to the return at the desk.
    pub async fn process_to_signed(&self, code: &str) -> Dossier {
        self.complete(
            code,
            &specialist(),
            "tham_dinh",
            None,
            Some(json!({"co_an_tich": false, "can_xac_minh": false})),
        )
        .await;
        self.complete(code, &specialist(), "du_thao_phieu", None, None)
            .await;
        self.complete(code, &head(), "duyet_phong", Some("approve"), None)
            .await;
        let d = self.engine.dossier(code).await.unwrap();
        let task = task_at(&d, "ky_phieu_so_1");
        self.run(code, &leader(), Command::ClaimTask { task: task.clone() })
            .await;
        self.run(
            code,
            &leader(),
            Command::SignResult {
                result_code: "KQ.LLTP.01".into(),
                number: Some("123/2026/LLTP".into()),
                document: None,
            },
        )
        .await;
        self.complete(code, &leader(), "ky_phieu_so_1", None, None)
            .await;
        self.complete(code, &clerk(), "phat_hanh", None, None).await;
        self.drain().await;
        self.engine.dossier(code).await.unwrap()
    }

    pub async fn assert_replays_and_verifies(&self, code: &str) {
        let r = self.engine.replay(code).await.unwrap();
        assert!(r.matches, "replay of {code} differs: {:#?}", r.differences);
        assert_eq!(
            self.engine.dossier(code).await.unwrap(),
            r.state,
            "the engine's state of {code} differs from a fold of its stored events"
        );
        let v = self.engine.verify(Some(code)).await.unwrap();
        assert!(v.is_intact(), "{:?}", v.breaks);
    }
}
