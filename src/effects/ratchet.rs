//! The effects of deploy-staging → deploy (F-19): `coverage_ratchet` and
//! `image_rebuild`, each run from a project command in the deploy clone at
//! the task branch's head (what the merge gate rebased and will be merged).
//!
//! The coverage ratchet fails on a drop below the project's baseline and
//! moves the baseline only on a pass. Its failures come in two kinds, told
//! apart by the pipeline with [`rolls_back`]: a verdict about the code (a
//! drop, a red run) rolls the task back to development; a tool error (the
//! command missing, a timeout, no percentage printed) only holds it, because
//! the developer cannot fix the infrastructure (seed 002, ORCH-110).

use std::time::Duration;

use async_trait::async_trait;

use super::deploy_deps::{DeployDeps, task_branch, write_durably};
use crate::config::Project;
use crate::db::deploys::{self, Ratchet};
use crate::proc_group::Ended;
use crate::stage_engine::{Effect, EffectCtx, EffectError, EffectResult};

/// Marks a coverage failure that is not the code's fault.
pub const TOOL_ERROR: &str = "coverage tool error";

/// Does a failed `coverage_ratchet` (the `error` of `Outcome::EffectFailed`)
/// send the task back to development? Only a verdict that is known (the
/// effect `Failed`, not `Unknown`) and is not a tool error.
pub fn rolls_back(error: &str) -> bool {
    let known = EffectError::Failed(String::new()).to_string();
    error.starts_with(known.trim_end()) && !error.contains(TOOL_ERROR)
}

/// The last number of a command's output that can be a percentage, 0 to
/// 100 (`TOTAL 120 12 90.00%` → 90.0; `Coverage: 87.5` → 87.5; in
/// `lines: 81.3% (100 of 123)` the 123 is no percentage, 100 is the last
/// that can be). A baseline above 100 would block every later task.
pub fn last_percentage(output: &str) -> Option<f64> {
    let mut last = None;
    let mut cur = String::new();
    let mut flush = |cur: &mut String| {
        let t = cur.trim_end_matches('.');
        if t.chars().any(|c| c.is_ascii_digit())
            && let Ok(v) = t.parse::<f64>()
            && v.is_finite()
            && (0.0..=100.0).contains(&v)
        {
            last = Some(v);
        }
        cur.clear();
    };
    for ch in output.chars() {
        if ch.is_ascii_digit() || (ch == '.' && !cur.is_empty() && !cur.contains('.')) {
            cur.push(ch);
        } else {
            flush(&mut cur);
        }
    }
    flush(&mut cur);
    last
}

/// Check the branch head out in the deploy clone; a failure is a tool error
/// (nothing was measured, nothing moved).
async fn checkout_branch_head(
    deps: &DeployDeps,
    ctx: &EffectCtx,
    project: &Project,
    what: &str,
) -> Result<std::path::PathBuf, EffectError> {
    let c = &deps.checkouts;
    let tool = |e: &dyn std::fmt::Display| EffectError::Failed(format!("{what}: {e}"));
    let dir = c.ensure(project).await.map_err(|e| tool(&e))?;
    let branch = task_branch(ctx);
    if !c.fetch_branch(&dir, &branch).await.map_err(|e| tool(&e))? {
        return Err(EffectError::Failed(format!(
            "{what}: branch {branch} is not on the remote"
        )));
    }
    c.checkout(&dir, &format!("origin/{branch}"))
        .await
        .map_err(|e| tool(&e))?;
    Ok(dir)
}

// ---------------------------------------------------------------------------
// coverage_ratchet
// ---------------------------------------------------------------------------

pub struct CoverageRatchet(pub DeployDeps);

/// What `apply` hands to `record`: the measured percentage.
const MEASURED: &str = "measured coverage ";

#[async_trait]
impl Effect for CoverageRatchet {
    /// Only the baseline move is irreversible, and it is committed with the
    /// effect's done row (`record`): a row still open means the baseline
    /// did not move for this transition, so measuring again is right.
    async fn reconcile(&self, _ctx: &EffectCtx) -> Result<Option<EffectResult>, EffectError> {
        Ok(None)
    }

