//! The live card's transport (F-26) against the Telegram double: one card
//! per task edited in place; bump mode deletes and re-sends silently with at
//! most one new message per update; "message is not modified" is success;
//! "message to edit not found" sends a new card and repoints; a 429 asks to
//! wait and changes nothing; any other error is retried on the next update.

mod support;

use std::time::Duration;

use orchestrator::clients::telegram::Bot;
use orchestrator::config::{Secret, TrackerMode};
use orchestrator::db::Db;
use orchestrator::db::tasks::{self, NewTask};
use orchestrator::db::telegram;
use orchestrator::domain::Stage;
use orchestrator::loops::cards::{Cards, Synced};
use orchestrator::notify::callback::Signer;
use orchestrator::notify::card::Lang;
use serde_json::json;
use support::telegram_double::{CHAT, TOKEN, TelegramDouble};

struct Env {
    _dir: tempfile::TempDir,
    db: Db,
    tg: TelegramDouble,
}

async fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("o.db")).await.unwrap();
    Env {
        _dir: dir,
        db,
        tg: TelegramDouble::start().await,
    }
}

impl Env {
    fn cards(&self, mode: TrackerMode) -> Cards {
        Cards {
            db: self.db.clone(),
            bot: Bot::new(&self.tg.base_url(), Secret::new(TOKEN)),
            chat_id: CHAT.into(),
            mode,
            lang: Lang::En,
            signer: Signer::from_bot_token(&Secret::new(TOKEN)),
            stats: Default::default(),
        }
    }

    async fn task(&self, wi: &str, stage: Stage) -> i64 {
        let id = tasks::insert(
            self.db.writer(),
            &NewTask {
                work_item: wi.into(),
                project: "demo".into(),
                title: "Add login".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        self.set_stage(id, stage).await;
        id
    }

    /// Test set-up moves the stage directly (like the engine tests).
    async fn set_stage(&self, id: i64, stage: Stage) {
        sqlx::query("UPDATE tasks SET stage = ?, stage_version = stage_version + 1 WHERE id = ?")
            .bind(stage)
            .bind(id)
            .execute(self.db.writer())
            .await
            .unwrap();
    }

    async fn message_id(&self, id: i64) -> i64 {
        telegram::card(self.db.reader(), id)
            .await
            .unwrap()
            .unwrap()
            .message_id
            .unwrap()
    }
}

#[tokio::test]
async fn edit_mode_keeps_one_card_and_handles_not_modified_not_found_429_and_errors() {
    let e = env().await;
    let cards = e.cards(TrackerMode::Edit);
    let id = e.task("DEMO-1", Stage::Analysis).await;

    assert_eq!(cards.sync(id).await.unwrap(), Synced::Sent);
    let first = e.message_id(id).await;
    assert!(e.tg.cards_of("DEMO-1")[0].text.contains("⏳ Analysis"));
    // Nothing changed: no call at all.
    assert_eq!(cards.sync(id).await.unwrap(), Synced::Unchanged);
    assert_eq!(e.tg.calls_of("editMessageText").len(), 0);

    // The stage moves: the same message is edited.
    e.set_stage(id, Stage::Architecture).await;
    assert_eq!(cards.sync(id).await.unwrap(), Synced::Edited);
    let live = e.tg.cards_of("DEMO-1");
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].id, first);
    assert!(
        live[0].text.contains("✅ Analysis\n⏳ Architecture"),
        "{}",
        live[0].text
    );

    // "message is not modified" (the card already shows it, our record was
    // lost): success, recorded, no new message.
    sqlx::query("UPDATE telegram_cards SET text_hash = '' WHERE task_id = ?")
        .bind(id)
        .execute(e.db.writer())
        .await
        .unwrap();
    assert_eq!(cards.sync(id).await.unwrap(), Synced::Edited);
    assert_eq!(cards.sync(id).await.unwrap(), Synced::Unchanged);
    assert_eq!(e.tg.live().len(), 1);

    // 429: nothing changes, the wait is Telegram's; the next sync edits.
    e.set_stage(id, Stage::Development).await;
    e.tg.rate_limit_next("editMessageText", 3);
    assert_eq!(
        cards.sync(id).await.unwrap(),
        Synced::RetryAfter(Duration::from_secs(3))
    );
    assert_eq!(cards.sync(id).await.unwrap(), Synced::Edited);
    assert!(e.tg.cards_of("DEMO-1")[0].text.contains("⏳ Development"));

