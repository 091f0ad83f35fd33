//! `tasks`: reads, inserts and non-stage fields. The stage column is written
//! only by `stage_engine::cas` (invariant 1).

use serde::Serialize;
use sqlx::sqlite::{SqliteArgumentValue, SqliteTypeInfo, SqliteValueRef};
use sqlx::{Decode, Encode, Executor, FromRow, Sqlite, Type};

use super::now_ms;
use crate::domain::Stage;

/// The terminal stages as an SQL list, for queries. Pinned to
/// `Stage::is_terminal` by a test: terminal has one definition.
pub const TERMINAL_SQL: &str = "('done','cancelled')";

impl Type<Sqlite> for Stage {
    fn type_info() -> SqliteTypeInfo {
        <&str as Type<Sqlite>>::type_info()
    }
}

impl<'q> Encode<'q, Sqlite> for Stage {
    fn encode_by_ref(
        &self,
        buf: &mut Vec<SqliteArgumentValue<'q>>,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        <&str as Encode<'q, Sqlite>>::encode(self.as_str(), buf)
    }
}

impl<'r> Decode<'r, Sqlite> for Stage {
    fn decode(value: SqliteValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        let s = <&str as Decode<'r, Sqlite>>::decode(value)?;
        Ok(s.parse::<Stage>()?)
    }
}

#[derive(Debug, Clone, FromRow, Serialize)]
pub struct TaskRow {
    pub id: i64,
    pub work_item: String,
    pub plane_issue_id: Option<String>,
    pub project: String,
    pub title: String,
    pub description: String,
    pub stage: Stage,
    pub stage_version: i64,
    pub branch: Option<String>,
    pub worktree: Option<String>,
    pub approved_at: Option<i64>,
    pub deploy_confirmed_at: Option<i64>,
    pub hold_reason: Option<String>,
    pub held_at: Option<i64>,
    pub cancel_requested_at: Option<i64>,
    pub cancel_requested_by: Option<String>,
    pub cancel_reason: Option<String>,
    pub cancel_notified_at: Option<i64>,
    pub tombstoned_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    /// F-18: the stage version at which the merge gate passed.
    pub merge_gate_version: Option<i64>,
    /// F-18: the branch head that staging or a re-test validated.
    pub validated_sha: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct NewTask {
    pub work_item: String,
    pub plane_issue_id: Option<String>,
    pub project: String,
    pub title: String,
    pub description: String,
    pub branch: Option<String>,
    pub worktree: Option<String>,
}

/// Insert a task at `created`, version 0.
pub async fn insert<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    t: &NewTask,
) -> Result<i64, sqlx::Error> {
    let now = now_ms();
    let row: (i64,) = sqlx::query_as(
        "INSERT INTO tasks (work_item, plane_issue_id, project, title, description, stage,
                            stage_version, branch, worktree, created_at, updated_at)
         VALUES (?, ?, ?, ?, ?, 'created', 0, ?, ?, ?, ?) RETURNING id",
    )
    .bind(&t.work_item)
    .bind(&t.plane_issue_id)
    .bind(&t.project)
    .bind(&t.title)
    .bind(&t.description)
    .bind(&t.branch)
    .bind(&t.worktree)
    .bind(now)
    .bind(now)
    .fetch_one(ex)
    .await?;
    Ok(row.0)
}

pub async fn get<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    id: i64,
) -> Result<Option<TaskRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM tasks WHERE id = ?")
        .bind(id)
        .fetch_optional(ex)
        .await
}

/// The live (not tombstoned) task of a work item.
pub async fn by_work_item<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    work_item: &str,
) -> Result<Option<TaskRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM tasks WHERE work_item = ? AND tombstoned_at IS NULL")
        .bind(work_item)
        .fetch_optional(ex)
        .await
}

/// The newest task of a work item, live or tombstoned (operator lookups).
pub async fn latest_by_work_item<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    work_item: &str,
) -> Result<Option<TaskRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM tasks WHERE work_item = ? ORDER BY id DESC LIMIT 1")
        .bind(work_item)
        .fetch_optional(ex)
        .await
}

