//! The monitor (F-13): runs one job from its worktree to its stage decision.
//! It records the exit code and finish time FIRST, then commits and pushes,
//! ensures the PR, posts the tracker comments, and only then finalizes the
//! job through the stage engine. Finalization is claimed atomically on the
//! job row, so the monitor and the reapers never both advance (F-15).

use std::time::Duration;

use super::launcher::{self, Launched};
use super::prompts::{self, PromptInput};
use super::runtime::Runtime;
use super::usage;
use crate::clients::ForgeRepo;
use crate::db::jobs::{self, JobRow};
use crate::db::runs;
use crate::db::tasks::{self, TaskRow};
use crate::domain::Stage;
use crate::proc_group::{self, Ended};
use crate::stage_engine::{Outcome, inputs};
use crate::untrusted;

/// How often the monitor looks at the log (stall) and the spend (budget).
const WATCH_EVERY: Duration = Duration::from_secs(1);
const BUDGET_EVERY: u32 = 5;
/// Error markers the finalizer reads back from the job row.
pub const STALLED: &str = "stalled";
pub const OVER_BUDGET: &str = "over budget";

/// Run a started job (status `running`) to its end. Never panics; every
/// failure ends in a failed job, a retry, or a hold with an alert.
pub async fn run_job(rt: Runtime, job: JobRow) {
    let wi = tasks::get(rt.db.reader(), job.task_id)
        .await
        .ok()
        .flatten()
        .map(|t| t.work_item);
    if let Err(e) = run_job_inner(&rt, &job).await {
        tracing::error!(job = job.id, work_item = wi.as_deref().unwrap_or("?"), error = %e, "job failed to run");
        if let Ok(true) = jobs::transition(
            rt.db.writer(),
            job.id,
            "running",
            "failed",
            Some(&e.to_string()),
        )
        .await
        {
            retry_or_hold(&rt, &job, &format!("the run could not be carried out: {e}")).await;
        }
    }
}

async fn run_job_inner(rt: &Runtime, job: &JobRow) -> anyhow::Result<()> {
    let Some((task, project)) = rt.job_context(job).await? else {
        return Ok(());
    };
    let wt = rt.workspace.prepare(&project, &task.work_item).await?;
    let wt_s = wt.to_string_lossy().into_owned();
    if task.worktree.as_deref() != Some(wt_s.as_str()) {
        tasks::set_workspace(
            rt.db.writer(),
            task.id,
            &crate::git::branch_name(&task.work_item),
            &wt_s,
        )
        .await?;
    }
    let task = tasks::get(rt.db.reader(), job.task_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("task vanished"))?;
    let artifacts = inputs::load_artifacts(&task, rt.settings.artifact_max_bytes)
        .await
        .artifacts;
    let artifact_dir = format!("docs/work-items/{}/", task.work_item);
    let prompt = prompts::compose(&PromptInput {
        role: &job.role,
        stage: job.stage.as_str(),
        work_item: &task.work_item,
        title: &task.title,
        description: &task.description,
        artifact_dir: &artifact_dir,
        artifacts: &artifacts,
        feedback: &job.context,
        attempt: job.attempt,
    });
    comment(
        rt,
        &task,
        &format!("start:{}", job.id),
        &format!(
            "<p>▶️ {} started ({} stage, attempt {}).</p>",
            job.role, job.stage, job.attempt
        ),
    )
    .await;
    if let Some(which) = super::runners::builtin_for(&project, job) {
        let (run_id, ended) = super::runners::run(rt, which, job, &task, &project, &wt).await?;
        finish_run(rt, job, run_id, ended).await?;
        return complete(rt, job.id, "monitor").await.map(|_| ());
    }
    let mut launched = launcher::launch(rt, job, &task, &project, &wt, &prompt).await?;
    let Some(ended) = watch(rt, job, &task, &mut launched).await else {
        tracing::info!(
            job = job.id,
            "daemon shutting down: the agent goes on and is adopted after the restart"
        );
        return Ok(());
    };
    finish_run(rt, job, launched.run_id, ended).await?;
    complete(rt, job.id, "monitor").await.map(|_| ())
}

