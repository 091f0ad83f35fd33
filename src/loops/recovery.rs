//! Start-up recovery of jobs a previous daemon was running
//! (`requeue_running_jobs`, F-11). For each:
//! - its run recorded an exit: finalize it now (the monitor that would have
//!   is gone with the old boot, so the reaper's grace protects nobody);
//! - its run ended while we were down (the wrapper wrote the exit file):
//!   record the exit, then finalize;
//! - its agent still runs: adopt it, wait for the end, finalize;
//! - otherwise the run was lost: put the job back in the queue.
//!
//! A finished stage is never run a second time.

use std::time::Duration;

use serde::Serialize;

use crate::agents::monitor;
use crate::agents::runtime::Runtime;
use crate::db::jobs::{self, JobRow};
use crate::db::{runs, tasks};
use crate::proc_group;

#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct Recovered {
    pub finalized: usize,
    pub adopted: usize,
    pub requeued: usize,
}

pub async fn requeue_running_jobs(rt: &Runtime) -> anyhow::Result<Recovered> {
    let mut out = Recovered::default();
    for job in jobs::running_of_other_boots(rt.db.reader(), &rt.boot_id).await? {
        let Some(task) = tasks::get(rt.db.reader(), job.task_id).await? else {
            continue;
        };
        let paths = rt.run_paths(&task.work_item, &job);
        let run = runs::latest_for_job(rt.db.reader(), job.id).await?;
        match run {
            Some(r) if r.exit_code.is_some() => {
                monitor::complete(rt, job.id, "recovery").await?;
                out.finalized += 1;
            }
            Some(r) => {
                if let Some(code) = paths.read_exit() {
                    monitor::finish_run(rt, &job, r.id, proc_group::Ended::Exited(code as i32))
                        .await?;
                    monitor::complete(rt, job.id, "recovery").await?;
                    out.finalized += 1;
                } else if let Some(group) = job
                    .group()
                    .filter(|g| g.check() == proc_group::Ownership::Ours)
                {
                    tracing::info!(job = job.id, pgid = group.pgid, work_item = %task.work_item, "adopting a running agent");
                    tokio::spawn(adopt(rt.clone(), job.clone(), r.id, group));
                    out.adopted += 1;
                } else {
                    // Gone, or its id names someone else's group now (a
                    // reboot, a reused pid): left alone, the run is lost.
                    requeue(rt, &job, &task.work_item).await?;
                    out.requeued += 1;
                }
            }
            None => {
                requeue(rt, &job, &task.work_item).await?;
                out.requeued += 1;
            }
        }
    }
    Ok(out)
}

async fn requeue(rt: &Runtime, job: &JobRow, work_item: &str) -> anyhow::Result<()> {
    if jobs::requeue(rt.db.writer(), job.id, "the run was lost in a restart").await? {
        tracing::warn!(
            job = job.id,
            work_item,
            "run lost in a restart: job queued again"
        );
    }
    Ok(())
}

/// Wait for an agent we did not spawn (no `wait()` possible): poll its
/// process group while it is still ours, then read the exit code the
/// wrapper left.
async fn adopt(rt: Runtime, job: JobRow, run_id: i64, group: proc_group::Owned) {
    let Ok(Some(task)) = tasks::get(rt.db.reader(), job.task_id).await else {
        tracing::warn!(
            job = job.id,
            "adopted run's task is gone; the reaper ends it"
        );
        return;
    };
    let wi = task.work_item.clone();
    let log = rt.run_paths(&wi, &job).log;
    // Gone or no longer ours: the run ended (its exit file tells how).
    let gone = async {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let g = group.clone();
            let ours = tokio::task::spawn_blocking(move || g.check())
                .await
                .unwrap_or(proc_group::Ownership::Gone);
            if ours != proc_group::Ownership::Ours {
                return proc_group::Ended::Exited(0);
            }
        }
    };
    // The same stall and budget checks as a run this daemon started.
    if monitor::supervise(&rt, &job, &task, &log, &group, gone)
        .await
        .is_none()
    {
        return;
    }
    let code = rt.run_paths(&wi, &job).read_exit().unwrap_or(137);
    let result = async {
        monitor::finish_run(&rt, &job, run_id, proc_group::Ended::Exited(code as i32)).await?;
        monitor::complete(&rt, job.id, "monitor").await.map(|_| ())
    }
    .await;
    if let Err(e) = result {
        tracing::error!(job = job.id, error = %e, "adopted run could not be finalized; the reaper will");
    }
}
