//! The single spawn transport of agents (F-12, seed 003: one transport, no
//! other). Resolves the role's command, model and effort, writes the prompt
//! file, records the `agent_runs` row and starts the command through
//! `sh -c` in the task worktree, in its own process group, with the agent
//! contract's environment; stdout and stderr go to the run's log file.

use std::path::Path;

use super::runtime::{RunPaths, Runtime};
use crate::config::{Project, Settings};
use crate::db::jobs::{self, JobRow};
use crate::db::runs::{self, NewRun};
use crate::db::tasks::TaskRow;
use crate::proc_group::{self, Group};

/// What runs for one role of one project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSpec {
    pub command: String,
    pub model: String,
    pub effort: String,
}

/// Project override of the role first, then the global defaults.
pub fn resolve(settings: &Settings, project: &Project, role: &str) -> AgentSpec {
    let o = project.agents.get(role);
    let pick = |v: Option<&Option<String>>, default: &str| {
        v.and_then(|x| x.clone())
            .filter(|s| !s.trim().is_empty())
            .unwrap_or_else(|| default.to_string())
    };
    AgentSpec {
        command: pick(o.map(|o| &o.command), &settings.agent_command),
        model: pick(o.map(|o| &o.model), &settings.agent_model),
        effort: pick(o.map(|o| &o.effort), &settings.agent_effort),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot write run files in {path}: {source}")]
    Files {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot start the agent: {0}")]
    Spawn(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

pub struct Launched {
    pub run_id: i64,
    pub group: Group,
    pub paths: RunPaths,
}

/// The wrapper keeps the agent's exit code on disk, so a run that ends while
/// the daemon is down is still known. The agent command comes in through the
/// environment: no quoting of user commands.
const WRAPPER: &str =
    r#"sh -c "$ORCH_AGENT_CMD"; ec=$?; printf '%s' "$ec" > "$ORCH_EXIT_FILE"; exit $ec"#;

pub async fn launch(
    rt: &Runtime,
    job: &JobRow,
    task: &TaskRow,
    project: &Project,
    worktree: &Path,
    prompt: &str,
) -> Result<Launched, LaunchError> {
    let spec = resolve(&rt.settings, project, &job.role);
    let paths = rt.run_paths(&task.work_item, job);
    let files = |source| LaunchError::Files {
        path: paths.dir.display().to_string(),
        source,
    };
    tokio::fs::create_dir_all(&paths.dir).await.map_err(files)?;
    tokio::fs::write(&paths.prompt, prompt)
        .await
        .map_err(files)?;
    let _ = tokio::fs::remove_file(&paths.exit).await;
    let artifact_dir = format!("docs/work-items/{}/", task.work_item);
    // No symlink below the worktree is followed (an earlier agent's link).
    crate::untrusted::ensure_dir(worktree, Path::new(&artifact_dir))
        .await
        .map_err(|e| files(std::io::Error::other(e.to_string())))?;

    let run_id = runs::insert(
        rt.db.writer(),
        &NewRun {
            job_id: job.id,
            task_id: task.id,
            role: &job.role,
            stage: job.stage.as_str(),
            attempt: job.attempt,
            model: &spec.model,
            effort: &spec.effort,
            command: &spec.command,
            log_path: &paths.log.to_string_lossy(),
            started_at: rt.clock.now_ms(),
        },
    )
    .await?;

    let env = vec![
        ("ORCH_AGENT_CMD".to_string(), spec.command.clone()),
        (
            "ORCH_EXIT_FILE".to_string(),
            paths.exit.to_string_lossy().into_owned(),
        ),
        ("ORCH_ROLE".to_string(), job.role.clone()),
        ("ORCH_STAGE".to_string(), job.stage.to_string()),
        ("ORCH_TASK_ID".to_string(), task.id.to_string()),
        ("ORCH_WORK_ITEM".to_string(), task.work_item.clone()),
        (
            "ORCH_ARTIFACT_DIR".to_string(),
            worktree.join(&artifact_dir).to_string_lossy().into_owned(),
        ),
        (
            "ORCH_PROMPT_FILE".to_string(),
            paths.prompt.to_string_lossy().into_owned(),
        ),
        ("ORCH_MODEL".to_string(), spec.model.clone()),
        ("ORCH_EFFORT".to_string(), spec.effort.clone()),
        ("ORCH_ATTEMPT".to_string(), job.attempt.to_string()),
    ];
    let confined = rt
        .confine(&spec.command, &project.name, &task.work_item, worktree)
        .map_err(|e| LaunchError::Spawn(e.to_string()))?;
    let mut env = env;
    env.extend(confined.env);
    let group = proc_group::spawn(&proc_group::Spec {
        command: WRAPPER.to_string(),
        cwd: worktree.to_path_buf(),
        env,
        env_remove: crate::config::SECRET_ENV_KEYS
            .iter()
            .map(|k| k.to_string())
            .collect(),
        log: Some(paths.log.clone()),
        survives_drop: false,
        sandbox: confined.sandbox,
    })
    .map_err(|e| LaunchError::Spawn(e.to_string()))?;
    runs::set_pid(rt.db.writer(), run_id, group.pid as i64).await?;
    jobs::set_pgid(rt.db.writer(), job.id, &group.owned).await?;
    tracing::info!(
        work_item = %task.work_item, role = %job.role, attempt = job.attempt, pid = group.pid,
        log = %paths.log.display(), "agent started"
    );
    Ok(Launched {
        run_id,
        group,
        paths,
    })
}
