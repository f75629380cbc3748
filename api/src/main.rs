//! `tthc`: the command-line tool and server of the tthc process engine.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use engine::definition::LoaderConfig;

use tthc_api::{auth, config, definitions, history, server};

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
    /// The database: `sqlite://PATH` (created when missing; default sqlite://tthc.db).
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
    VerifyResult {
        /// Dossier code.
        dossier: String,
        /// Result code, e.g. KQ.LLTP.01.
        result: String,
        #[arg(long)]
        config: Option<PathBuf>,
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

/// Opens the engine on the configured database, read for auditing.
async fn open_engine(cli_root: &std::path::Path, database: &str) -> anyhow::Result<engine::Engine> {
    let config = engine::EngineConfig::new(database, cli_root.join("procedures").join("templates"));
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
                let engine = open_engine(&cli.root, &database).await?;
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
            dossier,
            result,
            config,
        } => runtime().and_then(|rt| {
            rt.block_on(async {
                let mut c = config::ServeConfig::load(config.as_deref())?;
                c.database_url = database.clone();
                c.portal_simulator = false;
                c.deploy_on_start = false;
                if cli.root != std::path::Path::new(".") {
                    c.root = cli.root.clone();
                }
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
                let engine = open_engine(&cli.root, &database).await?;
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
