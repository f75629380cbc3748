//! Reading definition files and catalogs from disk.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::catalog::ROOT_HINT;
pub use super::catalog::{Catalog, LoaderConfig};
use super::check;
use super::diagnostic::{Diagnostic, Severity, Sink};
use super::model::{AgencyKindCatalog, Procedure, ResultCatalog, RoleCatalog};
use super::yaml::{self, Locator, Position};

/// Definition files larger than this are refused before parsing.
pub const MAX_FILE_BYTES: u64 = 512 * 1024;

static PROCEDURE_SCHEMA: LazyLock<Result<jsonschema::Validator, String>> = LazyLock::new(|| {
    let schema: Value =
        serde_json::from_str(include_str!("../../../schemas/procedure.schema.json"))
            .map_err(|e| e.to_string())?;
    jsonschema::validator_for(&schema).map_err(|e| e.to_string())
});

static RESULTS_SCHEMA: LazyLock<Result<jsonschema::Validator, String>> = LazyLock::new(|| {
    let schema: Value =
        serde_json::from_str(include_str!("../../../schemas/results-catalog.schema.json"))
            .map_err(|e| e.to_string())?;
    jsonschema::validator_for(&schema).map_err(|e| e.to_string())
});

static ROLES_SCHEMA: LazyLock<Result<jsonschema::Validator, String>> = LazyLock::new(|| {
    let schema: Value =
        serde_json::from_str(include_str!("../../../schemas/roles-catalog.schema.json"))
            .map_err(|e| e.to_string())?;
    jsonschema::validator_for(&schema).map_err(|e| e.to_string())
});

static AGENCY_KINDS_SCHEMA: LazyLock<Result<jsonschema::Validator, String>> = LazyLock::new(|| {
    let schema: Value = serde_json::from_str(include_str!(
        "../../../schemas/agency-kinds-catalog.schema.json"
    ))
    .map_err(|e| e.to_string())?;
    jsonschema::validator_for(&schema).map_err(|e| e.to_string())
});

/// A checked procedure definition, ready to run.
#[derive(Debug, Clone)]
pub struct Definition {
    pub procedure: Procedure,
    /// Form schemas by the path the definition names them with.
    pub forms: BTreeMap<String, Arc<Value>>,
    /// Where it was read from.
    pub source: PathBuf,
    /// The YAML text as read, so a deployment can store exactly what it ran.
    pub text: String,
}

impl Definition {
    pub fn code(&self) -> &str {
        &self.procedure.code
    }

    /// The form schema of a component or user task, by its id.
    pub fn form_schema(&self, id: &str) -> Option<&Arc<Value>> {
        let path = self.procedure.form_path(id)?;
        self.forms.get(path)
    }
}

/// The outcome of loading several files: what loaded, and every problem found.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub definitions: Vec<Definition>,
    pub diagnostics: Vec<Diagnostic>,
}

