//! Dossiers (hồ sơ): commands, the pure decision core, events and the state they fold into.

mod command;
mod decide;
mod event;
mod state;
mod types;

pub use command::{
    Command, CommandError, Filing, HookOutcome, IncidentAction, PaperSource, ReusedPaper,
};
pub use decide::{Context, Decision, backoff, decide, decide_filing};
pub use event::{DocumentRef, Event, EventRecord, IncidentKind, IncidentResolution, Notification};
pub use state::{
    Dossier, Incident, Job, JobKind, JobState, Pause, Payment, PaymentChannel, Signature, Task,
};
pub use types::{
    Actor, Channel, OnlineLevel, Owner, OwnerId, OwnerIdError, OwnerIdKind, OwnerType, Status,
};
