//! This deployment's agencies: the codes it files dossiers and admits officers at, their kinds
//! (which a definition names instead of codes) and the dates each code is in effect.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use crate::definition::model::{RECEIVING, is_agency_code};

/// One agency of the deployment, by its code (Circular 10/2016/TT-BTTTT).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Agency {
    pub code: String,
    pub name: String,
    /// Its kind in `procedures/catalog/agency-kinds.yaml` (`so_tu_phap`, `ubnd_xa`…), which
    /// definitions name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The first day the code is in effect (a merger may reissue codes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_from: Option<NaiveDate>,
    /// The last day the code is in effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<NaiveDate>,
}

impl Agency {
    pub fn in_effect(&self, day: NaiveDate) -> bool {
        self.valid_from.is_none_or(|f| f <= day) && self.valid_until.is_none_or(|u| day <= u)
    }
}

/// Why an agency cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgencyError {
    #[error("agency {0} is not one of this deployment's agencies")]
    Unknown(String),
    #[error("agency {code} is not in effect on {day} (in effect {span})")]
    NotInEffect {
        code: String,
        day: NaiveDate,
        span: String,
    },
    #[error("no agency of this deployment is of kind `{0}`; give one `kind: {0}` in `agencies`")]
    NoAgencyOfKind(String),
    #[error(
        "several agencies are of kind `{kind}` ({codes}); name the competent one in `competent_agency`"
    )]
    Ambiguous { kind: String, codes: String },
    #[error("agency {code} is not of kind `{kind}`")]
    WrongKind { code: String, kind: String },
    #[error(
        "agency {code} does not receive this procedure: it is decided by an agency of kind `{kind}`; file there or at a public service centre (`{SERVICE_CENTRE}`)"
    )]
    NotReceiving { code: String, kind: String },
}

/// The kind of a public service centre, which receives dossiers of every procedure of its
/// province for the agency competent to decide them (Decree 118/2025/NĐ-CP).
pub const SERVICE_CENTRE: &str = "trung_tam_phvhcc";

/// The deployment's agencies by code.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Agencies {
    by_code: BTreeMap<String, Agency>,
}

impl Agencies {
    pub fn new(list: impl IntoIterator<Item = Agency>) -> Agencies {
        Agencies {
            by_code: list.into_iter().map(|a| (a.code.clone(), a)).collect(),
        }
    }

    /// Agencies known by name only (no kinds, always in effect).
    pub fn from_names(names: &BTreeMap<String, String>) -> Agencies {
        Agencies::new(names.iter().map(|(code, name)| Agency {
            code: code.clone(),
            name: name.clone(),
            kind: None,
            valid_from: None,
            valid_until: None,
        }))
    }

    /// Names by code (for what is printed on papers and notifications).
    pub fn names(&self) -> BTreeMap<String, String> {
        self.by_code
            .iter()
            .map(|(c, a)| (c.clone(), a.name.clone()))
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.by_code.is_empty()
    }

    pub fn contains(&self, code: &str) -> bool {
        self.by_code.contains_key(code)
    }

