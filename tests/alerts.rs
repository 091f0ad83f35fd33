//! Alert dedup through the real daemon (F-27, F-25, B-1): a STOP whose
//! remote branch delete keeps failing (the remote refuses every push) is
//! retried by the reconciler on every tick, and every retry raises
//! `effect_failed`. With the daemon's wiring (`app::start`), the alert goes
//! out once; the repeats are counted in the `alert_dedup` table and the
//! `alerts` block of `/queue`; after the window (moved into the past while
//! the daemon is down, which also proves the state survives a restart) one
//! more alert goes out saying how many it stands for. With
//! `ORCH_ALERT_DEDUP_WINDOW_S=0` every tick alerts (the negative control).

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use orchestrator::app;
use orchestrator::db::Db;
use orchestrator::db::alerts::{self, AlertRow};
use orchestrator::db::tasks::{self, NewTask};
use orchestrator::domain::Stage;
use serde_json::Value;
use support::runtime::{bare_remote, sh};
use tokio::net::TcpListener;

const WINDOW_MS: i64 = 3600 * 1000;

/// A project whose remote holds the task's branch and refuses every push,
/// so `git push --delete` fails while the branch stays (`EffectError::Failed`).
fn world(dir: &Path) -> Vec<(String, String)> {
    let bare = bare_remote(dir, "demo");
    sh(
        &dir.join("demo-seed"),
        "git push --quiet origin HEAD:refs/heads/demo-1",
    );
    let hook = bare.join("hooks").join("pre-receive");
    std::fs::create_dir_all(hook.parent().unwrap()).unwrap();
    std::fs::write(
        &hook,
        "#!/bin/sh\necho 'pushes are refused here' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = dir.join("orchestrator.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[projects]]\nname = \"demo\"\nplane_project_id = \"pp-demo\"\nwork_item_prefix = \"DEMO\"\nrepo_url = \"{}\"\n",
            bare.display()
        ),
    )
    .unwrap();
    [
        ("ORCH_CONFIG", cfg.display().to_string()),
        ("ORCH_RECONCILER_INTERVAL_S", "1".into()),
        ("ORCH_REAPER_ENABLED", "false".into()),
        // No agent runs here.
        ("ORCH_AGENT_COMMAND", "true".into()),
        ("ORCH_WORKER_POLL_INTERVAL_MS", "3600000".into()),
        ("ORCH_POST_DEPLOY_TICK_S", "3600".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// DEMO-1 at development with a STOP recorded and not applied yet: the
/// reconciler's sweep applies it (and runs `delete_branch`).
async fn stopped_task(db: &Db) -> i64 {
    let id = tasks::insert(
        db.writer(),
        &NewTask {
            work_item: "DEMO-1".into(),
            project: "demo".into(),
            title: "Demo".into(),
            branch: Some("demo-1".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // Tests may seed a stage directly (CLAUDE.md).
    sqlx::query("UPDATE tasks SET stage = 'development', stage_version = 4 WHERE id = ?")
        .bind(id)
        .execute(db.writer())
        .await
        .unwrap();
    assert!(
        tasks::request_cancel(db.writer(), id, "test", "STOP")
            .await
            .unwrap()
    );
    id
}

async fn start(dir: &Path, env: &[(String, String)]) -> app::Running {
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let settings = support::settings_in(dir, &pairs);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    app::start(settings, listener).await.expect("daemon starts")
}

/// `/queue` once the reconciler has ticked at least `ticks` times.
async fn queue_after_ticks(d: &app::Running, ticks: u64) -> Value {
    let url = format!("http://{}/queue", d.addr);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let q: Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
        if q["reconciler"]["ticks"].as_u64().unwrap_or(0) >= ticks {
            return q;
        }
        assert!(
            Instant::now() < deadline,
            "the reconciler did not tick: {q}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The dedup row of the failing delete, and the attempts of its effect row
/// (one per failed retry, i.e. one `effect_failed` per attempt).
async fn observed(db: &Db, id: i64) -> (AlertRow, i64) {
    let rows = alerts::recent(db.reader(), 100).await.unwrap();
    let mut mine: Vec<AlertRow> = rows
        .into_iter()
        .filter(|r| r.kind == "effect_failed" && r.work_item.as_deref() == Some("DEMO-1"))
        .collect();
    assert_eq!(mine.len(), 1, "one dedup key: {mine:?}");
    let (attempts, state): (i64, String) = sqlx::query_as(
        "SELECT attempts, state FROM effects WHERE task_id = ? AND kind = 'delete_branch'",
    )
    .bind(id)
    .fetch_one(db.reader())
    .await
    .unwrap();
    assert_eq!(state, "failed");
    (mine.remove(0), attempts)
}

async fn still_development_and_held(db: &Db, id: i64, dir: &Path) {
    let t = tasks::get(db.reader(), id).await.unwrap().unwrap();
    assert_eq!(t.stage, Stage::Development);
    assert!(
        t.hold_reason
            .as_deref()
            .unwrap_or("")
            .contains("delete_branch"),
        "{:?}",
        t.hold_reason
    );
    let heads = sh(&dir.join("demo.git"), "git branch --list demo-1");
    assert!(heads.contains("demo-1"), "the branch is still there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_branch_delete_alerts_once_across_ticks_and_once_more_after_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let env = world(dir.path());
    let db = Db::open(&support::db_path(dir.path())).await.unwrap();
    let id = stopped_task(&db).await;

    let daemon = start(dir.path(), &env).await;
    let q = queue_after_ticks(&daemon, 5).await;
    daemon.stop().await.unwrap();
    let (row, attempts) = observed(&db, id).await;
    assert!(
        attempts >= 5,
        "the delete was retried every tick: {attempts}"
    );
    assert_eq!(row.sent_total, 1, "{row:?}");
    assert_eq!(row.sent_total + row.suppressed_total, attempts, "{row:?}");
    assert_eq!(row.suppressed, attempts - 1);
    assert!(
        row.last_message.contains("delete_branch failed"),
        "{}",
        row.last_message
    );
    let block = &q["alerts"];
    assert_eq!(block["sent"], 1, "{block}");
    assert!(block["suppressed"].as_u64().unwrap() >= 3, "{block}");
    assert_eq!(block["window_s"], 3600, "{block}");
    assert_eq!(block["recent"][0]["kind"], "effect_failed", "{block}");
    still_development_and_held(&db, id, dir.path()).await;

    // The window ends while the daemon is down (its start moved back by a
    // window: time passing, without waiting an hour).
    let pending = row.suppressed;
    sqlx::query("UPDATE alert_dedup SET window_start = window_start - ? WHERE dedup_key = ?")
        .bind(WINDOW_MS + 1000)
        .bind(&row.dedup_key)
        .execute(db.writer())
        .await
        .unwrap();
    let daemon = start(dir.path(), &env).await;
    let q = queue_after_ticks(&daemon, 4).await;
    daemon.stop().await.unwrap();
    let (row, attempts) = observed(&db, id).await;
    assert_eq!(row.sent_total, 2, "one more after the window: {row:?}");
    assert_eq!(row.sent_total + row.suppressed_total, attempts, "{row:?}");
    assert!(row.suppressed >= 3, "repeats of the new window: {row:?}");
    assert!(
        row.last_message.contains(&format!(
            "repeated: {pending} more like this suppressed since the last alert"
        )),
        "{}",
        row.last_message
    );
    assert_eq!(q["alerts"]["sent"], 1, "{}", q["alerts"]);
    still_development_and_held(&db, id, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_dedup_off_every_tick_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = world(dir.path());
    env.push(("ORCH_ALERT_DEDUP_WINDOW_S".into(), "0".into()));
    let db = Db::open(&support::db_path(dir.path())).await.unwrap();
    let id = stopped_task(&db).await;

    let daemon = start(dir.path(), &env).await;
    let q = queue_after_ticks(&daemon, 4).await;
    daemon.stop().await.unwrap();
    let (row, attempts) = observed(&db, id).await;
    assert!(attempts >= 4, "{attempts}");
    assert_eq!((row.sent_total, row.suppressed_total), (attempts, 0));
    assert_eq!(q["alerts"]["suppressed"], 0, "{}", q["alerts"]);
    assert_eq!(q["alerts"]["window_s"], 0);
}
