//! The simulation harness of the stage engine (B-2): effects that count
//! themselves OUTSIDE the journal (an O_APPEND file, so a duplicate cannot
//! hide in the database it is checking), seeded gate verdicts, actors, and
//! the invariant checker.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use orchestrator::db::tasks::{self, NewTask, TaskRow};
use orchestrator::db::{Db, history, now_ms};
use orchestrator::domain::{EffectKind, GateInput, Stage};
use orchestrator::stage_engine::{
    Effect, EffectCtx, EffectError, EffectRegistry, EffectResult, Engine, EngineError, GateInputs,
    Outcome, transition_key,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Counts every application in an append-only file: `key|kind|pid`.
/// `faults` makes it an effect of the outside world: it awaits before the
/// outside records it (a merge request on the wire, a deploy running), so
/// the planned → applied → done window is real, and sometimes the outside
/// records it but the answer is lost (`Unknown`).
pub struct CountingEffect {
    pub path: PathBuf,
    pub faults: Option<EffectFaults>,
}

#[derive(Clone, Copy, Debug)]
pub struct EffectFaults {
    pub seed: u64,
    /// Percent of applications whose answer is lost after the effect landed.
    pub lose_answer_pct: u64,
    /// Upper bound of the await before the effect lands, in microseconds.
    pub max_latency_us: u64,
}

/// Faults the effects injected (answers lost), across a process.
pub static LOST_ANSWERS: AtomicU64 = AtomicU64::new(0);

impl CountingEffect {
    fn line(ctx: &EffectCtx) -> String {
        format!("{}|{}", ctx.transition_key, ctx.kind.as_str())
    }

    /// Effects the outside refuses to repeat (the forge will not merge a
    /// merged PR, a deleted branch stays deleted, the baseline row is keyed):
    /// the daemon relies on that. A deploy or an image push has no such
    /// guard: the daemon marks its start before the call instead.
    fn idempotent(ctx: &EffectCtx) -> bool {
        !matches!(ctx.kind, EffectKind::ProdDeploy | EffectKind::ImageRebuild)
    }

    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.path)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Per key: `<counts>.keys/<key>.done` after the done line (a cache of
    /// the count file, which stays the truth), `.start` with the writer's pid.
    fn marker(&self, want: &str, suffix: &str) -> PathBuf {
        let safe: String = want
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        self.path
            .with_extension("keys")
            .join(format!("{safe}{suffix}"))
    }

    fn done(&self, want: &str) -> bool {
        if self.marker(want, ".done").exists() {
            return true;
        }
        // Never attempted: nothing to look for. Only an attempt cut between
        // its line and its marker needs the scan.
        if !self.marker(want, ".start").exists() {
            return false;
        }
        self.lines()
            .iter()
            .any(|l| !l.starts_with("start|") && l.rsplit_once('|').map(|(k, _)| k) == Some(want))
    }

    fn mark(&self, want: &str, suffix: &str, text: &str) {
        let p = self.marker(want, suffix);
        let _ = std::fs::create_dir_all(p.parent().unwrap());
        let _ = std::fs::write(p, text);
    }

    /// A run still in flight: its start is marked, no done marker yet, and
    /// its writer lives.
    fn in_flight(&self, want: &str) -> bool {
        if self.marker(want, ".done").exists() {
            return false;
        }
        let pid: i64 = std::fs::read_to_string(self.marker(want, ".start"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        pid > 0 && orchestrator::procfs::stat(pid).is_some_and(|s| !s.is_zombie())
    }

    fn append(&self, line: &str) -> Result<(), EffectError> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| EffectError::Failed(e.to_string()))?;
        // One write(2) of a short line under O_APPEND: atomic across processes.
        f.write_all(line.as_bytes())
            .map_err(|e| EffectError::Failed(e.to_string()))
    }
}

#[async_trait]
impl Effect for CountingEffect {
    fn has_record(&self) -> bool {
        false
    }
    /// "Is the merge SHA in main?" for this world: is the done line there?
    /// A deploy whose start is marked and whose writer still runs is waited
    /// for (adoption), as the daemon's `prod_deploy` does.
    async fn reconcile(&self, ctx: &EffectCtx) -> Result<Option<EffectResult>, EffectError> {
        let want = Self::line(ctx);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !Self::idempotent(ctx)
            && self.in_flight(&want)
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        Ok(self.done(&want).then(|| "reconciled".to_string()))
    }

    async fn apply(&self, ctx: &EffectCtx) -> Result<EffectResult, EffectError> {
        let want = Self::line(ctx);
        let pid = std::process::id();
        if !Self::idempotent(ctx) {
            // Marked before the call, like `.started` before a deploy's spawn.
            self.mark(&want, ".start", &pid.to_string());
        }
        let draw = NEXT_DRAW.fetch_add(1, Ordering::Relaxed);
        let lose = match self.faults {
            Some(f) => {
                let h = mix(f.seed ^ mix(draw) ^ pid as u64);
                if f.max_latency_us > 0 {
                    let us = h % f.max_latency_us;
                    tokio::time::sleep(std::time::Duration::from_micros(us)).await;
                }
                (h >> 20) % 100 < f.lose_answer_pct
            }
            None => false,
        };
        if Self::idempotent(ctx) {
            // The outside refuses a repeat: checked and recorded under one
            // lock across processes.
            let lock = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.path.with_extension("lock"))
                .map_err(|e| EffectError::Failed(e.to_string()))?;
            let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
                .map_err(|(_, e)| EffectError::Failed(e.to_string()))?;
            if !self.done(&want) {
                self.mark(&want, ".start", &pid.to_string());
                self.append(&format!("{want}|{pid}\n"))?;
                self.mark(&want, ".done", "");
            }
        } else {
            self.append(&format!("{want}|{pid}\n"))?;
            self.mark(&want, ".done", "");
        }
        if lose {
            LOST_ANSWERS.fetch_add(1, Ordering::Relaxed);
            return Err(EffectError::Unknown("the answer was lost".into()));
        }
        Ok("applied".into())
    }
}

