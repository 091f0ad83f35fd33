//! `plane_outbox` and `daemon_identity` (migration 0008, issue 11): Plane
//! writes queued to be sent later, in order per work item.

use sqlx::SqlitePool;

use super::now_ms;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxRow {
    pub id: i64,
    pub project: String,
    pub tracker_project_id: String,
    pub issue_id: String,
    pub work_item: String,
    pub op: String,
    pub status_key: Option<String>,
    pub external_id: Option<String>,
    pub html: Option<String>,
    pub attempts: i64,
}

/// A write to queue.
#[derive(Debug, Clone)]
pub enum Write<'a> {
    Status { key: &'a str },
    Comment { external_id: &'a str, html: &'a str },
}

pub struct Target<'a> {
    pub project: &'a str,
    pub tracker_project_id: &'a str,
    pub issue_id: &'a str,
    pub work_item: &'a str,
}

pub async fn enqueue(pool: &SqlitePool, t: &Target<'_>, w: &Write<'_>) -> sqlx::Result<i64> {
    let (op, key, ext, html) = match w {
        Write::Status { key } => ("set_status", Some(*key), None, None),
        Write::Comment { external_id, html } => {
            ("add_comment", None, Some(*external_id), Some(*html))
        }
    };
    sqlx::query_scalar(
        "INSERT INTO plane_outbox
             (project, tracker_project_id, issue_id, work_item, op, status_key, external_id, html, created_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
    )
    .bind(t.project)
    .bind(t.tracker_project_id)
    .bind(t.issue_id)
    .bind(t.work_item)
    .bind(op)
    .bind(key)
    .bind(ext)
    .bind(html)
    .bind(now_ms())
    .fetch_one(pool)
    .await
}

/// Does the work item have a write waiting? (A new write then queues
/// behind it, so the order per work item holds.)
pub async fn has_pending(pool: &SqlitePool, issue_id: &str) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM plane_outbox WHERE issue_id = ? AND state = 'pending')",
    )
    .bind(issue_id)
    .fetch_one(pool)
    .await
}

/// The oldest pending write of each work item whose turn has come, oldest
/// first. A work item whose oldest write waits for its retry time is left
/// out whole: its later writes wait behind it.
pub async fn heads(pool: &SqlitePool, limit: i64) -> sqlx::Result<Vec<OutboxRow>> {
    sqlx::query_as(
        "SELECT o.id, o.project, o.tracker_project_id, o.issue_id, o.work_item, o.op,
                o.status_key, o.external_id, o.html, o.attempts
         FROM plane_outbox o
         WHERE o.state = 'pending' AND o.next_attempt_at <= ?
           AND o.id = (SELECT MIN(p.id) FROM plane_outbox p
                       WHERE p.issue_id = o.issue_id AND p.state = 'pending')
         ORDER BY o.id LIMIT ?",
    )
    .bind(now_ms())
    .bind(limit)
    .fetch_all(pool)
    .await
}

pub async fn mark_sent(pool: &SqlitePool, id: i64) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE plane_outbox SET state = 'sent', sent_at = ?, attempts = attempts + 1 WHERE id = ?",
    )
    .bind(now_ms())
    .bind(id)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn mark_failed(pool: &SqlitePool, id: i64, error: &str) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE plane_outbox SET state = 'failed', last_error = ?, attempts = attempts + 1 WHERE id = ?",
    )
    .bind(error)
    .bind(id)
    .execute(pool)
    .await?;
    Ok(())
}

/// Not sent this time (transient): try again at `next_at`.
pub async fn retry_later(
    pool: &SqlitePool,
    id: i64,
    error: &str,
    next_at: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE plane_outbox SET last_error = ?, attempts = attempts + 1, next_attempt_at = ? WHERE id = ?",
    )
    .bind(error)
    .bind(next_at)
    .bind(id)
    .execute(pool)
    .await?;
    Ok(())
}

/// Sent rows older than `before` are history nobody reads: removed.
pub async fn prune_sent(pool: &SqlitePool, before: i64) -> sqlx::Result<u64> {
    Ok(
        sqlx::query("DELETE FROM plane_outbox WHERE state = 'sent' AND sent_at < ?")
            .bind(before)
            .execute(pool)
            .await?
            .rows_affected(),
    )
}

/// (pending, sent, failed) counts, for `/queue`.
pub async fn counts(pool: &SqlitePool) -> sqlx::Result<(i64, i64, i64)> {
    sqlx::query_as(
        "SELECT COALESCE(SUM(state = 'pending'), 0), COALESCE(SUM(state = 'sent'), 0),
                COALESCE(SUM(state = 'failed'), 0) FROM plane_outbox",
    )
    .fetch_one(pool)
    .await
}

/// This database's identity (one row, written by migration 0008).
pub async fn instance(pool: &SqlitePool) -> sqlx::Result<String> {
    sqlx::query_scalar("SELECT instance FROM daemon_identity WHERE id = 1")
        .fetch_one(pool)
        .await
}
