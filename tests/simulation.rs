//! B-2: the stage engine's guarantee as a property. Seeded actors (the
//! monitor, both webhooks, reconciler, reaper, finalizer with its merge-gate
//! rollbacks, STOP, an operator who force-releases stuck leases) drive the
//! same tasks through advance, rollback and cancel, as tokio tasks in this
//! process AND in two more OS processes on the same SQLite file, with
//! faults: effects that await before they land and sometimes lose their
//! answer, holders that stall at step boundaries and wake up after the
//! operator took their lease, child processes SIGKILLed at random moments or
//! stopped gracefully (SIGTERM: drain) and restarted (recovery). Every
//! effect counts itself outside the journal; the checker counts duplicate
//! effects, contradictions (stage history against STAGE_TRANSITIONS and the
//! gate verdicts, effects without their transition) and stuck tasks: all 0.
//! An actor stops picking a task another actor saw end; one step in 20 is a
//! late event for an ended task, which must change nothing (ADR 0010 §9).
//!
//! `each_defence_carries_weight` runs the same simulation with one defence
//! of the engine switched off at a time (`stage_engine::Defences`, a
//! test-only feature) and must see violations for every one.
//!
//! `SIM_SECONDS` (default 60 under CI=true, else 10), `SIM_SEED`,
//! `SIM_BATCH` (tasks per batch, 48), `SIM_CHILDREN` (racing child processes, 1) steer it. A failing
//! run writes its seed and schedule under `target/sim-failures/` and prints
//! the path; `SIM_REPLAY=<file>` re-runs that schedule (see ADR 0010 for how
//! close a replay comes).

mod support;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use orchestrator::db::{Db, now_ms};
use orchestrator::notify::RecordingNotifier;
use orchestrator::stage_engine::{Boot, Defences, Engine, EngineError, Outcome};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::sim::{self, ACTORS, EffectFaults, SimInputs, StallHook, Tally};

const CHILD_ENV: &str = "ORCH_SIM_CHILD";

/// Late events sent to ended tasks in this process (a run must send some,
/// or the "nothing after done" oracle would see only the racing ends).
static LATE_EVENTS: AtomicU64 = AtomicU64::new(0);

