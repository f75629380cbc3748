//! Semantic checks: what the JSON Schema of the format cannot say.
//!
//! Every check reports through the [`Sink`] with the JSON pointer of the offending value, so
//! the administrator sees the line and column. All checks run, so one pass shows every problem.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

use super::BUILTIN_HOOKS;
use super::catalog::{Catalog, LoaderConfig};
use super::diagnostic::Sink;
use super::expr;
use super::flow::{self, Graph, State};
use super::model::*;
use super::typing::{self, Expect, Facts, Scope, facts_of};
use super::yaml::escape_segment;

/// Processing times beyond this are taken for typing mistakes.
const MAX_PROCESSING_HOURS: f64 = 24.0 * 366.0 * 2.0;
/// Fees beyond this (100 million đồng) are taken for typing mistakes.
const MAX_FEE_VND: u64 = 100_000_000;
/// Form schemas larger than this are refused.
const MAX_FORM_SCHEMA_BYTES: u64 = 256 * 1024;

pub(crate) fn check(
    p: &Procedure,
    catalog: &Catalog,
    config: &LoaderConfig,
    sink: &mut Sink<'_>,
) -> BTreeMap<String, Arc<Value>> {
    let forms = check_forms(p, config, sink);
    check_ids(p, sink);
    check_graph(p, sink);
    check_steps(p, catalog, sink);
    check_results(p, catalog, sink);
    check_components(p, catalog, sink);
    check_times_and_fees(p, sink);
    check_expressions(p, &forms, sink);
    forms
}

fn step_ptr(i: usize) -> String {
    format!("/steps/{i}")
}

