//! 1. The decision core, in memory.

#[allow(unused_imports)]
use super::*;

pub(super) fn core_row() -> Row {
    Row::new(
        "core",
        "core: decide + fold, no IO",
        "dossiers/s",
        ">= 50 x SpiffWorkflow's rate",
    )
}

pub(super) struct CoreRun {
    pub(super) decisions: u64,
    pub(super) events: u64,
    pub(super) state: Dossier,
    pub(super) stream: Vec<(DateTime<Utc>, Event)>,
}

/// One dossier through the happy path, all in memory.
pub(super) fn core_dossier(
    procedure: &CompiledProcedure,
    calendar: &Calendar,
    officers: &[(Who, Actor)],
    system: &Actor,
    n: u64,
) -> Result<CoreRun> {
    let mut now = monday_morning();
    let (actor, owner) = citizen(n)?;
    let code = format!("{AGENCY}-260302-{:04}", n % 100_000);
    let ctx = Context {
        procedure,
        calendar,
        now,
        actor: &actor,
        sync_status: true,
    };
    let filing = filing(owner);
    let first = decide_filing(&ctx, &code, &filing).map_err(|e| anyhow!("filing: {e}"))?;
    let mut run = CoreRun {
        decisions: 1,
        events: first.events.len() as u64,
        state: first.state,
        // Sized for the happy path's 61 events, as a store's buffer would be: growing it
        // copied every event four times a dossier (5% of the loop's instructions).
        stream: Vec::with_capacity(64),
    };
    run.stream
        .extend(first.events.into_iter().map(|e| (now, e)));
    let step = |run: &mut CoreRun, now: DateTime<Utc>, actor: &Actor, cmd: &Command| {
        let ctx = Context {
            procedure,
            calendar,
            now,
            actor,
            sync_status: true,
        };
        let d = decide(&ctx, &run.state, cmd).map_err(|e| anyhow!("{}: {e}", cmd.name()))?;
        run.decisions += 1;
        run.events += d.events.len() as u64;
        run.stream.extend(d.events.into_iter().map(|e| (now, e)));
        run.state = d.state;
        Ok::<(), anyhow::Error>(())
    };
    for (who, act) in HAPPY_PATH {
        now += chrono::Duration::minutes(1);
        let officer = officers
            .iter()
            .find(|(w, _)| *w == who)
            .map(|(_, a)| a)
            .ok_or_else(|| anyhow!("no officer"))?;
        let cmd = command(act, &run.state)?;
        step(&mut run, now, officer, &cmd)?;
        // The worker's part: each pending hook succeeds (decided as the worker would record it).
        while let Some((job, attempt)) = pending_hook(&run.state) {
            now += chrono::Duration::seconds(1);
            let cmd = Command::RecordHookOutcome {
                job: job.clone(),
                attempt,
                outcome: HookOutcome::Succeeded {
                    detail: json!({ "key": ([&*run.state.code, "/", job.as_str()].concat()) }),
                    notification: None,
                },
            };
            step(&mut run, now, system, &cmd)?;
        }
    }
    if !run.state.is_closed() {
        bail!(
            "core: dossier {} did not end: {:?}",
            run.state.code,
            run.state.tokens
        );
    }
    Ok(run)
}

pub(super) fn bench_core(definition: &Definition, min_seconds: f64) -> Result<Row> {
    let mut row = core_row();
    let procedure = CompiledProcedure::compile(definition.clone()).map_err(|e| anyhow!(e))?;
    let calendar = Calendar::default_vietnam()?;
    let officers: Vec<(Who, Actor)> = [
        Who::Desk,
        Who::Specialist,
        Who::Head,
        Who::Leader,
        Who::Clerk,
    ]
    .into_iter()
    .map(|w| (w, w.actor()))
    .collect();
    let system = Actor::System;
    // Check once, outside the timing, that folding the stream gives the state decided.
    let probe = core_dossier(&procedure, &calendar, &officers, &system, 0)?;
    let folded = Dossier::fold(probe.stream.iter().map(|(at, e)| (*at, e)))
        .ok_or_else(|| anyhow!("core: the stream does not start with a filing"))?;
    if folded != probe.state {
        bail!("core: folding the events does not give the decided state");
    }
    // Warm-up, then timed batches until the time is spent.
    for n in 0..20 {
        core_dossier(&procedure, &calendar, &officers, &system, n)?;
    }
    let start = Instant::now();
    let mut n = 0u64;
    let (mut decisions, mut events) = (0u64, 0u64);
    while start.elapsed().as_secs_f64() < min_seconds || n < 50 {
        for _ in 0..50 {
            let r = core_dossier(&procedure, &calendar, &officers, &system, n)?;
            decisions += r.decisions;
            events += r.events;
            n += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let rate = n as f64 / secs;
    row.value = Some(rate);
    row.figure = format!("{} dossiers/s", fmt_int(rate));
    row.detail = format!(
        "{} decisions ({} events) a dossier; {} dossiers in {:.2} s, one thread",
        decisions / n,
        events / n,
        fmt_int(n as f64),
        secs
    );
    row.data = json!({
        "dossiers": n,
        "seconds": secs,
        "dossiers_per_sec": rate,
        "decisions_per_dossier": decisions as f64 / n as f64,
        "events_per_dossier": events as f64 / n as f64,
        "decisions_per_sec": decisions as f64 / secs,
    });
    row.notes.push(
        "hook outcomes are decided as the worker records them (succeeded); templates are not \
         rendered here"
            .into(),
    );
    Ok(row)
}
