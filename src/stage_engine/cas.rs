//! The only code that writes `tasks.stage` (invariant 1): a compare-and-swap
//! on (stage, stage_version) with its `stage_history` row, in the caller's
//! IMMEDIATE transaction. A lost race changes nothing. A won write also
//! clears a hold: the task moved on.

use sqlx::{Sqlite, Transaction};

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
    /// was taken away loses the CAS.
    pub generation: i64,
    pub to: Stage,
    pub actor: &'a str,
    pub reason: &'a str,
}

pub(crate) async fn write_stage(
    tx: &mut Transaction<'_, Sqlite>,
    w: &StageWrite<'_>,
) -> Result<Cas, sqlx::Error> {
    let now = now_ms();
    // Cancelling tombstones the natural keys in the same write, so a later
    // "To Analyse" creates a fresh task; the row keeps its work item.
    let tombstone = w.to == Stage::Cancelled;
    let r = sqlx::query(
        "UPDATE tasks SET stage = ?, stage_version = stage_version + 1, updated_at = ?,
                hold_reason = NULL, held_at = NULL,
                tombstoned_at = CASE WHEN ? THEN ? ELSE tombstoned_at END
         WHERE id = ? AND stage = ? AND stage_version = ? AND lease_generation = ?",
    )
    .bind(w.to)
    .bind(now)
    .bind(tombstone)
    .bind(now)
    .bind(w.task_id)
    .bind(w.from)
    .bind(w.from_version)
    .bind(w.generation)
    .execute(&mut **tx)
    .await?;
    if r.rows_affected() != 1 {
        return Ok(Cas::Lost);
    }
    let version = w.from_version + 1;
    sqlx::query(
        "INSERT INTO stage_history (task_id, from_stage, to_stage, from_version, to_version, actor, reason, at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(w.task_id)
    .bind(w.from)
    .bind(w.to)
    .bind(w.from_version)
    .bind(version)
    .bind(w.actor)
    .bind(w.reason)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(Cas::Won { version })
}