    /// The ratchet step, in the journal's transaction that marks the effect
    /// done: compare with the baseline and move it on a pass.
    async fn record(
        &self,
        tx: &mut sqlx::SqliteConnection,
        ctx: &EffectCtx,
        result: EffectResult,
    ) -> Result<EffectResult, EffectError> {
        let Some(pct) = result
            .strip_prefix(MEASURED)
            .and_then(|v| v.trim_end_matches('%').parse::<f64>().ok())
        else {
            return Ok(result);
        };
        let project = &ctx.task.project;
        let verdict = deploys::ratchet_coverage(tx, project, pct, &ctx.transition_key)
            .await
            .map_err(|e| {
                EffectError::Failed(format!("{TOOL_ERROR}: recording the baseline: {e}"))
            })?;
        match verdict {
            Ratchet::Dropped { baseline, measured } => {
                tracing::warn!(work_item = %ctx.task.work_item, baseline, measured, "coverage dropped");
                Err(EffectError::Failed(format!(
                    "coverage dropped from {baseline:.2}% to {measured:.2}%"
                )))
            }
            Ratchet::Passed { from, to } => {
                let from = from.map_or("none".to_string(), |f| format!("{f:.2}%"));
                tracing::info!(work_item = %ctx.task.work_item, measured = pct, %from, to, "coverage ratchet passed");
                Ok(format!("coverage {pct:.2}%; baseline {from} -> {to:.2}%"))
            }
        }
    }

    async fn apply(&self, ctx: &EffectCtx) -> Result<EffectResult, EffectError> {
        let project = self.0.project(ctx)?;
        let command = project.coverage_command.trim();
        if command.is_empty() {
            return Ok("noop: no coverage command".into());
        }
        let _held = self.0.checkouts.lock(&project.name).await;
        let dir = checkout_branch_head(&self.0, ctx, project, TOOL_ERROR).await?;
        // Coverage runs the suite: it gets the merge gate's re-test budget.
        let timeout = Duration::from_secs(self.0.settings.merge_retest_timeout_s);
        let run = self
            .0
            .run_command(ctx, project, &dir, command, timeout)
            .await
            .map_err(|e| EffectError::Failed(format!("{TOOL_ERROR}: {e}")))?;
        let output_tail = tail(&run.output);
        let pct = match run.ended {
            Ended::Exited(0) => last_percentage(&run.output).ok_or_else(|| {
                EffectError::Failed(format!(
                    "{TOOL_ERROR}: `{command}` printed no percentage: {output_tail}"
                ))
            })?,
            // 126/127: the shell could not run the tool at all.
            Ended::Exited(n @ (126 | 127)) => {
                return Err(EffectError::Failed(format!(
                    "{TOOL_ERROR}: `{command}` could not run (exit {n}): {output_tail}"
                )));
            }
            Ended::Exited(n) => {
                return Err(EffectError::Failed(format!(
                    "coverage run failed (exit {n}): {output_tail}"
                )));
            }
            Ended::Signaled(s) => {
                return Err(EffectError::Failed(format!(
                    "{TOOL_ERROR}: `{command}` killed by signal {s}"
                )));
            }
            Ended::TimedOut => {
                return Err(EffectError::Failed(format!(
                    "{TOOL_ERROR}: `{command}` timed out after {}s; process group killed",
                    timeout.as_secs()
                )));
            }
        };
        // The baseline moves in `record`, with the done row.
        Ok(format!("{MEASURED}{pct}"))
    }
}

fn tail(output: &str) -> String {
    let lines: Vec<&str> = output.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" / ")
}

// ---------------------------------------------------------------------------
// image_rebuild
// ---------------------------------------------------------------------------

pub struct ImageRebuild(pub DeployDeps);

/// The image rebuild's run records (`adopt.rs`): `<key>.image_rebuild.*`.
const IMAGE: &str = ".image_rebuild";

