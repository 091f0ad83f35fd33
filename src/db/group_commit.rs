//! Group commit of webhook deliveries (issue 16, F-30): concurrent senders
//! share one write transaction, so one fsync makes a whole batch durable.
//!
//! One writer task owns the batching. A sender hands its row over and waits;
//! the writer takes every row already waiting (up to [`MAX_BATCH`]), stores
//! them in one statement (its own transaction) with the same dedup as
//! [`deliveries::insert`] (a copy later in the same batch meets the earlier
//! one), and only once it has committed answers each sender. No timer: while one
//! batch is being fsynced the next one gathers, so a lone sender pays one
//! commit and a crowd pays one commit per batch.
//!
//! If a batch fails, each of its rows is stored again on its own, so one bad
//! row fails only its own sender. A row whose batch did commit before the
//! failure was seen is found by the dedup check and answered as a duplicate:
//! never stored twice, never lost once answered.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::Db;
use super::deliveries::{self, Inserted, NewDelivery};

/// Rows per transaction at most: bounds how long one batch holds the write
/// lock (a few ms) while still amortising the fsync.
pub const MAX_BATCH: usize = 256;

/// An owned [`NewDelivery`], to hand to the writer task.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub source: &'static str,
    pub delivery_id: String,
    pub event: String,
    pub content_key: Option<String>,
    pub headers: String,
    pub body: Bytes,
    pub done_outcome: Option<String>,
}

impl Delivery {
    fn as_new(&self) -> NewDelivery<'_> {
        NewDelivery {
            source: self.source,
            delivery_id: &self.delivery_id,
            event: &self.event,
            content_key: self.content_key.as_deref(),
            headers: &self.headers,
            body: &self.body,
            done_outcome: self.done_outcome.as_deref(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("the delivery writer has stopped")]
    Stopped,
}

struct Job {
    row: Delivery,
    done: oneshot::Sender<Result<Inserted, sqlx::Error>>,
}

#[derive(Debug, Default)]
struct Counts {
    batches: AtomicU64,
    rows: AtomicU64,
    fallbacks: AtomicU64,
}

/// Batches and rows committed so far; `fallbacks`: batches that failed and
/// were stored row by row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub batches: u64,
    pub rows: u64,
    pub fallbacks: u64,
}

/// The sending side; cheap to clone. The writer task ends when the last
/// clone is dropped, after answering every row it was handed.
#[derive(Clone)]
pub struct DeliveryWriter {
    tx: mpsc::Sender<Job>,
    counts: Arc<Counts>,
}

impl DeliveryWriter {
    /// Start the writer task on the current runtime.
    pub fn start(db: Db) -> Self {
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        let counts = Arc::new(Counts::default());
        tokio::spawn(run(db, rx, counts.clone()));
        Self { tx, counts }
    }

    /// Store `row` durably (dedup by delivery id and content key); answers
    /// once the transaction holding it has committed.
    pub async fn insert(&self, row: Delivery) -> Result<Inserted, GroupError> {
        let (done, answer) = oneshot::channel();
        self.tx
            .send(Job { row, done })
            .await
            .map_err(|_| GroupError::Stopped)?;
        Ok(answer.await.map_err(|_| GroupError::Stopped)??)
    }

    pub fn stats(&self) -> Stats {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            batches: n(&self.counts.batches),
            rows: n(&self.counts.rows),
            fallbacks: n(&self.counts.fallbacks),
        }
    }
}

async fn run(db: Db, mut rx: mpsc::Receiver<Job>, counts: Arc<Counts>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        match store_batch(&db, &batch).await {
            Ok(results) => {
                counts.batches.fetch_add(1, Ordering::Relaxed);
                counts.rows.fetch_add(batch.len() as u64, Ordering::Relaxed);
                for (job, r) in batch.drain(..).zip(results) {
                    // A sender that went away (its client hung up) still
                    // has its row stored; nobody is left to tell.
                    let _ = job.done.send(Ok(r));
                }
            }
            Err(e) => {
                tracing::warn!(rows = batch.len(), error = %e, "a batch of deliveries failed; storing them one by one");
                counts.fallbacks.fetch_add(1, Ordering::Relaxed);
                for job in batch.drain(..) {
                    let r = deliveries::insert(&db, &job.row.as_new()).await;
                    if r.is_ok() {
                        counts.batches.fetch_add(1, Ordering::Relaxed);
                        counts.rows.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = job.done.send(r);
                }
            }
        }
    }
}

