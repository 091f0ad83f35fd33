//! `delete_branch` (F-25): the effect of every transition into `cancelled`.
//! It deletes the task's remote feature branch so a later To Analyse starts
//! from the default branch, never from the cancelled work.
//!
//! - Through the project's forge (`Forge::delete_branch`, B-10): Gitea's
//!   API, or the local forge's `git push origin --delete refs/heads/<branch>`
//!   from its own clone (a ref deletion, never a force-push).
//!
//! The default branch is refused before any call (and the forge refuses it
//! again). A refusal does not fail the cancel: the effect records what it
//! refused, so a misconfigured branch can never block a STOP nor lose `main`.
//! A branch already gone counts as done; `reconcile` asks the remote
//! (`git ls-remote`) whether the branch still exists.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::clients::{ClientError, Forge, ForgeRepo};
use crate::config::{Project, Settings};
use crate::domain::EffectKind;
use crate::stage_engine::{Effect, EffectCtx, EffectError, EffectRegistry, EffectResult};

/// How long one git command against the remote may take: the effect runs
/// under the transition lease, which a hung remote must not hold forever.
const GIT_TIMEOUT: Duration = Duration::from_secs(120);

pub struct DeleteBranch {
    pub settings: Arc<Settings>,
    pub forge: Arc<dyn Forge>,
}

/// Register `delete_branch` (F-25).
pub fn register(
    reg: EffectRegistry,
    settings: Arc<Settings>,
    forge: Arc<dyn Forge>,
) -> EffectRegistry {
    reg.with(
        EffectKind::DeleteBranch,
        Arc::new(DeleteBranch { settings, forge }),
    )
}

/// What the effect will do for a task.
enum Plan<'a> {
    /// Nothing may or can be deleted; the reason is the recorded result.
    Skip(String),
    Delete {
        project: &'a Project,
        branch: String,
    },
}

/// Names that are never deleted, whatever the configuration says.
pub fn is_protected(branch: &str, default_branch: &str) -> bool {
    let b = branch.trim();
    b.is_empty()
        || b == default_branch.trim()
        || matches!(b, "main" | "master" | "HEAD")
        || b.starts_with('-')
        || b.contains("..")
        || b.chars().any(char::is_whitespace)
}

impl DeleteBranch {
    fn plan<'a>(&'a self, ctx: &EffectCtx) -> Plan<'a> {
        let branch = ctx
            .task
            .branch
            .clone()
            .filter(|b| !b.trim().is_empty())
            .unwrap_or_else(|| crate::git::branch_name(&ctx.task.work_item));
        let Some(project) = self.settings.project(&ctx.task.project) else {
            tracing::warn!(work_item = %ctx.task.work_item, project = %ctx.task.project, "project not configured: the remote branch cannot be deleted");
            return Plan::Skip(format!(
                "skipped: project {:?} is not configured; branch {branch} not deleted",
                ctx.task.project
            ));
        };
        if is_protected(&branch, &project.default_branch) {
            tracing::error!(work_item = %ctx.task.work_item, branch, "refused to delete a protected branch");
            return Plan::Skip(format!(
                "refused: {branch:?} is the default or a protected branch of {}",
                project.name
            ));
        }
        Plan::Delete { project, branch }
    }

    /// Does the branch exist on the remote? `Err` = cannot tell; the caller
    /// decides whether that means "unknown" or "nothing happened".
    async fn exists(&self, project: &Project, branch: &str) -> Result<bool, String> {
        let refname = format!("refs/heads/{branch}");
        let out = git(
            &self.settings.workspace_root,
            &["ls-remote", "--heads", &project.repo_url, &refname],
        )
        .await?;
        if !out.ok {
            return Err(format!(
                "git ls-remote {}: {}",
                project.repo_url, out.stderr
            ));
        }
        Ok(out
            .stdout
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some(refname.as_str())))
    }

    async fn delete_with_forge(
        &self,
        project: &Project,
        branch: &str,
    ) -> Result<String, EffectError> {
        let repo = ForgeRepo {
            project: project.name.clone(),
            full_name: project.forge_name().to_string(),
            default_branch: project.default_branch.clone(),
            local_clone: self
                .settings
                .workspace_root
                .join("repos")
                .join(&project.name),
        };
        match self.forge.delete_branch(&repo, branch).await {
            Ok(()) => Ok(format!("deleted {branch} on {}", project.forge_name())),
            Err(ClientError::Blocked(why)) => Ok(format!("refused by the forge: {why}")),
            Err(e @ ClientError::Unavailable { .. }) => Err(EffectError::Unknown(e.to_string())),
            Err(e) => Err(EffectError::Failed(e.to_string())),
        }
    }
}

#[async_trait]
impl Effect for DeleteBranch {
    fn has_record(&self) -> bool {
        false
    }
    async fn reconcile(&self, ctx: &EffectCtx) -> Result<Option<EffectResult>, EffectError> {
        match self.plan(ctx) {
            Plan::Skip(why) => Ok(Some(why)),
            Plan::Delete { project, branch } => {
                let exists = self
                    .exists(project, &branch)
                    .await
                    .map_err(EffectError::Unknown)?;
                Ok((!exists).then(|| format!("already deleted: {branch} is not on the remote")))
            }
        }
    }

    async fn apply(&self, ctx: &EffectCtx) -> Result<EffectResult, EffectError> {
        let (project, branch) = match self.plan(ctx) {
            Plan::Skip(why) => return Ok(why),
            Plan::Delete { project, branch } => (project, branch),
        };
        // Never pushed (a task stopped before its first run) or already
        // deleted: done without a call that could fail for nothing.
        // Nothing was done yet: a remote we cannot ask is a plain failure.
        let exists = self
            .exists(project, &branch)
            .await
            .map_err(EffectError::Failed)?;
        if !exists {
            return Ok(format!("already gone: {branch} is not on the remote"));
        }
        let done = self.delete_with_forge(project, &branch).await?;
        tracing::info!(work_item = %ctx.task.work_item, branch, "remote branch deleted");
        Ok(done)
    }
}

struct GitOut {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Run git in `dir` with a timeout; `Err` when it could not run or timed out.
async fn git(dir: &Path, args: &[&str]) -> Result<GitOut, String> {
    if let Err(e) = tokio::fs::create_dir_all(dir).await {
        return Err(format!("cannot create {}: {e}", dir.display()));
    }
    match crate::git::run(dir, args, GIT_TIMEOUT).await {
        Ok(out) => Ok(GitOut {
            ok: out.ok(),
            stdout: out.stdout,
            stderr: out.stderr,
        }),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protected_branches() {
        for b in [
            "main", "master", "HEAD", "", "  ", "trunk", "-x", "a..b", "a b",
        ] {
            assert!(is_protected(b, "trunk"), "{b:?} must be protected");
        }
        for b in ["demo-1", "orch-12", "feature/x"] {
            assert!(!is_protected(b, "main"), "{b:?} is a feature branch");
        }
    }
}
