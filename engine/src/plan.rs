//! A fast path for the conditions definitions are made of: comparisons of form fields and
//! dossier fields with literals, joined by `&&`, `||` and `!`.
//!
//! Every branch and every `required_when` of a procedure is such a condition, and CEL's
//! interpreter spent most of a condition's time building its scope and boxing values (about
//! 8,000 instructions an evaluation, 15% of the decision core). A [`Plan`] is compiled from
//! the same parsed expression and evaluated straight on the dossier's JSON. It answers only
//! when it is sure to give what CEL gives: every operand present and of a plain type, no
//! error anywhere. Anything else (a field missing, a list, a double, a function, a mixed-type
//! comparison) gives `None`, and the caller evaluates with CEL as before, so errors and their
//! messages, which are recorded in events, always come from CEL.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use cel::common::ast::{Expr, IdedExpr, LiteralValue, operators};
use serde_json::Value;

/// What an expression reads of a dossier: its forms, and the fields of the `dossier` variable
/// ([`crate::definition::DOSSIER_FIELDS`]). The dossier's state implements it; the runtime
/// needs nothing else of it.
pub trait Facts {
    fn forms(&self) -> &BTreeMap<String, Arc<Value>>;
    fn field(&self, name: &str) -> Option<String>;
}

/// A condition compiled for the fast path.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Plan {
    Literal(Atom<'static>),
    /// `data.<form>.<field>`.
    FormField {
        form: String,
        field: String,
    },
    /// `dossier.<field>`, a field of [`crate::definition::DOSSIER_FIELDS`].
    DossierField(&'static str),
    Equals(Box<Plan>, Box<Plan>),
    NotEquals(Box<Plan>, Box<Plan>),
    And(Box<Plan>, Box<Plan>),
    Or(Box<Plan>, Box<Plan>),
    Not(Box<Plan>),
}

/// A plain value: what the fast path compares.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Atom<'a> {
    Null,
    Bool(bool),
    /// Integers, signed or not, as CEL compares them: by value.
    Int(i128),
    Str(Cow<'a, str>),
}

impl Plan {
    /// The plan of an expression, or `None` when it uses anything beyond the fast path.
    pub(crate) fn compile(e: &IdedExpr) -> Option<Plan> {
        match &e.expr {
            Expr::Literal(l) => Some(Plan::Literal(match l {
                LiteralValue::Boolean(b) => Atom::Bool(*b.inner()),
                LiteralValue::Int(i) => Atom::Int(i128::from(*i.inner())),
                LiteralValue::UInt(u) => Atom::Int(i128::from(*u.inner())),
                LiteralValue::String(s) => Atom::Str(Cow::Owned(s.inner().to_owned())),
                LiteralValue::Null => Atom::Null,
                LiteralValue::Double(_) | LiteralValue::Bytes(_) => return None,
            })),
            Expr::Select(s) if !s.test => match &s.operand.expr {
                Expr::Ident(root) if root == "dossier" => crate::definition::DOSSIER_FIELDS
                    .iter()
                    .find(|f| **f == s.field)
                    .map(|f| Plan::DossierField(f)),
                Expr::Select(form) if !form.test => match &form.operand.expr {
                    Expr::Ident(root) if root == "data" => Some(Plan::FormField {
                        form: form.field.clone(),
                        field: s.field.clone(),
                    }),
                    _ => None,
                },
                _ => None,
            },
            Expr::Call(call) if call.target.is_none() => {
                let arg = |i: usize| call.args.get(i).and_then(Plan::compile).map(Box::new);
                match (call.func_name.as_str(), call.args.len()) {
                    (operators::EQUALS, 2) => Some(Plan::Equals(arg(0)?, arg(1)?)),
                    (operators::NOT_EQUALS, 2) => Some(Plan::NotEquals(arg(0)?, arg(1)?)),
                    (operators::LOGICAL_AND, 2) => Some(Plan::And(arg(0)?, arg(1)?)),
                    (operators::LOGICAL_OR, 2) => Some(Plan::Or(arg(0)?, arg(1)?)),
                    (operators::LOGICAL_NOT, 1) => Some(Plan::Not(arg(0)?)),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// The condition's value on `state`, or `None` when CEL must decide (see the module).
    pub(crate) fn holds<F: Facts + ?Sized>(&self, state: &F) -> Option<bool> {
        match self.eval(state)? {
            Atom::Bool(b) => Some(b),
            _ => None,
        }
    }

    fn eval<'s, F: Facts + ?Sized>(&'s self, state: &'s F) -> Option<Atom<'s>> {
        Some(match self {
            Plan::Literal(a) => match a {
                Atom::Str(s) => Atom::Str(Cow::Borrowed(s.as_ref())),
                other => other.clone(),
            },
            Plan::FormField { form, field } => match &**state.forms().get(form)? {
                Value::Object(fields) => atom(fields.get(field)?)?,
                _ => return None,
            },
            Plan::DossierField(name) => Atom::Str(Cow::Owned(state.field(name)?)),
            Plan::Equals(a, b) => Atom::Bool(same(&a.eval(state)?, &b.eval(state)?)?),
            Plan::NotEquals(a, b) => Atom::Bool(!same(&a.eval(state)?, &b.eval(state)?)?),
            // CEL's `&&` and `||` skip their right side when the left decides; when it does
            // not, both sides must be booleans here (CEL's rules for errors are its own).
            Plan::And(a, b) => match a.eval(state)? {
                Atom::Bool(false) => Atom::Bool(false),
                Atom::Bool(true) => Atom::Bool(b.holds(state)?),
                _ => return None,
            },
            Plan::Or(a, b) => match a.eval(state)? {
                Atom::Bool(true) => Atom::Bool(true),
                Atom::Bool(false) => Atom::Bool(b.holds(state)?),
                _ => return None,
            },
            Plan::Not(a) => Atom::Bool(!a.holds(state)?),
        })
    }
}

/// A JSON value as the fast path sees it, as [`crate::runtime`] hands it to CEL (integers by
/// value); doubles, lists and objects are left to CEL.
fn atom(v: &Value) -> Option<Atom<'_>> {
    Some(match v {
        Value::Null => Atom::Null,
        Value::Bool(b) => Atom::Bool(*b),
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => Atom::Int(i128::from(u)),
            (None, Some(i)) => Atom::Int(i128::from(i)),
            _ => return None,
        },
        Value::String(s) => Atom::Str(Cow::Borrowed(s)),
        Value::Array(_) | Value::Object(_) => return None,
    })
}

/// CEL's equality for two values of the same kind; values of different kinds go to CEL.
fn same(a: &Atom<'_>, b: &Atom<'_>) -> Option<bool> {
    match (a, b) {
        (Atom::Null, Atom::Null) => Some(true),
        (Atom::Bool(x), Atom::Bool(y)) => Some(x == y),
        (Atom::Int(x), Atom::Int(y)) => Some(x == y),
        (Atom::Str(x), Atom::Str(y)) => Some(x == y),
        _ => None,
    }
}
