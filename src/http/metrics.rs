//! `GET /metrics`: OpenMetrics text through `prometheus-client`. The
//! families counted where things happen (`telemetry::metrics`: requests —
//! a middleware here counts them —, webhooks, stage transitions, lost CAS,
//! busy leases, agent tokens and cost, loop ticks), then figures read at
//! scrape time: the process from /proc, the accept loop, tasks by stage,
//! jobs by status, effects by state, and the status blocks' own gauges.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};
use crate::telemetry::metrics::{RequestLabels, families};

#[derive(Debug)]
pub struct Metrics {
    started: Instant,
    /// The accept loop's figures (F-30).
    pub conns: Arc<super::server::ConnStats>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            conns: Default::default(),
        }
    }
}

pub async fn track(req: Request, next: Next) -> Response {
    // Unmatched paths share one label so a scanner cannot grow the map.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    // Likewise methods: the standard ones by name, anything else as one.
    let method = match *req.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    };
    let resp = next.run(req).await;
    families()
        .requests
        .get_or_create(&RequestLabels {
            route,
            method,
            status: resp.status().as_u16(),
        })
        .inc();
    resp
}

pub async fn render(State(state): State<AppState>) -> Result<Response, ApiError> {
    let mut now = Registry::default();
    let own = crate::procfs::own_figures();
    let (rss, cpu, fds, threads) = (
        own.resident_bytes,
        own.cpu_seconds,
        own.open_fds,
        own.threads,
    );
    let gauge = |now: &mut Registry, name: &str, help: &str, v: Option<i64>| {
        if let Some(v) = v {
            let g: Gauge = Gauge::default();
            g.set(v);
            now.register(name, help, g);
        }
    };
    gauge(
        &mut now,
        "process_resident_memory_bytes",
        "Resident memory size in bytes",
        rss.map(|v| v as i64),
    );
    if let Some(cpu) = cpu {
        let c: Counter<f64, AtomicU64> = Counter::default();
        c.inc_by(cpu);
        now.register(
            "process_cpu_seconds",
            "User and system CPU time in seconds",
            c,
        );
    }
    gauge(
        &mut now,
        "process_open_fds",
        "Open file descriptors",
        fds.map(|v| v as i64),
    );
    gauge(
        &mut now,
        "process_threads",
        "OS threads",
        threads.map(|v| v as i64),
    );
    let sqlite = crate::db::sqlite_memory();
    gauge(
        &mut now,
        "orchestrator_sqlite_memory_bytes",
        "Bytes SQLite's allocator holds now (page caches, statements, schema)",
        Some(sqlite.used),
    );
    gauge(
        &mut now,
        "orchestrator_sqlite_memory_highwater_bytes",
        "Most bytes SQLite's allocator has held since start",
        Some(sqlite.highwater),
    );
    let up: Gauge<f64, AtomicU64> = Gauge::default();
    up.set(state.metrics.started.elapsed().as_secs_f64());
    now.register(
        "orchestrator_uptime_seconds",
        "Seconds since the daemon started",
        up,
    );
    let conns = &state.metrics.conns;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    gauge(
        &mut now,
        "orchestrator_http_connections_open",
        "HTTP connections open now",
        Some(load(&conns.open) as i64),
    );
    for (name, help, v) in [
        (
            "orchestrator_http_connections_accepted",
            "HTTP connections accepted",
            &conns.accepted,
        ),
        (
            "orchestrator_http_connections_refused",
            "HTTP connections refused with 503 because ORCH_HTTP_MAX_CONNECTIONS were open",
            &conns.refused,
        ),
        (
            "orchestrator_http_connections_errored",
            "HTTP connections closed on an error (header timeout, malformed request, reset)",
            &conns.errored,
        ),
    ] {
        let c: Counter = Counter::default();
        c.inc_by(load(v));
        now.register(name, help, c);
    }
    let by = |now: &mut Registry, name: &str, help: &str, label: &str, rows: Vec<(String, i64)>| {
        let f: Family<Vec<(String, String)>, Gauge> = Family::default();
        for (value, n) in rows {
            f.get_or_create(&vec![(label.to_string(), value)]).set(n);
        }
        now.register(name, help, f);
    };
    let reader = state.db.reader();
    let stages = crate::db::tasks::count_by_stage(reader)
        .await?
        .into_iter()
        .map(|(s, n)| (s.to_string(), n))
        .collect();
    by(
        &mut now,
        "orchestrator_tasks",
        "Tasks by stage",
        "stage",
        stages,
    );
    let jobs = crate::db::jobs::count_by_status(reader).await?;
    by(
        &mut now,
        "orchestrator_jobs",
        "Jobs by status",
        "status",
        jobs,
    );
    let effects = crate::db::effects::count_by_state(reader).await?;
    by(
        &mut now,
        "orchestrator_effects",
        "Irreversible effects by journal state",
        "state",
        effects,
    );
    let mut out = String::new();
    let encode = |out: &mut String, r: &Registry| {
        prometheus_client::encoding::text::encode_registry(out, r).map_err(ApiError::internal)
    };
    encode(&mut out, families().registry())?;
    encode(&mut out, &now)?;
    for block in state.blocks.iter() {
        out.push_str(&block.prometheus().await);
    }
    prometheus_client::encoding::text::encode_eof(&mut out).map_err(ApiError::internal)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response())
}
