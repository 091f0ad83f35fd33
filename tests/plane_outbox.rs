//! Plane writes are never dropped (issue 11 pt 2, F-03): the daemon's
//! tracker (`PlaneOutbox`) over a Plane double that throttles like Plane's
//! API-key limit. A burst far over the budget lands whole, in order per work
//! item, without one request while the budget is spent; writes queued by
//! one process are sent by the next; comment external ids differ per
//! database and work item (pt 6). The window is shortened (a setting) so
//! the test runs in seconds.

mod support;

use std::sync::Arc;
use std::time::Duration;

use orchestrator::clients::plane::{PlaneClient, PlanePolicy};
use orchestrator::clients::plane_outbox::PlaneOutbox;
use orchestrator::clients::retry::TokioSleeper;
use orchestrator::clients::{Tracker, TrackerRef};
use orchestrator::db::Db;
use support::daemon::until;
use support::plane_double::PlaneDouble;

/// The double's limit and the daemon's budget: 60 per window.
const LIMIT: usize = 60;
const WINDOW_MS: u64 = 1500;

struct Env {
    dir: tempfile::TempDir,
    plane: PlaneDouble,
    pid: String,
}

impl Env {
    async fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let plane = PlaneDouble::start("acme", "key").await;
        let pid = plane.add_project("DEMO");
        Env { dir, plane, pid }
    }

    /// A daemon's tracker over the database at `db_name` in the temp dir.
    async fn outbox(&self, db_name: &str) -> (Arc<PlaneOutbox>, Db) {
        let base = self.plane.base_url();
        let window = WINDOW_MS.to_string();
        let limit = LIMIT.to_string();
        let settings = support::settings_in(
            self.dir.path(),
            &[
                ("ORCH_PLANE_BASE_URL", base.as_str()),
                ("ORCH_PLANE_API_KEY", "key"),
                ("ORCH_PLANE__WORKSPACE", "acme"),
                ("ORCH_PLANE_RATE_LIMIT_PER_MIN", limit.as_str()),
                ("ORCH_PLANE_RATE_LIMIT_WINDOW_MS", window.as_str()),
            ],
        );
        let policy = PlanePolicy {
            timeout: Duration::from_secs(5),
            ..PlanePolicy::default()
        };
        let client = PlaneClient::with_policy(&settings, policy, Arc::new(TokioSleeper)).unwrap();
        let db = Db::open(&self.dir.path().join(db_name)).await.unwrap();
        (Arc::new(PlaneOutbox::new(Arc::new(client), db.clone())), db)
    }

    fn item(&self, seq: i64) -> TrackerRef {
        let issue = self.plane.add_item(&self.pid, seq, &format!("Item {seq}"));
        TrackerRef {
            project: "demo".into(),
            tracker_project_id: self.pid.clone(),
            issue_id: issue,
            work_item: format!("DEMO-{seq}"),
        }
    }
}

async fn pending(db: &Db) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM plane_outbox WHERE state = 'pending'")
        .fetch_one(db.reader())
        .await
        .unwrap()
}

/// The sender loop, as the daemon runs it, until the handle is aborted.
fn sender(outbox: &Arc<PlaneOutbox>) -> tokio::task::JoinHandle<()> {
    let o = outbox.clone();
    tokio::spawn(async move {
        loop {
            let _ = o.tick(Duration::from_millis(200)).await;
        }
    })
}

/// The writes of work item `i`, in the order they are made: comments with
/// status changes between them (In Progress / In Review alternating).
fn script(i: usize, n: usize) -> Vec<(bool, String)> {
    (0..n)
        .map(|k| {
            if k % 3 == 2 {
                let key = if k % 2 == 0 {
                    "in_review"
                } else {
                    "in_progress"
                };
                (true, key.to_string())
            } else {
                (false, format!("<p>item {i} write {k}</p>"))
            }
        })
        .collect()
}

