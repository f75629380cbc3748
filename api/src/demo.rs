//! `tthc demo`: both processes of the founding document, end to end, on the embedded default.
//!
//! Province A issues a judicial record certificate No. 1 to a citizen: the result is signed
//! (signer, then the Department's seal), saved to the citizen's Kho DL hidden until returned,
//! synced and pushed to the portal's Kho DL. In province B (another engine, another database)
//! the same citizen applies for a first medical practice licence; its judicial-record
//! component is taken from the portal's Kho DL with the citizen's consent, downloaded with its
//! hash checked, never uploaded. The licence is issued, saved and pushed. A portal simulator
//! runs in-process, over real HTTP.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use chrono::{Duration, Utc};
use engine::calendar::Calendar;
use engine::definition::{Loader, LoaderConfig};
use engine::dossier::{
    Actor, Channel, Command, DocumentRef, Dossier, Filing, Owner, OwnerId, PaperSource,
};
use engine::khodl::PaperFilter;
use engine::portal::PortalConfig;
use engine::{Clock, Engine, EngineConfig};
use serde_json::{Value, json};

use crate::integrations::{self, Integrations, Settings};
use crate::portal_sim::{self, SimConfig};

const OWNER_ID: &str = "001099012345";
const OWNER_NAME: &str = "Nguyễn Văn An";
const PORTAL_ID: &str = "tthc-demo";
const PORTAL_SECRET: &str = "demo-secret";

/// One province: its engine, database and Kho DL.
pub struct Province {
    pub name: String,
    pub agency: String,
    pub engine: Engine,
    pub io: Integrations,
}

/// What the demo did, for people and for tests.
pub struct DemoReport {
    pub text: String,
    pub certificate_dossier: String,
    pub licence_dossier: String,
    pub dir: PathBuf,
    pub province_a_db: String,
    pub province_b_db: String,
}

fn officer(id: &str, name: &str, agency: &str, role: &str) -> Actor {
    Actor::Officer {
        id: id.into(),
        name: name.into(),
        agency: agency.into(),
        roles: vec![role.into()],
    }
}

/// The citizen of both processes, as the owner of their dossiers.
fn owner() -> Result<Owner> {
    Ok(Owner {
        id: OwnerId::parse(OWNER_ID)?,
        name: OWNER_NAME.into(),
        email: Some("an@example.vn".into()),
        phone: None,
    })
}

fn citizen() -> Result<Actor> {
    Ok(Actor::Citizen {
        id: "vneid-an".into(),
        name: OWNER_NAME.into(),
        owner_id: OwnerId::parse(OWNER_ID)?,
    })
}

/// The example deployment a demo province runs with.
fn example_of(slug: &str) -> &'static str {
    if slug == "province-b" {
        "ha-noi"
    } else {
        "hung-yen"
    }
}

#[allow(clippy::too_many_arguments)]
pub async fn province(
    root: &Path,
    dir: &Path,
    slug: &str,
    name: &str,
    agency: &str,
    agency_name: &str,
    portal_url: &str,
    clock: &Clock,
) -> Result<Province> {
    let mut config = EngineConfig::new(
        format!("sqlite://{}", dir.join(format!("{slug}.db")).display()),
        root.join("procedures/templates"),
    );
    // Each province runs with its example deployment's agencies (deploy/examples/).
    let example = root
        .join("deploy/examples")
        .join(format!("{}.yaml", example_of(slug)));
    config.agencies = crate::config::ServeConfig::from_file(&example)?.agencies;
    if !config.agencies.contains(agency) {
        bail!("{}: no agency {agency} ({agency_name})", example.display());
    }
    config.sync_status_to_portal = true;
    let engine = Engine::open(config.clone(), Calendar::default_vietnam()?, clock.clone()).await?;
    let loader = Loader::new(LoaderConfig::at_root(root))
        .map_err(|d| anyhow::anyhow!("the catalog has errors: {d:?}"))?;
    let report = loader.load_paths(&[root.join("procedures")]);
    if report.has_errors() {
        bail!("the procedures have errors; run `tthc validate`");
    }
    for d in &report.definitions {
        engine.deploy(d).await?;
    }
    let keys = integrations::Keys::Development(format!("tthc-demo-{slug}"));
    let io = integrations::install(
        &engine,
        &loader.catalog().results,
        Settings {
            blobs_dir: dir.join(format!("{slug}-blobs")),
            portal: Some(PortalConfig::new(portal_url, PORTAL_ID, PORTAL_SECRET)),
            keys,
            agencies: config.agencies.names(),
            reuse_unverified: engine::reuse::UnverifiedPolicy::Refuse,
        },
    )?;
    Ok(Province {
        name: name.into(),
        agency: agency.into(),
        engine,
        io,
    })
}

