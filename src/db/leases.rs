//! `transition_lease`: one row per task whose side-effectful region is owned.

use serde::Serialize;
use sqlx::sqlite::SqliteArguments;
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

/// The row's values, in the column order of both inserts below.
fn bind_row<'q>(
    q: sqlx::query::Query<'q, Sqlite, SqliteArguments<'q>>,
    row: &'q LeaseRow,
) -> sqlx::query::Query<'q, Sqlite, SqliteArguments<'q>> {
    q.bind(row.task_id)
        .bind(row.owner_pid)
        .bind(row.owner_start_time)
        .bind(&row.owner_boot_id)
        .bind(&row.holder)
        .bind(&row.actor)
        .bind(&row.transition)
        .bind(row.acquired_at)
}

/// Insert, or replace a row the caller has judged stale.
pub async fn put<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    row: &LeaseRow,
) -> Result<(), sqlx::Error> {
    let q = sqlx::query(
        "INSERT INTO transition_lease (task_id, owner_pid, owner_start_time, owner_boot_id, holder, actor, transition, acquired_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (task_id) DO UPDATE SET owner_pid = excluded.owner_pid,
            owner_start_time = excluded.owner_start_time, owner_boot_id = excluded.owner_boot_id,
            holder = excluded.holder, actor = excluded.actor, transition = excluded.transition,
            acquired_at = excluded.acquired_at",
    );
    bind_row(q, row).execute(ex).await?;
    Ok(())
}

/// Insert `row` only when the task has no lease row: `true` when this wrote
/// it. The common acquire (nobody holds the task) then needs no read first.
pub async fn put_if_free<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    row: &LeaseRow,
) -> Result<bool, sqlx::Error> {
    let q = sqlx::query(
        "INSERT INTO transition_lease (task_id, owner_pid, owner_start_time, owner_boot_id, holder, actor, transition, acquired_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (task_id) DO NOTHING",
    );
    let r = bind_row(q, row).execute(ex).await?;
    Ok(r.rows_affected() == 1)
}

/// A lease holder's fence (invariant 10): the task's lease generation as
/// the holder acquired it. Every write the holder makes after planning is
/// conditioned on it, so once the lease is force-released, reclaimed or
/// taken over, the old holder's writes change nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    pub task_id: i64,
    pub generation: i64,
    /// Always true in the daemon; false only in the simulation's run with
    /// the `fencing` defence off.
    pub enforce: bool,
}

/// The SQL condition of a fenced write; binds `enforce`, the task id, then
/// the generation. `tasks` may be the updated table itself.
pub const FENCE_SQL: &str =
    "(NOT ? OR (SELECT f.lease_generation FROM tasks f WHERE f.id = ?) = ?)";

/// Bump the task's lease generation (acquire, force-release, reclaim):
/// every holder of an older generation is fenced off. Returns the new one.
pub async fn bump_generation<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    task_id: i64,
) -> Result<i64, sqlx::Error> {
    let g: Option<i64> = sqlx::query_scalar(
        "UPDATE tasks SET lease_generation = lease_generation + 1 WHERE id = ? RETURNING lease_generation",
    )
    .bind(task_id)
    .fetch_optional(ex)
    .await?;
    Ok(g.unwrap_or(0))
}

/// Whether `holder` still holds the task's lease under `fence`'s
/// generation (or the fence is not enforced): one read.
pub async fn held_by<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    fence: Fence,
    holder: &str,
) -> Result<bool, sqlx::Error> {
    let ok: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM transition_lease l JOIN tasks t ON t.id = l.task_id
         WHERE l.task_id = ? AND l.holder = ? AND (NOT ? OR t.lease_generation = ?)",
    )
    .bind(fence.task_id)
    .bind(holder)
    .bind(fence.enforce)
    .bind(fence.generation)
    .fetch_optional(ex)
    .await?;
    Ok(ok.is_some())
}

/// Whether `fence` still holds (the generation did not move).
pub async fn fence_holds<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    fence: Fence,
) -> Result<bool, sqlx::Error> {
    if !fence.enforce {
        return Ok(true);
    }
    let g: Option<i64> = sqlx::query_scalar("SELECT lease_generation FROM tasks WHERE id = ?")
        .bind(fence.task_id)
        .fetch_optional(ex)
        .await?;
    Ok(g == Some(fence.generation))
}

/// Take a lease away from whoever holds it (operator force-release, tier 3,
/// start-up reclaim): delete the row if `holder` still owns it and bump
/// the generation, in one transaction. True when this call revoked it.
pub async fn revoke(db: &super::Db, task_id: i64, holder: &str) -> Result<bool, sqlx::Error> {
    let mut tx = db.begin_write().await?;
    if !delete_if_holder(&mut *tx, task_id, holder).await? {
        return Ok(false);
    }
    bump_generation(&mut *tx, task_id).await?;
    tx.commit().await?;
    Ok(true)
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
