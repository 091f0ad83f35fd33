//! The reconciler (F-16): converges what a lost event or a crash left
//! inconsistent. Neither Plane nor Gitea retries reliably, and the daemon
//! can die between a stage write and the job it implies.
//! - a finished job whose stage did not advance → advance (the engine
//!   defers to a live lease);
//! - an active stage with no job since the task entered it → queue the job;
//! - STOP (F-25): a deferred cancel whose step ended without applying it →
//!   apply it; a cancelled task with jobs, agents, a worktree or a merge
//!   lease left → run the cancel cascade again (`Pipeline::sweep_cancels`);
//! - the tracker (`tracker_poll`): a person's status whose webhook never
//!   came → handle it; one of our statuses that disagrees with the stage →
//!   set the stage's status again (`status_resynced`);
//! - the forge (`forge_poll`, issue 11): a merged PR whose webhook never
//!   came → stored as that delivery for the intake to act on.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use async_trait::async_trait;
use serde_json::{Value, json};

use crate::agents::runtime::Runtime;
use crate::db::jobs;
use crate::db::tasks::{TERMINAL_SQL, TaskRow};
use crate::pipeline::job_role;
use crate::stage_engine::Outcome;
use crate::status::StatusBlock;

#[derive(Debug, Default)]
pub struct ReconcilerStats {
    pub ticks: AtomicU64,
    pub last_tick_ms: AtomicI64,
    pub advanced: AtomicU64,
    pub jobs_queued: AtomicU64,
    pub deferred: AtomicU64,
    /// The tracker poll for status changes whose webhook never came.
    pub poll: super::tracker_poll::PollStats,
    /// The forge poll for merged PRs whose webhook never came.
    pub forge: super::forge_poll::ForgePollStats,
}

#[async_trait]
impl StatusBlock for ReconcilerStats {
    fn name(&self) -> &'static str {
        "reconciler"
    }
    async fn snapshot(&self) -> Value {
        json!({
            "ticks": self.ticks.load(Ordering::Relaxed),
            "last_tick_ms": self.last_tick_ms.load(Ordering::Relaxed),
            "advanced": self.advanced.load(Ordering::Relaxed),
            "jobs_queued": self.jobs_queued.load(Ordering::Relaxed),
            "deferred_on_lease": self.deferred.load(Ordering::Relaxed),
            "status_resynced": self.poll.resynced.load(Ordering::Relaxed),
            "tracker_poll": self.poll.snapshot(),
            "forge_poll": self.forge.snapshot(),
        })
    }
}

/// When the task entered its current stage.
const ENTERED: &str =
    "COALESCE((SELECT MAX(h.at) FROM stage_history h WHERE h.task_id = t.id), t.created_at)";

pub async fn tick(rt: &Runtime, stats: &Arc<ReconcilerStats>) -> anyhow::Result<()> {
    // STOP first: a task it cancels needs no job queued below.
    rt.pipeline.sweep_cancels().await?;
    // A person's input whose webhook never came (F-16).
    super::tracker_poll::tick(rt, &stats.poll).await?;
    // A merged PR whose webhook never came (F-16, issue 11).
    super::forge_poll::tick(rt, &stats.forge).await?;
    // Finished job, stage not advanced.
    let sql = format!(
        "SELECT t.* FROM tasks t
         WHERE t.stage NOT IN {TERMINAL_SQL} AND t.hold_reason IS NULL
           AND NOT EXISTS (SELECT 1 FROM jobs a WHERE a.task_id = t.id AND a.status IN ('queued','running'))
           AND EXISTS (SELECT 1 FROM jobs j WHERE j.task_id = t.id AND j.stage = t.stage
                       AND (j.status = 'done' OR (j.status = 'failed' AND j.role = '{finalizer}'))
                       AND j.created_at >= {ENTERED})",
        // A finalizer that failed (a database error, a lost lease) left the
        // transition undone: it is queued again, as its alert promises.
        finalizer = crate::loops::finalizer::ROLE,
    );
    let stuck: Vec<TaskRow> = sqlx::query_as(&sql).fetch_all(rt.db.reader()).await?;
    for t in stuck {
        if crate::pipeline::exit_has_effects(t.stage) {
            // Irreversible effects never run inside a tick (B-13): the
            // finalizer job carries the transition on.
            let q = rt.pipeline.queue_finalizer(t.id, t.stage).await?;
            stats.jobs_queued.fetch_add(1, Ordering::Relaxed);
            tracing::info!(work_item = %t.work_item, job = q.id(), "reconciler queued the finalizer of a finished stage");
            continue;
        }
        match rt.pipeline.advance(t.id, "reconciler").await? {
            Outcome::Advanced { .. } | Outcome::RolledBack { .. } | Outcome::Cancelled { .. } => {
                stats.advanced.fetch_add(1, Ordering::Relaxed);
                tracing::info!(work_item = %t.work_item, "reconciler advanced a finished stage");
            }
            Outcome::LeaseBusy { .. } => {
                stats.deferred.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
    // Active stage with no job since the task entered it.
    let sql = format!(
        "SELECT t.* FROM tasks t
         WHERE t.stage NOT IN {TERMINAL_SQL} AND t.hold_reason IS NULL
           AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.task_id = t.id AND j.stage = t.stage
                           AND (j.status IN ('queued','running') OR j.created_at >= {ENTERED}))"
    );
    let idle: Vec<TaskRow> = sqlx::query_as(&sql).fetch_all(rt.db.reader()).await?;
    for t in idle {
        if t.stage == crate::domain::Stage::Created {
            // Not started yet: advancing it queues the analyst.
            rt.pipeline.advance(t.id, "reconciler").await?;
            continue;
        }
        let Some(role) = job_role(t.stage) else {
            continue;
        };
        let q = jobs::enqueue(&rt.db, t.id, t.stage, role, 1, "").await?;
        stats.jobs_queued.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(work_item = %t.work_item, stage = %t.stage, job = q.id(), "stage had no job: queued one");
    }
    stats.ticks.fetch_add(1, Ordering::Relaxed);
    stats
        .last_tick_ms
        .store(rt.clock.now_ms(), Ordering::Relaxed);
    Ok(())
}
