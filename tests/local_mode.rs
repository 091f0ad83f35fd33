//! The end-to-end scenarios on each adapter pair (B-10): the real binary
//! with Plane and Gitea (their doubles) and with the built-in tracker and
//! forge (its own `/items` routes, the same bare repository as a plain git
//! remote). The guarantees do not depend on the pair:
//! - happy path: Confirm Deploy → exactly one merge commit on main → Done;
//! - Rejected: the analyst runs again with the person's comment as reason;
//! - STOP: cancelled, the task branch deleted from the remote, main kept;
//! - kill -9 while the merge's answer is outstanding (it landed) → restart →
//!   found in main, not merged again: exactly one merge commit.

mod support;

use nix::sys::signal::Signal;
use orchestrator::db::{Db, jobs};
use orchestrator::domain::Stage;
use support::daemon::{PAIRS, Pair, REPO, sample, task, until, world_of};
use support::gitea_double::MergeFault;
use support::pairs::kill_pid_in;

const DEPLOY: &str = "deploy_command = 'true'";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_on_each_pair() {
    for pair in PAIRS {
        let w = world_of(pair, DEPLOY, &[]).await;
        let mut d = w.start().await;
        let db = Db::open(&w.db_path()).await.unwrap();
        let (item, t, head) = w
            .item_with_branch(&d, &db, 1, Stage::Deploy, "Awaiting Deploy")
            .await;
        assert_eq!(w.person_sets(&d, &item, "Confirm Deploy").await, 200);
        until("the tracker shows Done", 60, || async {
            w.status_of(&d, &item).await == "Done"
        })
        .await;
        assert_eq!(
            task(&db, t.id).await.stage,
            Stage::Done,
            "{pair:?}: {}",
            w.log()
        );
        assert_eq!(w.merges_in_main(), 1, "{pair:?}");
        assert!(w.gitea.is_in_main(REPO, &head), "{pair:?}");
        if pair == Pair::Local {
            assert!(
                w.log().contains("merged and pushed the default branch"),
                "{}",
                w.log()
            );
        }
        // What happened shows in /metrics (issue 16).
        let m = d.metrics().await;
        assert_eq!(
            sample(
                &m,
                r#"orchestrator_stage_transitions_total{from="deploy",to="done",kind="advanced"}"#
            ),
            Some(1.0),
            "{m}"
        );
        assert!(
            sample(&m, r#"orchestrator_effects{state="done"}"#).is_some_and(|n| n >= 1.0),
            "{m}"
        );
        assert!(
            sample(&m, r#"orchestrator_loop_tick_seconds_count{name="worker"}"#)
                .is_some_and(|n| n >= 1.0),
            "{m}"
        );
        if pair == Pair::PlaneGitea {
            assert!(
                sample(
                    &m,
                    r#"orchestrator_webhooks_total{source="plane",outcome="accepted"}"#
                )
                .is_some_and(|n| n >= 1.0),
                "{m}"
            );
        }
        assert!(m.ends_with("# EOF\n"), "{m}");
        d.signal(Signal::SIGTERM);
        d.exited(30).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_relaunches_the_analyst_with_the_comment_on_each_pair() {
    for pair in PAIRS {
        let w = world_of(pair, "", &[]).await;
        let mut d = w.start().await;
        let db = Db::open(&w.db_path()).await.unwrap();
        let (item, t) = w.item_at(&d, &db, 1, Stage::Analysis, "In Review").await;
        assert!(
            w.person_comments(&d, &item, "The BRD forgets the rollback")
                .await
                < 300
        );
        assert_eq!(w.person_sets(&d, &item, "Rejected").await, 200);
        until("an analyst job with the reason", 30, || async {
            jobs::for_task(db.reader(), t.id)
                .await
                .unwrap()
                .iter()
                .any(|j| j.role == "analyst" && j.context.contains("forgets the rollback"))
        })
        .await;
        until("the tracker shows In Progress", 30, || async {
            w.status_of(&d, &item).await == "In Progress"
        })
        .await;
        assert_eq!(task(&db, t.id).await.stage, Stage::Analysis, "{pair:?}");
        d.signal(Signal::SIGTERM);
        d.exited(30).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_cancels_and_deletes_the_task_branch_on_each_pair() {
    for pair in PAIRS {
        let w = world_of(pair, "", &[]).await;
        let mut d = w.start().await;
        let db = Db::open(&w.db_path()).await.unwrap();
        let (item, t, _) = w
            .item_with_branch(&d, &db, 1, Stage::Development, "In Progress")
            .await;
        let main_before = w.gitea.rev(REPO, "main");
        assert!(w.gitea.rev(REPO, "demo-1").is_some());
        assert_eq!(w.person_sets(&d, &item, "STOP").await, 200);
        until("the task is cancelled", 30, || async {
            task(&db, t.id).await.stage == Stage::Cancelled
        })
        .await;
        until("the task branch is gone", 30, || async {
            w.gitea.rev(REPO, "demo-1").is_none()
        })
        .await;
        until("the tracker shows Cancelled", 30, || async {
            w.status_of(&d, &item).await == "Cancelled"
        })
        .await;
        assert_eq!(
            w.gitea.rev(REPO, "main"),
            main_before,
            "{pair:?}: main untouched"
        );
        d.signal(Signal::SIGTERM);
        d.exited(30).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_the_merge_then_restart_merges_once_on_each_pair() {
    for pair in PAIRS {
        let mut w = world_of(pair, DEPLOY, &[]).await;
        // The merge lands and its answer never comes: Gitea's merge POST
        // hangs, or the local forge's `git push` of main hangs after it
        // updated the remote.
        let hang_pid = match pair {
            Pair::PlaneGitea => {
                w.gitea.push_merge_fault(MergeFault::LandedThenHang);
                None
            }
            Pair::Local => {
                let (path, pid) = w.git_that_hangs_after_the_first_push_to_main();
                w.env.push(path);
                Some(pid)
            }
        };
        let mut first = w.start().await;
        let db = Db::open(&w.db_path()).await.unwrap();
        let (item, t, head) = w
            .item_with_branch(&first, &db, 1, Stage::Deploy, "Awaiting Deploy")
            .await;
        assert_eq!(w.person_sets(&first, &item, "Confirm Deploy").await, 200);
        until("the merge landed, its answer outstanding", 60, || async {
            w.gitea.is_in_main(REPO, &head) && hang_pid.as_ref().is_none_or(|p| p.exists())
        })
        .await;
        first.signal(Signal::SIGKILL);
        first.exited(10).await;
        if let Some(p) = &hang_pid {
            kill_pid_in(p);
        }
        assert_eq!(task(&db, t.id).await.stage, Stage::Deploy, "{pair:?}");
        assert_eq!(w.merges_in_main(), 1);

        let mut second = w.start().await;
        until("Done after the restart", 60, || async {
            w.status_of(&second, &item).await == "Done"
        })
        .await;
        assert_eq!(task(&db, t.id).await.stage, Stage::Done, "{pair:?}");
        assert_eq!(
            w.merges_in_main(),
            1,
            "{pair:?}: no second merge: {}",
            w.log()
        );
        if pair == Pair::PlaneGitea {
            assert_eq!(w.merge_posts(), 1);
        }
        second.signal(Signal::SIGTERM);
        second.exited(30).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_that_moved_during_the_local_merge_is_merged_again_never_forced() {
    // Someone pushes to main between the local forge's fetch and its push:
    // the push is refused, and the merge is made again on the new tip.
    let mut w = world_of(Pair::Local, DEPLOY, &[]).await;
    let path = w.git_racing_the_first_push_to_main();
    w.env.push(path);
    let mut d = w.start().await;
    let db = Db::open(&w.db_path()).await.unwrap();
    let (item, t, head) = w
        .item_with_branch(&d, &db, 1, Stage::Deploy, "Awaiting Deploy")
        .await;
    assert_eq!(w.person_sets(&d, &item, "Confirm Deploy").await, 200);
    until("Done", 60, || async {
        w.status_of(&d, &item).await == "Done"
    })
    .await;
    assert_eq!(task(&db, t.id).await.stage, Stage::Done, "{}", w.log());
    assert_eq!(w.merges_in_main(), 1);
    assert!(w.gitea.is_in_main(REPO, &head));
    // The other push survived: it is the merge's first parent.
    let first_parent = support::gitea_double::git(&w.bare, &["log", "-1", "--format=%s", "main^1"]);
    assert_eq!(first_parent, "someone else");
    assert!(
        w.log().contains("push refused (the remote moved)"),
        "{}",
        w.log()
    );
    d.signal(Signal::SIGTERM);
    d.exited(30).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconcilers_tracker_poll_reads_the_local_tracker() {
    // F-16 on the local tracker: a status the task has not acted on is
    // handed over, and one of OUR statuses that disagrees with the stage is
    // set again. The rows are written directly (no delivery), so only the
    // poll can see them.
    let w = world_of(
        Pair::Local,
        "",
        &[
            ("ORCH_RECONCILER_ENABLED", "true"),
            ("ORCH_RECONCILER_INTERVAL_S", "1"),
        ],
    )
    .await;
    let mut d = w.start().await;
    let db = Db::open(&w.db_path()).await.unwrap();
    let (_, approved) = w.item_at(&d, &db, 1, Stage::Analysis, "In Review").await;
    let (drifted, _) = w
        .item_at(&d, &db, 2, Stage::Development, "In Progress")
        .await;
    for (wi, status) in [("DEMO-1", "approved"), ("DEMO-2", "done")] {
        assert!(
            orchestrator::db::local_items::set_status(db.writer(), wi, status)
                .await
                .unwrap()
        );
    }
    // Approved is recorded (the BRD gate then decides the move).
    until("the poll approved DEMO-1", 30, || async {
        task(&db, approved.id).await.approved_at.is_some()
    })
    .await;
    until("the poll set DEMO-2 back to In Progress", 30, || async {
        w.status_of(&d, &drifted).await == "In Progress"
    })
    .await;
    d.signal(Signal::SIGTERM);
    d.exited(30).await;
}
