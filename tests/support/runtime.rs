//! A harness for the agent runtime: a real bare git remote, a real SQLite
//! file, the real engine and pipeline, scripted agents, in-process doubles
//! of the tracker and forge.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use orchestrator::agents::runtime::Runtime;
use orchestrator::clock::Clock;
use orchestrator::config::{EnvVars, Settings};
use orchestrator::db::Db;
use orchestrator::db::tasks::{self, NewTask};
use orchestrator::git::Workspace;
use orchestrator::notify::RecordingNotifier;
use orchestrator::pipeline::Pipeline;
use orchestrator::shutdown::{self, ShutdownTrigger};
use orchestrator::stage_engine::inputs::WorkspaceInputs;
use orchestrator::stage_engine::{Boot, Engine, EngineBuilder};

use super::doubles::{RecordingForge, RecordingTracker};

pub fn sh(dir: &Path, cmd: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(dir)
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A bare repository with one commit on `main`.
pub fn bare_remote(dir: &Path, name: &str) -> PathBuf {
    let bare = dir.join(format!("{name}.git"));
    sh(
        dir,
        &format!("git init --quiet --bare -b main {}", bare.display()),
    );
    let seed = dir.join(format!("{name}-seed"));
    sh(
        dir,
        &format!("git clone --quiet {} {}", bare.display(), seed.display()),
    );
    sh(
        &seed,
        "git -c user.name=t -c user.email=t@t commit --quiet --allow-empty -m init && git push --quiet origin HEAD:main",
    );
    bare
}

pub fn agent(name: &str) -> String {
    format!("sh {}/tests/agents/{name}", env!("CARGO_MANIFEST_DIR"))
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub db: Db,
    pub rt: Runtime,
    pub tracker: Arc<RecordingTracker>,
    pub forge: Arc<RecordingForge>,
    pub notifier: Arc<RecordingNotifier>,
    pub trigger: ShutdownTrigger,
}

impl Harness {
    /// `projects`: names of projects to configure (each gets a bare remote).
    pub async fn new(projects: &[&str], env: &[(&str, &str)]) -> Harness {
        Self::new_with(projects, "", env).await
    }

    /// `project_toml`: extra keys for every `[[projects]]` entry.
    pub async fn new_with(projects: &[&str], project_toml: &str, env: &[(&str, &str)]) -> Harness {
        Self::with_engine(projects, project_toml, env, |b, _, _| b).await
    }

    /// `engine`: adjusts the engine before it is built (the daemon's effect
    /// registry, a blocking effect, fixed gate inputs...).
    pub async fn with_engine(
        projects: &[&str],
        project_toml: &str,
        env: &[(&str, &str)],
        engine: impl FnOnce(EngineBuilder, &Arc<Settings>, &Db) -> EngineBuilder,
    ) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let mut toml = String::new();
        for p in projects {
            let bare = bare_remote(dir.path(), p);
            toml.push_str(&format!(
                "[[projects]]\nname = \"{p}\"\nplane_project_id = \"pp-{p}\"\nwork_item_prefix = \"{}\"\nrepo_url = \"{}\"\ngitea_repo = \"team/{p}\"\n{project_toml}\n\n",
                p.to_uppercase(),
                bare.display()
            ));
        }
        let cfg = dir.path().join("orchestrator.toml");
        std::fs::write(&cfg, toml).unwrap();
        let mut pairs: Vec<(String, String)> = vec![
            (
                "ORCH_DATABASE_URL".into(),
                format!("sqlite://{}", dir.path().join("o.db").display()),
            ),
            (
                "ORCH_WORKSPACE_ROOT".into(),
                dir.path().join("ws").display().to_string(),
            ),
            ("ORCH_AGENT_COMMAND".into(), agent("contract-agent.sh")),
            ("ORCH_AGENT_KILL_GRACE_S".into(), "1".into()),
        ];
        pairs.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let settings = Arc::new(
            Settings::load_with(Some(&cfg), &EnvVars::from_pairs(pairs))
                .unwrap()
                .0,
        );
        let db = Db::open(&settings.database_path()).await.unwrap();
        let workspace = Workspace::new(&settings.workspace_root);
        let notifier = Arc::new(RecordingNotifier::default());
        let builder = Engine::builder(db.clone(), Boot::new())
            .inputs(Arc::new(WorkspaceInputs {
                settings: settings.clone(),
                workspace: workspace.clone(),
            }))
            .notifier(notifier.clone());
        let engine = engine(builder, &settings, &db).build();
        let tracker = Arc::new(RecordingTracker::default());
        let forge = Arc::new(RecordingForge::default());
        let pipeline = Pipeline {
            plane_outbox: None,
            engine: engine.clone(),
            db: db.clone(),
            settings: settings.clone(),
            tracker: tracker.clone(),
            forge: forge.clone(),
            notifier: notifier.clone(),
            workspace: workspace.clone(),
            stops: Default::default(),
            wake: Default::default(),
        };
        let (trigger, shutdown) = shutdown::channel();
        let rt = Runtime {
            db: db.clone(),
            settings,
            workspace,
            pipeline,
            notifier: notifier.clone(),
            clock: Clock::new(),
            boot_id: engine.boot().boot_id.clone(),
            shutdown,
            merge_gate: Default::default(),
        };
        Harness {
            dir,
            db,
            rt,
            tracker,
            forge,
            notifier,
            trigger,
        }
    }

    pub async fn task(&self, project: &str, work_item: &str) -> i64 {
        tasks::insert(
            self.db.writer(),
            &NewTask {
                work_item: work_item.into(),
                plane_issue_id: Some(format!("issue-{work_item}")),
                project: project.into(),
                title: format!("Title of {work_item}"),
                description: "<p>Do the thing.</p>".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap()
    }

    pub async fn stage(&self, id: i64) -> orchestrator::domain::Stage {
        tasks::get(self.db.reader(), id)
            .await
            .unwrap()
            .unwrap()
            .stage
    }

    /// Tick the worker until `done` holds, or panic at the deadline.
    pub async fn drive<F, Fut>(&self, what: &str, secs: u64, mut done: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            orchestrator::loops::worker::tick(&self.rt).await.unwrap();
            if done().await {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
