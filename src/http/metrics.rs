//! `GET /metrics`: Prometheus text. HTTP requests by route and status (a
//! middleware counts them), process figures from /proc, tasks by stage.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};

#[derive(Debug)]
pub struct Metrics {
    started: Instant,
    /// (route, method, status) -> count
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    /// The accept loop's figures (F-30).
    pub conns: std::sync::Arc<super::server::ConnStats>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            requests: Mutex::default(),
            conns: Default::default(),
        }
    }
}

impl Metrics {
    pub fn record(&self, route: &str, method: &str, status: u16) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((route.to_string(), method.to_string(), status))
                .or_default() += 1;
        }
    }
}

pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    // Unmatched paths share one label so a scanner cannot grow the map.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    // Likewise methods: the standard ones by name, anything else as one.
    let method = match *req.method() {
        Method::GET
        | Method::POST
        | Method::PUT
        | Method::DELETE
        | Method::HEAD
        | Method::OPTIONS
        | Method::PATCH => req.method().as_str().to_string(),
        _ => "other".to_string(),
    };
    let resp = next.run(req).await;
    state
        .metrics
        .record(&route, &method, resp.status().as_u16());
    resp
}

pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// (resident bytes, cpu seconds, open fds, threads) from /proc/self.
fn process_figures() -> (Option<u64>, Option<f64>, Option<usize>, Option<u64>) {
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64;
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let rss = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|p| p * page);
    let stat = std::fs::read_to_string("/proc/self/stat").ok();
    let fields: Vec<String> = stat
        .as_deref()
        .and_then(|s| {
            s.rfind(')')
                .map(|i| s[i + 1..].split_whitespace().map(String::from).collect())
        })
        .unwrap_or_default();
    let cpu = match (fields.get(11), fields.get(12)) {
        (Some(u), Some(s)) => match (u.parse::<f64>(), s.parse::<f64>()) {
            (Ok(u), Ok(s)) => Some((u + s) / ticks),
            _ => None,
        },
        _ => None,
    };
    let threads = fields.get(17).and_then(|t| t.parse().ok());
    let fds = std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count());
    (rss, cpu, fds, threads)
}

pub async fn render(State(state): State<AppState>) -> Result<Response, ApiError> {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP orchestrator_http_requests_total HTTP requests by route, method and status."
    );
    let _ = writeln!(out, "# TYPE orchestrator_http_requests_total counter");
    if let Ok(m) = state.metrics.requests.lock() {
        for ((route, method, status), n) in m.iter() {
            let _ = writeln!(
                out,
                "orchestrator_http_requests_total{{route=\"{}\",method=\"{}\",status=\"{status}\"}} {n}",
                escape(route),
                escape(method)
            );
        }
    }
    let (rss, cpu, fds, threads) = process_figures();
    let mut gauge = |name: &str, help: &str, kind: &str, v: Option<String>| {
        if let Some(v) = v {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
    };
    gauge(
        "process_resident_memory_bytes",
        "Resident memory size in bytes.",
        "gauge",
        rss.map(|v| v.to_string()),
    );
    gauge(
        "process_cpu_seconds_total",
        "User and system CPU time in seconds.",
        "counter",
        cpu.map(|v| format!("{v:.2}")),
    );
    gauge(
        "process_open_fds",
        "Open file descriptors.",
        "gauge",
        fds.map(|v| v.to_string()),
    );
    gauge(
        "process_threads",
        "OS threads.",
        "gauge",
        threads.map(|v| v.to_string()),
    );
    gauge(
        "orchestrator_uptime_seconds",
        "Seconds since the daemon started.",
        "gauge",
        Some(format!(
            "{:.1}",
            state.metrics.started.elapsed().as_secs_f64()
        )),
    );
    let conns = &state.metrics.conns;
    let load = |a: &std::sync::atomic::AtomicU64| {
        Some(a.load(std::sync::atomic::Ordering::Relaxed).to_string())
    };
    gauge(
        "orchestrator_http_connections_open",
        "HTTP connections open now.",
        "gauge",
        load(&conns.open),
    );
    gauge(
        "orchestrator_http_connections_accepted_total",
        "HTTP connections accepted.",
        "counter",
        load(&conns.accepted),
    );
    gauge(
        "orchestrator_http_connections_refused_total",
        "HTTP connections refused with 503 because ORCH_HTTP_MAX_CONNECTIONS were open.",
        "counter",
        load(&conns.refused),
    );
    gauge(
        "orchestrator_http_connections_errored_total",
        "HTTP connections closed on an error (header timeout, malformed request, reset).",
        "counter",
        load(&conns.errored),
    );
    let stages = crate::db::tasks::count_by_stage(state.db.reader()).await?;
    let _ = writeln!(
        out,
        "# HELP orchestrator_tasks Tasks by stage.\n# TYPE orchestrator_tasks gauge"
    );
    for (stage, n) in stages {
        let _ = writeln!(out, "orchestrator_tasks{{stage=\"{stage}\"}} {n}");
    }
    let jobs = crate::db::jobs::count_by_status(state.db.reader()).await?;
    let _ = writeln!(
        out,
        "# HELP orchestrator_jobs Jobs by status.\n# TYPE orchestrator_jobs gauge"
    );
    for (status, n) in jobs {
        let _ = writeln!(
            out,
            "orchestrator_jobs{{status=\"{}\"}} {n}",
            escape(&status)
        );
    }
    for block in state.blocks.iter() {
        out.push_str(&block.prometheus().await);
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response())
}
