//! The built-in forge (B-10): any git remote (`repo_url`) the daemon can
//! fetch from and push to. The "PR" is the task branch itself, numbered by
//! its work item (`demo-12` is PR 12 of a project with prefix `DEMO`), so
//! the number survives a restart without any state of ours. A merge is a
//! real `git merge --no-ff` in the forge's own clone
//! (`<workspace_root>/forge/repos/<project>`), pushed to the default branch
//! as a normal push: a remote that moved refuses it, and the merge is
//! rebuilt on the new tip a bounded number of times. Every answer about
//! "merged" comes from the remote after a fetch (`merge-base
//! --is-ancestor`), so a merge whose answer was lost (a crash after the
//! push) is found, never repeated.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex};

use async_trait::async_trait;
use serde_json::{Value, json};

use super::{ClientError, Forge, ForgeRepo, MergeOutcome, PrState};
use crate::checkouts::{CheckoutError, Checkouts, LocalMerge};
use crate::config::{Project, Settings};

/// How often a merge is rebuilt when the remote's default branch moved
/// between our fetch and our push.
pub const PUSH_ATTEMPTS: usize = 3;

const SERVICE: &str = "local forge";

pub struct LocalForge {
    settings: Arc<Settings>,
    clones: Checkouts,
}

impl LocalForge {
    pub fn new(settings: Arc<Settings>) -> Self {
        let clones = Checkouts::new(settings.workspace_root.join("forge"));
        Self { settings, clones }
    }

    fn project(&self, repo: &ForgeRepo) -> Result<&Project, ClientError> {
        self.settings.project(&repo.project).ok_or_else(|| {
            ClientError::Config(format!("project {:?} is not configured", repo.project))
        })
    }

    /// The PR number of a task branch: its work item's number.
    fn number_of(project: &Project, branch: &str) -> Option<u64> {
        let prefix = format!("{}-", project.work_item_prefix.to_ascii_lowercase());
        branch.strip_prefix(&prefix)?.parse().ok()
    }

    fn branch_of(project: &Project, number: u64) -> String {
        format!("{}-{number}", project.work_item_prefix.to_ascii_lowercase())
    }

    /// One git operation at a time on a clone. The lock is per directory
    /// and per process, not per instance: the pipeline and the engine's
    /// effects each hold a forge, and git's lock files fail, not wait.
    async fn lock(&self, project: &Project) -> tokio::sync::OwnedMutexGuard<()> {
        static LOCKS: LazyLock<Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>> =
            LazyLock::new(Mutex::default);
        let m = {
            let mut map = LOCKS.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(self.clones.dir(&project.name))
                .or_default()
                .clone()
        };
        m.lock_owned().await
    }

    /// The clone, made on first use, with the default branch fetched.
    async fn fresh_clone(&self, project: &Project) -> Result<PathBuf, ClientError> {
        let dir = self.clones.ensure(project).await.map_err(git_err)?;
        self.clones
            .fetch_branch(&dir, &project.default_branch)
            .await
            .map_err(git_err)?;
        Ok(dir)
    }
}

/// A git step that timed out or could not run may have reached the remote
/// or not: unavailable (the caller treats it as unknown); one that failed
/// is a refusal.
fn git_err(e: CheckoutError) -> ClientError {
    match e {
        CheckoutError::Failed { .. } => ClientError::Rejected {
            service: SERVICE,
            status: 0,
            body: e.to_string(),
        },
        other => ClientError::Unavailable {
            service: SERVICE,
            detail: other.to_string(),
        },
    }
}

/// The longest title a merge message carries.
const TITLE_MAX_CHARS: usize = 200;

/// `text` on one line (control characters as spaces, runs of spaces as
/// one), at most `max` characters.
fn one_line(text: &str, max: usize) -> String {
    let spaced: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    spaced
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(max)
        .collect()
}

fn is_protected(branch: &str, default_branch: &str) -> bool {
    let b = branch.trim();
    b.is_empty()
        || b == default_branch.trim()
        || matches!(b, "main" | "master" | "HEAD")
        || b.starts_with('-')
}

#[async_trait]
impl Forge for LocalForge {
    /// Nothing to open: the branch is the PR. `AlreadyInMain` when its head
    /// is already in the default branch.
    async fn ensure_open_pr(
        &self,
        repo: &ForgeRepo,
        branch: &str,
        title: &str,
        _body: &str,
    ) -> Result<PrState, ClientError> {
        let project = self.project(repo)?;
        let number = Self::number_of(project, branch).ok_or_else(|| {
            ClientError::Config(format!(
                "branch {branch:?} is not a task branch of {} ({}-<n>)",
                project.name,
                project.work_item_prefix.to_ascii_lowercase()
            ))
        })?;
        let _held = self.lock(project).await;
        let dir = self.fresh_clone(project).await?;
        if !self
            .clones
            .fetch_branch(&dir, branch)
            .await
            .map_err(git_err)?
        {
            return Err(ClientError::Rejected {
                service: SERVICE,
                status: 404,
                body: format!("branch {branch} is not on {}", project.repo_url),
            });
        }
        let main = format!("origin/{}", project.default_branch);
        let head = format!("origin/{branch}");
        if self
            .clones
            .is_ancestor(&dir, &head, &main)
            .await
            .map_err(git_err)?
        {
            return Ok(PrState::AlreadyInMain);
        }
        // The title goes into the merge commit's message. A title is the
        // tracker's text: one line, bounded, whatever was typed.
        let title = one_line(title, TITLE_MAX_CHARS);
        if !title.is_empty() {
            self.clones
                .set_description(&dir, branch, &title)
                .await
                .map_err(git_err)?;
        }
        Ok(PrState::Open { number })
    }

