//! The reaper (F-15).
//! - Tier 2: a job whose exit code has been recorded for at least
//!   `reaper_finalize_grace_s` is finalized (the grace covers a live
//!   monitor's push/PR/comments window). Claim before act: only the actor
//!   that claims the job row decides; a loser does nothing.
//! - Tier 3: a job running longer than `reaper_max_running_s` is killed
//!   with its whole process group, failed, and its transition lease
//!   force-released, whatever its liveness markers say.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};

use crate::agents::monitor;
use crate::agents::runtime::Runtime;
use crate::db::{jobs, tasks};
use crate::stage_engine::ForceRelease;
use crate::status::StatusBlock;

#[derive(Debug, Default)]
pub struct ReaperStats {
    pub ticks: AtomicU64,
    pub last_tick_ms: AtomicI64,
    pub tier2_reaped: AtomicU64,
    pub tier3_killed: AtomicU64,
}

#[async_trait]
impl StatusBlock for ReaperStats {
    fn name(&self) -> &'static str {
        "reaper"
    }
    async fn snapshot(&self) -> Value {
        json!({
            "ticks": self.ticks.load(Ordering::Relaxed),
            "last_tick_ms": self.last_tick_ms.load(Ordering::Relaxed),
            "tier2_reaped": self.tier2_reaped.load(Ordering::Relaxed),
            "tier3_killed": self.tier3_killed.load(Ordering::Relaxed),
        })
    }
}

pub async fn tick(rt: &Runtime, stats: &Arc<ReaperStats>) -> anyhow::Result<()> {
    let now = rt.clock.now_ms();
    let ceiling_ms = rt.settings.reaper_max_running_s as i64 * 1000;
    let grace_ms = rt.settings.reaper_finalize_grace_s as i64 * 1000;

    for job in jobs::running_since(rt.db.reader(), now - ceiling_ms).await? {
        // A finalizer's effect has its own bound (ORCH_DEPLOY_TIMEOUT_S) and
        // its own adoption: a ceiling must not fence a deploy mid-way.
        if job.role == super::finalizer::ROLE {
            continue;
        }
        if tier3(rt, &job).await? {
            stats.tier3_killed.fetch_add(1, Ordering::Relaxed);
        }
    }
    for job in jobs::finished_unclaimed(rt.db.reader(), now - grace_ms).await? {
        if monitor::complete(rt, job.id, "reaper").await? {
            stats.tier2_reaped.fetch_add(1, Ordering::Relaxed);
            tracing::info!(job = job.id, "tier 2: reaped a finished job");
        }
    }
    stats.ticks.fetch_add(1, Ordering::Relaxed);
    stats.last_tick_ms.store(now, Ordering::Relaxed);
    Ok(())
}

async fn tier3(rt: &Runtime, job: &jobs::JobRow) -> anyhow::Result<bool> {
    let why = format!(
        "tier 3: running longer than {}s",
        rt.settings.reaper_max_running_s
    );
    if let Some(group) = job.group() {
        // Only the group we started: a reused id is left alone.
        let kill = group
            .kill(Duration::from_secs(rt.settings.agent_kill_grace_s))
            .await;
        tracing::info!(
            job = job.id,
            pgid = group.pgid,
            ?kill,
            "tier 3: process group"
        );
    }
    if !jobs::transition(rt.db.writer(), job.id, "running", "failed", Some(&why)).await? {
        return Ok(false);
    }
    let wi = tasks::get(rt.db.reader(), job.task_id)
        .await?
        .map(|t| t.work_item)
        .unwrap_or_default();
    if let ForceRelease::Released(row) = rt
        .pipeline
        .engine
        .force_release(&wi, "reaper (tier 3)")
        .await?
    {
        tracing::warn!(work_item = %wi, actor = %row.actor, "tier 3 force-released the transition lease");
    }
    tracing::warn!(job = job.id, work_item = %wi, "{why}: group killed, job failed");
    rt.alert(
        "reaper_tier3",
        &wi,
        format!("{wi}: {} job {} killed ({why})", job.role, job.id),
    )
    .await;
    monitor::retry_or_hold(rt, job, &why).await;
    Ok(true)
}