static NEXT_DRAW: AtomicU64 = AtomicU64::new(0);

pub fn counting_registry(path: &Path) -> EffectRegistry {
    faulty_registry(path, None)
}

pub fn faulty_registry(path: &Path, faults: Option<EffectFaults>) -> EffectRegistry {
    EffectKind::ALL.iter().fold(EffectRegistry::new(), |r, k| {
        r.with(
            *k,
            Arc::new(CountingEffect {
                path: path.to_path_buf(),
                faults,
            }),
        )
    })
}

/// Holders that stall at a step boundary for a few milliseconds (a GC
/// pause, a slow disk, a preempted process), registered while they do: the
/// sim's operator force-releases the leases of stalled holders only, as a
/// person releases a lease that looks stuck. A stalled holder then wakes up
/// after its lease was taken.
pub struct StallHook {
    pub seed: u64,
    pub pct: u64,
    /// (task, holder token) of the holders stalled right now.
    pub stalled: Arc<std::sync::Mutex<std::collections::HashSet<(i64, String)>>>,
    pub count: AtomicU64,
    draws: AtomicU64,
    /// A stall lasts `lo..lo+spread` ms.
    stall_ms: (u64, u64),
}

impl StallHook {
    pub fn new(seed: u64, pct: u64) -> Arc<StallHook> {
        Arc::new(StallHook {
            seed,
            pct,
            stalled: Default::default(),
            count: AtomicU64::new(0),
            draws: AtomicU64::new(0),
            stall_ms: (2, 5),
        })
    }

    /// Stalls of `lo..lo+spread` ms: long enough for another holder to take
    /// the lease and finish a step meanwhile, even on a loaded machine.
    pub fn with_stall_ms(seed: u64, pct: u64, lo: u64, spread: u64) -> Arc<StallHook> {
        let mut h = Arc::into_inner(StallHook::new(seed, pct)).expect("new");
        h.stall_ms = (lo, spread.max(1));
        Arc::new(h)
    }

    /// (task, holder) of the holders stalled right now.
    pub fn stalled_now(&self) -> Vec<(i64, String)> {
        self.stalled.lock().unwrap().iter().cloned().collect()
    }
}

