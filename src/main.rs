//! The thin binary: parse the command line, load settings, run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use orchestrator::cli::{Client, Op, demo};
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
    /// The running daemon, for the operator commands (default: ORCH_URL,
    /// else http://<ORCH_BIND>).
    #[arg(long, global = true)]
    url: Option<String>,
    /// Print the daemon's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
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
    /// The running daemon's tasks, jobs and subsystems (GET /queue, B-4).
    Queue,
    /// One task: stages, runs, cost, lease, effects (B-4).
    Task {
        #[command(subcommand)]
        command: TaskCommand,
    },
    /// The transition lease of a task (F-10, B-4).
    Lease {
        #[command(subcommand)]
        command: LeaseCommand,
    },
    /// Work items of the local tracker (B-10).
    Item {
        #[command(subcommand)]
        command: ItemCommand,
    },
    /// Run the whole pipeline here on a demo project, with the local
    /// tracker and forge and the scripted example agent (B-10).
    Demo {
        /// Where to make the demo (default: a new directory under the
        /// system's temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Exit 0 once the work item is done (else stay up until Ctrl-C).
        #[arg(long)]
        exit_when_done: bool,
        /// Only set up and serve: create the work item and answer its gates
        /// yourself, on the board or with the CLI.
        #[arg(long, conflicts_with = "exit_when_done")]
        by_hand: bool,
        /// The agent: the scripted example, or the Claude Code CLI.
        #[arg(long, value_enum, default_value_t = DemoAgent::Scripted)]
        agent: DemoAgent,
        /// The daemon's address (default: ORCH_BIND, else 127.0.0.1:8080).
        #[arg(long)]
        bind: Option<SocketAddr>,
    },
}

#[derive(Subcommand)]
enum TaskCommand {
    /// Show one task.
    Show { work_item: String },
}

#[derive(Subcommand)]
enum LeaseCommand {
    /// Force-release a task's transition lease.
    Release { work_item: String },
}

#[derive(Subcommand)]
enum ItemCommand {
    /// Create a work item (at To Analyse: its task starts).
    New {
        title: String,
        #[arg(long)]
        project: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Set a work item's status by its name (`Approved`, `Confirm Deploy`, ...).
    Set { work_item: String, status: String },
    /// Comment on a work item (a rejection's reason, an answer).
    Comment { work_item: String, text: String },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DemoAgent {
    Scripted,
    Claude,
}

fn main() -> ExitCode {
    // First, before any secret is read: no process of our user may read
    // this one's environment or memory through /proc (B-12).
    orchestrator::sandbox::harden_daemon();
    // Before any other thread exists (the runtime, SQLite's).
    orchestrator::memory::limit_arenas();
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
    if let Some(op) = operator_op(&cli) {
        return operator(&cli, &env, op);
    }
    if let Some(Command::Demo {
        dir,
        exit_when_done,
        by_hand,
        agent,
        bind,
    }) = cli.command
    {
        return demo(&env, dir, exit_when_done, by_hand, agent, bind);
    }
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
        Command::Queue
        | Command::Task { .. }
        | Command::Lease { .. }
        | Command::Item { .. }
        | Command::Demo { .. } => unreachable!("handled before the settings load"),
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

/// The operator command of the command line, if it is one.
fn operator_op(cli: &Cli) -> Option<Op> {
    Some(match cli.command.as_ref()? {
        Command::Queue => Op::Queue,
        Command::Task {
            command: TaskCommand::Show { work_item },
        } => Op::TaskShow {
            work_item: work_item.clone(),
        },
        Command::Lease {
            command: LeaseCommand::Release { work_item },
        } => Op::LeaseRelease {
            work_item: work_item.clone(),
        },
        Command::Item { command } => match command {
            ItemCommand::New {
                title,
                project,
                description,
            } => Op::ItemNew {
                project: project.clone(),
                title: title.clone(),
                description: description.clone(),
            },
            ItemCommand::Set { work_item, status } => Op::ItemSet {
                work_item: work_item.clone(),
                status: status.clone(),
            },
            ItemCommand::Comment { work_item, text } => Op::ItemComment {
                work_item: work_item.clone(),
                text: text.clone(),
            },
        },
        _ => return None,
    })
}

/// B-4: a client of the running daemon at `--url` / ORCH_URL / ORCH_BIND,
/// with ORCH_ADMIN_TOKEN. The daemon's own settings are read only for
/// those two; a config the client does not need cannot stop it.
fn operator(cli: &Cli, env: &EnvVars, op: Op) -> anyhow::Result<()> {
    telemetry::init(Settings::default().log_format, "warn");
    let loaded = Settings::load(env).ok().map(|(s, _)| s);
    let url = match cli
        .url
        .clone()
        .or_else(|| env.get("ORCH_URL").map(str::to_string))
    {
        Some(u) => u,
        None => {
            let mut bind = loaded
                .as_ref()
                .map_or_else(|| Settings::default().bind, |s| s.bind);
            if bind.ip().is_unspecified() {
                bind.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("http://{bind}")
        }
    };
    let token = env
        .get("ORCH_ADMIN_TOKEN")
        .map(str::to_string)
        .or_else(|| loaded.map(|s| s.admin_token.expose().to_string()))
        .unwrap_or_default();
    let client = Client::new(&url, &token)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let out = runtime.block_on(orchestrator::cli::run(&client, &op, cli.json))?;
    print!("{out}");
    Ok(())
}

/// `orchestrator demo` (B-10).
fn demo(
    env: &EnvVars,
    dir: Option<PathBuf>,
    exit_when_done: bool,
    by_hand: bool,
    agent: DemoAgent,
    bind: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let filter = env.get("RUST_LOG").unwrap_or("warn").to_string();
    telemetry::init(Settings::default().log_format, &filter);
    let bind = match bind {
        Some(b) => b,
        None => match env.get("ORCH_BIND") {
            Some(b) => b
                .parse()
                .with_context(|| format!("ORCH_BIND={b} is not an address"))?,
            None => Settings::default().bind,
        },
    };
    let dir = dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!(
            "orchestrator-demo-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ))
    });
    let claude = env.get("PATH").and_then(|path| {
        std::env::split_paths(path)
            .map(|d| d.join("claude"))
            .find(|p| p.is_file())
    });
    let opts = demo::Options {
        dir,
        bind,
        exit_when_done,
        by_hand,
        agent: match agent {
            DemoAgent::Scripted => demo::Agent::Scripted,
            DemoAgent::Claude => demo::Agent::Claude,
        },
        claude,
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let result = runtime.block_on(demo::run(opts));
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    result
}
