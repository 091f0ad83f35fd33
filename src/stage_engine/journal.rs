//! The effect journal (B-1): an irreversible effect runs only under a held
//! lease and only through here. `planned` is committed before the outside
//! call, `done` after it; a `planned` row found later (a crash came between)
//! is first reconciled against the outside world before anything reruns.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;

use super::EngineError;
use crate::db::Db;
use crate::db::effects::{self, Planned};
use crate::db::leases;
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
    /// Known not to have happened: safe to try again later.
    #[error("effect failed: {0}")]
    Failed(String),
    /// May or may not have happened (a timeout mid-call): the row stays
    /// planned and the next attempt reconciles first.
    #[error("effect outcome unknown: {0}")]
    Unknown(String),
}

#[async_trait]
pub trait Effect: Send + Sync {
    /// Did this already happen outside (is the merge SHA in main)? `Some`
    /// records it done without applying again.
    async fn reconcile(&self, ctx: &EffectCtx) -> Result<Option<EffectResult>, EffectError>;
    /// Make it happen. Idempotent where the outside allows it.
    async fn apply(&self, ctx: &EffectCtx) -> Result<EffectResult, EffectError>;
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
    pub at: &'a (dyn Fn(JournalPoint) + Send + Sync),
}

pub(crate) async fn run(a: RunArgs<'_>) -> Result<Ran, EngineError> {
    let key = a.ctx.transition_key.as_str();
    let kind = a.ctx.kind.as_str();
    let task_id = a.ctx.task.id;

    // Plan (or find the plan) in one IMMEDIATE transaction, fenced by the
    // lease: a holder that lost its lease (operator force-release) stops here.
    let mut tx = a.db.begin_write().await?;
    match leases::get(&mut *tx, task_id).await? {
        Some(l) if l.holder == a.holder => {}
        _ => return Err(EngineError::LeaseLost { task_id }),
    }
    let existing = effects::get(&mut *tx, key, kind).await?;
    let (row_id, reconcile_first) = match existing {
        Some(row) if row.state == "done" => {
            return Ok(Ran::Skipped(row.result.unwrap_or_default()));
        }
        Some(row) => {
            // planned: a crash (or a lost holder) came between plan and done.
            // failed: known not to have happened; plan again.
            let was_planned = row.state == "planned";
            effects::replan(&mut *tx, row.id, a.holder).await?;
            (row.id, was_planned)
        }
        None => {
            effects::insert_planned(
                &mut *tx,
                &Planned {
                    task_id,
                    key,
                    from: a.ctx.from,
                    to: a.ctx.to,
                    version: a.version,
                    kind,
                    holder: a.holder,
                },
            )
            .await?;
            let row = effects::get(&mut *tx, key, kind)
                .await?
                .ok_or_else(|| EngineError::Internal("planned row vanished".into()))?;
            (row.id, false)
        }
    };
    tx.commit().await?;
    (a.at)(JournalPoint::AfterPlanned);

    if reconcile_first {
        match a.effect.reconcile(a.ctx).await {
            Ok(Some(result)) => {
                effects::mark_done(a.db.writer(), row_id, &result).await?;
                (a.at)(JournalPoint::AfterDone);
                tracing::info!(
                    task_id,
                    key,
                    kind,
                    "effect had already happened: recorded, not applied again"
                );
                return Ok(Ran::Reconciled(result));
            }
            Ok(None) => {}
            Err(e) => {
                // Cannot tell: leave it planned, apply nothing.
                return Err(EngineError::Effect {
                    kind: a.ctx.kind,
                    error: e,
                });
            }
        }
    }

    match a.effect.apply(a.ctx).await {
        Ok(result) => {
            (a.at)(JournalPoint::AfterApply);
            effects::mark_done(a.db.writer(), row_id, &result).await?;
            (a.at)(JournalPoint::AfterDone);
            Ok(Ran::Applied(result))
        }
        Err(e @ EffectError::Failed(_)) => {
            effects::mark_failed(a.db.writer(), row_id, &e.to_string()).await?;
            Err(EngineError::Effect {
                kind: a.ctx.kind,
                error: e,
            })
        }
        Err(e @ EffectError::Unknown(_)) => Err(EngineError::Effect {
            kind: a.ctx.kind,
            error: e,
        }),
    }
}
