//! The transition lease (F-10): a durable row per task, taken on ENTRY to a
//! stage write and its effects. Liveness is the owner's pid + process start
//! time + boot id, never a heartbeat or a TTL: a 900 s merge re-test cannot
//! lose its lease to a clock (the reaper's hard ceiling is the bound).
//!
//! Inside one process every actor shares pid and boot id, so liveness there
//! is a registry of live holder tokens: a [`LeaseGuard`] removes its token
//! when dropped (also while unwinding from a panic), which makes its row
//! stale at once even before the row is deleted.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use tokio::sync::mpsc;

use crate::db::leases::{self, LeaseRow};
use crate::db::{Db, now_ms};

/// This daemon start: a fresh id, our pid and our start time.
#[derive(Debug)]
pub struct Boot {
    pub boot_id: String,
    pub pid: i64,
    pub start_time: i64,
    holders: Arc<Registry>,
}

#[derive(Debug, Default)]
struct Registry(Mutex<HashSet<String>>);

impl Registry {
    fn insert(&self, token: &str) {
        if let Ok(mut s) = self.0.lock() {
            s.insert(token.to_string());
        }
    }
    fn remove(&self, token: &str) -> bool {
        self.0.lock().map(|mut s| s.remove(token)).unwrap_or(false)
    }
    fn contains(&self, token: &str) -> bool {
        self.0.lock().map(|s| s.contains(token)).unwrap_or(false)
    }
}

/// Boots of this process by id, so a row written by an earlier boot object in
/// the same process (a restart simulated inside one test process) is judged
/// by that boot's registry, and is stale once that boot is gone.
fn boots() -> &'static Mutex<HashMap<String, Weak<Registry>>> {
    static BOOTS: OnceLock<Mutex<HashMap<String, Weak<Registry>>>> = OnceLock::new();
    BOOTS.get_or_init(Default::default)
}

impl Boot {
    pub fn new() -> Arc<Boot> {
        let pid = std::process::id() as i64;
        let boot = Boot {
            boot_id: uuid::Uuid::new_v4().to_string(),
            pid,
            start_time: process_start_time(pid).unwrap_or(0),
            holders: Arc::new(Registry::default()),
        };
        if let Ok(mut m) = boots().lock() {
            m.retain(|_, w| w.strong_count() > 0);
            m.insert(boot.boot_id.clone(), Arc::downgrade(&boot.holders));
        }
        Arc::new(boot)
    }

    /// Is the owner of `row` alive and still holding it?
    pub fn is_live(&self, row: &LeaseRow) -> bool {
        if row.owner_boot_id == self.boot_id {
            return self.holders.contains(&row.holder);
        }
        if row.owner_pid == self.pid && row.owner_start_time == self.start_time {
            // Another boot object of this very process.
            let reg = boots()
                .lock()
                .ok()
                .and_then(|m| m.get(&row.owner_boot_id).and_then(Weak::upgrade));
            return reg.is_some_and(|r| r.contains(&row.holder));
        }
        process_alive(row.owner_pid, row.owner_start_time)
    }

    /// Forget a live holder of this boot (operator force-release).
    pub(crate) fn forget_holder(&self, token: &str) -> bool {
        self.holders.remove(token)
    }
}

/// Field 22 of `/proc/<pid>/stat`: start time in clock ticks since boot.
/// Pids are reused; (pid, start time) is not.
pub fn process_start_time(pid: i64) -> Option<i64> {
    crate::procfs::start_time(pid)
}

fn process_alive(pid: i64, start_time: i64) -> bool {
    crate::procfs::alive_as(pid, start_time)
}

/// Held ownership of one task's transition. Release explicitly with
/// [`LeaseGuard::release`]; a guard that is dropped instead (an early return,
/// a panic) unregisters its token at once and has its row deleted by the
/// background releaser.
#[derive(Debug)]
pub struct LeaseGuard {
    pub task_id: i64,
    pub token: String,
    /// The task's lease generation this acquire set: the holder's fence.
    pub generation: i64,
    boot: Arc<Boot>,
    releaser: mpsc::UnboundedSender<(i64, String)>,
    released: bool,
}

impl LeaseGuard {
    pub fn fence(&self) -> leases::Fence {
        leases::Fence {
            task_id: self.task_id,
            generation: self.generation,
            enforce: true,
        }
    }

