//! The board's read (B-3): every row the board shows, for the tasks
//! `/queue` lists, in one read transaction, so a card never mixes two
//! moments (a stage from before a move with a run from after it). A fixed
//! number of queries whatever the number of tasks: each table is read once
//! for all of them.

use sqlx::{Sqlite, Transaction};

use super::jobs::JobRow;
use super::leases::LeaseRow;
use super::runs::RunRow;
use super::tasks::{self, TaskRow};
use crate::domain::Stage;

/// What the board shows, by table.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub tasks: Vec<TaskRow>,
    /// Every agent run of those tasks, oldest first.
    pub runs: Vec<RunRow>,
    /// Their queued or running jobs, oldest first.
    pub active: Vec<JobRow>,
    pub leases: Vec<LeaseRow>,
    /// (task id, what its newest done `merge_pr` effect recorded).
    pub merges: Vec<(i64, String)>,
    /// (task id, the stage it was cancelled from), for cancelled tasks.
    pub cancelled_from: Vec<(i64, Stage)>,
}

/// The tasks of `/queue` (active ones and those finished within
/// `recent_ms`) and their rows.
pub async fn snapshot(db: &super::Db, recent_ms: i64) -> Result<Snapshot, sqlx::Error> {
    // A read transaction: in WAL mode every statement in it sees the same
    // commit. Dropped at the end (a rollback of nothing).
    let mut tx: Transaction<'static, Sqlite> = db.reader().begin().await?;
    let tasks = tasks::for_queue(&mut *tx, recent_ms).await?;
    let ids = serde_json::to_string(&tasks.iter().map(|t| t.id).collect::<Vec<_>>())
        .unwrap_or_else(|_| "[]".into());
    const IN_IDS: &str = "task_id IN (SELECT value FROM json_each(?))";
    let runs: Vec<RunRow> = sqlx::query_as(&format!(
        "SELECT * FROM agent_runs WHERE {IN_IDS} ORDER BY id"
    ))
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    let active: Vec<JobRow> = sqlx::query_as(&format!(
        "SELECT * FROM jobs WHERE {IN_IDS} AND status IN ('queued','running') ORDER BY id"
    ))
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    let leases: Vec<LeaseRow> = sqlx::query_as(&format!(
        "SELECT * FROM transition_lease WHERE {IN_IDS} ORDER BY acquired_at"
    ))
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    let merges: Vec<(i64, String)> = sqlx::query_as(&format!(
        "SELECT task_id, result FROM effects
         WHERE {IN_IDS} AND kind = 'merge_pr' AND state = 'done' AND result IS NOT NULL
         ORDER BY id"
    ))
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    let cancelled_from: Vec<(i64, Stage)> = sqlx::query_as(&format!(
        "SELECT task_id, from_stage FROM stage_history
         WHERE {IN_IDS} AND to_stage = 'cancelled' ORDER BY id"
    ))
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    Ok(Snapshot {
        tasks,
        runs,
        active,
        leases,
        merges,
        cancelled_from,
    })
}
