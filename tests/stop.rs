//! STOP (F-25) end to end: the status handler, the stage engine with the
//! daemon's effect registry (`delete_branch` for real), real git remotes
//! (bare repositories), real agent processes in their own groups, the Gitea
//! double, and the reconciler's sweep. Helpers: `support/stop_env.rs`.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use orchestrator::agents::monitor;
use orchestrator::clients::daemon_forge;
use orchestrator::db::tasks::{self, NewTask};
use orchestrator::db::{jobs, merge_lease, now_ms, runs};
use orchestrator::domain::{EffectKind, Stage};
use orchestrator::git::branch_name;
use orchestrator::loops::{reaper, reconciler};
use orchestrator::pipeline::job_role;
use orchestrator::pipeline::status::Handled;
use orchestrator::proc_group;
use orchestrator::stage_engine::{NoopEffect, Outcome};
use orchestrator::status::StatusBlock;
use support::gitea_double::{GiteaDouble, Repo};
use support::runtime::{Harness, agent, sh};
use support::stop_env::*;
use tokio::sync::Notify;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_in_every_non_terminal_stage_cancels_and_cleans_up() {
    let h = harness(&[]).await;
    let main_before = rev(&bare(&h), "main").unwrap();
    for (n, stage) in NON_TERMINAL.iter().copied().enumerate() {
        let wi = format!("DEMO-{}", n + 1);
        // A task at `created` has never run: no worktree, no branch.
        let pushed = stage != Stage::Created;
        let id = seed(&h, &wi, stage, pushed).await;
        if let Some(role) = job_role(stage) {
            jobs::enqueue(&h.db, id, stage, role, 1, "").await.unwrap();
        }
        if pushed {
            assert!(rev(&bare(&h), &branch_name(&wi)).is_some());
            assert!(h.rt.workspace.worktree_dir(&wi).exists());
        }

        let out = status(&h, &wi, "stop").await;
        let Handled::Done(text) = &out else {
            panic!("{wi}: {out:?}")
        };
        assert!(
            text.contains(&format!("{stage} -> cancelled")),
            "{wi}: {text}"
        );
        assert_cancelled_and_clean(&h, id, &wi).await;
        let js = jobs::for_task(h.db.reader(), id).await.unwrap();
        assert_eq!(
            js.iter().filter(|j| j.status == "cancelled").count(),
            usize::from(job_role(stage).is_some()),
            "{wi}: the queued job is cancelled"
        );
        let result = effects_of(&h, id).await[0].2.clone().unwrap_or_default();
        if pushed {
            assert!(result.starts_with("deleted demo-"), "{wi}: {result}");
        } else {
            assert!(result.starts_with("already gone"), "{wi}: {result}");
        }
        assert_eq!(
            history(&h, id).await.last().unwrap(),
            &(stage.to_string(), "cancelled".to_string())
        );

        // A repeated STOP finds no live task: ignored, nobody told twice.
        assert!(matches!(status(&h, &wi, "stop").await, Handled::Ignored(_)));
        assert_eq!(stop_alerts(&h, &wi), 1, "{wi}: one notification");
        assert_eq!(stop_comments(&h, &wi), 1, "{wi}: one comment");
    }
    assert_eq!(
        rev(&bare(&h), "main").unwrap(),
        main_before,
        "main never moved"
    );
    let block = h.rt.pipeline.stops.snapshot().await;
    assert_eq!(block["requested"], 8, "{block}");
    assert_eq!(block["applied"], 8, "{block}");
    assert_eq!(block["deferred"], 0, "{block}");
    assert_eq!(block["last_error"], serde_json::Value::Null, "{block}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_branch_is_deleted_through_gitea_and_the_default_branch_never() {
    let gdir = tempfile::tempdir().unwrap();
    let gitea = GiteaDouble::start(gdir.path(), "tok").await;
    let base = gitea.base_url();
    let h = harness(&[
        ("ORCH_GITEA_BASE_URL", base.as_str()),
        ("ORCH_GITEA_TOKEN", "tok"),
    ])
    .await;
    // The double serves the harness's remote as team/demo.
    gitea.lock().repos.insert(
        "team/demo".into(),
        Repo {
            bare: bare(&h),
            default_branch: "main".into(),
            pulls: Vec::new(),
        },
    );
    let main_before = rev(&bare(&h), "main").unwrap();

    let id = seed(&h, "DEMO-1", Stage::Development, true).await;
    let out = status(&h, "DEMO-1", "stop").await;
    assert!(
        matches!(&out, Handled::Done(t) if t.contains("cancelled")),
        "{out:?}"
    );
    assert_cancelled_and_clean(&h, id, "DEMO-1").await;
    let deletes: Vec<String> = gitea
        .lock()
        .requests
        .iter()
        .filter(|(m, _)| m == "DELETE")
        .map(|(_, p)| p.clone())
        .collect();
    assert_eq!(deletes, ["/api/v1/repos/team/demo/branches/demo-1"]);
    assert_eq!(
        effects_of(&h, id).await[0].2.as_deref(),
        Some("deleted demo-1 on team/demo")
    );

    // A task whose branch is the default branch: STOP still cancels it, the
    // effect refuses before any call, main is untouched.
    let id = tasks::insert(
        h.db.writer(),
        &NewTask {
            work_item: "DEMO-2".into(),
            plane_issue_id: Some("issue-DEMO-2".into()),
            project: "demo".into(),
            title: "Title of DEMO-2".into(),
            branch: Some("main".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let out = status(&h, "DEMO-2", "stop").await;
    assert!(
        matches!(&out, Handled::Done(t) if t.contains("cancelled")),
        "{out:?}"
    );
    assert_eq!(task(&h, id).await.stage, Stage::Cancelled);
    let result = effects_of(&h, id).await[0].2.clone().unwrap();
    assert!(result.starts_with("refused"), "{result}");
    assert_eq!(
        gitea
            .lock()
            .requests
            .iter()
            .filter(|(m, _)| m == "DELETE")
            .count(),
        1,
        "no second DELETE"
    );
    assert_eq!(rev(&bare(&h), "main").unwrap(), main_before, "main intact");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_while_an_agent_runs_kills_its_group_and_never_requeues() {
    let hang = agent("hang.sh");
    let h = harness(&[("ORCH_AGENT_COMMAND", &hang)]).await;
    let id = h.task("demo", "DEMO-1").await;
    h.rt.pipeline.advance(id, "plane-webhook").await.unwrap();
    assert_eq!(h.stage(id).await, Stage::Analysis);
    // Running, with its two background sleeps in the group.
    until(&h, "the agent and its children", || async {
        jobs::active_for_task(h.db.reader(), id)
            .await
            .unwrap()
            .and_then(|j| j.pgid)
            .is_some_and(|p| proc_group::pids_in_group(p as i32).len() >= 3)
    })
    .await;
    let job = jobs::active_for_task(h.db.reader(), id)
        .await
        .unwrap()
        .unwrap();
    let pgid = job.pgid.unwrap() as i32;

    let out = status(&h, "DEMO-1", "stop").await;
    assert!(
        matches!(&out, Handled::Done(t) if t.contains("analysis -> cancelled") && t.contains("1 agent group(s) stopped")),
        "{out:?}"
    );
    // kill_group waits until the group is empty: nothing is left, at once.
    assert_eq!(proc_group::pids_in_group(pgid), Vec::<i32>::new());
    assert_eq!(
        jobs::get(h.db.reader(), job.id)
            .await
            .unwrap()
            .unwrap()
            .status,
        "cancelled"
    );
    assert_cancelled_and_clean(&h, id, "DEMO-1").await;

    // The monitor sees its agent die and records the exit; its claim fails
    // on the cancelled job, so it decides nothing and queues no retry.
    until(&h, "the killed run's exit", || async {
        runs::latest_for_job(h.db.reader(), job.id)
            .await
            .unwrap()
            .is_some_and(|r| r.exit_code.is_some())
    })
    .await;
    assert!(!monitor::complete(&h.rt, job.id, "test").await.unwrap());
    let rstats = Arc::new(reconciler::ReconcilerStats::default());
    let pstats = Arc::new(reaper::ReaperStats::default());
    for _ in 0..10 {
        orchestrator::loops::worker::tick(&h.rt).await.unwrap();
        reconciler::tick(&h.rt, &rstats).await.unwrap();
        reaper::tick(&h.rt, &pstats).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let js = jobs::for_task(h.db.reader(), id).await.unwrap();
    assert_eq!(js.len(), 1, "never requeued: {js:?}");
    assert_eq!(
        (js[0].status.as_str(), js[0].claimed_by.as_deref()),
        ("cancelled", None)
    );
    assert_eq!(h.stage(id).await, Stage::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_while_a_builtin_runner_runs_kills_its_group() {
    // The deterministic tester (F-20) runs in its own group like an agent:
    // a STOP must not wait for its command timeout.
    let toml = "deterministic_tester = true\ntest_command = \"sleep 300 & sleep 300; echo done\"";
    let h = Harness::with_engine(&["demo"], toml, &[], |b, s, db| {
        b.effects(orchestrator::effects::daemon_effects(
            s.clone(),
            db.clone(),
            daemon_forge(s),
        ))
    })
    .await;
    let id = seed(&h, "DEMO-1", Stage::Testing, true).await;
    let job = jobs::enqueue(&h.db, id, Stage::Testing, "tester", 1, "")
        .await
        .unwrap()
        .id();
    until(&h, "the runner's group on the job", || async {
        jobs::get(h.db.reader(), job)
            .await
            .unwrap()
            .and_then(|j| j.pgid)
            .is_some_and(|p| proc_group::pids_in_group(p as i32).len() >= 3)
    })
    .await;
    let pgid = jobs::get(h.db.reader(), job)
        .await
        .unwrap()
        .unwrap()
        .pgid
        .unwrap() as i32;

    let out = status(&h, "DEMO-1", "stop").await;
    assert!(
        matches!(&out, Handled::Done(t) if t.contains("testing -> cancelled") && t.contains("1 agent group(s) stopped")),
        "{out:?}"
    );
    assert_eq!(proc_group::pids_in_group(pgid), Vec::<i32>::new());
    assert_cancelled_and_clean(&h, id, "DEMO-1").await;
    // The killed runner is a tool error: it writes no verdict, and its
    // monitor's claim fails on the cancelled job, so nothing is requeued.
    until(&h, "the killed run's exit", || async {
        runs::latest_for_job(h.db.reader(), job)
            .await
            .unwrap()
            .is_some_and(|r| r.exit_code.is_some())
    })
    .await;
    for _ in 0..5 {
        orchestrator::loops::worker::tick(&h.rt).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let js = jobs::for_task(h.db.reader(), id).await.unwrap();
    assert_eq!(js.len(), 1, "never requeued: {js:?}");
    assert_eq!(js[0].status, "cancelled");
    assert_eq!(h.stage(id).await, Stage::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_during_an_effect_is_deferred_then_applied_by_the_holder() {
    let blocking = Arc::new(Blocking {
        entered: Notify::new(),
        release: Notify::new(),
    });
    let b = blocking.clone();
    let h = Harness::with_engine(&["demo"], "", &[], move |builder, s, db| {
        builder.inputs(Arc::new(StagingPassed)).effects(
            orchestrator::effects::daemon_effects(s.clone(), db.clone(), daemon_forge(s))
                .with(EffectKind::CoverageRatchet, b)
                .with(EffectKind::ImageRebuild, Arc::new(NoopEffect)),
        )
    })
    .await;
    let id = seed(&h, "DEMO-1", Stage::DeployStaging, true).await;
    let p = h.rt.pipeline.clone();
    let actor = tokio::spawn(async move { p.advance(id, "monitor").await });
    blocking.entered.notified().await;

    // The lease is held inside the effect: the STOP is recorded, not applied.
    for _ in 0..2 {
        let out = status(&h, "DEMO-1", "stop").await;
        assert!(
            matches!(&out, Handled::Done(t) if t.contains("deferred") && t.contains("monitor holds the task")),
            "{out:?}"
        );
    }
    let t = task(&h, id).await;
    assert_eq!(t.stage, Stage::DeployStaging);
    assert!(t.cancel_requested_at.is_some());
    assert_eq!(
        stop_alerts(&h, "DEMO-1"),
        1,
        "a repeated STOP notifies once"
    );
    assert_eq!(stop_comments(&h, "DEMO-1"), 1);
    assert!(rev(&bare(&h), "demo-1").is_some(), "nothing cleaned yet");

    // The step ends: the transition completes (never interrupted), then the
    // holder applies the cancel, and its after_move runs the cascade.
    blocking.release.notify_one();
    let out = actor.await.unwrap().unwrap();
    assert!(
        matches!(
            out,
            Outcome::Advanced {
                from: Stage::DeployStaging,
                to: Stage::Deploy,
                ..
            }
        ),
        "{out:?}"
    );
    assert_cancelled_and_clean(&h, id, "DEMO-1").await;
    let kinds: Vec<(String, String)> = effects_of(&h, id)
        .await
        .into_iter()
        .map(|(k, s, _)| (k, s))
        .collect();
    assert_eq!(
        kinds,
        [
            ("coverage_ratchet".into(), "done".into()),
            ("image_rebuild".into(), "done".into()),
            ("delete_branch".into(), "done".into())
        ]
    );
    let hist = history(&h, id).await;
    assert_eq!(
        hist[hist.len() - 2..],
        [
            ("deploy-staging".to_string(), "deploy".to_string()),
            ("deploy".to_string(), "cancelled".to_string())
        ]
    );
    let block = h.rt.pipeline.stops.snapshot().await;
    assert_eq!(
        (block["requested"].as_u64(), block["deferred"].as_u64()),
        (Some(2), Some(2)),
        "{block}"
    );
    assert_eq!(block["applied"], 1, "{block}");
    assert_eq!(
        stop_alerts(&h, "DEMO-1"),
        1,
        "applying it notifies nobody again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_with_the_merge_lease_and_a_running_job_waits_for_the_step() {
    let gate = tempfile::tempdir().unwrap();
    let go = gate.path().join("go");
    // The deployer waits for the test's signal, then finishes honestly.
    let cmd = format!(
        "while [ ! -e {} ]; do sleep 0.05; done; {}",
        go.display(),
        agent("contract-agent.sh")
    );
    let h = harness(&[("ORCH_AGENT_COMMAND", &cmd)]).await;
    let main_before = rev(&bare(&h), "main").unwrap();
    let id = seed(&h, "DEMO-1", Stage::DeployStaging, true).await;
    assert!(
        merge_lease::acquire(h.db.writer(), "demo", id, now_ms())
            .await
            .unwrap()
    );
    jobs::enqueue(&h.db, id, Stage::DeployStaging, "deployer", 1, "")
        .await
        .unwrap();
    until(&h, "the deployer running", || async {
        jobs::active_for_task(h.db.reader(), id)
            .await
            .unwrap()
            .is_some_and(|j| j.status == "running" && j.pgid.is_some())
    })
    .await;
    let job = jobs::active_for_task(h.db.reader(), id)
        .await
        .unwrap()
        .unwrap();

    for _ in 0..2 {
        let out = status(&h, "DEMO-1", "stop").await;
        assert!(
            matches!(&out, Handled::Done(t) if t.contains("deferred") && t.contains("merge lease")),
            "{out:?}"
        );
    }
    // Nothing was interrupted: the job runs on, its group is alive.
    assert_eq!(task(&h, id).await.stage, Stage::DeployStaging);
    assert_eq!(
        jobs::get(h.db.reader(), job.id)
            .await
            .unwrap()
            .unwrap()
            .status,
        "running"
    );
    assert!(!proc_group::pids_in_group(job.pgid.unwrap() as i32).is_empty());
    assert_eq!(stop_alerts(&h, "DEMO-1"), 1);
    assert_eq!(stop_comments(&h, "DEMO-1"), 1);

    // The step ends: the monitor finishes the job and its engine call
    // applies the requested cancel; the cascade follows.
    std::fs::write(&go, "").unwrap();
    // Showing Cancelled is the cascade's last step (it runs on the
    // monitor's task, not this one).
    until(&h, "the deferred cancel applied and cleaned", || async {
        h.stage(id).await == Stage::Cancelled
            && h.tracker.statuses_of("DEMO-1").last().map(String::as_str) == Some("cancelled")
    })
    .await;
    assert_cancelled_and_clean(&h, id, "DEMO-1").await;
    assert_eq!(
        jobs::get(h.db.reader(), job.id)
            .await
            .unwrap()
            .unwrap()
            .status,
        "done",
        "the step finished, it was not killed"
    );
    assert_eq!(
        history(&h, id).await.last().unwrap(),
        &("deploy-staging".to_string(), "cancelled".to_string())
    );
    assert_eq!(rev(&bare(&h), "main").unwrap(), main_before);
    assert_eq!(stop_alerts(&h, "DEMO-1"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_while_parked_on_deploy_is_immediate() {
    let h = harness(&[]).await;
    let id = seed(&h, "DEMO-1", Stage::Deploy, true).await;
    // Parked: the merge lease is held from the merge gate on, nothing runs.
    assert!(
        merge_lease::acquire(h.db.writer(), "demo", id, now_ms())
            .await
            .unwrap()
    );
    let out = status(&h, "DEMO-1", "stop").await;
    assert!(
        matches!(&out, Handled::Done(t) if t.contains("deploy -> cancelled")),
        "{out:?}"
    );
    assert_cancelled_and_clean(&h, id, "DEMO-1").await;
    assert_eq!(h.rt.pipeline.stops.snapshot().await["deferred"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn to_analyse_after_stop_builds_a_fresh_task() {
    let h = harness(&[]).await;
    let old = h.task("demo", "DEMO-1").await;
    h.rt.pipeline.advance(old, "plane-webhook").await.unwrap();
    until(&h, "the first analyst's BRD", || async {
        h.tracker
            .comment_keys("DEMO-1")
            .iter()
            .any(|k| k.starts_with("approval:"))
    })
    .await;
    // Work on the branch the new task must not inherit (the BRD alone would
    // be byte-identical and, within one second, the very same commit).
    let project = h.rt.settings.project("demo").unwrap().clone();
    let wt = h.rt.workspace.prepare(&project, "DEMO-1").await.unwrap();
    std::fs::write(wt.join("cancelled-work.txt"), "old\n").unwrap();
    h.rt.workspace
        .commit_and_push(&project, "DEMO-1", "developer: DEMO-1")
        .await
        .unwrap();
    let old_head = rev(&bare(&h), "demo-1").expect("the old work was pushed");
    let old_job = jobs::for_task(h.db.reader(), old).await.unwrap()[0].clone();
    let old_log = runs::latest_for_job(h.db.reader(), old_job.id)
        .await
        .unwrap()
        .unwrap()
        .log_path
        .unwrap();

    let out = status(&h, "DEMO-1", "stop").await;
    assert!(
        matches!(&out, Handled::Done(t) if t.contains("cancelled")),
        "{out:?}"
    );
    assert_cancelled_and_clean(&h, old, "DEMO-1").await;

    let out = status(&h, "DEMO-1", "to_analyse").await;
    assert!(
        matches!(&out, Handled::Done(t) if t.contains("created -> analysis")),
        "{out:?}"
    );
    let new = tasks::by_work_item(h.db.reader(), "DEMO-1")
        .await
        .unwrap()
        .unwrap();
    assert_ne!(new.id, old, "a fresh task row");
    assert_eq!(new.stage, Stage::Analysis);
    assert_eq!(new.plane_issue_id.as_deref(), Some("issue-DEMO-1"));
    // "Artifacts kept": the old row stays (cancelled, tombstoned, same work
    // item and issue id) with its history, its jobs, its agent runs and the
    // run's log on disk. What is NOT kept is the remote branch (F-25 deletes
    // it) nor the worktree: the files the agents wrote live on only in the
    // run logs, and the new task starts from the default branch.
    let t = task(&h, old).await;
    assert!(t.stage == Stage::Cancelled && t.tombstoned_at.is_some());
    assert!(history(&h, old).await.len() >= 2);
    let old_runs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM agent_runs WHERE task_id = ?")
        .bind(old)
        .fetch_one(h.db.reader())
        .await
        .unwrap();
    assert_eq!(old_runs, 1);
    assert!(Path::new(&old_log).exists(), "the old run's log is kept");

    // The new analyst works from scratch: its branch does not contain the
    // cancelled work.
    until(&h, "the new analyst's BRD", || async {
        let js = jobs::for_task(h.db.reader(), new.id).await.unwrap();
        js.iter().any(|j| j.status == "done")
            && h.tracker
                .comment_keys("DEMO-1")
                .iter()
                .filter(|k| k.starts_with("approval:"))
                .count()
                == 2
    })
    .await;
    let new_head = rev(&bare(&h), "demo-1").expect("the new branch was pushed");
    let files = sh(&bare(&h), "git ls-tree -r --name-only demo-1");
    assert!(
        files.contains("docs/work-items/DEMO-1/01-brd.md"),
        "{files}"
    );
    assert!(!files.contains("cancelled-work.txt"), "{files}");
    let contains_old = std::process::Command::new("git")
        .args(["merge-base", "--is-ancestor", &old_head, &new_head])
        .current_dir(bare(&h))
        .status()
        .unwrap()
        .success();
    assert!(
        !contains_old,
        "the new branch starts from main, not from the cancelled work"
    );
    assert_eq!(
        sh(&bare(&h), "git merge-base main demo-1").trim(),
        rev(&bare(&h), "main").unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconciler_finishes_what_a_crash_left() {
    let hang = agent("hang.sh");
    let h = harness(&[("ORCH_AGENT_COMMAND", &hang)]).await;
    // 1. Cancelled by the engine alone (a crash came before the cascade):
    //    the agent still runs, its job is still running, the worktree is there.
    let id = h.task("demo", "DEMO-1").await;
    h.rt.pipeline.advance(id, "plane-webhook").await.unwrap();
    until(&h, "the agent running", || async {
        jobs::active_for_task(h.db.reader(), id)
            .await
            .unwrap()
            .and_then(|j| j.pgid)
            .is_some_and(|p| proc_group::pids_in_group(p as i32).len() >= 3)
    })
    .await;
    let job = jobs::active_for_task(h.db.reader(), id)
        .await
        .unwrap()
        .unwrap();
    let pgid = job.pgid.unwrap() as i32;
    let (out, _) =
        h.rt.pipeline
            .engine
            .cancel(id, "test", "crash sim")
            .await
            .unwrap();
    assert!(matches!(out, Outcome::Cancelled { .. }), "{out:?}");
    assert!(!proc_group::pids_in_group(pgid).is_empty());

    // 2. A requested cancel nobody applied (its step ended without an engine
    //    call): recorded only.
    let id2 = seed(&h, "DEMO-2", Stage::Review, true).await;
    assert!(
        tasks::request_cancel(h.db.writer(), id2, "test", "STOP")
            .await
            .unwrap()
    );

    let stats = Arc::new(reconciler::ReconcilerStats::default());
    reconciler::tick(&h.rt, &stats).await.unwrap();
    assert_eq!(proc_group::pids_in_group(pgid), Vec::<i32>::new());
    assert_cancelled_and_clean(&h, id, "DEMO-1").await;
    assert_cancelled_and_clean(&h, id2, "DEMO-2").await;
    let block = h.rt.pipeline.stops.snapshot().await;
    assert_eq!(
        (block["swept"].as_u64(), block["applied"].as_u64()),
        (Some(1), Some(1)),
        "{block}"
    );

    // Idempotent: a second pass finds nothing to do.
    reconciler::tick(&h.rt, &stats).await.unwrap();
    let again = h.rt.pipeline.stops.snapshot().await;
    assert_eq!(again["cascades"], block["cascades"], "{again}");
}