fn env_u64(key: &str) -> Option<u64> {
    std::env::var(key).ok().and_then(|v| v.parse().ok())
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn sim_seconds() -> u64 {
    env_u64("SIM_SECONDS").unwrap_or(if in_ci() { 60 } else { 10 })
}

fn seed() -> u64 {
    env_u64("SIM_SEED").unwrap_or_else(|| now_ms() as u64)
}

/// The faults of a run (all on unless the run is the contention test).
#[derive(Clone, Copy, Debug)]
struct Faults {
    /// Percent of step boundaries at which a holder stalls.
    stall_pct: u64,
    /// A stall lasts `lo..lo+spread` ms.
    stall_ms: (u64, u64),
    effects: Option<EffectFaults>,
    /// One operator step in this many actor steps force-releases the lease
    /// of a stalled holder.
    operator_every: u64,
}

impl Faults {
    fn on(seed: u64) -> Faults {
        Faults {
            stall_pct: 2,
            stall_ms: (2, 5),
            effects: Some(EffectFaults {
                seed,
                lose_answer_pct: 3,
                max_latency_us: 400,
            }),
            operator_every: 8,
        }
    }
    /// The defence runs: more stalls and a busier operator, so the window
    /// a missing defence leaves open is met within the budget.
    fn harsh(seed: u64) -> Faults {
        Faults {
            stall_pct: 6,
            // Long enough that the operator sees the stall and the next
            // holder finishes its step inside it, however loaded the host.
            stall_ms: (15, 30),
            operator_every: 3,
            ..Faults::on(seed)
        }
    }
    fn off() -> Faults {
        Faults {
            stall_pct: 0,
            stall_ms: (2, 5),
            effects: None,
            operator_every: 0,
        }
    }
}

struct World {
    engine: Engine,
    stalls: Arc<StallHook>,
    force_releases: AtomicU64,
}

fn world(db: &Db, counts: &Path, seed: u64, faults: Faults, defences: Defences) -> World {
    let stalls = StallHook::with_stall_ms(
        seed ^ std::process::id() as u64,
        faults.stall_pct,
        faults.stall_ms.0,
        faults.stall_ms.1,
    );
    let engine = Engine::builder(db.clone(), Boot::new())
        .effects(sim::faulty_registry(counts, faults.effects))
        .inputs(Arc::new(SimInputs { seed }))
        .notifier(Arc::new(RecordingNotifier::default()))
        .hooks(stalls.clone())
        .defences(defences)
        .build();
    World {
        engine,
        stalls,
        force_releases: AtomicU64::new(0),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// What one actor step does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Advance,
    Cancel,
    /// The merge gate's red re-test (deploy-staging -> development).
    Rollback,
    /// The operator force-releases the lease of a stalled holder.
    Release,
}

impl Action {
    fn code(self) -> char {
        match self {
            Action::Advance => 'a',
            Action::Cancel => 'c',
            Action::Rollback => 'r',
            Action::Release => 'x',
        }
    }
    fn from_code(c: char) -> Option<Action> {
        Some(match c {
            'a' => Action::Advance,
            'c' => Action::Cancel,
            'r' => Action::Rollback,
            'x' => Action::Release,
            _ => return None,
        })
    }
}

/// The seeded choice of an actor: which task and what to do.
fn choose(actor: &str, rng: &mut StdRng, faults: Faults, live: usize) -> (usize, Action) {
    let pos = rng.gen_range(0..live);
    let action = match actor {
        _ if faults.operator_every > 0 && rng.gen_range(0..faults.operator_every) == 0 => {
            Action::Release
        }
        "stop" if rng.gen_range(0..100) < 2 => Action::Cancel,
        "finalizer" if rng.gen_range(0..100) < 10 => Action::Rollback,
        _ => Action::Advance,
    };
    (pos, action)
}

async fn act(w: &World, actor: &str, task_id: i64, action: Action) -> Result<Outcome, EngineError> {
    let e = &w.engine;
    match action {
        Action::Advance => e.advance_stage(task_id, actor).await,
        Action::Cancel => e.cancel(task_id, "stop", "STOP").await.map(|(o, _)| o),
        Action::Rollback => {
            e.rollback(
                task_id,
                orchestrator::domain::Stage::DeployStaging,
                "merge-gate",
                "red re-test",
            )
            .await
        }
        Action::Release => {
            // Only a holder that looks stuck (stalled at a step boundary),
            // and only that holder, as /queue named it.
            if let Some((stalled, holder)) = w.stalls.stalled_now().first().cloned()
                && let Some(t) = orchestrator::db::tasks::get(e.db().reader(), stalled).await?
                && let orchestrator::stage_engine::ForceRelease::Released(_) = e
                    .force_release_holder(&t.work_item, Some(&holder), "operator")
                    .await?
            {
                w.force_releases.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Outcome::Pending {
                stage: orchestrator::domain::Stage::Created,
                reason: "operator".into(),
            })
        }
    }
}

/// Recorded steps per (batch, actor), in order.
type Steps = HashMap<(u64, usize), Vec<(usize, Action)>>;

/// The schedule of a run: `batch actor pos action` per step, for replay.
#[derive(Default)]
struct Schedule {
    lines: Mutex<Vec<String>>,
    /// Replay: the steps to follow instead of the seeded choices.
    replay: Option<Steps>,
}

impl Schedule {
    fn load(path: &Path) -> Schedule {
        let text = std::fs::read_to_string(path).expect("SIM_REPLAY file");
        let mut m: Steps = HashMap::new();
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let f: Vec<&str> = l.split_whitespace().collect();
            if let [b, a, p, c] = f[..]
                && let (Ok(b), Ok(a), Ok(p), Some(c)) = (
                    b.parse(),
                    a.parse(),
                    p.parse(),
                    c.chars().next().and_then(Action::from_code),
                )
            {
                m.entry((b, a)).or_default().push((p, c));
            }
        }
        Schedule {
            lines: Mutex::default(),
            replay: Some(m),
        }
    }

    fn record(&self, batch: u64, actor: usize, pos: usize, a: Action) {
        self.lines
            .lock()
            .unwrap()
            .push(format!("{batch} {actor} {pos} {}", a.code()));
    }

    fn write(&self, seed: u64, what: &str) -> PathBuf {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/sim-failures");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{what}-seed-{seed}.schedule"));
        let mut f = std::fs::File::create(&path).unwrap();
        writeln!(
            f,
            "# seed={seed} run={what}; replay: SIM_SEED={seed} SIM_REPLAY={}",
            path.display()
        )
        .unwrap();
        for l in self.lines.lock().unwrap().iter() {
            writeln!(f, "{l}").unwrap();
        }
        path
    }
}

