//! A deployed procedure made ready to run: form schemas and CEL programs compiled once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::Value;

use crate::definition::{
    DOSSIER_FIELDS, Definition, Duration, Fee, FeeDue, Procedure, Step, compile_expression,
    free_names,
};
use crate::plan::Plan;
use cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString, CelUInt,
};
use cel::common::value::Val;

pub use crate::plan::Facts;

thread_local! {
    static ROOT_CONTEXT: cel::Context<'static, 'static> = cel::Context::default();
}

/// One violation of a form's JSON Schema, at the JSON pointer of the offending value.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FormViolation {
    /// The form (component or task id).
    pub form: String,
    /// JSON pointer inside the form's data (`/ngay_sinh`), empty for the whole form.
    pub path: String,
    /// JSON pointer into the command, and so into the request body it came from: forms by
    /// id on a filing or supplement (`/data/to_khai/ngay_sinh`), the task's own form on a
    /// task completion (`/data/ngay_hop_hoi_dong`).
    #[serde(default)]
    pub pointer: String,
    pub message: String,
}

impl FormViolation {
    /// A violation inside form `form`, pointed at as a filing or supplement carries it.
    pub fn new(form: &str, path: &str, message: impl Into<String>) -> FormViolation {
        FormViolation {
            form: form.to_owned(),
            path: path.to_owned(),
            pointer: ["/data/", form, path].concat(),
            message: message.into(),
        }
    }
}

/// Why a condition could not decide: the evaluation error, and the values the expression read.
#[derive(Debug, Clone, PartialEq)]
pub struct ConditionFailure {
    pub message: String,
    /// Each field the expression names (`data.don.so_tang`, `dossier.channel`) with the
    /// dossier's value; a field not filled in is `null`.
    pub values: BTreeMap<String, Value>,
}

/// A procedure version ready to decide commands: everything compiled at deployment.
pub struct CompiledProcedure {
    pub definition: Definition,
    validators: HashMap<String, jsonschema::Validator>,
    programs: HashMap<String, Expression>,
}

/// A compiled expression and what it reads, so that an evaluation converts only that.
struct Expression {
    program: cel::Program,
    /// The forms of `data` it names (`data.to_khai.…` → `to_khai`); `None` when it uses
    /// `data` as a whole (`data["x"]`, `size(data)`), which then is converted entirely.
    forms: Option<Vec<FormRead>>,
    /// The fields of `dossier` it reads: `None` when it does not read `dossier`, all of
    /// [`DOSSIER_FIELDS`] when it uses `dossier` as a whole.
    dossier: Option<Vec<&'static str>>,
    /// The same condition for the fast path, when it is simple enough.
    plan: Option<Plan>,
}

/// One form an expression reads.
struct FormRead {
    form: String,
    /// The form's fields it selects (`data.to_khai.loai_phieu` → `loai_phieu`); `None` when
    /// it uses the form as a whole (`size(data.to_khai)`, `data.to_khai["x"]`). Selecting a
    /// field sees the same value, or the same missing key, in the fields named as in the
    /// whole form, so only those are converted.
    fields: Option<Vec<String>>,
}

