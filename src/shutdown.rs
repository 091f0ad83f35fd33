//! One shutdown signal for the server and every loop, a small supervisor
//! that starts background loops in order and stops them in reverse, and the
//! drain of irreversible effects in flight (B-13).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

/// Fires once; every clone of the receiver sees it.
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>);

#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<bool>);

pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger(tx), Shutdown(rx))
}

impl ShutdownTrigger {
    pub fn fire(&self) {
        let _ = self.0.send(true);
    }
}

impl Shutdown {
    pub async fn wait(mut self) {
        while !*self.0.borrow() {
            if self.0.changed().await.is_err() {
                return;
            }
        }
    }
    pub fn is_fired(&self) -> bool {
        *self.0.borrow()
    }
}

/// B-13: the irreversible effects in flight (a merge, a deploy, an image
/// push, a branch delete) and whether new ones may start. A graceful stop
/// first refuses new effects ([`EffectDrain::start_draining`]), then waits
/// for those in flight ([`EffectDrain::wait_idle`]), bounded; what is still
/// running past the bound is left running detached (its process survives
/// the daemon) and the next start adopts it through the journal.
#[derive(Debug, Default)]
pub struct EffectDrain {
    state: Mutex<DrainState>,
    changed: Notify,
}

#[derive(Debug, Default)]
struct DrainState {
    draining: bool,
    next: u64,
    running: BTreeMap<u64, (String, Instant)>,
}

/// One effect in flight; dropping it ends its registration.
#[derive(Debug)]
pub struct InFlight {
    drain: Arc<EffectDrain>,
    id: u64,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut s) = self.drain.state.lock() {
            s.running.remove(&self.id);
        }
        self.drain.changed.notify_waiters();
    }
}

/// How a drain ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrainEnd {
    /// Nothing was (or is any more) in flight.
    Idle,
    /// The bound passed; these are left running detached.
    TimedOut(Vec<String>),
    /// A second signal cut the wait short; these are left running detached.
    Forced(Vec<String>),
}

impl EffectDrain {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Register an effect about to start; `None` once the drain began (no
    /// new effect may start during a graceful stop).
    pub fn begin(self: &Arc<Self>, what: impl Into<String>) -> Option<InFlight> {
        let mut s = self.state.lock().ok()?;
        if s.draining {
            return None;
        }
        s.next += 1;
        let id = s.next;
        s.running.insert(id, (what.into(), Instant::now()));
        Some(InFlight {
            drain: self.clone(),
            id,
        })
    }

    pub fn start_draining(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.draining = true;
        }
        self.changed.notify_waiters();
    }

    pub fn is_draining(&self) -> bool {
        self.state.lock().map(|s| s.draining).unwrap_or(true)
    }

    /// What is in flight, with how long each has run.
    pub fn in_flight(&self) -> Vec<(String, Duration)> {
        self.state
            .lock()
            .map(|s| {
                s.running
                    .values()
                    .map(|(w, t)| (w.clone(), t.elapsed()))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn names(&self) -> Vec<String> {
        self.in_flight().into_iter().map(|(w, _)| w).collect()
    }

    /// Wait until nothing is in flight, at most `bound`, logging what it
    /// waits for every `log_every`; `force` (a second signal) ends it at once.
    pub async fn wait_idle(
        &self,
        bound: Duration,
        log_every: Duration,
        force: impl Future<Output = ()>,
    ) -> DrainEnd {
        let deadline = tokio::time::Instant::now() + bound;
        let mut next_log = tokio::time::Instant::now();
        tokio::pin!(force);
        loop {
            // Register for the wake-up before looking, so a drop in between
            // is not missed.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let now_running = self.in_flight();
            if now_running.is_empty() {
                return DrainEnd::Idle;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return DrainEnd::TimedOut(self.names());
            }
            if now >= next_log {
                for (what, ran) in &now_running {
                    tracing::warn!(effect = %what, running_s = ran.as_secs(), left_s = (deadline - now).as_secs(), "graceful stop: waiting for an effect in flight");
                }
                next_log = now + log_every;
            }
            tokio::select! {
                _ = &mut force => return DrainEnd::Forced(self.names()),
                _ = &mut changed => {}
                _ = tokio::time::sleep_until(deadline.min(next_log)) => {}
            }
        }
    }
}

/// SIGTERM/SIGINT handlers, installed when created: create them before the
/// listener is bound, so a signal that arrives during start-up is a clean
/// shutdown, not the default kill.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves on the next SIGTERM or SIGINT.
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM received, shutting down"),
            _ = self.int.recv() => tracing::info!("SIGINT received, shutting down"),
        }
    }
}

struct LoopHandle {
    name: &'static str,
    stop: ShutdownTrigger,
    join: JoinHandle<()>,
}

/// Background loops, each a tick function and an interval. A tick that
/// errors or panics is logged and the loop goes on (invariant 6); stopping
/// happens between ticks.
#[derive(Default)]
pub struct Supervisor {
    loops: Vec<LoopHandle>,
}

