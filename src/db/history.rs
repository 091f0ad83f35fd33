//! `stage_history`: one row per stage write, written in the CAS transaction.

use serde::Serialize;
use sqlx::{Executor, FromRow, Sqlite};

use crate::domain::Stage;

#[derive(Debug, Clone, FromRow, Serialize, PartialEq, Eq)]
pub struct HistoryRow {
    pub id: i64,
    pub task_id: i64,
    pub from_stage: Stage,
    pub to_stage: Stage,
    pub from_version: i64,
    pub to_version: i64,
    pub actor: String,
    pub reason: String,
    pub at: i64,
}

pub async fn for_task<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    task_id: i64,
) -> Result<Vec<HistoryRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM stage_history WHERE task_id = ? ORDER BY id")
        .bind(task_id)
        .fetch_all(ex)
        .await
}

pub async fn all<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
) -> Result<Vec<HistoryRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM stage_history ORDER BY task_id, id")
        .fetch_all(ex)
        .await
}
