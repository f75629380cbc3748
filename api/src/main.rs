//! `tthc`: the command-line tool and server of the tthc process engine.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use engine::definition::LoaderConfig;

mod definitions;

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
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
