//! Alert deduplication (F-27): a [`Notifier`] in front of the real channel.
//!
//! Two alerts are the same condition when they share the kind, the work item
//! and the optional explicit [`Alert::key`]; the message is not compared (it
//! carries volatile details: a pid, a stderr line). The first alert of a key
//! is sent and opens a window of `ORCH_ALERT_DEDUP_WINDOW_S`; repeats inside
//! the window are counted, logged at INFO and not sent. The first repeat
//! after the window is sent with the number it stands for, and opens the
//! next window. A window of 0 sends everything.
//!
//! The state lives in the `alert_dedup` table, written in one `BEGIN
//! IMMEDIATE` transaction per alert, so a restart does not re-send what the
//! previous run sent (and a replay next to the daemon shares it). An alert
//! is never lost to the store: when the database cannot be written within
//! [`STORE_TIMEOUT`], the alert is sent undeduplicated and the failure
//! counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};

use super::{Alert, Notifier};
use crate::db::{Db, alerts};
use crate::status::StatusBlock;

/// Longest wait for the store before the alert goes out undeduplicated.
pub const STORE_TIMEOUT: Duration = Duration::from_secs(10);
/// Keys unseen this long after their window are forgotten.
const KEEP_MS: i64 = 7 * 24 * 3600 * 1000;
/// How often old keys are pruned.
const PRUNE_EVERY_MS: i64 = 3600 * 1000;
/// Keys shown in the `alerts` block of `/queue`.
const RECENT: i64 = 10;

/// Wall-clock milliseconds; injected so tests drive the window.
pub type Now = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The window of one key: when its last alert was sent and how many
/// repeats were suppressed since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: i64,
    pub suppressed: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Send it; it stands for `suppressed` unsent repeats since `since`.
    Send {
        suppressed: i64,
        since: i64,
    },
    Suppress,
}

/// The window rule. A clock that went back before the window's start
/// counts as expired: one alert too many beats a silence of unknown length.
pub fn decide(prev: Option<Window>, now: i64, window_ms: i64) -> Decision {
    match prev {
        Some(w) if window_ms > 0 && now >= w.start && now - w.start < window_ms => {
            Decision::Suppress
        }
        Some(w) => Decision::Send {
            suppressed: w.suppressed,
            since: w.start,
        },
        None => Decision::Send {
            suppressed: 0,
            since: now,
        },
    }
}

/// The text of a sent alert that stands for suppressed repeats.
pub fn with_repeats(message: &str, suppressed: i64, since: i64, now: i64) -> String {
    if suppressed <= 0 {
        return message.to_string();
    }
    let ago = Duration::from_secs(((now - since).max(0) / 1000) as u64);
    format!(
        "{message} (repeated: {suppressed} more like this suppressed since the last alert, {} ago)",
        humantime::format_duration(ago)
    )
}

/// The dedup key of an alert: kind, work item and explicit key.
pub fn dedup_key(a: &Alert) -> String {
    serde_json::to_string(&(a.kind, &a.work_item, &a.key)).unwrap_or_else(|_| a.kind.to_string())
}

pub struct Dedup {
    inner: Arc<dyn Notifier>,
    db: Db,
    window_ms: i64,
    now: Now,
    sent: AtomicU64,
    suppressed: AtomicU64,
    store_errors: AtomicU64,
    last_prune: AtomicI64,
}

impl Dedup {
    /// `window` 0 = no dedup (every alert is sent, still counted).
    pub fn new(inner: Arc<dyn Notifier>, db: Db, window: Duration) -> Self {
        let clock = crate::clock::Clock::new();
        Self {
            inner,
            db,
            window_ms: i64::try_from(window.as_millis()).unwrap_or(i64::MAX),
            now: Arc::new(move || clock.now_ms()),
            sent: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
            store_errors: AtomicU64::new(0),
            last_prune: AtomicI64::new(0),
        }
    }

    /// Replace the clock (tests).
    pub fn with_now(mut self, now: Now) -> Self {
        self.now = now;
        self
    }

