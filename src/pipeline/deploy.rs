//! The deploy finalizer (F-23) and the pipeline's answer to a failed
//! irreversible effect (F-19).
//!
//! Confirm Deploy: "Deploying" is shown, then the stage engine runs the
//! deploy → done transition, whose journaled effects merge the PR
//! (`merge_pr`) and run the production deploy (`prod_deploy`); the stage
//! moves only when both happened. After done, the post-deploy window is
//! armed BEFORE the terminal tracker sync (seed 004, ORCH-094 D3), so the
//! deploy status guard sees it open and "Monitoring after Deploy" is
//! legitimate; the post-deploy monitor (F-24, `loops::post_deploy`) later
//! converges the tracker to Done.
//!
//! A failed effect holds the task (the engine marks it and alerts). Here the
//! person hears why, a coverage drop rolls the task back to development
//! with the reason in the developer's next prompt, and a merge refused
//! because the branch moved after the merge gate rolls it back to
//! deploy-staging, where staging and the gate judge the new head.

use super::Pipeline;
use crate::db::deploys;
use crate::db::tasks::{self, TaskRow};
use crate::db::{effects, now_ms};
use crate::domain::{EffectKind, Stage};
use crate::effects::ratchet;
use crate::stage_engine::{EngineError, Outcome, transition_key};

/// The actor name of the finalizer's engine calls and status writes, and
/// the role of its job.
pub const FINALIZER: &str = "deploy-finalizer";
/// The actor of the coverage gate's rollback.
pub const COVERAGE_GATE: &str = "coverage-gate";
/// The actor of the rollback of a merge refused because the branch moved
/// after the merge gate (issue 11 pt 4).
pub const MERGE_HEAD_GUARD: &str = "merge-head-guard";

impl Pipeline {
    /// A person's Confirm Deploy (F-23, phase B), as the intake handles it:
    /// record the decision, show Deploying, and queue the finalizer as a
    /// job of its own (B-13: an effect never runs inside the intake's turn,
    /// so a 30-minute deploy delays no other task's webhook). The job id.
    pub async fn request_deploy(&self, task_id: i64, actor: &str) -> Result<i64, EngineError> {
        let Some(task) = self.record_confirmation(task_id, actor).await? else {
            return Ok(0);
        };
        let q = self.queue_finalizer(task_id, Stage::Deploy).await?;
        tracing::info!(work_item = %task.work_item, job = q.id(), "deploy finalizer queued");
        Ok(q.id())
    }

    /// Queue the finalizer job of a task at `stage` (idempotent: one active
    /// job per task and stage) and wake the worker. The finalizer carries a
    /// transition with irreversible effects to its end in a job of its own:
    /// never inside the intake's turn or a loop's tick (B-13), durable
    /// across a restart, visible in `/queue`.
    pub async fn queue_finalizer(
        &self,
        task_id: i64,
        stage: Stage,
    ) -> Result<crate::db::jobs::Enqueued, EngineError> {
        let q = crate::db::jobs::enqueue(&self.db, task_id, stage, FINALIZER, 1, "").await?;
        self.wake.notify_one();
        Ok(q)
    }

    /// Confirm Deploy and run the finalizer now, in the caller (tests, the
    /// replay CLI): [`Pipeline::request_deploy`] without the job.
    /// Idempotent: a repeat after done finds the task terminal; a repeat
    /// after a HOLD retries the effect (a done one is not re-run; one whose
    /// outcome was unknown runs once more: this is a person's decision).
    pub async fn confirm_deploy(&self, task_id: i64, actor: &str) -> Result<Outcome, EngineError> {
        let Some(task) = tasks::get(self.db.reader(), task_id).await? else {
            return Ok(Outcome::NotFound);
        };
        if task.stage != Stage::Deploy {
            return Ok(if task.stage.is_terminal() {
                Outcome::Terminal { stage: task.stage }
            } else {
                Outcome::Pending {
                    stage: task.stage,
                    reason: "Confirm Deploy only counts at deploy".into(),
                }
            });
        }
        self.record_confirmation(task_id, actor).await?;
        self.finalize_deploy(task_id, actor).await
    }

