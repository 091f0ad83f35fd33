//! The worker (F-11): each tick starts queued jobs within the global and
//! per-project concurrency limits, skipping tasks that wait on dependencies
//! (F-17), and hands each started job to a monitor task.

use std::collections::HashMap;

use crate::agents::monitor;
use crate::agents::runtime::Runtime;
use crate::db::{jobs, merge_lease};
use crate::gates::merge_gate;
use crate::loops::finalizer;

/// Start what fits. Returns the ids of the jobs started.
pub async fn tick(rt: &Runtime) -> anyhow::Result<Vec<i64>> {
    let mut running: HashMap<String, u64> =
        jobs::running_per_project(rt.db.reader(), finalizer::ROLE)
            .await?
            .into_iter()
            .map(|(p, n)| (p, n as u64))
            .collect();
    let mut total: u64 = running.values().sum();
    let global = rt.settings.max_concurrent_jobs;
    let per_project = rt.settings.max_concurrent_jobs_per_project;
    let mut started = Vec::new();
    // B-13: a graceful stop takes no new work.
    if rt.pipeline.engine.drain().is_draining() {
        return Ok(started);
    }
    for c in jobs::candidates(rt.db.reader(), 200).await? {
        if c.task_stage != c.job.stage || c.task_stage.is_terminal() {
            // The task moved on (a rollback, a cancel): this job is stale.
            jobs::transition(
                rt.db.writer(),
                c.job.id,
                "queued",
                "cancelled",
                Some("the task moved on"),
            )
            .await?;
            continue;
        }
        // A finalizer is a person's decision (or a transition a crash cut
        // short) waiting on effects, not agent work: the agent limits do
        // not hold it back, and it does not count against them.
        let finalizer = c.job.role == finalizer::ROLE;
        if total >= global && !finalizer {
            continue;
        }
        let n = running.entry(c.project.clone()).or_default();
        if *n >= per_project && !finalizer {
            continue;
        }
        if c.job.role == merge_gate::ROLE
            && merge_lease::holder(rt.db.reader(), &c.project)
                .await?
                .is_some_and(|t| t != c.job.task_id)
        {
            // F-17: another task holds the project's merge lease.
            continue;
        }
        if !jobs::start(rt.db.writer(), c.job.id, &rt.boot_id, rt.clock.now_ms()).await? {
            continue;
        }
        if !finalizer {
            *n += 1;
            total += 1;
        }
        started.push(c.job.id);
        let mut job = c.job;
        job.status = "running".into();
        job.boot_id = Some(rt.boot_id.clone());
        tracing::info!(job = job.id, role = %job.role, stage = %job.stage, project = %c.project, "job started");
        if job.role == merge_gate::ROLE {
            tokio::spawn(merge_gate::run(rt.clone(), rt.merge_gate.clone(), job));
        } else if finalizer {
            tokio::spawn(finalizer::run(rt.pipeline.clone(), job));
        } else {
            tokio::spawn(monitor::run_job(rt.clone(), job));
        }
    }
    Ok(started)
}
