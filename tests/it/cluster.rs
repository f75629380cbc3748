//! Issue 6's cluster test: three `tthc serve` processes on one PostgreSQL database and one
//! `tthc portal-sim`, a load of judicial record dossiers (2.000488) driven over HTTP against
//! all three nodes round-robin, and one node killed with SIGKILL in the middle and restarted.
//!
//! Afterwards: every acknowledged command is in its dossier's event log (once, where it was
//! acknowledged, by whom it was sent); every dossier ended at status 10; every portal push
//! arrived once by idempotency key and every owner holds exactly one paper; no job succeeded
//! twice; every stored read model equals its replay; the audit chain verifies.
//!
//! Slow, so opt-in: `TTHC_SLOW_TESTS=1` (`.ci/run` sets it). The server is the one named by
//! `TTHC_TEST_DATABASE` (an admin URL, default `postgres://root@127.0.0.1:5432/test`); the
//! test creates its own database there and drops it at the end. `TTHC_KEEP_CLUSTER=1` keeps
//! the database and the nodes' logs for a post-mortem; `TTHC_CLUSTER_DOSSIERS` changes the
//! load (default 1000).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::Connection;
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tthc_api::auth::{self, UserKind};

use crate::support::repo_root;

const DEFAULT_ADMIN_URL: &str = "postgres://root@127.0.0.1:5432/test";
const SECRET: &str = "cluster-test-secret-cluster-test-secret-0123";
const PORTAL_CLIENT_ID: &str = "tthc-cluster";
const PORTAL_CLIENT_SECRET: &str = "cluster-portal-secret-0123";
const AGENCY: &str = "000.00.01.H59";
const PROCEDURE: &str = "2.000488";
const RESULT: &str = "KQ.LLTP.01";

const NODES: usize = 3;
const DEFAULT_DOSSIERS: usize = 1000;
/// Dossiers being driven at once.
const IN_FLIGHT: usize = 24;
/// The node killed, once this share of the dossiers is past reception.
const KILLED_NODE: usize = 1;
const KILL_AT_SHARE: f64 = 0.4;
/// How long the killed node stays down (its address refuses connections meanwhile).
const DOWN_FOR: Duration = Duration::from_millis(1500);
/// The first dossiers are filed with the same Idempotency-Key on two nodes at once.
const FILING_RACES: usize = 8;
/// Receptions sent with the same If-Match to two nodes at once (tried on early dossiers).
const RECEIVE_RACES: usize = 12;

/// Bounds: the whole load, one process starting, one request, a dossier making no progress
/// (above the engine's 60 s job lease, after which a dead node's job is taken over), the
/// background work settling after the load.
const LOAD_LIMIT: Duration = Duration::from_secs(10 * 60);
const START_LIMIT: Duration = Duration::from_secs(120);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const STUCK_LIMIT: Duration = Duration::from_secs(240);
const SETTLE_LIMIT: Duration = Duration::from_secs(180);
/// Attempts of a request that never got an answer (refused, reset, timed out, 5xx).
const TRANSPORT_ATTEMPTS: u32 = 40;
/// Dossiers failing outright before the load is abandoned.
const MAX_DOSSIER_ERRORS: usize = 10;

