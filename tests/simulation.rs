//! B-2: the stage engine's guarantee as a property. Seeded actors (the
//! monitor, both webhooks, reconciler, reaper, finalizer with its merge-gate
//! rollbacks, STOP) drive the same tasks through advance, rollback and
//! cancel, as tokio tasks in this process AND as separate OS processes on
//! the same SQLite file. Every effect counts itself outside the journal; the
//! checker counts duplicates and contradictions, which must be 0.
//!
//! `SIM_SECONDS` (default 60 under CI=true, else 10) and `SIM_SEED` steer it;
//! the seed is printed so a failure can be replayed.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use orchestrator::db::tasks::{self};
use orchestrator::db::{Db, now_ms};
use orchestrator::domain::{GateVerdict, Stage};
use orchestrator::notify::RecordingNotifier;
use orchestrator::stage_engine::{Boot, Effect, EffectCtx, Engine, GateInputs, transition_key};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use support::sim::{self, ACTORS, SimInputs, Tally};

const CHILD_ENV: &str = "ORCH_SIM_CHILD";

fn env_u64(key: &str) -> Option<u64> {
    std::env::var(key).ok().and_then(|v| v.parse().ok())
}

fn sim_seconds() -> u64 {
    env_u64("SIM_SECONDS").unwrap_or(if std::env::var("CI").is_ok_and(|v| v == "true") {
        60
    } else {
        10
    })
}

fn seed() -> u64 {
    env_u64("SIM_SEED").unwrap_or_else(|| now_ms() as u64)
}