/// Wait for the agent; stall-kill (B-8) and budget-kill (B-7) on the way.
/// `None` when the daemon shuts down first.
async fn watch(rt: &Runtime, job: &JobRow, task: &TaskRow, l: &mut Launched) -> Option<Ended> {
    let owned = l.group.owned.clone();
    let log = l.paths.log.clone();
    let group = &mut l.group;
    supervise(rt, job, task, &log, &owned, proc_group::wait(group)).await
}

/// The stall (B-8) and budget (B-7) checks around a running agent, whether
/// this daemon spawned it (`ended` is its `wait`) or adopted it after a
/// restart (`ended` polls its group): an adopted agent is bounded by the
/// same checks, not only by the reaper's tier 3. At a ceiling the group is
/// stopped (only if it is still ours) and the reason goes on the job, where
/// the finalize reads it (hold and one alert). `None` at shutdown.
pub async fn supervise(
    rt: &Runtime,
    job: &JobRow,
    task: &TaskRow,
    log: &std::path::Path,
    group: &proc_group::Owned,
    ended: impl std::future::Future<Output = Ended>,
) -> Option<Ended> {
    let stall = Duration::from_secs(rt.settings.agent_stall_timeout_s);
    let grace = Duration::from_secs(rt.settings.agent_kill_grace_s);
    let mut last_len = None;
    let mut last_output = tokio::time::Instant::now();
    let mut ticks = 0u32;
    let mut tick = tokio::time::interval(WATCH_EVERY);
    let stop = rt.shutdown.clone().wait();
    tokio::pin!(stop);
    tokio::pin!(ended);
    loop {
        tokio::select! {
            e = &mut ended => return Some(e),
            _ = &mut stop => return None,
            _ = tick.tick() => {}
        }
        ticks += 1;
        // The log itself, never what a symlink in its place points to.
        let len = tokio::fs::symlink_metadata(log)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        let why = if last_len != Some(len) {
            last_len = Some(len);
            last_output = tokio::time::Instant::now();
            None
        } else if last_output.elapsed() >= stall {
            Some(format!("{STALLED}: no output for {}s", stall.as_secs()))
        } else {
            None
        };
        let why = match why {
            Some(w) => Some(w),
            None if ticks.is_multiple_of(BUDGET_EVERY) => over_budget(rt, task, job, log).await,
            None => None,
        };
        if let Some(why) = why {
            tracing::warn!(work_item = %task.work_item, job = job.id, pgid = group.pgid, "{why}; stopping the agent's process group");
            let _ = jobs::set_error(rt.db.writer(), job.id, &why).await;
            group.kill(grace).await;
            return Some(ended.await);
        }
    }
}

/// B-7: the spend of earlier runs plus what this run has spent so far.
async fn over_budget(
    rt: &Runtime,
    task: &TaskRow,
    job: &JobRow,
    log: &std::path::Path,
) -> Option<String> {
    let (task_cap, stage_cap) = (rt.settings.task_budget_usd, rt.settings.stage_budget_usd);
    if task_cap <= 0.0 && stage_cap <= 0.0 {
        return None;
    }
    let text = read_log(log).await;
    let now = usage::running_cost(&text, &prices_for(rt, Some(&task.project), &job.role));
    let spent_task = runs::cost_of(rt.db.reader(), task.id, None)
        .await
        .unwrap_or(0.0)
        + now;
    let spent_stage = runs::cost_of(rt.db.reader(), task.id, Some(job.stage.as_str()))
        .await
        .unwrap_or(0.0)
        + now;
    if task_cap > 0.0 && spent_task >= task_cap {
        return Some(format!(
            "{OVER_BUDGET}: task spent ${spent_task:.2} of ${task_cap:.2}"
        ));
    }
    if stage_cap > 0.0 && spent_stage >= stage_cap {
        return Some(format!(
            "{OVER_BUDGET}: {} stage spent ${spent_stage:.2} of ${stage_cap:.2}",
            job.stage
        ));
    }
    None
}

/// The exit code that an ending maps to (128 + signal, as a shell reports).
pub fn exit_code_of(ended: &Ended) -> i64 {
    match ended {
        Ended::Exited(c) => *c as i64,
        Ended::Signaled(s) => 128 + *s as i64,
        Ended::TimedOut => 124,
    }
}

