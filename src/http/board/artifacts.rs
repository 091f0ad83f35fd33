//! A task's artifacts on the board (B-3): `GET /board/artifacts/<work item>`
//! lists the files of `docs/work-items/<work item>/` in its worktree,
//! `GET /board/artifacts/<work item>/<path>` serves one as `text/plain`.
//!
//! An agent wrote those files, so they are read only through `untrusted`
//! (invariant 8): no symlink followed, regular files only (a FIFO is never
//! opened), at most `ORCH_ARTIFACT_MAX_BYTES`, off the runtime. The path is
//! checked here first so a bad one is a clear 400, and `untrusted` refuses
//! it again.

use std::path::{Component, Path, PathBuf};

use axum::Json;
use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::db::tasks;
use crate::http::AppState;
use crate::stage_engine::inputs::artifact_rel;
use crate::untrusted::{self, Limits, UntrustedError};

/// Why an artifact was not served; each maps to a 4xx but `Internal`.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("{0} is not a work item")]
    BadWorkItem(String),
    #[error("{0} is not a plain relative path inside the artifact dir")]
    BadPath(String),
    #[error("no task for work item {0}")]
    UnknownTask(String),
    #[error("work item {0} has no worktree (yet)")]
    NoWorktree(String),
    #[error(transparent)]
    Untrusted(#[from] UntrustedError),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

impl IntoResponse for ArtifactError {
    fn into_response(self) -> Response {
        use UntrustedError as U;
        let status = match &self {
            ArtifactError::BadWorkItem(_) | ArtifactError::BadPath(_) => StatusCode::BAD_REQUEST,
            ArtifactError::UnknownTask(_) | ArtifactError::NoWorktree(_) => StatusCode::NOT_FOUND,
            ArtifactError::Untrusted(e) => match e {
                U::NotFound { .. } => StatusCode::NOT_FOUND,
                U::BadPath { .. } | U::Directory { .. } | U::NotADirectory { .. } => {
                    StatusCode::BAD_REQUEST
                }
                U::Symlink { .. } | U::Fifo { .. } | U::Device { .. } | U::Socket { .. } => {
                    StatusCode::FORBIDDEN
                }
                U::TooLarge { .. }
                | U::TotalTooLarge { .. }
                | U::TooManyEntries { .. }
                | U::TooDeep { .. }
                | U::NotUtf8 { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                U::TimedOut { .. } => StatusCode::SERVICE_UNAVAILABLE,
                U::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ArtifactError::Db(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::warn!(error = %self, "artifact not served");
        }
        let msg = match status {
            StatusCode::INTERNAL_SERVER_ERROR => "internal error".to_string(),
            _ => self.to_string(),
        };
        (status, Json(json!({ "error": msg }))).into_response()
    }
}

/// A work item id as the trackers make them (`DEMO-12`): it becomes a path
/// component, so nothing else is accepted.
pub fn check_work_item(wi: &str) -> Result<(), ArtifactError> {
    let ok = !wi.is_empty()
        && wi.len() <= 64
        && wi
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && wi.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(ArtifactError::BadWorkItem(wi.chars().take(80).collect()))
    }
}

/// The file's path inside the artifact dir: normal components only.
pub fn check_path(rel: &str) -> Result<PathBuf, ArtifactError> {
    let p = Path::new(rel);
    let plain = !rel.is_empty()
        && !rel.contains('\0')
        && !rel.contains('\\')
        && p.components().all(|c| matches!(c, Component::Normal(_)))
        && !rel
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..");
    if plain {
        Ok(p.to_path_buf())
    } else {
        Err(ArtifactError::BadPath(rel.chars().take(200).collect()))
    }
}

async fn worktree(state: &AppState, wi: &str) -> Result<PathBuf, ArtifactError> {
    check_work_item(wi)?;
    let task = tasks::latest_by_work_item(state.db.reader(), wi)
        .await?
        .ok_or_else(|| ArtifactError::UnknownTask(wi.into()))?;
    task.worktree
        .filter(|w| !w.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| ArtifactError::NoWorktree(wi.into()))
}

/// The files of the artifact dir (names relative to it) and those refused
/// with why; an artifact dir not there yet is an empty list.
pub async fn list(
    State(state): State<AppState>,
    UrlPath(wi): UrlPath<String>,
) -> Result<Json<Value>, ArtifactError> {
    let root = worktree(&state, &wi).await?;
    let limits = Limits::artifacts(state.settings.artifact_max_bytes);
    let tree = match untrusted::read_tree(&root, &artifact_rel(&wi), limits, |_| true).await {
        Ok(t) => t,
        Err(e) if e.is_not_found() => untrusted::Tree::default(),
        Err(e) => return Err(e.into()),
    };
    let refused: serde_json::Map<String, Value> = tree
        .refused
        .iter()
        .map(|(k, e)| (k.clone(), json!(e.to_string())))
        .collect();
    Ok(Json(json!({
        "work_item": wi,
        "files": tree.files.keys().collect::<Vec<_>>(),
        "refused": refused,
    })))
}

/// One artifact file as `text/plain`.
pub async fn file(
    State(state): State<AppState>,
    UrlPath((wi, rel)): UrlPath<(String, String)>,
) -> Result<Response, ArtifactError> {
    let rel = check_path(&rel)?;
    let root = worktree(&state, &wi).await?;
    let bytes = untrusted::read_file(
        &root,
        &artifact_rel(&wi).join(rel),
        state.settings.artifact_max_bytes,
        untrusted::READ_TIMEOUT,
    )
    .await?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            // An agent's bytes: never rendered as a page of our origin.
            (
                header::CONTENT_SECURITY_POLICY,
                "sandbox; default-src 'none'",
            ),
        ],
        bytes,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_items_are_plain_ids() {
        for ok in ["DEMO-1", "ORCH-114", "a_b-9"] {
            assert!(check_work_item(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "..",
            "../x",
            "DEMO-1/..",
            "-x",
            "a b",
            "a%2f",
            &"X".repeat(65),
        ] {
            assert!(check_work_item(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths_stay_inside_the_dir() {
        for ok in ["01-brd.md", "06-adr/ADR-001-x.md"] {
            assert_eq!(check_path(ok).unwrap(), PathBuf::from(ok));
        }
        for bad in [
            "",
            "../01-brd.md",
            "06-adr/../../x",
            "/etc/passwd",
            "./01-brd.md",
            "a//b",
            "a/",
            "a\\..\\b",
            "a\0b",
        ] {
            assert!(
                matches!(check_path(bad), Err(ArtifactError::BadPath(_))),
                "{bad:?}"
            );
        }
    }
}
