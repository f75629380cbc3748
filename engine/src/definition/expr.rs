//! CEL expressions in definitions: compiling them and finding the data they name.

use cel::common::ast::{EntryExpr, Expr, IdedExpr};

/// Fields of the `dossier` variable that expressions may read.
pub const DOSSIER_FIELDS: &[&str] = &[
    "channel",
    "owner_type",
    "owner_id",
    "agency_code",
    "procedure_code",
];

/// Why an expression does not compile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprError {
    /// 1-based column inside the expression, when the parser gave one.
    pub column: Option<u32>,
    pub message: String,
}

/// Expressions longer than this are refused: conditions are one line, not programs.
const MAX_EXPRESSION_BYTES: usize = 2000;

/// Compiles a CEL expression, refusing ones too long or too deep to be a condition.
pub fn compile_expression(source: &str) -> Result<cel::Program, ExprError> {
    if source.len() > MAX_EXPRESSION_BYTES {
        return Err(ExprError {
            column: None,
            message: format!("expression is longer than {MAX_EXPRESSION_BYTES} bytes"),
        });
    }
    cel::Program::compile(source).map_err(|errors| {
        let first = errors.errors.first();
        ExprError {
            column: first.and_then(|e| u32::try_from(e.pos.1 + 1).ok()),
            message: first
                .map(|e| short_message(&e.msg))
                .unwrap_or_else(|| "invalid expression".to_owned()),
        }
    })
}

/// The parser's message without its list of every token it would have accepted.
fn short_message(msg: &str) -> String {
    let msg = msg.strip_prefix("Syntax error: ").unwrap_or(msg);
    let msg = match msg.find(" expecting ") {
        Some(i) => &msg[..i],
        None => msg,
    };
    if msg.contains("'<EOF>'") {
        return "the expression ends too early".to_owned();
    }
    msg.to_owned()
}

/// A name the expression reads from outside: `data.tham_dinh.co_an_tich` is
/// `["data", "tham_dinh", "co_an_tich"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NameRef {
    pub path: Vec<String>,
}

/// The free names of an expression, longest selection first, variables bound by
/// comprehension macros (`all`, `exists`, `map`, `filter`) left out.
pub(crate) fn free_names(program: &cel::Program) -> Vec<NameRef> {
    let mut out = Vec::new();
    visit(program.expression(), &mut Vec::new(), &mut out);
    out
}

fn visit(e: &IdedExpr, bound: &mut Vec<String>, out: &mut Vec<NameRef>) {
    match &e.expr {
        Expr::Ident(name) => {
            if !bound.contains(name) {
                out.push(NameRef {
                    path: vec![name.clone()],
                });
            }
        }
        Expr::Select(_) => match select_chain(e) {
            Some(path) => {
                if !bound.contains(&path[0]) {
                    out.push(NameRef { path });
                }
            }
            None => {
                if let Expr::Select(s) = &e.expr {
                    visit(&s.operand, bound, out);
                }
            }
        },
        Expr::Call(call) => {
            if let Some(t) = &call.target {
                visit(t, bound, out);
            }
            for a in &call.args {
                visit(a, bound, out);
            }
        }
        Expr::Comprehension(c) => {
            visit(&c.iter_range, bound, out);
            let before = bound.len();
            bound.push(c.iter_var.clone());
            if let Some(v) = &c.iter_var2 {
                bound.push(v.clone());
            }
            bound.push(c.accu_var.clone());
            for part in [&c.accu_init, &c.loop_cond, &c.loop_step, &c.result] {
                visit(part, bound, out);
            }
            bound.truncate(before);
        }
        Expr::List(l) => {
            for x in &l.elements {
                visit(x, bound, out);
            }
        }
        Expr::Map(m) => {
            for entry in &m.entries {
                if let EntryExpr::MapEntry(me) = &entry.expr {
                    visit(&me.key, bound, out);
                    visit(&me.value, bound, out);
                }
            }
        }
        Expr::Struct(s) => {
            for entry in &s.entries {
                if let EntryExpr::StructField(f) = &entry.expr {
                    visit(&f.value, bound, out);
                }
            }
        }
        Expr::Literal(_) | Expr::Unspecified => {}
    }
}

/// `a.b.c` (presence tests included) as `["a", "b", "c"]`, or `None` when the chain does
/// not start at an identifier (e.g. `f(x).y`).
fn select_chain(e: &IdedExpr) -> Option<Vec<String>> {
    let mut segments = Vec::new();
    let mut cur = e;
    loop {
        match &cur.expr {
            Expr::Ident(n) => {
                segments.push(n.clone());
                segments.reverse();
                return Some(segments);
            }
            Expr::Select(s) => {
                segments.push(s.field.clone());
                cur = &s.operand;
            }
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(src: &str) -> Vec<Vec<String>> {
        let p = compile_expression(src).unwrap();
        free_names(&p).into_iter().map(|n| n.path).collect()
    }

    #[test]
    fn finds_selections_and_skips_bound_variables() {
        assert_eq!(
            names("data.a.b == true && dossier.channel == 'online'"),
            vec![
                vec!["data".to_string(), "a".into(), "b".into()],
                vec!["dossier".to_string(), "channel".into()]
            ]
        );
        assert_eq!(
            names("data.f.items.all(i, i.qty > 0)"),
            vec![vec!["data".to_string(), "f".into(), "items".into()]]
        );
        assert_eq!(
            names("has(data.f.x)"),
            vec![vec!["data".to_string(), "f".into(), "x".into()]]
        );
    }

    #[test]
    fn syntax_errors_have_a_column() {
        let e = compile_expression("data.a ==").unwrap_err();
        assert!(e.column.is_some(), "{e:?}");
    }
}
