//! The deploy path wired in process (F-19, F-23, F-24): the real stage
//! engine with the daemon's effects, the real Gitea client against the Gitea
//! double (its repositories are REAL bare git repositories, so a merge really
//! merges), a recording tracker and notifier. Without a forge the same bare
//! repository is the project's plain git remote (local merges, B-10).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use orchestrator::app::build_pipeline;
use orchestrator::clients::Forge;
use orchestrator::clients::gitea::GiteaClient;
use orchestrator::clients::local_forge::LocalForge;
use orchestrator::clients::retry::RecordingSleeper;
use orchestrator::config::{EnvVars, Settings};
use orchestrator::db::Db;
use orchestrator::db::effects::EffectRow;
use orchestrator::db::tasks::{self, NewTask, TaskRow};
use orchestrator::effects::daemon_effects;
use orchestrator::notify::RecordingNotifier;
use orchestrator::pipeline::Pipeline;
use orchestrator::stage_engine::{Boot, Engine, Hooks, Step};

use super::doubles::RecordingTracker;
use super::gitea_double::{GiteaDouble, git, try_git};

pub const REPO: &str = "team/demo";

pub struct DeployEnv {
    pub dir: tempfile::TempDir,
    pub gitea: GiteaDouble,
    pub bare: PathBuf,
    pub settings: Arc<Settings>,
    pub db: Db,
    pub tracker: Arc<RecordingTracker>,
    pub notifier: Arc<RecordingNotifier>,
    pub forge: Arc<dyn Forge>,
    /// The pipeline of the first "boot"; `pipeline_with` makes later ones.
    pub pipeline: Pipeline,
    /// A developer's clone that pushes task branches.
    pub work: PathBuf,
}

impl DeployEnv {
    /// `forge`: merge through the Gitea double's API (else locally).
    /// `project_extra`: more `[[projects]]` lines (`deploy_command = ...`).
    pub async fn new(forge: bool, project_extra: &str, env: &[(&str, &str)]) -> DeployEnv {
        let dir = tempfile::tempdir().unwrap();
        let gitea = GiteaDouble::start(dir.path(), "tok").await;
        let bare = gitea.create_repo(REPO);
        let work = dir.path().join("work");
        gitea.clone_to(REPO, &work);
        let gitea_repo = if forge { REPO } else { "" };
        let cfg = dir.path().join("orchestrator.toml");
        std::fs::write(
            &cfg,
            format!(
                "[[projects]]\nname = \"demo\"\nplane_project_id = \"pp-demo\"\nwork_item_prefix = \"DEMO\"\n\
                 repo_url = \"{}\"\ngitea_repo = \"{gitea_repo}\"\n{project_extra}\n",
                bare.display()
            ),
        )
        .unwrap();
        let mut pairs: Vec<(String, String)> = vec![
            (
                "ORCH_DATABASE_URL".into(),
                format!("sqlite://{}", dir.path().join("o.db").display()),
            ),
            (
                "ORCH_WORKSPACE_ROOT".into(),
                dir.path().join("ws").display().to_string(),
            ),
            ("ORCH_AGENT_KILL_GRACE_S".into(), "1".into()),
            // Without a deploy_command the deployer agent deploys (F-23).
            (
                "ORCH_AGENT_COMMAND".into(),
                super::runtime::agent("contract-agent.sh"),
            ),
        ];
        if forge {
            pairs.push(("ORCH_GITEA_BASE_URL".into(), gitea.base_url()));
            pairs.push(("ORCH_GITEA_TOKEN".into(), "tok".into()));
        }
        pairs.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let settings = Arc::new(
            Settings::load_with(Some(&cfg), &EnvVars::from_pairs(pairs))
                .unwrap()
                .0,
        );
        let db = Db::open(&settings.database_path()).await.unwrap();
        let forge: Arc<dyn Forge> = if forge {
            Arc::new(
                GiteaClient::with_parts(
                    &settings,
                    Duration::from_secs(10),
                    Arc::new(RecordingSleeper::default()),
                )
                .unwrap(),
            )
        } else {
            Arc::new(LocalForge::new(settings.clone()))
        };
        let tracker = Arc::new(RecordingTracker::default());
        let notifier = Arc::new(RecordingNotifier::default());
        let mut e = DeployEnv {
            pipeline: build_pipeline(
                settings.clone(),
                db.clone(),
                Engine::builder(db.clone(), Boot::new()).build(),
            ),
            dir,
            gitea,
            bare,
            settings,
            db,
            tracker,
            notifier,
            forge,
            work,
        };
        e.pipeline = e.pipeline_with(None);
        e
    }

    /// A pipeline over a NEW engine and boot on the same database (a
    /// restart), with the daemon's effects and optional step hooks.
    pub fn pipeline_with(&self, hooks: Option<Arc<dyn Hooks>>) -> Pipeline {
        let mut b = Engine::builder(self.db.clone(), Boot::new())
            .effects(daemon_effects(
                self.settings.clone(),
                self.db.clone(),
                self.forge.clone(),
            ))
            .notifier(self.notifier.clone());
        if let Some(h) = hooks {
            b = b.hooks(h);
        }
        // Through build_pipeline (not a struct literal): fields other work
        // adds to Pipeline keep their defaults; the doubles replace the ports.
        let mut p = build_pipeline(self.settings.clone(), self.db.clone(), b.build());
        p.tracker = self.tracker.clone();
        p.forge = self.forge.clone();
        p.notifier = self.notifier.clone();
        p
    }

