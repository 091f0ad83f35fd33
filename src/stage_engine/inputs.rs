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
use crate::untrusted;

#[async_trait]
pub trait GateInputs: Send + Sync {
    async fn load(&self, task: &TaskRow) -> GateInput;
}

/// The artifact dir of a work item inside its worktree (agent contract).
pub fn artifact_dir(worktree: &Path, work_item: &str) -> PathBuf {
    worktree.join("docs").join("work-items").join(work_item)
}

/// Reads `docs/work-items/<work item>/` of the task's worktree with the
/// default cap ([`untrusted::DEFAULT_MAX_BYTES`]); the daemon's inputs
/// ([`WorkspaceInputs`]) use `ORCH_ARTIFACT_MAX_BYTES`.
#[derive(Debug, Default, Clone)]
pub struct FsArtifacts;

/// The artifact dir relative to the worktree (the trusted root of its read).
pub fn artifact_rel(work_item: &str) -> PathBuf {
    Path::new("docs").join("work-items").join(work_item)
}

fn is_markdown(key: &str) -> bool {
    key.ends_with(".md")
}

/// The artifact files of a work item and the entries refused on the way
/// (invariant 8): read as untrusted input, regular `.md` files only, no
/// symlink followed below the worktree, each at most `max_bytes`, off the
/// runtime under a timeout. A missing dir is no artifact yet; a dir that
/// cannot be read (a symlink on its way, a timeout) is refused as `.`.
pub async fn read_artifacts(
    worktree: &Path,
    work_item: &str,
    max_bytes: u64,
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let limits = untrusted::Limits::artifacts(max_bytes);
    match untrusted::read_tree(worktree, &artifact_rel(work_item), limits, is_markdown).await {
        Ok(tree) => {
            let refused: BTreeMap<String, String> = tree
                .refused
                .into_iter()
                .map(|(k, e)| (k, e.to_string()))
                .collect();
            if !refused.is_empty() {
                tracing::warn!(work_item, ?refused, "artifacts refused");
            }
            (tree.files, refused)
        }
        Err(e) if e.is_not_found() => Default::default(),
        Err(e) => {
            tracing::warn!(work_item, error = %e, "artifact dir refused");
            (
                BTreeMap::new(),
                BTreeMap::from([(".".to_string(), e.to_string())]),
            )
        }
    }
}

/// A task's gate input: its artifacts (each at most `max_bytes`) and the
/// human answers recorded on its row.
pub async fn load_artifacts(task: &TaskRow, max_bytes: u64) -> GateInput {
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
        (input.artifacts, input.refused) =
            read_artifacts(Path::new(wt), &task.work_item, max_bytes).await;
    }
    input
}

#[async_trait]
impl GateInputs for FsArtifacts {
    async fn load(&self, task: &TaskRow) -> GateInput {
        load_artifacts(task, untrusted::DEFAULT_MAX_BYTES).await
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
        let mut input = load_artifacts(task, self.settings.artifact_max_bytes).await;
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
        let mut task = task_in(wt.path());
        task.approved_at = Some(1);
        let input = FsArtifacts.load(&task).await;
        assert!(input.approved && !input.deploy_confirmed);
        let keys: Vec<_> = input.artifacts.keys().cloned().collect();
        assert_eq!(keys, vec!["01-brd.md", "06-adr/ADR-001-x.md"]);
        assert!(input.refused.is_empty(), "{:?}", input.refused);
    }

    #[tokio::test]
    async fn hostile_artifacts_are_refused_with_the_file_named() {
        let wt = tempfile::tempdir().unwrap();
        let task = task_in(wt.path());
        // Nothing written yet: no artifact, nothing refused.
        let input = FsArtifacts.load(&task).await;
        assert!(input.artifacts.is_empty() && input.refused.is_empty());
        let dir = artifact_dir(wt.path(), "DEMO-1");
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink("/dev/zero", dir.join("01-brd.md")).unwrap();
        let input = FsArtifacts.load(&task).await;
        assert!(input.artifacts.is_empty());
        assert!(
            input.refused["01-brd.md"].contains("docs/work-items/DEMO-1/01-brd.md is a symlink"),
            "{:?}",
            input.refused
        );
        // The cap comes from the caller (ORCH_ARTIFACT_MAX_BYTES).
        std::fs::remove_file(dir.join("01-brd.md")).unwrap();
        std::fs::write(dir.join("01-brd.md"), "status: READY\n").unwrap();
        let small = load_artifacts(&task, 4).await;
        assert!(small.refused["01-brd.md"].contains("is larger than 4 bytes"));
        // A symlink on the way to the artifact dir refuses the dir itself.
        std::fs::remove_dir_all(wt.path().join("docs")).unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), wt.path().join("docs")).unwrap();
        let input = FsArtifacts.load(&task).await;
        assert!(
            input.refused["."].contains("docs is a symlink"),
            "{:?}",
            input.refused
        );
    }

    fn task_in(wt: &Path) -> TaskRow {
        TaskRow {
            id: 1,
            work_item: "DEMO-1".into(),
            plane_issue_id: None,
            project: "demo".into(),
            title: String::new(),
            description: String::new(),
            stage: crate::domain::Stage::Analysis,
            stage_version: 1,
            branch: None,
            worktree: Some(wt.to_string_lossy().into()),
            approved_at: None,
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
        }
    }
}