/// The closest candidate to `name`, when it is close enough to be a likely typo.
pub(crate) fn suggest<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (edit_distance(name, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

pub(crate) fn unknown_hint<'a>(
    name: &str,
    what: &str,
    candidates: impl IntoIterator<Item = &'a str> + Clone,
) -> String {
    match suggest(name, candidates.clone()) {
        Some(s) => format!("did you mean `{s}`?"),
        None => {
            let all: Vec<&str> = candidates.into_iter().collect();
            if all.is_empty() {
                format!("no {what} is declared")
            } else {
                format!("known {what}s: {}", all.join(", "))
            }
        }
    }
}

fn check_ids(p: &Procedure, sink: &mut Sink<'_>) {
    let mut steps: HashMap<&str, usize> = HashMap::new();
    for (i, s) in p.steps.iter().enumerate() {
        if let Some(first) = steps.insert(s.id(), i) {
            sink.error(
                &format!("{}/id", step_ptr(i)),
                format!("duplicate step id `{}`", s.id()),
                Some(format!(
                    "step {} already uses this id (line {}); give each step its own id",
                    first + 1,
                    sink.locator
                        .position(&format!("{}/id", step_ptr(first)))
                        .line
                )),
            );
            steps.insert(s.id(), first);
        }
    }
    let mut components: HashSet<&str> = HashSet::new();
    for (i, c) in p.components.iter().enumerate() {
        if !components.insert(&c.id) {
            sink.error(
                &format!("/components/{i}/id"),
                format!("duplicate component id `{}`", c.id),
                None,
            );
        }
        if c.form.is_some() && matches!(p.step(&c.id), Some(Step::UserTask(t)) if t.form.is_some())
        {
            sink.error(
                &format!("/components/{i}/id"),
                format!("`{}` names both a component form and a task form", c.id),
                Some("`data.ID` must name one form: rename the component or the step".into()),
            );
        }
    }
}

fn check_graph(p: &Procedure, sink: &mut Sink<'_>) {
    let index: HashMap<&str, usize> = p
        .steps
        .iter()
        .enumerate()
        .rev()
        .map(|(i, s)| (s.id(), i))
        .collect();
    let ids: Vec<&str> = p.steps.iter().map(Step::id).collect();

    // Unknown successors. Reachability is not judged while some are unknown: every step
    // behind a typo would be reported too, burying the one line to fix.
    let mut unknown = false;
    let mut edges: Vec<Vec<usize>> = vec![Vec::new(); p.steps.len()];
    for (i, s) in p.steps.iter().enumerate() {
        for (suffix, target) in s.successors() {
            match index.get(target) {
                Some(&j) => edges[i].push(j),
                None => {
                    unknown = true;
                    sink.error(
                        &format!("{}{suffix}", step_ptr(i)),
                        format!("unknown step id `{target}`"),
                        Some(unknown_hint(target, "step", ids.iter().copied())),
                    );
                }
            }
        }
        if let Step::Parallel(par) = s {
            match index.get(par.join.as_str()).map(|&j| &p.steps[j]) {
                Some(Step::Join(_)) => {}
                Some(other) => sink.error(
                    &format!("{}/join", step_ptr(i)),
                    format!("`{}` is a {} step, not a join", par.join, other.kind_name()),
                    Some("`join` names the step of kind `join` where the branches meet".into()),
                ),
                None => sink.error(
                    &format!("{}/join", step_ptr(i)),
                    format!("unknown step id `{}`", par.join),
                    Some(unknown_hint(&par.join, "step", ids.iter().copied())),
                ),
            }
            let mut seen = HashSet::new();
            for (b, branch) in par.branches.iter().enumerate() {
                if !seen.insert(branch) {
                    sink.error(
                        &format!("{}/branches/{b}", step_ptr(i)),
                        format!("branch `{branch}` is listed twice"),
                        None,
                    );
                }
            }
        }
    }

    if !p.steps.iter().any(|s| matches!(s, Step::End(_))) {
        sink.error(
            "/steps",
            "the procedure has no `end` step",
            Some("add at least one step of kind `end` with outcome `completed`".into()),
        );
    }

    if unknown {
        for (i, s) in p.steps.iter().enumerate() {
            if let Step::Decision(d) = s
                && d.otherwise.is_none()
            {
                sink.error(
                    &step_ptr(i),
                    format!("decision `{}` has no default branch", d.id),
                    Some("add `else: STEP` for when no condition holds".into()),
                );
            }
        }
        return;
    }

    // Unreachable steps, from the first step. A duplicate id is reported as such. Only the
    // first of a run of unreachable steps is reported (the others follow from it), and a
    // decision without `else` takes them into its own error: that is where to fix them.
    let reachable = reach(&edges, [0]);
    let unreachable: Vec<usize> = (0..p.steps.len())
        .filter(|i| !reachable.contains(i) && index.get(p.steps[*i].id()) == Some(i))
        .collect();
    let mut covered: HashSet<usize> = HashSet::new();
    let mut roots: Vec<(usize, Vec<usize>)> = Vec::new();
    let preds_unreachable = |i: usize| {
        edges
            .iter()
            .enumerate()
            .any(|(k, out)| k != i && !reachable.contains(&k) && out.contains(&i))
    };
    for pass in 0..2 {
        for &i in &unreachable {
            if covered.contains(&i) || (pass == 0 && preds_unreachable(i)) {
                continue;
            }
            let behind: Vec<usize> = reach(&edges, [i])
                .into_iter()
                .filter(|k| *k != i && unreachable.contains(k) && !covered.contains(k))
                .collect();
            covered.insert(i);
            covered.extend(behind.iter().copied());
            roots.push((i, behind));
        }
    }
    roots.sort();
    let describe = |(i, behind): &(usize, Vec<usize>)| {
        let mut names: Vec<usize> = behind.clone();
        names.sort_unstable();
        let list: Vec<&str> = names.iter().take(4).map(|k| ids[*k]).collect();
        match names.len() {
            0 => format!("`{}`", ids[*i]),
            n => format!(
                "`{}` (and the {n} step(s) after it: {}{})",
                ids[*i],
                list.join(", "),
                if n > 4 { ", …" } else { "" }
            ),
        }
    };
    let no_else: Vec<usize> = p
        .steps
        .iter()
        .enumerate()
        .filter(|(_, s)| matches!(s, Step::Decision(d) if d.otherwise.is_none()))
        .map(|(i, _)| i)
        .collect();
    for &i in &no_else {
        let unreached: Vec<String> = roots.iter().map(describe).collect();
        sink.error(
            &step_ptr(i),
            format!("decision `{}` has no default branch", p.steps[i].id()),
            Some(match unreached.as_slice() {
                [] => "add `else: STEP` for when no condition holds".into(),
                [one] => format!(
                    "add `else: STEP` for when no condition holds; no step leads to {one}: is it the default?"
                ),
                many => format!(
                    "add `else: STEP` for when no condition holds; no step leads to {}",
                    many.join(", ")
                ),
            }),
        );
    }
    if no_else.is_empty() {
        for root in &roots {
            let i = root.0;
            let hint = "point an outcome, `next` or branch of another step at it, or remove it";
            sink.error(
                &format!("{}/id", step_ptr(i)),
                format!(
                    "step `{}` cannot be reached from the first step `{}`",
                    ids[i], ids[0]
                ),
                Some(if root.1.is_empty() {
                    hint.into()
                } else {
                    format!("{hint}; {} after it cannot be reached either", {
                        let mut behind = root.1.clone();
                        behind.sort_unstable();
                        let names: Vec<String> = behind
                            .iter()
                            .take(4)
                            .map(|k| format!("`{}`", ids[*k]))
                            .collect();
                        format!(
                            "{}{}",
                            names.join(", "),
                            if behind.len() > 4 { ", …" } else { "" }
                        )
                    })
                }),
            );
        }
    }

    // Steps from which no end can be reached.
    let mut reverse: Vec<Vec<usize>> = vec![Vec::new(); p.steps.len()];
    for (i, out) in edges.iter().enumerate() {
        for &j in out {
            reverse[j].push(i);
        }
    }
    let ends: Vec<usize> = p
        .steps
        .iter()
        .enumerate()
        .filter(|(_, s)| matches!(s, Step::End(_)))
        .map(|(i, _)| i)
        .collect();
    let can_end = reach(&reverse, ends);
    for (i, s) in p.steps.iter().enumerate() {
        if reachable.contains(&i) && !can_end.contains(&i) {
            sink.error(
                &format!("{}/id", step_ptr(i)),
                format!("no end can be reached from step `{}`", s.id()),
                Some(
                    "a dossier entering this step would never finish: lead it to an `end` step"
                        .into(),
                ),
            );
        }
    }

    // Joins: each has its fork, and each branch of a fork reaches its join.
    let forks: HashMap<&str, usize> = p
        .steps
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match s {
            Step::Parallel(par) => Some((par.join.as_str(), i)),
            _ => None,
        })
        .collect();
    for (i, s) in p.steps.iter().enumerate() {
        match s {
            Step::Join(j) if !forks.contains_key(j.id.as_str()) => sink.error(
                &format!("{}/id", step_ptr(i)),
                format!("join `{}` has no parallel step that forks into it", j.id),
                Some("name this join in the `join` field of the `parallel` step whose branches meet here".into()),
            ),
            Step::Parallel(par) => {
                let Some(&join) = index.get(par.join.as_str()) else {
                    continue;
                };
                for (b, branch) in par.branches.iter().enumerate() {
                    let Some(&start) = index.get(branch.as_str()) else {
                        continue;
                    };
                    if !reach(&edges, [start]).contains(&join) {
                        sink.error(
                            &format!("{}/branches/{b}", step_ptr(i)),
                            format!("branch `{branch}` never reaches the join `{}`", par.join),
                            Some("every branch of a parallel step must end at its join".into()),
                        );
                    }
                }
            }
            _ => {}
        }
    }
    flow::check_blocks(&Graph::new(p), sink);
}

