//! The stage engine (F-10, B-1): the one module that writes `tasks.stage`.
//!
//! Every stage write, forward, rollback or cancel, goes through
//! [`Engine::transition`]: take the task's transition lease, re-read the task
//! under it, finish any effect a crashed holder had initiated, run the
//! transition's irreversible effects through the journal, then CAS the stage
//! on (stage, stage_version). The lease keeps a second actor from starting the
//! region at all; the CAS fences the write; the journal keeps an effect from
//! running twice across crashes. See `docs/adr/0002-stage-engine.md`.

pub mod advance;
mod atomic;
pub mod cas;
pub mod inputs;
pub mod journal;
pub mod lease;
pub mod ops;

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::mpsc;

use crate::db::leases::Fence;
use crate::db::tasks::{self, TaskRow};
use crate::db::{Db, effects, leases};
use crate::domain::{EffectKind, Stage};
use crate::notify::{Alert, LogNotifier, Notifier};
use crate::shutdown::{EffectDrain, InFlight};
pub use cas::Cas;
pub use inputs::{FsArtifacts, GateInputs};
pub use journal::{Effect, EffectCtx, EffectError, EffectRegistry, EffectResult, NoopEffect};
pub use lease::Boot;
pub use ops::{ForceRelease, Recovery};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("{from} -> {to} is not a transition of STAGE_TRANSITIONS")]
    InvalidTransition { from: Stage, to: Stage },
    #[error("no implementation is registered for effect {0:?}")]
    MissingEffect(EffectKind),
    #[error("effect {kind:?}: {error}")]
    Effect {
        kind: EffectKind,
        error: EffectError,
    },
    #[error("the transition lease of task {task_id} was taken away (force-released)")]
    LeaseLost { task_id: i64 },
    #[error("internal: {0}")]
    Internal(String),
}

/// What one call did. Every variant but the first four changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Advanced {
        from: Stage,
        to: Stage,
        version: i64,
    },
    RolledBack {
        from: Stage,
        to: Stage,
        version: i64,
        reason: String,
    },
    Cancelled {
        from: Stage,
        version: i64,
    },
    /// STOP met a live lease holder: the holder applies it when its step ends.
    CancelDeferred,
    /// The exit gate failed and the stage has no rollback target: stays.
    GateFailed {
        stage: Stage,
        reason: String,
    },
    Pending {
        stage: Stage,
        reason: String,
    },
    /// An effect of the transition failed (known not to have reached the
    /// outside); the stage is unchanged and the task is held with the reason.
    EffectFailed {
        stage: Stage,
        kind: EffectKind,
        error: String,
    },
    /// An effect may have reached the outside and did not provably succeed
    /// (B-13): the task holds until a person decides; the daemon never runs
    /// it again on its own.
    EffectUnknown {
        stage: Stage,
        kind: EffectKind,
        error: String,
    },
    /// A graceful stop is under way: no new effect starts (B-13). Nothing
    /// changed; the next start (or the reconciler) carries it on.
    Draining,
    LeaseBusy {
        actor: String,
        transition: String,
    },
    LostRace,
    Terminal {
        stage: Stage,
    },
    NotFound,
}

/// Step boundaries of a transition, observable by [`Hooks`] (the crash test
/// kills its process at each one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    BeforeLease,
    AfterLease,
    AfterPlanned,
    AfterApply,
    AfterDone,
    AfterCas,
    BeforeRelease,
}

impl Step {
    pub const ALL: [Step; 7] = [
        Step::BeforeLease,
        Step::AfterLease,
        Step::AfterPlanned,
        Step::AfterApply,
        Step::AfterDone,
        Step::AfterCas,
        Step::BeforeRelease,
    ];
}

/// The defences of the guarantee (ADR 0002, 0007). The daemon always runs
/// with all of them. The simulation (B-2) turns one off at a time to show
/// that each carries weight; that is possible only with the
/// `defence-switches` cargo feature, which only the test build enables
/// (through the crate's dev-dependency on itself): the shipped binary has
/// no way to turn any off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Defences {
    /// A live lease holder makes others `LeaseBusy`.
    pub lease: bool,
    /// The stage write compares (stage, stage_version).
    pub cas: bool,
    /// Effects run through the journal (planned → done rows).
    pub journal: bool,
    /// An open row is reconciled with the outside before it is applied.
    pub reconcile: bool,
    /// A holder's writes after planning are conditioned on its generation.
    pub fencing: bool,
}

impl Defences {
    pub const ALL: Defences = Defences {
        lease: true,
        cas: true,
        journal: true,
        reconcile: true,
        fencing: true,
    };

