//! The disk watchdog (F-28) against a fake usage source: thresholds crossed
//! up alert once per crossing, coming back below warn alerts as recovered,
//! an unreadable path alerts nothing; the `disk` block and the gauges show
//! the last figures.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use orchestrator::loops::disk_watchdog::{DiskWatchdog, UsageSource};
use orchestrator::notify::RecordingNotifier;
use orchestrator::status::StatusBlock;

#[derive(Default)]
struct Fake(Mutex<HashMap<PathBuf, Result<f64, String>>>);

impl Fake {
    fn set(&self, p: &str, v: Result<f64, String>) {
        self.0.lock().unwrap().insert(PathBuf::from(p), v);
    }
}

impl UsageSource for Fake {
    fn used_percent(&self, path: &Path) -> Result<f64, String> {
        self.0
            .lock()
            .unwrap()
            .get(path)
            .cloned()
            .unwrap_or_else(|| Err("no such path".into()))
    }
}

#[tokio::test]
async fn thresholds_up_and_down_alert_once_per_crossing() {
    let fake = Arc::new(Fake::default());
    let rec = Arc::new(RecordingNotifier::default());
    let w = DiskWatchdog::new(
        vec!["/ws".into(), "/db".into()],
        80,
        90,
        fake.clone(),
        rec.clone(),
    );
    let kinds = || -> Vec<(String, String)> {
        rec.alerts()
            .into_iter()
            .map(|a| (a.kind.to_string(), a.key.unwrap_or_default()))
            .collect()
    };
    fake.set("/db", Ok(10.0));
    for (pct, want) in [
        (50.0, vec![]),
        (85.0, vec![("disk_warn", "/ws")]),
        (86.0, vec![]),
        (95.0, vec![("disk_critical", "/ws")]),
        (97.0, vec![]),
        // Down from critical to warn: no new alert; then recovered.
        (85.0, vec![]),
        (40.0, vec![("disk_recovered", "/ws")]),
        (41.0, vec![]),
        // Straight from ok to critical: one alert, the critical one.
        (99.0, vec![("disk_critical", "/ws")]),
    ] {
        let before = kinds().len();
        fake.set("/ws", Ok(pct));
        w.tick().await.unwrap();
        let new: Vec<(String, String)> = kinds()[before..].to_vec();
        let want: Vec<(String, String)> = want
            .into_iter()
            .map(|(k, p)| (k.to_string(), p.to_string()))
            .collect();
        assert_eq!(new, want, "at {pct}%");
    }
    let msg = &rec.alerts()[0].message;
    assert_eq!(msg, "/ws is 85.0% full (warning at 80%)");

    // An unreadable path: shown with its error, no alert, level kept.
    let before = kinds().len();
    fake.set("/db", Err("Permission denied".into()));
    w.tick().await.unwrap();
    assert_eq!(kinds().len(), before);

    let block = w.snapshot().await;
    assert_eq!(w.name(), "disk");
    assert_eq!(block["warn_percent"], 80);
    assert_eq!(block["critical_percent"], 90);
    assert_eq!(block["paths"][0]["path"], "/ws");
    assert_eq!(block["paths"][0]["level"], "critical");
    assert_eq!(block["paths"][0]["used_percent"], 99.0);
    assert_eq!(block["paths"][1]["error"], "Permission denied");
    let metrics = w.prometheus().await;
    assert!(
        metrics.contains("orchestrator_disk_used_percent{path=\"/ws\"} 99"),
        "{metrics}"
    );
    assert!(
        metrics.contains("orchestrator_disk_level{path=\"/ws\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_real_source_reads_this_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let pct = orchestrator::loops::disk_watchdog::Statvfs
        .used_percent(dir.path())
        .unwrap();
    assert!((0.0..=100.0).contains(&pct), "{pct}");
    assert!(
        orchestrator::loops::disk_watchdog::Statvfs
            .used_percent(&dir.path().join("missing"))
            .is_err()
    );
}
