//! Throughput of the stage engine's write paths next to a raw single-row
//! SQLite update on the same database file, in the same run.
//!
//! `cargo bench --bench stage_engine` (optionally `-- <seconds per case>`).
//! Prints one line per case and a markdown table for docs/benchmarks.md.
//!
//! - raw: `UPDATE bench_raw SET v = v + 1 WHERE id = 1`, autocommit, through
//!   the same single writer connection the engine uses (the baseline).
//! - cas: the engine's stage write at the SQL level: read (stage, version),
//!   `BEGIN IMMEDIATE`, `UPDATE tasks ... WHERE id=? AND stage=? AND
//!   stage_version=?` + a `stage_history` row, commit; actors contend on 8
//!   tasks bouncing between review and development.
//! - advance: `Engine::advance_stage` (gate, lease, journal of no-op
//!   effects, CAS) with actors contending on 8 tasks at a time, each driven
//!   created -> done.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use orchestrator::db::Db;
use orchestrator::db::tasks::{self, NewTask, TaskRow};
use orchestrator::domain::{GateInput, Stage};
use orchestrator::notify::RecordingNotifier;
use orchestrator::stage_engine::{Boot, Engine, GateInputs, Outcome};

struct AllPass;

#[async_trait]
impl GateInputs for AllPass {
    async fn load(&self, _: &TaskRow) -> GateInput {
        let mut a = BTreeMap::new();
        a.insert("01-brd.md".to_string(), "status: READY".to_string());
        a.insert(
            "06-adr/ADR-001-b.md".to_string(),
            "status: READY".to_string(),
        );
        a.insert("11-review.md".to_string(), "verdict: APPROVE".to_string());
        a.insert(
            "13-test-report.md".to_string(),
            "result: PASS\nstatus: PASS\ntests_run: 1".to_string(),
        );
        a.insert(
            "14-staging-report.md".to_string(),
            "staging_status: SUCCESS".to_string(),
        );
        GateInput {
            artifacts: a,
            approved: true,
            deploy_confirmed: true,
            code_changed: Some(true),
            refused: Default::default(),
            merge_gate: Default::default(),
        }
    }
}

struct Case {
    name: &'static str,
    actors: usize,
    ops: u64,
    secs: f64,
}

impl Case {
    fn per_s(&self) -> f64 {
        self.ops as f64 / self.secs
    }
}

async fn fresh_db(dir: &std::path::Path, name: &str) -> Db {
    Db::open(&dir.join(format!("{name}.db")))
        .await
        .expect("open")
}

