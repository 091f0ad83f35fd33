//! The live card of every task (F-26): a loop that compares each card with
//! what the database says and tells Telegram only the difference.
//!
//! The card is derived from the database, never pushed by the actors: a
//! stage move, a run starting or ending, a hold and a STOP all change rows
//! the card reads, so the next tick shows them, and a card can never show a
//! state the database does not hold. Moves closer together than a tick are
//! shown as their end result (one edit instead of a burst that Telegram
//! would answer with 429). The loop never blocks the pipeline: it is its own
//! loop, and a failing Telegram only leaves `last_error` on the card row for
//! the next tick to retry.
//!
//! Edit mode edits the message in place ("message is not modified" counts
//! as success; "message to edit not found" sends a new card and repoints).
//! Bump mode deletes the old message and sends the card again silently, so
//! it is the chat's newest; the delete's result never gates the send, and
//! the stored id is repointed only after the send succeeded: at most one
//! new message per update.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::clients::telegram::{Bot, Button, TgError};
use crate::config::{Settings, TrackerMode};
use crate::db::runs::RunRow;
use crate::db::{Db, history, jobs, tasks, telegram};
use crate::domain::Stage;
use crate::notify::callback::Signer;
use crate::notify::card::{self, CardView, GateAction, Lang, RunLine};
use crate::status::StatusBlock;

/// Longest 429 wait inside one tick; a longer one ends the tick.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub struct CardStats {
    sent: AtomicU64,
    edited: AtomicU64,
    not_modified: AtomicU64,
    not_found: AtomicU64,
    deleted: AtomicU64,
    rate_limited: AtomicU64,
    errors: AtomicU64,
    last_error: std::sync::Mutex<Option<String>>,
    /// Since the last card that went through, every update failed.
    failing: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl StatusBlock for CardStats {
    fn name(&self) -> &'static str {
        "telegram_cards"
    }
    async fn snapshot(&self) -> Value {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "sent": n(&self.sent),
            "edited": n(&self.edited),
            "not_modified": n(&self.not_modified),
            "not_found": n(&self.not_found),
            "deleted": n(&self.deleted),
            "rate_limited": n(&self.rate_limited),
            "errors": n(&self.errors),
            "last_error": self.last_error.lock().ok().and_then(|e| e.clone()),
        })
    }
}

/// What one sync of a card did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Synced {
    Unchanged,
    Sent,
    Edited,
    /// Telegram asked us to wait; nothing changed.
    RetryAfter(Duration),
    Failed(String),
}

#[derive(Clone)]
pub struct Cards {
    pub db: Db,
    pub bot: Bot,
    pub chat_id: String,
    pub mode: TrackerMode,
    pub lang: Lang,
    pub signer: Signer,
    pub stats: Arc<CardStats>,
}

impl Cards {
    pub fn from_settings(s: &Settings, db: Db) -> Option<Cards> {
        if s.telegram_bot_token.is_empty() || s.telegram_chat_id.trim().is_empty() {
            return None;
        }
        Some(Cards {
            db,
            bot: Bot::new(&s.telegram_api_url, s.telegram_bot_token.clone()),
            chat_id: s.telegram_chat_id.trim().to_string(),
            mode: s.ops.tracker_mode,
            lang: s.ops.card_lang,
            signer: Signer::from_bot_token(&s.telegram_bot_token),
            stats: Arc::default(),
        })
    }

    /// One pass over every card that may need a change.
    pub async fn tick(&self) -> anyhow::Result<()> {
        for task_id in telegram::tasks_to_sync(self.db.reader()).await? {
            match self.sync(task_id).await? {
                Synced::RetryAfter(d) if d <= MAX_RETRY_AFTER => {
                    // 429 is for the whole bot: wait, then go on with the
                    // next card; this one is retried on the next tick.
                    tokio::time::sleep(d).await;
                }
                Synced::RetryAfter(_) => break,
                _ => {}
            }
        }
        Ok(())
    }

