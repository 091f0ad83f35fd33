//! STOP (F-25): cancel a task from any stage and clean up after it.
//!
//! `Pipeline::stop` is what a person's STOP status does:
//! - **Critical window** (F-17, seed ORCH-090 D7): the task holds its
//!   project's merge lease AND one of its jobs is running (the merge gate's
//!   re-test, a deploy). Killing it could leave a half-done merge or deploy,
//!   so the request is only recorded; the stage engine applies it when that
//!   step next calls it, the reconciler's sweep when the step ended without
//!   calling it. An effect in flight is the other critical window: it holds
//!   the transition lease, and the engine defers to it (`CancelDeferred`).
//!   Idle parking on deploy (lease held, nothing running) is NOT critical.
//! - Otherwise the engine cancels now: lease, `delete_branch` through the
//!   journal, CAS to `cancelled`, natural keys tombstoned.
//!
//! Whenever a task ends cancelled, by whichever actor, the cascade runs:
//! jobs cancelled (terminal, never requeued), every agent group SIGTERMed
//! (then SIGKILLed after the grace), worktree removed, merge lease released,
//! tracker status Cancelled. It is idempotent and triggered from every path:
//! `stop` itself, `Pipeline::after_move` (a deferred cancel applied on another
//! actor's step) and the reconciler's sweep (whatever a crash left behind).

use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};

use super::Pipeline;
use super::status::describe;
use crate::db::tasks::{self, TERMINAL_SQL, TaskRow};
use crate::db::{jobs, leases, merge_lease, now_ms, runs};
use crate::domain::Stage;
use crate::notify::Alert;
use crate::proc_group::{self, GroupKill};
use crate::stage_engine::{EngineError, Outcome};
use crate::status::StatusBlock;

/// The reason recorded on every job a STOP cancels.
const JOB_REASON: &str = "cancelled by STOP (F-25)";
/// Tasks one sweep looks at per kind, so a backlog cannot stall a tick.
const SWEEP_LIMIT: i64 = 50;

/// The `stop` block of `/queue`.
#[derive(Debug, Default)]
pub struct StopStats {
    /// STOPs received for live tasks (repeats included).
    pub requested: AtomicU64,
    /// STOPs that met a critical window or a busy transition lease.
    pub deferred: AtomicU64,
    /// Cancels that reached `cancelled` (at once or after a deferral).
    pub applied: AtomicU64,
    /// Cascades run (applied cancels and sweeps of leftovers).
    pub cascades: AtomicU64,
    /// Leftovers of cancelled tasks the reconciler's sweep cleaned.
    pub swept: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl StopStats {
    fn error(&self, e: String) {
        tracing::warn!(error = %e, "STOP cascade step failed");
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(e);
        }
    }
}

#[async_trait]
impl StatusBlock for StopStats {
    fn name(&self) -> &'static str {
        "stop"
    }
    async fn snapshot(&self) -> Value {
        let last = self.last_error.lock().ok().and_then(|l| l.clone());
        json!({
            "requested": self.requested.load(Ordering::Relaxed),
            "deferred": self.deferred.load(Ordering::Relaxed),
            "applied": self.applied.load(Ordering::Relaxed),
            "cascades": self.cascades.load(Ordering::Relaxed),
            "swept": self.swept.load(Ordering::Relaxed),
            "last_error": last,
        })
    }
}

/// What one cascade did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cascade {
    /// Queued or running jobs moved to `cancelled`.
    pub jobs_cancelled: usize,
    /// Process groups that were alive and were stopped.
    pub groups_stopped: usize,
    pub worktree_removed: bool,
    pub merge_lease_released: bool,
}

/// What a STOP did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stopped {
    /// Cancelled now; the cascade ran.
    Cancelled {
        from: Stage,
        cascade: Cascade,
    },
    /// Recorded; applied when the step that holds the task ends.
    Deferred {
        why: String,
    },
    /// The cancel transition's effect failed: the task is held with the
    /// reason and its agents were stopped; the reconciler retries the cancel.
    Failed {
        error: String,
    },
    /// Already done or cancelled: nothing to do.
    Terminal {
        stage: Stage,
    },
    NotFound,
}

