//! B-9 hot reload (ADR 0016): every `ORCH_CONFIG_POLL_MS` the loop hashes
//! the file named by `ORCH_CONFIG`; on a new hash, or on SIGHUP, it
//! re-reads the file through the start-up loader (`Settings::reload_projects`)
//! and swaps the `[[projects]]` list in. A bad file (syntax, an invalid
//! value, unreadable) changes nothing: the last good list stays, a warning
//! names the problem and one alert goes out per bad content (keyed by its
//! hash, so a bad file alerts once, not every poll). A later good file
//! recovers.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::config::{Changes, Fingerprint, Settings};
use crate::notify::{Alert, Notifier};
use crate::shutdown::Shutdown;
use crate::status::StatusBlock;

/// Why a check runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The poll: reload only if the file's hash changed.
    Poll,
    /// SIGHUP: reload whatever the hash says.
    Hangup,
}

impl Cause {
    fn word(self) -> &'static str {
        match self {
            Cause::Poll => "file changed",
            Cause::Hangup => "SIGHUP",
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// The content last looked at (good or bad).
    seen: Option<Fingerprint>,
    /// The bad content last alerted, while the file is bad.
    failing: Option<Fingerprint>,
    last_error: Option<String>,
    reloads: u64,
    failures: u64,
}

pub struct ConfigReload {
    settings: Arc<Settings>,
    notifier: Arc<dyn Notifier>,
    poll: Option<Duration>,
    hangup: tokio::sync::Mutex<Option<Signal>>,
    state: Mutex<State>,
}

impl ConfigReload {
    /// The loop's state, with the file's hash of now as the content seen
    /// (start-up has just loaded it) and the SIGHUP handler installed.
    pub fn new(settings: Arc<Settings>, notifier: Arc<dyn Notifier>) -> Self {
        let poll = match settings.ops.config_poll_ms {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        };
        let hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot install the SIGHUP handler; the projects file is only polled");
                None
            }
        };
        let seen = settings.source.as_ref().map(|s| Fingerprint::of(&s.path));
        Self {
            settings,
            notifier,
            poll,
            hangup: tokio::sync::Mutex::new(hangup),
            state: Mutex::new(State {
                seen,
                ..State::default()
            }),
        }
    }

    fn path(&self) -> Option<PathBuf> {
        self.settings.source.as_ref().map(|s| s.path.clone())
    }

    /// One turn: wait for the poll interval, a SIGHUP or the stop, then
    /// check.
    pub async fn tick(&self, stop: Shutdown) -> anyhow::Result<()> {
        let cause = {
            let mut hangup = self.hangup.lock().await;
            let hup = async {
                match hangup.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            let poll = async {
                match self.poll {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = hup => Cause::Hangup,
                _ = poll => Cause::Poll,
                _ = stop.wait() => {
                    // Idle until the supervisor ends the loop between ticks.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    return Ok(());
                }
            }
        };
        self.check(cause).await;
        Ok(())
    }

    /// Look at the file and reload it if `cause` calls for it.
    pub async fn check(&self, cause: Cause) {
        let Some(path) = self.path() else {
            if cause == Cause::Hangup {
                tracing::info!("SIGHUP: no config file (ORCH_CONFIG unset), nothing to re-read");
            }
            return;
        };
        // A file on a hung filesystem must not block the runtime.
        let now = tokio::task::spawn_blocking(move || Fingerprint::of(&path))
            .await
            .unwrap_or_else(|e| Fingerprint::Unreadable(e.to_string()));
        if cause == Cause::Poll && self.seen().as_ref() == Some(&now) {
            return;
        }
        let settings = self.settings.clone();
        let outcome = tokio::task::spawn_blocking(move || settings.reload_projects()).await;
        match outcome {
            Ok(Some(Ok(changes))) => self.reloaded(now, cause, changes).await,
            Ok(Some(Err(e))) => self.failed(now, cause, e.to_string()).await,
            Ok(None) => {}
            // A panic inside the loader (a dependency's parser) is a bad
            // file too: nothing was swapped in.
            Err(e) => {
                let error = format!("the config loader panicked: {e}");
                self.failed(now, cause, error).await;
            }
        }
    }

    fn seen(&self) -> Option<Fingerprint> {
        self.state.lock().ok().and_then(|s| s.seen.clone())
    }

    async fn reloaded(&self, now: Fingerprint, cause: Cause, c: Changes) {
        let recovered = {
            let Ok(mut st) = self.state.lock() else {
                return;
            };
            st.seen = Some(now);
            st.reloads += 1;
            st.last_error = None;
            st.failing.take().is_some()
        };
        for w in &c.warnings {
            tracing::warn!(warning = %w, "config reloaded with a warning");
        }
        tracing::info!(
            cause = cause.word(),
            added = ?c.added,
            removed = ?c.removed,
            changed = ?c.changed,
            projects = self.settings.projects.len(),
            "config reloaded{}",
            if c.projects_changed() { "" } else { ": projects unchanged" }
        );
        if !c.need_restart.is_empty() {
            tracing::warn!(
                keys = ?c.need_restart,
                "config: these keys changed in the file but take effect only after a restart"
            );
        }
        if recovered {
            self.notifier
                .alert(Alert {
                    kind: "config_recovered",
                    work_item: None,
                    message: "config reloaded: the projects file is valid again".into(),
                    key: None,
                })
                .await;
        }
    }

    /// `error`: the loader's message, which names the file, line and key,
    /// never a value of a secret (the start-up messages).
    async fn failed(&self, now: Fingerprint, cause: Cause, error: String) {
        let fresh = {
            let Ok(mut st) = self.state.lock() else {
                return;
            };
            st.seen = Some(now.clone());
            st.failures += 1;
            st.last_error = Some(error.clone());
            let fresh = st.failing.as_ref() != Some(&now);
            st.failing = Some(now.clone());
            fresh
        };
        tracing::warn!(
            cause = cause.word(),
            error = %error,
            "config not reloaded: the file is bad; the last good projects stay"
        );
        if fresh {
            self.notifier
                .alert(Alert {
                    kind: "config_invalid",
                    work_item: None,
                    message: format!(
                        "the projects file was not reloaded ({error}); the last good configuration stays"
                    ),
                    key: Some(now.short()),
                })
                .await;
        }
    }
}

#[async_trait]
impl StatusBlock for ConfigReload {
    fn name(&self) -> &'static str {
        "config"
    }

    async fn snapshot(&self) -> Value {
        let (reloads, failures, last_error, failing) = match self.state.lock() {
            Ok(s) => (
                s.reloads,
                s.failures,
                s.last_error.clone(),
                s.failing.is_some(),
            ),
            Err(_) => (0, 0, Some("state poisoned".to_string()), true),
        };
        json!({
            "file": self.path().map(|p| p.display().to_string()),
            "poll_ms": self.poll.map_or(0, |d| d.as_millis() as u64),
            "projects": self.settings.projects.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            "reloads": reloads,
            "failures": failures,
            "failing": failing,
            "last_error": last_error,
        })
    }
}
