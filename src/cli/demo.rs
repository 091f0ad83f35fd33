//! `orchestrator demo` (B-10): the whole pipeline on this machine in a
//! minute, with nothing but git. In a directory of its own it makes a bare
//! repository holding a tiny project with a test, a config with one project
//! on the built-in tracker and forge, and the scripted example agent; it
//! starts the daemon in process, creates a work item over the daemon's HTTP
//! API like any client, answers the two human gates itself (Approved at the
//! BRD, Confirm Deploy at deploy) and prints each stage as it changes.
//! With `--by-hand` it only makes the world and serves it: the person
//! creates the item and answers the gates on the board or with the CLI.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;
use tokio::net::TcpListener;

use super::client::{Client, ClientError};
use crate::config::{EnvVars, Settings};

/// The example agent, shipped in the binary so the demo needs no checkout.
const SCRIPTED_AGENT: &str = include_str!("../../examples/agents/scripted-agent.sh");

/// Claude Code as every role's agent (examples/agent-clis.toml).
const CLAUDE_COMMAND: &str = r#"claude -p --output-format stream-json --verbose --permission-mode acceptEdits --allowedTools "Bash Edit Write Read Glob Grep" < "$ORCH_PROMPT_FILE""#;

/// How long the demo waits for its work item before it gives up.
const DEADLINE: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agent {
    /// `examples/agents/scripted-agent.sh`: no LLM, no network.
    Scripted,
    /// The Claude Code CLI (`claude` on PATH).
    Claude,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub dir: PathBuf,
    pub bind: SocketAddr,
    pub exit_when_done: bool,
    /// Make the world and serve it, but leave the work item and its gates
    /// to the person (on the board or with the CLI).
    pub by_hand: bool,
    pub agent: Agent,
    /// Where `claude` was found on PATH, when it was.
    pub claude: Option<PathBuf>,
}

const TEST_SH: &str = "#!/bin/sh\n# The demo project's test: greet.sh must greet.\nset -e\n[ \"$(sh greet.sh)\" = \"hello, world\" ]\necho \"1 test passed\"\n";
const GREET_SH: &str = "#!/bin/sh\necho \"hello, ${1:-world}\"\n";
const CHANGES_MD: &str = "# Changes\n\n";

/// Run the demo; returns when the item is done (`exit_when_done`) or on
/// Ctrl-C.
pub async fn run(opts: Options) -> anyhow::Result<()> {
    if opts.agent == Agent::Claude && opts.claude.is_none() {
        bail!(
            "--agent claude needs the Claude Code CLI, and `claude` is not on PATH; install it (npm install -g @anthropic-ai/claude-code) and log in, or run the demo without --agent"
        );
    }
    let dir = &opts.dir;
    tokio::fs::create_dir_all(dir)
        .await
        .with_context(|| format!("cannot create the demo directory {}", dir.display()))?;
    let dir = tokio::fs::canonicalize(dir).await?;
    if tokio::fs::try_exists(dir.join("remote.git")).await? {
        bail!(
            "{} already holds a demo; pass another --dir or remove it",
            dir.display()
        );
    }
    println!("demo directory: {}", dir.display());
    let remote = make_repository(&dir).await?;
    println!(
        "project repository (bare, any git remote works): {}",
        remote.display()
    );
    let agent_command = match opts.agent {
        Agent::Scripted => {
            let script = dir.join("agents").join("scripted-agent.sh");
            tokio::fs::create_dir_all(dir.join("agents")).await?;
            tokio::fs::write(&script, SCRIPTED_AGENT).await?;
            println!(
                "agent: the scripted example agent (not an LLM): {}",
                script.display()
            );
            format!("sh '{}'", script.display())
        }
        Agent::Claude => {
            let claude = opts.claude.as_deref().unwrap_or(Path::new("claude"));
            println!("agent: Claude Code ({})", claude.display());
            CLAUDE_COMMAND.to_string()
        }
    };
    let settings = demo_settings(&dir, &remote, &agent_command, opts.bind)?;
    tokio::fs::create_dir_all(&settings.workspace_root).await?;
    let token = settings.admin_token.expose().to_string();
    let listener = TcpListener::bind(opts.bind)
        .await
        .with_context(|| format!("cannot listen on {} (--bind)", opts.bind))?;
    let running = crate::app::start(settings, listener).await?;
    let addr = running.addr;
    println!("board: http://{addr}/");
    println!("for the CLI meanwhile: export ORCH_URL=http://{addr} ORCH_ADMIN_TOKEN={token}");
    if opts.by_hand {
        println!(
            "by hand: sign in on the board with the token above (ORCH_ADMIN_TOKEN), create a work item of project demo, then press Approve and Confirm Deploy when they show; or: orchestrator item new 'A title' --project demo"
        );
        println!("Ctrl-C stops the daemon");
        tokio::signal::ctrl_c().await?;
        println!("Ctrl-C: stopping");
        return running.stop().await;
    }
    let client = Client::new(&addr.to_string(), &token)?;
    let outcome = tokio::select! {
        r = drive(&client, &remote) => r,
        _ = tokio::signal::ctrl_c() => {
            println!("Ctrl-C: stopping");
            return running.stop().await;
        }
    };
    if let Err(e) = outcome {
        let _ = running.stop().await;
        return Err(e);
    }
    if !opts.exit_when_done {
        println!("the daemon keeps running at http://{addr}/ : Ctrl-C stops it");
        tokio::signal::ctrl_c().await?;
    }
    running.stop().await
}

