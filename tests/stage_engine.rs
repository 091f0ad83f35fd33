//! The stage engine (F-10, B-1) against real SQLite files: gates drive the
//! forward path and rollbacks, the (stage, stage_version) CAS fences stale
//! snapshots, the transition lease keeps a second actor out of the effectful
//! region, the effect journal keeps an irreversible effect from running twice
//! (across failures, panics and "crashes" left in the tables), cancel is
//! deferred to a live holder, and the operator can force-release a lease over
//! the real router.

mod support;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use orchestrator::db::effects::EffectRow;
use orchestrator::db::history::{self, HistoryRow};
use orchestrator::db::leases::{self, LeaseRow};
use orchestrator::db::tasks::{self, NewTask, TaskRow};
use orchestrator::db::{Db, now_ms};
use orchestrator::domain::{EffectKind, GateInput, Stage};
use orchestrator::http::{AppState, Metrics};
use orchestrator::notify::RecordingNotifier;
use orchestrator::stage_engine::lease::process_start_time;
use orchestrator::stage_engine::{
    Boot, Effect, EffectCtx, EffectError, EffectRegistry, EffectResult, Engine, EngineError,
    ForceRelease, GateInputs, Hooks, Outcome, Step, transition_key,
};
use tokio::sync::Notify;

use Stage::*;

/// Upper bound for any wait on another task: a hang fails, it never blocks CI.
const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// Gate inputs the test sets
// ---------------------------------------------------------------------------

/// One shared [`GateInput`]; each gate reads only its own artifact, so one
/// value serves every stage. The human answers recorded on the task row
/// (`approved_at`, `deploy_confirmed_at`) are honoured as the daemon does.
struct Inputs(Mutex<GateInput>);

impl Inputs {
    /// Every artifact says pass; the human answers are `humans`.
    fn passing(humans: bool) -> Arc<Self> {
        let mut i = GateInput {
            approved: humans,
            deploy_confirmed: humans,
            code_changed: Some(true),
            ..Default::default()
        };
        for (k, v) in [
            ("01-brd.md", "status: READY"),
            ("06-adr/ADR-001-x.md", "status: READY"),
            ("11-review.md", "verdict: APPROVE"),
            (
                "13-test-report.md",
                "result: PASS\nstatus: PASS\ntests_run: 3",
            ),
            ("14-staging-report.md", "staging_status: SUCCESS"),
        ] {
            i.artifacts.insert(k.into(), v.into());
        }
        Arc::new(Self(Mutex::new(i)))
    }

    fn artifact(&self, file: &str, text: &str) {
        self.0
            .lock()
            .unwrap()
            .artifacts
            .insert(file.into(), text.into());
    }
}

#[async_trait]
impl GateInputs for Inputs {
    async fn load(&self, task: &TaskRow) -> GateInput {
        let mut i = self.0.lock().unwrap().clone();
        i.approved |= task.approved_at.is_some();
        i.deploy_confirmed |= task.deploy_confirmed_at.is_some();
        i
    }
}

// ---------------------------------------------------------------------------
// Effects that count themselves outside the journal
// ---------------------------------------------------------------------------

type Call = (String, String); // (transition key, kind)

#[derive(Default)]
struct Ledger {
    applies: Mutex<HashMap<Call, usize>>,
    reconciles: Mutex<HashMap<Call, usize>>,
}

impl Ledger {
    fn bump(map: &Mutex<HashMap<Call, usize>>, ctx: &EffectCtx) {
        *map.lock()
            .unwrap()
            .entry((ctx.transition_key.clone(), ctx.kind.as_str().to_string()))
            .or_default() += 1;
    }
    fn applied(&self, key: &str, kind: EffectKind) -> usize {
        let m = self.applies.lock().unwrap();
        m.get(&(key.to_string(), kind.as_str().to_string()))
            .copied()
            .unwrap_or(0)
    }
    fn applied_kind(&self, kind: EffectKind) -> usize {
        let m = self.applies.lock().unwrap();
        m.iter()
            .filter(|((_, k), _)| k == kind.as_str())
            .map(|(_, n)| n)
            .sum()
    }
    fn applied_total(&self) -> usize {
        self.applies.lock().unwrap().values().sum()
    }
    fn reconciled_kind(&self, kind: EffectKind) -> usize {
        let m = self.reconciles.lock().unwrap();
        m.iter()
            .filter(|((_, k), _)| k == kind.as_str())
            .map(|(_, n)| n)
            .sum()
    }
}

/// Counts every apply and reconcile. `reconcile` answers what is configured
/// (`None` by default); applies follow `script` (then succeed).
struct Counting {
    ledger: Arc<Ledger>,
    reconcile: Mutex<Option<String>>,
    script: Mutex<VecDeque<EffectError>>,
}

impl Counting {
    fn new(ledger: &Arc<Ledger>) -> Arc<Self> {
        Arc::new(Self {
            ledger: ledger.clone(),
            reconcile: Mutex::new(None),
            script: Mutex::new(VecDeque::new()),
        })
    }
    fn reconciling(ledger: &Arc<Ledger>, answer: Option<&str>) -> Arc<Self> {
        let c = Self::new(ledger);
        *c.reconcile.lock().unwrap() = answer.map(String::from);
        c
    }
    /// The next applies fail with these errors, in order.
    fn failing(ledger: &Arc<Ledger>, errors: Vec<EffectError>) -> Arc<Self> {
        let c = Self::new(ledger);
        *c.script.lock().unwrap() = errors.into();
        c
    }
}

#[async_trait]
impl Effect for Counting {
    async fn reconcile(&self, ctx: &EffectCtx) -> Result<Option<EffectResult>, EffectError> {
        Ledger::bump(&self.ledger.reconciles, ctx);
        Ok(self.reconcile.lock().unwrap().clone())
    }
    async fn apply(&self, ctx: &EffectCtx) -> Result<EffectResult, EffectError> {
        Ledger::bump(&self.ledger.applies, ctx);
        if let Some(e) = self.script.lock().unwrap().pop_front() {
            return Err(e);
        }
        Ok(format!("applied:{}", ctx.kind.as_str()))
    }
}

/// Announces that apply started, then waits for the test's go: holds the
/// transition lease open as long as the test wants.
struct Blocking {
    ledger: Arc<Ledger>,
    entered: Arc<Notify>,
    release: Arc<Notify>,
    released: std::sync::atomic::AtomicBool,
}

impl Blocking {
    fn new(ledger: &Arc<Ledger>) -> (Arc<Self>, Arc<Notify>, Arc<Notify>) {
        let entered = Arc::new(Notify::new());
        let release = Arc::new(Notify::new());
        (
            Arc::new(Self {
                ledger: ledger.clone(),
                entered: entered.clone(),
                release: release.clone(),
                released: Default::default(),
            }),
            entered,
            release,
        )
    }
}

#[async_trait]
impl Effect for Blocking {
    /// An honest oracle: it happened once an apply of this key got past
    /// the test's go.
    async fn reconcile(&self, ctx: &EffectCtx) -> Result<Option<EffectResult>, EffectError> {
        Ledger::bump(&self.ledger.reconciles, ctx);
        let done = self.ledger.applied(&ctx.transition_key, ctx.kind) > 0
            && self.released.load(std::sync::atomic::Ordering::SeqCst);
        Ok(done.then(|| format!("applied:{}", ctx.kind.as_str())))
    }
    async fn apply(&self, ctx: &EffectCtx) -> Result<EffectResult, EffectError> {
        Ledger::bump(&self.ledger.applies, ctx);
        self.entered.notify_one();
        self.release.notified().await;
        self.released
            .store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(format!("applied:{}", ctx.kind.as_str()))
    }
}

struct Panicking;

#[async_trait]
impl Effect for Panicking {
    async fn reconcile(&self, _: &EffectCtx) -> Result<Option<EffectResult>, EffectError> {
        Ok(None)
    }
    async fn apply(&self, ctx: &EffectCtx) -> Result<EffectResult, EffectError> {
        panic!("{} panicked on purpose", ctx.kind.as_str());
    }
}

fn counting_registry(ledger: &Arc<Ledger>) -> EffectRegistry {
    EffectKind::ALL.iter().fold(EffectRegistry::new(), |r, k| {
        r.with(*k, Counting::new(ledger))
    })
}

async fn wait_for(n: &Notify, what: &str) {
    tokio::time::timeout(WAIT, n.notified())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

// ---------------------------------------------------------------------------
// Hooks
// ---------------------------------------------------------------------------

#[derive(Default)]
struct StepLog(Mutex<Vec<(Step, i64)>>);

impl StepLog {
    fn steps(&self, task_id: i64) -> Vec<Step> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, t)| *t == task_id)
            .map(|(s, _)| *s)
            .collect()
    }
}

impl Hooks for StepLog {
    fn at(&self, step: Step, task_id: i64) {
        self.0.lock().unwrap().push((step, task_id));
    }
}

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

struct H {
    dir: tempfile::TempDir,
    db: Db,
    engine: Engine,
    inputs: Arc<Inputs>,
    ledger: Arc<Ledger>,
    alerts: Arc<RecordingNotifier>,
    steps: Arc<StepLog>,
}

