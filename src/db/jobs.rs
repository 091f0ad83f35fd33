//! `jobs`: the queue of agent work (F-11). queued → running → done |
//! failed | cancelled. Enqueue is idempotent (one active job per task and
//! stage, enforced by a partial unique index).

use serde::Serialize;
use sqlx::{Executor, FromRow, Sqlite};

use super::tasks::TERMINAL_SQL;
use super::{Db, now_ms};
use crate::domain::Stage;
use crate::proc_group::Owned;

#[derive(Debug, Clone, FromRow, Serialize, PartialEq, Eq)]
pub struct JobRow {
    pub id: i64,
    pub task_id: i64,
    pub stage: Stage,
    pub role: String,
    pub status: String,
    pub attempt: i64,
    pub boot_id: Option<String>,
    pub error: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub updated_at: i64,
    pub context: String,
    pub claimed_by: Option<String>,
    pub pgid: Option<i64>,
    pub pgid_start_time: Option<i64>,
    pub pgid_token: Option<String>,
}

impl JobRow {
    /// The job's recorded process group, to be checked before any signal.
    pub fn group(&self) -> Option<Owned> {
        let pgid = i32::try_from(self.pgid?).ok()?;
        Some(Owned {
            pgid,
            start_time: self.pgid_start_time,
            token: self.pgid_token.clone(),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    New(i64),
    /// An active job for this task and stage already exists.
    Existing(i64),
}

impl Enqueued {
    pub fn id(&self) -> i64 {
        match self {
            Enqueued::New(id) | Enqueued::Existing(id) => *id,
        }
    }
}

/// Queue a job for `task` at `stage` unless one is already queued or running.
pub async fn enqueue(
    db: &Db,
    task_id: i64,
    stage: Stage,
    role: &str,
    attempt: i64,
    context: &str,
) -> Result<Enqueued, sqlx::Error> {
    let now = now_ms();
    let mut tx = db.begin_write().await?;
    let existing: Option<i64> = sqlx::query_scalar(
        "SELECT id FROM jobs WHERE task_id = ? AND stage = ? AND status IN ('queued','running')",
    )
    .bind(task_id)
    .bind(stage)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(id) = existing {
        return Ok(Enqueued::Existing(id));
    }
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO jobs (task_id, stage, role, status, attempt, context, created_at, updated_at)
         VALUES (?, ?, ?, 'queued', ?, ?, ?, ?) RETURNING id",
    )
    .bind(task_id)
    .bind(stage)
    .bind(role)
    .bind(attempt)
    .bind(context)
    .bind(now)
    .bind(now)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Enqueued::New(id))
}

pub async fn get<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    id: i64,
) -> Result<Option<JobRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM jobs WHERE id = ?")
        .bind(id)
        .fetch_optional(ex)
        .await
}

pub async fn for_task<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    task_id: i64,
) -> Result<Vec<JobRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM jobs WHERE task_id = ? ORDER BY id")
        .bind(task_id)
        .fetch_all(ex)
        .await
}

/// The queued or running job of a task, if any.
pub async fn active_for_task<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    task_id: i64,
) -> Result<Option<JobRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM jobs WHERE task_id = ? AND status IN ('queued','running') ORDER BY id LIMIT 1")
        .bind(task_id)
        .fetch_optional(ex)
        .await
}

/// Move one job between states only from the state the caller saw (a CAS
/// on status): a late or duplicate finisher changes nothing.
pub async fn transition<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    id: i64,
    from: &str,
    to: &str,
    error: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let now = now_ms();
    let r = sqlx::query(
        "UPDATE jobs SET status = ?, error = COALESCE(?, error), updated_at = ?,
                finished_at = CASE WHEN ? IN ('done','failed','cancelled') THEN ? ELSE finished_at END
         WHERE id = ? AND status = ?",
    )
    .bind(to)
    .bind(error)
    .bind(now)
    .bind(to)
    .bind(now)
    .bind(id)
    .bind(from)
    .execute(ex)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Cancel every queued or running job of a task (STOP): terminal, never
/// requeued. Returns the jobs that were running (their groups need a signal).
pub async fn cancel_all_for_task(
    db: &Db,
    task_id: i64,
    reason: &str,
) -> Result<Vec<JobRow>, sqlx::Error> {
    let mut tx = db.begin_write().await?;
    let running: Vec<JobRow> =
        sqlx::query_as("SELECT * FROM jobs WHERE task_id = ? AND status = 'running'")
            .bind(task_id)
            .fetch_all(&mut *tx)
            .await?;
    let now = now_ms();
    sqlx::query(
        "UPDATE jobs SET status = 'cancelled', error = ?, finished_at = ?, updated_at = ?
         WHERE task_id = ? AND status IN ('queued','running')",
    )
    .bind(reason)
    .bind(now)
    .bind(now)
    .bind(task_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(running)
}

/// (status, count) for every status present.
pub async fn count_by_status<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    // Kept by triggers in every job write's transaction (0012): exact, and
    // five rows to read however many jobs there are.
    sqlx::query_as("SELECT status, n FROM job_counts WHERE n > 0 ORDER BY status")
        .fetch_all(ex)
        .await
}

