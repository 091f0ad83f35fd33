//! The irreversible effects of deploy → done (F-23): `merge_pr` and
//! `prod_deploy`. They run only inside the stage engine's transition, under
//! the lease, through the journal (B-1): `reconcile` is asked first whenever
//! a `planned` row is found (a crash came between the effect and its record).
//!
//! - `merge_pr`: ensure the PR, merge it with the branch head as
//!   `head_commit_id`, verify the head is in main. `reconcile` = is the head
//!   recorded before the merge already in main? Without a forge the merge is
//!   a local `git merge --no-ff` pushed normally (B-10).
//! - `prod_deploy`: the project's `deploy_command` in the deploy clone at the
//!   merged default branch, in its own process group with a timeout; without
//!   one, the deployer agent (`deploy_agent.rs`).
//!   A deploy is not idempotent and cannot be asked whether it happened: its
//!   `reconcile` trusts only a marker written after success (see
//!   `docs/adr/0005-deploy-path.md` for the trade-off).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use super::deploy_deps::{DeployDeps, deploys_dir};
use super::deploy_deps::{task_branch, write_durably};
use crate::clients::{MergeOutcome, PrState};
use crate::config::Project;
use crate::domain::EffectKind;
use crate::domain::gates::DEPLOY_REPORT;
use crate::proc_group::Ended;
use crate::stage_engine::inputs::artifact_dir;
use crate::stage_engine::{Effect, EffectCtx, EffectError, EffectRegistry, EffectResult};

/// Register the deploy-path effects over whatever `reg` holds.
pub fn register(reg: EffectRegistry, deps: &DeployDeps) -> EffectRegistry {
    reg.with(EffectKind::MergePr, Arc::new(MergePr(deps.clone())))
        .with(EffectKind::ProdDeploy, Arc::new(ProdDeploy(deps.clone())))
        .with(
            EffectKind::CoverageRatchet,
            Arc::new(super::ratchet::CoverageRatchet(deps.clone())),
        )
        .with(
            EffectKind::ImageRebuild,
            Arc::new(super::ratchet::ImageRebuild(deps.clone())),
        )
}

fn unknown(what: &str, e: impl std::fmt::Display) -> EffectError {
    EffectError::Unknown(format!("{what}: {e}"))
}

fn failed(what: &str, e: impl std::fmt::Display) -> EffectError {
    EffectError::Failed(format!("{what}: {e}"))
}

// ---------------------------------------------------------------------------
// merge_pr
// ---------------------------------------------------------------------------

/// The result recorded when nothing had to be merged.
pub const ALREADY_IN_MAIN: &str = "already in main";

pub struct MergePr(pub DeployDeps);

impl MergePr {
    /// The branch head, written before anything is merged: `reconcile` asks
    /// about THIS commit, not about whatever the branch points at after a
    /// restart (a push meanwhile must not turn into a second merge).
    fn head_file(&self, ctx: &EffectCtx) -> PathBuf {
        self.0.marker(&ctx.transition_key, ".merge-head")
    }

    /// Where `head` landed: the merge commit that brought it into the
    /// default branch, or the head itself (a fast-forward).
    async fn landed_as(&self, dir: &Path, project: &Project, head: &str) -> String {
        let main = format!("origin/{}", project.default_branch);
        let c = &self.0.checkouts;
        if let Err(e) = c.fetch_branch(dir, &project.default_branch).await {
            tracing::warn!(error = %e, "cannot fetch the default branch to name the merge commit");
        }
        match c.merge_commit_of(dir, head, &main).await {
            Ok(Some(sha)) => sha,
            _ => head.to_string(),
        }
    }
}