impl LoadReport {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

/// Loads and checks definitions against a catalog.
#[derive(Debug, Clone)]
pub struct Loader {
    config: LoaderConfig,
    catalog: Catalog,
}

impl Loader {
    /// Reads the catalogs. Their problems are reported like a definition's.
    pub fn new(config: LoaderConfig) -> Result<Loader, Vec<Diagnostic>> {
        let mut diagnostics = Vec::new();
        let results: Option<ResultCatalog> = read_catalog(
            &config.catalog_dir.join("results.yaml"),
            &RESULTS_SCHEMA,
            &mut diagnostics,
        );
        let roles: Option<RoleCatalog> = read_catalog(
            &config.catalog_dir.join("roles.yaml"),
            &ROLES_SCHEMA,
            &mut diagnostics,
        );
        let kinds_file = config.catalog_dir.join("agency-kinds.yaml");
        let agency_kinds: Option<AgencyKindCatalog> = if kinds_file.exists() {
            read_catalog(&kinds_file, &AGENCY_KINDS_SCHEMA, &mut diagnostics)
        } else {
            Some(AgencyKindCatalog::default())
        };
        let templates = list_templates(&config.templates_dir);
        match (results, roles, agency_kinds) {
            (Some(results), Some(roles), Some(agency_kinds))
                if diagnostics.iter().all(|d| !d.is_error()) =>
            {
                Ok(Loader {
                    config,
                    catalog: Catalog {
                        results,
                        roles,
                        agency_kinds,
                        templates,
                    },
                })
            }
            _ => Err(diagnostics),
        }
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    /// Loads every `.yaml`/`.yml` file under the given files and folders (catalogs excluded),
    /// and checks that no two define the same procedure version.
    pub fn load_paths(&self, paths: &[PathBuf]) -> LoadReport {
        let mut report = LoadReport::default();
        let mut files = Vec::new();
        for path in paths {
            collect_files(path, &mut files, &mut report.diagnostics);
        }
        files.sort();
        files.dedup();
        let catalog_dir = self.config.catalog_dir.canonicalize().ok();
        for file in files {
            let in_catalog = match (
                &catalog_dir,
                file.parent().and_then(|p| p.canonicalize().ok()),
            ) {
                (Some(c), Some(p)) => p.starts_with(c),
                _ => false,
            };
            if in_catalog || is_calendar_file(&file) {
                continue;
            }
            match self.load_file(&file) {
                Ok((definition, warnings)) => {
                    report.diagnostics.extend(warnings);
                    report.definitions.push(definition);
                }
                Err(diagnostics) => report.diagnostics.extend(diagnostics),
            }
        }
        let mut seen: BTreeMap<(String, u32), PathBuf> = BTreeMap::new();
        for d in &report.definitions {
            let key = (d.procedure.code.clone(), d.procedure.version);
            if let Some(first) = seen.get(&key) {
                report.diagnostics.push(Diagnostic {
                    file: d.source.clone(),
                    position: Position { line: 1, column: 1 },
                    severity: Severity::Error,
                    message: format!(
                        "procedure {} version {} is also defined in {}",
                        key.0,
                        key.1,
                        first.display()
                    ),
                    hint: Some("raise `version` when you change a procedure".into()),
                });
            } else {
                seen.insert(key, d.source.clone());
            }
        }
        report
    }

    /// Loads one file. Warnings come back beside the definition; any error refuses it.
    pub fn load_file(&self, path: &Path) -> Result<(Definition, Vec<Diagnostic>), Vec<Diagnostic>> {
        let text = read_bounded(path).map_err(|message| {
            vec![Diagnostic {
                file: path.to_path_buf(),
                position: Position { line: 1, column: 1 },
                severity: Severity::Error,
                message,
                hint: None,
            }]
        })?;
        self.load_str(path, &text)
    }

    /// Loads a definition from text; `path` names it in diagnostics.
    pub fn load_str(
        &self,
        path: &Path,
        text: &str,
    ) -> Result<(Definition, Vec<Diagnostic>), Vec<Diagnostic>> {
        let (value, locator) = parse_yaml(path, text)?;
        let mut sink = Sink {
            file: path.to_path_buf(),
            locator: &locator,
            text,
            items: Vec::new(),
        };
        schema_check(&PROCEDURE_SCHEMA, &value, &mut sink);
        whole_numbers(&value, "", &mut sink);
        if sink.items.iter().any(Diagnostic::is_error) {
            return Err(sink.items);
        }
        let procedure: Procedure = match serde_json::from_value(value) {
            Ok(p) => p,
            Err(e) => {
                sink.error("", format!("cannot read the definition: {e}"), None);
                return Err(sink.items);
            }
        };
        let forms = check::check(&procedure, &self.catalog, &self.config, &mut sink);
        if sink.items.iter().any(Diagnostic::is_error) {
            return Err(sink.items);
        }
        let definition = Definition {
            procedure,
            forms,
            source: path.to_path_buf(),
            text: text.to_owned(),
        };
        Ok((definition, sink.items))
    }
}

/// Fields the format holds as whole numbers. JSON Schema takes `75.0` for an integer, so a
/// thousands dot (`75.000`, read by YAML as the decimal 75) is caught here, with its fix.
const WHOLE_NUMBER_FIELDS: &[&str] = &[
    "amount_vnd",
    "version",
    "copies",
    "working_days",
    "working_hours",
    "days",
    "months",
    "minutes",
    "max_attempts",
    "initial_backoff_seconds",
    "max_backoff_seconds",
];

fn whole_numbers(value: &Value, pointer: &str, sink: &mut Sink<'_>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let child = format!("{pointer}/{}", yaml::escape_segment(k));
                if let Value::Number(n) = v
                    && WHOLE_NUMBER_FIELDS.contains(&k.as_str())
                    && n.as_u64().is_none()
                    && n.as_i64().is_none()
                {
                    let written = sink.written(&child).unwrap_or_else(|| n.to_string());
                    let (message, hint) = number_fix(k, &written);
                    sink.error(&child, message, Some(hint));
                } else {
                    whole_numbers(v, &child, sink);
                }
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                whole_numbers(v, &format!("{pointer}/{i}"), sink);
            }
        }
        _ => {}
    }
}

