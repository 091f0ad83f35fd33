//! The reconciler's forge poll (F-16, issue 11 pt 7): Gitea does not retry
//! a webhook that got no 2xx answer, so a merged PR's delivery can be lost
//! (our intake could not store it, the network dropped it). Each pass asks
//! Gitea for the merged PR of every task that could still act on one (not
//! terminal, not at deploy where the finalizer merges and done waits for
//! the deployer, not held) and, when there is one, stores it as the
//! delivery the webhook would have been: same body shape, same content key
//! (`pr=<repo>#<n>|merged|<merge sha>`), so the webhook and the poll
//! deduplicate each other and the intake worker acts on it exactly once,
//! through the same handler.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};

use crate::agents::runtime::Runtime;
use crate::clients::ForgeRepo;
use crate::db::deliveries::{self, Inserted, NewDelivery};
use crate::db::tasks::{TERMINAL_SQL, TaskRow};
use crate::domain::Stage;
use crate::intake::Source;

#[derive(Debug, Default)]
pub struct ForgePollStats {
    pub polled: AtomicU64,
    /// Merged PRs stored because no delivery of them was.
    pub missed_merges_stored: AtomicU64,
    pub forge_errors: AtomicU64,
}

impl ForgePollStats {
    pub fn snapshot(&self) -> Value {
        json!({
            "polled": self.polled.load(Ordering::Relaxed),
            "missed_merges_stored": self.missed_merges_stored.load(Ordering::Relaxed),
            "forge_errors": self.forge_errors.load(Ordering::Relaxed),
        })
    }
}

pub async fn tick(rt: &Runtime, stats: &ForgePollStats) -> anyhow::Result<()> {
    let sql = format!(
        "SELECT * FROM tasks WHERE stage NOT IN {TERMINAL_SQL} AND stage != ?
           AND hold_reason IS NULL AND cancel_requested_at IS NULL AND branch IS NOT NULL"
    );
    let active: Vec<TaskRow> = sqlx::query_as(&sql)
        .bind(Stage::Deploy)
        .fetch_all(rt.db.reader())
        .await?;
    for task in active {
        let Some(project) = rt.settings.project(&task.project) else {
            continue;
        };
        let Some(branch) = task.branch.as_deref() else {
            continue;
        };
        if project.forge_name().is_empty() || branch == project.default_branch {
            continue;
        }
        let repo = ForgeRepo {
            project: project.name.clone(),
            full_name: project.forge_name().to_string(),
            default_branch: project.default_branch.clone(),
            local_clone: Default::default(),
        };
        stats.polled.fetch_add(1, Ordering::Relaxed);
        let pr = match rt.pipeline.forge.merged_pr_of(&repo, branch).await {
            Ok(Some(pr)) => pr,
            Ok(None) => continue,
            Err(e) => {
                stats.forge_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(work_item = %task.work_item, error = %e, "merged PR not readable");
                continue;
            }
        };
        if store(rt, &repo, &pr).await? {
            stats.missed_merges_stored.fetch_add(1, Ordering::Relaxed);
            let number = pr.get("number").and_then(Value::as_u64).unwrap_or(0);
            tracing::warn!(work_item = %task.work_item, pr = number, "a merged PR arrived without its webhook: stored for the intake");
        }
    }
    Ok(())
}

/// Store the merged PR as its webhook delivery; `true` when it was new.
async fn store(rt: &Runtime, repo: &ForgeRepo, pr: &Value) -> anyhow::Result<bool> {
    let number = pr.get("number").and_then(Value::as_u64).unwrap_or(0);
    let body = json!({
        "action": "closed",
        "number": number,
        "pull_request": pr,
        "repository": { "full_name": repo.full_name, "default_branch": repo.default_branch },
    });
    let bytes = serde_json::to_vec(&body)?;
    // The intake's own parser names the event and its content key, so the
    // key is the webhook's by construction.
    let parsed = crate::intake::Gitea::parse(Some("pull_request"), &bytes)
        .map_err(|e| anyhow::anyhow!("the polled PR does not parse as a delivery: {e}"))?;
    let delivery_id = format!("reconciler-poll:{}#{number}", repo.full_name);
    let settled = parsed.event.settled_outcome();
    let row = NewDelivery {
        source: crate::intake::Gitea::NAME,
        delivery_id: &delivery_id,
        event: &parsed.event_name,
        content_key: parsed.content_key.as_deref(),
        headers: r#"{"x-gitea-event":"pull_request"}"#,
        body: &bytes,
        done_outcome: settled.as_deref(),
    };
    Ok(matches!(
        deliveries::insert(&rt.db, &row).await?,
        Inserted::New(_)
    ))
}
