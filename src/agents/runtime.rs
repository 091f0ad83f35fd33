//! What the worker, monitor, reaper and reconciler share, and the paths of
//! one run's files (prompt, log, exit code) outside the worktree, so the
//! monitor never commits them.

use std::path::PathBuf;
use std::sync::Arc;

use crate::clock::Clock;
use crate::config::{Project, Settings};
use crate::db::Db;
use crate::db::jobs::JobRow;
use crate::git::{Workspace, branch_name};
use crate::notify::{Alert, Notifier};
use crate::pipeline::Pipeline;
use crate::shutdown::Shutdown;

#[derive(Clone)]
pub struct Runtime {
    pub db: Db,
    pub settings: Arc<Settings>,
    pub workspace: Workspace,
    pub pipeline: Pipeline,
    pub notifier: Arc<dyn Notifier>,
    pub clock: Clock,
    pub boot_id: String,
    /// Fires at daemon shutdown: monitors stop watching (the agents go on
    /// and are adopted after the restart).
    pub shutdown: Shutdown,
    /// Counters of the merge gate (F-18), shown in `/queue`.
    pub merge_gate: Arc<crate::gates::merge_gate::MergeGateStats>,
}

impl Runtime {
    pub fn project(&self, name: &str) -> Option<&Project> {
        self.settings.project(name)
    }

    /// The task and project a started job works on, or `None` after
    /// cancelling a job whose task moved on (or vanished) meanwhile.
    pub async fn job_context(
        &self,
        job: &JobRow,
    ) -> anyhow::Result<Option<(crate::db::tasks::TaskRow, Project)>> {
        let task = crate::db::tasks::get(self.db.reader(), job.task_id).await?;
        let Some(task) = task.filter(|t| t.stage == job.stage && !t.stage.is_terminal()) else {
            crate::db::jobs::transition(
                self.db.writer(),
                job.id,
                "running",
                "cancelled",
                Some("the task moved on"),
            )
            .await?;
            return Ok(None);
        };
        let project = self
            .project(&task.project)
            .ok_or_else(|| anyhow::anyhow!("project {:?} is not configured", task.project))?
            .clone();
        Ok(Some((task, project)))
    }

    /// Put a command's process group on its job, where a STOP, tier 3 and a
    /// restarted daemon find it. A failed write is logged: the command runs.
    pub async fn record_pgid(&self, job: &JobRow, group: crate::proc_group::Owned) {
        if let Err(e) = crate::db::jobs::set_pgid(self.db.writer(), job.id, &group).await {
            tracing::warn!(job = job.id, role = %job.role, pgid = group.pgid, error = %e, "group id not recorded on the job");
        }
    }

    /// The confinement of a child that runs code we did not write (an
    /// agent, a gate command over the agent's change) in `worktree` (B-12):
    /// the ruleset, and the environment it needs (a home and a TMPDIR of
    /// its own, since the daemon's home is out of reach). `(None, [])` when
    /// `ORCH_AGENT_SANDBOX=off`.
    pub fn confine(
        &self,
        command: &str,
        project: &str,
        work_item: &str,
        worktree: &std::path::Path,
    ) -> Result<Confined, crate::sandbox::SandboxError> {
        if self.settings.agent_sandbox == crate::sandbox::Mode::Off {
            return Ok(Confined::default());
        }
        let path_var = std::env::var("PATH").ok();
        let mut policy = crate::sandbox::Policy::for_command(command, path_var.as_deref());
        policy
            .read
            .extend(self.settings.agent_read_paths.iter().cloned());
        policy
            .read
            .push(self.workspace.clone_dir(project).join(".git"));
        let branch = branch_name(work_item);
        let home = self.workspace.root().join("agent-home").join(&branch);
        let tmp = home.join("tmp");
        std::fs::create_dir_all(&tmp)
            .map_err(|e| crate::sandbox::SandboxError::Build(format!("{}: {e}", tmp.display())))?;
        let run_dir = self.workspace.root().join("runs").join(&branch);
        policy.write.push(worktree.to_path_buf());
        policy.write.push(run_dir);
        policy.write.push(home.clone());
        if let Some(gitdir) = worktree_gitdir(worktree) {
            policy.write.push(gitdir);
        }
        policy.secrets = self.secret_paths();
        let prepared = crate::sandbox::prepare(&policy)?;
        if !prepared.dropped.is_empty() {
            tracing::debug!(work_item, dropped = ?prepared.dropped, "sandbox: paths left out, a secret lies beneath them");
        }
        Ok(Confined {
            sandbox: Some(prepared),
            env: vec![
                ("HOME".into(), home.to_string_lossy().into_owned()),
                ("TMPDIR".into(), tmp.to_string_lossy().into_owned()),
            ],
        })
    }

