//! Operator and start-up paths: force-release a lease, recover after a
//! restart, and the `transition_lease` block of `/queue`.

use serde::Serialize;
use serde_json::json;

use super::{Engine, EngineError, Outcome};
use crate::db::{effects, leases, now_ms, tasks};

/// What `recover_on_startup` found and did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Recovery {
    pub reclaimed_leases: usize,
    pub kept_live_leases: usize,
    pub resumed_tasks: Vec<(i64, Outcome)>,
    /// Tasks whose resume failed (alerted, left for an operator).
    pub failed_tasks: Vec<i64>,
}

impl Engine {
    /// Operator release (`POST /transition-lease/release`): delete the lease
    /// row of a work item's task whoever holds it, and alert. Returns the
    /// released row, or `Ok(None)` when no lease was held; `Err` of a
    /// `NotFound` kind is the caller's 404.
    pub async fn force_release(
        &self,
        work_item: &str,
        by: &str,
    ) -> Result<ForceRelease, EngineError> {
        self.force_release_holder(work_item, None, by).await
    }

    /// [`Engine::force_release`] of the holder the operator looked at
    /// (`expected`, the `holder` of the `/queue` lease entry): a lease that
    /// changed hands meanwhile (its stuck holder finished, a new one is at
    /// work, maybe mid-merge) is left alone.
    pub async fn force_release_holder(
        &self,
        work_item: &str,
        expected: Option<&str>,
        by: &str,
    ) -> Result<ForceRelease, EngineError> {
        let Some(task) = tasks::latest_by_work_item(self.0.db.reader(), work_item).await? else {
            return Ok(ForceRelease::UnknownWorkItem);
        };
        let Some(row) = leases::get(self.0.db.reader(), task.id).await? else {
            return Ok(ForceRelease::NotHeld);
        };
        if expected.is_some_and(|h| h != row.holder) {
            return Ok(ForceRelease::NotHeld);
        }
        // Deleted and fenced in one transaction: the holder, if it still
        // runs, can record nothing more (invariant 10).
        if !leases::revoke(&self.0.db, task.id, &row.holder).await? {
            return Ok(ForceRelease::NotHeld);
        }
        let live = self.0.boot.is_live(&row);
        self.0.boot.forget_holder(&row.holder);
        self.alert(
            "lease_force_released",
            Some(work_item.to_string()),
            format!(
                "{by} force-released the transition lease of {work_item} ({} {}, held {}s, owner {})",
                row.actor,
                row.transition,
                (now_ms() - row.acquired_at) / 1000,
                if live { "alive" } else { "dead" }
            ),
        )
        .await;
        Ok(ForceRelease::Released(row))
    }

    /// At start-up: reclaim every lease whose owner is gone (an older boot),
    /// alerting for each, then finish every transition a crash left with an
    /// initiated effect. A lease of another live process is kept. The
    /// daemon does the first part here and hands the second to finalizer
    /// jobs ([`Engine::unfinished_transitions`]): an adopted deploy may run
    /// for half an hour, and start-up must not wait for it.
    pub async fn recover_on_startup(&self) -> Result<Recovery, EngineError> {
        let mut rec = self.reclaim_stale_leases().await?;
        for id in self.unfinished_transitions().await? {
            match self.advance_stage(id, "recovery").await {
                Ok(out) => rec.resumed_tasks.push((id, out)),
                Err(e) => {
                    let wi = tasks::get(self.0.db.reader(), id)
                        .await?
                        .map(|t| t.work_item);
                    tracing::error!(task_id = id, error = %e, "could not resume an unfinished transition");
                    self.alert(
                        "recovery_failed",
                        wi.clone(),
                        format!(
                            "{}: the unfinished transition could not be resumed: {e}",
                            wi.as_deref().unwrap_or("?")
                        ),
                    )
                    .await;
                    rec.failed_tasks.push(id);
                }
            }
        }
        Ok(rec)
    }

    /// Tasks a crash left with an initiated (planned) effect at their
    /// current version, in task order. Only rows at the task's current
    /// version are an unfinished transition; an older one was overtaken (a
    /// cancel) and stays as a record.
    pub async fn unfinished_transitions(&self) -> Result<Vec<i64>, EngineError> {
        let mut task_ids = std::collections::BTreeSet::new();
        for row in effects::open(self.0.db.reader()).await? {
            if let Some(t) = tasks::get(self.0.db.reader(), row.task_id).await?
                && t.stage_version == row.stage_version
                && !t.stage.is_terminal()
            {
                task_ids.insert(t.id);
            }
        }
        Ok(task_ids.into_iter().collect())
    }

    /// The first half of start-up recovery: every lease of an older boot
    /// whose owner is gone is revoked (deleted and fenced), with an alert.
    pub async fn reclaim_stale_leases(&self) -> Result<Recovery, EngineError> {
        let mut rec = Recovery::default();
        for row in leases::all(self.0.db.reader()).await? {
            if row.owner_boot_id == self.0.boot.boot_id {
                continue;
            }
            if self.0.boot.is_live(&row) {
                rec.kept_live_leases += 1;
                tracing::warn!(
                    task_id = row.task_id,
                    pid = row.owner_pid,
                    "lease of another live process kept"
                );
                continue;
            }
            if leases::revoke(&self.0.db, row.task_id, &row.holder).await? {
                rec.reclaimed_leases += 1;
                let wi = tasks::get(self.0.db.reader(), row.task_id)
                    .await?
                    .map(|t| t.work_item);
                self.alert(
                    "lease_stale_reclaimed",
                    wi.clone(),
                    format!(
                        "reclaimed the lease of {} left by boot {} (pid {}, {} {})",
                        wi.as_deref().unwrap_or("?"),
                        row.owner_boot_id,
                        row.owner_pid,
                        row.actor,
                        row.transition
                    ),
                )
                .await;
            }
        }
        Ok(rec)
    }

    /// The `transition_lease` block of `/queue`.
    pub async fn lease_block(&self) -> Result<serde_json::Value, EngineError> {
        let rows = leases::all(self.0.db.reader()).await?;
        let now = now_ms();
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let wi = tasks::get(self.0.db.reader(), r.task_id)
                .await?
                .map(|t| t.work_item);
            out.push(json!({
                "work_item": wi,
                "actor": r.actor,
                "transition": r.transition,
                "age_s": (now - r.acquired_at).max(0) / 1000,
                "live": self.0.boot.is_live(&r),
                "owner_pid": r.owner_pid,
                "holder": r.holder,
            }));
        }
        Ok(json!({ "held": out.len(), "leases": out, "boot_id": self.0.boot.boot_id }))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ForceRelease {
    Released(crate::db::leases::LeaseRow),
    NotHeld,
    UnknownWorkItem,
}