#[async_trait]
impl Effect for ImageRebuild {
    fn has_record(&self) -> bool {
        false
    }
    /// The marker written after a successful build proves it ran; else the
    /// run's records: never started → build; still running → wait; ended
    /// or vanished without success → the image may be half pushed: unknown,
    /// held for a person.
    async fn reconcile(&self, ctx: &EffectCtx) -> Result<Option<EffectResult>, EffectError> {
        use super::adopt::{self, Earlier};
        let marker = self.0.marker(&ctx.transition_key, ".image_rebuild.done");
        match super::adopt::read_record(&marker).await {
            Ok(Some(text)) => return Ok(Some(text.trim().to_string())),
            Ok(None) => {}
            Err(e) => {
                return Err(EffectError::Unknown(format!(
                    "cannot read {}: {e}",
                    marker.display()
                )));
            }
        }
        match adopt::earlier(&self.0, ctx, IMAGE).await? {
            Earlier::None => Ok(None),
            Earlier::Exited(0) => {
                let result = "image rebuilt (the run started before a restart)".to_string();
                self.mark_done(ctx, &result).await;
                Ok(Some(result))
            }
            Earlier::Exited(n) => Err(EffectError::Unknown(format!(
                "image rebuild started earlier exited {n}; {}",
                adopt::info(&self.0, ctx, IMAGE).await
            ))),
            Earlier::Vanished(info) | Earlier::TimedOut(info) => Err(EffectError::Unknown(
                format!("image rebuild started earlier ended without a recorded success; {info}"),
            )),
        }
    }

    async fn apply(&self, ctx: &EffectCtx) -> Result<EffectResult, EffectError> {
        let project = self.0.project(ctx)?;
        let command = project.image_command.trim();
        if command.is_empty() {
            return Ok("noop: no image command".into());
        }
        let _held = self.0.checkouts.lock(&project.name).await;
        let dir = checkout_branch_head(&self.0, ctx, project, "image rebuild").await?;
        let timeout = Duration::from_secs(self.0.settings.deploy_timeout_s);
        let spec = self.0.command_spec(ctx, project, &dir, command);
        // Detached and adoptable like a deploy: a push cut in half by a
        // stopping daemon is worse than one that finishes.
        let run = super::adopt::run(&self.0, ctx, IMAGE, spec, timeout)
            .await
            .map_err(|e| EffectError::Failed(format!("image rebuild could not start: {e}")))?;
        let info = || super::adopt::info(&self.0, ctx, IMAGE);
        let result = match run.ended {
            Ended::Exited(0) => format!("image rebuilt in {:.1}s", run.duration.as_secs_f64()),
            Ended::Exited(n) => {
                return Err(EffectError::Unknown(format!(
                    "image rebuild failed (exit {n}); {}",
                    info().await
                )));
            }
            Ended::Signaled(s) => {
                return Err(EffectError::Unknown(format!(
                    "image rebuild killed by signal {s}; {}",
                    info().await
                )));
            }
            Ended::TimedOut => {
                return Err(EffectError::Unknown(format!(
                    "image rebuild timed out after {}s; process group killed; {}",
                    timeout.as_secs(),
                    info().await
                )));
            }
        };
        self.mark_done(ctx, &result).await;
        Ok(result)
    }
}

impl ImageRebuild {
    async fn mark_done(&self, ctx: &EffectCtx, result: &str) {
        let marker = self.0.marker(&ctx.transition_key, ".image_rebuild.done");
        if let Err(e) = write_durably(&marker, result).await {
            tracing::warn!(work_item = %ctx.task.work_item, error = %e, "image marker not written: a restart judges the run's records instead");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_number_is_the_percentage() {
        assert_eq!(last_percentage("TOTAL 120 12 90.00%"), Some(90.0));
        assert_eq!(last_percentage("Coverage: 87.5\n"), Some(87.5));
        assert_eq!(
            last_percentage("lines......: 81.3% (100 of 123)\nok"),
            Some(100.0)
        );
        assert_eq!(last_percentage("coverage 123%"), None, "bounded to 0-100");
        assert_eq!(last_percentage("coverage 100.5"), None);
        assert_eq!(last_percentage("0.0"), Some(0.0));
        assert_eq!(last_percentage("covered 7."), Some(7.0));
        assert_eq!(last_percentage("no digits here."), None);
        assert_eq!(last_percentage(""), None);
    }

    #[test]
    fn only_known_verdicts_roll_back() {
        let drop = EffectError::Failed("coverage dropped from 80.00% to 75.00%".into());
        assert!(rolls_back(&drop.to_string()));
        let tool = EffectError::Failed(format!("{TOOL_ERROR}: exit 127"));
        assert!(!rolls_back(&tool.to_string()));
        let unknown = EffectError::Unknown("coverage dropped?".into());
        assert!(!rolls_back(&unknown.to_string()));
    }
}
