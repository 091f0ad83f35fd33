//! The Telegram channel of alerts (F-27): behind the daemon's one
//! [`super::Dedup`], beside the log. A failing Telegram never blocks the
//! sender: each alert is sent by a task of its own (the caller returns at
//! once), a 429 is waited out once, and what still fails is logged (with the
//! token redacted by the client) and dropped: the log line is the record.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use super::{Alert, Notifier};
use crate::clients::telegram::{Bot, TgError};

/// Longest 429 wait an alert accepts before it is dropped.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub struct AlertStats {
    pub sent: AtomicU64,
    pub failed: AtomicU64,
}

pub struct TelegramAlerts {
    bot: Bot,
    chat_id: String,
    stats: Arc<AlertStats>,
}

impl TelegramAlerts {
    pub fn new(bot: Bot, chat_id: &str) -> Self {
        Self {
            bot,
            chat_id: chat_id.to_string(),
            stats: Arc::default(),
        }
    }

    pub fn stats(&self) -> Arc<AlertStats> {
        self.stats.clone()
    }
}

/// The text of an alert in the chat.
pub fn alert_text(a: &Alert) -> String {
    match &a.work_item {
        Some(wi) => format!("⚠️ {} · {wi}\n{}", a.kind, a.message),
        None => format!("⚠️ {}\n{}", a.kind, a.message),
    }
}

async fn send(bot: &Bot, chat: &str, text: &str) -> Result<(), TgError> {
    match bot.send_message(chat, text, &[], false).await {
        Err(TgError::RetryAfter(d)) if d <= MAX_RETRY_AFTER => {
            tokio::time::sleep(d).await;
            bot.send_message(chat, text, &[], false).await.map(|_| ())
        }
        other => other.map(|_| ()),
    }
}

#[async_trait]
impl Notifier for TelegramAlerts {
    async fn alert(&self, a: Alert) {
        let (bot, chat, stats) = (self.bot.clone(), self.chat_id.clone(), self.stats.clone());
        let text = alert_text(&a);
        tokio::spawn(async move {
            match send(&bot, &chat, &text).await {
                Ok(()) => {
                    stats.sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(alert = a.kind, error = %e, "alert not delivered to Telegram (it is in the log)");
                }
            }
        });
    }
}

/// Every alert to each channel in turn (the log first: it cannot fail).
pub struct FanOut(pub Vec<Arc<dyn Notifier>>);

#[async_trait]
impl Notifier for FanOut {
    async fn alert(&self, a: Alert) {
        for n in &self.0 {
            n.alert(a.clone()).await;
        }
    }
}
