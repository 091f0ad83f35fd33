//! One-tap gates (B-11): taps on the card's buttons, from `getUpdates` long
//! polling or the webhook, stored durably and deduplicated by `update_id`
//! before they act.
//!
//! The order is what makes a restart neither lose nor repeat a tap: every
//! update is first stored (`telegram_updates`, primary key `update_id`: a
//! redelivery is a no-op); the getUpdates offset is derived from the largest
//! stored id, so Telegram forgets an update only after we stored it; then
//! the stored, unprocessed updates are acted on one by one by this loop
//! alone, and marked processed. A crash between store and act leaves the
//! update unprocessed for the next start; a crash between act and mark
//! repeats an act that the pipeline makes idempotent, and the tap's MAC is
//! bound to the stage version, which the first act moved: the repeat is
//! stale and does nothing.
//!
//! A tap acts only for a user in `ORCH_TELEGRAM_ALLOWED_USERS`, only when
//! its MAC verifies for the task's stage version now (and, for Confirm
//! Deploy, the head commit the card showed), and through the same pipeline
//! call as the Plane status, after setting the Plane status to match.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};

use crate::clients::telegram::{Bot, TgError};
use crate::config::Settings;
use crate::db::{tasks, telegram};
use crate::notify::callback::Signer;
use crate::notify::card::GateAction;
use crate::pipeline::Pipeline;
use crate::pipeline::status::StatusChange;
use crate::status::StatusBlock;

/// The actor name a tap's engine calls carry.
pub const ACTOR: &str = "telegram";

/// Pause after a failed poll, so a Telegram outage is not a busy loop.
const POLL_ERROR_PAUSE: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
pub struct GateStats {
    pub received: AtomicU64,
    pub duplicates: AtomicU64,
    pub acted: AtomicU64,
    pub refused: AtomicU64,
    pub stale: AtomicU64,
    pub ignored: AtomicU64,
    pub errors: AtomicU64,
}

#[async_trait]
impl StatusBlock for GateStats {
    fn name(&self) -> &'static str {
        "telegram_gates"
    }
    async fn snapshot(&self) -> Value {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "received": n(&self.received),
            "duplicates": n(&self.duplicates),
            "acted": n(&self.acted),
            "refused": n(&self.refused),
            "stale": n(&self.stale),
            "ignored": n(&self.ignored),
            "errors": n(&self.errors),
        })
    }
}

#[derive(Clone)]
pub struct Gates {
    pub pipeline: Pipeline,
    pub bot: Bot,
    pub signer: Signer,
    pub allowed: Arc<Vec<i64>>,
    pub poll_timeout: Duration,
    pub stats: Arc<GateStats>,
    /// Wakes the processor when the webhook stored an update.
    pub wake: Arc<tokio::sync::Notify>,
    /// The daemon's graceful stop: a long poll in flight is given up (what
    /// it would have returned is not confirmed, so Telegram keeps it).
    pub stop: Option<crate::shutdown::Shutdown>,
}

/// What a stored update came to (stored as its outcome).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acted {
    Done(String),
    Refused(String),
    Stale(String),
    Ignored(String),
}

impl std::fmt::Display for Acted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Acted::Done(m) => write!(f, "done: {m}"),
            Acted::Refused(m) => write!(f, "refused: {m}"),
            Acted::Stale(m) => write!(f, "stale: {m}"),
            Acted::Ignored(m) => write!(f, "ignored: {m}"),
        }
    }
}

impl Gates {
    pub fn from_settings(s: &Settings, pipeline: Pipeline) -> Option<Gates> {
        if s.telegram_bot_token.is_empty() {
            return None;
        }
        Some(Gates {
            pipeline,
            bot: Bot::new(&s.telegram_api_url, s.telegram_bot_token.clone()),
            signer: Signer::from_bot_token(&s.telegram_bot_token),
            allowed: Arc::new(s.ops.telegram_allowed_users.clone()),
            poll_timeout: Duration::from_secs(s.ops.telegram_poll_timeout_s),
            stats: Arc::default(),
            wake: Arc::default(),
            stop: None,
        })
    }

