//! The Plane writes of the daemon, never dropped (issue 11 pt 2, F-03).
//!
//! [`PlaneOutbox`] is the daemon's `Tracker`. A write is tried at once when
//! the rate budget has a slot and nothing of its work item waits; when it
//! has to wait (the budget is spent, Plane answered 429, 5xx or not at all)
//! it is stored in `plane_outbox` and the caller is told it is done: the
//! sender ([`PlaneOutbox::tick`], a supervised loop) sends it later, in
//! order per work item, across restarts. A write Plane refuses for good (a
//! 4xx) is not queued: the caller hears of it as before.
//!
//! Comment external ids carry this database's identity and the work item
//! (issue 11 pt 6): Plane deduplicates them per project across every
//! client, so a key that repeats after a database reset, or in a second
//! daemon's database, must not be taken for a comment that exists.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, Notify, OnceCell};

use super::plane::{Pace, PlaneClient};
use super::retry::backoff;
use super::{ClientError, Tracker, TrackerRef};
use crate::db::outbox::{self, OutboxRow, Target, Write};
use crate::db::{Db, now_ms};
use crate::status::StatusBlock;

/// Plane's `external_id` is a 255-character field.
const EXTERNAL_ID_MAX: usize = 255;
/// How long one sender tick may spend waiting for the budget and sending.
const TICK_BUDGET: Duration = Duration::from_secs(5);
/// Sent rows are kept this long, for forensics.
const KEEP_SENT_MS: i64 = 24 * 3600 * 1000;

#[derive(Debug, Default)]
struct Stats {
    direct: AtomicU64,
    queued: AtomicU64,
    sent_later: AtomicU64,
    failed: AtomicU64,
}

pub struct PlaneOutbox {
    client: Arc<PlaneClient>,
    db: Db,
    instance: OnceCell<String>,
    /// One writer per work item at a time: a direct attempt and the sender
    /// never overtake each other.
    items: std::sync::Mutex<HashMap<String, Arc<Mutex<()>>>>,
    wake: Notify,
    stats: Stats,
}

impl PlaneOutbox {
    pub fn new(client: Arc<PlaneClient>, db: Db) -> Self {
        Self {
            client,
            db,
            instance: OnceCell::new(),
            items: Default::default(),
            wake: Notify::new(),
            stats: Stats::default(),
        }
    }

    fn item_lock(&self, issue_id: &str) -> Arc<Mutex<()>> {
        let mut m = match self.items.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        m.entry(issue_id.to_string()).or_default().clone()
    }

    async fn instance(&self) -> Result<&str, ClientError> {
        self.instance
            .get_or_try_init(|| outbox::instance(self.db.reader()))
            .await
            .map(String::as_str)
            .map_err(|e| ClientError::Config(format!("reading daemon_identity: {e}")))
    }

    /// The external id Plane sees for our idempotency key on this item.
    pub async fn external_id(&self, item: &TrackerRef, key: &str) -> Result<String, ClientError> {
        let instance = self.instance().await?;
        let id = format!("{instance}:{}:{key}", item.issue_id);
        if id.len() <= EXTERNAL_ID_MAX {
            return Ok(id);
        }
        let digest = hex::encode(Sha256::digest(key.as_bytes()));
        Ok(format!("{instance}:{}:sha256:{digest}", item.issue_id))
    }

    async fn queue(&self, item: &TrackerRef, w: &Write<'_>, why: &str) -> Result<(), ClientError> {
        let t = Target {
            project: &item.project,
            tracker_project_id: &item.tracker_project_id,
            issue_id: &item.issue_id,
            work_item: &item.work_item,
        };
        let id = outbox::enqueue(self.db.writer(), &t, w)
            .await
            .map_err(|e| ClientError::Unavailable {
                service: "plane",
                detail: format!("cannot queue the write for {}: {e}", item.work_item),
            })?;
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        tracing::info!(work_item = %item.work_item, row = id, reason = why, "plane write queued; sent later");
        self.wake.notify_one();
        Ok(())
    }

    async fn send(&self, item: &TrackerRef, w: &Write<'_>, pace: Pace) -> Result<(), ClientError> {
        match w {
            Write::Status { key } => self.client.set_status_paced(item, key, pace).await,
            Write::Comment { external_id, html } => {
                self.client
                    .add_comment_paced(item, external_id, html, pace)
                    .await
            }
        }
    }

    /// A write now when it can go now, else queued (never dropped).
    async fn write(&self, item: &TrackerRef, w: Write<'_>, op: &str) -> Result<(), ClientError> {
        // F-04 at call time: a blocked write is neither sent nor queued.
        self.client.guard().check(item, op)?;
        let lock = self.item_lock(&item.issue_id);
        let _turn = lock.lock().await;
        let waiting = outbox::has_pending(self.db.reader(), &item.issue_id)
            .await
            .unwrap_or(true);
        if waiting {
            return self
                .queue(item, &w, "an earlier write of the work item waits")
                .await;
        }
        match self.send(item, &w, Pace::NoWait).await {
            Ok(()) => {
                self.stats.direct.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(ClientError::Unavailable { detail, .. }) => self.queue(item, &w, &detail).await,
            Err(e) => Err(e),
        }
    }

    /// Wait for a wake-up (at most `idle`), then send every queued write
    /// whose turn has come. Run under `Supervisor::spawn_loop`.
    pub async fn tick(&self, idle: Duration) -> anyhow::Result<usize> {
        let _ = tokio::time::timeout(idle, self.wake.notified()).await;
        let mut sent = 0;
        // A tick is bounded (a graceful stop waits for it): what is not
        // sent by then waits for the next tick, still queued.
        let end = tokio::time::Instant::now() + TICK_BUDGET;
        'rounds: loop {
            let rows = outbox::heads(self.db.reader(), 64).await?;
            if rows.is_empty() {
                break;
            }
            for row in rows {
                match tokio::time::timeout_at(end, self.send_row(&row)).await {
                    Ok(r) => sent += usize::from(r?),
                    // Cut mid-request: it may have reached Plane; a resend
                    // is harmless (a status is set again, a comment's
                    // external id makes it a no-op).
                    Err(_) => break 'rounds,
                }
            }
        }
        outbox::prune_sent(self.db.writer(), now_ms() - KEEP_SENT_MS).await?;
        Ok(sent)
    }

