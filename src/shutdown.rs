//! One shutdown signal for the server and every loop, and a small supervisor
//! that starts background loops in order and stops them in reverse.

use std::future::Future;
use std::time::Duration;

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

    /// Resolves on the first SIGTERM or SIGINT.
    pub async fn recv(mut self) {
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
        for name in ["first", "second"] {
            let o = order.clone();
            sup.spawn_loop(name, Duration::from_secs(1), move || {
                let o = o.clone();
                async move {
                    o.lock().unwrap().push(name);
                    Ok(())
                }
            });
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(
            ticks.load(Ordering::SeqCst) >= 9,
            "errors and panics did not stop the loop"
        );
        let late = sup.shutdown(Duration::from_secs(1)).await;
        assert!(late.is_empty());
        let after = ticks.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            ticks.load(Ordering::SeqCst),
            after,
            "a stopped loop ticks no more"
        );
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