    /// Store one update; `false` for a redelivery of a stored one.
    pub async fn store(&self, update: &Value) -> anyhow::Result<bool> {
        let Some(id) = update["update_id"].as_i64() else {
            anyhow::bail!("an update without update_id");
        };
        let fresh =
            telegram::store_update(self.pipeline.db.writer(), id, &update.to_string()).await?;
        if fresh {
            self.stats.received.fetch_add(1, Ordering::Relaxed);
        } else {
            self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                update_id = id,
                "telegram update seen before: not acted on again"
            );
        }
        Ok(fresh)
    }

    /// Poll mode's tick: finish what a crash left stored, long-poll once,
    /// store everything, act.
    pub async fn poll_tick(&self) -> anyhow::Result<()> {
        self.process_stored().await?;
        let offset = telegram::next_offset(self.pipeline.db.reader()).await?;
        let poll = self.bot.get_updates(offset, self.poll_timeout);
        let answer = match self.stop.clone() {
            Some(stop) => tokio::select! {
                r = poll => r,
                _ = stop.wait() => return Ok(()),
            },
            None => poll.await,
        };
        let updates = match answer {
            Ok(u) => u,
            Err(TgError::RetryAfter(d)) => {
                tokio::time::sleep(d.min(Duration::from_secs(60))).await;
                return Ok(());
            }
            Err(e) => {
                tokio::time::sleep(POLL_ERROR_PAUSE).await;
                return Err(anyhow::anyhow!("getUpdates: {e}"));
            }
        };
        for u in &updates {
            self.store(u).await?;
        }
        self.process_stored().await
    }

    /// Webhook mode's tick: act on what the handler stored.
    pub async fn webhook_tick(&self) -> anyhow::Result<()> {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.wake.notified()).await;
        self.process_stored().await
    }

    /// Act on every stored update not processed yet, oldest first.
    pub async fn process_stored(&self) -> anyhow::Result<()> {
        for row in telegram::unprocessed(self.pipeline.db.reader()).await? {
            let update: Value = serde_json::from_str(&row.body).unwrap_or(Value::Null);
            let acted = match self.act(&update).await {
                Ok(a) => a,
                Err(e) => {
                    // Not retried on its own (a permanent error would spin);
                    // the person is told, and the card still offers the gate.
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(update_id = row.update_id, error = %e, "telegram update failed");
                    if let Some(id) = update["callback_query"]["id"].as_str() {
                        self.answer(id, "That did not go through; please tap again.")
                            .await;
                    }
                    Acted::Ignored(format!("error: {e}"))
                }
            };
            let counter = match &acted {
                Acted::Done(_) => &self.stats.acted,
                Acted::Refused(_) => &self.stats.refused,
                Acted::Stale(_) => &self.stats.stale,
                Acted::Ignored(_) => &self.stats.ignored,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            tracing::info!(update_id = row.update_id, outcome = %acted, "telegram update processed");
            telegram::mark_processed(self.pipeline.db.writer(), row.update_id, &acted.to_string())
                .await?;
        }
        Ok(())
    }

    async fn answer(&self, callback_id: &str, text: &str) {
        // Telegram shows at most 200 characters of an answer.
        let text: String = text.chars().take(190).collect();
        if let Err(e) = self.bot.answer_callback(callback_id, &text).await {
            tracing::info!(error = %e, "answerCallbackQuery failed");
        }
    }

    /// What one update means. Errors are the database's.
    pub async fn act(&self, update: &Value) -> anyhow::Result<Acted> {
        let q = &update["callback_query"];
        if q.is_null() {
            if !update["message"]["reply_to_message"].is_null() {
                return Ok(Acted::Ignored(
                    "a reply, kept: a Reject tap takes it as the reason".into(),
                ));
            }
            return Ok(Acted::Ignored("not a button tap".into()));
        }
        let callback_id = q["id"].as_str().unwrap_or_default();
        let user = q["from"]["id"].as_i64();
        if !user.is_some_and(|u| self.allowed.contains(&u)) {
            self.answer(callback_id, "You are not allowed to use these buttons.")
                .await;
            return Ok(Acted::Refused(format!(
                "Telegram user {} is not in ORCH_TELEGRAM_ALLOWED_USERS",
                user.map_or("?".to_string(), |u| u.to_string())
            )));
        }
        let data = q["data"].as_str().unwrap_or_default();
        let Some(tap) = Signer::decode(data) else {
            self.answer(callback_id, "Unknown button.").await;
            return Ok(Acted::Ignored("callback_data is not ours".into()));
        };
        let db = &self.pipeline.db;
        let Some(task) = tasks::get(db.reader(), tap.task_id).await? else {
            self.answer(callback_id, "This task no longer exists.")
                .await;
            return Ok(Acted::Stale(format!("no task {}", tap.task_id)));
        };
        let head = match tap.action {
            GateAction::ConfirmDeploy => task.validated_sha.clone().unwrap_or_default(),
            _ => String::new(),
        };
        if !self.signer.verify(&tap, task.stage_version, &head) {
            self.answer(
                callback_id,
                "This button is out of date: the card shows what is true now.",
            )
            .await;
            return Ok(Acted::Stale(format!(
                "{} tap on {} drawn for version {}, the task is at {} v{} (or forged)",
                tap.action.status_key(),
                task.work_item,
                tap.stage_version,
                task.stage,
                task.stage_version
            )));
        }
        let key = tap.action.status_key();
        // Plane shows the person's decision first, as if it had been set
        // there; the pipeline's own status (In Progress, Deploying...) then
        // follows it. Our write's echo is ignored by its actor (F-01).
        self.pipeline.show_status(&task, key, ACTOR).await;
        let change = StatusChange {
            project: task.project.clone(),
            issue_id: task.plane_issue_id.clone().unwrap_or_default(),
            work_item: task.work_item.clone(),
            title: task.title.clone(),
            description: task.description.clone(),
            status: key.to_string(),
            old_status: None,
        };
        let handled = if tap.action == GateAction::Reject {
            // The reason: the newest reply to the card (or to the prompt
            // below) from an allowed user, else the newest Plane comment.
            let card = q["message"]["message_id"].as_i64().unwrap_or(0);
            let reply = telegram::unused_reply(db.reader(), &[card], &self.allowed).await?;
            let handled = self
                .pipeline
                .reject(&task, reply.as_ref().map(|(_, t)| t.as_str()))
                .await?;
            if let Some((id, _)) = reply {
                telegram::mark_used(
                    db.writer(),
                    id,
                    &format!("reason of the Reject of {}", task.work_item),
                )
                .await?;
            }
            handled
        } else {
            self.pipeline.on_status(&change).await?
        };
        tracing::info!(work_item = %task.work_item, user, status = key, outcome = %handled, "gate tapped in Telegram");
        let reply = match &handled {
            crate::pipeline::status::Handled::Done(_) => {
                format!("{}: done", tap.action.label(crate::notify::card::Lang::En))
            }
            other => other.to_string(),
        };
        self.answer(callback_id, &reply).await;
        Ok(Acted::Done(handled.to_string()))
    }
}
