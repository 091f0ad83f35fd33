//! Build-cache pruner (F-29, seed 004 — ORCH-062): every interval, on the
//! host over ssh, exactly `ssh <target> docker builder prune -f --filter
//! until=<until>` and nothing else, ever: no image or system prune, no
//! container touched, no daemon restarted. No target → every tick is a
//! no-op. The command runs in its own process group with a timeout and the
//! daemon's secrets removed from its environment; a failure is counted,
//! alerted and the loop goes on. The reclaimed size comes from Docker's
//! "Total reclaimed space" line and is alerted from the notify threshold.
//! The pruner starts last and stops first (`loops::start_ops`).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use serde_json::{Value, json};

use crate::config::{SECRET_ENV_KEYS, Settings};
use crate::notify::{Alert, Notifier};
use crate::proc_group::{self, Ended};
use crate::status::StatusBlock;

/// SIGTERM → SIGKILL grace when the prune passes its timeout.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// The one command the pruner runs, as argv.
pub fn argv(target: &str, until: &str) -> Vec<String> {
    [
        "ssh", target, "docker", "builder", "prune", "-f", "--filter",
    ]
    .into_iter()
    .map(String::from)
    .chain([format!("until={until}")])
    .collect()
}

/// Bytes in Docker's "Total reclaimed space: 1.2GB" (or `builder prune`'s
/// "Total: 1.2GB"); `None` when no such line is there.
pub fn reclaimed_bytes(output: &str) -> Option<u64> {
    let line = output.lines().rev().find_map(|l| {
        let l = l.trim();
        l.strip_prefix("Total reclaimed space:")
            .or_else(|| l.strip_prefix("Total:"))
    })?;
    let v = line.trim();
    let split = v.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = v.split_at(split);
    let num: f64 = num.parse().ok()?;
    let mult: f64 = match unit.trim() {
        "B" => 1.0,
        "kB" | "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "TiB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some((num * mult).round() as u64)
}

#[derive(Debug, Clone, Default, Serialize)]
struct PruneState {
    runs: u64,
    failures: u64,
    last_run_at: Option<i64>,
    last_ok: Option<bool>,
    last_reclaimed_bytes: Option<u64>,
    last_error: Option<String>,
}

/// What one tick did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pruned {
    /// No target configured: nothing ran.
    NoTarget,
    Ran {
        reclaimed_bytes: Option<u64>,
    },
    Failed(String),
}

pub struct Pruner {
    target: String,
    until: String,
    timeout: Duration,
    notify_min_bytes: u64,
    interval_s: u64,
    notifier: Arc<dyn Notifier>,
    /// Added to the command's environment (tests put a fake `ssh` on PATH).
    env: Vec<(String, String)>,
    state: Mutex<PruneState>,
}

impl Pruner {
    pub fn from_settings(s: &Settings, notifier: Arc<dyn Notifier>) -> Self {
        let o = &s.ops;
        Self {
            target: o.build_cache_prune_target.clone(),
            until: o.build_cache_prune_until.clone(),
            timeout: Duration::from_secs(o.build_cache_prune_timeout_s),
            notify_min_bytes: (o.build_cache_prune_notify_min_gb * 1e9) as u64,
            interval_s: o.build_cache_prune_interval_s,
            notifier,
            env: Vec::new(),
            state: Mutex::default(),
        }
    }

    /// Environment for the command (a test's PATH).
    pub fn with_env(mut self, env: Vec<(String, String)>) -> Self {
        self.env = env;
        self
    }

    /// The supervisor's tick: never an error, the loop always goes on.
    pub async fn tick(&self) -> anyhow::Result<()> {
        self.prune().await;
        Ok(())
    }