async fn raw(dir: &std::path::Path, actors: usize, dur: Duration) -> Case {
    let db = fresh_db(dir, &format!("raw{actors}")).await;
    sqlx::raw_sql("CREATE TABLE bench_raw (id INTEGER PRIMARY KEY, v INTEGER NOT NULL); INSERT INTO bench_raw VALUES (1, 0);")
        .execute(db.writer())
        .await
        .unwrap();
    let ops = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut hs = Vec::new();
    for _ in 0..actors {
        let (db, ops) = (db.clone(), ops.clone());
        hs.push(tokio::spawn(async move {
            while start.elapsed() < dur {
                sqlx::query("UPDATE bench_raw SET v = v + 1 WHERE id = 1")
                    .execute(db.writer())
                    .await
                    .unwrap();
                ops.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for h in hs {
        h.await.unwrap();
    }
    Case {
        name: "raw update",
        actors,
        ops: ops.load(Ordering::Relaxed),
        secs: start.elapsed().as_secs_f64(),
    }
}

async fn cas(dir: &std::path::Path, actors: usize, dur: Duration) -> (Case, u64) {
    let db = fresh_db(dir, &format!("cas{actors}")).await;
    let mut ids = Vec::new();
    for i in 0..8 {
        let id = tasks::insert(
            db.writer(),
            &NewTask {
                work_item: format!("B-{i}"),
                project: "b".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        sqlx::query("UPDATE tasks SET stage = 'review' WHERE id = ?")
            .bind(id)
            .execute(db.writer())
            .await
            .unwrap();
        ids.push(id);
    }
    let (won, lost) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let start = Instant::now();
    let mut hs = Vec::new();
    for a in 0..actors {
        let (db, won, lost, ids) = (db.clone(), won.clone(), lost.clone(), ids.clone());
        hs.push(tokio::spawn(async move {
            let mut i = a;
            while start.elapsed() < dur {
                i = (i + 7) % ids.len();
                let id = ids[i];
                let t = tasks::get(db.reader(), id).await.unwrap().unwrap();
                let to = if t.stage == Stage::Review { Stage::Development } else { Stage::Review };
                let mut tx = db.begin_write().await.unwrap();
                let r = sqlx::query(
                    "UPDATE tasks SET stage = ?, stage_version = stage_version + 1 WHERE id = ? AND stage = ? AND stage_version = ?",
                )
                .bind(to)
                .bind(id)
                .bind(t.stage)
                .bind(t.stage_version)
                .execute(&mut *tx)
                .await
                .unwrap();
                if r.rows_affected() == 1 {
                    sqlx::query(
                        "INSERT INTO stage_history (task_id, from_stage, to_stage, from_version, to_version, actor, at)
                         VALUES (?, ?, ?, ?, ?, 'bench', 0)",
                    )
                    .bind(id)
                    .bind(t.stage)
                    .bind(to)
                    .bind(t.stage_version)
                    .bind(t.stage_version + 1)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                    tx.commit().await.unwrap();
                    won.fetch_add(1, Ordering::Relaxed);
                } else {
                    tx.rollback().await.unwrap();
                    lost.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for h in hs {
        h.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    (
        Case {
            name: "stage CAS",
            actors,
            ops: won.load(Ordering::Relaxed),
            secs,
        },
        lost.load(Ordering::Relaxed),
    )
}

async fn advance(dir: &std::path::Path, actors: usize, dur: Duration) -> (Case, u64) {
    let db = fresh_db(dir, &format!("adv{actors}")).await;
    let eng = Engine::builder(db.clone(), Boot::new())
        .inputs(Arc::new(AllPass))
        .notifier(Arc::new(RecordingNotifier::default()))
        .build();
    let (moved, busy) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let start = Instant::now();
    let mut batch = 0;
    while start.elapsed() < dur {
        batch += 1;
        let mut ids = Vec::new();
        for i in 0..8 {
            ids.push(
                tasks::insert(
                    db.writer(),
                    &NewTask {
                        work_item: format!("A{batch}-{i}"),
                        project: "b".into(),
                        ..Default::default()
                    },
                )
                .await
                .unwrap(),
            );
        }
        let mut hs = Vec::new();
        for a in 0..actors {
            let (eng, moved, busy, ids) = (eng.clone(), moved.clone(), busy.clone(), ids.clone());
            hs.push(tokio::spawn(async move {
                let mut live = ids;
                let mut i = a;
                while !live.is_empty() {
                    i = (i + 3) % live.len();
                    match eng.advance_stage(live[i], "bench").await.unwrap() {
                        Outcome::Advanced { .. } => {
                            moved.fetch_add(1, Ordering::Relaxed);
                        }
                        Outcome::Terminal { .. } => {
                            live.remove(i);
                            i = 0;
                        }
                        _ => {
                            busy.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }
        for h in hs {
            h.await.unwrap();
        }
    }
    let secs = start.elapsed().as_secs_f64();
    (
        Case {
            name: "advance_stage",
            actors,
            ops: moved.load(Ordering::Relaxed),
            secs,
        },
        busy.load(Ordering::Relaxed),
    )
}

fn main() {
    let secs: f64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2.0);
    let dur = Duration::from_secs_f64(secs);
    let dir =
        tempfile::tempdir_in(".").expect("temp dir next to the crate (a real disk, not tmpfs)");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    rt.block_on(async {
        let base = raw(dir.path(), 1, dur).await;
        println!("raw update       actors=1  {:>9.0} ops/s (baseline)", base.per_s());
        let b = base.per_s();
        rows.push((base, String::new()));
        for actors in [1, 4, 16] {
            let (c, lost) = cas(dir.path(), actors, dur).await;
            println!("stage CAS        actors={actors:<2} {:>9.0} writes/s  ratio {:.2}  lost races {lost}", c.per_s(), c.per_s() / b);
            rows.push((c, format!("{lost} lost races")));
            let (a, busy) = advance(dir.path(), actors, dur).await;
            println!("advance_stage    actors={actors:<2} {:>9.0} moves/s   ratio {:.2}  busy/lost {busy}", a.per_s(), a.per_s() / b);
            rows.push((a, format!("{busy} busy or lost")));
        }
        let b = rows[0].0.per_s();
        println!("\n| case | actors | per second | ratio to raw update | notes |\n|---|---|---|---|---|");
        for (c, note) in &rows {
            println!("| {} | {} | {:.0} | {:.3} | {} |", c.name, c.actors, c.per_s(), c.per_s() / b, note);
        }
    });
}