/// A line on the real stderr: shown even when libtest captures the test's output.
fn say(line: impl AsRef<str>) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "[cluster] {}", line.as_ref());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_one_postgres_survive_a_sigkill_under_load() {
    if std::env::var("TTHC_SLOW_TESTS").as_deref() != Ok("1") {
        say(
            "skipped: TTHC_SLOW_TESTS is unset (or not 1); set TTHC_SLOW_TESTS=1 to run the \
             3-node PostgreSQL cluster test (.ci/run does)",
        );
        return;
    }
    let dossiers = match std::env::var("TTHC_CLUSTER_DOSSIERS") {
        Err(_) => DEFAULT_DOSSIERS,
        Ok(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| *n >= 10)
            .unwrap_or_else(|| panic!("TTHC_CLUSTER_DOSSIERS={v} is not a number of at least 10")),
    };
    let admin_url =
        std::env::var("TTHC_TEST_DATABASE").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned());
    let keep = std::env::var("TTHC_KEEP_CLUSTER").as_deref() == Ok("1");
    let started = Instant::now();

    // ---- A fresh database on the server, three nodes on it, one portal simulator.
    let database = format!("tthc_cluster_{:016x}", rand::random::<u64>());
    let mut admin = connect_admin(&admin_url).await;
    // The name is `tthc_cluster_` and hex digits: nothing to quote.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("cannot create database {database} through {admin_url}: {e}"));
    let _ = admin.close().await;
    let database_url = with_database(&admin_url, &database);
    let dir = tempfile::tempdir().expect("a temporary folder for the cluster");
    let mut guard = Guard {
        procs: Arc::new(Mutex::new(Vec::new())),
        admin_url: admin_url.clone(),
        database: Some(database.clone()),
        dir: Some(dir),
        keep,
    };
    let work = guard.path();
    say(format!(
        "{dossiers} dossiers, {NODES} nodes on {database_url}, files in {}",
        work.display()
    ));

    let sim = spawn_and_read_address(
        "portal-sim",
        tthc_command(&work)
            .arg("portal-sim")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--database")
            .arg(format!("sqlite://{}", work.join("sim.db").display()))
            .arg("--client-id")
            .arg(PORTAL_CLIENT_ID)
            .arg("--client-secret")
            .arg(PORTAL_CLIENT_SECRET),
        &work.join("portal-sim.log"),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let portal = sim.base.clone();
    guard.add(sim);

    let blobs = work.join("blobs");
    std::fs::create_dir_all(&blobs).expect("the shared blob folder");
    let specs: Vec<NodeSpec> = (0..NODES)
        .map(|i| {
            let config = work.join(format!("node{i}.yaml"));
            std::fs::write(&config, node_config(&database_url, &portal, &blobs))
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", config.display()));
            NodeSpec {
                index: i,
                config,
                work: work.clone(),
            }
        })
        .collect();
    // All three at once, as an orchestrator starts replicas: they migrate and deploy the
    // same definitions on the same fresh database concurrently.
    let mut starting = JoinSet::new();
    for spec in specs.clone() {
        starting.spawn(async move { (spec.index, start_node(&spec, 1).await) });
    }
    let mut nodes: Vec<Option<Proc>> = (0..NODES).map(|_| None).collect();
    let mut failures = Vec::new();
    while let Some(joined) = starting.join_next().await {
        match joined {
            Ok((i, Ok(p))) => nodes[i] = Some(p),
            Ok((i, Err(e))) => failures.push(format!("node {i}: {e}")),
            Err(e) => failures.push(format!("a node's start panicked: {e}")),
        }
    }
    let bases: Vec<(String, String)> = nodes
        .iter()
        .flatten()
        .map(|p| (p.label.clone(), p.base.clone()))
        .collect();
    for p in nodes.into_iter().flatten() {
        guard.add(p);
    }
    assert!(
        failures.is_empty(),
        "three nodes started at once on one fresh database must all come up:\n{}",
        failures.join("\n")
    );
    let cluster = Arc::new(Cluster::new(bases));
    for i in 0..NODES {
        let r = cluster
            .read(&Call::get("/ready", "").on(i))
            .await
            .unwrap_or_else(|e| panic!("node {i} never answered /ready: {e}"));
        assert_eq!(r.status, StatusCode::OK, "node {i} /ready: {}", r.text);
    }
    let startup = started.elapsed();
    say(format!("cluster up in {:.1} s", startup.as_secs_f64()));

    // ---- The load, with the kill in the middle.
    let tokens = Arc::new(Tokens::new(dossiers));
    let progress = Arc::new(Progress::default());
    let violations = Arc::new(Violations::default());
    let kill_at = ((dossiers as f64) * KILL_AT_SHARE).ceil() as usize;
    let killer = {
        let (cluster, progress, procs, spec) = (
            cluster.clone(),
            progress.clone(),
            guard.procs.clone(),
            specs[KILLED_NODE].clone(),
        );
        tokio::spawn(async move { kill_and_restart(cluster, progress, procs, spec, kill_at).await })
    };
    let reporter = {
        let (cluster, progress) = (cluster.clone(), progress.clone());
        tokio::spawn(async move {
            let t0 = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_secs(15)).await;
                say(format!(
                    "{:>4} s: filed {}, received {}, closed {} of {dossiers}; {} requests, {} lost, {} conflicts",
                    t0.elapsed().as_secs(),
                    progress.filed.load(Ordering::Relaxed),
                    progress.received.load(Ordering::Relaxed),
                    progress.closed.load(Ordering::Relaxed),
                    cluster.stats.requests.load(Ordering::Relaxed),
                    cluster.stats.lost.load(Ordering::Relaxed),
                    cluster.stats.conflicts.load(Ordering::Relaxed),
                ));
            }
        })
    };
    let load_started = Instant::now();
    let runs = tokio::time::timeout(
        LOAD_LIMIT,
        drive_all(
            cluster.clone(),
            tokens.clone(),
            progress.clone(),
            violations.clone(),
        ),
    )
    .await;
    reporter.abort();
    let load_time = load_started.elapsed();
    let runs = match runs {
        Ok(runs) => runs,
        Err(_) => {
            killer.abort();
            panic!(
                "the load did not finish within {} s: filed {}, received {}, closed {} of {dossiers}; \
                 {} requests, {} lost; violations so far:\n{}",
                LOAD_LIMIT.as_secs(),
                progress.filed.load(Ordering::Relaxed),
                progress.received.load(Ordering::Relaxed),
                progress.closed.load(Ordering::Relaxed),
                cluster.stats.requests.load(Ordering::Relaxed),
                cluster.stats.lost.load(Ordering::Relaxed),
                violations.summary(),
            );
        }
    };
    let kill = match killer.await {
        Ok(Ok(k)) => k,
        Ok(Err(e)) => panic!("killing and restarting node {KILLED_NODE} failed: {e}"),
        Err(e) => panic!("the killer task failed: {e}"),
    };
    let errors = progress.errors.load(Ordering::Relaxed);
    assert!(
        errors == 0,
        "{errors} dossiers could not be driven to their end:\n{}",
        violations.summary()
    );
    say(format!(
        "load done in {:.1} s; node {KILLED_NODE} killed after {} receptions, back after {:.1} s",
        load_time.as_secs_f64(),
        kill.received_at_kill,
        kill.down.as_secs_f64()
    ));

    // ---- Let the background work settle, then check everything.
    let db = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(20))
        .connect(&database_url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {database_url}: {e}"));
    let codes: Vec<(String, String)> = runs
        .iter()
        .flat_map(|r| r.codes.iter().map(|c| (c.clone(), r.citizen.clone())))
        .collect();
    settle(&db, codes.len(), &violations).await;
    let checks_started = Instant::now();
    check_dossiers(&cluster, &tokens, &runs, &violations).await;
    let store = engine::store::Store::open(&database_url)
        .await
        .unwrap_or_else(|e| panic!("cannot open the store on {database_url}: {e}"));
    let all_codes: Vec<String> = codes.iter().map(|(c, _)| c.clone()).collect();
    let tally = tally_jobs(&store, &all_codes, &violations).await;
    check_jobs(&db, &tally, &violations).await;
    check_sealed(&db, &violations).await;
    check_portal(&cluster, &portal, &runs, &tally, &violations).await;
    check_audit(&cluster, &tokens, codes.len(), dossiers, &violations).await;
    check_races(&progress, &violations);
    check_kill(&cluster, &kill, &violations);
    check_deploy_reaches_every_node(&cluster, &tokens, &violations).await;
    say(summarize_logs(&work));
    let errors_5xx = cluster.server_errors();
    if !errors_5xx.is_empty() {
        violations.push(format!(
            "{} server errors (5xx) were answered; the first: {}",
            errors_5xx.len(),
            errors_5xx
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join(" | ")
        ));
    }
    db.close().await;

    let s = &cluster.stats;
    say(format!(
        "checked in {:.1} s; total {:.1} s (start {:.1} s, load {:.1} s); {} requests ({} answered per node: {:?}); \
         {} lost in transport, {} refused connections retried, {} conflicts, {} invalid-state answers; \
         receive races {} decisive; filing races {}",
        checks_started.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64(),
        startup.as_secs_f64(),
        load_time.as_secs_f64(),
        s.requests.load(Ordering::Relaxed),
        s.answered(),
        s.by_node(),
        s.lost.load(Ordering::Relaxed),
        s.refused.load(Ordering::Relaxed),
        s.conflicts.load(Ordering::Relaxed),
        s.invalid_state.load(Ordering::Relaxed),
        progress.decisive_races.load(Ordering::Relaxed),
        FILING_RACES.min(dossiers),
    ));
    let found = violations.take();
    assert!(
        found.is_empty(),
        "{} invariants broken on the cluster:\n{}",
        found.len(),
        found
            .iter()
            .take(60)
            .map(|v| format!("- {v}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// A running `tthc` process and where its stderr goes.
struct Proc {
    label: String,
    child: Child,
    base: String,
    log: PathBuf,
}

#[derive(Clone)]
struct NodeSpec {
    index: usize,
    config: PathBuf,
    work: PathBuf,
}

/// Kills every process (also when the test fails) and drops the database.
struct Guard {
    procs: Arc<Mutex<Vec<Option<Proc>>>>,
    admin_url: String,
    database: Option<String>,
    dir: Option<tempfile::TempDir>,
    keep: bool,
}

impl Guard {
    fn path(&self) -> PathBuf {
        self.dir
            .as_ref()
            .map(|d| d.path().to_path_buf())
            .unwrap_or_default()
    }

    fn add(&mut self, p: Proc) {
        self.procs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Some(p));
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let failing = std::thread::panicking();
        let procs: Vec<Proc> = self
            .procs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .flatten()
            .collect();
        for mut p in procs {
            let _ = p.child.kill();
            let _ = p.child.wait();
            if failing {
                say(format!(
                    "--- last lines of {} ({}):",
                    p.label,
                    p.log.display()
                ));
                for line in log_tail(&p.log, 12) {
                    say(format!("    {line}"));
                }
            }
        }
        if self.keep {
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                say(format!(
                    "kept {} and database {:?} (TTHC_KEEP_CLUSTER=1)",
                    kept.display(),
                    self.database
                ));
            }
            return;
        }
        if let Some(database) = self.database.take() {
            let admin_url = self.admin_url.clone();
            // A runtime of its own: this may run while the test's runtime unwinds.
            let dropped = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                rt.block_on(async {
                    let mut c = tokio::time::timeout(
                        Duration::from_secs(10),
                        PgConnection::connect(&admin_url),
                    )
                    .await
                    .map_err(|_| "timed out connecting".to_owned())?
                    .map_err(|e| e.to_string())?;
                    let forced = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {database} WITH (FORCE)"
                    )))
                    .execute(&mut c)
                    .await;
                    if forced.is_err() {
                        sqlx::query(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {database}"
                        )))
                        .execute(&mut c)
                        .await
                        .map_err(|e| e.to_string())?;
                    }
                    Ok::<(), String>(())
                })
            })
            .join();
            match dropped {
                Ok(Ok(())) => {}
                Ok(Err(e)) => say(format!("could not drop the test database: {e}")),
                Err(_) => say("dropping the test database panicked"),
            }
        }
    }
}

fn log_tail(path: &Path, n: usize) -> Vec<String> {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.chars().take(400).collect())
        .collect()
}

/// The `tthc` binary in `dir`, with no `TTHC_*` variable from the caller's environment.
fn tthc_command(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tthc"));
    c.current_dir(dir).env("RUST_LOG", "warn");
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("TTHC_") {
            c.env_remove(k);
        }
    }
    c
}

/// Starts a process that prints `… listening on http://ADDR …` on stdout, and waits for it.
async fn spawn_and_read_address(
    label: &str,
    cmd: &mut Command,
    log: &Path,
) -> Result<Proc, String> {
    let label = label.to_owned();
    let log = log.to_path_buf();
    let file = std::fs::File::create(&log)
        .map_err(|e| format!("{label}: cannot create {}: {e}", log.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(file));
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("{label}: cannot start {}: {e}", env!("CARGO_BIN_EXE_tthc")))?;
    let Some(stdout) = child.stdout.take() else {
        let _ = child.kill();
        return Err(format!("{label}: no stdout"));
    };
    tokio::task::spawn_blocking(move || {
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        // Reads every line, so the process never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // Once nobody listens, keep draining anyway.
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + START_LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = line
                        .split("listening on http://")
                        .nth(1)
                        .and_then(|rest| rest.split_whitespace().next())
                    {
                        return Ok(Proc {
                            base: format!("http://{addr}"),
                            label,
                            child,
                            log,
                        });
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "{label} did not print its address within {} s; its log ends with:\n{}",
                        START_LIMIT.as_secs(),
                        log_tail(&log, 20).join("\n")
                    ));
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
                    return Err(format!(
                        "{label} exited ({status}) before listening; its log ends with:\n{}",
                        log_tail(&log, 20).join("\n")
                    ));
                }
            }
        }
    })
    .await
    .map_err(|e| format!("{e}"))?
}

