//! B-14: the real agent CLIs as the agents. The real daemon binary drives
//! a work item from "To Analyse" to Done against the Plane and Gitea
//! doubles; every agent is the pinned Claude Code CLI (and, in the second
//! test, the pinned Codex CLI for the developer, reviewer and tester),
//! confined by the daemon's Landlock sandbox, talking to the loopback model
//! doubles of `support/model_api.rs`. The scripted model answers each role
//! with one shell tool call that writes the role's artifact.
//!
//! What is proved: Done with one merge; each run's recorded usage is the
//! doubles' scripted usage (input, cache read, cache creation, output, as
//! the CLI summed it over its turns); a Claude run's cost is the CLI's own
//! `total_cost_usd`, a Codex run's the price table's; the usage comments
//! say what was read; the task's total is the sum of its runs.
//!
//! The CLIs come from `tests/clis` (`npm ci`, run by `.ci/run`). Missing:
//! a loud skip locally, a failure when `CI` is set.

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;

use orchestrator::agents::usage::{self, PriceTable};
use orchestrator::db::Db;
use orchestrator::domain::Stage;
use support::clis;
use support::daemon::{REPO, World, until, world};
use support::model_api::{Api, CLAUDE_TURNS, CODEX_TURNS, ModelDouble, TurnUsage};

/// One run as recorded in `agent_runs`.
#[derive(Debug, sqlx::FromRow)]
struct Run {
    role: String,
    stage: String,
    exit_code: Option<i64>,
    input_tokens: i64,
    output_tokens: i64,
    cache_read_tokens: i64,
    cache_creation_tokens: i64,
    cost_usd: f64,
    usage_format: Option<String>,
    usage_error: Option<String>,
    log_path: Option<String>,
}

async fn runs_of(db: &Db, task: i64) -> Vec<Run> {
    sqlx::query_as(
        "SELECT role, stage, exit_code, input_tokens, output_tokens, cache_read_tokens,
                cache_creation_tokens, cost_usd, usage_format, usage_error, log_path
         FROM agent_runs WHERE task_id = ? ORDER BY id",
    )
    .bind(task)
    .fetch_all(db.reader())
    .await
    .unwrap()
}

/// A run's usage as the daemon must record it: Anthropic's fields as they
/// are; OpenAI's input with the cached part split out.
fn expected(api: Api) -> (i64, i64, i64, i64) {
    let sum = |turns: &[TurnUsage]| {
        turns.iter().fold(TurnUsage::default(), |a, t| TurnUsage {
            input: a.input + t.input,
            output: a.output + t.output,
            cache_read: a.cache_read + t.cache_read,
            cache_creation: a.cache_creation + t.cache_creation,
        })
    };
    match api {
        Api::Anthropic => {
            let u = sum(&CLAUDE_TURNS);
            let i = |x: u64| x as i64;
            (
                i(u.input),
                i(u.output),
                i(u.cache_read),
                i(u.cache_creation),
            )
        }
        Api::OpenAi => {
            let u = sum(&CODEX_TURNS);
            let i = |x: u64| x as i64;
            (i(u.input - u.cache_read), i(u.output), i(u.cache_read), 0)
        }
    }
}

/// The `total_cost_usd` of the last `result` line Claude Code printed.
fn claude_reported_cost(log: &str) -> f64 {
    claude_cost_in(&std::fs::read_to_string(log).unwrap())
}

struct Cli {
    claude: PathBuf,
    codex: Option<PathBuf>,
}

/// The CLIs, or `None` (after the loud message) when a local run lacks them.
fn clis(need_codex: bool) -> Option<Cli> {
    let claude = clis::claude()?;
    let codex = if need_codex {
        Some(clis::codex()?)
    } else {
        None
    };
    Some(Cli { claude, codex })
}

/// Codex reports no cost: its runs are priced from the config's table, here
/// at prices unlike the built-in ones so the test sees which table priced.
const CODEX_PRICES: &str =
    "[prices.models.gpt-5-codex]\ninput = 7.0\noutput = 21.0\ncache_read = 0.7\n";

