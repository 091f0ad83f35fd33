//! Intake (F-01, F-06, B-6): signed webhooks in.
//!
//! A delivery is verified (HMAC-SHA256 of the raw body, constant-time
//! compare), parsed, stored raw in `webhook_deliveries` — deduplicated on its
//! delivery id AND its content key — and acked once that transaction has
//! committed. The work happens after the answer, in the intake worker, which
//! takes unprocessed rows in arrival order (so a crash between ack and work
//! loses nothing: the next start picks the row up). `replay` feeds a stored
//! delivery through the same processing again.

pub mod gitea;
pub mod local;
pub mod plane;

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, Notify};

use crate::api_error::ApiError;
use crate::config::{Project, Secret, Settings};
use crate::db::deliveries::{self, DeliveryRow, Inserted};
use crate::db::group_commit::{Delivery, DeliveryWriter, GroupError};
use crate::events::{Event, ParseError, Parsed, PlaneStateChange, StateRef};
use crate::pipeline::Pipeline;
use crate::pipeline::status::{StatusChange, strip_html};

pub use gitea::Gitea;
pub use plane::Plane;

/// One webhook source: where its signature, delivery id and event name are,
/// and how its body parses.
pub trait Source: Send + Sync + 'static {
    /// `plane` or `gitea`: the `source` column.
    const NAME: &'static str;
    /// Headers stored with the body (lower case), for replay and forensics.
    const KEPT_HEADERS: &'static [&'static str];
    const EVENT_HEADER: &'static str;
    fn secret(settings: &Settings) -> &Secret;
    fn signature(headers: &HeaderMap) -> Option<String>;
    fn delivery_id(headers: &HeaderMap) -> Option<String>;
    fn event_header(headers: &HeaderMap) -> Option<String> {
        header(headers, Self::EVENT_HEADER)
    }
    fn parse(event_header: Option<&str>, body: &[u8]) -> Result<Parsed, ParseError>;
}

