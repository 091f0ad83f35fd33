//! Intake end to end (F-01, F-02, F-05, F-06, B-6): the real daemon on an
//! ephemeral port, the Plane double sending signed webhooks the way Plane
//! does (one per changed field, retries with a new delivery id, our own
//! writes echoing back) and the Gitea double sending its merge webhook.
//! Every status through a signed webhook reaches the expected task, job and
//! Plane state; bad signatures, malformed bodies, unknown events,
//! duplicates, retries and echoes store nothing extra and change nothing.
//!
//! Deliveries that change nothing are STORED as ignored (raw, for replay;
//! outcome `ignored: ...`); duplicates add no row.

mod support;

use std::path::Path;
use std::sync::Arc;

use orchestrator::app;
use orchestrator::db::Db;
use orchestrator::db::deliveries::{self, NewDelivery};
use orchestrator::db::tasks;
use orchestrator::domain::Stage;
use orchestrator::intake::Replay;
use orchestrator::pipeline::status::REJECTED_FALLBACK;
use orchestrator::stage_engine::{Boot, Engine};
use serde_json::json;
use support::gitea_double::Pull;
use support::intake_env::{GSECRET, env};
use support::plane_double::BOT_ID;

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

#[tokio::test]
async fn to_analyse_creates_the_task_queues_the_analyst_and_drops_our_echo() {
    let e = env().await;
    let (item, task) = e.analysed(1).await;
    assert_eq!(task.stage, Stage::Analysis);
    assert_eq!(task.plane_issue_id.as_deref(), Some(item.as_str()));
    assert_eq!(task.title, "Item 1");
    assert_eq!(task.description, "Do the thing.");
    assert_eq!(task.branch.as_deref(), Some("demo-1"));
    let jobs = e.jobs(&task).await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        (jobs[0].role.as_str(), jobs[0].status.as_str()),
        ("analyst", "queued")
    );
    // We showed the stage in Plane; that write came back as our own echo.
    assert_eq!(e.plane.state_of(&item), "In Progress");
    let outcomes = e.outcomes().await;
    assert_eq!(outcomes.len(), 2, "{outcomes:?}");
    assert!(outcomes[0].starts_with("done: task"), "{outcomes:?}");
    assert_eq!(outcomes[1], "ignored: echo of our own write");
    assert_eq!(e.jobs(&task).await.len(), 1, "the echo changed nothing");
}

#[tokio::test]
async fn duplicates_retries_and_other_fields_store_nothing_extra() {
    let e = env().await;
    let (item, task) = e.analysed(2).await;
    let rows = e.rows().await;
    // The same delivery again, and Plane's retry with a NEW delivery id.
    assert_eq!(e.plane.resend_sent(0).await, 200);
    assert_eq!(e.plane.retry_sent(0).await, 200);
    e.settle().await;
    assert_eq!(e.rows().await, rows, "no row for a duplicate");
    assert_eq!(e.jobs(&task).await.len(), 1);
    assert_eq!(
        e.task("DEMO-2").await.unwrap().stage_version,
        task.stage_version
    );

    // One save changing state and priority: one delivery per field.
    let (a, b) = e.plane.human_set_state_and_priority(&item, "Backlog").await;
    assert_eq!((a, b), (200, 200));
    e.settle().await;
    let outcomes = e.outcomes().await;
    assert_eq!(outcomes.len() as i64, rows + 2, "{outcomes:?}");
    assert!(
        outcomes[outcomes.len() - 2].contains("none of ours"),
        "{outcomes:?}"
    );
    assert!(
        outcomes[outcomes.len() - 1].contains("\"priority\""),
        "{outcomes:?}"
    );
    // Our own API write coming back (as the bot) changes nothing either.
    assert_eq!(e.plane.api_set_state(&item, "Approved", BOT_ID).await, 200);
    e.settle().await;
    assert_eq!(
        e.outcomes().await.last().unwrap(),
        "ignored: echo of our own write"
    );
    assert_eq!(e.task("DEMO-2").await.unwrap().approved_at, None);
}

