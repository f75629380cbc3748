//! `tthc bench`: measures the engine on the judicial record procedure (2.000488, happy path:
//! receive, verify, decide, sign, save to Kho DL, push to the portal, return) and prints one
//! table, optionally written as JSON. `docs/performance.md` holds the targets and the latest
//! figures; `bench/compare.sh` runs this beside the peer BPMN engines and prints the ratios.
//! Here: the arguments and the run; one file per row group (`core`, `durable`, `http`,
//! `bulk`), the procedure driven (`procedure`) and the table (`report`).
//!
//! Rows:
//! - `core`: `decide_filing` + `decide` on in-memory state, no IO;
//! - `durable`: every command its own committed SQLite transaction through
//!   `Engine::execute`, hooks through the job mechanism (`drain_jobs`);
//! - `durable_concurrent`: the same with 32 dossiers in flight and the background worker and
//!   sealer of `tthc serve` (commands of different dossiers share group commits);
//! - `postgres`: not measured until a PostgreSQL store exists;
//! - `http`: 32 concurrent clients over loopback against the real router in a child process;
//! - `audit_verify`: `Engine::verify` over the durable run's events;
//! - `worklist`, `owner_lookup`: `Store::worklist` and `Store::dossiers_of_owner` with N
//!   dossiers bulk-inserted into the tables;
//! - `storage`: bytes stored per completed dossier of the durable run.
//!
//! Nothing here asserts anything about speed: it measures and reports.

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use chrono::{DateTime, TimeZone, Utc};
use engine::calendar::Calendar;
use engine::definition::{Definition, Loader, LoaderConfig};
use engine::dossier::{
    Actor, Channel, Command, Context, Dossier, Event, Filing, HookOutcome, JobKind, JobState,
    Owner, OwnerId, decide, decide_filing,
};
use engine::engine::HookFuture;
use engine::runtime::CompiledProcedure;
use engine::{Clock, Engine, EngineConfig, HookHandler, HookRequest};
use serde::Serialize;
use serde_json::{Value, json};

use crate::auth::{self, UserKind};
use crate::config::ServeConfig;
use crate::server;

mod bulk;
mod core;
mod durable;
mod http;
mod procedure;
mod report;
#[allow(unused_imports)]
use {bulk::*, core::*, durable::*, http::*, procedure::*, report::*};

const PROCEDURE_FILE: &str = "procedures/cap-phieu-lltp.yaml";
const PROCEDURE_CODE: &str = "2.000488";
const AGENCY: &str = "000.00.01.H59";
const HTTP_CLIENTS: usize = 32;
/// Dossiers in flight at once in the `durable_concurrent` row (as many as the HTTP clients).
const IN_FLIGHT: u64 = 32;
/// How often a client looks at a dossier while the worker runs its hooks.
const POLL_MS: u64 = 25;
const SECRET_ENV: &str = "TTHC_BENCH_SECRET";
const STAND_INS: [&str; 4] = [
    "khodl.save",
    "khodl.unhide",
    "portal.sync_dossier",
    "portal.push_result",
];
const STAND_IN_NOTE: &str = "hooks khodl.save, khodl.unhide, portal.sync_dossier and \
    portal.push_result are in-process stand-ins that succeed at once (the real portal \
    simulator is measured separately later); notify is the engine's own hook (renders the \
    template into the outbox)";