/// Does `given` (hex, optionally `sha256=`-prefixed) sign `body` with
/// `secret`? The comparison is constant-time (`Mac::verify_slice`).
pub fn verify_signature(secret: &[u8], body: &[u8], given: &str) -> bool {
    let given = given.trim();
    let hex_part = given.strip_prefix("sha256=").unwrap_or(given);
    let Ok(sig) = hex::decode(hex_part) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

/// The hex HMAC-SHA256 of `body`: what a sender puts in its header.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// A header's value as text, `None` when absent, empty or not UTF-8.
pub fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

/// A string (or number, as text) at a JSON path; `None` for anything else.
pub fn text_at(v: &Value, path: &[&str]) -> Option<String> {
    let mut cur = v;
    for key in path {
        cur = cur.get(key)?;
    }
    match cur {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// An integer (or a numeric string) at a JSON path.
pub fn int_at(v: &Value, path: &[&str]) -> Option<i64> {
    let mut cur = v;
    for key in path {
        cur = cur.get(key)?;
    }
    match cur {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A delivery whose signature checked out and whose body parsed. The
/// extractor answers 401 for a bad or missing signature and 400 for a body
/// it cannot read; nothing is stored in either case.
pub struct Signed<S> {
    pub delivery_id: String,
    /// JSON object of [`Source::KEPT_HEADERS`].
    pub headers: String,
    pub body: Bytes,
    pub parsed: Parsed,
    /// A webhook slot (F-30), held until the answer is made.
    _slot: tokio::sync::OwnedSemaphorePermit,
    _source: PhantomData<fn() -> S>,
}

impl<S: Source> FromRequest<Intake> for Signed<S> {
    type Rejection = Response;

    async fn from_request(req: Request, intake: &Intake) -> Result<Self, Response> {
        let out = Self::check(req, intake).await;
        if let Err(r) = &out {
            let outcome = match r.status().as_u16() {
                401 => "unauthorized",
                400 => "bad_request",
                408 => "timeout",
                413 => "too_large",
                503 => "shed",
                _ => "refused",
            };
            crate::telemetry::metrics::families().webhook(S::NAME, outcome);
        }
        out
    }
}

impl<S: Source> Signed<S> {
    /// Who sent it, then a slot, then the body, its signature and shape.
    async fn check(req: Request, intake: &Intake) -> Result<Self, Response> {
        let headers = req.headers().clone();
        let source = S::NAME;
        let settings = &intake.0.pipeline.settings;
        let secret = S::secret(settings);
        let unauthorized = || ApiError::Unauthorized.into_response();
        // Who may send is settled before a byte of the body is read (F-30).
        if secret.is_empty() {
            // Fail closed: without a secret nobody can prove who sent it.
            tracing::error!(
                source,
                "webhook refused: ORCH_{}_WEBHOOK_SECRET is empty",
                source.to_ascii_uppercase()
            );
            return Err(unauthorized());
        }
        let Some(given) = S::signature(&headers) else {
            tracing::warn!(source, "webhook refused: no signature header");
            return Err(unauthorized());
        };
        // Shed load well before the sender gives up (Gitea waits 5 s): a
        // 503 now, and the reconciler's poll finds what it was about (F-16).
        let wait = Duration::from_millis(settings.webhook_shed_after_ms);
        let slot = match tokio::time::timeout(wait, intake.0.slots.clone().acquire_owned()).await {
            Ok(Ok(slot)) => slot,
            _ => {
                let shed = intake.0.shed.fetch_add(1, Ordering::Relaxed) + 1;
                if shed.is_power_of_two() {
                    tracing::warn!(
                        source,
                        shed,
                        "webhook shed (503): ORCH_WEBHOOK_MAX_IN_FLIGHT are being handled"
                    );
                }
                return Err(ApiError::Busy {
                    what: "too many webhooks at once".into(),
                    retry_after_s: 1,
                }
                .into_response());
            }
        };
        // 413 from the body limit passes through as axum answers it; a body
        // trickled in would hold the slot, so it has a deadline of its own.
        let read = Duration::from_millis(settings.http_body_timeout_ms);
        let body = match tokio::time::timeout(read, Bytes::from_request(req, intake)).await {
            Ok(body) => body.map_err(IntoResponse::into_response)?,
            Err(_) => {
                tracing::warn!(source, "webhook refused: its body did not arrive in time");
                return Err(ApiError::RequestTimeout(format!(
                    "the body did not arrive within {} ms",
                    read.as_millis()
                ))
                .into_response());
            }
        };
        if !verify_signature(secret.expose().as_bytes(), &body, &given) {
            tracing::warn!(source, "webhook refused: bad signature");
            return Err(unauthorized());
        }
        let parsed = S::parse(S::event_header(&headers).as_deref(), &body).map_err(|e| {
            tracing::warn!(source, error = %e, "webhook refused: malformed body");
            ApiError::BadRequest(format!("malformed {source} delivery: {e}")).into_response()
        })?;
        let delivery_id = S::delivery_id(&headers)
            .filter(|d| d.len() <= 200)
            // No usable id: the body itself identifies an exact resend.
            .unwrap_or_else(|| format!("body-sha256:{}", hex::encode(Sha256::digest(&body))));
        Ok(Signed {
            delivery_id,
            headers: kept_headers(&headers, S::KEPT_HEADERS),
            body,
            parsed,
            _slot: slot,
            _source: PhantomData,
        })
    }
}

fn kept_headers(headers: &HeaderMap, kept: &[&str]) -> String {
    let map: BTreeMap<&str, &str> = kept
        .iter()
        .filter_map(|k| Some((*k, headers.get(*k)?.to_str().ok()?)))
        .collect();
    serde_json::to_string(&map).unwrap_or_else(|_| "{}".into())
}

fn stored_headers(json: &str) -> HeaderMap {
    let map: BTreeMap<String, String> = serde_json::from_str(json).unwrap_or_default();
    map.into_iter()
        .filter_map(|(k, v)| {
            Some((
                HeaderName::from_bytes(k.as_bytes()).ok()?,
                HeaderValue::from_str(&v).ok()?,
            ))
        })
        .collect()
}

/// What the intake did with one delivery, as the sender is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Accepted {
    /// Stored; the worker acts on it after the answer.
    Accepted,
    /// Stored as ignored: nothing to do (an event we do not act on).
    Ignored,
    /// Seen before (same delivery id, or same content under a new id).
    Duplicate,
}

/// The intake: cheap to clone, shared by the two webhook routes and the worker.
#[derive(Clone)]
pub struct Intake(Arc<Inner>);

struct Inner {
    pipeline: Pipeline,
    wake: Notify,
    /// One processor at a time (worker or replay): deliveries act in order.
    turn: Mutex<()>,
    /// Webhook requests in hand at once (F-30, `ORCH_WEBHOOK_MAX_IN_FLIGHT`).
    slots: Arc<tokio::sync::Semaphore>,
    /// Webhooks shed so far.
    shed: AtomicU64,
    /// Deliveries are stored by group commit (issue 16).
    writer: DeliveryWriter,
}

struct IntakeBlock(Intake);

#[async_trait::async_trait]
impl crate::status::StatusBlock for IntakeBlock {
    fn name(&self) -> &'static str {
        "intake"
    }
    async fn snapshot(&self) -> Value {
        let s = self.0.0.writer.stats();
        json!({
            "shed": self.0.0.shed.load(Ordering::Relaxed),
            "commits": s.batches,
            "deliveries_committed": s.rows,
            "deliveries_per_commit": if s.batches == 0 { 0.0 } else { s.rows as f64 / s.batches as f64 },
            "batches_stored_row_by_row": s.fallbacks,
        })
    }
}

/// What `replay` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "replay", rename_all = "snake_case")]
pub enum Replay {
    /// Already processed and not forced: dedup applies, nothing ran.
    Skipped {
        outcome: Option<String>,
    },
    Processed {
        outcome: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("no stored delivery has id {0:?}")]
    NotFound(String),
    #[error("delivery id {0:?} is stored for more than one source; say plane:{0} or gitea:{0}")]
    Ambiguous(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

impl Intake {
    pub fn new(pipeline: Pipeline) -> Intake {
        let in_flight = usize::try_from(pipeline.settings.webhook_max_in_flight)
            .unwrap_or(usize::MAX)
            .min(tokio::sync::Semaphore::MAX_PERMITS);
        let writer = DeliveryWriter::start(pipeline.db.clone());
        Intake(Arc::new(Inner {
            writer,
            pipeline,
            wake: Notify::new(),
            turn: Mutex::new(()),
            slots: Arc::new(tokio::sync::Semaphore::new(in_flight)),
            shed: AtomicU64::new(0),
        }))
    }

    pub fn pipeline(&self) -> &Pipeline {
        &self.0.pipeline
    }

    /// The `intake` block of `/queue`: webhooks shed and how deliveries
    /// were committed (group commit, issue 16).
    pub fn status_block(&self) -> Arc<dyn crate::status::StatusBlock> {
        Arc::new(IntakeBlock(self.clone()))
    }

    /// Wake the worker: a delivery was stored outside `accept` (B-10).
    pub fn wake(&self) {
        self.0.wake.notify_one();
    }

    /// Store a verified delivery durably (group commit: concurrent
    /// deliveries share one transaction), then wake the worker.
    pub async fn accept<S: Source>(&self, d: &Signed<S>) -> Result<Accepted, GroupError> {
        let settled = d.parsed.event.settled_outcome();
        let row = Delivery {
            source: S::NAME,
            delivery_id: d.delivery_id.clone(),
            event: d.parsed.event_name.clone(),
            content_key: d.parsed.content_key.clone(),
            headers: d.headers.clone(),
            body: d.body.clone(),
            done_outcome: settled.clone(),
        };
        let inserted = self.0.writer.insert(row).await?;
        let answer = match &inserted {
            Inserted::New(_) if settled.is_some() => Accepted::Ignored,
            Inserted::New(_) => {
                self.0.wake.notify_one();
                Accepted::Accepted
            }
            Inserted::DuplicateId(_) | Inserted::DuplicateContent(_) => Accepted::Duplicate,
        };
        tracing::info!(
            source = S::NAME,
            delivery = %d.delivery_id,
            event = %d.parsed.event_name,
            stored = ?inserted,
            outcome = settled.as_deref().unwrap_or("queued"),
            "webhook {answer:?}"
        );
        Ok(answer)
    }

    /// One worker tick: wait for a wake-up (at most `idle`), then process
    /// every pending delivery. Run under `Supervisor::spawn_loop`.
    pub async fn tick(&self, idle: Duration) -> anyhow::Result<usize> {
        let _ = tokio::time::timeout(idle, self.0.wake.notified()).await;
        // B-13: a graceful stop stores deliveries (they are acted on after
        // the restart) but acts on none.
        if self.0.pipeline.engine.drain().is_draining() {
            return Ok(0);
        }
        self.drain().await
    }

    /// Process pending deliveries in arrival order until none is left.
    pub async fn drain(&self) -> anyhow::Result<usize> {
        let _turn = self.0.turn.lock().await;
        let mut n = 0;
        loop {
            let rows = deliveries::pending(self.0.pipeline.db.reader(), 32).await?;
            if rows.is_empty() {
                return Ok(n);
            }
            for row in rows {
                let outcome = self.process_guarded(&row).await;
                deliveries::mark_processed(self.0.pipeline.db.writer(), row.id, &outcome, true)
                    .await?;
                n += 1;
            }
        }
    }

    /// B-6: feed a stored delivery through the same processing again.
    /// Dedup applies (an already processed delivery is skipped) unless `force`.
    pub async fn replay(&self, delivery_id: &str, force: bool) -> Result<Replay, ReplayError> {
        let (source, id) = match delivery_id.split_once(':') {
            Some((s @ ("plane" | "gitea" | "local"), rest)) => (Some(s), rest),
            _ => (None, delivery_id),
        };
        let mut rows = deliveries::by_delivery_id(self.0.pipeline.db.reader(), id).await?;
        rows.retain(|r| source.is_none_or(|s| r.source == s));
        let row = match rows.len() {
            0 => return Err(ReplayError::NotFound(delivery_id.to_string())),
            1 => rows.remove(0),
            _ => return Err(ReplayError::Ambiguous(id.to_string())),
        };
        if row.processed_at.is_some() && !force {
            return Ok(Replay::Skipped {
                outcome: row.outcome,
            });
        }
        let _turn = self.0.turn.lock().await;
        let outcome = self.process_guarded(&row).await;
        deliveries::mark_processed(self.0.pipeline.db.writer(), row.id, &outcome, false).await?;
        Ok(Replay::Processed { outcome })
    }

    /// Process in its own task: a panic becomes an outcome, not a poison
    /// row that every later tick trips over.
    async fn process_guarded(&self, row: &DeliveryRow) -> String {
        let this = self.clone();
        let r = row.clone();
        let outcome = match tokio::spawn(async move { this.process(&r).await }).await {
            Ok(o) => o,
            Err(e) => format!("error: processing panicked: {e}"),
        };
        tracing::info!(source = %row.source, delivery = %row.delivery_id, row = row.id, %outcome, "webhook processed");
        outcome
    }

    async fn process(&self, row: &DeliveryRow) -> String {
        if row.source == crate::db::local_items::SOURCE {
            return self
                .local_status(&row.body)
                .await
                .unwrap_or_else(|e| format!("error: {e}"));
        }
        let headers = stored_headers(&row.headers);
        let parsed = match row.source.as_str() {
            "plane" => Plane::parse(Plane::event_header(&headers).as_deref(), &row.body),
            "gitea" => Gitea::parse(Gitea::event_header(&headers).as_deref(), &row.body),
            other => return format!("error: unknown source {other:?}"),
        };
        let event = match parsed {
            Ok(p) => p.event,
            Err(e) => return format!("error: the stored body does not parse: {e}"),
        };
        let result = match event {
            Event::PlaneState(c) => self.plane_state(&c).await,
            Event::PrMerged(pr) => self
                .0
                .pipeline
                .on_pr_merged(&pr)
                .await
                .map(|h| h.to_string())
                .map_err(|e| e.to_string()),
            other => Ok(other.settled_outcome().unwrap_or_default()),
        };
        result.unwrap_or_else(|e| format!("error: {e}"))
    }

    async fn plane_state(&self, c: &PlaneStateChange) -> Result<String, String> {
        let p = &self.0.pipeline;
        match p.tracker.bot_user_id().await {
            Ok(Some(bot)) if c.actor_id.as_deref() == Some(bot.as_str()) => {
                return Ok("ignored: echo of our own write".into());
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot tell our own echoes: bot user unknown"),
        }
        let Some(project) = p
            .settings
            .projects
            .iter()
            .find(|pr| !pr.plane_project_id.is_empty() && pr.plane_project_id == c.project_id)
        else {
            return Ok(format!(
                "ignored: Plane project {} is not configured",
                c.project_id
            ));
        };
        let Some(status) = self.status_key(project, &c.new_state).await? else {
            return Ok(format!("ignored: state {:?} is none of ours", c.new_state));
        };
        // Only "In Progress" needs to know where it came from (Needs Input).
        let old_status = if status == "in_progress" && !c.old_state.is_empty() {
            self.status_key(project, &c.old_state).await.unwrap_or(None)
        } else {
            None
        };
        let (Some(seq), false) = (c.sequence_id, project.work_item_prefix.is_empty()) else {
            return Ok(format!(
                "ignored: cannot name the work item (sequence id {:?}, prefix {:?} of project {})",
                c.sequence_id, project.work_item_prefix, project.name
            ));
        };
        let change = StatusChange {
            project: project.name.clone(),
            issue_id: c.issue_id.clone(),
            work_item: format!("{}-{seq}", project.work_item_prefix),
            title: c.title.clone(),
            description: strip_html(&c.description_html),
            status,
            old_status,
        };
        p.on_status(&change)
            .await
            .map(|h| h.to_string())
            .map_err(|e| e.to_string())
    }

    /// A state's status key: by its name when the payload names it, else by
    /// its id through the tracker (cached there).
    async fn status_key(&self, project: &Project, s: &StateRef) -> Result<Option<String>, String> {
        let statuses = &self.0.pipeline.settings.plane.statuses;
        if let Some(key) = s.name.as_deref().and_then(|n| statuses.key_of(n)) {
            return Ok(Some(key.to_string()));
        }
        match &s.id {
            Some(id) => self
                .0
                .pipeline
                .tracker
                .status_key_of(&project.plane_project_id, id)
                .await
                .map_err(|e| format!("resolving Plane state {id}: {e}")),
            None => Ok(None),
        }
    }
}

/// `POST /webhooks/plane` and `POST /webhooks/gitea`: 200 once stored (or a
/// duplicate), 401 bad signature, 400 malformed; a storage failure is ours
/// (503), never an answer about the sender's input.
pub async fn webhook<S: Source>(
    State(intake): State<Intake>,
    d: Signed<S>,
) -> Result<Json<Value>, ApiError> {
    let f = crate::telemetry::metrics::families();
    let status = intake.accept(&d).await.map_err(|e| {
        tracing::error!(source = S::NAME, error = %e, "cannot store a webhook delivery");
        f.webhook(S::NAME, "unavailable");
        ApiError::Unavailable("cannot store the delivery".into())
    })?;
    f.webhook(
        S::NAME,
        match status {
            Accepted::Accepted => "accepted",
            Accepted::Ignored => "ignored",
            Accepted::Duplicate => "duplicate",
        },
    );
    Ok(Json(json!({ "status": status, "delivery": d.delivery_id })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_in_both_header_forms() {
        let sig = sign(b"k", b"body");
        assert!(verify_signature(b"k", b"body", &sig));
        assert!(verify_signature(b"k", b"body", &format!("sha256={sig}")));
        assert!(verify_signature(b"k", b"body", &sig.to_uppercase()));
        assert!(!verify_signature(b"k", b"body!", &sig));
        assert!(!verify_signature(b"other", b"body", &sig));
        assert!(!verify_signature(b"k", b"body", "zz"));
        assert!(!verify_signature(b"k", b"body", &sig[..10]));
        assert!(!verify_signature(b"k", b"body", ""));
    }

    #[test]
    fn stored_headers_round_trip() {
        let mut h = HeaderMap::new();
        h.insert("x-plane-event", HeaderValue::from_static("issue"));
        h.insert("authorization", HeaderValue::from_static("secret"));
        let json = kept_headers(&h, Plane::KEPT_HEADERS);
        assert!(!json.contains("authorization"));
        let back = stored_headers(&json);
        assert_eq!(header(&back, "x-plane-event").as_deref(), Some("issue"));
    }
}
