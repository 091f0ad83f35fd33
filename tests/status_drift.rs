//! F-16: the reconciler converges a Plane status that disagrees with the
//! stage. The real Plane client talks HTTP to the Plane double on loopback;
//! the real reconciler tick, pipeline, deploy status guard and SQLite file.

mod support;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use orchestrator::clients::plane::PlaneClient;
use orchestrator::db::leases::{self, LeaseRow};
use orchestrator::db::tasks::{self, NewTask};
use orchestrator::domain::Stage;
use orchestrator::loops::reconciler::{self, ReconcilerStats};
use orchestrator::stage_engine::lease::process_start_time;
use orchestrator::status::StatusBlock;
use support::plane_double::PlaneDouble;
use support::runtime::Harness;

/// The harness's project `demo` has Plane project id `pp-demo`.
const PID: &str = "pp-demo";

async fn env() -> (Harness, PlaneDouble) {
    let plane = PlaneDouble::start("acme", "key").await;
    let made = plane.add_project("DEMO");
    {
        let mut s = plane.lock();
        let states = s.projects.remove(&made).unwrap();
        s.projects.insert(PID.into(), states);
    }
    let url = plane.base_url();
    let mut h = Harness::new(
        &["demo"],
        &[
            ("ORCH_PLANE_BASE_URL", &url),
            ("ORCH_PLANE_API_KEY", "key"),
            ("ORCH_PLANE__WORKSPACE", "acme"),
        ],
    )
    .await;
    h.rt.pipeline.tracker = Arc::new(PlaneClient::new(&h.rt.settings).unwrap());
    (h, plane)
}

/// A task at `stage` (seeded, as tests may) whose work item is in the double.
async fn task_at(h: &Harness, plane: &PlaneDouble, seq: i64, stage: Stage) -> (i64, String) {
    let item = plane.add_item(PID, seq, &format!("Item {seq}"));
    let id = tasks::insert(
        h.db.writer(),
        &NewTask {
            work_item: format!("DEMO-{seq}"),
            plane_issue_id: Some(item.clone()),
            project: "demo".into(),
            title: format!("Item {seq}"),
            description: String::new(),
            branch: Some(format!("demo-{seq}")),
            worktree: None,
        },
    )
    .await
    .unwrap();
    sqlx::query("UPDATE tasks SET stage = ?, stage_version = 1 WHERE id = ?")
        .bind(stage)
        .bind(id)
        .execute(h.db.writer())
        .await
        .unwrap();
    (id, item)
}

/// Someone moves the card and the webhook never arrives.
fn behind_the_back(plane: &PlaneDouble, item: &str, name: &str) {
    let mut s = plane.lock();
    let state = s.state_id(PID, name).unwrap();
    s.items.get_mut(item).unwrap().state = state;
}

