//! Issue 4: scripted agents (tests/agents/*.sh) and a real bare git remote
//! drive tasks through the real worker, launcher, monitor, reaper and
//! reconciler; the tracker and forge are in-process doubles.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use orchestrator::agents::monitor;
use orchestrator::db::{jobs, runs, tasks};
use orchestrator::domain::Stage;
use orchestrator::loops::{reaper, reconciler};
use orchestrator::proc_group;
use support::runtime::{Harness, agent, sh};

async fn job_rows(h: &Harness, task: i64) -> Vec<jobs::JobRow> {
    jobs::for_task(h.db.reader(), task).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_agents_drive_a_task_from_analysis_to_deploy() {
    let h = Harness::new(&["demo"], &[]).await;
    let id = h.task("demo", "DEMO-1").await;
    h.rt.pipeline.advance(id, "plane-webhook").await.unwrap();
    assert_eq!(h.stage(id).await, Stage::Analysis);

    // The analyst writes a READY BRD: the task waits for a person.
    h.drive("the approval request", 30, || async {
        h.tracker
            .comment_keys("DEMO-1")
            .iter()
            .any(|k| k.starts_with("approval:"))
    })
    .await;
    assert_eq!(h.stage(id).await, Stage::Analysis);
    assert!(
        h.tracker
            .statuses_of("DEMO-1")
            .contains(&"in_review".to_string())
    );

    // Approved: architecture, development, review, testing, deploy-staging,
    // then deploy (parked until Confirm Deploy: no job).
    tasks::set_approved(h.db.writer(), id).await.unwrap();
    h.rt.pipeline.advance(id, "plane-webhook").await.unwrap();
    h.drive("the deploy stage", 60, || async {
        h.stage(id).await == Stage::Deploy
    })
    .await;
    assert!(
        jobs::active_for_task(h.db.reader(), id)
            .await
            .unwrap()
            .is_none(),
        "deploy parks without a job"
    );

    let js = job_rows(&h, id).await;
    let roles: Vec<&str> = js.iter().map(|j| j.role.as_str()).collect();
    assert_eq!(
        roles,
        [
            "analyst",
            "architect",
            "developer",
            "reviewer",
            "tester",
            "deployer",
            "merge-gate"
        ]
    );
    assert!(js.iter().all(|j| j.status == "done"), "{js:?}");

    // Every agent run recorded its exit and usage (the merge gate is no agent).
    for j in js.iter().filter(|j| j.role != "merge-gate") {
        let r = runs::latest_for_job(h.db.reader(), j.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.exit_code, Some(0));
        assert!(r.finished_at.is_some() && r.pid.is_some());
        assert_eq!(
            (r.input_tokens, r.cache_read_tokens, r.cache_creation_tokens),
            (10, 5000, 1000)
        );
        assert!((r.cost_usd - 0.25).abs() < 1e-9);
    }
    // The branch was pushed to the real remote with the developer's change
    // and every artifact.
    let bare = h.dir.path().join("demo.git");
    let files = sh(&bare, "git ls-tree -r --name-only demo-1");
    for f in [
        "src/feature.txt",
        "docs/work-items/DEMO-1/01-brd.md",
        "docs/work-items/DEMO-1/06-adr/ADR-001-plan.md",
        "docs/work-items/DEMO-1/11-review.md",
        "docs/work-items/DEMO-1/13-test-report.md",
        "docs/work-items/DEMO-1/14-staging-report.md",
    ] {
        assert!(
            files.lines().any(|l| l == f),
            "{f} not on the remote branch: {files}"
        );
    }
    assert_eq!(
        sh(&bare, "git rev-parse --abbrev-ref main").trim(),
        "main",
        "main untouched"
    );
    // The harness's project has no Gitea: with the local forge (B-10) the
    // pushed branch is the PR, and no PR call is made.
    assert!(
        h.forge.prs.lock().unwrap().is_empty(),
        "no PR call for the local forge"
    );
    // The tracker heard about every run.
    let keys = h.tracker.comment_keys("DEMO-1");
    for prefix in ["start:", "finish:", "usage:", "approval:"] {
        assert!(
            keys.iter().filter(|k| k.starts_with(prefix)).count() >= 1,
            "{prefix} missing in {keys:?}"
        );
    }
    assert_eq!(keys.iter().filter(|k| k.starts_with("start:")).count(), 6);
    let usage = h
        .tracker
        .comments_of("DEMO-1")
        .into_iter()
        .find(|(k, _)| k.starts_with("usage:"))
        .unwrap()
        .1;
    assert!(
        usage.contains("6010") || usage.contains("6,010"),
        "full input = 10 + 5000 + 1000: {usage}"
    );
    // The usage was read: the comment says so by saying nothing about it
    // (B-5); the format the parser recognised is kept with the run.
    assert!(
        !usage.contains("could not be read"),
        "usage was read, the comment must not say otherwise: {usage}"
    );
    for j in js.iter().filter(|j| j.role != "merge-gate") {
        let r = runs::latest_for_job(h.db.reader(), j.id)
            .await
            .unwrap()
            .unwrap();
        assert!(r.usage_format.is_some(), "{r:?}");
        assert_eq!(r.usage_error, None);
    }
    let statuses = h.tracker.statuses_of("DEMO-1");
    for s in ["in_progress", "in_review", "deploying", "awaiting_deploy"] {
        assert!(statuses.contains(&s.to_string()), "{s} not in {statuses:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_findings_roll_back_to_development_and_reach_the_next_prompt() {
    let cmd = format!(
        "AGENT_FAIL_ONCE_ROLE=reviewer {}",
        agent("contract-agent.sh")
    );
    let h = Harness::new(&["demo"], &[("ORCH_AGENT_COMMAND", &cmd)]).await;
    let id = h.task("demo", "DEMO-2").await;
    tasks::set_approved(h.db.writer(), id).await.unwrap();
    h.rt.pipeline.advance(id, "test").await.unwrap();
    h.drive("testing after a second review", 90, || async {
        matches!(
            h.stage(id).await,
            Stage::Testing | Stage::DeployStaging | Stage::Deploy
        )
    })
    .await;
    let js = job_rows(&h, id).await;
    let devs: Vec<_> = js.iter().filter(|j| j.role == "developer").collect();
    assert_eq!(devs.len(), 2, "{js:?}");
    assert!(
        devs[1].context.contains("requested changes"),
        "findings reach the developer: {:?}",
        devs[1].context
    );
    let prompt = h.rt.run_paths("DEMO-2", devs[1]).prompt;
    let text = std::fs::read_to_string(prompt).unwrap();
    assert!(
        text.contains("Why you run again") && text.contains("requested changes"),
        "{text}"
    );
    let history = orchestrator::db::history::for_task(h.db.reader(), id)
        .await
        .unwrap();
    assert!(
        history
            .iter()
            .any(|r| r.from_stage == Stage::Review && r.to_stage == Stage::Development)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_agent_is_retried_then_the_task_holds_with_an_alert() {
    let h = Harness::new(
        &["demo"],
        &[
            ("ORCH_AGENT_COMMAND", &agent("fail.sh")),
            ("ORCH_AGENT_MAX_ATTEMPTS", "3"),
        ],
    )
    .await;
    let id = h.task("demo", "DEMO-3").await;
    h.rt.pipeline.advance(id, "test").await.unwrap();
    h.drive("the hold", 30, || async {
        tasks::get(h.db.reader(), id)
            .await
            .unwrap()
            .unwrap()
            .hold_reason
            .is_some()
    })
    .await;
    let js = job_rows(&h, id).await;
    assert_eq!(js.iter().map(|j| j.attempt).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(js.iter().all(|j| j.status == "failed"));
    assert!(
        js[1].context.contains("exited with 3"),
        "{:?}",
        js[1].context
    );
    let alerts = h.notifier.alerts();
    assert_eq!(
        alerts
            .iter()
            .filter(|a| a.kind == "attempts_exhausted")
            .count(),
        1,
        "{alerts:?}"
    );
    assert_eq!(
        h.stage(id).await,
        Stage::Analysis,
        "a failed run moves no stage"
    );
}

/// The pids of a process group, from /proc.
fn group_of(pgid: i64) -> Vec<i32> {
    proc_group::pids_in_group(pgid as i32)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_agent_is_stall_killed_with_its_whole_group() {
    let h = Harness::new(
        &["demo"],
        &[
            ("ORCH_AGENT_COMMAND", &agent("hang.sh")),
            ("ORCH_AGENT_STALL_TIMEOUT_S", "2"),
            ("ORCH_AGENT_MAX_ATTEMPTS", "1"),
        ],
    )
    .await;
    let id = h.task("demo", "DEMO-4").await;
    h.rt.pipeline.advance(id, "test").await.unwrap();
    h.drive("the agent group to start", 20, || async {
        job_rows(&h, id)
            .await
            .first()
            .and_then(|j| j.pgid)
            .is_some_and(|p| group_of(p).len() >= 3)
    })
    .await;
    let pgid = job_rows(&h, id).await[0].pgid.unwrap();
    h.drive("the stall kill and the hold", 30, || async {
        tasks::get(h.db.reader(), id)
            .await
            .unwrap()
            .unwrap()
            .hold_reason
            .is_some()
    })
    .await;
    assert!(
        group_of(pgid).is_empty(),
        "processes of the group survived: {:?}",
        group_of(pgid)
    );
    let j = &job_rows(&h, id).await[0];
    assert!(j.error.as_deref().unwrap_or("").contains("exit"), "{j:?}");
    let r = runs::latest_for_job(h.db.reader(), j.id)
        .await
        .unwrap()
        .unwrap();
    assert!(r.exit_code.unwrap() > 128, "killed by a signal: {r:?}");
    assert!(
        tasks::get(h.db.reader(), id)
            .await
            .unwrap()
            .unwrap()
            .hold_reason
            .unwrap()
            .contains("stalled")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tier3_kills_a_job_past_the_ceiling_and_its_group() {
    let h = Harness::new(
        &["demo"],
        &[
            ("ORCH_AGENT_COMMAND", &agent("hang.sh")),
            ("ORCH_REAPER_MAX_RUNNING_S", "1"),
            ("ORCH_AGENT_MAX_ATTEMPTS", "1"),
        ],
    )
    .await;
    let id = h.task("demo", "DEMO-5").await;
    h.rt.pipeline.advance(id, "test").await.unwrap();
    h.drive("the agent group", 20, || async {
        job_rows(&h, id)
            .await
            .first()
            .and_then(|j| j.pgid)
            .is_some_and(|p| group_of(p).len() >= 3)
    })
    .await;
    let pgid = job_rows(&h, id).await[0].pgid;
    let stats = Arc::new(reaper::ReaperStats::default());
    h.drive("tier 3", 20, || async {
        reaper::tick(&h.rt, &stats).await.unwrap();
        stats.tier3_killed.load(Ordering::Relaxed) == 1
    })
    .await;
    assert!(
        group_of(pgid.unwrap()).is_empty(),
        "tier 3 left processes alive"
    );
    let j = &job_rows(&h, id).await[0];
    assert_eq!(j.status, "failed");
    assert!(j.error.as_deref().unwrap().contains("tier 3"), "{j:?}");
    assert!(h.notifier.alerts().iter().any(|a| a.kind == "reaper_tier3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limits_hold_with_twenty_tasks_across_three_projects() {
    let cmd = format!("AGENT_SLEEP=0.3 {}", agent("contract-agent.sh"));
    let h = Harness::new(
        &["alpha", "beta", "gamma"],
        &[
            ("ORCH_AGENT_COMMAND", &cmd),
            ("ORCH_MAX_CONCURRENT_JOBS", "4"),
            ("ORCH_MAX_CONCURRENT_JOBS_PER_PROJECT", "2"),
        ],
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let p = ["alpha", "beta", "gamma"][i % 3];
        let id = h.task(p, &format!("{}-{i}", p.to_uppercase())).await;
        h.rt.pipeline.advance(id, "test").await.unwrap();
        ids.push(id);
    }
    let max_total = AtomicU64::new(0);
    let max_project = AtomicU64::new(0);
    h.drive("20 analyst runs", 120, || async {
        let per = jobs::running_per_project(h.db.reader(), "deploy-finalizer")
            .await
            .unwrap();
        let total: i64 = per.iter().map(|(_, n)| n).sum();
        max_total.fetch_max(total as u64, Ordering::Relaxed);
        max_project.fetch_max(
            per.iter().map(|(_, n)| *n as u64).max().unwrap_or(0),
            Ordering::Relaxed,
        );
        let done: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE status = 'done'")
            .fetch_one(h.db.reader())
            .await
            .unwrap();
        done == 20
    })
    .await;
    assert!(
        max_total.load(Ordering::Relaxed) <= 4,
        "global limit broken: {}",
        max_total.load(Ordering::Relaxed)
    );
    assert!(
        max_project.load(Ordering::Relaxed) <= 2,
        "project limit broken"
    );
    assert!(
        max_total.load(Ordering::Relaxed) >= 3,
        "the limit was never approached: the test proves nothing"
    );
}

/// Keeps tokio's paused clock from auto-advancing while it lives. A paused
/// current-thread runtime that has nothing to run jumps its clock to the
/// next timer, and sqlx awaits its SQLite worker thread inside
/// `acquire_timeout`: the jump fires the timeout (`PoolTimedOut`) and moves
/// the reaper's clock by an arbitrary amount. A blocking task inhibits the
/// auto-advance (tokio: "Preventing auto-advance" in `time::pause`), so
/// the clock moves only by `tokio::time::advance`.
struct NoAutoAdvance {
    _open: std::sync::mpsc::Sender<()>,
}

impl NoAutoAdvance {
    fn hold() -> NoAutoAdvance {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        // Ends when the guard (the sender) is dropped.
        tokio::task::spawn_blocking(move || while rx.recv().is_ok() {});
        NoAutoAdvance { _open: tx }
    }
}

/// A finished run whose exit the monitor recorded now (on the runtime's
/// clock), its job still running and unclaimed: the monitor died before it
/// claimed the job.
async fn finished_job(h: &Harness, wi: &str) -> (i64, i64) {
    let (id, job) = running_job(h, wi).await;
    let now = h.rt.clock.now_ms();
    let run = runs::insert(
        h.db.writer(),
        &runs::NewRun {
            job_id: job,
            task_id: id,
            role: "analyst",
            stage: "analysis",
            attempt: 1,
            model: "",
            effort: "",
            command: "",
            log_path: "",
            started_at: now,
        },
    )
    .await
    .unwrap();
    runs::record_exit(h.db.writer(), run, 0, now).await.unwrap();
    (id, job)
}

/// A task at analysis whose analyst job was started now.
async fn running_job(h: &Harness, wi: &str) -> (i64, i64) {
    let id = h.task("demo", wi).await;
    h.rt.pipeline.advance(id, "test").await.unwrap(); // analysis + analyst job queued
    let job = jobs::active_for_task(h.db.reader(), id)
        .await
        .unwrap()
        .unwrap();
    assert!(
        jobs::start(h.db.writer(), job.id, &h.rt.boot_id, h.rt.clock.now_ms())
            .await
            .unwrap()
    );
    (id, job.id)
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn reaper_tier2_boundaries_on_the_paused_clock() {
    // Grace 300 s (the default). Nothing is back-dated: every row is stamped
    // with the runtime's clock and the test advances tokio's paused clock.
    let _hold = NoAutoAdvance::hold();
    let h = Harness::new(&["demo"], &[]).await;
    let stats = Arc::new(reaper::ReaperStats::default());
    let tier2 = || stats.tier2_reaped.load(Ordering::Relaxed);
    let db = h.db.clone();
    let get = |id| {
        let db = db.clone();
        async move { jobs::get(db.reader(), id).await.unwrap().unwrap() }
    };
    let t0 = h.rt.clock.now_ms();
    let (first_task, first) = finished_job(&h, "DEMO-6").await;
    let (_, no_exit) = running_job(&h, "DEMO-8").await;
    tokio::time::advance(Duration::from_secs(2)).await;
    let (_, second) = finished_job(&h, "DEMO-7").await;

    // Grace - 1 s for the first exit: nothing is reaped.
    tokio::time::advance(Duration::from_secs(297)).await;
    assert_eq!(
        h.rt.clock.now_ms() - t0,
        299_000,
        "the clock moved by itself"
    );
    reaper::tick(&h.rt, &stats).await.unwrap();
    assert_eq!(tier2(), 0);
    assert_eq!(
        get(first).await.status,
        "running",
        "inside the grace: a live monitor may still be publishing"
    );

    // Grace + 1 s for the first, grace - 1 s for the second.
    tokio::time::advance(Duration::from_secs(2)).await;
    reaper::tick(&h.rt, &stats).await.unwrap();
    assert_eq!(tier2(), 1);
    assert_eq!(get(first).await.claimed_by.as_deref(), Some("reaper"));
    assert_eq!(get(first).await.status, "done");
    assert_eq!(get(second).await.status, "running");
    assert!(get(second).await.claimed_by.is_none());
    let retry = jobs::active_for_task(h.db.reader(), first_task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        retry.attempt, 2,
        "exit 0 without a BRD is retried, not sent for approval"
    );
    assert!(
        h.tracker
            .comment_keys("DEMO-6")
            .iter()
            .all(|k| !k.starts_with("approval:"))
    );

    // Grace + 1 s for the second.
    tokio::time::advance(Duration::from_secs(2)).await;
    reaper::tick(&h.rt, &stats).await.unwrap();
    assert_eq!(tier2(), 2);
    assert_eq!(get(second).await.claimed_by.as_deref(), Some("reaper"));
    assert_eq!(h.rt.clock.now_ms() - t0, 303_000);

    // No exit code: never tier 2, however long it runs (below tier 3).
    assert_eq!(get(no_exit).await.status, "running");
    assert!(get(no_exit).await.claimed_by.is_none());
    assert_eq!(stats.tier3_killed.load(Ordering::Relaxed), 0);

    // A late monitor after the reap: the claim changes 0 rows, nothing moves.
    let jobs_before = job_rows(&h, first_task).await.len();
    assert!(!monitor::complete(&h.rt, first, "monitor").await.unwrap());
    assert_eq!(
        job_rows(&h, first_task).await.len(),
        jobs_before,
        "no second enqueue"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_reapers_make_exactly_one_claim() {
    // N reapers in parallel on one finished job: exactly one claim.
    let h = Harness::new(&["demo"], &[]).await;
    let (_, contested) = finished_job(&h, "DEMO-9").await;
    let wins = Arc::new(AtomicU64::new(0));
    let mut hs = Vec::new();
    for i in 0..8 {
        let (rt, wins) = (h.rt.clone(), wins.clone());
        hs.push(tokio::spawn(async move {
            if monitor::complete(&rt, contested, &format!("reaper-{i}"))
                .await
                .unwrap()
            {
                wins.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for x in hs {
        x.await.unwrap();
    }
    assert_eq!(
        wins.load(Ordering::Relaxed),
        1,
        "exactly one reaper wins the claim"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciler_queues_a_missing_job_and_advances_a_finished_stage() {
    let h = Harness::new(&["demo"], &[]).await;
    let stats = Arc::new(reconciler::ReconcilerStats::default());
    // A task that was created but whose first move was lost (a crash).
    let id = h.task("demo", "DEMO-10").await;
    reconciler::tick(&h.rt, &stats).await.unwrap();
    assert_eq!(h.stage(id).await, Stage::Analysis);
    assert!(
        jobs::active_for_task(h.db.reader(), id)
            .await
            .unwrap()
            .is_some()
    );
    // Active stage with no job: the analyst job vanished (cancelled by hand).
    let j = jobs::active_for_task(h.db.reader(), id)
        .await
        .unwrap()
        .unwrap();
    jobs::transition(h.db.writer(), j.id, "queued", "cancelled", Some("test"))
        .await
        .unwrap();
    sqlx::query("UPDATE jobs SET created_at = created_at - 10000 WHERE id = ?")
        .bind(j.id)
        .execute(h.db.writer())
        .await
        .unwrap();
    reconciler::tick(&h.rt, &stats).await.unwrap();
    assert_eq!(stats.jobs_queued.load(Ordering::Relaxed), 1);
    assert!(
        jobs::active_for_task(h.db.reader(), id)
            .await
            .unwrap()
            .is_some()
    );
    let _ = Duration::from_secs(0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciler_handles_a_status_whose_webhook_never_came() {
    let h = Harness::new(&["demo"], &[]).await;
    let stats = Arc::new(reconciler::ReconcilerStats::default());
    let id = h.task("demo", "DEMO-11").await;
    h.rt.pipeline.advance(id, "test").await.unwrap();
    // A person set STOP in the tracker; the webhook was lost.
    h.tracker
        .statuses
        .lock()
        .unwrap()
        .entry("DEMO-11".into())
        .or_default()
        .push("stop".into());
    reconciler::tick(&h.rt, &stats).await.unwrap();
    assert_eq!(h.stage(id).await, Stage::Cancelled);
    assert_eq!(stats.poll.handed_over.load(Ordering::Relaxed), 1);
    // A second pass hands nothing over again.
    reconciler::tick(&h.rt, &stats).await.unwrap();
    assert_eq!(stats.poll.handed_over.load(Ordering::Relaxed), 1);
}

/// A finalizer that failed (its advance returned an error: a database
/// error, a lost lease) left a confirmed deploy undone: the reconciler
/// queues it again instead of leaving the task at deploy with no job, no
/// hold and no lease (stuck, found by the world simulation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciler_requeues_a_failed_finalizer() {
    let h = Harness::new(&["demo"], &[]).await;
    let stats = Arc::new(reconciler::ReconcilerStats::default());
    let id = h.task("demo", "DEMO-11").await;
    sqlx::query(
        "UPDATE tasks SET stage = 'deploy', stage_version = 9, deploy_confirmed_at = 1 WHERE id = ?",
    )
    .bind(id)
    .execute(h.db.writer())
    .await
    .unwrap();
    let q = jobs::enqueue(
        &h.db,
        id,
        Stage::Deploy,
        orchestrator::loops::finalizer::ROLE,
        1,
        "",
    )
    .await
    .unwrap();
    jobs::start(h.db.writer(), q.id(), "boot", 1).await.unwrap();
    jobs::transition(
        h.db.writer(),
        q.id(),
        "running",
        "failed",
        Some("lost lease"),
    )
    .await
    .unwrap();
    assert!(
        jobs::active_for_task(h.db.reader(), id)
            .await
            .unwrap()
            .is_none()
    );
    reconciler::tick(&h.rt, &stats).await.unwrap();
    let again = jobs::active_for_task(h.db.reader(), id)
        .await
        .unwrap()
        .expect("a finalizer queued again");
    assert_eq!(again.role, orchestrator::loops::finalizer::ROLE);
    assert_eq!(again.status, "queued");
}