/// `remote.git` with one commit on `main`: a greeting script and its test.
async fn make_repository(dir: &Path) -> anyhow::Result<PathBuf> {
    let remote = dir.join("remote.git");
    let seed = dir.join("seed");
    tokio::fs::create_dir_all(&seed).await?;
    let r = remote.to_string_lossy().into_owned();
    git(dir, &["init", "--quiet", "--bare", &r]).await?;
    git(&remote, &["symbolic-ref", "HEAD", "refs/heads/main"]).await?;
    git(&seed, &["init", "--quiet"]).await?;
    git(&seed, &["checkout", "--quiet", "-b", "main"]).await?;
    for (name, text) in [
        ("test.sh", TEST_SH),
        ("greet.sh", GREET_SH),
        ("CHANGES.md", CHANGES_MD),
    ] {
        tokio::fs::write(seed.join(name), text).await?;
    }
    git(&seed, &["add", "."]).await?;
    git(
        &seed,
        &[
            "-c",
            "user.name=orchestrator demo",
            "-c",
            "user.email=demo@localhost",
            "commit",
            "--quiet",
            "-m",
            "A tiny project with a test",
        ],
    )
    .await?;
    git(&seed, &["push", "--quiet", &r, "main"]).await?;
    Ok(remote)
}

async fn git(cwd: &Path, args: &[&str]) -> anyhow::Result<String> {
    crate::git::git(cwd, args)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}

