//! Value types of dossiers: owners and their identifiers, channels, statuses, actors.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The identifier of a dossier's owner (mã định danh), parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OwnerId {
    kind: OwnerIdKind,
    value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OwnerIdKind {
    /// 12-digit personal identification number (số định danh cá nhân, CCCD).
    CitizenId,
    /// Passport number: a letter followed by 7 digits for Vietnamese passports; 6 to 9
    /// letters and digits for foreign ones.
    Passport,
    /// Enterprise or tax code: 10 digits, or 13 for a branch (`0101234567-001`).
    TaxCode,
}

/// Why an owner identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{input}` is not a citizen ID (12 digits), a passport number or a tax code (10 digits, or 10-3)"
)]
pub struct OwnerIdError {
    pub input: String,
}

impl OwnerId {
    pub fn parse(input: &str) -> Result<OwnerId, OwnerIdError> {
        let s = input.trim();
        let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        let kind = if s.len() == 12 && digits(s) {
            OwnerIdKind::CitizenId
        } else if (s.len() == 10 && digits(s))
            // By byte: the input may hold any character, and `&s[..10]` could split one.
            || (s.len() == 14
                && s.bytes().take(10).all(|b| b.is_ascii_digit())
                && s.as_bytes()[10] == b'-'
                && s.bytes().skip(11).all(|b| b.is_ascii_digit()))
        {
            OwnerIdKind::TaxCode
        } else if (6..=9).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
            && s.bytes().next().is_some_and(|b| b.is_ascii_uppercase())
            && s.bytes().any(|b| b.is_ascii_digit())
        {
            OwnerIdKind::Passport
        } else {
            return Err(OwnerIdError {
                input: input.to_owned(),
            });
        };
        Ok(OwnerId {
            kind,
            value: s.to_owned(),
        })
    }

    pub fn kind(&self) -> OwnerIdKind {
        self.kind
    }

    pub fn as_str(&self) -> &str {
        &self.value
    }

    /// Citizen IDs and passports name people; tax codes name organizations.
    pub fn owner_type(&self) -> OwnerType {
        match self.kind {
            OwnerIdKind::CitizenId | OwnerIdKind::Passport => OwnerType::Person,
            OwnerIdKind::TaxCode => OwnerType::Organization,
        }
    }
}

impl TryFrom<String> for OwnerId {
    type Error = OwnerIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        OwnerId::parse(&s)
    }
}

impl From<OwnerId> for String {
    fn from(o: OwnerId) -> String {
        o.value
    }
}

impl fmt::Display for OwnerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.value)
    }
}

pub use crate::definition::OnlineLevel;

/// Owner type as the portal counts it: 1 person, 2 organization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OwnerType {
    Person,
    Organization,
}

impl OwnerType {
    pub fn portal_code(self) -> u8 {
        match self {
            OwnerType::Person => 1,
            OwnerType::Organization => 2,
        }
    }
}

/// The dossier's owner (chủ hồ sơ).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub id: OwnerId,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
}

/// How the dossier was filed (KenhThucHien): 1 in person, 2 online, 3 postal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    InPerson,
    Online,
    Postal,
}

impl Channel {
    pub fn portal_code(self) -> u8 {
        match self {
            Channel::InPerson => 1,
            Channel::Online => 2,
            Channel::Postal => 3,
        }
    }

    /// The name CEL expressions compare against (`dossier.channel == 'online'`).
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::InPerson => "in_person",
            Channel::Online => "online",
            Channel::Postal => "postal",
        }
    }
}

/// The dossier status synced to the portal (TrangThaiHoSo).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// 1 Mới đăng ký.
    Filed,
    /// 2 Được tiếp nhận.
    Received,
    /// 3 Không được tiếp nhận.
    NotReceived,
    /// 4 Đang xử lý.
    Processing,
    /// 5 Yêu cầu bổ sung giấy tờ.
    SupplementRequested,
    /// 6 Yêu cầu thực hiện nghĩa vụ tài chính.
    PaymentRequested,
    /// 7 Công dân yêu cầu rút hồ sơ.
    Withdrawn,
    /// 8 Dừng xử lý.
    Stopped,
    /// 9 Đã xử lý xong.
    Processed,
    /// 10 Đã trả kết quả.
    Returned,
}

