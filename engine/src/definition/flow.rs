//! What the step graph says about each step: the forms certainly filled when a dossier
//! enters it and what the decisions taken on the way prove ([`State`]), and whether parallel
//! blocks are structured.
//!
//! A form is certainly filled at a step when every path from the first step to it passes a
//! step that fills it (the component forms required at filing, a user task with a `form`
//! once completed): the filling steps, together, dominate it. It is computed as a forward
//! "must" data flow, the meet being the intersection over the ways in; a join is entered once
//! all branches of its fork are done, so there what each branch proves adds up.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use super::diagnostic::Sink;
use super::expr;
use super::model::*;
use super::typing::{Facts, facts_of};

/// What holds when a dossier enters a step.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct State {
    pub filled: BTreeSet<String>,
    pub facts: Facts,
}

impl State {
    fn meet(&mut self, other: &State) {
        self.filled.retain(|f| other.filled.contains(f));
        self.facts.retain(|a| other.facts.contains(a));
    }

    fn join(&mut self, other: &State) {
        self.filled.extend(other.filled.iter().cloned());
        self.facts.extend(other.facts.iter().cloned());
    }
}

/// The step graph by index: the first step with each id, successors with the pointer suffix
/// that names them.
pub(crate) struct Graph<'p> {
    pub p: &'p Procedure,
    pub index: HashMap<&'p str, usize>,
    pub succ: Vec<Vec<(usize, String)>>,
    pub pred: Vec<Vec<usize>>,
}

impl<'p> Graph<'p> {
    pub fn new(p: &'p Procedure) -> Graph<'p> {
        let index: HashMap<&str, usize> = p
            .steps
            .iter()
            .enumerate()
            .rev()
            .map(|(i, s)| (s.id(), i))
            .collect();
        let mut succ = vec![Vec::new(); p.steps.len()];
        let mut pred = vec![Vec::new(); p.steps.len()];
        for (i, s) in p.steps.iter().enumerate() {
            for (suffix, target) in s.successors() {
                if let Some(&j) = index.get(target) {
                    succ[i].push((j, suffix));
                    if !pred[j].contains(&i) {
                        pred[j].push(i);
                    }
                }
            }
        }
        Graph {
            p,
            index,
            succ,
            pred,
        }
    }

    /// The steps reachable from `from` without entering any step of `stop`.
    pub fn closure(&self, from: &[usize], stop: &HashSet<usize>) -> HashSet<usize> {
        let mut seen: HashSet<usize> = HashSet::new();
        let mut queue: VecDeque<usize> = VecDeque::new();
        for &f in from {
            if !stop.contains(&f) && seen.insert(f) {
                queue.push_back(f);
            }
        }
        while let Some(i) = queue.pop_front() {
            for (j, _) in &self.succ[i] {
                if !stop.contains(j) && seen.insert(*j) {
                    queue.push_back(*j);
                }
            }
        }
        seen
    }

    /// The fork of each join, by index.
    pub fn forks(&self) -> Vec<(usize, usize)> {
        self.p
            .steps
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s {
                Step::Parallel(par) => {
                    let j = *self.index.get(par.join.as_str())?;
                    matches!(self.p.steps[j], Step::Join(_)).then_some((i, j))
                }
                _ => None,
            })
            .collect()
    }

    /// Whether every way on from step `i` ends the dossier through automatic steps only
    /// (hooks and decisions): a branch may leave its block that way, ending the whole dossier.
    pub fn ends_automatically(&self, i: usize) -> bool {
        let mut seen = HashSet::new();
        let mut stack = vec![i];
        while let Some(k) = stack.pop() {
            if !seen.insert(k) {
                continue;
            }
            match &self.p.steps[k] {
                Step::End(_) => {}
                Step::Hook(_) | Step::Decision(_) => {
                    stack.extend(self.succ[k].iter().map(|(t, _)| *t));
                }
                _ => return false,
            }
        }
        true
    }

    pub fn is_end(&self, i: usize) -> bool {
        matches!(self.p.steps[i], Step::End(_))
    }
}

