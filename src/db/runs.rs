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
    /// The output format the usage was read from; `None`: not read.
    pub usage_format: Option<String>,
    /// The agent reported an error: its result subtype (`unknown` if none).
    pub usage_error: Option<String>,
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

#[derive(Debug, Clone, PartialEq)]
pub struct UsageRow {
    pub input: i64,
    pub output: i64,
    pub cache_read: i64,
    pub cache_creation: i64,
    pub cost_usd: f64,
    pub format: Option<&'static str>,
    pub error: Option<String>,
}

impl UsageRow {
    /// In `/metrics`, once the row is stored.
    pub fn count(&self) {
        crate::telemetry::metrics::families().usage(
            self.input,
            self.output,
            self.cache_read,
            self.cache_creation,
            self.cost_usd,
        );
    }
}

pub async fn record_usage<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    id: i64,
    u: &UsageRow,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE agent_runs SET input_tokens = ?, output_tokens = ?, cache_read_tokens = ?,
                cache_creation_tokens = ?, cost_usd = ?, usage_format = ?, usage_error = ?
         WHERE id = ?",
    )
    .bind(u.input)
    .bind(u.output)
    .bind(u.cache_read)
    .bind(u.cache_creation)
    .bind(u.cost_usd)
    .bind(u.format)
    .bind(&u.error)
    .bind(id)
    .execute(ex)
    .await?;
    Ok(())
}

/// A run made inside an effect, not by the worker (the production deployer
/// agent, F-23). Written after it ended, with a finished job row of its own
/// claimed by `who`, in one transaction: the run's cost counts like any
/// other run's (B-7, F-26), and no loop ever picks the job up.
pub async fn record_effect_run(
    db: &super::Db,
    r: &NewRun<'_>,
    exit_code: i64,
    finished_at: i64,
    usage: &UsageRow,
    who: &str,
) -> Result<i64, sqlx::Error> {
    let mut tx = db.begin_write().await?;
    let status = if exit_code == 0 { "done" } else { "failed" };
    let job_id: i64 = sqlx::query_scalar(
        "INSERT INTO jobs (task_id, stage, role, status, attempt, claimed_by, created_at, updated_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
    )
    .bind(r.task_id)
    .bind(r.stage)
    .bind(r.role)
    .bind(status)
    .bind(r.attempt)
    .bind(who)
    .bind(r.started_at)
    .bind(finished_at)
    .fetch_one(&mut *tx)
    .await?;
    let run_id = insert(&mut *tx, &NewRun { job_id, ..*r }).await?;
    record_exit(&mut *tx, run_id, exit_code, finished_at).await?;
    record_usage(&mut *tx, run_id, usage).await?;
    tx.commit().await?;
    usage.count();
    Ok(run_id)
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

/// Every run of a task, oldest first (`GET /tasks/<work item>`, B-4).
pub async fn for_task<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    task_id: i64,
) -> Result<Vec<RunRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM agent_runs WHERE task_id = ? ORDER BY id")
        .bind(task_id)
        .fetch_all(ex)
        .await
}
