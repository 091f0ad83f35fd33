//! `transition_lease`: one row per task whose side-effectful region is owned.

use serde::Serialize;
use sqlx::{Executor, FromRow, Sqlite};

#[derive(Debug, Clone, FromRow, Serialize, PartialEq, Eq)]
pub struct LeaseRow {
    pub task_id: i64,
    pub owner_pid: i64,
    pub owner_start_time: i64,
    pub owner_boot_id: String,
    pub holder: String,
    pub actor: String,
    pub transition: String,
    pub acquired_at: i64,
}

pub async fn get<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    task_id: i64,
) -> Result<Option<LeaseRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM transition_lease WHERE task_id = ?")
        .bind(task_id)
        .fetch_optional(ex)
        .await
}

pub async fn all<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
) -> Result<Vec<LeaseRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM transition_lease ORDER BY acquired_at")
        .fetch_all(ex)
        .await
}

/// Insert, or replace a row the caller has judged stale.
pub async fn put<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    row: &LeaseRow,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO transition_lease (task_id, owner_pid, owner_start_time, owner_boot_id, holder, actor, transition, acquired_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (task_id) DO UPDATE SET owner_pid = excluded.owner_pid,
            owner_start_time = excluded.owner_start_time, owner_boot_id = excluded.owner_boot_id,
            holder = excluded.holder, actor = excluded.actor, transition = excluded.transition,
            acquired_at = excluded.acquired_at",
    )
    .bind(row.task_id)
    .bind(row.owner_pid)
    .bind(row.owner_start_time)
    .bind(&row.owner_boot_id)
    .bind(&row.holder)
    .bind(&row.actor)
    .bind(&row.transition)
    .bind(row.acquired_at)
    .execute(ex)
    .await?;
    Ok(())
}

/// Delete the row only if `holder` still owns it.
pub async fn delete_if_holder<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    task_id: i64,
    holder: &str,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query("DELETE FROM transition_lease WHERE task_id = ? AND holder = ?")
        .bind(task_id)
        .bind(holder)
        .execute(ex)
        .await?;
    Ok(r.rows_affected() == 1)
}
