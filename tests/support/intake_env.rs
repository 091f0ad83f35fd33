//! The daemon wired to the Plane and Gitea doubles, for the intake tests:
//! signed webhooks in, real clients out, agents never started.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use orchestrator::app;
use orchestrator::config::Settings;
use orchestrator::db::Db;
use orchestrator::db::deliveries;
use orchestrator::db::jobs::{self, JobRow};
use orchestrator::db::tasks::{self, TaskRow};
use tokio::net::TcpListener;

use super::gitea_double::GiteaDouble;
use super::plane_double::PlaneDouble;

pub const PSECRET: &str = "plane-webhook-secret";
pub const GSECRET: &str = "gitea-webhook-secret";

pub struct Env {
    pub dir: tempfile::TempDir,
    pub settings: Settings,
    pub plane: PlaneDouble,
    pub gitea: GiteaDouble,
    pub pid: String,
    pub daemon: Option<app::Running>,
    pub db: Db,
    pub base: String,
}

pub async fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let plane = PlaneDouble::start("acme", "key").await;
    let pid = plane.add_project("DEMO");
    let gitea = GiteaDouble::start(dir.path(), "tok").await;
    let bare = gitea.create_repo("team/demo");
    let config = dir.path().join("orchestrator.toml");
    std::fs::write(
        &config,
        format!(
            "[plane]\nworkspace = \"acme\"\n\n[[projects]]\nname = \"demo\"\nplane_project_id = \"{pid}\"\n\
             work_item_prefix = \"DEMO\"\nrepo_url = \"{}\"\ngitea_repo = \"team/demo\"\n",
            bare.display()
        ),
    )
    .unwrap();
    let (pb, gb) = (plane.base_url(), gitea.base_url());
    let settings = super::settings_in(
        dir.path(),
        &[
            ("ORCH_CONFIG", config.to_str().unwrap()),
            ("ORCH_PLANE_BASE_URL", &pb),
            ("ORCH_PLANE_API_KEY", "key"),
            ("ORCH_PLANE_WEBHOOK_SECRET", PSECRET),
            ("ORCH_GITEA_BASE_URL", &gb),
            ("ORCH_GITEA_TOKEN", "tok"),
            ("ORCH_GITEA_WEBHOOK_SECRET", GSECRET),
            // Worker agents never run here: the worker's first tick finds no
            // job and the next is an hour away; no reaper, no reconciler.
            // Only a Confirm Deploy starts one: the production deployer
            // (no deploy_command), which follows the contract.
            (
                "ORCH_AGENT_COMMAND",
                &super::runtime::agent("contract-agent.sh"),
            ),
            ("ORCH_WORKER_POLL_INTERVAL_MS", "3600000"),
            ("ORCH_REAPER_ENABLED", "false"),
            ("ORCH_RECONCILER_ENABLED", "false"),
        ],
    );
    let mut e = Env {
        db: Db::open(&super::db_path(dir.path())).await.unwrap(),
        dir,
        settings,
        plane,
        gitea,
        pid,
        daemon: None,
        base: String::new(),
    };
    e.start().await;
    e
}

impl Env {
    pub async fn start(&mut self) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let running = app::start(self.settings.clone(), listener)
            .await
            .expect("daemon starts");
        self.base = format!("http://{}", running.addr);
        self.plane
            .set_webhook(&format!("{}/webhooks/plane", self.base), PSECRET);
        self.gitea
            .set_webhook(&format!("{}/webhooks/gitea", self.base), GSECRET);
        self.daemon = Some(running);
    }

    pub async fn stop(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.stop().await.unwrap();
        }
    }

    /// Wait until the intake is idle: no unprocessed delivery, no echo
    /// webhook in flight and no finalizer job (a Confirm Deploy's merge and
    /// deploy) queued or running, seen twice in a row (polling with a
    /// deadline).
    pub async fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = None;
        loop {
            let in_flight = self.plane.lock().in_flight;
            let pending = deliveries::pending(self.db.reader(), 1)
                .await
                .unwrap()
                .len();
            let finalizing: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM jobs WHERE role = 'deploy-finalizer' AND status IN ('queued','running')",
            )
            .fetch_one(self.db.reader())
            .await
            .unwrap();
            let rows = self.rows().await;
            let now = (
                in_flight,
                pending + finalizing as usize,
                rows,
                self.plane.sent().len(),
            );
            if in_flight == 0 && pending == 0 && finalizing == 0 && last == Some(now) {
                return;
            }
            last = Some(now);
            assert!(Instant::now() < deadline, "intake did not settle: {now:?}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn rows(&self) -> i64 {
        deliveries::count(self.db.reader()).await.unwrap()
    }

    pub async fn outcomes(&self) -> Vec<String> {
        sqlx::query_scalar("SELECT COALESCE(outcome, '') FROM webhook_deliveries ORDER BY id")
            .fetch_all(self.db.reader())
            .await
            .unwrap()
    }

    pub async fn task(&self, work_item: &str) -> Option<TaskRow> {
        tasks::by_work_item(self.db.reader(), work_item)
            .await
            .unwrap()
    }

    pub async fn jobs(&self, task: &TaskRow) -> Vec<JobRow> {
        jobs::for_task(self.db.reader(), task.id).await.unwrap()
    }

    /// A work item in Plane, set to To Analyse by a person; the task.
    pub async fn analysed(&self, seq: i64) -> (String, TaskRow) {
        let item = self.plane.add_item(&self.pid, seq, &format!("Item {seq}"));
        assert_eq!(self.plane.human_set_state(&item, "To Analyse").await, 200);
        self.settle().await;
        let task = self
            .task(&format!("DEMO-{seq}"))
            .await
            .expect("task created");
        (item, task)
    }

    /// The agent of the task's active job finished (the worker's part).
    pub async fn finish_jobs(&self, task: &TaskRow) {
        for j in self.jobs(task).await {
            if j.status == "queued" {
                jobs::transition(self.db.writer(), j.id, "queued", "done", None)
                    .await
                    .unwrap();
            }
        }
    }

    /// Write an artifact where the gate inputs read it, and point the task's
    /// worktree there (a test may seed what F-08 prepares).
    pub async fn artifact(&self, task: &TaskRow, file: &str, text: &str) {
        let wt = self.worktree(task);
        let dir = wt.join("docs/work-items").join(&task.work_item);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(file), text).unwrap();
        sqlx::query("UPDATE tasks SET worktree = ? WHERE id = ?")
            .bind(wt.to_string_lossy().to_string())
            .bind(task.id)
            .execute(self.db.writer())
            .await
            .unwrap();
    }

    pub fn worktree(&self, task: &TaskRow) -> PathBuf {
        self.settings
            .workspace_root
            .join("worktrees")
            .join(task.work_item.to_ascii_lowercase())
    }

    /// Put a task at `stage` directly (test set-up, like the engine tests).
    pub async fn seed_stage(&self, task: &TaskRow, stage: &str) {
        sqlx::query("UPDATE tasks SET stage = ?, stage_version = stage_version + 1 WHERE id = ?")
            .bind(stage)
            .bind(task.id)
            .execute(self.db.writer())
            .await
            .unwrap();
    }
}