    // Any other error: recorded on the card, retried on the next update.
    e.set_stage(id, Stage::Review).await;
    e.tg.fail_next(
        "editMessageText",
        400,
        json!({"ok": false, "error_code": 400, "description": "Bad Request: chat not found"}),
    );
    assert!(
        matches!(cards.sync(id).await.unwrap(), Synced::Failed(m) if m.contains("chat not found"))
    );
    let row = telegram::card(e.db.reader(), id).await.unwrap().unwrap();
    assert!(row.last_error.unwrap().contains("chat not found"));
    assert_eq!(cards.sync(id).await.unwrap(), Synced::Edited);

    // Someone deleted the card: a new one, and the record points at it.
    e.tg.delete_by_hand(first);
    e.set_stage(id, Stage::Testing).await;
    assert_eq!(cards.sync(id).await.unwrap(), Synced::Sent);
    let live = e.tg.cards_of("DEMO-1");
    assert_eq!(live.len(), 1);
    assert_ne!(live[0].id, first);
    assert_eq!(e.message_id(id).await, live[0].id);
    assert!(!e.tg.lock().calls.iter().any(|(m, _)| m == "deleteMessage"));

    // A terminal card is final: no more syncs pick it up.
    e.set_stage(id, Stage::Done).await;
    assert_eq!(cards.sync(id).await.unwrap(), Synced::Edited);
    assert!(
        telegram::tasks_to_sync(e.db.reader())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(e.tg.lock().wrong_token_calls, 0);
}

#[tokio::test]
async fn bump_mode_deletes_then_resends_silently_one_new_message_per_update() {
    let e = env().await;
    let cards = e.cards(TrackerMode::Bump);
    let id = e.task("DEMO-2", Stage::Development).await;
    assert_eq!(cards.sync(id).await.unwrap(), Synced::Sent);
    let first = e.message_id(id).await;

    e.set_stage(id, Stage::Review).await;
    let sends = e.tg.calls_of("sendMessage").len();
    assert_eq!(cards.sync(id).await.unwrap(), Synced::Sent);
    assert_eq!(
        e.tg.calls_of("sendMessage").len(),
        sends + 1,
        "one new message"
    );
    let live = e.tg.cards_of("DEMO-2");
    assert_eq!(live.len(), 1, "the old one was deleted");
    assert!(live[0].silent, "re-sent silently");
    assert_ne!(live[0].id, first);
    assert_eq!(e.message_id(id).await, live[0].id);

    // The delete fails: the send still happens (the delete never gates it).
    let second = live[0].id;
    e.set_stage(id, Stage::Testing).await;
    e.tg.fail_next(
        "deleteMessage",
        400,
        json!({"ok": false, "error_code": 400, "description": "Bad Request: message can't be deleted for everyone"}),
    );
    assert_eq!(cards.sync(id).await.unwrap(), Synced::Sent);
    let newest = e.message_id(id).await;
    assert_ne!(newest, second);
    assert!(e.tg.cards_of("DEMO-2").iter().any(|m| m.id == newest));

    // The send fails: the record keeps the old id (never repointed at
    // nothing); the next update deletes (already gone: ignored) and sends
    // once.
    e.set_stage(id, Stage::DeployStaging).await;
    e.tg.fail_next(
        "sendMessage",
        500,
        json!({"ok": false, "error_code": 500, "description": "Internal Server Error"}),
    );
    let sends = e.tg.calls_of("sendMessage").len();
    assert!(matches!(cards.sync(id).await.unwrap(), Synced::Failed(_)));
    assert_eq!(e.message_id(id).await, newest);
    assert_eq!(cards.sync(id).await.unwrap(), Synced::Sent);
    assert_eq!(
        e.tg.calls_of("sendMessage").len(),
        sends + 2,
        "one per update"
    );
    let live = e.tg.cards_of("DEMO-2");
    assert!(
        live.iter()
            .any(|m| m.text.contains("⏳ Deploying (staging)"))
    );
    assert_eq!(e.message_id(id).await, live.last().unwrap().id);
}