/// The component forms certainly filled at filing: those required without condition.
pub(crate) fn filing_forms(p: &Procedure) -> BTreeSet<String> {
    p.components
        .iter()
        .filter(|c| c.form.is_some() && c.required && c.required_when.is_none())
        .map(|c| c.id.clone())
        .collect()
}

/// The state on entry of each step (`None` for steps no dossier reaches).
pub(crate) fn states(g: &Graph<'_>) -> Vec<Option<State>> {
    let n = g.p.steps.len();
    let mut at: Vec<Option<State>> = vec![None; n];
    if n == 0 {
        return at;
    }
    // What each decision edge proves, compiled once.
    let mut edge_facts: HashMap<(usize, String), Facts> = HashMap::new();
    for (i, s) in g.p.steps.iter().enumerate() {
        if let Step::Decision(d) = s {
            let programs: Vec<Option<cel::Program>> = d
                .when
                .iter()
                .map(|b| expr::compile_expression(&b.condition).ok())
                .collect();
            let mut before: Facts = Facts::new();
            for (k, prog) in programs.iter().enumerate() {
                let mut here = before.clone();
                if let Some(prog) = prog {
                    here.extend(facts_of(prog.expression(), true));
                    before.extend(facts_of(prog.expression(), false));
                }
                edge_facts.insert((i, format!("/when/{k}/then")), here);
            }
            edge_facts.insert((i, "/else".to_owned()), before);
        }
    }
    let out = |i: usize, suffix: &str, inp: &State| -> State {
        let mut s = inp.clone();
        match &g.p.steps[i] {
            Step::UserTask(t) if t.form.is_some() => {
                s.filled.insert(t.id.clone());
                s.facts.retain(|a| !a.about_form(&t.id));
            }
            Step::Decision(_) => {
                if let Some(f) = edge_facts.get(&(i, suffix.to_owned())) {
                    s.facts.extend(f.iter().cloned());
                }
            }
            _ => {}
        }
        s
    };
    let joins: HashMap<usize, usize> = g.forks().into_iter().map(|(f, j)| (j, f)).collect();
    let regions: HashMap<usize, Vec<HashSet<usize>>> = joins
        .iter()
        .map(|(&j, &f)| {
            let Step::Parallel(par) = &g.p.steps[f] else {
                return (j, Vec::new());
            };
            let stop = HashSet::from([j]);
            let regions = par
                .branches
                .iter()
                .filter_map(|b| g.index.get(b.as_str()))
                .map(|&b| g.closure(&[b], &stop))
                .collect();
            (j, regions)
        })
        .collect();
    let entry = State {
        filled: filing_forms(g.p),
        facts: Facts::new(),
    };
    // Descends from "everything holds" (None) to the greatest fixed point.
    let mut rounds = 0;
    loop {
        rounds += 1;
        let mut changed = false;
        for i in 0..n {
            // Each way in: the predecessor's state as it leaves towards `i`.
            let incoming = |filter: &dyn Fn(usize) -> bool| -> Option<State> {
                let mut acc: Option<State> = None;
                for &p in &g.pred[i] {
                    if !filter(p) {
                        continue;
                    }
                    let Some(ps) = &at[p] else { continue };
                    for (t, suffix) in &g.succ[p] {
                        if *t != i {
                            continue;
                        }
                        let o = out(p, suffix, ps);
                        match &mut acc {
                            None => acc = Some(o),
                            Some(a) => a.meet(&o),
                        }
                    }
                }
                acc
            };
            let mut new = match regions.get(&i) {
                Some(rs) if !rs.is_empty() => {
                    let mut acc: Option<State> = None;
                    for r in rs {
                        if let Some(s) = incoming(&|p| r.contains(&p)) {
                            match &mut acc {
                                None => acc = Some(s),
                                Some(a) => a.join(&s),
                            }
                        }
                    }
                    acc
                }
                _ => incoming(&|_| true),
            };
            if i == 0 {
                match &mut new {
                    None => new = Some(entry.clone()),
                    Some(s) => s.meet(&entry),
                }
            }
            if new.is_some() && new != at[i] {
                at[i] = new;
                changed = true;
            }
        }
        // Monotone on finite sets, so it ends; the bound only guards against a mistake here.
        if !changed || rounds > 4 * n + 8 {
            break;
        }
    }
    at
}

