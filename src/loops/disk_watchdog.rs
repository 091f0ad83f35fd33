//! Disk watchdog (F-28, seed 004 — ORCH-062/063): every interval, the
//! usage of each configured path's filesystem against the warn and
//! critical thresholds. Crossing up to warn or critical alerts; coming back
//! below warn alerts once as recovered. The state is in memory (a restart
//! starts at "ok" and alerts again if the disk is still full: a restart is
//! when an operator wants to hear it). A path that cannot be read is shown
//! with its error and alerts nothing (a missing workspace is not a full one).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::Serialize;
use serde_json::{Value, json};

use crate::config::Settings;
use crate::notify::{Alert, Notifier};
use crate::status::StatusBlock;

/// Where usage figures come from: the filesystem, or a test's fake.
pub trait UsageSource: Send + Sync {
    /// Percent of the filesystem holding `path` that is used.
    fn used_percent(&self, path: &Path) -> Result<f64, String>;
}

/// `statvfs(2)`: used = (blocks - free) / (blocks - free + available), the
/// figure `df` shows (the root reserve counts as unavailable).
pub struct Statvfs;

impl UsageSource for Statvfs {
    fn used_percent(&self, path: &Path) -> Result<f64, String> {
        let st = nix::sys::statvfs::statvfs(path).map_err(|e| e.to_string())?;
        let blocks = st.blocks() as f64;
        let used = blocks - st.blocks_free() as f64;
        let usable = used + st.blocks_available() as f64;
        if usable <= 0.0 {
            return Err("the filesystem reports no blocks".into());
        }
        Ok(used * 100.0 / usable)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Critical,
}

impl Level {
    fn of(percent: f64, warn: u64, critical: u64) -> Level {
        if percent >= critical as f64 {
            Level::Critical
        } else if percent >= warn as f64 {
            Level::Warn
        } else {
            Level::Ok
        }
    }
}

#[derive(Debug, Clone, Serialize)]
struct PathState {
    level: Level,
    used_percent: Option<f64>,
    error: Option<String>,
}

pub struct DiskWatchdog {
    paths: Vec<PathBuf>,
    warn: u64,
    critical: u64,
    source: Arc<dyn UsageSource>,
    notifier: Arc<dyn Notifier>,
    state: Mutex<BTreeMap<PathBuf, PathState>>,
}

/// The watched paths: the configured ones, else the workspace root and the
/// database's directory.
pub fn paths_of(s: &Settings) -> Vec<PathBuf> {
    if !s.ops.disk_watchdog_paths.is_empty() {
        return s.ops.disk_watchdog_paths.clone();
    }
    let db_dir = s
        .database_path()
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let mut v = vec![s.workspace_root.clone(), db_dir];
    v.dedup();
    v
}

impl DiskWatchdog {
    pub fn new(
        paths: Vec<PathBuf>,
        warn: u64,
        critical: u64,
        source: Arc<dyn UsageSource>,
        notifier: Arc<dyn Notifier>,
    ) -> Self {
        Self {
            paths,
            warn,
            critical,
            source,
            notifier,
            state: Mutex::default(),
        }
    }

    pub fn from_settings(s: &Settings, notifier: Arc<dyn Notifier>) -> Self {
        Self::new(
            paths_of(s),
            s.ops.disk_warn_percent,
            s.ops.disk_critical_percent,
            Arc::new(Statvfs),
            notifier,
        )
    }

    /// One check of every path. Alerts go out after the state is updated,
    /// outside the lock.
    pub async fn tick(&self) -> anyhow::Result<()> {
        let mut alerts = Vec::new();
        for path in &self.paths {
            let source = self.source.clone();
            let p = path.clone();
            // statvfs can block on a hung network filesystem: off the runtime.
            let read = tokio::task::spawn_blocking(move || source.used_percent(&p))
                .await
                .unwrap_or_else(|e| Err(format!("usage check failed: {e}")));
            let Ok(mut state) = self.state.lock() else {
                anyhow::bail!("disk watchdog state poisoned");
            };
            let prev = state.get(path).map_or(Level::Ok, |s| s.level);
            let now = match read {
                Ok(pct) => {
                    let level = Level::of(pct, self.warn, self.critical);
                    state.insert(
                        path.clone(),
                        PathState {
                            level,
                            used_percent: Some((pct * 10.0).round() / 10.0),
                            error: None,
                        },
                    );
                    if let Some(a) = self.alert_for(path, prev, level, pct) {
                        alerts.push(a);
                    }
                    level
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "disk usage unreadable");
                    state.insert(
                        path.clone(),
                        PathState {
                            level: prev,
                            used_percent: None,
                            error: Some(e),
                        },
                    );
                    prev
                }
            };
            tracing::debug!(path = %path.display(), level = ?now, "disk checked");
        }
        for a in alerts {
            self.notifier.alert(a).await;
        }
        Ok(())
    }

    fn alert_for(&self, path: &Path, prev: Level, now: Level, pct: f64) -> Option<Alert> {
        let shown = path.display();
        let (kind, message) = match (prev, now) {
            (p, n) if n > p && n == Level::Critical => (
                "disk_critical",
                format!("{shown} is {pct:.1}% full (critical at {}%)", self.critical),
            ),
            (p, n) if n > p => (
                "disk_warn",
                format!("{shown} is {pct:.1}% full (warning at {}%)", self.warn),
            ),
            (p, Level::Ok) if p > Level::Ok => (
                "disk_recovered",
                format!("{shown} is back to {pct:.1}% (below {}%)", self.warn),
            ),
            _ => return None,
        };
        Some(Alert {
            kind,
            work_item: None,
            message,
            key: Some(shown.to_string()),
        })
    }
}

#[async_trait]
impl StatusBlock for DiskWatchdog {
    fn name(&self) -> &'static str {
        "disk"
    }
    async fn snapshot(&self) -> Value {
        let paths: Vec<Value> = match self.state.lock() {
            Ok(state) => self
                .paths
                .iter()
                .map(|p| {
                    let s = state.get(p);
                    json!({
                        "path": p.display().to_string(),
                        "level": s.map_or(Level::Ok, |s| s.level),
                        "used_percent": s.and_then(|s| s.used_percent),
                        "error": s.and_then(|s| s.error.clone()),
                    })
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        json!({
            "warn_percent": self.warn,
            "critical_percent": self.critical,
            "paths": paths,
        })
    }
    async fn prometheus(&self) -> String {
        let mut out = String::from(
            "# HELP orchestrator_disk_used_percent Used space of a watched path's filesystem.\n\
             # TYPE orchestrator_disk_used_percent gauge\n",
        );
        let mut levels = String::from(
            "# HELP orchestrator_disk_level Disk level of a watched path: 0 ok, 1 warn, 2 critical.\n\
             # TYPE orchestrator_disk_level gauge\n",
        );
        if let Ok(state) = self.state.lock() {
            for (p, s) in state.iter() {
                let label = crate::telemetry::metrics::escape(&p.display().to_string());
                if let Some(pct) = s.used_percent {
                    let _ = writeln!(
                        out,
                        "orchestrator_disk_used_percent{{path=\"{label}\"}} {pct}"
                    );
                }
                let _ = writeln!(
                    levels,
                    "orchestrator_disk_level{{path=\"{label}\"}} {}",
                    s.level as u8
                );
            }
        }
        out + &levels
    }
}
