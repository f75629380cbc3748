//! The typed model of a procedure definition, as deserialized from YAML after the JSON Schema
//! check. Field names are the YAML keys; `docs/authoring.md` explains each for administrators.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One administrative procedure (thủ tục hành chính) at one version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Procedure {
    /// National procedure code from the national TTHC database, e.g. `2.000488`.
    pub code: String,
    pub version: u32,
    pub name: String,
    pub agency: AgencySpec,
    #[serde(default)]
    pub legal_basis: Vec<String>,
    pub processing_time: Duration,
    /// The online service the procedure is provided as (Decree 42/2022/NĐ-CP): `full` (toàn
    /// trình) or `partial` (một phần, the default): the level an online filing is recorded with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online: Option<OnlineLevel>,
    /// Longer (or shorter) processing times the law sets for some filings, by the filed
    /// facts: the first case whose condition holds when the dossier is received applies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processing_time_cases: Vec<ProcessingTimeCase>,
    #[serde(default)]
    pub fees: Vec<Fee>,
    #[serde(default)]
    pub components: Vec<Component>,
    #[serde(default)]
    pub results: Vec<ResultSpec>,
    pub steps: Vec<Step>,
}

impl Procedure {
    pub fn step(&self, id: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.id() == id)
    }

    pub fn component(&self, id: &str) -> Option<&Component> {
        self.components.iter().find(|c| c.id == id)
    }

    /// The form schema path of the component or user task with this id: what `data.ID` holds.
    pub fn form_path(&self, id: &str) -> Option<&str> {
        if let Some(c) = self.component(id) {
            return c.form.as_deref();
        }
        match self.step(id) {
            Some(Step::UserTask(t)) => t.form.as_deref(),
            _ => None,
        }
    }

    /// The ids that `data.ID` may name: components and user tasks that have a form.
    pub fn form_ids(&self) -> Vec<&str> {
        let components = self
            .components
            .iter()
            .filter(|c| c.form.is_some())
            .map(|c| c.id.as_str());
        let tasks = self.steps.iter().filter_map(|s| match s {
            Step::UserTask(t) if t.form.is_some() => Some(t.id.as_str()),
            _ => None,
        });
        components.chain(tasks).collect()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgencySpec {
    pub level: AgencyLevel,
    /// The field (lĩnh vực), e.g. `Lý lịch tư pháp`.
    pub field: String,
    /// The kind of agency competent to decide (`procedures/catalog/agency-kinds.yaml`); the
    /// deployment's agency list says which of its agencies that is. Without it, the agency
    /// that receives the dossier decides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub competent: Option<String>,
}

/// The built-in agency kind of a task done where the dossier was filed (the one-stop desk of
/// the receiving agency or service centre).
pub const RECEIVING: &str = "receiving";

/// Whether an agency name in a definition is a code (`000.00.17.H59`) rather than a kind:
/// kinds are lower-case identifiers.
pub fn is_agency_code(name: &str) -> bool {
    name.contains('.') || name.chars().any(|c| c.is_ascii_uppercase())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgencyLevel {
    Central,
    Ministry,
    Province,
    District,
    Commune,
}

/// How much of an online service a dossier used (Decree 42/2022/NĐ-CP): fully online (toàn
/// trình: filed online, result returned online or by public post) or partly online (một phần:
/// something is still done at the desk). Only dossiers filed online have one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnlineLevel {
    Full,
    Partial,
}

impl OnlineLevel {
    /// As the portal counts it: 1 partly online, 2 fully online.
    pub fn portal_code(self) -> u8 {
        match self {
            OnlineLevel::Partial => 1,
            OnlineLevel::Full => 2,
        }
    }
}

/// A processing time that applies when a condition over the filing holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessingTimeCase {
    #[serde(rename = "if")]
    pub condition: String,
    pub processing_time: Duration,
}

/// A length of time, in exactly one unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Duration {
    /// Monday to Friday, public holidays excluded, 8 working hours a day.
    WorkingDays(u32),
    WorkingHours(u32),
    /// Calendar days.
    Days(u32),
    Months(u32),
    Minutes(u32),
}

impl Duration {
    pub fn amount(&self) -> u32 {
        match *self {
            Duration::WorkingDays(n)
            | Duration::WorkingHours(n)
            | Duration::Days(n)
            | Duration::Months(n)
            | Duration::Minutes(n) => n,
        }
    }

    /// A rough length in hours, only for comparing durations written in different units
    /// (a working day counts 8 hours, a calendar day 24, a month 30 days).
    pub fn approx_hours(&self) -> f64 {
        match *self {
            Duration::WorkingDays(n) => f64::from(n) * 24.0 * 7.0 / 5.0,
            Duration::WorkingHours(n) => f64::from(n) * 3.0 * 7.0 / 5.0,
            Duration::Days(n) => f64::from(n) * 24.0,
            Duration::Months(n) => f64::from(n) * 24.0 * 30.0,
            Duration::Minutes(n) => f64::from(n) / 60.0,
        }
    }
}

