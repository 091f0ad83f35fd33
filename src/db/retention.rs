//! Trimming what is only kept for a while (issue 16, F-30): processed
//! webhook deliveries and Telegram updates, sent Plane outbox rows, quiet
//! alert dedup rows. What records what happened (tasks, stage history,
//! jobs, runs, effects) is never trimmed.
//!
//! Each table is walked in key order from its oldest row on the read pool,
//! and what is old enough is deleted by primary key on the writer in small
//! chunks: the write lock is held for one chunk at a time, never for a
//! scan. The walk stops at the first row younger than the cutoff (keys grow
//! with time), so a tick costs what it trims, not the table's size. A row
//! still to act on (unprocessed, pending) is kept whatever its age.

use sqlx::SqlitePool;

use super::Db;

/// Rows per delete statement: a chunk holds the write lock well under 5 ms.
pub const CHUNK: i64 = 500;

/// What one table's walk looks at: its key, its time column, the rows
/// that may go.
struct Table {
    name: &'static str,
    key: &'static str,
    at: &'static str,
    done: &'static str,
}

const DELIVERIES: Table = Table {
    name: "webhook_deliveries",
    key: "id",
    at: "received_at",
    done: "processed_at IS NOT NULL",
};
const TELEGRAM_UPDATES: Table = Table {
    name: "telegram_updates",
    key: "update_id",
    at: "received_at",
    done: "processed_at IS NOT NULL",
};
const OUTBOX: Table = Table {
    name: "plane_outbox",
    key: "id",
    at: "created_at",
    done: "state = 'sent'",
};

/// Rows removed per table by one [`trim`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Trimmed {
    pub deliveries: u64,
    pub telegram_updates: u64,
    pub outbox: u64,
    pub alerts: u64,
}

/// Remove what is done and older than `cutoff_ms`; an alert dedup row
/// only once it is also older than `alert_cutoff_ms` (its window).
pub async fn trim(db: &Db, cutoff_ms: i64, alert_cutoff_ms: i64) -> Result<Trimmed, sqlx::Error> {
    Ok(Trimmed {
        deliveries: trim_table(db, &DELIVERIES, cutoff_ms).await?,
        telegram_updates: trim_table(db, &TELEGRAM_UPDATES, cutoff_ms).await?,
        outbox: trim_table(db, &OUTBOX, cutoff_ms).await?,
        // A dedup row quiet for that long has no window left to keep; the
        // table holds one row per alert key, so one statement is enough.
        alerts: sqlx::query("DELETE FROM alert_dedup WHERE last_seen < ?")
            .bind(cutoff_ms.min(alert_cutoff_ms))
            .execute(db.writer())
            .await?
            .rows_affected(),
    })
}

async fn trim_table(db: &Db, t: &Table, cutoff_ms: i64) -> Result<u64, sqlx::Error> {
    let walk = format!(
        "SELECT {key}, {at}, {done} FROM {name} WHERE {key} > ? ORDER BY {key} LIMIT ?",
        key = t.key,
        at = t.at,
        done = t.done,
        name = t.name
    );
    let mut after = i64::MIN;
    let mut removed = 0;
    loop {
        let rows: Vec<(i64, i64, bool)> = sqlx::query_as(&walk)
            .bind(after)
            .bind(CHUNK)
            .fetch_all(db.reader())
            .await?;
        let Some(&(last, _, _)) = rows.last() else {
            return Ok(removed);
        };
        after = last;
        // The first row young enough ends the walk; an old row still to
        // act on is only skipped.
        let young = rows
            .iter()
            .position(|(_, at, _)| *at >= cutoff_ms)
            .unwrap_or(rows.len());
        let ids: Vec<i64> = rows[..young]
            .iter()
            .filter(|(_, _, done)| *done)
            .map(|(id, _, _)| *id)
            .collect();
        removed += delete_ids(db.writer(), t, &ids).await?;
        if young < rows.len() || (rows.len() as i64) < CHUNK {
            return Ok(removed);
        }
        tokio::task::yield_now().await;
    }
}

async fn delete_ids(writer: &SqlitePool, t: &Table, ids: &[i64]) -> Result<u64, sqlx::Error> {
    if ids.is_empty() {
        return Ok(0);
    }
    let marks = vec!["?"; ids.len()].join(",");
    // Re-checked under the lock: only a row still done is deleted.
    let sql = format!(
        "DELETE FROM {name} WHERE {key} IN ({marks}) AND {done}",
        name = t.name,
        key = t.key,
        done = t.done
    );
    let mut q = sqlx::query(&sql);
    for id in ids {
        q = q.bind(id);
    }
    Ok(q.execute(writer).await?.rows_affected())
}
