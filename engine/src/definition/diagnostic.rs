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
    /// The file's text, to place problems inside a one-line value.
    pub text: &'a str,
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
        // A value written after `!` lost its start to a YAML tag: that is the real mistake.
        let hint = match self.tag_before(position) {
            Some(tag) => Some(format!(
                "`{tag}` at the start of a value is a YAML tag, and is dropped: quote the whole value, e.g. `if: \"{tag} …\"`"
            )),
            None => hint,
        };
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

    /// The `!tag` written just before the value at `at`, if any.
    fn tag_before(&self, at: Position) -> Option<String> {
        let line = self
            .text
            .lines()
            .nth(usize::try_from(at.line).ok()?.checked_sub(1)?)?;
        let before: String = line
            .chars()
            .take(usize::try_from(at.column).ok()?.checked_sub(1)?)
            .collect();
        let last = before.split_whitespace().last()?;
        (last.starts_with('!') && last.len() > 1 && !before.trim_end().ends_with(['"', '\'']))
            .then(|| last.to_owned())
    }

    /// The scalar at the pointer as written in the file (up to a `,`, `}`, `]` or comment).
    pub fn written(&self, pointer: &str) -> Option<String> {
        let at = self.locator.position(pointer);
        let line = self
            .text
            .lines()
            .nth(usize::try_from(at.line).ok()?.checked_sub(1)?)?;
        let rest: String = line
            .chars()
            .skip(usize::try_from(at.column).ok()?.checked_sub(1)?)
            .collect();
        let token = rest
            .split([',', '}', ']', '#'])
            .next()
            .map(str::trim)
            .filter(|t| !t.is_empty())?;
        Some(token.to_owned())
    }

    /// An error inside the expression at the pointer: at `column` (1-based) of the
    /// expression when the value is written on one line, else at the value.
    pub fn error_in_expression(
        &mut self,
        pointer: &str,
        source: &str,
        column: Option<u32>,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        let at = self.locator.position(pointer);
        let at = column
            .and_then(|c| self.column_inside(at, source, c as usize))
            .unwrap_or(at);
        self.push(Severity::Error, at, message.into(), hint);
    }

    /// The position of byte `column - 1` of `source`, when the value at `at` is `source`
    /// written plainly or in quotes on its line.
    fn column_inside(&self, at: Position, source: &str, column: usize) -> Option<Position> {
        let line = self
            .text
            .lines()
            .nth(usize::try_from(at.line).ok()?.checked_sub(1)?)?;
        let start: usize = line
            .char_indices()
            .nth(usize::try_from(at.column).ok()?.checked_sub(1)?)
            .map(|(i, _)| i)?;
        let rest = &line[start..];
        let body = match rest.chars().next()? {
            '"' | '\'' => &rest[1..],
            _ => rest,
        };
        if !body.starts_with(source) {
            return None;
        }
        let skipped = line.len() - body.len();
        let chars = line[..skipped].chars().count() + source.get(..column - 1)?.chars().count();
        Some(Position {
            line: at.line,
            column: u64::try_from(chars).ok()? + 1,
        })
    }

    pub fn warning(&mut self, pointer: &str, message: impl Into<String>, hint: Option<String>) {
        let at = self.locator.position(pointer);
        self.push(Severity::Warning, at, message.into(), hint);
    }
}
