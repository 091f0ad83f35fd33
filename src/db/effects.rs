//! `effects`: the journal of irreversible effects (B-1).

use serde::Serialize;
use sqlx::query::QueryScalar;
use sqlx::sqlite::SqliteArguments;
use sqlx::{Executor, FromRow, Sqlite};

use super::leases::{FENCE_SQL, Fence};
use super::now_ms;
use super::tasks::TaskRow;
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
    pub unknown_at: Option<i64>,
    pub unknown_grant: Option<i64>,
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

/// The planned row's values, in the column order of both inserts below.
fn bind_planned<'q>(
    q: QueryScalar<'q, Sqlite, i64, SqliteArguments<'q>>,
    p: &Planned<'q>,
) -> QueryScalar<'q, Sqlite, i64, SqliteArguments<'q>> {
    q.bind(p.task_id)
        .bind(p.key)
        .bind(p.from)
        .bind(p.to)
        .bind(p.version)
        .bind(p.kind)
        .bind(p.holder)
        .bind(now_ms())
}

/// The new row's id.
pub async fn insert_planned<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    p: &Planned<'_>,
) -> Result<i64, sqlx::Error> {
    let q = sqlx::query_scalar(
        "INSERT INTO effects (task_id, transition_key, from_stage, to_stage, stage_version, kind, state, holder, planned_at)
         VALUES (?, ?, ?, ?, ?, ?, 'planned', ?, ?) RETURNING id",
    );
    bind_planned(q, p).fetch_one(ex).await
}

/// A first plan in ONE autocommit statement: the row is inserted only while
/// `holder` holds the task's lease at the fence's generation and no row of
/// this transition and kind exists. `None`: nothing was written (a row is
/// there, or the lease was lost): the caller's transaction tells which.
pub async fn insert_planned_if_held<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    p: &Planned<'_>,
    fence: Fence,
) -> Result<Option<i64>, sqlx::Error> {
    // The WHERE also settles SQLite's parsing of INSERT … SELECT … ON CONFLICT.
    let q = sqlx::query_scalar(
        "INSERT INTO effects (task_id, transition_key, from_stage, to_stage, stage_version, kind, state, holder, planned_at)
         SELECT ?, ?, ?, ?, ?, ?, 'planned', ?, ?
         WHERE EXISTS (SELECT 1 FROM transition_lease l JOIN tasks t ON t.id = l.task_id
                       WHERE l.task_id = ? AND l.holder = ? AND (NOT ? OR t.lease_generation = ?))
         ON CONFLICT (transition_key, kind) DO NOTHING
         RETURNING id",
    );
    bind_planned(q, p)
        .bind(fence.task_id)
        .bind(p.holder)
        .bind(fence.enforce)
        .bind(fence.generation)
        .fetch_optional(ex)
        .await
}

/// A row found open (planned after a crash, failed, unknown) is planned
/// again by this holder. Fenced: false when the holder lost its lease.
pub async fn replan<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    id: i64,
    holder: &str,
    fence: Fence,
) -> Result<bool, sqlx::Error> {
    let sql = format!(
        "UPDATE effects SET state = 'planned', holder = ?, attempts = attempts + 1, error = NULL,
                unknown_at = NULL, unknown_grant = NULL
         WHERE id = ? AND state != 'done' AND {FENCE_SQL}"
    );
    let r = sqlx::query(&sql)
        .bind(holder)
        .bind(id)
        .bind(fence.enforce)
        .bind(fence.task_id)
        .bind(fence.generation)
        .execute(ex)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// planned|unknown → done with its result (applied, or found to have
/// happened). Fenced: false (nothing written) when
/// the holder lost its lease; the row stays planned for the next holder's
/// reconcile.
pub async fn mark_done<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    id: i64,
    result: &str,
    fence: Fence,
) -> Result<bool, sqlx::Error> {
    let sql = format!(
        "UPDATE effects SET state = 'done', result = ?, done_at = ?, error = NULL
         WHERE id = ? AND state IN ('planned','unknown') AND {FENCE_SQL}"
    );
    let r = sqlx::query(&sql)
        .bind(result)
        .bind(now_ms())
        .bind(id)
        .bind(fence.enforce)
        .bind(fence.task_id)
        .bind(fence.generation)
        .execute(ex)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// planned → failed: known not to have happened. Fenced.
pub async fn mark_failed<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    id: i64,
    error: &str,
    fence: Fence,
) -> Result<bool, sqlx::Error> {
    let sql = format!(
        "UPDATE effects SET state = 'failed', error = ? WHERE id = ? AND state = 'planned' AND {FENCE_SQL}"
    );
    let r = sqlx::query(&sql)
        .bind(error)
        .bind(id)
        .bind(fence.enforce)
        .bind(fence.task_id)
        .bind(fence.generation)
        .execute(ex)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// planned|unknown → unknown: it may have reached the outside and did not
/// provably succeed. Records the task's `retry_grants` now, so only a later
/// decision of a person lets it run again. Fenced.
pub async fn mark_unknown<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    id: i64,
    error: &str,
    fence: Fence,
) -> Result<bool, sqlx::Error> {
    let sql = format!(
        "UPDATE effects SET state = 'unknown', error = ?, unknown_at = ?,
                unknown_grant = (SELECT g.retry_grants FROM tasks g WHERE g.id = effects.task_id)
         WHERE id = ? AND state IN ('planned','unknown') AND {FENCE_SQL}"
    );
    let r = sqlx::query(&sql)
        .bind(error)
        .bind(now_ms())
        .bind(id)
        .bind(fence.enforce)
        .bind(fence.task_id)
        .bind(fence.generation)
        .execute(ex)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// Whether a person decided after the row became unknown (a Confirm Deploy,
/// an operator's retry): the task's grant counter moved past the row's.
pub async fn retry_granted<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    id: i64,
) -> Result<bool, sqlx::Error> {
    let g: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM effects e JOIN tasks t ON t.id = e.task_id
         WHERE e.id = ? AND e.state = 'unknown' AND t.retry_grants > COALESCE(e.unknown_grant, 0)",
    )
    .bind(id)
    .fetch_optional(ex)
    .await?;
    Ok(g.is_some())
}