    /// Record a person's Confirm Deploy at deploy: the gate's input, the
    /// go-ahead for an effect whose outcome was unknown (B-13), Deploying
    /// in the tracker. `None` when the task is not at deploy.
    async fn record_confirmation(
        &self,
        task_id: i64,
        actor: &str,
    ) -> Result<Option<TaskRow>, EngineError> {
        let Some(task) = tasks::get(self.db.reader(), task_id).await? else {
            return Ok(None);
        };
        if task.stage != Stage::Deploy {
            return Ok(None);
        }
        tasks::set_deploy_confirmed(self.db.writer(), task_id).await?;
        tasks::grant_retry(self.db.writer(), task_id).await?;
        tracing::info!(work_item = %task.work_item, actor, "Confirm Deploy recorded");
        // Before the merge: the guard allows it while the task is not terminal.
        if let Err(e) = self.set_status(&task, "deploying", FINALIZER).await {
            tracing::warn!(work_item = %task.work_item, error = %e, "Deploying not shown");
        }
        Ok(Some(task))
    }

    /// The deploy finalizer: the engine merges, deploys and moves to done;
    /// then what follows the move. Run by the finalizer job.
    pub async fn finalize_deploy(&self, task_id: i64, actor: &str) -> Result<Outcome, EngineError> {
        let out = self.engine.advance_stage(task_id, actor).await?;
        self.after_move(task_id, &out).await?;
        tracing::info!(task_id, outcome = ?out, "deploy finalizer");
        Ok(out)
    }

    /// After deploy → done, in this order: arm the post-deploy window, then
    /// the terminal sync (Monitoring after Deploy, allowed by the guard
    /// because the window is open), then the comment with the merge commit.
    /// Never fails the caller: the stage already moved, and the monitor
    /// adopts a window that was not armed (a crash right here).
    pub(crate) async fn after_deploy_done(&self, task: &TaskRow, out: &Outcome) {
        let window_ms = (self.settings.post_deploy_window_s as i64).saturating_mul(1000);
        match deploys::arm_post_deploy(self.db.writer(), task.id, now_ms() + window_ms).await {
            Ok(armed) => {
                tracing::info!(work_item = %task.work_item, armed, window_s = self.settings.post_deploy_window_s, "post-deploy monitor armed")
            }
            Err(e) => {
                tracing::warn!(work_item = %task.work_item, error = %e, "post-deploy window not armed; the monitor adopts it")
            }
        }
        if let Err(e) = self.set_status(task, "monitoring", FINALIZER).await {
            tracing::warn!(work_item = %task.work_item, error = %e, "Monitoring after Deploy not shown");
        }
        let Outcome::Advanced { version, .. } = out else {
            return;
        };
        let key = transition_key(task.id, Stage::Deploy, Stage::Done, version - 1);
        let result = |kind: EffectKind| {
            let key = key.clone();
            async move {
                effects::get(self.db.reader(), &key, kind.as_str())
                    .await
                    .ok()
                    .flatten()
                    .and_then(|r| r.result)
                    .unwrap_or_default()
            }
        };
        let merged = result(EffectKind::MergePr).await;
        let deployed = result(EffectKind::ProdDeploy).await;
        let html = format!(
            "<p>✅ Merged into the default branch: <code>{}</code>. Production deploy: {}.</p>\
             <p>Monitoring after deploy for {} s, then Done.</p>",
            html_escape(&merged),
            html_escape(&deployed),
            self.settings.post_deploy_window_s
        );
        self.comment(task, &format!("deploy-done:{key}"), &html)
            .await;
    }