/// Which measurements to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    Core,
    Durable,
    /// The durable path with dossiers in flight at once, as a server runs them.
    Concurrent,
    Postgres,
    Http,
    Verify,
    Lookup,
    Storage,
}

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Small sizes that run in seconds (for CI: proves the harness, says nothing about speed).
    #[arg(long)]
    pub quick: bool,
    /// Also write the table as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Only these measurements (comma-separated); the others are reported as skipped.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Part>,
    /// Dossiers run through the durable engine (default 2000; --quick 10).
    #[arg(long)]
    pub dossiers: Option<u64>,
    /// Dossiers stored for the worklist and owner lookups (default 1000000; --quick 5000).
    #[arg(long)]
    pub lookup_dossiers: Option<u64>,
    /// Seconds of load in the HTTP measurement (default 30; --quick 2).
    #[arg(long)]
    pub http_seconds: Option<f64>,
    /// Pace the HTTP clients: start at most this many dossiers a second in all, evenly spread
    /// (default: none, each client starts its next dossier as soon as the last is returned).
    /// Compares builds at the same offered load, which the closed loop does not.
    #[arg(long, value_parser = positive_rate)]
    pub http_pace: Option<f64>,
    /// The peers' figures (the lines `../shared/peers/run.sh` prints) to compute ratios against.
    #[arg(long)]
    pub peers: Option<PathBuf>,
    /// A PostgreSQL server to measure the durable path on too, as an URL whose user may create
    /// databases (e.g. postgres://root@127.0.0.1:5432/test); a fresh database is created on it
    /// and dropped afterwards.
    #[arg(long, env = "TTHC_BENCH_POSTGRES")]
    pub postgres: Option<String>,
    /// Folder for the temporary databases (default: the system's temporary folder).
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// Keep the work folder (the databases) for inspection instead of removing it.
    #[arg(long)]
    pub keep: bool,
    /// Internal: serve the API on this database for the HTTP measurement (a child process).
    #[arg(long, hide = true)]
    pub serve_child: Option<PathBuf>,
}

struct Sizes {
    core_seconds: f64,
    durable: u64,
    http_seconds: f64,
    lookup: u64,
    queries: usize,
}

impl Sizes {
    fn of(args: &Args) -> Sizes {
        let (core_seconds, durable, http_seconds, lookup, queries) = if args.quick {
            (0.2, 10, 2.0, 5_000, 200)
        } else {
            (3.0, 2_000, 30.0, 1_000_000, 2_000)
        };
        Sizes {
            core_seconds,
            durable: args.dossiers.unwrap_or(durable).max(1),
            http_seconds: args.http_seconds.unwrap_or(http_seconds).max(0.1),
            lookup: args.lookup_dossiers.unwrap_or(lookup).max(100),
            queries,
        }
    }
}

/// One line of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub id: &'static str,
    pub name: String,
    /// `measured`, `not_measured` or `skipped`.
    pub status: &'static str,
    /// The headline figure, in `unit`.
    pub value: Option<f64>,
    pub unit: &'static str,
    /// The table's figure as printed.
    pub figure: String,
    /// The table's detail column.
    pub detail: String,
    /// Everything measured, machine-readable.
    pub data: Value,
    pub target: String,
    /// Whether the target is met (`None`: cannot be judged from this run).
    pub met: Option<bool>,
    pub notes: Vec<String>,
}

impl Row {
    fn new(id: &'static str, name: &str, unit: &'static str, target: &str) -> Row {
        Row {
            id,
            name: name.to_owned(),
            status: "measured",
            value: None,
            unit,
            figure: String::new(),
            detail: String::new(),
            data: Value::Null,
            target: target.to_owned(),
            met: None,
            notes: Vec::new(),
        }
    }

    fn skipped(mut self) -> Row {
        self.status = "skipped";
        self.figure = "skipped (not in --only)".into();
        self
    }
}

/// A peer engine's line from `shared/peers/run.sh`.
#[derive(Debug, Clone, Serialize)]
pub struct Peer {
    pub peer: String,
    pub instances: u64,
    pub per_sec: f64,
    pub peak_rss_kb: Option<u64>,
    /// tthc's rate divided by the peer's, for `core` and `durable`.
    pub ratios: BTreeMap<String, f64>,
}

#[derive(Debug, Serialize)]
struct Report {
    tool: &'static str,
    version: &'static str,
    date: String,
    mode: &'static str,
    machine: Value,
    procedure: String,
    rows: Vec<Row>,
    peers: Vec<Peer>,
    notes: Vec<String>,
}

/// `tthc bench`.
/// A rate for `--http-pace`: a finite number above zero.
fn positive_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!(
            "`{text}` is not a rate above zero (dossiers a second)"
        )),
    }
}

