//! Worktrees through the git CLI (F-08): one clone of each project's
//! `repo_url` under `<workspace_root>/repos/`, one worktree per task under
//! `<workspace_root>/worktrees/` on the task branch (the work item,
//! lowercased). Fetch and check out before an agent starts and before the
//! monitor commits; remove on request.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::process::Command;

use crate::config::Project;

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("workspace: {0}")]
    Io(#[from] std::io::Error),
    #[error("git {args} (in {cwd}) failed: {stderr}")]
    Failed {
        args: String,
        cwd: PathBuf,
        stderr: String,
    },
}

/// Options before every git command the daemon runs.
pub const HARDENING: [&str; 6] = [
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "core.fsmonitor=false",
    "-c",
    "protocol.ext.allow=never",
];

/// Every git the daemon runs starts here. A repository's own config is the
/// agent's to write: its hooks and fsmonitor would run code of its choosing
/// as the daemon (B-12), so they are switched off; the daemon's secrets
/// stay out of git's environment.
pub fn command() -> Command {
    let mut cmd = Command::new("git");
    cmd.args(HARDENING);
    for k in crate::config::SECRET_ENV_KEYS {
        cmd.env_remove(k);
    }
    cmd
}

/// How long one git command may take unless its caller says otherwise: a
/// fetch or push of a large repository over a slow link, not a hang.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// What one git command printed and how it exited.
#[derive(Debug, Clone)]
pub struct GitOutput {
    /// `None`: ended by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    /// Trimmed.
    pub stderr: String,
}

impl GitOutput {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

/// Why a git command gave no output at all.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot run git {args} in {cwd}: {source}")]
    Spawn {
        args: String,
        cwd: PathBuf,
        source: std::io::Error,
    },
    #[error("git {args} (in {cwd}) timed out after {}s", .timeout.as_secs())]
    Timeout {
        args: String,
        cwd: PathBuf,
        timeout: Duration,
    },
}

/// The one git runner (issue 16): [`command`]'s hardening, no credential
/// prompt, the C locale (callers match git's messages), no stdin, and a
/// timeout after which the process is killed (`kill_on_drop`).
pub async fn run(cwd: &Path, args: &[&str], timeout: Duration) -> Result<GitOutput, RunError> {
    let mut cmd = command();
    cmd.arg("-C")
        .arg(cwd)
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    match tokio::time::timeout(timeout, cmd.output()).await {
        Ok(Ok(out)) => Ok(GitOutput {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }),
        Ok(Err(source)) => Err(RunError::Spawn {
            args: args.join(" "),
            cwd: cwd.to_path_buf(),
            source,
        }),
        Err(_) => Err(RunError::Timeout {
            args: args.join(" "),
            cwd: cwd.to_path_buf(),
            timeout,
        }),
    }
}

/// Run git in `cwd`; stdout on success. Never prompts for credentials.
pub async fn git(cwd: &Path, args: &[&str]) -> Result<String, GitError> {
    let out = run(cwd, args, DEFAULT_TIMEOUT).await?;
    if out.ok() {
        Ok(out.stdout)
    } else {
        Err(GitError::Failed {
            args: args.join(" "),
            cwd: cwd.to_path_buf(),
            stderr: out.stderr,
        })
    }
}