    /// The names the simulation prints: `lease`, `cas`, `journal`,
    /// `reconcile`, `fencing`.
    pub const NAMES: [&'static str; 5] = ["lease", "cas", "journal", "reconcile", "fencing"];

    /// All defences but `name`.
    pub fn without(name: &str) -> Option<Defences> {
        let mut d = Defences::ALL;
        match name {
            "lease" => d.lease = false,
            "cas" => d.cas = false,
            "journal" => d.journal = false,
            "reconcile" => d.reconcile = false,
            "fencing" => d.fencing = false,
            _ => return None,
        }
        Some(d)
    }
}

/// Observer of step boundaries. The daemon uses the no-op default.
pub trait Hooks: Send + Sync {
    fn at(&self, _step: Step, _task_id: i64) {}
    /// A boundary reached while holding the lease as `holder` (the token).
    fn at_held(&self, step: Step, task_id: i64, _holder: &str) {
        self.at(step, task_id);
    }
}

pub struct NoHooks;
impl Hooks for NoHooks {}

/// The key effects of one transition are journaled under. A second pass of
/// the same arrow after a rollback has a new version, so fresh keys.
/// An outcome in `/metrics` (issue 16).
fn count(out: &Outcome) {
    let f = crate::telemetry::metrics::families();
    match out {
        Outcome::Advanced { from, to, .. } => f.transition(from.as_str(), to.as_str(), "advanced"),
        Outcome::RolledBack { from, to, .. } => {
            f.transition(from.as_str(), to.as_str(), "rolled_back")
        }
        Outcome::Cancelled { from, .. } => {
            f.transition(from.as_str(), Stage::Cancelled.as_str(), "cancelled")
        }
        Outcome::LostRace => {
            f.lost_cas.inc();
        }
        Outcome::LeaseBusy { .. } => {
            f.busy_leases.inc();
        }
        _ => {}
    }
}

pub fn transition_key(task_id: i64, from: Stage, to: Stage, version: i64) -> String {
    format!("task:{task_id}/{from}->{to}@v{version}")
}

struct Inner {
    db: Db,
    boot: Arc<Boot>,
    releaser: mpsc::UnboundedSender<(i64, String)>,
    effects: EffectRegistry,
    inputs: Arc<dyn GateInputs>,
    notifier: Arc<dyn Notifier>,
    hooks: Arc<dyn Hooks>,
    drain: Arc<EffectDrain>,
    #[cfg(feature = "defence-switches")]
    defences: Defences,
}

/// Cheap to clone; every actor holds one.
#[derive(Clone)]
pub struct Engine(Arc<Inner>);

pub struct EngineBuilder {
    db: Db,
    boot: Arc<Boot>,
    effects: EffectRegistry,
    inputs: Arc<dyn GateInputs>,
    notifier: Arc<dyn Notifier>,
    hooks: Arc<dyn Hooks>,
    drain: Arc<EffectDrain>,
    #[cfg(feature = "defence-switches")]
    defences: Defences,
}

impl EngineBuilder {
    /// Simulation only: run without some defences (see [`Defences`]).
    #[cfg(feature = "defence-switches")]
    pub fn defences(mut self, d: Defences) -> Self {
        self.defences = d;
        self
    }

    /// The process's drain of effects in flight (B-13): a graceful stop
    /// waits for the effects this engine runs and refuses new ones.
    pub fn drain(mut self, d: Arc<EffectDrain>) -> Self {
        self.drain = d;
        self
    }
    pub fn effects(mut self, e: EffectRegistry) -> Self {
        self.effects = e;
        self
    }
    pub fn inputs(mut self, i: Arc<dyn GateInputs>) -> Self {
        self.inputs = i;
        self
    }
    pub fn notifier(mut self, n: Arc<dyn Notifier>) -> Self {
        self.notifier = n;
        self
    }
    pub fn hooks(mut self, h: Arc<dyn Hooks>) -> Self {
        self.hooks = h;
        self
    }
    /// Needs a tokio runtime: it starts the releaser of dropped leases.
    pub fn build(self) -> Engine {
        let releaser = lease::spawn_releaser(self.db.clone());
        Engine(Arc::new(Inner {
            db: self.db,
            boot: self.boot,
            releaser,
            effects: self.effects,
            inputs: self.inputs,
            notifier: self.notifier,
            hooks: self.hooks,
            drain: self.drain,
            #[cfg(feature = "defence-switches")]
            defences: self.defences,
        }))
    }
}

/// Every effect kind backed by [`NoopEffect`]: the registry the daemon uses
/// until the capabilities behind each kind are wired.
pub fn noop_effects() -> EffectRegistry {
    EffectKind::ALL.iter().fold(EffectRegistry::new(), |r, k| {
        r.with(*k, Arc::new(NoopEffect))
    })
}

impl Engine {
    pub fn builder(db: Db, boot: Arc<Boot>) -> EngineBuilder {
        EngineBuilder {
            db,
            boot,
            effects: noop_effects(),
            inputs: Arc::new(FsArtifacts),
            notifier: Arc::new(LogNotifier),
            hooks: Arc::new(NoHooks),
            drain: EffectDrain::new(),
            #[cfg(feature = "defence-switches")]
            defences: Defences::ALL,
        }
    }