/// A child actor process: `ORCH_SIM_CHILD=<mode>` with the database, count
/// file, seed, duration, disabled defence and faults in the environment.
/// Without the variable this test does nothing (it is the re-exec entry).
#[test]
fn sim_child() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return;
    };
    let db_path = PathBuf::from(std::env::var("SIM_DB").unwrap());
    let counts = PathBuf::from(std::env::var("SIM_COUNTS").unwrap());
    let seed = env_u64("SIM_SEED").unwrap();
    let salt = env_u64("SIM_SALT").unwrap_or(0);
    let secs = env_u64("SIM_SECONDS").unwrap();
    let defences = std::env::var("SIM_DISABLE")
        .ok()
        .and_then(|d| Defences::without(&d))
        .unwrap_or(Defences::ALL);
    let faults = match env_u64("SIM_FAULTS") {
        Some(2) => Faults::harsh(seed),
        Some(1) => Faults::on(seed),
        _ => Faults::off(),
    };
    let rt = runtime();
    let tally = rt.block_on(async move {
        let db = Db::open(&db_path).await.unwrap();
        let w = Arc::new(world(&db, &counts, seed, faults, defences));
        // What the daemon does first after a (re)start.
        let _ = w.engine.recover_on_startup().await;
        let tally = Arc::new(Tally::default());
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut handles = Vec::new();
        // Racing children run three actors each, so all actors appear
        // across processes while the parent's batches lead.
        let pid = (std::process::id() as u64 ^ salt) as usize;
        let actors: Vec<(usize, &str)> = if mode == "race" {
            (0..3)
                .map(|k| (pid + k * 2) % ACTORS.len())
                .map(|i| (i, ACTORS[i]))
                .collect()
        } else {
            ACTORS.iter().copied().enumerate().collect()
        };
        for (i, actor) in actors {
            let (w, tally, mode) = (w.clone(), tally.clone(), mode.clone());
            let mut rng = sim::actor_rng(seed ^ pid as u64, i);
            handles.push(tokio::spawn(async move {
                loop {
                    // The newest live tasks: the parent's current batch, where
                    // the races are.
                    let ids: Vec<i64> = sqlx::query_scalar(
                        "SELECT id FROM (SELECT id FROM tasks WHERE stage NOT IN ('done','cancelled')
                                         ORDER BY id DESC LIMIT 64) ORDER BY random() LIMIT 4",
                    )
                    .fetch_all(w.engine.db().reader())
                    .await
                    .unwrap_or_default();
                    if ids.is_empty() {
                        if mode == "drive" || Instant::now() > deadline {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        continue;
                    }
                    if mode == "race" && Instant::now() > deadline {
                        break;
                    }
                    for id in &ids {
                        sim::jitter(&mut rng).await;
                        let (_, a) = choose(actor, &mut rng, faults, 1);
                        let r = act(&w, actor, *id, a).await;
                        tally.record(&r);
                    }
                    if mode == "race" {
                        // Interleave, do not dominate: the parent's actors lead.
                        tokio::time::sleep(Duration::from_micros(rng.gen_range(20_000..60_000))).await;
                    }
                }
            }));
        }
        // A graceful stop (SIGTERM): no new effects, the ones in flight
        // finish (bounded), then exit, as the daemon does (B-13).
        let drain = w.engine.drain().clone();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        let all = futures_join(handles);
        tokio::select! {
            _ = all => {}
            _ = term.recv() => {
                drain.start_draining();
                drain.wait_idle(Duration::from_secs(10), Duration::from_secs(5), std::future::pending()).await;
            }
        }
        tally
    });
    println!(
        "child-tally ops={} moved={} busy={} lost={} errors={} sqlite_busy={}",
        tally.ops.load(Ordering::Relaxed),
        tally.moved.load(Ordering::Relaxed),
        tally.busy.load(Ordering::Relaxed),
        tally.lost.load(Ordering::Relaxed),
        tally.errors.load(Ordering::Relaxed),
        tally.sqlite_busy.load(Ordering::Relaxed),
    );
    // Leave at once: actors cut mid-step are what a stopping daemon leaves.
    std::process::exit(0);
}