impl orchestrator::stage_engine::Hooks for StallHook {
    fn at_held(&self, step: orchestrator::stage_engine::Step, task_id: i64, holder: &str) {
        use orchestrator::stage_engine::Step;
        if self.pct == 0
            || !matches!(
                step,
                Step::AfterLease | Step::AfterPlanned | Step::AfterApply | Step::AfterDone
            )
        {
            return;
        }
        let h = mix(self.seed ^ mix(self.draws.fetch_add(1, Ordering::Relaxed)));
        if h % 100 >= self.pct {
            return;
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let key = (task_id, holder.to_string());
        self.stalled.lock().unwrap().insert(key.clone());
        let ms = self.stall_ms.0 + (h >> 16) % self.stall_ms.1;
        tokio::task::block_in_place(|| std::thread::sleep(std::time::Duration::from_millis(ms)));
        self.stalled.lock().unwrap().remove(&key);
    }
}

/// Gate verdicts fixed per (seed, task, stage, version): every actor judging
/// the same attempt sees the same artifacts. Stages with a rollback target
/// fail 30% of attempts; the rest pass; humans always answer.
#[derive(Clone)]
pub struct SimInputs {
    pub seed: u64,
}

pub fn mix(mut x: u64) -> u64 {
    // splitmix64
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Stages whose exit gate the simulation judges by a seeded verdict: those
/// with a rollback, except deploy, whose gate is a person's confirmation
/// (its rollback is only the merge-head guard's, issue 11 pt 4).
pub fn verdict_judged(stage: Stage) -> bool {
    stage.rollback().is_some() && stage != Stage::Deploy
}

pub fn sim_passes(seed: u64, task: &TaskRow) -> bool {
    if !verdict_judged(task.stage) {
        return true;
    }
    let h = mix(seed
        ^ mix(task.id as u64)
        ^ mix((task.stage as u64) << 32 | task.stage_version as u64));
    h % 100 >= 30
}

#[async_trait]
impl GateInputs for SimInputs {
    async fn load(&self, task: &TaskRow) -> GateInput {
        let pass = sim_passes(self.seed, task);
        let mut a = BTreeMap::new();
        a.insert("01-brd.md".into(), "status: READY".into());
        a.insert("06-adr/ADR-001-sim.md".into(), "status: READY".into());
        a.insert(
            "11-review.md".into(),
            if pass {
                "verdict: APPROVE"
            } else {
                "verdict: REQUEST_CHANGES"
            }
            .into(),
        );
        a.insert(
            "13-test-report.md".into(),
            if pass {
                "result: PASS\nstatus: PASS\ntests_run: 5"
            } else {
                "result: FAIL\nstatus: FAIL\ntests_run: 5"
            }
            .into(),
        );
        a.insert(
            "14-staging-report.md".into(),
            if pass {
                "staging_status: SUCCESS"
            } else {
                "staging_status: FAILURE"
            }
            .into(),
        );
        GateInput {
            artifacts: a,
            approved: true,
            deploy_confirmed: true,
            code_changed: Some(true),
            refused: Default::default(),
            // The simulated staging verdict stands for staging + merge gate.
            merge_gate: Default::default(),
        }
    }
}

pub async fn create_tasks(db: &Db, prefix: &str, n: usize) -> Vec<i64> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let wi = format!("{prefix}-{i}");
        let id = tasks::insert(
            db.writer(),
            &NewTask {
                work_item: wi,
                project: "sim".into(),
                ..Default::default()
            },
        )
        .await
        .expect("insert task");
        ids.push(id);
    }
    ids
}

/// What actors did, across a run.
#[derive(Default, Debug)]
pub struct Tally {
    pub ops: AtomicU64,
    pub moved: AtomicU64,
    pub busy: AtomicU64,
    pub lost: AtomicU64,
    pub errors: AtomicU64,
    pub sqlite_busy: AtomicU64,
}

