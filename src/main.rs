//! The thin binary: parse the command line, load settings, run.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use orchestrator::config::{EnvVars, Settings};
use orchestrator::{app, db::Db, telemetry};

#[derive(Parser)]
#[command(
    name = "orchestrator",
    version,
    about = "Drives LLM coding agents through a delivery pipeline"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Print the effective configuration (secrets redacted); non-zero when invalid.
    CheckConfig,
    /// Feed a stored webhook delivery through the intake again (B-6);
    /// an already processed one is skipped unless --force.
    Replay {
        /// The delivery id (X-Plane-Delivery / X-Gitea-Delivery); prefix
        /// `plane:` or `gitea:` when both sources stored it.
        delivery_id: String,
        /// Process it again even if it was processed already.
        #[arg(long)]
        force: bool,
    },
}

fn main() -> ExitCode {
    // First, before any secret is read: no process of our user may read
    // this one's environment or memory through /proc (B-12).
    orchestrator::sandbox::harden_daemon();
    let cli = Cli::parse();
    match try_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn try_main(cli: Cli) -> anyhow::Result<()> {
    // `.env` in the working directory, then the process environment: read
    // here once and handed to the loader; nothing else reads the environment.
    match dotenvy::dotenv() {
        Ok(_) => {}
        Err(e) if e.not_found() => {}
        Err(e) => anyhow::bail!("cannot read .env in the working directory: {e}"),
    }
    let env = EnvVars::from_process();
    let (settings, report) = Settings::load(&env)?;
    let filter = env
        .get("RUST_LOG")
        .unwrap_or(&settings.log_level)
        .to_string();
    telemetry::init(settings.log_format, &filter);
    for w in &report.warnings {
        tracing::warn!("config: {w}");
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let result = run(&runtime, cli, settings, &report);
    // Whatever is still running (an effect left detached past the drain) is
    // dropped here; its process lives on. Never wait long for a task.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    result
}

fn run(
    runtime: &tokio::runtime::Runtime,
    cli: Cli,
    settings: Settings,
    report: &orchestrator::config::LoadReport,
) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => runtime.block_on(app::serve_until_signal(settings)),
        Command::Migrate => runtime.block_on(async {
            let path = settings.database_path();
            Db::open(&path).await?;
            println!("migrations applied to {}", path.display());
            Ok(())
        }),
        Command::Replay { delivery_id, force } => runtime.block_on(async {
            let out = app::replay(settings, &delivery_id, force).await?;
            println!("{}", serde_json::to_string(&out)?);
            Ok(())
        }),
        Command::CheckConfig => {
            if let Some(f) = &report.file {
                println!("# config file: {}", f.display());
            }
            for w in &report.warnings {
                println!("# warning: {w}");
            }
            print!(
                "{}",
                toml::to_string_pretty(&settings).context("rendering the configuration")?
            );
            Ok(())
        }
    }
}