    /// The defences this engine runs with: all of them, except in a
    /// simulation build that switched one off.
    pub fn defences(&self) -> Defences {
        #[cfg(feature = "defence-switches")]
        {
            self.0.defences
        }
        #[cfg(not(feature = "defence-switches"))]
        {
            Defences::ALL
        }
    }

    pub fn db(&self) -> &Db {
        &self.0.db
    }

    pub fn boot(&self) -> &Arc<Boot> {
        &self.0.boot
    }

    pub fn drain(&self) -> &Arc<EffectDrain> {
        &self.0.drain
    }

    fn hook(&self, step: Step, task_id: i64) {
        self.0.hooks.at(step, task_id);
    }

    async fn alert(&self, kind: &'static str, work_item: Option<String>, message: String) {
        self.alert_keyed(kind, work_item, None, message).await;
    }

    /// An alert with an explicit dedup key (F-27, `notify::Dedup`).
    async fn alert_keyed(
        &self,
        kind: &'static str,
        work_item: Option<String>,
        key: Option<String>,
        message: String,
    ) {
        self.0
            .notifier
            .alert(Alert {
                kind,
                work_item,
                message,
                key,
            })
            .await;
    }

    async fn task(&self, task_id: i64) -> Result<Option<TaskRow>, EngineError> {
        Ok(tasks::get(self.0.db.reader(), task_id).await?)
    }

    /// Move `snap` to `target` under the lease. The target may be replaced
    /// under the lease by a requested cancel or a journaled intent.
    pub async fn transition(
        &self,
        snap: &TaskRow,
        target: Stage,
        actor: &str,
        reason: &str,
    ) -> Result<Outcome, EngineError> {
        let out = self.transition_once(snap, target, actor, reason).await;
        if let Ok(out) = &out {
            count(out);
        }
        out
    }

    async fn transition_once(
        &self,
        snap: &TaskRow,
        target: Stage,
        actor: &str,
        reason: &str,
    ) -> Result<Outcome, EngineError> {
        if !snap.stage.can_move_to(target) {
            return Err(EngineError::InvalidTransition {
                from: snap.stage,
                to: target,
            });
        }
        let task_id = snap.id;
        self.hook(Step::BeforeLease, task_id);
        // No effect to run: one transaction does it all (atomic.rs).
        if snap.stage.effects_to(target).is_empty()
            && let Some(out) = self
                .transition_in_one_statement(snap, target, actor, reason)
                .await?
        {
            return Ok(out);
        }
        let key = transition_key(task_id, snap.stage, target, snap.stage_version);
        let acquired = lease::acquire(
            &self.0.db,
            &self.0.boot,
            &self.0.releaser,
            task_id,
            actor,
            &key,
            !self.defences().lease,
        )
        .await?;
        let guard = match acquired {
            lease::Acquire::Busy(row) => {
                return Ok(Outcome::LeaseBusy {
                    actor: row.actor,
                    transition: row.transition,
                });
            }
            lease::Acquire::Acquired { guard, took_over } => {
                if let Some(stale) = took_over {
                    self.alert(
                        "lease_stale_reclaimed",
                        Some(snap.work_item.clone()),
                        format!(
                            "took over the stale transition lease of {} ({}, pid {}, boot {})",
                            snap.work_item, stale.actor, stale.owner_pid, stale.owner_boot_id
                        ),
                    )
                    .await;
                }
                guard
            }
        };
        self.0
            .hooks
            .at_held(Step::AfterLease, task_id, &guard.token);
        let fence = Fence {
            enforce: self.defences().fencing,
            ..guard.fence()
        };
        let result = self
            .in_lease(&guard.token, fence, snap, target, actor, reason)
            .await;
        self.0
            .hooks
            .at_held(Step::BeforeRelease, task_id, &guard.token);
        match result {
            // The CAS transaction deleted the lease row with the stage write.
            Ok((out, true)) => {
                guard.released_in_tx();
                Ok(out)
            }
            other => {
                if let Err(e) = guard.release(&self.0.db).await {
                    // The token is unregistered: the row is stale and the
                    // next acquirer takes it over.
                    tracing::warn!(task_id, error = %e, "lease release failed; row left stale");
                }
                other.map(|(out, _)| out)
            }
        }
    }