/// The message and fix for a number written with a separator or a fraction.
pub(crate) fn number_fix(field: &str, written: &str) -> (String, String) {
    let digits: String = written.chars().filter(char::is_ascii_digit).collect();
    let grouped = {
        let parts: Vec<&str> = written.trim().split(['.', ',', ' ']).collect();
        parts.len() > 1
            && parts[0].len() <= 3
            && !parts[0].is_empty()
            && parts[1..].iter().all(|p| p.len() == 3)
            && parts.iter().all(|p| p.chars().all(|c| c.is_ascii_digit()))
    };
    if grouped {
        (
            format!(
                "`{field}` is `{written}`: the dot or comma is read as a decimal point, not a thousands separator"
            ),
            format!("write `{field}: {digits}`, without separators"),
        )
    } else {
        (
            format!("`{field}` must be a whole number, not `{written}`"),
            format!(
                "write a whole number without separators, e.g. `{field}: {}`",
                digits
                    .trim_start_matches('0')
                    .chars()
                    .take(9)
                    .collect::<String>()
                    .parse::<u64>()
                    .unwrap_or(1)
            ),
        )
    }
}

fn is_calendar_file(path: &Path) -> bool {
    path.parent()
        .and_then(Path::file_name)
        .is_some_and(|n| n == "calendar")
}

fn read_bounded(path: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read file: {e}"))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "file is {} bytes, more than the {MAX_FILE_BYTES} bytes a definition may have",
            meta.len()
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read file: {e}"))?;
    String::from_utf8(bytes).map_err(|e| format!("file is not UTF-8 text: {e}"))
}

fn parse_yaml(path: &Path, text: &str) -> Result<(Value, Locator), Vec<Diagnostic>> {
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(vec![Diagnostic {
            file: path.to_path_buf(),
            position: Position { line: 1, column: 1 },
            severity: Severity::Error,
            message: format!(
                "text is larger than the {MAX_FILE_BYTES} bytes a definition may have"
            ),
            hint: None,
        }]);
    }
    yaml::parse(text).map_err(|e| {
        let line = usize::try_from(e.position.line)
            .ok()
            .and_then(|n| n.checked_sub(1))
            .and_then(|n| text.lines().nth(n))
            .unwrap_or("");
        vec![Diagnostic {
            file: path.to_path_buf(),
            position: e.position,
            severity: Severity::Error,
            message: format!("invalid YAML: {}", e.message),
            hint: yaml_hint(&e.message)
                .or_else(|| yaml_line_hint(&e.message, line, text, e.position.line)),
        }]
    })
}

/// A hint from the line the parser stopped at: tabs, an unquoted `: ` in a value,
/// misaligned keys, an unclosed bracket.
fn yaml_line_hint(message: &str, line: &str, text: &str, number: u64) -> Option<String> {
    let m = message.to_lowercase();
    if m.contains("tab")
        || line.trim_end().starts_with(|c: char| c.is_whitespace()) && line.contains('\t')
    {
        return Some(format!(
            "YAML indents with spaces only: replace the tab(s) on line {number} with spaces (2 per level)"
        ));
    }
    let body = line.trim_start().trim_start_matches("- ");
    if m.contains("mapping values are not allowed") {
        if let Some((key, value)) = body.split_once(": ")
            && value.contains(": ")
            && !value.trim_start().starts_with(['"', '\'', '{', '['])
        {
            let value = value.trim().replace('"', "\\\"");
            return Some(format!(
                "the value contains `: `, which YAML reads as a new key: quote it, `{key}: \"{value}\"`"
            ));
        }
        return Some(indent_hint(line, text, number));
    }
    if m.contains("indent") || m.contains("did not find expected") || m.contains("block") {
        return Some(indent_hint(line, text, number));
    }
    if m.contains("flow")
        || m.contains("placement")
        || m.contains("unclosed")
        || m.contains("end of")
    {
        return Some(
            "check that every `[` and `{` on the lines above is closed by its `]` or `}`, and that values containing `,` `[` `]` `{` `}` inside them are quoted".into(),
        );
    }
    None
}

