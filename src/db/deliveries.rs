//! `webhook_deliveries` (F-01, F-06, B-6): every accepted webhook, raw, kept
//! for durable dedup and replay. A delivery is stored once per delivery id
//! AND once per content key: Plane gives a retry a new delivery id, so the
//! id alone does not catch it.

use serde::Serialize;
use sqlx::{Executor, FromRow, Sqlite};

use super::{Db, now_ms};

#[derive(Debug, Clone, FromRow, Serialize, PartialEq, Eq)]
pub struct DeliveryRow {
    pub id: i64,
    pub source: String,
    pub delivery_id: String,
    pub event: String,
    pub content_key: Option<String>,
    /// JSON object of the headers that matter (event, delivery, signature...).
    pub headers: String,
    pub body: Vec<u8>,
    pub received_at: i64,
    pub processed_at: Option<i64>,
    pub outcome: Option<String>,
}

/// What to store for one accepted delivery.
#[derive(Debug, Clone)]
pub struct NewDelivery<'a> {
    pub source: &'a str,
    pub delivery_id: &'a str,
    pub event: &'a str,
    pub content_key: Option<&'a str>,
    pub headers: &'a str,
    pub body: &'a [u8],
    /// Set when nothing is left to do (an ignored event): the row is stored
    /// processed, with this outcome, and no worker picks it up.
    pub done_outcome: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    New(i64),
    /// Same source and delivery id seen before (a resend).
    DuplicateId(i64),
    /// Same content seen before under another delivery id (a Plane retry).
    DuplicateContent(i64),
}

/// Store a delivery unless its id or content key is already there. One
/// IMMEDIATE transaction: two concurrent copies cannot both be `New`.
pub async fn insert(db: &Db, d: &NewDelivery<'_>) -> Result<Inserted, sqlx::Error> {
    let mut tx = db.begin_write().await?;
    let inserted = insert_in(&mut tx, d).await?;
    tx.commit().await?;
    Ok(inserted)
}

/// [`insert`] inside the caller's write transaction: the local tracker
/// (B-10) stores a person's status change and its delivery in one commit.
pub async fn insert_in(
    tx: &mut sqlx::SqliteConnection,
    d: &NewDelivery<'_>,
) -> Result<Inserted, sqlx::Error> {
    let by_id: Option<i64> = sqlx::query_scalar(
        "SELECT id FROM webhook_deliveries WHERE source = ? AND delivery_id = ?",
    )
    .bind(d.source)
    .bind(d.delivery_id)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(id) = by_id {
        return Ok(Inserted::DuplicateId(id));
    }
    if let Some(key) = d.content_key {
        let by_content: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM webhook_deliveries WHERE source = ? AND content_key = ?",
        )
        .bind(d.source)
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(id) = by_content {
            return Ok(Inserted::DuplicateContent(id));
        }
    }
    let now = now_ms();
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO webhook_deliveries
             (source, delivery_id, event, content_key, headers, body, received_at, processed_at, outcome)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
    )
    .bind(d.source)
    .bind(d.delivery_id)
    .bind(d.event)
    .bind(d.content_key)
    .bind(d.headers)
    .bind(d.body)
    .bind(now)
    .bind(d.done_outcome.map(|_| now))
    .bind(d.done_outcome)
    .fetch_one(&mut *tx)
    .await?;
    Ok(Inserted::New(id))
}

pub async fn get<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    id: i64,
) -> Result<Option<DeliveryRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM webhook_deliveries WHERE id = ?")
        .bind(id)
        .fetch_optional(ex)
        .await
}

/// Every stored delivery with this delivery id (one per source at most).
pub async fn by_delivery_id<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    delivery_id: &str,
) -> Result<Vec<DeliveryRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM webhook_deliveries WHERE delivery_id = ? ORDER BY id")
        .bind(delivery_id)
        .fetch_all(ex)
        .await
}

/// Accepted and not processed yet, oldest first.
pub async fn pending<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    limit: i64,
) -> Result<Vec<DeliveryRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT * FROM webhook_deliveries WHERE processed_at IS NULL ORDER BY id LIMIT ?",
    )
    .bind(limit)
    .fetch_all(ex)
    .await
}

/// Record what processing did. `only_pending` keeps a late worker from
/// overwriting the outcome of a forced replay that ran meanwhile.
pub async fn mark_processed<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    id: i64,
    outcome: &str,
    only_pending: bool,
) -> Result<bool, sqlx::Error> {
    let sql = if only_pending {
        "UPDATE webhook_deliveries SET processed_at = ?, outcome = ? WHERE id = ? AND processed_at IS NULL"
    } else {
        "UPDATE webhook_deliveries SET processed_at = ?, outcome = ? WHERE id = ?"
    };
    let r = sqlx::query(sql)
        .bind(now_ms())
        .bind(outcome)
        .bind(id)
        .execute(ex)
        .await?;
    Ok(r.rows_affected() == 1)
}

pub async fn count<'e>(ex: impl Executor<'e, Database = Sqlite>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM webhook_deliveries")
        .fetch_one(ex)
        .await
}