fn engine(db: &Db, counts: &Path, seed: u64, notifier: Arc<RecordingNotifier>) -> Engine {
    Engine::builder(db.clone(), Boot::new())
        .effects(sim::counting_registry(counts))
        .inputs(Arc::new(SimInputs { seed }))
        .notifier(notifier)
        .build()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A child actor process: `ORCH_SIM_CHILD=<mode>` with the database, count
/// file, seed and duration in the environment. Without the variable this
/// test does nothing (it is the re-exec entry point).
#[test]
fn sim_child() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return;
    };
    let db_path = PathBuf::from(std::env::var("SIM_DB").unwrap());
    let counts = PathBuf::from(std::env::var("SIM_COUNTS").unwrap());
    let seed = env_u64("SIM_SEED").unwrap();
    let secs = env_u64("SIM_SECONDS").unwrap();
    let rt = runtime();
    let tally = rt.block_on(async move {
        let db = Db::open(&db_path).await.unwrap();
        let eng = engine(&db, &counts, seed, Arc::new(RecordingNotifier::default()));
        let tally = Arc::new(Tally::default());
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut handles = Vec::new();
        // Racing children run three actors each, so all actors of the SPEC
        // appear across processes while the parent's batches lead.
        let actors: Vec<(usize, &str)> = if mode == "race" {
            let off = (std::process::id() as usize) % ACTORS.len();
            (0..3).map(|k| ((off + k * 2) % ACTORS.len(), ACTORS[(off + k * 2) % ACTORS.len()])).collect()
        } else {
            ACTORS.iter().copied().enumerate().collect()
        };
        for (i, actor) in actors {
            let (eng, tally) = (eng.clone(), tally.clone());
            let mode = mode.clone();
            let mut rng = sim::actor_rng(seed ^ std::process::id() as u64, i);
            handles.push(tokio::spawn(async move {
                loop {
                    let ids: Vec<i64> = sqlx::query_scalar(
                        "SELECT id FROM tasks WHERE stage NOT IN ('done','cancelled') ORDER BY random() LIMIT 4",
                    )
                    .fetch_all(eng.db().reader())
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
                    for id in ids {
                        sim::jitter(&mut rng).await;
                        let r = sim::actor_step(&eng, actor, id, &mut rng, 2).await;
                        tally.record(&r);
                    }
                    if mode == "race" {
                        // Interleave, do not dominate: the parent's actors lead.
                        tokio::time::sleep(Duration::from_micros(rng.gen_range(10_000..30_000))).await;
                    }
                }
            }));
        }
        for h in handles {
            h.await.unwrap();
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
}

fn spawn_child(mode: &str, db: &Path, counts: &Path, seed: u64, secs: u64) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "sim_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, mode)
        .env("SIM_DB", db)
        .env("SIM_COUNTS", counts)
        .env("SIM_SEED", seed.to_string())
        .env("SIM_SECONDS", secs.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("re-exec the test binary")
}

/// Parse `child-tally k=v ...` from a child's output.
fn child_tally(out: &std::process::Output) -> std::collections::HashMap<String, u64> {
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

/// Run batches of tasks under all actors until the time is up. Returns the
/// number of schedules (tasks driven to the end under concurrent actors).
async fn run_batches(eng: &Engine, seed: u64, until: Instant, tally: Arc<Tally>) -> usize {
    let mut schedules = 0usize;
    let mut batch_no = 0u64;
    while Instant::now() < until {
        batch_no += 1;
        let ids = sim::create_tasks(
            eng.db(),
            &format!("SIM{batch_no}"),
            env_u64("SIM_BATCH").unwrap_or(16) as usize,
        )
        .await;
        let mut handles = Vec::new();
        for (i, actor) in ACTORS.iter().enumerate() {
            let (eng, tally, ids) = (eng.clone(), tally.clone(), ids.clone());
            let mut rng = sim::actor_rng(seed ^ sim::mix(batch_no), i);
            handles.push(tokio::spawn(async move {
                let mut live = ids;
                let mut steps = 0;
                while !live.is_empty() && steps < 20_000 {
                    steps += 1;
                    let id = *live.choose(&mut rng).unwrap();
                    sim::jitter(&mut rng).await;
                    let r = sim::actor_step(&eng, actor, id, &mut rng, 2).await;
                    if let Ok(orchestrator::stage_engine::Outcome::Terminal { .. }) = r {
                        live.retain(|x| *x != id);
                    }
                    tally.record(&r);
                }
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
        schedules += ids.len();
    }
    schedules
}

#[test]
fn simulation_zero_duplicate_effects_zero_contradictions() {
    let secs = sim_seconds();
    let seed = seed();
    eprintln!("simulation seed={seed} seconds={secs} (replay: SIM_SEED={seed} SIM_SECONDS={secs})");
    let dir = sim::scratch_dir();
    let db_path = dir.path().join("sim.db");
    let counts = dir.path().join("effects.count");
    let rt = runtime();
    let (schedules, check, tally, notifier) = rt.block_on(async {
        let db = Db::open(&db_path).await.unwrap();
        let notifier = Arc::new(RecordingNotifier::default());
        let eng = engine(&db, &counts, seed, notifier.clone());
        // Two racing OS processes share the file with this one for the whole run.
        let n_children = env_u64("SIM_CHILDREN").unwrap_or(2);
        let children: Vec<_> = (0..n_children)
            .map(|_| spawn_child("race", &db_path, &counts, seed, secs))
            .collect();
        let tally = Arc::new(Tally::default());
        let until = Instant::now() + Duration::from_secs(secs);
        let schedules = run_batches(&eng, seed, until, tally.clone()).await;
        for c in children {
            let out = tokio::task::spawn_blocking(move || c.wait_with_output().unwrap())
                .await
                .unwrap();
            assert!(
                out.status.success(),
                "a child actor process failed: {out:?}"
            );
            let t = child_tally(&out);
            assert!(
                t.get("ops").copied().unwrap_or(0) > 0,
                "child did nothing: {t:?}"
            );
            tally
                .errors
                .fetch_add(t.get("errors").copied().unwrap_or(0), Ordering::Relaxed);
            tally.sqlite_busy.fetch_add(
                t.get("sqlite_busy").copied().unwrap_or(0),
                Ordering::Relaxed,
            );
            tally
                .ops
                .fetch_add(t.get("ops").copied().unwrap_or(0), Ordering::Relaxed);
        }
        sim::drain(&eng).await.unwrap();
        let check = sim::check(&db, &counts, true).await;
        (schedules, check, tally, notifier)
    });
    for c in check.contradictions.iter().take(20) {
        eprintln!("contradiction: {c}");
    }
    println!(
        "simulation: schedules={schedules} duplicate_effects={} contradictions={}",
        check.duplicate_effects,
        check.contradictions.len()
    );
    eprintln!(
        "ops={} moved={} lease_busy={} lost_race={} errors={} sqlite_busy={} alerts={} seed={seed}",
        tally.ops.load(Ordering::Relaxed),
        tally.moved.load(Ordering::Relaxed),
        tally.busy.load(Ordering::Relaxed),
        tally.lost.load(Ordering::Relaxed),
        tally.errors.load(Ordering::Relaxed),
        tally.sqlite_busy.load(Ordering::Relaxed),
        notifier.alerts().len(),
    );
    assert_eq!(check.duplicate_effects, 0, "seed {seed}");
    assert!(
        check.contradictions.is_empty(),
        "seed {seed}: {:?}",
        &check.contradictions[..check.contradictions.len().min(5)]
    );
    assert_eq!(
        tally.errors.load(Ordering::Relaxed),
        0,
        "engine errors, seed {seed}"
    );
    assert!(
        schedules >= 100,
        "too few schedules to mean anything: {schedules}"
    );
    assert!(
        tally.busy.load(Ordering::Relaxed) > 0,
        "actors never met a held lease: no real contention"
    );
}

/// The same actors on the path the seeds describe before the engine: no
/// lease, no journal, a blind `UPDATE ... WHERE id=?`. The checker must
/// catch it, or it proves nothing.
async fn naive_step(
    db: &Db,
    inputs: &SimInputs,
    counts: &Path,
    task_id: i64,
    rng: &mut rand::rngs::StdRng,
) -> bool {
    let Some(t) = tasks::get(db.reader(), task_id).await.unwrap() else {
        return true;
    };
    if t.stage.is_terminal() {
        return true;
    }
    let target = if t.cancel_requested_at.is_some() {
        Stage::Cancelled
    } else {
        let gate = t.stage.spec().gate.unwrap();
        match gate.evaluate(&inputs.load(&t).await) {
            GateVerdict::Pass => t.stage.next().unwrap(),
            GateVerdict::Fail(_) => match t.stage.rollback() {
                Some(r) => r,
                None => return false,
            },
            GateVerdict::Pending(_) => return false,
        }
    };
    sim::jitter(rng).await;
    let effect = sim::CountingEffect {
        path: counts.to_path_buf(),
    };
    for kind in t.stage.effects_to(target) {
        let ctx = EffectCtx {
            task: t.clone(),
            transition_key: transition_key(t.id, t.stage, target, t.stage_version),
            kind: *kind,
            from: t.stage,
            to: target,
        };
        effect.apply(&ctx).await.unwrap();
        sim::jitter(rng).await;
    }
    let mut tx = db.begin_write().await.unwrap();
    sqlx::query("UPDATE tasks SET stage = ?, stage_version = stage_version + 1 WHERE id = ?")
        .bind(target)
        .bind(t.id)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO stage_history (task_id, from_stage, to_stage, from_version, to_version, actor, at)
         VALUES (?, ?, ?, ?, ?, 'naive', 0)",
    )
    .bind(t.id)
    .bind(t.stage)
    .bind(target)
    .bind(t.stage_version)
    .bind(t.stage_version + 1)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    target.is_terminal()
}

#[test]
fn negative_control_blind_update_is_caught() {
    let seed = seed();
    let dir = sim::scratch_dir();
    let counts = dir.path().join("effects.count");
    let rt = runtime();
    let (schedules, check) = rt.block_on(async {
        let db = Db::open(&dir.path().join("naive.db")).await.unwrap();
        let inputs = SimInputs { seed };
        let until = Instant::now() + Duration::from_secs(5);
        let mut schedules = 0;
        let mut batch_no = 0u64;
        while Instant::now() < until {
            batch_no += 1;
            let ids = sim::create_tasks(&db, &format!("NAIVE{batch_no}"), 8).await;
            let mut handles = Vec::new();
            for i in 0..ACTORS.len() {
                let (db, inputs, counts, ids) =
                    (db.clone(), inputs.clone(), counts.clone(), ids.clone());
                let mut rng =
                    rand::rngs::StdRng::seed_from_u64(sim::mix(seed ^ batch_no ^ i as u64));
                handles.push(tokio::spawn(async move {
                    let mut live = ids;
                    let mut steps = 0;
                    while !live.is_empty() && steps < 2_000 {
                        steps += 1;
                        let id = *live.choose(&mut rng).unwrap();
                        if naive_step(&db, &inputs, &counts, id, &mut rng).await {
                            live.retain(|x| *x != id);
                        }
                    }
                }));
            }
            for h in handles {
                h.await.unwrap();
            }
            schedules += ids.len();
            let c = sim::check(&db, &counts, false).await;
            if c.duplicate_effects > 0 && !c.contradictions.is_empty() {
                break;
            }
        }
        (schedules, sim::check(&db, &counts, false).await)
    });
    println!(
        "negative control: schedules={schedules} duplicate_effects={} contradictions={}",
        check.duplicate_effects,
        check.contradictions.len()
    );
    assert!(
        check.duplicate_effects > 0,
        "the blind-update path produced no duplicate effects: the simulation could not fail (seed {seed})"
    );
    assert!(
        !check.contradictions.is_empty(),
        "no contradictions caught (seed {seed})"
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
    let children: Vec<_> = (0..5)
        .map(|_| spawn_child("drive", &db_path, &counts, seed, 120))
        .collect();
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