#[async_trait]
impl Effect for MergePr {
    fn has_record(&self) -> bool {
        false
    }
    async fn reconcile(&self, ctx: &EffectCtx) -> Result<Option<EffectResult>, EffectError> {
        let project = self.0.project(ctx)?;
        let head = match super::adopt::read_record(&self.head_file(ctx)).await {
            Ok(Some(h)) => h.trim().to_string(),
            // Written before the first outside call: absent = nothing was
            // merged by this transition yet.
            Ok(None) => return Ok(None),
            Err(e) => return Err(unknown("cannot read the recorded branch head", e)),
        };
        let _held = self.0.checkouts.lock(&project.name).await;
        let dir = self
            .0
            .checkouts
            .ensure(project)
            .await
            .map_err(|e| unknown("deploy clone", e))?;
        let in_main = self
            .0
            .forge
            .sha_in_main(&self.0.forge_repo(project), &head)
            .await
            .map_err(|e| unknown("asking the forge whether the head is in main", e))?;
        if !in_main {
            return Ok(None);
        }
        let sha = self.landed_as(&dir, project, &head).await;
        tracing::info!(work_item = %ctx.task.work_item, %head, %sha, "merge found in main: recorded, not merged again");
        Ok(Some(sha))
    }

    async fn apply(&self, ctx: &EffectCtx) -> Result<EffectResult, EffectError> {
        let project = self.0.project(ctx)?;
        let branch = task_branch(ctx);
        if branch == project.default_branch {
            return Err(EffectError::Failed(format!(
                "the task branch is the default branch {branch}: nothing to merge"
            )));
        }
        let c = &self.0.checkouts;
        let _held = c.lock(&project.name).await;
        // Everything up to the first outside write is known not to have
        // merged anything: a failure there is `Failed`.
        let dir = c
            .ensure(project)
            .await
            .map_err(|e| failed("deploy clone", e))?;
        c.fetch_branch(&dir, &project.default_branch)
            .await
            .map_err(|e| failed("fetching the default branch", e))?;
        if !c
            .fetch_branch(&dir, &branch)
            .await
            .map_err(|e| failed("fetching the task branch", e))?
        {
            return Err(EffectError::Failed(format!(
                "branch {branch} is not on the remote: nothing to merge"
            )));
        }
        let head = c
            .rev(&dir, &format!("origin/{branch}"))
            .await
            .map_err(|e| failed("reading the branch head", e))?
            .ok_or_else(|| EffectError::Failed(format!("origin/{branch} names no commit")))?;
        // Issue 11 pt 4: only the head the merge gate validated is merged.
        // A branch that moved since then carries commits no gate saw.
        if let Some(validated) = ctx.task.validated_sha.as_deref()
            && validated != head
        {
            return Err(EffectError::Failed(format!(
                "{branch} moved from {validated} to {head} after the merge gate; {HEAD_MOVED}"
            )));
        }
        write_durably(&self.head_file(ctx), &head)
            .await
            .map_err(|e| failed("recording the branch head", e))?;
        // B-10: Gitea or the local forge, by the project's `forge`.
        self.merge_with_forge(ctx, project, &dir, &branch, &head)
            .await
    }
}