fn reach(edges: &[Vec<usize>], from: impl IntoIterator<Item = usize>) -> HashSet<usize> {
    let mut seen = HashSet::new();
    let mut queue: VecDeque<usize> = from.into_iter().filter(|&i| i < edges.len()).collect();
    seen.extend(queue.iter().copied());
    while let Some(i) = queue.pop_front() {
        for &j in &edges[i] {
            if seen.insert(j) {
                queue.push_back(j);
            }
        }
    }
    seen
}

/// A kind of agency named by a definition: `receiving` or one of the catalog's kinds, never a
/// province's code (each deployment maps kinds to its own codes). `level`, when given, is the
/// level the kind must be of.
fn check_agency_kind(
    kind: &str,
    at: &str,
    level: Option<AgencyLevel>,
    catalog: &Catalog,
    sink: &mut Sink<'_>,
) {
    let kinds = &catalog.agency_kinds.kinds;
    let ids = kinds
        .iter()
        .map(|k| k.id.as_str())
        .chain(level.is_none().then_some(RECEIVING));
    if is_agency_code(kind) {
        sink.error(
            at,
            format!("`{kind}` is an agency code; a definition names the kind of agency"),
            Some(format!(
                "write a kind such as {} (procedures/catalog/agency-kinds.yaml); each deployment maps it to its own code with `kind:` in its `agencies`",
                ids.take(3).map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
            )),
        );
        return;
    }
    if level.is_none() && kind == RECEIVING {
        return;
    }
    match kinds.iter().find(|k| k.id == kind) {
        None => sink.error(
            at,
            format!("unknown agency kind `{kind}`"),
            Some(format!(
                "{} (kinds are declared in procedures/catalog/agency-kinds.yaml)",
                unknown_hint(kind, "kind", ids)
            )),
        ),
        Some(k) => {
            if let Some(level) = level
                && k.level != level
            {
                sink.error(
                    at,
                    format!(
                        "`{kind}` is a {} agency but the procedure is handled at {} level",
                        crate::wire_name(&k.level),
                        crate::wire_name(&level)
                    ),
                    Some("the competent agency is of the procedure's `level`".into()),
                );
            }
        }
    }
}

