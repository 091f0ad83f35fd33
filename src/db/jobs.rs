//! `jobs`: the queue of agent work (F-11). queued → running → done |
//! failed | cancelled. Enqueue is idempotent (one active job per task and
//! stage, enforced by a partial unique index).

use serde::Serialize;
use sqlx::{Executor, FromRow, Sqlite};

use super::{Db, now_ms};
use crate::domain::Stage;

#[derive(Debug, Clone, FromRow, Serialize, PartialEq, Eq)]
pub struct JobRow {
    pub id: i64,
    pub task_id: i64,
    pub stage: Stage,
    pub role: String,
    pub status: String,
    pub attempt: i64,
    pub boot_id: Option<String>,
    pub error: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub updated_at: i64,
    pub context: String,
    pub claimed_by: Option<String>,
    pub pgid: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    New(i64),
    /// An active job for this task and stage already exists.
    Existing(i64),
}

impl Enqueued {
    pub fn id(&self) -> i64 {
        match self {
            Enqueued::New(id) | Enqueued::Existing(id) => *id,
        }
    }
}

/// Queue a job for `task` at `stage` unless one is already queued or running.
pub async fn enqueue(
    db: &Db,
    task_id: i64,
    stage: Stage,
    role: &str,
    attempt: i64,
    context: &str,
) -> Result<Enqueued, sqlx::Error> {
    let now = now_ms();
    let mut tx = db.begin_write().await?;
    let existing: Option<i64> = sqlx::query_scalar(
        "SELECT id FROM jobs WHERE task_id = ? AND stage = ? AND status IN ('queued','running')",
    )
    .bind(task_id)
    .bind(stage)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(id) = existing {
        return Ok(Enqueued::Existing(id));
    }
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO jobs (task_id, stage, role, status, attempt, context, created_at, updated_at)
         VALUES (?, ?, ?, 'queued', ?, ?, ?, ?) RETURNING id",
    )
    .bind(task_id)
    .bind(stage)
    .bind(role)
    .bind(attempt)
    .bind(context)
    .bind(now)
    .bind(now)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Enqueued::New(id))
}

pub async fn get<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    id: i64,
) -> Result<Option<JobRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM jobs WHERE id = ?")
        .bind(id)
        .fetch_optional(ex)
        .await
}

pub async fn for_task<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    task_id: i64,
) -> Result<Vec<JobRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM jobs WHERE task_id = ? ORDER BY id")
        .bind(task_id)
        .fetch_all(ex)
        .await
}

/// The queued or running job of a task, if any.
pub async fn active_for_task<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    task_id: i64,
) -> Result<Option<JobRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM jobs WHERE task_id = ? AND status IN ('queued','running') ORDER BY id LIMIT 1")
        .bind(task_id)
        .fetch_optional(ex)
        .await
}

/// Move one job between states only from the state the caller saw (a CAS
/// on status): a late or duplicate finisher changes nothing.
pub async fn transition<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    id: i64,
    from: &str,
    to: &str,
    error: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let now = now_ms();
    let r = sqlx::query(
        "UPDATE jobs SET status = ?, error = COALESCE(?, error), updated_at = ?,
                finished_at = CASE WHEN ? IN ('done','failed','cancelled') THEN ? ELSE finished_at END
         WHERE id = ? AND status = ?",
    )
    .bind(to)
    .bind(error)
    .bind(now)
    .bind(to)
    .bind(now)
    .bind(id)
    .bind(from)
    .execute(ex)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Cancel every queued or running job of a task (STOP): terminal, never
/// requeued. Returns the jobs that were running (their groups need a signal).
pub async fn cancel_all_for_task(
    db: &Db,
    task_id: i64,
    reason: &str,
) -> Result<Vec<JobRow>, sqlx::Error> {
    let mut tx = db.begin_write().await?;
    let running: Vec<JobRow> =
        sqlx::query_as("SELECT * FROM jobs WHERE task_id = ? AND status = 'running'")
            .bind(task_id)
            .fetch_all(&mut *tx)
            .await?;
    let now = now_ms();
    sqlx::query(
        "UPDATE jobs SET status = 'cancelled', error = ?, finished_at = ?, updated_at = ?
         WHERE task_id = ? AND status IN ('queued','running')",
    )
    .bind(reason)
    .bind(now)
    .bind(now)
    .bind(task_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(running)
}

/// (status, count) for every status present.
pub async fn count_by_status<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT status, COUNT(*) FROM jobs GROUP BY status ORDER BY status")
        .fetch_all(ex)
        .await
}

#[derive(Debug, Clone, FromRow, Serialize)]
pub struct ActiveJob {
    pub id: i64,
    pub work_item: String,
    pub stage: String,
    pub role: String,
    pub status: String,
    pub attempt: i64,
    pub created_at: i64,
    pub started_at: Option<i64>,
}

pub async fn active<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
) -> Result<Vec<ActiveJob>, sqlx::Error> {
    sqlx::query_as(
        "SELECT j.id, t.work_item, j.stage, j.role, j.status, j.attempt, j.created_at, j.started_at
         FROM jobs j JOIN tasks t ON t.id = j.task_id
         WHERE j.status IN ('queued','running') ORDER BY j.id",
    )
    .fetch_all(ex)
    .await
}