fn patches(plane: &PlaneDouble) -> usize {
    plane
        .requests()
        .iter()
        .filter(|(m, _)| m == "PATCH")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drifted_status_is_set_again_and_sub_states_and_inputs_are_left_alone() {
    let (h, plane) = env().await;
    let stats = Arc::new(ReconcilerStats::default());
    // Drifted: our statuses that do not belong to the stage.
    let (_, dev) = task_at(&h, &plane, 1, Stage::Development).await;
    behind_the_back(&plane, &dev, "Done");
    let (_, parked) = task_at(&h, &plane, 2, Stage::Deploy).await;
    behind_the_back(&plane, &parked, "In Progress");
    let (_, staging) = task_at(&h, &plane, 3, Stage::DeployStaging).await;
    behind_the_back(&plane, &staging, "Monitoring after Deploy");
    // Consistent: a sub-state of the stage, Deploying while the finalizer
    // of a Confirm Deploy is queued or running.
    let (_, review) = task_at(&h, &plane, 4, Stage::Analysis).await;
    behind_the_back(&plane, &review, "In Review");
    let (deploying_id, deploying) = task_at(&h, &plane, 5, Stage::Deploy).await;
    behind_the_back(&plane, &deploying, "Deploying");
    orchestrator::db::jobs::enqueue(
        &h.db,
        deploying_id,
        Stage::Deploy,
        "deploy-finalizer",
        1,
        "",
    )
    .await
    .unwrap();
    // Deploying with no deploy under way (held after a failed deploy, even):
    // not true, Awaiting Deploy again, so the person knows it is theirs.
    let (stale_id, stale) = task_at(&h, &plane, 9, Stage::Deploy).await;
    behind_the_back(&plane, &stale, "Deploying");
    tasks::set_hold(
        h.db.writer(),
        stale_id,
        Some("prod_deploy: outcome unknown"),
    )
    .await
    .unwrap();
    // A person's input, and a state none of ours: theirs, never overwritten.
    let (_, rejected) = task_at(&h, &plane, 6, Stage::Development).await;
    behind_the_back(&plane, &rejected, "Rejected");
    let (_, backlog) = task_at(&h, &plane, 7, Stage::Testing).await;
    // A held task is an operator's: left alone.
    let (held_id, held) = task_at(&h, &plane, 8, Stage::Development).await;
    behind_the_back(&plane, &held, "Awaiting Deploy");
    tasks::set_hold(h.db.writer(), held_id, Some("operator"))
        .await
        .unwrap();

    reconciler::tick(&h.rt, &stats).await.unwrap();
    assert_eq!(plane.state_of(&dev), "In Progress");
    assert_eq!(plane.state_of(&parked), "Awaiting Deploy");
    assert_eq!(plane.state_of(&staging), "Deploying");
    assert_eq!(plane.state_of(&review), "In Review");
    assert_eq!(plane.state_of(&deploying), "Deploying");
    assert_eq!(plane.state_of(&rejected), "Rejected");
    assert_eq!(plane.state_of(&backlog), "Backlog");
    assert_eq!(plane.state_of(&held), "Awaiting Deploy");
    assert_eq!(plane.state_of(&stale), "Awaiting Deploy");
    assert_eq!(stats.poll.resynced.load(Ordering::Relaxed), 4);
    assert_eq!(patches(&plane), 4, "one write per drifted task");
    let block = stats.snapshot().await;
    assert_eq!(block["status_resynced"], 4, "{block}");

    // Converged: a second pass writes nothing.
    reconciler::tick(&h.rt, &stats).await.unwrap();
    assert_eq!(patches(&plane), 4, "{:?}", plane.requests());
    assert_eq!(stats.poll.resynced.load(Ordering::Relaxed), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drifted_status_waits_for_a_live_transition_lease() {
    let (h, plane) = env().await;
    let stats = Arc::new(ReconcilerStats::default());
    let (id, item) = task_at(&h, &plane, 9, Stage::Review).await;
    behind_the_back(&plane, &item, "Needs Input");
    // Another live daemon process holds the task's transition.
    let mut other = Command::new("sleep").arg("60").spawn().unwrap();
    let pid = other.id() as i64;
    leases::put(
        h.db.writer(),
        &LeaseRow {
            task_id: id,
            owner_pid: pid,
            owner_start_time: process_start_time(pid).unwrap(),
            owner_boot_id: "another-daemon".into(),
            holder: "token".into(),
            actor: "monitor".into(),
            transition: "review->testing".into(),
            acquired_at: 0,
        },
    )
    .await
    .unwrap();
    reconciler::tick(&h.rt, &stats).await.unwrap();
    assert_eq!(
        plane.state_of(&item),
        "Needs Input",
        "deferred to the holder"
    );
    assert_eq!(stats.poll.resync_deferred.load(Ordering::Relaxed), 1);
    assert_eq!(patches(&plane), 0);

    // The holder died: its lease no longer defers anything.
    other.kill().unwrap();
    other.wait().unwrap();
    reconciler::tick(&h.rt, &stats).await.unwrap();
    assert_eq!(plane.state_of(&item), "In Progress");
    assert_eq!(stats.poll.resynced.load(Ordering::Relaxed), 1);
    assert_eq!(patches(&plane), 1);
}
