//! Static typing of the CEL expressions of a definition against the JSON Schemas of the
//! forms they read.
//!
//! Every expression is typed before any dossier runs it: operands of the wrong type
//! (`data.don.so_tang > '3'` with an integer field), a timer `until` that gives no date, an
//! optional field read without a guard, a form that is not certainly filled where the
//! expression runs. Each would make the evaluation fail at run time; here it is an error with
//! its fix.
//!
//! What is known to hold where an expression runs (the forms filled, the conditions of the
//! decisions taken on the way, [`Facts`]) comes from the step graph (see `flow.rs`); inside an
//! expression, `a && b`, `a || b` and `c ? a : b` add what their left side proves, so
//! `has(data.f.x) && data.f.x > 3` reads `x` only where it is present.

use std::collections::BTreeSet;

use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue, operators};
use serde_json::Value;

use super::expr::DOSSIER_FIELDS;

/// One thing known to hold about the data: a path (`["data", "f", "x"]`) is present, or
/// equals a value (written as JSON).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Atom {
    Present(Vec<String>),
    Equals(Vec<String>, String),
}

impl Atom {
    fn path(&self) -> &[String] {
        match self {
            Atom::Present(p) | Atom::Equals(p, _) => p,
        }
    }

    /// Whether the atom is about form `form` (`data.form…`).
    pub(crate) fn about_form(&self, form: &str) -> bool {
        let p = self.path();
        p.len() >= 2 && p[0] == "data" && p[1] == form
    }
}

pub(crate) type Facts = BTreeSet<Atom>;

/// What an expression must give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expect {
    /// A condition: true or false.
    Condition,
    /// A timer's `until`: a date (`YYYY-MM-DD`) or a date-time.
    Date,
}

/// Where an expression runs: the forms certainly filled there and what is known.
pub(crate) struct Scope<'a> {
    /// Form id → its JSON Schema, for the forms `data.ID` may name.
    pub forms: &'a [(&'a str, Option<&'a Value>)],
    /// Forms certainly filled where the expression runs.
    pub filled: &'a BTreeSet<String>,
    /// What holds where the expression runs.
    pub facts: &'a Facts,
    /// Where the expression runs, for messages: "at filing", "on every way to step `x`".
    pub unfilled_where: &'a str,
    /// Says why a form may not be filled there, for the hint.
    pub unfilled_hint: &'a dyn Fn(&str) -> String,
    /// The schema file of each form, for hints (`forms/x.schema.json`).
    pub form_file: &'a dyn Fn(&str) -> Option<String>,
}

/// One problem in an expression, at an offset inside it when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    /// 1-based column inside the expression.
    pub column: Option<u32>,
    pub message: String,
    pub hint: String,
}

#[derive(Debug, Clone)]
enum Ty<'s> {
    Dyn,
    Null,
    Bool,
    Num,
    Str {
        /// `format: date` or `date-time`.
        date: bool,
        /// The allowed values, from an `enum`.
        values: Option<Vec<&'s str>>,
    },
    List(Box<Ty<'s>>),
    /// A map, with the JSON Schema of the object when known.
    Map(Option<&'s Value>),
    Time,
    Duration,
    Bytes,
}

impl Ty<'_> {
    fn name(&self) -> &'static str {
        match self {
            Ty::Dyn => "a value",
            Ty::Null => "null",
            Ty::Bool => "true/false",
            Ty::Num => "a number",
            Ty::Str { date: true, .. } => "a date (text)",
            Ty::Str { .. } => "text",
            Ty::List(_) => "a list",
            Ty::Map(_) => "an object",
            Ty::Time => "a timestamp",
            Ty::Duration => "a duration",
            Ty::Bytes => "bytes",
        }
    }

    fn kind(&self) -> u8 {
        match self {
            Ty::Dyn => 0,
            Ty::Null => 1,
            Ty::Bool => 2,
            Ty::Num => 3,
            Ty::Str { .. } => 4,
            Ty::List(_) => 5,
            Ty::Map(_) => 6,
            Ty::Time => 7,
            Ty::Duration => 8,
            Ty::Bytes => 9,
        }
    }

    fn is_dyn(&self) -> bool {
        matches!(self, Ty::Dyn)
    }

    fn fits(&self, other: &Ty<'_>) -> bool {
        self.is_dyn() || other.is_dyn() || self.kind() == other.kind()
    }
}

/// The type a JSON Schema gives its values.
fn schema_ty(s: &Value) -> Ty<'_> {
    if s.get("$ref").is_some() || s.get("oneOf").is_some() || s.get("anyOf").is_some() {
        return Ty::Dyn;
    }
    if let Some(c) = s.get("const") {
        return value_ty(c);
    }
    let enum_ty = || match s.get("enum") {
        Some(Value::Array(vals)) if !vals.is_empty() => {
            if vals.iter().all(Value::is_string) {
                Ty::Str {
                    date: false,
                    values: Some(vals.iter().filter_map(Value::as_str).collect()),
                }
            } else if vals.iter().all(Value::is_number) {
                Ty::Num
            } else if vals.iter().all(Value::is_boolean) {
                Ty::Bool
            } else {
                Ty::Dyn
            }
        }
        _ => Ty::Dyn,
    };
    match s.get("type").and_then(Value::as_str) {
        Some("boolean") => Ty::Bool,
        Some("integer" | "number") => Ty::Num,
        Some("string") => match enum_ty() {
            t @ Ty::Str { .. } => t,
            _ => Ty::Str {
                date: matches!(
                    s.get("format").and_then(Value::as_str),
                    Some("date" | "date-time")
                ),
                values: None,
            },
        },
        Some("array") => Ty::List(Box::new(s.get("items").map_or(Ty::Dyn, schema_ty))),
        Some("object") => Ty::Map(Some(s)),
        Some("null") => Ty::Null,
        Some(_) => Ty::Dyn,
        None => enum_ty(),
    }
}

