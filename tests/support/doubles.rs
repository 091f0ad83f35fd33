//! In-process doubles of the Tracker and Forge ports, for tests of the
//! agent runtime (the HTTP doubles of Plane and Gitea test the adapters).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use orchestrator::clients::{
    ClientError, Forge, ForgeRepo, MergeOutcome, PrState, Tracker, TrackerRef,
};

/// Records every status and comment per work item.
#[derive(Default)]
pub struct RecordingTracker {
    pub statuses: Mutex<BTreeMap<String, Vec<String>>>,
    /// (idempotency key, html) per work item; a repeated key is ignored.
    pub comments: Mutex<BTreeMap<String, Vec<(String, String)>>>,
}

impl RecordingTracker {
    pub fn statuses_of(&self, wi: &str) -> Vec<String> {
        self.statuses
            .lock()
            .unwrap()
            .get(wi)
            .cloned()
            .unwrap_or_default()
    }
    pub fn comment_keys(&self, wi: &str) -> Vec<String> {
        self.comments
            .lock()
            .unwrap()
            .get(wi)
            .map(|v| v.iter().map(|(k, _)| k.clone()).collect())
            .unwrap_or_default()
    }
    pub fn comments_of(&self, wi: &str) -> Vec<(String, String)> {
        self.comments
            .lock()
            .unwrap()
            .get(wi)
            .cloned()
            .unwrap_or_default()
    }
}

#[async_trait]
impl Tracker for RecordingTracker {
    async fn set_status(&self, item: &TrackerRef, status_key: &str) -> Result<(), ClientError> {
        self.statuses
            .lock()
            .unwrap()
            .entry(item.work_item.clone())
            .or_default()
            .push(status_key.to_string());
        Ok(())
    }
    async fn add_comment(
        &self,
        item: &TrackerRef,
        key: &str,
        html: &str,
    ) -> Result<(), ClientError> {
        let mut c = self.comments.lock().unwrap();
        let list = c.entry(item.work_item.clone()).or_default();
        if !list.iter().any(|(k, _)| k == key) {
            list.push((key.to_string(), html.to_string()));
        }
        Ok(())
    }
    async fn latest_comment(&self, item: &TrackerRef) -> Result<Option<String>, ClientError> {
        Ok(self
            .comments
            .lock()
            .unwrap()
            .get(&item.work_item)
            .and_then(|v| v.last().map(|(_, h)| h.clone())))
    }
    async fn current_status(&self, item: &TrackerRef) -> Result<Option<String>, ClientError> {
        Ok(self
            .statuses
            .lock()
            .unwrap()
            .get(&item.work_item)
            .and_then(|v| v.last().cloned()))
    }
}

/// Opens one PR per branch and remembers it; merges nothing.
#[derive(Default)]
pub struct RecordingForge {
    pub prs: Mutex<BTreeMap<String, u64>>,
}

#[async_trait]
impl Forge for RecordingForge {
    async fn ensure_open_pr(
        &self,
        _: &ForgeRepo,
        branch: &str,
        _: &str,
        _: &str,
    ) -> Result<PrState, ClientError> {
        let mut prs = self.prs.lock().unwrap();
        let n = prs.len() as u64 + 1;
        let number = *prs.entry(branch.to_string()).or_insert(n);
        Ok(PrState::Open { number })
    }
    async fn merge_pr(
        &self,
        _: &ForgeRepo,
        _: u64,
        sha: &str,
    ) -> Result<MergeOutcome, ClientError> {
        Ok(MergeOutcome::Merged {
            sha: sha.to_string(),
        })
    }
    async fn sha_in_main(&self, _: &ForgeRepo, _: &str) -> Result<bool, ClientError> {
        Ok(false)
    }
    async fn delete_branch(&self, _: &ForgeRepo, _: &str) -> Result<(), ClientError> {
        Ok(())
    }
}
