//! Problems found in a definition, reported as `file:line:column: severity: message`.

use std::fmt;
use std::path::PathBuf;

use super::yaml::Position;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
}

/// One problem at one place in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub position: Position,
    pub severity: Severity,
    pub message: String,
    /// What to do about it, in a sentence an administrator can act on.
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}:{}:{}: {severity}: {}",
            self.file.display(),
            self.position.line,
            self.position.column,
            self.message
        )?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// Collects the diagnostics of one file, locating JSON pointers through its [`Locator`].
///
/// [`Locator`]: super::yaml::Locator
pub(crate) struct Sink<'a> {
    pub file: PathBuf,
    pub locator: &'a super::yaml::Locator,
    pub items: Vec<Diagnostic>,
}

impl Sink<'_> {
    fn push(
        &mut self,
        severity: Severity,
        position: Position,
        message: String,
        hint: Option<String>,
    ) {
        self.items.push(Diagnostic {
            file: self.file.clone(),
            position,
            severity,
            message,
            hint,
        });
    }

    /// An error at the value the pointer names.
    pub fn error(&mut self, pointer: &str, message: impl Into<String>, hint: Option<String>) {
        let at = self.locator.position(pointer);
        self.push(Severity::Error, at, message.into(), hint);
    }

    /// An error at the key that introduces the pointer's value.
    pub fn error_at_key(
        &mut self,
        pointer: &str,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        let at = self.locator.key_position(pointer);
        self.push(Severity::Error, at, message.into(), hint);
    }

    pub fn warning(&mut self, pointer: &str, message: impl Into<String>, hint: Option<String>) {
        let at = self.locator.position(pointer);
        self.push(Severity::Warning, at, message.into(), hint);
    }
}
