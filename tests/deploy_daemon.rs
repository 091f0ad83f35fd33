//! The deploy path end to end (F-23, F-24, B-1): a daemon wired to the Plane
//! and Gitea doubles (real bare git repositories), driven by signed
//! webhooks. In process: Confirm Deploy → a real merge → done, Plane at
//! Deploying, Monitoring after Deploy, then Done, a merged-PR webhook at
//! deploy ignored. The real binary: SIGKILL after the merge and before the
//! stage write (its own deploy command kills it) → restart → no second
//! merge, done, then Done in Plane.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use orchestrator::app;
use orchestrator::db::Db;
use orchestrator::db::tasks::{self, NewTask, TaskRow};
use orchestrator::domain::Stage;
use support::gitea_double::{GiteaDouble, git};
use support::intake_env::{GSECRET, PSECRET};
use support::plane_double::PlaneDouble;

const REPO: &str = "team/demo";

struct World {
    dir: tempfile::TempDir,
    plane: PlaneDouble,
    gitea: GiteaDouble,
    pid: String,
    bare: PathBuf,
    env: Vec<(String, String)>,
}

/// The doubles, a config file and the daemon's environment.
async fn world(project_extra: &str) -> World {
    let dir = tempfile::tempdir().unwrap();
    let plane = PlaneDouble::start("acme", "key").await;
    let pid = plane.add_project("DEMO");
    let gitea = GiteaDouble::start(dir.path(), "tok").await;
    let bare = gitea.create_repo(REPO);
    let config = dir.path().join("orchestrator.toml");
    std::fs::write(
        &config,
        format!(
            "[plane]\nworkspace = \"acme\"\n\n[[projects]]\nname = \"demo\"\nplane_project_id = \"{pid}\"\n\
             work_item_prefix = \"DEMO\"\nrepo_url = \"{}\"\ngitea_repo = \"{REPO}\"\n{project_extra}\n",
            bare.display()
        ),
    )
    .unwrap();
    let d = |p: &str| dir.path().join(p).display().to_string();
    let env: Vec<(String, String)> = [
        ("ORCH_CONFIG", config.display().to_string()),
        ("ORCH_DATABASE_URL", format!("sqlite://{}", d("o.db"))),
        ("ORCH_WORKSPACE_ROOT", d("ws")),
        ("ORCH_PLANE_BASE_URL", plane.base_url()),
        ("ORCH_PLANE_API_KEY", "key".into()),
        ("ORCH_PLANE_WEBHOOK_SECRET", PSECRET.into()),
        ("ORCH_GITEA_BASE_URL", gitea.base_url()),
        ("ORCH_GITEA_TOKEN", "tok".into()),
        ("ORCH_GITEA_WEBHOOK_SECRET", GSECRET.into()),
        // No worker agent runs here (the monitor's window is short); the
        // production deploy without a deploy_command is the agent's.
        (
            "ORCH_AGENT_COMMAND",
            support::runtime::agent("contract-agent.sh"),
        ),
        ("ORCH_WORKER_POLL_INTERVAL_MS", "3600000".into()),
        ("ORCH_REAPER_ENABLED", "false".into()),
        ("ORCH_RECONCILER_ENABLED", "false".into()),
        ("ORCH_POST_DEPLOY_WINDOW_S", "2".into()),
        ("ORCH_POST_DEPLOY_TICK_S", "1".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    World {
        dir,
        plane,
        gitea,
        pid,
        bare,
        env,
    }
}

impl World {
    fn db_path(&self) -> PathBuf {
        self.dir.path().join("o.db")
    }

    /// A work item in Plane and its task parked on deploy, its branch
    /// pushed; (Plane item id, task, branch head).
    async fn parked_on_deploy(&self, db: &Db, seq: i64) -> (String, TaskRow, String) {
        let item = self.plane.add_item(&self.pid, seq, &format!("Item {seq}"));
        let work = self.dir.path().join(format!("work-{seq}"));
        self.gitea.clone_to(REPO, &work);
        let branch = format!("demo-{seq}");
        let head = self
            .gitea
            .push_commit(&work, &branch, "feature.txt", &format!("DEMO-{seq}\n"));
        let id = tasks::insert(
            db.writer(),
            &NewTask {
                work_item: format!("DEMO-{seq}"),
                plane_issue_id: Some(item.clone()),
                project: "demo".into(),
                title: format!("Item {seq}"),
                branch: Some(branch),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        // Test set-up writes the stage directly, like the engine tests.
        sqlx::query("UPDATE tasks SET stage = 'deploy', stage_version = 7 WHERE id = ?")
            .bind(id)
            .execute(db.writer())
            .await
            .unwrap();
        let task = tasks::get(db.reader(), id).await.unwrap().unwrap();
        (item, task, head)
    }

    fn merges_in_main(&self) -> usize {
        git(&self.bare, &["rev-list", "--merges", "--count", "main"])
            .parse()
            .unwrap()
    }

    fn merge_posts(&self) -> u32 {
        self.gitea.lock().merge_posts
    }
}

async fn stage_of(db: &Db, id: i64) -> Stage {
    tasks::get(db.reader(), id).await.unwrap().unwrap().stage
}

/// Poll `cond` until it holds; panic naming `what` at the deadline.
async fn until<F, Fut>(what: &str, secs: u64, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirm_deploy_through_the_daemon_merges_then_plane_shows_monitoring_then_done() {
    let w = world("").await;
    let settings = support::settings_in(
        w.dir.path(),
        &w.env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect::<Vec<_>>(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let daemon = app::start(settings, listener).await.unwrap();
    let base = format!("http://{}", daemon.addr);
    w.plane
        .set_webhook(&format!("{base}/webhooks/plane"), PSECRET);
    w.gitea
        .set_webhook(&format!("{base}/webhooks/gitea"), GSECRET);
    let db = Db::open(&w.db_path()).await.unwrap();
    let (item, task, head) = w.parked_on_deploy(&db, 1).await;

    // A merged-PR webhook while parked on deploy does not complete the task.
    {
        let mut s = w.gitea.lock();
        s.repos
            .get_mut(REPO)
            .unwrap()
            .pulls
            .push(support::gitea_double::Pull {
                number: 41,
                head: "demo-1".into(),
                base: "main".into(),
                title: "DEMO-1: Item 1".into(),
                open: false,
                merged: true,
                merge_commit_sha: Some(head.clone()),
                unmergeable: false,
            });
    }
    assert_eq!(w.gitea.send_merged(REPO, 41).await, 200);
    until("the merged-PR webhook is processed", 20, || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM webhook_deliveries WHERE source = 'gitea' AND processed_at IS NOT NULL",
        )
        .fetch_one(db.reader())
        .await
        .unwrap()
            == 1
    })
    .await;
    assert_eq!(stage_of(&db, task.id).await, Stage::Deploy);

    assert_eq!(w.plane.human_set_state(&item, "Confirm Deploy").await, 200);
    until("Plane shows Done after the window", 60, || async {
        w.plane.state_of(&item) == "Done"
    })
    .await;
    assert_eq!(stage_of(&db, task.id).await, Stage::Done);
    assert_eq!(
        w.plane.states_of(&item),
        ["Deploying", "Monitoring after Deploy", "Done"]
    );
    assert_eq!((w.merge_posts(), w.merges_in_main()), (1, 1));
    assert!(w.gitea.is_in_main(REPO, &head));
    let merge = git(&w.bare, &["rev-parse", "main"]);
    let comments = w.plane.comments(&item);
    assert!(
        comments.iter().any(|c| c.html.contains(&merge)),
        "{comments:?}"
    );

    // /queue shows the monitor's block (the window is closed right after
    // the Done write, so poll).
    let queue = format!("{base}/queue");
    until(
        "the post_deploy block counts the closed window",
        20,
        || async {
            let q: serde_json::Value = reqwest::get(&queue).await.unwrap().json().await.unwrap();
            q["post_deploy"]["closed"] == 1
        },
    )
    .await;
    daemon.stop().await.unwrap();
}

/// The binary on an OS-chosen port (`127.0.0.1:0`): a port probed first
/// and bound later can be taken by a parallel test in between. The address
/// it bound is read from its log (`serving addr=...`, see `bound_addr`).
fn spawn_binary(w: &World) -> Child {
    let mut cmd = Command::new(support::bin());
    cmd.arg("serve")
        .current_dir(w.dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", w.dir.path())
        .env("ORCH_BIND", "127.0.0.1:0")
        .envs(w.env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(w.dir.path().join("daemon.log"))
                .unwrap(),
        ));
    cmd.spawn().unwrap()
}

/// Until `/health` answers 200: the binary binds before it migrates, so a
/// bare TCP connect would race the migration.
async fn wait_ready(bind: &str) {
    let url = format!("http://{bind}/health");
    until("the daemon answers /health", 30, || async {
        reqwest::get(&url)
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
}

fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default()
}

/// The address of the daemon started after the log was `from` bytes long:
/// its `serving` line names it (`addr=127.0.0.1:<port>`, maybe with ANSI
/// colours around the field name). Polls until the line appears or the
/// daemon exits.
async fn bound_addr(w: &World, child: &mut Child, from: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = log_of(w.dir.path());
        let fresh = log.get(from..).unwrap_or("");
        if let Some(addr) = fresh
            .lines()
            .filter(|l| l.contains("serving"))
            .find_map(|l| l.split("127.0.0.1:").nth(1))
            .map(|rest| {
                rest.chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
            })
            .filter(|port| !port.is_empty())
        {
            return format!("127.0.0.1:{addr}");
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the daemon exited before serving: {fresh}"
        );
        assert!(Instant::now() < deadline, "no `serving` line: {fresh}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_the_merge_before_the_stage_write_then_restart_merges_once() {
    // The deploy command kills the daemon (the parent of the shell that
    // records its exit) the first time: a real SIGKILL with merge_pr done
    // and prod_deploy in flight, i.e. after the merge and before the stage
    // write. The deploy itself goes on for 2 s and succeeds.
    let marks = tempfile::tempdir().unwrap();
    let killed = marks.path().join("killed");
    let runs = marks.path().join("runs");
    let cmd = format!(
        "echo run >> {runs}; if [ ! -f {killed} ]; then touch {killed}; kill -KILL $(cut -d\" \" -f4 /proc/$PPID/stat); sleep 2; fi",
        runs = runs.display(),
        killed = killed.display()
    );
    let w = world(&format!("deploy_command = '{cmd}'")).await;
    let mut first = spawn_binary(&w);
    let bind = bound_addr(&w, &mut first, 0).await;
    wait_ready(&bind).await;
    w.plane
        .set_webhook(&format!("http://{bind}/webhooks/plane"), PSECRET);
    let db = Db::open(&w.db_path()).await.unwrap();
    let (item, task, head) = w.parked_on_deploy(&db, 2).await;

    assert_eq!(w.plane.human_set_state(&item, "Confirm Deploy").await, 200);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = first.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon was not killed: {}",
            log_of(w.dir.path())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "killed by SIGKILL");
    assert_eq!(stage_of(&db, task.id).await, Stage::Deploy);
    assert_eq!((w.merge_posts(), w.merges_in_main()), (1, 1));
    let states: Vec<(String, String)> =
        sqlx::query_as("SELECT kind, state FROM effects WHERE task_id = ? ORDER BY id")
            .bind(task.id)
            .fetch_all(db.reader())
            .await
            .unwrap();
    let states: Vec<(&str, &str)> = states
        .iter()
        .map(|(k, s)| (k.as_str(), s.as_str()))
        .collect();
    assert_eq!(states, [("merge_pr", "done"), ("prod_deploy", "planned")]);

    // Restart: recovery finishes the transition. The deploy that outlived
    // the daemon is adopted (its group and exit were recorded), not run
    // again; the merge is not repeated either.
    let logged = log_of(w.dir.path()).len();
    let mut second = spawn_binary(&w);
    let bind = bound_addr(&w, &mut second, logged).await;
    wait_ready(&bind).await;
    w.plane
        .set_webhook(&format!("http://{bind}/webhooks/plane"), PSECRET);
    until("Plane shows Done after the restart", 60, || async {
        w.plane.state_of(&item) == "Done"
    })
    .await;
    assert_eq!(stage_of(&db, task.id).await, Stage::Done);
    assert_eq!(
        (w.merge_posts(), w.merges_in_main()),
        (1, 1),
        "no second merge"
    );
    assert!(w.gitea.is_in_main(REPO, &head));
    assert_eq!(
        std::fs::read_to_string(&runs).unwrap().lines().count(),
        1,
        "one deploy: the restart adopted the running one: {}",
        log_of(w.dir.path())
    );
    let states = w.plane.states_of(&item);
    assert_eq!(
        states,
        ["Deploying", "Monitoring after Deploy", "Done"],
        "{}",
        log_of(w.dir.path())
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(second.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while second.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = log_of(w.dir.path());
    assert!(log.contains("shut down cleanly"), "{log}");
}