/// A path of step ids from the first step to `to` that never passes `avoid`, if there is one.
pub(crate) fn path_avoiding<'p>(
    g: &Graph<'p>,
    to: usize,
    avoid: Option<usize>,
) -> Option<Vec<&'p str>> {
    let n = g.p.steps.len();
    let mut prev: Vec<Option<usize>> = vec![None; n];
    let mut seen = vec![false; n];
    let mut queue = VecDeque::new();
    if Some(0) == avoid || n == 0 {
        return None;
    }
    seen[0] = true;
    queue.push_back(0);
    while let Some(i) = queue.pop_front() {
        if i == to {
            let mut path = vec![g.p.steps[i].id()];
            let mut cur = i;
            while let Some(p) = prev[cur] {
                path.push(g.p.steps[p].id());
                cur = p;
            }
            path.reverse();
            return Some(path);
        }
        for (j, _) in &g.succ[i] {
            if !seen[*j] && Some(*j) != avoid {
                seen[*j] = true;
                prev[*j] = Some(i);
                queue.push_back(*j);
            }
        }
    }
    None
}

/// Parallel blocks are structured: only the fork starts its branches, a branch leaves only
/// through its join (or by ending the dossier), and a join is reached only from its branches.
pub(crate) fn check_blocks(g: &Graph<'_>, sink: &mut Sink<'_>) {
    for (f, j) in g.forks() {
        let Step::Parallel(par) = &g.p.steps[f] else {
            continue;
        };
        let join_id = g.p.steps[j].id();
        let fork_id = par.id.as_str();
        let starts: Vec<usize> = par
            .branches
            .iter()
            .filter_map(|b| g.index.get(b.as_str()).copied())
            .filter(|&b| b != j)
            .collect();
        let not_fork = HashSet::from([f]);
        let mut stop: HashSet<usize> = HashSet::from([f, j]);
        stop.extend((0..g.p.steps.len()).filter(|&i| g.is_end(i)));
        let reached = g.closure(&starts, &stop);
        // Inside the block: reached from a branch and still on the way to the join.
        let inside: HashSet<usize> = reached
            .iter()
            .copied()
            .filter(|&i| g.closure(&[i], &not_fork).contains(&j))
            .collect();
        let after = g.closure(&[j], &not_fork);
        for p in 0..g.p.steps.len() {
            for (s, suffix) in &g.succ[p] {
                let at = format!("/steps/{p}{suffix}");
                let (pid, sid) = (g.p.steps[p].id(), g.p.steps[*s].id());
                if inside.contains(&p) {
                    if *s == f
                        || (!inside.contains(s)
                            && *s != j
                            && !g.ends_automatically(*s)
                            && after.contains(s))
                    {
                        sink.error(
                            &at,
                            format!(
                                "step `{pid}`, in a branch of parallel step `{fork_id}`, leads out of the block to `{sid}`"
                            ),
                            Some(format!(
                                "a branch leaves only through the join `{join_id}`, or by ending the dossier (an `end` step, reached directly or through hooks and decisions only); otherwise `{sid}` runs while the other branches are still open and the join never completes: lead `{pid}` to `{join_id}`"
                            )),
                        );
                    }
                } else if p != f && (inside.contains(s) || *s == j) {
                    let what = if *s == j {
                        format!("the join `{join_id}`")
                    } else {
                        format!("`{sid}`, inside a branch")
                    };
                    sink.error(
                        &at,
                        format!(
                            "step `{pid}`, outside parallel step `{fork_id}`, leads into {what} of its block"
                        ),
                        Some(format!(
                            "a dossier arriving this way waits at the join `{join_id}` forever for branches that never started: only `{fork_id}` starts its branches, so lead `{pid}` to `{fork_id}` or to a step outside the block"
                        )),
                    );
                }
            }
        }
    }
}
