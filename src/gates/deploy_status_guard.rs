//! F-05 (seed 004, ORCH-094): before "Awaiting Deploy", "Deploying" or
//! "Monitoring after Deploy" is set, decide whether that status is still
//! legitimate. A stale or duplicate caller must not re-stamp an intermediate
//! status over a terminal Done forever.
//!
//! - ALLOW: the task is not terminal, or it is done and its post-deploy
//!   window is still open (Monitoring is legitimate then);
//! - CONVERGE_DONE: done and the window closed → set Done instead (a repeat
//!   is harmless: setting the same state again changes nothing);
//! - SUPPRESS: cancelled → set nothing.

use serde::Serialize;

use crate::db::Db;
use crate::db::history;
use crate::db::now_ms;
use crate::db::tasks::{self, TaskRow};
use crate::domain::Stage;

/// The status keys the guard stands in front of.
pub const GUARDED: [&str; 3] = ["awaiting_deploy", "deploying", "monitoring"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Verdict {
    Allow,
    ConvergeDone,
    Suppress,
}

pub fn is_guarded(status_key: &str) -> bool {
    GUARDED.contains(&status_key)
}

/// The pure decision over the task's stage and its post-deploy window.
pub fn decide(stage: Stage, window_active: bool) -> Verdict {
    match stage {
        Stage::Cancelled => Verdict::Suppress,
        Stage::Done if window_active => Verdict::Allow,
        Stage::Done => Verdict::ConvergeDone,
        _ => Verdict::Allow,
    }
}

/// Is the post-deploy window of a done task open? The window the deploy
/// finalizer armed (F-24, `tasks.post_deploy_until`) decides; a task without
/// one (never armed, or closed by the monitor) falls back to: did it become
/// done less than `window_s` ago?
pub async fn window_active(db: &Db, task: &TaskRow, window_s: u64) -> bool {
    if task.stage != Stage::Done {
        return false;
    }
    match crate::db::deploys::post_deploy_until(db.reader(), task.id).await {
        Ok(Some(until)) => return now_ms() < until,
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(work_item = %task.work_item, error = %e, "deploy status guard: cannot read the post-deploy window; using the stage history");
        }
    }
    match history::for_task(db.reader(), task.id).await {
        Ok(rows) => rows
            .iter()
            .rev()
            .find(|r| r.to_stage == Stage::Done)
            .is_some_and(|r| now_ms() - r.at < (window_s as i64).saturating_mul(1000)),
        Err(e) => {
            tracing::warn!(work_item = %task.work_item, error = %e, "deploy status guard: cannot read stage history; window taken as closed");
            false
        }
    }
}

/// Decide for a status write about `task` and log the one structured line
/// per verdict. The stage is re-read: the caller's snapshot may be the very
/// staleness this guard exists for. Returns the verdict; `target` is the
/// status key the caller wanted.
pub async fn check(db: &Db, task: &TaskRow, target: &str, caller: &str, window_s: u64) -> Verdict {
    let fresh = match tasks::get(db.reader(), task.id).await {
        Ok(Some(t)) => t,
        Ok(None) => task.clone(),
        Err(e) => {
            tracing::warn!(work_item = %task.work_item, error = %e, "deploy status guard: cannot re-read the task; using the caller's view");
            task.clone()
        }
    };
    let window = window_active(db, &fresh, window_s).await;
    let verdict = decide(fresh.stage, window);
    tracing::info!(
        guard = "deploy_status",
        work_item = %fresh.work_item,
        caller,
        target,
        stage = %fresh.stage,
        window_active = window,
        verdict = ?verdict,
        "deploy status guard verdict"
    );
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verdict_table() {
        for s in Stage::ALL {
            for w in [false, true] {
                let v = decide(s, w);
                let want = match s {
                    Stage::Cancelled => Verdict::Suppress,
                    Stage::Done if w => Verdict::Allow,
                    Stage::Done => Verdict::ConvergeDone,
                    _ => Verdict::Allow,
                };
                assert_eq!(v, want, "{s} window={w}");
            }
        }
        assert!(is_guarded("monitoring") && !is_guarded("done"));
    }
}