impl fmt::Display for Stopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stopped::Cancelled { from, cascade: c } => write!(
                f,
                "{from} -> cancelled; {} job(s) cancelled, {} agent group(s) stopped, worktree {}",
                c.jobs_cancelled,
                c.groups_stopped,
                if c.worktree_removed {
                    "removed"
                } else {
                    "absent"
                }
            ),
            Stopped::Deferred { why } => write!(f, "deferred: {why}"),
            Stopped::Failed { error } => write!(f, "cancel failed, task held: {error}"),
            Stopped::Terminal { stage } => write!(f, "task is already {stage}"),
            Stopped::NotFound => write!(f, "task not found"),
        }
    }
}

impl Pipeline {
    /// STOP (F-25). Idempotent: a repeated STOP changes nothing more and
    /// notifies nobody (the engine records the request once).
    pub async fn stop(&self, task_id: i64, by: &str, reason: &str) -> Result<Stopped, EngineError> {
        let Some(task) = tasks::get(self.db.reader(), task_id).await? else {
            return Ok(Stopped::NotFound);
        };
        if task.stage.is_terminal() {
            return Ok(Stopped::Terminal { stage: task.stage });
        }
        self.stops.requested.fetch_add(1, Ordering::Relaxed);
        if let Some(why) = self.critical_window(&task).await? {
            // Only record it: the engine's cancel would take the transition
            // lease (free while a job runs) and cancel under the running step.
            let first = tasks::request_cancel(self.db.writer(), task_id, by, reason).await?;
            self.stops.deferred.fetch_add(1, Ordering::Relaxed);
            let stopped = Stopped::Deferred { why };
            tracing::info!(work_item = %task.work_item, first, %stopped, "STOP");
            if first {
                self.notify_stop(&task, &stopped).await;
            }
            return Ok(stopped);
        }
        let (out, first) = self.engine.cancel(task_id, by, reason).await?;
        let stopped = match self.cascade_if_cancelled(task_id, &out).await? {
            Some(cascade) => Stopped::Cancelled {
                from: match out {
                    Outcome::Cancelled { from, .. } => from,
                    _ => task.stage,
                },
                cascade,
            },
            None => match tasks::get(self.db.reader(), task_id).await? {
                None => Stopped::NotFound,
                Some(t) if t.stage.is_terminal() => Stopped::Terminal { stage: t.stage },
                Some(t) => match &out {
                    Outcome::EffectFailed { error, .. } => {
                        // Nothing irreversible is in flight (we held the lease
                        // and the window is not critical): the person asked the
                        // work to stop, so it stops now; the stage follows when
                        // the reconciler's retry of the cancel succeeds. The
                        // engine already alerted `effect_failed`; the generic
                        // held-task comment would talk about a deploy retry.
                        self.stop_agents(&t, &mut Cascade::default()).await?;
                        Stopped::Failed {
                            error: error.clone(),
                        }
                    }
                    other => {
                        self.stops.deferred.fetch_add(1, Ordering::Relaxed);
                        Stopped::Deferred {
                            why: self.deferred_why(task_id, other).await?,
                        }
                    }
                },
            },
        };
        tracing::info!(work_item = %task.work_item, first, %stopped, "STOP");
        if first {
            self.notify_stop(&task, &stopped).await;
        }
        Ok(stopped)
    }

    /// The critical window of ORCH-090 D7: the task holds its project's merge
    /// lease while one of its jobs runs. `Some(why)` when it is open.
    pub async fn critical_window(&self, task: &TaskRow) -> Result<Option<String>, EngineError> {
        if merge_lease::holder(self.db.reader(), &task.project).await? != Some(task.id) {
            return Ok(None);
        }
        let running = jobs::for_task(self.db.reader(), task.id)
            .await?
            .into_iter()
            .find(|j| j.status == "running");
        Ok(running.map(|j| {
            format!(
                "{} holds the {} merge lease while its {} job {} runs; the cancel is applied when that step ends",
                task.work_item, task.project, j.role, j.id
            )
        }))
    }