fn codex_prices() -> PriceTable {
    let doc: toml::Table = toml::from_str(CODEX_PRICES).unwrap();
    let overrides: orchestrator::domain::prices::PriceOverrides =
        doc["prices"].clone().try_into().unwrap();
    PriceTable::with_overrides(&overrides).for_model(clis::CODEX_MODEL)
}

/// The daemon's world: Claude Code for every role, `codex_roles` run by
/// Codex (project overrides), the CLIs' files readable by the confined
/// agents, the model double in the agents' environment.
async fn cli_world(cli: &Cli, model: &ModelDouble, codex_roles: &[&str]) -> World {
    let mut project = String::from("test_command = 'true'\n");
    for role in codex_roles {
        let cmd = clis::codex_command(cli.codex.as_ref().unwrap(), &model.base_url());
        project.push_str(&format!(
            "[projects.agents.{role}]\ncommand = '''{cmd}'''\nmodel = \"{}\"\n",
            clis::CODEX_MODEL
        ));
    }
    if !codex_roles.is_empty() {
        project.push_str(CODEX_PRICES);
    }
    let claude = clis::claude_command(&cli.claude);
    let read = clis::node_modules().display().to_string();
    let mut env: Vec<(String, String)> = clis::env(&model.base_url());
    env.extend(
        [
            ("ORCH_AGENT_COMMAND", claude.as_str()),
            ("ORCH_AGENT_MODEL", clis::CLAUDE_MODEL),
            ("ORCH_AGENT_READ_PATHS", read.as_str()),
            ("ORCH_WORKER_POLL_INTERVAL_MS", "100"),
            ("ORCH_RECONCILER_ENABLED", "true"),
            ("ORCH_RECONCILER_INTERVAL_S", "1"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    world(&project, &pairs).await
}

/// To Analyse → (BRD READY) Approved → … → deploy → Confirm Deploy → Done.
/// Returns the task id.
async fn drive_to_done(w: &World, db: &Db) -> i64 {
    let item = w.plane.add_item(&w.pid, 1, "Add a feature");
    assert_eq!(w.plane.human_set_state(&item, "To Analyse").await, 200);
    let task = || async {
        orchestrator::db::tasks::by_work_item(db.reader(), "DEMO-1")
            .await
            .ok()
            .flatten()
    };
    until("the analyst's BRD asks for approval", 90, || async {
        w.plane
            .comments(&item)
            .iter()
            .any(|c| c.html.contains("approv") || c.html.contains("Approv"))
            && task().await.is_some_and(|t| t.stage == Stage::Analysis)
    })
    .await;
    assert_eq!(w.plane.human_set_state(&item, "Approved").await, 200);
    until("the task parks at deploy", 240, || async {
        task().await.is_some_and(|t| t.stage == Stage::Deploy)
    })
    .await;
    assert_eq!(w.plane.human_set_state(&item, "Confirm Deploy").await, 200);
    until("the task is done", 180, || async {
        task().await.is_some_and(|t| t.stage == Stage::Done)
    })
    .await;
    task().await.unwrap().id
}

/// Everything B-14 asks of one finished pipeline.
async fn check_runs(w: &World, db: &Db, model: &ModelDouble, id: i64, codex_roles: &[&str]) {
    assert_eq!(
        (w.merge_posts(), w.merges_in_main()),
        (1, 1),
        "exactly one merge"
    );
    let runs = runs_of(db, id).await;
    let roles: Vec<(&str, &str)> = runs
        .iter()
        .map(|r| (r.role.as_str(), r.stage.as_str()))
        .collect();
    assert_eq!(
        roles,
        [
            ("analyst", "analysis"),
            ("architect", "architecture"),
            ("developer", "development"),
            ("reviewer", "review"),
            ("tester", "testing"),
            ("deployer", "deploy-staging"),
            ("deployer", "deploy"),
        ],
        "one run per role, no retry"
    );
    let prices = codex_prices();
    let built_in = PriceTable::default().for_model(clis::CODEX_MODEL);
    for r in &runs {
        let api = if codex_roles.contains(&r.role.as_str()) {
            Api::OpenAi
        } else {
            Api::Anthropic
        };
        assert_eq!(r.exit_code, Some(0), "{r:?}");
        let got = (
            r.input_tokens,
            r.output_tokens,
            r.cache_read_tokens,
            r.cache_creation_tokens,
        );
        assert_eq!(got, expected(api), "{} ({api:?}): {r:?}", r.role);
        assert_eq!(r.usage_error, None, "{r:?}");
        let log = r.log_path.as_deref().unwrap();
        match api {
            Api::Anthropic => {
                assert_eq!(r.usage_format.as_deref(), Some("claude-stream-json"));
                let reported = claude_reported_cost(log);
                assert!(reported > 0.0);
                // Exactly: read with serde_json's float_roundtrip, stored
                // as SQLite REAL (an IEEE double).
                assert_eq!(
                    r.cost_usd, reported,
                    "{}: recorded {} vs the CLI's total_cost_usd {reported}",
                    r.role, r.cost_usd
                );
            }
            Api::OpenAi => {
                assert_eq!(r.usage_format.as_deref(), Some("codex-exec-json"));
                let (i, o, cr, _) = expected(api);
                let u = usage::Usage {
                    input_tokens: i as u64,
                    output_tokens: o as u64,
                    cache_read_tokens: cr as u64,
                    ..Default::default()
                };
                let want = prices.cost(Some(clis::CODEX_MODEL), &u);
                assert!(want > 0.0);
                assert_ne!(want, built_in.cost(Some(clis::CODEX_MODEL), &u));
                assert!((r.cost_usd - want).abs() < 1e-12, "{r:?} vs {want}");
            }
        }
    }
    // The task's total is the sum of its runs.
    let total = orchestrator::db::runs::cost_of(db.reader(), id, None)
        .await
        .unwrap();
    let sum: f64 = runs.iter().map(|r| r.cost_usd).sum();
    assert!((total - sum).abs() < 1e-9, "{total} vs {sum}");

    // The model saw two turns per run (tool call, closing text), on the
    // API of the CLI that ran it, and the scripted artifacts were written.
    let mut turns: BTreeMap<(String, String), Vec<(Api, usize)>> = BTreeMap::new();
    for s in model.served() {
        turns
            .entry((s.role.clone(), s.stage.clone()))
            .or_default()
            .push((s.api, s.turn));
    }
    for r in &runs {
        let api = if codex_roles.contains(&r.role.as_str()) {
            Api::OpenAi
        } else {
            Api::Anthropic
        };
        assert_eq!(
            turns.get(&(r.role.clone(), r.stage.clone())),
            Some(&vec![(api, 0), (api, 1)]),
            "{} at {}: {:?}",
            r.role,
            r.stage,
            model.other_paths()
        );
    }
    let files = support::gitea_double::git(&w.bare, &["ls-tree", "-r", "--name-only", "main"]);
    for f in [
        "src/feature-DEMO-1.txt",
        "docs/work-items/DEMO-1/01-brd.md",
        "docs/work-items/DEMO-1/06-adr/ADR-001-plan.md",
        "docs/work-items/DEMO-1/11-review.md",
        "docs/work-items/DEMO-1/13-test-report.md",
        "docs/work-items/DEMO-1/14-staging-report.md",
    ] {
        assert!(files.lines().any(|l| l == f), "{f} not merged: {files}");
    }
    let _ = REPO;
}

/// The usage comments on the Plane item: one per run, none saying the
/// usage could not be read, each with the run's full input.
fn check_comments(w: &World, item_comments: &[String], want_full_input: &[String]) {
    let usage: Vec<&String> = item_comments
        .iter()
        .filter(|c| c.contains("Usage:"))
        .collect();
    assert!(!usage.is_empty(), "no usage comment: {}", w.log());
    for c in &usage {
        assert!(!c.contains("could not be read"), "{c}");
        assert!(
            want_full_input.iter().any(|n| c.contains(n.as_str())),
            "{c} names none of {want_full_input:?}"
        );
    }
}

fn thousands(n: i64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

async fn pipeline(codex_roles: &[&str]) {
    let Some(cli) = clis(!codex_roles.is_empty()) else {
        return;
    };
    let model = ModelDouble::start().await;
    let w = cli_world(&cli, &model, codex_roles).await;
    let mut daemon = w.start().await;
    let db = Db::open(&w.db_path()).await.unwrap();
    let id = drive_to_done(&w, &db).await;
    check_runs(&w, &db, &model, id, codex_roles).await;
    let item = orchestrator::db::tasks::get(db.reader(), id)
        .await
        .unwrap()
        .unwrap()
        .plane_issue_id
        .unwrap();
    let comments: Vec<String> = w
        .plane
        .comments(&item)
        .into_iter()
        .map(|c| c.html)
        .collect();
    let full = |api| {
        let (i, _, cr, cc) = expected(api);
        format!("Input: {} tokens", thousands(i + cr + cc))
    };
    check_comments(&w, &comments, &[full(Api::Anthropic), full(Api::OpenAi)]);
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    daemon.exited(60).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_as_every_role_reaches_done_with_the_usage_it_reported() {
    pipeline(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_as_developer_reviewer_and_tester_reaches_done_with_its_usage() {
    pipeline(&["developer", "reviewer", "tester"]).await;
}

/// B-7 with the real CLI: the developer's first model turn reports 300,000
/// uncached input tokens ($0.90 at the built-in claude-sonnet-4-5 price)
/// and asks for a tool call that keeps working. Claude Code prints that
/// turn as an assistant line while the tool runs; with a stage budget of
/// $0.50 the monitor prices the line, stops the CLI's process group long
/// before the tool ends, and the task holds over budget, not retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_claude_run_past_its_budget_is_stopped_and_the_task_holds() {
    let Some(cli) = clis(false) else {
        return;
    };
    let model = ModelDouble::start().await;
    let spend = TurnUsage {
        input: 300_000,
        output: 40,
        cache_read: 0,
        cache_creation: 0,
    };
    model.script_first_turn(
        "developer",
        spend,
        "timeout 120 tail -f /dev/null; touch never-reached",
    );
    let mut w = cli_world(&cli, &model, &[]).await;
    w.env.push(("ORCH_STAGE_BUDGET_USD".into(), "0.5".into()));
    let mut daemon = w.start().await;
    let db = Db::open(&w.db_path()).await.unwrap();
    let (_item, task) = w.task_at(&db, 5, Stage::Development).await;
    orchestrator::db::jobs::enqueue(&db, task.id, Stage::Development, "developer", 1, "")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let deadline = started + std::time::Duration::from_secs(90);
    while !support::daemon::task(&db, task.id)
        .await
        .hold_reason
        .is_some_and(|r| r.contains("over budget"))
    {
        if std::time::Instant::now() > deadline {
            let logs: Vec<String> = runs_of(&db, task.id)
                .await
                .iter()
                .filter_map(|r| r.log_path.as_deref())
                .map(|l| {
                    let text = std::fs::read_to_string(l).unwrap_or_default();
                    text.lines().skip(1).collect::<Vec<_>>().join("\n")
                })
                .collect();
            panic!(
                "no hold over budget: {:?}\nruns' logs: {logs:?}\n{}",
                support::daemon::task(&db, task.id).await,
                w.log()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(100),
        "stopped before the tool's 120 s ran out"
    );
    let jobs = orchestrator::db::jobs::for_task(db.reader(), task.id)
        .await
        .unwrap();
    let developers: Vec<_> = jobs.iter().filter(|j| j.role == "developer").collect();
    assert_eq!(developers.len(), 1, "a budget is not retried: {jobs:?}");
    let pgid = developers[0].pgid.expect("the run's group") as i32;
    until("the CLI's group is gone", 20, || async {
        !orchestrator::proc_group::group_alive(pgid)
    })
    .await;
    let served: Vec<_> = model
        .served()
        .into_iter()
        .filter(|s| s.role == "developer")
        .collect();
    assert_eq!(served.len(), 1, "the tool never finished: {served:?}");
    let wt = w.dir.path().join("ws");
    let reached = walk_finds(&wt, "never-reached");
    assert!(!reached, "the tool call was stopped");
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    daemon.exited(60).await;
}

fn walk_finds(dir: &std::path::Path, name: &str) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        let ty = e.file_type().ok();
        e.file_name() == name
            || (ty.is_some_and(|t| t.is_dir() && !t.is_symlink()) && walk_finds(&e.path(), name))
    })
}

/// Runs `command` (a template of `support::clis`) in a fresh directory as
/// the analyst of DEMO-7, outside the daemon; returns its stdout.
async fn run_cli(model: &ModelDouble, command: &str, model_name: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let prompt = dir.path().join("prompt.md");
    std::fs::write(
        &prompt,
        "# You are the analyst of work item DEMO-7\n\n## Your task (analysis stage)\n\nWrite the BRD.\n",
    )
    .unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let out = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(&work)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir.path())
        .env("ORCH_PROMPT_FILE", &prompt)
        .env("ORCH_MODEL", model_name)
        .envs(clis::env(&model.base_url()))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{command}: {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        work.join("docs/work-items/DEMO-7/01-brd.md").is_file(),
        "the tool call ran: {stdout}"
    );
    // CAPTURE_FIXTURES=<dir>: keep the output (how the fixtures in
    // tests/fixtures/agents/*-2.1.328*, *-0.171.0* were made).
    if let Some(dir) = std::env::var_os("CAPTURE_FIXTURES") {
        let name = format!("{}.out", command.len());
        std::fs::write(PathBuf::from(dir).join(name), &stdout).unwrap();
    }
    stdout
}

fn tokens(u: &usage::Usage) -> (i64, i64, i64, i64) {
    let i = |x: u64| x as i64;
    (
        i(u.input_tokens),
        i(u.output_tokens),
        i(u.cache_read_tokens),
        i(u.cache_creation_tokens),
    )
}

/// Each output format of the pinned CLIs, straight from the CLI: the
/// parser reads the scripted usage, and Claude's own cost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_cli_output_format_reads_as_the_scripted_usage() {
    let Some(cli) = clis(true) else {
        return;
    };
    let model = ModelDouble::start().await;
    let prices = PriceTable::default().for_model(clis::CLAUDE_MODEL);

    let stream = run_cli(
        &model,
        &clis::claude_command(&cli.claude),
        clis::CLAUDE_MODEL,
    )
    .await;
    let parsed = usage::parse(&stream, &prices);
    assert_eq!(parsed.warning, None, "{stream}");
    assert_eq!(parsed.usage.format, usage::UsageFormat::ClaudeStreamJson);
    assert_eq!(tokens(&parsed.usage), expected(Api::Anthropic));
    assert_eq!(parsed.usage.cost_usd, claude_cost_in(&stream));

    let json_cmd = clis::claude_command(&cli.claude).replace(
        "--output-format stream-json --verbose",
        "--output-format json",
    );
    let json = run_cli(&model, &json_cmd, clis::CLAUDE_MODEL).await;
    let parsed = usage::parse(&json, &prices);
    assert_eq!(parsed.warning, None, "{json}");
    assert_eq!(parsed.usage.format, usage::UsageFormat::ClaudeJson);
    assert_eq!(tokens(&parsed.usage), expected(Api::Anthropic));
    assert_eq!(parsed.usage.cost_usd, claude_cost_in(&json));

    let codex_cmd = clis::codex_command(cli.codex.as_ref().unwrap(), &model.base_url());
    let codex = run_cli(&model, &codex_cmd, clis::CODEX_MODEL).await;
    let parsed = usage::parse(&codex, &PriceTable::default().for_model(clis::CODEX_MODEL));
    assert_eq!(parsed.warning, None, "{codex}");
    assert_eq!(parsed.usage.format, usage::UsageFormat::CodexExecJson);
    assert_eq!(tokens(&parsed.usage), expected(Api::OpenAi));
    assert!(
        !parsed.usage.is_error,
        "a model-metadata warning item is no error"
    );
}

fn claude_cost_in(out: &str) -> f64 {
    out.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["type"] == "result")
        .and_then(|v| v["total_cost_usd"].as_f64())
        .unwrap_or_else(|| panic!("no total_cost_usd: {out}"))
}