async fn start_node(spec: &NodeSpec, generation: u32) -> Result<Proc, String> {
    let label = format!("node{}#{generation}", spec.index);
    let log = spec.work.join(format!("{label}.log"));
    spawn_and_read_address(
        &label,
        tthc_command(&spec.work)
            .arg("serve")
            .arg("--config")
            .arg(&spec.config),
        &log,
    )
    .await
}

/// A node's configuration: everything shared but the port.
fn node_config(database_url: &str, portal: &str, blobs: &Path) -> String {
    // JSON strings are YAML double-quoted scalars.
    let q = |s: &str| Value::String(s.to_owned()).to_string();
    [
        "listen: \"127.0.0.1:0\"".to_owned(),
        format!("database_url: {}", q(database_url)),
        format!("root: {}", q(&repo_root().display().to_string())),
        format!("jwt_secret: {}", q(SECRET)),
        format!("portal_url: {}", q(portal)),
        format!("portal_client_id: {}", q(PORTAL_CLIENT_ID)),
        format!("portal_client_secret: {}", q(PORTAL_CLIENT_SECRET)),
        "portal_simulator: false".to_owned(),
        format!("blobs_dir: {}", q(&blobs.display().to_string())),
        "job_poll_ms: 100".to_owned(),
        // Every 5 s, so the once-per-tick scan runs on all nodes during the load.
        "overdue_scan: \"*/5 * * * * *\"".to_owned(),
        "log_format: json".to_owned(),
    ]
    .join("\n")
        + "\n"
}

struct Kill {
    received_at_kill: usize,
    down: Duration,
    restarted_label: String,
}