/// Record the exit FIRST, then the usage read from the log.
pub async fn finish_run(
    rt: &Runtime,
    job: &JobRow,
    run_id: i64,
    ended: Ended,
) -> anyhow::Result<()> {
    runs::record_exit(
        rt.db.writer(),
        run_id,
        exit_code_of(&ended),
        rt.clock.now_ms(),
    )
    .await?;
    record_usage(rt, job, run_id).await;
    Ok(())
}

async fn record_usage(rt: &Runtime, job: &JobRow, run_id: i64) {
    let task = tasks::get(rt.db.reader(), job.task_id).await.ok().flatten();
    let wi = task
        .as_ref()
        .map(|t| t.work_item.clone())
        .unwrap_or_default();
    let log = rt.run_paths(&wi, job).log;
    let text = read_log(&log).await;
    let prices = prices_for(rt, task.as_ref().map(|t| t.project.as_str()), &job.role);
    let parsed = usage::parse(&text, &prices);
    if let Some(w) = &parsed.warning {
        tracing::warn!(job = job.id, "usage: {w}");
    }
    let row = parsed.usage.to_row();
    match runs::record_usage(rt.db.writer(), run_id, &row).await {
        Ok(()) => row.count(),
        Err(e) => tracing::warn!(job = job.id, error = %e, "usage not recorded"),
    }
}

/// An agent's log as text: its last [`untrusted::LOG_TAIL_BYTES`] (the
/// usage `result` line ends the log), read as untrusted input (a regular
/// file, no symlink followed, off the runtime). A log longer than that
/// prices a still-running agent by the messages in its tail only. Lossy:
/// one stray byte must not make the spend read as zero (the budget check
/// would switch itself off).
async fn read_log(path: &std::path::Path) -> String {
    untrusted::log_tail_text(path, untrusted::LOG_TAIL_BYTES).await
}

/// Prices for a run: output that names no model (Codex) is priced as the
/// role's configured model when the table knows it, not the table's default.
fn prices_for(rt: &Runtime, project: Option<&str>, role: &str) -> usage::PriceTable {
    let model = project
        .and_then(|p| rt.project(p))
        .map(|p| super::launcher::resolve(&rt.settings, p, role).model)
        .unwrap_or_else(|| rt.settings.agent_model.clone());
    rt.settings.prices.for_model(&model)
}

async fn work_item_of(rt: &Runtime, job: &JobRow) -> String {
    tasks::get(rt.db.reader(), job.task_id)
        .await
        .ok()
        .flatten()
        .map(|t| t.work_item)
        .unwrap_or_default()
}

/// After the exit is recorded: the idempotent outside steps, then the claim,
/// then the stage decision. Called by the monitor, the reaper (tier 2) and
/// start-up recovery; only the claim winner decides. Returns whether this
/// caller won the claim.
pub async fn complete(rt: &Runtime, job_id: i64, who: &str) -> anyhow::Result<bool> {
    let Some(job) = jobs::get(rt.db.reader(), job_id).await? else {
        return Ok(false);
    };
    if job.status != "running" || job.claimed_by.is_some() {
        return Ok(false);
    }
    let Some(run) = runs::latest_for_job(rt.db.reader(), job.id).await? else {
        return Ok(false);
    };
    let Some(exit) = run.exit_code else {
        return Ok(false);
    };
    let Some(task) = tasks::get(rt.db.reader(), job.task_id).await? else {
        return Ok(false);
    };
    let pushed = match rt.project(&task.project).cloned() {
        Some(project) => publish(rt, &job, &task, &project, &run).await,
        None => None,
    };
    // Staging ran on this head: the merge gate may skip its re-test for it
    // and for nothing else (F-18).
    if exit == 0
        && job.stage == Stage::DeployStaging
        && job.role == "deployer"
        && let Some(sha) = &pushed
    {
        tasks::set_validated_sha(rt.db.writer(), task.id, sha).await?;
    }
    if !jobs::claim(rt.db.writer(), job.id, who).await? {
        tracing::info!(
            job = job.id,
            who,
            "finalization already claimed by another actor: nothing to do"
        );
        return Ok(false);
    }
    decide(rt, &job, &task, exit).await?;
    Ok(true)
}