pub fn run(root: &Path, args: Args) -> Result<ExitCode> {
    let root = std::fs::canonicalize(root)
        .with_context(|| format!("the procedure repository {}", root.display()))?;
    if let Some(db) = &args.serve_child {
        return serve_child(&root, db);
    }
    let sizes = Sizes::of(&args);
    let want = |p: Part| args.only.is_empty() || args.only.contains(&p);
    let peers = match &args.peers {
        Some(f) => parse_peers(
            &std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?,
        ),
        None => Vec::new(),
    };
    let work = tempfile::Builder::new()
        .prefix("tthc-bench-")
        .tempdir_in(args.workdir.clone().unwrap_or_else(std::env::temp_dir))
        .context("creating the work folder")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let definition = load_definition(&root)?;
    // The folder is removed at the end unless --keep.
    let (_guard, work) = if args.keep {
        (None, work.keep())
    } else {
        let path = work.path().to_path_buf();
        (Some(work), path)
    };
    let mode = if args.quick { "quick" } else { "full" };
    eprintln!(
        "tthc bench ({mode}): procedure {} v{}, work folder {}",
        definition.procedure.code,
        definition.procedure.version,
        work.display()
    );

    let mut rows = Vec::new();
    let core = if want(Part::Core) {
        eprintln!("- core: decide, no IO ({} s)", sizes.core_seconds);
        bench_core(&definition, sizes.core_seconds)?
    } else {
        core_row().skipped()
    };
    rows.push(core);

    let need_durable = want(Part::Durable) || want(Part::Verify) || want(Part::Storage);
    let (durable, verify, storage) = if need_durable {
        eprintln!("- durable: {} dossiers on SQLite", sizes.durable);
        rt.block_on(bench_durable(&root, &definition, &work, &sizes, &want))?
    } else {
        (
            durable_row().skipped(),
            verify_row().skipped(),
            storage_row().skipped(),
        )
    };
    rows.push(durable);

    let concurrent = if want(Part::Concurrent) {
        eprintln!(
            "- durable, concurrent: {} dossiers on SQLite, {IN_FLIGHT} in flight",
            sizes.durable
        );
        rt.block_on(bench_concurrent(&root, &definition, &work, sizes.durable))?
    } else {
        concurrent_row().skipped()
    };
    rows.push(concurrent);

    let pg = match (&args.postgres, want(Part::Postgres)) {
        (_, false) => postgres_row().skipped(),
        (Some(admin), true) => {
            // PostgreSQL syncs every commit to disk: fewer dossiers keep the run short.
            let n = sizes.durable.min(200);
            eprintln!("- postgres: {n} dossiers");
            rt.block_on(bench_postgres(&root, &definition, admin, n))?
        }
        (None, true) => {
            let mut pg = postgres_row();
            pg.status = "not_measured";
            pg.figure = "not measured: no PostgreSQL server given (--postgres URL)".into();
            pg
        }
    };
    rows.push(pg);

    let http = if want(Part::Http) {
        eprintln!(
            "- http: {HTTP_CLIENTS} clients for {} s against a child server{}",
            sizes.http_seconds,
            args.http_pace
                .map_or(String::new(), |r| format!(", {r} dossiers/s"))
        );
        rt.block_on(bench_http(&root, &work, sizes.http_seconds, args.http_pace))?
    } else {
        http_row().skipped()
    };
    rows.push(http);
    rows.push(verify);

    let (worklist, owner) = if want(Part::Lookup) {
        eprintln!("- lookups: {} dossiers bulk-inserted", sizes.lookup);
        rt.block_on(bench_lookups(&work, &sizes))?
    } else {
        (worklist_row(0).skipped(), owner_row(0).skipped())
    };
    rows.push(worklist);
    rows.push(owner);
    rows.push(storage);

    let peers = judge_against_peers(&mut rows, peers);
    let report = Report {
        tool: "tthc bench",
        version: env!("CARGO_PKG_VERSION"),
        date: Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        mode,
        machine: machine(),
        procedure: format!(
            "{} v{} ({}), happy path: file, receive, verify, draft, approve, sign, issue, \
             save to Kho DL, sync to the portal, return, push the result",
            definition.procedure.code, definition.procedure.version, definition.procedure.name
        ),
        rows,
        peers,
        notes: vec![STAND_IN_NOTE.to_owned()],
    };
    print_table(&report);
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