    /// Decide and record in one write transaction.
    async fn record(&self, a: &Alert, key: &str, now: i64) -> Result<Decision, sqlx::Error> {
        let mut tx = self.db.begin_write().await?;
        let prev = alerts::get(&mut *tx, key).await?.map(|r| Window {
            start: r.window_start,
            suppressed: r.suppressed,
        });
        let decision = decide(prev, now, self.window_ms);
        match decision {
            Decision::Suppress => alerts::record_suppressed(&mut *tx, key, now).await?,
            Decision::Send { suppressed, since } => {
                let message = with_repeats(&a.message, suppressed, since, now);
                let sent = alerts::Sent {
                    dedup_key: key,
                    kind: a.kind,
                    work_item: a.work_item.as_deref(),
                    alert_key: a.key.as_deref(),
                    message: &message,
                    now,
                };
                alerts::record_sent(&mut *tx, &sent).await?;
            }
        }
        let last = self.last_prune.load(Ordering::Relaxed);
        if now - last >= PRUNE_EVERY_MS {
            self.last_prune.store(now, Ordering::Relaxed);
            alerts::prune(&mut *tx, now - self.window_ms.saturating_add(KEEP_MS)).await?;
        }
        tx.commit().await?;
        Ok(decision)
    }

    async fn forward(&self, a: Alert) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        self.inner.alert(a).await;
    }
}

#[async_trait]
impl Notifier for Dedup {
    async fn alert(&self, mut a: Alert) {
        let now = (self.now)();
        let key = dedup_key(&a);
        match tokio::time::timeout(STORE_TIMEOUT, self.record(&a, &key, now)).await {
            Ok(Ok(Decision::Suppress)) => {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    alert = a.kind,
                    work_item = a.work_item.as_deref().unwrap_or(""),
                    "alert suppressed, a repeat within ORCH_ALERT_DEDUP_WINDOW_S: {}",
                    a.message
                );
            }
            Ok(Ok(Decision::Send { suppressed, since })) => {
                a.message = with_repeats(&a.message, suppressed, since, now);
                self.forward(a).await;
            }
            Ok(Err(e)) => {
                self.store_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(alert = a.kind, error = %e, "alert dedup store failed; sending the alert anyway");
                self.forward(a).await;
            }
            Err(_) => {
                self.store_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    alert = a.kind,
                    "alert dedup store timed out; sending the alert anyway"
                );
                self.forward(a).await;
            }
        }
    }
}