    /// Commit `file` on a fresh branch from main and push it; the head SHA.
    pub fn push_branch(&self, branch: &str, file: &str, content: &str) -> String {
        git(&self.work, &["fetch", "--quiet", "origin"]);
        git(
            &self.work,
            &["checkout", "--quiet", "-B", branch, "origin/main"],
        );
        std::fs::write(self.work.join(file), content).unwrap();
        git(&self.work, &["add", "."]);
        git(
            &self.work,
            &["commit", "--quiet", "-m", &format!("{branch}: {file}")],
        );
        git(
            &self.work,
            &[
                "push",
                "--quiet",
                "--force",
                "origin",
                &format!("{branch}:{branch}"),
            ],
        );
        git(&self.work, &["rev-parse", "HEAD"])
    }

    /// Commit straight onto main (another change landing meanwhile).
    pub fn push_main(&self, file: &str, content: &str) -> String {
        self.push_branch("scratch-main", file, content);
        git(
            &self.work,
            &["push", "--quiet", "origin", "scratch-main:main"],
        );
        git(&self.work, &["rev-parse", "HEAD"])
    }

    /// A task of project demo with its branch pushed, seeded at `stage`
    /// (test set-up writes the stage directly, like the engine tests).
    pub async fn task_at(&self, stage: &str, seq: u32) -> (i64, String) {
        let wi = format!("DEMO-{seq}");
        let branch = wi.to_ascii_lowercase();
        let head = self.push_branch(&branch, &format!("feature-{seq}.txt"), &format!("{wi}\n"));
        let wt = self.worktree(&wi);
        std::fs::create_dir_all(wt.join("docs/work-items").join(&wi)).unwrap();
        let id = tasks::insert(
            self.db.writer(),
            &NewTask {
                work_item: wi.clone(),
                plane_issue_id: Some(format!("issue-{wi}")),
                project: "demo".into(),
                title: format!("Feature {seq}"),
                description: String::new(),
                branch: Some(branch),
                worktree: Some(wt.to_string_lossy().into_owned()),
            },
        )
        .await
        .unwrap();
        sqlx::query("UPDATE tasks SET stage = ?, stage_version = 5 WHERE id = ?")
            .bind(stage)
            .bind(id)
            .execute(self.db.writer())
            .await
            .unwrap();
        (id, head)
    }

    pub fn worktree(&self, wi: &str) -> PathBuf {
        self.dir.path().join("wt").join(wi.to_ascii_lowercase())
    }

    pub fn report(&self, wi: &str) -> Option<String> {
        let p = self
            .worktree(wi)
            .join("docs/work-items")
            .join(wi)
            .join("15-deploy-report.md");
        std::fs::read_to_string(p).ok()
    }

    pub async fn task(&self, id: i64) -> TaskRow {
        tasks::get(self.db.reader(), id).await.unwrap().unwrap()
    }

    pub async fn effect_rows(&self, id: i64) -> Vec<EffectRow> {
        sqlx::query_as("SELECT * FROM effects WHERE task_id = ? ORDER BY id")
            .bind(id)
            .fetch_all(self.db.reader())
            .await
            .unwrap()
    }

    /// Merge commits on the bare repository's main.
    /// Run every queued finalizer job (the worker's part): start it, then
    /// `loops::finalizer::run` on `p`, as the daemon's worker does. How
    /// many ran.
    pub async fn run_finalizers(&self, p: &Pipeline) -> usize {
        let queued: Vec<orchestrator::db::jobs::JobRow> = sqlx::query_as(
            "SELECT * FROM jobs WHERE role = 'deploy-finalizer' AND status = 'queued' ORDER BY id",
        )
        .fetch_all(self.db.reader())
        .await
        .unwrap();
        for job in &queued {
            assert!(
                orchestrator::db::jobs::start(self.db.writer(), job.id, "test", 0)
                    .await
                    .unwrap()
            );
            let mut job = job.clone();
            job.status = "running".into();
            orchestrator::loops::finalizer::run(p.clone(), job).await;
        }
        queued.len()
    }

    pub fn merges_in_main(&self) -> usize {
        git(&self.bare, &["rev-list", "--merges", "--count", "main"])
            .parse()
            .unwrap()
    }

    pub fn main_sha(&self) -> String {
        git(&self.bare, &["rev-parse", "main"])
    }

    pub fn in_main(&self, sha: &str) -> bool {
        try_git(&self.bare, &["merge-base", "--is-ancestor", sha, "main"]).0
    }

    pub fn merge_posts(&self) -> u32 {
        self.gitea.lock().merge_posts
    }

    pub fn alerts(&self, kind: &str) -> usize {
        self.notifier
            .alerts()
            .iter()
            .filter(|a| a.kind == kind)
            .count()
    }

    pub async fn post_deploy_until(&self, id: i64) -> Option<i64> {
        orchestrator::db::deploys::post_deploy_until(self.db.reader(), id)
            .await
            .unwrap()
    }

    pub fn marker_dir(&self) -> PathBuf {
        self.settings.workspace_root.join("deploys")
    }
}

/// Panics once, the first time `step` is reached: the holder dies in the
/// middle of a transition (as far as one process can, short of SIGKILL).
pub struct PanicOnce {
    pub step: Step,
    fired: std::sync::atomic::AtomicBool,
}

impl PanicOnce {
    pub fn at(step: Step) -> Arc<PanicOnce> {
        Arc::new(PanicOnce {
            step,
            fired: Default::default(),
        })
    }
}

impl Hooks for PanicOnce {
    fn at(&self, step: Step, _task_id: i64) {
        if step == self.step && !self.fired.swap(true, std::sync::atomic::Ordering::SeqCst) {
            panic!("killed at {step:?} on purpose");
        }
    }
}

pub fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}
