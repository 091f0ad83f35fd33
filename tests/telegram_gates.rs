//! The whole pipeline through the real binary with the Telegram double
//! (F-26, B-11, F-27): one live card per task, edited as the stages move and
//! ending with the task done and its cost; gates tapped on the card: a
//! stranger's tap changes nothing and is answered, the allowed user's
//! Approve starts the architect and Plane shows Approved, Confirm Deploy
//! leads to Done, a stale Confirm Deploy after Done merges and deploys
//! nothing, a redelivered update acts once; a restart between store and
//! act acts exactly once. The bot token appears nowhere.

mod support;

use orchestrator::config::Secret;
use orchestrator::db::Db;
use orchestrator::db::{history, jobs, telegram};
use orchestrator::domain::Stage;
use orchestrator::notify::callback::Signer;
use orchestrator::notify::card::GateAction;
use serde_json::json;
use support::daemon::{until, world};
use support::telegram_double::{TOKEN, TelegramDouble};

const ALLOWED: i64 = 42;
const STRANGER: i64 = 7;

fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

async fn outcome(db: &Db, update_id: i64) -> String {
    telegram::update(db.reader(), update_id)
        .await
        .unwrap()
        .and_then(|u| u.outcome)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_pipeline_on_one_live_card_with_one_tap_gates() {
    let tg = TelegramDouble::start().await;
    let mut env = tg.daemon_env(&ALLOWED.to_string());
    env.push((
        "ORCH_AGENT_COMMAND".into(),
        support::runtime::agent("contract-agent.sh"),
    ));
    env.push(("ORCH_WORKER_POLL_INTERVAL_MS".into(), "100".into()));
    let w = world("", &env_refs(&env)).await;
    let mut daemon = w.start().await;
    let db = Db::open(&w.db_path()).await.unwrap();
    let item = w.plane.add_item(&w.pid, 1, "Item 1");

    assert_eq!(w.plane.human_set_state(&item, "To Analyse").await, 200);
    until("the card offers Approve", 60, || async {
        tg.button("DEMO-1", "Approve").is_some()
    })
    .await;
    let task = orchestrator::db::tasks::by_work_item(db.reader(), "DEMO-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(task.stage, Stage::Analysis);
    let (card, approve) = tg.button("DEMO-1", "Approve").unwrap();

    // A stranger's tap: answered, nothing changes.
    let u = tg.tap(STRANGER, card, &approve);
    until("the stranger's tap is processed", 20, || async {
        !outcome(&db, u).await.is_empty()
    })
    .await;
    assert!(
        outcome(&db, u).await.starts_with("refused"),
        "{}",
        outcome(&db, u).await
    );
    assert!(
        tg.answers()
            .iter()
            .any(|(id, t)| id == &format!("cb-{u}") && t.contains("not allowed"))
    );
    assert_eq!(
        support::daemon::task(&db, task.id).await.stage,
        Stage::Analysis
    );
    assert!(!w.plane.states_of(&item).contains(&"Approved".to_string()));

    // The allowed user's Approve: Plane shows Approved, the architect runs.
    let approved = tg.tap(ALLOWED, card, &approve);
    until("the card offers Confirm Deploy", 120, || async {
        tg.button("DEMO-1", "Confirm Deploy").is_some()
    })
    .await;
    assert!(
        outcome(&db, approved).await.starts_with("done"),
        "{}",
        outcome(&db, approved).await
    );
    let states = w.plane.states_of(&item);
    let at = states
        .iter()
        .position(|s| s == "Approved")
        .expect("Plane showed Approved");
    assert_eq!(
        states.get(at + 1).map(String::as_str),
        Some("In Progress"),
        "{states:?}"
    );
    let roles: Vec<String> = jobs::for_task(db.reader(), task.id)
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.role)
        .collect();
    assert_eq!(
        roles.iter().filter(|r| *r == "architect").count(),
        1,
        "{roles:?}"
    );

    // Telegram redelivers the Approve: stored once, acted once.
    tg.redeliver(approved);
    until("the redelivery is counted", 20, || async {
        daemon.queue().await["telegram_gates"]["duplicates"] == 1
    })
    .await;
    let passes = history::for_task(db.reader(), task.id)
        .await
        .unwrap()
        .iter()
        .filter(|h| h.from_stage == Stage::Analysis && h.to_stage == Stage::Architecture)
        .count();
    assert_eq!(passes, 1);

    // Confirm Deploy on the card: merged, deployed, Done.
    let (card, confirm) = tg.button("DEMO-1", "Confirm Deploy").unwrap();
    tg.tap(ALLOWED, card, &confirm);
    until("Plane shows Done", 120, || async {
        w.plane.state_of(&item) == "Done"
    })
    .await;
    assert_eq!(support::daemon::task(&db, task.id).await.stage, Stage::Done);
    assert_eq!((w.merge_posts(), w.merges_in_main()), (1, 1));
    assert!(
        w.plane
            .states_of(&item)
            .contains(&"Confirm Deploy".to_string())
    );

    // The card ends showing the task done and its cost; one card all along.
    let cost: f64 = sqlx::query_scalar("SELECT SUM(cost_usd) FROM agent_runs WHERE task_id = ?")
        .bind(task.id)
        .fetch_one(db.reader())
        .await
        .unwrap();
    let total = format!("Total: ${cost:.2}");
    until("the card shows Done", 20, || async {
        tg.cards_of("DEMO-1")
            .iter()
            .any(|m| m.text.contains("🏁 Done") && m.text.contains(&total))
    })
    .await;
    let card_sends = tg
        .calls_of("sendMessage")
        .iter()
        .filter(|b| b["text"].as_str().unwrap_or("").starts_with("DEMO-1 ·"))
        .count();
    assert_eq!(card_sends, 1, "edit mode: one message for the task");
    assert_eq!(tg.cards_of("DEMO-1").len(), 1);
    assert!(
        tg.calls_of("editMessageText").len() >= 5,
        "edited as the stages moved"
    );
    let last = &tg.cards_of("DEMO-1")[0];
    assert!(
        last.buttons.is_empty(),
        "no gate is open on a done task: {:?}",
        last.buttons
    );
    assert!(last.text.contains("Merged: "), "{}", last.text);

    // A stale Confirm Deploy tap after Done: nothing is merged or deployed.
    let stale = tg.tap(ALLOWED, card, &confirm);
    until("the stale tap is processed", 20, || async {
        !outcome(&db, stale).await.is_empty()
    })
    .await;
    assert!(
        outcome(&db, stale).await.starts_with("stale"),
        "{}",
        outcome(&db, stale).await
    );
    assert_eq!((w.merge_posts(), w.merges_in_main()), (1, 1));
    let deploys: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM effects WHERE kind = 'prod_deploy'")
            .fetch_one(db.reader())
            .await
            .unwrap();
    assert_eq!(deploys, 1);

    // F-28: the disk block and gauges are there.
    let q = daemon.queue().await;
    assert!(!q["disk"]["paths"].as_array().unwrap().is_empty(), "{q}");
    assert!(q["build_cache_prune"].is_object(), "{q}");
    let metrics = reqwest::get(daemon.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("orchestrator_disk_used_percent{"),
        "{metrics}"
    );

    // The token is in every request URL and nowhere else.
    let queue = daemon.queue().await.to_string();
    assert!(!queue.contains(TOKEN) && !queue.contains("TEST-TOKEN"));
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    daemon.exited(20).await;
    let log = w.log();
    assert!(!log.contains("TEST-TOKEN"), "the token leaked into the log");
    assert!(
        log.contains("shut down cleanly"),
        "a long poll does not hold up the stop: {log}"
    );
    let out = std::process::Command::new(support::bin())
        .arg("check-config")
        .env_clear()
        .envs(w.env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("telegram_bot_token"), "{shown}");
    assert!(!shown.contains("TEST-TOKEN"), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tap_stored_before_a_crash_acts_once_after_the_restart() {
    let tg = TelegramDouble::start().await;
    let env = tg.daemon_env(&ALLOWED.to_string());
    let w = world("", &env_refs(&env)).await;
    let db = Db::open(&w.db_path()).await.unwrap();
    let (_item, task) = w.task_at(&db, 3, Stage::Analysis).await;
    // What the daemon that died had done: stored the tap, not acted.
    let signer = Signer::from_bot_token(&Secret::new(TOKEN));
    let data = signer.encode(GateAction::Stop, task.id, task.stage_version, "");
    let update = json!({
        "update_id": 5000,
        "callback_query": {"id": "cb-5000", "from": {"id": ALLOWED}, "message": {"message_id": 1}, "data": data}
    });
    assert!(
        telegram::store_update(db.writer(), 5000, &update.to_string())
            .await
            .unwrap()
    );

    let mut daemon = w.start().await;
    until("the stored tap is acted on", 30, || async {
        !outcome(&db, 5000).await.is_empty()
    })
    .await;
    assert!(
        outcome(&db, 5000).await.starts_with("done"),
        "{}",
        outcome(&db, 5000).await
    );
    until("the task is cancelled", 30, || async {
        support::daemon::task(&db, task.id).await.stage == Stage::Cancelled
    })
    .await;
    // The getUpdates offset is past the stored id: Telegram is told it may
    // forget it, and it is not acted on again.
    until("getUpdates confirms the stored update", 20, || async {
        tg.lock().confirmed >= 5001
    })
    .await;
    let cancels = history::for_task(db.reader(), task.id)
        .await
        .unwrap()
        .iter()
        .filter(|h| h.to_stage == Stage::Cancelled)
        .count();
    assert_eq!(cancels, 1);
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    daemon.exited(20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_mode_checks_the_secret_stores_once_and_acts() {
    let tg = TelegramDouble::start().await;
    let mut env = tg.daemon_env(&ALLOWED.to_string());
    env.push(("ORCH_TELEGRAM_UPDATES".into(), "webhook".into()));
    env.push(("ORCH_TELEGRAM_WEBHOOK_SECRET".into(), "hook-secret".into()));
    let w = world("", &env_refs(&env)).await;
    let db = Db::open(&w.db_path()).await.unwrap();
    let (_item, task) = w.task_at(&db, 4, Stage::Development).await;
    let daemon = w.start().await;
    let signer = Signer::from_bot_token(&Secret::new(TOKEN));
    let data = signer.encode(GateAction::Stop, task.id, task.stage_version, "");
    let update = json!({
        "update_id": 7001,
        "callback_query": {"id": "cb-7001", "from": {"id": ALLOWED}, "message": {"message_id": 1}, "data": data}
    });
    let http = reqwest::Client::new();
    let post = |secret: &'static str| {
        http.post(daemon.url("/webhooks/telegram"))
            .header("X-Telegram-Bot-Api-Secret-Token", secret)
            .json(&update)
            .send()
    };
    assert_eq!(post("wrong").await.unwrap().status(), 401);
    assert!(
        telegram::update(db.reader(), 7001).await.unwrap().is_none(),
        "nothing stored"
    );
    assert_eq!(post("hook-secret").await.unwrap().status(), 200);
    let again: serde_json::Value = post("hook-secret").await.unwrap().json().await.unwrap();
    assert_eq!(again["duplicate"], true);
    until("the task is cancelled", 30, || async {
        support::daemon::task(&db, task.id).await.stage == Stage::Cancelled
    })
    .await;
    // The outcome is written after the action commits, so wait for it too.
    until("the update's outcome is recorded", 10, || async {
        !outcome(&db, 7001).await.is_empty()
    })
    .await;
    assert!(
        outcome(&db, 7001).await.starts_with("done"),
        "{}",
        outcome(&db, 7001).await
    );
    assert!(
        tg.calls_of("getUpdates").is_empty(),
        "webhook mode does not poll"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_takes_its_reason_from_a_reply_to_the_card() {
    let tg = TelegramDouble::start().await;
    let env = tg.daemon_env(&ALLOWED.to_string());
    let w = world("", &env_refs(&env)).await;
    let db = Db::open(&w.db_path()).await.unwrap();
    let (item, task) = w.task_at(&db, 5, Stage::Analysis).await;
    let daemon = w.start().await;
    let card = 555;
    // A stranger's reply is not a reason; the allowed user's is.
    let stranger = tg.reply(STRANGER, card, "ship it anyway");
    let reply = tg.reply(ALLOWED, card, "The BRD misses the rollback case.");
    until("the replies are stored", 20, || async {
        !outcome(&db, reply).await.is_empty() && !outcome(&db, stranger).await.is_empty()
    })
    .await;
    let data = Signer::from_bot_token(&Secret::new(TOKEN)).encode(
        GateAction::Reject,
        task.id,
        task.stage_version,
        "",
    );
    let tap = tg.tap(ALLOWED, card, &data);
    until("the Reject is processed", 20, || async {
        !outcome(&db, tap).await.is_empty()
    })
    .await;
    assert!(
        outcome(&db, tap).await.starts_with("done"),
        "{}",
        outcome(&db, tap).await
    );
    let job = jobs::active_for_task(db.reader(), task.id)
        .await
        .unwrap()
        .expect("the analyst is queued again");
    assert_eq!(job.role, "analyst");
    assert_eq!(
        job.context,
        "Rejected in Telegram: The BRD misses the rollback case."
    );
    assert!(
        outcome(&db, reply).await.starts_with("used"),
        "{}",
        outcome(&db, reply).await
    );
    assert!(!outcome(&db, stranger).await.starts_with("used"));
    assert!(
        w.plane.states_of(&item).contains(&"Rejected".to_string()),
        "{:?}",
        w.plane.states_of(&item)
    );
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bump_mode_through_the_daemon_keeps_one_card_the_newest() {
    let tg = TelegramDouble::start().await;
    let mut env = tg.daemon_env(&ALLOWED.to_string());
    env.push(("ORCH_TRACKER_MODE".into(), "bump".into()));
    let w = world("", &env_refs(&env)).await;
    let db = Db::open(&w.db_path()).await.unwrap();
    let (item, task) = w.task_at(&db, 6, Stage::Development).await;
    let mut daemon = w.start().await;
    until("the card is sent", 20, || async {
        tg.button("DEMO-6", "STOP").is_some()
    })
    .await;
    let (first, stop) = tg.button("DEMO-6", "STOP").unwrap();
    tg.tap(ALLOWED, first, &stop);
    until("the card shows Cancelled", 30, || async {
        tg.cards_of("DEMO-6")
            .iter()
            .any(|m| m.text.contains("⛔ Cancelled"))
    })
    .await;
    let live = tg.cards_of("DEMO-6");
    assert_eq!(live.len(), 1, "{live:?}");
    assert_ne!(live[0].id, first, "re-sent as the newest message");
    assert!(live[0].silent);
    assert!(live[0].buttons.is_empty());
    let sends = tg
        .calls_of("sendMessage")
        .iter()
        .filter(|b| b["text"].as_str().unwrap_or("").starts_with("DEMO-6 ·"))
        .count();
    let deletes = tg.calls_of("deleteMessage").len();
    assert_eq!(
        sends,
        deletes + 1,
        "one new message per update, the old one deleted each time"
    );
    assert_eq!(
        support::daemon::task(&db, task.id).await.stage,
        Stage::Cancelled
    );
    assert!(w.plane.states_of(&item).contains(&"STOP".to_string()));
    assert_eq!(w.plane.state_of(&item), "Cancelled");
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    daemon.exited(20).await;
}