impl Province {
    pub fn actor(&self, id: &str, role: &str) -> Actor {
        let name = match id {
            "desk" => "Trần Thị Bình (một cửa)",
            "specialist" => "Lê Văn Cường (chuyên viên)",
            "head" => "Phạm Thu Hà (trưởng phòng)",
            "leader" => "Đỗ Minh Khoa (giám đốc Sở)",
            _ => "Vũ Thị Lan (văn thư)",
        };
        officer(id, name, &self.agency, role)
    }

    pub async fn run(&self, code: &str, actor: &Actor, command: Command) -> Result<Dossier> {
        let name = command.name();
        self.engine
            .execute(code, None, actor, &command)
            .await
            .with_context(|| format!("{name} on {code}"))
    }

    pub async fn complete(
        &self,
        code: &str,
        actor: &Actor,
        step: &str,
        outcome: Option<&str>,
        data: Option<Value>,
    ) -> Result<Dossier> {
        let d = self.engine.dossier(code).await?;
        let Some(task) = d.tasks.values().find(|t| *t.step == *step) else {
            bail!("dossier {code} has no open task at {step}");
        };
        let command = Command::CompleteTask {
            task: task.id.to_string(),
            outcome: outcome.map(str::to_owned),
            data,
            reason: None,
        };
        self.run(code, actor, command).await
    }

    /// Runs the hooks due, and moves the demo clock as a working day would.
    pub async fn settle(&self, clock: &Clock) -> Result<()> {
        for _ in 0..20 {
            let r = self.engine.drain_jobs().await?;
            if r.claimed == 0
                && self
                    .engine
                    .store()
                    .next_job_at()
                    .await?
                    .is_none_or(|t| t > self.engine.now() + Duration::hours(2))
            {
                break;
            }
            clock.advance(Duration::minutes(5));
        }
        clock.advance(Duration::hours(1));
        Ok(())
    }

    pub async fn sign(
        &self,
        code: &str,
        step: &str,
        result_code: &str,
        result_name: &str,
        number: &str,
        agency_name: &str,
    ) -> Result<()> {
        let leader = self.actor("leader", "lanh_dao");
        let d = self.engine.dossier(code).await?;
        let Some(task) = d.tasks.values().find(|t| *t.step == *step) else {
            bail!("no signing task on {code}");
        };
        self.run(
            code,
            &leader,
            Command::ClaimTask {
                task: task.id.to_string(),
            },
        )
        .await?;
        let document = integrations::sign_result_document(
            &self.io,
            &d,
            result_code,
            result_name,
            number,
            "leader",
            leader.name(),
            &self.agency,
            agency_name,
            self.engine.now(),
        )?;
        self.run(
            code,
            &leader,
            Command::SignResult {
                result_code: result_code.into(),
                number: Some(number.into()),
                document: Some(document),
            },
        )
        .await?;
        self.complete(code, &leader, step, None, None).await?;
        Ok(())
    }

    pub fn upload(&self, component: &str, name: &str, text: &str) -> Result<DocumentRef> {
        let sha = self
            .io
            .blobs
            .put(text.as_bytes())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(DocumentRef {
            id: format!("up-{component}"),
            component: component.into(),
            name: name.into(),
            kind: Some(engine::definition::DocumentKind::ElectronicCertifiedCopy),
            sha256: sha,
            size: text.len() as u64,
            content_type: "text/plain; charset=utf-8".into(),
            provenance: None,
        })
    }
}