#[derive(Debug, Clone, FromRow, Serialize)]
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

/// A queued job the worker may start: its task's project, and whether the
/// task's dependencies are all terminal (F-17).
#[derive(Debug, Clone, FromRow)]
pub struct Candidate {
    #[sqlx(flatten)]
    pub job: JobRow,
    pub project: String,
    pub task_stage: Stage,
}

/// Queued jobs in order, except those whose task waits on a dependency.
pub async fn candidates<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    limit: i64,
) -> Result<Vec<Candidate>, sqlx::Error> {
    let sql = format!(
        "SELECT j.*, t.project AS project, t.stage AS task_stage
         FROM jobs j JOIN tasks t ON t.id = j.task_id
         WHERE j.status = 'queued'
           AND NOT EXISTS (SELECT 1 FROM task_deps d JOIN tasks dt ON dt.id = d.depends_on
                           WHERE d.task_id = j.task_id AND dt.stage NOT IN {TERMINAL_SQL})
         ORDER BY j.id LIMIT ?"
    );
    sqlx::query_as(&sql).bind(limit).fetch_all(ex).await
}

/// Running jobs per project, except those of role `except` (finalizers do
/// not count against the agent limits).
pub async fn running_per_project<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    except: &str,
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT t.project, COUNT(*) FROM jobs j JOIN tasks t ON t.id = j.task_id
         WHERE j.status = 'running' AND j.role != ? GROUP BY t.project",
    )
    .bind(except)
    .fetch_all(ex)
    .await
}

/// queued → running for this boot; false when someone else started it.
pub async fn start<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    id: i64,
    boot_id: &str,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE jobs SET status = 'running', boot_id = ?, started_at = ?, updated_at = ?, claimed_by = NULL
         WHERE id = ? AND status = 'queued'",
    )
    .bind(boot_id)
    .bind(now)
    .bind(now)
    .bind(id)
    .execute(ex)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Record the job's process group with what proves it ours later (the
/// leader's start time, the token in its environment).
pub async fn set_pgid<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    id: i64,
    group: &Owned,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE jobs SET pgid = ?, pgid_start_time = ?, pgid_token = ? WHERE id = ?")
        .bind(i64::from(group.pgid))
        .bind(group.start_time)
        .bind(&group.token)
        .bind(id)
        .execute(ex)
        .await?;
    Ok(())
}

/// Claim a running job's finalization (F-15: claim before act). Exactly one
/// of the monitor and the reapers wins; the losers do nothing.
pub async fn claim<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    id: i64,
    who: &str,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE jobs SET claimed_by = ?, updated_at = ? WHERE id = ? AND status = 'running' AND claimed_by IS NULL",
    )
    .bind(who)
    .bind(now_ms())
    .bind(id)
    .execute(ex)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Running jobs started by another boot (start-up recovery).
pub async fn running_of_other_boots<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    boot_id: &str,
) -> Result<Vec<JobRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM jobs WHERE status = 'running' AND (boot_id IS NULL OR boot_id != ?) ORDER BY id")
        .bind(boot_id)
        .fetch_all(ex)
        .await
}

/// Put a running job back in the queue (its run was lost with a restart).
pub async fn requeue<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    id: i64,
    why: &str,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE jobs SET status = 'queued', boot_id = NULL, claimed_by = NULL, pgid = NULL,
                pgid_start_time = NULL, pgid_token = NULL,
                attempt = attempt + 1, error = ?, updated_at = ?
         WHERE id = ? AND status = 'running'",
    )
    .bind(why)
    .bind(now_ms())
    .bind(id)
    .execute(ex)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Tier 2 (F-15): running, unclaimed jobs whose latest run recorded its exit
/// at or before `finished_before`.
pub async fn finished_unclaimed<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    finished_before: i64,
) -> Result<Vec<JobRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT j.* FROM jobs j
         JOIN agent_runs r ON r.id = (SELECT MAX(id) FROM agent_runs WHERE job_id = j.id)
         WHERE j.status = 'running' AND j.claimed_by IS NULL
           AND r.exit_code IS NOT NULL AND r.finished_at <= ?
         ORDER BY j.id",
    )
    .bind(finished_before)
    .fetch_all(ex)
    .await
}

/// Tier 3 (F-15): jobs running since before `started_before`, finished or not.
pub async fn running_since<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    started_before: i64,
) -> Result<Vec<JobRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM jobs WHERE status = 'running' AND started_at <= ? ORDER BY id")
        .bind(started_before)
        .fetch_all(ex)
        .await
}

/// Note why a running job is being stopped (stall, budget) before its end is
/// recorded; the finalizer reads it back.
pub async fn set_error<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    id: i64,
    error: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE jobs SET error = ?, updated_at = ? WHERE id = ?")
        .bind(error)
        .bind(now_ms())
        .bind(id)
        .execute(ex)
        .await?;
    Ok(())
}