async fn harness(inputs: Arc<Inputs>, registry: impl FnOnce(&Arc<Ledger>) -> EffectRegistry) -> H {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&support::db_path(dir.path())).await.unwrap();
    let ledger = Arc::new(Ledger::default());
    let alerts = Arc::new(RecordingNotifier::default());
    let steps = Arc::new(StepLog::default());
    let engine = Engine::builder(db.clone(), Boot::new())
        .effects(registry(&ledger))
        .inputs(inputs.clone())
        .notifier(alerts.clone())
        .hooks(steps.clone())
        .build();
    H {
        dir,
        db,
        engine,
        inputs,
        ledger,
        alerts,
        steps,
    }
}

impl H {
    /// Another engine on the same database and the same boot (another actor
    /// of this daemon) with its own effect registry.
    fn engine_with(&self, effects: EffectRegistry) -> Engine {
        Engine::builder(self.db.clone(), self.engine.boot().clone())
            .effects(effects)
            .inputs(self.inputs.clone())
            .notifier(self.alerts.clone())
            .build()
    }

    async fn task(&self, work_item: &str) -> i64 {
        tasks::insert(
            self.db.writer(),
            &NewTask {
                work_item: work_item.into(),
                project: "demo".into(),
                title: format!("task {work_item}"),
                ..Default::default()
            },
        )
        .await
        .unwrap()
    }

    /// Test set-up only: put a task at a stage/version as if it had got there.
    async fn place(&self, id: i64, stage: Stage, version: i64) {
        sqlx::query("UPDATE tasks SET stage = ?, stage_version = ? WHERE id = ?")
            .bind(stage.as_str())
            .bind(version)
            .bind(id)
            .execute(self.db.writer())
            .await
            .unwrap();
    }

    async fn get(&self, id: i64) -> TaskRow {
        tasks::get(self.db.reader(), id).await.unwrap().unwrap()
    }

    async fn advance(&self, id: i64) -> Outcome {
        tokio::time::timeout(WAIT, self.engine.advance_stage(id, "monitor"))
            .await
            .expect("advance_stage returns")
            .unwrap()
    }

    async fn history(&self, id: i64) -> Vec<HistoryRow> {
        history::for_task(self.db.reader(), id).await.unwrap()
    }

    /// (from, to, from_version, to_version) of every stage write.
    async fn path(&self, id: i64) -> Vec<(Stage, Stage, i64, i64)> {
        self.history(id)
            .await
            .iter()
            .map(|r| (r.from_stage, r.to_stage, r.from_version, r.to_version))
            .collect()
    }

    async fn effect_rows(&self, id: i64) -> Vec<EffectRow> {
        sqlx::query_as("SELECT * FROM effects WHERE task_id = ? ORDER BY id")
            .bind(id)
            .fetch_all(self.db.reader())
            .await
            .unwrap()
    }

    async fn lease_rows(&self) -> Vec<LeaseRow> {
        leases::all(self.db.reader()).await.unwrap()
    }

    fn alert_kinds(&self) -> Vec<(&'static str, Option<String>)> {
        self.alerts
            .alerts()
            .into_iter()
            .map(|a| (a.kind, a.work_item))
            .collect()
    }

    /// A lease row as another daemon (another boot) would have left it.
    async fn foreign_lease(&self, task_id: i64, pid: i64, start_time: i64) {
        leases::put(
            self.db.writer(),
            &LeaseRow {
                task_id,
                owner_pid: pid,
                owner_start_time: start_time,
                owner_boot_id: "boot-of-another-daemon".into(),
                holder: "token-of-another-daemon".into(),
                actor: "ghost".into(),
                transition: transition_key(task_id, Created, Analysis, 0),
                acquired_at: now_ms() - 60_000,
            },
        )
        .await
        .unwrap();
    }

    /// An effect row as a holder that died between plan and done left it.
    async fn planned_effect(
        &self,
        task_id: i64,
        from: Stage,
        to: Stage,
        version: i64,
        kind: EffectKind,
        state: &str,
    ) {
        sqlx::query(
            "INSERT INTO effects (task_id, transition_key, from_stage, to_stage, stage_version,
                                  kind, state, holder, result, planned_at, done_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, 'dead-holder', CASE WHEN ? = 'done' THEN 'earlier' END, ?,
                     CASE WHEN ? = 'done' THEN ? END)",
        )
        .bind(task_id)
        .bind(transition_key(task_id, from, to, version))
        .bind(from.as_str())
        .bind(to.as_str())
        .bind(version)
        .bind(kind.as_str())
        .bind(state)
        .bind(state)
        .bind(now_ms())
        .bind(state)
        .bind(now_ms())
        .execute(self.db.writer())
        .await
        .unwrap();
    }
}

fn advanced(from: Stage, to: Stage, version: i64) -> Outcome {
    Outcome::Advanced { from, to, version }
}

/// The pid of a process that has exited and been reaped.
fn dead_pid() -> i64 {
    let mut child = std::process::Command::new("sleep")
        .arg("0")
        .spawn()
        .unwrap();
    let pid = child.id() as i64;
    child.wait().unwrap();
    pid
}

// ---------------------------------------------------------------------------
// 1. Happy path
// ---------------------------------------------------------------------------

#[tokio::test]
async fn happy_path_created_to_done_with_human_answers_and_effects_once() {
    let h = harness(Inputs::passing(false), counting_registry).await;
    let id = h.task("DEMO-1").await;

    assert_eq!(h.advance(id).await, advanced(Created, Analysis, 1));
    // The BRD is READY, but nobody approved it yet.
    for _ in 0..2 {
        assert_eq!(
            h.advance(id).await,
            Outcome::Pending {
                stage: Analysis,
                reason: "BRD ready, waiting for Approved".into()
            }
        );
    }
    assert_eq!(h.get(id).await.stage_version, 1, "Pending writes nothing");
    tasks::set_approved(h.db.writer(), id).await.unwrap();
    assert_eq!(h.advance(id).await, advanced(Analysis, Architecture, 2));
    assert_eq!(h.advance(id).await, advanced(Architecture, Development, 3));
    assert_eq!(h.advance(id).await, advanced(Development, Review, 4));
    assert_eq!(h.advance(id).await, advanced(Review, Testing, 5));
    assert_eq!(h.advance(id).await, advanced(Testing, DeployStaging, 6));
    assert_eq!(h.advance(id).await, advanced(DeployStaging, Deploy, 7));
    assert_eq!(
        h.advance(id).await,
        Outcome::Pending {
            stage: Deploy,
            reason: "waiting for Confirm Deploy".into()
        }
    );
    assert_eq!(h.ledger.applied_kind(EffectKind::MergePr), 0);
    tasks::set_deploy_confirmed(h.db.writer(), id)
        .await
        .unwrap();
    assert_eq!(h.advance(id).await, advanced(Deploy, Done, 8));
    assert_eq!(h.advance(id).await, Outcome::Terminal { stage: Done });

    // Each effect of each irreversible edge ran exactly once, under its key.
    let staging = transition_key(id, DeployStaging, Deploy, 6);
    let prod = transition_key(id, Deploy, Done, 7);
    assert_eq!(staging, format!("task:{id}/deploy-staging->deploy@v6"));
    assert_eq!(h.ledger.applied(&staging, EffectKind::CoverageRatchet), 1);
    assert_eq!(h.ledger.applied(&staging, EffectKind::ImageRebuild), 1);
    assert_eq!(h.ledger.applied(&prod, EffectKind::MergePr), 1);
    assert_eq!(h.ledger.applied(&prod, EffectKind::ProdDeploy), 1);
    assert_eq!(h.ledger.applied_total(), 4);
    assert_eq!(h.ledger.reconciled_kind(EffectKind::MergePr), 0);

    let rows = h.effect_rows(id).await;
    let journal: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                r.transition_key.as_str(),
                r.kind.as_str(),
                r.state.as_str(),
                r.attempts,
                r.stage_version,
            )
        })
        .collect();
    assert_eq!(
        journal,
        vec![
            (staging.as_str(), "coverage_ratchet", "done", 1, 6),
            (staging.as_str(), "image_rebuild", "done", 1, 6),
            (prod.as_str(), "merge_pr", "done", 1, 7),
            (prod.as_str(), "prod_deploy", "done", 1, 7),
        ]
    );
    assert_eq!(rows[2].result.as_deref(), Some("applied:merge_pr"));
    assert!(
        rows.iter()
            .all(|r| r.done_at.is_some() && r.error.is_none())
    );

    let hist = h.history(id).await;
    let stages: Vec<Stage> = std::iter::once(hist[0].from_stage)
        .chain(hist.iter().map(|r| r.to_stage))
        .collect();
    assert_eq!(
        stages,
        vec![
            Created,
            Analysis,
            Architecture,
            Development,
            Review,
            Testing,
            DeployStaging,
            Deploy,
            Done
        ]
    );
    for (i, r) in hist.iter().enumerate() {
        assert_eq!(r.from_version, i as i64);
        assert_eq!(r.to_version, r.from_version + 1);
        assert_eq!(r.actor, "monitor");
        if i > 0 {
            assert_eq!(r.from_stage, hist[i - 1].to_stage, "history is a path");
        }
    }
    assert_eq!(hist[7].reason, "gate deploy_confirmed passed");

    let t = h.get(id).await;
    assert_eq!((t.stage, t.stage_version), (Done, 8));
    assert!(t.hold_reason.is_none() && t.tombstoned_at.is_none());
    assert!(h.lease_rows().await.is_empty(), "no lease left behind");
    assert!(h.alerts.alerts().is_empty(), "{:?}", h.alerts.alerts());
}

