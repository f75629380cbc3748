//! `tthc`: the command-line tool and server of the tthc process engine.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use engine::definition::LoaderConfig;

mod definitions;
mod history;

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
    /// The database: `sqlite://PATH` (created when missing).
    #[arg(long, global = true, env = "TTHC_DATABASE_URL", default_value = "sqlite://tthc.db")]
    database: String,
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
    /// Auditors' checks on the stored history.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
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

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
                let engine = open_engine(&cli.root, &cli.database).await?;
                history::verify(&engine, dossier.as_deref()).await
            })
        }),
        Command::Replay { code } => runtime().and_then(|rt| {
            rt.block_on(async {
                let engine = open_engine(&cli.root, &cli.database).await?;
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