/// Commit and push the worktree, ensure the PR, post the finish and usage
/// comments. Each step is idempotent; a failure is logged and the decision
/// goes on (the reconciler and the next run converge).
async fn publish(
    rt: &Runtime,
    job: &JobRow,
    task: &TaskRow,
    project: &crate::config::Project,
    run: &runs::RunRow,
) -> Option<String> {
    let wi = &task.work_item;
    let msg = format!(
        "{}: {} ({} stage, attempt {})",
        job.role, wi, job.stage, job.attempt
    );
    // A STOP deletes the remote branch: a run ending at that moment must not
    // push it back.
    let stopped = match tasks::get(rt.db.reader(), task.id).await {
        Ok(Some(t)) => t.cancel_requested_at.is_some() || t.stage.is_terminal(),
        _ => true,
    };
    if stopped {
        tracing::info!(work_item = %wi, "task stopped: nothing is pushed");
        return None;
    }
    let pushed = match rt.workspace.prepare(project, wi).await {
        Ok(_) => rt.workspace.commit_and_push(project, wi, &msg).await,
        Err(e) => Err(e),
    };
    match &pushed {
        Ok(p) => {
            tracing::info!(work_item = %wi, sha = %p.sha, committed = p.committed, "worktree pushed")
        }
        Err(e) => tracing::warn!(work_item = %wi, error = %e, "commit/push failed"),
    }
    // B-10: with the local forge the pushed branch is the PR already.
    if pushed.is_ok() && project.forge_kind() == crate::config::ForgeKind::Gitea {
        let repo = ForgeRepo {
            project: project.name.clone(),
            full_name: project.gitea_repo.clone(),
            default_branch: project.default_branch.clone(),
            local_clone: rt.workspace.clone_dir(&project.name),
        };
        let branch = crate::git::branch_name(wi);
        if let Err(e) = rt
            .pipeline
            .forge
            .ensure_open_pr(&repo, &branch, &format!("{wi}: {}", task.title), "")
            .await
        {
            tracing::warn!(work_item = %wi, error = %e, "could not ensure an open PR");
        }
    }
    let links = artifact_links(task, project).await;
    let status = if run.exit_code == Some(0) {
        "✅ finished"
    } else {
        "❌ failed"
    };
    comment(
        rt,
        task,
        &format!("finish:{}", job.id),
        &format!(
            "<p>{} {status} (exit {}).</p>{links}",
            job.role,
            run.exit_code.unwrap_or(-1)
        ),
    )
    .await;
    let u = usage::Usage::of_run(run);
    comment(
        rt,
        task,
        &format!("usage:{}", run.id),
        &usage::usage_comment(&job.role, &u),
    )
    .await;
    pushed.ok().map(|p| p.sha)
}

/// Links to the artifact dir's top-level entries: listed without following
/// a symlink below the worktree, at most [`untrusted::MAX_ENTRIES`] names.
async fn artifact_links(task: &TaskRow, project: &crate::config::Project) -> String {
    let Some(wt) = &task.worktree else {
        return String::new();
    };
    let rel = std::path::Path::new("docs")
        .join("work-items")
        .join(&task.work_item);
    let names = match untrusted::list_dir(std::path::Path::new(wt), &rel, untrusted::MAX_ENTRIES)
        .await
    {
        Ok(names) => names,
        Err(e) => {
            if !e.is_not_found() {
                tracing::warn!(work_item = %task.work_item, error = %e, "artifact links left out");
            }
            return String::new();
        }
    };
    if names.is_empty() {
        return String::new();
    }
    let branch = crate::git::branch_name(&task.work_item);
    let items: String = names
        .iter()
        .map(|n| {
            format!(
                "<li>{}/src/branch/{branch}/docs/work-items/{}/{n}</li>",
                project.gitea_repo, task.work_item
            )
        })
        .collect();
    format!("<ul>{items}</ul>")
}