fn value_ty(v: &Value) -> Ty<'_> {
    match v {
        Value::Null => Ty::Null,
        Value::Bool(_) => Ty::Bool,
        Value::Number(_) => Ty::Num,
        Value::String(s) => Ty::Str {
            date: false,
            values: Some(vec![s.as_str()]),
        },
        Value::Array(_) => Ty::List(Box::new(Ty::Dyn)),
        Value::Object(_) => Ty::Map(None),
    }
}

/// The fields an object schema certainly has, given what is known of its values: `required`,
/// the `then.required` of each `if` whose `const` conditions the facts meet (at the top or in
/// `allOf`), and `dependentRequired` of fields known present.
fn required_fields<'s>(schema: &'s Value, path: &[String], facts: &Facts) -> BTreeSet<&'s str> {
    let mut out: BTreeSet<&str> = names(schema.get("required"));
    let known = |field: &str, want: &Value| {
        let mut p = path.to_vec();
        p.push(field.to_owned());
        facts.contains(&Atom::Equals(p, want.to_string()))
    };
    let mut parts = vec![schema];
    if let Some(Value::Array(all)) = schema.get("allOf") {
        parts.extend(all.iter());
    }
    for part in parts {
        if part.get("if").is_none() {
            if !std::ptr::eq(part, schema) {
                out.extend(names(part.get("required")));
            }
            continue;
        }
        let (Some(cond), Some(then)) = (part.get("if"), part.get("then")) else {
            continue;
        };
        let Some(Value::Object(props)) = cond.get("properties") else {
            continue;
        };
        let holds = !props.is_empty()
            && props.iter().all(|(field, s)| match s.get("const") {
                Some(want) => known(field, want),
                None => false,
            });
        if holds {
            out.extend(names(then.get("required")));
        }
    }
    if let Some(Value::Object(dep)) = schema.get("dependentRequired") {
        for (field, needs) in dep {
            let mut p = path.to_vec();
            p.push(field.clone());
            if out.contains(field.as_str()) || present(facts, &p) {
                out.extend(names(Some(needs)));
            }
        }
    }
    out
}

fn names(v: Option<&Value>) -> BTreeSet<&str> {
    match v {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        _ => BTreeSet::new(),
    }
}

fn present(facts: &Facts, path: &[String]) -> bool {
    facts.iter().any(|a| a.path() == path)
}

/// `a.b.c` as its segments, when the expression is a plain selection chain on an identifier.
fn chain(e: &IdedExpr) -> Option<(Vec<String>, bool)> {
    let mut segments = Vec::new();
    let mut cur = e;
    let mut test = false;
    loop {
        match &cur.expr {
            Expr::Ident(n) => {
                segments.push(n.clone());
                segments.reverse();
                return Some((segments, test));
            }
            Expr::Select(s) => {
                if std::ptr::eq(cur, e) {
                    test = s.test;
                }
                segments.push(s.field.clone());
                cur = &s.operand;
            }
            _ => return None,
        }
    }
}

fn literal_json(e: &IdedExpr) -> Option<String> {
    match &e.expr {
        Expr::Literal(LiteralValue::Boolean(b)) => Some(Value::Bool(*b.inner()).to_string()),
        Expr::Literal(LiteralValue::Int(i)) => Some(i.inner().to_string()),
        Expr::Literal(LiteralValue::UInt(u)) => Some(u.inner().to_string()),
        Expr::Literal(LiteralValue::String(s)) => {
            Some(Value::String(s.inner().to_string()).to_string())
        }
        _ => None,
    }
}

/// What an expression being `positive` (true, or false) proves about the data.
pub(crate) fn facts_of(e: &IdedExpr, positive: bool) -> Vec<Atom> {
    let mut out = Vec::new();
    collect_facts(e, positive, &mut out);
    out
}

fn collect_facts(e: &IdedExpr, positive: bool, out: &mut Vec<Atom>) {
    match &e.expr {
        Expr::Select(s) if s.test => {
            if positive && let Some((path, _)) = chain(e) {
                out.push(Atom::Present(path));
            }
        }
        Expr::Select(_) => {
            if let Some((path, false)) = chain(e) {
                out.push(Atom::Equals(path, positive.to_string()));
            }
        }
        Expr::Call(c) => match (c.func_name.as_str(), c.args.as_slice()) {
            (operators::LOGICAL_NOT, [a]) => collect_facts(a, !positive, out),
            (operators::LOGICAL_AND, [a, b]) if positive => {
                collect_facts(a, true, out);
                collect_facts(b, true, out);
            }
            (operators::LOGICAL_OR, [a, b]) if !positive => {
                collect_facts(a, false, out);
                collect_facts(b, false, out);
            }
            (op @ (operators::EQUALS | operators::NOT_EQUALS), [a, b])
                if positive == (op == operators::EQUALS) =>
            {
                for (x, y) in [(a, b), (b, a)] {
                    if let (Some((path, false)), Some(v)) = (chain(x), literal_json(y)) {
                        out.push(Atom::Equals(path, v));
                    }
                }
            }
            _ => {}
        },
        _ => {}
    }
}

