//! `jobs`: the queue of agent work (F-11). The worker loop lands with the
//! agent-runs issue; `/queue` reads the counts already.

use sqlx::{Executor, Sqlite};

/// (status, count) for every status present.
pub async fn count_by_status<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT status, COUNT(*) FROM jobs GROUP BY status ORDER BY status")
        .fetch_all(ex)
        .await
}

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
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
