//! Retention (issue 16, F-30): the database and the workspace stay bounded.
//! Every `retention_interval_s`, what is done and older than
//! `retention_days` goes: processed webhook deliveries and Telegram
//! updates, sent outbox rows, quiet alert dedup rows (`db::retention`), and
//! the files of finished agent runs under `<workspace>/runs/` (prompt, log,
//! exit code). A run whose job is still queued or running keeps its files
//! whatever their age; only regular files are removed, links are never
//! followed (an agent could have planted one).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde_json::{Value, json};

use crate::db::{Db, jobs, now_ms, retention};
use crate::status::StatusBlock;

const DAY_MS: i64 = 24 * 3600 * 1000;

pub struct Retention {
    db: Db,
    runs: PathBuf,
    days: f64,
    /// An alert dedup row is kept while its window may still apply.
    alert_window_ms: i64,
    ticks: AtomicU64,
    last_tick_ms: AtomicI64,
    deliveries: AtomicU64,
    telegram_updates: AtomicU64,
    outbox: AtomicU64,
    alerts: AtomicU64,
    run_files: AtomicU64,
}

impl Retention {
    pub fn new(db: Db, workspace_root: &Path, days: f64, alert_window_s: u64) -> Self {
        Self {
            db,
            runs: workspace_root.join("runs"),
            days,
            alert_window_ms: i64::try_from(alert_window_s.saturating_mul(1000)).unwrap_or(i64::MAX),
            ticks: AtomicU64::new(0),
            last_tick_ms: AtomicI64::new(0),
            deliveries: AtomicU64::new(0),
            telegram_updates: AtomicU64::new(0),
            outbox: AtomicU64::new(0),
            alerts: AtomicU64::new(0),
            run_files: AtomicU64::new(0),
        }
    }

    pub async fn tick(&self) -> anyhow::Result<()> {
        let now = now_ms();
        let age_ms = (self.days * DAY_MS as f64).min(i64::MAX as f64) as i64;
        let cutoff = now.saturating_sub(age_ms);
        let t = retention::trim(&self.db, cutoff, now.saturating_sub(self.alert_window_ms)).await?;
        let active: HashSet<i64> = jobs::active(self.db.reader())
            .await?
            .into_iter()
            .map(|j| j.id)
            .collect();
        let runs = self.runs.clone();
        let older_than = SystemTime::UNIX_EPOCH + Duration::from_millis(cutoff.max(0) as u64);
        let files = tokio::task::spawn_blocking(move || trim_runs(&runs, older_than, &active))
            .await
            .unwrap_or(0);
        for (counter, n) in [
            (&self.deliveries, t.deliveries),
            (&self.telegram_updates, t.telegram_updates),
            (&self.outbox, t.outbox),
            (&self.alerts, t.alerts),
            (&self.run_files, files),
        ] {
            counter.fetch_add(n, Ordering::Relaxed);
        }
        if t != retention::Trimmed::default() || files > 0 {
            tracing::info!(
                deliveries = t.deliveries,
                telegram_updates = t.telegram_updates,
                outbox = t.outbox,
                alerts = t.alerts,
                run_files = files,
                days = self.days,
                "retention trimmed what is done and older than its age"
            );
        }
        // What the pass freed goes back to the OS: glibc keeps freed heap
        // pages until asked, so each pass would otherwise leave resident
        // memory a notch higher (the soak saw it step up when retention
        // began). Off the runtime: it takes the allocator's locks.
        let _ = tokio::task::spawn_blocking(crate::memory::release_freed).await;
        self.ticks.fetch_add(1, Ordering::Relaxed);
        self.last_tick_ms.store(now, Ordering::Relaxed);
        Ok(())
    }
}

#[async_trait]
impl StatusBlock for Retention {
    fn name(&self) -> &'static str {
        "retention"
    }
    async fn snapshot(&self) -> Value {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "days": self.days,
            "ticks": n(&self.ticks),
            "last_tick_ms": self.last_tick_ms.load(Ordering::Relaxed),
            "deliveries_trimmed": n(&self.deliveries),
            "telegram_updates_trimmed": n(&self.telegram_updates),
            "outbox_trimmed": n(&self.outbox),
            "alerts_trimmed": n(&self.alerts),
            "run_files_removed": n(&self.run_files),
        })
    }
}

/// The job id a run file belongs to: `job<id>-<role>-a<attempt>.<ext>`.
fn job_of(name: &str) -> Option<i64> {
    let rest = name.strip_prefix("job")?;
    rest[..rest.find('-')?].parse().ok()
}

/// Remove the run files older than `older_than` whose job is not active;
/// then the run directories left empty. Returns the files removed.
fn trim_runs(runs: &Path, older_than: SystemTime, active: &HashSet<i64>) -> u64 {
    let Ok(dirs) = std::fs::read_dir(runs) else {
        return 0;
    };
    let mut removed = 0;
    for dir in dirs.flatten() {
        // `file_type` does not follow links: a link is neither a dir here
        // nor a file below.
        if !dir.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let Ok(files) = std::fs::read_dir(dir.path()) else {
            continue;
        };
        for f in files.flatten() {
            let Ok(meta) = f.path().symlink_metadata() else {
                continue;
            };
            let old = meta.modified().is_ok_and(|m| m < older_than);
            let name = f.file_name();
            let job = name.to_str().and_then(job_of);
            if meta.is_file()
                && old
                && job.is_some_and(|id| !active.contains(&id))
                && std::fs::remove_file(f.path()).is_ok()
            {
                removed += 1;
            }
        }
        // Only succeeds when empty.
        let _ = std::fs::remove_dir(dir.path());
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_files_name_their_job() {
        assert_eq!(job_of("job12-developer-a1.log"), Some(12));
        assert_eq!(job_of("job7-finalizer-a2.prompt.md"), Some(7));
        assert_eq!(job_of("notes.txt"), None);
        assert_eq!(job_of("jobx-developer-a1.log"), None);
    }
}