fn landed_as(w: &(bool, String)) -> String {
    match w {
        (true, key) if key == "in_review" => "state:In Review".into(),
        (true, _) => "state:In Progress".into(),
        (false, html) => format!("comment:{html}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_120_writes_lands_whole_in_order_without_a_429() {
    let e = Env::new().await;
    e.plane
        .set_rate_limit(LIMIT, Duration::from_millis(WINDOW_MS));
    let (outbox, db) = e.outbox("o.db").await;
    let send = sender(&outbox);
    let items: Vec<TrackerRef> = (1..=4).map(|i| e.item(i)).collect();

    // 4 work items × 30 writes, the items concurrently, each in order.
    let mut burst = Vec::new();
    for (i, item) in items.iter().cloned().enumerate() {
        let o = outbox.clone();
        burst.push(tokio::spawn(async move {
            for (k, (status, what)) in script(i, 30).into_iter().enumerate() {
                let r = if status {
                    o.set_status(&item, &what).await
                } else {
                    o.add_comment(&item, &format!("w{k}"), &what).await
                };
                r.unwrap();
            }
        }));
    }
    for b in burst {
        b.await.unwrap();
    }
    let queued = pending(&db).await;
    assert!(
        queued > 0,
        "the burst is over the budget: some writes waited"
    );
    until("every queued write is sent", 60, || async {
        pending(&db).await == 0
    })
    .await;
    send.abort();

    for (i, item) in items.iter().enumerate() {
        let want: Vec<String> = script(i, 30).iter().map(landed_as).collect();
        assert_eq!(e.plane.writes_of(&item.issue_id), want, "DEMO-{}", i + 1);
    }
    let (throttled, writes) = {
        let s = e.plane.lock();
        (s.throttled, s.write_log.len())
    };
    assert_eq!(
        throttled, 0,
        "no request was sent while the budget was spent"
    );
    assert_eq!(writes, 120, "none dropped, none doubled");
    let refused: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM plane_outbox WHERE state = 'failed'")
            .fetch_one(db.reader())
            .await
            .unwrap();
    assert_eq!(refused, 0);
    eprintln!("queued {queued} of 120 writes; all sent in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_queued_by_one_process_are_sent_by_the_next() {
    let e = Env::new().await;
    let item = e.item(1);
    {
        // Plane is down: every write is queued, none is lost.
        let (outbox, _db) = e.outbox("o.db").await;
        for _ in 0..6 {
            e.plane
                .push_fault(support::plane_double::Fault::ServerError);
        }
        outbox.set_status(&item, "in_progress").await.unwrap();
        outbox.add_comment(&item, "k1", "<p>one</p>").await.unwrap();
        outbox.set_status(&item, "in_review").await.unwrap();
        assert!(e.plane.writes_of(&item.issue_id).is_empty());
    }
    // The next start: its sender sends them, in order.
    let (outbox, db) = e.outbox("o.db").await;
    let send = sender(&outbox);
    until("the queue is sent", 30, || async {
        pending(&db).await == 0
    })
    .await;
    send.abort();
    assert_eq!(
        e.plane.writes_of(&item.issue_id),
        ["state:In Progress", "comment:<p>one</p>", "state:In Review"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_database_does_not_lose_its_comments() {
    // Plane deduplicates comments on (project, external_source,
    // external_id): a second database's "same" key is another comment, and
    // so is the same key on another work item.
    let e = Env::new().await;
    let (a, one) = (e.item(1), e.item(2));
    let (first, _) = e.outbox("first.db").await;
    first.add_comment(&a, "usage:1", "<p>a</p>").await.unwrap();
    first
        .add_comment(&one, "usage:1", "<p>b</p>")
        .await
        .unwrap();
    // A repeat in the same database is the same comment (idempotent).
    first.add_comment(&a, "usage:1", "<p>a</p>").await.unwrap();
    let (reset, _) = e.outbox("reset.db").await;
    reset.add_comment(&a, "usage:1", "<p>c</p>").await.unwrap();
    assert_eq!(e.plane.comments(&a.issue_id).len(), 2);
    assert_eq!(e.plane.comments(&one.issue_id).len(), 1);
}
