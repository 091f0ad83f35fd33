//! The finalizer job (F-23, B-13): a transition with irreversible effects
//! (deploy → done after Confirm Deploy; one a crash or a restart left with
//! its effects open) runs as a job of its own, started by the worker, never
//! inside the intake's turn or a loop's tick. So a 30-minute deploy delays
//! no other task's webhook or STOP, it survives a restart as a queued job,
//! and a graceful stop waits for it through the effect drain.

use crate::db::jobs::{self, JobRow};
use crate::notify::Alert;
use crate::pipeline::Pipeline;
use crate::pipeline::deploy::FINALIZER;
use crate::stage_engine::Outcome;

/// The job's role (also the actor of its engine calls).
pub const ROLE: &str = FINALIZER;

/// Run one finalizer job to its end. Never panics.
pub async fn run(p: Pipeline, job: JobRow) {
    let out = p.advance(job.task_id, FINALIZER).await;
    let (to, why) = match &out {
        // The daemon is stopping: the effect never started; the next start
        // runs the job again.
        Ok(Outcome::Draining) => ("queued", None),
        Ok(_) => ("done", None),
        Err(e) => ("failed", Some(e.to_string())),
    };
    match jobs::transition(p.db.writer(), job.id, "running", to, why.as_deref()).await {
        Ok(_) => {}
        Err(e) => tracing::error!(job = job.id, error = %e, "finalizer job state not recorded"),
    }
    match out {
        Ok(out) => tracing::info!(
            job = job.id,
            task_id = job.task_id,
            ?out,
            "finalizer job ended"
        ),
        Err(e) => {
            tracing::error!(job = job.id, task_id = job.task_id, error = %e, "finalizer job failed");
            let wi = crate::db::tasks::get(p.db.reader(), job.task_id)
                .await
                .ok()
                .flatten()
                .map(|t| t.work_item)
                .unwrap_or_default();
            p.notifier
                .alert(Alert {
                    kind: "finalizer_failed",
                    work_item: Some(wi.clone()),
                    message: format!(
                        "{wi}: the finalizer could not carry the transition on: {e}; the reconciler retries"
                    ),
                    key: Some(format!("job {}", job.id)),
                })
                .await;
        }
    }
}
