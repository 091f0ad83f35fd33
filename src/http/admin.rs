//! Operator surface: `POST /transition-lease/release?work_item=<id>` with
//! `Authorization: Bearer <ORCH_ADMIN_TOKEN>` (F-10).

use axum::Json;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, AppState};
use crate::stage_engine::ForceRelease;

#[derive(Debug, Deserialize)]
pub struct ReleaseQuery {
    work_item: Option<String>,
    /// Release only this holder (the `holder` of the `/queue` lease entry):
    /// a lease that changed hands since the operator looked is left alone.
    holder: Option<String>,
}

/// Constant-time comparison of the bearer token. No configured token means
/// the admin surface is closed.
pub fn authorized(headers: &HeaderMap, token: &crate::config::Secret) -> bool {
    if token.is_empty() {
        return false;
    }
    let Some(given) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (a, b) = (given.trim().as_bytes(), token.expose().as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Every admin route's check (F-10, B-10): `Err(Unauthorized)` unless the
/// request carries the admin token. The one place a new credential (the
/// board's session cookie) is accepted.
pub fn require_admin(
    headers: &HeaderMap,
    settings: &crate::config::Settings,
) -> Result<(), ApiError> {
    if authorized(headers, &settings.admin_token) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

pub async fn release_lease(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<ReleaseQuery>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&headers, &state.settings)?;
    let wi = q
        .work_item
        .filter(|w| !w.trim().is_empty())
        .ok_or_else(|| ApiError::BadRequest("query parameter work_item is required".into()))?;
    let holder = q.holder.as_deref().filter(|h| !h.trim().is_empty());
    match state
        .engine
        .force_release_holder(&wi, holder, "operator (HTTP)")
        .await?
    {
        ForceRelease::UnknownWorkItem => {
            Err(ApiError::NotFound(format!("no task for work item {wi}")))
        }
        ForceRelease::NotHeld => Ok(Json(json!({ "work_item": wi, "released": null }))),
        ForceRelease::Released(row) => Ok(Json(json!({
            "work_item": wi,
            "released": {
                "actor": row.actor,
                "transition": row.transition,
                "owner_pid": row.owner_pid,
                "owner_boot_id": row.owner_boot_id,
                "acquired_at": row.acquired_at,
            }
        }))),
    }
}
