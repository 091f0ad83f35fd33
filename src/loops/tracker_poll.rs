//! The reconciler's tracker poll (F-16): neither Plane nor Gitea retries a
//! webhook reliably, so the status a person set may never arrive. Each pass
//! reads the tracker status of every active task and hands a person's input
//! that the task has not acted on to the same status handler a webhook uses.
//!
//! Only inputs whose handling is idempotent are polled: Approved, STOP and
//! Confirm Deploy (a second hand-over changes nothing). Rejected and In
//! Progress after Needs Input relaunch the analyst; a poll cannot tell a new
//! Rejected from one already handled, so those are left to their webhooks.
//!
//! The same read converges a status that disagrees with the stage (a lost
//! or failed status write, someone moving the card): when the tracker shows
//! one of OUR output statuses that does not belong to the task's stage
//! (`status::status_drifted`; a sub-state like In Review in analysis does),
//! the stage's own status is set again through `Pipeline::set_status`, so
//! the write guard and the deploy status guard apply and the webhook echo
//! is ignored like any of our writes. A person's input is never
//! overwritten. At most one write per task per pass; held tasks, tasks with
//! a pending STOP and tasks whose transition lease is live are left alone
//! (the holder's move shows its own status).

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};

use crate::agents::runtime::Runtime;
use crate::db::leases;
use crate::db::tasks::{self, TERMINAL_SQL, TaskRow};
use crate::domain::Stage;
use crate::pipeline::status::{Handled, StatusChange, status_drifted};

/// The caller name of the reconciler's status writes (guard log lines).
const RESYNC: &str = "reconciler";

#[derive(Debug, Default)]
pub struct PollStats {
    pub polled: AtomicU64,
    pub handed_over: AtomicU64,
    pub errors: AtomicU64,
    /// Our status set again because the tracker showed another of ours.
    pub resynced: AtomicU64,
    /// A drifted status left for later: the task's transition lease is live.
    pub resync_deferred: AtomicU64,
}

impl PollStats {
    pub fn snapshot(&self) -> Value {
        json!({
            "polled": self.polled.load(Ordering::Relaxed),
            "missed_statuses_handled": self.handed_over.load(Ordering::Relaxed),
            "tracker_errors": self.errors.load(Ordering::Relaxed),
            "status_resynced": self.resynced.load(Ordering::Relaxed),
            "status_resync_deferred": self.resync_deferred.load(Ordering::Relaxed),
        })
    }
}

/// Would the task act on this input now? (A stale input is not handed over.)
fn actionable(task: &TaskRow, status: &str) -> bool {
    match status {
        "approved" => task.stage == Stage::Analysis && task.approved_at.is_none(),
        "confirm_deploy" => task.stage == Stage::Deploy && task.deploy_confirmed_at.is_none(),
        "stop" => task.cancel_requested_at.is_none(),
        _ => false,
    }
}

pub async fn tick(rt: &Runtime, stats: &PollStats) -> anyhow::Result<()> {
    let sql = format!(
        "SELECT * FROM tasks WHERE stage NOT IN {TERMINAL_SQL} AND plane_issue_id IS NOT NULL"
    );
    let active: Vec<TaskRow> = sqlx::query_as(&sql).fetch_all(rt.db.reader()).await?;
    for task in active {
        let Some(item) = rt.pipeline.tracker_ref(&task) else {
            continue;
        };
        stats.polled.fetch_add(1, Ordering::Relaxed);
        let status = match rt.pipeline.tracker.current_status(&item).await {
            Ok(Some(s)) => s,
            Ok(None) => continue,
            Err(e) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(work_item = %task.work_item, error = %e, "tracker status not readable");
                continue;
            }
        };
        if !actionable(&task, &status) {
            if status_drifted(task.stage, &status) {
                resync(rt, stats, &task, &status).await?;
            } else if task.stage == Stage::Deploy && status == "deploying" {
                not_deploying(rt, stats, &task).await?;
            }
            continue;
        }
        tracing::warn!(work_item = %task.work_item, status, "a status change arrived without its webhook: handling it");
        let change = StatusChange {
            project: task.project.clone(),
            issue_id: item.issue_id.clone(),
            work_item: task.work_item.clone(),
            title: task.title.clone(),
            description: task.description.clone(),
            status: status.clone(),
            old_status: None,
        };
        match rt.pipeline.on_status(&change).await? {
            Handled::Done(m) => {
                stats.handed_over.fetch_add(1, Ordering::Relaxed);
                tracing::info!(work_item = %task.work_item, "missed status handled: {m}");
            }
            other => tracing::info!(work_item = %task.work_item, "missed status: {other}"),
        }
    }
    Ok(())
}