fn indent_hint(line: &str, text: &str, number: u64) -> String {
    let indent = |l: &str| l.len() - l.trim_start().len();
    let here = indent(line) + 1;
    let above = text
        .lines()
        .take(usize::try_from(number).unwrap_or(1).saturating_sub(1))
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .last()
        // A list item's keys start after its `- `.
        .map(|l| {
            indent(l)
                + if l.trim_start().starts_with("- ") {
                    3
                } else {
                    1
                }
        });
    match above {
        Some(col) if col != here => format!(
            "check the indentation: line {number} starts at column {here}, the key above it at column {col}; keys of one mapping start in the same column, indented with spaces"
        ),
        _ => "check the indentation: keys of one mapping start in the same column, list items with `- ` under their key, indented with spaces".into(),
    }
}

fn yaml_hint(message: &str) -> Option<String> {
    let m = message.to_lowercase();
    if m.contains("duplicate") {
        Some("each key may appear once in a mapping; remove or rename the repeated one".into())
    } else if m.contains("budget") || m.contains("limit") || m.contains("depth") {
        Some("definitions are small, plain documents: avoid deep nesting, anchors that expand into large trees and huge values".into())
    } else {
        None
    }
}

fn read_catalog<T: DeserializeOwned>(
    path: &Path,
    schema: &LazyLock<Result<jsonschema::Validator, String>>,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<T> {
    let text = match read_bounded(path) {
        Ok(t) => t,
        Err(message) => {
            diagnostics.push(Diagnostic {
                file: path.to_path_buf(),
                position: Position { line: 1, column: 1 },
                severity: Severity::Error,
                message,
                hint: Some(format!(
                    "the catalog folder ({}) must hold results.yaml and roles.yaml; {ROOT_HINT}",
                    path.parent()
                        .map_or_else(String::new, |p| p.display().to_string())
                )),
            });
            return None;
        }
    };
    let (value, locator) = match parse_yaml(path, &text) {
        Ok(v) => v,
        Err(d) => {
            diagnostics.extend(d);
            return None;
        }
    };
    let mut sink = Sink {
        file: path.to_path_buf(),
        locator: &locator,
        text: &text,
        items: Vec::new(),
    };
    schema_check(schema, &value, &mut sink);
    let parsed = if sink.items.is_empty() {
        match serde_json::from_value(value) {
            Ok(v) => Some(v),
            Err(e) => {
                sink.error("", format!("cannot read the catalog: {e}"), None);
                None
            }
        }
    } else {
        None
    };
    diagnostics.extend(sink.items);
    parsed
}

fn list_templates(dir: &Path) -> BTreeSet<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeSet::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let path = e.path();
            match path.extension().and_then(|x| x.to_str()) {
                Some("hbs") => path.file_stem().and_then(|s| s.to_str()).map(str::to_owned),
                _ => None,
            }
        })
        .collect()
}

fn collect_files(path: &Path, files: &mut Vec<PathBuf>, diagnostics: &mut Vec<Diagnostic>) {
    if path.is_dir() {
        let entries = match std::fs::read_dir(path) {
            Ok(e) => e,
            Err(e) => {
                diagnostics.push(Diagnostic {
                    file: path.to_path_buf(),
                    position: Position { line: 1, column: 1 },
                    severity: Severity::Error,
                    message: format!("cannot read folder: {e}"),
                    hint: None,
                });
                return;
            }
        };
        for entry in entries.filter_map(Result::ok) {
            let p = entry.path();
            if p.is_dir() {
                collect_files(&p, files, diagnostics);
            } else if matches!(p.extension().and_then(|x| x.to_str()), Some("yaml" | "yml")) {
                files.push(p);
            }
        }
    } else if path.exists() {
        files.push(path.to_path_buf());
    } else {
        diagnostics.push(Diagnostic {
            file: path.to_path_buf(),
            position: Position { line: 1, column: 1 },
            severity: Severity::Error,
            message: "no such file or folder".into(),
            hint: (!Path::new("procedures").is_dir()).then(|| ROOT_HINT.to_owned()),
        });
    }
}

