//! The reaper and the reconciler over 10,000 running jobs (issue 16, F-30).
//!
//! `cargo bench --bench loops_scale` (optionally `-- <running jobs>
//! <seconds>`; default 10,000 jobs, 10 s). The daemon starts on its own
//! database with both loops ticking every second; 10,000 tasks are seeded
//! in development, each with a job running under the daemon's boot id
//! (started recently: nothing for tier 3 to kill, nothing for the
//! reconciler to fix, so a tick is the cost of looking). Figures:
//!
//! - each loop's mean and largest tick, from the daemon's own
//!   `orchestrator_loop_tick_seconds` histogram, as a share of its interval
//!   (aim ≤ 10%);
//! - how long the write lock is held at a time, seen from outside: a probe
//!   connection writes one row every 5 ms and records how long each write
//!   waits, with the loops ticking and, as the baseline in the same run,
//!   with the same daemon and the loops off (aim: the loops add ≤ 5 ms).

#[path = "support/load.rs"]
mod load;

use std::time::{Duration, Instant};

use load::{Figures, daemon_settings, runtime};
use tokio::net::TcpListener;

struct Run {
    ticks: Vec<(String, f64, f64, f64)>,
    probe: Figures,
    probe_max_ms: f64,
}

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// Writes of one row, each timed, every 5 ms for `secs`.
fn probe(path: &std::path::Path, secs: f64) -> (Figures, f64) {
    let c = rusqlite::Connection::open(path).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c.pragma_update(None, "synchronous", "FULL").unwrap();
    c.execute_batch("CREATE TABLE IF NOT EXISTS bench_probe (n INTEGER)")
        .unwrap();
    let start = Instant::now();
    let mut lat = Vec::new();
    while start.elapsed().as_secs_f64() < secs {
        let t = Instant::now();
        c.execute("INSERT INTO bench_probe (n) VALUES (1)", [])
            .unwrap();
        lat.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(5));
    }
    let max = lat.iter().max().copied().unwrap_or_default();
    (
        Figures::of(lat, start.elapsed().as_secs_f64(), 0),
        max.as_secs_f64() * 1e3,
    )
}

fn seed(path: &std::path::Path, jobs: i64, boot_id: &str) {
    let mut c = rusqlite::Connection::open(path).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    let now = orchestrator::db::now_ms();
    let tx = c.transaction().unwrap();
    {
        let mut task = tx
            .prepare(
                "INSERT INTO tasks (id, work_item, project, title, stage, created_at, updated_at)
                 VALUES (?, ?, 'demo', 'Task', 'development', ?, ?)",
            )
            .unwrap();
        let mut job = tx
            .prepare(
                "INSERT INTO jobs (task_id, stage, role, status, boot_id, created_at, started_at, updated_at)
                 VALUES (?, 'development', 'developer', 'running', ?, ?, ?, ?)",
            )
            .unwrap();
        for id in 1..=jobs {
            task.execute(rusqlite::params![id, format!("DEMO-{id}"), now, now])
                .unwrap();
            job.execute(rusqlite::params![id, boot_id, now, now, now])
                .unwrap();
        }
    }
    tx.commit().unwrap();
}

fn run(jobs: i64, secs: f64, loops_on: bool) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let on = if loops_on { "true" } else { "false" };
    let settings = daemon_settings(
        dir.path(),
        &[
            ("ORCH_REAPER_ENABLED", on),
            ("ORCH_RECONCILER_ENABLED", on),
            ("ORCH_REAPER_INTERVAL_S", "1"),
            ("ORCH_RECONCILER_INTERVAL_S", "1"),
            // The seeded jobs fill every slot: the worker starts nothing.
            ("ORCH_MAX_CONCURRENT_JOBS", "1"),
        ],
    );
    let rt = runtime();
    let running = rt.block_on(async {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        orchestrator::app::start(settings, l).await.unwrap()
    });
    let base = format!("http://{}", running.addr);
    let boot: String = rt.block_on(async {
        let q: serde_json::Value = reqwest::get(format!("{base}/queue"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        q["transition_lease"]["boot_id"]
            .as_str()
            .unwrap()
            .to_string()
    });
    let db = dir.path().join("o.db");
    seed(&db, jobs, &boot);
    // Let the first ticks over the seeded rows pass before measuring.
    std::thread::sleep(Duration::from_secs(2));
    let metrics = || {
        rt.block_on(async {
            reqwest::get(format!("{base}/metrics"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        })
    };
    let before = metrics();
    let (probe_fig, probe_max) = probe(&db, secs);
    let after = metrics();
    let mut ticks = Vec::new();
    for name in ["reaper", "reconciler"] {
        let s = |t: &str, what: &str| {
            sample(
                t,
                &format!("orchestrator_loop_tick_seconds_{what}{{name=\"{name}\"}}"),
            )
            .unwrap_or(0.0)
        };
        let n = s(&after, "count") - s(&before, "count");
        let sum = s(&after, "sum") - s(&before, "sum");
        // The largest tick: the lowest bucket holding every tick of the window.
        let buckets = |t: &str| -> Vec<(f64, f64)> {
            t.lines()
                .filter(|l| {
                    l.starts_with("orchestrator_loop_tick_seconds_bucket{")
                        && l.contains(&format!("name=\"{name}\""))
                })
                .filter_map(|l| {
                    let le = l.split("le=\"").nth(1)?.split('"').next()?;
                    let le = if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse().ok()?
                    };
                    Some((le, l.rsplit(' ').next()?.parse().ok()?))
                })
                .collect()
        };
        let (b0, b1) = (buckets(&before), buckets(&after));
        let largest = b1
            .iter()
            .filter(|(le, c)| {
                let was = b0.iter().find(|(l, _)| l == le).map_or(0.0, |(_, c)| *c);
                n > 0.0 && c - was >= n
            })
            .map(|(le, _)| *le)
            .fold(f64::INFINITY, f64::min);
        ticks.push((
            name.to_string(),
            n,
            if n > 0.0 { sum / n } else { 0.0 },
            largest,
        ));
    }
    rt.block_on(async { running.stop().await.ok() });
    Run {
        ticks,
        probe: probe_fig,
        probe_max_ms: probe_max,
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let jobs: i64 = args.first().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let secs: f64 = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(10.0);
    println!("loops at scale: {jobs} running jobs, {secs} s measured per case, loops every 1 s");
    let off = run(jobs, secs, false);
    let on = run(jobs, secs, true);
    println!();
    println!(
        "| loop | ticks | mean tick ms | share of its 1 s interval | largest tick ≤ (bucket) s |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (name, n, mean, largest) in &on.ticks {
        println!(
            "| {name} | {n:.0} | {:.2} | {:.2}% | {largest} |",
            mean * 1e3,
            mean * 100.0
        );
    }
    println!();
    println!("| probe write every 5 ms | p50 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|");
    for (name, r) in [
        ("loops off (baseline)", &off),
        ("reaper + reconciler ticking", &on),
    ] {
        println!(
            "| {name} | {:.3} | {:.3} | {:.3} |",
            r.probe.p50_ms, r.probe.p99_ms, r.probe_max_ms
        );
    }
}
