//! `POST /webhooks/telegram` (B-11, `ORCH_TELEGRAM_UPDATES=webhook`):
//! checked with `X-Telegram-Bot-Api-Secret-Token`, stored durably and
//! deduplicated by `update_id`, answered; the `telegram_updates` loop acts
//! on it after the answer (invariant 5: ack after the commit, before any
//! slow work).

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{ApiError, AppState};
use crate::db::telegram;

pub const SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";

/// Compare digests, so the time taken says nothing about the secret.
fn same_secret(given: &str, ours: &str) -> bool {
    !ours.is_empty() && Sha256::digest(given.as_bytes()) == Sha256::digest(ours.as_bytes())
}

pub async fn webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let given = headers
        .get(SECRET_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !same_secret(given, state.settings.ops.telegram_webhook_secret.expose()) {
        tracing::warn!("telegram webhook refused: bad or missing X-Telegram-Bot-Api-Secret-Token");
        return Err(ApiError::Unauthorized);
    }
    let update: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("body is not JSON: {e}")))?;
    let Some(id) = update["update_id"].as_i64() else {
        return Err(ApiError::BadRequest("update_id is missing".into()));
    };
    let fresh = telegram::store_update(state.db.writer(), id, &update.to_string()).await?;
    tracing::info!(update_id = id, fresh, "telegram update stored");
    Ok(Json(json!({ "ok": true, "duplicate": !fresh })))
}
