//! `tthc audit verify` and `tthc replay`: the auditor's commands.

use std::process::ExitCode;

use anyhow::Result;
use engine::Engine;
use engine::dossier::Dossier;

pub async fn verify(engine: &Engine, dossier: Option<&str>) -> Result<ExitCode> {
    let report = engine.verify(dossier).await?;
    for b in &report.breaks {
        println!("{}: event {}: {}", b.dossier, b.seq, b.problem);
    }
    if report.is_intact() {
        println!(
            "intact: {} event(s) in {} dossier(s) verified",
            report.events, report.dossiers
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "ALTERED: {} of {} dossier(s) fail verification",
            report.breaks.len(),
            report.dossiers
        );
        Ok(ExitCode::FAILURE)
    }
}

/// A dossier's timeline as text, rebuilt from its events, and whether the stored read models
/// match them.
pub async fn timeline(engine: &Engine, code: &str) -> Result<(String, bool)> {
    use std::fmt::Write as _;
    let report = engine.replay(code).await?;
    let tz = engine.calendar().timezone();
    let mut out = String::new();
    let mut state: Option<Dossier> = None;
    for e in &report.events {
        match state.as_mut() {
            None => state = Dossier::from_filed(e.at, &e.event),
            Some(s) => s.apply(e.at, &e.event),
        }
        let status = state.as_ref().map(|s| s.status.code()).unwrap_or(0);
        writeln!(
            out,
            "{:>4}  {}  {:<26} {:<70} {:<22} status {}",
            e.seq,
            e.at.with_timezone(&tz).format("%Y-%m-%d %H:%M"),
            e.actor_name,
            e.event.summary(),
            e.event.step().unwrap_or("-"),
            status
        )?;
    }
    let s = &report.state;
    writeln!(
        out,
        "Rebuilt from {} event(s): status {} ({}), {} open task(s), {} job(s), {} notification(s)",
        report.events.len(),
        s.status.code(),
        s.status.label(),
        s.tasks.len(),
        s.jobs_scheduled(),
        s.notifications.len()
    )?;
    if report.matches {
        writeln!(out, "State check: the stored read models match the events.")?;
    } else {
        for d in &report.differences {
            writeln!(out, "MISMATCH {d}")?;
        }
    }
    Ok((out, report.matches))
}

pub async fn replay(engine: &Engine, code: &str) -> Result<ExitCode> {
    let (text, matches) = timeline(engine, code).await?;
    println!("Dossier {code}");
    print!("{text}");
    Ok(if matches {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
