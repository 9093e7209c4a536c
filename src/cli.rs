//! The command line: `serve` for the Functions host, `import` for a run by hand.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::app::{App, ImportRefused, ImportRequest};
use crate::config::Settings;

/// Imports abuse.ch ThreatFox IoCs into Microsoft Sentinel.
///
/// Settings come from environment variables (see the README). Without a command, the
/// program serves the Functions host when FUNCTIONS_CUSTOMHANDLER_PORT is set.
#[derive(Debug, Parser)]
#[command(name = "threatfox-sentinel", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the Azure Functions custom handler on FUNCTIONS_CUSTOMHANDLER_PORT.
    Serve {
        /// Port to listen on, overriding FUNCTIONS_CUSTOMHANDLER_PORT.
        #[arg(long)]
        port: Option<u16>,
    },
    /// Check the settings and that ThreatFox, the identity and the sink answer; imports
    /// nothing.
    Check,
    /// Run one import now and print a summary.
    Import {
        /// Feed window in days, 1 to 7 (default: IMPORT_DAYS).
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=7))]
        days: Option<u8>,
        /// Read a saved ThreatFox get_iocs response instead of calling the API.
        #[arg(long, value_name = "FILE")]
        input: Option<PathBuf>,
        /// Upload nothing; write each request body that would be sent, one JSON per line.
        #[arg(long)]
        dry_run: bool,
        /// Where --dry-run writes the request bodies (default: standard output).
        #[arg(long, value_name = "FILE", requires = "dry_run")]
        output: Option<PathBuf>,
        /// Neither read nor move the checkpoint: import the whole window again.
        #[arg(long)]
        no_checkpoint: bool,
    },
}

/// Exit code when the import could not run or failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit code when the import ran but some indicators were rejected or left undelivered.
pub const EXIT_PARTIAL: u8 = 2;

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    crate::logging::init(settings.log_format);

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let under_host = std::env::var_os("FUNCTIONS_CUSTOMHANDLER_PORT").is_some();
    let command = match cli.command {
        Some(command) => command,
        None if under_host => Command::Serve { port: None },
        None => {
            eprintln!("error: no command given; run `threatfox-sentinel --help`");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let result = match command {
        Command::Serve { port } => runtime.block_on(serve(settings, port)),
        Command::Check => runtime.block_on(check(settings)),
        Command::Import {
            days,
            input,
            dry_run,
            output,
            no_checkpoint,
        } => {
            let request = ImportRequest {
                days,
                dry_run,
                input,
                no_checkpoint,
                output: None,
            };
            runtime.block_on(import(settings, request, output))
        }
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

async fn serve(settings: Settings, port: Option<u16>) -> anyhow::Result<ExitCode> {
    let port = match port {
        Some(port) => port,
        None => std::env::var("FUNCTIONS_CUSTOMHANDLER_PORT")
            .map_err(|_| {
                anyhow::anyhow!(
                    "setting FUNCTIONS_CUSTOMHANDLER_PORT is not set; pass --port to serve by hand"
                )
            })?
            .trim()
            .parse()
            .map_err(|_| {
                anyhow::anyhow!("setting FUNCTIONS_CUSTOMHANDLER_PORT is not a port number")
            })?,
    };
    // Every import under the host needs the key: say so at start, not at 01:00. The handler
    // still starts, so that each invocation reports the setting to fix (a Key Vault
    // reference may simply not have resolved yet).
    if let Err(err) = settings.require_auth_key() {
        tracing::error!(error = %err, "imports will fail until the setting is fixed");
    }
    let app = Arc::new(App::new(settings)?);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|err| anyhow::anyhow!("cannot listen on 127.0.0.1:{port}: {err}"))?;
    crate::server::serve(app, listener, crate::server::shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

async fn check(settings: Settings) -> anyhow::Result<ExitCode> {
    let app = App::new(settings)?;
    let results = crate::check::run_checks(&app).await;
    for result in &results {
        println!("{result}");
    }
    Ok(if results.iter().all(|r| r.passed()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
}

async fn import(
    settings: Settings,
    mut request: ImportRequest,
    output: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let output: Option<Box<dyn Write + Send>> = match (&output, request.dry_run) {
        (Some(path), _) => {
            let file = File::create(path)
                .map_err(|err| anyhow::anyhow!("cannot create {}: {err}", path.display()))?;
            Some(Box::new(BufWriter::new(file)))
        }
        (None, true) => Some(Box::new(std::io::stdout())),
        (None, false) => None,
    };
    request.output = output;
    let app = App::new(settings)?;
    let report = match app.import(request).await {
        Ok(report) => report,
        Err(ImportRefused::Config(err)) => return Err(err.into()),
        Err(err) => return Err(err.into()),
    };

    eprint!("{}", report.summary());
    Ok(if report.is_fully_delivered() {
        ExitCode::SUCCESS
    } else if report.error.is_some() && report.outcome == crate::report::Outcome::Failed {
        ExitCode::from(EXIT_FAILED)
    } else {
        ExitCode::from(EXIT_PARTIAL)
    })
}