/// Active tasks and those finished in the last `recent_ms`.
pub async fn for_queue<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    recent_ms: i64,
) -> Result<Vec<TaskRow>, sqlx::Error> {
    queue_page(ex, recent_ms, 0, i64::MAX).await
}

/// `/queue`'s view: live tasks and those finished within `recent_ms`.
fn queue_view() -> String {
    format!("(stage NOT IN {TERMINAL_SQL} OR updated_at >= ?)")
}

/// One page of the queue's view in id order: ids above `after`, at most
/// `limit` rows (keyset pagination: a page costs the same at any depth).
pub async fn queue_page<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    recent_ms: i64,
    after: i64,
    limit: i64,
) -> Result<Vec<TaskRow>, sqlx::Error> {
    let sql = format!(
        "SELECT * FROM tasks WHERE id > ? AND {} ORDER BY id LIMIT ?",
        queue_view()
    );
    sqlx::query_as(&sql)
        .bind(after)
        .bind(now_ms() - recent_ms)
        .bind(limit)
        .fetch_all(ex)
        .await
}

/// Tasks per stage over the whole queue view (every page). Written as two
/// index ranges — live stages by `tasks_stage`, finished ones by
/// `tasks_stage_updated` from the cutoff on — so it costs the tasks it
/// counts, not every task ever done.
pub async fn queue_counts<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    recent_ms: i64,
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let live: Vec<String> = Stage::ALL
        .iter()
        .filter(|s| !s.is_terminal())
        .map(|s| format!("'{}'", s.as_str()))
        .collect();
    let sql = format!(
        "SELECT stage, COUNT(*) FROM tasks WHERE stage IN ({live}) GROUP BY stage
         UNION ALL
         SELECT stage, COUNT(*) FROM tasks WHERE stage IN {TERMINAL_SQL} AND updated_at >= ? GROUP BY stage
         ORDER BY 1",
        live = live.join(",")
    );
    sqlx::query_as(&sql)
        .bind(now_ms() - recent_ms)
        .fetch_all(ex)
        .await
}

/// Counts per stage over all live tasks.
pub async fn count_by_stage<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
) -> Result<Vec<(Stage, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT stage, COUNT(*) FROM tasks GROUP BY stage ORDER BY stage")
        .fetch_all(ex)
        .await
}

/// Record a cancel request once. Returns true when this call set it (the
/// caller notifies only then: a repeated STOP notifies once).
pub async fn request_cancel<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    id: i64,
    by: &str,
    reason: &str,
) -> Result<bool, sqlx::Error> {
    let now = now_ms();
    let sql = format!(
        "UPDATE tasks SET cancel_requested_at = ?, cancel_requested_by = ?, cancel_reason = ?, updated_at = ?
         WHERE id = ? AND cancel_requested_at IS NULL AND stage NOT IN {TERMINAL_SQL}"
    );
    let r = sqlx::query(&sql)
        .bind(now)
        .bind(by)
        .bind(reason)
        .bind(now)
        .bind(id)
        .execute(ex)
        .await?;
    Ok(r.rows_affected() == 1)
}

pub async fn set_hold<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    id: i64,
    reason: Option<&str>,
) -> Result<(), sqlx::Error> {
    let now = now_ms();
    sqlx::query("UPDATE tasks SET hold_reason = ?, held_at = CASE WHEN ? IS NULL THEN NULL ELSE ? END, updated_at = ? WHERE id = ?")
        .bind(reason)
        .bind(reason)
        .bind(now)
        .bind(now)
        .bind(id)
        .execute(ex)
        .await?;
    Ok(())
}

