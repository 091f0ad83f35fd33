//! `telegram_cards` and `telegram_updates` (F-26, B-11).

use serde::Serialize;
use sqlx::{Executor, FromRow, Sqlite};

use super::now_ms;
use super::tasks::TERMINAL_SQL;

#[derive(Debug, Clone, FromRow, Serialize, PartialEq, Eq)]
pub struct CardRow {
    pub task_id: i64,
    pub chat_id: String,
    pub message_id: Option<i64>,
    pub text_hash: String,
    #[sqlx(rename = "final")]
    pub is_final: bool,
    pub sends: i64,
    pub edits: i64,
    pub last_error: Option<String>,
    pub updated_at: i64,
}

pub async fn card<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    task_id: i64,
) -> Result<Option<CardRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM telegram_cards WHERE task_id = ?")
        .bind(task_id)
        .fetch_optional(ex)
        .await
}

/// The card whose message is `message_id` (a reply to a card, a tap).
pub async fn card_by_message<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    message_id: i64,
) -> Result<Option<CardRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM telegram_cards WHERE message_id = ?")
        .bind(message_id)
        .fetch_optional(ex)
        .await
}

/// Tasks whose card may need a change: every live task that is not
/// terminal, and terminal tasks whose card does not show the end yet.
/// Terminal tasks without a card get none (they ended before Telegram was
/// configured, or long ago).
pub async fn tasks_to_sync<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
) -> Result<Vec<i64>, sqlx::Error> {
    let sql = format!(
        "SELECT t.id FROM tasks t LEFT JOIN telegram_cards c ON c.task_id = t.id
         WHERE (t.stage NOT IN {TERMINAL_SQL} AND t.stage <> 'created')
            OR (c.task_id IS NOT NULL AND c.final = 0)
         ORDER BY t.id"
    );
    sqlx::query_scalar(&sql).fetch_all(ex).await
}

/// Telegram accepted a new message for the card: repoint it. Only called
/// after a successful send, so the stored id always names a message that
/// exists (or existed).
pub async fn record_sent<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    task_id: i64,
    chat_id: &str,
    message_id: i64,
    text_hash: &str,
    is_final: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO telegram_cards (task_id, chat_id, message_id, text_hash, final, sends, updated_at)
         VALUES (?, ?, ?, ?, ?, 1, ?)
         ON CONFLICT (task_id) DO UPDATE SET chat_id = excluded.chat_id,
             message_id = excluded.message_id, text_hash = excluded.text_hash,
             final = excluded.final, sends = sends + 1, last_error = NULL,
             updated_at = excluded.updated_at",
    )
    .bind(task_id)
    .bind(chat_id)
    .bind(message_id)
    .bind(text_hash)
    .bind(is_final)
    .bind(now_ms())
    .execute(ex)
    .await?;
    Ok(())
}

/// The card's message now shows `text_hash` (an edit, or "not modified").
pub async fn record_edited<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    task_id: i64,
    text_hash: &str,
    is_final: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE telegram_cards SET text_hash = ?, final = ?, edits = edits + 1,
             last_error = NULL, updated_at = ? WHERE task_id = ?",
    )
    .bind(text_hash)
    .bind(is_final)
    .bind(now_ms())
    .bind(task_id)
    .execute(ex)
    .await?;
    Ok(())
}

/// An update of the card failed; the next sync tries again.
pub async fn record_error<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    task_id: i64,
    error: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE telegram_cards SET last_error = ?, updated_at = ? WHERE task_id = ?")
        .bind(error)
        .bind(now_ms())
        .bind(task_id)
        .execute(ex)
        .await?;
    Ok(())
}

#[derive(Debug, Clone, FromRow, Serialize, PartialEq, Eq)]
pub struct UpdateRow {
    pub update_id: i64,
    pub body: String,
    pub received_at: i64,
    pub processed_at: Option<i64>,
    pub outcome: Option<String>,
}

/// Store an update; `false` when its id was stored before (a redelivery).
pub async fn store_update<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    update_id: i64,
    body: &str,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "INSERT INTO telegram_updates (update_id, body, received_at) VALUES (?, ?, ?)
         ON CONFLICT (update_id) DO NOTHING",
    )
    .bind(update_id)
    .bind(body)
    .bind(now_ms())
    .execute(ex)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// The getUpdates offset: one past the largest stored update id.
pub async fn next_offset<'e>(ex: impl Executor<'e, Database = Sqlite>) -> Result<i64, sqlx::Error> {
    let max: Option<i64> = sqlx::query_scalar("SELECT MAX(update_id) FROM telegram_updates")
        .fetch_one(ex)
        .await?;
    Ok(max.map_or(0, |m| m + 1))
}

/// Stored updates not processed yet, oldest first.
pub async fn unprocessed<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
) -> Result<Vec<UpdateRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT * FROM telegram_updates WHERE processed_at IS NULL ORDER BY update_id LIMIT 100",
    )
    .fetch_all(ex)
    .await
}

/// Mark an update processed once: `false` when another processor was first.
pub async fn mark_processed<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    update_id: i64,
    outcome: &str,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE telegram_updates SET processed_at = ?, outcome = ?
         WHERE update_id = ? AND processed_at IS NULL",
    )
    .bind(now_ms())
    .bind(outcome)
    .bind(update_id)
    .execute(ex)
    .await?;
    Ok(r.rows_affected() == 1)
}

pub async fn update<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    update_id: i64,
) -> Result<Option<UpdateRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM telegram_updates WHERE update_id = ?")
        .bind(update_id)
        .fetch_optional(ex)
        .await
}

/// Every agent run of a task, oldest first (the card sums them, F-26).
pub async fn runs_for_task<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    task_id: i64,
) -> Result<Vec<super::runs::RunRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM agent_runs WHERE task_id = ? ORDER BY id")
        .bind(task_id)
        .fetch_all(ex)
        .await
}

/// What the task's done `merge_pr` effect recorded (the merge commit, or
/// "already in main").
pub async fn merge_result<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    task_id: i64,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT result FROM effects WHERE task_id = ? AND kind = 'merge_pr' AND state = 'done'
         ORDER BY id DESC LIMIT 1",
    )
    .bind(task_id)
    .fetch_optional(ex)
    .await
    .map(Option::flatten)
}

/// The newest reply to one of `message_ids` from one of `users` whose text
/// was not used yet (B-11: a Reject's reason).
pub async fn unused_reply<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    message_ids: &[i64],
    users: &[i64],
) -> Result<Option<(i64, String)>, sqlx::Error> {
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "SELECT update_id, body FROM telegram_updates
         WHERE json_extract(body, '$.message.reply_to_message.message_id') IS NOT NULL
           AND (outcome IS NULL OR outcome NOT LIKE 'used%')
         ORDER BY update_id DESC LIMIT 50",
    )
    .fetch_all(ex)
    .await?;
    for (id, body) in rows {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else {
            continue;
        };
        let m = &v["message"];
        let to = m["reply_to_message"]["message_id"].as_i64();
        let from = m["from"]["id"].as_i64();
        if let (Some(to), Some(from), Some(text)) = (to, from, m["text"].as_str())
            && message_ids.contains(&to)
            && users.contains(&from)
        {
            return Ok(Some((id, text.to_string())));
        }
    }
    Ok(None)
}

/// Record that a stored update's text was used (a rejection reason).
pub async fn mark_used<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    update_id: i64,
    what: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE telegram_updates SET outcome = ? WHERE update_id = ?")
        .bind(format!("used: {what}"))
        .bind(update_id)
        .execute(ex)
        .await?;
    Ok(())
}
