//! The deploy path's tables (migration 0005): the post-deploy window of a
//! done task (F-24) and the coverage baseline per project (F-19). The stage
//! column is not touched here (invariant 1).

use serde::Serialize;
use sqlx::{Executor, FromRow, Sqlite};

use super::now_ms;
use crate::domain::Stage;

/// Arm the post-deploy window of a done task: `until` is when it closes.
/// Only once: an armed or already closed window is left alone, so a repeated
/// finalizer (recovery, a replay) cannot re-open a window that ended.
/// Returns true when this call armed it.
pub async fn arm_post_deploy<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    task_id: i64,
    until: i64,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE tasks SET post_deploy_until = ?, updated_at = ?
         WHERE id = ? AND stage = ? AND post_deploy_until IS NULL AND post_deploy_closed_at IS NULL",
    )
    .bind(until)
    .bind(now_ms())
    .bind(task_id)
    .bind(Stage::Done)
    .execute(ex)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// When the task's post-deploy window closes, if it is armed.
pub async fn post_deploy_until<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    task_id: i64,
) -> Result<Option<i64>, sqlx::Error> {
    let v: Option<Option<i64>> =
        sqlx::query_scalar("SELECT post_deploy_until FROM tasks WHERE id = ?")
            .bind(task_id)
            .fetch_optional(ex)
            .await?;
    Ok(v.flatten())
}

/// Every task with an armed window: `(task id, until)`.
pub async fn armed<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
) -> Result<Vec<(i64, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, post_deploy_until FROM tasks WHERE post_deploy_until IS NOT NULL ORDER BY id",
    )
    .fetch_all(ex)
    .await
}

/// Close the window: the marker goes, the closing time stays.
pub async fn close_post_deploy<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    task_id: i64,
) -> Result<(), sqlx::Error> {
    let now = now_ms();
    sqlx::query(
        "UPDATE tasks SET post_deploy_until = NULL, post_deploy_closed_at = COALESCE(post_deploy_closed_at, ?),
                          updated_at = ?
         WHERE id = ?",
    )
    .bind(now)
    .bind(now)
    .bind(task_id)
    .execute(ex)
    .await?;
    Ok(())
}

/// Done tasks that reached done through deploy at or after `since` and whose
/// window was never armed (a crash came between the stage write and the
/// arming): `(task id, when it became done)`.
pub async fn unarmed_deploys<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    since: i64,
) -> Result<Vec<(i64, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT t.id, h.at FROM tasks t
         JOIN stage_history h ON h.task_id = t.id AND h.to_stage = t.stage AND h.from_stage = ?
         WHERE t.stage = ? AND t.post_deploy_until IS NULL AND t.post_deploy_closed_at IS NULL
           AND h.at >= ?
         ORDER BY t.id",
    )
    .bind(Stage::Deploy)
    .bind(Stage::Done)
    .bind(since)
    .fetch_all(ex)
    .await
}

/// Tasks whose deploy-path transition (deploy-staging → deploy, deploy →
/// done) stopped between two effects: an effect of it is done at the task's
/// current version, none is still planned (start-up recovery finishes those)
/// and the task is not held (a failed effect waits for a person). A crash
/// after `merge_pr` was recorded and before `prod_deploy` was planned leaves
/// exactly this; the journaled intent must be carried to its end.
pub async fn interrupted_transitions<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT DISTINCT t.id FROM tasks t
         JOIN effects e ON e.task_id = t.id AND e.stage_version = t.stage_version
                       AND e.from_stage = t.stage AND e.state = 'done'
         WHERE t.stage IN (?, ?) AND t.hold_reason IS NULL
           AND NOT EXISTS (SELECT 1 FROM effects p WHERE p.task_id = t.id
                           AND p.stage_version = t.stage_version AND p.state = 'planned')
         ORDER BY t.id",
    )
    .bind(Stage::DeployStaging)
    .bind(Stage::Deploy)
    .fetch_all(ex)
    .await
}

/// A project's coverage baseline.
#[derive(Debug, Clone, PartialEq, FromRow, Serialize)]
pub struct Baseline {
    pub project: String,
    pub percent: f64,
    pub transition_key: String,
    pub updated_at: i64,
}

pub async fn coverage_baseline<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    project: &str,
) -> Result<Option<Baseline>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM coverage_baseline WHERE project = ?")
        .bind(project)
        .fetch_optional(ex)
        .await
}

/// What one ratchet step decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Ratchet {
    /// At or above the baseline (or the first measurement): the baseline is
    /// now `to` (never lower than before) and names this transition.
    Passed { from: Option<f64>, to: f64 },
    /// Below the baseline: nothing was written.
    Dropped { baseline: f64, measured: f64 },
}

/// Measured coverages within this of the baseline count as equal: tools
/// print rounded numbers, and a re-run must not fail on the last digit.
pub const COVERAGE_EPSILON: f64 = 1e-6;

/// Compare `measured` with the project's baseline and move the baseline on
/// a pass, inside the caller's IMMEDIATE transaction: the journal's, which
/// marks the `coverage_ratchet` effect done in the same commit, so the
/// baseline moves exactly when the effect is recorded, once per transition
/// key, and two tasks of one project cannot both read the old baseline.
/// The baseline only moves up.
pub async fn ratchet_coverage(
    tx: &mut sqlx::SqliteConnection,
    project: &str,
    measured: f64,
    transition_key: &str,
) -> Result<Ratchet, sqlx::Error> {
    let old = coverage_baseline(&mut *tx, project).await?;
    if let Some(b) = &old
        && measured < b.percent - COVERAGE_EPSILON
    {
        return Ok(Ratchet::Dropped {
            baseline: b.percent,
            measured,
        });
    }
    let to = old.as_ref().map_or(measured, |b| b.percent.max(measured));
    sqlx::query(
        "INSERT INTO coverage_baseline (project, percent, transition_key, updated_at) VALUES (?, ?, ?, ?)
         ON CONFLICT (project) DO UPDATE SET percent = excluded.percent,
             transition_key = excluded.transition_key, updated_at = excluded.updated_at",
    )
    .bind(project)
    .bind(to)
    .bind(transition_key)
    .bind(now_ms())
    .execute(&mut *tx)
    .await?;
    Ok(Ratchet::Passed {
        from: old.map(|b| b.percent),
        to,
    })
}
