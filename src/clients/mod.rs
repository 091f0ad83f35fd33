//! The ports to the outside: the tracker (Plane, or the built-in local
//! one), the forge (Gitea, or any git remote). The pipeline talks to these
//! traits; `plane.rs` and `gitea.rs` hold the HTTP adapters,
//! `local_tracker.rs` and `local_forge.rs` the built-in pair (B-10),
//! `routed.rs` picks each project's; tests plug in doubles.

pub mod gitea;
pub mod local_forge;
pub mod local_tracker;
pub mod plane;
pub mod plane_outbox;
pub mod rate_limit;
pub mod retry;
pub mod routed;
pub mod telegram;
pub mod write_guard;

use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

use crate::config::Settings;
use crate::db::Db;

/// The daemon's tracker (B-10): each project's own, Plane behind its
/// outbox (returned too, for the sender loop and `/queue`) or the local one.
pub fn daemon_tracker(
    settings: &Arc<Settings>,
    db: &Db,
) -> (Arc<dyn Tracker>, Option<Arc<plane_outbox::PlaneOutbox>>) {
    let (plane, outbox) = plane_outbox::tracker_with_outbox(settings, db);
    let routed = routed::RoutedTracker {
        settings: settings.clone(),
        plane,
        local: Arc::new(local_tracker::LocalTracker::new(db.clone())),
    };
    (Arc::new(routed), outbox)
}

/// The daemon's forge (B-10): each project's own, Gitea or the local one.
pub fn daemon_forge(settings: &Arc<Settings>) -> Arc<dyn Forge> {
    Arc::new(routed::RoutedForge {
        settings: settings.clone(),
        gitea: gitea::forge_from_settings(settings),
        local: Arc::new(local_forge::LocalForge::new(settings.clone())),
    })
}

/// Why a call to an outside system failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ClientError {
    /// The write guard (F-04) refused the write before any network step.
    #[error("blocked by the write guard: {0}")]
    Blocked(String),
    /// Configuration or lookup problem on our side (unknown status name...).
    #[error("{0}")]
    Config(String),
    /// The remote answered with an error that retrying will not fix.
    #[error("{service} answered {status}: {body}")]
    Rejected {
        service: &'static str,
        status: u16,
        body: String,
    },
    /// Network error, timeout, or retries exhausted on a transient answer.
    #[error("{service} unavailable: {detail}")]
    Unavailable {
        service: &'static str,
        detail: String,
    },
}

/// A work item as the tracker knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrackerRef {
    /// Our project name (`[[projects]].name`).
    pub project: String,
    /// The tracker's project id (`plane_project_id`).
    pub tracker_project_id: String,
    /// The tracker's id of the work item (Plane issue uuid).
    pub issue_id: String,
    /// `DEMO-12`.
    pub work_item: String,
}

/// F-03: what the pipeline needs from the tracker. Status keys are the keys
/// of `[plane].statuses` (`in_progress`, `needs_input`, ...).
#[async_trait]
pub trait Tracker: Send + Sync {
    async fn set_status(&self, item: &TrackerRef, status_key: &str) -> Result<(), ClientError>;
    /// Add a comment once: `idempotency_key` makes a repeat a no-op.
    async fn add_comment(
        &self,
        item: &TrackerRef,
        idempotency_key: &str,
        html: &str,
    ) -> Result<(), ClientError>;
    /// The newest comment's HTML (by creation time), if any.
    async fn latest_comment(&self, item: &TrackerRef) -> Result<Option<String>, ClientError>;
    /// The status key the work item is at now (the reconciler's poll, F-16);
    /// `None` when its status is none of ours.
    async fn current_status(&self, item: &TrackerRef) -> Result<Option<String>, ClientError>;
    /// The tracker user our writes are made as: webhooks it caused are
    /// echoes of our own writes (F-01). `None` when unknown.
    async fn bot_user_id(&self) -> Result<Option<String>, ClientError> {
        Ok(None)
    }
    /// The status key of a tracker state id in a project (a webhook carries
    /// the id); `None` when the state is none of ours.
    async fn status_key_of(
        &self,
        _tracker_project_id: &str,
        _state_id: &str,
    ) -> Result<Option<String>, ClientError> {
        Ok(None)
    }
}

/// A repository as the forge and git know it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ForgeRepo {
    /// Our project name (`[[projects]].name`): picks the adapter (B-10).
    pub project: String,
    /// `owner/name` on Gitea; the project's name with the local forge.
    pub full_name: String,
    pub default_branch: String,
    /// The local clone the daemon keeps (for `merge-base --is-ancestor`).
    pub local_clone: std::path::PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "pr", rename_all = "snake_case")]
pub enum PrState {
    Open {
        number: u64,
    },
    /// The branch is already fully in the default branch: no PR was made.
    AlreadyInMain,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "merge", rename_all = "snake_case")]
pub enum MergeOutcome {
    Merged {
        sha: String,
    },
    /// A terminal refusal (403, 404, not mergeable) or retries exhausted.
    NotMerged {
        reason: String,
    },
    /// 409 "head out of date": the branch moved past the head we asked to
    /// merge (issue 11 pt 4). The new head was never through the merge gate.
    HeadMoved {
        head: String,
    },
}

/// F-07: what the pipeline needs from the forge.
#[async_trait]
pub trait Forge: Send + Sync {
    async fn ensure_open_pr(
        &self,
        repo: &ForgeRepo,
        branch: &str,
        title: &str,
        body: &str,
    ) -> Result<PrState, ClientError>;
    async fn merge_pr(
        &self,
        repo: &ForgeRepo,
        number: u64,
        head_sha: &str,
    ) -> Result<MergeOutcome, ClientError>;
    /// Is this commit reachable from the default branch on the forge?
    async fn sha_in_main(&self, repo: &ForgeRepo, sha: &str) -> Result<bool, ClientError>;
    /// Delete a feature branch; refuses the default branch before any call.
    async fn delete_branch(&self, repo: &ForgeRepo, branch: &str) -> Result<(), ClientError>;
    /// The merged PR of `branch` into the default branch, as the forge's
    /// API renders a PR (the `pull_request` object of its webhook), if any:
    /// the reconciler's poll for a merge whose webhook was lost (F-16).
    async fn merged_pr_of(
        &self,
        _repo: &ForgeRepo,
        _branch: &str,
    ) -> Result<Option<serde_json::Value>, ClientError> {
        Ok(None)
    }
}
