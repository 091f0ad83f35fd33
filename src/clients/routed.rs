//! Per-project adapters (B-10): each `[[projects]]` entry names its tracker
//! (`plane` | `local`) and forge (`gitea` | `local`); the pipeline holds one
//! `Tracker` and one `Forge` that hand each call to the project's adapter.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use super::{ClientError, Forge, ForgeRepo, MergeOutcome, PrState, Tracker, TrackerRef};
use crate::config::{ForgeKind, Settings, TrackerKind};

pub struct RoutedTracker {
    pub settings: Arc<Settings>,
    pub plane: Arc<dyn Tracker>,
    pub local: Arc<dyn Tracker>,
}

impl RoutedTracker {
    fn of(&self, project: &str) -> &dyn Tracker {
        match self.settings.project(project).map(|p| p.tracker_kind()) {
            Some(TrackerKind::Plane) => self.plane.as_ref(),
            // An unconfigured project's calls fail in the local tracker
            // with a message naming the work item.
            _ => self.local.as_ref(),
        }
    }
}

#[async_trait]
impl Tracker for RoutedTracker {
    async fn set_status(&self, item: &TrackerRef, status_key: &str) -> Result<(), ClientError> {
        self.of(&item.project).set_status(item, status_key).await
    }

    async fn add_comment(
        &self,
        item: &TrackerRef,
        idempotency_key: &str,
        html: &str,
    ) -> Result<(), ClientError> {
        self.of(&item.project)
            .add_comment(item, idempotency_key, html)
            .await
    }

    async fn latest_comment(&self, item: &TrackerRef) -> Result<Option<String>, ClientError> {
        self.of(&item.project).latest_comment(item).await
    }

    async fn current_status(&self, item: &TrackerRef) -> Result<Option<String>, ClientError> {
        self.of(&item.project).current_status(item).await
    }

    /// Only Plane's webhooks ask (echo filter, state ids).
    async fn bot_user_id(&self) -> Result<Option<String>, ClientError> {
        self.plane.bot_user_id().await
    }

    async fn status_key_of(
        &self,
        tracker_project_id: &str,
        state_id: &str,
    ) -> Result<Option<String>, ClientError> {
        self.plane.status_key_of(tracker_project_id, state_id).await
    }
}

pub struct RoutedForge {
    pub settings: Arc<Settings>,
    pub gitea: Arc<dyn Forge>,
    pub local: Arc<dyn Forge>,
}

impl RoutedForge {
    fn of(&self, repo: &ForgeRepo) -> &dyn Forge {
        match self.settings.project(&repo.project).map(|p| p.forge_kind()) {
            Some(ForgeKind::Gitea) => self.gitea.as_ref(),
            _ => self.local.as_ref(),
        }
    }
}

#[async_trait]
impl Forge for RoutedForge {
    async fn ensure_open_pr(
        &self,
        repo: &ForgeRepo,
        branch: &str,
        title: &str,
        body: &str,
    ) -> Result<PrState, ClientError> {
        self.of(repo)
            .ensure_open_pr(repo, branch, title, body)
            .await
    }

    async fn merge_pr(
        &self,
        repo: &ForgeRepo,
        number: u64,
        head_sha: &str,
    ) -> Result<MergeOutcome, ClientError> {
        self.of(repo).merge_pr(repo, number, head_sha).await
    }

    async fn sha_in_main(&self, repo: &ForgeRepo, sha: &str) -> Result<bool, ClientError> {
        self.of(repo).sha_in_main(repo, sha).await
    }

    async fn delete_branch(&self, repo: &ForgeRepo, branch: &str) -> Result<(), ClientError> {
        self.of(repo).delete_branch(repo, branch).await
    }

    async fn merged_pr_of(
        &self,
        repo: &ForgeRepo,
        branch: &str,
    ) -> Result<Option<Value>, ClientError> {
        self.of(repo).merged_pr_of(repo, branch).await
    }
}