#[async_trait]
impl StatusBlock for Dedup {
    fn name(&self) -> &'static str {
        "alerts"
    }
    /// Counters since start, and the most recently seen keys (durable).
    async fn snapshot(&self) -> Value {
        let recent = match alerts::recent(self.db.reader(), RECENT).await {
            Ok(rows) => json!(rows),
            Err(e) => json!({ "error": e.to_string() }),
        };
        json!({
            "window_s": self.window_ms / 1000,
            "sent": self.sent.load(Ordering::Relaxed),
            "suppressed": self.suppressed.load(Ordering::Relaxed),
            "store_errors": self.store_errors.load(Ordering::Relaxed),
            "recent": recent,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::RecordingNotifier;

    const MIN: i64 = 60_000;
    const HOUR: i64 = 60 * MIN;

    fn w(start: i64, suppressed: i64) -> Option<Window> {
        Some(Window { start, suppressed })
    }

    #[test]
    fn the_window_rule() {
        let send = |suppressed, since| Decision::Send { suppressed, since };
        assert_eq!(decide(None, 5, HOUR), send(0, 5));
        assert_eq!(decide(w(0, 0), 1, HOUR), Decision::Suppress);
        assert_eq!(decide(w(0, 7), HOUR - 1, HOUR), Decision::Suppress);
        assert_eq!(decide(w(0, 7), HOUR, HOUR), send(7, 0));
        assert_eq!(decide(w(0, 0), 3 * HOUR, HOUR), send(0, 0));
        // 0 = no dedup.
        assert_eq!(decide(w(0, 0), 0, 0), send(0, 0));
        // A clock that went back: sent.
        assert_eq!(decide(w(10 * HOUR, 2), HOUR, HOUR), send(2, 10 * HOUR));
    }

    #[test]
    fn a_sent_repeat_says_how_many_it_stands_for() {
        assert_eq!(with_repeats("x", 0, 0, HOUR), "x");
        assert_eq!(
            with_repeats("lease reclaimed", 4, 0, HOUR + 2 * MIN),
            "lease reclaimed (repeated: 4 more like this suppressed since the last alert, 1h 2m ago)"
        );
    }

    fn alert(kind: &'static str, wi: &str, key: Option<&str>, msg: &str) -> Alert {
        Alert {
            kind,
            work_item: Some(wi.into()),
            message: msg.into(),
            key: key.map(str::to_string),
        }
    }

    struct Env {
        _dir: tempfile::TempDir,
        db: Db,
        clock: Arc<AtomicI64>,
        rec: Arc<RecordingNotifier>,
    }

    async fn env() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("o.db")).await.unwrap();
        Env {
            _dir: dir,
            db,
            clock: Arc::new(AtomicI64::new(1_000 * HOUR)),
            rec: Arc::new(RecordingNotifier::default()),
        }
    }

    impl Env {
        fn dedup(&self, window: Duration) -> Dedup {
            let c = self.clock.clone();
            Dedup::new(self.rec.clone(), self.db.clone(), window)
                .with_now(Arc::new(move || c.load(Ordering::SeqCst)))
        }
        fn advance(&self, ms: i64) {
            self.clock.fetch_add(ms, Ordering::SeqCst);
        }
        fn messages(&self) -> Vec<String> {
            self.rec.alerts().into_iter().map(|a| a.message).collect()
        }
    }

    #[tokio::test]
    async fn repeats_within_the_window_are_counted_then_summed_up_once() {
        let e = env().await;
        let d = e.dedup(Duration::from_secs(3600));
        for i in 0..5 {
            d.alert(alert("effect_failed", "DEMO-1", None, &format!("try {i}")))
                .await;
            e.advance(MIN);
        }
        assert_eq!(e.messages(), ["try 0"]);
        // Other work items, kinds and keys are other conditions.
        d.alert(alert("effect_failed", "DEMO-2", None, "b")).await;
        d.alert(alert("hold", "DEMO-1", None, "c")).await;
        d.alert(alert("effect_failed", "DEMO-1", Some("merge_pr"), "d"))
            .await;
        assert_eq!(e.messages().len(), 4);

        // The window (from the first send) expires: the next repeat is sent
        // with the count, and opens a new window.
        e.advance(HOUR - 5 * MIN);
        d.alert(alert("effect_failed", "DEMO-1", None, "try 5"))
            .await;
        d.alert(alert("effect_failed", "DEMO-1", None, "try 6"))
            .await;
        let all = e.messages();
        assert_eq!(all.len(), 5, "{all:?}");
        assert_eq!(
            all[4],
            "try 5 (repeated: 4 more like this suppressed since the last alert, 1h ago)"
        );
        let block = d.snapshot().await;
        assert_eq!(
            (block["sent"].as_u64(), block["suppressed"].as_u64()),
            (Some(5), Some(5))
        );
        let row = block["recent"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| {
                r["kind"] == "effect_failed"
                    && r["work_item"] == "DEMO-1"
                    && r["alert_key"].is_null()
            })
            .unwrap()
            .clone();
        assert_eq!(row["sent_total"], 2);
        assert_eq!(row["suppressed_total"], 5);
        assert_eq!(row["suppressed"], 1, "try 6, in the new window");
        assert!(row["last_message"].as_str().unwrap().starts_with("try 5"));
    }

    #[tokio::test]
    async fn the_window_survives_a_restart_and_zero_turns_dedup_off() {
        let e = env().await;
        e.dedup(Duration::from_secs(3600))
            .alert(alert("k", "DEMO-1", None, "first"))
            .await;
        // A new process over the same database: still within the window.
        e.advance(10 * MIN);
        let d = e.dedup(Duration::from_secs(3600));
        d.alert(alert("k", "DEMO-1", None, "again")).await;
        assert_eq!(e.messages(), ["first"]);
        e.advance(HOUR);
        d.alert(alert("k", "DEMO-1", None, "later")).await;
        assert_eq!(e.messages().len(), 2);
        assert!(e.messages()[1].contains("1 more like this"));

        let off = e.dedup(Duration::ZERO);
        for _ in 0..3 {
            off.alert(alert("k", "DEMO-1", None, "each")).await;
        }
        assert_eq!(e.messages().len(), 5);
        assert_eq!(off.snapshot().await["window_s"], 0);
    }

    #[tokio::test]
    async fn a_store_that_fails_never_swallows_an_alert() {
        let e = env().await;
        let d = e.dedup(Duration::from_secs(3600));
        e.db.close().await;
        d.alert(alert("k", "DEMO-1", None, "one")).await;
        d.alert(alert("k", "DEMO-1", None, "two")).await;
        assert_eq!(e.messages(), ["one", "two"]);
        assert_eq!(d.snapshot().await["store_errors"], 2);
    }

    #[tokio::test]
    async fn old_keys_are_pruned() {
        let e = env().await;
        let d = e.dedup(Duration::from_secs(3600));
        d.alert(alert("k", "DEMO-1", None, "old")).await;
        e.advance(8 * 24 * HOUR);
        d.alert(alert("k", "DEMO-2", None, "new")).await;
        let rows = alerts::recent(e.db.reader(), 10).await.unwrap();
        let items: Vec<_> = rows.iter().map(|r| r.work_item.clone().unwrap()).collect();
        assert_eq!(items, ["DEMO-2"]);
    }
}
