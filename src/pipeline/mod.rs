//! What events mean. Every handler moves tasks only through the stage
//! engine; this module decides what follows a move: the next agent job and
//! the tracker status.

pub mod cancel;
pub mod deploy;
pub mod merge;
pub mod status;

use std::sync::Arc;

use crate::clients::{ClientError, Forge, Tracker, TrackerRef};
use crate::config::Settings;
use crate::db::tasks::{self, TaskRow};
use crate::db::{Db, jobs};
use crate::domain::Stage;
use crate::gates::deploy_status_guard::{self, Verdict};
use crate::notify::Notifier;
use crate::stage_engine::{Engine, EngineError, Outcome};

/// Everything a handler needs. Cheap to clone.
#[derive(Clone)]
pub struct Pipeline {
    pub engine: Engine,
    pub db: Db,
    pub settings: Arc<Settings>,
    pub tracker: Arc<dyn Tracker>,
    /// The queue behind `tracker` when it is Plane (issue 11): its sender
    /// loop and `/queue` block. `None` for a tracker that never waits.
    pub plane_outbox: Option<Arc<crate::clients::plane_outbox::PlaneOutbox>>,
    pub forge: Arc<dyn Forge>,
    pub notifier: Arc<dyn Notifier>,
    /// Task worktrees; STOP removes them (F-25). Share the runtime's
    /// instance: its per-clone locks serialize git's worktree operations.
    pub workspace: crate::git::Workspace,
    /// The `stop` block of `/queue` (F-25).
    pub stops: Arc<cancel::StopStats>,
    /// Wakes the job worker at once when the pipeline queues a job that a
    /// person waits for (the deploy finalizer).
    pub wake: Arc<tokio::sync::Notify>,
}

/// The agent role whose job starts when a task enters `stage`. `deploy`
/// parks until a person confirms (F-23): no job on entry.
pub fn job_role(stage: Stage) -> Option<&'static str> {
    match stage {
        Stage::Deploy => None,
        s if s.is_terminal() => None,
        s => s.spec().role,
    }
}

/// Whether moving on from `stage` runs irreversible effects (deploy-staging
/// → deploy, deploy → done): such a move is the finalizer job's, never a
/// loop's tick or the intake's turn (B-13).
pub fn exit_has_effects(stage: Stage) -> bool {
    stage
        .next()
        .is_some_and(|next| !stage.effects_to(next).is_empty())
}

impl Pipeline {
    /// The tracker's handle of a task, when it came from the tracker.
    pub fn tracker_ref(&self, task: &TaskRow) -> Option<TrackerRef> {
        let issue_id = task.plane_issue_id.clone()?;
        let project = self.settings.project(&task.project)?;
        Some(TrackerRef {
            project: project.name.clone(),
            tracker_project_id: project.plane_project_id.clone(),
            issue_id,
            work_item: task.work_item.clone(),
        })
    }

    /// Advance a task and do what follows a move.
    pub async fn advance(&self, task_id: i64, actor: &str) -> Result<Outcome, EngineError> {
        let out = self.engine.advance_stage(task_id, actor).await?;
        self.after_move(task_id, &out).await?;
        if let Outcome::Pending {
            stage: Stage::DeployStaging,
            reason,
        } = &out
            && reason == crate::domain::gates::MERGE_GATE_PENDING
        {
            // Staging passed: the merge gate runs next (F-18), as a job so it
            // shares the worker's limits and survives a restart.
            let role = crate::gates::merge_gate::ROLE;
            let q = jobs::enqueue(&self.db, task_id, Stage::DeployStaging, role, 1, "").await?;
            tracing::info!(task_id, job = q.id(), "merge gate queued");
        }
        Ok(out)
    }

