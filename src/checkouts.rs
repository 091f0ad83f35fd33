//! Per-project clones under a root of their own: the deploy path's
//! (`<workspace_root>/deploys/repos/<project>`, F-19, F-23) and the local
//! forge's (`<workspace_root>/forge/repos/<project>`, B-10).
//!
//! Why not the shared clone under `repos/`: the worker adds and prepares task
//! worktrees there under `git::Workspace`'s in-process lock, and git's own
//! lock files fail rather than wait. The effects here must check the tree out
//! at arbitrary commits (the branch head for coverage, the merged default
//! branch for the deploy) and may merge locally; a clone of their own, used
//! under a per-project mutex, never disturbs an agent's worktree.
//!
//! Every git call has a timeout (a hung fetch must not hold the transition
//! lease forever) and never prompts for credentials.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::Project;

/// How long one git command may take.
const GIT_TIMEOUT: Duration = Duration::from_secs(120);

/// The identity of local merge commits.
const COMMITTER: [&str; 4] = [
    "-c",
    "user.name=orchestrator",
    "-c",
    "user.email=orchestrator@localhost",
];

#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("cannot run git in {dir}: {source}")]
    Spawn {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("git {args} in {dir} timed out after {}s", GIT_TIMEOUT.as_secs())]
    Timeout { args: String, dir: PathBuf },
    #[error("git {args} in {dir} failed (exit {code:?}): {stderr}")]
    Failed {
        args: String,
        dir: PathBuf,
        code: Option<i32>,
        stderr: String,
    },
    #[error("cannot prepare {dir}: {source}")]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// What git printed and how it exited.
#[derive(Debug)]
struct GitOut {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

async fn run_git(dir: &Path, args: &[&str]) -> Result<GitOut, CheckoutError> {
    // Messages are matched below ("rejected", "couldn't find remote ref"):
    // the runner sets the C locale.
    match crate::git::run(dir, args, GIT_TIMEOUT).await {
        Ok(out) => Ok(GitOut {
            code: out.code,
            stdout: out.stdout.trim().to_string(),
            stderr: out.stderr,
        }),
        Err(crate::git::RunError::Spawn { source, .. }) => Err(CheckoutError::Spawn {
            dir: dir.to_path_buf(),
            source,
        }),
        Err(crate::git::RunError::Timeout { .. }) => Err(CheckoutError::Timeout {
            args: args.join(" "),
            dir: dir.to_path_buf(),
        }),
    }
}

/// Run git; its stdout when it exited 0, else an error with its stderr.
async fn git_ok(dir: &Path, args: &[&str]) -> Result<String, CheckoutError> {
    let out = run_git(dir, args).await?;
    if out.code == Some(0) {
        Ok(out.stdout)
    } else {
        Err(CheckoutError::Failed {
            args: args.join(" "),
            dir: dir.to_path_buf(),
            code: out.code,
            stderr: out.stderr,
        })
    }
}

/// How a local merge (no forge configured) ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalMerge {
    /// Merged and pushed: the merge commit.
    Merged { sha: String },
    /// The branch does not merge cleanly; nothing was pushed.
    Conflict(String),
    /// The remote refused the push (the default branch moved, a hook):
    /// nothing landed.
    Rejected(String),
    /// The push failed in a way that does not say whether it landed (a
    /// dropped connection after sending).
    PushUncertain(String),
}

/// The per-project deploy clones and their locks.
#[derive(Debug)]
pub struct Checkouts {
    root: PathBuf,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Checkouts {
    /// `deploys_dir` is `<workspace_root>/deploys`.
    pub fn new(deploys_dir: impl Into<PathBuf>) -> Self {
        Self {
            root: deploys_dir.into(),
            locks: Mutex::default(),
        }
    }

    pub fn dir(&self, project: &str) -> PathBuf {
        self.root.join("repos").join(project)
    }

    /// Serializes the effects of one project on its clone.
    pub async fn lock(&self, project: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut map = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(project.to_string()).or_default().clone()
        };
        m.lock_owned().await
    }

