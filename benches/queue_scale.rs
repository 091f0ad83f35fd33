//! `GET /queue` at scale (issue 16, F-30).
//!
//! `cargo bench --bench queue_scale` (optionally `-- <tasks> <jobs per task>
//! <seconds per ingest case>`; default 100,000 tasks × 10 jobs = 1,000,000
//! jobs, 3 s). A database made by the daemon's migrations is filled
//! through rusqlite: 90% of the tasks done long ago, the rest live across
//! the stages; jobs mostly done, a few queued and running. Then:
//!
//! - **/queue against its own SQL**: 200 sequential `GET /queue` (the first
//!   page, the counts over every page, the job counts and the active jobs)
//!   against the same four queries run directly through sqlx on the same
//!   file, 200 times. The figure: the ratio of the p99s (aim ≤ 2).
//! - **Ingest under polling**: signed Plane webhooks from 16 clients alone,
//!   then with one client polling `/queue` 10 times a second. The figure:
//!   the polled rate over the unpolled one (aim ≥ 0.9).

#[path = "support/load.rs"]
mod load;

use std::time::{Duration, Instant};

use std::sync::Arc;

use load::{Figures, Run, daemon_settings, get, load_async, plane_webhook, runtime};
use orchestrator::db::{Db, jobs, tasks};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

const SECRET: &str = "bench-webhook-secret";
const STAGES: [&str; 7] = [
    "created",
    "analysis",
    "architecture",
    "development",
    "review",
    "testing",
    "deploy",
];

fn seed(path: &std::path::Path, n_tasks: i64, jobs_per_task: i64) -> Duration {
    let t0 = Instant::now();
    let mut c = rusqlite::Connection::open(path).unwrap();
    c.pragma_update(None, "journal_mode", "WAL").unwrap();
    let now = orchestrator::db::now_ms();
    let tx = c.transaction().unwrap();
    {
        let mut task = tx
            .prepare(
                "INSERT INTO tasks (id, work_item, project, title, stage, created_at, updated_at)
                 VALUES (?, ?, 'demo', ?, ?, ?, ?)",
            )
            .unwrap();
        let mut job = tx
            .prepare(
                "INSERT INTO jobs (task_id, stage, role, status, attempt, created_at, updated_at)
                 VALUES (?, 'development', 'developer', ?, ?, ?, ?)",
            )
            .unwrap();
        for id in 1..=n_tasks {
            let live = id % 10 == 0;
            let (stage, at) = if live {
                (STAGES[(id / 10) as usize % STAGES.len()], now)
            } else {
                ("done", 1_000)
            };
            task.execute(rusqlite::params![
                id,
                format!("DEMO-{id}"),
                format!("Task {id}"),
                stage,
                at,
                at
            ])
            .unwrap();
            for a in 1..=jobs_per_task {
                let status = if live && a == jobs_per_task && id % 1000 == 0 {
                    "running"
                } else if live && a == jobs_per_task && id % 200 == 0 {
                    "queued"
                } else {
                    "done"
                };
                job.execute(rusqlite::params![id, status, a, at, at])
                    .unwrap();
            }
        }
    }
    tx.commit().unwrap();
    c.execute_batch("ANALYZE").unwrap();
    t0.elapsed()
}

/// `n` sequential `GET /queue` on one keep-alive connection.
async fn queue_gets(addr: std::net::SocketAddr, n: usize) -> Figures {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let mut buf = Vec::new();
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    let mut errors = 0;
    for _ in 0..n {
        let t = Instant::now();
        s.write_all(b"GET /queue HTTP/1.1\r\nHost: bench\r\n\r\n")
            .await
            .unwrap();
        match load::read_answer(&mut s, &mut buf).await {
            Ok(200) => lat.push(t.elapsed()),
            _ => errors += 1,
        }
    }
    Figures::of(lat, start.elapsed().as_secs_f64(), errors)
}