/// A lease holder's hold (invariant 10): only while its fence holds.
pub async fn set_hold_fenced<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    fence: super::leases::Fence,
    reason: &str,
) -> Result<bool, sqlx::Error> {
    let now = now_ms();
    let r = sqlx::query(
        "UPDATE tasks SET hold_reason = ?, held_at = ?, updated_at = ? WHERE id = ? AND (NOT ? OR lease_generation = ?)",
    )
    .bind(reason)
    .bind(now)
    .bind(now)
    .bind(fence.task_id)
    .bind(fence.enforce)
    .bind(fence.generation)
    .execute(ex)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// A person's go-ahead (B-13): Confirm Deploy, an operator's retry. Lets
/// the journal apply an effect whose outcome became unknown before now,
/// once; clears the hold so the task can move.
pub async fn grant_retry<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    id: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE tasks SET retry_grants = retry_grants + 1, hold_reason = NULL, held_at = NULL, updated_at = ? WHERE id = ?",
    )
    .bind(now_ms())
    .bind(id)
    .execute(ex)
    .await?;
    Ok(())
}

pub async fn set_approved<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    id: i64,
) -> Result<(), sqlx::Error> {
    let now = now_ms();
    sqlx::query(
        "UPDATE tasks SET approved_at = COALESCE(approved_at, ?), updated_at = ? WHERE id = ?",
    )
    .bind(now)
    .bind(now)
    .bind(id)
    .execute(ex)
    .await?;
    Ok(())
}

pub async fn set_deploy_confirmed<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    id: i64,
) -> Result<(), sqlx::Error> {
    let now = now_ms();
    sqlx::query("UPDATE tasks SET deploy_confirmed_at = COALESCE(deploy_confirmed_at, ?), updated_at = ? WHERE id = ?")
        .bind(now)
        .bind(now)
        .bind(id)
        .execute(ex)
        .await?;
    Ok(())
}

/// Where the task's worktree and branch are (set when first prepared).
pub async fn set_workspace<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    id: i64,
    branch: &str,
    worktree: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE tasks SET branch = ?, worktree = ?, updated_at = ? WHERE id = ?")
        .bind(branch)
        .bind(worktree)
        .bind(now_ms())
        .bind(id)
        .execute(ex)
        .await?;
    Ok(())
}

/// Record the branch head a passing validation ran on (F-18).
pub async fn set_validated_sha<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    id: i64,
    sha: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE tasks SET validated_sha = ?, updated_at = ? WHERE id = ?")
        .bind(sha)
        .bind(now_ms())
        .bind(id)
        .execute(ex)
        .await?;
    Ok(())
}

/// Record that the merge gate passed at `version` (F-18). Only at that
/// version: a later stage write (a rollback) makes it stale by itself.
pub async fn set_merge_gate_passed<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    id: i64,
    version: i64,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query("UPDATE tasks SET merge_gate_version = ?, updated_at = ? WHERE id = ? AND stage_version = ?")
        .bind(version)
        .bind(now_ms())
        .bind(id)
        .bind(version)
        .execute(ex)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// F-17: `task_id` waits until `depends_on` is terminal: the worker skips
/// its queued jobs until then (`jobs::candidates`). Idempotent (true when
/// this call added the edge); a task never waits on itself. Cycles are not
/// detected: a cycle waits until one of its tasks is cancelled.
pub async fn add_dependency<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    task_id: i64,
    depends_on: i64,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "INSERT OR IGNORE INTO task_deps (task_id, depends_on) SELECT ?, ? WHERE ? != ?",
    )
    .bind(task_id)
    .bind(depends_on)
    .bind(task_id)
    .bind(depends_on)
    .execute(ex)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// The tasks `task_id` waits on that are not terminal yet (F-17).
pub async fn pending_dependencies<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    task_id: i64,
) -> Result<Vec<i64>, sqlx::Error> {
    let sql = format!(
        "SELECT d.depends_on FROM task_deps d JOIN tasks t ON t.id = d.depends_on
         WHERE d.task_id = ? AND t.stage NOT IN {TERMINAL_SQL} ORDER BY d.depends_on"
    );
    sqlx::query_scalar(&sql).bind(task_id).fetch_all(ex).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_sql_matches_the_stage_table() {
        let names: Vec<String> = Stage::ALL
            .iter()
            .filter(|s| s.is_terminal())
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        assert_eq!(TERMINAL_SQL, format!("({})", names.join(",")));
    }
}