    async fn in_lease(
        &self,
        holder: &str,
        fence: Fence,
        snap: &TaskRow,
        proposed: Stage,
        actor: &str,
        reason: &str,
    ) -> Result<(Outcome, bool), EngineError> {
        let task_id = snap.id;
        // Reads under the lease use the read pool: the lease keeps other
        // actors out and the CAS below fences whatever slips through.
        let Some(cur) = tasks::get(self.0.db.reader(), task_id).await? else {
            return Ok((Outcome::NotFound, false));
        };
        let d = self.defences();
        if d.cas && (cur.stage != snap.stage || cur.stage_version != snap.stage_version) {
            return Ok((Outcome::LostRace, false));
        }
        // The `cas` defence off (simulation only): decide on the snapshot.
        let cur = if d.cas { cur } else { snap.clone() };
        let version = cur.stage_version;
        let intent = effects::intent_at(self.0.db.reader(), task_id, version).await?;
        let cancelling = cur.cancel_requested_at.is_some() || proposed == Stage::Cancelled;
        // B-13: the effects of this transition count as in flight from the
        // first one on; a graceful stop refuses to start them.
        let mut in_flight: Option<InFlight> = None;

        // 1. An effect a crashed holder initiated (planned) is finished first
        //    (reconciled, applied only if it did not happen): the critical
        //    window always closes before anything else is decided. An
        //    effect whose outcome is unknown waits for a person; a STOP is
        //    such a decision: it leaves the row as a record and cancels.
        for row in intent
            .iter()
            .filter(|r| r.state == "planned" || (r.state == "unknown" && !cancelling))
        {
            let Some(kind) = EffectKind::ALL
                .iter()
                .copied()
                .find(|k| k.as_str() == row.kind)
            else {
                return Err(EngineError::Internal(format!(
                    "unknown effect kind {}",
                    row.kind
                )));
            };
            let run = RunEffect {
                holder,
                fence,
                task: &cur,
                key: &row.transition_key,
                kind,
                from: row.from_stage,
                to: row.to_stage,
            };
            match self.run_effect(run, &mut in_flight).await? {
                None => {}
                // A person's STOP does not wait on an outcome nobody knows.
                Some(Outcome::EffectUnknown { .. }) if cancelling => {}
                Some(out) => return Ok((out, false)),
            }
        }

        // 2. Decide: a requested cancel wins; else a journaled transition at
        //    this version is completed (never "merged, then rolled back");
        //    else the caller's target.
        let (target, reason) = if cur.cancel_requested_at.is_some() {
            (Stage::Cancelled, "cancel requested")
        } else if let Some(row) = intent.first() {
            (row.to_stage, "resume journaled transition")
        } else {
            (proposed, reason)
        };
        if !cur.stage.can_move_to(target) {
            return Err(EngineError::InvalidTransition {
                from: cur.stage,
                to: target,
            });
        }

        // Every effect must have an implementation BEFORE the first runs:
        // a wiring gap must not leave half a transition (merged, not deployed).
        if let Some(kind) = cur
            .stage
            .effects_to(target)
            .iter()
            .find(|k| self.0.effects.get(**k).is_none())
        {
            return Err(EngineError::MissingEffect(*kind));
        }

        // 3. The transition's effects, in order, through the journal.
        let key = transition_key(task_id, cur.stage, target, version);
        for kind in cur.stage.effects_to(target) {
            let run = RunEffect {
                holder,
                fence,
                task: &cur,
                key: &key,
                kind: *kind,
                from: cur.stage,
                to: target,
            };
            if let Some(out) = self.run_effect(run, &mut in_flight).await? {
                return Ok((out, false));
            }
        }

        // 4. The stage write, fenced by our lease generation.
        let mut tx = self.0.db.begin_write().await?;
        let cas = cas::write_stage(
            &mut tx,
            &cas::StageWrite {
                task_id,
                from: cur.stage,
                from_version: version,
                generation: d.fencing.then_some(fence.generation),
                to: target,
                actor,
                reason,
                compare: d.cas,
            },
        )
        .await?;
        let Cas::Won { version } = cas else {
            return Ok((Outcome::LostRace, false));
        };
        // The lease ends with the write it guarded: no window where the
        // stage moved but the row still claims the task.
        leases::delete_if_holder(&mut *tx, task_id, holder).await?;
        tx.commit().await?;
        drop(in_flight);
        self.hook(Step::AfterCas, task_id);
        tracing::info!(work_item = %cur.work_item, from = %cur.stage, to = %target, version, actor, reason, "stage moved");
        Ok((moved(cur.stage, target, version, reason), true))
    }

