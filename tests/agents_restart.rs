//! Issue 4: the daemon is SIGKILLed while an agent runs; after a restart the
//! job is recovered and the task goes on, with no second run of the stage.
//! Two cases: the agent still runs at the restart (adopted), and the agent
//! finished while the daemon was down (its exit file is read).

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use orchestrator::db::tasks::{self, NewTask};
use orchestrator::db::{Db, jobs, runs};
use orchestrator::domain::Stage;
use support::runtime::{agent, bare_remote};

fn daemon(dir: &Path, agent_sleep: &str) -> Child {
    daemon_with(
        dir,
        &format!("AGENT_SLEEP={agent_sleep} {}", agent("contract-agent.sh")),
        &[],
    )
}

fn daemon_with(dir: &Path, agent_command: &str, extra: &[(&str, &str)]) -> Child {
    // No HTTP is needed here: an OS-chosen port cannot collide.
    Command::new(support::bin())
        .current_dir(dir)
        .env("ORCH_CONFIG", dir.join("o.toml"))
        .env("ORCH_BIND", "127.0.0.1:0")
        .env(
            "ORCH_DATABASE_URL",
            format!("sqlite://{}", dir.join("o.db").display()),
        )
        .env("ORCH_WORKSPACE_ROOT", dir.join("ws"))
        .env("ORCH_AGENT_COMMAND", agent_command)
        .env("ORCH_WORKER_POLL_INTERVAL_MS", "100")
        .env("ORCH_RECONCILER_INTERVAL_S", "1")
        .env("ORCH_REAPER_INTERVAL_S", "1")
        .envs(extra.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn setup(dir: &Path) -> i64 {
    let bare = bare_remote(dir, "demo");
    std::fs::write(
        dir.join("o.toml"),
        format!(
            "[[projects]]\nname = \"demo\"\nwork_item_prefix = \"DEMO\"\nrepo_url = \"{}\"\n",
            bare.display()
        ),
    )
    .unwrap();
    let db = Db::open(&dir.join("o.db")).await.unwrap();
    let id = tasks::insert(
        db.writer(),
        &NewTask {
            work_item: "DEMO-1".into(),
            project: "demo".into(),
            title: "t".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // A person already approved: after the analyst the task goes on.
    tasks::set_approved(db.writer(), id).await.unwrap();
    db.close().await;
    id
}

async fn wait_for<F, Fut>(what: &str, secs: u64, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn analyst_job(db: &Db, id: i64) -> Option<jobs::JobRow> {
    jobs::for_task(db.reader(), id)
        .await
        .unwrap()
        .into_iter()
        .find(|j| j.role == "analyst")
}

async fn run_case(agent_sleep: &str, wait_for_agent_end: bool) {
    let dir = tempfile::tempdir().unwrap();
    let id = setup(dir.path()).await;
    let db = Db::open(&dir.path().join("o.db")).await.unwrap();
    let mut d1 = daemon(dir.path(), agent_sleep);
    wait_for("the analyst to run", 30, || async {
        analyst_job(&db, id)
            .await
            .is_some_and(|j| j.status == "running" && j.pgid.is_some())
    })
    .await;
    d1.kill().unwrap(); // SIGKILL
    d1.wait().unwrap();
    let job = analyst_job(&db, id).await.unwrap();
    let pgid = job.pgid.unwrap() as i32;
    assert!(
        orchestrator::proc_group::group_alive(pgid),
        "the agent outlives the daemon"
    );
    if wait_for_agent_end {
        wait_for("the agent to end while the daemon is down", 30, || async {
            !orchestrator::proc_group::group_alive(pgid)
        })
        .await;
    }
    let mut d2 = daemon(dir.path(), agent_sleep);
    wait_for("the task to go on past analysis", 60, || async {
        let t = tasks::get(db.reader(), id).await.unwrap().unwrap();
        t.stage.order() > Stage::Analysis.order()
    })
    .await;
    let job = jobs::get(db.reader(), job.id).await.unwrap().unwrap();
    assert_eq!(job.status, "done", "{job:?}");
    let all: Vec<_> = jobs::for_task(db.reader(), id).await.unwrap();
    let analysts: Vec<_> = all.iter().filter(|j| j.role == "analyst").collect();
    assert_eq!(analysts.len(), 1, "no second analyst job: {all:?}");
    let run_count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM agent_runs WHERE job_id = ?")
        .bind(job.id)
        .fetch_one(db.reader())
        .await
        .unwrap();
    assert_eq!(run_count, 1, "the finished stage did not run a second time");
    let run = runs::latest_for_job(db.reader(), job.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(run.exit_code, Some(0));
    d2.kill().unwrap();
    d2.wait().unwrap();
    // Leave no agent behind.
    for j in all {
        if let Some(p) = j.pgid {
            orchestrator::proc_group::kill_group(p as i32, Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_adopts_a_running_agent() {
    run_case("3", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_finalizes_an_agent_that_ended_while_down() {
    run_case("1", true).await;
}

/// B-8 after a restart: an agent adopted by the next daemon is under the
/// same stall check as one it started (not only under the reaper's tier 3,
/// whose ceiling is hours). The first daemon's stall timeout is long; the
/// second's is 2 s: the silent agent is stopped, its group gone, the job
/// carries the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adopted_silent_agent_is_stall_killed_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let id = setup(dir.path()).await;
    let db = Db::open(&dir.path().join("o.db")).await.unwrap();
    let silent = "sleep 600";
    let mut d1 = daemon_with(dir.path(), silent, &[("ORCH_AGENT_STALL_TIMEOUT_S", "600")]);
    wait_for("the analyst to run", 30, || async {
        analyst_job(&db, id)
            .await
            .is_some_and(|j| j.status == "running" && j.pgid.is_some())
    })
    .await;
    d1.kill().unwrap(); // SIGKILL
    d1.wait().unwrap();
    let job = analyst_job(&db, id).await.unwrap();
    let pgid = job.pgid.unwrap() as i32;
    assert!(orchestrator::proc_group::group_alive(pgid));
    let mut d2 = daemon_with(dir.path(), silent, &[("ORCH_AGENT_STALL_TIMEOUT_S", "2")]);
    wait_for("the adopted agent to be stall-killed", 30, || async {
        !orchestrator::proc_group::group_alive(pgid)
    })
    .await;
    // The stalled run ends like any stalled run: retried (a new attempt),
    // or held once the attempts are spent.
    wait_for(
        "the stalled job to end and be retried or held",
        30,
        || async {
            let ended = jobs::get(db.reader(), job.id)
                .await
                .unwrap()
                .is_some_and(|j| j.status != "running");
            let retried = jobs::for_task(db.reader(), id)
                .await
                .unwrap()
                .iter()
                .any(|j| j.role == "analyst" && j.attempt > job.attempt);
            let held = tasks::get(db.reader(), id)
                .await
                .unwrap()
                .unwrap()
                .hold_reason
                .is_some();
            ended && (retried || held)
        },
    )
    .await;
    d2.kill().unwrap();
    d2.wait().unwrap();
    for j in jobs::for_task(db.reader(), id).await.unwrap() {
        if let Some(p) = j.pgid {
            orchestrator::proc_group::kill_group(p as i32, Duration::from_millis(200)).await;
        }
    }
}

/// B-7 for a real stream: the agent's stream-json spends $0.15 a second and
/// never ends; with a task budget of $0.50 the group is stopped within one
/// budget tick of crossing it (the check runs every 5 s), and the task
/// holds with the reason. The log shows what had been spent when it was
/// stopped: no more than one tick past the ceiling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_past_the_budget_is_stopped_and_the_task_holds() {
    let dir = tempfile::tempdir().unwrap();
    let id = setup(dir.path()).await;
    let db = Db::open(&dir.path().join("o.db")).await.unwrap();
    let mut d = daemon_with(
        dir.path(),
        &agent("spender.sh"),
        &[
            ("ORCH_TASK_BUDGET_USD", "0.5"),
            ("ORCH_AGENT_MAX_ATTEMPTS", "3"),
        ],
    );
    wait_for("the task to hold over budget", 60, || async {
        tasks::get(db.reader(), id)
            .await
            .unwrap()
            .unwrap()
            .hold_reason
            .is_some_and(|r| r.contains("budget"))
    })
    .await;
    let job = analyst_job(&db, id).await.unwrap();
    let hold = tasks::get(db.reader(), id)
        .await
        .unwrap()
        .unwrap()
        .hold_reason;
    assert!(
        hold.as_deref().unwrap_or("").contains("over budget"),
        "{hold:?} {job:?}"
    );
    let pgid = job.pgid.unwrap() as i32;
    assert!(
        !orchestrator::proc_group::group_alive(pgid),
        "the group is stopped"
    );
    // How far past the ceiling it got: one message a second, one check
    // every 5 s, so at most ~5 messages (+ grace) past the $0.50 mark.
    let run = runs::latest_for_job(db.reader(), job.id)
        .await
        .unwrap()
        .unwrap();
    let log = std::fs::read_to_string(run.log_path.unwrap()).unwrap();
    let messages = log.lines().filter(|l| l.contains("\"assistant\"")).count();
    assert!(
        (4..=12).contains(&messages),
        "stopped after {messages} messages (${:.2})",
        messages as f64 * 0.15
    );
    // No second run: a budget is not retried.
    let analysts = jobs::for_task(db.reader(), id)
        .await
        .unwrap()
        .into_iter()
        .filter(|j| j.role == "analyst")
        .count();
    assert_eq!(analysts, 1);
    d.kill().unwrap();
    d.wait().unwrap();
}
