//! The effect journal (B-1, B-13): an irreversible effect runs only under a
//! held lease and only through here. `planned` is committed before the
//! outside call, `done` after it; a row found open later (a crash came
//! between) is first reconciled against the outside world before anything
//! reruns.
//!
//! Row states: `planned` (in flight, or a crash came between), `done`,
//! `failed` (provably never reached the outside: any later attempt may
//! apply it) and `unknown` (it may have reached the outside and did not
//! provably succeed: a deploy that timed out, was killed or vanished). An
//! `unknown` row holds the task; the journal applies it again only after a
//! person decided so (the task's `retry_grants` moved past the row's), and
//! asks `reconcile` first even then. Every write after planning is fenced
//! by the holder's lease generation (invariant 10).

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;

use super::EngineError;
use sqlx::SqliteConnection;

use crate::db::Db;
use crate::db::effects::{self, Planned};
use crate::db::leases::{self, Fence};
use crate::db::tasks::TaskRow;
use crate::domain::{EffectKind, Stage};

/// What an effect sees.
#[derive(Debug, Clone)]
pub struct EffectCtx {
    pub task: TaskRow,
    pub transition_key: String,
    pub kind: EffectKind,
    pub from: Stage,
    pub to: Stage,
}

/// The recorded outcome of a finished effect (e.g. the merge SHA).
pub type EffectResult = String;

#[derive(Debug, Clone, thiserror::Error)]
pub enum EffectError {
    /// Known not to have reached the outside: safe to try again later.
    #[error("effect failed: {0}")]
    Failed(String),
    /// May have reached the outside and did not provably succeed (a timeout
    /// mid-call, a deploy killed by a signal or that vanished): the row is
    /// `unknown`, the task holds until a person decides.
    #[error("effect outcome unknown: {0}")]
    Unknown(String),
}

impl EffectError {
    pub fn message(&self) -> &str {
        match self {
            EffectError::Failed(m) | EffectError::Unknown(m) => m,
        }
    }
}

#[async_trait]
pub trait Effect: Send + Sync {
    /// Did this already happen outside (is the merge SHA in main)? `Some`
    /// records it done without applying again.
    async fn reconcile(&self, ctx: &EffectCtx) -> Result<Option<EffectResult>, EffectError>;
    /// Make it happen. Idempotent where the outside allows it.
    async fn apply(&self, ctx: &EffectCtx) -> Result<EffectResult, EffectError>;
    /// Writes to the daemon's own database that ARE the effect's record (the
    /// coverage baseline): run inside the fenced transaction that marks the
    /// row done, so they happen exactly when it is recorded and never twice.
    /// An error rolls them back and records the effect as that error.
    async fn record(
        &self,
        _tx: &mut SqliteConnection,
        _ctx: &EffectCtx,
        result: EffectResult,
    ) -> Result<EffectResult, EffectError> {
        Ok(result)
    }
    /// Whether [`Effect::record`] is to run. `false` (an effect with no
    /// record of its own) lets the done row be one fenced statement instead
    /// of a transaction around it. The default is the safe one: an effect
    /// that keeps `record` must not be able to lose it by forgetting this.
    fn has_record(&self) -> bool {
        true
    }
}

/// Effect implementations by kind. A transition whose effect kind has no
/// implementation does not run (it is a wiring error, reported, never skipped).
#[derive(Clone, Default)]
pub struct EffectRegistry(HashMap<EffectKind, Arc<dyn Effect>>);

impl EffectRegistry {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn with(mut self, kind: EffectKind, effect: Arc<dyn Effect>) -> Self {
        self.0.insert(kind, effect);
        self
    }
    pub fn insert(&mut self, kind: EffectKind, effect: Arc<dyn Effect>) {
        self.0.insert(kind, effect);
    }
    pub fn get(&self, kind: EffectKind) -> Option<&Arc<dyn Effect>> {
        self.0.get(&kind)
    }
}

/// An effect that has nothing to do outside yet (a capability not wired):
/// recorded in the journal like any other so the proof covers the edge.
pub struct NoopEffect;