#[tokio::test]
async fn hooks_observe_every_step_of_an_effectful_transition_in_order() {
    let h = harness(Inputs::passing(true), counting_registry).await;
    let id = h.task("DEMO-1").await;
    h.place(id, Deploy, 7).await;
    assert_eq!(h.advance(id).await, advanced(Deploy, Done, 8));
    use Step::*;
    assert_eq!(
        h.steps.steps(id),
        vec![
            BeforeLease,
            AfterLease,
            AfterPlanned,
            AfterApply,
            AfterDone,
            AfterPlanned,
            AfterApply,
            AfterDone,
            AfterCas,
            BeforeRelease
        ]
    );
}

#[tokio::test]
async fn unknown_task_and_terminal_task() {
    let h = harness(Inputs::passing(true), counting_registry).await;
    assert_eq!(h.advance(4242).await, Outcome::NotFound);
    assert_eq!(
        h.engine.cancel(4242, "plane", "STOP").await.unwrap(),
        (Outcome::NotFound, false)
    );
    let id = h.task("DEMO-1").await;
    h.place(id, Done, 8).await;
    assert_eq!(h.advance(id).await, Outcome::Terminal { stage: Done });
    assert_eq!(
        h.engine.cancel(id, "plane", "STOP").await.unwrap(),
        (Outcome::Terminal { stage: Done }, false)
    );
    assert!(h.get(id).await.cancel_requested_at.is_none());
    assert!(h.steps.steps(id).is_empty(), "no lease was even tried");
}

// ---------------------------------------------------------------------------
// 2. Rollbacks and fresh keys for a second pass
// ---------------------------------------------------------------------------

#[tokio::test]
async fn rollbacks_bump_the_version_and_a_second_pass_gets_fresh_keys() {
    let h = harness(Inputs::passing(true), |l| {
        // The first coverage ratchet fails (known not to have happened).
        counting_registry(l).with(
            EffectKind::CoverageRatchet,
            Counting::failing(l, vec![EffectError::Failed("baseline locked".into())]),
        )
    })
    .await;
    let id = h.task("DEMO-1").await;
    for v in 1..=4 {
        assert!(matches!(h.advance(id).await, Outcome::Advanced { version, .. } if version == v));
    }
    assert_eq!(h.get(id).await.stage, Review);

    h.inputs
        .artifact("11-review.md", "verdict: REQUEST_CHANGES");
    assert_eq!(
        h.advance(id).await,
        Outcome::RolledBack {
            from: Review,
            to: Development,
            version: 5,
            reason: "reviewer requested changes".into()
        }
    );
    h.inputs.artifact("11-review.md", "verdict: APPROVE");
    assert_eq!(h.advance(id).await, advanced(Development, Review, 6));
    assert_eq!(h.advance(id).await, advanced(Review, Testing, 7));
    assert_eq!(h.advance(id).await, advanced(Testing, DeployStaging, 8));

    // First pass of deploy-staging -> deploy: its first effect fails.
    assert_eq!(
        h.advance(id).await,
        Outcome::EffectFailed {
            stage: DeployStaging,
            kind: EffectKind::CoverageRatchet,
            error: "effect failed: baseline locked".into()
        }
    );
    // Staging then reports failure: a failed effect is no journaled intent,
    // so the gate decides and the task goes back to development.
    h.inputs
        .artifact("14-staging-report.md", "staging_status: FAILURE");
    assert_eq!(
        h.advance(id).await,
        Outcome::RolledBack {
            from: DeployStaging,
            to: Development,
            version: 9,
            reason: "staging failed".into()
        }
    );
    assert!(
        h.get(id).await.hold_reason.is_none(),
        "the stage write clears the hold"
    );

    h.inputs
        .artifact("14-staging-report.md", "staging_status: SUCCESS");
    assert_eq!(h.advance(id).await, advanced(Development, Review, 10));
    assert_eq!(h.advance(id).await, advanced(Review, Testing, 11));
    assert_eq!(h.advance(id).await, advanced(Testing, DeployStaging, 12));
    assert_eq!(h.advance(id).await, advanced(DeployStaging, Deploy, 13));

    let first = format!("task:{id}/deploy-staging->deploy@v8");
    let second = format!("task:{id}/deploy-staging->deploy@v12");
    let journal: Vec<_> = h
        .effect_rows(id)
        .await
        .into_iter()
        .map(|r| (r.transition_key, r.kind, r.state))
        .collect();
    assert_eq!(
        journal,
        vec![
            (first.clone(), "coverage_ratchet".into(), "failed".into()),
            (second.clone(), "coverage_ratchet".into(), "done".into()),
            (second.clone(), "image_rebuild".into(), "done".into()),
        ]
    );
    assert_eq!(h.ledger.applied(&first, EffectKind::CoverageRatchet), 1);
    assert_eq!(h.ledger.applied(&first, EffectKind::ImageRebuild), 0);
    assert_eq!(h.ledger.applied(&second, EffectKind::CoverageRatchet), 1);
    assert_eq!(h.ledger.applied(&second, EffectKind::ImageRebuild), 1);

    assert_eq!(
        h.path(id).await,
        vec![
            (Created, Analysis, 0, 1),
            (Analysis, Architecture, 1, 2),
            (Architecture, Development, 2, 3),
            (Development, Review, 3, 4),
            (Review, Development, 4, 5),
            (Development, Review, 5, 6),
            (Review, Testing, 6, 7),
            (Testing, DeployStaging, 7, 8),
            (DeployStaging, Development, 8, 9),
            (Development, Review, 9, 10),
            (Review, Testing, 10, 11),
            (Testing, DeployStaging, 11, 12),
            (DeployStaging, Deploy, 12, 13),
        ]
    );
}

#[tokio::test]
async fn rollback_helper_moves_to_the_rollback_target_or_refuses() {
    let h = harness(Inputs::passing(true), counting_registry).await;
    let id = h.task("DEMO-1").await;
    h.place(id, Review, 4).await;
    assert_eq!(
        h.engine
            .rollback(id, Review, "merge-gate", "conflict with main")
            .await
            .unwrap(),
        Outcome::RolledBack {
            from: Review,
            to: Development,
            version: 5,
            reason: "conflict with main".into()
        }
    );
    // The caller expected review; the task has moved on.
    assert_eq!(
        h.engine
            .rollback(id, Review, "merge-gate", "again")
            .await
            .unwrap(),
        Outcome::LostRace
    );
    // Development has no rollback target.
    assert!(matches!(
        h.engine.rollback(id, Development, "x", "y").await,
        Err(EngineError::InvalidTransition {
            from: Development,
            to: Development
        })
    ));
    assert_eq!(h.path(id).await, vec![(Review, Development, 4, 5)]);
    assert_eq!(h.history(id).await[0].actor, "merge-gate");
}

// ---------------------------------------------------------------------------
// 3. A failed gate without rollback target
// ---------------------------------------------------------------------------

#[tokio::test]
async fn failed_gate_without_rollback_target_stays() {
    let h = harness(Inputs::passing(true), counting_registry).await;
    let id = h.task("DEMO-1").await;
    assert_eq!(h.advance(id).await, advanced(Created, Analysis, 1));
    h.inputs.artifact("01-brd.md", "status: NEEDS_INPUT");
    assert_eq!(
        h.advance(id).await,
        Outcome::GateFailed {
            stage: Analysis,
            reason: "analyst needs input".into()
        }
    );
    let t = h.get(id).await;
    assert_eq!((t.stage, t.stage_version), (Analysis, 1));
    assert_eq!(h.history(id).await.len(), 1, "only created -> analysis");
    assert!(h.lease_rows().await.is_empty());
    assert!(h.effect_rows(id).await.is_empty());
}

// ---------------------------------------------------------------------------
// 4. Lost races: stale snapshots lose at the CAS
// ---------------------------------------------------------------------------

#[tokio::test]
async fn second_snapshot_of_the_same_version_loses_the_race() {
    let h = harness(Inputs::passing(true), counting_registry).await;
    let id = h.task("DEMO-1").await;
    let snap1 = h.get(id).await;
    let snap2 = h.get(id).await;
    assert_eq!(
        h.engine
            .transition(&snap1, Analysis, "webhook", "first")
            .await
            .unwrap(),
        advanced(Created, Analysis, 1)
    );
    assert_eq!(
        h.engine
            .transition(&snap2, Analysis, "monitor", "second")
            .await
            .unwrap(),
        Outcome::LostRace
    );
    let hist = h.history(id).await;
    assert_eq!(hist.len(), 1);
    assert_eq!(
        (hist[0].actor.as_str(), hist[0].reason.as_str()),
        ("webhook", "first")
    );
    assert!(h.lease_rows().await.is_empty());

    // The same on an effectful edge: the loser runs no effect.
    let id2 = h.task("DEMO-2").await;
    h.place(id2, Deploy, 7).await;
    let s1 = h.get(id2).await;
    let s2 = h.get(id2).await;
    assert_eq!(
        h.engine
            .transition(&s1, Done, "finalizer", "go")
            .await
            .unwrap(),
        advanced(Deploy, Done, 8)
    );
    assert_eq!(
        h.engine
            .transition(&s2, Done, "monitor", "go")
            .await
            .unwrap(),
        Outcome::LostRace
    );
    assert_eq!(h.ledger.applied_kind(EffectKind::MergePr), 1);
    assert_eq!(h.ledger.applied_kind(EffectKind::ProdDeploy), 1);
    assert_eq!(h.history(id2).await.len(), 1);
}

