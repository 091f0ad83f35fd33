//! The entry points actors call: `advance_stage`, the shared rollback
//! helper and STOP. Each decides a target and hands it to
//! [`Engine::transition`], the one path to a stage write.

use super::{Engine, EngineError, Outcome};
use crate::db::effects;
use crate::db::tasks;
use crate::domain::{GateVerdict, Stage};

impl Engine {
    /// The one entry for monitor, webhooks, reconciler, reaper and finalizer:
    /// judge the stage's exit gate and move the task accordingly. A journaled
    /// transition left unfinished at this version, or a requested cancel,
    /// takes precedence over the gate. Never panics.
    pub async fn advance_stage(&self, task_id: i64, actor: &str) -> Result<Outcome, EngineError> {
        let Some((snap, intent)) = effects::snapshot(self.0.db.reader(), task_id).await? else {
            return Ok(Outcome::NotFound);
        };
        if snap.stage.is_terminal() {
            return Ok(Outcome::Terminal { stage: snap.stage });
        }
        let (target, reason) = if snap.cancel_requested_at.is_some() {
            (Stage::Cancelled, "cancel requested".to_string())
        } else if let Some(to) = intent {
            (to, "resume journaled transition".to_string())
        } else {
            let spec = snap.stage.spec();
            let Some(gate) = spec.gate else {
                return Ok(Outcome::Terminal { stage: snap.stage });
            };
            let input = self.0.inputs.load(&snap).await;
            match gate.evaluate(&input) {
                GateVerdict::Pending(reason) => {
                    return Ok(Outcome::Pending {
                        stage: snap.stage,
                        reason,
                    });
                }
                GateVerdict::Fail(reason) => match spec.rollback {
                    Some(to) => (to, reason),
                    None => {
                        return Ok(Outcome::GateFailed {
                            stage: snap.stage,
                            reason,
                        });
                    }
                },
                GateVerdict::Pass => match spec.next {
                    Some(to) => (to, format!("gate {} passed", gate.name())),
                    None => return Ok(Outcome::Terminal { stage: snap.stage }),
                },
            }
        };
        // A move without effects is one statement, and owes no deferred
        // cancel: a cancel requested before it makes it fall through to the
        // full path, one requested after it is its requester's to apply.
        if snap.stage.can_move_to(target)
            && snap.stage.effects_to(target).is_empty()
            && let Some(out) = self
                .transition_in_one_statement(&snap, target, actor, &reason)
                .await?
        {
            super::count(&out);
            return Ok(out);
        }
        let out = self.transition(&snap, target, actor, &reason).await?;
        self.apply_pending_cancel(task_id, actor, &out).await?;
        Ok(out)
    }

    /// The shared rollback helper for gates outside `advance_stage` (merge
    /// gate, coverage, security): CAS from `expected` to its rollback target.
    pub async fn rollback(
        &self,
        task_id: i64,
        expected: Stage,
        actor: &str,
        reason: &str,
    ) -> Result<Outcome, EngineError> {
        let Some(snap) = self.task(task_id).await? else {
            return Ok(Outcome::NotFound);
        };
        if snap.stage.is_terminal() {
            return Ok(Outcome::Terminal { stage: snap.stage });
        }
        if snap.stage != expected {
            return Ok(Outcome::LostRace);
        }
        let Some(target) = expected.rollback() else {
            return Err(EngineError::InvalidTransition {
                from: expected,
                to: expected,
            });
        };
        let out = self.transition(&snap, target, actor, reason).await?;
        self.apply_pending_cancel(task_id, actor, &out).await?;
        Ok(out)
    }

    /// STOP (F-25): record the request once, then cancel now if nobody owns
    /// the task's region, else leave it to the owner (deferred). Returns the
    /// outcome and whether this call was the first request (notify once).
    pub async fn cancel(
        &self,
        task_id: i64,
        actor: &str,
        reason: &str,
    ) -> Result<(Outcome, bool), EngineError> {
        let Some(snap) = self.task(task_id).await? else {
            return Ok((Outcome::NotFound, false));
        };
        if snap.stage.is_terminal() {
            return Ok((Outcome::Terminal { stage: snap.stage }, false));
        }
        let first = tasks::request_cancel(self.0.db.writer(), task_id, actor, reason).await?;
        let Some(snap) = self.task(task_id).await? else {
            return Ok((Outcome::NotFound, first));
        };
        if snap.stage.is_terminal() {
            return Ok((Outcome::Terminal { stage: snap.stage }, first));
        }
        let out = self
            .transition(&snap, Stage::Cancelled, actor, reason)
            .await?;
        self.apply_pending_cancel(task_id, actor, &out).await?;
        let out = match out {
            Outcome::LeaseBusy { .. } => Outcome::CancelDeferred,
            other => other,
        };
        Ok((out, first))
    }

    /// After a release: a cancel requested while we held the lease is ours
    /// to apply (the requester saw us busy). One attempt; if someone else
    /// holds the lease now, they apply it.
    async fn apply_pending_cancel(
        &self,
        task_id: i64,
        actor: &str,
        out: &Outcome,
    ) -> Result<(), EngineError> {
        // Only a caller that held the lease can owe this: one that met a
        // busy lease leaves it to the holder.
        if matches!(out, Outcome::LeaseBusy { .. }) {
            return Ok(());
        }
        if let Some(t) = self.task(task_id).await?
            && t.cancel_requested_at.is_some()
            && !t.stage.is_terminal()
        {
            self.transition(&t, Stage::Cancelled, actor, "cancel requested")
                .await?;
        }
        Ok(())
    }
}