#[async_trait]
impl Effect for NoopEffect {
    fn has_record(&self) -> bool {
        false
    }
    async fn reconcile(&self, _: &EffectCtx) -> Result<Option<EffectResult>, EffectError> {
        Ok(None)
    }
    async fn apply(&self, ctx: &EffectCtx) -> Result<EffectResult, EffectError> {
        Ok(format!("noop:{}", ctx.kind.as_str()))
    }
}

/// Where `run` may be observed (crash tests stop the process here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalPoint {
    AfterPlanned,
    AfterApply,
    AfterDone,
}

/// How one journaled effect ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ran {
    /// Already done before: skipped, recorded result returned.
    Skipped(EffectResult),
    /// Reconciled: it had happened outside; recorded without applying.
    Reconciled(EffectResult),
    /// Applied now.
    Applied(EffectResult),
}

pub(crate) struct RunArgs<'a> {
    pub db: &'a Db,
    pub effect: &'a dyn Effect,
    pub ctx: &'a EffectCtx,
    pub version: i64,
    pub holder: &'a str,
    pub fence: Fence,
    /// Always true in the daemon; false only in the simulation's run with
    /// the `reconcile` defence off.
    pub reconcile: bool,
    pub at: &'a (dyn Fn(JournalPoint) + Send + Sync),
}

pub(crate) async fn run(a: RunArgs<'_>) -> Result<Ran, EngineError> {
    let key = a.ctx.transition_key.as_str();
    let kind = a.ctx.kind.as_str();
    let task_id = a.ctx.task.id;
    let lost = || EngineError::LeaseLost { task_id };

    let planned = Planned {
        task_id,
        key,
        from: a.ctx.from,
        to: a.ctx.to,
        version: a.version,
        kind,
        holder: a.holder,
    };
    // The common case, a first plan, is one fenced statement (a round trip
    // instead of five). When it writes nothing, the transaction below tells
    // a lost lease from a row already there, as it always did.
    let (found, row_id, granted) =
        match effects::insert_planned_if_held(a.db.writer(), &planned, a.fence).await? {
            Some(id) => (None, id, false),
            None => {
                // Plan (or find the plan) in one IMMEDIATE transaction, fenced
                // by the lease: a holder that lost its lease (force-release,
                // reclaim) stops here.
                let mut tx = a.db.begin_write().await?;
                if !leases::held_by(&mut *tx, a.fence, a.holder).await? {
                    return Err(lost());
                }
                let mut new_id = None;
                let found = match effects::get(&mut *tx, key, kind).await? {
                    Some(row) if row.state == "done" => {
                        return Ok(Ran::Skipped(row.result.unwrap_or_default()));
                    }
                    Some(row) => Some(row),
                    None => {
                        new_id = Some(effects::insert_planned(&mut *tx, &planned).await?);
                        None
                    }
                };
                let granted = match &found {
                    Some(row) if row.state == "unknown" => {
                        effects::retry_granted(&mut *tx, row.id).await?
                    }
                    _ => false,
                };
                let row_id = match (&found, new_id) {
                    (Some(row), _) => row.id,
                    (None, Some(id)) => id,
                    (None, None) => {
                        return Err(EngineError::Internal("planned row vanished".into()));
                    }
                };
                tx.commit().await?;
                (found, row_id, granted)
            }
        };

    if let Some(row) = &found {
        // planned: a crash (or a lost holder) came between plan and done;
        // unknown: an earlier attempt may have reached the outside. Either
        // way the outside is asked before anything is applied again.
        // failed: known not to have happened; plan again.
        if row.state != "failed" {
            let reconciled = if a.reconcile {
                a.effect.reconcile(a.ctx).await
            } else {
                Ok(None)
            };
            match reconciled {
                Ok(Some(result)) => {
                    let result = record_done(&a, row_id, result).await?;
                    (a.at)(JournalPoint::AfterDone);
                    tracing::info!(
                        task_id,
                        key,
                        kind,
                        "effect had already happened: recorded, not applied again"
                    );
                    return Ok(Ran::Reconciled(result));
                }
                // Provably did not happen: applied below.
                Ok(None) => {}
                Err(e) if granted => {
                    tracing::warn!(task_id, key, kind, error = %e, "outcome still unknown; a person decided to run it again");
                }
                Err(e) => {
                    // Cannot tell, and nobody decided: hold, apply nothing.
                    let e = EffectError::Unknown(e.message().to_string());
                    if !effects::mark_unknown(a.db.writer(), row_id, &e.to_string(), a.fence)
                        .await?
                    {
                        return Err(lost());
                    }
                    return Err(EngineError::Effect {
                        kind: a.ctx.kind,
                        error: e,
                    });
                }
            }
        }
        if !effects::replan(a.db.writer(), row_id, a.holder, a.fence).await? {
            return Err(lost());
        }
    }
    (a.at)(JournalPoint::AfterPlanned);

    // A holder that stalled since planning (its lease taken meanwhile by an
    // operator or the reaper, and the next holder done with it) must not
    // reach the outside: the fence is checked right before the call too.
    if !leases::fence_holds(a.db.reader(), a.fence).await? {
        return Err(lost());
    }
    let applied = a.effect.apply(a.ctx).await;
    if applied.is_ok() {
        (a.at)(JournalPoint::AfterApply);
    }
    let result = match applied {
        Ok(result) => record_done(&a, row_id, result).await?,
        Err(e) => return Err(record_error(&a, row_id, e).await?),
    };
    (a.at)(JournalPoint::AfterDone);
    Ok(Ran::Applied(result))
}