#[tokio::test]
async fn aba_a_snapshot_of_an_earlier_visit_to_the_same_stage_loses() {
    let h = harness(Inputs::passing(true), counting_registry).await;
    let id = h.task("DEMO-1").await;
    h.place(id, Development, 3).await;
    let old = h.get(id).await;
    assert_eq!(h.advance(id).await, advanced(Development, Review, 4));
    h.inputs
        .artifact("11-review.md", "verdict: REQUEST_CHANGES");
    assert!(matches!(
        h.advance(id).await,
        Outcome::RolledBack { version: 5, .. }
    ));
    // Same stage name as the old snapshot, another version.
    assert_eq!(h.get(id).await.stage, Development);
    assert_eq!(
        h.engine
            .transition(&old, Review, "stale", "x")
            .await
            .unwrap(),
        Outcome::LostRace
    );
    assert_eq!(h.history(id).await.len(), 2);
    assert_eq!(h.get(id).await.stage_version, 5);
}

// ---------------------------------------------------------------------------
// 5. Invalid transitions
// ---------------------------------------------------------------------------

#[tokio::test]
async fn invalid_transition_is_an_error_and_writes_nothing() {
    let h = harness(Inputs::passing(true), counting_registry).await;
    let id = h.task("DEMO-1").await;
    h.place(id, Development, 3).await;
    let snap = h.get(id).await;
    let err = h
        .engine
        .transition(&snap, Done, "monitor", "skip ahead")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::InvalidTransition {
                from: Development,
                to: Done
            }
        ),
        "{err}"
    );
    // A terminal stage is a sink, even for cancel.
    let id2 = h.task("DEMO-2").await;
    h.place(id2, Done, 8).await;
    let done = h.get(id2).await;
    assert!(matches!(
        h.engine.transition(&done, Cancelled, "x", "y").await,
        Err(EngineError::InvalidTransition {
            from: Done,
            to: Cancelled
        })
    ));

    let t = h.get(id).await;
    assert_eq!((t.stage, t.stage_version), (Development, 3));
    assert!(h.history(id).await.is_empty());
    assert!(h.effect_rows(id).await.is_empty());
    assert!(h.lease_rows().await.is_empty());
    assert!(h.steps.steps(id).is_empty(), "refused before the lease");
    assert_eq!(h.ledger.applied_total(), 0);
}

#[tokio::test]
async fn missing_first_effect_implementation_is_an_error_before_anything_runs() {
    let h = harness(Inputs::passing(true), |l| {
        let mut r = EffectRegistry::new();
        for k in EffectKind::ALL {
            if k != EffectKind::MergePr {
                r.insert(k, Counting::new(l));
            }
        }
        r
    })
    .await;
    let id = h.task("DEMO-1").await;
    h.place(id, Deploy, 7).await;
    assert!(matches!(
        h.engine.advance_stage(id, "monitor").await,
        Err(EngineError::MissingEffect(EffectKind::MergePr))
    ));
    assert_eq!(h.get(id).await.stage, Deploy);
    assert_eq!(h.ledger.applied_total(), 0);
    assert!(h.lease_rows().await.is_empty(), "lease released on error");
}

#[tokio::test]
async fn missing_later_effect_implementation_runs_no_effect_of_the_transition() {
    let h = harness(Inputs::passing(true), |l| {
        let mut r = EffectRegistry::new();
        for k in EffectKind::ALL {
            if k != EffectKind::ProdDeploy {
                r.insert(k, Counting::new(l));
            }
        }
        r
    })
    .await;
    let id = h.task("DEMO-1").await;
    h.place(id, Deploy, 7).await;
    assert!(matches!(
        h.engine.advance_stage(id, "monitor").await,
        Err(EngineError::MissingEffect(EffectKind::ProdDeploy))
    ));
    // EffectRegistry: "A transition whose effect kind has no implementation
    // does not run". The merge must not have happened.
    assert_eq!(h.ledger.applied_kind(EffectKind::MergePr), 0);
    assert!(h.effect_rows(id).await.is_empty());
}

// ---------------------------------------------------------------------------
// 6. A busy lease and a deferred cancel
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn busy_lease_defers_cancel_and_a_finished_deploy_stays_done() {
    let blocking = Arc::new(Mutex::new(None));
    let slot = blocking.clone();
    let h = harness(Inputs::passing(true), move |l| {
        let (b, entered, release) = Blocking::new(l);
        *slot.lock().unwrap() = Some((entered, release));
        counting_registry(l).with(EffectKind::MergePr, b)
    })
    .await;
    let (entered, release) = blocking.lock().unwrap().take().unwrap();
    let id = h.task("DEMO-1").await;
    h.place(id, Deploy, 7).await;
    let key = transition_key(id, Deploy, Done, 7);

    let e = h.engine.clone();
    let holder = tokio::spawn(async move { e.advance_stage(id, "finalizer").await });
    wait_for(&entered, "merge_pr apply").await;

    let lease = h.lease_rows().await;
    assert_eq!(lease.len(), 1);
    assert_eq!(
        (lease[0].actor.as_str(), lease[0].transition.as_str()),
        ("finalizer", key.as_str())
    );
    assert!(h.engine.boot().is_live(&lease[0]));

    assert_eq!(
        h.advance(id).await,
        Outcome::LeaseBusy {
            actor: "finalizer".into(),
            transition: key.clone()
        }
    );
    assert_eq!(
        h.engine.cancel(id, "plane", "STOP").await.unwrap(),
        (Outcome::CancelDeferred, true)
    );
    assert_eq!(
        h.engine.cancel(id, "plane", "STOP").await.unwrap(),
        (Outcome::CancelDeferred, false),
        "a repeated STOP is not a first request"
    );
    let t = h.get(id).await;
    assert_eq!(t.stage, Deploy);
    assert!(t.cancel_requested_at.is_some());
    assert_eq!(t.cancel_requested_by.as_deref(), Some("plane"));
    assert_eq!(t.cancel_reason.as_deref(), Some("STOP"));

    release.notify_one();
    let out = tokio::time::timeout(WAIT, holder)
        .await
        .expect("holder finishes")
        .unwrap()
        .unwrap();
    assert_eq!(out, advanced(Deploy, Done, 8));
    let t = h.get(id).await;
    assert_eq!((t.stage, t.stage_version), (Done, 8));
    assert!(t.tombstoned_at.is_none(), "done is not cancelled");
    assert_eq!(
        h.engine.cancel(id, "plane", "STOP").await.unwrap(),
        (Outcome::Terminal { stage: Done }, false)
    );
    assert_eq!(h.advance(id).await, Outcome::Terminal { stage: Done });
    assert_eq!(h.ledger.applied(&key, EffectKind::MergePr), 1);
    assert_eq!(h.ledger.applied(&key, EffectKind::ProdDeploy), 1);
    assert_eq!(h.ledger.applied_kind(EffectKind::DeleteBranch), 0);
    assert_eq!(h.path(id).await, vec![(Deploy, Done, 7, 8)]);
    assert!(h.lease_rows().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deferred_cancel_is_applied_by_the_holder_after_its_step() {
    let blocking = Arc::new(Mutex::new(None));
    let slot = blocking.clone();
    let h = harness(Inputs::passing(true), move |l| {
        let (b, entered, release) = Blocking::new(l);
        *slot.lock().unwrap() = Some((entered, release));
        counting_registry(l).with(EffectKind::CoverageRatchet, b)
    })
    .await;
    let (entered, release) = blocking.lock().unwrap().take().unwrap();
    let id = h.task("DEMO-1").await;
    h.place(id, DeployStaging, 6).await;
    let key = transition_key(id, DeployStaging, Deploy, 6);

    let e = h.engine.clone();
    let holder = tokio::spawn(async move { e.advance_stage(id, "finalizer").await });
    wait_for(&entered, "coverage_ratchet apply").await;
    assert_eq!(
        h.advance(id).await,
        Outcome::LeaseBusy {
            actor: "finalizer".into(),
            transition: key.clone()
        }
    );
    assert_eq!(
        h.engine.cancel(id, "plane", "STOP").await.unwrap(),
        (Outcome::CancelDeferred, true)
    );
    assert_eq!(
        h.get(id).await.stage,
        DeployStaging,
        "not cancelled mid-window"
    );

    release.notify_one();
    let out = tokio::time::timeout(WAIT, holder)
        .await
        .expect("holder finishes")
        .unwrap()
        .unwrap();
    // The holder's own step completes, then it applies the pending cancel.
    assert_eq!(out, advanced(DeployStaging, Deploy, 7));
    let t = h.get(id).await;
    assert_eq!((t.stage, t.stage_version), (Cancelled, 8));
    assert!(t.tombstoned_at.is_some());
    assert_eq!(t.work_item, "DEMO-1");
    assert_eq!(
        h.path(id).await,
        vec![(DeployStaging, Deploy, 6, 7), (Deploy, Cancelled, 7, 8)]
    );
    assert_eq!(h.history(id).await[1].reason, "cancel requested");
    let cancel_key = transition_key(id, Deploy, Cancelled, 7);
    assert_eq!(h.ledger.applied(&cancel_key, EffectKind::DeleteBranch), 1);
    assert_eq!(h.ledger.applied_kind(EffectKind::DeleteBranch), 1);
    assert_eq!(h.ledger.applied(&key, EffectKind::CoverageRatchet), 1);
    assert_eq!(h.ledger.applied(&key, EffectKind::ImageRebuild), 1);
    assert_eq!(h.ledger.applied_kind(EffectKind::MergePr), 0);
    assert!(h.lease_rows().await.is_empty());
    assert_eq!(
        h.engine.cancel(id, "plane", "STOP").await.unwrap(),
        (Outcome::Terminal { stage: Cancelled }, false)
    );
}

// ---------------------------------------------------------------------------
// 7. Cancel when nobody holds the task
// ---------------------------------------------------------------------------

#[tokio::test]
async fn idle_cancel_is_immediate_and_tombstones_the_work_item() {
    let h = harness(Inputs::passing(false), counting_registry).await;
    let id = h.task("DEMO-1").await;
    h.place(id, Deploy, 7).await;
    assert!(matches!(
        h.advance(id).await,
        Outcome::Pending { stage: Deploy, .. }
    ));
    // The live work item is unique.
    assert!(
        tasks::insert(
            h.db.writer(),
            &NewTask {
                work_item: "DEMO-1".into(),
                project: "demo".into(),
                ..Default::default()
            }
        )
        .await
        .is_err()
    );

    assert_eq!(
        h.engine.cancel(id, "plane", "STOP").await.unwrap(),
        (
            Outcome::Cancelled {
                from: Deploy,
                version: 8
            },
            true
        )
    );
    let old = h.get(id).await;
    assert_eq!((old.stage, old.stage_version), (Cancelled, 8));
    assert!(old.tombstoned_at.is_some());
    let hist = h.history(id).await;
    assert_eq!(hist.len(), 1);
    assert_eq!(
        (hist[0].actor.as_str(), hist[0].reason.as_str()),
        ("plane", "cancel requested")
    );
    assert_eq!(old.cancel_requested_by.as_deref(), Some("plane"));
    assert_eq!(old.cancel_reason.as_deref(), Some("STOP"));
    assert_eq!(
        h.ledger.applied(
            &transition_key(id, Deploy, Cancelled, 7),
            EffectKind::DeleteBranch
        ),
        1
    );
    assert_eq!(h.ledger.applied_kind(EffectKind::MergePr), 0);

    // A fresh task for the same work item; the old row keeps its work item.
    let id2 = h.task("DEMO-1").await;
    assert_ne!(id2, id);
    assert_eq!(h.get(id).await.work_item, "DEMO-1");
    assert_eq!(
        tasks::by_work_item(h.db.reader(), "DEMO-1")
            .await
            .unwrap()
            .map(|t| t.id),
        Some(id2)
    );
    assert_eq!(h.get(id2).await.stage, Created);
    assert_eq!(
        h.engine.cancel(id, "plane", "STOP").await.unwrap(),
        (Outcome::Terminal { stage: Cancelled }, false)
    );
    assert!(h.lease_rows().await.is_empty());
}

// ---------------------------------------------------------------------------
// 8. Lease rows of other processes
// ---------------------------------------------------------------------------

#[tokio::test]
async fn lease_of_a_dead_process_is_taken_over_with_an_alert() {
    let h = harness(Inputs::passing(true), counting_registry).await;
    let id = h.task("DEMO-1").await;
    let pid = dead_pid();
    h.foreign_lease(id, pid, 12345).await;

    assert_eq!(h.advance(id).await, advanced(Created, Analysis, 1));
    let alerts = h.alerts.alerts();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].kind, "lease_stale_reclaimed");
    assert_eq!(alerts[0].work_item.as_deref(), Some("DEMO-1"));
    assert!(
        alerts[0].message.contains(&format!("pid {pid}")) && alerts[0].message.contains("ghost"),
        "{}",
        alerts[0].message
    );
    assert!(h.lease_rows().await.is_empty());
}

