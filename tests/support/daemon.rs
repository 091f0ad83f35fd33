//! The real binary against the Plane and Gitea doubles: a world (doubles, a
//! config file, the daemon's environment) and a daemon process started in
//! it, on an OS-chosen port read from its log, stopped by real signals.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use orchestrator::db::Db;
use orchestrator::db::tasks::{self, NewTask, TaskRow};
use orchestrator::domain::Stage;

use super::gitea_double::{GiteaDouble, git};
use super::intake_env::{GSECRET, PSECRET};
use super::plane_double::PlaneDouble;

pub const REPO: &str = "team/demo";
/// The credentials of a world: distinct enough that a log or a database
/// that repeats one is found by a plain search (tests/secrets_in_logs.rs).
pub const PLANE_KEY: &str = "plane-api-key-never-logged";
pub const GITEA_TOKEN: &str = "gitea-token-never-logged";
pub const ADMIN_TOKEN: &str = "admin-secret";

/// Which tracker and forge the daemon of a world uses (B-10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pair {
    /// Plane and Gitea (their doubles).
    PlaneGitea,
    /// The built-in tracker and forge; the Gitea double's bare repository
    /// is a plain git remote, the Plane double is not configured.
    Local,
}

pub const PAIRS: [Pair; 2] = [Pair::PlaneGitea, Pair::Local];

pub struct World {
    pub pair: Pair,
    pub dir: tempfile::TempDir,
    pub plane: PlaneDouble,
    pub gitea: GiteaDouble,
    pub pid: String,
    pub bare: PathBuf,
    pub env: Vec<(String, String)>,
}

/// The doubles, a config file with one project (`project_extra` appended
/// to it) and the daemon's environment (`extra_env` after the defaults).
pub async fn world(project_extra: &str, extra_env: &[(&str, &str)]) -> World {
    world_of(Pair::PlaneGitea, project_extra, extra_env).await
}