fn demo_settings(
    dir: &Path,
    remote: &Path,
    agent_command: &str,
    bind: SocketAddr,
) -> anyhow::Result<Settings> {
    let cfg = dir.join("orchestrator.toml");
    std::fs::write(
        &cfg,
        format!(
            "# Written by `orchestrator demo`: one project on the built-in tracker and forge.\n\
             [[projects]]\nname = \"demo\"\nwork_item_prefix = \"DEMO\"\nrepo_url = \"{}\"\n\
             default_branch = \"main\"\ntest_command = \"sh test.sh\"\ntracker = \"local\"\nforge = \"local\"\n",
            remote.display()
        ),
    )?;
    let token = uuid::Uuid::new_v4().simple().to_string();
    let d = |p: &str| dir.join(p).display().to_string();
    let mut pairs: Vec<(String, String)> = [
        ("ORCH_BIND", bind.to_string()),
        (
            "ORCH_DATABASE_URL",
            format!("sqlite://{}", d("state/orchestrator.db")),
        ),
        ("ORCH_WORKSPACE_ROOT", d("ws")),
        ("ORCH_ADMIN_TOKEN", token),
        ("ORCH_AGENT_COMMAND", agent_command.to_string()),
        // Short ticks: a demo should move at the speed of its agent.
        ("ORCH_WORKER_POLL_INTERVAL_MS", "200".into()),
        ("ORCH_RECONCILER_INTERVAL_S", "5".into()),
        ("ORCH_POST_DEPLOY_WINDOW_S", "3".into()),
        ("ORCH_POST_DEPLOY_TICK_S", "1".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if crate::sandbox::check_available(crate::sandbox::Mode::Landlock).is_err() {
        println!(
            "note: this kernel has no Landlock: the demo's agent runs unconfined (ORCH_AGENT_SANDBOX=off)"
        );
        pairs.push(("ORCH_AGENT_SANDBOX".into(), "off".into()));
    }
    let (settings, _) = Settings::load_with(Some(&cfg), &EnvVars::from_pairs(pairs))
        .map_err(|e| anyhow::anyhow!("the demo's configuration: {e}"))?;
    Ok(settings)
}

/// Be the person: create the work item, answer its gates, print each
/// stage change, until it is done.
async fn drive(client: &Client, remote: &Path) -> anyhow::Result<()> {
    let item = client
        .item_new(
            "demo",
            "Record the change in CHANGES.md",
            "Add a line for this work item to CHANGES.md; sh test.sh must still pass.",
        )
        .await?;
    let wi = item["work_item"].as_str().unwrap_or_default().to_string();
    println!("work item {wi} created at To Analyse");
    let start = Instant::now();
    let (mut shown, mut approved, mut confirmed, mut held) = (0, false, false, false);
    loop {
        if start.elapsed() > DEADLINE {
            bail!(
                "{wi} is not done after {}s: see `orchestrator task show {wi}`",
                DEADLINE.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let task = match client.task(&wi).await {
            Ok(t) => t,
            // The intake has not created the task yet.
            Err(ClientError::NotFound { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        let status = client.item(&wi).await?["status_key"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        // Every move, from the task's history: a poll alone would miss
        // stages an agent finishes between two polls.
        let moves = task["stages"].as_array().map_or(&[][..], Vec::as_slice);
        for m in moves.iter().skip(shown) {
            println!(
                "{:>5.1}s  {wi}: {} -> {}",
                start.elapsed().as_secs_f64(),
                m["from_stage"].as_str().unwrap_or_default(),
                m["to_stage"].as_str().unwrap_or_default()
            );
        }
        shown = shown.max(moves.len());
        let stage = task["stage"].as_str().unwrap_or_default().to_string();
        if let Some(h) = task["hold_reason"].as_str()
            && !held
        {
            println!("        {wi} is held: {h}");
            held = true;
        }
        if stage == "analysis" && status == "in_review" && !approved {
            println!("        person: the BRD is fine: Approved");
            client.item_set(&wi, "Approved").await?;
            approved = true;
        }
        if stage == "deploy" && status == "awaiting_deploy" && !confirmed {
            println!("        person: ship it: Confirm Deploy");
            client.item_set(&wi, "Confirm Deploy").await?;
            confirmed = true;
        }
        match stage.as_str() {
            "done" => break,
            "cancelled" => bail!("{wi} was cancelled: see `orchestrator task show {wi}`"),
            _ => {}
        }
    }
    let task = client.task(&wi).await?;
    if let Some(sha) = merge_commit(&task) {
        println!("merge commit: {sha}");
    }
    let log = git(remote, &["log", "--merges", "--oneline", "main"]).await?;
    println!(
        "merges on main of {}:\n{}",
        remote.display(),
        log.trim_end()
    );
    println!("{wi} is done in {:.1}s", start.elapsed().as_secs_f64());
    Ok(())
}

/// The `merge_pr` effect's recorded result: the merge commit.
fn merge_commit(task: &Value) -> Option<String> {
    task["effects"]
        .as_array()?
        .iter()
        .find(|e| e["kind"] == "merge_pr" && e["state"] == "done")?
        .get("result")?
        .as_str()
        .map(str::to_string)
}
