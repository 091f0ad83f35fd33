//! B-2 crash test: a child process running transitions is SIGKILLed at each
//! step boundary of the engine (before lease, after lease, after planned,
//! after the effect, after done, after CAS, before release); the next child
//! is a restart (new boot id) that recovers and goes on. Every effect must
//! have happened exactly once and every task must end in a valid stage.

mod support;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use orchestrator::db::{Db, now_ms};
use orchestrator::notify::RecordingNotifier;
use orchestrator::stage_engine::{Boot, Engine, Hooks, Outcome, Step};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use support::sim::{self, SimInputs};

const CHILD_ENV: &str = "ORCH_CRASH_CHILD";

fn step_name(s: Step) -> &'static str {
    match s {
        Step::BeforeLease => "before_lease",
        Step::AfterLease => "after_lease",
        Step::AfterPlanned => "after_planned",
        Step::AfterApply => "after_apply",
        Step::AfterDone => "after_done",
        Step::AfterCas => "after_cas",
        Step::BeforeRelease => "before_release",
    }
}

/// Kills its own process with SIGKILL on the n-th time `step` is reached.
struct CrashAt {
    step: Option<Step>,
    at: u64,
    hits: AtomicU64,
}

impl Hooks for CrashAt {
    fn at(&self, step: Step, _task_id: i64) {
        if Some(step) == self.step && self.hits.fetch_add(1, Ordering::SeqCst) + 1 == self.at {
            let _ =
                nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL);
            // SIGKILL cannot be caught; never continue past this point.
            std::process::abort();
        }
    }
}

/// The re-exec entry point; does nothing without `ORCH_CRASH_CHILD`.
#[test]
fn crash_child() {
    if std::env::var(CHILD_ENV).is_err() {
        return;
    }
    let var = |k: &str| std::env::var(k).unwrap();
    let db_path = PathBuf::from(var("SIM_DB"));
    let counts = PathBuf::from(var("SIM_COUNTS"));
    let seed: u64 = var("SIM_SEED").parse().unwrap();
    let step = Step::ALL
        .iter()
        .copied()
        .find(|s| step_name(*s) == var("CRASH_STEP"));
    let at: u64 = var("CRASH_AT").parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let db = Db::open(&db_path).await.unwrap();
        let eng = Engine::builder(db.clone(), Boot::new())
            .effects(sim::counting_registry(&counts))
            .inputs(Arc::new(SimInputs { seed }))
            .notifier(Arc::new(RecordingNotifier::default()))
            .hooks(Arc::new(CrashAt {
                step,
                at,
                hits: AtomicU64::new(0),
            }))
            .build();
        // What the daemon does first after a restart.
        eng.recover_on_startup().await.expect("recovery");
        let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM tasks")
            .fetch_all(db.reader())
            .await
            .unwrap();
        let mut handles = Vec::new();
        for (i, actor) in ["monitor", "reconciler", "stop"].into_iter().enumerate() {
            let (eng, ids) = (eng.clone(), ids.clone());
            let mut rng = sim::actor_rng(seed, i);
            handles.push(tokio::spawn(async move {
                let mut live = ids;
                let mut steps = 0;
                while !live.is_empty() && steps < 5_000 {
                    steps += 1;
                    let id = *live.choose(&mut rng).unwrap();
                    sim::jitter(&mut rng).await;
                    let r = sim::actor_step(&eng, actor, id, &mut rng, 3)
                        .await
                        .expect("engine error");
                    if matches!(r, Outcome::Terminal { .. }) {
                        live.retain(|x| *x != id);
                    }
                    if rng.gen_range(0..50) == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
    });
}

enum Ended {
    Killed,
    Finished,
}

fn run_child(dir: &Path, seed: u64, step: Option<Step>, at: u64) -> Ended {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .env("SIM_DB", dir.join("crash.db"))
        .env("SIM_COUNTS", dir.join("effects.count"))
        .env("SIM_SEED", seed.to_string())
        .env("CRASH_STEP", step.map(step_name).unwrap_or("none"))
        .env("CRASH_AT", at.to_string())
        .output()
        .expect("re-exec the test binary");
    match out.status.signal() {
        Some(9) => Ended::Killed,
        _ if out.status.success() => Ended::Finished,
        _ => panic!(
            "crash child ended unexpectedly ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

#[test]
fn sigkill_at_every_step_boundary_then_restart_recovers_exactly_once() {
    let base_seed = std::env::var("SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(now_ms() as u64);
    eprintln!("crash test seed={base_seed} (replay: SIM_SEED={base_seed})");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mut scenarios, mut kills) = (0, 0);
    let mut failures = Vec::new();
    let mut kills_per_step = std::collections::BTreeMap::new();
    for step in Step::ALL {
        for at in [1u64, 2, 4, 9] {
            scenarios += 1;
            let seed = sim::mix(base_seed ^ scenarios);
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let dir = sim::scratch_dir();
            rt.block_on(async {
                let db = Db::open(&dir.path().join("crash.db")).await.unwrap();
                sim::create_tasks(&db, "CRASH", 5).await;
                db.close().await;
            });
            // First crash at the boundary under test, then a second crash at
            // a random boundary during recovery, then a clean restart.
            if let Ended::Killed = run_child(dir.path(), seed, Some(step), at) {
                kills += 1;
                *kills_per_step.entry(step_name(step)).or_insert(0) += 1;
            }
            let second = *Step::ALL.choose(&mut rng).unwrap();
            if let Ended::Killed =
                run_child(dir.path(), seed ^ 1, Some(second), rng.gen_range(1..6))
            {
                kills += 1;
            }
            let Ended::Finished = run_child(dir.path(), seed ^ 2, None, 0) else {
                panic!("the clean restart was killed");
            };
            let check = rt.block_on(async {
                let db = Db::open(&dir.path().join("crash.db")).await.unwrap();
                sim::check(&db, &dir.path().join("effects.count"), true).await
            });
            if check.duplicate_effects > 0 || !check.contradictions.is_empty() {
                failures.push(format!(
                    "step={} at={at} seed={seed}: duplicates={} {:?}",
                    step_name(step),
                    check.duplicate_effects,
                    check.contradictions
                ));
            }
        }
    }
    println!(
        "crash: scenarios={scenarios} kills={kills} failures={} kills_per_step={kills_per_step:?}",
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:#?}");
    for step in Step::ALL {
        assert!(
            kills_per_step.get(step_name(step)).copied().unwrap_or(0) > 0,
            "no crash ever landed at {}: the test does not cover it",
            step_name(step)
        );
    }
}