    async fn deferred_why(&self, task_id: i64, out: &Outcome) -> Result<String, EngineError> {
        Ok(match leases::get(self.db.reader(), task_id).await? {
            Some(l) => format!(
                "{} holds the task ({}); the cancel is applied when that step ends",
                l.actor, l.transition
            ),
            None => describe(out),
        })
    }

    /// Run the cascade when the task is cancelled, whatever `out` says: an
    /// engine call that held the lease applies a cancel requested meanwhile
    /// and still returns the outcome of its own move. Outcomes of calls that
    /// did not hold the lease (busy, already terminal) leave it to the actor
    /// that did. `Some` when the cascade ran.
    pub async fn cascade_if_cancelled(
        &self,
        task_id: i64,
        out: &Outcome,
    ) -> Result<Option<Cascade>, EngineError> {
        if matches!(
            out,
            Outcome::LeaseBusy { .. }
                | Outcome::CancelDeferred
                | Outcome::Terminal { .. }
                | Outcome::NotFound
        ) {
            return Ok(None);
        }
        let Some(task) = tasks::get(self.db.reader(), task_id).await? else {
            return Ok(None);
        };
        if task.stage != Stage::Cancelled {
            return Ok(None);
        }
        self.stops.applied.fetch_add(1, Ordering::Relaxed);
        Ok(Some(self.cancel_cascade(&task, true).await?))
    }

    /// Everything that follows a cancel. Idempotent; a step that fails is
    /// logged and left to the reconciler's sweep, the others still run.
    pub async fn cancel_cascade(
        &self,
        task: &TaskRow,
        show_status: bool,
    ) -> Result<Cascade, EngineError> {
        let mut c = Cascade::default();
        // Jobs first, then signals: a monitor that sees its agent die must
        // find the job cancelled, so its claim fails and nothing is requeued.
        self.stop_agents(task, &mut c).await?;
        c.worktree_removed = self.remove_worktree(task).await?;
        c.merge_lease_released =
            merge_lease::release(self.db.writer(), &task.project, task.id).await?;
        // The sweep shows the status only when it cleaned something: a
        // leftover it cannot clean must not write to the tracker every tick.
        if show_status || c != Cascade::default() {
            self.show_stage(task, "cancel").await;
        }
        self.stops.cascades.fetch_add(1, Ordering::Relaxed);
        tracing::info!(work_item = %task.work_item, ?c, "STOP cascade");
        Ok(c)
    }

    /// Cancel every queued or running job of the task, then stop every agent
    /// group that may still run: the jobs running just now and any cancelled
    /// job whose run never recorded an exit (a crash between the two steps).
    async fn stop_agents(&self, task: &TaskRow, c: &mut Cascade) -> Result<(), EngineError> {
        let before = jobs::for_task(self.db.reader(), task.id).await?;
        c.jobs_cancelled = before
            .iter()
            .filter(|j| matches!(j.status.as_str(), "queued" | "running"))
            .count();
        let running = jobs::cancel_all_for_task(&self.db, task.id, JOB_REASON).await?;
        let grace = Duration::from_secs(self.settings.agent_kill_grace_s);
        for j in jobs::for_task(self.db.reader(), task.id).await? {
            let Some(group) = j.group().filter(|_| j.status == "cancelled") else {
                continue;
            };
            let pgid = group.pgid;
            let fresh = running.iter().any(|r| r.id == j.id);
            let run = runs::latest_for_job(self.db.reader(), j.id).await?;
            let open_run = run.as_ref().filter(|r| r.exit_code.is_none());
            if !fresh && open_run.is_none() {
                continue;
            }
            // Only the group we started: after a restart the id may be reused.
            let kill = group.kill(grace).await;
            tracing::info!(work_item = %task.work_item, job = j.id, pgid, ?kill, "agent group stopped");
            let code = match kill {
                GroupKill::Terminated => 128 + 15,
                GroupKill::Killed => 128 + 9,
                // Gone by itself: a live monitor records the real exit; for a
                // crash leftover nobody will, and an open run would keep this
                // (by then reusable) pgid under watch forever.
                GroupKill::AlreadyGone if !fresh => proc_group::EXIT_UNKNOWN as i64,
                // The id names someone else's group now: ours is gone.
                GroupKill::NotOurs => proc_group::EXIT_UNKNOWN as i64,
                GroupKill::AlreadyGone | GroupKill::Refused => continue,
            };
            if matches!(kill, GroupKill::Terminated | GroupKill::Killed) {
                c.groups_stopped += 1;
            }
            // Only if nothing recorded one: a live monitor's real code wins.
            if let Some(r) = open_run {
                runs::record_exit(self.db.writer(), r.id, code, now_ms()).await?;
            }
        }
        Ok(())
    }