impl MergePr {
    async fn merge_with_forge(
        &self,
        ctx: &EffectCtx,
        project: &Project,
        dir: &Path,
        branch: &str,
        head: &str,
    ) -> Result<EffectResult, EffectError> {
        let forge = &self.0.forge;
        let repo = self.0.forge_repo(project);
        let wi = &ctx.task.work_item;
        let title = format!("{wi}: {}", ctx.task.title);
        let number = match forge.ensure_open_pr(&repo, branch, &title, "").await {
            Ok(PrState::AlreadyInMain) => return Ok(ALREADY_IN_MAIN.to_string()),
            Ok(PrState::Open { number }) => number,
            Err(e) => return Err(failed("cannot open the pull request", e)),
        };
        let outcome = forge.merge_pr(&repo, number, head).await;
        // F-23: whatever the merge call said, the authoritative answer is
        // whether the head is in main now.
        let in_main = forge.sha_in_main(&repo, head).await;
        match (outcome, in_main) {
            (Ok(MergeOutcome::Merged { sha }), Ok(true)) => {
                tracing::info!(work_item = %wi, pr = number, %sha, "PR merged; head verified in main");
                Ok(sha)
            }
            (_, Ok(true)) => Ok(self.landed_as(dir, project, head).await),
            // Issue 11 pt 4: someone pushed to the branch after the merge
            // gate validated it; merging the new head would ship commits no
            // gate saw. Never reached main: `Failed`, the task holds.
            (Ok(MergeOutcome::HeadMoved { head: now }), Ok(false)) => {
                Err(EffectError::Failed(format!(
                    "PR #{number} not merged: {branch} moved from {head} to {now} after the merge gate; {HEAD_MOVED}"
                )))
            }
            (Ok(MergeOutcome::NotMerged { reason }), Ok(false)) => Err(EffectError::Failed(
                format!("PR #{number} not merged: {reason}"),
            )),
            (Err(e), Ok(false)) => Err(failed(&format!("PR #{number} not merged"), e)),
            (Ok(MergeOutcome::Merged { sha }), Ok(false)) => Err(EffectError::Unknown(format!(
                "PR #{number} reported merged ({sha}) but {head} is not in {} yet",
                project.default_branch
            ))),
            (_, Err(e)) => Err(unknown(
                &format!("PR #{number}: cannot verify that {head} is in main"),
                e,
            )),
        }
    }
}

// ---------------------------------------------------------------------------
// prod_deploy
// ---------------------------------------------------------------------------

/// The tail of a merge refused because the branch moved after the merge
/// gate (issue 11 pt 4): what the person must do.
pub const HEAD_MOVED: &str =
    "nothing was merged: the new head must pass the merge gate before it can ship";

/// Did a merge fail because the branch moved after the merge gate? Then the
/// task goes back through deploy-staging instead of holding.
pub fn head_moved(error: &str) -> bool {
    error.contains(HEAD_MOVED)
}

pub struct ProdDeploy(pub DeployDeps);

/// How a production deploy run ended, as the journal must record it: only
/// exit 0 (and, for the agent, its SUCCESS verdict) is a success; anything
/// else reached production or may have, so the outcome is unknown and the
/// task holds for a person (B-13). Never `Failed`: a deploy that started
/// is never known not to have happened.
pub(crate) fn deploy_verdict(
    ended: Ended,
    detail: &str,
    info: &super::adopt::RunInfo,
) -> Result<(), EffectError> {
    match ended {
        Ended::Exited(0) => Ok(()),
        _ => Err(EffectError::Unknown(format!(
            "deploy_status: FAILURE ({detail}); {info}. Check production, then set Confirm Deploy to run it again"
        ))),
    }
}

#[async_trait]
impl Effect for ProdDeploy {
    fn has_record(&self) -> bool {
        false
    }
    /// A deploy cannot be asked whether it ran. The marker written after a
    /// successful run proves it did; the run's own records (`adopt.rs`) tell
    /// the rest: never started → `None` (deploy now); still running → wait
    /// for it; ended → judge its exit (and the agent's report); started but
    /// its end unknown → `Unknown`: the task holds, a person decides.
    async fn reconcile(&self, ctx: &EffectCtx) -> Result<Option<EffectResult>, EffectError> {
        match super::adopt::read_record(&self.0.marker(&ctx.transition_key, ".done")).await {
            Ok(Some(text)) => {
                return Ok(Some(
                    text.lines()
                        .next()
                        .unwrap_or("deploy_status: SUCCESS")
                        .to_string(),
                ));
            }
            Ok(None) => {}
            Err(e) => return Err(unknown("cannot read the deploy marker", e)),
        }
        self.adopt(ctx).await
    }

