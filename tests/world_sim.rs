//! B-2, the daemon's own world: the guarantee under the daemon's real
//! actors, real effects and faults. Two OS processes share one SQLite file:
//! - the real binary (worker with scripted agents that follow the contract,
//!   monitor, reaper, reconciler with its tracker poll, post-deploy loop,
//!   finalizer jobs, the intake of Plane and Gitea webhooks), SIGKILLed or
//!   stopped gracefully at random moments and restarted (start-up recovery);
//! - this test process, racing it through the same entry points: the
//!   reconciler's and the reaper's ticks (its reaper has a short tier-3
//!   ceiling, so it kills and reclaims), the monitor's finalize of finished
//!   jobs, merged-PR webhooks handled in process, an operator who
//!   force-releases the lease of a holder it saw stalled, and holders that
//!   stall at step boundaries.
//!
//! People act through the Plane double (Approved at In Review, Confirm
//! Deploy at Awaiting Deploy, sometimes twice, one STOP); Gitea's merges
//! run on a real bare repository with faults (the merge lands but the answer
//! is lost, 405 then success, 500). The production deploy appends one line
//! per run to a file outside the daemon.
//!
//! Oracles outside the daemon: merge commits per task on main's first-parent
//! history, deploy runs per task from the side file, the stage history
//! against STAGE_TRANSITIONS, and after the run settles no task is left
//! without a job, a lease holder or a hold reason.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use orchestrator::agents::runtime::Runtime;
use orchestrator::db::tasks::TaskRow;
use orchestrator::db::{Db, history, jobs};
use orchestrator::domain::Stage;
use orchestrator::stage_engine::{Boot, Engine};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::daemon::{Daemon, REPO, World, world};
use support::gitea_double::{MergeFault, git};

const TASKS: i64 = 8;
/// Bounds on the faults of one run, so that it ends in bounded time on a
/// slow machine too: the daemon is SIGKILLed or stopped at most this often.
const MAX_DAEMON_CRASHES: u64 = 6;
const MAX_MERGE_FAULTS: u64 = 6;

