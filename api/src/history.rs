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

pub async fn replay(engine: &Engine, code: &str) -> Result<ExitCode> {
    let report = engine.replay(code).await?;
    let tz = engine.calendar().timezone();
    println!("Dossier {code}");
    let mut state: Option<Dossier> = None;
    for e in &report.events {
        match state.as_mut() {
            None => state = Dossier::from_filed(e.at, &e.event),
            Some(s) => s.apply(e.at, &e.event),
        }
        let status = state.as_ref().map(|s| s.status.code()).unwrap_or(0);
        println!(
            "{:>4}  {}  {:<24} {:<64} {:<20} status {}",
            e.seq,
            e.at.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S"),
            e.actor_name,
            e.event.summary(),
            e.event.step().unwrap_or("-"),
            status
        );
    }
    let s = &report.state;
    println!(
        "Rebuilt from {} event(s): status {} ({}), {} open task(s), {} job(s), {} notification(s)",
        report.events.len(),
        s.status.code(),
        s.status.label(),
        s.tasks.len(),
        s.jobs.len(),
        s.notifications.len()
    );
    if report.matches {
        println!("State check: the stored read models match the events.");
        Ok(ExitCode::SUCCESS)
    } else {
        for d in &report.differences {
            println!("MISMATCH {d}");
        }
        Ok(ExitCode::FAILURE)
    }
}
