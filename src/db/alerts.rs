//! `alert_dedup` (F-27): the state of `notify::Dedup`, one row per dedup key.

use serde::Serialize;
use sqlx::{Executor, FromRow, Sqlite};

#[derive(Debug, Clone, FromRow, Serialize, PartialEq, Eq)]
pub struct AlertRow {
    #[serde(skip)]
    pub dedup_key: String,
    pub kind: String,
    pub work_item: Option<String>,
    pub alert_key: Option<String>,
    /// When the last alert of this key was sent (ms).
    pub window_start: i64,
    /// Repeats suppressed since `window_start`.
    pub suppressed: i64,
    pub sent_total: i64,
    pub suppressed_total: i64,
    /// The text of the last alert sent.
    pub last_message: String,
    /// The last occurrence, sent or suppressed (ms).
    pub last_seen: i64,
}

pub async fn get<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    dedup_key: &str,
) -> Result<Option<AlertRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM alert_dedup WHERE dedup_key = ?")
        .bind(dedup_key)
        .fetch_optional(ex)
        .await
}

/// What a sent alert records: a new window starts at `now`.
pub struct Sent<'a> {
    pub dedup_key: &'a str,
    pub kind: &'a str,
    pub work_item: Option<&'a str>,
    pub alert_key: Option<&'a str>,
    pub message: &'a str,
    pub now: i64,
}

pub async fn record_sent<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    s: &Sent<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO alert_dedup (dedup_key, kind, work_item, alert_key, window_start, suppressed,
                                  sent_total, suppressed_total, last_message, last_seen)
         VALUES (?, ?, ?, ?, ?, 0, 1, 0, ?, ?)
         ON CONFLICT (dedup_key) DO UPDATE SET window_start = excluded.window_start,
             suppressed = 0, sent_total = sent_total + 1,
             last_message = excluded.last_message, last_seen = excluded.last_seen",
    )
    .bind(s.dedup_key)
    .bind(s.kind)
    .bind(s.work_item)
    .bind(s.alert_key)
    .bind(s.now)
    .bind(s.message)
    .bind(s.now)
    .execute(ex)
    .await?;
    Ok(())
}

pub async fn record_suppressed<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    dedup_key: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE alert_dedup SET suppressed = suppressed + 1,
             suppressed_total = suppressed_total + 1, last_seen = ?
         WHERE dedup_key = ?",
    )
    .bind(now)
    .bind(dedup_key)
    .execute(ex)
    .await?;
    Ok(())
}

/// Forget keys not seen since `before` (their window is long over).
pub async fn prune<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    before: i64,
) -> Result<u64, sqlx::Error> {
    let r = sqlx::query("DELETE FROM alert_dedup WHERE last_seen < ?")
        .bind(before)
        .execute(ex)
        .await?;
    Ok(r.rows_affected())
}

/// The most recently seen keys, newest first (the `alerts` block of `/queue`).
pub async fn recent<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    limit: i64,
) -> Result<Vec<AlertRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM alert_dedup ORDER BY last_seen DESC, rowid DESC LIMIT ?")
        .bind(limit)
        .fetch_all(ex)
        .await
}
