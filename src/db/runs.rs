//! `agent_runs`: one row per agent run (F-12), exit code recorded first by
//! the monitor (F-13), usage after (F-14).

use serde::Serialize;
use sqlx::{Executor, FromRow, Sqlite};

#[derive(Debug, Clone, FromRow, Serialize, PartialEq)]
pub struct RunRow {
    pub id: i64,
    pub job_id: i64,
    pub task_id: i64,
    pub role: String,
    pub stage: String,
    pub attempt: i64,
    pub pid: Option<i64>,
    pub model: Option<String>,
    pub effort: Option<String>,
    pub command: Option<String>,
    pub log_path: Option<String>,
    pub started_at: i64,
    pub exit_code: Option<i64>,
    pub finished_at: Option<i64>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_read_tokens: i64,
    pub cache_creation_tokens: i64,
    pub cost_usd: f64,
}

pub struct NewRun<'a> {
    pub job_id: i64,
    pub task_id: i64,
    pub role: &'a str,
    pub stage: &'a str,
    pub attempt: i64,
    pub model: &'a str,
    pub effort: &'a str,
    pub command: &'a str,
    pub log_path: &'a str,
    pub started_at: i64,
}

pub async fn insert<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    r: &NewRun<'_>,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO agent_runs (job_id, task_id, role, stage, attempt, model, effort, command, log_path, started_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
    )
    .bind(r.job_id)
    .bind(r.task_id)
    .bind(r.role)
    .bind(r.stage)
    .bind(r.attempt)
    .bind(r.model)
    .bind(r.effort)
    .bind(r.command)
    .bind(r.log_path)
    .bind(r.started_at)
    .fetch_one(ex)
    .await
}

pub async fn set_pid<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    id: i64,
    pid: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE agent_runs SET pid = ? WHERE id = ?")
        .bind(pid)
        .bind(id)
        .execute(ex)
        .await?;
    Ok(())
}

/// Record the exit once: a second recorder (an adopted run after a restart)
/// changes nothing.
pub async fn record_exit<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    id: i64,
    exit_code: i64,
    finished_at: i64,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE agent_runs SET exit_code = ?, finished_at = ? WHERE id = ? AND exit_code IS NULL",
    )
    .bind(exit_code)
    .bind(finished_at)
    .bind(id)
    .execute(ex)
    .await?;
    Ok(r.rows_affected() == 1)
}

pub struct UsageRow {
    pub input: i64,
    pub output: i64,
    pub cache_read: i64,
    pub cache_creation: i64,
    pub cost_usd: f64,
}

pub async fn record_usage<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    id: i64,
    u: &UsageRow,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE agent_runs SET input_tokens = ?, output_tokens = ?, cache_read_tokens = ?,
                cache_creation_tokens = ?, cost_usd = ? WHERE id = ?",
    )
    .bind(u.input)
    .bind(u.output)
    .bind(u.cache_read)
    .bind(u.cache_creation)
    .bind(u.cost_usd)
    .bind(id)
    .execute(ex)
    .await?;
    Ok(())
}

/// The newest run of a job.
pub async fn latest_for_job<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    job_id: i64,
) -> Result<Option<RunRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM agent_runs WHERE job_id = ? ORDER BY id DESC LIMIT 1")
        .bind(job_id)
        .fetch_optional(ex)
        .await
}

/// Spent so far on a task, and on one of its stages (B-7).
pub async fn cost_of<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    task_id: i64,
    stage: Option<&str>,
) -> Result<f64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT COALESCE(SUM(cost_usd), 0.0) FROM agent_runs WHERE task_id = ? AND (? IS NULL OR stage = ?)",
    )
    .bind(task_id)
    .bind(stage)
    .bind(stage)
    .fetch_one(ex)
    .await
}
