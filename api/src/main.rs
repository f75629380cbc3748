//! `tthc`: the command-line tool and server of the tthc process engine.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use engine::definition::LoaderConfig;

use tthc_api::{auth, config, definitions, history, server};

/// mimalloc instead of glibc's allocator: the decision core allocates and frees small blocks
/// at a high rate (glibc's malloc and free were ~44% of its instructions), and so do the
/// server's handlers. Tuned by [`tune_allocator`]; measured in docs/performance.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's defaults on Linux commit each arena eagerly and keep freed memory for a second:
/// with them the server's peak RSS under the HTTP benchmark doubled (48 → 92–96 MB, against a
/// limit of 100 MB). Committing on demand and giving freed memory back at once keep it where
/// glibc's allocator had it, and the core keeps its speed.
///
/// It must run before the first allocation, which creates the first arena with the options of
/// that moment: at the start of `main` it is too late (the runtime has allocated already, and
/// the RSS stayed at 83–86 MB). So it runs as the process starts, from `.init_array`, as the
/// `MIMALLOC_*` environment variables would take effect.
#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array")]
static TUNE_ALLOCATOR_AT_START: extern "C" fn() = {
    extern "C" fn at_start() {
        tune_allocator();
    }
    at_start
};

fn tune_allocator() {
    // The option numbers of the mimalloc that libmimalloc-sys 0.1.49 builds (its v3
    // `options.c`: `arena_eager_commit` is 4, `purge_delay` 15); the -sys crate names neither.
    const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: mi_option_set only stores a value in mimalloc's option table; it is called once,
    // as the process starts, before any other thread exists.
    unsafe {
        libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0);
        libmimalloc_sys::mi_option_set(PURGE_DELAY, 0);
    }
}

