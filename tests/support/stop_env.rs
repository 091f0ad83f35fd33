//! Helpers of the STOP tests (F-25): a harness with the daemon's effect
//! registry, seeded tasks with a real worktree and pushed branch, and the
//! checks every cancelled task must pass.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use orchestrator::clients::daemon_forge;
use orchestrator::db::tasks::{self, TaskRow};
use orchestrator::db::{jobs, merge_lease};
use orchestrator::domain::gates::STAGING_REPORT;
use orchestrator::domain::{GateInput, Stage};
use orchestrator::git::branch_name;
use orchestrator::pipeline::status::{Handled, StatusChange};
use orchestrator::stage_engine::{Effect, EffectCtx, EffectError, EffectResult, GateInputs};
use tokio::sync::Notify;

use super::runtime::Harness;

pub const NON_TERMINAL: [Stage; 8] = [
    Stage::Created,
    Stage::Analysis,
    Stage::Architecture,
    Stage::Development,
    Stage::Review,
    Stage::Testing,
    Stage::DeployStaging,
    Stage::Deploy,
];

/// A harness whose engine runs the daemon's effects: `delete_branch` is the
/// real one (git push --delete, or the forge when one is configured).
pub async fn harness(env: &[(&str, &str)]) -> Harness {
    Harness::with_engine(&["demo"], "", env, |b, s, db| {
        b.effects(orchestrator::effects::daemon_effects(
            s.clone(),
            db.clone(),
            daemon_forge(s),
        ))
    })
    .await
}

pub fn bare(h: &Harness) -> PathBuf {
    h.dir.path().join("demo.git")
}

/// The commit a branch of the bare remote points at, if the branch exists.
pub fn rev(bare: &Path, branch: &str) -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--verify", "--quiet"])
        .arg(format!("refs/heads/{branch}"))
        .current_dir(bare)
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A person's status change on the work item, through the real handler.
pub async fn status(h: &Harness, wi: &str, status: &str) -> Handled {
    let c = StatusChange {
        project: "demo".into(),
        issue_id: format!("issue-{wi}"),
        work_item: wi.into(),
        title: format!("Title of {wi}"),
        description: "Do the thing.".into(),
        status: status.into(),
        old_status: None,
    };
    h.rt.pipeline.on_status(&c).await.unwrap()
}

/// A task at `stage`; with `pushed`, its worktree is prepared and its branch
/// pushed to the remote with one commit (as a monitor's publish does).
pub async fn seed(h: &Harness, wi: &str, stage: Stage, pushed: bool) -> i64 {
    let id = h.task("demo", wi).await;
    if pushed {
        let project = h.rt.settings.project("demo").unwrap().clone();
        let wt = h.rt.workspace.prepare(&project, wi).await.unwrap();
        tasks::set_workspace(h.db.writer(), id, &branch_name(wi), wt.to_str().unwrap())
            .await
            .unwrap();
        std::fs::write(wt.join("work.txt"), format!("work of {wi}\n")).unwrap();
        h.rt.workspace
            .commit_and_push(&project, wi, &format!("{wi}: work"))
            .await
            .unwrap();
    }
    // Tests may seed a stage directly to set up a case (CLAUDE.md).
    sqlx::query("UPDATE tasks SET stage = ?, stage_version = 4 WHERE id = ?")
        .bind(stage)
        .bind(id)
        .execute(h.db.writer())
        .await
        .unwrap();
    id
}

pub async fn task(h: &Harness, id: i64) -> TaskRow {
    tasks::get(h.db.reader(), id).await.unwrap().unwrap()
}

/// (kind, state, result) of the task's journal rows.
pub async fn effects_of(h: &Harness, id: i64) -> Vec<(String, String, Option<String>)> {
    sqlx::query_as("SELECT kind, state, result FROM effects WHERE task_id = ? ORDER BY id")
        .bind(id)
        .fetch_all(h.db.reader())
        .await
        .unwrap()
}

pub async fn history(h: &Harness, id: i64) -> Vec<(String, String)> {
    sqlx::query_as("SELECT from_stage, to_stage FROM stage_history WHERE task_id = ? ORDER BY id")
        .bind(id)
        .fetch_all(h.db.reader())
        .await
        .unwrap()
}

pub fn stop_alerts(h: &Harness, wi: &str) -> usize {
    h.notifier
        .alerts()
        .iter()
        .filter(|a| a.kind == "stop" && a.work_item.as_deref() == Some(wi))
        .count()
}

pub fn stop_comments(h: &Harness, wi: &str) -> usize {
    h.tracker
        .comment_keys(wi)
        .iter()
        .filter(|k| k.starts_with("stop:"))
        .count()
}

/// Poll `cond` (ticking the worker) until it holds, or fail at the deadline.
pub async fn until<F, Fut>(h: &Harness, what: &str, cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    h.drive(what, 60, cond).await
}

/// What every cancelled task must look like.
pub async fn assert_cancelled_and_clean(h: &Harness, id: i64, wi: &str) {
    let t = task(h, id).await;
    assert_eq!(t.stage, Stage::Cancelled, "{wi}");
    assert!(t.tombstoned_at.is_some(), "{wi}: natural keys tombstoned");
    assert_eq!(
        (t.work_item.as_str(), t.plane_issue_id.as_deref()),
        (wi, Some(format!("issue-{wi}").as_str())),
        "{wi}: the tombstone keeps the original ids"
    );
    for j in jobs::for_task(h.db.reader(), id).await.unwrap() {
        assert!(
            matches!(j.status.as_str(), "cancelled" | "done" | "failed"),
            "{wi}: job {} left {}",
            j.id,
            j.status
        );
    }
    assert!(
        !h.rt.workspace.worktree_dir(wi).exists(),
        "{wi}: worktree removed"
    );
    assert_eq!(
        rev(&bare(h), &branch_name(wi)),
        None,
        "{wi}: remote branch deleted"
    );
    assert!(rev(&bare(h), "main").is_some(), "main survives");
    let delete: Vec<_> = effects_of(h, id)
        .await
        .into_iter()
        .filter(|(k, _, _)| k == "delete_branch")
        .collect();
    assert_eq!(delete.len(), 1, "{wi}: one delete_branch row: {delete:?}");
    assert_eq!(delete[0].1, "done", "{wi}: {delete:?}");
    assert_eq!(
        merge_lease::holder(h.db.reader(), "demo").await.unwrap(),
        None,
        "{wi}: no merge lease left"
    );
    assert_eq!(
        h.tracker.statuses_of(wi).last().map(String::as_str),
        Some("cancelled"),
        "{wi}: tracker shows Cancelled"
    );
}

/// An effect that blocks until released: holds the transition lease in the
/// middle of a journaled effect (a critical window).
pub struct Blocking {
    pub entered: Notify,
    pub release: Notify,
}

#[async_trait]
impl Effect for Blocking {
    async fn reconcile(&self, _: &EffectCtx) -> Result<Option<EffectResult>, EffectError> {
        Ok(None)
    }
    async fn apply(&self, _: &EffectCtx) -> Result<EffectResult, EffectError> {
        self.entered.notify_one();
        self.release.notified().await;
        Ok("ratcheted".into())
    }
}

/// Staging passed, for every task: the deploy-staging gate lets the
/// transition with effects start.
pub struct StagingPassed;

#[async_trait]
impl GateInputs for StagingPassed {
    async fn load(&self, _: &TaskRow) -> GateInput {
        GateInput {
            artifacts: [(
                STAGING_REPORT.to_string(),
                "staging_status: SUCCESS\n".to_string(),
            )]
            .into_iter()
            .collect(),
            ..Default::default()
        }
    }
}