impl std::fmt::Display for Duration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Duration::WorkingDays(n) => write!(f, "{n} working day(s)"),
            Duration::WorkingHours(n) => write!(f, "{n} working hour(s)"),
            Duration::Days(n) => write!(f, "{n} day(s)"),
            Duration::Months(n) => write!(f, "{n} month(s)"),
            Duration::Minutes(n) => write!(f, "{n} minute(s)"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fee {
    pub code: String,
    pub name: String,
    pub amount_vnd: u64,
    /// Reduced amounts: the first whose CEL condition over the dossier holds is the amount due.
    #[serde(default)]
    pub reductions: Vec<FeeReduction>,
    /// When the fee must be paid: the engine refuses reception, or the return of the result,
    /// while it is unpaid. By default it may be paid at any time and blocks nothing.
    #[serde(default, skip_serializing_if = "FeeDue::is_anytime")]
    pub due: FeeDue,
}

/// When a fee must be paid.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeeDue {
    /// Any time; the engine enforces nothing (the behaviour before `due` existed).
    #[default]
    Anytime,
    /// Before the desk receives the dossier (the `marks: received` task's `accept`).
    AtReception,
    /// Before the result is returned (the `marks: returned` task).
    BeforeReturn,
}

impl FeeDue {
    pub fn is_anytime(&self) -> bool {
        *self == FeeDue::Anytime
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeeReduction {
    pub name: String,
    pub amount_vnd: u64,
    pub when: String,
}

/// A thành phần hồ sơ: a form whose data is checked against a JSON Schema, or a document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Component {
    pub id: String,
    pub name: String,
    #[serde(default = "yes")]
    pub required: bool,
    /// Only required when this CEL condition over the dossier holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required_when: Option<String>,
    /// Path of the JSON Schema of this form's data, relative to the repository's `schemas/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub form: Option<String>,
    /// Kinds of document accepted for this component.
    #[serde(default)]
    pub accepts: Vec<DocumentKind>,
    #[serde(default = "one")]
    pub copies: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reuse: Option<Reuse>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

fn yes() -> bool {
    true
}
fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DocumentKind {
    /// Bản chính.
    Original,
    /// Bản sao có chứng thực.
    CertifiedCopy,
    /// Bản sao điện tử có chứng thực / bản sao y điện tử.
    ElectronicCertifiedCopy,
    /// Bản chụp (photo or scan, shown with the original).
    Copy,
}

/// Results of other procedures that may stand in for this component, taken from Kho DL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reuse {
    pub result_codes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Duration>,
}

/// A result this procedure issues.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultSpec {
    pub result_code: String,
    /// Overrides the catalog's default validity for results issued by this procedure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validity: Option<Validity>,
    #[serde(default)]
    pub save_to_khodl: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Validity {
    Permanent,
    #[serde(untagged)]
    For(Duration),
}

/// One node of the procedure's graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    UserTask(UserTask),
    Decision(Decision),
    Parallel(Parallel),
    Join(Join),
    Timer(Timer),
    Hook(Hook),
    End(End),
}

impl Step {
    pub fn id(&self) -> &str {
        match self {
            Step::UserTask(s) => &s.id,
            Step::Decision(s) => &s.id,
            Step::Parallel(s) => &s.id,
            Step::Join(s) => &s.id,
            Step::Timer(s) => &s.id,
            Step::Hook(s) => &s.id,
            Step::End(s) => &s.id,
        }
    }

    pub fn kind_name(&self) -> &'static str {
        match self {
            Step::UserTask(_) => "user_task",
            Step::Decision(_) => "decision",
            Step::Parallel(_) => "parallel",
            Step::Join(_) => "join",
            Step::Timer(_) => "timer",
            Step::Hook(_) => "hook",
            Step::End(_) => "end",
        }
    }

    /// The steps this step can lead to, each with the JSON pointer suffix (relative to the
    /// step) of the field that names it.
    pub fn successors(&self) -> Vec<(String, &str)> {
        match self {
            Step::UserTask(t) => {
                let mut v: Vec<(String, &str)> = t
                    .outcomes
                    .iter()
                    .map(|(k, n)| {
                        (
                            format!("/outcomes/{}", super::yaml::escape_segment(k)),
                            n.as_str(),
                        )
                    })
                    .collect();
                if let Some(n) = &t.next {
                    v.push(("/next".to_owned(), n));
                }
                v
            }
            Step::Decision(d) => {
                let mut v: Vec<(String, &str)> = d
                    .when
                    .iter()
                    .enumerate()
                    .map(|(i, b)| (format!("/when/{i}/then"), b.then.as_str()))
                    .collect();
                if let Some(e) = &d.otherwise {
                    v.push(("/else".to_owned(), e.as_str()));
                }
                v
            }
            Step::Parallel(p) => p
                .branches
                .iter()
                .enumerate()
                .map(|(i, b)| (format!("/branches/{i}"), b.as_str()))
                .collect(),
            Step::Join(j) => vec![("/next".to_owned(), j.next.as_str())],
            Step::Timer(t) => vec![("/next".to_owned(), t.next.as_str())],
            Step::Hook(h) => {
                let mut v = vec![("/next".to_owned(), h.next.as_str())];
                if let Some(f) = &h.on_failure {
                    v.push(("/on_failure".to_owned(), f.as_str()));
                }
                v
            }
            Step::End(_) => Vec::new(),
        }
    }
}

