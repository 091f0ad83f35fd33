//! Where gate inputs come from. The default reads the artifact dir of the
//! task's worktree and the human answers recorded on the task row; tests and
//! the simulation plug in their own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::config::Settings;
use crate::db::tasks::TaskRow;
use crate::domain::gates::MergeGate;
use crate::domain::{GateInput, Stage};
use crate::git::Workspace;

#[async_trait]
pub trait GateInputs: Send + Sync {
    async fn load(&self, task: &TaskRow) -> GateInput;
}

/// The artifact dir of a work item inside its worktree (agent contract).
pub fn artifact_dir(worktree: &Path, work_item: &str) -> PathBuf {
    worktree.join("docs").join("work-items").join(work_item)
}

/// Reads `docs/work-items/<work item>/` of the task's worktree.
#[derive(Debug, Default, Clone)]
pub struct FsArtifacts;

const MAX_ARTIFACT_BYTES: u64 = 1024 * 1024;

fn read_tree(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let Ok(meta) = e.metadata() else { continue };
        if meta.is_dir() {
            read_tree(root, &p, out);
        } else if meta.len() <= MAX_ARTIFACT_BYTES
            && p.extension().is_some_and(|x| x == "md")
            && let (Ok(rel), Ok(text)) = (p.strip_prefix(root), std::fs::read_to_string(&p))
        {
            out.insert(rel.to_string_lossy().replace('\\', "/"), text);
        }
    }
}

#[async_trait]
impl GateInputs for FsArtifacts {
    async fn load(&self, task: &TaskRow) -> GateInput {
        let mut input = GateInput {
            approved: task.approved_at.is_some(),
            deploy_confirmed: task.deploy_confirmed_at.is_some(),
            merge_gate: if task.merge_gate_version == Some(task.stage_version) {
                MergeGate::Passed
            } else {
                MergeGate::Pending
            },
            ..Default::default()
        };
        if let Some(wt) = &task.worktree {
            let dir = artifact_dir(Path::new(wt), &task.work_item);
            let artifacts = tokio::task::spawn_blocking(move || {
                let mut out = BTreeMap::new();
                read_tree(&dir, &dir, &mut out);
                out
            })
            .await
            .unwrap_or_default();
            input.artifacts = artifacts;
        }
        input
    }
}

/// The daemon's inputs: the artifact files, plus the branch diff for the
/// development gate (does the branch change code outside the artifact dir?).
pub struct WorkspaceInputs {
    pub settings: std::sync::Arc<Settings>,
    pub workspace: Workspace,
}

#[async_trait]
impl GateInputs for WorkspaceInputs {
    async fn load(&self, task: &TaskRow) -> GateInput {
        let mut input = FsArtifacts.load(task).await;
        if task.stage == Stage::Development
            && task.worktree.is_some()
            && let Some(p) = self.settings.project(&task.project)
        {
            // A git error leaves it unknown (pending), never "passed".
            input.code_changed = match self
                .workspace
                .changes_outside_artifacts(p, &task.work_item)
                .await
            {
                Ok(v) => Some(v),
                Err(e) => {
                    tracing::warn!(work_item = %task.work_item, error = %e, "branch diff unavailable");
                    None
                }
            };
        }
        input
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_nested_markdown_and_human_flags() {
        let wt = tempfile::tempdir().unwrap();
        let dir = artifact_dir(wt.path(), "DEMO-1");
        std::fs::create_dir_all(dir.join("06-adr")).unwrap();
        std::fs::write(dir.join("01-brd.md"), "status: READY").unwrap();
        std::fs::write(dir.join("06-adr/ADR-001-x.md"), "status: READY").unwrap();
        std::fs::write(dir.join("notes.txt"), "ignored").unwrap();
        let task = TaskRow {
            id: 1,
            work_item: "DEMO-1".into(),
            plane_issue_id: None,
            project: "demo".into(),
            title: String::new(),
            description: String::new(),
            stage: crate::domain::Stage::Analysis,
            stage_version: 1,
            branch: None,
            worktree: Some(wt.path().to_string_lossy().into()),
            approved_at: Some(1),
            deploy_confirmed_at: None,
            hold_reason: None,
            held_at: None,
            cancel_requested_at: None,
            cancel_requested_by: None,
            cancel_reason: None,
            cancel_notified_at: None,
            tombstoned_at: None,
            created_at: 0,
            updated_at: 0,
            merge_gate_version: None,
            validated_sha: None,
        };
        let input = FsArtifacts.load(&task).await;
        assert!(input.approved && !input.deploy_confirmed);
        let keys: Vec<_> = input.artifacts.keys().cloned().collect();
        assert_eq!(keys, vec!["01-brd.md", "06-adr/ADR-001-x.md"]);
    }
}
