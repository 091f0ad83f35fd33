//! The daemon against the Plane and Gitea that people run (issue 11): the
//! same scenarios through the real binary against doubles that behave like
//! Gitea 1.22 (no commit ids in `compare`) or 1.23+, and Plane 1.0 (only
//! `.../issues/...`) or 1.3 (also `.../work-items/...`).
//! - Happy path: Confirm Deploy → one merge → Done, Plane at Deploying,
//!   Monitoring after Deploy, Done.
//! - kill -9 while the merge POST is in flight (the merge landed, its
//!   answer never came) → restart → the merge is found in main, not made
//!   again → Done, exactly one merge.

mod support;

use nix::sys::signal::Signal;
use orchestrator::db::Db;
use orchestrator::domain::Stage;
use support::daemon::{REPO, World, task, until, world};
use support::gitea_double::{GiteaVersion, MergeFault};
use support::plane_double::PlaneVersion;

const PAIRS: [(GiteaVersion, PlaneVersion); 2] = [
    (GiteaVersion::V1_22, PlaneVersion::V1_0),
    (GiteaVersion::V1_23, PlaneVersion::V1_3),
];

async fn versioned(g: GiteaVersion, p: PlaneVersion) -> World {
    let w = world("deploy_command = 'true'", &[]).await;
    w.gitea.set_version(g);
    w.plane.set_version(p);
    w
}

