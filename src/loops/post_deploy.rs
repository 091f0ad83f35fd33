//! The post-deploy monitor (F-24, seed 004): ticks through the window the
//! deploy finalizer armed (`tasks.post_deploy_until`).
//!
//! - done, window open → the tracker shows "Monitoring after Deploy" (set
//!   again when something else changed it);
//! - done, window closed → "Monitoring" is asked for once more and the
//!   deploy status guard (F-05) converges it to Done (CONVERGE_DONE); the
//!   marker is cleared only after that write, so a tracker outage retries;
//! - cancelled meanwhile → no tracker write at all (ORCH-094 D4); the marker
//!   is dropped so the task is not scanned again;
//! - a task that reached done through deploy but was never armed (a crash
//!   between the stage write and the arming) is adopted with the window it
//!   should have had;
//! - a deploy-path transition that stopped between two effects (a crash
//!   after `merge_pr` was recorded, before `prod_deploy` was planned) is
//!   carried to its end: the engine completes a journaled intent. The first
//!   tick runs at start-up, right after recovery;
//! - the deploy markers of committed transitions older than a day are
//!   removed (`effects::markers`, counted in `markers_removed`).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::SystemTime;

use async_trait::async_trait;
use serde_json::{Value, json};

use crate::db::tasks;
use crate::db::{deploys, now_ms};
use crate::domain::Stage;
use crate::effects::markers;
use crate::pipeline::Pipeline;
use crate::status::StatusBlock;

/// The actor name of the monitor's status writes.
pub const ACTOR: &str = "post-deploy-monitor";

#[derive(Debug, Default)]
pub struct PostDeployStats {
    pub ticks: AtomicU64,
    pub last_tick_ms: AtomicI64,
    /// Windows open at the last tick.
    pub monitoring: AtomicU64,
    pub closed: AtomicU64,
    pub adopted: AtomicU64,
    pub skipped_cancelled: AtomicU64,
    pub status_errors: AtomicU64,
    /// Interrupted deploy-path transitions carried forward.
    pub resumed: AtomicU64,
    /// Deploy markers of committed transitions removed (`effects::markers`).
    pub markers_removed: AtomicU64,
}

#[async_trait]
impl StatusBlock for PostDeployStats {
    fn name(&self) -> &'static str {
        "post_deploy"
    }
    async fn snapshot(&self) -> Value {
        json!({
            "ticks": self.ticks.load(Ordering::Relaxed),
            "last_tick_ms": self.last_tick_ms.load(Ordering::Relaxed),
            "monitoring": self.monitoring.load(Ordering::Relaxed),
            "closed": self.closed.load(Ordering::Relaxed),
            "adopted": self.adopted.load(Ordering::Relaxed),
            "skipped_cancelled": self.skipped_cancelled.load(Ordering::Relaxed),
            "status_errors": self.status_errors.load(Ordering::Relaxed),
            "resumed": self.resumed.load(Ordering::Relaxed),
            "markers_removed": self.markers_removed.load(Ordering::Relaxed),
        })
    }
}

/// One pass. Errors of one task's tracker write are counted and retried at
/// the next tick; database errors end the tick (the supervisor logs them).
pub async fn tick(p: &Pipeline, stats: &PostDeployStats) -> anyhow::Result<()> {
    for id in deploys::interrupted_transitions(p.db.reader()).await? {
        // The engine's rule: a journaled intent at this version is
        // completed, by the finalizer job (effects never run in a tick).
        let Some(task) = tasks::get(p.db.reader(), id).await? else {
            continue;
        };
        if let crate::db::jobs::Enqueued::New(job) = p.queue_finalizer(id, task.stage).await? {
            stats.resumed.fetch_add(1, Ordering::Relaxed);
            tracing::info!(work_item = %task.work_item, job, "interrupted deploy-path transition: finalizer queued");
        }
    }
    let now = now_ms();
    let window_ms = (p.settings.post_deploy_window_s as i64).saturating_mul(1000);
    for (id, done_at) in deploys::unarmed_deploys(p.db.reader(), now - window_ms).await? {
        if deploys::arm_post_deploy(p.db.writer(), id, done_at + window_ms).await? {
            stats.adopted.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                task_id = id,
                "post-deploy window adopted: it was never armed"
            );
        }
    }
    let mut open = 0;
    for (id, until) in deploys::armed(p.db.reader()).await? {
        let Some(task) = tasks::get(p.db.reader(), id).await? else {
            continue;
        };
        match task.stage {
            Stage::Done if now < until => {
                open += 1;
                if !shows_monitoring(p, &task).await
                    && let Err(e) = p.set_status(&task, "monitoring", ACTOR).await
                {
                    stats.status_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(work_item = %task.work_item, error = %e, "Monitoring after Deploy not set");
                }
            }
            Stage::Done => match p.set_status(&task, "monitoring", ACTOR).await {
                // The guard turned it into Done: the window is closed.
                Ok(()) => {
                    deploys::close_post_deploy(p.db.writer(), id).await?;
                    stats.closed.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(work_item = %task.work_item, "post-deploy window closed: Done");
                }
                Err(e) => {
                    stats.status_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(work_item = %task.work_item, error = %e, "Done not set; retried at the next tick");
                }
            },
            Stage::Cancelled => {
                // A zombie tick: no status PATCH, nothing re-queued.
                deploys::close_post_deploy(p.db.writer(), id).await?;
                stats.skipped_cancelled.fetch_add(1, Ordering::Relaxed);
                tracing::info!(work_item = %task.work_item, "post-deploy tick: task cancelled, nothing to do");
            }
            other => {
                // Armed only at done; nothing moves a task out of done.
                tracing::warn!(work_item = %task.work_item, stage = %other, "post-deploy window on a task that is not done; left alone");
            }
        }
    }
    stats.monitoring.store(open, Ordering::Relaxed);
    let swept = markers::sweep(&p.settings, &p.db, SystemTime::now(), markers::MIN_AGE).await;
    stats
        .markers_removed
        .fetch_add(swept.removed, Ordering::Relaxed);
    stats.ticks.fetch_add(1, Ordering::Relaxed);
    stats.last_tick_ms.store(now_ms(), Ordering::Relaxed);
    Ok(())
}

/// Does the tracker already show Monitoring? Unknown (no tracker ref, a
/// read error) counts as no: setting it again is harmless.
async fn shows_monitoring(p: &Pipeline, task: &tasks::TaskRow) -> bool {
    let Some(item) = p.tracker_ref(task) else {
        return true;
    };
    matches!(p.tracker.current_status(&item).await, Ok(Some(s)) if s == "monitoring")
}
