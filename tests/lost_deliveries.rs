//! A delivery the intake could not store is still acted on (issue 11 pt 7,
//! F-16): neither Plane nor Gitea retries a webhook that got a non-2xx
//! answer, so the reconciler's polls converge. Through the real binary:
//! the deliveries table is away for a moment, the webhook is answered 503,
//! then the reconciler's pass finds what it said.
//! - Gitea: a PR a person merged → the poll stores it as that delivery →
//!   the task advances, once (the late webhook is a duplicate).
//! - Plane: Confirm Deploy → the tracker poll → one merge, Done.

mod support;

use orchestrator::db::Db;
use orchestrator::domain::Stage;
use support::daemon::{REPO, task, until, world};

const RECONCILE: [(&str, &str); 2] = [
    ("ORCH_RECONCILER_ENABLED", "true"),
    ("ORCH_RECONCILER_INTERVAL_S", "1"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merged_pr_answered_503_is_found_by_the_forge_poll() {
    let w = world("", &RECONCILE).await;
    let d = w.start().await;
    let db = Db::open(&w.db_path()).await.unwrap();
    let (_item, t) = w.task_at(&db, 1, Stage::Testing).await;
    // The tests passed: the testing gate lets a merged PR move it on.
    let wt = w.dir.path().join("wt-1");
    let art = wt.join("docs/work-items/DEMO-1");
    std::fs::create_dir_all(&art).unwrap();
    std::fs::write(
        art.join("13-test-report.md"),
        "result: PASS\nstatus: PASS\ntests_run: 3\n",
    )
    .unwrap();
    sqlx::query("UPDATE tasks SET worktree = ? WHERE id = ?")
        .bind(wt.display().to_string())
        .bind(t.id)
        .execute(db.writer())
        .await
        .unwrap();

    w.deliveries_unavailable(&db, true).await;
    let number = w.person_merges(1);
    assert_eq!(w.gitea.send_merged(REPO, number).await, 503, "not stored");
    w.deliveries_unavailable(&db, false).await;

    until("the reconciler's poll acts on the merge", 30, || async {
        task(&db, t.id).await.stage == Stage::DeployStaging
    })
    .await;
    let rows: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT delivery_id, outcome FROM webhook_deliveries WHERE source = 'gitea'",
    )
    .fetch_all(db.reader())
    .await
    .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows[0].0.starts_with("reconciler-poll:"), "{rows:?}");
    // The webhook comes late after all (a manual redelivery): a duplicate.
    assert_eq!(w.gitea.send_merged(REPO, number).await, 200);
    let q = d.queue().await;
    assert_eq!(
        q["reconciler"]["forge_poll"]["missed_merges_stored"], 1,
        "{q}"
    );
    let after = task(&db, t.id).await;
    assert_eq!(after.stage, Stage::DeployStaging, "acted on once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirm_deploy_answered_503_is_found_by_the_tracker_poll() {
    let w = world("deploy_command = 'true'", &RECONCILE).await;
    let _d = w.start().await;
    let db = Db::open(&w.db_path()).await.unwrap();
    let (item, t, head) = w.parked_on_deploy(&db, 2).await;

    w.deliveries_unavailable(&db, true).await;
    assert_eq!(
        w.plane.human_set_state(&item, "Confirm Deploy").await,
        503,
        "not stored"
    );
    w.deliveries_unavailable(&db, false).await;

    until("the task is done through the poll", 60, || async {
        task(&db, t.id).await.stage == Stage::Done
    })
    .await;
    assert_eq!((w.merge_posts(), w.merges_in_main()), (1, 1));
    assert!(w.gitea.is_in_main(REPO, &head));
}
