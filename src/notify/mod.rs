//! Alerts and the tracker card go through one `Notifier` port. Until the
//! Telegram adapter lands, the log is the channel. The daemon wraps its
//! channel in [`Dedup`] (F-27): a repeat of the same alert within
//! `ORCH_ALERT_DEDUP_WINDOW_S` is counted, not sent.

pub mod callback;
pub mod card;
pub mod dedup;
pub mod telegram;

use async_trait::async_trait;
use serde::Serialize;

pub use dedup::Dedup;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Alert {
    /// Stable kind, used for dedup and filtering: `lease_stale_reclaimed`, ...
    pub kind: &'static str,
    pub work_item: Option<String>,
    pub message: String,
    /// What makes two alerts of one kind and work item different conditions
    /// for [`Dedup`] (a task id, an effect kind). `None`: kind and work item
    /// alone. Never the message, which carries volatile details.
    pub key: Option<String>,
}

#[async_trait]
pub trait Notifier: Send + Sync {
    async fn alert(&self, alert: Alert);
}

/// Writes every alert as a WARN line with structured fields.
#[derive(Debug, Default, Clone)]
pub struct LogNotifier;

#[async_trait]
impl Notifier for LogNotifier {
    async fn alert(&self, a: Alert) {
        tracing::warn!(
            alert = a.kind,
            work_item = a.work_item.as_deref().unwrap_or(""),
            "{}",
            a.message
        );
    }
}

/// Keeps alerts in memory; for tests and for the CLI's summaries.
#[derive(Debug, Default)]
pub struct RecordingNotifier(std::sync::Mutex<Vec<Alert>>);

impl RecordingNotifier {
    pub fn alerts(&self) -> Vec<Alert> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

#[async_trait]
impl Notifier for RecordingNotifier {
    async fn alert(&self, a: Alert) {
        if let Ok(mut v) = self.0.lock() {
            v.push(a);
        }
    }
}
