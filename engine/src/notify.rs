//! Notifications: Handlebars templates (procedures/templates/NAME.hbs) rendered with a
//! dossier's facts into the dossier's notification outbox.
//!
//! A template may start with `{{!-- subject: TEXT --}}`; TEXT (itself a template) becomes the
//! subject. Templates are plain text: nothing is HTML-escaped.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use handlebars::Handlebars;
use serde_json::{Value, json};

use crate::calendar::Calendar;
use crate::dossier::{Dossier, Notification};
use crate::runtime::CompiledProcedure;

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot read templates in {path}: {message}")]
    Read { path: String, message: String },
    #[error("template {name}: {message}")]
    Invalid { name: String, message: String },
}

pub struct Templates {
    hb: Handlebars<'static>,
    names: Vec<String>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates")
            .field("names", &self.names)
            .finish()
    }
}

const SUBJECT_PREFIX: &str = "{{!-- subject:";

impl Templates {
    /// Loads every `NAME.hbs` in `dir`.
    pub fn load(dir: &Path) -> Result<Templates, TemplateError> {
        let read_err = |e: std::io::Error| TemplateError::Read {
            path: dir.display().to_string(),
            message: e.to_string(),
        };
        let mut sources = BTreeMap::new();
        for entry in std::fs::read_dir(dir).map_err(read_err)? {
            let path = entry.map_err(read_err)?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("hbs") {
                continue;
            }
            let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            let text = std::fs::read_to_string(&path).map_err(read_err)?;
            sources.insert(name.to_owned(), text);
        }
        Templates::from_sources(sources)
    }

    pub fn from_sources(sources: BTreeMap<String, String>) -> Result<Templates, TemplateError> {
        let mut hb = Handlebars::new();
        hb.register_escape_fn(handlebars::no_escape);
        let mut names = Vec::new();
        for (name, text) in sources {
            let (subject, body) = split_subject(&text);
            let invalid = |e: handlebars::TemplateError| TemplateError::Invalid {
                name: name.clone(),
                message: e.to_string(),
            };
            hb.register_template_string(&name, body).map_err(invalid)?;
            if let Some(s) = subject {
                hb.register_template_string(&format!("{name}.subject"), s)
                    .map_err(invalid)?;
            }
            names.push(name);
        }
        Ok(Templates { hb, names })
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Renders a notification for the dossier.
    pub fn render(
        &self,
        template: &str,
        id: String,
        ctx: &NotifyContext<'_>,
    ) -> Result<Notification, String> {
        let data = ctx.to_json();
        let body = self
            .hb
            .render(template, &data)
            .map_err(|e| format!("template {template}: {e}"))?;
        let subject_name = format!("{template}.subject");
        let subject = if self.hb.has_template(&subject_name) {
            self.hb
                .render(&subject_name, &data)
                .map_err(|e| format!("template {template} subject: {e}"))?
        } else {
            format!("{} {}", template, ctx.dossier.code)
        };
        let owner = &ctx.dossier.owner;
        let recipient = owner
            .email
            .clone()
            .or_else(|| owner.phone.clone())
            .unwrap_or_else(|| format!("owner:{}", owner.id));
        Ok(Notification {
            id,
            created_at: ctx.now,
            template: template.to_owned(),
            recipient,
            subject: subject.trim().to_owned(),
            body: body.trim_start_matches('\n').to_owned(),
        })
    }
}

fn split_subject(text: &str) -> (Option<&str>, &str) {
    let Some(rest) = text.strip_prefix(SUBJECT_PREFIX) else {
        return (None, text);
    };
    match rest.find("--}}") {
        Some(end) => {
            let after = &rest[end + 4..];
            (
                Some(rest[..end].trim()),
                after.strip_prefix('\n').unwrap_or(after),
            )
        }
        None => (None, text),
    }
}

/// What templates can say about a dossier.
pub struct NotifyContext<'a> {
    pub dossier: &'a Dossier,
    pub procedure: &'a CompiledProcedure,
    pub calendar: &'a Calendar,
    pub agency_name: &'a str,
    pub now: DateTime<Utc>,
}

impl NotifyContext<'_> {
    fn time(&self, t: Option<DateTime<Utc>>) -> Value {
        match t {
            Some(t) => Value::String(
                t.with_timezone(&self.calendar.timezone())
                    .format("%H giờ %M, ngày %d/%m/%Y")
                    .to_string(),
            ),
            None => Value::Null,
        }
    }

    fn to_json(&self) -> Value {
        let d = self.dossier;
        let p = self.procedure.procedure();
        let missing: Vec<String> = d
            .paused
            .as_ref()
            .map(|pause| {
                pause
                    .missing
                    .iter()
                    .map(|id| {
                        p.component(id)
                            .map_or_else(|| id.clone(), |c| c.name.clone())
                    })
                    .collect()
            })
            .unwrap_or_default();
        json!({
            "dossier": {
                "code": d.code,
                "filed_at": self.time(Some(d.filed_at)),
                "received_at": self.time(d.received_at),
                "due_at": self.time(d.due_at),
                "channel": d.channel.as_str(),
                "status": d.status.label(),
            },
            "procedure": { "code": p.code, "name": p.name },
            "owner": { "name": d.owner.name, "id": d.owner.id.as_str() },
            "agency": { "code": d.agency_code, "name": self.agency_name },
            "reason": d.reason,
            "new_due_at": self.time(d.promised_at),
            "missing": missing,
            "officer": { "name": d.last_officer },
        })
    }
}
