//! Retention (issue 16, F-30): what is done and older than
//! `ORCH_RETENTION_DAYS` is trimmed from the database and the workspace;
//! what is still to act on, and the files of a job still queued or
//! running, stay whatever their age; a planted link is never followed.

mod support;

use std::path::Path;
use std::time::{Duration, SystemTime};

use orchestrator::app;
use orchestrator::db::{Db, now_ms};
use orchestrator::loops::retention::Retention;
use support::daemon::until;

const OLD: i64 = 1_000_000;

async fn delivery(db: &Db, id: &str, at: i64, processed: bool) {
    sqlx::query(
        "INSERT INTO webhook_deliveries (source, delivery_id, event, body, received_at, processed_at, outcome)
         VALUES ('plane', ?, 'issue', x'7b7d', ?, ?, ?)",
    )
    .bind(id)
    .bind(at)
    .bind(processed.then_some(at))
    .bind(processed.then_some("ignored"))
    .execute(db.writer())
    .await
    .unwrap();
}

async fn count(db: &Db, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(db.reader())
        .await
        .unwrap()
}

fn file(p: &Path, old: bool) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, b"run output").unwrap();
    if old {
        std::fs::File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1000))
            .unwrap();
    }
}

/// A task with one job per status given; their ids.
async fn jobs(db: &Db, statuses: &[&str]) -> Vec<i64> {
    let task =
        support::daemon::seed_task(db, 1, "item-1", orchestrator::domain::Stage::Development).await;
    let mut ids = Vec::new();
    for s in statuses {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO jobs (task_id, stage, role, status, created_at, updated_at)
             VALUES (?, 'development', 'developer', ?, 1, 1) RETURNING id",
        )
        .bind(task.id)
        .bind(s)
        .fetch_one(db.writer())
        .await
        .unwrap();
        ids.push(id);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_done_and_old_goes_and_everything_else_stays() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("o.db")).await.unwrap();
    let now = now_ms();
    // More old rows than one chunk, so the walk takes several.
    let old_done = (orchestrator::db::retention::CHUNK * 2 + 37) as usize;
    for i in 0..old_done {
        delivery(&db, &format!("old-{i}"), OLD + i as i64, true).await;
    }
    delivery(&db, "old-pending", OLD + 5_000, false).await;
    delivery(&db, "new-1", now, true).await;
    delivery(&db, "new-2", now, false).await;
    for (id, at, done) in [(1, OLD, true), (2, OLD, false), (3, now, true)] {
        sqlx::query(
            "INSERT INTO telegram_updates (update_id, body, received_at, processed_at) VALUES (?, '{}', ?, ?)",
        )
        .bind(id)
        .bind(at)
        .bind(done.then_some(at))
        .execute(db.writer())
        .await
        .unwrap();
    }
    for (state, at) in [("sent", OLD), ("pending", OLD), ("sent", now)] {
        sqlx::query(
            "INSERT INTO plane_outbox (project, tracker_project_id, issue_id, work_item, op, html, state, created_at)
             VALUES ('demo', 'p', 'i', 'DEMO-1', 'add_comment', 'x', ?, ?)",
        )
        .bind(state)
        .bind(at)
        .execute(db.writer())
        .await
        .unwrap();
    }
    for (key, at) in [("quiet", OLD), ("recent", now)] {
        sqlx::query(
            "INSERT INTO alert_dedup (dedup_key, kind, window_start, last_message, last_seen) VALUES (?, 'hold', ?, 'm', ?)",
        )
        .bind(key)
        .bind(at)
        .bind(at)
        .execute(db.writer())
        .await
        .unwrap();
    }

    let ids = jobs(&db, &["done", "running", "done", "failed"]).await;
    let ws = dir.path().join("ws");
    let runs = ws.join("runs");
    let done_old = runs.join(format!("demo-1/job{}-developer-a1.log", ids[0]));
    let running_old = runs.join(format!("demo-1/job{}-developer-a1.log", ids[1]));
    let done_new = runs.join(format!("demo-1/job{}-developer-a1.log", ids[2]));
    let other_dir = runs.join(format!("demo-2/job{}-developer-a1.prompt.md", ids[3]));
    file(&done_old, true);
    file(&running_old, true);
    file(&done_new, false);
    file(&other_dir, true);
    // A link an agent planted, pointing at a file outside the runs: never
    // followed, never removed through.
    let outside = dir.path().join("outside.txt");
    file(&outside, true);
    let link = runs.join(format!("demo-1/job{}-developer-a2.log", ids[0]));
    std::os::unix::fs::symlink(&outside, &link).unwrap();

    let r = Retention::new(db.clone(), &ws, 1.0, 3600);
    r.tick().await.unwrap();

    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM webhook_deliveries").await,
        3,
        "the old pending and both new deliveries stay"
    );
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM webhook_deliveries WHERE delivery_id = 'old-pending'"
        )
        .await,
        1
    );
    assert_eq!(count(&db, "SELECT COUNT(*) FROM telegram_updates").await, 2);
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM telegram_updates WHERE update_id = 1"
        )
        .await,
        0
    );
    assert_eq!(count(&db, "SELECT COUNT(*) FROM plane_outbox").await, 2);
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM plane_outbox WHERE state = 'pending'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM alert_dedup WHERE dedup_key = 'recent'"
        )
        .await,
        1
    );
    assert_eq!(count(&db, "SELECT COUNT(*) FROM alert_dedup").await, 1);

    assert!(!done_old.exists(), "an old finished run's log goes");
    assert!(running_old.exists(), "a running job keeps its files");
    assert!(done_new.exists(), "a recent run stays");
    assert!(
        !other_dir.exists() && !other_dir.parent().unwrap().exists(),
        "an emptied run dir goes"
    );
    assert!(outside.exists(), "the link's target is untouched");
    assert!(
        link.symlink_metadata().is_ok(),
        "the link itself is not a run file"
    );

    let block = orchestrator::status::StatusBlock::snapshot(&r).await;
    assert_eq!(block["deliveries_trimmed"], old_done as u64, "{block}");
    assert_eq!(block["run_files_removed"], 2, "{block}");

    // A second tick finds nothing more.
    r.tick().await.unwrap();
    let again = orchestrator::status::StatusBlock::snapshot(&r).await;
    assert_eq!(again["deliveries_trimmed"], block["deliveries_trimmed"]);
    assert_eq!(again["ticks"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_runs_retention_on_its_interval_and_shows_it_in_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(&support::db_path(dir.path())).await.unwrap();
        for i in 0..20 {
            delivery(&db, &format!("old-{i}"), OLD + i, true).await;
        }
        delivery(&db, "new", now_ms(), true).await;
        db.close().await;
    }
    let settings = support::settings_in(
        dir.path(),
        &[
            ("ORCH_RETENTION_DAYS", "7"),
            ("ORCH_RETENTION_INTERVAL_S", "1"),
            ("ORCH_REAPER_ENABLED", "false"),
            ("ORCH_RECONCILER_ENABLED", "false"),
        ],
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = app::start(settings, listener).await.unwrap();
    let url = format!("http://{}/queue", running.addr);
    until("retention trimmed the old deliveries", 20, || async {
        let q: serde_json::Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
        q["retention"]["deliveries_trimmed"] == 20
    })
    .await;
    let db = Db::open(&support::db_path(dir.path())).await.unwrap();
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM webhook_deliveries").await,
        1
    );
    running.stop().await.unwrap();
}