fn check_steps(p: &Procedure, catalog: &Catalog, sink: &mut Sink<'_>) {
    if p.agency.level == AgencyLevel::District {
        sink.error(
            "/agency/level",
            "there is no district level since 1 July 2025",
            Some("local government has two tiers: use `province` or `commune`".into()),
        );
    }
    if let Some(kind) = &p.agency.competent
        && p.agency.level != AgencyLevel::District
    {
        check_agency_kind(
            kind,
            "/agency/competent",
            Some(p.agency.level),
            catalog,
            sink,
        );
    }
    let roles: Vec<&str> = catalog.roles.roles.iter().map(|r| r.id.as_str()).collect();
    let mut received = None;
    for (i, s) in p.steps.iter().enumerate() {
        let at = step_ptr(i);
        match s {
            Step::UserTask(t) => {
                if !roles.contains(&t.role.as_str()) {
                    sink.error(
                        &format!("{at}/role"),
                        format!("unknown role `{}`", t.role),
                        Some(format!(
                            "{} (roles are declared in procedures/catalog/roles.yaml)",
                            unknown_hint(&t.role, "role", roles.iter().copied())
                        )),
                    );
                }
                if let Some(kind) = &t.agency {
                    check_agency_kind(kind, &format!("{at}/agency"), None, catalog, sink);
                }
                if let Some(code) = &t.signs
                    && !p.results.iter().any(|r| &r.result_code == code)
                {
                    sink.error(
                            &format!("{at}/signs"),
                            format!("`{code}` is not a result of this procedure"),
                            Some("list it under `results` first; a task signs only what the procedure issues".into()),
                        );
                }
                if t.marks == Some(Milestone::Received) && !t.outcomes.contains_key("accept") {
                    sink.error(
                        &format!("{at}/marks"),
                        format!("task `{}` marks the dossier `received` but has no outcome `accept`", t.id),
                        Some("the desk receives a dossier by completing this task with `accept` (and refuses it with `refuse`): write `outcomes: { accept: NEXT_STEP, refuse: REFUSAL_STEP }`".into()),
                    );
                }
                if t.marks == Some(Milestone::Received)
                    && let Some(sla) = t.sla
                    // An implausible SLA has its own error.
                    && sla.approx_hours() <= MAX_PROCESSING_HOURS
                    && match sla {
                        Duration::WorkingHours(n) => n > 8,
                        Duration::WorkingDays(n) | Duration::Days(n) => n > 1,
                        Duration::Minutes(n) => n > 8 * 60,
                        Duration::Months(_) => true,
                    }
                {
                    sink.error(
                        &format!("{at}/sla"),
                        format!("the desk has {sla} to receive, longer than the law allows"),
                        Some("an online filing is confirmed received, or sent back for supplement, within 8 working hours (Decree 45/2020/NĐ-CP): `sla: { working_hours: 8 }` at most".into()),
                    );
                }
                if t.marks == Some(Milestone::Received)
                    && let Some(first) = received.replace(i)
                {
                    sink.error(
                        &format!("{at}/marks"),
                        "only one task may mark the dossier `received`",
                        Some(format!("step `{}` already does", p.steps[first].id())),
                    );
                }
            }
            Step::Hook(h) => {
                let names = BUILTIN_HOOKS.iter().map(|(n, _)| *n);
                match BUILTIN_HOOKS.iter().find(|(n, _)| *n == h.call) {
                    None => sink.error(
                        &format!("{at}/call"),
                        format!("unknown hook `{}`", h.call),
                        Some(unknown_hint(&h.call, "hook", names)),
                    ),
                    Some((name, allowed)) => {
                        for key in h.args.keys() {
                            if !allowed.contains(&key.as_str()) {
                                sink.error_at_key(
                                    &format!("{at}/with/{}", escape_segment(key)),
                                    format!("hook `{name}` takes no argument `{key}`"),
                                    Some(if allowed.is_empty() {
                                        format!("`{name}` takes no arguments: remove `with`")
                                    } else {
                                        format!("`{name}` takes: {}", allowed.join(", "))
                                    }),
                                );
                            }
                        }
                        if *name == "notify" {
                            check_template(h, catalog, &at, sink);
                        }
                    }
                }
                if h.retry.max_backoff_seconds < h.retry.initial_backoff_seconds {
                    sink.error(
                        &format!("{at}/retry/max_backoff_seconds"),
                        "the longest backoff is shorter than the first",
                        Some(
                            "`max_backoff_seconds` must be at least `initial_backoff_seconds`"
                                .into(),
                        ),
                    );
                }
            }
            _ => {}
        }
    }
    if received.is_none() && !p.steps.is_empty() {
        sink.error_at_key(
            "/processing_time",
            format!(
                "the processing time ({}) never starts: no task marks the dossier `received`",
                p.processing_time
            ),
            Some("the legal clock runs from reception: add `marks: received` to the one-stop desk's task, with `outcomes: { accept: NEXT_STEP, refuse: REFUSAL_STEP }`".into()),
        );
    }
}