/// Checks a value against a JSON Schema, reporting every violation where it was written.
fn schema_check(
    schema: &LazyLock<Result<jsonschema::Validator, String>>,
    value: &Value,
    sink: &mut Sink<'_>,
) {
    let validator = match &**schema {
        Ok(v) => v,
        Err(e) => {
            sink.error(
                "",
                format!("internal: the format's JSON Schema does not compile: {e}"),
                None,
            );
            return;
        }
    };
    let mut seen = BTreeSet::new();
    for error in validator.iter_errors(value) {
        let pointer = error.instance_path().as_str().to_owned();
        let (at, message, mut hint, on_key) = describe_schema_error(&pointer, &error);
        // The shape of a duration is wrong (not a number out of range): show the right one.
        let shape = on_key || at.rsplit('/').next() == duration_key(&at);
        if let Some(key) = duration_key(&at).filter(|_| shape) {
            hint = Some(format!(
                "write a duration in exactly one unit, e.g. `{key}: {{ working_days: 10 }}`; the units are working_days, working_hours, days, months and minutes"
            ));
        }
        if seen.insert((at.clone(), message.clone())) {
            if on_key {
                sink.error_at_key(&at, message, hint);
            } else {
                sink.error(&at, message, hint);
            }
        }
    }
}

/// Turns a JSON Schema violation into a message for an administrator: (pointer, message, hint,
/// whether to point at the key rather than the value).
fn describe_schema_error(
    pointer: &str,
    error: &jsonschema::ValidationError<'_>,
) -> (String, String, Option<String>, bool) {
    use jsonschema::error::ValidationErrorKind as K;
    let field = pointer.rsplit('/').next().unwrap_or("");
    let instance = error.instance();
    match error.kind() {
        K::AdditionalProperties { unexpected } => {
            let name = unexpected.first().cloned().unwrap_or_default();
            (
                format!("{pointer}/{}", yaml::escape_segment(&name)),
                format!("unknown field `{name}`"),
                Some("check the spelling; docs/authoring.md lists the fields of each part".into()),
                true,
            )
        }
        K::Required { property } => (
            pointer.to_owned(),
            format!("missing field `{}`", property.as_str().unwrap_or("?")),
            None,
            false,
        ),
        K::Enum { options } => (
            pointer.to_owned(),
            format!("`{}` is not one of {}", scalar(instance), list(options)),
            None,
            false,
        ),
        K::Constant { expected_value } => (
            pointer.to_owned(),
            format!("expected {expected_value}"),
            None,
            false,
        ),
        K::Type { kind } => (
            pointer.to_owned(),
            format!("`{field}` has the wrong type: expected {}", type_name(kind)),
            match instance.as_ref() {
                Value::Number(_) if field == "code" => {
                    Some(format!("quote the code so it stays text: \"{instance}\""))
                }
                Value::String(written)
                    if WHOLE_NUMBER_FIELDS.contains(&field)
                        && written.chars().any(|c| c.is_ascii_digit()) =>
                {
                    Some(number_fix(field, written).1)
                }
                _ => None,
            },
            false,
        ),
        K::Minimum { limit } => (
            pointer.to_owned(),
            format!("`{field}` must be at least {limit}"),
            None,
            false,
        ),
        K::Pattern { .. } => (
            pointer.to_owned(),
            format!(
                "`{}` is not a valid {}",
                scalar(instance),
                pattern_name(pointer)
            ),
            pattern_hint(pointer),
            false,
        ),
        K::OneOfNotValid { .. } | K::OneOfMultipleValid { .. } => {
            let (msg, hint) = one_of_message(pointer, instance);
            (pointer.to_owned(), msg, hint, false)
        }
        K::MinItems { limit } => (
            pointer.to_owned(),
            format!("`{field}` needs at least {limit} item(s)"),
            None,
            false,
        ),
        K::MaxProperties { .. } | K::MinProperties { .. } if pointer_is_duration(pointer) => (
            pointer.to_owned(),
            "a duration has exactly one unit".into(),
            Some("write for example `{ working_days: 10 }` or `{ months: 6 }`".into()),
            false,
        ),
        _ => (pointer.to_owned(), error.to_string(), None, false),
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn list(options: &Value) -> String {
    match options {
        Value::Array(items) => items
            .iter()
            .map(|i| format!("`{}`", scalar(i)))
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

fn type_name(kind: &jsonschema::error::TypeKind) -> String {
    match kind {
        jsonschema::error::TypeKind::Single(t) => format!("{t:?}").to_lowercase(),
        jsonschema::error::TypeKind::Multiple(ts) => format!("{ts:?}").to_lowercase(),
    }
}

/// The duration field (`processing_time`, `sla`, ...) a pointer is at or inside.
fn duration_key(pointer: &str) -> Option<&str> {
    let mut segments = pointer.rsplit('/');
    let last = segments.next()?;
    let parent = segments.next().unwrap_or("");
    let keys = ["processing_time", "sla", "wait", "max_age"];
    if keys.contains(&last) {
        Some(last)
    } else if keys.contains(&parent) {
        Some(parent)
    } else {
        None
    }
}

fn pointer_is_duration(pointer: &str) -> bool {
    ["processing_time", "sla", "wait", "max_age", "validity"]
        .iter()
        .any(|k| pointer.ends_with(k))
}

fn pattern_name(pointer: &str) -> &'static str {
    let last = pointer.rsplit('/').next().unwrap_or("");
    match last {
        "code" if !pointer.contains("/fees/") => "national procedure code",
        "result_code" | "signs" => "result code",
        "form" => "schema path",
        "agency" | "competent" => "agency kind",
        "call" => "hook name",
        _ if pointer.contains("result_codes") => "result code",
        _ => "identifier",
    }
}

fn pattern_hint(pointer: &str) -> Option<String> {
    Some(
        match pattern_name(pointer) {
            "national procedure code" => "codes look like `2.000488`",
            "result code" => "result codes are upper case, like `KQ.LLTP.01`",
            "schema path" => "a path under schemas/ ending in .json, like `forms/to-khai.schema.json`, without `..`",
            "agency kind" => "agency kinds are lower case, like `cong_an_tinh` (procedures/catalog/agency-kinds.yaml)",
            "hook name" => "hooks are named like `khodl.save`",
            _ => "identifiers use lower-case letters, digits and `_`, starting with a letter (e.g. `tham_dinh`)",
        }
        .to_owned(),
    )
}

fn one_of_message(pointer: &str, instance: &Value) -> (String, Option<String>) {
    let has = |k: &str| instance.get(k).is_some();
    let kind = instance.get("kind").and_then(Value::as_str).unwrap_or("");
    match kind {
        "user_task" => (
            if has("outcomes") && has("next") {
                "a user task has either `outcomes` or `next`, not both".into()
            } else {
                "a user task needs `outcomes` or `next`".into()
            },
            Some("use `next: STEP` for a single way on, `outcomes: { accept: STEP, refuse: STEP }` for a choice".into()),
        ),
        "timer" => (
            "a timer needs exactly one of `wait` or `until`".into(),
            Some("`wait: { working_days: 2 }` or `until: \"data.form.date\"`".into()),
        ),
        _ if pointer.ends_with("validity") => (
            "validity is `permanent` or a duration such as `{ months: 6 }`".into(),
            None,
        ),
        _ => ("value does not match any allowed form".into(), None),
    }
}

impl Definition {
    /// Rebuilds a definition exactly as it was deployed: its YAML and its form schemas as
    /// stored, without consulting today's files or catalog (they may have changed since).
    pub fn from_stored(source: &str, text: &str, forms: &Value) -> Result<Definition, String> {
        let (value, _) = yaml::parse(text).map_err(|e| format!("{source}: {}", e.message))?;
        let procedure: Procedure =
            serde_json::from_value(value).map_err(|e| format!("{source}: {e}"))?;
        let forms = match forms {
            Value::Object(m) => m
                .iter()
                .map(|(k, v)| (k.clone(), Arc::new(v.clone())))
                .collect(),
            _ => BTreeMap::new(),
        };
        Ok(Definition {
            procedure,
            forms,
            source: PathBuf::from(source),
            text: text.to_owned(),
        })
    }
}