    /// Files no agent may reach: the database (and its journal files), the
    /// config file, `.env`, the daemon's home.
    fn secret_paths(&self) -> Vec<PathBuf> {
        let db = self.settings.database_path();
        let abs = |p: PathBuf| {
            if p.is_absolute() {
                p
            } else {
                std::env::current_dir().unwrap_or_default().join(p)
            }
        };
        let db = abs(db);
        let mut out = vec![db.clone()];
        for suffix in ["-wal", "-shm", "-journal", ".lock"] {
            let mut name = db.clone().into_os_string();
            name.push(suffix);
            out.push(PathBuf::from(name));
        }
        if let Ok(c) = std::env::var("ORCH_CONFIG") {
            out.push(abs(PathBuf::from(c)));
        }
        out.push(abs(PathBuf::from(".env")));
        if let Ok(h) = std::env::var("HOME") {
            out.push(PathBuf::from(h));
        }
        out
    }

    pub async fn alert(&self, kind: &'static str, work_item: &str, message: String) {
        self.notifier
            .alert(Alert {
                kind,
                work_item: Some(work_item.to_string()),
                message,
                key: None,
            })
            .await;
    }

    pub fn run_paths(&self, work_item: &str, job: &JobRow) -> RunPaths {
        let dir = self
            .workspace
            .root()
            .join("runs")
            .join(branch_name(work_item));
        let stem = format!("job{}-{}-a{}", job.id, job.role, job.attempt);
        RunPaths {
            prompt: dir.join(format!("{stem}.prompt.md")),
            log: dir.join(format!("{stem}.log")),
            exit: dir.join(format!("{stem}.exit")),
            dir,
        }
    }
}

/// What [`Runtime::confine`] gives a child.
#[derive(Debug, Default)]
pub struct Confined {
    pub sandbox: Option<crate::sandbox::Prepared>,
    pub env: Vec<(String, String)>,
}

/// The private git dir of a linked worktree (its `.git` file names it),
/// where git keeps that worktree's index and HEAD.
fn worktree_gitdir(worktree: &std::path::Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(worktree.join(".git")).ok()?;
    let dir = text.trim().strip_prefix("gitdir:")?.trim();
    let p = PathBuf::from(dir);
    Some(if p.is_absolute() { p } else { worktree.join(p) })
}

/// An exit file holds one number and a newline.
const EXIT_FILE_MAX_BYTES: u64 = 64;

#[derive(Debug, Clone)]
pub struct RunPaths {
    pub dir: PathBuf,
    pub prompt: PathBuf,
    pub log: PathBuf,
    /// Written by the wrapper shell when the agent ends: a run that finished
    /// while the daemon was down is known after the restart.
    pub exit: PathBuf,
}

impl RunPaths {
    /// The exit code the wrapper wrote, if the run ended. The run dir is
    /// the daemon's; the file in it is read as untrusted input (a regular
    /// file of at most [`EXIT_FILE_MAX_BYTES`], no symlink, no FIFO), so it
    /// cannot block or flood the caller.
    pub fn read_exit(&self) -> Option<i64> {
        let bytes = crate::untrusted::read_file_blocking(
            &self.dir,
            std::path::Path::new(self.exit.file_name()?),
            EXIT_FILE_MAX_BYTES,
        )
        .ok()?;
        String::from_utf8_lossy(&bytes).trim().parse().ok()
    }
}