    pub fn get(&self, code: &str) -> Option<&Agency> {
        self.by_code.get(code)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Agency> {
        self.by_code.values()
    }

    pub fn insert(&mut self, agency: Agency) {
        self.by_code.insert(agency.code.clone(), agency);
    }

    /// The agency with this code, if it is one of ours and in effect on `day`.
    pub fn current(&self, code: &str, day: NaiveDate) -> Result<&Agency, AgencyError> {
        let a = self
            .by_code
            .get(code)
            .ok_or_else(|| AgencyError::Unknown(code.to_owned()))?;
        if !a.in_effect(day) {
            let show = |d: Option<NaiveDate>| d.map(|d| d.to_string()).unwrap_or_default();
            return Err(AgencyError::NotInEffect {
                code: code.to_owned(),
                day,
                span: format!("{}..{}", show(a.valid_from), show(a.valid_until)),
            });
        }
        Ok(a)
    }

    /// Whether some agency (in effect or not) is of `kind`.
    pub fn has_kind(&self, kind: &str) -> bool {
        self.by_code
            .values()
            .any(|a| a.kind.as_deref() == Some(kind))
    }

    /// The one agency of `kind` in effect on `day`; several (communes, say) are ambiguous.
    pub fn only_of_kind(&self, kind: &str, day: NaiveDate) -> Result<&Agency, AgencyError> {
        let of: Vec<&Agency> = self
            .by_code
            .values()
            .filter(|a| a.kind.as_deref() == Some(kind) && a.in_effect(day))
            .collect();
        match of.as_slice() {
            [] => Err(AgencyError::NoAgencyOfKind(kind.to_owned())),
            [one] => Ok(one),
            many => Err(AgencyError::Ambiguous {
                kind: kind.to_owned(),
                codes: many
                    .iter()
                    .map(|a| a.code.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// The agency competent for a dossier filed at `receiving`. With a competent kind, the
    /// receiving agency must be of that kind (it decides) or a public service centre (the
    /// filing names the competent agency, or the only one of the kind is). Without a
    /// competent kind, the receiving agency decides.
    pub fn competent(
        &self,
        kind: Option<&str>,
        receiving: &str,
        named: Option<&str>,
        day: NaiveDate,
    ) -> Result<String, AgencyError> {
        let Some(kind) = kind else {
            if let Some(n) = named {
                self.current(n, day)?;
                return Ok(n.to_owned());
            }
            return Ok(receiving.to_owned());
        };
        let receiving_kind = self.get(receiving).and_then(|a| a.kind.as_deref());
        if receiving_kind == Some(kind) && named.is_none_or(|n| n == receiving) {
            return Ok(receiving.to_owned());
        }
        if receiving_kind != Some(SERVICE_CENTRE) {
            return Err(AgencyError::NotReceiving {
                code: receiving.to_owned(),
                kind: kind.to_owned(),
            });
        }
        if let Some(n) = named {
            let a = self.current(n, day)?;
            if a.kind.as_deref() != Some(kind) {
                return Err(AgencyError::WrongKind {
                    code: n.to_owned(),
                    kind: kind.to_owned(),
                });
            }
            return Ok(n.to_owned());
        }
        Ok(self.only_of_kind(kind, day)?.code.clone())
    }

    /// The code a task's `agency` stands for: a kind with one agency in this deployment is
    /// that agency; the competent kind or `receiving` stay symbolic (the dossier says which
    /// agency they are); a code (definitions deployed before kinds existed) stays as it is.
    pub fn resolve_task_agency(
        &self,
        kind: &str,
        competent_kind: Option<&str>,
        day: NaiveDate,
    ) -> Result<TaskAgency, AgencyError> {
        if kind == RECEIVING {
            return Ok(TaskAgency::Receiving);
        }
        if Some(kind) == competent_kind {
            return Ok(TaskAgency::Competent);
        }
        if is_agency_code(kind) {
            return Ok(TaskAgency::Code(kind.to_owned()));
        }
        Ok(TaskAgency::Code(self.only_of_kind(kind, day)?.code.clone()))
    }
}

/// Where a task goes, once the deployment's agencies are known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskAgency {
    Receiving,
    Competent,
    Code(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agency(code: &str, kind: &str) -> Agency {
        Agency {
            code: code.into(),
            name: code.into(),
            kind: Some(kind.into()),
            valid_from: None,
            valid_until: None,
        }
    }

    fn day(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn the_competent_agency_is_named_received_or_the_only_one_of_its_kind() {
        let a = Agencies::new([
            agency("000.00.01.H59", "so_tu_phap"),
            agency("000.00.90.H59", "trung_tam_phvhcc"),
            agency("000.20.01.H59", "ubnd_xa"),
            agency("000.20.02.H59", "ubnd_xa"),
        ]);
        let d = day("2026-12-07");
        // Filed at the service centre for the Department of Justice: the department decides.
        assert_eq!(
            a.competent(Some("so_tu_phap"), "000.00.90.H59", None, d),
            Ok("000.00.01.H59".into())
        );
        // Filed at a department that does not decide it: refused.
        assert!(matches!(
            a.competent(Some("ubnd_xa"), "000.00.01.H59", None, d),
            Err(AgencyError::NotReceiving { .. })
        ));
        // Filed at a commune: that commune decides.
        assert_eq!(
            a.competent(Some("ubnd_xa"), "000.20.02.H59", None, d),
            Ok("000.20.02.H59".into())
        );
        // Filed at the centre for a commune procedure: which commune must be said.
        assert!(matches!(
            a.competent(Some("ubnd_xa"), "000.00.90.H59", None, d),
            Err(AgencyError::Ambiguous { .. })
        ));
        assert_eq!(
            a.competent(Some("ubnd_xa"), "000.00.90.H59", Some("000.20.01.H59"), d),
            Ok("000.20.01.H59".into())
        );
        assert!(matches!(
            a.competent(Some("ubnd_xa"), "000.00.90.H59", Some("000.00.01.H59"), d),
            Err(AgencyError::WrongKind { .. })
        ));
    }

    #[test]
    fn a_code_out_of_effect_is_refused_with_its_dates() {
        let mut old = agency("000.00.20.H59", "ubnd_xa");
        old.valid_until = Some(day("2025-06-30"));
        let a = Agencies::new([old]);
        assert!(a.current("000.00.20.H59", day("2025-06-30")).is_ok());
        let e = a.current("000.00.20.H59", day("2025-07-01")).unwrap_err();
        assert!(e.to_string().contains("..2025-06-30"), "{e}");
        assert!(matches!(
            a.only_of_kind("ubnd_xa", day("2025-07-01")),
            Err(AgencyError::NoAgencyOfKind(_))
        ));
    }
}