    /// Remove the task's worktree unless a fresh task of the same work item
    /// (To Analyse after the STOP) owns that path now. True when a directory
    /// was there and is gone.
    async fn remove_worktree(&self, task: &TaskRow) -> Result<bool, EngineError> {
        if let Some(live) = tasks::by_work_item(self.db.reader(), &task.work_item).await?
            && live.id != task.id
        {
            return Ok(false);
        }
        let dir = self.workspace.worktree_dir(&task.work_item);
        if !dir.exists() {
            return Ok(false);
        }
        let removed = match self.settings.project(&task.project) {
            Some(p) => self
                .workspace
                .remove(p, &task.work_item)
                .await
                .map_err(|e| e.to_string()),
            // The project left the configuration: no clone to tell; the
            // directory goes, git's stale record is pruned by the next prepare.
            None => tokio::fs::remove_dir_all(&dir)
                .await
                .map_err(|e| e.to_string()),
        };
        if let Err(e) = removed {
            self.stops.error(format!(
                "{}: worktree {} not removed: {e}",
                task.work_item,
                dir.display()
            ));
        }
        Ok(!dir.exists())
    }

    /// The one notification and the one tracker comment of a STOP.
    async fn notify_stop(&self, task: &TaskRow, stopped: &Stopped) {
        let (message, html) = match stopped {
            Stopped::Deferred { why } => (
                format!("{}: STOP received during a critical step: {why}", task.work_item),
                format!(
                    "<p>⏹ STOP received. A step that must not be interrupted is running ({}); the task is cancelled as soon as it ends.</p>",
                    html_escape(why)
                ),
            ),
            Stopped::Failed { error } => (
                format!("{}: STOP: agents stopped, but the cancel failed and the task is held: {error}", task.work_item),
                format!(
                    "<p>⏹ STOP: the agents were stopped, but the cancel could not finish ({}); it is retried.</p>",
                    html_escape(error)
                ),
            ),
            other => (
                format!("{}: STOP: {other}", task.work_item),
                "<p>⏹ STOP: the task is cancelled. Its agents were stopped, its jobs cancelled, its worktree removed and its branch deleted. Set <b>To Analyse</b> to start again from scratch.</p>".to_string(),
            ),
        };
        self.notifier
            .alert(Alert {
                kind: "stop",
                work_item: Some(task.work_item.clone()),
                message,
                // Each STOP notifies once already; a STOP of a later task of
                // the same work item is a new one (F-27 dedup).
                key: Some(format!("task {}", task.id)),
            })
            .await;
        if let Some(item) = self.tracker_ref(task) {
            let key = format!("stop:{}", task.id);
            if let Err(e) = self.tracker.add_comment(&item, &key, &html).await {
                tracing::warn!(work_item = %task.work_item, error = %e, "STOP comment not added");
            }
        }
    }