/// Work for an officer: assigned by role (and agency), claimed, completed with an outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserTask {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub role: String,
    /// The kind of agency that does this task when it is not the competent one: another
    /// agency (for example `cong_an_tinh`, the police verifying a criminal record) or
    /// `receiving`, the agency the dossier was filed at. Kinds are in
    /// `procedures/catalog/agency-kinds.yaml`; the deployment maps each to one of its codes.
    /// Definitions deployed before kinds existed may hold an agency code here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agency: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sla: Option<Duration>,
    /// JSON Schema of the data the officer enters on completion (relative to `schemas/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub form: Option<String>,
    /// Result code this task signs (ký số).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signs: Option<String>,
    /// A milestone of the dossier this task marks when it completes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marks: Option<Milestone>,
    /// Outcome name → next step. Use either `outcomes` or `next`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outcomes: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Milestone {
    /// The one-stop desk accepts the dossier as complete: the processing clock starts.
    Received,
    /// The result is handed to the owner.
    Returned,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub when: Vec<Branch>,
    #[serde(rename = "else", default, skip_serializing_if = "Option::is_none")]
    pub otherwise: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Branch {
    /// A CEL expression over `data` and `dossier`.
    #[serde(rename = "if")]
    pub condition: String,
    pub then: String,
}

/// Starts every branch at once; the branches meet again at `join`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Parallel {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub branches: Vec<String>,
    pub join: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Join {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub next: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timer {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Wait this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<Duration>,
    /// Or wait until the date this CEL expression gives (`YYYY-MM-DD` or RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    pub next: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hook {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub call: String,
    /// Arguments of the hook, e.g. the template of `notify`.
    /// Shared with the jobs the hook schedules (and their events): never copied per dossier.
    #[serde(default, rename = "with", skip_serializing_if = "no_args")]
    pub args: std::sync::Arc<BTreeMap<String, serde_json::Value>>,
    #[serde(default)]
    pub retry: RetryPolicy,
    pub next: String,
    /// Where the dossier goes when the last attempt fails, instead of opening an incident.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    #[serde(default = "RetryPolicy::default_attempts")]
    pub max_attempts: u32,
    #[serde(default = "RetryPolicy::default_initial")]
    pub initial_backoff_seconds: u32,
    #[serde(default = "RetryPolicy::default_max")]
    pub max_backoff_seconds: u32,
}

impl RetryPolicy {
    fn default_attempts() -> u32 {
        5
    }
    fn default_initial() -> u32 {
        2
    }
    fn default_max() -> u32 {
        600
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: Self::default_attempts(),
            initial_backoff_seconds: Self::default_initial(),
            max_backoff_seconds: Self::default_max(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct End {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub outcome: EndOutcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndOutcome {
    Completed,
    Refused,
    Stopped,
}

impl EndOutcome {
    pub fn label(self) -> &'static str {
        match self {
            EndOutcome::Completed => "completed",
            EndOutcome::Refused => "refused",
            EndOutcome::Stopped => "stopped",
        }
    }
}

/// The result-code catalog (`procedures/catalog/results.yaml`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultCatalog {
    pub results: Vec<CatalogResult>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogResult {
    pub code: String,
    pub name: String,
    /// National code of the procedure that issues it.
    pub procedure: String,
    pub default_validity: Validity,
}

/// The agency kinds catalog (`procedures/catalog/agency-kinds.yaml`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgencyKindCatalog {
    pub kinds: Vec<CatalogAgencyKind>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogAgencyKind {
    pub id: String,
    pub level: AgencyLevel,
    pub name: String,
}

/// The role catalog (`procedures/catalog/roles.yaml`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleCatalog {
    pub roles: Vec<CatalogRole>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogRole {
    pub id: String,
    pub name: String,
}

/// Whether a hook's arguments are empty (they are left out when serialized).
pub fn no_args(args: &std::sync::Arc<BTreeMap<String, serde_json::Value>>) -> bool {
    args.is_empty()
}