fn check_template(h: &Hook, catalog: &Catalog, at: &str, sink: &mut Sink<'_>) {
    let templates = catalog.templates.iter().map(String::as_str);
    match h.args.get("template") {
        None => sink.error(
            at,
            "hook `notify` needs `with: { template: NAME }`",
            Some(unknown_hint("", "template", templates)),
        ),
        Some(Value::String(name)) if !catalog.templates.contains(name) => sink.error(
            &format!("{at}/with/template"),
            format!("unknown notification template `{name}`"),
            Some(format!(
                "{} (templates are the .hbs files in procedures/templates/)",
                unknown_hint(name, "template", templates)
            )),
        ),
        Some(Value::String(_)) => {}
        Some(_) => sink.error(
            &format!("{at}/with/template"),
            "the template is named by a string",
            None,
        ),
    }
}

fn catalog_hint(code: &str, catalog: &Catalog) -> String {
    format!(
        "{} (result codes are declared in procedures/catalog/results.yaml)",
        unknown_hint(
            code,
            "result code",
            catalog.results.results.iter().map(|r| r.code.as_str())
        )
    )
}

fn in_catalog(code: &str, catalog: &Catalog) -> bool {
    catalog.results.results.iter().any(|r| r.code == code)
}

fn check_results(p: &Procedure, catalog: &Catalog, sink: &mut Sink<'_>) {
    let mut seen = HashSet::new();
    for (i, r) in p.results.iter().enumerate() {
        let at = format!("/results/{i}/result_code");
        if !seen.insert(&r.result_code) {
            sink.error(
                &at,
                format!("result `{}` is listed twice", r.result_code),
                None,
            );
        }
        match catalog
            .results
            .results
            .iter()
            .find(|c| c.code == r.result_code)
        {
            None => sink.error(
                &at,
                format!("result code `{}` is not in the catalog", r.result_code),
                Some(catalog_hint(&r.result_code, catalog)),
            ),
            Some(c) if c.procedure != p.code => sink.warning(
                &at,
                format!(
                    "the catalog says `{}` is issued by procedure {}, not {}",
                    r.result_code, c.procedure, p.code
                ),
                None,
            ),
            Some(_) => {}
        }
        if let Some(Validity::For(d)) = r.validity
            && d.amount() == 0
        {
            sink.error(
                &format!("/results/{i}/validity"),
                "a validity of zero makes no sense",
                None,
            );
        }
    }
    let saves = p.results.iter().any(|r| r.save_to_khodl);
    let has_save_hook = p
        .steps
        .iter()
        .any(|s| matches!(s, Step::Hook(h) if h.call == "khodl.save"));
    if saves && !has_save_hook {
        sink.warning(
            "/results",
            "results are marked `save_to_khodl` but no step calls `khodl.save`",
            Some("add a hook step `call: khodl.save` after the result is signed".into()),
        );
    }
}

fn check_components(p: &Procedure, catalog: &Catalog, sink: &mut Sink<'_>) {
    for (i, c) in p.components.iter().enumerate() {
        let at = format!("/components/{i}");
        if let Some(reuse) = &c.reuse {
            for (j, code) in reuse.result_codes.iter().enumerate() {
                if !in_catalog(code, catalog) {
                    sink.error(
                        &format!("{at}/reuse/result_codes/{j}"),
                        format!("result code `{code}` is not in the catalog"),
                        Some(catalog_hint(code, catalog)),
                    );
                }
            }
            if reuse.max_age.is_some_and(|d| d.amount() == 0) {
                sink.error(
                    &format!("{at}/reuse/max_age"),
                    "a maximum age of zero accepts no paper",
                    Some("leave `max_age` out to accept any valid paper".into()),
                );
            }
        }
        if c.form.is_none() && c.accepts.is_empty() && c.reuse.is_none() {
            sink.error(
                &at,
                format!("component `{}` has no `form`, `accepts` or `reuse`", c.id),
                Some("say what the owner provides: a form, the kinds of document accepted, or a reusable result".into()),
            );
        }
        if !c.required && c.required_when.is_some() {
            sink.error(
                &format!("{at}/required_when"),
                "`required_when` on a component marked `required: false`",
                Some(
                    "remove `required: false`: `required_when` already makes it optional otherwise"
                        .into(),
                ),
            );
        }
    }
}