    /// The clone of `project`, made on first use. A directory without
    /// `.git` (a crash mid-clone) is removed and cloned again.
    pub async fn ensure(&self, project: &Project) -> Result<PathBuf, CheckoutError> {
        let dir = self.dir(&project.name);
        if dir.join(".git").exists() {
            return Ok(dir);
        }
        let parent = dir.parent().unwrap_or(&self.root).to_path_buf();
        let dir_err = |source| CheckoutError::Dir {
            dir: dir.clone(),
            source,
        };
        if dir.exists() {
            tokio::fs::remove_dir_all(&dir).await.map_err(dir_err)?;
        }
        tokio::fs::create_dir_all(&parent).await.map_err(dir_err)?;
        let d = dir.to_string_lossy().into_owned();
        git_ok(&parent, &["clone", "--quiet", &project.repo_url, &d]).await?;
        Ok(dir)
    }

    /// Fetch one branch into `origin/<branch>`. `Ok(false)` when the remote
    /// has no such branch (deleted after a merge, never pushed).
    pub async fn fetch_branch(&self, dir: &Path, branch: &str) -> Result<bool, CheckoutError> {
        let refspec = format!("+refs/heads/{branch}:refs/remotes/origin/{branch}");
        let args = ["fetch", "--quiet", "origin", refspec.as_str()];
        let out = run_git(dir, &args).await?;
        match out.code {
            Some(0) => Ok(true),
            _ if out.stderr.contains("couldn't find remote ref") => Ok(false),
            code => Err(CheckoutError::Failed {
                args: args.join(" "),
                dir: dir.to_path_buf(),
                code,
                stderr: out.stderr,
            }),
        }
    }

    /// The commit a ref names, `None` when it does not exist.
    pub async fn rev(&self, dir: &Path, refname: &str) -> Result<Option<String>, CheckoutError> {
        let spec = format!("{refname}^{{commit}}");
        let out = run_git(dir, &["rev-parse", "--verify", "--quiet", &spec]).await?;
        Ok((out.code == Some(0) && !out.stdout.is_empty()).then_some(out.stdout))
    }

    /// Is `commit` reachable from `target`? An unknown commit is not.
    pub async fn is_ancestor(
        &self,
        dir: &Path,
        commit: &str,
        target: &str,
    ) -> Result<bool, CheckoutError> {
        let args = ["merge-base", "--is-ancestor", commit, target];
        let out = run_git(dir, &args).await?;
        match out.code {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            // 128: a commit the clone does not have is not in main.
            _ if out.stderr.contains("Not a valid commit name")
                || out.stderr.contains("not a valid object") =>
            {
                Ok(false)
            }
            code => Err(CheckoutError::Failed {
                args: args.join(" "),
                dir: dir.to_path_buf(),
                code,
                stderr: out.stderr,
            }),
        }
    }

    /// The merge commit that brought `head` into `target`: the oldest merge
    /// on the ancestry path whose parents include `head`. `None` after a
    /// fast-forward (no merge commit) or when `head` is not in `target`.
    pub async fn merge_commit_of(
        &self,
        dir: &Path,
        head: &str,
        target: &str,
    ) -> Result<Option<String>, CheckoutError> {
        let range = format!("{head}..{target}");
        let list = git_ok(
            dir,
            &[
                "rev-list",
                "--merges",
                "--ancestry-path",
                "--reverse",
                "--parents",
                &range,
            ],
        )
        .await?;
        Ok(list.lines().find_map(|l| {
            let mut ids = l.split_whitespace();
            let commit = ids.next()?;
            ids.any(|p| p == head).then(|| commit.to_string())
        }))
    }

    /// Check `rev` out, detached, with a clean tree. Untracked files go;
    /// ignored ones (build caches) stay, so a deploy need not rebuild all.
    pub async fn checkout(&self, dir: &Path, rev: &str) -> Result<(), CheckoutError> {
        git_ok(dir, &["checkout", "--quiet", "--force", "--detach", rev]).await?;
        git_ok(dir, &["clean", "-fdq"]).await?;
        Ok(())
    }