/// The stage decision of a claimed, finished run.
async fn decide(rt: &Runtime, job: &JobRow, task: &TaskRow, exit: i64) -> anyhow::Result<()> {
    let killed_for = job.error.clone().unwrap_or_default();
    if exit != 0 {
        // A STOP may have cancelled the job after our claim: then nothing
        // more happens for it (no retry for a cancelled task).
        if !jobs::transition(
            rt.db.writer(),
            job.id,
            "running",
            "failed",
            Some(&format!("exit {exit}")),
        )
        .await?
        {
            return Ok(());
        }
        if killed_for.starts_with(OVER_BUDGET) {
            tasks::set_hold(rt.db.writer(), task.id, Some(&killed_for)).await?;
            rt.alert(
                "budget_exceeded",
                &task.work_item,
                format!("{}: {killed_for}; task held", task.work_item),
            )
            .await;
            return Ok(());
        }
        // A stall, a tool error: the reason the run was stopped or deferred.
        let why = if killed_for.is_empty() {
            format!("the {} exited with {exit}", job.role)
        } else {
            killed_for
        };
        retry_or_hold(rt, job, &why).await;
        return Ok(());
    }
    if !jobs::transition(rt.db.writer(), job.id, "running", "done", None).await? {
        return Ok(());
    }
    let out = rt.pipeline.advance(task.id, "monitor").await?;
    tracing::info!(work_item = %task.work_item, job = job.id, ?out, "stage decision");
    match out {
        Outcome::Pending {
            stage: Stage::Analysis,
            ..
        } if brd_status(rt, task).await.as_deref() == Some("READY") => {
            // The BRD is ready: ask the person (F-02) and show In Review.
            if let Err(e) = rt.pipeline.set_status(task, "in_review", "monitor").await {
                tracing::warn!(work_item = %task.work_item, error = %e, "status not set");
            }
            let approve = &rt.settings.plane.statuses.approved;
            let reject = &rt.settings.plane.statuses.rejected;
            comment(rt, task, &format!("approval:{}", job.id), &format!(
                "<p>📋 The BRD is ready for review. Set <b>{approve}</b> to continue, or write the reason in a comment and set <b>{reject}</b>.</p>"
            ))
            .await;
        }
        Outcome::GateFailed {
            stage: Stage::Analysis,
            ..
        } if brd_status(rt, task).await.as_deref() == Some("NEEDS_INPUT") => {
            if let Err(e) = rt.pipeline.set_status(task, "needs_input", "monitor").await {
                tracing::warn!(work_item = %task.work_item, error = %e, "status not set");
            }
        }
        // The run ended cleanly but its artifact is missing or malformed: the
        // agent broke the contract; run it again with the reason.
        Outcome::GateFailed { reason, .. } | Outcome::Pending { reason, .. } => {
            retry_or_hold(rt, job, &reason).await
        }
        _ => {}
    }
    Ok(())
}

/// The BRD's status line (READY / NEEDS_INPUT): both mean the task now
/// waits for a person, not for another analyst run.
async fn brd_status(rt: &Runtime, task: &TaskRow) -> Option<String> {
    let input = inputs::load_artifacts(task, rt.settings.artifact_max_bytes).await;
    let text = input.artifacts.get(crate::domain::gates::BRD)?;
    crate::domain::verdict::VerdictLines::parse(text)
        .get("status")
        .ok()
        .map(str::to_string)
}

/// Retry the stage with attempt + 1 and the reason as context, up to the
/// configured maximum; then hold the task and alert (F-13).
pub async fn retry_or_hold(rt: &Runtime, job: &JobRow, why: &str) {
    let max = rt.settings.agent_max_attempts as i64;
    let wi = work_item_of(rt, job).await;
    if job.attempt < max {
        match jobs::enqueue(
            &rt.db,
            job.task_id,
            job.stage,
            &job.role,
            job.attempt + 1,
            why,
        )
        .await
        {
            Ok(q) => {
                tracing::info!(work_item = %wi, job = q.id(), attempt = job.attempt + 1, why, "retry queued")
            }
            Err(e) => tracing::error!(work_item = %wi, error = %e, "retry not queued"),
        }
        return;
    }
    let hold = format!("{} failed {} times: {why}", job.role, job.attempt);
    if let Err(e) = tasks::set_hold(rt.db.writer(), job.task_id, Some(&hold)).await {
        tracing::error!(work_item = %wi, error = %e, "hold not recorded");
    }
    rt.alert(
        "attempts_exhausted",
        &wi,
        format!("{wi}: {hold}; task held"),
    )
    .await;
}

/// Best-effort tracker comment with an idempotency key.
async fn comment(rt: &Runtime, task: &TaskRow, key: &str, html: &str) {
    let Some(item) = rt.pipeline.tracker_ref(task) else {
        return;
    };
    if let Err(e) = rt.pipeline.tracker.add_comment(&item, key, html).await {
        tracing::warn!(work_item = %task.work_item, key, error = %e, "comment not posted");
    }
}