    pub async fn release(mut self, db: &Db) -> Result<(), sqlx::Error> {
        self.released = true;
        // Delete first, then unregister: in between, the row must not look
        // stale to another actor of this process (a spurious takeover alert).
        let deleted = leases::delete_if_holder(db.writer(), self.task_id, &self.token).await;
        self.boot.holders.remove(&self.token);
        deleted.map(|_| ())
    }
}

impl LeaseGuard {
    /// The row was deleted inside the caller's transaction (the CAS that
    /// ends the transition): only unregister the token.
    pub(crate) fn released_in_tx(mut self) {
        self.released = true;
        self.boot.holders.remove(&self.token);
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.boot.holders.remove(&self.token);
        if !self.released {
            let _ = self.releaser.send((self.task_id, self.token.clone()));
        }
    }
}

/// Deletes rows of guards that were dropped without `release`.
pub(crate) fn spawn_releaser(db: Db) -> mpsc::UnboundedSender<(i64, String)> {
    let (tx, mut rx) = mpsc::unbounded_channel::<(i64, String)>();
    tokio::spawn(async move {
        while let Some((task_id, token)) = rx.recv().await {
            if let Err(e) = leases::delete_if_holder(db.writer(), task_id, &token).await {
                tracing::warn!(task_id, error = %e, "could not delete a dropped lease row; it is stale and will be taken over");
            }
        }
    });
    tx
}

#[derive(Debug)]
pub enum Acquire {
    Acquired {
        guard: LeaseGuard,
        /// The stale row this acquire took over, for the alert.
        took_over: Option<LeaseRow>,
    },
    Busy(LeaseRow),
}

/// One IMMEDIATE transaction: insert, or take over a stale row; a live owner
/// means busy and nothing is written.
pub(crate) async fn acquire(
    db: &Db,
    boot: &Arc<Boot>,
    releaser: &mpsc::UnboundedSender<(i64, String)>,
    task_id: i64,
    actor: &str,
    transition: &str,
    // The simulation's `lease` defence off: a live owner is overridden.
    ignore_live: bool,
) -> Result<Acquire, sqlx::Error> {
    // Most busy answers need no write lock: a read sees the live owner.
    if let Some(row) = leases::get(db.reader(), task_id).await?
        && !ignore_live
        && boot.is_live(&row)
    {
        return Ok(Acquire::Busy(row));
    }
    let token = uuid::Uuid::new_v4().to_string();
    // Register before the row exists: from the commit on, it is live.
    boot.holders.insert(&token);
    let guard = LeaseGuard {
        task_id,
        token: token.clone(),
        generation: 0,
        boot: boot.clone(),
        releaser: releaser.clone(),
        // Not armed until the row is committed; dropping it before that
        // (an error below) only unregisters the token.
        released: true,
    };
    let row = LeaseRow {
        task_id,
        owner_pid: boot.pid,
        owner_start_time: boot.start_time,
        owner_boot_id: boot.boot_id.clone(),
        holder: token,
        actor: actor.to_string(),
        transition: transition.to_string(),
        acquired_at: now_ms(),
    };
    let mut tx = db.begin_write().await?;
    // Nobody holds the task (the common case): the insert is the claim.
    // Else the row there is judged under the write lock: a live owner means
    // busy (nothing written), a stale one is taken over.
    let existing = if leases::put_if_free(&mut *tx, &row).await? {
        None
    } else {
        let existing = leases::get(&mut *tx, task_id).await?;
        if let Some(held) = &existing
            && !ignore_live
            && boot.is_live(held)
        {
            return Ok(Acquire::Busy(held.clone()));
        }
        leases::put(&mut *tx, &row).await?;
        existing
    };
    // Every acquire fences off every earlier holder (invariant 10). With the
    // `lease` defence off (simulation only) there is no exclusion at
    // acquire at all: holders share the generation.
    let generation = if ignore_live {
        sqlx::query_scalar("SELECT lease_generation FROM tasks WHERE id = ?")
            .bind(task_id)
            .fetch_optional(&mut *tx)
            .await?
            .unwrap_or(0)
    } else {
        leases::bump_generation(&mut *tx, task_id).await?
    };
    tx.commit().await?;
    let mut guard = guard;
    guard.generation = generation;
    guard.released = false;
    Ok(Acquire::Acquired {
        guard,
        took_over: existing,
    })
}