#[tokio::test]
async fn bad_signatures_malformed_bodies_and_unknown_events() {
    let e = env().await;
    let item = e.plane.add_item(&e.pid, 3, "x");
    let body = serde_json::to_vec(&json!({"event": "issue", "action": "updated",
        "data": {"id": item, "project": e.pid, "sequence_id": 3, "updated_at": "t"},
        "activity": {"field": "state_id", "new_value": "x"}}))
    .unwrap();
    let (s, _) = e
        .plane
        .deliver_raw("issue", &body, "d1", Some("deadbeef"))
        .await;
    assert_eq!(s, 401, "bad signature");
    let (s, _) = e.plane.deliver_raw("issue", &body, "d2", Some("")).await;
    assert_eq!(s, 401, "no signature");
    let forged = orchestrator::intake::sign(b"another secret", &body);
    let (s, _) = e
        .plane
        .deliver_raw("issue", &body, "d3", Some(&forged))
        .await;
    assert_eq!(s, 401, "signed with another key");
    let (s, v) = e
        .plane
        .deliver_raw("issue", b"{\"event\": ", "d4", None)
        .await;
    assert_eq!(s, 400, "malformed JSON: {v}");
    assert_eq!(e.rows().await, 0, "nothing stored for a refused delivery");

    let (s, v) = e
        .plane
        .deliver_raw(
            "cycle",
            br#"{"event":"cycle","action":"created"}"#,
            "d5",
            None,
        )
        .await;
    assert_eq!((s, v["status"].as_str()), (200, Some("ignored")));
    assert_eq!(e.plane.human_comment(&item, "<p>hi</p>").await, 200);
    e.settle().await;
    let outcomes = e.outcomes().await;
    assert_eq!(outcomes.len(), 2);
    assert!(
        outcomes[0].starts_with("ignored: Plane event \"cycle\""),
        "{outcomes:?}"
    );
    assert_eq!(outcomes[1], "ignored: comments never drive anything");
    assert!(e.task("DEMO-3").await.is_none());

    // Gitea: the same rules.
    let client = reqwest::Client::new();
    let post = |sig: Option<String>, event: &str, body: &'static str| {
        let mut r = client
            .post(format!("{}/webhooks/gitea", e.base))
            .header("X-Gitea-Event", event)
            .header("X-Gitea-Delivery", uuid::Uuid::new_v4().to_string())
            .body(body);
        if let Some(s) = sig {
            r = r.header("X-Gitea-Signature", s);
        }
        r.send()
    };
    let push = include_str!("fixtures/gitea/push.json");
    assert_eq!(
        post(Some("00".into()), "push", push)
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(post(None, "push", push).await.unwrap().status(), 401);
    let sig = orchestrator::intake::sign(GSECRET.as_bytes(), b"nope");
    assert_eq!(post(Some(sig), "push", "nope").await.unwrap().status(), 400);
    let sig = orchestrator::intake::sign(GSECRET.as_bytes(), push.as_bytes());
    let r = post(Some(format!("sha256={sig}")), "push", push)
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(e.rows().await, 3);
}

#[tokio::test]
async fn approved_passes_the_approval_gate_only_in_analysis() {
    let e = env().await;
    let (item, task) = e.analysed(4).await;
    e.finish_jobs(&task).await;
    // Approved before the BRD is ready records the approval; the gate waits.
    e.artifact(&task, "01-brd.md", "# BRD\n\nstatus: READY\n")
        .await;
    assert_eq!(e.plane.human_set_state(&item, "Approved").await, 200);
    e.settle().await;
    let t = e.task("DEMO-4").await.unwrap();
    assert_eq!(t.stage, Stage::Architecture);
    assert!(t.approved_at.is_some());
    let jobs = e.jobs(&t).await;
    let last = jobs.last().unwrap();
    assert_eq!(
        (last.role.as_str(), last.stage),
        ("architect", Stage::Architecture)
    );
    assert_eq!(e.plane.state_of(&item), "In Progress");

    // Approved again, now in architecture: refused, nothing moves.
    assert_eq!(e.plane.human_set_state(&item, "Approved").await, 200);
    e.settle().await;
    let again = e.task("DEMO-4").await.unwrap();
    assert_eq!(again.stage_version, t.stage_version);
    assert!(
        e.outcomes()
            .await
            .iter()
            .any(|o| o.starts_with("refused: Approved only counts in analysis"))
    );
}