async fn futures_join(handles: Vec<tokio::task::JoinHandle<()>>) {
    for h in handles {
        let _ = h.await;
    }
}

#[derive(Clone)]
struct ChildSpec {
    mode: &'static str,
    db: PathBuf,
    counts: PathBuf,
    seed: u64,
    /// Varies the child's own choices; the gate verdicts follow `seed`.
    salt: u64,
    secs: u64,
    disable: Option<&'static str>,
    faults: u64,
}

fn spawn_child(c: &ChildSpec) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "sim_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, c.mode)
        .env("SIM_DB", &c.db)
        .env("SIM_COUNTS", &c.counts)
        .env("SIM_SEED", c.seed.to_string())
        .env("SIM_SALT", c.salt.to_string())
        .env("SIM_SECONDS", c.secs.to_string())
        .env("SIM_DISABLE", c.disable.unwrap_or("none"))
        .env("SIM_FAULTS", c.faults.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("re-exec the test binary")
}

/// Parse `child-tally k=v ...` from a child's output.
fn child_tally(out: &std::process::Output) -> HashMap<String, u64> {
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| {
            l.find("child-tally ")
                .map(|i| &l[i + "child-tally ".len()..])
        })
        .flat_map(|l| l.split_whitespace())
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap_or(0)))
        .collect()
}

/// One simulation run.
struct Run {
    secs: u64,
    batch: usize,
    children: u64,
    disable: Option<&'static str>,
    /// Stop at the first violation seen between batches (defence runs).
    stop_at_first: bool,
}

#[derive(Default)]
struct RunResult {
    schedules: usize,
    check: sim::Check,
    faults: u64,
    kills: u64,
    stops: u64,
    child_ops: u64,
    errors: u64,
}