    /// Run one effect through the journal. `Some(outcome)` stops the
    /// transition (the effect failed or its outcome is unknown: the task is
    /// held with the reason; or a graceful stop refused to start it).
    async fn run_effect(
        &self,
        r: RunEffect<'_>,
        in_flight: &mut Option<InFlight>,
    ) -> Result<Option<Outcome>, EngineError> {
        let RunEffect {
            holder,
            fence,
            task,
            key,
            kind,
            from,
            to,
        } = r;
        let effect = self
            .0
            .effects
            .get(kind)
            .ok_or(EngineError::MissingEffect(kind))?;
        if in_flight.is_none() {
            match self
                .0
                .drain
                .begin(format!("{} of {} ({key})", kind.as_str(), task.work_item))
            {
                Some(g) => *in_flight = Some(g),
                None => {
                    tracing::info!(work_item = %task.work_item, kind = kind.as_str(), "graceful stop under way: the effect is not started");
                    return Ok(Some(Outcome::Draining));
                }
            }
        }
        let ctx = EffectCtx {
            task: task.clone(),
            transition_key: key.to_string(),
            kind,
            from,
            to,
        };
        let hooks = self.0.hooks.clone();
        let task_id = task.id;
        let at = move |p: journal::JournalPoint| {
            let step = match p {
                journal::JournalPoint::AfterPlanned => Step::AfterPlanned,
                journal::JournalPoint::AfterApply => Step::AfterApply,
                journal::JournalPoint::AfterDone => Step::AfterDone,
            };
            hooks.at_held(step, task_id, holder);
        };
        let d = self.defences();
        let args = journal::RunArgs {
            db: &self.0.db,
            effect: effect.as_ref(),
            ctx: &ctx,
            version: task.stage_version,
            holder,
            fence,
            reconcile: d.reconcile,
            at: &at,
        };
        let ran = if d.journal {
            journal::run(args).await
        } else {
            journal::run_unjournaled(args).await
        };
        let (error, unknown) = match ran {
            Ok(_) => return Ok(None),
            Err(EngineError::Effect { error, .. }) => {
                let unknown = matches!(error, EffectError::Unknown(_));
                (error.to_string(), unknown)
            }
            Err(e) => return Err(e),
        };
        let hold = if unknown {
            format!("{}: {error}; a person must decide", kind.as_str())
        } else {
            format!("{}: {error}", kind.as_str())
        };
        // Fenced too: a holder whose lease was taken holds nothing.
        if !tasks::set_hold_fenced(self.0.db.writer(), fence, &hold).await? {
            return Err(EngineError::LeaseLost { task_id });
        }
        // One condition per transition and effect: a retry that fails again
        // (the reconciler's sweep of a STOP, every tick) is a repeat; a later
        // pass or a fresh task is not.
        let (alert_kind, what) = if unknown {
            (
                "effect_unknown",
                "outcome is unknown; task held until a person decides",
            )
        } else {
            ("effect_failed", "failed, task held")
        };
        self.alert_keyed(
            alert_kind,
            Some(task.work_item.clone()),
            Some(format!("{key} {}", kind.as_str())),
            format!(
                "{} {key}: {} {what}: {error}",
                task.work_item,
                kind.as_str()
            ),
        )
        .await;
        Ok(Some(if unknown {
            Outcome::EffectUnknown {
                stage: task.stage,
                kind,
                error,
            }
        } else {
            Outcome::EffectFailed {
                stage: task.stage,
                kind,
                error,
            }
        }))
    }
}

/// The outcome of a won stage write `from -> to`, now at `version`.
fn moved(from: Stage, to: Stage, version: i64, reason: &str) -> Outcome {
    if to == Stage::Cancelled {
        Outcome::Cancelled { from, version }
    } else if Some(to) == from.next() {
        Outcome::Advanced { from, to, version }
    } else {
        Outcome::RolledBack {
            from,
            to,
            version,
            reason: reason.to_string(),
        }
    }
}

/// One effect run's arguments.
struct RunEffect<'a> {
    holder: &'a str,
    fence: Fence,
    task: &'a TaskRow,
    key: &'a str,
    kind: EffectKind,
    from: Stage,
    to: Stage,
}