#[tokio::test]
async fn rejected_relaunches_the_analyst_with_the_newest_comment() {
    let e = env().await;
    let (item, task) = e.analysed(5).await;
    // While the analyst still runs, a rejection cannot reach it: refused.
    assert_eq!(e.plane.human_set_state(&item, "Rejected").await, 200);
    e.settle().await;
    assert_eq!(e.jobs(&task).await.len(), 1);
    e.finish_jobs(&task).await;

    assert_eq!(
        e.plane
            .human_comment(&item, "<p>Misses the <b>rollback</b> case.</p>")
            .await,
        200
    );
    assert_eq!(e.plane.human_set_state(&item, "Rejected").await, 200);
    e.settle().await;
    let jobs = e.jobs(&task).await;
    assert_eq!(jobs.len(), 2);
    let j = &jobs[1];
    assert_eq!(
        (j.role.as_str(), j.stage, j.status.as_str(), j.attempt),
        ("analyst", Stage::Analysis, "queued", 2)
    );
    assert_eq!(j.context, "Rejected in Plane: Misses the rollback case.");
    assert_eq!(e.task("DEMO-5").await.unwrap().stage, Stage::Analysis);

    // No comment at all: the fixed note.
    let (item6, task6) = e.analysed(6).await;
    e.finish_jobs(&task6).await;
    assert_eq!(e.plane.human_set_state(&item6, "Rejected").await, 200);
    e.settle().await;
    let jobs = e.jobs(&task6).await;
    assert_eq!(
        jobs.last().unwrap().context,
        format!("Rejected in Plane: {REJECTED_FALLBACK}")
    );

    // Outside analysis a relaunch is refused.
    e.finish_jobs(&task6).await;
    e.seed_stage(&task6, "development").await;
    assert_eq!(e.plane.human_set_state(&item6, "Rejected").await, 200);
    e.settle().await;
    assert_eq!(e.jobs(&task6).await.len(), 2);
    assert!(
        e.outcomes()
            .await
            .last()
            .unwrap()
            .starts_with("refused: Rejected only counts in analysis")
    );
}

#[tokio::test]
async fn in_progress_after_needs_input_relaunches_the_analyst() {
    let e = env().await;
    let (item, task) = e.analysed(7).await;
    e.finish_jobs(&task).await;
    // We set Needs Input (the analyst asked); its echo is ours.
    assert_eq!(
        e.plane.api_set_state(&item, "Needs Input", BOT_ID).await,
        200
    );
    e.plane
        .human_comment(&item, "<p>Use <i>Postgres</i>.</p>")
        .await;
    assert_eq!(e.plane.human_set_state(&item, "In Progress").await, 200);
    e.settle().await;
    let jobs = e.jobs(&task).await;
    assert_eq!(jobs.len(), 2, "{:?}", e.outcomes().await);
    assert_eq!(
        jobs[1].context,
        "The person answered in Plane: Use Postgres."
    );

    // In Progress that does not follow Needs Input means nothing.
    e.finish_jobs(&task).await;
    assert_eq!(e.plane.human_set_state(&item, "Backlog").await, 200);
    assert_eq!(e.plane.human_set_state(&item, "In Progress").await, 200);
    e.settle().await;
    assert_eq!(e.jobs(&task).await.len(), 2);
}

#[tokio::test]
async fn stop_cancels_and_to_analyse_recreates_from_scratch() {
    let e = env().await;
    let (item, task) = e.analysed(8).await;
    assert_eq!(e.plane.human_set_state(&item, "STOP").await, 200);
    e.settle().await;
    let old = tasks::get(e.db.reader(), task.id).await.unwrap().unwrap();
    assert_eq!(old.stage, Stage::Cancelled);
    assert!(old.tombstoned_at.is_some());
    assert!(e.jobs(&old).await.iter().all(|j| j.status == "cancelled"));
    assert_eq!(e.plane.state_of(&item), "Cancelled");
    assert!(e.task("DEMO-8").await.is_none(), "tombstoned");

    assert_eq!(e.plane.human_set_state(&item, "To Analyse").await, 200);
    e.settle().await;
    let fresh = e.task("DEMO-8").await.unwrap();
    assert_ne!(fresh.id, task.id);
    assert_eq!(fresh.stage, Stage::Analysis);
    assert_eq!(e.jobs(&fresh).await.len(), 1);
}

