//! `tthc validate` and `tthc show`.

use std::collections::{HashSet, VecDeque};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use engine::definition::{Definition, Diagnostic, Loader, LoaderConfig, Procedure, Step, Validity};

fn loader(config: LoaderConfig) -> Result<Loader> {
    let catalog_dir = config.catalog_dir.clone();
    Loader::new(config).map_err(|diagnostics| {
        for d in &diagnostics {
            eprintln!("{d}");
        }
        anyhow::anyhow!("the catalog in {} has errors", catalog_dir.display())
    })
}

pub fn validate(
    root: &Path,
    config: LoaderConfig,
    paths: &[PathBuf],
    strict: bool,
) -> Result<ExitCode> {
    let loader = loader(config)?;
    let paths = if paths.is_empty() {
        vec![procedures_dir(root)]
    } else {
        paths.to_vec()
    };
    let mut report = loader.load_paths(&paths);
    report
        .diagnostics
        .sort_by(|a, b| (&a.file, a.position).cmp(&(&b.file, b.position)));
    for d in &report.diagnostics {
        println!("{d}");
    }
    let failed_files: HashSet<&Path> = report
        .diagnostics
        .iter()
        .filter(|d| d.is_error())
        .map(|d| d.file.as_path())
        .collect();
    for d in &report.definitions {
        if failed_files.contains(d.source.as_path()) {
            continue;
        }
        let p = &d.procedure;
        println!(
            "ok {} v{} {} ({} components, {} results, {} steps) {}",
            p.code,
            p.version,
            p.name,
            p.components.len(),
            p.results.len(),
            p.steps.len(),
            d.source.display()
        );
    }
    let errors = report.diagnostics.iter().filter(|d| d.is_error()).count();
    let warnings = report.diagnostics.len() - errors;
    if errors > 0 || (strict && warnings > 0) {
        eprintln!(
            "{errors} error(s), {warnings} warning(s) in {} file(s)",
            failed_files.len().max(usize::from(warnings > 0))
        );
        return Ok(ExitCode::FAILURE);
    }
    if report.definitions.is_empty() {
        bail!(
            "no procedure definitions found in {}",
            display_paths(&paths)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `ROOT/procedures`, written as `procedures` when the root is the working directory so that
/// diagnostics print the short path an administrator typed.
fn procedures_dir(root: &Path) -> PathBuf {
    if root == Path::new(".") {
        PathBuf::from("procedures")
    } else {
        root.join("procedures")
    }
}

fn display_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn show(
    root: &Path,
    config: LoaderConfig,
    code: &str,
    version: Option<u32>,
) -> Result<ExitCode> {
    let loader = loader(config)?;
    let report = loader.load_paths(&[procedures_dir(root)]);
    let found = report
        .definitions
        .iter()
        .filter(|d| d.procedure.code == code && version.is_none_or(|v| d.procedure.version == v))
        .max_by_key(|d| d.procedure.version);
    let Some(definition) = found else {
        let errors: Vec<&Diagnostic> = report.diagnostics.iter().filter(|d| d.is_error()).collect();
        for d in &errors {
            eprintln!("{d}");
        }
        let known: Vec<String> = report
            .definitions
            .iter()
            .map(|d| format!("{} v{}", d.procedure.code, d.procedure.version))
            .collect();
        bail!(
            "no valid procedure {code}{} under {}; known: {}",
            version.map(|v| format!(" version {v}")).unwrap_or_default(),
            root.join("procedures").display(),
            if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            }
        );
    };
    print!(
        "{}",
        summary(definition, &loader).context("rendering the summary")?
    );
    Ok(ExitCode::SUCCESS)
}

/// A readable summary of a procedure: what an officer would want on one page.
pub fn summary(d: &Definition, loader: &Loader) -> Result<String> {
    let p = &d.procedure;
    let mut out = String::new();
    writeln!(out, "{} — {} (version {})", p.code, p.name, p.version)?;
    writeln!(
        out,
        "Agency level: {}; field: {}",
        engine::wire_name(&p.agency.level),
        p.agency.field
    )?;
    writeln!(out, "Processing time: {}", p.processing_time)?;
    if !p.legal_basis.is_empty() {
        writeln!(out, "Legal basis:")?;
        for l in &p.legal_basis {
            writeln!(out, "  - {l}")?;
        }
    }
    if !p.fees.is_empty() {
        writeln!(out, "Fees:")?;
        for f in &p.fees {
            writeln!(out, "  - {} {}: {} VND", f.code, f.name, f.amount_vnd)?;
            for r in &f.reductions {
                writeln!(
                    out,
                    "      {}: {} VND when {}",
                    r.name, r.amount_vnd, r.when
                )?;
            }
        }
    }
    writeln!(out, "Components:")?;
    for c in &p.components {
        let need = match (&c.required_when, c.required) {
            (Some(w), _) => format!("required when {w}"),
            (None, true) => "required".into(),
            (None, false) => "optional".into(),
        };
        let mut extra = Vec::new();
        if let Some(f) = &c.form {
            extra.push(format!("form {f}"));
        }
        if !c.accepts.is_empty() {
            let kinds: Vec<String> = c.accepts.iter().map(engine::wire_name).collect();
            extra.push(format!("accepts {}", kinds.join("/")));
        }
        if let Some(r) = &c.reuse {
            let age = r
                .max_age
                .map(|a| format!(", at most {a} old"))
                .unwrap_or_default();
            extra.push(format!(
                "reuses {} from Kho DL{age}",
                r.result_codes.join(", ")
            ));
        }
        writeln!(
            out,
            "  - {} ({}): {need}; {}",
            c.name,
            c.id,
            extra.join("; ")
        )?;
    }
    if !p.results.is_empty() {
        writeln!(out, "Results:")?;
        for r in &p.results {
            let entry = loader
                .catalog()
                .results
                .results
                .iter()
                .find(|c| c.code == r.result_code);
            let validity = r.validity.or(entry.map(|e| e.default_validity));
            writeln!(
                out,
                "  - {} {}: valid {}{}",
                r.result_code,
                entry.map(|e| e.name.as_str()).unwrap_or("?"),
                match validity {
                    Some(Validity::Permanent) | None => "permanently".to_owned(),
                    Some(Validity::For(d)) => format!("for {d}"),
                },
                if r.save_to_khodl {
                    "; saved to Kho DL"
                } else {
                    ""
                }
            )?;
        }
    }
    writeln!(out, "Steps:")?;
    for (n, step) in ordered_steps(p).into_iter().enumerate() {
        writeln!(out, "  {:>2}. {}", n + 1, describe_step(step))?;
    }
    Ok(out)
}

/// Steps in the order a dossier meets them (breadth first from the first step), then any
/// unreachable ones.
fn ordered_steps(p: &Procedure) -> Vec<&Step> {
    let mut seen = HashSet::new();
    let mut order = Vec::new();
    let mut queue: VecDeque<&str> = p.steps.first().map(Step::id).into_iter().collect();
    while let Some(id) = queue.pop_front() {
        if !seen.insert(id) {
            continue;
        }
        if let Some(step) = p.step(id) {
            order.push(step);
            for (_, next) in step.successors() {
                queue.push_back(next);
            }
        }
    }
    order.extend(p.steps.iter().filter(|s| !seen.contains(s.id())));
    order
}

fn describe_step(s: &Step) -> String {
    match s {
        Step::UserTask(t) => {
            let mut line = format!(
                "{} [task, role {}{}]",
                t.name.as_deref().unwrap_or(&t.id),
                t.role,
                t.agency
                    .as_deref()
                    .map(|a| format!(", agency {a}"))
                    .unwrap_or_default()
            );
            if let Some(sla) = t.sla {
                let _ = write!(line, " within {sla}");
            }
            if let Some(code) = &t.signs {
                let _ = write!(line, ", signs {code}");
            }
            if let Some(m) = t.marks {
                let _ = write!(line, ", marks the dossier {}", engine::wire_name(&m));
            }
            if t.outcomes.is_empty() {
                let _ = write!(line, " → {}", t.next.as_deref().unwrap_or("?"));
            } else {
                let outs: Vec<String> = t
                    .outcomes
                    .iter()
                    .map(|(o, n)| format!("{o} → {n}"))
                    .collect();
                let _ = write!(line, ": {}", outs.join(", "));
            }
            format!("{} ({})", line, t.id)
        }
        Step::Decision(d) => {
            let branches: Vec<String> = d
                .when
                .iter()
                .map(|b| format!("if {} → {}", b.condition, b.then))
                .collect();
            format!(
                "{} [decision]: {}; else → {} ({})",
                d.name.as_deref().unwrap_or(&d.id),
                branches.join("; "),
                d.otherwise.as_deref().unwrap_or("?"),
                d.id
            )
        }
        Step::Parallel(par) => format!(
            "{} [parallel]: {} at once, meeting at {} ({})",
            par.name.as_deref().unwrap_or(&par.id),
            par.branches.join(" + "),
            par.join,
            par.id
        ),
        Step::Join(j) => format!(
            "{} [join] → {} ({})",
            j.name.as_deref().unwrap_or(&j.id),
            j.next,
            j.id
        ),
        Step::Timer(t) => format!(
            "{} [timer] {} → {} ({})",
            t.name.as_deref().unwrap_or(&t.id),
            match (&t.wait, &t.until) {
                (Some(w), _) => format!("waits {w}"),
                (None, Some(u)) => format!("waits until {u}"),
                (None, None) => String::new(),
            },
            t.next,
            t.id
        ),
        Step::Hook(h) => format!(
            "{} [hook {}{}] → {} ({})",
            h.name.as_deref().unwrap_or(&h.id),
            h.call,
            h.args
                .get("template")
                .and_then(|t| t.as_str())
                .map(|t| format!(" template {t}"))
                .unwrap_or_default(),
            h.next,
            h.id
        ),
        Step::End(e) => format!(
            "{} [end: {}] ({})",
            e.name.as_deref().unwrap_or(&e.id),
            engine::wire_name(&e.outcome),
            e.id
        ),
    }
}