/// [`world`] with the daemon on the adapter `pair`.
pub async fn world_of(pair: Pair, project_extra: &str, extra_env: &[(&str, &str)]) -> World {
    let dir = tempfile::tempdir().unwrap();
    let plane = PlaneDouble::start("acme", PLANE_KEY).await;
    let pid = plane.add_project("DEMO");
    let gitea = GiteaDouble::start(dir.path(), GITEA_TOKEN).await;
    let bare = gitea.create_repo(REPO);
    let config = dir.path().join("orchestrator.toml");
    let adapters = match pair {
        Pair::PlaneGitea => format!("plane_project_id = \"{pid}\"\ngitea_repo = \"{REPO}\"\n"),
        Pair::Local => "tracker = \"local\"\nforge = \"local\"\n".to_string(),
    };
    std::fs::write(
        &config,
        format!(
            "[plane]\nworkspace = \"acme\"\n\n[[projects]]\nname = \"demo\"\n{adapters}\
             work_item_prefix = \"DEMO\"\nrepo_url = \"{}\"\n{project_extra}\n",
            bare.display()
        ),
    )
    .unwrap();
    let d = |p: &str| dir.path().join(p).display().to_string();
    let mut env: Vec<(String, String)> = [
        ("ORCH_CONFIG", config.display().to_string()),
        ("ORCH_DATABASE_URL", format!("sqlite://{}", d("o.db"))),
        ("ORCH_WORKSPACE_ROOT", d("ws")),
        ("ORCH_PLANE_BASE_URL", plane.base_url()),
        ("ORCH_PLANE_API_KEY", PLANE_KEY.into()),
        ("ORCH_PLANE_WEBHOOK_SECRET", PSECRET.into()),
        ("ORCH_GITEA_BASE_URL", gitea.base_url()),
        ("ORCH_GITEA_TOKEN", GITEA_TOKEN.into()),
        ("ORCH_GITEA_WEBHOOK_SECRET", GSECRET.into()),
        ("ORCH_ADMIN_TOKEN", ADMIN_TOKEN.into()),
        // No worker agent runs here (the monitor's window is short); the
        // production deploy without a deploy_command is the agent's.
        (
            "ORCH_AGENT_COMMAND",
            super::runtime::agent("contract-agent.sh"),
        ),
        ("ORCH_WORKER_POLL_INTERVAL_MS", "3600000".into()),
        ("ORCH_REAPER_ENABLED", "false".into()),
        ("ORCH_RECONCILER_ENABLED", "false".into()),
        ("ORCH_POST_DEPLOY_WINDOW_S", "2".into()),
        ("ORCH_POST_DEPLOY_TICK_S", "1".into()),
    ]
    .into_iter()
    .filter(|(k, _)| {
        pair == Pair::PlaneGitea || !(k.starts_with("ORCH_PLANE_") || k.starts_with("ORCH_GITEA_"))
    })
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    env.extend(
        extra_env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    World {
        pair,
        dir,
        plane,
        gitea,
        pid,
        bare,
        env,
    }
}

/// A running daemon process.
pub struct Daemon {
    pub child: Child,
    /// `127.0.0.1:<port>`.
    pub addr: String,
}

impl Daemon {
    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.pid(), sig).unwrap();
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Wait for the process to exit (deadline `secs`).
    pub async fn exited(&mut self, secs: u64) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "the daemon did not exit");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `GET /metrics` as text.
    pub async fn metrics(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn queue(&self) -> serde_json::Value {
        reqwest::get(self.url("/queue"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

/// A daemon a test did not stop (it failed, or it ended early) is killed
/// with it, so no test leaves a process behind holding its port and files.
impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl World {
    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("o.db")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// Start the binary (`serve`, `127.0.0.1:0`), wait until it serves and
    /// answers `/health`, and point the doubles' webhooks at it.
    pub async fn start(&self) -> Daemon {
        let from = self.log().len();
        let mut cmd = Command::new(super::bin());
        cmd.arg("serve")
            .current_dir(self.dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("ORCH_BIND", "127.0.0.1:0")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.path().join("daemon.log"))
                    .unwrap(),
            ));
        let mut child = cmd.spawn().unwrap();
        let addr = self.bound_addr(&mut child, from).await;
        let d = Daemon { child, addr };
        let health = d.url("/health");
        until("the daemon answers /health", 30, || async {
            reqwest::get(&health)
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        self.plane.set_webhook(&d.url("/webhooks/plane"), PSECRET);
        self.gitea.set_webhook(&d.url("/webhooks/gitea"), GSECRET);
        d
    }

    /// The address the daemon started after the log was `from` bytes long
    /// names in its `serving` line (maybe with ANSI colours around it).
    async fn bound_addr(&self, child: &mut Child, from: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = self.log();
            let fresh = log.get(from..).unwrap_or("");
            if let Some(port) = fresh
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
                return format!("127.0.0.1:{port}");
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "the daemon exited before serving: {fresh}"
            );
            assert!(Instant::now() < deadline, "no `serving` line: {fresh}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A work item in Plane and its task parked on deploy, its branch
    /// pushed; (Plane item id, task, branch head).
    pub async fn parked_on_deploy(&self, db: &Db, seq: i64) -> (String, TaskRow, String) {
        let (item, task) = self.task_at(db, seq, Stage::Deploy).await;
        let work = self.dir.path().join(format!("work-{seq}"));
        self.gitea.clone_to(REPO, &work);
        let head = self.gitea.push_commit(
            &work,
            task.branch.as_deref().unwrap(),
            "feature.txt",
            &format!("DEMO-{seq}\n"),
        );
        (item, task, head)
    }

    /// A work item in Plane and its task at `stage` (test set-up writes the
    /// stage directly, like the engine tests).
    pub async fn task_at(&self, db: &Db, seq: i64, stage: Stage) -> (String, TaskRow) {
        let item = self.plane.add_item(&self.pid, seq, &format!("Item {seq}"));
        let task = seed_task(db, seq, &item, stage).await;
        (item, task)
    }

    pub fn merges_in_main(&self) -> usize {
        git(&self.bare, &["rev-list", "--merges", "--count", "main"])
            .parse()
            .unwrap()
    }

    /// Make the daemon's database refuse to store deliveries for a while
    /// (the table is away): the intake answers 503 meanwhile. `false` puts
    /// it back.
    pub async fn deliveries_unavailable(&self, db: &Db, away: bool) {
        let sql = if away {
            "ALTER TABLE webhook_deliveries RENAME TO webhook_deliveries_away"
        } else {
            "ALTER TABLE webhook_deliveries_away RENAME TO webhook_deliveries"
        };
        sqlx::query(sql).execute(db.writer()).await.unwrap();
    }

    /// A PR of the task branch `demo-<seq>`, merged into main for real by a
    /// person (outside the daemon); its number.
    pub fn person_merges(&self, seq: i64) -> u64 {
        let work = self.dir.path().join(format!("person-{seq}"));
        self.gitea.clone_to(REPO, &work);
        let branch = format!("demo-{seq}");
        self.gitea
            .push_commit(&work, &branch, "person.txt", &format!("{seq}\n"));
        git(&work, &["checkout", "--quiet", "main"]);
        git(
            &work,
            &["merge", "--quiet", "--no-ff", "-m", "merge", &branch],
        );
        git(&work, &["push", "--quiet", "origin", "main"]);
        let sha = git(&work, &["rev-parse", "HEAD"]);
        let mut s = self.gitea.lock();
        let pulls = &mut s.repos.get_mut(REPO).unwrap().pulls;
        let number = pulls.len() as u64 + 1;
        pulls.push(super::gitea_double::Pull {
            number,
            head: branch,
            base: "main".into(),
            title: format!("DEMO-{seq}: Item {seq}"),
            open: false,
            merged: true,
            merge_commit_sha: Some(sha),
            unmergeable: false,
        });
        number
    }

    pub fn merge_posts(&self) -> u32 {
        self.gitea.lock().merge_posts
    }
}

pub async fn task(db: &Db, id: i64) -> TaskRow {
    tasks::get(db.reader(), id).await.unwrap().unwrap()
}

/// Lines of a side file (a deploy command appends one per run).
pub fn lines(p: &Path) -> usize {
    std::fs::read_to_string(p)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// Poll `cond` until it holds; panic naming `what` at the deadline.
pub async fn until<F, Fut>(what: &str, secs: u64, mut cond: F)
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

/// The task of work item `DEMO-<seq>` (tracker item `item`) at `stage`,
/// version 7: test set-up writes the stage directly, like the engine tests.
pub async fn seed_task(db: &Db, seq: i64, item: &str, stage: Stage) -> TaskRow {
    let id = tasks::insert(
        db.writer(),
        &NewTask {
            work_item: format!("DEMO-{seq}"),
            plane_issue_id: Some(item.to_string()),
            project: "demo".into(),
            title: format!("Item {seq}"),
            branch: Some(format!("demo-{seq}")),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    sqlx::query("UPDATE tasks SET stage = ?, stage_version = 7 WHERE id = ?")
        .bind(stage)
        .bind(id)
        .execute(db.writer())
        .await
        .unwrap();
    tasks::get(db.reader(), id).await.unwrap().unwrap()
}

/// The value of the sample `series` (name and labels, exactly as exposed)
/// in a `/metrics` text.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}
