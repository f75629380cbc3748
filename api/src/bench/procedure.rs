//! The benchmarked procedure and its happy path, as commands.

#[allow(unused_imports)]
use super::*;

pub(super) fn load_definition(root: &Path) -> Result<Definition> {
    let loader = Loader::new(LoaderConfig::at_root(root)).map_err(|d| {
        anyhow!(
            "the catalog has errors: {}",
            d.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        )
    })?;
    let (definition, _) = loader.load_file(&root.join(PROCEDURE_FILE)).map_err(|d| {
        anyhow!(
            "{PROCEDURE_FILE}: {}",
            d.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        )
    })?;
    Ok(definition)
}

/// Monday 2 March 2026, 08:00 in Hà Nội.
pub(super) fn monday_morning() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 2, 1, 0, 0)
        .single()
        .unwrap_or_default()
}

/// A 12-digit citizen id, distinct for each `n`.
pub(super) fn citizen_id(n: u64) -> String {
    format!("0{:02}{:09}", n % 96 + 1, n % 1_000_000_000)
}

pub(super) fn citizen(n: u64) -> Result<(Actor, Owner)> {
    let id = OwnerId::parse(&citizen_id(n)).map_err(|e| anyhow!("{e}"))?;
    let name = "Nguyễn Văn An".to_owned();
    Ok((
        Actor::Citizen {
            id: format!("citizen-{n}"),
            name: name.clone(),
            owner_id: id.clone(),
        },
        Owner {
            id,
            name,
            email: Some("an@example.vn".into()),
            phone: None,
        },
    ))
}

pub(super) fn lltp_form(owner_id: &str) -> Value {
    json!({
        "ho_ten": "Nguyễn Văn An",
        "gioi_tinh": "nam",
        "ngay_sinh": "1990-05-17",
        "noi_sinh": "Hưng Yên",
        "so_cccd": owner_id,
        "noi_thuong_tru": "Số 1 đường Nguyễn Văn Linh, TP Hưng Yên",
        "ho_ten_cha": "Nguyễn Văn Bình",
        "ho_ten_me": "Trần Thị Cúc",
        "loai_phieu": 1,
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

pub(super) fn filing(owner: Owner) -> Filing {
    let form = lltp_form(owner.id.as_str());
    Filing {
        procedure_code: PROCEDURE_CODE.into(),
        agency_code: AGENCY.into(),
        competent_agency: None,
        owner,
        channel: Channel::Online,
        data: BTreeMap::from([("to_khai".to_owned(), form)]),
        documents: Vec::new(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Who {
    Desk,
    Specialist,
    Head,
    Leader,
    Clerk,
}

impl Who {
    pub(super) fn id_and_role(self) -> (&'static str, &'static str) {
        match self {
            Who::Desk => ("desk", "mot_cua"),
            Who::Specialist => ("specialist", "chuyen_vien"),
            Who::Head => ("head", "lanh_dao_phong"),
            Who::Leader => ("leader", "lanh_dao"),
            Who::Clerk => ("clerk", "van_thu"),
        }
    }

    pub(super) fn actor(self) -> Actor {
        let (id, role) = self.id_and_role();
        Actor::Officer {
            id: id.into(),
            name: format!("Cán bộ {id}"),
            agency: AGENCY.into(),
            roles: vec![role.into()],
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Act {
    Receive,
    Claim(&'static str),
    Complete(&'static str),
    Sign,
    Return,
}

impl Act {
    /// Whether the act completes a user task (what the HTTP row counts).
    pub(super) fn completes_task(self) -> bool {
        matches!(self, Act::Receive | Act::Complete(_) | Act::Return)
    }
}

/// The officers' commands on the happy path, in order; hooks run between them.
pub(super) const HAPPY_PATH: [(Who, Act); 10] = [
    (Who::Desk, Act::Receive),
    (Who::Specialist, Act::Claim("tham_dinh")),
    (Who::Specialist, Act::Complete("tham_dinh")),
    (Who::Specialist, Act::Complete("du_thao_phieu")),
    (Who::Head, Act::Complete("duyet_phong")),
    (Who::Leader, Act::Claim("ky_phieu_so_1")),
    (Who::Leader, Act::Sign),
    (Who::Leader, Act::Complete("ky_phieu_so_1")),
    (Who::Clerk, Act::Complete("phat_hanh")),
    (Who::Desk, Act::Return),
];

pub(super) fn task_id(d: &Dossier, step: &str) -> Result<String> {
    d.tasks
        .values()
        .find(|t| *t.step == *step)
        .map(|t| (*t.id).to_owned())
        .ok_or_else(|| {
            anyhow!(
                "dossier {}: no open task at {step} (open: {:?})",
                d.code,
                d.tasks.values().map(|t| &t.step).collect::<Vec<_>>()
            )
        })
}

pub(super) fn command(act: Act, d: &Dossier) -> Result<Command> {
    Ok(match act {
        Act::Receive => Command::Receive,
        Act::Claim(step) => Command::ClaimTask {
            task: task_id(d, step)?,
        },
        Act::Complete(step) => Command::CompleteTask {
            task: task_id(d, step)?,
            outcome: (step == "duyet_phong").then(|| "approve".to_owned()),
            data: (step == "tham_dinh")
                .then(|| json!({"co_an_tich": false, "can_xac_minh": false})),
            reason: None,
        },
        Act::Sign => Command::SignResult {
            result_code: "KQ.LLTP.01".into(),
            number: Some("123/2026/LLTP".into()),
            document: None,
        },
        Act::Return => Command::ReturnResult,
    })
}

pub(super) fn pending_hook(d: &Dossier) -> Option<(String, u32)> {
    d.jobs
        .values()
        .find(|j| j.kind == JobKind::Hook && j.state == JobState::Pending)
        .map(|j| ((*j.id).to_owned(), j.attempts + 1))
}