/// The fenced done row, with the effect's own record in the same
/// transaction.
async fn record_done(
    a: &RunArgs<'_>,
    row_id: i64,
    result: EffectResult,
) -> Result<EffectResult, EngineError> {
    if !a.effect.has_record() {
        if !effects::mark_done(a.db.writer(), row_id, &result, a.fence).await? {
            return Err(EngineError::LeaseLost {
                task_id: a.ctx.task.id,
            });
        }
        return Ok(result);
    }
    let mut tx = a.db.begin_write().await?;
    let result = match a.effect.record(&mut tx, a.ctx, result).await {
        Ok(r) => r,
        Err(e) => {
            tx.rollback().await?;
            return Err(record_error(a, row_id, e).await?);
        }
    };
    if !effects::mark_done(&mut *tx, row_id, &result, a.fence).await? {
        // Our lease was taken: nothing is recorded; the next holder
        // reconciles the planned row.
        tx.rollback().await?;
        return Err(EngineError::LeaseLost {
            task_id: a.ctx.task.id,
        });
    }
    tx.commit().await?;
    Ok(result)
}

/// Record a failed or unknown attempt (fenced); the error to return.
async fn record_error(
    a: &RunArgs<'_>,
    row_id: i64,
    e: EffectError,
) -> Result<EngineError, EngineError> {
    let recorded = match &e {
        EffectError::Failed(_) => {
            effects::mark_failed(a.db.writer(), row_id, &e.to_string(), a.fence).await?
        }
        EffectError::Unknown(_) => {
            effects::mark_unknown(a.db.writer(), row_id, &e.to_string(), a.fence).await?
        }
    };
    if !recorded {
        return Ok(EngineError::LeaseLost {
            task_id: a.ctx.task.id,
        });
    }
    Ok(EngineError::Effect {
        kind: a.ctx.kind,
        error: e,
    })
}

/// The simulation's run with the `journal` defence off: the effect is
/// applied with no record before or after it, as code without a journal
/// would. Never used by the daemon.
pub(crate) async fn run_unjournaled(a: RunArgs<'_>) -> Result<Ran, EngineError> {
    (a.at)(JournalPoint::AfterPlanned);
    match a.effect.apply(a.ctx).await {
        Ok(r) => {
            (a.at)(JournalPoint::AfterApply);
            (a.at)(JournalPoint::AfterDone);
            Ok(Ran::Applied(r))
        }
        Err(error) => Err(EngineError::Effect {
            kind: a.ctx.kind,
            error,
        }),
    }
}
