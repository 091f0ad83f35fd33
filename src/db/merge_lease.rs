//! `merge_lease` (F-17): one task per project holds it from the merge gate
//! until deploy → done. The merge gate takes it; STOP reads it (a held lease
//! plus a running actor is a critical window, F-25) and releases it when the
//! task is cancelled.

use sqlx::{Executor, Sqlite};

/// The task holding a project's merge lease, if any.
pub async fn holder<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    project: &str,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT task_id FROM merge_lease WHERE project = ?")
        .bind(project)
        .fetch_optional(ex)
        .await
}

/// Take the project's lease for `task_id` unless another task holds it.
/// True when `task_id` holds it afterwards (taken now, or already its own:
/// a re-queued merge gate of the same task takes it again).
pub async fn acquire<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    project: &str,
    task_id: i64,
    now: i64,
) -> Result<bool, sqlx::Error> {
    // One statement, so any executor works: the no-op update on conflict
    // keeps the holder and lets RETURNING report who it is.
    let holder: i64 = sqlx::query_scalar(
        "INSERT INTO merge_lease (project, task_id, acquired_at) VALUES (?, ?, ?)
         ON CONFLICT (project) DO UPDATE SET task_id = merge_lease.task_id
         RETURNING task_id",
    )
    .bind(project)
    .bind(task_id)
    .bind(now)
    .fetch_one(ex)
    .await?;
    Ok(holder == task_id)
}

/// Release the project's lease if `task_id` holds it; a lease of another
/// task is never touched. True when a row was deleted.
pub async fn release<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    project: &str,
    task_id: i64,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query("DELETE FROM merge_lease WHERE project = ? AND task_id = ?")
        .bind(project)
        .bind(task_id)
        .execute(ex)
        .await?;
    Ok(r.rows_affected() == 1)
}