/// Types a compiled expression where `scope` says it runs; every problem comes back.
pub(crate) fn check_expression(
    program: &cel::Program,
    expect: Expect,
    scope: &Scope<'_>,
) -> Vec<Problem> {
    let mut t = Typer {
        scope,
        info: program.source_info(),
        source: &program.source_info().source,
        problems: Vec::new(),
        bound: Vec::new(),
    };
    let facts = scope.facts.clone();
    let root = program.expression();
    let ty = t.ty(root, &facts);
    match expect {
        Expect::Condition => {
            if !matches!(ty, Ty::Bool | Ty::Dyn) {
                t.problem(
                    root,
                    format!("the condition gives {}, not true or false", ty.name()),
                    "a condition compares or tests, e.g. `data.to_khai.so_tang > 3` or `data.tham_dinh.dat`".into(),
                );
            }
        }
        Expect::Date => match ty {
            Ty::Str { date: true, .. } | Ty::Time | Ty::Dyn => {}
            Ty::Str { date: false, .. } => {
                let what = chain(root).map(|(p, _)| p.join("."));
                let hint = match what.as_ref().and_then(|w| {
                    let p: Vec<&str> = w.split('.').collect();
                    (p.len() == 3 && p[0] == "data").then(|| (p[1].to_owned(), p[2].to_owned()))
                }) {
                    Some((form, field)) => format!(
                        "give field `{field}` `\"format\": \"date\"` (or `date-time`) in {}, so only dates are accepted",
                        (scope.form_file)(&form).unwrap_or_else(|| format!("the schema of `{form}`"))
                    ),
                    None => "`until` must give a date: a form field with `\"type\": \"string\", \"format\": \"date\"`".into(),
                };
                t.problem(
                    root,
                    format!(
                        "`until` gives text that may not be a date: `{}` has no `format: date`",
                        what.unwrap_or_else(|| t.source.to_owned())
                    ),
                    hint,
                );
            }
            other => t.problem(
                root,
                format!(
                    "`until` gives {}, not a date: the timer could never be set",
                    other.name()
                ),
                "`until` reads a date field, e.g. `data.tham_dinh.ngay_hen` with `\"type\": \"string\", \"format\": \"date\"` in its schema; to wait a length of time write `wait: { working_days: 5 }`".into(),
            ),
        },
    }
    t.problems
}

struct Typer<'a, 's> {
    scope: &'a Scope<'s>,
    info: &'a cel::common::ast::SourceInfo,
    source: &'a str,
    problems: Vec<Problem>,
    bound: Vec<(String, Ty<'s>)>,
}

impl<'s> Typer<'_, 's> {
    fn column(&self, e: &IdedExpr) -> Option<u32> {
        // The start of the leftmost part of the expression, where the reader looks first.
        let mut cur = e;
        loop {
            match &cur.expr {
                Expr::Select(s) => cur = &s.operand,
                Expr::Call(c) if c.func_name.starts_with('_') && !c.args.is_empty() => {
                    cur = &c.args[0];
                }
                _ => break,
            }
        }
        self.info.offset_for(cur.id).map(|(start, _)| start + 1)
    }

    fn text(&self, e: &IdedExpr) -> String {
        let start = self.column(e).map_or(0, |c| c as usize - 1);
        let stop = self.end(e);
        self.source
            .get(start..stop)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .unwrap_or(self.source)
            .to_owned()
    }

