//! B-12: no secret reachable from an agent. A rogue developer agent
//! (tests/agents/rogue-agent.sh) collects its environment, every
//! ancestor's and every process's `/proc/<pid>/environ`, the config file,
//! the `.env` beside it and the database, tries to write the database, and
//! leaves what it found in its change, which the monitor commits and pushes.
//! Through the real binary: with the sandbox (the default) nothing secret
//! reaches the repository and the database is untouched; with
//! `ORCH_AGENT_SANDBOX=off` the same agent gets them (the check can fail).

mod support;

use orchestrator::db::Db;
use orchestrator::domain::Stage;
use support::daemon::{REPO, World, until, world};
use support::gitea_double::{git, try_git};

const ADMIN: &str = "admin-canary-5e1d09";
const CONFIG_CANARY: &str = "config-canary-7f3a44";
const DOTENV_CANARY: &str = "dotenv-canary-91bd2c";

/// Every secret the daemon holds, as the rogue could find it.
fn secrets() -> Vec<&'static str> {
    vec![
        ADMIN,
        CONFIG_CANARY,
        DOTENV_CANARY,
        support::intake_env::PSECRET,
        support::intake_env::GSECRET,
        // The database's own header: any content of it.
        "SQLite format 3",
    ]
}

async fn rogue_world(sandbox: &str) -> World {
    let agent = support::runtime::agent("rogue-agent.sh");
    let w = world(
        "test_command = 'true'",
        &[
            ("ORCH_AGENT_COMMAND", agent.as_str()),
            ("ORCH_ADMIN_TOKEN", ADMIN),
            ("ORCH_AGENT_SANDBOX", sandbox),
            ("ORCH_WORKER_POLL_INTERVAL_MS", "100"),
            ("ORCH_RECONCILER_ENABLED", "true"),
            ("ORCH_RECONCILER_INTERVAL_S", "1"),
        ],
    )
    .await;
    // Secrets in the files the daemon reads: the config file and `.env`.
    let config = w.dir.path().join("orchestrator.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!("# {CONFIG_CANARY}\n"));
    std::fs::write(&config, text).unwrap();
    // (A variable `.env` sets that is not one of the daemon's secrets is
    // handed on to agents, like the rest of the environment: that is how an
    // agent gets its model API key. The file itself stays out of reach.)
    std::fs::write(
        w.dir.path().join(".env"),
        format!("# {DOTENV_CANARY}\nORCH_LOG_LEVEL=info\n"),
    )
    .unwrap();
    w
}

/// Runs the rogue developer on DEMO-1 and returns what it left on its
/// pushed branch (src/loot.txt) and everything the repository holds.
async fn run_rogue(w: &World) -> (String, String) {
    let mut daemon = w.start().await;
    let db = Db::open(&w.db_path()).await.unwrap();
    let (_item, _task) = w.task_at(&db, 1, Stage::Development).await;
    until("the developer's change is pushed", 90, || async {
        let (ok, files) = try_git(&w.bare, &["ls-tree", "-r", "--name-only", "demo-1"]);
        ok && files.lines().any(|l| l == "src/loot.txt")
    })
    .await;
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    daemon.exited(60).await;
    let loot = git(&w.bare, &["show", "demo-1:src/loot.txt"]);
    let everything = git(
        &w.bare,
        &["log", "--all", "-p", "--binary", "--format=%H %s %b"],
    );
    (loot, everything)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rogue_agent_reaches_no_secret_and_leaves_the_database_alone() {
    let w = rogue_world("landlock").await;
    let (loot, everything) = run_rogue(&w).await;
    // The rogue really tried: its log names each attempt.
    for attempt in [
        "== own environment",
        "environ",
        "denied: config",
        "denied: .env",
        "denied: database read",
        "denied: database write",
    ] {
        assert!(loot.contains(attempt), "{attempt} not in the loot:\n{loot}");
    }
    for s in secrets() {
        assert!(
            !everything.contains(s),
            "{s:?} reached the repository:\n{loot}"
        );
    }
    // The database: never written by the agent, still whole.
    let bytes = std::fs::read(w.db_path()).unwrap();
    assert!(
        !bytes.windows(11).any(|w| w == b"ROGUE-WRITE"),
        "the agent wrote the database"
    );
    let db = Db::open(&w.db_path()).await.unwrap();
    let ok: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(db.reader())
        .await
        .unwrap();
    assert_eq!(ok, "ok");
    // It ran as a developer should otherwise: its artifact is on the branch.
    let files = git(&w.bare, &["ls-tree", "-r", "--name-only", "demo-1"]);
    assert!(files.lines().any(|l| l == "src/feature.txt"), "{files}");
    let _ = REPO;
}

/// The negative control: the same rogue without the sandbox finds the
/// daemon's secrets, so the test above can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_sandbox_the_same_rogue_finds_secrets() {
    let w = rogue_world("off").await;
    let (loot, everything) = run_rogue(&w).await;
    assert!(
        everything.contains(CONFIG_CANARY) && loot.contains("SQLite format 3"),
        "an unconfined agent reads the config file and the database:\n{loot}"
    );
    assert!(
        loot.contains("wrote: database"),
        "an unconfined agent can write the database:\n{loot}"
    );
}