/// Rows of a task at one stage version that record a started transition
/// (planned, unknown or done): the journaled intent.
pub async fn intent_at<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    task_id: i64,
    version: i64,
) -> Result<Vec<EffectRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT * FROM effects WHERE task_id = ? AND stage_version = ? AND state IN ('planned','unknown','done') ORDER BY id",
    )
    .bind(task_id)
    .bind(version)
    .fetch_all(ex)
    .await
}

/// Every journal row of a task, oldest first (`GET /tasks/<work item>`, B-4).
pub async fn for_task<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    task_id: i64,
) -> Result<Vec<EffectRow>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM effects WHERE task_id = ? ORDER BY id")
        .bind(task_id)
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

/// A task and the target of the transition journaled at its current
/// version, if any (the engine's snapshot, in one read).
pub async fn snapshot<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
    task_id: i64,
) -> Result<Option<(TaskRow, Option<Stage>)>, sqlx::Error> {
    #[derive(FromRow)]
    struct Snap {
        #[sqlx(flatten)]
        task: TaskRow,
        intent_to: Option<Stage>,
    }
    let s: Option<Snap> = sqlx::query_as(
        "SELECT t.*, (SELECT e.to_stage FROM effects e WHERE e.task_id = t.id
                       AND e.stage_version = t.stage_version
                       AND e.state IN ('planned','unknown','done') ORDER BY e.id LIMIT 1) AS intent_to
         FROM tasks t WHERE t.id = ?",
    )
    .bind(task_id)
    .fetch_optional(ex)
    .await?;
    Ok(s.map(|s| (s.task, s.intent_to)))
}

/// Effects by journal state, for `/metrics`.
pub async fn count_by_state<'e>(
    ex: impl Executor<'e, Database = Sqlite>,
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT state, COUNT(*) FROM effects GROUP BY state ORDER BY state")
        .fetch_all(ex)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::leases::{self, LeaseRow};
    use crate::db::{Db, tasks};

    async fn task_with_lease(db: &Db, holder: &str) -> (i64, i64) {
        let id = tasks::insert(
            db.writer(),
            &tasks::NewTask {
                work_item: "W-1".into(),
                project: "p".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let row = LeaseRow {
            task_id: id,
            owner_pid: 1,
            owner_start_time: 1,
            owner_boot_id: "b".into(),
            holder: holder.into(),
            actor: "a".into(),
            transition: "t".into(),
            acquired_at: 0,
        };
        assert!(leases::put_if_free(db.writer(), &row).await.unwrap());
        // A second claim while the row is there writes nothing.
        let other = LeaseRow {
            holder: "other".into(),
            ..row
        };
        assert!(!leases::put_if_free(db.writer(), &other).await.unwrap());
        let g = leases::bump_generation(db.writer(), id).await.unwrap();
        (id, g)
    }

    fn planned<'a>(task_id: i64, holder: &'a str) -> Planned<'a> {
        Planned {
            task_id,
            key: "k",
            from: Stage::Testing,
            to: Stage::DeployStaging,
            version: 0,
            kind: "merge_pr",
            holder,
        }
    }

    /// The one-statement plan writes exactly when the transaction it stands
    /// in for would have: the holder's lease at its generation, no row yet.
    #[tokio::test]
    async fn a_first_plan_is_written_only_under_the_lease_and_only_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("o.db")).await.unwrap();
        let (id, g) = task_with_lease(&db, "h").await;
        let fence = |generation| Fence {
            task_id: id,
            generation,
            enforce: true,
        };
        // Not the holder, or an older generation: nothing.
        assert_eq!(
            insert_planned_if_held(db.writer(), &planned(id, "x"), fence(g))
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            insert_planned_if_held(db.writer(), &planned(id, "h"), fence(g - 1))
                .await
                .unwrap(),
            None
        );
        assert!(get(db.reader(), "k", "merge_pr").await.unwrap().is_none());
        // The holder: planned once; a second plan finds the row, writes none.
        let first = insert_planned_if_held(db.writer(), &planned(id, "h"), fence(g))
            .await
            .unwrap()
            .expect("planned");
        let row = get(db.reader(), "k", "merge_pr").await.unwrap().unwrap();
        assert_eq!((row.id, row.state.as_str()), (first, "planned"));
        assert_eq!(
            insert_planned_if_held(db.writer(), &planned(id, "h"), fence(g))
                .await
                .unwrap(),
            None
        );
        // The lease gone: nothing either, even unfenced.
        leases::delete_if_holder(db.writer(), id, "h")
            .await
            .unwrap();
        let unfenced = Fence {
            enforce: false,
            ..fence(g)
        };
        let mut other = planned(id, "h");
        other.kind = "prod_deploy";
        assert_eq!(
            insert_planned_if_held(db.writer(), &other, unfenced)
                .await
                .unwrap(),
            None
        );
    }
}