#[tokio::test]
async fn confirm_deploy_counts_only_at_deploy() {
    let e = env().await;
    let (item, task) = e.analysed(9).await;
    e.finish_jobs(&task).await;
    assert_eq!(e.plane.human_set_state(&item, "Confirm Deploy").await, 200);
    e.settle().await;
    let t = e.task("DEMO-9").await.unwrap();
    assert_eq!((t.stage, t.deploy_confirmed_at), (Stage::Analysis, None));

    e.seed_stage(&task, "deploy").await;
    // F-23: Confirm Deploy really merges the task branch, then the
    // post-deploy window (30 min by default) shows Monitoring.
    let work = e.dir.path().join("work");
    e.gitea.clone_to("team/demo", &work);
    let head = e
        .gitea
        .push_commit(&work, "demo-9", "feature.txt", "DEMO-9\n");
    assert_eq!(e.plane.human_set_state(&item, "Confirm Deploy").await, 200);
    e.settle().await;
    let t = e.task("DEMO-9").await.unwrap();
    assert!(t.deploy_confirmed_at.is_some());
    assert_eq!(t.stage, Stage::Done, "{:?}", e.outcomes().await);
    assert!(e.gitea.is_in_main("team/demo", &head));
    assert_eq!(e.plane.state_of(&item), "Monitoring after Deploy");
}

#[tokio::test]
async fn a_merged_pr_advances_its_task_except_at_deploy() {
    let e = env().await;
    let (_item, task) = e.analysed(10).await;
    e.finish_jobs(&task).await;
    e.seed_stage(&task, "testing").await;
    e.artifact(
        &task,
        "13-test-report.md",
        "result: PASS\nstatus: PASS\ntests_run: 12\n",
    )
    .await;
    let pr = |n, head: &str| Pull {
        number: n,
        head: head.into(),
        base: "main".into(),
        title: format!("{}: work", head.to_uppercase()),
        open: false,
        merged: true,
        merge_commit_sha: Some("4f1c2a9be0d3c7a6b5e4f3a2c1b0a9f8e7d6c5b4".into()),
        unmergeable: false,
    };
    // Merged into another branch than main: it shipped nothing; ignored.
    let mut release = pr(3, "demo-10");
    release.base = "release/1.x".into();
    e.gitea
        .lock()
        .repos
        .get_mut("team/demo")
        .unwrap()
        .pulls
        .push(release);
    assert_eq!(e.gitea.send_merged("team/demo", 3).await, 200);
    e.settle().await;
    assert_eq!(e.task("DEMO-10").await.unwrap().stage, Stage::Testing);
    assert!(
        e.outcomes()
            .await
            .last()
            .unwrap()
            .contains("not the default branch main"),
        "{:?}",
        e.outcomes().await
    );

    e.gitea
        .lock()
        .repos
        .get_mut("team/demo")
        .unwrap()
        .pulls
        .push(pr(1, "demo-10"));
    assert_eq!(e.gitea.send_merged("team/demo", 1).await, 200);
    e.settle().await;
    let t = e.task("DEMO-10").await.unwrap();
    assert_eq!(t.stage, Stage::DeployStaging, "{:?}", e.outcomes().await);

    // At deploy, done waits for the deployer's verdict.
    e.finish_jobs(&t).await;
    e.seed_stage(&t, "deploy").await;
    let before = e.task("DEMO-10").await.unwrap();
    e.gitea
        .lock()
        .repos
        .get_mut("team/demo")
        .unwrap()
        .pulls
        .push(pr(2, "demo-10"));
    assert_eq!(e.gitea.send_merged("team/demo", 2).await, 200);
    e.settle().await;
    let after = e.task("DEMO-10").await.unwrap();
    assert_eq!(
        (after.stage, after.stage_version),
        (Stage::Deploy, before.stage_version)
    );
    assert!(
        e.outcomes()
            .await
            .last()
            .unwrap()
            .contains("deployer's verdict")
    );
}