    /// After a move: queue the new stage's job (with the rollback reason as
    /// context for the next prompt) and show the stage's status.
    pub async fn after_move(&self, task_id: i64, out: &Outcome) -> Result<(), EngineError> {
        // F-25: a task this call left cancelled (a deferred STOP is applied on
        // the lease holder's step, whatever its outcome says) gets the STOP
        // cascade, which also shows the Cancelled status.
        if self.cascade_if_cancelled(task_id, out).await?.is_some() {
            return Ok(());
        }
        let (to, context) = match out {
            Outcome::Advanced { to, .. } => (*to, String::new()),
            Outcome::RolledBack { to, reason, .. } => (*to, reason.clone()),
            Outcome::Cancelled { .. } => (Stage::Cancelled, String::new()),
            // F-19, F-23, B-13: the engine held the task; say why (and roll
            // a coverage drop back).
            Outcome::EffectFailed { .. } | Outcome::EffectUnknown { .. } => {
                return self.after_effect_failed(task_id, out).await;
            }
            _ => return Ok(()),
        };
        let Some(task) = tasks::get(self.db.reader(), task_id).await? else {
            return Ok(());
        };
        if !matches!(task.stage, Stage::DeployStaging | Stage::Deploy) {
            // The merge lease spans merge gate → done (F-17); a task anywhere
            // else (rolled back, done, cancelled) holds none.
            crate::db::merge_lease::release(self.db.writer(), &task.project, task.id).await?;
        }
        if task.stage != to {
            // Moved again meanwhile (a deferred cancel): that move's caller acts.
            return Ok(());
        }
        if let Some(role) = job_role(to) {
            let q = jobs::enqueue(&self.db, task_id, to, role, 1, &context).await?;
            tracing::info!(work_item = %task.work_item, stage = %to, role, job = q.id(), "job queued");
        }
        if let Outcome::Advanced {
            from: Stage::Deploy,
            to: Stage::Done,
            ..
        } = out
        {
            // F-23/F-24: the post-deploy window is armed before the
            // terminal sync, which then shows Monitoring, not Done.
            self.after_deploy_done(&task, out).await;
            return Ok(());
        }
        self.show_stage(&task, actor_of(out)).await;
        Ok(())
    }

    /// Set the tracker status that belongs to the task's stage. Failures are
    /// logged, never fatal: the reconciler converges the status later (F-16).
    pub async fn show_stage(&self, task: &TaskRow, caller: &str) {
        let key = task.stage.spec().plane_status;
        if let Err(e) = self.set_status(task, key, caller).await {
            tracing::warn!(work_item = %task.work_item, status = key, error = %e, "tracker status not set");
        }
    }

    /// Set a tracker status by key, logging a failure (B-11: a tap shows the
    /// person's decision in the tracker before the pipeline acts on it).
    pub async fn show_status(&self, task: &TaskRow, key: &str, caller: &str) {
        if let Err(e) = self.set_status(task, key, caller).await {
            tracing::warn!(work_item = %task.work_item, status = key, error = %e, "tracker status not set");
        }
    }

    /// Every status write of the pipeline goes through here.
    pub async fn set_status(
        &self,
        task: &TaskRow,
        key: &str,
        caller: &str,
    ) -> Result<(), ClientError> {
        let Some(item) = self.tracker_ref(task) else {
            return Ok(());
        };
        // F-05: a deploy-phase status only while it is still true.
        let key = if deploy_status_guard::is_guarded(key) {
            let window = self.settings.post_deploy_window_s;
            match deploy_status_guard::check(&self.db, task, key, caller, window).await {
                Verdict::Allow => key,
                Verdict::ConvergeDone => "done",
                Verdict::Suppress => return Ok(()),
            }
        } else {
            key
        };
        tracing::debug!(work_item = %task.work_item, status = key, caller, "setting tracker status");
        self.tracker.set_status(&item, key).await
    }
}

fn actor_of(out: &Outcome) -> &'static str {
    match out {
        Outcome::Cancelled { .. } => "cancel",
        Outcome::RolledBack { .. } => "rollback",
        _ => "advance",
    }
}