    /// Send one queued write, waiting for the budget. `Ok(true)` sent.
    async fn send_row(&self, row: &OutboxRow) -> anyhow::Result<bool> {
        let item = TrackerRef {
            project: row.project.clone(),
            tracker_project_id: row.tracker_project_id.clone(),
            issue_id: row.issue_id.clone(),
            work_item: row.work_item.clone(),
        };
        let w = match (row.op.as_str(), &row.status_key, &row.external_id) {
            ("set_status", Some(key), _) => Write::Status { key },
            ("add_comment", _, Some(ext)) => Write::Comment {
                external_id: ext,
                html: row.html.as_deref().unwrap_or_default(),
            },
            _ => {
                outbox::mark_failed(self.db.writer(), row.id, "malformed outbox row").await?;
                return Ok(false);
            }
        };
        let lock = self.item_lock(&row.issue_id);
        let _turn = lock.lock().await;
        let result = match self.client.guard().check(&item, &row.op) {
            Ok(()) => self.send(&item, &w, Pace::Wait).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                outbox::mark_sent(self.db.writer(), row.id).await?;
                self.stats.sent_later.fetch_add(1, Ordering::Relaxed);
                tracing::info!(work_item = %row.work_item, row = row.id, op = %row.op, "queued plane write sent");
                Ok(true)
            }
            Err(ClientError::Unavailable { detail, .. }) => {
                let attempt = u32::try_from(row.attempts + 1).unwrap_or(u32::MAX);
                let wait = backoff(attempt, Duration::from_secs(1), Duration::from_secs(300));
                let next = now_ms() + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX / 2);
                outbox::retry_later(self.db.writer(), row.id, &detail, next).await?;
                tracing::warn!(work_item = %row.work_item, row = row.id, error = %detail, wait_s = wait.as_secs(), "queued plane write not sent; retried later");
                Ok(false)
            }
            Err(e) => {
                // Refused for good: kept as `failed` (visible in /queue),
                // and the work item's later writes go on.
                outbox::mark_failed(self.db.writer(), row.id, &e.to_string()).await?;
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(work_item = %row.work_item, row = row.id, op = %row.op, error = %e, "queued plane write refused by Plane: not retried");
                Ok(false)
            }
        }
    }
}

#[async_trait]
impl Tracker for PlaneOutbox {
    async fn set_status(&self, item: &TrackerRef, status_key: &str) -> Result<(), ClientError> {
        self.write(item, Write::Status { key: status_key }, "set_status")
            .await
    }

    async fn add_comment(
        &self,
        item: &TrackerRef,
        idempotency_key: &str,
        html: &str,
    ) -> Result<(), ClientError> {
        let external_id = self.external_id(item, idempotency_key).await?;
        let w = Write::Comment {
            external_id: &external_id,
            html,
        };
        self.write(item, w, "add_comment").await
    }

    async fn latest_comment(&self, item: &TrackerRef) -> Result<Option<String>, ClientError> {
        self.client.latest_comment(item).await
    }

    async fn current_status(&self, item: &TrackerRef) -> Result<Option<String>, ClientError> {
        self.client.current_status(item).await
    }

    async fn bot_user_id(&self) -> Result<Option<String>, ClientError> {
        self.client.bot_user_id().await
    }

    async fn status_key_of(
        &self,
        tracker_project_id: &str,
        state_id: &str,
    ) -> Result<Option<String>, ClientError> {
        self.client
            .status_key_of(tracker_project_id, state_id)
            .await
    }
}

#[async_trait]
impl StatusBlock for PlaneOutbox {
    fn name(&self) -> &'static str {
        "plane_outbox"
    }

    async fn snapshot(&self) -> Value {
        let (pending, sent, failed) = outbox::counts(self.db.reader())
            .await
            .unwrap_or((-1, -1, -1));
        let l = self.client.limiter();
        json!({
            "pending": pending,
            "sent_recently": sent,
            "failed": failed,
            "sent_at_once": self.stats.direct.load(Ordering::Relaxed),
            "queued": self.stats.queued.load(Ordering::Relaxed),
            "sent_later": self.stats.sent_later.load(Ordering::Relaxed),
            "refused": self.stats.failed.load(Ordering::Relaxed),
            "rate_budget": { "limit": l.limit(), "window_ms": l.window().as_millis() as u64, "used": l.used() },
        })
    }
}

/// The daemon's tracker: Plane behind the outbox when `ORCH_PLANE_BASE_URL`
/// is set (the outbox is returned too, for its sender loop and `/queue`).
pub fn tracker_with_outbox(
    settings: &crate::config::Settings,
    db: &Db,
) -> (Arc<dyn Tracker>, Option<Arc<PlaneOutbox>>) {
    if settings.plane_base_url.trim().is_empty() {
        return (super::plane::tracker_from_settings(settings), None);
    }
    match PlaneClient::new(settings) {
        Ok(c) => {
            let outbox = Arc::new(PlaneOutbox::new(Arc::new(c), db.clone()));
            (outbox.clone(), Some(outbox))
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot build the Plane client; tracker calls do nothing");
            (super::plane::tracker_from_settings(settings), None)
        }
    }
}
