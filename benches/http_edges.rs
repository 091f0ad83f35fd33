//! `GET /health` of the daemon against a minimal axum hello, in the same run
//! (issue 16, F-30).
//!
//! `cargo bench --bench http_edges` (optionally `-- <seconds per case>
//! <connections>`). Both servers run in this process on loopback, on a
//! 2-thread tokio runtime of their own; the load comes from another 2-thread
//! runtime: `connections` keep-alive connections, each sending one request
//! and reading its answer before the next (a minimal HTTP/1.1 client over
//! the raw socket, so the client costs the same for both).
//!
//! - hello: `axum::serve` with one route answering `"ok"` (the baseline);
//! - health: the daemon's whole stack (`app::start`: its accept loop with
//!   header timeout and connection cap, middleware, the health cache over a
//!   real SQLite file).
//!
//! Prints requests per second, p50/p99 latency, and the ratio to hello.

#[path = "support/load.rs"]
mod load;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use load::{Run, daemon_settings, get, load_with, plane_webhook, runtime};
use tokio::net::TcpListener;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let secs: f64 = args.first().and_then(|v| v.parse().ok()).unwrap_or(5.0);
    let conns: usize = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(32);

    // The baseline server.
    let hello_rt = runtime();
    let hello = hello_rt.block_on(async {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let app = axum::Router::new().route("/hello", axum::routing::get(|| async { "ok" }));
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        addr
    });

    // The daemon.
    let dir = tempfile::tempdir().unwrap();
    let settings = daemon_settings(dir.path(), &[("ORCH_PLANE_WEBHOOK_SECRET", WEBHOOK_SECRET)]);
    let daemon_rt = runtime();
    let (daemon, running) = daemon_rt.block_on(async {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let running = orchestrator::app::start(settings, l).await.unwrap();
        (running.addr, running)
    });

    println!("http edges: {secs} s per case in {ROUNDS} turns, {conns} keep-alive connections");
    // Each case runs in turns with the others, so a noisy moment of the
    // machine (this one shares its host) falls on every case alike.
    let raw_db = dir.path().join("raw.db");
    runtime().block_on(async {
        orchestrator::db::Db::open(&raw_db)
            .await
            .unwrap()
            .close()
            .await;
    });
    let slice = secs / ROUNDS as f64;
    let (mut h, mut g, mut raw, mut ingest) = (
        Run::default(),
        Run::default(),
        Run::default(),
        Run::default(),
    );
    for round in 0..ROUNDS {
        h.add(load_with(hello, slice, conns, 0.0, get("/hello")));
        g.add(load_with(daemon, slice, conns, 0.0, get("/health")));
        // Durable ingest at INGEST_CLIENTS: raw single transactions
        // against the daemon's whole webhook path (signature, parse, group
        // commit).
        raw.add(raw_ingest(&raw_db, slice, INGEST_CLIENTS, round));
        let offset = round as u64 * 1_000_000_000;
        let hooks = plane_webhook(WEBHOOK_SECRET);
        ingest.add(load_with(
            daemon,
            slice,
            INGEST_CLIENTS,
            0.0,
            Arc::new(move |n| hooks(offset + n)),
        ));
    }
    let (h, g, raw, ingest) = (h.figures(), g.figures(), raw.figures(), ingest.figures());
    let stored = daemon_rt.block_on(async {
        let db = orchestrator::db::Db::open(&dir.path().join("o.db"))
            .await
            .unwrap();
        orchestrator::db::deliveries::count(db.reader())
            .await
            .unwrap()
    });
    let ratio = g.per_s / h.per_s;
    for (name, f, r) in [("axum hello", &h, 1.0), ("daemon /health", &g, ratio)] {
        println!(
            "{name}: {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, errors {}, ratio {r:.2}",
            f.per_s, f.p50_ms, f.p99_ms, f.errors
        );
    }
    println!();
    println!("| case | req/s | p50 ms | p99 ms | ratio to hello |");
    println!("|---|---:|---:|---:|---:|");
    for (name, f, r) in [("axum hello", &h, 1.0), ("daemon /health", &g, ratio)] {
        println!(
            "| {name} | {:.0} | {:.3} | {:.3} | {r:.2} |",
            f.per_s, f.p50_ms, f.p99_ms
        );
    }
    let iratio = ingest.per_s / raw.per_s;
    println!();
    println!(
        "durable ingest, {INGEST_CLIENTS} clients (synchronous=FULL, WAL; {stored} deliveries stored by the daemon):"
    );
    println!("| case | per second | p50 ms | p99 ms | errors | ratio to raw |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, f, r) in [
        ("raw rusqlite, one transaction per delivery", &raw, 1.0),
        (
            "daemon POST /webhooks/plane (group commit)",
            &ingest,
            iratio,
        ),
    ] {
        println!(
            "| {name} | {:.0} | {:.3} | {:.3} | {} | {r:.2} |",
            f.per_s, f.p50_ms, f.p99_ms, f.errors
        );
    }
    let intake = runtime().block_on(async {
        let q: serde_json::Value = reqwest::get(format!("http://{daemon}/queue"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        q["intake"].clone()
    });
    println!("(the daemon's intake block: {intake})");
    daemon_rt.block_on(async { running.stop().await.ok() });
}

const INGEST_CLIENTS: usize = 16;
const ROUNDS: usize = 5;
const WEBHOOK_SECRET: &str = "bench-webhook-secret";

/// The baseline: `clients` threads, each storing deliveries through its own
/// rusqlite connection, one IMMEDIATE transaction per delivery with the
/// same dedup reads and insert as the daemon, WAL and synchronous=FULL, on
/// a database made by the daemon's migrations.
fn raw_ingest(path: &std::path::Path, secs: f64, clients: usize, round: usize) -> Run {
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|t| {
            let (stop, path) = (stop.clone(), path.to_path_buf());
            std::thread::spawn(move || {
                let mut c = rusqlite::Connection::open(&path).unwrap();
                c.busy_timeout(Duration::from_secs(5)).unwrap();
                c.pragma_update(None, "journal_mode", "WAL").unwrap();
                c.pragma_update(None, "synchronous", "FULL").unwrap();
                let body = plane_webhook(WEBHOOK_SECRET)(0);
                let mut lat = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let id = format!("raw-{round}-{t}-{i}");
                    let key = format!("issue=x|field=priority|new=high|at={round}.{t}.{i}");
                    let t0 = Instant::now();
                    let tx = c
                        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                        .unwrap();
                    let seen: Option<i64> = tx
                        .query_row(
                            "SELECT id FROM webhook_deliveries WHERE source = ? AND delivery_id = ?",
                            rusqlite::params!["plane", id],
                            |r| r.get(0),
                        )
                        .ok();
                    let dup: Option<i64> = tx
                        .query_row(
                            "SELECT id FROM webhook_deliveries WHERE source = ? AND content_key = ?",
                            rusqlite::params!["plane", key],
                            |r| r.get(0),
                        )
                        .ok();
                    assert!(seen.is_none() && dup.is_none());
                    tx.execute(
                        "INSERT INTO webhook_deliveries
                             (source, delivery_id, event, content_key, headers, body, received_at, processed_at, outcome)
                         VALUES ('plane', ?, 'issue', ?, '{}', ?, 1, 1, 'ignored')",
                        rusqlite::params![id, key, body],
                    )
                    .unwrap();
                    tx.commit().unwrap();
                    lat.push(t0.elapsed());
                }
                lat
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    let lat: Vec<Duration> = threads
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    Run {
        lat,
        elapsed,
        errors: 0,
    }
}