    /// Bring one task's card up to date. Database errors are the caller's;
    /// Telegram's are recorded on the card and counted.
    pub async fn sync(&self, task_id: i64) -> anyhow::Result<Synced> {
        let Some(view) = load_view(&self.db, task_id).await? else {
            return Ok(Synced::Unchanged);
        };
        let rendered = card::render(&view, self.lang);
        let buttons: Vec<Button> = rendered
            .buttons
            .iter()
            .map(|a| Button {
                text: a.label(self.lang).to_string(),
                callback_data: self.signer.encode(
                    *a,
                    task_id,
                    view.stage_version,
                    head_for(*a, &view),
                ),
            })
            .collect();
        let hash = hash_of(&rendered.text, &buttons);
        let is_final = view.stage.is_terminal();
        let row = telegram::card(self.db.reader(), task_id).await?;
        let old = row
            .as_ref()
            .and_then(|r| r.message_id.map(|m| (r.chat_id.clone(), m)));
        if let (Some(r), Some(_)) = (&row, &old)
            && r.text_hash == hash
        {
            return Ok(Synced::Unchanged);
        }
        let text = rendered.text.as_str();
        let result = match (old, self.mode) {
            (None, _) => {
                self.send(task_id, text, &buttons, &hash, is_final, false)
                    .await
            }
            (Some((chat, id)), TrackerMode::Edit) => {
                match self.bot.edit_message(&chat, id, text, &buttons).await {
                    Ok(()) => {
                        self.stats.edited.fetch_add(1, Ordering::Relaxed);
                        telegram::record_edited(self.db.writer(), task_id, &hash, is_final).await?;
                        Ok(Synced::Edited)
                    }
                    Err(TgError::NotModified) => {
                        // It already shows this: success.
                        self.stats.not_modified.fetch_add(1, Ordering::Relaxed);
                        telegram::record_edited(self.db.writer(), task_id, &hash, is_final).await?;
                        Ok(Synced::Edited)
                    }
                    Err(TgError::MessageNotFound) => {
                        // Someone deleted it: a new card, repointed.
                        self.stats.not_found.fetch_add(1, Ordering::Relaxed);
                        self.send(task_id, text, &buttons, &hash, is_final, false)
                            .await
                    }
                    Err(e) => Err(e),
                }
            }
            (Some((chat, id)), TrackerMode::Bump) => {
                // The delete's result never gates the send.
                match self.bot.delete_message(&chat, id).await {
                    Ok(()) => {
                        self.stats.deleted.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        tracing::debug!(task_id, error = %e, "bump: the old card was not deleted")
                    }
                }
                self.send(task_id, text, &buttons, &hash, is_final, true)
                    .await
            }
        };
        match result {
            Ok(s) => {
                if self.stats.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(task_id, "cards reach Telegram again");
                }
                Ok(s)
            }
            Err(TgError::RetryAfter(d)) => {
                self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    task_id,
                    wait_s = d.as_secs(),
                    "Telegram asks to wait; the card is retried"
                );
                Ok(Synced::RetryAfter(d))
            }
            Err(e) => {
                let msg = e.to_string();
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                // A Telegram that is down fails every card on every tick:
                // the first failure of a kind is a warning, its repeats
                // are counted (`errors`) and logged at debug.
                if let Ok(mut last) = self.stats.last_error.lock() {
                    *last = Some(msg.clone());
                }
                if self.stats.failing.swap(true, Ordering::Relaxed) {
                    tracing::debug!(task_id, error = %msg, "card not updated; retried on the next update");
                } else {
                    tracing::warn!(task_id, error = %msg, "card not updated; retried on the next update");
                }
                telegram::record_error(self.db.writer(), task_id, &msg).await?;
                Ok(Synced::Failed(msg))
            }
        }
    }

    async fn send(
        &self,
        task_id: i64,
        text: &str,
        buttons: &[Button],
        hash: &str,
        is_final: bool,
        silent: bool,
    ) -> Result<Synced, TgError> {
        let sent = self
            .bot
            .send_message(&self.chat_id, text, buttons, silent)
            .await?;
        self.stats.sent.fetch_add(1, Ordering::Relaxed);
        // Repoint only now that Telegram holds the new message.
        if let Err(e) = telegram::record_sent(
            self.db.writer(),
            task_id,
            &self.chat_id,
            sent.message_id,
            hash,
            is_final,
        )
        .await
        {
            return Err(TgError::Unavailable(format!(
                "card sent but not recorded: {e}"
            )));
        }
        Ok(Synced::Sent)
    }
}