fn check_duration(d: &Duration, at: &str, what: &str, sink: &mut Sink<'_>) {
    if d.amount() == 0 {
        sink.error(at, format!("{what} of zero makes no sense"), None);
    } else if d.approx_hours() > MAX_PROCESSING_HOURS {
        sink.error(
            at,
            format!("{what} of {d} is longer than two years"),
            Some("check the unit: working_days, working_hours, days, months or minutes".into()),
        );
    }
}

fn check_times_and_fees(p: &Procedure, sink: &mut Sink<'_>) {
    check_duration(
        &p.processing_time,
        "/processing_time",
        "a processing time",
        sink,
    );
    let working = |d: &Duration| matches!(d, Duration::WorkingDays(_) | Duration::WorkingHours(_));
    for (i, case) in p.processing_time_cases.iter().enumerate() {
        let at = format!("/processing_time_cases/{i}/processing_time");
        check_duration(&case.processing_time, &at, "a processing time", sink);
        if working(&case.processing_time) != working(&p.processing_time) {
            sink.error(
                &at,
                format!(
                    "{} and the procedure's {} are counted differently",
                    case.processing_time, p.processing_time
                ),
                Some("use working time in both, or calendar time in both: pauses are counted the same way for every dossier".into()),
            );
        }
    }
    let total = p
        .processing_time_cases
        .iter()
        .map(|c| c.processing_time.approx_hours())
        .fold(p.processing_time.approx_hours(), f64::max);
    for (i, s) in p.steps.iter().enumerate() {
        match s {
            Step::UserTask(UserTask {
                sla: Some(sla), id, ..
            }) => {
                let at = format!("{}/sla", step_ptr(i));
                check_duration(sla, &at, "an SLA", sink);
                let plausible =
                    |d: &Duration| d.amount() > 0 && d.approx_hours() <= MAX_PROCESSING_HOURS;
                if plausible(sla) && plausible(&p.processing_time) && sla.approx_hours() > total {
                    sink.error(
                        &at,
                        format!("the SLA of `{id}` ({sla}) is longer than the whole processing time ({})", p.processing_time),
                        Some("a step's SLA is its share of the processing time".into()),
                    );
                }
            }
            Step::Timer(Timer { wait: Some(w), .. }) => {
                check_duration(w, &format!("{}/wait", step_ptr(i)), "a wait", sink);
            }
            _ => {}
        }
    }
    let mut codes = HashSet::new();
    for (i, fee) in p.fees.iter().enumerate() {
        let at = format!("/fees/{i}");
        if !codes.insert(&fee.code) {
            sink.error(
                &format!("{at}/code"),
                format!("fee code `{}` is used twice", fee.code),
                None,
            );
        }
        if fee.amount_vnd == 0 {
            sink.error(
                &format!("{at}/amount_vnd"),
                format!("fee `{}` is zero", fee.code),
                Some("remove a fee the procedure does not charge".into()),
            );
        } else if fee.amount_vnd > MAX_FEE_VND {
            sink.error(
                &format!("{at}/amount_vnd"),
                format!(
                    "fee `{}` of {} VND is implausibly large",
                    fee.code, fee.amount_vnd
                ),
                Some("amounts are in đồng, without separators: 200000".into()),
            );
        }
        let needs = match fee.due {
            FeeDue::Anytime => None,
            FeeDue::AtReception => Some((Milestone::Received, "at_reception", "received")),
            FeeDue::BeforeReturn => Some((Milestone::Returned, "before_return", "returned")),
        };
        if let Some((milestone, due, marks)) = needs {
            let marked = p
                .steps
                .iter()
                .any(|s| matches!(s, Step::UserTask(u) if u.marks == Some(milestone)));
            if !marked {
                sink.error(
                    &format!("{at}/due"),
                    format!(
                        "fee `{}` is due {due} but no task has `marks: {marks}`",
                        fee.code
                    ),
                    Some(format!(
                        "add `marks: {marks}` to the desk's task, or remove `due`"
                    )),
                );
            }
        }
        for (j, r) in fee.reductions.iter().enumerate() {
            if r.amount_vnd >= fee.amount_vnd {
                sink.error(
                    &format!("{at}/reductions/{j}/amount_vnd"),
                    format!(
                        "reduced amount {} VND is not below the full fee {} VND",
                        r.amount_vnd, fee.amount_vnd
                    ),
                    None,
                );
            }
        }
    }
}