fn run(r: &Run, seed: u64, schedule: Arc<Schedule>) -> (RunResult, Arc<Tally>) {
    let dir = sim::scratch_dir();
    let db_path = dir.path().join("sim.db");
    let counts = dir.path().join("effects.count");
    let defences = r
        .disable
        .and_then(Defences::without)
        .unwrap_or(Defences::ALL);
    let faults = if r.disable.is_some() {
        Faults::harsh(seed)
    } else {
        Faults::on(seed)
    };
    let rt = runtime();
    let tally = Arc::new(Tally::default());
    let t2 = tally.clone();
    let out = rt.block_on(async move {
        let db = Db::open(&db_path).await.unwrap();
        let w = Arc::new(world(&db, &counts, seed, faults, defences));
        let until = Instant::now() + Duration::from_secs(r.secs);
        let spec = |s: u64| ChildSpec {
            mode: "race",
            db: db_path.clone(),
            counts: counts.clone(),
            seed,
            salt: s,
            secs: r.secs + 5,
            disable: r.disable,
            faults: if r.disable.is_some() { 2 } else { 1 },
        };
        let children: Arc<Mutex<Vec<Option<Child>>>> = Arc::new(Mutex::new(
            (0..r.children)
                .map(|i| Some(spawn_child(&spec(i))))
                .collect(),
        ));
        let outputs: Arc<Mutex<Vec<std::process::Output>>> = Arc::default();
        // Chaos: every few hundred ms a child is SIGKILLed (2 in 3) or
        // stopped gracefully (1 in 3), then restarted: a new boot that
        // recovers first.
        let (kills, stops) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let chaos = {
            let (children, outputs, kills, stops) = (
                children.clone(),
                outputs.clone(),
                kills.clone(),
                stops.clone(),
            );
            let mut rng = StdRng::seed_from_u64(sim::mix(seed ^ 0xC4A05));
            let specs: Vec<(u64, ChildSpec)> = (0..r.children).map(|i| (i, spec(i))).collect();
            let mut restarts = 100u64;
            async move {
                if specs.is_empty() {
                    return;
                }
                while Instant::now() + Duration::from_millis(1500) < until {
                    tokio::time::sleep(Duration::from_millis(rng.gen_range(1000..3000))).await;
                    let i = rng.gen_range(0..specs.len());
                    let Some(mut c) = children.lock().unwrap()[i].take() else {
                        continue;
                    };
                    let graceful = rng.gen_range(0..3) == 0;
                    let sig = if graceful {
                        nix::sys::signal::Signal::SIGTERM
                    } else {
                        nix::sys::signal::Signal::SIGKILL
                    };
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig);
                    let o = tokio::task::spawn_blocking(move || {
                        let _ = c.kill();
                        c.wait_with_output().unwrap()
                    })
                    .await
                    .unwrap();
                    outputs.lock().unwrap().push(o);
                    if graceful { &stops } else { &kills }.fetch_add(1, Ordering::Relaxed);
                    restarts += 1;
                    let mut s = specs[i].1.clone();
                    s.salt ^= restarts;
                    children.lock().unwrap()[i] = Some(spawn_child(&s));
                }
            }
        };
        let chaos = tokio::spawn(chaos);
        let mut schedules = 0usize;
        let mut batch_no = 0u64;
        let mut early = None;
        while Instant::now() < until {
            batch_no += 1;
            let ids = sim::create_tasks(w.engine.db(), &format!("SIM{batch_no}"), r.batch).await;
            // Tasks some actor saw end: the others stop picking them, as
            // the daemon's actors stop at a finished task (their queries
            // skip it). A pick made just before still races the end, and
            // one step in 20 is a late event for an ended task (a webhook
            // or a STOP after done), which must change nothing.
            let ended: Arc<Mutex<Vec<i64>>> = Arc::default();
            let mut handles = Vec::new();
            for (i, actor) in ACTORS.iter().enumerate() {
                let (w, tally, ids, ended) = (w.clone(), t2.clone(), ids.clone(), ended.clone());
                let mut rng = sim::actor_rng(seed ^ sim::mix(batch_no), i);
                let mut replay = schedule
                    .replay
                    .as_ref()
                    .and_then(|m| m.get(&(batch_no, i)).cloned())
                    .map(|v| v.into_iter());
                let schedule = schedule.clone();
                handles.push(tokio::spawn(async move {
                    let mut live = ids;
                    let mut steps = 0;
                    while steps < 20_000 {
                        let late = {
                            let ended = ended.lock().unwrap();
                            live.retain(|x| !ended.contains(x));
                            (replay.is_none() && !ended.is_empty() && rng.gen_range(0..20) == 0)
                                .then(|| ended[rng.gen_range(0..ended.len())])
                        };
                        if let Some(id) = late {
                            LATE_EVENTS.fetch_add(1, Ordering::Relaxed);
                            let (_, a) = choose(actor, &mut rng, faults, 1);
                            let out = act(&w, actor, id, a).await;
                            tally.record(&out);
                        }
                        if live.is_empty() {
                            break;
                        }
                        steps += 1;
                        let (pos, a) = match replay.as_mut() {
                            Some(r) => match r.next() {
                                Some((p, a)) => (p % live.len(), a),
                                None => break,
                            },
                            None => choose(actor, &mut rng, faults, live.len()),
                        };
                        schedule.record(batch_no, i, pos, a);
                        let id = live[pos];
                        sim::jitter(&mut rng).await;
                        let out = act(&w, actor, id, a).await;
                        let end = match &out {
                            Ok(Outcome::Terminal { .. } | Outcome::Cancelled { .. }) => true,
                            Ok(Outcome::Advanced { to, .. }) => to.is_terminal(),
                            _ => false,
                        };
                        if end {
                            live.retain(|x| *x != id);
                            let mut ended = ended.lock().unwrap();
                            if !ended.contains(&id) {
                                ended.push(id);
                            }
                        }
                        tally.record(&out);
                    }
                }));
            }
            for h in handles {
                h.await.unwrap();
            }
            schedules += ids.len();
            if r.stop_at_first {
                let c = sim::check_with(&db, &counts, false, Some(seed)).await;
                if c.violations() > 0 {
                    early = Some(c);
                    break;
                }
            }
        }
        chaos.abort();
        let _ = chaos.await;
        // Stop the children gracefully, then settle what is left alone.
        let left: Vec<Child> = children
            .lock()
            .unwrap()
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        for c in &left {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let mut child_ops = 0;
        let mut errors = 0;
        for c in left {
            let o = tokio::task::spawn_blocking(move || c.wait_with_output().unwrap())
                .await
                .unwrap();
            let t = child_tally(&o);
            child_ops += t.get("ops").copied().unwrap_or(0);
            errors += t.get("errors").copied().unwrap_or(0);
        }
        for o in outputs.lock().unwrap().iter() {
            child_ops += child_tally(o).get("ops").copied().unwrap_or(0);
        }
        let check = match early {
            Some(c) => c,
            None if r.disable.is_some() => sim::check_with(&db, &counts, false, Some(seed)).await,
            None => {
                // The restart after the run: recovery, then one actor
                // carries every task to its end (no races).
                let after = world(&db, &counts, seed, Faults::off(), defences);
                let _ = after.engine.recover_on_startup().await;
                if let Err(e) = sim::drain(&after.engine).await {
                    eprintln!("drain: {e}");
                }
                sim::check_with(&db, &counts, true, Some(seed)).await
            }
        };
        if check.violations() > 0 && r.disable.is_none() {
            // Keep the evidence next to the schedule.
            let keep = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join(format!("target/sim-failures/seed-{seed}"));
            let _ = std::fs::create_dir_all(&keep);
            db.close().await;
            for f in ["sim.db", "sim.db-wal", "sim.db-shm", "effects.count"] {
                let _ = std::fs::copy(dir.path().join(f), keep.join(f));
            }
            eprintln!("database and effect counts kept in {}", keep.display());
        }
        let faults_n = w.stalls.count.load(Ordering::Relaxed)
            + w.force_releases.load(Ordering::Relaxed)
            + sim::LOST_ANSWERS.load(Ordering::Relaxed)
            + kills.load(Ordering::Relaxed)
            + stops.load(Ordering::Relaxed);
        RunResult {
            schedules,
            check,
            faults: faults_n,
            kills: kills.load(Ordering::Relaxed),
            stops: stops.load(Ordering::Relaxed),
            child_ops,
            errors,
        }
    });
    (out, tally)
}

