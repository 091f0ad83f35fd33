//! The deploy path (F-19, F-23, F-24, B-1) in process: Confirm Deploy → a
//! real merge commit in the Gitea double's bare repository → done, the
//! tracker at Deploying, Monitoring after Deploy, then Done; no second merge
//! after a holder dies between the merge and the stage write; HOLD when the
//! PR cannot be merged; the deploy command's exit code, report and timeout;
//! local merges without a forge; the coverage ratchet rolling back.

mod support;

use orchestrator::db::{deploys, jobs, now_ms};
use orchestrator::domain::{EffectKind, Stage};
use orchestrator::effects::deploy::ALREADY_IN_MAIN;
use orchestrator::events::PrMerged;
use orchestrator::loops::post_deploy::{self, PostDeployStats};
use orchestrator::pipeline::status::Handled;
use orchestrator::stage_engine::{Outcome, Step};
use support::deploy_env::{DeployEnv, PanicOnce, REPO};
use support::gitea_double::{MergeFault, git};

fn advanced_to_done(out: &Outcome) -> bool {
    matches!(
        out,
        Outcome::Advanced {
            from: Stage::Deploy,
            to: Stage::Done,
            ..
        }
    )
}

#[tokio::test]
async fn confirm_deploy_merges_for_real_then_monitors_then_done() {
    let e = DeployEnv::new(true, "", &[("ORCH_POST_DEPLOY_WINDOW_S", "600")]).await;
    let (id, head) = e.task_at("deploy", 1).await;
    let main_before = e.main_sha();

    // A merged-PR webhook while parked on deploy does not complete the task.
    let pr = PrMerged {
        repo_full_name: REPO.into(),
        number: 77,
        head_ref: "demo-1".into(),
        head_sha: Some(head.clone()),
        base_ref: Some("main".into()),
        merge_sha: None,
        title: "DEMO-1: Feature 1".into(),
    };
    let h = e.pipeline.on_pr_merged(&pr).await.unwrap();
    assert!(matches!(h, Handled::Ignored(_)), "{h:?}");
    assert_eq!(e.task(id).await.stage, Stage::Deploy);

    let out = e
        .pipeline
        .confirm_deploy(id, "plane-webhook")
        .await
        .unwrap();
    assert!(advanced_to_done(&out), "{out:?}");
    assert_eq!(e.task(id).await.stage, Stage::Done);

    // A real merge commit on the bare repository's main, the head in it.
    assert_eq!((e.merge_posts(), e.merges_in_main()), (1, 1));
    assert!(e.in_main(&head));
    let merge = e.main_sha();
    assert_eq!(
        git(&e.bare, &["rev-parse", "main^1", "main^2"]),
        format!("{main_before}\n{head}")
    );
    let pulls = e.gitea.pulls(REPO);
    assert_eq!((pulls.len(), pulls[0].merged), (1, true));
    let rows = e.effect_rows(id).await;
    let kinds: Vec<_> = rows
        .iter()
        .map(|r| (r.kind.as_str(), r.state.as_str()))
        .collect();
    assert_eq!(kinds, [("merge_pr", "done"), ("prod_deploy", "done")]);
    assert_eq!(rows[0].result.as_deref(), Some(merge.as_str()));
    // No deploy_command: the deployer agent deployed (tests/deploy_agent.rs).
    assert_eq!(
        rows[1].result.as_deref(),
        Some("deploy_status: SUCCESS (deployer agent)")
    );

    // Deploying before the merge, Monitoring after done (the window armed
    // first), a comment naming the merge commit.
    assert_eq!(e.tracker.statuses_of("DEMO-1"), ["deploying", "monitoring"]);
    let until = e.post_deploy_until(id).await.expect("window armed");
    assert!(until > now_ms() + 500_000, "armed for the window");
    let comments = e.tracker.comments_of("DEMO-1");
    assert!(
        comments.iter().any(|(_, html)| html.contains(&merge)),
        "{comments:?}"
    );

    // Monitor ticks inside the window keep Monitoring (no extra writes).
    let stats = PostDeployStats::default();
    post_deploy::tick(&e.pipeline, &stats).await.unwrap();
    assert_eq!(e.tracker.statuses_of("DEMO-1"), ["deploying", "monitoring"]);
    assert_eq!(
        stats.monitoring.load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    // The window closes: Done through the guard, the marker cleared.
    sqlx::query("UPDATE tasks SET post_deploy_until = ? WHERE id = ?")
        .bind(now_ms() - 1)
        .bind(id)
        .execute(e.db.writer())
        .await
        .unwrap();
    post_deploy::tick(&e.pipeline, &stats).await.unwrap();
    assert_eq!(
        e.tracker.statuses_of("DEMO-1"),
        ["deploying", "monitoring", "done"]
    );
    assert_eq!(e.post_deploy_until(id).await, None);
    post_deploy::tick(&e.pipeline, &stats).await.unwrap();
    assert_eq!(e.tracker.statuses_of("DEMO-1").len(), 3, "closed is closed");

    // A repeated Confirm Deploy and a late merged-PR webhook change nothing.
    let again = e
        .pipeline
        .confirm_deploy(id, "plane-webhook")
        .await
        .unwrap();
    assert_eq!(again, Outcome::Terminal { stage: Stage::Done });
    assert!(matches!(
        e.pipeline.on_pr_merged(&pr).await.unwrap(),
        Handled::Ignored(_)
    ));
    assert_eq!((e.merge_posts(), e.merges_in_main()), (1, 1));
}

/// The holder dies after the merge and before the stage write; a new boot
/// on the same database recovers: done, and still exactly one merge.
async fn crash_after_the_merge(forge: bool, step: Step) {
    let e = DeployEnv::new(forge, "", &[]).await;
    let (id, head) = e.task_at("deploy", 2).await;
    let dying = e.pipeline_with(Some(PanicOnce::at(step)));
    let joined = tokio::spawn(async move { dying.confirm_deploy(id, "plane-webhook").await }).await;
    assert!(joined.unwrap_err().is_panic());
    assert_eq!(e.task(id).await.stage, Stage::Deploy);
    assert_eq!(e.merges_in_main(), 1, "the merge happened before the crash");
    let row = &e.effect_rows(id).await[0];
    let expect = if step == Step::AfterApply {
        "planned"
    } else {
        "done"
    };
    assert_eq!(
        (row.kind.as_str(), row.state.as_str()),
        ("merge_pr", expect)
    );

    // The restart: recovery (app::start follows each resumed move with
    // after_move), then the post-deploy monitor's first tick.
    let restarted = e.pipeline_with(None);
    let rec = restarted.engine.recover_on_startup().await.unwrap();
    for (tid, out) in &rec.resumed_tasks {
        restarted.after_move(*tid, out).await.unwrap();
    }
    let stats = PostDeployStats::default();
    post_deploy::tick(&restarted, &stats).await.unwrap();
    // A planned merge_pr is finished by recovery; a done one with the
    // deploy not yet planned is carried forward by the finalizer job the
    // monitor's tick queues (effects never run inside a tick).
    let resumed = stats.resumed.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(e.run_finalizers(&restarted).await as u64, resumed);
    post_deploy::tick(&restarted, &stats).await.unwrap();
    match step {
        Step::AfterApply => assert_eq!((rec.resumed_tasks.len(), resumed), (1, 0), "{rec:?}"),
        _ => assert_eq!((rec.resumed_tasks.len(), resumed), (0, 1), "{rec:?}"),
    }

    assert_eq!(e.task(id).await.stage, Stage::Done);
    assert_eq!(e.merges_in_main(), 1, "no second merge");
    assert_eq!(e.merge_posts(), if forge { 1 } else { 0 });
    assert!(e.in_main(&head));
    let rows = e.effect_rows(id).await;
    assert_eq!(rows[0].result.as_deref(), Some(e.main_sha().as_str()));
    assert!(rows.iter().all(|r| r.state == "done"));
    assert!(e.post_deploy_until(id).await.is_some());
    assert_eq!(
        e.tracker.statuses_of("DEMO-2").last().unwrap(),
        "monitoring"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_the_merge_post_before_its_record_does_not_merge_twice() {
    crash_after_the_merge(true, Step::AfterApply).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_the_merge_record_before_the_stage_write_does_not_merge_twice() {
    crash_after_the_merge(true, Step::AfterDone).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_a_local_merge_does_not_merge_twice() {
    crash_after_the_merge(false, Step::AfterApply).await;
}

#[tokio::test]
async fn a_pr_that_cannot_be_merged_holds_the_task_at_deploy_with_an_alert() {
    let e = DeployEnv::new(true, "", &[]).await;
    let (id, head) = e.task_at("deploy", 3).await;
    e.gitea.push_merge_fault(MergeFault::NotMergeable);
    let out = e
        .pipeline
        .confirm_deploy(id, "plane-webhook")
        .await
        .unwrap();
    let Outcome::EffectFailed { stage, kind, error } = &out else {
        panic!("{out:?}")
    };
    assert_eq!((*stage, *kind), (Stage::Deploy, EffectKind::MergePr));
    assert!(error.contains("not merged"), "{error}");
    let t = e.task(id).await;
    assert_eq!(t.stage, Stage::Deploy);
    let hold = t.hold_reason.unwrap();
    assert!(
        hold.starts_with("merge_pr: ") && hold.contains("mergeable"),
        "{hold}"
    );
    assert_eq!(e.alerts("effect_failed"), 1);
    assert_eq!((e.merges_in_main(), e.in_main(&head)), (0, false));
    // prod_deploy never ran: the transition stopped at the failed merge.
    let kinds: Vec<_> = e
        .effect_rows(id)
        .await
        .into_iter()
        .map(|r| (r.kind, r.state))
        .collect();
    assert_eq!(kinds, [("merge_pr".to_string(), "failed".to_string())]);
    // The person hears why and is asked to confirm again.
    assert_eq!(
        e.tracker.statuses_of("DEMO-3"),
        ["deploying", "awaiting_deploy"]
    );
    let comments = e.tracker.comments_of("DEMO-3");
    assert!(
        comments.iter().any(|(_, h)| h.contains("merge_pr failed")),
        "{comments:?}"
    );
    assert_eq!(e.post_deploy_until(id).await, None);
}

#[tokio::test]
async fn a_failing_deploy_command_holds_as_unknown_and_only_a_persons_confirm_runs_it_again() {
    let flag = tempfile::tempdir().unwrap();
    let ok = flag.path().join("fixed");
    let runs = flag.path().join("runs");
    let cmd = format!(
        "echo deploying; echo run >> {}; test -f {} || exit 3",
        runs.display(),
        ok.display()
    );
    let e = DeployEnv::new(true, &format!("deploy_command = '{cmd}'"), &[]).await;
    let (id, _) = e.task_at("deploy", 4).await;
    let out = e
        .pipeline
        .confirm_deploy(id, "plane-webhook")
        .await
        .unwrap();
    // B-13: the command ran and failed: production may have changed, so
    // the outcome is unknown, not "failed" (never re-run on its own).
    let Outcome::EffectUnknown { kind, error, .. } = &out else {
        panic!("{out:?}")
    };
    assert_eq!(*kind, EffectKind::ProdDeploy);
    assert!(error.contains("deploy_status: FAILURE (exit 3)"), "{error}");
    let t = e.task(id).await;
    assert_eq!(t.stage, Stage::Deploy);
    assert!(
        t.hold_reason
            .unwrap()
            .contains("deploy_status: FAILURE (exit 3)")
    );
    assert!(
        e.report("DEMO-4")
            .unwrap()
            .ends_with("deploy_status: FAILURE\n")
    );
    assert_eq!(e.merges_in_main(), 1, "merged before the deploy failed");
    let run_count = || {
        std::fs::read_to_string(&runs)
            .unwrap_or_default()
            .lines()
            .count()
    };
    assert_eq!(run_count(), 1);
    assert_eq!(e.effect_rows(id).await[1].state, "unknown");

    // No person decided: the daemon's own attempts (a restart's recovery,
    // the reconciler's finalizer) do not run it again, whatever they try.
    std::fs::write(&ok, "").unwrap();
    let again = e.pipeline.finalize_deploy(id, "recovery").await.unwrap();
    assert!(matches!(again, Outcome::EffectUnknown { .. }), "{again:?}");
    assert_eq!(run_count(), 1, "not re-run without a person's decision");

    // Fixed; Confirm Deploy again: the done merge is skipped, the deploy
    // reruns once.
    let out = e
        .pipeline
        .confirm_deploy(id, "plane-webhook")
        .await
        .unwrap();
    assert!(advanced_to_done(&out), "{out:?}");
    assert_eq!(run_count(), 2, "exactly one more run");
    assert_eq!((e.merge_posts(), e.merges_in_main()), (1, 1));
    let t = e.task(id).await;
    assert_eq!((t.stage, t.hold_reason), (Stage::Done, None));
    assert!(
        e.report("DEMO-4")
            .unwrap()
            .ends_with("deploy_status: SUCCESS\n")
    );
}

#[tokio::test]
async fn a_successful_deploy_runs_at_the_merged_commit_reports_success_and_leaves_a_marker() {
    let out_dir = tempfile::tempdir().unwrap();
    let seen = out_dir.path().join("deployed");
    let cmd = format!(
        "git rev-parse HEAD > {0}; echo \"$ORCH_WORK_ITEM $ORCH_STAGE\" >> {0}",
        seen.display()
    );
    let e = DeployEnv::new(true, &format!("deploy_command = '{cmd}'"), &[]).await;
    let (id, _) = e.task_at("deploy", 5).await;
    let out = e
        .pipeline
        .confirm_deploy(id, "plane-webhook")
        .await
        .unwrap();
    assert!(advanced_to_done(&out), "{out:?}");
    let deployed = std::fs::read_to_string(&seen).unwrap();
    assert_eq!(deployed, format!("{}\nDEMO-5 deploy\n", e.main_sha()));
    let report = e.report("DEMO-5").unwrap();
    assert!(report.contains(&e.main_sha()) && report.ends_with("deploy_status: SUCCESS\n"));
    let markers: Vec<String> = std::fs::read_dir(e.marker_dir())
        .unwrap()
        .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".done"))
        .collect();
    assert_eq!(markers.len(), 1, "{markers:?}");
    assert!(markers[0].contains("deploy-_done@v5"), "{markers:?}");
    let rows = e.effect_rows(id).await;
    assert_eq!(rows[1].result.as_deref(), Some("deploy_status: SUCCESS"));
}

#[tokio::test]
async fn a_deploy_that_outlives_its_timeout_is_killed_with_its_whole_group() {
    let out_dir = tempfile::tempdir().unwrap();
    let pid = out_dir.path().join("pid");
    let cmd = format!("sleep 60 & echo $! > {}; sleep 60", pid.display());
    let e = DeployEnv::new(
        true,
        &format!("deploy_command = '{cmd}'"),
        &[("ORCH_DEPLOY_TIMEOUT_S", "1")],
    )
    .await;
    let (id, _) = e.task_at("deploy", 6).await;
    let out = e
        .pipeline
        .confirm_deploy(id, "plane-webhook")
        .await
        .unwrap();
    let Outcome::EffectUnknown { error, .. } = &out else {
        panic!("{out:?}")
    };
    assert!(
        error.contains("timed out after 1s; process group killed"),
        "{error}"
    );
    let child: i32 = std::fs::read_to_string(&pid)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let alive =
        std::fs::read_to_string(format!("/proc/{child}/stat")).is_ok_and(|s| !s.contains(") Z "));
    assert!(!alive, "the background child of the deploy survived");
    assert_eq!(e.task(id).await.stage, Stage::Deploy);
}

#[tokio::test]
async fn without_a_forge_the_branch_is_merged_locally_and_main_pushed_normally() {
    let e = DeployEnv::new(false, "", &[]).await;
    let (id, head) = e.task_at("deploy", 7).await;
    // Main moves meanwhile: the merge is a real --no-ff merge on top of it.
    let other = e.push_main("other.txt", "another change\n");
    let out = e
        .pipeline
        .confirm_deploy(id, "plane-webhook")
        .await
        .unwrap();
    assert!(advanced_to_done(&out), "{out:?}");
    assert_eq!((e.merge_posts(), e.merges_in_main()), (0, 1));
    assert_eq!(
        git(&e.bare, &["rev-parse", "main^1", "main^2"]),
        format!("{other}\n{head}")
    );
    let rows = e.effect_rows(id).await;
    assert_eq!(rows[0].result.as_deref(), Some(e.main_sha().as_str()));

    // A branch already in main is not merged again.
    let (id2, _) = e.task_at("deploy", 8).await;
    git(&e.work, &["push", "--quiet", "origin", "demo-8:main"]);
    let out = e
        .pipeline
        .confirm_deploy(id2, "plane-webhook")
        .await
        .unwrap();
    assert!(advanced_to_done(&out), "{out:?}");
    assert_eq!(
        e.effect_rows(id2).await[0].result.as_deref(),
        Some(ALREADY_IN_MAIN)
    );
    assert_eq!(e.merges_in_main(), 1);
}

#[tokio::test]
async fn a_local_merge_conflict_holds_and_leaves_main_alone() {
    let e = DeployEnv::new(false, "", &[]).await;
    let (id, _) = e.task_at("deploy", 9).await;
    let main = e.push_main("feature-9.txt", "a different line\n");
    let out = e
        .pipeline
        .confirm_deploy(id, "plane-webhook")
        .await
        .unwrap();
    let Outcome::EffectFailed { kind, error, .. } = &out else {
        panic!("{out:?}")
    };
    assert_eq!(*kind, EffectKind::MergePr);
    assert!(error.contains("does not merge cleanly"), "{error}");
    assert_eq!(e.main_sha(), main, "main untouched");
    assert_eq!(e.task(id).await.stage, Stage::Deploy);
}

#[tokio::test]
async fn the_coverage_ratchet_rolls_a_drop_back_and_moves_only_on_a_pass() {
    let files = tempfile::tempdir().unwrap();
    let script = files.path().join("cov.sh");
    let images = files.path().join("images");
    let extra = format!(
        "coverage_command = 'sh {}'\nimage_command = 'echo \"$ORCH_WORK_ITEM\" >> {}'",
        script.display(),
        images.display()
    );
    let e = DeployEnv::new(true, &extra, &[]).await;
    let image_runs = || {
        std::fs::read_to_string(&images)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    let baseline = || async {
        deploys::coverage_baseline(e.db.reader(), "demo")
            .await
            .unwrap()
            .map(|b| b.percent)
    };
    // The merge gate's move (staging passed, merge gate passed).
    let stage_out = |id: i64| {
        let p = e.pipeline.clone();
        async move {
            let snap = orchestrator::db::tasks::get(p.db.reader(), id)
                .await
                .unwrap()
                .unwrap();
            let out = p
                .engine
                .transition(&snap, Stage::Deploy, "merge-gate", "test")
                .await
                .unwrap();
            p.after_move(id, &out).await.unwrap();
            out
        }
    };

    std::fs::write(&script, "echo 'TOTAL   120  24   80.00%'").unwrap();
    let (a, _) = e.task_at("deploy-staging", 11).await;
    assert!(matches!(stage_out(a).await, Outcome::Advanced { .. }));
    assert_eq!((baseline().await, image_runs()), (Some(80.0), 1));

    // A drop: the transition fails with the reason, the task goes back to
    // development with it as the developer's context; nothing moved.
    std::fs::write(&script, "echo 'lines: 75.5%'").unwrap();
    let (b, _) = e.task_at("deploy-staging", 12).await;
    let out = stage_out(b).await;
    let Outcome::EffectFailed { kind, error, .. } = &out else {
        panic!("{out:?}")
    };
    assert_eq!(*kind, EffectKind::CoverageRatchet);
    assert!(
        error.contains("coverage dropped from 80.00% to 75.50%"),
        "{error}"
    );
    let t = e.task(b).await;
    assert_eq!((t.stage, t.hold_reason), (Stage::Development, None));
    let job = jobs::for_task(e.db.reader(), b)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(
        (job.stage, job.role.as_str()),
        (Stage::Development, "developer")
    );
    assert!(
        job.context
            .contains("coverage dropped from 80.00% to 75.50%"),
        "{}",
        job.context
    );
    assert_eq!((baseline().await, image_runs()), (Some(80.0), 1));

    // A pass above the baseline moves it up.
    std::fs::write(&script, "echo 'TOTAL 85.25%'").unwrap();
    let (c, _) = e.task_at("deploy-staging", 13).await;
    assert!(matches!(stage_out(c).await, Outcome::Advanced { .. }));
    assert_eq!((baseline().await, image_runs()), (Some(85.25), 2));

    // A tool error holds without blaming the code: no rollback.
    std::fs::write(&script, "no-such-coverage-tool --run").unwrap();
    let (d, _) = e.task_at("deploy-staging", 14).await;
    let out = stage_out(d).await;
    assert!(matches!(out, Outcome::EffectFailed { .. }), "{out:?}");
    let t = e.task(d).await;
    assert_eq!(t.stage, Stage::DeployStaging);
    assert!(t.hold_reason.unwrap().contains("coverage tool error"));
    assert_eq!(baseline().await, Some(85.25));
}

#[tokio::test]
async fn the_monitor_ignores_a_cancelled_task_and_adopts_an_unarmed_deploy() {
    let e = DeployEnv::new(true, "", &[("ORCH_POST_DEPLOY_WINDOW_S", "600")]).await;
    let stats = PostDeployStats::default();
    // Cancelled mid-window: the tick writes no status at all.
    let (c, _) = e.task_at("cancelled", 21).await;
    sqlx::query("UPDATE tasks SET post_deploy_until = ? WHERE id = ?")
        .bind(now_ms() + 600_000)
        .bind(c)
        .execute(e.db.writer())
        .await
        .unwrap();
    post_deploy::tick(&e.pipeline, &stats).await.unwrap();
    assert!(e.tracker.statuses_of("DEMO-21").is_empty());
    assert_eq!(e.post_deploy_until(c).await, None);
    assert_eq!(
        stats
            .skipped_cancelled
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    // Done through deploy a minute ago but never armed (a crash between the
    // stage write and the arming): adopted with the rest of its window.
    let (d, _) = e.task_at("done", 22).await;
    let done_at = now_ms() - 60_000;
    sqlx::query(
        "INSERT INTO stage_history (task_id, from_stage, to_stage, from_version, to_version, actor, at)
         VALUES (?, 'deploy', 'done', 4, 5, 'test', ?)",
    )
    .bind(d)
    .bind(done_at)
    .execute(e.db.writer())
    .await
    .unwrap();
    post_deploy::tick(&e.pipeline, &stats).await.unwrap();
    assert_eq!(e.post_deploy_until(d).await, Some(done_at + 600_000));
    assert_eq!(e.tracker.statuses_of("DEMO-22"), ["monitoring"]);
    assert_eq!(stats.adopted.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn deploy_settings_have_defaults_and_fall_back_when_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let s = support::settings_in(dir.path(), &[]);
    assert_eq!(s.deploy_timeout_s, 1800);
    let s = support::settings_in(dir.path(), &[("ORCH_DEPLOY_TIMEOUT_S", "0")]);
    assert_eq!(s.deploy_timeout_s, 1800, "0 falls back");
    let s = support::settings_in(dir.path(), &[("ORCH_DEPLOY_TIMEOUT_S", "30")]);
    assert_eq!(s.deploy_timeout_s, 30);
}

/// A `prod_deploy` planned by a holder that died with its deploy running,
/// as recovery finds it: the row planned, the wrapper's records on disk.
async fn planned_deploy(e: &DeployEnv, id: i64) -> std::path::PathBuf {
    use orchestrator::db::effects::{Planned, insert_planned};
    let key = orchestrator::stage_engine::transition_key(id, Stage::Deploy, Stage::Done, 5);
    insert_planned(
        e.db.writer(),
        &Planned {
            task_id: id,
            key: &key,
            from: Stage::Deploy,
            to: Stage::Done,
            version: 5,
            kind: EffectKind::ProdDeploy.as_str(),
            holder: "a dead boot",
        },
    )
    .await
    .unwrap();
    std::fs::create_dir_all(e.marker_dir()).unwrap();
    e.marker_dir()
        .join(orchestrator::effects::markers::safe_name(&key))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_that_outlived_its_daemon_is_adopted_not_run_twice() {
    use std::os::unix::process::CommandExt;
    let flag = tempfile::tempdir().unwrap();
    let runs = flag.path().join("runs");
    let cmd = format!("echo run >> {}", runs.display());
    let e = DeployEnv::new(true, &format!("deploy_command = '{cmd}'"), &[]).await;
    let ran = || {
        std::fs::read_to_string(&runs)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };

    // Still running after the restart, then exit 0: waited for, not re-run.
    let (id, _) = e.task_at("deploy", 8).await;
    let base = planned_deploy(&e, id).await.display().to_string();
    // The daemon's wrapper, as it looks after a restart: its start
    // recorded, the leader of its group, with its run id in its environment.
    std::fs::write(format!("{base}.started"), "run-8\n").unwrap();
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("sleep 1; printf 0 > {base}.exit"))
        .env("ORCH_EFFECT_RUN", "run-8")
        .process_group(0)
        .spawn()
        .unwrap();
    let start = orchestrator::procfs::start_time(i64::from(child.id())).unwrap();
    std::fs::write(format!("{base}.pgid"), format!("{} {start}", child.id())).unwrap();
    let out = e
        .pipeline
        .confirm_deploy(id, "plane-webhook")
        .await
        .unwrap();
    assert!(advanced_to_done(&out), "{out:?}");
    assert_eq!(ran(), 0, "the adopted deploy was not run again");
    assert!(child.try_wait().unwrap().is_some(), "it was waited for");
    let rows = e.effect_rows(id).await;
    let deploy = rows.iter().find(|r| r.kind == "prod_deploy").unwrap();
    assert!(
        deploy
            .result
            .as_deref()
            .is_some_and(|r| r.contains("started before a restart")),
        "{rows:?}"
    );

    // Ended with exit 3 while the daemon was down: a FAILURE whose effect
    // on production is unknown: held; Confirm Deploy again deploys afresh,
    // once.
    let (id, _) = e.task_at("deploy", 9).await;
    let base = planned_deploy(&e, id).await.display().to_string();
    std::fs::write(format!("{base}.started"), "run-9\n").unwrap();
    // A pid that names another process now (our own): never waited for.
    std::fs::write(format!("{base}.pgid"), std::process::id().to_string()).unwrap();
    std::fs::write(format!("{base}.exit"), "3").unwrap();
    let out = e.pipeline.finalize_deploy(id, "recovery").await.unwrap();
    let Outcome::EffectUnknown { kind, error, .. } = &out else {
        panic!("{out:?}")
    };
    assert_eq!(*kind, EffectKind::ProdDeploy);
    assert!(
        error.contains("the run started earlier") && error.contains("Exited(3)"),
        "{error}"
    );
    assert_eq!((e.task(id).await.stage, ran()), (Stage::Deploy, 0));
    let out = e
        .pipeline
        .confirm_deploy(id, "plane-webhook")
        .await
        .unwrap();
    assert!(advanced_to_done(&out), "{out:?}");
    assert_eq!(ran(), 1, "deployed afresh, once");
}