    async fn merge_pr(
        &self,
        repo: &ForgeRepo,
        number: u64,
        head_sha: &str,
    ) -> Result<MergeOutcome, ClientError> {
        let project = self.project(repo)?;
        let branch = Self::branch_of(project, number);
        let main = format!("origin/{}", project.default_branch);
        let c = &self.clones;
        let _held = self.lock(project).await;
        for attempt in 1..=PUSH_ATTEMPTS {
            let dir = self.fresh_clone(project).await?;
            if !c.fetch_branch(&dir, &branch).await.map_err(git_err)? {
                return Ok(MergeOutcome::NotMerged {
                    reason: format!("branch {branch} is not on the remote"),
                });
            }
            let now = c
                .rev(&dir, &format!("origin/{branch}"))
                .await
                .map_err(git_err)?
                .unwrap_or_default();
            if now != head_sha {
                return Ok(MergeOutcome::HeadMoved { head: now });
            }
            if c.is_ancestor(&dir, head_sha, &main)
                .await
                .map_err(git_err)?
            {
                // Landed already (an earlier attempt whose answer was lost).
                let sha = c
                    .merge_commit_of(&dir, head_sha, &main)
                    .await
                    .map_err(git_err)?;
                return Ok(MergeOutcome::Merged {
                    sha: sha.unwrap_or_else(|| head_sha.to_string()),
                });
            }
            // A clone made after a restart may not have the title: the
            // work item alone then.
            let message = match c.description(&dir, &branch).await.map_err(git_err)? {
                Some(title) => format!("Merge branch '{branch}': {title}"),
                None => format!("Merge branch '{branch}' ({})", branch.to_ascii_uppercase()),
            };
            match c
                .merge_locally(&dir, &project.default_branch, &branch, &message)
                .await
                .map_err(git_err)?
            {
                LocalMerge::Merged { sha } => {
                    tracing::info!(project = %project.name, %branch, %sha, attempt, "merged and pushed the default branch");
                    return Ok(MergeOutcome::Merged { sha });
                }
                LocalMerge::Conflict(why) => {
                    return Ok(MergeOutcome::NotMerged {
                        reason: format!(
                            "{branch} does not merge cleanly into {}: {why}",
                            project.default_branch
                        ),
                    });
                }
                LocalMerge::Rejected(why) => {
                    tracing::warn!(project = %project.name, %branch, attempt, %why, "push refused (the remote moved): merging again on the new tip");
                }
                LocalMerge::PushUncertain(why) => {
                    return Err(ClientError::Unavailable {
                        service: SERVICE,
                        detail: format!(
                            "the push of {} may or may not have landed: {why}",
                            project.default_branch
                        ),
                    });
                }
            }
        }
        Ok(MergeOutcome::NotMerged {
            reason: format!(
                "the remote's {} kept moving: {PUSH_ATTEMPTS} pushes refused",
                project.default_branch
            ),
        })
    }

    async fn sha_in_main(&self, repo: &ForgeRepo, sha: &str) -> Result<bool, ClientError> {
        let project = self.project(repo)?;
        let _held = self.lock(project).await;
        let dir = self.fresh_clone(project).await?;
        let main = format!("origin/{}", project.default_branch);
        self.clones
            .is_ancestor(&dir, sha, &main)
            .await
            .map_err(git_err)
    }

    async fn delete_branch(&self, repo: &ForgeRepo, branch: &str) -> Result<(), ClientError> {
        let project = self.project(repo)?;
        if is_protected(branch, &project.default_branch) {
            tracing::error!(project = %project.name, branch, "refused to delete the default branch");
            return Err(ClientError::Blocked(format!(
                "never delete the default branch ({branch:?} of {})",
                project.name
            )));
        }
        let _held = self.lock(project).await;
        let dir = self.clones.ensure(project).await.map_err(git_err)?;
        self.clones
            .delete_remote_branch(&dir, branch.trim())
            .await
            .map(|_| ())
            .map_err(git_err)
    }

    /// The merge of `branch` into the default branch, shaped as a Gitea PR
    /// (what the intake's parser reads): only a merge commit whose parents
    /// include the branch head counts, so a fresh branch that still points
    /// into main is not "merged".
    async fn merged_pr_of(
        &self,
        repo: &ForgeRepo,
        branch: &str,
    ) -> Result<Option<Value>, ClientError> {
        let project = self.project(repo)?;
        let Some(number) = Self::number_of(project, branch) else {
            return Ok(None);
        };
        let _held = self.lock(project).await;
        let dir = self.fresh_clone(project).await?;
        if !self
            .clones
            .fetch_branch(&dir, branch)
            .await
            .map_err(git_err)?
        {
            return Ok(None);
        }
        let Some(head) = self
            .clones
            .rev(&dir, &format!("origin/{branch}"))
            .await
            .map_err(git_err)?
        else {
            return Ok(None);
        };
        let main = format!("origin/{}", project.default_branch);
        let Some(merge) = self
            .clones
            .merge_commit_of(&dir, &head, &main)
            .await
            .map_err(git_err)?
        else {
            return Ok(None);
        };
        Ok(Some(json!({
            "number": number,
            "title": branch,
            "state": "closed",
            "merged": true,
            "merge_commit_sha": merge,
            "head": { "ref": branch, "sha": head },
            "base": { "ref": project.default_branch },
        })))
    }
}