fn seed() -> u64 {
    std::env::var("SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| orchestrator::db::now_ms() as u64)
}

/// The test process's side: a runtime over the same database, with the
/// daemon's real clients (pointed at the doubles), its own engine (stalls
/// at step boundaries) and a reaper whose tier-3 ceiling is short.
async fn rival(
    w: &World,
    db: &Db,
    stalls: Arc<support::sim::StallHook>,
) -> (Runtime, orchestrator::shutdown::ShutdownTrigger) {
    let mut pairs: Vec<(String, String)> = w.env.clone();
    pairs.push(("ORCH_REAPER_MAX_RUNNING_S".into(), "6".into()));
    pairs.push(("ORCH_REAPER_FINALIZE_GRACE_S".into(), "1".into()));
    let settings = Arc::new(
        orchestrator::config::Settings::load(&orchestrator::config::EnvVars::from_pairs(pairs))
            .unwrap()
            .0,
    );
    let alerts = orchestrator::app::alert_channel(&settings, db);
    let engine = Engine::builder(db.clone(), Boot::new())
        .effects(orchestrator::app::daemon_effects(&settings, db))
        .inputs(Arc::new(
            orchestrator::stage_engine::inputs::WorkspaceInputs {
                settings: settings.clone(),
                workspace: orchestrator::git::Workspace::new(&settings.workspace_root),
            },
        ))
        .notifier(alerts.clone())
        .hooks(stalls)
        .build();
    let workspace = orchestrator::git::Workspace::new(&settings.workspace_root);
    let pipeline = orchestrator::app::build_pipeline_with(
        settings.clone(),
        db.clone(),
        engine.clone(),
        workspace.clone(),
        alerts.clone(),
    );
    let (trigger, shutdown) = orchestrator::shutdown::channel();
    let rt = Runtime {
        db: db.clone(),
        settings,
        workspace,
        pipeline,
        notifier: alerts,
        clock: orchestrator::clock::Clock::new(),
        boot_id: engine.boot().boot_id.clone(),
        shutdown,
        merge_gate: Default::default(),
    };
    (rt, trigger)
}

#[derive(Default)]
struct Faults {
    daemon_kills: AtomicU64,
    daemon_stops: AtomicU64,
    force_releases: AtomicU64,
    merge_faults: AtomicU64,
    tier3: AtomicU64,
}

/// A person sets a status in Plane whose webhook is lost: only the
/// reconcilers' tracker polls (the daemon's and this process's) see it.
fn set_state_webhook_lost(w: &World, item: &str, state_name: &str) {
    let mut s = w.plane.lock();
    let project = s.items[item].project.clone();
    let new = s.state_id(&project, state_name).expect("state exists");
    let at = s.now();
    let it = s.items.get_mut(item).unwrap();
    it.state = new;
    it.updated_at = at;
    s.state_log.push((item.to_string(), state_name.to_string()));
}

/// The Plane double's state name of each item, and what a person does.
async fn person(w: &World, items: &[(String, i64)], rng: &mut StdRng, stop_item: &str) {
    for (item, _) in items {
        let state = w.plane.state_of(item);
        let status = match state.as_str() {
            "In Review" => "Approved",
            "Awaiting Deploy" if item != stop_item => "Confirm Deploy",
            _ => continue,
        };
        if rng.gen_range(0..3) == 0 {
            set_state_webhook_lost(w, item, status);
        } else {
            w.plane.human_set_state(item, status).await;
            if status == "Confirm Deploy" && rng.gen_range(0..4) == 0 {
                // A double click: the same decision again.
                w.plane.human_set_state(item, status).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemons_own_actors_with_faults_merge_and_deploy_each_task_once() {
    let seed = seed();
    eprintln!("world simulation seed={seed} (replay the choices: SIM_SEED={seed})");
    let marks = tempfile::tempdir().unwrap();
    let deploys = marks.path().join("deploys");
    let deploy_cmd = format!(
        "echo \"$ORCH_WORK_ITEM\" >> {}; sleep 0.$(( $$ % 7 ))",
        deploys.display()
    );
    let w = world(
        &format!("test_command = 'true'\ndeploy_command = '{deploy_cmd}'"),
        &[
            ("ORCH_WORKER_POLL_INTERVAL_MS", "100"),
            (
                "ORCH_AGENT_COMMAND",
                // DEMO-3's first agent hangs: the rival reaper's tier 3 kills
                // it and reclaims; the retry runs normally. The marker is in
                // the agent's own home, where the sandbox lets it write.
                &format!(
                    "if [ \"$ORCH_WORK_ITEM\" = DEMO-3 ] && [ ! -e \"$HOME/hung\" ]; then touch \"$HOME/hung\"; sleep 60; fi; \
                     AGENT_OWN_FILE=1 {agent}",
                    agent = support::runtime::agent("contract-agent.sh")
                ),
            ),
            ("ORCH_REAPER_ENABLED", "true"),
            ("ORCH_REAPER_INTERVAL_S", "1"),
            ("ORCH_RECONCILER_ENABLED", "true"),
            ("ORCH_RECONCILER_INTERVAL_S", "1"),
            ("ORCH_MAX_CONCURRENT_JOBS", "4"),
            ("ORCH_MAX_CONCURRENT_JOBS_PER_PROJECT", "4"),
            ("ORCH_POST_DEPLOY_WINDOW_S", "1"),
            ("ORCH_AGENT_KILL_GRACE_S", "1"),
            ("ORCH_SHUTDOWN_EFFECT_DRAIN_S", "20"),
            ("ORCH_MERGE_RETRY_BASE_S", "1"),
            ("ORCH_MERGE_RETRY_MAX_S", "1"),
        ],
    )
    .await;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut daemon = w.start().await;
    let db = Db::open(&w.db_path()).await.unwrap();
    let stalls = support::sim::StallHook::new(seed, 60);
    let (rt, _rival_stop) = rival(&w, &db, stalls.clone()).await;
    let faults = Arc::new(Faults::default());

    // The work items, set to To Analyse by a person.
    let mut items = Vec::new();
    for seq in 1..=TASKS {
        let item = w.plane.add_item(&w.pid, seq, &format!("Item {seq}"));
        w.plane.human_set_state(&item, "To Analyse").await;
        items.push((item, seq));
    }
    let stop_item = items[rng.gen_range(0..items.len())].0.clone();
    let stop_at = Instant::now() + Duration::from_secs(rng.gen_range(5..25));
    let mut stopped = false;

    // The rival actors of this process.
    let until = Instant::now() + Duration::from_secs(240);
    let mut handles = Vec::new();
    {
        let rt = rt.clone();
        handles.push(tokio::spawn(async move {
            let stats = Arc::new(orchestrator::loops::reconciler::ReconcilerStats::default());
            while Instant::now() < until {
                let _ = orchestrator::loops::reconciler::tick(&rt, &stats).await;
                tokio::time::sleep(Duration::from_millis(700)).await;
            }
        }));
    }
    {
        let (rt, faults) = (rt.clone(), faults.clone());
        handles.push(tokio::spawn(async move {
            let stats = Arc::new(orchestrator::loops::reaper::ReaperStats::default());
            while Instant::now() < until {
                let _ = orchestrator::loops::reaper::tick(&rt, &stats).await;
                faults.tier3.store(
                    stats.tier3_killed.load(Ordering::Relaxed),
                    Ordering::Relaxed,
                );
                tokio::time::sleep(Duration::from_millis(900)).await;
            }
        }));
    }
    {
        // The monitor's finalize of a finished job, racing the daemon's.
        let rt = rt.clone();
        handles.push(tokio::spawn(async move {
            while Instant::now() < until {
                let finished = jobs::finished_unclaimed(rt.db.reader(), i64::MAX)
                    .await
                    .unwrap_or_default();
                for j in finished {
                    let _ =
                        orchestrator::agents::monitor::complete(&rt, j.id, "rival-monitor").await;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }));
    }
    {
        // A second finalizer: starts a queued finalizer job before the
        // daemon's worker does (its engine stalls at step boundaries).
        let rt = rt.clone();
        handles.push(tokio::spawn(async move {
            while Instant::now() < until {
                let queued = jobs::candidates(rt.db.reader(), 50)
                    .await
                    .unwrap_or_default();
                for c in queued
                    .into_iter()
                    .filter(|c| c.job.role == orchestrator::loops::finalizer::ROLE)
                {
                    if jobs::start(rt.db.writer(), c.job.id, &rt.boot_id, rt.clock.now_ms())
                        .await
                        .unwrap_or(false)
                    {
                        let mut job = c.job;
                        job.status = "running".into();
                        orchestrator::loops::finalizer::run(rt.pipeline.clone(), job).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }));
    }
    {
        // The operator: releases the lease of a holder it saw stalled.
        let (rt, faults, stalls) = (rt.clone(), faults.clone(), stalls.clone());
        handles.push(tokio::spawn(async move {
            while Instant::now() < until {
                if let Some((task, holder)) = stalls.stalled_now().first().cloned()
                    && let Ok(Some(t)) = orchestrator::db::tasks::get(rt.db.reader(), task).await
                    && let Ok(orchestrator::stage_engine::ForceRelease::Released(_)) = rt
                        .pipeline
                        .engine
                        .force_release_holder(&t.work_item, Some(&holder), "operator")
                        .await
                {
                    faults.force_releases.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }));
    }

    // The main loop: a person's decisions, Gitea's faults and webhooks, the
    // daemon's crashes and restarts, until every task is at its end.
    let mut next_crash = Instant::now() + Duration::from_secs(rng.gen_range(4..10));
    let all_terminal =
        |ts: &[TaskRow]| ts.len() as i64 >= TASKS && ts.iter().all(|t| t.stage.is_terminal());
    let mut last: Vec<TaskRow> = Vec::new();
    let mut last_fault = Instant::now();
    while Instant::now() < until {
        person(&w, &items, &mut rng, &stop_item).await;
        if !stopped && Instant::now() > stop_at {
            w.plane.human_set_state(&stop_item, "STOP").await;
            stopped = true;
        }
        // Gitea's faults come now and then, not on every retry: a merge
        // that meets "try again later" on all its attempts holds (rightly),
        // and the run would then prove less.
        if w.gitea.lock().merge_faults.is_empty()
            && faults.merge_faults.load(Ordering::Relaxed) < MAX_MERGE_FAULTS
            && last_fault.elapsed() > Duration::from_secs(4)
            && rng.gen_range(0..5) == 0
        {
            last_fault = Instant::now();
            let f = match rng.gen_range(0..3) {
                0 => MergeFault::LandedAnswerLost,
                1 => MergeFault::TryAgainLater,
                _ => MergeFault::ServerError,
            };
            w.gitea.push_merge_fault(f);
            faults.merge_faults.fetch_add(1, Ordering::Relaxed);
        }
        // Merged PRs: Gitea's webhook to the daemon, and the same event
        // handled here at once.
        for p in w.gitea.pulls(REPO).into_iter().filter(|p| p.merged) {
            if rng.gen_range(0..8) == 0 {
                w.gitea.send_merged(REPO, p.number).await;
                let pr = orchestrator::events::PrMerged {
                    repo_full_name: REPO.into(),
                    number: p.number,
                    head_ref: p.head.clone(),
                    base_ref: Some(p.base.clone()),
                    title: p.title.clone(),
                    head_sha: None,
                    merge_sha: p.merge_commit_sha.clone(),
                };
                let _ = rt.pipeline.on_pr_merged(&pr).await;
            }
        }
        if Instant::now() > next_crash
            && faults.daemon_kills.load(Ordering::Relaxed)
                + faults.daemon_stops.load(Ordering::Relaxed)
                < MAX_DAEMON_CRASHES
        {
            crash(&w, &mut daemon, &mut rng, &faults).await;
            next_crash = Instant::now() + Duration::from_secs(rng.gen_range(8..16));
        }
        last = sqlx::query_as("SELECT * FROM tasks ORDER BY id")
            .fetch_all(db.reader())
            .await
            .unwrap();
        if all_terminal(&last) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for h in &handles {
        h.abort();
    }
    // Settle: the daemon alone, until no task waits on nobody (or 30 s:
    // what is still stuck then is reported below).
    let settle = Instant::now() + Duration::from_secs(30);
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let tasks: Vec<TaskRow> = sqlx::query_as("SELECT * FROM tasks ORDER BY id")
            .fetch_all(db.reader())
            .await
            .unwrap();
        if Instant::now() > settle || stuck_tasks(&w, &db, &items, &tasks).await.is_empty() {
            break;
        }
    }
    daemon.signal(Signal::SIGTERM);
    assert!(daemon.exited(60).await.success(), "{}", tail(&w.log()));
    let tasks: Vec<TaskRow> = sqlx::query_as("SELECT * FROM tasks ORDER BY id")
        .fetch_all(db.reader())
        .await
        .unwrap();

    // Oracles.
    let merges = merges_per_work_item(&w);
    let deploy_text = std::fs::read_to_string(&deploys).unwrap_or_default();
    let mut deployed: HashMap<String, usize> = HashMap::new();
    for l in deploy_text.lines() {
        *deployed.entry(l.trim().to_string()).or_default() += 1;
    }
    let mut duplicates = 0;
    let mut contradictions = Vec::new();
    for (wi, n) in merges.iter().chain(deployed.iter()) {
        if *n > 1 {
            duplicates += n - 1;
            contradictions.push(format!("{wi}: {n} times"));
        }
    }
    for t in &tasks {
        let m = merges.get(&t.work_item).copied().unwrap_or(0);
        let d = deployed.get(&t.work_item).copied().unwrap_or(0);
        if t.stage == Stage::Done && (m, d) != (1, 1) {
            contradictions.push(format!(
                "{} done with {m} merge(s), {d} deploy(s)",
                t.work_item
            ));
        }
        if t.stage == Stage::Cancelled && d > 0 {
            contradictions.push(format!("{} cancelled but deployed", t.work_item));
        }
    }
    contradictions.extend(history_contradictions(&db, &tasks).await);
    let stuck = stuck_tasks(&w, &db, &items, &tasks).await;
    let faults_n = faults.daemon_kills.load(Ordering::Relaxed)
        + faults.daemon_stops.load(Ordering::Relaxed)
        + faults.force_releases.load(Ordering::Relaxed)
        + faults.merge_faults.load(Ordering::Relaxed)
        + faults.tier3.load(Ordering::Relaxed)
        + stalls.count.load(Ordering::Relaxed);
    let done = tasks.iter().filter(|t| t.stage == Stage::Done).count();
    println!(
        "world simulation: tasks={} done={done} duplicate_effects={duplicates} contradictions={} stuck={} faults={faults_n} \
         (daemon kills={} stops={} force_releases={} merge_faults={} tier3={} stalls={})",
        tasks.len(),
        contradictions.len(),
        stuck.len(),
        faults.daemon_kills.load(Ordering::Relaxed),
        faults.daemon_stops.load(Ordering::Relaxed),
        faults.force_releases.load(Ordering::Relaxed),
        faults.merge_faults.load(Ordering::Relaxed),
        faults.tier3.load(Ordering::Relaxed),
        stalls.count.load(Ordering::Relaxed),
    );
    let states: Vec<String> = tasks
        .iter()
        .map(|t| format!("{} {} {:?}", t.work_item, t.stage, t.hold_reason))
        .collect();
    assert_eq!(duplicates, 0, "seed {seed}: {contradictions:?}");
    assert!(
        contradictions.is_empty(),
        "seed {seed}: {contradictions:?}\n{states:?}"
    );
    assert!(
        stuck.is_empty(),
        "seed {seed}: stuck {stuck:?}\n{states:?}\n{}",
        tail(&w.log())
    );
    assert_eq!(tasks.len() as i64, TASKS);
    assert!(
        done as i64 >= TASKS - 1,
        "seed {seed}: the pipelines did not get through: {states:?}\n{}",
        tail(&w.log())
    );
    assert!(
        faults.daemon_kills.load(Ordering::Relaxed) + faults.daemon_stops.load(Ordering::Relaxed)
            > 0
    );
    drop(last);
}

/// Tasks that wait on nobody: not at an end, not held, not waiting for a
/// person who was asked (the BRD in review, the deploy awaiting its
/// confirmation), with no job and no lease holder.
async fn stuck_tasks(
    w: &World,
    db: &Db,
    items: &[(String, i64)],
    tasks: &[TaskRow],
) -> Vec<String> {
    let mut stuck = Vec::new();
    for t in tasks {
        if t.stage.is_terminal() || t.hold_reason.is_some() {
            continue;
        }
        let item = &items[(t.work_item[5..].parse::<usize>().unwrap()) - 1].0;
        if matches!(
            w.plane.state_of(item).as_str(),
            "In Review" | "Awaiting Deploy"
        ) {
            continue;
        }
        let job = jobs::active_for_task(db.reader(), t.id).await.unwrap();
        let lease = orchestrator::db::leases::get(db.reader(), t.id)
            .await
            .unwrap();
        if job.is_none() && lease.is_none() {
            stuck.push(format!(
                "{} at {} (Plane: {})",
                t.work_item,
                t.stage,
                w.plane.state_of(item)
            ));
        }
    }
    stuck
}

/// SIGKILL (2 in 3) or a graceful stop, then a restart.
async fn crash(w: &World, d: &mut Daemon, rng: &mut StdRng, faults: &Faults) {
    if rng.gen_range(0..3) == 0 {
        d.signal(Signal::SIGTERM);
        faults.daemon_stops.fetch_add(1, Ordering::Relaxed);
    } else {
        d.signal(Signal::SIGKILL);
        faults.daemon_kills.fetch_add(1, Ordering::Relaxed);
    }
    d.exited(60).await;
    *d = w.start().await;
}

/// Merge commits on main's first-parent history, per work item (the PR
/// title the merge message names is `DEMO-<n>: ...`).
fn merges_per_work_item(w: &World) -> HashMap<String, usize> {
    let log = git(
        &w.bare,
        &["log", "--first-parent", "--merges", "--format=%s", "main"],
    );
    let mut out: HashMap<String, usize> = HashMap::new();
    for subject in log.lines() {
        if let Some(wi) = subject
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .find(|w| w.starts_with("DEMO-"))
        {
            *out.entry(wi.to_string()).or_default() += 1;
        }
    }
    out
}

/// The stage history of every task is a path of STAGE_TRANSITIONS, with
/// versions that follow each other, ending where the task row is; nothing
/// follows done or cancelled.
async fn history_contradictions(db: &Db, tasks: &[TaskRow]) -> Vec<String> {
    let mut out = Vec::new();
    let all = history::all(db.reader()).await.unwrap();
    for t in tasks {
        let (mut stage, mut version) = (Stage::Created, 0);
        for h in all.iter().filter(|h| h.task_id == t.id) {
            if (h.from_stage, h.from_version) != (stage, version)
                || h.to_version != h.from_version + 1
                || !h.from_stage.can_move_to(h.to_stage)
            {
                out.push(format!(
                    "{}: {}@v{} -> {}@v{} after {stage}@v{version}",
                    t.work_item, h.from_stage, h.from_version, h.to_stage, h.to_version
                ));
            }
            (stage, version) = (h.to_stage, h.to_version);
        }
        if (t.stage, t.stage_version) != (stage, version) {
            out.push(format!(
                "{}: row {}@v{} but history ends at {stage}@v{version}",
                t.work_item, t.stage, t.stage_version
            ));
        }
    }
    out
}

fn tail(log: &str) -> String {
    let l: Vec<&str> = log.lines().collect();
    l[l.len().saturating_sub(60)..].join("\n")
}
