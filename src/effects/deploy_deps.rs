//! What the deploy-path effects share (F-19, F-23): [`DeployDeps`] (the
//! settings, database, forge and deploy clones, with the marker paths and
//! the command spec), [`deploys_dir`], [`task_branch`] and [`write_durably`].
//! Below `deploy`, `adopt`, `deploy_agent` and `ratchet`, which all use it,
//! so that none of them imports `deploy` (tests/architecture.rs keeps the
//! arrows one way).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::checkout::Checkouts;
use crate::clients::{Forge, ForgeRepo};
use crate::config::{Project, Settings};
use crate::db::Db;
use crate::proc_group;
use crate::stage_engine::inputs::artifact_dir;
use crate::stage_engine::{EffectCtx, EffectError};

/// What the deploy-path effects share. Cheap to clone.
#[derive(Clone)]
pub struct DeployDeps {
    pub settings: Arc<Settings>,
    pub db: Db,
    pub forge: Arc<dyn Forge>,
    pub checkouts: Arc<Checkouts>,
}

impl DeployDeps {
    pub fn new(settings: Arc<Settings>, db: Db, forge: Arc<dyn Forge>) -> Self {
        let checkouts = Arc::new(Checkouts::new(deploys_dir(&settings)));
        Self {
            settings,
            db,
            forge,
            checkouts,
        }
    }

    /// The task's project, or a failure that names what to fix.
    pub(crate) fn project(&self, ctx: &EffectCtx) -> Result<&Project, EffectError> {
        self.settings.project(&ctx.task.project).ok_or_else(|| {
            EffectError::Failed(format!(
                "project {:?} of {} is not configured in [[projects]]",
                ctx.task.project, ctx.task.work_item
            ))
        })
    }

    pub(crate) fn forge_repo(&self, project: &Project) -> ForgeRepo {
        ForgeRepo {
            project: project.name.clone(),
            full_name: project.forge_name().to_string(),
            default_branch: project.default_branch.clone(),
            local_clone: self.checkouts.dir(&project.name),
        }
    }

    /// `<workspace_root>/deploys/<transition key><suffix>`, the key made
    /// safe for a file name.
    pub(crate) fn marker(&self, key: &str, suffix: &str) -> PathBuf {
        let safe: String = key
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        deploys_dir(&self.settings).join(format!("{safe}{suffix}"))
    }

    /// Run a project command (deploy, coverage, image) in the deploy clone,
    /// in its own process group, with the agent contract's variables and
    /// without the daemon's secrets; output captured (its tail is kept).
    pub(crate) async fn run_command(
        &self,
        ctx: &EffectCtx,
        project: &Project,
        cwd: &Path,
        command: &str,
        timeout: Duration,
    ) -> Result<proc_group::Outcome, proc_group::ProcError> {
        let spec = self.command_spec(ctx, project, cwd, command);
        let grace = Duration::from_secs(self.settings.agent_kill_grace_s);
        proc_group::run(&spec, timeout, grace).await
    }

    /// What `run_command` runs: the command in `cwd`, with the agent
    /// contract's variables, without the daemon's secrets, output captured.
    pub(crate) fn command_spec(
        &self,
        ctx: &EffectCtx,
        project: &Project,
        cwd: &Path,
        command: &str,
    ) -> proc_group::Spec {
        let t = &ctx.task;
        let mut env = vec![
            ("ORCH_ROLE".to_string(), "deployer".to_string()),
            ("ORCH_STAGE".to_string(), ctx.from.to_string()),
            ("ORCH_TASK_ID".to_string(), t.id.to_string()),
            ("ORCH_WORK_ITEM".to_string(), t.work_item.clone()),
            ("ORCH_PROJECT".to_string(), project.name.clone()),
            ("ORCH_EFFECT".to_string(), ctx.kind.as_str().to_string()),
            (
                "ORCH_TRANSITION_KEY".to_string(),
                ctx.transition_key.clone(),
            ),
        ];
        if let Some(wt) = t.worktree.as_deref() {
            let dir = artifact_dir(Path::new(wt), &t.work_item);
            env.push((
                "ORCH_ARTIFACT_DIR".to_string(),
                dir.to_string_lossy().into_owned(),
            ));
        }
        proc_group::Spec {
            command: command.to_string(),
            cwd: cwd.to_path_buf(),
            env,
            env_remove: crate::config::SECRET_ENV_KEYS
                .iter()
                .map(|k| k.to_string())
                .collect(),
            log: None,
            survives_drop: false,
            // The operator's own command, with the deploy's credentials.
            sandbox: None,
        }
    }
}

/// `<workspace_root>/deploys`: the deploy clones and the markers.
pub fn deploys_dir(settings: &Settings) -> PathBuf {
    settings.workspace_root.join("deploys")
}

/// The task branch: recorded on the task, else derived from the work item.
pub(crate) fn task_branch(ctx: &EffectCtx) -> String {
    ctx.task
        .branch
        .clone()
        .filter(|b| !b.trim().is_empty())
        .unwrap_or_else(|| crate::git::branch_name(&ctx.task.work_item))
}

/// Write `text` to `path` durably (temp file, fsync, rename, fsync dir): a
/// marker that a crash can tear is worse than none.
pub(crate) async fn write_durably(path: &Path, text: &str) -> std::io::Result<()> {
    let path = path.to_path_buf();
    let text = text.to_string();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        // Next to the target (same file system, so the rename is atomic).
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(".tmp");
        let tmp = path.with_file_name(name);
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()
    })
    .await
    .map_err(std::io::Error::other)?
}