impl Status {
    pub fn code(self) -> u8 {
        match self {
            Status::Filed => 1,
            Status::Received => 2,
            Status::NotReceived => 3,
            Status::Processing => 4,
            Status::SupplementRequested => 5,
            Status::PaymentRequested => 6,
            Status::Withdrawn => 7,
            Status::Stopped => 8,
            Status::Processed => 9,
            Status::Returned => 10,
        }
    }

    pub fn from_code(code: u8) -> Option<Status> {
        Some(match code {
            1 => Status::Filed,
            2 => Status::Received,
            3 => Status::NotReceived,
            4 => Status::Processing,
            5 => Status::SupplementRequested,
            6 => Status::PaymentRequested,
            7 => Status::Withdrawn,
            8 => Status::Stopped,
            9 => Status::Processed,
            10 => Status::Returned,
            _ => return None,
        })
    }

    /// The Vietnamese name the portal uses.
    pub fn label(self) -> &'static str {
        match self {
            Status::Filed => "Mới đăng ký",
            Status::Received => "Được tiếp nhận",
            Status::NotReceived => "Không được tiếp nhận",
            Status::Processing => "Đang xử lý",
            Status::SupplementRequested => "Yêu cầu bổ sung giấy tờ",
            Status::PaymentRequested => "Yêu cầu thực hiện nghĩa vụ tài chính",
            Status::Withdrawn => "Công dân yêu cầu rút hồ sơ",
            Status::Stopped => "Dừng xử lý",
            Status::Processed => "Đã xử lý xong",
            Status::Returned => "Đã trả kết quả",
        }
    }
}

/// Who asks for a command: the engine checks each command against it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Actor {
    /// A citizen or an organization's representative, acting for one owner.
    Citizen {
        id: String,
        name: String,
        owner_id: OwnerId,
    },
    /// An officer of one agency, with roles from the role catalog.
    Officer {
        id: String,
        name: String,
        agency: String,
        roles: Vec<String>,
    },
    /// An administrator: deploys procedures, handles incidents.
    Admin { id: String, name: String },
    /// Reads histories; never writes.
    Auditor { id: String, name: String },
    /// The engine itself: workers, timers, scheduled scans.
    System,
}

impl Actor {
    pub fn id(&self) -> &str {
        match self {
            Actor::Citizen { id, .. }
            | Actor::Officer { id, .. }
            | Actor::Admin { id, .. }
            | Actor::Auditor { id, .. } => id,
            Actor::System => "system",
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Actor::Citizen { name, .. }
            | Actor::Officer { name, .. }
            | Actor::Admin { name, .. }
            | Actor::Auditor { name, .. } => name,
            Actor::System => "tthc",
        }
    }

    pub fn has_role(&self, role: &str) -> bool {
        matches!(self, Actor::Officer { roles, .. } if roles.iter().any(|r| r == role))
    }

    pub fn agency(&self) -> Option<&str> {
        match self {
            Actor::Officer { agency, .. } => Some(agency),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_ids_are_parsed_by_shape() {
        assert_eq!(
            OwnerId::parse("001099012345").unwrap().kind(),
            OwnerIdKind::CitizenId
        );
        assert_eq!(
            OwnerId::parse("0101234567").unwrap().owner_type(),
            OwnerType::Organization
        );
        assert_eq!(
            OwnerId::parse("0101234567-001").unwrap().kind(),
            OwnerIdKind::TaxCode
        );
        assert_eq!(
            OwnerId::parse("C1234567").unwrap().kind(),
            OwnerIdKind::Passport
        );
        for bad in [
            "",
            "12345",
            "00109901234x",
            "c1234567",
            "ABCDEFGH",
            "0101234567-01",
            "../etc",
        ] {
            assert!(OwnerId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn status_codes_round_trip() {
        for code in 1..=10 {
            assert_eq!(Status::from_code(code).unwrap().code(), code);
        }
        assert!(Status::from_code(11).is_none());
    }
}