/// The whole batch in one autocommit statement — a multi-row `INSERT … ON
/// CONFLICT DO NOTHING RETURNING` is its own transaction — so a batch costs
/// one round trip to SQLite and one fsync. A row that is not returned met a
/// unique key: a row stored before, or one earlier in the same statement
/// (SQLite inserts `VALUES` in order). It is classified afterwards by the
/// same two reads as [`deliveries::insert_in`]; the row it met is
/// committed by then.
async fn store_batch(db: &Db, batch: &[Job]) -> Result<Vec<Inserted>, sqlx::Error> {
    let now = super::now_ms();
    let mut sql = String::from(
        "INSERT INTO webhook_deliveries
             (source, delivery_id, event, content_key, headers, body, received_at, processed_at, outcome)
         VALUES ",
    );
    for i in 0..batch.len() {
        sql.push_str(if i == 0 {
            "(?,?,?,?,?,?,?,?,?)"
        } else {
            ",(?,?,?,?,?,?,?,?,?)"
        });
    }
    sql.push_str(" ON CONFLICT DO NOTHING RETURNING id, source, delivery_id");
    let mut q = sqlx::query_as::<_, (i64, String, String)>(&sql);
    for job in batch {
        let r = &job.row;
        q = q
            .bind(r.source)
            .bind(&r.delivery_id)
            .bind(&r.event)
            .bind(&r.content_key)
            .bind(&r.headers)
            .bind(&r.body[..])
            .bind(now)
            .bind(r.done_outcome.as_ref().map(|_| now))
            .bind(&r.done_outcome);
    }
    let mut stored: std::collections::HashMap<(String, String), i64> = q
        .fetch_all(db.writer())
        .await?
        .into_iter()
        .map(|(id, source, delivery_id)| ((source, delivery_id), id))
        .collect();
    let mut out = Vec::with_capacity(batch.len());
    let mut conn = None;
    for job in batch {
        let key = (job.row.source.to_string(), job.row.delivery_id.clone());
        // The first row of a delivery id in the batch is the one stored.
        match stored.remove(&key) {
            Some(id) => out.push(Inserted::New(id)),
            None => {
                if conn.is_none() {
                    conn = Some(db.writer().acquire().await?);
                }
                let c = conn.as_mut().expect("just acquired");
                out.push(deliveries::insert_in(c, &job.row.as_new()).await?);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(source: &'static str, id: &str, key: Option<&str>) -> Delivery {
        Delivery {
            source,
            delivery_id: id.into(),
            event: "issue".into(),
            content_key: key.map(Into::into),
            headers: "{}".into(),
            body: Bytes::from_static(b"{}"),
            done_outcome: None,
        }
    }

    async fn db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("o.db")).await.unwrap();
        (dir, db)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_rows_share_commits_and_copies_in_one_batch_are_caught() {
        let (_dir, db) = db().await;
        let w = DeliveryWriter::start(db.clone());
        let mut calls = Vec::new();
        for i in 0..200 {
            let w = w.clone();
            // Every row twice: by delivery id for even i, by content key
            // (a Plane retry under a new id) for odd i.
            let (a, b) = if i % 2 == 0 {
                (
                    row("plane", &format!("d{i}"), None),
                    row("plane", &format!("d{i}"), None),
                )
            } else {
                let key = format!("k{i}");
                (
                    row("plane", &format!("d{i}"), Some(&key)),
                    row("plane", &format!("r{i}"), Some(&key)),
                )
            };
            calls.push(tokio::spawn(async move {
                let (x, y) = tokio::join!(w.insert(a), w.insert(b));
                (x.unwrap(), y.unwrap())
            }));
        }
        let mut new = 0;
        for c in calls {
            let (x, y) = c.await.unwrap();
            let kinds = [&x, &y].map(|r| matches!(r, Inserted::New(_)));
            assert_eq!(kinds.iter().filter(|k| **k).count(), 1, "{x:?} {y:?}");
            new += 1;
        }
        assert_eq!(new, 200);
        assert_eq!(deliveries::count(db.reader()).await.unwrap(), 200);
        let s = w.stats();
        assert_eq!(s.rows, 400);
        assert!(s.batches < 400, "no batching: {s:?}");
        assert_eq!(s.fallbacks, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bad_row_fails_alone_and_the_rest_of_its_batch_is_stored() {
        let (_dir, db) = db().await;
        let w = DeliveryWriter::start(db.clone());
        // Hold the write lock so every row below lands in one batch.
        let lock = db.begin_write().await.unwrap();
        let mut calls = Vec::new();
        for i in 0..10 {
            let src = if i == 4 { "bogus" } else { "gitea" };
            let w = w.clone();
            calls.push(tokio::spawn(async move {
                w.insert(row(src, &format!("g{i}"), None)).await
            }));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        lock.rollback().await.unwrap();
        let mut ok = 0;
        for (i, c) in calls.into_iter().enumerate() {
            match c.await.unwrap() {
                Ok(Inserted::New(_)) => ok += 1,
                Ok(other) => panic!("{i}: {other:?}"),
                Err(e) => assert_eq!(i, 4, "{e}"),
            }
        }
        assert_eq!(ok, 9);
        assert_eq!(deliveries::count(db.reader()).await.unwrap(), 9);
        assert!(w.stats().fallbacks >= 1, "{:?}", w.stats());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn copies_inside_one_batch_and_of_stored_rows_are_duplicates() {
        let (_dir, db) = db().await;
        let w = DeliveryWriter::start(db.clone());
        let Inserted::New(old) = w.insert(row("plane", "old", Some("k-old"))).await.unwrap() else {
            panic!("first row not new");
        };
        // Hold the write lock: the writer takes the first row below, then
        // the rest queue and go as one batch.
        let lock = db.begin_write().await.unwrap();
        let rows = [
            row("plane", "first", None),
            row("plane", "a", None),
            row("plane", "a", None),
            row("gitea", "a", None),
            row("plane", "c", Some("k")),
            row("plane", "d", Some("k")),
            row("plane", "old", None),
            row("plane", "e", Some("k-old")),
        ];
        let mut calls = Vec::new();
        for r in rows {
            let w = w.clone();
            calls.push(tokio::spawn(async move { w.insert(r).await.unwrap() }));
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        lock.rollback().await.unwrap();
        let mut got = Vec::new();
        for c in calls {
            got.push(c.await.unwrap());
        }
        let kind = |r: &Inserted| match r {
            Inserted::New(_) => "new",
            Inserted::DuplicateId(_) => "dup-id",
            Inserted::DuplicateContent(_) => "dup-content",
        };
        let kinds: Vec<&str> = got.iter().map(kind).collect();
        assert_eq!(
            kinds,
            [
                "new",
                "new",
                "dup-id",
                "new",
                "new",
                "dup-content",
                "dup-id",
                "dup-content"
            ]
        );
        assert_eq!(
            got[2],
            Inserted::DuplicateId(match got[1] {
                Inserted::New(id) => id,
                _ => unreachable!(),
            })
        );
        assert_eq!(got[6], Inserted::DuplicateId(old));
        assert_eq!(got[7], Inserted::DuplicateContent(old));
        assert_eq!(deliveries::count(db.reader()).await.unwrap(), 5);
        assert!(w.stats().batches <= 3, "{:?}", w.stats());
    }

    #[tokio::test]
    async fn a_stopped_writer_is_an_error_not_a_hang() {
        let (_dir, db) = db().await;
        let w = DeliveryWriter::start(db.clone());
        db.close().await;
        let r = w.insert(row("plane", "x", None)).await;
        assert!(r.is_err(), "{r:?}");
    }
}
