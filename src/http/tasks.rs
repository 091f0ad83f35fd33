//! `GET /tasks/<work item>` (B-4): one task whole, for `orchestrator task
//! show` and the board: its stages (history), jobs, agent runs and cost, its
//! transition lease, and its effect journal. Read-only, like `/queue`.

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};

use super::{ApiError, AppState};
use crate::db::{effects, history, jobs, leases, runs, tasks};

pub async fn show(
    State(state): State<AppState>,
    Path(work_item): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let r = state.db.reader();
    let task = tasks::latest_by_work_item(r, &work_item)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no task for work item {work_item}")))?;
    let stages = history::for_task(r, task.id).await?;
    let jobs: Vec<Value> = jobs::for_task(r, task.id)
        .await?
        .iter()
        .map(|j| {
            json!({
                "id": j.id, "stage": j.stage, "role": j.role, "status": j.status,
                "attempt": j.attempt, "error": j.error, "created_at": j.created_at,
                "started_at": j.started_at, "finished_at": j.finished_at,
            })
        })
        .collect();
    let runs = runs::for_task(r, task.id).await?;
    let cost = runs::cost_of(r, task.id, None).await?;
    let lease = leases::get(r, task.id).await?;
    let effects = effects::for_task(r, task.id).await?;
    Ok(Json(json!({
        "work_item": task.work_item,
        "project": task.project,
        "title": task.title,
        "stage": task.stage,
        "stage_label": task.stage.spec().label_en,
        "stage_version": task.stage_version,
        "branch": task.branch,
        "hold_reason": task.hold_reason,
        "cancel_requested": task.cancel_requested_at.is_some(),
        "validated_sha": task.validated_sha,
        "created_at": task.created_at,
        "updated_at": task.updated_at,
        "cost_usd": cost,
        "lease": lease,
        "stages": stages,
        "jobs": jobs,
        "runs": runs,
        "effects": effects,
    })))
}
