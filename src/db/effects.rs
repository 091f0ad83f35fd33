//! `effects`: the journal of irreversible effects (B-1).

use serde::Serialize;
use sqlx::{Executor, FromRow, Sqlite};

use super::now_ms;
use crate::domain::Stage;

#[derive(Debug, Clone, FromRow, Serialize, PartialEq, Eq)]
pub struct EffectRow {
    pub id: i64,
    pub task_id: i64,
    pub transition_key: String,
    pub from_stage: Stage,
    pub to_stage: Stage,
    pub stage_version: i64,
    pub kind: String,
    pub state: String,
    pub holder: Option<String>,
    pub result: Option<String>,
    pub error: Option<String>,
    pub attempts: i64,
    pub planned_at: i64,
    pub done_at: Option<i64>,
}

pub async fn get<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    key: &str,
    kind: &str,
) -> Result<Option<EffectRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM effects WHERE transition_key = ? AND kind = ?")
        .bind(key)
        .bind(kind)
        .fetch_optional(ex)
        .await
}

pub struct Planned<'a> {
    pub task_id: i64,
    pub key: &'a str,
    pub from: Stage,
    pub to: Stage,
    pub version: i64,
    pub kind: &'a str,
    pub holder: &'a str,
}

pub async fn insert_planned<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    p: &Planned<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO effects (task_id, transition_key, from_stage, to_stage, stage_version, kind, state, holder, planned_at)
         VALUES (?, ?, ?, ?, ?, ?, 'planned', ?, ?)",
    )
    .bind(p.task_id)
    .bind(p.key)
    .bind(p.from)
    .bind(p.to)
    .bind(p.version)
    .bind(p.kind)
    .bind(p.holder)
    .bind(now_ms())
    .execute(ex)
    .await?;
    Ok(())
}

/// A failed (known not to have happened) or open row is planned again.
pub async fn replan<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    id: i64,
    holder: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE effects SET state = 'planned', holder = ?, attempts = attempts + 1, error = NULL WHERE id = ? AND state != 'done'")
        .bind(holder)
        .bind(id)
        .execute(ex)
        .await?;
    Ok(())
}

pub async fn mark_done<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    id: i64,
    result: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE effects SET state = 'done', result = ?, done_at = ? WHERE id = ?")
        .bind(result)
        .bind(now_ms())
        .bind(id)
        .execute(ex)
        .await?;
    Ok(())
}

pub async fn mark_failed<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    id: i64,
    error: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE effects SET state = 'failed', error = ? WHERE id = ? AND state = 'planned'",
    )
    .bind(error)
    .bind(id)
    .execute(ex)
    .await?;
    Ok(())
}

/// Rows of a task at one stage version that record a started transition
/// (planned or done): the journaled intent.
pub async fn intent_at<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    task_id: i64,
    version: i64,
) -> Result<Vec<EffectRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT * FROM effects WHERE task_id = ? AND stage_version = ? AND state IN ('planned','done') ORDER BY id",
    )
    .bind(task_id)
    .bind(version)
    .fetch_all(ex)
    .await
}

/// Every planned row (a crash may have come between effect and `done`).
pub async fn open<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
) -> Result<Vec<EffectRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM effects WHERE state = 'planned' ORDER BY id")
        .fetch_all(ex)
        .await
}