#[test]
fn simulation_zero_duplicate_effects_zero_contradictions() {
    let secs = sim_seconds();
    let seed = seed();
    let schedule = Arc::new(match std::env::var("SIM_REPLAY") {
        Ok(p) => Schedule::load(Path::new(&p)),
        Err(_) => Schedule::default(),
    });
    eprintln!("simulation seed={seed} seconds={secs} (replay: SIM_SEED={seed} SIM_SECONDS={secs})");
    let cfg = Run {
        secs,
        batch: env_u64("SIM_BATCH").unwrap_or(48) as usize,
        children: env_u64("SIM_CHILDREN").unwrap_or(1),
        disable: None,
        stop_at_first: false,
    };
    let (o, tally) = run(&cfg, seed, schedule.clone());
    for c in o.check.contradictions.iter().take(20) {
        eprintln!("contradiction: {c}");
    }
    println!(
        "simulation: schedules={} duplicate_effects={} contradictions={} stuck={} faults={}",
        o.schedules,
        o.check.duplicate_effects,
        o.check.contradictions.len(),
        o.check.stuck,
        o.faults
    );
    eprintln!(
        "ops={} moved={} lease_busy={} lost_race={} errors={} child_ops={} child_kills={} child_stops={} seed={seed}",
        tally.ops.load(Ordering::Relaxed),
        tally.moved.load(Ordering::Relaxed),
        tally.busy.load(Ordering::Relaxed),
        tally.lost.load(Ordering::Relaxed),
        tally.errors.load(Ordering::Relaxed) + o.errors,
        o.child_ops,
        o.kills,
        o.stops,
    );
    let failed = o.check.violations() > 0 || o.check.stuck > 0;
    if !failed && std::env::var("SIM_WRITE_SCHEDULE").is_ok() {
        eprintln!(
            "schedule written to {}",
            schedule.write(seed, "simulation").display()
        );
    }
    if failed {
        let path = schedule.write(seed, "simulation");
        eprintln!(
            "simulation failed; seed and schedule written to {}",
            path.display()
        );
    }
    assert_eq!(o.check.duplicate_effects, 0, "seed {seed}");
    assert!(
        o.check.contradictions.is_empty(),
        "seed {seed}: {:?}",
        &o.check.contradictions[..o.check.contradictions.len().min(5)]
    );
    assert_eq!(o.check.stuck, 0, "seed {seed}");
    assert_eq!(
        tally.errors.load(Ordering::Relaxed) + o.errors,
        0,
        "engine errors, seed {seed}"
    );
    assert!(
        o.schedules >= 100,
        "too few schedules to mean anything: {}",
        o.schedules
    );
    assert!(o.faults > 0, "no fault was injected");
    if schedule.replay.is_none() {
        assert!(
            LATE_EVENTS.load(Ordering::Relaxed) > 0,
            "no late event reached an ended task"
        );
    }
    if cfg.children > 0 && secs >= 10 {
        assert!(o.child_ops > 0, "the child processes did nothing");
        assert!(o.kills + o.stops > 0, "no child was killed or stopped");
    }
    assert!(
        tally.busy.load(Ordering::Relaxed) > 0,
        "actors never met a held lease: no real contention"
    );
}