/// Loads the form schemas the definition names, reporting missing or invalid ones.
fn check_forms(
    p: &Procedure,
    config: &LoaderConfig,
    sink: &mut Sink<'_>,
) -> BTreeMap<String, Arc<Value>> {
    let mut refs: Vec<(String, &str)> = p
        .components
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            c.form
                .as_deref()
                .map(|f| (format!("/components/{i}/form"), f))
        })
        .collect();
    for (i, s) in p.steps.iter().enumerate() {
        if let Step::UserTask(UserTask { form: Some(f), .. }) = s {
            refs.push((format!("{}/form", step_ptr(i)), f));
        }
    }
    let mut forms = BTreeMap::new();
    let mut failed = HashSet::new();
    for (at, rel) in refs {
        if forms.contains_key(rel) || failed.contains(rel) {
            continue;
        }
        match load_form(&config.schemas_dir, rel) {
            Ok(schema) => {
                forms.insert(rel.to_owned(), Arc::new(schema));
            }
            Err((message, hint)) => {
                failed.insert(rel);
                sink.error(&at, message, hint);
            }
        }
    }
    forms
}

fn load_form(schemas_dir: &Path, rel: &str) -> Result<Value, (String, Option<String>)> {
    // The schema pattern already refuses `..`; components are joined, never taken as absolute.
    let path = schemas_dir.join(rel);
    let meta = std::fs::metadata(&path).map_err(|_| {
        (
            format!("form schema `{rel}` does not exist"),
            Some(if schemas_dir.is_dir() {
                format!("looked for {}", path.display())
            } else {
                format!(
                    "looked for {}, but {} is not a folder: {}, or `--schemas DIR`",
                    path.display(),
                    schemas_dir.display(),
                    super::catalog::ROOT_HINT
                )
            }),
        )
    })?;
    if meta.len() > MAX_FORM_SCHEMA_BYTES {
        return Err((
            format!("form schema `{rel}` is larger than {MAX_FORM_SCHEMA_BYTES} bytes"),
            None,
        ));
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|e| (format!("cannot read form schema `{rel}`: {e}"), None))?;
    let schema: Value = serde_json::from_str(&text).map_err(|e| {
        (
            format!("form schema `{rel}` is not valid JSON: {e}"),
            Some(format!(
                "fix {} at line {}, column {}",
                path.display(),
                e.line(),
                e.column()
            )),
        )
    })?;
    if let Err(e) = jsonschema::meta::validate(&schema) {
        return Err((
            format!(
                "form schema `{rel}` is not a valid JSON Schema: {e} at `{}`",
                e.instance_path()
            ),
            Some("form schemas follow JSON Schema draft 2020-12".into()),
        ));
    }
    if let Err(e) = crate::formats::form_validator(&schema) {
        return Err((
            format!("form schema `{rel}` cannot be compiled: {e}"),
            Some(
                "form schemas must be self-contained: no references to other files or URLs".into(),
            ),
        ));
    }
    if schema.get("type").and_then(Value::as_str) != Some("object") {
        return Err((
            format!("form schema `{rel}` must describe an object (`\"type\": \"object\"`)"),
            None,
        ));
    }
    Ok(schema)
}

/// Where an expression runs, for its messages.
enum Place {
    /// Evaluated at filing and reception: `required_when`, fee reductions.
    Filing,
    /// On entry of the step at this index.
    Step(usize),
}

