//! SQLite through sqlx: one writer connection, a read pool, migrations.
//!
//! Every write transaction begins IMMEDIATE: a deferred transaction that
//! upgrades to a write meets SQLITE_BUSY without waiting, while IMMEDIATE
//! takes the write lock up front and honours `busy_timeout`.

pub mod alerts;
pub mod board;
pub mod deliveries;
pub mod deploys;
pub mod effects;
pub mod group_commit;
pub mod history;
pub mod jobs;
pub mod leases;
pub mod local_items;
pub mod merge_lease;
pub mod outbox;
pub mod retention;
pub mod runs;
pub mod tasks;
pub mod telegram;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How long a connection waits for another writer before SQLITE_BUSY.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot create the directory for database {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open database {path}: {source}")]
    Open { path: PathBuf, source: sqlx::Error },
    #[error("cannot apply migrations to {path}: {source}")]
    Migrate {
        path: PathBuf,
        source: sqlx::migrate::MigrateError,
    },
}

/// What SQLite's allocator holds now and at most since start, in bytes
/// (page caches, prepared statements, schema), for `/metrics`: it tells the
/// database's share of the daemon's resident memory from everything else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SqliteMemory {
    pub used: i64,
    pub highwater: i64,
}

pub fn sqlite_memory() -> SqliteMemory {
    // SAFETY: both read SQLite's global memory statistics under its own
    // mutex; they take no pointers and are callable from any thread at any
    // time, before or after a connection exists.
    unsafe {
        SqliteMemory {
            used: libsqlite3_sys::sqlite3_memory_used(),
            highwater: libsqlite3_sys::sqlite3_memory_highwater(0),
        }
    }
}

/// The two pools. Clone is cheap.
#[derive(Clone, Debug)]
pub struct Db {
    writer: SqlitePool,
    reader: SqlitePool,
    path: PathBuf,
}

impl Db {
    /// Open (creating when missing) and migrate.
    pub async fn open(path: &Path) -> Result<Db, DbError> {
        let db = Self::connect(path).await?;
        MIGRATOR
            .run(&db.writer)
            .await
            .map_err(|source| DbError::Migrate {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(db)
    }

    /// Open without migrating (for `migrate` itself and for tests of migrations).
    pub async fn connect(path: &Path) -> Result<Db, DbError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| DbError::Dir {
                path: path.to_path_buf(),
                source,
            })?;
        }
        let open_err = |source| DbError::Open {
            path: path.to_path_buf(),
            source,
        };
        let base = SqliteConnectOptions::from_str("sqlite://")
            .map_err(open_err)?
            .filename(path)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
            .synchronous(SqliteSynchronous::Full);
        // WAL is a property of the file: set it when the file is created
        // (and re-assert it on open, which is a no-op once set).
        let writer_opts = base
            .clone()
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(BUSY_TIMEOUT * 2)
            .connect_with(writer_opts)
            .await
            .map_err(open_err)?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(BUSY_TIMEOUT)
            .connect_with(base.pragma("query_only", "ON"))
            .await
            .map_err(open_err)?;
        Ok(Db {
            writer,
            reader,
            path: path.to_path_buf(),
        })
    }

    pub async fn migrate(&self) -> Result<(), DbError> {
        MIGRATOR
            .run(&self.writer)
            .await
            .map_err(|source| DbError::Migrate {
                path: self.path.clone(),
                source,
            })
    }

    /// A write transaction holding SQLite's write lock from its first statement.
    pub async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        self.writer.begin_with("BEGIN IMMEDIATE").await
    }

    /// The single writer connection, for one-statement writes (autocommit).
    pub fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    /// The read pool (`query_only`): `/queue`, dashboards, gate inputs.
    pub fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Does the database answer? Reads the file's header (`SELECT 1` would
    /// not touch the file at all).
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("PRAGMA schema_version")
            .execute(&self.reader)
            .await
            .map(|_| ())
    }

    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }
}

/// Milliseconds since the Unix epoch: the one clock the tables use.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// True for SQLITE_BUSY / SQLITE_LOCKED, which the contention tests count.
pub fn is_busy(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => matches!(d.code().as_deref(), Some("5" | "6" | "517" | "262")),
        _ => false,
    }
}