/// The task branch of a work item: `DEMO-12` → `demo-12`.
pub fn branch_name(work_item: &str) -> String {
    work_item
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

/// The identity of the monitor's commits.
const COMMITTER: [&str; 4] = [
    "-c",
    "user.name=orchestrator",
    "-c",
    "user.email=orchestrator@localhost",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    pub sha: String,
    /// False when there was nothing new to commit.
    pub committed: bool,
}

/// The workspace root and a lock per clone: git serializes worktree
/// operations on one repository with its own lock files, which fail rather
/// than wait; we wait instead.
#[derive(Clone, Debug)]
pub struct Workspace {
    root: PathBuf,
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl Workspace {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            locks: Arc::default(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn clone_dir(&self, project: &str) -> PathBuf {
        self.root.join("repos").join(project)
    }

    pub fn worktree_dir(&self, work_item: &str) -> PathBuf {
        self.root.join("worktrees").join(branch_name(work_item))
    }

    fn lock(&self, project: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(project.to_string()).or_default().clone()
    }

    /// Clone `repo_url` once; afterwards fetch.
    pub async fn ensure_clone(&self, project: &Project) -> Result<PathBuf, GitError> {
        let dir = self.clone_dir(&project.name);
        if dir.join(".git").exists() {
            git(&dir, &["fetch", "--prune", "origin"]).await?;
        } else {
            let parent = dir.parent().unwrap_or(&self.root).to_path_buf();
            tokio::fs::create_dir_all(&parent).await?;
            let d = dir.to_string_lossy().into_owned();
            git(&parent, &["clone", "--quiet", &project.repo_url, &d]).await?;
        }
        Ok(dir)
    }

    async fn remote_branch_exists(clone: &Path, branch: &str) -> bool {
        git(
            clone,
            &[
                "rev-parse",
                "--verify",
                "--quiet",
                &format!("refs/remotes/origin/{branch}"),
            ],
        )
        .await
        .is_ok()
    }

    /// The task's worktree on its branch, fetched and checked out: from the
    /// remote branch when it exists, else from the default branch.
    pub async fn prepare(&self, project: &Project, work_item: &str) -> Result<PathBuf, GitError> {
        let lock = self.lock(&project.name);
        let _held = lock.lock().await;
        let clone = self.ensure_clone(project).await?;
        let branch = branch_name(work_item);
        let wt = self.worktree_dir(work_item);
        let remote = Self::remote_branch_exists(&clone, &branch).await;
        if !wt.join(".git").exists() {
            if let Some(parent) = wt.parent() {
                tokio::fs::create_dir_all(parent).await?;
            }
            // A worktree dir removed by hand leaves git's record behind.
            let _ = git(&clone, &["worktree", "prune"]).await;
            let start = if remote {
                format!("origin/{branch}")
            } else {
                format!("origin/{}", project.default_branch)
            };
            let w = wt.to_string_lossy().into_owned();
            git(
                &clone,
                &["worktree", "add", "--quiet", "-B", &branch, &w, &start],
            )
            .await?;
        } else {
            // A daemon killed in the middle of the merge gate's rebase leaves
            // the worktree detached in that rebase: finish it off first (a
            // no-op when nothing is in progress).
            let _ = git(&wt, &["rebase", "--abort"]).await;
            let _ = git(&wt, &["merge", "--abort"]).await;
            git(&wt, &["checkout", "--quiet", &branch]).await?;
            if remote {
                // Take what was pushed meanwhile (a rebase by the merge gate is
                // a reset, not a merge: the remote is the truth for the task).
                let _ = git(
                    &wt,
                    &["merge", "--ff-only", "--quiet", &format!("origin/{branch}")],
                )
                .await;
            }
        }
        Ok(wt)
    }

    /// Commit everything in the worktree (if anything changed) and push the
    /// task branch. Never pushes any other branch.
    pub async fn commit_and_push(
        &self,
        project: &Project,
        work_item: &str,
        message: &str,
    ) -> Result<Pushed, GitError> {
        let lock = self.lock(&project.name);
        let _held = lock.lock().await;
        let wt = self.worktree_dir(work_item);
        let branch = branch_name(work_item);
        if branch == project.default_branch {
            return Err(GitError::Failed {
                args: "push".into(),
                cwd: wt,
                stderr: format!("refusing to push the default branch {branch}"),
            });
        }
        git(&wt, &["add", "-A"]).await?;
        let staged = git(&wt, &["diff", "--cached", "--quiet"]).await.is_err();
        if staged {
            let mut args: Vec<&str> = COMMITTER.to_vec();
            args.extend(["commit", "--quiet", "-m", message]);
            git(&wt, &args).await?;
        }
        git(
            &wt,
            &[
                "push",
                "--quiet",
                "origin",
                &format!("HEAD:refs/heads/{branch}"),
            ],
        )
        .await?;
        let sha = git(&wt, &["rev-parse", "HEAD"]).await?.trim().to_string();
        Ok(Pushed {
            sha,
            committed: staged,
        })
    }

    /// Does the task branch change files outside its artifact dir, compared
    /// with the default branch? (the development gate)
    pub async fn changes_outside_artifacts(
        &self,
        project: &Project,
        work_item: &str,
    ) -> Result<bool, GitError> {
        let wt = self.worktree_dir(work_item);
        let base = format!("origin/{}", project.default_branch);
        let committed = git(&wt, &["diff", "--name-only", &format!("{base}...HEAD")]).await?;
        let pending = git(&wt, &["status", "--porcelain"]).await?;
        let artifacts = format!("docs/work-items/{work_item}/");
        let outside = |path: &str| !path.is_empty() && !path.starts_with(&artifacts);
        Ok(committed.lines().map(str::trim).any(outside)
            || pending
                .lines()
                .filter_map(|l| l.get(3..))
                .map(str::trim)
                .any(outside))
    }

    /// Remove the task's worktree (cancel, F-25). The branch stays in the
    /// clone; the remote branch is the forge's business.
    pub async fn remove(&self, project: &Project, work_item: &str) -> Result<(), GitError> {
        let lock = self.lock(&project.name);
        let _held = lock.lock().await;
        let wt = self.worktree_dir(work_item);
        let clone = self.clone_dir(&project.name);
        if wt.exists() {
            let w = wt.to_string_lossy().into_owned();
            if git(&clone, &["worktree", "remove", "--force", &w])
                .await
                .is_err()
            {
                tokio::fs::remove_dir_all(&wt).await?;
            }
        }
        let _ = git(&clone, &["worktree", "prune"]).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_one_runner_reports_exit_output_failure_and_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let init = run(dir.path(), &["init", "-q"], DEFAULT_TIMEOUT)
            .await
            .unwrap();
        assert!(init.ok(), "{init:?}");
        let head = run(
            dir.path(),
            &["rev-parse", "--is-inside-work-tree"],
            DEFAULT_TIMEOUT,
        )
        .await
        .unwrap();
        assert_eq!(head.stdout.trim(), "true");
        // The C locale: callers match git's own words.
        let bad = run(dir.path(), &["checkout", "no-such-branch"], DEFAULT_TIMEOUT)
            .await
            .unwrap();
        assert!(!bad.ok() && bad.stderr.contains("did not match"), "{bad:?}");
        let slow = run(dir.path(), &["status"], Duration::ZERO).await;
        assert!(matches!(slow, Err(RunError::Timeout { .. })), "{slow:?}");
        let gone = run(&dir.path().join("missing"), &["status"], DEFAULT_TIMEOUT)
            .await
            .unwrap();
        assert!(!gone.ok(), "{gone:?}");
    }

    #[test]
    fn branch_names() {
        assert_eq!(branch_name("DEMO-12"), "demo-12");
        assert_eq!(branch_name("A B/c"), "a-b-c");
    }
}