impl Tally {
    pub fn record(&self, r: &Result<Outcome, EngineError>) {
        self.ops.fetch_add(1, Ordering::Relaxed);
        match r {
            Ok(
                Outcome::Advanced { .. } | Outcome::RolledBack { .. } | Outcome::Cancelled { .. },
            ) => {
                self.moved.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Outcome::LeaseBusy { .. } | Outcome::CancelDeferred) => {
                self.busy.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Outcome::LostRace) | Err(EngineError::LeaseLost { .. }) => {
                // A fenced holder (its lease taken while it stalled) stops:
                // that is the defence working, not an error.
                self.lost.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(e) => {
                if let EngineError::Db(d) = e
                    && orchestrator::db::is_busy(d)
                {
                    self.sqlite_busy.fetch_add(1, Ordering::Relaxed);
                }
                eprintln!("engine error: {e}");
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The actors of the SPEC: each enters the same transitions independently.
pub const ACTORS: &[&str] = &[
    "monitor",
    "plane-webhook",
    "gitea-webhook",
    "reconciler",
    "reaper",
    "finalizer",
    "stop",
];

/// One actor step on one task: what that actor would do in the daemon.
pub async fn actor_step(
    engine: &Engine,
    actor: &str,
    task_id: i64,
    rng: &mut StdRng,
    cancel_pct: u32,
) -> Result<Outcome, EngineError> {
    match actor {
        "stop" if rng.gen_range(0..100) < cancel_pct => {
            engine.cancel(task_id, "stop", "STOP").await.map(|(o, _)| o)
        }
        "stop" => engine.advance_stage(task_id, "stop").await,
        // The merge gate's red re-test rolls back through the shared helper.
        "finalizer" if rng.gen_range(0..100) < 10 => {
            engine
                .rollback(task_id, Stage::DeployStaging, "merge-gate", "red re-test")
                .await
        }
        _ => engine.advance_stage(task_id, actor).await,
    }
}

/// A seeded pause: mostly yields, sometimes a short sleep.
pub async fn jitter(rng: &mut StdRng) {
    match rng.gen_range(0..10) {
        0 => tokio::time::sleep(std::time::Duration::from_micros(rng.gen_range(50..800))).await,
        1..=5 => {
            for _ in 0..rng.gen_range(1..4) {
                tokio::task::yield_now().await;
            }
        }
        _ => {}
    }
}

pub fn actor_rng(seed: u64, actor_index: usize) -> StdRng {
    StdRng::seed_from_u64(mix(seed ^ (actor_index as u64 + 1)))
}

/// Drive every non-terminal task to a terminal stage, one actor, no races.
pub async fn drain(engine: &Engine) -> Result<(), String> {
    let ids: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM tasks WHERE stage NOT IN ('done','cancelled')")
            .fetch_all(engine.db().reader())
            .await
            .map_err(|e| e.to_string())?;
    for id in ids {
        for _ in 0..500 {
            match engine.advance_stage(id, "drain").await {
                Ok(Outcome::Terminal { .. }) => break,
                Ok(Outcome::GateFailed { reason, .. } | Outcome::Pending { reason, .. }) => {
                    return Err(format!("task {id} stuck: {reason}"));
                }
                Ok(_) => {}
                Err(e) => return Err(format!("task {id}: {e}")),
            }
        }
    }
    Ok(())
}

/// What the checker found.
#[derive(Debug, Default)]
pub struct Check {
    pub tasks: usize,
    pub duplicate_effects: usize,
    pub contradictions: Vec<String>,
    /// Tasks left short of done/cancelled after the run settled.
    pub stuck: usize,
}

impl Check {
    /// Duplicates and contradictions: what a defence exists to prevent.
    pub fn violations(&self) -> usize {
        self.duplicate_effects + self.contradictions.len()
    }
}

/// Check every invariant of the guarantee over the database and the count
/// file. `require_terminal`: every task must have reached done/cancelled.
pub async fn check(db: &Db, counts: &Path, require_terminal: bool) -> Check {
    check_with(db, counts, require_terminal, None).await
}

/// [`check`], plus, with `verdicts_of`, the gate oracle: every forward move
/// out of a gated stage happened at a version whose simulated gate passes,
/// every gate rollback at one whose gate fails (a decision on a stale
/// snapshot breaks it). Mid-run (`require_terminal` false) an effect whose
/// transition is still in flight is not counted against it.
pub async fn check_with(
    db: &Db,
    counts: &Path,
    require_terminal: bool,
    verdicts_of: Option<u64>,
) -> Check {
    let mut out = Check::default();
    let all_tasks: Vec<TaskRow> = sqlx::query_as("SELECT * FROM tasks ORDER BY id")
        .fetch_all(db.reader())
        .await
        .unwrap();
    out.tasks = all_tasks.len();
    let hist = history::all(db.reader()).await.unwrap();
    let mut by_task: HashMap<i64, Vec<&history::HistoryRow>> = HashMap::new();
    for h in &hist {
        by_task.entry(h.task_id).or_default().push(h);
    }

    // Effects counted outside the journal.
    let text = std::fs::read_to_string(counts).unwrap_or_default();
    let mut counted: HashMap<(String, String), usize> = HashMap::new();
    // `start|...` lines mark a deploy-like effect's start; only the done
    // line is the effect.
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with("start|"))
    {
        let mut parts = line.split('|');
        let (Some(key), Some(kind)) = (parts.next(), parts.next()) else {
            out.contradictions.push(format!("torn count line {line:?}"));
            continue;
        };
        *counted
            .entry((key.to_string(), kind.to_string()))
            .or_default() += 1;
    }
    for ((key, kind), n) in &counted {
        if *n > 1 {
            out.duplicate_effects += n - 1;
            out.contradictions
                .push(format!("effect {kind} of {key} applied {n} times"));
        }
    }

    let mut expected: HashMap<(String, String), ()> = HashMap::new();
    for t in &all_tasks {
        let rows = by_task.get(&t.id).cloned().unwrap_or_default();
        let (mut stage, mut version) = (Stage::Created, 0i64);
        for h in &rows {
            if h.from_stage != stage || h.from_version != version {
                out.contradictions.push(format!(
                    "task {}: history breaks: at {stage}@v{version}, row says {}@v{} -> {}",
                    t.id, h.from_stage, h.from_version, h.to_stage
                ));
            }
            if h.to_version != h.from_version + 1 {
                out.contradictions.push(format!(
                    "task {}: version {} -> {}",
                    t.id, h.from_version, h.to_version
                ));
            }
            if !h.from_stage.can_move_to(h.to_stage) {
                out.contradictions.push(format!(
                    "task {}: {} -> {} is not in STAGE_TRANSITIONS",
                    t.id, h.from_stage, h.to_stage
                ));
            }
            if let Some(seed) = verdicts_of
                && verdict_judged(h.from_stage)
                && h.to_stage != Stage::Cancelled
                && h.actor != "merge-gate"
            {
                let mut at = t.clone();
                (at.stage, at.stage_version) = (h.from_stage, h.from_version);
                let passes = sim_passes(seed, &at);
                let forward = Some(h.to_stage) == h.from_stage.next();
                if forward != passes {
                    out.contradictions.push(format!(
                        "task {}: {} -> {} at v{} but its gate {} there",
                        t.id,
                        h.from_stage,
                        h.to_stage,
                        h.from_version,
                        if passes { "passes" } else { "fails" }
                    ));
                }
            }
            for kind in h.from_stage.effects_to(h.to_stage) {
                let key = transition_key(t.id, h.from_stage, h.to_stage, h.from_version);
                let k = (key.clone(), kind.as_str().to_string());
                match counted.get(&k) {
                    Some(1) => {}
                    Some(_) => {} // reported above
                    None => out.contradictions.push(format!(
                        "task {}: {} -> {} happened without its effect {}",
                        t.id,
                        h.from_stage,
                        h.to_stage,
                        kind.as_str()
                    )),
                }
                expected.insert(k, ());
            }
            stage = h.to_stage;
            version = h.to_version;
        }
        if (t.stage, t.stage_version) != (stage, version) {
            out.contradictions.push(format!(
                "task {}: row says {}@v{}, history ends at {stage}@v{version}",
                t.id, t.stage, t.stage_version
            ));
        }
        if require_terminal && !t.stage.is_terminal() {
            out.stuck += 1;
            out.contradictions
                .push(format!("task {}: left at {} (not terminal)", t.id, t.stage));
        }
        if t.cancel_requested_at.is_some() && require_terminal && !t.stage.is_terminal() {
            out.contradictions
                .push(format!("task {}: cancel requested but {}", t.id, t.stage));
        }
        if t.stage == Stage::Cancelled && t.tombstoned_at.is_none() {
            out.contradictions
                .push(format!("task {}: cancelled but not tombstoned", t.id));
        }
    }
    // An effect that ran for a transition that never happened is allowed
    // only where a cancel overtook a started transition at that version.
    for (key, kind) in counted.keys() {
        if expected.contains_key(&(key.clone(), kind.clone())) {
            continue;
        }
        let cancelled_there = all_tasks.iter().any(|t| {
            by_task.get(&t.id).is_some_and(|rows| {
                rows.iter().any(|h| {
                    h.to_stage == Stage::Cancelled
                        && key.starts_with(&format!("task:{}/", t.id))
                        && key.ends_with(&format!("@v{}", h.from_version))
                })
            })
        });
        if !cancelled_there && require_terminal {
            out.contradictions.push(format!(
                "effect {kind} of {key} applied but its transition never happened"
            ));
        }
    }
    let leases: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM transition_lease")
        .fetch_one(db.reader())
        .await
        .unwrap();
    if require_terminal && leases != 0 {
        out.contradictions
            .push(format!("{leases} lease rows left after quiescence"));
    }
    out
}

/// A scratch directory on tmpfs when there is one (fsync is cheap there;
/// the simulation is about interleavings, not disks).
pub fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(d) = tempfile::Builder::new().prefix("orch-sim-").tempdir_in(shm)
    {
        return d;
    }
    tempfile::tempdir().unwrap()
}

pub fn now() -> i64 {
    now_ms()
}
