//! `GET /health` (F-30): answered from the last database check when it is
//! recent, so a load balancer polling it costs no database round trip per
//! request; a stale answer is refreshed by one check at a time (the others
//! wait for it), bounded, so a broken database turns it 503 within
//! [`FRESH`] + [`CHECK_TIMEOUT`] (under a second).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::db::Db;

/// How long a check's answer stands.
pub const FRESH: Duration = Duration::from_millis(250);
/// How long a check may take before the database counts as broken.
pub const CHECK_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug, Default)]
pub struct Health {
    /// When the last check ended and whether the database answered.
    last: Mutex<Option<(Instant, bool)>>,
    /// One check at a time.
    checking: tokio::sync::Mutex<()>,
}

impl Health {
    fn fresh(&self) -> Option<bool> {
        let last = *self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.and_then(|(at, ok)| (at.elapsed() < FRESH).then_some(ok))
    }

    /// Is the database answering? From a recent check, or a new one.
    pub async fn database_ok(&self, db: &Db) -> bool {
        if let Some(ok) = self.fresh() {
            return ok;
        }
        let _turn = self.checking.lock().await;
        // Checked by another request while this one waited.
        if let Some(ok) = self.fresh() {
            return ok;
        }
        let ok = match tokio::time::timeout(CHECK_TIMEOUT, db.ping()).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "health check: database unreachable");
                false
            }
            Err(_) => {
                tracing::error!(
                    timeout_ms = CHECK_TIMEOUT.as_millis() as u64,
                    "health check: the database did not answer in time"
                );
                false
            }
        };
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), ok));
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_broken_database_turns_it_false_within_a_second() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("h.db")).await.unwrap();
        let health = Health::default();
        assert!(health.database_ok(&db).await);
        db.close().await;
        // The cached answer stands for FRESH at most.
        let start = Instant::now();
        while health.database_ok(&db).await {
            assert!(
                start.elapsed() < Duration::from_secs(1),
                "still ok after 1 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(start.elapsed() <= FRESH + CHECK_TIMEOUT);
    }
}
