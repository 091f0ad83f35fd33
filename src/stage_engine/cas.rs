//! The only code that writes `tasks.stage` (invariant 1): a compare-and-swap
//! on (stage, stage_version). The statement names its actor and reason; the
//! `tasks_stage_history` trigger (migration 0007) writes the `stage_history`
//! row inside the same statement, from the row's old and new values. A lost
//! race changes nothing. A won write also clears a hold (the task moved on)
//! and bumps the lease generation (whoever held the task before can record
//! nothing more for it, invariant 10).

use sqlx::{Executor, Sqlite, Transaction};

use crate::db::now_ms;
use crate::domain::Stage;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cas {
    Won { version: i64 },
    Lost,
}

pub(crate) struct StageWrite<'a> {
    pub task_id: i64,
    pub from: Stage,
    pub from_version: i64,
    /// The writer's lease generation (invariant 10): a holder whose lease
    /// was taken away loses the CAS. `None`: not fenced (the fast path holds
    /// no lease; `fencing` off in the simulation).
    pub generation: Option<i64>,
    pub to: Stage,
    pub actor: &'a str,
    pub reason: &'a str,
    /// Compare (stage, stage_version): always, except in the simulation's
    /// run with the `cas` defence switched off (`Defences`).
    pub compare: bool,
}

/// The UPDATE of every stage write; `extra` adds conditions (bound after
/// the common ones).
fn update_sql(extra: &str) -> String {
    format!(
        "UPDATE tasks SET stage = ?, stage_version = stage_version + 1, updated_at = ?,
                hold_reason = NULL, held_at = NULL, lease_generation = lease_generation + 1,
                stage_actor = ?, stage_reason = ?,
                tombstoned_at = CASE WHEN ? THEN ? ELSE tombstoned_at END
         WHERE id = ? AND (NOT ? OR (stage = ? AND stage_version = ?))
           AND (? IS NULL OR lease_generation = ?) {extra}
         RETURNING stage_version"
    )
}

async fn run<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    w: &StageWrite<'_>,
    extra: &str,
    lease_check: bool,
) -> Result<Cas, sqlx::Error> {
    let now = now_ms();
    // Cancelling tombstones the natural keys in the same write, so a later
    // "To Analyse" creates a fresh task; the row keeps its work item.
    let tombstone = w.to == Stage::Cancelled;
    let sql = update_sql(extra);
    let mut q = sqlx::query_scalar::<_, i64>(&sql)
        .bind(w.to)
        .bind(now)
        .bind(w.actor)
        .bind(w.reason)
        .bind(tombstone)
        .bind(now)
        .bind(w.task_id)
        .bind(w.compare)
        .bind(w.from)
        .bind(w.from_version)
        .bind(w.generation)
        .bind(w.generation);
    if !extra.is_empty() {
        q = q.bind(lease_check);
    }
    Ok(match q.fetch_optional(ex).await? {
        Some(version) => Cas::Won { version },
        None => Cas::Lost,
    })
}

/// The stage write of a lease holder, in its IMMEDIATE transaction (the
/// engine ends the lease in that same transaction).
pub(crate) async fn write_stage(
    tx: &mut Transaction<'_, Sqlite>,
    w: &StageWrite<'_>,
) -> Result<Cas, sqlx::Error> {
    run(&mut **tx, w, "", false).await
}

/// A whole move without effects as ONE autocommit statement: the CAS, only
/// while nobody holds the task's lease (`lease_check`), no cancel is
/// requested and no effect is journaled at this version. `Lost` says only
/// "not done this way"; the caller tells why (or takes the full path).
pub(crate) async fn write_stage_alone<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    w: &StageWrite<'_>,
    lease_check: bool,
) -> Result<Cas, sqlx::Error> {
    run(
        ex,
        w,
        "AND cancel_requested_at IS NULL
           AND (NOT ? OR NOT EXISTS (SELECT 1 FROM transition_lease l WHERE l.task_id = tasks.id))
           AND NOT EXISTS (SELECT 1 FROM effects e WHERE e.task_id = tasks.id
                           AND e.stage_version = tasks.stage_version
                           AND e.state IN ('planned','unknown','done'))",
        lease_check,
    )
    .await
}
