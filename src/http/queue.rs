//! `GET /queue` (F-30): read-only JSON of tasks, jobs and one object per
//! subsystem block. Subsystems that run loops register a [`StatusBlock`].

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::{ApiError, AppState};
use crate::db::{jobs, tasks};

/// A subsystem's block of `/queue` (`reaper`, `merge_gate`, ...).
#[async_trait]
pub trait StatusBlock: Send + Sync {
    fn name(&self) -> &'static str;
    async fn snapshot(&self) -> Value;
    /// Lines this subsystem adds to `/metrics` (Prometheus text, with their
    /// HELP and TYPE); most add none.
    async fn prometheus(&self) -> String {
        String::new()
    }
}

/// Finished tasks stay visible this long.
const RECENT_MS: i64 = 24 * 3600 * 1000;

pub async fn queue(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let rows = tasks::for_queue(state.db.reader(), RECENT_MS).await?;
    let mut by_stage: BTreeMap<String, i64> = BTreeMap::new();
    let tasks: Vec<Value> = rows
        .iter()
        .map(|t| {
            *by_stage.entry(t.stage.to_string()).or_default() += 1;
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
        "tasks_by_stage": by_stage,
        "jobs": { "by_status": counts, "active": active },
        "transition_lease": state.engine.lease_block().await?,
    });
    for block in state.blocks.iter() {
        body[block.name()] = block.snapshot().await;
    }
    Ok(Json(body))
}

pub type Blocks = Arc<Vec<Arc<dyn StatusBlock>>>;
