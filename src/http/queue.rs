//! `GET /queue` (F-30): read-only JSON of tasks, jobs and one object per
//! subsystem block. Subsystems that run loops register a
//! [`StatusBlock`](crate::status::StatusBlock) (`src/status.rs`).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, AppState};
use crate::db::{jobs, tasks};

/// Finished tasks stay visible this long.
const RECENT_MS: i64 = 24 * 3600 * 1000;

/// Tasks per page unless `?limit=` says otherwise, and the most a page holds.
pub const PAGE_DEFAULT: i64 = 200;
pub const PAGE_MAX: i64 = 1000;

/// `?limit=<n>&after=<cursor>`: the task list is paginated (keyset on the
/// task id); `next` is the cursor of the following page, null on the last.
#[derive(Debug, Default, Deserialize)]
pub struct Page {
    limit: Option<i64>,
    after: Option<i64>,
}

pub async fn queue(
    State(state): State<AppState>,
    page: Result<Query<Page>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(page) = page.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = match page.limit {
        None => PAGE_DEFAULT,
        Some(n) if (1..=PAGE_MAX).contains(&n) => n,
        Some(n) => {
            return Err(ApiError::BadRequest(format!(
                "limit must be 1..={PAGE_MAX}, not {n}"
            )));
        }
    };
    let after = page.after.unwrap_or(0);
    // One more than the page, to know whether another follows.
    let mut rows = tasks::queue_page(state.db.reader(), RECENT_MS, after, limit + 1).await?;
    let next = (rows.len() as i64 > limit).then(|| {
        rows.truncate(limit as usize);
        rows.last().map(|t| t.id)
    });
    let by_stage: BTreeMap<String, i64> = tasks::queue_counts(state.db.reader(), RECENT_MS)
        .await?
        .into_iter()
        .collect();
    let tasks: Vec<Value> = rows
        .iter()
        .map(|t| {
            json!({
                "work_item": t.work_item,
                "project": t.project,
                "stage": t.stage,
                "stage_label": t.stage.spec().label_en,
                "stage_version": t.stage_version,
                "title": t.title,
                "hold_reason": t.hold_reason,
                "cancel_requested": t.cancel_requested_at.is_some(),
                "updated_at": t.updated_at,
            })
        })
        .collect();
    let counts: BTreeMap<String, i64> = jobs::count_by_status(state.db.reader())
        .await?
        .into_iter()
        .collect();
    let active = jobs::active(state.db.reader()).await?;
    let mut body = json!({
        "tasks": tasks,
        "tasks_total": by_stage.values().sum::<i64>(),
        "next": next.flatten(),
        "tasks_by_stage": by_stage,
        "jobs": { "by_status": counts, "active": active },
        "transition_lease": state.engine.lease_block().await?,
    });
    for block in state.blocks.iter() {
        body[block.name()] = block.snapshot().await;
    }
    Ok(Json(body))
}