#[derive(Parser)]
#[command(
    name = "tthc",
    version,
    about = "Process engine for Vietnamese administrative procedures"
)]
struct Cli {
    /// Root of the procedure repository: holds `procedures/` (definitions, catalog, templates)
    /// and `schemas/` (form schemas).
    #[arg(long, global = true, env = "TTHC_ROOT", default_value = ".")]
    root: PathBuf,
    /// Folder that form schema paths are relative to (default: ROOT/schemas).
    #[arg(long, global = true, env = "TTHC_SCHEMAS")]
    schemas: Option<PathBuf>,
    /// The database: `sqlite://PATH` (default sqlite://tthc.db). `serve` creates it when missing;
    /// the audit tools (`audit verify`, `replay`, `verify-result`) only read an existing one.
    #[arg(long, global = true, env = "TTHC_DATABASE_URL")]
    database: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check procedure definitions (files or folders; default: ROOT/procedures).
    Validate {
        paths: Vec<PathBuf>,
        /// Treat warnings as errors.
        #[arg(long)]
        strict: bool,
    },
    /// Print a readable summary of one procedure.
    Show {
        /// National procedure code, e.g. 2.000488.
        code: String,
        /// A version other than the newest.
        #[arg(long)]
        version: Option<u32>,
    },
    /// Run the HTTP API and the background worker on the embedded database (the main job).
    Serve {
        /// YAML configuration file (default: tthc.yaml when present).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address to listen on, e.g. 127.0.0.1:8080.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Mint a bearer token for development and tests, signed with the server's HS256 secret.
    Token {
        #[arg(long, value_enum)]
        kind: auth::UserKind,
        /// The user's id.
        #[arg(long)]
        sub: String,
        #[arg(long)]
        name: Option<String>,
        /// Comma-separated roles (officers).
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        /// Agency code (officers).
        #[arg(long)]
        agency: Option<String>,
        /// Owner identifier the citizen acts for.
        #[arg(long)]
        owner_id: Option<String>,
        /// Lifetime in minutes.
        #[arg(long, default_value_t = 480)]
        ttl_minutes: i64,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Both processes of the founding document end to end: a certificate issued in province A
    /// and reused from the portal's Kho DL for a licence in province B.
    Demo {
        /// Where to keep the two provinces' databases (default: a new temporary folder).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Verify the signatures of a dossier's signed result (signer, then the agency's seal)
    /// against its stored content. Uses the server's configuration for blobs and keys.
    ///
    /// With `--from-portal URL --paper ID`: fetch a paper from the portal's Kho DL and verify
    /// its signatures against the trusted keys (`--keys`, else the configured `keys_file`);
    /// exits 0 only when it is `verified`. Credentials: the configured portal client id and
    /// `TTHC_PORTAL_CLIENT_SECRET`.
    VerifyResult {
        /// Dossier code.
        #[arg(required_unless_present = "from_portal")]
        dossier: Option<String>,
        /// Result code, e.g. KQ.LLTP.01.
        #[arg(required_unless_present = "from_portal")]
        result: Option<String>,
        #[arg(long)]
        config: Option<PathBuf>,
        /// The portal's base URL, to verify a paper held there.
        #[arg(long, requires = "paper", conflicts_with_all = ["dossier", "result"])]
        from_portal: Option<String>,
        /// The portal's paper id (as `GET /khodl/papers` lists it).
        #[arg(long, requires = "from_portal")]
        paper: Option<String>,
        /// Key file whose `trusted` keys verify the paper.
        #[arg(long)]
        keys: Option<PathBuf>,
    },
    /// Auditors' checks on the stored history.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Run a simulator of the national portal's contract (docs/portal-api.md) for tests and
    /// demos, with fault injection; prints the address it listens on.
    PortalSim(tthc_api::portal_sim::Args),
    /// Measure the engine on the judicial record procedure and print one table (see
    /// docs/performance.md); `--quick` runs in seconds.
    Bench(tthc_api::bench::Args),
    /// Print a dossier's timeline and rebuild its state from events, checking it equals the
    /// stored read models. Calls no external system.
    Replay {
        /// Dossier code, e.g. 000.00.01.H59-260302-0001.
        code: String,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify the hash chain of every dossier (or one), naming the first altered event.
    Verify {
        #[arg(long)]
        dossier: Option<String>,
    },
}

/// Opens the engine on an existing database to read it, for auditing: nothing is created,
/// migrated or written, and no `--root` is needed (the deployed definitions are read from the
/// database, which keeps their source).
async fn open_engine(database: &str) -> anyhow::Result<engine::Engine> {
    let mut config = engine::EngineConfig::new(database, std::path::PathBuf::new());
    config.read_only = true;
    let calendar = engine::calendar::Calendar::default_vietnam()?;
    Ok(engine::Engine::open(config, calendar, engine::Clock::System).await?)
}

fn serve(
    config: Option<PathBuf>,
    listen: Option<std::net::SocketAddr>,
    root: PathBuf,
    database: Option<String>,
) -> anyhow::Result<ExitCode> {
    let mut c = config::ServeConfig::load(config.as_deref())?;
    if let Some(l) = listen {
        c.listen = l;
    }
    if let Some(d) = database {
        c.database_url = d;
    }
    if root != std::path::Path::new(".") {
        c.root = root;
    }
    init_tracing(&c.log_format);
    runtime()?.block_on(server::serve(c, engine::Clock::System))?;
    Ok(ExitCode::SUCCESS)
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let database = cli
        .database
        .clone()
        .unwrap_or_else(|| "sqlite://tthc.db".to_owned());
    let mut config = LoaderConfig::at_root(&cli.root);
    if let Some(s) = cli.schemas {
        config.schemas_dir = s;
    }
    let result = match cli.command {
        Command::Validate { paths, strict } => {
            definitions::validate(&cli.root, config, &paths, strict)
        }
        Command::Show { code, version } => definitions::show(&cli.root, config, &code, version),
        Command::Audit {
            command: AuditCommand::Verify { dossier },
        } => runtime().and_then(|rt| {
            rt.block_on(async {
                let engine = open_engine(&database).await?;
                history::verify(&engine, dossier.as_deref()).await
            })
        }),
        Command::Serve { config, listen } => {
            serve(config, listen, cli.root.clone(), cli.database.clone())
        }
        Command::Token {
            kind,
            sub,
            name,
            roles,
            agency,
            owner_id,
            ttl_minutes,
            config,
        } => config::ServeConfig::load(config.as_deref()).and_then(|c| {
            let claims = auth::claims(
                kind,
                &sub,
                name.as_deref().unwrap_or(&sub),
                roles,
                agency,
                owner_id,
                chrono::Duration::minutes(ttl_minutes),
            );
            println!("{}", auth::mint(&c.secret()?, &claims)?);
            Ok(ExitCode::SUCCESS)
        }),
        Command::PortalSim(args) => {
            runtime().and_then(|rt| rt.block_on(tthc_api::portal_sim::run(args)))
        }
        Command::Bench(args) => tthc_api::bench::run(&cli.root, args),
        Command::Demo { dir } => {
            let dir = dir.unwrap_or_else(|| {
                std::env::temp_dir().join(format!(
                    "tthc-demo-{}",
                    chrono::Utc::now().format("%Y%m%d-%H%M%S")
                ))
            });
            runtime().and_then(|rt| {
                rt.block_on(tthc_api::demo::run(&cli.root, &dir, true))?;
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::VerifyResult {
            from_portal: Some(url),
            paper: Some(paper),
            config,
            keys,
            ..
        } => runtime().and_then(|rt| {
            rt.block_on(async {
                let c = config::ServeConfig::load(config.as_deref())?;
                let keys = match keys.or(c.keys_file.clone()) {
                    Some(f) => engine::signing::KeyRing::load(&f)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?,
                    None => anyhow::bail!(
                        "give the trusted keys with --keys FILE (or keys_file in the configuration)"
                    ),
                };
                let client = engine::portal::PortalClient::new(engine::portal::PortalConfig::new(
                    url,
                    c.portal_client_id.clone(),
                    c.portal_client_secret.clone().unwrap_or_default(),
                ))
                .map_err(|e| anyhow::anyhow!("portal: {e}"))?;
                let v = tthc_api::integrations::verify_portal_paper(&client, &keys, &paper).await?;
                println!("{}", serde_json::to_string_pretty(&v)?);
                Ok(if v.valid {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                })
            })
        }),
        Command::VerifyResult {
            dossier,
            result,
            config,
            ..
        } => runtime().and_then(|rt| {
            rt.block_on(async {
                let (Some(dossier), Some(result)) = (dossier, result) else {
                    anyhow::bail!(
                        "give a dossier code and a result code, or --from-portal and --paper"
                    );
                };
                let mut c = config::ServeConfig::load(config.as_deref())?;
                if let Some(d) = &cli.database {
                    c.database_url = d.clone();
                }
                // Read the database as it is: create, migrate and deploy nothing.
                c.read_only = true;
                c.portal_simulator = false;
                c.deploy_on_start = false;
                // It authenticates no one: a throwaway token secret, so that no development
                // secret file is made.
                c.jwt_secret
                    .get_or_insert_with(|| hex::encode(rand::random::<[u8; 32]>()));
                if cli.root != std::path::Path::new(".") {
                    c.root = cli.root.clone();
                }
                // Without a blob store there is no document to check: an empty one, gone
                // afterwards, rather than one made where the configuration points.
                let _no_blobs = if c.blobs_dir.is_dir() {
                    None
                } else {
                    let empty = tempfile::tempdir()?;
                    c.blobs_dir = empty.path().to_path_buf();
                    Some(empty)
                };
                let (_, state, _) = server::build(&c, engine::Clock::System).await?;
                let d = state.engine.dossier(&dossier).await?;
                let v = tthc_api::integrations::verify_result(&state.io, &d, &result);
                println!("{}", serde_json::to_string_pretty(&v)?);
                Ok(if v.valid {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                })
            })
        }),
        Command::Replay { code } => runtime().and_then(|rt| {
            rt.block_on(async {
                let engine = open_engine(&database).await?;
                history::replay(&engine, &code).await
            })
        }),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
