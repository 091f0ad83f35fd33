//! The HTTP surface: one `router()` wiring every route and layer.

pub mod admin;
pub mod board;
pub mod health;
pub mod items;
pub mod metrics;
pub mod queue;
pub mod server;
pub mod session;
pub mod tasks;
pub mod telegram;

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde_json::json;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub use crate::api_error::ApiError;
pub use crate::status::{Blocks, StatusBlock};
pub use metrics::Metrics;

use crate::config::Settings;
use crate::db::Db;
use crate::intake::{self, Gitea, Intake, Plane};
use crate::stage_engine::Engine;

/// What handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub db: Db,
    pub engine: Engine,
    pub metrics: Arc<Metrics>,
    pub blocks: Blocks,
    pub health: Arc<health::Health>,
}

pub fn router(state: AppState) -> Router {
    router_with_intake(state, None)
}

/// The router with the webhook routes (F-01, F-06) served by `intake`;
/// without one they do not exist (404).
pub fn router_with_intake(state: AppState, intake: Option<Intake>) -> Router {
    let limit = state.settings.http_body_limit_bytes;
    let mut routes = Router::new()
        .route("/health", get(health))
        .route("/queue", get(queue::queue))
        .route("/tasks/{work_item}", get(tasks::show))
        .route("/metrics", get(metrics::render))
        .route("/transition-lease/release", post(admin::release_lease))
        .merge(board::router());
    if state.settings.ops.telegram_updates == crate::config::UpdatesMode::Webhook {
        routes = routes.route("/webhooks/telegram", post(telegram::webhook));
    }
    if let Some(intake) = intake {
        // B-10: the local tracker; a status change takes the intake's path.
        routes = routes
            .route(
                "/items",
                post(items::create)
                    .get(items::list)
                    .with_state(intake.clone()),
            )
            .route(
                "/items/{work_item}",
                get(items::show).with_state(intake.clone()),
            )
            .route(
                "/items/{work_item}/status",
                post(items::set_status).with_state(intake.clone()),
            )
            .route(
                "/items/{work_item}/comments",
                post(items::comment).with_state(intake.clone()),
            )
            .route(
                "/webhooks/plane",
                post(intake::webhook::<Plane>).with_state(intake.clone()),
            )
            .route(
                "/webhooks/gitea",
                post(intake::webhook::<Gitea>).with_state(intake),
            );
    }
    routes
        .fallback(not_found)
        .layer(axum::middleware::from_fn(metrics::track))
        .layer(RequestBodyLimitLayer::new(limit))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(30),
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

async fn health(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    if !state.health.database_ok(&state.db).await {
        return Err(ApiError::Unavailable("database unreachable".into()));
    }
    Ok(Json(
        json!({ "status": "ok", "database": "ok", "version": env!("CARGO_PKG_VERSION") }),
    ))
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}