#[tokio::test]
async fn an_accepted_delivery_is_worked_after_a_restart_and_replay_dedups_unless_forced() {
    let mut e = env().await;
    let item = e.plane.add_item(&e.pid, 11, "Crash");
    e.stop().await;
    // A delivery committed (acked) whose work a crash cut off.
    let state = e.plane.lock().state_id(&e.pid, "To Analyse").unwrap();
    let body = serde_json::to_vec(&json!({"event": "issue", "action": "updated",
        "data": {"id": item, "project": e.pid, "sequence_id": 11, "name": "Crash",
                 "state": {"id": state, "name": "To Analyse"}, "updated_at": "2026-11-20T11:00:00Z"},
        "activity": {"field": "state_id", "old_value": null, "new_value": state,
                     "actor": {"id": "someone"}}}))
    .unwrap();
    let db = Db::open(&support::db_path(e.dir.path())).await.unwrap();
    deliveries::insert(
        &db,
        &NewDelivery {
            source: "plane",
            delivery_id: "crashed-1",
            event: "issue",
            content_key: None,
            headers: r#"{"x-plane-event":"issue"}"#,
            body: &body,
            done_outcome: None,
        },
    )
    .await
    .unwrap();
    e.start().await;
    e.settle().await;
    let task = e.task("DEMO-11").await.expect("worked after the restart");
    assert_eq!(task.stage, Stage::Analysis);

    // Replay: dedup applies (already processed), --force runs it again.
    let out = app::replay(e.settings.clone(), "crashed-1", false)
        .await
        .unwrap();
    assert!(matches!(out, Replay::Skipped { .. }), "{out:?}");
    let out = app::replay(e.settings.clone(), "plane:crashed-1", true)
        .await
        .unwrap();
    let Replay::Processed { outcome } = out else {
        panic!("{out:?}")
    };
    assert!(outcome.contains("already active at analysis"), "{outcome}");
    assert_eq!(e.jobs(&task).await.len(), 1, "idempotent");
    assert!(
        app::replay(e.settings.clone(), "no-such-id", false)
            .await
            .is_err()
    );

    // The same through the binary.
    let config = path_str(&e.dir.path().join("orchestrator.toml"));
    let out = std::process::Command::new(support::bin())
        .args(["replay", "crashed-1"])
        .env("ORCH_CONFIG", &config)
        .env(
            "ORCH_DATABASE_URL",
            format!("sqlite://{}", path_str(&support::db_path(e.dir.path()))),
        )
        .env("ORCH_LOG_LEVEL", "warn")
        .current_dir(e.dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["replay"], "skipped", "{printed}");
    e.stop().await;
}

#[tokio::test]
async fn the_deploy_status_guard_allows_converges_and_suppresses() {
    let e = env().await;
    let (item, stale) = e.analysed(12).await;
    let engine = Engine::builder(e.db.clone(), Boot::new()).build();
    let p = app::build_pipeline(Arc::new(e.settings.clone()), e.db.clone(), engine);
    // Not terminal: the deploy-phase status is set.
    p.set_status(&stale, "deploying", "test").await.unwrap();
    assert_eq!(e.plane.state_of(&item), "Deploying");

    // Done a moment ago: inside the post-deploy window, Monitoring is true.
    e.seed_stage(&stale, "done").await;
    sqlx::query(
        "INSERT INTO stage_history (task_id, from_stage, to_stage, from_version, to_version, actor, at)
         VALUES (?, 'deploy', 'done', 7, 8, 'test', ?)",
    )
    .bind(stale.id)
    .bind(orchestrator::db::now_ms())
    .execute(e.db.writer())
    .await
    .unwrap();
    // The caller's snapshot is stale (analysis): the guard re-reads.
    p.set_status(&stale, "monitoring", "test").await.unwrap();
    assert_eq!(e.plane.state_of(&item), "Monitoring after Deploy");

    // The window closed: a late caller converges to Done instead.
    sqlx::query("UPDATE stage_history SET at = 0 WHERE task_id = ?")
        .bind(stale.id)
        .execute(e.db.writer())
        .await
        .unwrap();
    p.set_status(&stale, "awaiting_deploy", "test")
        .await
        .unwrap();
    assert_eq!(e.plane.state_of(&item), "Done");

    // Cancelled: nothing is set at all.
    e.seed_stage(&stale, "cancelled").await;
    let before = e.plane.requests().len();
    p.set_status(&stale, "deploying", "test").await.unwrap();
    assert_eq!(e.plane.state_of(&item), "Done");
    assert_eq!(
        e.plane.requests().len(),
        before,
        "suppressed before any call"
    );
    // Other statuses do not pass the guard.
    p.set_status(&stale, "in_review", "test").await.unwrap();
    assert_eq!(e.plane.state_of(&item), "In Review");
    e.settle().await;
}