impl Supervisor {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn spawn_loop<F, Fut>(&mut self, name: &'static str, every: Duration, mut tick: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let (trigger, stop) = channel();
        let join = tokio::spawn(async move {
            let mut interval = tokio::time::interval(every);
            interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let stopped = stop.clone().wait();
            tokio::pin!(stopped);
            loop {
                tokio::select! {
                    biased;
                    _ = &mut stopped => break,
                    _ = interval.tick() => {}
                }
                match tokio::spawn(tick()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(r#loop = name, error = format!("{e:#}"), "tick failed")
                    }
                    Err(e) => {
                        tracing::error!(r#loop = name, error = %e, "tick panicked; the loop goes on")
                    }
                }
            }
            tracing::debug!(r#loop = name, "loop stopped");
        });
        tracing::info!(
            r#loop = name,
            every_ms = every.as_millis() as u64,
            "loop started"
        );
        self.loops.push(LoopHandle {
            name,
            stop: trigger,
            join,
        });
    }

    pub fn len(&self) -> usize {
        self.loops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.loops.is_empty()
    }

    /// Stop in reverse start order, each within `grace`; returns the names of
    /// loops that did not stop in time (they are aborted).
    pub async fn shutdown(self, grace: Duration) -> Vec<&'static str> {
        let mut late = Vec::new();
        for h in self.loops.into_iter().rev() {
            h.stop.fire();
            let abort = h.join.abort_handle();
            if tokio::time::timeout(grace, h.join).await.is_err() {
                abort.abort();
                tracing::warn!(
                    r#loop = h.name,
                    "loop did not stop within the grace period; aborted"
                );
                late.push(h.name);
            }
        }
        late
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn ticks_survive_errors_and_panics_and_stop_in_reverse() {
        let ticks = Arc::new(AtomicU32::new(0));
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut sup = Supervisor::new();
        let t = ticks.clone();
        sup.spawn_loop("flaky", Duration::from_secs(1), move || {
            let n = t.fetch_add(1, Ordering::SeqCst);
            async move {
                match n % 3 {
                    0 => anyhow::bail!("tick {n} failed"),
                    1 => panic!("tick {n} panicked"),
                    _ => Ok(()),
                }
            }
        });
        // Each loop's tick closure owns a guard that records the loop's
        // name when the loop ends (the closure is dropped with its task).
        struct OnStop(&'static str, Arc<std::sync::Mutex<Vec<&'static str>>>);
        impl Drop for OnStop {
            fn drop(&mut self) {
                self.1.lock().unwrap().push(self.0);
            }
        }
        for name in ["first", "second", "third"] {
            let guard = OnStop(name, order.clone());
            sup.spawn_loop(name, Duration::from_secs(1), move || {
                let _ = &guard;
                async { Ok(()) }
            });
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(
            ticks.load(Ordering::SeqCst) >= 9,
            "errors and panics did not stop the loop"
        );
        assert!(order.lock().unwrap().is_empty(), "nothing stopped yet");
        let late = sup.shutdown(Duration::from_secs(1)).await;
        assert!(late.is_empty());
        // The last started stops first.
        assert_eq!(*order.lock().unwrap(), ["third", "second", "first"]);
        let after = ticks.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            ticks.load(Ordering::SeqCst),
            after,
            "a stopped loop ticks no more"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_drain_refuses_new_effects_and_waits_for_those_in_flight() {
        let drain = EffectDrain::new();
        let deploy = drain
            .begin("prod_deploy of DEMO-1")
            .expect("not draining yet");
        drain.start_draining();
        assert!(drain.is_draining());
        assert!(drain.begin("merge_pr of DEMO-2").is_none(), "no new effect");
        let d = drain.clone();
        let waiter = tokio::spawn(async move {
            d.wait_idle(
                Duration::from_secs(60),
                Duration::from_secs(5),
                std::future::pending(),
            )
            .await
        });
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(!waiter.is_finished(), "waits while the deploy runs");
        drop(deploy);
        assert_eq!(waiter.await.unwrap(), DrainEnd::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn the_drain_is_bounded_and_a_second_signal_ends_it() {
        let drain = EffectDrain::new();
        let _deploy = drain.begin("prod_deploy of DEMO-1").unwrap();
        drain.start_draining();
        let end = drain
            .wait_idle(
                Duration::from_secs(30),
                Duration::from_secs(5),
                std::future::pending(),
            )
            .await;
        assert_eq!(
            end,
            DrainEnd::TimedOut(vec!["prod_deploy of DEMO-1".into()])
        );
        let end = drain
            .wait_idle(Duration::from_secs(30), Duration::from_secs(5), async {})
            .await;
        assert_eq!(end, DrainEnd::Forced(vec!["prod_deploy of DEMO-1".into()]));
    }

    #[tokio::test]
    async fn shutdown_fires_once_for_all_clones() {
        let (t, s) = channel();
        let a = tokio::spawn(s.clone().wait());
        let b = tokio::spawn(s.clone().wait());
        t.fire();
        a.await.unwrap();
        b.await.unwrap();
        assert!(s.is_fired());
    }
}
