//! The local tracker over HTTP (B-10): `POST /items`, `POST
//! /items/<work item>/status`, `POST /items/<work item>/comments` (admin
//! token), `GET /items`, `GET /items/<work item>` (read-only, like
//! `/queue`). Bodies are read by hand so that every malformed one is a 400
//! that says what is wrong, never a 5xx.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::ApiError;
use super::admin::require_admin;
use crate::db::local_items::{self, ItemRow};
use crate::intake::Intake;
use crate::intake::local::LocalError;

impl From<LocalError> for ApiError {
    fn from(e: LocalError) -> Self {
        match e {
            LocalError::Invalid(m) => ApiError::BadRequest(m),
            e @ LocalError::UnknownItem(_) => ApiError::NotFound(e.to_string()),
            LocalError::Db(e) => ApiError::internal(e),
        }
    }
}

fn body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::BadRequest(format!("malformed JSON body: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewItem {
    project: String,
    title: String,
    #[serde(default)]
    description: String,
    /// A status name; default To Analyse.
    status: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetStatus {
    status: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewComment {
    text: String,
}

fn item_json(intake: &Intake, item: &ItemRow) -> Value {
    let statuses = &intake.pipeline().settings.plane.statuses;
    json!({
        "work_item": item.work_item,
        "project": item.project,
        "title": item.title,
        "description": item.description,
        "status": statuses.name_of(&item.status).unwrap_or(&item.status),
        "status_key": item.status,
        "created_at": item.created_at,
        "updated_at": item.updated_at,
    })
}

pub async fn create(
    State(intake): State<Intake>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    require_admin(&headers, &intake.pipeline().settings)?;
    let b: NewItem = body(&bytes)?;
    let item = intake
        .create_item(&b.project, &b.title, &b.description, b.status.as_deref())
        .await?;
    Ok((StatusCode::CREATED, Json(item_json(&intake, &item))))
}

pub async fn set_status(
    State(intake): State<Intake>,
    Path(work_item): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Json<Value>, ApiError> {
    require_admin(&headers, &intake.pipeline().settings)?;
    let b: SetStatus = body(&bytes)?;
    let set = intake.set_item_status(&work_item, &b.status).await?;
    let mut v = item_json(&intake, &set.item);
    v["queued"] = json!(set.queued);
    Ok(Json(v))
}

pub async fn comment(
    State(intake): State<Intake>,
    Path(work_item): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    require_admin(&headers, &intake.pipeline().settings)?;
    let b: NewComment = body(&bytes)?;
    intake.comment_item(&work_item, &b.text).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "work_item": work_item, "commented": true })),
    ))
}

pub async fn show(
    State(intake): State<Intake>,
    Path(work_item): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let db = &intake.pipeline().db;
    let item = local_items::by_work_item(db.reader(), &work_item)
        .await?
        .ok_or_else(|| {
            ApiError::NotFound(format!("no work item {work_item} in the local tracker"))
        })?;
    let comments = local_items::comments(db.reader(), item.id).await?;
    let mut v = item_json(&intake, &item);
    v["comments"] = json!(comments);
    Ok(Json(v))
}

pub async fn list(State(intake): State<Intake>) -> Result<Json<Value>, ApiError> {
    let items = local_items::all(intake.pipeline().db.reader()).await?;
    let items: Vec<Value> = items.iter().map(|i| item_json(&intake, i)).collect();
    Ok(Json(json!({ "items": items })))
}