    /// No forge configured (B-10): merge `origin/<branch>` into the default
    /// branch with `git merge --no-ff` and push the default branch normally.
    /// Never a force-push: a remote that moved meanwhile refuses, and nothing
    /// lands. The caller has fetched both branches.
    pub async fn merge_locally(
        &self,
        dir: &Path,
        default_branch: &str,
        branch: &str,
        message: &str,
    ) -> Result<LocalMerge, CheckoutError> {
        self.checkout(dir, &format!("origin/{default_branch}"))
            .await?;
        let theirs = format!("origin/{branch}");
        let mut args: Vec<&str> = COMMITTER.to_vec();
        args.extend(["merge", "--no-ff", "--no-edit", "-m", message, &theirs]);
        let out = run_git(dir, &args).await?;
        if out.code != Some(0) {
            // Leave the clone clean for the next effect.
            let _ = run_git(dir, &["merge", "--abort"]).await;
            return Ok(LocalMerge::Conflict(first_line(&out.stdout, &out.stderr)));
        }
        let sha = git_ok(dir, &["rev-parse", "HEAD"]).await?;
        let target = format!("HEAD:refs/heads/{default_branch}");
        let push = run_git(dir, &["push", "--porcelain", "origin", &target]).await?;
        if push.code == Some(0) {
            return Ok(LocalMerge::Merged { sha });
        }
        let text = format!("{}\n{}", push.stdout, push.stderr);
        // `!` lines of --porcelain and "[rejected]"/"[remote rejected]" mean
        // the remote refused the update as a whole.
        if text.contains("rejected") || text.lines().any(|l| l.starts_with('!')) {
            Ok(LocalMerge::Rejected(first_line(&push.stderr, &push.stdout)))
        } else {
            Ok(LocalMerge::PushUncertain(first_line(
                &push.stderr,
                &push.stdout,
            )))
        }
    }
}

impl Checkouts {
    /// Keep a line of text with a branch in this clone's own config (git's
    /// `branch.<name>.description`): the local forge's "PR title", which
    /// the merge commit's message carries. Never sent to the remote.
    pub async fn set_description(
        &self,
        dir: &Path,
        branch: &str,
        text: &str,
    ) -> Result<(), CheckoutError> {
        let key = format!("branch.{branch}.description");
        git_ok(dir, &["config", "--local", &key, text]).await?;
        Ok(())
    }

    /// The line [`set_description`](Self::set_description) kept, if any.
    pub async fn description(
        &self,
        dir: &Path,
        branch: &str,
    ) -> Result<Option<String>, CheckoutError> {
        let key = format!("branch.{branch}.description");
        let out = run_git(dir, &["config", "--local", "--get", &key]).await?;
        let text = out.stdout.trim();
        Ok((out.code == Some(0) && !text.is_empty()).then(|| text.to_string()))
    }
}

impl Checkouts {
    /// Delete `refs/heads/<branch>` on the remote: a ref deletion, never a
    /// force-push. `Ok(false)` when it was not there. The caller has
    /// refused the default branch.
    pub async fn delete_remote_branch(
        &self,
        dir: &Path,
        branch: &str,
    ) -> Result<bool, CheckoutError> {
        let refname = format!("refs/heads/{branch}");
        let args = ["push", "--quiet", "origin", "--delete", refname.as_str()];
        let out = run_git(dir, &args).await?;
        match out.code {
            Some(0) => Ok(true),
            _ if out.stderr.contains("remote ref does not exist") => Ok(false),
            code => Err(CheckoutError::Failed {
                args: args.join(" "),
                dir: dir.to_path_buf(),
                code,
                stderr: out.stderr,
            }),
        }
    }
}

fn first_line(a: &str, b: &str) -> String {
    let text = if a.trim().is_empty() { b } else { a };
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(3)
        .collect::<Vec<_>>()
        .join(" / ")
}
