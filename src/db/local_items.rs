//! `local_items`, `local_comments` (B-10): the built-in tracker's state.
//!
//! A person's status change is stored together with its delivery in
//! `webhook_deliveries` (source `local`), in one IMMEDIATE transaction: the
//! intake worker acts on it exactly as on a Plane webhook, and a crash
//! after the answer loses nothing. The pipeline's own status writes
//! ([`set_status`]) store no delivery, so they can never come back as an
//! input: the local tracker has no echoes to suppress.

use serde::Serialize;
use sqlx::{Executor, FromRow, Sqlite};

use super::deliveries::{self, Inserted, NewDelivery};
use super::{Db, now_ms};

/// The `source` of a person's status change in `webhook_deliveries`.
pub const SOURCE: &str = "local";

#[derive(Debug, Clone, FromRow, Serialize, PartialEq, Eq)]
pub struct ItemRow {
    pub id: i64,
    pub project: String,
    pub seq: i64,
    pub work_item: String,
    pub title: String,
    pub description: String,
    /// A status key of `[plane].statuses`.
    pub status: String,
    pub revision: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, FromRow, Serialize, PartialEq, Eq)]
pub struct CommentRow {
    pub id: i64,
    pub item_id: i64,
    /// `person` or `orchestrator`.
    pub author: String,
    #[serde(skip)]
    pub idempotency_key: Option<String>,
    pub html: String,
    pub created_at: i64,
}

/// What a person asked for, as the delivery body the intake reads back.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct PersonStatus {
    pub project: String,
    pub work_item: String,
    pub title: String,
    pub description: String,
    pub status: String,
    pub old_status: Option<String>,
}

/// What a person's status change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    /// Stored with its delivery; the intake worker acts on it.
    Queued { item: ItemRow, delivery: i64 },
    /// The item already had that status: nothing stored, nothing to do
    /// (a tracker sends no event for a status that did not change).
    Unchanged(ItemRow),
}

/// A new work item `<prefix>-<n>` of `project` at `status`, with the
/// delivery of that status (a work item created straight into To Analyse
/// counts as set to it, as in Plane).
pub async fn create(
    db: &Db,
    project: &str,
    prefix: &str,
    title: &str,
    description: &str,
    status: &str,
) -> Result<(ItemRow, i64), sqlx::Error> {
    let mut tx = db.begin_write().await?;
    let seq: i64 =
        sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) + 1 FROM local_items WHERE project = ?")
            .bind(project)
            .fetch_one(&mut *tx)
            .await?;
    let now = now_ms();
    let item: ItemRow = sqlx::query_as(
        "INSERT INTO local_items
             (project, seq, work_item, title, description, status, revision, created_at, updated_at)
         VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?) RETURNING *",
    )
    .bind(project)
    .bind(seq)
    .bind(format!("{prefix}-{seq}"))
    .bind(title)
    .bind(description)
    .bind(status)
    .bind(now)
    .bind(now)
    .fetch_one(&mut *tx)
    .await?;
    let delivery = store_delivery(&mut tx, &item, None).await?;
    tx.commit().await?;
    Ok((item, delivery))
}

/// A person sets `status` on `work_item`; `None` when there is no such item.
pub async fn set_by_person(
    db: &Db,
    work_item: &str,
    status: &str,
) -> Result<Option<Changed>, sqlx::Error> {
    let mut tx = db.begin_write().await?;
    let Some(old) = by_work_item(&mut *tx, work_item).await? else {
        return Ok(None);
    };
    if old.status == status {
        return Ok(Some(Changed::Unchanged(old)));
    }
    let item: ItemRow = sqlx::query_as(
        "UPDATE local_items SET status = ?, revision = revision + 1, updated_at = ?
         WHERE id = ? RETURNING *",
    )
    .bind(status)
    .bind(now_ms())
    .bind(old.id)
    .fetch_one(&mut *tx)
    .await?;
    let delivery = store_delivery(&mut tx, &item, Some(old.status)).await?;
    tx.commit().await?;
    Ok(Some(Changed::Queued { item, delivery }))
}

/// The delivery of the item's current status, named by its revision: a
/// repeat of the same change (a retried transaction) is a duplicate.
async fn store_delivery(
    tx: &mut sqlx::SqliteConnection,
    item: &ItemRow,
    old_status: Option<String>,
) -> Result<i64, sqlx::Error> {
    let body = PersonStatus {
        project: item.project.clone(),
        work_item: item.work_item.clone(),
        title: item.title.clone(),
        description: item.description.clone(),
        status: item.status.clone(),
        old_status,
    };
    let bytes = serde_json::to_vec(&body).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let delivery_id = format!("{}#{}", item.work_item, item.revision);
    let row = NewDelivery {
        source: SOURCE,
        delivery_id: &delivery_id,
        event: "status",
        content_key: None,
        headers: "{}",
        body: &bytes,
        done_outcome: None,
    };
    match deliveries::insert_in(tx, &row).await? {
        Inserted::New(id) | Inserted::DuplicateId(id) | Inserted::DuplicateContent(id) => Ok(id),
    }
}

/// The pipeline's own status write: no delivery, so never an input.
/// `false` when there is no such item.
pub async fn set_status<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    work_item: &str,
    status: &str,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query("UPDATE local_items SET status = ?, updated_at = ? WHERE work_item = ?")
        .bind(status)
        .bind(now_ms())
        .bind(work_item)
        .execute(ex)
        .await?;
    Ok(r.rows_affected() == 1)
}

pub async fn by_work_item<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    work_item: &str,
) -> Result<Option<ItemRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM local_items WHERE work_item = ?")
        .bind(work_item)
        .fetch_optional(ex)
        .await
}

/// Every item, newest first (the board's tracker view).
pub async fn all<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
) -> Result<Vec<ItemRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM local_items ORDER BY id DESC")
        .fetch_all(ex)
        .await
}

/// Add a comment; with a key, once (a repeat is a no-op). `false` when there
/// is no such item.
pub async fn add_comment(
    db: &Db,
    work_item: &str,
    author: &str,
    idempotency_key: Option<&str>,
    html: &str,
) -> Result<bool, sqlx::Error> {
    let Some(item) = by_work_item(db.writer(), work_item).await? else {
        return Ok(false);
    };
    sqlx::query(
        "INSERT INTO local_comments (item_id, author, idempotency_key, html, created_at)
         VALUES (?, ?, ?, ?, ?) ON CONFLICT (item_id, idempotency_key) DO NOTHING",
    )
    .bind(item.id)
    .bind(author)
    .bind(idempotency_key)
    .bind(html)
    .bind(now_ms())
    .execute(db.writer())
    .await?;
    Ok(true)
}

/// The item's comments, oldest first.
pub async fn comments<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    item_id: i64,
) -> Result<Vec<CommentRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM local_comments WHERE item_id = ? ORDER BY id")
        .bind(item_id)
        .fetch_all(ex)
        .await
}

/// The newest comment a person wrote on the item (a rejection's reason).
pub async fn latest_person_comment<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    work_item: &str,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT c.html FROM local_comments c JOIN local_items i ON i.id = c.item_id
         WHERE i.work_item = ? AND c.author = 'person' ORDER BY c.id DESC LIMIT 1",
    )
    .bind(work_item)
    .fetch_optional(ex)
    .await
}