impl Expression {
    fn new(program: cel::Program) -> Expression {
        let mut forms = Some(Vec::<FormRead>::new());
        let mut dossier: Option<Vec<&'static str>> = None;
        for name in free_names(&program) {
            match name.path.first().map(String::as_str) {
                Some("data") => match (name.path.get(1), forms.as_mut()) {
                    (Some(form), Some(list)) => {
                        let i = match list.iter().position(|r| &r.form == form) {
                            Some(i) => i,
                            None => {
                                list.push(FormRead {
                                    form: form.clone(),
                                    fields: Some(Vec::new()),
                                });
                                list.len() - 1
                            }
                        };
                        let read = &mut list[i];
                        match (name.path.get(2), read.fields.as_mut()) {
                            (Some(field), Some(fields)) => {
                                if !fields.contains(field) {
                                    fields.push(field.clone());
                                }
                            }
                            _ => read.fields = None,
                        }
                    }
                    _ => forms = None,
                },
                Some("dossier") => {
                    let fields = dossier.get_or_insert_with(Vec::new);
                    let named = name
                        .path
                        .get(1)
                        .and_then(|f| DOSSIER_FIELDS.iter().find(|&&d| d == f.as_str()));
                    match (name.path.len(), named) {
                        // A field no dossier has: absent either way.
                        (2.., None) => {}
                        (2.., Some(f)) => {
                            if !fields.contains(f) {
                                fields.push(f);
                            }
                        }
                        _ => {
                            for f in DOSSIER_FIELDS {
                                if !fields.contains(f) {
                                    fields.push(f);
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        Expression {
            plan: Plan::compile(program.expression()),
            program,
            forms,
            dossier,
        }
    }

    /// The `data` variable: the named forms only, and of those the named fields only.
    fn data<F: Facts + ?Sized>(&self, state: &F) -> Box<dyn Val> {
        let entries: HashMap<CelMapKey<'static>, Box<dyn Val>> = match &self.forms {
            None => state
                .forms()
                .iter()
                .map(|(k, v)| (CelMapKey::from(k.clone()), json_val(v)))
                .collect(),
            Some(forms) => forms
                .iter()
                .filter_map(|r| {
                    let v = state.forms().get(&r.form)?;
                    let val = match (&r.fields, &**v) {
                        (Some(fields), Value::Object(o)) => Box::new(CelMap::from(
                            fields
                                .iter()
                                .filter_map(|f| {
                                    o.get(f).map(|v| (CelMapKey::from(f.clone()), json_val(v)))
                                })
                                .collect::<HashMap<_, _>>(),
                        ))
                            as Box<dyn Val>,
                        _ => json_val(v),
                    };
                    Some((CelMapKey::from(r.form.clone()), val))
                })
                .collect(),
        };
        Box::new(CelMap::from(entries))
    }
}

impl Expression {
    /// The fields the expression names, with the dossier's values (`null` when absent); a
    /// form or `data` used as a whole is given whole.
    fn values_read<F: Facts + ?Sized>(&self, state: &F) -> BTreeMap<String, Value> {
        let mut out = BTreeMap::new();
        match &self.forms {
            None => {
                for (k, v) in state.forms().iter() {
                    out.insert(["data.", k].concat(), Value::clone(v));
                }
            }
            Some(forms) => {
                for r in forms {
                    let form = state.forms().get(&r.form);
                    match &r.fields {
                        Some(fields) => {
                            for f in fields {
                                let v = form.and_then(|v| v.get(f)).cloned().unwrap_or_default();
                                out.insert(["data.", &r.form, ".", f].concat(), v);
                            }
                        }
                        None => {
                            let v = form.map(|v| Value::clone(v)).unwrap_or_default();
                            out.insert(["data.", &r.form].concat(), v);
                        }
                    }
                }
            }
        }
        for f in self.dossier.iter().flatten() {
            let v = state.field(f).map(Value::String).unwrap_or_default();
            out.insert(["dossier.", f].concat(), v);
        }
        out
    }

    fn evaluate<F: Facts + ?Sized>(&self, source: &str, state: &F) -> Result<cel::Value, String> {
        let data = self.data(state);
        let dossier: Box<dyn Val> = match &self.dossier {
            Some(fields) => dossier_val(state, fields),
            None => Box::new(CelNull),
        };
        // Building CEL's standard library is most of an evaluation's cost: each thread builds
        // it once, and every evaluation runs in a child scope holding only its variables.
        ROOT_CONTEXT.with(|root| {
            let mut ctx = root.new_inner_scope();
            ctx.add_variable_as_val("data", data);
            ctx.add_variable_as_val("dossier", dossier);
            self.program
                .execute(&ctx)
                .map_err(|e| format!("`{source}` could not be evaluated: {e}"))
        })
    }
}

/// A JSON value as a CEL value, built directly (numbers as serde gives them to CEL: unsigned
/// when non-negative integers, signed when negative, double otherwise).
fn json_val(v: &Value) -> Box<dyn Val> {
    match v {
        Value::Null => Box::new(CelNull),
        Value::Bool(b) => Box::new(CelBool::from(*b)),
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => Box::new(CelUInt::from(u)),
            (None, Some(i)) => Box::new(CelInt::from(i)),
            _ => Box::new(CelDouble::from(n.as_f64().unwrap_or(f64::NAN))),
        },
        Value::String(s) => Box::new(CelString::from(s.clone())),
        Value::Array(items) => Box::new(CelList::from(
            items.iter().map(json_val).collect::<Vec<_>>(),
        )),
        Value::Object(fields) => Box::new(CelMap::from(
            fields
                .iter()
                .map(|(k, v)| (CelMapKey::from(k.clone()), json_val(v)))
                .collect::<HashMap<_, _>>(),
        )),
    }
}

/// The `dossier` variable: the fields of [`DOSSIER_FIELDS`] the expression reads.
fn dossier_val<F: Facts + ?Sized>(state: &F, fields: &[&'static str]) -> Box<dyn Val> {
    Box::new(CelMap::from(
        fields
            .iter()
            .filter_map(|&name| {
                let value = state.field(name)?;
                Some((
                    CelMapKey::from(name.to_owned()),
                    Box::new(CelString::from(value)) as Box<dyn Val>,
                ))
            })
            .collect::<HashMap<_, _>>(),
    ))
}

impl std::fmt::Debug for CompiledProcedure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledProcedure")
            .field("code", &self.definition.procedure.code)
            .field("version", &self.definition.procedure.version)
            .finish()
    }
}

impl CompiledProcedure {
    /// Compiles a checked definition. The loader has already proved every schema and
    /// expression compiles, so a failure here is reported, not assumed away.
    pub fn compile(definition: Definition) -> Result<Arc<CompiledProcedure>, String> {
        let mut validators = HashMap::new();
        for (path, schema) in &definition.forms {
            let v = crate::formats::form_validator(schema)
                .map_err(|e| format!("form schema {path} does not compile: {e}"))?;
            validators.insert(path.clone(), v);
        }
        let mut programs = HashMap::new();
        for source in expressions(&definition.procedure) {
            let p = compile_expression(source)
                .map_err(|e| format!("expression `{source}` does not compile: {}", e.message))?;
            programs.insert(source.to_owned(), Expression::new(p));
        }
        Ok(Arc::new(CompiledProcedure {
            definition,
            validators,
            programs,
        }))
    }

    pub fn procedure(&self) -> &Procedure {
        &self.definition.procedure
    }

    /// Checks one form's data against its schema; every violation comes back with its path.
    pub fn validate_form(&self, form: &str, data: &Value) -> Vec<FormViolation> {
        let Some(path) = self.procedure().form_path(form) else {
            return vec![FormViolation::new(
                form,
                "",
                format!("`{form}` has no form in this procedure"),
            )];
        };
        let Some(validator) = self.validators.get(path) else {
            return vec![FormViolation::new(
                form,
                "",
                format!("form schema {path} is not loaded"),
            )];
        };
        // Most forms are valid: `is_valid` stops early and builds no error, which costs
        // less than walking `iter_errors` to its end.
        if validator.is_valid(data) {
            return Vec::new();
        }
        validator
            .iter_errors(data)
            .map(|e| FormViolation::new(form, e.instance_path().as_str(), e.to_string()))
            .collect()
    }

    /// Evaluates a condition. An expression that cannot be evaluated (a field not filled in,
    /// a type mismatch) or that gives something other than a boolean is an error, with the
    /// values it read: a decision then holds with an incident instead of guessing a branch.
    pub fn condition<F: Facts + ?Sized>(
        &self,
        source: &str,
        state: &F,
    ) -> Result<bool, ConditionFailure> {
        let Some(p) = self.programs.get(source) else {
            return Err(ConditionFailure {
                message: not_compiled(source),
                values: BTreeMap::new(),
            });
        };
        if let Some(holds) = p.plan.as_ref().and_then(|plan| plan.holds(state)) {
            return Ok(holds);
        }
        let message = match p.evaluate(source, state) {
            Ok(cel::Value::Bool(b)) => return Ok(b),
            Ok(other) => format!("`{source}` gave {other:?}, not true or false"),
            Err(e) => e,
        };
        Err(ConditionFailure {
            message,
            values: p.values_read(state),
        })
    }

    /// The fields an expression names, with the dossier's values (`null` when absent).
    pub fn values_read<F: Facts + ?Sized>(
        &self,
        source: &str,
        state: &F,
    ) -> BTreeMap<String, Value> {
        self.programs
            .get(source)
            .map(|p| p.values_read(state))
            .unwrap_or_default()
    }

    /// Whether a condition holds, an evaluation failure counting as not (`required_when`,
    /// fee reductions, processing-time cases: nothing stops on them).
    pub fn holds<F: Facts + ?Sized>(&self, source: &str, state: &F) -> bool {
        self.condition(source, state).unwrap_or(false)
    }

    /// Evaluates an expression over a dossier: `data` holds its forms, `dossier` the fields in
    /// [`crate::definition::DOSSIER_FIELDS`]. Only what the expression names is converted.
    pub fn evaluate<F: Facts + ?Sized>(
        &self,
        source: &str,
        state: &F,
    ) -> Result<cel::Value, String> {
        match self.programs.get(source) {
            Some(p) => p.evaluate(source, state),
            None => Err(not_compiled(source)),
        }
    }

    /// The processing time of a dossier: the first case whose condition holds, else the
    /// procedure's.
    pub fn processing_time_for<F: Facts + ?Sized>(&self, state: &F) -> Duration {
        let p = self.procedure();
        p.processing_time_cases
            .iter()
            .find(|c| self.holds(&c.condition, state))
            .map_or(p.processing_time, |c| c.processing_time)
    }

    /// What a dossier owes for one fee: the first reduction whose `when` holds over its data,
    /// else the full amount. A condition that cannot be evaluated (a field not filled) does not
    /// hold, so the full amount is due.
    pub fn fee_amount_due<'f, F: Facts + ?Sized>(
        &self,
        fee: &'f Fee,
        state: &F,
    ) -> (u64, Option<&'f str>) {
        fee.reductions
            .iter()
            .find(|r| self.holds(&r.when, state))
            .map_or((fee.amount_vnd, None), |r| {
                (r.amount_vnd, Some(r.name.as_str()))
            })
    }

    /// Each fee of the procedure with what the dossier owes, has paid (`paid`, by fee code)
    /// and still owes.
    pub fn fee_balances<F: Facts + ?Sized>(
        &self,
        state: &F,
        paid: impl Fn(&str) -> u64,
    ) -> Vec<FeeBalance> {
        self.procedure()
            .fees
            .iter()
            .map(|f| {
                let (amount_due_vnd, reduction) = self.fee_amount_due(f, state);
                let paid_vnd = paid(&f.code);
                FeeBalance {
                    code: f.code.clone(),
                    name: f.name.clone(),
                    due: f.due,
                    full_amount_vnd: f.amount_vnd,
                    reduction: reduction.map(str::to_owned),
                    amount_due_vnd,
                    paid_vnd,
                    outstanding_vnd: amount_due_vnd.saturating_sub(paid_vnd),
                }
            })
            .collect()
    }

    /// Whether the processing time runs in working time (and so pauses in working minutes).
    pub fn counts_working_time(&self) -> bool {
        matches!(
            self.procedure().processing_time,
            Duration::WorkingDays(_) | Duration::WorkingHours(_)
        )
    }
}

/// One fee of a dossier: what is owed after reductions, what was paid, what is still due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeeBalance {
    pub code: String,
    pub name: String,
    pub due: FeeDue,
    pub full_amount_vnd: u64,
    /// The reduction applied, by name, if any.
    pub reduction: Option<String>,
    pub amount_due_vnd: u64,
    pub paid_vnd: u64,
    pub outstanding_vnd: u64,
}

fn not_compiled(source: &str) -> String {
    format!("expression `{source}` was not compiled")
}

fn expressions(p: &Procedure) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    out.extend(
        p.components
            .iter()
            .filter_map(|c| c.required_when.as_deref()),
    );
    for f in &p.fees {
        out.extend(f.reductions.iter().map(|r| r.when.as_str()));
    }
    out.extend(p.processing_time_cases.iter().map(|c| c.condition.as_str()));
    for s in &p.steps {
        match s {
            Step::Decision(d) => out.extend(d.when.iter().map(|b| b.condition.as_str())),
            Step::Timer(t) => out.extend(t.until.as_deref()),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dossier::{Channel, Dossier};
    use serde_json::json;

    fn eval(source: &str, data: Value) -> cel::Value {
        let program = compile_expression(source).unwrap();
        let data = json_val(&data);
        ROOT_CONTEXT.with(|root| {
            let mut ctx = root.new_inner_scope();
            ctx.add_variable_as_val("data", data);
            program.execute(&ctx).unwrap()
        })
    }

    /// Form data reaches CEL with JSON's types: what the shipped conditions compare against.
    #[test]
    fn json_form_data_converts_to_the_cel_values_conditions_compare() {
        let data = serde_json::json!({"f": {
            "n": 1, "neg": -2, "x": 2.5, "s": "khác", "t": true, "none": null,
            "l": [true, 3], "m": {"k": "v"}
        }});
        for source in [
            "data.f.n == 1",
            "data.f.neg < 0",
            "data.f.x > 1.5",
            "data.f.s == 'khác'",
            "data.f.t && !has(data.f.missing)",
            "data.f.none == null",
            "data.f.l[0] && data.f.l[1] == 3",
            "size(data.f.m) == 1 && data.f.m.k == 'v'",
        ] {
            assert_eq!(
                eval(source, data.clone()),
                cel::Value::Bool(true),
                "{source}"
            );
        }
    }

    /// Converting only the selected forms and fields gives the same results (and the same
    /// errors, which end up in events) as converting all of `data` and `dossier`.
    #[test]
    fn narrowed_conversion_evaluates_like_the_whole() {
        let state = filed_state(
            Channel::Online,
            std::collections::BTreeMap::from([
                (
                    "f".to_owned(),
                    serde_json::json!({"n": 1, "s": "x", "t": true, "m": {"k": "v"}, "l": [1, 2]}),
                ),
                ("g".to_owned(), serde_json::json!([1, 2])),
                ("h".to_owned(), serde_json::json!("text")),
            ]),
        );
        for source in [
            "data.f.n == 1",
            "data.f.missing == 1",
            "has(data.f.missing) || has(data.f.t)",
            "data.f.t && data.f.m.k == 'v' && data.f.l[1] == 2",
            "size(data.f) == 5 && data.f.n == 1",
            "data.f['n'] == 1 && data.f.s == 'x'",
            "data.f.n + data.f.s",
            "data.f.m",
            "data.g[0] == 1 && data.g.x == 1",
            "data.h.x == 1",
            "data.none.x == 1",
            "size(data) == 3",
            "[data.f].all(x, x.n == 1)",
            "dossier.channel == 'online' && dossier.owner_id == '001099012345'",
            "dossier.unknown == 1",
            "size(dossier) > 0 && dossier.channel == 'online'",
        ] {
            let narrowed = Expression::new(compile_expression(source).unwrap());
            let whole = Expression {
                program: compile_expression(source).unwrap(),
                forms: None,
                dossier: Some(DOSSIER_FIELDS.to_vec()),
                plan: None,
            };
            assert_eq!(
                format!("{:?}", narrowed.evaluate(source, &state)),
                format!("{:?}", whole.evaluate(source, &state)),
                "{source}"
            );
        }
    }

    /// A dossier just filed with these forms (citizen 001099012345 at agency 000.00.01.H59).
    fn filed_state(channel: Channel, data: std::collections::BTreeMap<String, Value>) -> Dossier {
        use crate::dossier::{Event, Owner, OwnerId};
        let filed = Event::Filed {
            code: "000.00.01.H59-260302-0001".into(),
            procedure_code: "2.000488".into(),
            procedure_version: 1,
            procedure_name: "p".into(),
            agency_code: "000.00.01.H59".into(),
            competent_agency: None,
            online_level: None,
            owner: Box::new(Owner {
                id: OwnerId::parse("001099012345").unwrap(),
                name: "A".into(),
                email: None,
                phone: None,
            }),
            channel,
            data: data
                .into_iter()
                .map(|(k, v)| (k, std::sync::Arc::new(v)))
                .collect(),
            documents: Vec::new(),
        };
        Dossier::from_filed(chrono::Utc::now(), &filed).unwrap()
    }

    /// A dossier filed in person whose form `f` is `f` (no form when `None`).
    fn state_with(f: Option<Value>) -> Dossier {
        filed_state(
            Channel::InPerson,
            f.into_iter().map(|v| ("f".to_owned(), v)).collect(),
        )
    }

    /// The fast path (crate::plan) answers a condition only where CEL gives the same boolean
    /// without an error, over every pairing of plain and awkward values, missing fields and
    /// forms included; and it does answer the shipped conditions' usual cases.
    #[test]
    fn the_fast_path_agrees_with_cel() {
        let values = [
            json!(true),
            json!(false),
            json!(0),
            json!(1),
            json!(2),
            json!(-1),
            json!(u64::MAX),
            json!(1.0),
            json!(2.5),
            json!("khac"),
            json!(""),
            json!(null),
            json!([1]),
            json!({"k": 1}),
        ];
        let sources = [
            "data.f.a || data.f.b",
            "data.f.a && data.f.b",
            "!data.f.a",
            "data.f.a == 1 && data.f.b",
            "data.f.a == 2",
            "data.f.a != 2",
            "data.f.a == 1u",
            "data.f.a == -1",
            "data.f.a == 18446744073709551615u",
            "data.f.a == 'khac'",
            "data.f.a == data.f.b",
            "data.f.a != data.f.b",
            "data.f.a == null",
            "data.f.a == true || data.f.b == false",
            "!(data.f.a == 1) && data.f.b != 'x'",
            "data.f.a || true",
            "false && data.f.a",
            "true && data.f.a",
            "data.f.a == 1.0",
            "data.g.a == 1",
            "dossier.channel != 'online'",
            "dossier.channel == 'in_person' && data.f.a",
            "dossier.owner_type == 'person' || data.f.b",
        ];
        let (mut answered, mut total) = (0, 0);
        for a in values.iter().map(Some).chain([None]) {
            for b in values.iter().map(Some).chain([None]) {
                let mut form = serde_json::Map::new();
                form.extend(a.map(|v| ("a".to_owned(), v.clone())));
                form.extend(b.map(|v| ("b".to_owned(), v.clone())));
                let state = state_with(Some(Value::Object(form)));
                for source in sources {
                    let e = Expression::new(compile_expression(source).unwrap());
                    total += 1;
                    if let Some(fast) = e.plan.as_ref().and_then(|p| p.holds(&state)) {
                        answered += 1;
                        assert_eq!(
                            e.evaluate(source, &state).map_err(|_| ()),
                            Ok(cel::Value::Bool(fast)),
                            "{source} with a = {a:?}, b = {b:?}"
                        );
                    }
                }
            }
        }
        // Not a fast path in name only: it answers wherever the values are plain and of the
        // kinds compared (1,419 of the 5,175 pairings here; the rest are CEL's to decide).
        assert!(answered * 4 > total, "{answered} of {total}");
        // A form that is not an object, and no form at all, go to CEL.
        for state in [state_with(Some(json!([1]))), state_with(None)] {
            let e = Expression::new(compile_expression("data.f.a == 1").unwrap());
            assert_eq!(e.plan.as_ref().and_then(|p| p.holds(&state)), None);
        }
    }

    /// Every condition of the shipped procedures compiles to a plan.
    #[test]
    fn shipped_conditions_take_the_fast_path() {
        for source in [
            "data.to_khai.la_sinh_vien || data.to_khai.la_nguoi_co_cong",
            "dossier.channel != 'online'",
            "data.to_khai.loai_phieu == 1 && data.to_khai.uy_quyen && data.to_khai.quan_he_uy_quyen == 'khac'",
            "data.tham_dinh.can_xac_minh || data.tham_dinh.co_an_tich",
            "data.to_khai.loai_phieu == 2",
        ] {
            let program = compile_expression(source).unwrap();
            assert!(Plan::compile(program.expression()).is_some(), "{source}");
        }
        for source in [
            "has(data.f.a)",
            "size(data.f.l) > 0",
            "data.f.x > 1",
            "data.f['a'] == 1",
        ] {
            let program = compile_expression(source).unwrap();
            assert_eq!(Plan::compile(program.expression()), None, "{source}");
        }
    }
}