#[tokio::test]
async fn lease_of_a_live_process_is_busy_unless_its_pid_was_reused() {
    let h = harness(Inputs::passing(true), counting_registry).await;
    let id = h.task("DEMO-1").await;
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let pid = child.id() as i64;
    let start = process_start_time(pid).expect("/proc/<pid>/stat of a live child");

    h.foreign_lease(id, pid, start).await;
    assert_eq!(
        h.advance(id).await,
        Outcome::LeaseBusy {
            actor: "ghost".into(),
            transition: transition_key(id, Created, Analysis, 0)
        }
    );
    assert_eq!(h.get(id).await.stage, Created);
    assert!(h.alerts.alerts().is_empty());

    // Same pid, another start time: the pid now belongs to someone else.
    h.foreign_lease(id, pid, start + 1).await;
    assert_eq!(h.advance(id).await, advanced(Created, Analysis, 1));
    assert_eq!(
        h.alert_kinds(),
        vec![("lease_stale_reclaimed", Some("DEMO-1".to_string()))]
    );

    child.kill().unwrap();
    child.wait().unwrap();
}

// ---------------------------------------------------------------------------
// 9. recover_on_startup
// ---------------------------------------------------------------------------

#[tokio::test]
async fn recovery_reclaims_dead_leases_and_keeps_live_ones() {
    let h = harness(Inputs::passing(true), counting_registry).await;
    let dead = h.task("DEMO-1").await;
    let live = h.task("DEMO-2").await;
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let pid = child.id() as i64;
    h.foreign_lease(dead, dead_pid(), 777).await;
    h.foreign_lease(live, pid, process_start_time(pid).unwrap())
        .await;

    let rec = h.engine.recover_on_startup().await.unwrap();
    assert_eq!(rec.reclaimed_leases, 1);
    assert_eq!(rec.kept_live_leases, 1);
    assert!(rec.resumed_tasks.is_empty());
    assert_eq!(
        h.alert_kinds(),
        vec![("lease_stale_reclaimed", Some("DEMO-1".to_string()))]
    );
    let left: Vec<i64> = h.lease_rows().await.iter().map(|r| r.task_id).collect();
    assert_eq!(left, vec![live]);
    // Nothing moved.
    assert_eq!(h.get(dead).await.stage, Created);

    child.kill().unwrap();
    child.wait().unwrap();
}

/// A daemon died inside `deploy -> done` after planning the merge: its lease
/// row and a `planned` merge_pr row are left.
async fn crashed_merge(reconcile: Option<&'static str>) -> (H, i64) {
    let h = harness(Inputs::passing(false), move |l| {
        counting_registry(l).with(EffectKind::MergePr, Counting::reconciling(l, reconcile))
    })
    .await;
    let id = h.task("DEMO-1").await;
    h.place(id, Deploy, 7).await;
    tasks::set_deploy_confirmed(h.db.writer(), id)
        .await
        .unwrap();
    h.foreign_lease(id, dead_pid(), 4242).await;
    h.planned_effect(id, Deploy, Done, 7, EffectKind::MergePr, "planned")
        .await;
    (h, id)
}

#[tokio::test]
async fn recovery_records_a_merge_that_happened_without_applying_it_again() {
    let (h, id) = crashed_merge(Some("sha-abc123")).await;
    let rec = h.engine.recover_on_startup().await.unwrap();
    assert_eq!(rec.reclaimed_leases, 1);
    assert_eq!(rec.resumed_tasks, vec![(id, advanced(Deploy, Done, 8))]);

    let key = transition_key(id, Deploy, Done, 7);
    assert_eq!(
        h.ledger.applied(&key, EffectKind::MergePr),
        0,
        "never merged twice"
    );
    assert_eq!(h.ledger.reconciled_kind(EffectKind::MergePr), 1);
    assert_eq!(h.ledger.applied(&key, EffectKind::ProdDeploy), 1);
    let rows = h.effect_rows(id).await;
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (
            rows[0].kind.as_str(),
            rows[0].state.as_str(),
            rows[0].result.as_deref()
        ),
        ("merge_pr", "done", Some("sha-abc123"))
    );
    // Reconciling is not an attempt at applying it.
    assert_eq!(rows[0].attempts, 1);
    assert_eq!(
        (rows[1].kind.as_str(), rows[1].state.as_str()),
        ("prod_deploy", "done")
    );
    let t = h.get(id).await;
    assert_eq!((t.stage, t.stage_version), (Done, 8));
    let hist = h.history(id).await;
    assert_eq!(
        (hist[0].actor.as_str(), hist[0].reason.as_str()),
        ("recovery", "resume journaled transition")
    );
    assert_eq!(
        h.alert_kinds(),
        vec![("lease_stale_reclaimed", Some("DEMO-1".to_string()))]
    );
    assert!(h.lease_rows().await.is_empty());
}