/// Each defence of the engine, switched off alone, must let the same
/// simulation see a violation within its budget, or the simulation could
/// not tell that defence is needed.
#[test]
fn each_defence_carries_weight() {
    let seed = seed();
    let budget = env_u64("SIM_DEFENCE_SECONDS").unwrap_or(if in_ci() { 20 } else { 5 });
    let mut zero = Vec::new();
    for name in Defences::NAMES {
        let cfg = Run {
            secs: budget,
            batch: 24,
            children: 1,
            disable: Some(name),
            stop_at_first: true,
        };
        let (o, _) = run(&cfg, sim::mix(seed ^ name.len() as u64), Arc::default());
        let n = o.check.violations();
        println!(
            "defence {name}: disabled -> violations={n} in {} schedules",
            o.schedules
        );
        if let Some(c) = o.check.contradictions.first() {
            eprintln!("  e.g. {c}");
        }
        if n == 0 {
            zero.push(name);
        }
    }
    assert!(
        zero.is_empty(),
        "switching these defences off changed nothing the simulation could see (seed {seed}): {zero:?}"
    );
}

/// 5 actor processes × 100 tasks on one SQLite file: every write waits its
/// turn (BEGIN IMMEDIATE + busy_timeout); none fails with SQLITE_BUSY.
#[test]
fn sqlite_contention_five_processes_hundred_tasks_no_busy() {
    let seed = seed();
    let dir = tempfile::tempdir().unwrap(); // a real disk file, not tmpfs
    let db_path = dir.path().join("contention.db");
    let counts = dir.path().join("effects.count");
    let rt = runtime();
    rt.block_on(async {
        let db = Db::open(&db_path).await.unwrap();
        sim::create_tasks(&db, "LOAD", 100).await;
        db.close().await;
    });
    let spec = ChildSpec {
        mode: "drive",
        db: db_path.clone(),
        counts: counts.clone(),
        seed,
        salt: 0,
        secs: 120,
        disable: None,
        faults: 0,
    };
    let children: Vec<_> = (0..5).map(|_| spawn_child(&spec)).collect();
    let mut total_ops = 0;
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let t = child_tally(&out);
        assert_eq!(
            t.get("sqlite_busy"),
            Some(&0),
            "SQLITE_BUSY in a child: {t:?}"
        );
        assert_eq!(t.get("errors"), Some(&0), "engine errors in a child: {t:?}");
        total_ops += t.get("ops").copied().unwrap_or(0);
    }
    let check = rt.block_on(async {
        let db = Db::open(&db_path).await.unwrap();
        sim::check(&db, &counts, true).await
    });
    println!(
        "contention: processes=5 tasks=100 ops={total_ops} duplicate_effects={} contradictions={}",
        check.duplicate_effects,
        check.contradictions.len()
    );
    assert_eq!(check.tasks, 100);
    assert_eq!(check.duplicate_effects, 0);
    assert!(
        check.contradictions.is_empty(),
        "{:?}",
        check.contradictions
    );
}
