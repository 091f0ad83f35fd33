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
        .env(
            "ORCH_AGENT_COMMAND",
            format!("AGENT_SLEEP={agent_sleep} {}", agent("contract-agent.sh")),
        )
        .env("ORCH_WORKER_POLL_INTERVAL_MS", "100")
        .env("ORCH_RECONCILER_INTERVAL_S", "1")
        .env("ORCH_REAPER_INTERVAL_S", "1")
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