#[tokio::test]
async fn recovery_applies_a_planned_merge_that_did_not_happen() {
    let (h, id) = crashed_merge(None).await;
    let rec = h.engine.recover_on_startup().await.unwrap();
    assert_eq!(rec.resumed_tasks, vec![(id, advanced(Deploy, Done, 8))]);
    let key = transition_key(id, Deploy, Done, 7);
    assert_eq!(h.ledger.reconciled_kind(EffectKind::MergePr), 1);
    assert_eq!(h.ledger.applied(&key, EffectKind::MergePr), 1);
    assert_eq!(h.ledger.applied(&key, EffectKind::ProdDeploy), 1);
    let rows = h.effect_rows(id).await;
    assert_eq!(
        (rows[0].state.as_str(), rows[0].result.as_deref()),
        ("done", Some("applied:merge_pr"))
    );
    assert_eq!(h.get(id).await.stage, Done);
}

// ---------------------------------------------------------------------------
// 10. A journaled intent beats a later gate verdict
// ---------------------------------------------------------------------------

#[tokio::test]
async fn journaled_transition_is_completed_not_rolled_back() {
    let h = harness(Inputs::passing(true), counting_registry).await;
    h.inputs
        .artifact("14-staging-report.md", "staging_status: FAILURE");
    let id = h.task("DEMO-1").await;
    h.place(id, DeployStaging, 6).await;
    h.planned_effect(
        id,
        DeployStaging,
        Deploy,
        6,
        EffectKind::CoverageRatchet,
        "done",
    )
    .await;

    assert_eq!(h.advance(id).await, advanced(DeployStaging, Deploy, 7));
    let key = transition_key(id, DeployStaging, Deploy, 6);
    assert_eq!(h.ledger.applied(&key, EffectKind::CoverageRatchet), 0);
    assert_eq!(h.ledger.applied(&key, EffectKind::ImageRebuild), 1);
    assert_eq!(h.history(id).await[0].reason, "resume journaled transition");
    let states: Vec<_> = h
        .effect_rows(id)
        .await
        .into_iter()
        .map(|r| (r.kind, r.state, r.attempts))
        .collect();
    assert_eq!(
        states,
        vec![
            ("coverage_ratchet".into(), "done".into(), 1),
            ("image_rebuild".into(), "done".into(), 1)
        ]
    );
    // Even the explicit rollback helper cannot undo a started transition:
    // a journaled intent at the version would win over it as well.
    let id2 = h.task("DEMO-2").await;
    h.place(id2, DeployStaging, 6).await;
    h.planned_effect(
        id2,
        DeployStaging,
        Deploy,
        6,
        EffectKind::CoverageRatchet,
        "done",
    )
    .await;
    assert_eq!(
        h.engine
            .rollback(id2, DeployStaging, "merge-gate", "x")
            .await
            .unwrap(),
        advanced(DeployStaging, Deploy, 7)
    );
}

// ---------------------------------------------------------------------------
// 11. A failing effect holds the task; a retry completes it
// ---------------------------------------------------------------------------

#[tokio::test]
async fn failed_effect_holds_the_task_and_a_retry_completes_it() {
    let h = harness(Inputs::passing(true), |l| {
        counting_registry(l).with(
            EffectKind::MergePr,
            Counting::failing(l, vec![EffectError::Failed("merge conflict".into())]),
        )
    })
    .await;
    let id = h.task("DEMO-1").await;
    h.place(id, Deploy, 7).await;
    let key = transition_key(id, Deploy, Done, 7);

    assert_eq!(
        h.advance(id).await,
        Outcome::EffectFailed {
            stage: Deploy,
            kind: EffectKind::MergePr,
            error: "effect failed: merge conflict".into()
        }
    );
    let t = h.get(id).await;
    assert_eq!((t.stage, t.stage_version), (Deploy, 7));
    assert_eq!(
        t.hold_reason.as_deref(),
        Some("merge_pr: effect failed: merge conflict")
    );
    assert!(t.held_at.is_some());
    let alerts = h.alerts.alerts();
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].kind, "effect_failed");
    assert_eq!(alerts[0].work_item.as_deref(), Some("DEMO-1"));
    assert!(alerts[0].message.contains(&key), "{}", alerts[0].message);
    let rows = h.effect_rows(id).await;
    assert_eq!(rows.len(), 1, "prod_deploy never planned");
    assert_eq!(
        (rows[0].state.as_str(), rows[0].error.as_deref()),
        ("failed", Some("effect failed: merge conflict"))
    );
    assert_eq!(h.ledger.applied(&key, EffectKind::ProdDeploy), 0);
    assert!(h.history(id).await.is_empty());
    assert!(h.lease_rows().await.is_empty());

    assert_eq!(h.advance(id).await, advanced(Deploy, Done, 8));
    assert_eq!(
        h.ledger.applied(&key, EffectKind::MergePr),
        2,
        "applied again"
    );
    assert_eq!(
        h.ledger.reconciled_kind(EffectKind::MergePr),
        0,
        "failed = known not to have happened"
    );
    assert_eq!(h.ledger.applied(&key, EffectKind::ProdDeploy), 1);
    let rows = h.effect_rows(id).await;
    assert_eq!(
        (
            rows[0].state.as_str(),
            rows[0].attempts,
            rows[0].error.as_deref()
        ),
        ("done", 2, None)
    );
    let t = h.get(id).await;
    assert_eq!(t.stage, Done);
    assert!(
        t.hold_reason.is_none() && t.held_at.is_none(),
        "hold cleared"
    );
}

#[tokio::test]
async fn unknown_effect_outcome_is_reconciled_before_any_retry() {
    let h = harness(Inputs::passing(true), |l| {
        let merge = Counting::failing(l, vec![EffectError::Unknown("gitea timed out".into())]);
        *merge.reconcile.lock().unwrap() = Some("sha-found-in-main".into());
        counting_registry(l).with(EffectKind::MergePr, merge)
    })
    .await;
    let id = h.task("DEMO-1").await;
    h.place(id, Deploy, 7).await;
    assert_eq!(
        h.advance(id).await,
        Outcome::EffectUnknown {
            stage: Deploy,
            kind: EffectKind::MergePr,
            error: "effect outcome unknown: gitea timed out".into()
        }
    );
    assert_eq!(
        h.effect_rows(id).await[0].state,
        "unknown",
        "may have happened"
    );

    assert_eq!(h.advance(id).await, advanced(Deploy, Done, 8));
    assert_eq!(
        h.ledger.applied_kind(EffectKind::MergePr),
        1,
        "not applied again"
    );
    assert_eq!(h.ledger.reconciled_kind(EffectKind::MergePr), 1);
    assert_eq!(
        h.effect_rows(id).await[0].result.as_deref(),
        Some("sha-found-in-main")
    );
}

