//! Soak (issue 16, F-30): the release binary under steady load for ten
//! minutes; its resident memory stays flat and its database bounded.
//!
//! `cargo bench --bench soak` (optionally `-- <seconds> <webhooks per
//! second>`; default 600 s, 200/s). The daemon (`orchestrator serve`, the
//! real binary in its own process) gets signed Plane webhooks at a steady
//! rate from 4 clients, `/queue` and `/health` polled twice a second each,
//! with retention at 0.0015 days (~130 s) every 10 s, so what it stores
//! is trimmed within the run. Every 30 s: the daemon's RSS (from
//! /proc/<pid>/status), what SQLite's allocator holds (`/metrics`), and the
//! size of its database files. Figures: RSS at
//! the end against RSS after the first minute (aim ±10%), and the largest
//! database size of the last half against that of the first half (aim: no
//! growth once retention has caught up).

#[path = "support/load.rs"]
mod load;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use load::{get, load_async, plane_webhook, runtime};

const SECRET: &str = "bench-webhook-secret";

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// A gauge from `/metrics`, read with a plain blocking request.
fn metric(addr: std::net::SocketAddr, name: &str) -> u64 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn db_bytes(dir: &std::path::Path) -> u64 {
    ["o.db", "o.db-wal", "o.db-shm"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let secs: u64 = args.first().and_then(|v| v.parse().ok()).unwrap_or(600);
    let rate: f64 = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(200.0);

    let dir = tempfile::tempdir().unwrap();
    let d = |p: &str| dir.path().join(p).display().to_string();
    let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .arg("serve")
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir.path())
        .env("ORCH_BIND", "127.0.0.1:0")
        .env("ORCH_DATABASE_URL", format!("sqlite://{}", d("o.db")))
        .env("ORCH_WORKSPACE_ROOT", d("ws"))
        .env("ORCH_LOG_LEVEL", "warn,orchestrator::app=info")
        .env("ORCH_PLANE_WEBHOOK_SECRET", SECRET)
        .env("ORCH_RETENTION_DAYS", "0.0015")
        .env("ORCH_RETENTION_INTERVAL_S", "10")
        .stdout(Stdio::null())
        .stderr(log.try_clone().unwrap())
        .spawn()
        .unwrap();
    // The bound address is in the `serving` line (`orchestrator::app` at info).
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr: std::net::SocketAddr = loop {
        let text = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default();
        if let Some(port) = text
            .lines()
            .filter(|l| l.contains("serving"))
            .find_map(|l| l.split("127.0.0.1:").nth(1))
            .map(|r| {
                r.chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
            })
            .filter(|p| !p.is_empty())
        {
            break format!("127.0.0.1:{port}").parse().unwrap();
        }
        assert!(Instant::now() < deadline, "no serving line: {text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    println!("soak: {secs} s, {rate} webhooks/s, pid {}", child.id());

    let stop = Arc::new(AtomicBool::new(false));
    let rt = runtime();
    let load = {
        let stop = stop.clone();
        rt.spawn(async move {
            let mut sent = 0u64;
            let mut errors = 0u64;
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let hooks = plane_webhook(SECRET);
                let offset = round * 1_000_000_000;
                round += 1;
                let (w, q, h) = tokio::join!(
                    load_async(
                        addr,
                        5.0,
                        4,
                        rate / 4.0,
                        Arc::new(move |n| hooks(offset + n))
                    ),
                    load_async(addr, 5.0, 1, 2.0, get("/queue")),
                    load_async(addr, 5.0, 1, 2.0, get("/health")),
                );
                sent += (w.lat.len() + q.lat.len() + h.lat.len()) as u64;
                errors += w.errors + q.errors + h.errors;
            }
            (sent, errors)
        })
    };

    let start = Instant::now();
    let mut samples: Vec<(u64, u64, u64)> = Vec::new();
    println!("| t s | RSS KiB | SQLite KiB | database bytes |");
    println!("|---:|---:|---:|---:|");
    while start.elapsed().as_secs() < secs {
        std::thread::sleep(Duration::from_secs(30).min(Duration::from_secs(secs)));
        let s = (
            start.elapsed().as_secs(),
            rss_kib(child.id()),
            db_bytes(dir.path()),
        );
        let sqlite = metric(addr, "orchestrator_sqlite_memory_bytes") / 1024;
        println!("| {} | {} | {} | {} |", s.0, s.1, sqlite, s.2);
        samples.push(s);
    }
    stop.store(true, Ordering::Relaxed);
    let (sent, errors) = rt.block_on(load).unwrap();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();

    let after_warmup = samples
        .iter()
        .find(|s| s.0 >= 60)
        .or(samples.first())
        .map_or(0, |s| s.1);
    let last = samples.last().map_or(0, |s| s.1);
    let half = samples.len() / 2;
    let db_first = samples[..half].iter().map(|s| s.2).max().unwrap_or(0);
    let db_last = samples[half..].iter().map(|s| s.2).max().unwrap_or(0);
    println!();
    println!("requests answered {sent}, errors {errors}");
    println!(
        "RSS: {after_warmup} KiB after the first minute, {last} KiB at the end: ratio {:.3}",
        last as f64 / after_warmup.max(1) as f64
    );
    println!(
        "database: largest {db_first} bytes in the first half, {db_last} in the second: ratio {:.3}",
        db_last as f64 / db_first.max(1) as f64
    );
}