    /// Where the expression's text ends: the furthest offset of its parts.
    fn end(&self, e: &IdedExpr) -> usize {
        let mut max = self
            .info
            .offset_for(e.id)
            .map_or(0, |(_, stop)| stop as usize);
        let mut visit = |x: &IdedExpr| max = max.max(self.end(x));
        match &e.expr {
            Expr::Select(s) => visit(&s.operand),
            Expr::Call(c) => {
                if let Some(t) = &c.target {
                    visit(t);
                }
                for a in &c.args {
                    visit(a);
                }
            }
            Expr::List(l) => l.elements.iter().for_each(visit),
            _ => {}
        }
        // Identifiers and literals report their start; take the token to its end.
        let bytes = self.source.as_bytes();
        let mut end = max;
        if let Expr::Ident(n) = &e.expr {
            end = end.max(self.info.offset_for(e.id).map_or(0, |(s, _)| s as usize) + n.len());
        }
        if let Expr::Select(s) = &e.expr
            && let Some((_, stop)) = self.info.offset_for(e.id)
        {
            end = end.max(stop as usize + s.field.len() + 1);
        }
        if let Expr::Literal(_) = &e.expr
            && let Some((s, _)) = self.info.offset_for(e.id)
        {
            let s = s as usize;
            let quote = bytes.get(s).copied();
            let mut i = s + 1;
            match quote {
                Some(q @ (b'\'' | b'"')) => {
                    while i < bytes.len() && bytes[i] != q {
                        i += 1;
                    }
                    i += 1;
                }
                _ => {
                    while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'.')
                    {
                        i += 1;
                    }
                }
            }
            end = end.max(i);
        }
        if let Expr::Call(c) = &e.expr
            && !c.func_name.starts_with('_')
            && let Some(i) = self.source.get(end..).and_then(|rest| rest.find(')'))
        {
            end += i + 1;
        }
        end.min(self.source.len())
    }

    fn problem(&mut self, at: &IdedExpr, message: String, hint: String) {
        let column = self.column(at);
        let p = Problem {
            column,
            message,
            hint,
        };
        if !self.problems.contains(&p) {
            self.problems.push(p);
        }
    }

    fn ty(&mut self, e: &IdedExpr, facts: &Facts) -> Ty<'s> {
        match &e.expr {
            Expr::Literal(l) => match l {
                LiteralValue::Boolean(_) => Ty::Bool,
                LiteralValue::Int(_) | LiteralValue::UInt(_) | LiteralValue::Double(_) => Ty::Num,
                LiteralValue::String(_) => Ty::Str {
                    date: false,
                    values: None,
                },
                LiteralValue::Null => Ty::Null,
                LiteralValue::Bytes(_) => Ty::Bytes,
            },
            Expr::Ident(_) | Expr::Select(_) => match chain(e) {
                Some((path, test)) => self.path_ty(e, &path, test, facts),
                None => {
                    let Expr::Select(s) = &e.expr else {
                        return Ty::Dyn;
                    };
                    let base = self.ty(&s.operand, facts);
                    if s.test {
                        return Ty::Bool;
                    }
                    self.field_ty(e, &base, &s.field, None, facts)
                }
            },
            Expr::List(l) => {
                let mut elem: Option<Ty<'s>> = None;
                for x in &l.elements {
                    let t = self.ty(x, facts);
                    elem = Some(match elem {
                        None => t,
                        Some(prev) if prev.fits(&t) && !prev.is_dyn() => prev,
                        Some(_) => Ty::Dyn,
                    });
                }
                Ty::List(Box::new(elem.unwrap_or(Ty::Dyn)))
            }
            Expr::Map(m) => {
                for entry in &m.entries {
                    if let EntryExpr::MapEntry(me) = &entry.expr {
                        self.ty(&me.key, facts);
                        self.ty(&me.value, facts);
                    }
                }
                Ty::Map(None)
            }
            Expr::Struct(s) => {
                for entry in &s.entries {
                    if let EntryExpr::StructField(f) = &entry.expr {
                        self.ty(&f.value, facts);
                    }
                }
                Ty::Dyn
            }
            Expr::Comprehension(c) => {
                let range = self.ty(&c.iter_range, facts);
                let (first, second) = match &range {
                    Ty::List(elem) => match &c.iter_var2 {
                        Some(_) => (Ty::Num, (**elem).clone()),
                        None => ((**elem).clone(), Ty::Dyn),
                    },
                    Ty::Map(_) => (
                        Ty::Str {
                            date: false,
                            values: None,
                        },
                        Ty::Dyn,
                    ),
                    Ty::Dyn => (Ty::Dyn, Ty::Dyn),
                    other => {
                        let what = other.name();
                        self.problem(
                            &c.iter_range,
                            format!(
                                "`{}` is {what}: only lists and objects can be gone through",
                                self.text(&c.iter_range)
                            ),
                            "`all`, `exists`, `map` and `filter` work on lists, e.g. `data.f.muc.all(m, m.so_luong > 0)`".into(),
                        );
                        (Ty::Dyn, Ty::Dyn)
                    }
                };
                let before = self.bound.len();
                self.bound.push((c.iter_var.clone(), first));
                if let Some(v) = &c.iter_var2 {
                    self.bound.push((v.clone(), second));
                }
                let init = self.ty(&c.accu_init, facts);
                self.bound.push((c.accu_var.clone(), Ty::Dyn));
                self.ty(&c.loop_cond, facts);
                self.ty(&c.loop_step, facts);
                let result = self.ty(&c.result, facts);
                self.bound.truncate(before);
                match init {
                    Ty::Bool | Ty::Num => init,
                    Ty::List(_) => Ty::List(Box::new(Ty::Dyn)),
                    _ => result,
                }
            }
            Expr::Call(call) => self.call_ty(e, call, facts),
            Expr::Unspecified => Ty::Dyn,
        }
    }

    /// The type of a selection chain rooted at an identifier, checking each step.
    fn path_ty(&mut self, e: &IdedExpr, path: &[String], test: bool, facts: &Facts) -> Ty<'s> {
        let root = path[0].as_str();
        if let Some((_, t)) = self.bound.iter().rev().find(|(n, _)| n == root) {
            let mut ty = t.clone();
            for (i, field) in path.iter().enumerate().skip(1) {
                let last = i == path.len() - 1;
                if last && test {
                    return Ty::Bool;
                }
                ty = self.field_ty(e, &ty, field, Some(&path[..=i]), facts);
            }
            return ty;
        }
        match root {
            "dossier" => {
                let Some(field) = path.get(1) else {
                    return Ty::Map(None);
                };
                if !DOSSIER_FIELDS.contains(&field.as_str()) {
                    self.problem(
                        e,
                        format!("`dossier.{field}` is not a dossier field"),
                        super::check::unknown_hint(
                            field,
                            "dossier field",
                            DOSSIER_FIELDS.iter().copied(),
                        ),
                    );
                    return Ty::Dyn;
                }
                if path.len() == 2 && test {
                    return Ty::Bool;
                }
                if path.len() > 2 {
                    self.problem(
                        e,
                        format!("`dossier.{field}` is text: it has no fields"),
                        "dossier fields are text, compared as a whole: `dossier.channel == 'online'`".into(),
                    );
                    return Ty::Dyn;
                }
                // The values the engine gives these fields: a typo never matches.
                let values: Option<Vec<&'s str>> = match field.as_str() {
                    "channel" => Some(vec!["online", "in_person", "postal"]),
                    "owner_type" => Some(vec!["person", "organization"]),
                    _ => None,
                };
                Ty::Str {
                    date: false,
                    values,
                }
            }
            "data" => {
                let Some(id) = path.get(1) else {
                    return Ty::Map(None);
                };
                let forms = self.scope.forms;
                let Some((_, schema)) = forms.iter().find(|(f, _)| f == id) else {
                    let ids: Vec<&str> = forms.iter().map(|(f, _)| *f).collect();
                    self.problem(
                        e,
                        format!("`data.{id}` names no form of this procedure"),
                        format!(
                            "{}; `data.ID` is the data of the component or user task `ID` that has a `form`",
                            super::check::unknown_hint(id, "form", ids.iter().copied())
                        ),
                    );
                    return Ty::Dyn;
                };
                let form_path = &path[..2];
                if path.len() == 2 && test {
                    return Ty::Bool;
                }
                if !self.scope.filled.contains(id.as_str()) && !present(facts, form_path) {
                    self.problem(
                        e,
                        format!(
                            "form `{id}` is not certainly filled {}",
                            self.scope.unfilled_where
                        ),
                        (self.scope.unfilled_hint)(id),
                    );
                    return Ty::Dyn;
                }
                let Some(schema) = schema else {
                    return Ty::Dyn;
                };
                let mut ty = Ty::Map(Some(schema));
                for (i, field) in path.iter().enumerate().skip(2) {
                    let last = i == path.len() - 1;
                    if last && test {
                        // `has(...)` tests presence: the field must still exist.
                        self.field_ty(e, &ty, field, None, facts);
                        return Ty::Bool;
                    }
                    ty = self.field_ty(e, &ty, field, Some(&path[..=i]), facts);
                }
                ty
            }
            other => {
                self.problem(
                    e,
                    format!("unknown name `{other}` in expression"),
                    "expressions read `data.FORM.FIELD` and `dossier.FIELD`".into(),
                );
                Ty::Dyn
            }
        }
    }

    /// The type of `base.field`; when `path` is given, the field must be certainly present.
    fn field_ty(
        &mut self,
        e: &IdedExpr,
        base: &Ty<'s>,
        field: &str,
        path: Option<&[String]>,
        facts: &Facts,
    ) -> Ty<'s> {
        match base {
            Ty::Dyn => Ty::Dyn,
            Ty::Map(None) => Ty::Dyn,
            Ty::Map(Some(schema)) => {
                let Some(Value::Object(props)) = schema.get("properties") else {
                    return Ty::Dyn;
                };
                let form = path.and_then(|p| (p.len() > 2 && p[0] == "data").then(|| p[1].clone()));
                let Some(prop) = props.get(field) else {
                    self.problem(
                        e,
                        match &form {
                            Some(f) if path.is_some_and(|p| p.len() == 3) => {
                                format!("form `{f}` has no field `{field}`")
                            }
                            _ => format!("there is no field `{field}` here"),
                        },
                        super::check::unknown_hint(
                            field,
                            "field",
                            props.keys().map(String::as_str),
                        ),
                    );
                    return Ty::Dyn;
                };
                if let Some(path) = path {
                    let parent = &path[..path.len() - 1];
                    let required = required_fields(schema, parent, facts);
                    if !required.contains(field) && !present(facts, path) {
                        let dotted = path.join(".");
                        let file = form
                            .as_deref()
                            .and_then(|f| (self.scope.form_file)(f))
                            .unwrap_or_else(|| "the form's schema".into());
                        self.problem(
                            e,
                            format!(
                                "`{dotted}` is optional: a dossier without it makes this expression fail"
                            ),
                            format!(
                                "guard it, `has({dotted}) && …`, give a default, `has({dotted}) ? {dotted} : …`, or list `{field}` under `required` in {file}"
                            ),
                        );
                    }
                }
                schema_ty(prop)
            }
            other => {
                self.problem(
                    e,
                    format!(
                        "`{}` is {}: it has no field `{field}`",
                        self.text(e),
                        other.name()
                    ),
                    "only objects have fields".into(),
                );
                Ty::Dyn
            }
        }
    }

    fn call_ty(
        &mut self,
        e: &IdedExpr,
        call: &cel::common::ast::CallExpr,
        facts: &Facts,
    ) -> Ty<'s> {
        let name = call.func_name.as_str();
        let args = call.args.as_slice();
        match (name, args) {
            (operators::LOGICAL_AND | operators::LOGICAL_OR, [a, b]) => {
                let left = self.ty(a, facts);
                let mut inner = facts.clone();
                inner.extend(facts_of(a, name == operators::LOGICAL_AND));
                let right = self.ty(b, &inner);
                let op = if name == operators::LOGICAL_AND {
                    "&&"
                } else {
                    "||"
                };
                for (side, t) in [(a, left), (b, right)] {
                    self.want_bool(side, &t, op);
                }
                Ty::Bool
            }
            (operators::LOGICAL_NOT, [a]) => {
                let t = self.ty(a, facts);
                self.want_bool(a, &t, "!");
                Ty::Bool
            }
            (operators::NOT_STRICTLY_FALSE, [a]) => {
                self.ty(a, facts);
                Ty::Bool
            }
            (operators::CONDITIONAL, [c, a, b]) => {
                let ct = self.ty(c, facts);
                self.want_bool(c, &ct, "? :");
                let mut yes = facts.clone();
                yes.extend(facts_of(c, true));
                let mut no = facts.clone();
                no.extend(facts_of(c, false));
                let ta = self.ty(a, &yes);
                let tb = self.ty(b, &no);
                if ta.fits(&tb) && !ta.is_dyn() {
                    ta
                } else if matches!(ta, Ty::Null) {
                    tb
                } else if matches!(tb, Ty::Null) {
                    ta
                } else {
                    Ty::Dyn
                }
            }
            (
                op @ (operators::EQUALS
                | operators::NOT_EQUALS
                | operators::LESS
                | operators::LESS_EQUALS
                | operators::GREATER
                | operators::GREATER_EQUALS),
                [a, b],
            ) => {
                let ta = self.ty(a, facts);
                let tb = self.ty(b, facts);
                self.compare(e, op, (a, &ta), (b, &tb));
                Ty::Bool
            }
            (operators::ADD, [a, b]) => {
                let ta = self.ty(a, facts);
                let tb = self.ty(b, facts);
                match (&ta, &tb) {
                    (Ty::Dyn, _) | (_, Ty::Dyn) => Ty::Dyn,
                    (Ty::Num, Ty::Num) => Ty::Num,
                    (Ty::Str { .. }, Ty::Str { .. }) => Ty::Str {
                        date: false,
                        values: None,
                    },
                    (Ty::List(x), Ty::List(_)) => Ty::List(x.clone()),
                    (Ty::Time, Ty::Duration) | (Ty::Duration, Ty::Time) => Ty::Time,
                    (Ty::Duration, Ty::Duration) => Ty::Duration,
                    _ => {
                        self.mismatch(e, "+", &ta, &tb, b);
                        Ty::Dyn
                    }
                }
            }
            (
                op @ (operators::SUBSTRACT
                | operators::MULTIPLY
                | operators::DIVIDE
                | operators::MODULO),
                [a, b],
            ) => {
                let ta = self.ty(a, facts);
                let tb = self.ty(b, facts);
                match (&ta, &tb) {
                    (Ty::Dyn, _) | (_, Ty::Dyn) => Ty::Dyn,
                    (Ty::Num, Ty::Num) => Ty::Num,
                    (Ty::Time, Ty::Time) if op == operators::SUBSTRACT => Ty::Duration,
                    (Ty::Time, Ty::Duration) if op == operators::SUBSTRACT => Ty::Time,
                    _ => {
                        let sym = &op[1..op.len() - 1];
                        self.mismatch(e, sym, &ta, &tb, b);
                        Ty::Dyn
                    }
                }
            }
            (operators::NEGATE, [a]) => {
                let t = self.ty(a, facts);
                if !matches!(t, Ty::Num | Ty::Dyn | Ty::Duration) {
                    self.problem(
                        a,
                        format!("`-{}` negates {}", self.text(a), t.name()),
                        "only numbers can be negated".into(),
                    );
                }
                t
            }
            (operators::INDEX, [a, i]) => {
                let ta = self.ty(a, facts);
                let ti = self.ty(i, facts);
                match ta {
                    Ty::List(elem) => {
                        if !matches!(ti, Ty::Num | Ty::Dyn) {
                            self.problem(
                                i,
                                format!("a list is indexed by a number, not {}", ti.name()),
                                "write `data.f.danh_sach[0]`".into(),
                            );
                        }
                        *elem
                    }
                    Ty::Dyn | Ty::Map(_) => Ty::Dyn,
                    other => {
                        self.problem(
                            a,
                            format!(
                                "`{}` is {}: it cannot be indexed",
                                self.text(a),
                                other.name()
                            ),
                            "only lists and objects can be indexed".into(),
                        );
                        Ty::Dyn
                    }
                }
            }
            (operators::IN, [x, range]) => {
                let tx = self.ty(x, facts);
                let tr = self.ty(range, facts);
                match &tr {
                    Ty::List(elem) if !tx.fits(elem) => {
                        self.problem(
                            x,
                            format!(
                                "`{}` is {}, but `{}` holds {}: it is never in it",
                                self.text(x),
                                tx.name(),
                                self.text(range),
                                elem.name()
                            ),
                            "compare values of the same type".into(),
                        );
                    }
                    Ty::List(_) | Ty::Map(_) | Ty::Dyn => {}
                    other => self.problem(
                        range,
                        format!("`in` needs a list or an object, not {}", other.name()),
                        "write `data.f.x in ['a', 'b']`".into(),
                    ),
                }
                Ty::Bool
            }
            _ => {
                let target = call.target.as_ref().map(|t| self.ty(t, facts));
                let arg_tys: Vec<Ty<'s>> = args.iter().map(|a| self.ty(a, facts)).collect();
                let str_ty = Ty::Str {
                    date: false,
                    values: None,
                };
                match name {
                    "size" => {
                        let t = target.as_ref().or(arg_tys.first());
                        if let Some(t) = t
                            && matches!(t, Ty::Num | Ty::Bool | Ty::Null | Ty::Time | Ty::Duration)
                        {
                            self.problem(
                                e,
                                format!("`size` of {}", t.name()),
                                "`size` counts the items of a list, the keys of an object or the characters of a text".into(),
                            );
                        }
                        Ty::Num
                    }
                    "contains" | "startsWith" | "endsWith" | "matches" => {
                        if let Some(t) = &target
                            && !matches!(t, Ty::Str { .. } | Ty::Dyn)
                        {
                            self.problem(
                                e,
                                format!("`{name}` works on text, not {}", t.name()),
                                format!("write `data.f.ten.{name}('…')` on a text field"),
                            );
                        }
                        Ty::Bool
                    }
                    "int" | "uint" | "double" => Ty::Num,
                    "string" => str_ty,
                    "bool" => Ty::Bool,
                    "timestamp" => Ty::Time,
                    "duration" => Ty::Duration,
                    "max" | "min" => Ty::Num,
                    n if n.starts_with("get") => Ty::Num,
                    _ => Ty::Dyn,
                }
            }
        }
    }

    fn want_bool(&mut self, e: &IdedExpr, t: &Ty<'_>, op: &str) {
        if !matches!(t, Ty::Bool | Ty::Dyn) {
            let text = self.text(e);
            self.problem(
                e,
                format!("`{op}` needs true or false, but `{text}` is {}", t.name()),
                format!("compare it: `{text} == …`"),
            );
        }
    }

    fn mismatch(&mut self, e: &IdedExpr, op: &str, a: &Ty<'_>, b: &Ty<'_>, right: &IdedExpr) {
        self.problem(
            e,
            format!(
                "`{}` applies `{op}` to {} and {}: evaluation fails",
                self.text(e),
                a.name(),
                b.name()
            ),
            literal_fix(right, a).unwrap_or_else(|| "both sides must have the same type".into()),
        );
    }

    fn compare(
        &mut self,
        e: &IdedExpr,
        op: &str,
        (a, ta): (&IdedExpr, &Ty<'_>),
        (b, tb): (&IdedExpr, &Ty<'_>),
    ) {
        let equality = op == operators::EQUALS || op == operators::NOT_EQUALS;
        let sym = &op[1..op.len() - 1];
        let null_side = matches!(ta, Ty::Null) || matches!(tb, Ty::Null);
        if !(ta.fits(tb) || (equality && null_side)) {
            let text = self.text(e);
            let fix = literal_fix(b, ta)
                .or_else(|| literal_fix(a, tb))
                .unwrap_or_else(|| "compare values of the same type".into());
            self.problem(
                e,
                if equality {
                    format!(
                        "`{text}` compares {} with {}: it is never {}",
                        ta.name(),
                        tb.name(),
                        if op == operators::EQUALS {
                            "true"
                        } else {
                            "false"
                        }
                    )
                } else {
                    format!(
                        "`{text}` compares {} with {}: evaluation fails",
                        ta.name(),
                        tb.name()
                    )
                },
                fix,
            );
            return;
        }
        if !equality && matches!(ta, Ty::List(_) | Ty::Map(_) | Ty::Null | Ty::Bytes) {
            self.problem(
                e,
                format!("`{sym}` cannot order {}", ta.name()),
                "order numbers, texts and dates".into(),
            );
            return;
        }
        // A text field with a fixed list of values, compared with a text that is not one.
        for (field, lit) in [(ta, b), (tb, a)] {
            if let (
                Ty::Str {
                    values: Some(values),
                    ..
                },
                Expr::Literal(LiteralValue::String(s)),
            ) = (field, &lit.expr)
                && equality
                && values.len() > 1
                && !values.contains(&s.inner())
            {
                let s = s.inner().to_string();
                self.problem(
                    lit,
                    format!("`'{s}'` is not one of the values this field can have"),
                    match super::check::suggest(&s, values.iter().copied()) {
                        Some(v) => format!("did you mean `'{v}'`? allowed: {}", values.join(", ")),
                        None => format!("allowed: {}", values.join(", ")),
                    },
                );
            }
        }
    }
}

/// The fix for a literal of the wrong type compared with a field of type `want`.
fn literal_fix(lit: &IdedExpr, want: &Ty<'_>) -> Option<String> {
    match (&lit.expr, want) {
        (Expr::Literal(LiteralValue::String(s)), Ty::Num) => {
            let s = s.inner();
            let digits: String = s
                .chars()
                .filter(|c| !matches!(c, '.' | ',' | ' '))
                .collect();
            s.trim()
                .parse::<f64>()
                .ok()
                .map(|_| format!("the field is a number: write `{}` without quotes", s.trim()))
                .or_else(|| {
                    (!digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()))
                        .then(|| format!("the field is a number: write `{digits}`, without quotes or thousands separators"))
                })
        }
        (Expr::Literal(LiteralValue::String(s)), Ty::Bool)
            if matches!(s.inner(), "true" | "false") =>
        {
            Some(format!(
                "the field is true/false: write `{}` without quotes",
                s.inner()
            ))
        }
        (
            Expr::Literal(LiteralValue::Int(_) | LiteralValue::UInt(_) | LiteralValue::Double(_)),
            Ty::Str { .. },
        ) => Some("the field is text: quote the value, e.g. `'3'`".into()),
        (Expr::Literal(LiteralValue::Boolean(_)), Ty::Num | Ty::Str { .. }) => {
            Some(format!("the field is {}, not true/false", want.name()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(source: &str) -> Vec<String> {
        let schema = serde_json::json!({
            "type": "object",
            "properties": {
                "n": { "type": "integer" },
                "b": { "type": "boolean" },
                "s": { "enum": ["một", "hai"] },
                "d": { "type": "string", "format": "date" },
                "l": { "type": "array", "items": { "type": "object",
                       "properties": { "q": { "type": "integer" } }, "required": ["q"] } },
                "o": { "type": "string" }
            },
            "required": ["n", "b", "s", "d", "l"]
        });
        let forms = [("f", Some(&schema))];
        let filled = BTreeSet::from(["f".to_owned()]);
        let facts = Facts::new();
        let hint = |_: &str| String::new();
        let file = |_: &str| None;
        let scope = Scope {
            forms: &forms,
            filled: &filled,
            facts: &facts,
            unfilled_where: "here",
            unfilled_hint: &hint,
            form_file: &file,
        };
        let program = crate::definition::compile_expression(source).unwrap();
        check_expression(&program, Expect::Condition, &scope)
            .into_iter()
            .map(|p| format!("{:?}: {}", p.column, p.message))
            .collect()
    }

    /// Well-typed conditions pass; each mistake is one problem at its column, and no input
    /// (Vietnamese text included) makes the typing panic.
    #[test]
    fn conditions_are_typed_against_the_schema() {
        for ok in [
            "data.f.n > 3 && data.f.b",
            "data.f.s == 'một' || data.f.d >= '2026-01-01'",
            "data.f.l.all(x, x.q > 0) && size(data.f.l) > 1",
            "has(data.f.o) ? data.f.o == 'x' : false",
            "!has(data.f.o) || data.f.o.startsWith('a')",
            "data.f.n in [1, 2, 3]",
            "dossier.channel == 'online'",
        ] {
            assert_eq!(problems(ok), Vec::<String>::new(), "{ok}");
        }
        assert_eq!(
            problems("data.f.s == 'ba' && data.f.n > 'bốn'"),
            vec![
                "Some(13): `'ba'` is not one of the values this field can have".to_owned(),
                "Some(21): `data.f.n > 'bốn'` compares a number with text: evaluation fails"
                    .to_owned()
            ]
        );
        assert_eq!(
            problems("dossier.channel == 'truc_tuyen'"),
            vec![
                "Some(20): `'truc_tuyen'` is not one of the values this field can have".to_owned()
            ]
        );
        assert_eq!(
            problems("data.f.o == 'x'"),
            vec![
                "Some(1): `data.f.o` is optional: a dossier without it makes this expression fail"
                    .to_owned()
            ]
        );
        for odd in [
            "[data.f][0].n == 1",
            "data.f['n'] == 1",
            "{'a': data.f.n}.a == 1",
            "data.f.l[0].q + 'é' == 'ế'",
            "size(data.f.n) == 1",
            "-data.f.b",
            "data.f.l.map(x, x.q).exists(y, y == 'ạ')",
            "timestamp(data.f.d) > timestamp('2026-01-01T00:00:00Z')",
        ] {
            let _ = problems(odd);
        }
    }
    /// The typing treats integers, unsigned integers and doubles as one "number": CEL must
    /// then compare them with each other (form data reaches CEL as unsigned integers).
    #[test]
    fn cel_compares_numbers_of_every_kind() {
        let ctx = cel::Context::default();
        for source in [
            "5u > 3", "5u == 5", "5 >= 5u", "2.5 > 1u", "2u < 2.5", "3 == 3.0",
        ] {
            let program = cel::Program::compile(source).unwrap();
            assert_eq!(
                program.execute(&ctx).map_err(|e| e.to_string()),
                Ok(cel::Value::Bool(true)),
                "{source}"
            );
        }
        // What the typing refuses does fail at run time.
        for source in ["5u > '3'", "true < false || 1 > 'a'"] {
            let program = cel::Program::compile(source).unwrap();
            assert!(program.execute(&ctx).is_err(), "{source}");
        }
    }
}
