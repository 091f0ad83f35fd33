//! The clock of the runtime loops (monitor, reaper, worker). Wall-clock
//! milliseconds derived from tokio's `Instant`, so tests drive the reaper's
//! boundaries on tokio's paused clock instead of sleeping.

use tokio::time::Instant;

#[derive(Clone, Copy, Debug)]
pub struct Clock {
    base_ms: i64,
    base: Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    pub fn new() -> Self {
        Self {
            base_ms: crate::db::now_ms(),
            base: Instant::now(),
        }
    }

    /// Milliseconds since the Unix epoch, advancing with tokio's clock.
    pub fn now_ms(&self) -> i64 {
        self.base_ms + self.base.elapsed().as_millis() as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn follows_the_paused_clock() {
        let c = Clock::new();
        let t0 = c.now_ms();
        tokio::time::advance(Duration::from_secs(301)).await;
        assert_eq!(c.now_ms() - t0, 301_000);
    }
}