    async fn apply(&self, ctx: &EffectCtx) -> Result<EffectResult, EffectError> {
        let project = self.0.project(ctx)?;
        let wi = &ctx.task.work_item;
        let command = project.deploy_command.trim();
        if command.is_empty() {
            let result = super::deploy_agent::deploy(&self.0, ctx, project).await?;
            self.mark_done(ctx, &result, "").await;
            return Ok(result);
        }
        let c = &self.0.checkouts;
        let _held = c.lock(&project.name).await;
        let dir = c
            .ensure(project)
            .await
            .map_err(|e| failed("deploy clone", e))?;
        c.fetch_branch(&dir, &project.default_branch)
            .await
            .map_err(|e| failed("fetching the merged default branch", e))?;
        let main = format!("origin/{}", project.default_branch);
        c.checkout(&dir, &main)
            .await
            .map_err(|e| failed("checking out the merged default branch", e))?;
        let commit = c.rev(&dir, "HEAD").await.ok().flatten().unwrap_or_default();
        let timeout = Duration::from_secs(self.0.settings.deploy_timeout_s);
        tracing::info!(work_item = %wi, %commit, command, "production deploy started");
        let spec = self.0.command_spec(ctx, project, &dir, command);
        let files = super::adopt::files(&self.0, ctx, "");
        let run = super::adopt::run(&self.0, ctx, "", spec, timeout)
            .await
            .map_err(|e| {
                failed(
                    "deploy_status: FAILURE (the deploy command could not start)",
                    e,
                )
            })?;
        let detail = match run.ended {
            Ended::Exited(0) => "exit 0".to_string(),
            Ended::Exited(n) => format!("exit {n}"),
            Ended::Signaled(s) => format!("killed by signal {s}"),
            Ended::TimedOut => format!(
                "timed out after {}s; process group killed",
                timeout.as_secs()
            ),
        };
        let status = if run.ended == Ended::Exited(0) {
            "SUCCESS"
        } else {
            "FAILURE"
        };
        tracing::info!(work_item = %wi, status, %detail, secs = run.duration.as_secs_f64(), "production deploy ended");
        let output = log_tail(&files.log).await;
        let report = DeployReport {
            work_item: wi,
            command,
            commit: &commit,
            status,
            detail: &detail,
            secs: run.duration.as_secs_f64(),
            output: &output,
        };
        write_report(ctx, &report).await;
        if run.ended != Ended::Exited(0) {
            let info = super::adopt::info(&self.0, ctx, "").await;
            deploy_verdict(run.ended, &detail, &info)?;
        }
        let result = "deploy_status: SUCCESS".to_string();
        self.mark_done(ctx, &result, &commit).await;
        Ok(result)
    }
}

/// The last lines of a run's log, bounded (the report quotes them).
async fn log_tail(log: &Path) -> String {
    let log = log.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut f) = std::fs::File::open(&log) else {
            return String::new();
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
        let mut buf = Vec::new();
        let _ = f.take(64 * 1024).read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
    .await
    .unwrap_or_default()
}

