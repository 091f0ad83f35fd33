//! One client-side budget for every Plane request (issue 11 pt 2, F-03).
//!
//! Plane limits an API key to a number of requests per minute (60 by
//! default) and answers 429 with `Retry-After` beyond it. Rather than
//! meeting that answer, the daemon keeps its own rate under a configured
//! budget: a sliding window of send times shared by every caller (the
//! pipeline, the reconciler's polls, the outbox sender). A slot is stamped
//! when its answer arrives, never when it is taken: the server counted the
//! request at or before that moment, so our window never frees a slot
//! before the server's does. A 429 or an allowed answer that says
//! `X-RateLimit-Remaining: 0` pauses every caller until the server's time.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

#[derive(Debug)]
struct Inner {
    /// When the answers of the requests in the window arrived.
    done: VecDeque<Instant>,
    /// Slots taken whose answer has not arrived yet.
    in_flight: u32,
    /// No request before this (the server said so).
    paused_until: Option<Instant>,
}

#[derive(Debug)]
pub struct RateLimiter {
    limit: u32,
    window: Duration,
    inner: Mutex<Inner>,
    freed: Notify,
}

/// A taken slot; dropping it stamps the slot (the answer came, or the
/// request failed: either way it may have counted).
#[derive(Debug)]
pub struct Permit<'a> {
    limiter: &'a RateLimiter,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if let Ok(mut g) = self.limiter.inner.lock() {
            g.in_flight = g.in_flight.saturating_sub(1);
            g.done.push_back(Instant::now());
        }
        self.limiter.freed.notify_waiters();
    }
}

/// Why a slot is not free now, and when to look again (`None`: when an
/// in-flight request ends).
enum Busy {
    Until(Instant),
    InFlight,
}

impl RateLimiter {
    /// `limit` requests per `window` (a limit of 0 is taken as 1).
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit: limit.max(1),
            window,
            inner: Mutex::new(Inner {
                done: VecDeque::new(),
                in_flight: 0,
                paused_until: None,
            }),
            freed: Notify::new(),
        }
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    fn take(&self) -> Result<Permit<'_>, Busy> {
        let now = Instant::now();
        let mut g = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(until) = g.paused_until {
            if until > now {
                return Err(Busy::Until(until));
            }
            g.paused_until = None;
        }
        while g
            .done
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            g.done.pop_front();
        }
        if (g.done.len() as u64) + u64::from(g.in_flight) < u64::from(self.limit) {
            g.in_flight += 1;
            return Ok(Permit { limiter: self });
        }
        match g.done.front() {
            Some(oldest) => Err(Busy::Until(*oldest + self.window)),
            None => Err(Busy::InFlight),
        }
    }

    /// A slot now, or `None` when the budget is spent (the caller queues).
    pub fn try_acquire(&self) -> Option<Permit<'_>> {
        self.take().ok()
    }

    /// A slot, waiting as long as the budget says.
    pub async fn acquire(&self) -> Permit<'_> {
        loop {
            // Registered before the check: a slot freed in between wakes us.
            let freed = self.freed.notified();
            match self.take() {
                Ok(p) => return p,
                Err(Busy::Until(t)) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(t) => {}
                        _ = freed => {}
                    }
                }
                Err(Busy::InFlight) => freed.await,
            }
        }
    }

    /// The server said wait `d` (a 429's `Retry-After`, a spent
    /// `X-RateLimit-Remaining`): nobody sends before then.
    pub fn pause_for(&self, d: Duration) {
        let until = Instant::now() + d;
        if let Ok(mut g) = self.inner.lock() {
            g.paused_until = Some(g.paused_until.map_or(until, |u| u.max(until)));
        }
    }

    /// Requests counted in the current window, for `/queue`.
    pub fn used(&self) -> u32 {
        let now = Instant::now();
        self.inner.lock().map_or(0, |g| {
            g.done
                .iter()
                .filter(|t| now.duration_since(**t) < self.window)
                .count() as u32
                + g.in_flight
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn never_more_than_the_limit_in_any_window() {
        let l = std::sync::Arc::new(RateLimiter::new(3, Duration::from_secs(10)));
        let start = Instant::now();
        let mut stamps = Vec::new();
        for _ in 0..7 {
            let p = l.acquire().await;
            stamps.push(Instant::now().duration_since(start));
            drop(p);
        }
        let s: Vec<u64> = stamps.iter().map(Duration::as_secs).collect();
        assert_eq!(s, vec![0, 0, 0, 10, 10, 10, 20]);
        // At 20 s one slot of three is used: two more now, then none.
        let held = (l.try_acquire(), l.try_acquire());
        assert!(held.0.is_some() && held.1.is_some());
        assert!(l.try_acquire().is_none(), "budget spent");
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_every_caller() {
        let l = RateLimiter::new(100, Duration::from_secs(60));
        l.pause_for(Duration::from_secs(7));
        assert!(l.try_acquire().is_none());
        let start = Instant::now();
        drop(l.acquire().await);
        assert_eq!(Instant::now().duration_since(start).as_secs(), 7);
    }

    #[tokio::test(start_paused = true)]
    async fn in_flight_slots_count_until_their_answer() {
        let l = RateLimiter::new(1, Duration::from_secs(1));
        let p = l.try_acquire().expect("free");
        assert!(l.try_acquire().is_none(), "the one slot is in flight");
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(l.try_acquire().is_none(), "still in flight");
        drop(p);
        assert!(l.try_acquire().is_none(), "stamped at its answer");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(l.try_acquire().is_some());
    }
}