// ---------------------------------------------------------------------------
// 12. A panicking holder releases its lease
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_holder_leaves_no_live_lease() {
    let h = harness(Inputs::passing(true), |l| {
        counting_registry(l).with(EffectKind::MergePr, Arc::new(Panicking))
    })
    .await;
    let id = h.task("DEMO-1").await;
    h.place(id, Deploy, 7).await;

    let e = h.engine.clone();
    let joined = tokio::spawn(async move { e.advance_stage(id, "finalizer").await }).await;
    assert!(joined.unwrap_err().is_panic());
    // If the row is still there (the releaser runs in the background), its
    // token is already unregistered: it is stale, not live.
    for row in h.lease_rows().await {
        assert!(
            !h.engine.boot().is_live(&row),
            "a panicked holder is not live"
        );
    }
    assert_eq!(h.effect_rows(id).await[0].state, "planned");

    let healthy = h.engine_with(counting_registry(&h.ledger));
    let out = healthy.advance_stage(id, "monitor").await.unwrap();
    assert_eq!(out, advanced(Deploy, Done, 8));
    let key = transition_key(id, Deploy, Done, 7);
    assert_eq!(h.ledger.reconciled_kind(EffectKind::MergePr), 1);
    assert_eq!(h.ledger.applied(&key, EffectKind::MergePr), 1);
    assert_eq!(h.ledger.applied(&key, EffectKind::ProdDeploy), 1);

    let deadline = tokio::time::Instant::now() + WAIT;
    while !h.lease_rows().await.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "lease row never deleted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------
// 13. The operator's release over the real router
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_release_and_queue_over_http() {
    let blocking = Arc::new(Mutex::new(None));
    let slot = blocking.clone();
    let h = harness(Inputs::passing(true), move |l| {
        let (b, entered, release) = Blocking::new(l);
        *slot.lock().unwrap() = Some((entered, release));
        counting_registry(l).with(EffectKind::MergePr, b)
    })
    .await;
    let (entered, release) = blocking.lock().unwrap().take().unwrap();
    let settings = support::settings_in(h.dir.path(), &[("ORCH_ADMIN_TOKEN", "s3cret")]);
    let state = AppState {
        settings: Arc::new(settings),
        db: h.db.clone(),
        engine: h.engine.clone(),
        metrics: Arc::new(Metrics::default()),
        blocks: Arc::new(vec![]),
        health: Default::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        axum::serve(listener, orchestrator::http::router(state))
            .await
            .unwrap()
    });
    let http = reqwest::Client::new();

    let id = h.task("DEMO-1").await;
    h.place(id, Deploy, 7).await;
    let key = transition_key(id, Deploy, Done, 7);
    let e = h.engine.clone();
    let holder = tokio::spawn(async move { e.advance_stage(id, "finalizer").await });
    wait_for(&entered, "merge_pr apply").await;

    let queue: serde_json::Value = http
        .get(format!("{base}/queue"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let block = &queue["transition_lease"];
    assert_eq!(block["held"], 1, "{queue}");
    let l = &block["leases"][0];
    assert_eq!(l["work_item"], "DEMO-1");
    assert_eq!(l["actor"], "finalizer");
    assert_eq!(l["transition"], key.as_str());
    assert!(
        l["age_s"].as_i64().is_some_and(|a| (0..60).contains(&a)),
        "{l}"
    );
    assert_eq!(l["live"], true);
    assert_eq!(block["boot_id"], h.engine.boot().boot_id.as_str());

    let release_url = |q: &str| format!("{base}/transition-lease/release{q}");
    let r = http
        .post(release_url("?work_item=DEMO-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .post(release_url("?work_item=DEMO-1"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .post(release_url("?work_item=NOPE-9"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = http
        .post(release_url(""))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        h.lease_rows().await.len(),
        1,
        "refused calls release nothing"
    );
    assert!(h.alerts.alerts().is_empty());

    let r = http
        .post(release_url("?work_item=DEMO-1"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["work_item"], "DEMO-1");
    assert_eq!(body["released"]["actor"], "finalizer", "{body}");
    assert_eq!(body["released"]["transition"], key.as_str());
    assert_eq!(body["released"]["owner_pid"], std::process::id());
    assert!(h.lease_rows().await.is_empty());
    let alerts = h.alerts.alerts();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].kind, "lease_force_released");
    assert_eq!(alerts[0].work_item.as_deref(), Some("DEMO-1"));
    assert!(
        alerts[0].message.contains("owner alive"),
        "{}",
        alerts[0].message
    );

    let r = http
        .post(release_url("?work_item=DEMO-1"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["released"].is_null(), "{body}");
    let queue: serde_json::Value = http
        .get(format!("{base}/queue"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(queue["transition_lease"]["held"], 0);

    // The released holder finishes the effect in flight; its done row is
    // fenced by the lease generation the force-release bumped: it records
    // nothing and stops before the stage write (invariant 10).
    release.notify_one();
    let out = tokio::time::timeout(WAIT, holder).await.unwrap().unwrap();
    assert!(
        matches!(out, Err(EngineError::LeaseLost { task_id }) if task_id == id),
        "{out:?}"
    );
    let t = h.get(id).await;
    assert_eq!((t.stage, t.stage_version), (Deploy, 7));
    assert_eq!(h.ledger.applied(&key, EffectKind::ProdDeploy), 0);
    assert_eq!(
        h.effect_rows(id).await[0].state,
        "planned",
        "the fenced holder recorded nothing"
    );
    // The next actor reconciles the planned merge first: no second merge.
    assert_eq!(h.advance(id).await, advanced(Deploy, Done, 8));
    assert_eq!(h.ledger.applied(&key, EffectKind::MergePr), 1);
    assert_eq!(h.ledger.reconciled_kind(EffectKind::MergePr), 1);
    assert_eq!(h.ledger.applied(&key, EffectKind::ProdDeploy), 1);

    server.abort();
}

// ---------------------------------------------------------------------------
// The lease's lifetime, step by step, and under contention
// ---------------------------------------------------------------------------

/// Stops the engine at every step until the test has looked at the tables.
struct Stepper {
    reached: Mutex<std::sync::mpsc::Sender<Step>>,
    go: Mutex<std::sync::mpsc::Receiver<()>>,
}

impl Hooks for Stepper {
    fn at(&self, step: Step, _task_id: i64) {
        self.reached.lock().unwrap().send(step).unwrap();
        // Hand this worker's queued tasks (e.g. a pooled connection being
        // returned) to another thread while the engine waits.
        tokio::task::block_in_place(|| {
            self.go
                .lock()
                .unwrap()
                .recv_timeout(WAIT)
                .expect("test says go")
        });
    }
}

/// Runs `deploy -> done` one step at a time and reports, at each step, how
/// many lease rows exist and whether the task's row is live.
async fn lease_at_each_step(
    registry: impl FnOnce(&Arc<Ledger>) -> EffectRegistry,
) -> (Vec<(Step, usize, bool)>, Outcome) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&support::db_path(dir.path())).await.unwrap();
    let ledger = Arc::new(Ledger::default());
    let (reached_tx, reached_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel();
    let engine = Engine::builder(db.clone(), Boot::new())
        .effects(registry(&ledger))
        .inputs(Inputs::passing(true))
        .notifier(Arc::new(RecordingNotifier::default()))
        .hooks(Arc::new(Stepper {
            reached: Mutex::new(reached_tx),
            go: Mutex::new(go_rx),
        }))
        .build();
    let id = tasks::insert(
        db.writer(),
        &NewTask {
            work_item: "DEMO-1".into(),
            project: "demo".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    sqlx::query("UPDATE tasks SET stage = 'deploy', stage_version = 7 WHERE id = ?")
        .bind(id)
        .execute(db.writer())
        .await
        .unwrap();
    let e = engine.clone();
    let run = tokio::spawn(async move { e.advance_stage(id, "finalizer").await });
    let reached = Arc::new(Mutex::new(reached_rx));
    let mut seen = Vec::new();
    loop {
        let r = reached.clone();
        let step = tokio::task::spawn_blocking(move || {
            r.lock().unwrap().recv_timeout(Duration::from_secs(2))
        })
        .await
        .unwrap();
        let Ok(step) = step else { break };
        let rows = leases::all(db.reader()).await.unwrap();
        let live = rows.iter().any(|r| engine.boot().is_live(r));
        seen.push((step, rows.len(), live));
        go_tx.send(()).unwrap();
        if step == Step::BeforeRelease {
            break;
        }
    }
    let out = tokio::time::timeout(WAIT, run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(leases::all(db.reader()).await.unwrap().is_empty());
    (seen, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lease_row_is_live_from_acquire_until_the_cas_deletes_it() {
    use Step::*;
    let (seen, out) = lease_at_each_step(counting_registry).await;
    assert_eq!(out, advanced(Deploy, Done, 8));
    assert_eq!(
        seen,
        vec![
            (BeforeLease, 0, false),
            (AfterLease, 1, true),
            (AfterPlanned, 1, true),
            (AfterApply, 1, true),
            (AfterDone, 1, true),
            (AfterPlanned, 1, true),
            (AfterApply, 1, true),
            (AfterDone, 1, true),
            // The lease ends in the transaction of the write it guarded.
            (AfterCas, 0, false),
            (BeforeRelease, 0, false),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lease_of_a_failed_transition_stays_live_until_released() {
    use Step::*;
    let (seen, out) = lease_at_each_step(|l| {
        counting_registry(l).with(
            EffectKind::MergePr,
            Counting::failing(l, vec![EffectError::Failed("conflict".into())]),
        )
    })
    .await;
    assert!(
        matches!(
            out,
            Outcome::EffectFailed {
                kind: EffectKind::MergePr,
                ..
            }
        ),
        "{out:?}"
    );
    assert_eq!(
        seen,
        vec![
            (BeforeLease, 0, false),
            (AfterLease, 1, true),
            (AfterPlanned, 1, true),
            // Releasing: the row is still there and still live, never a
            // stale row another actor of this process would "reclaim".
            (BeforeRelease, 1, true),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_actors_move_every_edge_once() {
    let h = harness(Inputs::passing(true), counting_registry).await;
    let mut ids = Vec::new();
    for n in 0..4 {
        ids.push(h.task(&format!("DEMO-{n}")).await);
    }
    let ids = Arc::new(ids);
    let mut actors = Vec::new();
    for a in 0..8 {
        let e = h.engine.clone();
        let ids = ids.clone();
        actors.push(tokio::spawn(async move {
            let actor = format!("actor-{a}");
            let mut outcomes: HashMap<&'static str, usize> = HashMap::new();
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                let mut all_terminal = true;
                for id in ids.iter() {
                    let out = e.advance_stage(*id, &actor).await.unwrap();
                    let name = match out {
                        Outcome::Advanced { .. } => "advanced",
                        Outcome::LeaseBusy { .. } => "busy",
                        Outcome::LostRace => "lost",
                        Outcome::Terminal { .. } => "terminal",
                        other => panic!("{actor}: unexpected {other:?}"),
                    };
                    all_terminal &= name == "terminal";
                    *outcomes.entry(name).or_default() += 1;
                }
                if all_terminal {
                    return outcomes;
                }
                assert!(tokio::time::Instant::now() < deadline, "no progress");
                tokio::task::yield_now().await;
            }
        }));
    }
    let mut advanced_total = 0;
    for a in actors {
        advanced_total += a.await.unwrap().get("advanced").copied().unwrap_or(0);
    }
    assert_eq!(
        advanced_total,
        8 * ids.len(),
        "each edge moved by exactly one actor"
    );

    for id in ids.iter() {
        let hist = h.history(*id).await;
        assert_eq!(hist.len(), 8);
        for (i, r) in hist.iter().enumerate() {
            assert_eq!((r.from_version, r.to_version), (i as i64, i as i64 + 1));
            assert_eq!(Some(r.to_stage), r.from_stage.next());
        }
        assert_eq!(h.get(*id).await.stage, Done);
    }
    let applies = h.ledger.applies.lock().unwrap().clone();
    assert_eq!(applies.len(), 4 * ids.len());
    assert!(applies.values().all(|n| *n == 1), "{applies:?}");
    assert!(h.lease_rows().await.is_empty());
    // No normal hand-over between actors of one daemon looks like a stale lease.
    assert!(h.alerts.alerts().is_empty(), "{:?}", h.alerts.alerts());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deferred_cancel_is_applied_by_a_holder_whose_effect_failed() {
    struct BlockThenFail(Arc<Ledger>, Arc<Notify>, Arc<Notify>);
    #[async_trait]
    impl Effect for BlockThenFail {
        async fn reconcile(&self, _: &EffectCtx) -> Result<Option<EffectResult>, EffectError> {
            Ok(None)
        }
        async fn apply(&self, ctx: &EffectCtx) -> Result<EffectResult, EffectError> {
            Ledger::bump(&self.0.applies, ctx);
            self.1.notify_one();
            self.2.notified().await;
            Err(EffectError::Failed("merge conflict".into()))
        }
    }
    let entered = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let (en, re) = (entered.clone(), release.clone());
    let h = harness(Inputs::passing(true), move |l| {
        counting_registry(l).with(
            EffectKind::MergePr,
            Arc::new(BlockThenFail(l.clone(), en, re)),
        )
    })
    .await;
    let id = h.task("DEMO-1").await;
    h.place(id, Deploy, 7).await;
    let e = h.engine.clone();
    let holder = tokio::spawn(async move { e.advance_stage(id, "finalizer").await });
    wait_for(&entered, "merge_pr apply").await;
    assert_eq!(
        h.engine.cancel(id, "plane", "STOP").await.unwrap(),
        (Outcome::CancelDeferred, true)
    );
    release.notify_one();
    let out = tokio::time::timeout(WAIT, holder)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(
            out,
            Outcome::EffectFailed {
                stage: Deploy,
                kind: EffectKind::MergePr,
                ..
            }
        ),
        "{out:?}"
    );
    let t = h.get(id).await;
    assert_eq!((t.stage, t.stage_version), (Cancelled, 8));
    assert!(
        t.hold_reason.is_none(),
        "the cancel's write clears the hold"
    );
    assert_eq!(h.path(id).await, vec![(Deploy, Cancelled, 7, 8)]);
    assert_eq!(h.ledger.applied_kind(EffectKind::DeleteBranch), 1);
    assert_eq!(h.ledger.applied_kind(EffectKind::ProdDeploy), 0);
    let states: Vec<_> = h
        .effect_rows(id)
        .await
        .into_iter()
        .map(|r| (r.kind, r.state))
        .collect();
    assert_eq!(
        states,
        vec![
            ("merge_pr".to_string(), "failed".to_string()),
            ("delete_branch".to_string(), "done".to_string())
        ]
    );
    assert!(h.lease_rows().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cas_fences_a_holder_whose_stage_was_rewritten_to_the_same_name() {
    let blocking = Arc::new(Mutex::new(None));
    let slot = blocking.clone();
    let h = harness(Inputs::passing(true), move |l| {
        let (b, entered, release) = Blocking::new(l);
        *slot.lock().unwrap() = Some((entered, release));
        counting_registry(l).with(EffectKind::ImageRebuild, b)
    })
    .await;
    let (entered, release) = blocking.lock().unwrap().take().unwrap();
    let id = h.task("DEMO-1").await;
    h.place(id, DeployStaging, 6).await;
    let e = h.engine.clone();
    let holder = tokio::spawn(async move { e.advance_stage(id, "finalizer").await });
    wait_for(&entered, "image_rebuild apply").await;
    // A writer outside the lease (the lease is not mutual exclusion: a
    // forced release, another process) moved the task away and back: same
    // stage name, later version. Only the version in the CAS tells.
    h.place(id, DeployStaging, 8).await;
    release.notify_one();
    let out = tokio::time::timeout(WAIT, holder)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(out, Outcome::LostRace);
    let t = h.get(id).await;
    assert_eq!((t.stage, t.stage_version), (DeployStaging, 8));
    assert!(
        h.history(id).await.is_empty(),
        "the stale holder wrote nothing"
    );
    assert!(h.lease_rows().await.is_empty());
    // The next pass at v8 is a new transition with its own keys.
    // The blocking rebuild of the new pass may go at once.
    release.notify_one();
    assert_eq!(h.advance(id).await, advanced(DeployStaging, Deploy, 9));
    let v8 = transition_key(id, DeployStaging, Deploy, 8);
    assert_eq!(h.ledger.applied(&v8, EffectKind::CoverageRatchet), 1);
    assert_eq!(h.ledger.applied(&v8, EffectKind::ImageRebuild), 1);
}

/// One task whose unfinished transition cannot be resumed (a journal row of
/// an effect kind this build no longer knows) is alerted and skipped: it does
/// not keep the daemon from starting, and the other tasks are resumed.
#[tokio::test]
async fn recovery_skips_a_task_it_cannot_resume_and_goes_on() {
    let h = harness(Inputs::passing(true), counting_registry).await;
    let bad = h.task("DEMO-1").await;
    let good = h.task("DEMO-2").await;
    let stale = h.task("DEMO-3").await;
    h.place(bad, Deploy, 7).await;
    h.place(good, Deploy, 7).await;
    h.place(stale, Deploy, 9).await;
    for (id, kind, version) in [
        (bad, "retired_effect", 7),
        (good, "merge_pr", 7),
        (stale, "merge_pr", 4),
    ] {
        sqlx::query(
            "INSERT INTO effects (task_id, transition_key, from_stage, to_stage, stage_version, kind, state, planned_at)
             VALUES (?, ?, 'deploy', 'done', ?, ?, 'planned', 1)",
        )
        .bind(id)
        .bind(transition_key(id, Deploy, Done, version))
        .bind(version)
        .bind(kind)
        .execute(h.db.writer())
        .await
        .unwrap();
    }
    let rec = h
        .engine
        .recover_on_startup()
        .await
        .expect("recovery never fails as a whole");
    assert_eq!(rec.failed_tasks, vec![bad]);
    assert_eq!(
        rec.resumed_tasks
            .iter()
            .map(|(id, _)| *id)
            .collect::<Vec<_>>(),
        vec![good],
        "an older version's row is no unfinished transition"
    );
    assert_eq!(h.get(good).await.stage, Done);
    assert_eq!(h.get(stale).await.stage, Deploy, "not moved by recovery");
    assert!(
        h.alert_kinds()
            .iter()
            .any(|(k, wi)| *k == "recovery_failed" && wi.as_deref() == Some("DEMO-1"))
    );
}

// ---------------------------------------------------------------------------
// Fencing (invariant 10): a holder whose lease was taken changes nothing
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_stalled_past_a_force_release_cannot_write_the_stage() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&support::db_path(dir.path())).await.unwrap();
    let (reached_tx, reached) = std::sync::mpsc::channel();
    let (go, go_rx) = std::sync::mpsc::channel();
    let boot = Boot::new();
    let stalled = Engine::builder(db.clone(), boot.clone())
        .inputs(Inputs::passing(true))
        .notifier(Arc::new(RecordingNotifier::default()))
        .hooks(Arc::new(Stepper {
            reached: Mutex::new(reached_tx),
            go: Mutex::new(go_rx),
        }))
        .build();
    let id = tasks::insert(
        db.writer(),
        &NewTask {
            work_item: "DEMO-1".into(),
            project: "demo".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // deploy -> done: both effects recorded done, then the holder stalls
    // right before its stage write.
    sqlx::query("UPDATE tasks SET stage = 'deploy', stage_version = 7 WHERE id = ?")
        .bind(id)
        .execute(db.writer())
        .await
        .unwrap();
    let e = stalled.clone();
    let holder = tokio::spawn(async move { e.advance_stage(id, "finalizer").await });
    let next = || reached.recv_timeout(WAIT).expect("a step");
    let mut dones = 0;
    while dones < 2 {
        if next() == Step::AfterDone {
            dones += 1;
            if dones == 2 {
                break;
            }
        }
        go.send(()).unwrap();
    }
    // The holder stalls here; an operator force-releases its lease.
    let operator = Engine::builder(db.clone(), boot.clone())
        .notifier(Arc::new(RecordingNotifier::default()))
        .build();
    assert!(matches!(
        operator.force_release("DEMO-1", "test").await.unwrap(),
        ForceRelease::Released(_)
    ));
    go.send(()).unwrap();
    assert_eq!(next(), Step::BeforeRelease, "no CAS went through");
    go.send(()).unwrap();
    let out = tokio::time::timeout(WAIT, holder)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(out, Outcome::LostRace);
    let t = tasks::get(db.reader(), id).await.unwrap().unwrap();
    assert_eq!((t.stage, t.stage_version), (Deploy, 7), "nothing written");
    assert!(history::for_task(db.reader(), id).await.unwrap().is_empty());
    // The next holder completes the journaled transition; nothing reruns.
    let next_holder = Engine::builder(db.clone(), Boot::new())
        .inputs(Inputs::passing(true))
        .build();
    assert_eq!(
        next_holder.advance_stage(id, "finalizer").await.unwrap(),
        advanced(Deploy, Done, 8)
    );
}
