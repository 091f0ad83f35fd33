//! The board (B-3, ADR 0014): `GET /`, tasks by stage with their card data,
//! refreshed by polling `GET /board/data`. Served from the binary (the page,
//! its script and its style are `include_str!`), no build step, nothing
//! from another origin.
//!
//! Read-only without the admin token. Signing in (`POST /board/sign-in`
//! with the token) gives an HttpOnly session cookie (`session`); the page's
//! actions are the admin routes themselves (`/items...` in local mode, the
//! lease release), which accept the session through `admin::authorized`
//! only with its CSRF token and from our own origin.

pub mod artifacts;
pub mod data;

use axum::extract::{Request, State};
use axum::http::header::{self, HeaderValue};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::session::{self, Sessions};
use super::{ApiError, AppState, admin};
use crate::db::board;

const INDEX_HTML: &str = include_str!("board/index.html");
const BOARD_JS: &str = include_str!("board/board.js");
const BOARD_CSS: &str = include_str!("board/board.css");

/// Finished tasks stay on the board as long as on `/queue`.
const RECENT_MS: i64 = 24 * 3600 * 1000;

/// Only our own script and style; no inline code, no frames, forms post to
/// us only.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; \
    frame-ancestors 'none'";

/// The board's routes (merged into the daemon's router).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/board/board.js", get(script))
        .route("/board/board.css", get(style))
        .route("/board/data", get(snapshot))
        .route("/board/sign-in", post(sign_in))
        .route("/board/sign-out", post(sign_out))
        .route("/board/artifacts/{work_item}", get(artifacts::list))
        .route("/board/artifacts/{work_item}/{*path}", get(artifacts::file))
        .layer(axum::middleware::from_fn(headers))
}

/// The headers of every board response: no framing, no sniffing, no
/// caching (the data changes; the assets change with the binary), and a
/// `Referer` for our own origin only (the CSRF check's fallback).
async fn headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    let set = |h: &mut HeaderMap, name: header::HeaderName, value: &'static str| {
        h.insert(name, HeaderValue::from_static(value));
    };
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        set(h, header::CONTENT_SECURITY_POLICY, CSP);
    }
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::REFERRER_POLICY, "same-origin");
    set(h, header::CACHE_CONTROL, "no-store");
    res
}

async fn index() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        INDEX_HTML,
    )
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        BOARD_JS,
    )
}

async fn style() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        BOARD_CSS,
    )
}

async fn snapshot(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let snap = board::snapshot(&state.db, RECENT_MS).await?;
    let csrf = signed_in(&state, &headers);
    Ok(Json(data::render(&state.settings, snap, csrf.as_deref())))
}

/// The CSRF token of the request's live session, when the admin surface is
/// open at all.
fn signed_in(state: &AppState, headers: &HeaderMap) -> Option<String> {
    if state.settings.admin_token.is_empty() {
        return None;
    }
    sessions().of_request(headers).map(|(_, csrf)| csrf)
}

fn sessions() -> &'static Sessions {
    session::global()
}

#[derive(Deserialize)]
pub struct SignIn {
    #[serde(default)]
    token: String,
}

/// `POST /board/sign-in` (form field `token`): a session cookie, then back
/// to the board. The origin is checked too, so no other page can sign a
/// browser in (login CSRF).
async fn sign_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<SignIn>,
) -> Response {
    if !session::same_origin(&headers) {
        return page(
            StatusCode::FORBIDDEN,
            "Sign-in refused: the form was not posted from this board.",
        );
    }
    if state.settings.admin_token.is_empty() {
        return page(
            StatusCode::UNAUTHORIZED,
            "No ORCH_ADMIN_TOKEN is configured: the board stays read-only.",
        );
    }
    if !admin::token_matches(form.token.trim(), &state.settings.admin_token) {
        tracing::info!("board sign-in refused: wrong token");
        return page(StatusCode::UNAUTHORIZED, "Wrong admin token.");
    }
    let s = sessions().create();
    tracing::info!("board sign-in");
    let mut res = Redirect::to("/").into_response();
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(&s.id)) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res
}

/// `POST /board/sign-out`: ends the session (with its CSRF token, like
/// every action) and drops the cookie.
async fn sign_out(headers: HeaderMap) -> Result<Response, ApiError> {
    match sessions().check(&headers) {
        Ok(()) => {}
        Err(session::Refusal::NoSession) => {}
        Err(r) => return Err(ApiError::Forbidden(r.to_string())),
    }
    if let Some(id) = session::cookie(&headers) {
        sessions().remove(id);
    }
    let mut res = Json(json!({ "signed_in": false })).into_response();
    if let Ok(v) = HeaderValue::from_str(&session::clear_cookie()) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(res)
}

/// A small page for the answers of a form post (no script needed).
fn page(status: StatusCode, message: &str) -> Response {
    let body = format!(
        "<!doctype html><meta charset=utf-8><title>orchestrator</title>\
         <link rel=stylesheet href=/board/board.css><main class=notice><p>{}</p>\
         <p><a href=/>Back to the board</a></p></main>",
        escape(message)
    );
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
