//! The load side shared by the benches: keep-alive connections over a raw
//! HTTP/1.1 client (so the client costs the same for every server), each
//! sending one request and reading its answer before the next.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// One answer on a keep-alive connection: read the head, then as many body
/// bytes as it says. `buf` carries what was read past the answer.
pub async fn read_answer(s: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<u16> {
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

pub struct Figures {
    pub per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
}

impl Figures {
    /// From the latencies of a run that lasted `elapsed` seconds.
    pub fn of(mut lat: Vec<Duration>, elapsed: f64, errors: u64) -> Figures {
        lat.sort();
        let q = |p: f64| {
            lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        Figures {
            per_s: lat.len() as f64 / elapsed,
            p50_ms: q(0.50).as_secs_f64() * 1e3,
            p99_ms: q(0.99).as_secs_f64() * 1e3,
            errors,
        }
    }
}

/// The latencies of a run and how long it lasted; runs of one case taken
/// in turns with the other cases add up (so a noisy moment of the machine
/// falls on every case alike).
#[derive(Default)]
pub struct Run {
    pub lat: Vec<Duration>,
    pub elapsed: f64,
    pub errors: u64,
}

impl Run {
    pub fn add(&mut self, other: Run) {
        self.lat.extend(other.lat);
        self.elapsed += other.elapsed;
        self.errors += other.errors;
    }

    pub fn figures(self) -> Figures {
        Figures::of(self.lat, self.elapsed, self.errors)
    }
}

/// Request `n` of the run, as bytes on the wire.
pub type MakeRequest = Arc<dyn Fn(u64) -> Vec<u8> + Send + Sync>;

pub fn get(path: &str) -> MakeRequest {
    let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").into_bytes();
    Arc::new(move |_| request.clone())
}

/// `conns` connections for `secs` seconds, each request made by `make`
/// (numbered across connections); a request counts when answered 200, at
/// most `per_conn_rate` a second per connection (0: as fast as it goes).
pub fn load_with(
    addr: SocketAddr,
    secs: f64,
    conns: usize,
    per_conn_rate: f64,
    make: MakeRequest,
) -> Run {
    runtime().block_on(load_async(addr, secs, conns, per_conn_rate, make))
}

pub async fn load_async(
    addr: SocketAddr,
    secs: f64,
    conns: usize,
    per_conn_rate: f64,
    make: MakeRequest,
) -> Run {
    let counter = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for _ in 0..conns {
        let (stop, errors, make, counter) =
            (stop.clone(), errors.clone(), make.clone(), counter.clone());
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(100_000);
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.set_nodelay(true).unwrap();
            let mut buf = Vec::new();
            let gap = (per_conn_rate > 0.0).then(|| Duration::from_secs_f64(1.0 / per_conn_rate));
            while !stop.load(Ordering::Relaxed) {
                let request = make(counter.fetch_add(1, Ordering::Relaxed));
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
                if let Some(gap) = gap {
                    tokio::time::sleep(gap.saturating_sub(t.elapsed())).await;
                }
            }
            lat
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    let mut lat = Vec::new();
    for h in handles {
        lat.extend(h.await.unwrap());
    }
    Run {
        lat,
        elapsed,
        errors: errors.load(Ordering::Relaxed),
    }
}

/// A signed Plane `issue` update (a priority change: stored as settled, so
/// a figure is the durable ingest, not the worker), unique per `n`.
pub fn plane_webhook(secret: &'static str) -> MakeRequest {
    Arc::new(move |n| {
        let body = format!(
            r#"{{"event":"issue","action":"updated","webhook_id":"6d1f5c1e-2b7a-4c1e-9a51-0b9a3c2f7e10","workspace_id":"0f3b6c0a-5d4e-4b8f-8f62-2a3c1d9e4b71","data":{{"id":"9b2e4d6a-7c1f-4e3b-a5d8-1f0c2b3a4e56","name":"Bench item","sequence_id":90,"project":"c1d2e3f4-a5b6-4c7d-8e9f-0a1b2c3d4e5f","priority":"high","updated_at":"2026-11-20T09:15:02.{n:09}Z"}},"activity":{{"field":"priority","old_value":"low","new_value":"high","actor":{{"id":"77c1e0d2-3b4a-4f5e-8d6c-9b0a1f2e3d4c","display_name":"slava","is_bot":false}}}}}}"#
        );
        let sig = orchestrator::intake::sign(secret.as_bytes(), body.as_bytes());
        let mut req = format!(
            "POST /webhooks/plane HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nX-Plane-Event: issue\r\nX-Plane-Delivery: bench-{n}\r\nX-Plane-Signature: {sig}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body.as_bytes());
        req
    })
}

/// Settings of a daemon for a bench: its database in `dir`, loops that
/// would act (worker, reaper, reconciler) idle, logs at warn.
pub fn daemon_settings(
    dir: &std::path::Path,
    extra: &[(&str, &str)],
) -> orchestrator::config::Settings {
    let d = |p: &str| dir.join(p).display().to_string();
    let mut pairs: Vec<(String, String)> = [
        ("ORCH_DATABASE_URL", format!("sqlite://{}", d("o.db"))),
        ("ORCH_BIND", "127.0.0.1:0".into()),
        ("ORCH_WORKSPACE_ROOT", d("ws")),
        ("ORCH_AGENT_SANDBOX", "off".into()),
        ("ORCH_LOG_LEVEL", "warn".into()),
        ("ORCH_WORKER_POLL_INTERVAL_MS", "3600000".into()),
        ("ORCH_REAPER_ENABLED", "false".into()),
        ("ORCH_RECONCILER_ENABLED", "false".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    pairs.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    orchestrator::config::Settings::load(&orchestrator::config::EnvVars::from_pairs(pairs))
        .expect("bench settings")
        .0
}
