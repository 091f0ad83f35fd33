//! Alerts reach Telegram (F-27) through the daemon's one dedup layer
//! (`app::alert_channel`): sent once, repeats counted; a Telegram that
//! fails or never answers never blocks the sender.

mod support;

use std::time::Duration;

use orchestrator::app;
use orchestrator::db::Db;
use orchestrator::notify::{Alert, Notifier};
use serde_json::json;
use support::daemon::until;
use support::telegram_double::TelegramDouble;

fn alert(kind: &'static str, msg: &str) -> Alert {
    Alert {
        kind,
        work_item: Some("DEMO-1".into()),
        message: msg.into(),
        key: None,
    }
}

fn settings(
    dir: &std::path::Path,
    api: &str,
    tg: &TelegramDouble,
) -> orchestrator::config::Settings {
    let mut env = tg.daemon_env("");
    env.retain(|(k, _)| k != "ORCH_TELEGRAM_API_URL");
    env.push(("ORCH_TELEGRAM_API_URL".into(), api.into()));
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    support::settings_in(dir, &refs)
}

#[tokio::test]
async fn an_alert_goes_to_the_chat_once_and_repeats_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let tg = TelegramDouble::start().await;
    let s = settings(dir.path(), &tg.base_url(), &tg);
    let db = Db::open(&s.database_path()).await.unwrap();
    let alerts = app::alert_channel(&s, &db);
    alerts
        .alert(alert("hold", "merge_pr outcome unknown"))
        .await;
    alerts
        .alert(alert("hold", "merge_pr outcome unknown, again"))
        .await;
    until("the alert reaches the chat", 10, || async {
        !tg.live().is_empty()
    })
    .await;
    let live = tg.live();
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(live[0].text, "⚠️ hold · DEMO-1\nmerge_pr outcome unknown");
    assert!(!live[0].silent, "an alert notifies");

    // Telegram fails: the alert is in the log, the sender goes on.
    tg.fail_next(
        "sendMessage",
        500,
        json!({"ok": false, "error_code": 500, "description": "Internal Server Error"}),
    );
    alerts.alert(alert("disk_critical", "/ is 97% full")).await;
    alerts
        .alert(alert("build_cache_pruned", "reclaimed 3.2GB"))
        .await;
    until("the next alert still goes out", 10, || async {
        tg.live().len() == 2
    })
    .await;
}

#[tokio::test]
async fn a_telegram_that_never_answers_never_blocks_the_sender() {
    let dir = tempfile::tempdir().unwrap();
    let tg = TelegramDouble::start().await;
    // Accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", silent.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((c, _)) = silent.accept().await {
            held.push(c);
        }
    });
    let s = settings(dir.path(), &api, &tg);
    let db = Db::open(&s.database_path()).await.unwrap();
    let alerts = app::alert_channel(&s, &db);
    // Generous bound: this is about not waiting for Telegram at all (its
    // request timeout is 15 s), not about speed.
    tokio::time::timeout(Duration::from_secs(10), async {
        for i in 0..5 {
            alerts
                .alert(alert("effect_failed", &format!("try {i}")))
                .await;
        }
    })
    .await
    .expect("alerts returned without waiting for Telegram");
}
