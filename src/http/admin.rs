//! Operator surface: `POST /transition-lease/release?work_item=<id>` with
//! `Authorization: Bearer <ORCH_ADMIN_TOKEN>` (F-10), or a board session
//! with its CSRF token (B-3); the one admin check, [`authorized`].

use axum::Json;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use super::session::{self, Refusal};
use super::{ApiError, AppState};
use crate::stage_engine::ForceRelease;

#[derive(Debug, Deserialize)]
pub struct ReleaseQuery {
    work_item: Option<String>,
    /// Release only this holder (the `holder` of the `/queue` lease entry):
    /// a lease that changed hands since the operator looked is left alone.
    holder: Option<String>,
}

/// The one admin check of every admin route: the bearer token (CLI,
/// scripts), or a board session (B-3) whose request carries its CSRF token
/// from our own origin (`session::Sessions::check`). No configured token
/// means the admin surface is closed, sessions included.
pub fn authorized(headers: &HeaderMap, token: &crate::config::Secret) -> bool {
    require(headers, token).is_ok()
}

/// [`authorized`] with the reason: 401 when no credential was offered or
/// it is wrong, 403 when a live session's request failed the CSRF checks.
pub fn require(headers: &HeaderMap, token: &crate::config::Secret) -> Result<(), ApiError> {
    if token.is_empty() {
        return Err(ApiError::Unauthorized);
    }
    if let Some(given) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return if token_matches(given.trim(), token) {
            Ok(())
        } else {
            Err(ApiError::Unauthorized)
        };
    }
    match session::global().check(headers) {
        Ok(()) => Ok(()),
        Err(Refusal::NoSession) => Err(ApiError::Unauthorized),
        Err(r) => Err(ApiError::Forbidden(r.to_string())),
    }
}

/// Constant-time comparison with the admin token (also the board's
/// sign-in).
pub fn token_matches(given: &str, token: &crate::config::Secret) -> bool {
    !token.is_empty() && bool::from(given.as_bytes().ct_eq(token.expose().as_bytes()))
}

/// Every admin route's check (F-10, B-10, B-3): [`require`] against the
/// configured admin token.
pub fn require_admin(
    headers: &HeaderMap,
    settings: &crate::config::Settings,
) -> Result<(), ApiError> {
    require(headers, &settings.admin_token)
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