    /// The reconciler's part (F-16, F-25): apply requested cancels whose
    /// critical window has closed (the step ended without calling the
    /// engine, e.g. a failed run that was retried), and clean what a crash or
    /// a race left behind cancelled tasks: active jobs, live agent groups,
    /// a worktree, a merge lease. Returns how many tasks it acted on.
    pub async fn sweep_cancels(&self) -> Result<usize, EngineError> {
        let mut acted = 0;
        let sql = format!(
            "SELECT * FROM tasks WHERE cancel_requested_at IS NOT NULL
             AND stage NOT IN {TERMINAL_SQL} ORDER BY id LIMIT ?"
        );
        let pending: Vec<TaskRow> = sqlx::query_as(&sql)
            .bind(SWEEP_LIMIT)
            .fetch_all(self.db.reader())
            .await?;
        for t in pending {
            if self.critical_window(&t).await?.is_some() {
                continue;
            }
            let reason = t.cancel_reason.clone().unwrap_or_else(|| "STOP".into());
            let (out, _) = self.engine.cancel(t.id, "reconciler", &reason).await?;
            if self.cascade_if_cancelled(t.id, &out).await?.is_some() {
                acted += 1;
                tracing::info!(work_item = %t.work_item, "reconciler applied a deferred STOP");
            }
        }
        // Cancelled tasks with something left. The stage is bound, not
        // spelled: terminal stages are named in SQL only in db/tasks.rs.
        let leftovers: Vec<TaskRow> = sqlx::query_as(
            "SELECT t.* FROM tasks t WHERE t.stage = ? AND (
                EXISTS (SELECT 1 FROM jobs j WHERE j.task_id = t.id AND j.status IN ('queued','running'))
                OR EXISTS (SELECT 1 FROM merge_lease m WHERE m.task_id = t.id)
                OR EXISTS (SELECT 1 FROM jobs j JOIN agent_runs r ON r.job_id = j.id
                           WHERE j.task_id = t.id AND j.status = 'cancelled' AND j.pgid IS NOT NULL
                             AND r.exit_code IS NULL)
                OR (t.worktree IS NOT NULL AND NOT EXISTS (
                    SELECT 1 FROM tasks n WHERE n.work_item = t.work_item AND n.tombstoned_at IS NULL)))
             ORDER BY t.id",
        )
        .bind(Stage::Cancelled)
        .fetch_all(self.db.reader())
        .await?;
        let mut swept = 0;
        for t in leftovers {
            if swept >= SWEEP_LIMIT {
                break;
            }
            if !self.has_leftovers(&t).await? {
                continue;
            }
            self.cancel_cascade(&t, false).await?;
            self.stops.swept.fetch_add(1, Ordering::Relaxed);
            swept += 1;
            tracing::warn!(work_item = %t.work_item, "reconciler cleaned what a cancelled task left behind");
        }
        Ok(acted + swept as usize)
    }

    /// The query's candidates minus those whose only sign is a worktree path
    /// on the row while the directory is gone (or belongs to a fresh task of
    /// the same work item).
    async fn has_leftovers(&self, t: &TaskRow) -> Result<bool, EngineError> {
        let successor = tasks::by_work_item(self.db.reader(), &t.work_item)
            .await?
            .is_some();
        if !successor && self.workspace.worktree_dir(&t.work_item).exists() {
            return Ok(true);
        }
        let active = jobs::active_for_task(self.db.reader(), t.id)
            .await?
            .is_some();
        let lease = merge_lease::holder(self.db.reader(), &t.project).await? == Some(t.id);
        let mut open_group = false;
        for j in jobs::for_task(self.db.reader(), t.id).await? {
            if j.status == "cancelled" && j.pgid.is_some() {
                let run = runs::latest_for_job(self.db.reader(), j.id).await?;
                open_group |= run.is_some_and(|r| r.exit_code.is_none());
            }
        }
        Ok(active || lease || open_group)
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
