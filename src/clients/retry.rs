//! Shared retry pieces of the HTTP clients: an injectable sleep (tests record
//! the schedule instead of waiting it out) and bounded exponential backoff.

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

/// Waits between attempts. The daemon sleeps on tokio's clock; tests plug in
/// [`RecordingSleeper`] to assert the schedule without waiting.
#[async_trait]
pub trait Sleeper: Send + Sync {
    async fn sleep(&self, d: Duration);
}

#[derive(Debug, Default, Clone, Copy)]
pub struct TokioSleeper;

#[async_trait]
impl Sleeper for TokioSleeper {
    async fn sleep(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }
}

/// Records every requested wait and returns at once.
#[derive(Debug, Default)]
pub struct RecordingSleeper(Mutex<Vec<Duration>>);

impl RecordingSleeper {
    pub fn waits(&self) -> Vec<Duration> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

#[async_trait]
impl Sleeper for RecordingSleeper {
    async fn sleep(&self, d: Duration) {
        if let Ok(mut v) = self.0.lock() {
            v.push(d);
        }
        // Yield so a retry loop cannot starve the runtime in a test.
        tokio::task::yield_now().await;
    }
}

/// The wait before attempt `attempt + 1` after `attempt` failed (1-based):
/// `base * 2^(attempt-1)`, capped at `max`.
pub fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let factor = 1u32
        .checked_shl(attempt.saturating_sub(1))
        .unwrap_or(u32::MAX);
    base.checked_mul(factor).unwrap_or(max).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let s = Duration::from_secs;
        let got: Vec<_> = (1..=5).map(|a| backoff(a, s(2), s(5))).collect();
        assert_eq!(got, vec![s(2), s(4), s(5), s(5), s(5)]);
        assert_eq!(
            backoff(200, s(2), s(5)),
            s(5),
            "no overflow on a huge attempt"
        );
        assert_eq!(backoff(0, s(1), s(5)), s(1));
    }
}