fn no_work_items_path(w: &World) -> bool {
    w.plane
        .requests()
        .iter()
        .all(|(_, path)| !path.contains("/work-items/"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_on_each_version() {
    for (g, p) in PAIRS {
        let w = versioned(g, p).await;
        let mut d = w.start().await;
        let db = Db::open(&w.db_path()).await.unwrap();
        let (item, t, head) = w.parked_on_deploy(&db, 1).await;
        assert_eq!(w.plane.human_set_state(&item, "Confirm Deploy").await, 200);
        until("Plane shows Done", 60, || async {
            w.plane.state_of(&item) == "Done"
        })
        .await;
        let done = task(&db, t.id).await;
        assert_eq!(done.stage, Stage::Done, "{g:?}/{p:?}: {}", w.log());
        assert_eq!((w.merge_posts(), w.merges_in_main()), (1, 1), "{g:?}/{p:?}");
        assert!(w.gitea.is_in_main(REPO, &head));
        assert_eq!(
            w.plane.states_of(&item),
            ["Deploying", "Monitoring after Deploy", "Done"],
            "{g:?}/{p:?}"
        );
        assert!(no_work_items_path(&w), "{p:?}");
        d.signal(Signal::SIGTERM);
        d.exited(30).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_the_merge_then_restart_merges_once_on_each_version() {
    for (g, p) in PAIRS {
        let w = versioned(g, p).await;
        w.gitea.push_merge_fault(MergeFault::LandedThenHang);
        let mut first = w.start().await;
        let db = Db::open(&w.db_path()).await.unwrap();
        let (item, t, head) = w.parked_on_deploy(&db, 2).await;
        assert_eq!(w.plane.human_set_state(&item, "Confirm Deploy").await, 200);
        // The merge landed; its answer hangs: the daemon is inside the POST.
        until("the merge POST is in flight", 60, || async {
            w.gitea.is_in_main(REPO, &head)
        })
        .await;
        first.signal(Signal::SIGKILL);
        first.exited(10).await;
        assert_eq!(task(&db, t.id).await.stage, Stage::Deploy);
        assert_eq!(w.merge_posts(), 1);

        let mut second = w.start().await;
        until("Plane shows Done after the restart", 60, || async {
            w.plane.state_of(&item) == "Done"
        })
        .await;
        assert_eq!(task(&db, t.id).await.stage, Stage::Done, "{g:?}/{p:?}");
        assert_eq!(
            (w.merge_posts(), w.merges_in_main()),
            (1, 1),
            "{g:?}/{p:?}: no second merge: {}",
            w.log()
        );
        assert!(no_work_items_path(&w), "{p:?}");
        second.signal(Signal::SIGTERM);
        second.exited(30).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_branch_moved_after_the_merge_gate_goes_back_through_it_then_ships_once() {
    // Issue 11 pt 4: the head the merge gate validated is the one merged; a
    // push after the gate is refused before any merge POST (a 409 "head out
    // of date" from Gitea is not retried: tests/gitea_client.rs), and the
    // task goes back to deploy-staging, where staging and the merge gate
    // judge the new head; the next Confirm Deploy ships it, merged once.
    let w = world(
        "deploy_command = 'true'",
        &[("ORCH_WORKER_POLL_INTERVAL_MS", "100")],
    )
    .await;
    w.gitea.set_version(GiteaVersion::V1_22);
    w.plane.set_version(PlaneVersion::V1_0);
    let mut d = w.start().await;
    let db = Db::open(&w.db_path()).await.unwrap();
    let (item, t, head) = w.parked_on_deploy(&db, 3).await;
    sqlx::query("UPDATE tasks SET validated_sha = ? WHERE id = ?")
        .bind(&head)
        .bind(t.id)
        .execute(db.writer())
        .await
        .unwrap();
    let moved = w.gitea.advance_branch(REPO, "demo-3");
    assert_eq!(w.plane.human_set_state(&item, "Confirm Deploy").await, 200);
    until("the task is back at deploy-staging", 60, || async {
        task(&db, t.id).await.stage == Stage::DeployStaging
    })
    .await;
    assert_eq!(w.merge_posts(), 0, "nothing merged");
    assert!(!w.gitea.is_in_main(REPO, &moved));
    until("the person is told why", 20, || async {
        w.plane
            .comments(&item)
            .iter()
            .any(|c| c.html.contains("merge gate") && c.html.contains("staging"))
    })
    .await;
    // Staging and the merge gate run on the new head; the task parks at
    // deploy again, validated at the moved head.
    // Staging and the merge gate run on the new head (staging commits its
    // report on top of it); the task parks at deploy again, validated there.
    until(
        "staging and the merge gate pass the new head",
        60,
        || async { task(&db, t.id).await.stage == Stage::Deploy },
    )
    .await;
    let validated = task(&db, t.id).await.validated_sha.unwrap();
    assert_ne!(validated, head, "validated anew");
    assert!(
        w.gitea.is_ancestor(REPO, &moved, &validated),
        "the validated head holds the moved branch's commit"
    );
    assert_eq!(task(&db, t.id).await.hold_reason, None);
    until("Awaiting Deploy is shown again", 20, || async {
        w.plane.state_of(&item) == "Awaiting Deploy"
    })
    .await;
    assert_eq!(w.plane.human_set_state(&item, "Confirm Deploy").await, 200);
    until("Plane shows Done", 60, || async {
        w.plane.state_of(&item) == "Done"
    })
    .await;
    assert_eq!(task(&db, t.id).await.stage, Stage::Done, "{}", w.log());
    assert_eq!((w.merge_posts(), w.merges_in_main()), (1, 1));
    assert!(w.gitea.is_in_main(REPO, &moved), "the new head shipped");
    d.signal(Signal::SIGTERM);
    d.exited(30).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_under_a_tight_plane_rate_limit_loses_no_write() {
    // The reproduction, shortened: Plane allows 5 requests per
    // 400 ms; the daemon's budget is the same. Every status and comment
    // lands, none while the budget is spent.
    let w = world(
        "deploy_command = 'true'",
        &[
            ("ORCH_PLANE_RATE_LIMIT_PER_MIN", "5"),
            ("ORCH_PLANE_RATE_LIMIT_WINDOW_MS", "400"),
        ],
    )
    .await;
    w.plane
        .set_rate_limit(5, std::time::Duration::from_millis(400));
    let mut d = w.start().await;
    let db = Db::open(&w.db_path()).await.unwrap();
    let (item, t, _) = w.parked_on_deploy(&db, 4).await;
    assert_eq!(w.plane.human_set_state(&item, "Confirm Deploy").await, 200);
    until("Plane shows Done", 60, || async {
        w.plane.state_of(&item) == "Done"
    })
    .await;
    assert_eq!(task(&db, t.id).await.stage, Stage::Done);
    assert_eq!(
        w.plane.states_of(&item),
        ["Deploying", "Monitoring after Deploy", "Done"]
    );
    let left: (i64, i64) = sqlx::query_as(
        "SELECT COALESCE(SUM(state = 'pending'), 0), COALESCE(SUM(state = 'failed'), 0) FROM plane_outbox",
    )
    .fetch_one(db.reader())
    .await
    .unwrap();
    assert_eq!(left, (0, 0), "nothing left queued, nothing refused");
    assert!(
        !w.plane.comments(&item).is_empty(),
        "the merge comment landed"
    );
    assert_eq!(w.plane.lock().throttled, 0, "no request over the budget");
    d.signal(Signal::SIGTERM);
    d.exited(30).await;
}