fn check_expressions(p: &Procedure, forms: &BTreeMap<String, Arc<Value>>, sink: &mut Sink<'_>) {
    // (pointer, source, what it must give, where it runs, what earlier branches proved)
    let mut exprs: Vec<(String, &str, Expect, Place, Facts)> = Vec::new();
    for (i, c) in p.components.iter().enumerate() {
        if let Some(e) = &c.required_when {
            exprs.push((
                format!("/components/{i}/required_when"),
                e,
                Expect::Condition,
                Place::Filing,
                Facts::new(),
            ));
        }
    }
    for (i, f) in p.fees.iter().enumerate() {
        for (j, r) in f.reductions.iter().enumerate() {
            exprs.push((
                format!("/fees/{i}/reductions/{j}/when"),
                &r.when,
                Expect::Condition,
                Place::Filing,
                Facts::new(),
            ));
        }
    }
    for (i, c) in p.processing_time_cases.iter().enumerate() {
        // Evaluated when the dossier is received, over the forms filed by then.
        exprs.push((
            format!("/processing_time_cases/{i}/if"),
            &c.condition,
            Expect::Condition,
            Place::Filing,
            Facts::new(),
        ));
    }
    for (i, s) in p.steps.iter().enumerate() {
        match s {
            Step::Decision(d) => {
                // A branch's condition is evaluated only when those before it did not hold.
                let mut before = Facts::new();
                for (j, b) in d.when.iter().enumerate() {
                    exprs.push((
                        format!("{}/when/{j}/if", step_ptr(i)),
                        &b.condition,
                        Expect::Condition,
                        Place::Step(i),
                        before.clone(),
                    ));
                    if let Ok(prog) = expr::compile_expression(&b.condition) {
                        before.extend(facts_of(prog.expression(), false));
                    }
                }
            }
            Step::Timer(Timer { until: Some(u), .. }) => {
                exprs.push((
                    format!("{}/until", step_ptr(i)),
                    u,
                    Expect::Date,
                    Place::Step(i),
                    Facts::new(),
                ));
            }
            _ => {}
        }
    }
    if exprs.is_empty() {
        return;
    }
    let graph = Graph::new(p);
    let states = flow::states(&graph);
    let form_ids = p.form_ids();
    let typed: Vec<(&str, Option<&Value>)> = form_ids
        .iter()
        .map(|id| {
            (
                *id,
                p.form_path(id).and_then(|f| forms.get(f)).map(|v| &**v),
            )
        })
        .collect();
    let filing = State {
        filled: flow::filing_forms(p),
        facts: Facts::new(),
    };
    // Unreachable steps are reported as such; their expressions are typed as if all were filled.
    let anywhere = State {
        filled: form_ids.iter().map(|s| (*s).to_owned()).collect(),
        facts: Facts::new(),
    };
    let form_file = |id: &str| p.form_path(id).map(|f| format!("schemas/{f}"));
    for (at, source, expect, place, earlier) in exprs {
        let program = match expr::compile_expression(source) {
            Ok(p) => p,
            Err(e) => {
                let col = e
                    .column
                    .map(|c| format!(" (column {c} of the expression)"))
                    .unwrap_or_default();
                sink.error(
                    &at,
                    format!("expression does not compile: {}{col}", e.message),
                    Some("conditions are CEL, e.g. `data.tham_dinh.co_an_tich == false`".into()),
                );
                continue;
            }
        };
        let state = match place {
            Place::Filing => &filing,
            Place::Step(i) => states[i].as_ref().unwrap_or(&anywhere),
        };
        let mut facts = state.facts.clone();
        facts.extend(earlier);
        let unfilled_hint = |id: &str| unfilled_hint(p, &graph, &place, id);
        let unfilled_where = match place {
            Place::Filing => "when the dossier is filed".to_owned(),
            Place::Step(i) => format!("at step `{}`", p.steps[i].id()),
        };
        let scope = Scope {
            unfilled_where: &unfilled_where,
            forms: &typed,
            filled: &state.filled,
            facts: &facts,
            unfilled_hint: &unfilled_hint,
            form_file: &form_file,
        };
        for problem in typing::check_expression(&program, expect, &scope) {
            sink.error_in_expression(
                &at,
                source,
                problem.column,
                problem.message,
                Some(problem.hint),
            );
        }
    }
}

/// Why form `id` may be missing where an expression runs, and what to do.
fn unfilled_hint(p: &Procedure, g: &Graph<'_>, place: &Place, id: &str) -> String {
    let guard = format!("test it first, `has(data.{id}) && …`");
    if let Some(c) = p.component(id) {
        let why = if c.required_when.is_some() {
            "is required only when its `required_when` holds"
        } else {
            "is not required"
        };
        return format!("component `{id}` {why}, so a dossier may come without its form: {guard}");
    }
    match place {
        Place::Filing => format!(
            "this is evaluated when the dossier is filed and received, before task `{id}` has run: read only the forms of components required at filing"
        ),
        Place::Step(i) => {
            let step = p.steps[*i].id();
            let task = g.index.get(id).copied();
            match flow::path_avoiding(g, *i, task) {
                Some(path) => format!(
                    "task `{id}` fills it, but a dossier can reach `{step}` without completing it ({}): read it only in steps after `{id}`, or {guard}",
                    path.join(" → ")
                ),
                None => format!(
                    "task `{id}` fills it, but not on every way to `{step}`: read it only in steps after `{id}`, or {guard}"
                ),
            }
        }
    }
}