/// Waits until `kill_at` dossiers are past reception, kills the node with SIGKILL, leaves
/// it down a moment, and starts it again with the same configuration.
async fn kill_and_restart(
    cluster: Arc<Cluster>,
    progress: Arc<Progress>,
    procs: Arc<Mutex<Vec<Option<Proc>>>>,
    spec: NodeSpec,
    kill_at: usize,
) -> Result<Kill, String> {
    while progress.received.load(Ordering::Relaxed) < kill_at {
        if progress.finished.load(Ordering::Relaxed) {
            return Err(format!(
                "the load finished before {kill_at} dossiers were past reception"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let received_at_kill = progress.received.load(Ordering::Relaxed);
    let label = format!("node{}#1", spec.index);
    let killed_at = Instant::now();
    {
        let mut procs = procs.lock().unwrap_or_else(|e| e.into_inner());
        let p = procs
            .iter_mut()
            .flatten()
            .find(|p| p.label == label)
            .ok_or_else(|| format!("{label} is not running"))?;
        // Child::kill is SIGKILL on Unix: no graceful shutdown, leases left behind.
        p.child.kill().map_err(|e| format!("kill {label}: {e}"))?;
        let _ = p.child.wait();
    }
    say(format!(
        "SIGKILL {label} after {received_at_kill} receptions"
    ));
    tokio::time::sleep(DOWN_FOR).await;
    let restarted = start_node(&spec, 2).await?;
    let down = killed_at.elapsed();
    cluster.replace(spec.index, &restarted.label, &restarted.base);
    let restarted_label = restarted.label.clone();
    say(format!(
        "{restarted_label} up at {} after {:.1} s",
        restarted.base,
        down.as_secs_f64()
    ));
    procs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Some(restarted));
    Ok(Kill {
        received_at_kill,
        down,
        restarted_label,
    })
}

async fn connect_admin(admin_url: &str) -> PgConnection {
    let hint = "the cluster test runs because TTHC_SLOW_TESTS=1; it needs a PostgreSQL server \
                (TTHC_TEST_DATABASE, default postgres://root@127.0.0.1:5432/test) on which it may \
                CREATE DATABASE; .ci/run starts or installs one";
    match tokio::time::timeout(Duration::from_secs(15), PgConnection::connect(admin_url)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => panic!("PostgreSQL at {admin_url} is unreachable: {e}\n({hint})"),
        Err(_) => panic!("PostgreSQL at {admin_url} did not answer within 15 s\n({hint})"),
    }
}

/// `admin_url` with its database replaced by `name` (query parameters kept).
fn with_database(admin_url: &str, name: &str) -> String {
    let (base, query) = match admin_url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (admin_url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let server = match base[authority_start..].find('/') {
        Some(i) => &base[..authority_start + i],
        None => base,
    };
    match query {
        Some(q) => format!("{server}/{name}?{q}"),
        None => format!("{server}/{name}"),
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP against the cluster
// ---------------------------------------------------------------------------------------------

struct Node {
    label: String,
    base: String,
}

#[derive(Default)]
struct HttpStats {
    requests: AtomicU64,
    /// Requests that got no answer (reset, timed out, 5xx): the outcome is unknown.
    lost: AtomicU64,
    /// Connections refused (the node is down): the request never arrived; sent elsewhere.
    refused: AtomicU64,
    conflicts: AtomicU64,
    invalid_state: AtomicU64,
    by_node: Mutex<BTreeMap<String, u64>>,
}

impl HttpStats {
    fn by_node(&self) -> BTreeMap<String, u64> {
        self.by_node
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    fn answered(&self) -> u64 {
        self.by_node().values().sum()
    }
}

struct Cluster {
    http: reqwest::Client,
    nodes: RwLock<Vec<Node>>,
    next: AtomicUsize,
    stats: HttpStats,
    server_errors: Mutex<Vec<String>>,
}

#[derive(Clone)]
struct Call {
    method: Method,
    path: String,
    token: String,
    body: Option<Value>,
    /// A YAML body (procedure definitions) instead of JSON.
    yaml: Option<String>,
    headers: Vec<(&'static str, String)>,
    node: Option<usize>,
}

impl Call {
    fn get(path: impl Into<String>, token: &str) -> Call {
        Call {
            method: Method::GET,
            path: path.into(),
            token: token.to_owned(),
            body: None,
            yaml: None,
            headers: Vec::new(),
            node: None,
        }
    }
    fn post_yaml(path: impl Into<String>, token: &str, yaml: String) -> Call {
        Call {
            method: Method::POST,
            yaml: Some(yaml),
            ..Call::get(path, token)
        }
    }
    fn post(path: impl Into<String>, token: &str, body: Value) -> Call {
        Call {
            method: Method::POST,
            body: Some(body),
            ..Call::get(path, token)
        }
    }
    fn header(mut self, name: &'static str, value: impl Into<String>) -> Call {
        self.headers.push((name, value.into()));
        self
    }
    /// Always to this node (otherwise round-robin).
    fn on(mut self, node: usize) -> Call {
        self.node = Some(node);
        self
    }
}

struct Reply {
    status: StatusCode,
    body: Value,
    text: String,
    node: String,
}

impl Reply {
    fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or_default()
    }
}

enum Attempt {
    Answer(Reply),
    /// Connection refused: the request never reached a node.
    Refused(String),
    /// Sent, but no answer came back: it may or may not have taken effect.
    Lost(String),
}

impl Cluster {
    fn new(nodes: Vec<(String, String)>) -> Cluster {
        Cluster {
            http: reqwest::Client::builder()
                .timeout(REQUEST_TIMEOUT)
                .connect_timeout(Duration::from_secs(5))
                .pool_idle_timeout(Duration::from_secs(5))
                .build()
                .expect("an HTTP client"),
            nodes: RwLock::new(
                nodes
                    .into_iter()
                    .map(|(label, base)| Node { label, base })
                    .collect(),
            ),
            next: AtomicUsize::new(0),
            stats: HttpStats::default(),
            server_errors: Mutex::new(Vec::new()),
        }
    }

    fn replace(&self, index: usize, label: &str, base: &str) {
        let mut nodes = self.nodes.write().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = nodes.get_mut(index) {
            n.label = label.to_owned();
            n.base = base.to_owned();
        }
    }

    fn pick(&self, node: Option<usize>) -> (String, String) {
        let nodes = self.nodes.read().unwrap_or_else(|e| e.into_inner());
        let i = node.unwrap_or_else(|| self.next.fetch_add(1, Ordering::Relaxed)) % nodes.len();
        (nodes[i].label.clone(), nodes[i].base.clone())
    }

    fn server_errors(&self) -> Vec<String> {
        self.server_errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// One attempt on one node (the call's, or the next one round-robin).
    async fn once(&self, call: &Call) -> Attempt {
        self.once_on(call, call.node).await
    }

    async fn once_on(&self, call: &Call, node: Option<usize>) -> Attempt {
        let (label, base) = self.pick(node);
        let mut rb = self
            .http
            .request(call.method.clone(), format!("{base}{}", call.path));
        if !call.token.is_empty() {
            rb = rb.bearer_auth(&call.token);
        }
        for (k, v) in &call.headers {
            rb = rb.header(*k, v);
        }
        if let Some(b) = &call.body {
            rb = rb.json(b);
        }
        if let Some(y) = &call.yaml {
            rb = rb
                .header(reqwest::header::CONTENT_TYPE, "application/yaml")
                .body(y.clone());
        }
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let response = match rb.send().await {
            Ok(r) => r,
            Err(e) if e.is_connect() => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                return Attempt::Refused(format!("{label}: {e}"));
            }
            Err(e) => {
                self.stats.lost.fetch_add(1, Ordering::Relaxed);
                return Attempt::Lost(format!("{} {} on {label}: {e}", call.method, call.path));
            }
        };
        let status = response.status();
        let text = match response.text().await {
            Ok(t) => t,
            Err(e) => {
                self.stats.lost.fetch_add(1, Ordering::Relaxed);
                return Attempt::Lost(format!(
                    "{} {} on {label}: {status}, body lost: {e}",
                    call.method, call.path
                ));
            }
        };
        *self
            .stats
            .by_node
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(label.clone())
            .or_default() += 1;
        if status.is_server_error() {
            let what = format!(
                "{} {} on {label}: {status} {}",
                call.method,
                call.path,
                text.chars().take(300).collect::<String>()
            );
            self.server_errors
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(what.clone());
            self.stats.lost.fetch_add(1, Ordering::Relaxed);
            return Attempt::Lost(what);
        }
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Attempt::Answer(Reply {
            status,
            body,
            text,
            node: label,
        })
    }

    /// A request that is safe to repeat (a read, or a write with an Idempotency-Key): sent
    /// until some node answers.
    async fn read(&self, call: &Call) -> Result<Reply, String> {
        let mut last = String::new();
        for attempt in 0..TRANSPORT_ATTEMPTS {
            // A pinned call stays on its node; otherwise each attempt goes to the next node.
            match self.once(call).await {
                Attempt::Answer(r) => return Ok(r),
                Attempt::Refused(e) | Attempt::Lost(e) => last = e,
            }
            backoff(attempt).await;
        }
        Err(format!(
            "{} {}: no answer after {TRANSPORT_ATTEMPTS} attempts; last: {last}",
            call.method, call.path
        ))
    }

    /// A command that must not run twice: resent only when the connection was refused.
    async fn command(&self, call: &Call) -> Attempt {
        let mut last = String::new();
        for attempt in 0..TRANSPORT_ATTEMPTS {
            match self.once(call).await {
                Attempt::Refused(e) => last = e,
                other => return other,
            }
            backoff(attempt).await;
        }
        Attempt::Lost(format!("every node refused the connection; last: {last}"))
    }
}

async fn backoff(attempt: u32) {
    let ms = (50u64 << attempt.min(5)).min(1500);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

// ---------------------------------------------------------------------------------------------
// Users
// ---------------------------------------------------------------------------------------------

struct Officer {
    sub: &'static str,
    token: String,
}

struct Citizen {
    id: String,
    sub: String,
    name: String,
    token: String,
}

struct Tokens {
    desk: Officer,
    specialist: Officer,
    head: Officer,
    leader: Officer,
    clerk: Officer,
    admin: String,
    auditor: String,
    citizens: Vec<Citizen>,
}

fn mint(kind: UserKind, sub: &str, roles: &[&str], agency: bool, owner: Option<&str>) -> String {
    let claims = auth::claims(
        kind,
        sub,
        &format!("Người dùng {sub}"),
        roles.iter().map(|r| r.to_string()).collect(),
        agency.then(|| AGENCY.to_owned()),
        owner.map(str::to_owned),
        chrono::Duration::hours(3),
    );
    auth::mint(SECRET.as_bytes(), &claims)
        .unwrap_or_else(|e| panic!("cannot mint a token for {sub}: {e}"))
}

impl Tokens {
    fn new(citizens: usize) -> Tokens {
        let officer = |sub: &'static str, role: &str| Officer {
            sub,
            token: mint(UserKind::Officer, sub, &[role], true, None),
        };
        Tokens {
            desk: officer("desk", "mot_cua"),
            specialist: officer("specialist", "chuyen_vien"),
            head: officer("head", "lanh_dao_phong"),
            leader: officer("leader", "lanh_dao"),
            clerk: officer("clerk", "van_thu"),
            admin: mint(UserKind::Admin, "admin", &[], false, None),
            auditor: mint(UserKind::Auditor, "auditor", &[], false, None),
            citizens: (0..citizens)
                .map(|i| {
                    // 12-digit citizen ids, one per dossier: every owner differs.
                    let id = format!("0790{:08}", i + 1);
                    let sub = format!("citizen-{i}");
                    Citizen {
                        token: mint(UserKind::Citizen, &sub, &[], false, Some(&id)),
                        name: format!("Nguyễn Văn Công Dân {i}"),
                        id,
                        sub,
                    }
                })
                .collect(),
        }
    }
}

fn lltp_form(c: &Citizen) -> Value {
    json!({
        "ho_ten": c.name,
        "gioi_tinh": "nam",
        "ngay_sinh": "1990-05-17",
        "noi_sinh": "Hưng Yên",
        "so_cccd": c.id,
        "noi_thuong_tru": "Số 1 đường Nguyễn Văn Linh, TP Hưng Yên",
        "ho_ten_cha": "Nguyễn Văn Bình",
        "ho_ten_me": "Trần Thị Cúc",
        "loai_phieu": 1,
        "muc_dich": "Bổ sung hồ sơ xin việc",
        "so_luong_phieu": 1,
        "la_sinh_vien": false,
        "cu_tru_nhieu_noi": false,
        "cu_tru_nuoc_ngoai": false,
        "da_duoc_xoa_an_tich": false,
        "la_nguoi_co_cong": false,
        "uy_quyen": false
    })
}

fn tham_dinh_data() -> Value {
    json!({"co_an_tich": false, "can_xac_minh": false})
}

// ---------------------------------------------------------------------------------------------
// Driving dossiers
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Progress {
    filed: AtomicUsize,
    received: AtomicUsize,
    closed: AtomicUsize,
    errors: AtomicUsize,
    finished: AtomicBool,
    receive_races_left: AtomicUsize,
    decisive_races: AtomicUsize,
}

#[derive(Default)]
struct Violations(Mutex<Vec<String>>);

impl Violations {
    fn push(&self, v: impl Into<String>) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(v.into());
    }
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
    fn summary(&self) -> String {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .take(30)
            .map(|v| format!("- {v}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// What a node acknowledged (2xx) for a dossier.
#[derive(Debug, Clone)]
enum Action {
    Filed,
    Received,
    Claimed(String),
    Completed(String),
    Signed,
    Returned,
}

impl Action {
    /// Whether `e` (an event as `/events` shows it) is the event this command produced.
    fn matches(&self, e: &Value, actor: &str) -> bool {
        let kind = e["type"].as_str().unwrap_or_default();
        let p = &e["payload"];
        let by_actor = e["actor_id"] == actor;
        match self {
            Action::Filed => kind == "filed",
            Action::Received => kind == "received" && by_actor,
            Action::Claimed(t) => {
                kind == "task_claimed" && p["task"] == t.as_str() && p["by"] == actor
            }
            Action::Completed(t) => kind == "task_completed" && p["task"] == t.as_str(),
            Action::Signed => kind == "result_signed" && p["result_code"] == RESULT,
            Action::Returned => kind == "result_returned",
        }
    }
}

#[derive(Debug, Clone)]
struct Ack {
    action: Action,
    /// The dossier's seq in the acknowledging answer.
    seq: u64,
    actor: String,
    node: String,
}

struct Run {
    index: usize,
    citizen: String,
    codes: Vec<String>,
    ledgers: BTreeMap<String, Vec<Ack>>,
}

async fn drive_all(
    cluster: Arc<Cluster>,
    tokens: Arc<Tokens>,
    progress: Arc<Progress>,
    violations: Arc<Violations>,
) -> Vec<Run> {
    progress
        .receive_races_left
        .store(RECEIVE_RACES, Ordering::Relaxed);
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut set = JoinSet::new();
    let mut runs = Vec::new();
    for index in 0..tokens.citizens.len() {
        if progress.errors.load(Ordering::Relaxed) >= MAX_DOSSIER_ERRORS {
            break;
        }
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let (c, t, p, v) = (
            cluster.clone(),
            tokens.clone(),
            progress.clone(),
            violations.clone(),
        );
        set.spawn(async move {
            let _slot = slot;
            let run = run_one(&c, &t, &p, &v, index).await;
            if let Err(e) = &run {
                p.errors.fetch_add(1, Ordering::Relaxed);
                v.push(format!("dossier #{index}: {e}"));
            }
            run
        });
        while let Some(done) = set.try_join_next() {
            collect(done, &mut runs, &violations);
        }
    }
    while let Some(done) = set.join_next().await {
        collect(done, &mut runs, &violations);
    }
    progress.finished.store(true, Ordering::Relaxed);
    runs.sort_by_key(|r| r.index);
    runs
}

fn collect(
    done: Result<Result<Run, String>, tokio::task::JoinError>,
    runs: &mut Vec<Run>,
    violations: &Violations,
) {
    match done {
        Ok(Ok(run)) => runs.push(run),
        Ok(Err(_)) => {}
        Err(e) => violations.push(format!("a dossier's task panicked: {e}")),
    }
}

/// Files citizen `index`'s dossier, then drives every dossier the owner has to its end.
async fn run_one(
    cluster: &Cluster,
    tokens: &Tokens,
    progress: &Progress,
    violations: &Violations,
    index: usize,
) -> Result<Run, String> {
    let citizen = &tokens.citizens[index];
    let (code, ack) = file(cluster, citizen, index, violations).await?;
    progress.filed.fetch_add(1, Ordering::Relaxed);
    // Whatever the transport did, the owner must have exactly the one dossier.
    let listed = cluster
        .read(&Call::get(
            format!("/api/v1/dossiers?owner_id={}&limit=200", citizen.id),
            &tokens.admin,
        ))
        .await?;
    let mut codes: Vec<String> = listed
        .body
        .as_array()
        .ok_or_else(|| format!("the owner's dossier list is not a list: {}", listed.text))?
        .iter()
        .filter_map(|d| d["code"].as_str().map(str::to_owned))
        .collect();
    if codes != [code.clone()] {
        violations.push(format!(
            "owner {} filed once (Idempotency-Key cluster-filing-{index}, acknowledged as {code}) \
             but has dossiers {codes:?}",
            citizen.id
        ));
        if !codes.contains(&code) {
            codes.push(code.clone());
        }
    }
    let mut ledgers = BTreeMap::new();
    for c in &codes {
        let mut ledger = Vec::new();
        if *c == code {
            ledger.push(ack.clone());
        }
        drive(cluster, tokens, progress, violations, c, &mut ledger).await?;
        ledgers.insert(c.clone(), ledger);
    }
    Ok(Run {
        index,
        citizen: citizen.id.clone(),
        codes,
        ledgers,
    })
}

/// Files online as the citizen, with an Idempotency-Key so a request lost with its node can
/// be sent again to another one.
async fn file(
    cluster: &Cluster,
    citizen: &Citizen,
    index: usize,
    violations: &Violations,
) -> Result<(String, Ack), String> {
    let call = Call::post(
        "/api/v1/dossiers",
        &citizen.token,
        json!({"procedure_code": PROCEDURE, "agency_code": AGENCY, "data": {"to_khai": lltp_form(citizen)}}),
    )
    .header("Idempotency-Key", format!("cluster-filing-{index}"));
    if index < FILING_RACES {
        // The same request on two nodes at once (a client retrying on another node while
        // the first is still working): at most one dossier, the same answer to both.
        let (a, b) = tokio::join!(
            cluster.once_on(&call, Some(index)),
            cluster.once_on(&call, Some(index + 1))
        );
        let mut answered = BTreeSet::new();
        for r in [a, b] {
            match r {
                Attempt::Answer(r) if r.status.is_success() => {
                    answered.insert(r.body["code"].as_str().unwrap_or_default().to_owned());
                }
                Attempt::Answer(r) => {
                    if r.status != StatusCode::CONFLICT {
                        violations.push(format!(
                            "filing race #{index}: the same Idempotency-Key got {} {} from {}",
                            r.status, r.text, r.node
                        ));
                    }
                }
                Attempt::Refused(_) | Attempt::Lost(_) => {}
            }
        }
        if answered.len() > 1 {
            violations.push(format!(
                "filing race #{index}: one Idempotency-Key sent to two nodes at once was answered \
                 with two different dossiers {answered:?}"
            ));
        }
    }
    let mut last = String::new();
    for attempt in 0..TRANSPORT_ATTEMPTS {
        match cluster.once(&call).await {
            Attempt::Answer(r) if r.status == StatusCode::CREATED => {
                let code = r.body["code"]
                    .as_str()
                    .ok_or_else(|| format!("a filing answer without a code: {}", r.text))?
                    .to_owned();
                let ack = Ack {
                    action: Action::Filed,
                    seq: r.body["seq"].as_u64().unwrap_or(0),
                    actor: citizen.sub.clone(),
                    node: r.node,
                };
                return Ok((code, ack));
            }
            // Another node is still filing under the same key: ask again.
            Attempt::Answer(r) if r.status == StatusCode::CONFLICT => last = r.text,
            Attempt::Answer(r) => {
                return Err(format!("filing was refused: {} {}", r.status, r.text));
            }
            // The key makes resending safe.
            Attempt::Refused(e) | Attempt::Lost(e) => last = e,
        }
        backoff(attempt).await;
    }
    Err(format!("filing never got an answer; last: {last}"))
}

enum Next {
    Wait,
    Done,
    Do {
        action: Action,
        path: String,
        by: &'static str,
        token: String,
        body: Value,
    },
}

/// The next step of the happy path, read from the dossier as it is now.
fn next_step(t: &Tokens, view: &Value) -> Result<Next, String> {
    let code = view["code"].as_str().unwrap_or_default();
    if !view["closed_at"].is_null() {
        return Ok(Next::Done);
    }
    let tasks = view["tasks"]
        .as_array()
        .ok_or_else(|| format!("a dossier view without tasks: {view}"))?;
    let Some(task) = tasks.first() else {
        return Ok(Next::Wait); // a hook is running
    };
    if tasks.len() > 1 {
        return Err(format!(
            "more than one open task on the happy path: {tasks:?}"
        ));
    }
    let id = task["task_id"].as_str().unwrap_or_default().to_owned();
    let claimed = task["claimed_by"].as_str();
    let step = task["step"].as_str().unwrap_or_default();
    let act = |action: Action, path: String, o: &Officer, body: Value| Next::Do {
        action,
        path,
        by: o.sub,
        token: o.token.clone(),
        body,
    };
    let claim = |o: &Officer| {
        act(
            Action::Claimed(id.clone()),
            format!("/api/v1/dossiers/{code}/tasks/{id}/claim"),
            o,
            Value::Null,
        )
    };
    let complete = |o: &Officer, body: Value| {
        act(
            Action::Completed(id.clone()),
            format!("/api/v1/dossiers/{code}/tasks/{id}/complete"),
            o,
            body,
        )
    };
    let check_claim = |o: &Officer| match claimed {
        Some(by) if by != o.sub => Err(format!("task {id} is claimed by {by}, not {}", o.sub)),
        _ => Ok(()),
    };
    Ok(match step {
        "tiep_nhan" => act(
            Action::Received,
            format!("/api/v1/dossiers/{code}/receive"),
            &t.desk,
            Value::Null,
        ),
        "tham_dinh" => {
            check_claim(&t.specialist)?;
            if claimed.is_none() {
                claim(&t.specialist)
            } else {
                complete(&t.specialist, json!({"data": tham_dinh_data()}))
            }
        }
        "du_thao_phieu" => complete(&t.specialist, json!({})),
        "duyet_phong" => complete(&t.head, json!({"outcome": "approve"})),
        "ky_phieu_so_1" => {
            check_claim(&t.leader)?;
            let signed = view["signed_results"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r == RESULT));
            if claimed.is_none() {
                claim(&t.leader)
            } else if !signed {
                act(
                    Action::Signed,
                    format!("/api/v1/dossiers/{code}/sign"),
                    &t.leader,
                    json!({"result_code": RESULT}),
                )
            } else {
                complete(&t.leader, json!({}))
            }
        }
        "phat_hanh" => complete(&t.clerk, json!({})),
        "tra_ket_qua" => act(
            Action::Returned,
            format!("/api/v1/dossiers/{code}/return"),
            &t.desk,
            Value::Null,
        ),
        other => return Err(format!("unexpected task {other} ({id}) on the happy path")),
    })
}

/// Drives one dossier to its end: read it, do what its open task asks, again. A command that
/// got no answer is not resent: the next read shows whether it took effect.
async fn drive(
    cluster: &Cluster,
    t: &Tokens,
    progress: &Progress,
    violations: &Violations,
    code: &str,
    ledger: &mut Vec<Ack>,
) -> Result<(), String> {
    let mut last_seq = 0;
    let mut last_change = Instant::now();
    let mut counted_received = false;
    let mut idle = 0u32;
    loop {
        if progress.errors.load(Ordering::Relaxed) >= MAX_DOSSIER_ERRORS {
            return Err("abandoned: too many other dossiers failed".into());
        }
        let r = cluster
            .read(&Call::get(format!("/api/v1/dossiers/{code}"), &t.admin))
            .await?;
        if r.status != StatusCode::OK {
            return Err(format!("reading {code}: {} {}", r.status, r.text));
        }
        let view = r.body;
        let seq = view["seq"].as_u64().unwrap_or(0);
        if seq != last_seq {
            last_seq = seq;
            last_change = Instant::now();
        } else if last_change.elapsed() > STUCK_LIMIT {
            return Err(format!(
                "{code} made no progress for {} s: status {}, seq {seq}, tasks {}",
                STUCK_LIMIT.as_secs(),
                view["status"]["code"],
                view["tasks"]
            ));
        }
        if !counted_received && view["status"]["code"].as_u64().unwrap_or(0) >= 2 {
            counted_received = true;
            progress.received.fetch_add(1, Ordering::Relaxed);
        }
        let (action, path, by, token, body) = match next_step(t, &view)
            .map_err(|e| format!("{code}: {e}"))?
        {
            Next::Done => {
                progress.closed.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            Next::Wait => {
                idle += 1;
                tokio::time::sleep(Duration::from_millis((50 * u64::from(idle)).min(400))).await;
                continue;
            }
            Next::Do {
                action,
                path,
                by,
                token,
                body,
            } => (action, path, by, token, body),
        };
        idle = 0;
        let call = Call::post(path, &token, body);
        if matches!(action, Action::Received) && take_one(&progress.receive_races_left) {
            // Two nodes asked to receive the same version at once: one wins, one conflicts.
            let call = call.header("If-Match", format!("\"{seq}\""));
            let (a, b) = tokio::join!(
                cluster.once_on(&call, Some(0)),
                cluster.once_on(&call, Some(2))
            );
            let answers: Vec<Reply> = [a, b]
                .into_iter()
                .filter_map(|x| match x {
                    Attempt::Answer(r) => Some(r),
                    _ => None,
                })
                .collect();
            let won: Vec<&Reply> = answers.iter().filter(|r| r.status.is_success()).collect();
            for r in &answers {
                let expected = r.status.is_success()
                    || (r.status == StatusCode::CONFLICT && r.code() == "conflict");
                if !expected {
                    violations.push(format!(
                        "{code}: the loser of two concurrent receptions at seq {seq} got {} {} \
                         from {} instead of 409 conflict",
                        r.status, r.text, r.node
                    ));
                }
            }
            match won.as_slice() {
                [w] => {
                    progress.decisive_races.fetch_add(1, Ordering::Relaxed);
                    ledger.push(Ack {
                        action,
                        seq: w.body["seq"].as_u64().unwrap_or(0),
                        actor: by.to_owned(),
                        node: w.node.clone(),
                    });
                }
                [] => {
                    // A background job moved the dossier first; try another dossier.
                    progress.receive_races_left.fetch_add(1, Ordering::Relaxed);
                }
                _ => violations.push(format!(
                    "{code}: two nodes both accepted a reception conditional on seq {seq} \
                     ({} and {})",
                    won[0].node, won[1].node
                )),
            }
            continue;
        }
        match cluster.command(&call).await {
            Attempt::Answer(r) if r.status.is_success() => ledger.push(Ack {
                action,
                seq: r.body["seq"].as_u64().unwrap_or(0),
                actor: by.to_owned(),
                node: r.node,
            }),
            Attempt::Answer(r) if r.status == StatusCode::CONFLICT => {
                match r.code() {
                    "conflict" => cluster.stats.conflicts.fetch_add(1, Ordering::Relaxed),
                    _ => cluster.stats.invalid_state.fetch_add(1, Ordering::Relaxed),
                };
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Attempt::Answer(r) => {
                return Err(format!(
                    "{code}: {} {} answered {} {}",
                    call.method, call.path, r.status, r.text
                ));
            }
            Attempt::Refused(_) | Attempt::Lost(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn take_one(n: &AtomicUsize) -> bool {
    n.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1))
        .is_ok()
}

// ---------------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------------

/// Waits until no job is pending and the portal holds every pushed paper.
async fn settle(db: &PgPool, dossiers: usize, violations: &Violations) {
    let deadline = Instant::now() + SETTLE_LIMIT;
    loop {
        let open: Result<i64, _> =
            sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE state = 'pending'")
                .fetch_one(db)
                .await;
        match open {
            Ok(0) => return,
            Ok(n) if Instant::now() > deadline => {
                violations.push(format!(
                    "{n} jobs still pending {} s after the last dossier closed ({dossiers} dossiers)",
                    SETTLE_LIMIT.as_secs()
                ));
                return;
            }
            Ok(_) => {}
            Err(e) => {
                violations.push(format!("cannot count pending jobs: {e}"));
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Runs `f` over `items` with a bounded number at once.
async fn for_each_bounded<T, F, Fut>(items: Vec<T>, limit: usize, f: F)
where
    T: Send + 'static,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let f = Arc::new(f);
    let slots = Arc::new(Semaphore::new(limit));
    let mut set = JoinSet::new();
    for item in items {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let f = f.clone();
        set.spawn(async move {
            let _slot = slot;
            f(item).await
        });
    }
    while set.join_next().await.is_some() {}
}

/// Each dossier: its view, its events against the ledger, its jobs, its replay.
async fn check_dossiers(
    cluster: &Arc<Cluster>,
    tokens: &Arc<Tokens>,
    runs: &[Run],
    violations: &Arc<Violations>,
) {
    let items: Vec<(String, String, Vec<Ack>)> = runs
        .iter()
        .flat_map(|r| {
            r.ledgers
                .iter()
                .map(|(code, l)| (code.clone(), r.citizen.clone(), l.clone()))
        })
        .collect();
    let (cluster, tokens, violations) = (cluster.clone(), tokens.clone(), violations.clone());
    for_each_bounded(items, 16, move |(code, owner, ledger)| {
        let (cluster, tokens, violations) = (cluster.clone(), tokens.clone(), violations.clone());
        async move {
            if let Err(e) =
                check_dossier(&cluster, &tokens, &code, &owner, &ledger, &violations).await
            {
                violations.push(format!("{code}: cannot check: {e}"));
            }
        }
    })
    .await;
}

async fn check_dossier(
    cluster: &Cluster,
    t: &Tokens,
    code: &str,
    owner: &str,
    ledger: &[Ack],
    v: &Violations,
) -> Result<(), String> {
    let view = cluster
        .read(&Call::get(format!("/api/v1/dossiers/{code}"), &t.auditor))
        .await?;
    let d = &view.body;
    if view.status != StatusCode::OK {
        return Err(format!("{} {}", view.status, view.text));
    }
    if d["status"]["code"] != 10 || d["closed_at"].is_null() || d["outcome"] != "completed" {
        v.push(format!(
            "{code}: ended at status {} (closed_at {}, outcome {}) instead of 10, closed, completed",
            d["status"]["code"], d["closed_at"], d["outcome"]
        ));
    }
    if d["owner"]["id"] != owner {
        v.push(format!(
            "{code}: owner {} instead of {owner}",
            d["owner"]["id"]
        ));
    }
    if d["tasks"].as_array().is_none_or(|t| !t.is_empty()) {
        v.push(format!("{code}: open tasks after the end: {}", d["tasks"]));
    }
    if d["signed_results"] != json!([RESULT]) {
        v.push(format!("{code}: signed results {}", d["signed_results"]));
    }
    if d["data"]["tham_dinh"] != tham_dinh_data() {
        v.push(format!(
            "{code}: the acknowledged verification data is {} instead of {}",
            d["data"]["tham_dinh"],
            tham_dinh_data()
        ));
    }

    let r = cluster
        .read(&Call::get(
            format!("/api/v1/dossiers/{code}/events"),
            &t.auditor,
        ))
        .await?;
    let events = r
        .body
        .as_array()
        .ok_or_else(|| format!("events are not a list: {}", r.text))?;
    // The stream: contiguous, linked, as long as the dossier says.
    for (i, e) in events.iter().enumerate() {
        if e["seq"].as_u64() != Some(i as u64 + 1) {
            v.push(format!("{code}: event #{} has seq {}", i + 1, e["seq"]));
            break;
        }
        if i > 0 && e["prev_hash"] != events[i - 1]["hash"] {
            v.push(format!("{code}: event {} does not link to {}", i + 1, i));
            break;
        }
    }
    if d["seq"].as_u64() != Some(events.len() as u64) {
        v.push(format!(
            "{code}: the dossier is at seq {} but has {} events",
            d["seq"],
            events.len()
        ));
    }
    let of_type =
        |kind: &str| -> Vec<&Value> { events.iter().filter(|e| e["type"] == kind).collect() };
    if events.first().is_none_or(|e| e["type"] != "filed") {
        v.push(format!("{code}: the first event is not `filed`"));
    }

    // Every acknowledged command: its event exactly once, after the previous acknowledgement
    // and no later than the seq its answer carried, by the officer who sent it.
    let mut after = 0u64;
    for ack in ledger {
        let found: Vec<&Value> = events
            .iter()
            .filter(|e| ack.action.matches(e, &ack.actor))
            .collect();
        match found.as_slice() {
            [e] => {
                let s = e["seq"].as_u64().unwrap_or(0);
                if !(after < s && s <= ack.seq) {
                    v.push(format!(
                        "{code}: {:?} acknowledged by {} at seq {} is event {s}, outside ({after}, {}]",
                        ack.action, ack.node, ack.seq, ack.seq
                    ));
                }
                if e["actor_id"] != ack.actor.as_str() {
                    v.push(format!(
                        "{code}: {:?} was sent by {} but recorded as by {}",
                        ack.action, ack.actor, e["actor_id"]
                    ));
                }
            }
            [] => v.push(format!(
                "{code}: {:?} was acknowledged by {} (seq {}) but is not in the events",
                ack.action, ack.node, ack.seq
            )),
            many => v.push(format!(
                "{code}: {:?} acknowledged once by {} is in the events {} times",
                ack.action,
                ack.node,
                many.len()
            )),
        }
        after = after.max(ack.seq);
    }
    // And the commands of the happy path ran once each, acknowledged or not.
    for kind in [
        "filed",
        "received",
        "result_signed",
        "result_returned",
        "ended",
    ] {
        let n = of_type(kind).len();
        if n != 1 {
            v.push(format!("{code}: {n} `{kind}` events instead of 1"));
        }
    }
    let mut completed: BTreeMap<String, usize> = BTreeMap::new();
    for e in of_type("task_completed") {
        *completed
            .entry(e["payload"]["task"].as_str().unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    if let Some((task, n)) = completed.iter().find(|(_, n)| **n > 1) {
        v.push(format!("{code}: task {task} completed {n} times"));
    }

    // Jobs: each scheduled one succeeded exactly once; none opened an incident.
    let mut scheduled: BTreeMap<String, String> = BTreeMap::new();
    for e in of_type("hook_scheduled") {
        scheduled.insert(
            e["payload"]["job"].as_str().unwrap_or_default().to_owned(),
            e["payload"]["call"].as_str().unwrap_or_default().to_owned(),
        );
    }
    let mut succeeded: BTreeMap<String, usize> = BTreeMap::new();
    for e in of_type("hook_succeeded") {
        *succeeded
            .entry(e["payload"]["job"].as_str().unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    for (job, call) in &scheduled {
        let n = succeeded.get(job).copied().unwrap_or(0);
        if n != 1 {
            v.push(format!("{code}: job {job} ({call}) succeeded {n} times"));
        }
    }
    for job in succeeded.keys() {
        if !scheduled.contains_key(job) {
            v.push(format!(
                "{code}: job {job} succeeded but was never scheduled"
            ));
        }
    }
    let incidents = of_type("incident_opened");
    if !incidents.is_empty() {
        v.push(format!(
            "{code}: {} incidents opened: {}",
            incidents.len(),
            incidents[0]["summary"]
        ));
    }
    let mut templates: BTreeMap<String, usize> = BTreeMap::new();
    for e in of_type("notification_recorded") {
        *templates
            .entry(
                e["payload"]["notification"]["template"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
            .or_default() += 1;
    }
    for (template, n) in &templates {
        if *n > 1 {
            v.push(format!(
                "{code}: notification {template} recorded {n} times"
            ));
        }
    }
    for needed in ["tiep_nhan", "ket_qua"] {
        if !templates.contains_key(needed) {
            v.push(format!("{code}: no {needed} notification ({templates:?})"));
        }
    }

    // The read models written by three processes equal what the events give.
    let replay = cluster
        .read(&Call::get(
            format!("/api/v1/dossiers/{code}/replay"),
            &t.auditor,
        ))
        .await?;
    if replay.body["matches"] != true {
        v.push(format!("{code}: replay differs: {}", replay.text));
    }
    Ok(())
}

/// The outbox: every job done, once; the events agree.
/// Each dossier's jobs as its events record them (the `jobs` table is only the queue, and a
/// sealed dossier's events are in its archive): done jobs by call, and `hook_succeeded`
/// events.
#[derive(Default)]
struct JobTally {
    done_by_call: BTreeMap<String, u64>,
    done_hooks: u64,
    succeeded: u64,
    /// (dossier, job, count) for jobs with more than one `hook_succeeded` event.
    doubled: Vec<(String, String, usize)>,
}

async fn tally_jobs(store: &engine::store::Store, codes: &[String], v: &Violations) -> JobTally {
    use engine::dossier::{Dossier, Event, JobKind, JobState};
    let mut t = JobTally::default();
    for code in codes {
        let events = match store.events(code).await {
            Ok(e) => e,
            Err(e) => {
                v.push(format!("{code}: cannot read its events: {e}"));
                continue;
            }
        };
        let mut per_job: BTreeMap<&str, usize> = BTreeMap::new();
        for e in &events {
            if let Event::HookSucceeded { job, .. } = &e.event {
                *per_job.entry(job.as_str()).or_default() += 1;
                t.succeeded += 1;
            }
        }
        t.doubled.extend(
            per_job
                .iter()
                .filter(|(_, n)| **n > 1)
                .map(|(job, n)| (code.clone(), (*job).to_owned(), *n)),
        );
        let Some(state) = Dossier::fold(events.iter().map(|e| (e.at, &e.event))) else {
            v.push(format!("{code}: its events fold to nothing"));
            continue;
        };
        for j in state.all_jobs().filter(|j| j.state == JobState::Done) {
            *t.done_by_call.entry(j.call.clone()).or_default() += 1;
            if j.kind == JobKind::Hook {
                t.done_hooks += 1;
            }
        }
    }
    t
}

async fn check_jobs(db: &PgPool, t: &JobTally, v: &Violations) {
    // Finished jobs leave the queue: whatever is left did not finish.
    let left: Result<Vec<(String, String, i64)>, _> =
        sqlx::query_as("SELECT state, call, COUNT(*) FROM jobs GROUP BY state, call ORDER BY 1, 2")
            .fetch_all(db)
            .await;
    match left {
        Ok(left) if !left.is_empty() => {
            v.push(format!("jobs left in the queue at the end: {left:?}"))
        }
        Ok(_) => {}
        Err(e) => v.push(format!("cannot read the jobs table: {e}")),
    }
    if t.done_hooks != t.succeeded {
        v.push(format!(
            "{} hook jobs are done but {} `hook_succeeded` events are stored",
            t.done_hooks, t.succeeded
        ));
    }
    if t.done_hooks == 0 {
        v.push("no hook job is done".to_owned());
    }
    if !t.doubled.is_empty() {
        v.push(format!(
            "jobs with more than one `hook_succeeded` event (dossier, job, count): {:?}",
            t.doubled.iter().take(5).collect::<Vec<_>>()
        ));
    }
}

/// Every node runs a sealer: each settled dossier ends up sealed once, none refused as broken.
async fn check_sealed(db: &PgPool, v: &Violations) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let unsealed: Result<(i64, i64), _> = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM dossiers WHERE closed = 1 AND sealed_seq < seq),
                    (SELECT COUNT(*) FROM event_archives)",
        )
        .fetch_one(db)
        .await;
        match unsealed {
            Ok((0, archives)) => {
                say(format!("sealed: {archives} archives, every closed dossier"));
                return;
            }
            Ok((n, _)) if Instant::now() > deadline => {
                v.push(format!(
                    "{n} closed dossiers still unsealed 30 s after settling"
                ));
                return;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            Err(e) => {
                v.push(format!("cannot count unsealed dossiers: {e}"));
                return;
            }
        }
    }
}

/// The portal: one push per dossier (the simulator keeps each idempotency key once), one
/// paper per owner, every dossier synced at its final status, one sync per done sync job.
async fn check_portal(
    cluster: &Cluster,
    portal: &str,
    runs: &[Run],
    jobs: &JobTally,
    v: &Violations,
) {
    let dossiers: usize = runs.iter().map(|r| r.codes.len()).sum();
    let token = cluster
        .http
        .post(format!("{portal}/auth/token"))
        .json(&json!({"client_id": PORTAL_CLIENT_ID, "client_secret": PORTAL_CLIENT_SECRET}))
        .send()
        .await;
    let token = match token {
        Ok(r) => r
            .json::<Value>()
            .await
            .ok()
            .and_then(|b| b["access_token"].as_str().map(str::to_owned)),
        Err(_) => None,
    };
    let Some(token) = token else {
        v.push("the portal simulator gave no token".to_owned());
        return;
    };
    let stats = match cluster
        .http
        .get(format!("{portal}/_sim/stats"))
        .send()
        .await
    {
        Ok(r) => r.json::<Value>().await.unwrap_or(Value::Null),
        Err(e) => {
            v.push(format!("cannot read the simulator's stats: {e}"));
            return;
        }
    };
    say(format!("portal simulator: {stats}"));
    let n = dossiers as u64;
    for (field, want) in [("pushes", n), ("papers", n), ("dossiers", n)] {
        if stats[field].as_u64() != Some(want) {
            v.push(format!(
                "the portal counts {field} = {} for {dossiers} dossiers (stats {stats})",
                stats[field]
            ));
        }
    }
    let syncs = jobs
        .done_by_call
        .get("portal.sync_dossier")
        .copied()
        .unwrap_or(0);
    let pushes = jobs
        .done_by_call
        .get("portal.push_result")
        .copied()
        .unwrap_or(0);
    let seen =
        stats["syncs_applied"].as_u64().unwrap_or(0) + stats["syncs_ignored"].as_u64().unwrap_or(0);
    if seen != syncs {
        v.push(format!(
            "{syncs} sync jobs are done but the portal recorded {seen} distinct syncs"
        ));
    }
    if pushes != n {
        v.push(format!(
            "{pushes} push jobs are done for {dossiers} dossiers"
        ));
    }

    let items: Vec<(String, Vec<String>)> = runs
        .iter()
        .map(|r| (r.citizen.clone(), r.codes.clone()))
        .collect();
    let http = cluster.http.clone();
    let portal = portal.to_owned();
    let found = Arc::new(Violations::default());
    let sink = found.clone();
    for_each_bounded(items, 16, move |(owner, codes)| {
        let (http, portal, token, v) = (http.clone(), portal.clone(), token.clone(), sink.clone());
        async move {
            let get = |path: String| {
                let rb = http.get(format!("{portal}{path}")).bearer_auth(&token);
                async move {
                    let r = rb.send().await.map_err(|e| e.to_string())?;
                    let status = r.status();
                    let text = r.text().await.map_err(|e| e.to_string())?;
                    if !status.is_success() {
                        return Err(format!("{status} {text}"));
                    }
                    serde_json::from_str::<Value>(&text).map_err(|e| format!("{e}: {text}"))
                }
            };
            match get(format!("/khodl/papers?owner_id={owner}")).await {
                Ok(list) => {
                    let papers = list["papers"].as_array().cloned().unwrap_or_default();
                    // The paper's metadata is flattened into it (wire::PaperInfo).
                    let held: Vec<&str> = papers
                        .iter()
                        .filter_map(|p| p["dossier_code"].as_str())
                        .collect();
                    let results_ok = papers
                        .iter()
                        .all(|p| p["result_code"] == RESULT && p["owner_id"] == owner.as_str());
                    if held.len() != codes.len()
                        || !codes.iter().all(|c| held.contains(&c.as_str()))
                        || !results_ok
                    {
                        v.push(format!(
                            "owner {owner}: the portal holds papers of {held:?} for dossiers {codes:?}"
                        ));
                    }
                }
                Err(e) => v.push(format!("owner {owner}: cannot list the portal's papers: {e}")),
            }
            for code in codes {
                match get(format!("/dossiers/{code}")).await {
                    Ok(s) if s["status"] == 10 => {}
                    Ok(s) => v.push(format!(
                        "{code}: the portal holds status {} (sequence {}) instead of 10",
                        s["status"], s["sequence"]
                    )),
                    Err(e) => v.push(format!("{code}: cannot read the portal's copy: {e}")),
                }
            }
        }
    })
    .await;
    for x in found.take() {
        v.push(x);
    }
}

async fn check_audit(cluster: &Cluster, t: &Tokens, filed: usize, citizens: usize, v: &Violations) {
    match cluster
        .read(&Call::get("/api/v1/audit/verify", &t.auditor))
        .await
    {
        Ok(r) => {
            if r.body["intact"] != true {
                v.push(format!("the audit chain does not verify: {}", r.text));
            }
            if r.body["dossiers"].as_u64() != Some(citizens as u64) {
                v.push(format!(
                    "the audit verified {} dossiers; {citizens} citizens filed once each \
                     ({filed} dossiers found)",
                    r.body["dossiers"]
                ));
            }
        }
        Err(e) => v.push(format!("audit verify: {e}")),
    }
}

fn check_races(progress: &Progress, v: &Violations) {
    let decisive = progress.decisive_races.load(Ordering::Relaxed);
    if decisive < RECEIVE_RACES / 2 {
        v.push(format!(
            "only {decisive} of {RECEIVE_RACES} concurrent receptions had a winner: the \
             one-success-one-conflict check barely ran"
        ));
    }
}

fn check_kill(cluster: &Cluster, kill: &Kill, v: &Violations) {
    let served = cluster
        .stats
        .by_node()
        .get(&kill.restarted_label)
        .copied()
        .unwrap_or(0);
    if served == 0 {
        v.push(format!(
            "the restarted {} answered no request",
            kill.restarted_label
        ));
    }
}

/// A procedure version deployed through one node must be known to all: each serves any
/// dossier, whichever node filed it.
async fn check_deploy_reaches_every_node(cluster: &Cluster, t: &Tokens, v: &Violations) {
    let path = repo_root()
        .join("procedures")
        .join("dang-ky-khai-sinh.yaml");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            v.push(format!("cannot read {}: {e}", path.display()));
            return;
        }
    };
    let code = text
        .lines()
        .find_map(|l| l.strip_prefix("code:"))
        .map(|c| c.trim().trim_matches('"').to_owned())
        .unwrap_or_default();
    if code.is_empty() || text.matches("\nversion: 1\n").count() != 1 {
        v.push(format!(
            "{} no longer has one `code:` and one `version: 1` line: update this check",
            path.display()
        ));
        return;
    }
    let v2 = text.replacen("\nversion: 1\n", "\nversion: 2\n", 1);
    match cluster
        .read(&Call::post_yaml("/api/v1/admin/procedures", &t.admin, v2).on(0))
        .await
    {
        Ok(r) if r.status == StatusCode::CREATED => {}
        Ok(r) => {
            v.push(format!(
                "deploying {code} version 2 through node 0: {} {}",
                r.status, r.text
            ));
            return;
        }
        Err(e) => {
            v.push(format!("deploying {code} version 2 through node 0: {e}"));
            return;
        }
    }
    for node in 0..NODES {
        let call = Call::get(format!("/api/v1/procedures/{code}?version=2"), &t.admin).on(node);
        match cluster.read(&call).await {
            Ok(r) if r.status == StatusCode::OK => {}
            Ok(r) => v.push(format!(
                "{code} version 2, deployed through node 0, is unknown to node {node} ({}): {} {}",
                r.node, r.status, r.text
            )),
            Err(e) => v.push(format!("reading {code} version 2 on node {node}: {e}")),
        }
    }
}

/// Warnings and errors the nodes logged, by message (the per-statement timing warnings of
/// sqlx left out).
fn summarize_logs(dir: &Path) -> String {
    let mut by_message: BTreeMap<(String, String), usize> = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return format!("no logs in {}", dir.display());
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    files.sort();
    for file in &files {
        let text = std::fs::read(file)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        for line in text.lines() {
            let Ok(entry) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let level = entry["level"].as_str().unwrap_or_default();
            let message = entry["fields"]["message"].as_str().unwrap_or_default();
            if !matches!(level, "WARN" | "ERROR")
                || message.starts_with("slow statement")
                || message.starts_with("no keys_file configured")
            {
                continue;
            }
            let detail = entry["fields"]["error"].as_str().unwrap_or_default();
            let key = format!(
                "{level} {message}{}",
                if detail.is_empty() {
                    String::new()
                } else {
                    format!(": {detail}")
                }
            );
            let node = file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            *by_message
                .entry((key.chars().take(240).collect(), node))
                .or_default() += 1;
        }
    }
    if by_message.is_empty() {
        return "the nodes logged no warning or error beyond slow statements".to_owned();
    }
    let lines: Vec<String> = by_message
        .iter()
        .map(|((m, node), n)| format!("  {n:>5} × {node}: {m}"))
        .collect();
    format!("warnings and errors logged:\n{}", lines.join("\n"))
}

#[test]
fn the_database_name_is_replaced_in_the_admin_url() {
    assert_eq!(
        with_database("postgres://root@127.0.0.1:5432/test", "x"),
        "postgres://root@127.0.0.1:5432/x"
    );
    assert_eq!(
        with_database("postgres://u:p@h:1/db?sslmode=disable", "x"),
        "postgres://u:p@h:1/x?sslmode=disable"
    );
    assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
}