    /// A journaled effect failed and the engine held the task. Tell the
    /// person why; a coverage verdict rolls back to development (F-19).
    pub(crate) async fn after_effect_failed(
        &self,
        task_id: i64,
        out: &Outcome,
    ) -> Result<(), EngineError> {
        let (stage, kind, error, unknown) = match out {
            Outcome::EffectFailed { stage, kind, error } => (stage, kind, error, false),
            Outcome::EffectUnknown { stage, kind, error } => (stage, kind, error, true),
            _ => return Ok(()),
        };
        let Some(task) = tasks::get(self.db.reader(), task_id).await? else {
            return Ok(());
        };
        let attempt = effects::get(
            self.db.reader(),
            &transition_key(
                task.id,
                *stage,
                stage.next().unwrap_or(*stage),
                task.stage_version,
            ),
            kind.as_str(),
        )
        .await?
        .map_or(1, |r| r.attempts);
        let ckey = format!(
            "effect-failed:{}:v{}:{}:{attempt}",
            task.id,
            task.stage_version,
            kind.as_str()
        );
        if !unknown
            && *kind == EffectKind::CoverageRatchet
            && *stage == Stage::DeployStaging
            && ratchet::rolls_back(error)
        {
            let reason = format!(
                "The coverage gate (F-19) failed: {}. Restore the coverage (add tests for the new code) before staging again.",
                error.trim_start_matches("effect failed: ")
            );
            self.comment(&task, &ckey, &format!("<p>❌ {}</p>", html_escape(&reason)))
                .await;
            let rolled = self
                .engine
                .rollback(task_id, Stage::DeployStaging, COVERAGE_GATE, &reason)
                .await?;
            tracing::info!(work_item = %task.work_item, outcome = ?rolled, "coverage drop: rolled back");
            // Boxed: after_move called us.
            return Box::pin(self.after_move(task_id, &rolled)).await;
        }
        if !unknown
            && *kind == EffectKind::MergePr
            && *stage == Stage::Deploy
            && crate::effects::deploy::head_moved(error)
        {
            let reason = format!(
                "{} The task goes back to staging and the merge gate for the new head;                  Confirm Deploy again once it is green.",
                error.trim_start_matches("effect failed: ")
            );
            self.comment(&task, &ckey, &format!("<p>↩️ {}</p>", html_escape(&reason)))
                .await;
            let rolled = self
                .engine
                .rollback(task_id, Stage::Deploy, MERGE_HEAD_GUARD, &reason)
                .await?;
            tracing::info!(work_item = %task.work_item, outcome = ?rolled, "branch moved after the merge gate: back to deploy-staging");
            return Box::pin(self.after_move(task_id, &rolled)).await;
        }
        let retry = match (*stage == Stage::Deploy, unknown) {
            (true, true) => {
                "The task is held at deploy: the daemon will not run this again on its own. \
                 Check what reached production, then set Confirm Deploy to run it once more \
                 (a merge that already happened is not repeated)."
            }
            (true, false) => {
                "The task is held at deploy. Fix the cause, then set Confirm Deploy again to retry \
                 (a merge that already happened is not repeated)."
            }
            (false, _) => "The task is held; an operator must look at it.",
        };
        let what = if unknown {
            "⚠️ the outcome of"
        } else {
            "⛔"
        };
        let verb = if unknown { "is unknown" } else { "failed" };
        self.comment(
            &task,
            &ckey,
            &format!(
                "<p>{what} {} {verb}: {}</p><p>{retry}</p>",
                kind.as_str(),
                html_escape(error)
            ),
        )
        .await;
        if *stage == Stage::Deploy
            && let Err(e) = self.set_status(&task, "awaiting_deploy", FINALIZER).await
        {
            tracing::warn!(work_item = %task.work_item, error = %e, "Awaiting Deploy not shown after the hold");
        }
        Ok(())
    }

    /// Add a tracker comment once (`key`); failures are logged, never fatal.
    async fn comment(&self, task: &TaskRow, key: &str, html: &str) {
        let Some(item) = self.tracker_ref(task) else {
            return;
        };
        if let Err(e) = self.tracker.add_comment(&item, key, html).await {
            tracing::warn!(work_item = %task.work_item, key, error = %e, "tracker comment not added");
        }
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