impl ProdDeploy {
    /// A run started before (a restart, a person's retry): wait for it and
    /// judge its recorded exit (and, for the agent, its report) instead of
    /// deploying again.
    async fn adopt(&self, ctx: &EffectCtx) -> Result<Option<EffectResult>, EffectError> {
        use super::adopt::{self, Earlier};
        let wi = &ctx.task.work_item;
        let ended = match adopt::earlier(&self.0, ctx, "").await? {
            Earlier::None => return Ok(None),
            Earlier::Vanished(info) => {
                tracing::warn!(work_item = %wi, %info, "the deploy started earlier ended without a recorded exit: outcome unknown, held for a person");
                return Err(EffectError::Unknown(format!(
                    "deploy_status: unknown (the deploy started earlier ended without recording its exit: the daemon, a signal or the host stopped it); {info}. Check production, then set Confirm Deploy to run it again"
                )));
            }
            Earlier::TimedOut(info) => {
                return Err(EffectError::Unknown(format!(
                    "deploy_status: FAILURE (the deploy started earlier outlived ORCH_DEPLOY_TIMEOUT_S and was killed); {info}. Check production, then set Confirm Deploy to run it again"
                )));
            }
            Earlier::Exited(code) => Ended::Exited(code),
        };
        let project = self.0.project(ctx)?;
        let verdict = if project.deploy_command.trim().is_empty() {
            // The worktree the deployer ran in: recorded on the task, else
            // where the workspace puts it.
            let wt = ctx
                .task
                .worktree
                .clone()
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    crate::git::Workspace::new(&self.0.settings.workspace_root).worktree_dir(wi)
                });
            let report = super::deploy_agent::read_report(&self.0, &wt, wi).await;
            report.and_then(|text| super::deploy_agent::verdict(ended, text.as_deref()))
        } else if ended == Ended::Exited(0) {
            Ok(())
        } else {
            Err(format!("{ended:?}"))
        };
        match verdict {
            Ok(()) => {
                let result =
                    "deploy_status: SUCCESS (the run started before a restart)".to_string();
                tracing::info!(work_item = %wi, "adopted the deploy started earlier: SUCCESS");
                self.mark_done(ctx, &result, "").await;
                Ok(Some(result))
            }
            Err(why) => {
                let info = adopt::info(&self.0, ctx, "").await;
                Err(EffectError::Unknown(format!(
                    "deploy_status: FAILURE (the run started earlier: {why}); {info}. Check production, then set Confirm Deploy to run it again"
                )))
            }
        }
    }

    /// After success only: without the marker, a restart re-runs the deploy.
    async fn mark_done(&self, ctx: &EffectCtx, result: &str, commit: &str) {
        if let Err(e) = write_durably(
            &self.0.marker(&ctx.transition_key, ".done"),
            &format!("{result}\ncommit: {commit}\n"),
        )
        .await
        {
            tracing::warn!(work_item = %ctx.task.work_item, error = %e, "deploy marker not written: a restart would hold the task for a person instead of trusting the run");
        }
    }
}

struct DeployReport<'a> {
    work_item: &'a str,
    command: &'a str,
    commit: &'a str,
    status: &'a str,
    detail: &'a str,
    secs: f64,
    output: &'a str,
}

/// Lines of the command's output kept in the report.
const REPORT_TAIL_LINES: usize = 60;

/// `15-deploy-report.md` in the task's artifact dir, ending with the
/// `deploy_status:` verdict line (agent contract). Only when the worktree
/// exists: the report documents the deploy, it does not decide it.
async fn write_report(ctx: &EffectCtx, r: &DeployReport<'_>) {
    let Some(wt) = ctx
        .task
        .worktree
        .as_deref()
        .filter(|w| Path::new(w).exists())
    else {
        return;
    };
    let lines: Vec<&str> = r.output.lines().collect();
    let tail = lines[lines.len().saturating_sub(REPORT_TAIL_LINES)..].join("\n");
    // A fence in the output must not close ours early.
    let tail = tail.replace("```", "'''");
    let text = format!(
        "# Production deploy of {}\n\n- command: `{}`\n- commit: `{}`\n- ended: {} after {:.1}s\n\n\
         ## Output (last {REPORT_TAIL_LINES} lines)\n\n```text\n{tail}\n```\n\ndeploy_status: {}\n",
        r.work_item, r.command, r.commit, r.detail, r.secs, r.status
    );
    let path = artifact_dir(Path::new(wt), &ctx.task.work_item).join(DEPLOY_REPORT);
    // The worktree is the agents': no link in it is written through.
    let rel = Path::new("docs/work-items")
        .join(&ctx.task.work_item)
        .join(DEPLOY_REPORT);
    if let Err(e) = crate::untrusted::write_file(Path::new(wt), &rel, text.into_bytes()).await {
        tracing::warn!(work_item = %r.work_item, path = %path.display(), error = %e, "deploy report not written");
    }
}