    pub async fn prune(&self) -> Pruned {
        if self.target.is_empty() {
            return Pruned::NoTarget;
        }
        // Both values are validated in config (`valid_target`, `valid_until`):
        // no quote, blank or shell character can be in them.
        let command = format!(
            "exec {}",
            argv(&self.target, &self.until)
                .iter()
                .map(|a| format!("'{a}'"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let spec = proc_group::Spec {
            command,
            cwd: PathBuf::from("/"),
            env: self.env.clone(),
            env_remove: SECRET_ENV_KEYS.iter().map(|k| k.to_string()).collect(),
            log: None,
            survives_drop: false,
            // The operator's own ssh, with its keys: not agent code.
            sandbox: None,
        };
        let result = match proc_group::run(&spec, self.timeout, KILL_GRACE).await {
            Ok(o) if o.ended == Ended::Exited(0) => Pruned::Ran {
                reclaimed_bytes: reclaimed_bytes(&o.output),
            },
            Ok(o) => {
                let tail: String = o
                    .output
                    .lines()
                    .rev()
                    .take(3)
                    .collect::<Vec<_>>()
                    .join(" | ");
                Pruned::Failed(format!("{:?}: {tail}", o.ended))
            }
            Err(e) => Pruned::Failed(format!("could not start: {e}")),
        };
        let now = crate::db::now_ms();
        if let Ok(mut st) = self.state.lock() {
            st.runs += 1;
            st.last_run_at = Some(now);
            match &result {
                Pruned::Ran { reclaimed_bytes } => {
                    st.last_ok = Some(true);
                    st.last_reclaimed_bytes = *reclaimed_bytes;
                    st.last_error = None;
                }
                Pruned::Failed(e) => {
                    st.failures += 1;
                    st.last_ok = Some(false);
                    st.last_error = Some(e.clone());
                }
                Pruned::NoTarget => {}
            }
        }
        match &result {
            Pruned::Ran { reclaimed_bytes } => {
                let bytes = reclaimed_bytes.unwrap_or(0);
                tracing::info!(target = %self.target, reclaimed_bytes = bytes, "build cache pruned");
                if reclaimed_bytes.is_some() && bytes >= self.notify_min_bytes {
                    self.notifier
                        .alert(Alert {
                            kind: "build_cache_pruned",
                            work_item: None,
                            message: format!(
                                "build cache on {} pruned: {:.2} GB reclaimed",
                                self.target,
                                bytes as f64 / 1e9
                            ),
                            // Each prune is an event of its own.
                            key: Some(now.to_string()),
                        })
                        .await;
                }
            }
            Pruned::Failed(e) => {
                tracing::warn!(target = %self.target, error = %e, "build cache prune failed; tried again next interval");
                self.notifier
                    .alert(Alert {
                        kind: "build_cache_prune_failed",
                        work_item: None,
                        message: format!("build cache prune on {} failed: {e}", self.target),
                        key: None,
                    })
                    .await;
            }
            Pruned::NoTarget => {}
        }
        result
    }
}

#[async_trait]
impl StatusBlock for Pruner {
    fn name(&self) -> &'static str {
        "build_cache_prune"
    }
    async fn snapshot(&self) -> Value {
        let st = self.state.lock().map(|s| s.clone()).unwrap_or_default();
        json!({
            "target": self.target,
            "active": !self.target.is_empty(),
            "interval_s": self.interval_s,
            "until": self.until,
            "runs": st.runs,
            "failures": st.failures,
            "last_run_at": st.last_run_at,
            "last_ok": st.last_ok,
            "last_reclaimed_bytes": st.last_reclaimed_bytes,
            "last_error": st.last_error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reclaimed_line_is_parsed() {
        assert_eq!(
            reclaimed_bytes("ID\nabc\nTotal reclaimed space: 2.5GB\n"),
            Some(2_500_000_000)
        );
        assert_eq!(reclaimed_bytes("Total:\t11.3GB"), Some(11_300_000_000));
        assert_eq!(reclaimed_bytes("Total reclaimed space: 0B"), Some(0));
        assert_eq!(
            reclaimed_bytes("Total reclaimed space: 512kB"),
            Some(512_000)
        );
        assert_eq!(
            reclaimed_bytes("Total reclaimed space: 1MiB"),
            Some(1_048_576)
        );
        assert_eq!(reclaimed_bytes("nothing here"), None);
        assert_eq!(reclaimed_bytes("Total reclaimed space: lots"), None);
    }

    #[test]
    fn the_command_is_exactly_this() {
        assert_eq!(
            argv("ops@host", "24h").join(" "),
            "ssh ops@host docker builder prune -f --filter until=24h"
        );
    }
}