/// Runs the demo in `dir` (created), printing as it goes when `echo` is set.
pub async fn run(root: &Path, dir: &Path, echo: bool) -> Result<DemoReport> {
    std::fs::create_dir_all(dir)?;
    let mut out = String::new();
    macro_rules! say {
        ($($t:tt)*) => {{
            let line = format!($($t)*);
            if echo { println!("{line}"); }
            writeln!(out, "{line}")?;
        }};
    }
    let clock = Clock::manual(monday_morning());
    let (addr, _sim) = portal_sim::start(SimConfig::local(
        format!("sqlite://{}", dir.join("portal-sim.db").display()),
        PORTAL_ID,
        PORTAL_SECRET,
    ))
    .await?;
    let portal_url = format!("http://{addr}");
    say!("Portal simulator (Cổng DVCQG, Kho DL) at {portal_url}");

    let a = province(
        root,
        dir,
        "province-a",
        "Tỉnh Hưng Yên",
        "000.00.01.H59",
        "Sở Tư pháp tỉnh Hưng Yên",
        &portal_url,
        &clock,
    )
    .await?;
    let mut b = province(
        root,
        dir,
        "province-b",
        "Thành phố Hà Nội",
        "000.00.08.H26",
        "Sở Y tế thành phố Hà Nội",
        &portal_url,
        &clock,
    )
    .await?;
    // B verifies A's signatures with A's public keys: in the demo, A's development keys.
    b.io.reuse =
        b.io.reuse
            .clone()
            .with_trust(std::sync::Arc::new(integrations::Keys::Development(
                "tthc-demo-province-a".into(),
            )));
    let an = citizen()?;

    // Process 1, province A: the judicial record certificate No. 1.
    say!(
        "\n== Process 1: {} issues a judicial record certificate No. 1 (Phiếu LLTP số 1)",
        a.name
    );
    let filing = Filing {
        procedure_code: "2.000488".into(),
        agency_code: a.agency.clone(),
        competent_agency: None,
        owner: owner()?,
        channel: Channel::Online,
        data: BTreeMap::from([(
            "to_khai".to_owned(),
            json!({"ho_ten": OWNER_NAME, "gioi_tinh": "nam", "ngay_sinh": "1990-05-17", "noi_sinh": "Hưng Yên",
                   "so_cccd": OWNER_ID, "noi_thuong_tru": "TP Hưng Yên", "loai_phieu": 1,
                   "muc_dich": "Xin cấp giấy phép hành nghề khám bệnh, chữa bệnh",
                   "la_sinh_vien": false, "la_nguoi_co_cong": false, "uy_quyen": false,
                   "cu_tru_nhieu_noi": false, "cu_tru_nuoc_ngoai": false, "da_duoc_xoa_an_tich": false}),
        )]),
        documents: Vec::new(),
    };
    let d = a.engine.file(&an, &filing).await?;
    let cert = d.code.clone();
    say!("{OWNER_NAME} files online: dossier {cert}");
    clock.advance(Duration::hours(1));
    a.run(&cert, &a.actor("desk", "mot_cua"), Command::Receive)
        .await?;
    a.settle(&clock).await?;
    a.complete(
        &cert,
        &a.actor("specialist", "chuyen_vien"),
        "tham_dinh",
        None,
        Some(json!({"co_an_tich": false, "can_xac_minh": false})),
    )
    .await?;
    a.complete(
        &cert,
        &a.actor("specialist", "chuyen_vien"),
        "du_thao_phieu",
        None,
        None,
    )
    .await?;
    a.complete(
        &cert,
        &a.actor("head", "lanh_dao_phong"),
        "duyet_phong",
        Some("approve"),
        None,
    )
    .await?;
    a.sign(
        &cert,
        "ky_phieu_so_1",
        "KQ.LLTP.01",
        "Phiếu lý lịch tư pháp số 1",
        "15/2026/STP-LLTP",
        "Sở Tư pháp tỉnh Hưng Yên",
    )
    .await?;
    a.complete(&cert, &a.actor("clerk", "van_thu"), "phat_hanh", None, None)
        .await?;
    a.settle(&clock).await?;
    let hidden =
        a.io.khodl
            .list(
                &OwnerId::parse(OWNER_ID)?,
                &PaperFilter::default().include_hidden(),
            )
            .await?;
    say!(
        "Saved to the citizen's Kho DL in {}: {} paper(s), hidden until returned",
        a.name,
        hidden.iter().filter(|p| p.hidden).count()
    );
    a.run(&cert, &a.actor("desk", "mot_cua"), Command::ReturnResult)
        .await?;
    a.settle(&clock).await?;
    let d = a.engine.dossier(&cert).await?;
    say!(
        "Returned: status {} ({}); pushed to the portal's Kho DL",
        d.status.code(),
        d.status.label()
    );

    // Process 2, province B: the medical practice licence, reusing the certificate.
    say!(
        "\n== Process 2: {} — first medical practice licence, reusing the certificate",
        b.name
    );
    let filing = Filing {
        procedure_code: "1.012265".into(),
        agency_code: b.agency.clone(),
        competent_agency: None,
        owner: owner()?,
        channel: Channel::Online,
        data: BTreeMap::from([(
            "don_de_nghi".to_owned(),
            json!({"ho_ten": OWNER_NAME, "ngay_sinh": "1990-05-17", "gioi_tinh": "nam", "so_cccd": OWNER_ID,
                   "noi_cu_tru": "Hà Nội", "chuc_danh": "bac_si", "pham_vi_hanh_nghe": "Khám bệnh, chữa bệnh nội khoa",
                   "van_bang_chuyen_mon": "Bác sĩ đa khoa", "co_so_thuc_hanh": "Bệnh viện Bạch Mai",
                   "thoi_gian_thuc_hanh_thang": 12}),
        )]),
        documents: Vec::new(),
    };
    let d = b.engine.file(&an, &filing).await?;
    let lic = d.code.clone();
    say!("{OWNER_NAME} files online: dossier {lic}");
    for (component, name) in [
        (
            "van_bang",
            "Bằng tốt nghiệp bác sĩ đa khoa (bản sao điện tử có chứng thực)",
        ),
        ("giay_kham_suc_khoe", "Giấy chứng nhận đủ sức khỏe"),
        ("anh", "Ảnh chân dung 4x6"),
        ("xac_nhan_thuc_hanh", "Giấy xác nhận hoàn thành thực hành"),
    ] {
        let document = b.upload(component, name, &format!("{name} — {OWNER_NAME}"))?;
        b.run(&lic, &an, Command::AttachDocument { document })
            .await?;
    }
    say!("Uploads: diploma, health certificate, photo, practice certificate");
    let d = b.engine.dossier(&lic).await?;
    let candidates = b.io.reuse.candidates(&b.engine, &d, "phieu_lltp").await?;
    for c in &candidates {
        say!(
            "Offered for phieu_lltp: {} {} no. {} issued {} by {} (from the {} Kho DL)",
            c.result_code,
            c.name,
            c.number.as_deref().unwrap_or("-"),
            c.issued_at.date_naive(),
            c.issuing_agency,
            match c.source {
                PaperSource::Local => "local",
                PaperSource::Portal => "portal's",
            }
        );
    }
    let Some(pick) = candidates.first() else {
        bail!("the portal offered no judicial record certificate");
    };
    let taken =
        b.io.reuse
            .take(
                &b.engine,
                &lic,
                &an,
                engine::reuse::Pick {
                    component: "phieu_lltp",
                    paper_id: &pick.id,
                    source: pick.source,
                    owner_confirmed: false,
                    unverified_confirmed: false,
                },
            )
            .await?;
    say!(
        "{OWNER_NAME} consents: the certificate is downloaded, its hash checked, attached — nothing uploaded"
    );
    let check = taken
        .documents
        .iter()
        .find(|doc| doc.component == "phieu_lltp")
        .and_then(|doc| {
            doc.provenance
                .as_ref()?
                .pointer("/signature_check/outcome")
                .cloned()
        });
    say!(
        "Signatures checked against {}'s trusted keys: {}",
        b.name,
        check
            .as_ref()
            .and_then(Value::as_str)
            .unwrap_or("not checked")
    );
    clock.advance(Duration::hours(2));
    b.run(&lic, &b.actor("desk", "mot_cua"), Command::Receive)
        .await?;
    b.settle(&clock).await?;
    b.complete(
        &lic,
        &b.actor("specialist", "chuyen_vien"),
        "tham_dinh_ho_so",
        None,
        Some(json!({"hop_le": true, "can_hoi_dong": false})),
    )
    .await?;
    b.complete(
        &lic,
        &b.actor("specialist", "chuyen_vien"),
        "du_thao_giay_phep",
        None,
        None,
    )
    .await?;
    b.complete(
        &lic,
        &b.actor("head", "lanh_dao_phong"),
        "duyet_phong",
        Some("approve"),
        None,
    )
    .await?;
    b.sign(
        &lic,
        "ky_giay_phep",
        "KQ.GPHN.KCB",
        "Giấy phép hành nghề khám bệnh, chữa bệnh",
        "000123/HN-GPHN",
        "Sở Y tế thành phố Hà Nội",
    )
    .await?;
    b.complete(&lic, &b.actor("clerk", "van_thu"), "phat_hanh", None, None)
        .await?;
    b.settle(&clock).await?;
    b.run(&lic, &b.actor("desk", "mot_cua"), Command::ReturnResult)
        .await?;
    b.settle(&clock).await?;
    let d = b.engine.dossier(&lic).await?;
    say!(
        "Licence returned: status {} ({}); saved to Kho DL and pushed to the portal",
        d.status.code(),
        d.status.label()
    );

    // The trails.
    for (p, code) in [(&a, &cert), (&b, &lic)] {
        let (text, matches) = crate::history::timeline(&p.engine, code).await?;
        say!("\n== Trail of {code} ({})", p.name);
        say!("{}", text.trim_end());
        if !matches {
            bail!("replay of {code} does not match its read models");
        }
    }
    let papers =
        b.io.khodl
            .list(&OwnerId::parse(OWNER_ID)?, &PaperFilter::default())
            .await?;
    say!("\n== The citizen's Kho DL in {}", b.name);
    for p in &papers {
        say!(
            "{} {} no. {} ({:?}, {} signature(s))",
            p.paper_type,
            p.name,
            p.number.as_deref().unwrap_or("-"),
            p.provenance,
            p.signatures.len()
        );
    }
    for (p, code) in [(&a, &cert), (&b, &lic)] {
        let v = p.engine.verify(Some(code)).await?;
        say!(
            "Audit chain of {code}: {}",
            if v.is_intact() { "intact" } else { "ALTERED" }
        );
    }
    say!(
        "\nDatabases: {} and {}; replay with `tthc --database sqlite://{} replay {cert}`",
        dir.join("province-a.db").display(),
        dir.join("province-b.db").display(),
        dir.join("province-a.db").display()
    );
    Ok(DemoReport {
        text: out,
        certificate_dossier: cert.to_string(),
        licence_dossier: lic.to_string(),
        dir: dir.to_path_buf(),
        province_a_db: format!("sqlite://{}", dir.join("province-a.db").display()),
        province_b_db: format!("sqlite://{}", dir.join("province-b.db").display()),
    })
}

/// Next Monday, 08:30 in Hà Nội, so the demo's due dates read naturally.
fn monday_morning() -> chrono::DateTime<Utc> {
    let now = Utc::now();
    use chrono::{Datelike, TimeZone};
    let days = 7 - now.weekday().num_days_from_monday();
    let day = (now + Duration::days(i64::from(days))).date_naive();
    Utc.from_utc_datetime(&day.and_hms_opt(1, 30, 0).unwrap_or_default())
}