fn head_for(a: GateAction, v: &CardView) -> &str {
    match a {
        GateAction::ConfirmDeploy => v.head.as_deref().unwrap_or(""),
        _ => "",
    }
}

fn hash_of(text: &str, buttons: &[Button]) -> String {
    let mut h = Sha256::new();
    h.update(text.as_bytes());
    for b in buttons {
        h.update([0]);
        h.update(b.text.as_bytes());
        h.update([1]);
        h.update(b.callback_data.as_bytes());
    }
    hex::encode(h.finalize())
}

/// The gates a person can open on this task now (B-11).
pub fn open_gates(
    task: &tasks::TaskRow,
    active: Option<&jobs::JobRow>,
    runs: &[RunLine],
) -> Vec<GateAction> {
    let mut gates = Vec::new();
    if task.stage.is_terminal() {
        return gates;
    }
    let idle = active.is_none() && task.hold_reason.is_none();
    if task.stage == Stage::Analysis
        && idle
        && task.approved_at.is_none()
        && runs.iter().any(|r| r.stage == Stage::Analysis)
    {
        gates.extend([GateAction::Approve, GateAction::Reject]);
    }
    if task.stage == Stage::Deploy && idle && task.deploy_confirmed_at.is_none() {
        gates.push(GateAction::ConfirmDeploy);
    }
    if task.cancel_requested_at.is_none() {
        gates.push(GateAction::Stop);
    }
    gates
}

/// Read what the card of a task shows.
pub async fn load_view(db: &Db, task_id: i64) -> Result<Option<CardView>, sqlx::Error> {
    let r = db.reader();
    let Some(task) = tasks::get(r, task_id).await? else {
        return Ok(None);
    };
    let runs = telegram::runs_for_task(r, task_id).await?;
    let active = jobs::active_for_task(r, task_id).await?;
    let cancelled_from = if task.stage == Stage::Cancelled {
        history::for_task(r, task_id)
            .await?
            .iter()
            .rev()
            .find(|h| h.to_stage == Stage::Cancelled)
            .map(|h| h.from_stage)
    } else {
        None
    };
    let merge = telegram::merge_result(r, task_id).await?;
    Ok(Some(view_of(
        &task,
        runs,
        active.as_ref(),
        cancelled_from,
        merge.as_deref(),
    )))
}

/// The card of a task from its rows: the one derivation the Telegram card
/// and the board (B-3) share, so they can never disagree. `cancelled_from`
/// is the stage a cancelled task left; `merge` what its done `merge_pr`
/// effect recorded.
pub fn view_of(
    task: &tasks::TaskRow,
    runs: Vec<RunRow>,
    active: Option<&jobs::JobRow>,
    cancelled_from: Option<Stage>,
    merge: Option<&str>,
) -> CardView {
    let runs: Vec<RunLine> = runs
        .into_iter()
        .filter_map(|run| {
            Some(RunLine {
                stage: run.stage.parse().ok()?,
                role: run.role,
                cost_usd: run.cost_usd,
                model: run.model.unwrap_or_default(),
                effort: run.effort.unwrap_or_default(),
                attempt: run.attempt,
            })
        })
        .collect();
    let reached = if task.stage == Stage::Cancelled {
        cancelled_from.unwrap_or(Stage::Created)
    } else {
        task.stage
    };
    let merge_commit = merge
        .map(|s| s.trim().to_string())
        .filter(|s| s.len() >= 7 && s.bytes().all(|b| b.is_ascii_hexdigit()));
    let gates = open_gates(task, active, &runs);
    CardView {
        work_item: task.work_item.clone(),
        title: task.title.clone(),
        stage: task.stage,
        stage_version: task.stage_version,
        reached,
        running: active
            .filter(|j| j.status == "running")
            .map(|j| j.role.clone()),
        runs,
        hold_reason: task.hold_reason.clone(),
        merge_commit,
        head: task.validated_sha.clone(),
        gates,
    }
}