/// Deploying is true only while the finalizer works on the task. A task
/// held at deploy (its merge or deploy failed, or its outcome is unknown)
/// or whose finalizer never ran (a crash right after the status write)
/// shows Awaiting Deploy again, so the person sees the decision is theirs.
/// Held tasks included: the hold is exactly when this matters.
async fn not_deploying(rt: &Runtime, stats: &PollStats, task: &TaskRow) -> anyhow::Result<()> {
    let job = crate::db::jobs::active_for_task(rt.db.reader(), task.id).await?;
    let live_lease = match leases::get(rt.db.reader(), task.id).await? {
        Some(l) => rt.pipeline.engine.boot().is_live(&l),
        None => false,
    };
    if job.is_some() || live_lease {
        return Ok(());
    }
    match rt
        .pipeline
        .set_status(task, "awaiting_deploy", RESYNC)
        .await
    {
        Ok(()) => {
            stats.resynced.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(work_item = %task.work_item, hold = ?task.hold_reason, "tracker showed Deploying with no deploy under way: Awaiting Deploy again");
        }
        Err(e) => {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(work_item = %task.work_item, error = %e, "Awaiting Deploy not set; retried next pass");
        }
    }
    Ok(())
}

/// Set the stage's own status again over a drifted one of ours (F-16).
async fn resync(
    rt: &Runtime,
    stats: &PollStats,
    seen: &TaskRow,
    shown: &str,
) -> anyhow::Result<()> {
    if let Some(lease) = leases::get(rt.db.reader(), seen.id).await?
        && rt.pipeline.engine.boot().is_live(&lease)
    {
        stats.resync_deferred.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(work_item = %seen.work_item, shown, holder = %lease.actor, "status drift: deferred to the lease holder");
        return Ok(());
    }
    // Re-read: a move since this pass read the task shows its own status.
    let Some(task) = tasks::get(rt.db.reader(), seen.id).await? else {
        return Ok(());
    };
    if task.stage_version != seen.stage_version
        || task.hold_reason.is_some()
        || task.cancel_requested_at.is_some()
        || !status_drifted(task.stage, shown)
    {
        return Ok(());
    }
    let key = task.stage.spec().plane_status;
    match rt.pipeline.set_status(&task, key, RESYNC).await {
        Ok(()) => {
            stats.resynced.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(work_item = %task.work_item, stage = %task.stage, shown, status = key, "tracker status disagreed with the stage: set it again");
        }
        Err(e) => {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(work_item = %task.work_item, stage = %task.stage, shown, status = key, error = %e, "tracker status disagrees with the stage and could not be set; retried next pass");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(stage: Stage) -> TaskRow {
        TaskRow {
            id: 1,
            work_item: "DEMO-1".into(),
            plane_issue_id: Some("i".into()),
            project: "demo".into(),
            title: String::new(),
            description: String::new(),
            stage,
            stage_version: 1,
            branch: None,
            worktree: None,
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

    #[test]
    fn only_unhandled_idempotent_inputs_are_handed_over() {
        assert!(actionable(&task(Stage::Analysis), "approved"));
        let mut approved = task(Stage::Analysis);
        approved.approved_at = Some(1);
        assert!(!actionable(&approved, "approved"), "already handled");
        assert!(!actionable(&task(Stage::Development), "approved"), "stale");
        assert!(actionable(&task(Stage::Deploy), "confirm_deploy"));
        assert!(actionable(&task(Stage::Review), "stop"));
        assert!(
            !actionable(&task(Stage::Analysis), "rejected"),
            "relaunches are not polled"
        );
        assert!(!actionable(&task(Stage::Analysis), "in_progress"));
    }
}