/// The same four queries `/queue` runs, directly through sqlx.
async fn direct_sql(db: &Db, n: usize) -> Figures {
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        let r = db.reader();
        let page = tasks::queue_page(r, 24 * 3600 * 1000, 0, 201)
            .await
            .unwrap();
        let counts = tasks::queue_counts(r, 24 * 3600 * 1000).await.unwrap();
        let by_status = jobs::count_by_status(r).await.unwrap();
        let active = jobs::active(r).await.unwrap();
        std::hint::black_box((page, counts, by_status, active));
        lat.push(t.elapsed());
    }
    Figures::of(lat, start.elapsed().as_secs_f64(), 0)
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let n_tasks: i64 = args.first().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let per_task: i64 = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(10);
    let secs: f64 = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(5.0);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.db");
    runtime().block_on(async { Db::open(&path).await.unwrap().close().await });
    let took = seed(&path, n_tasks, per_task);
    println!(
        "queue at scale: {n_tasks} tasks, {} jobs (seeded in {:.1} s)",
        n_tasks * per_task,
        took.as_secs_f64()
    );

    let settings = daemon_settings(dir.path(), &[("ORCH_PLANE_WEBHOOK_SECRET", SECRET)]);
    let daemon_rt = runtime();
    let running = daemon_rt.block_on(async {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        orchestrator::app::start(settings, l).await.unwrap()
    });
    let addr = running.addr;

    let client = runtime();
    let (direct, served) = client.block_on(async {
        let db = Db::open(&path).await.unwrap();
        // Warm both paths once (page cache, statement caches).
        direct_sql(&db, 5).await;
        queue_gets(addr, 5).await;
        // Where the time of one /queue goes, query by query.
        let r = db.reader();
        let day = 24 * 3600 * 1000;
        let mut each = [Duration::ZERO; 4];
        for _ in 0..20 {
            let t = Instant::now();
            std::hint::black_box(tasks::queue_page(r, day, 0, 201).await.unwrap());
            each[0] += t.elapsed();
            let t = Instant::now();
            std::hint::black_box(tasks::queue_counts(r, day).await.unwrap());
            each[1] += t.elapsed();
            let t = Instant::now();
            std::hint::black_box(jobs::count_by_status(r).await.unwrap());
            each[2] += t.elapsed();
            let t = Instant::now();
            std::hint::black_box(jobs::active(r).await.unwrap());
            each[3] += t.elapsed();
        }
        let ms = |d: Duration| d.as_secs_f64() * 1e3 / 20.0;
        println!(
            "per query (mean of 20): page {:.2} ms, counts by stage {:.2} ms, jobs by status {:.2} ms, active jobs {:.2} ms",
            ms(each[0]),
            ms(each[1]),
            ms(each[2]),
            ms(each[3])
        );
        let direct = direct_sql(&db, 200).await;
        let served = queue_gets(addr, 200).await;
        db.close().await;
        (direct, served)
    });
    // In turns, so a noisy moment of the machine falls on both alike.
    let (alone, polled, poll) = client.block_on(async {
        let (mut alone, mut polled, mut poll) = (Run::default(), Run::default(), Run::default());
        let slice = secs / 5.0;
        for round in 0..5u64 {
            let hooks = plane_webhook(SECRET);
            let offset = round * 2_000_000_000;
            alone.add(load_async(addr, slice, 16, 0.0, Arc::new(move |n| hooks(offset + n))).await);
            let hooks = plane_webhook(SECRET);
            let offset = offset + 1_000_000_000;
            let (p, q) = tokio::join!(
                load_async(addr, slice, 16, 0.0, Arc::new(move |n| hooks(offset + n))),
                load_async(addr, slice, 1, 10.0, get("/queue")),
            );
            polled.add(p);
            poll.add(q);
        }
        (alone.figures(), polled.figures(), poll.figures())
    });

    println!();
    println!("| case | p50 ms | p99 ms | errors | ratio of p99 to direct SQL |");
    println!("|---|---:|---:|---:|---:|");
    for (name, f) in [
        ("the four queries through sqlx", &direct),
        ("GET /queue", &served),
    ] {
        println!(
            "| {name} | {:.2} | {:.2} | {} | {:.2} |",
            f.p50_ms,
            f.p99_ms,
            f.errors,
            f.p99_ms / direct.p99_ms
        );
    }
    println!();
    println!("| ingest, 16 clients | per second | p99 ms | errors | ratio to unpolled |");
    println!("|---|---:|---:|---:|---:|");
    for (name, f) in [
        ("alone", &alone),
        ("while /queue is polled at 10/s", &polled),
    ] {
        println!(
            "| {name} | {:.0} | {:.2} | {} | {:.2} |",
            f.per_s,
            f.p99_ms,
            f.errors,
            f.per_s / alone.per_s
        );
    }
    println!(
        "(/queue while polled: {:.1}/s, p99 {:.2} ms, errors {})",
        poll.per_s, poll.p99_ms, poll.errors
    );
    daemon_rt.block_on(async { running.stop().await.ok() });
}
