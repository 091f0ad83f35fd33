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

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use orchestrator::config::{EnvVars, Settings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// One answer on a keep-alive connection: read the head, then as many body
/// bytes as it says. `buf` carries what was read past the answer.
async fn read_answer(s: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<u16> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end])
                .unwrap_or("")
                .to_ascii_lowercase();
            let status = head
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let total = end + 4 + len;
            while buf.len() < total {
                let n = s.read(&mut chunk).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            buf.drain(..total);
            return Ok(status);
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

struct Figures {
    per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

fn load(addr: SocketAddr, path: &str, secs: f64, conns: usize) -> Figures {
    let rt = runtime();
    let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").into_bytes();
    rt.block_on(async move {
        let start = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let errors = Arc::new(AtomicU64::new(0));
        let mut handles = Vec::new();
        for _ in 0..conns {
            let (stop, errors, request) = (stop.clone(), errors.clone(), request.clone());
            handles.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(100_000);
                let mut s = TcpStream::connect(addr).await.unwrap();
                s.set_nodelay(true).unwrap();
                let mut buf = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let ok = s.write_all(&request).await.is_ok()
                        && matches!(read_answer(&mut s, &mut buf).await, Ok(200));
                    if !ok {
                        errors.fetch_add(1, Ordering::Relaxed);
                        s = TcpStream::connect(addr).await.unwrap();
                        buf.clear();
                        continue;
                    }
                    lat.push(t.elapsed());
                }
                lat
            }));
        }
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        stop.store(true, Ordering::Relaxed);
        let elapsed = start.elapsed().as_secs_f64();
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.await.unwrap());
        }
        all.sort();
        let n = all.len();
        let q = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
        Figures {
            per_s: n as f64 / elapsed,
            p50_ms: q(0.50).as_secs_f64() * 1e3,
            p99_ms: q(0.99).as_secs_f64() * 1e3,
            errors: errors.load(Ordering::Relaxed),
        }
    })
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let secs: f64 = args.first().and_then(|v| v.parse().ok()).unwrap_or(3.0);
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
    let d = |p: &str| dir.path().join(p).display().to_string();
    let settings = Settings::load(&EnvVars::from_pairs([
        (
            "ORCH_DATABASE_URL".to_string(),
            format!("sqlite://{}", d("o.db")),
        ),
        ("ORCH_BIND".to_string(), "127.0.0.1:0".to_string()),
        ("ORCH_WORKSPACE_ROOT".to_string(), d("ws")),
        ("ORCH_AGENT_SANDBOX".to_string(), "off".to_string()),
        ("ORCH_LOG_LEVEL".to_string(), "warn".to_string()),
        (
            "ORCH_WORKER_POLL_INTERVAL_MS".to_string(),
            "3600000".to_string(),
        ),
        ("ORCH_REAPER_ENABLED".to_string(), "false".to_string()),
        ("ORCH_RECONCILER_ENABLED".to_string(), "false".to_string()),
    ]))
    .expect("bench settings")
    .0;
    let daemon_rt = runtime();
    let (daemon, running) = daemon_rt.block_on(async {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let running = orchestrator::app::start(settings, l).await.unwrap();
        (running.addr, running)
    });

    println!("http edges: {secs} s per case, {conns} keep-alive connections");
    let h = load(hello, "/hello", secs, conns);
    let g = load(daemon, "/health", secs, conns);
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
    daemon_rt.block_on(async { running.stop().await.ok() });
}
