//! The merge gate (F-18, seed 002): at the end of deploy-staging, under the
//! project's merge lease (F-17), rebase the task branch onto the default
//! branch; skip the re-test when the rebase is a proven no-op (the default
//! branch is already in the tested HEAD); otherwise push the rebased feature
//! branch and re-run the project's test command in its own process group
//! with a timeout. A red re-test or a conflict rolls back to development
//! through the engine; a timeout or a busy lock is infra: it retries in place
//! a bounded number of times and stays on deploy-staging, then holds with one
//! alert. After a pass (re-tested or proven no-op) the project's security
//! scan runs on the same head (F-19, `security.rs`). A pass records the gate
//! at the task's stage version, which the deploy-staging exit gate requires.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};

use crate::agents::runtime::Runtime;
use crate::config::Project;
use crate::db::jobs::{self, JobRow};
use crate::db::{merge_lease, tasks};
use crate::domain::Stage;
use crate::git::{self, branch_name};
use crate::proc_group::{self, Ended};
use crate::status::StatusBlock;

use super::security;

/// The job role of a merge-gate run.
pub const ROLE: &str = "merge-gate";

#[derive(Debug, Default)]
pub struct MergeGateStats {
    pub runs: AtomicU64,
    pub skipped_retests: AtomicU64,
    pub passed: AtomicU64,
    pub red: AtomicU64,
    /// The security scan (F-19) reported findings.
    pub insecure: AtomicU64,
    pub conflict: AtomicU64,
    pub timeout: AtomicU64,
    pub lock_busy: AtomicU64,
    pub other: AtomicU64,
    pub infra_exhausted: AtomicU64,
}

#[async_trait]
impl StatusBlock for MergeGateStats {
    fn name(&self) -> &'static str {
        "merge_gate"
    }
    async fn snapshot(&self) -> Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "runs": g(&self.runs), "skipped_retests": g(&self.skipped_retests), "passed": g(&self.passed),
            "red": g(&self.red), "insecure": g(&self.insecure), "conflict": g(&self.conflict), "timeout": g(&self.timeout),
            "lock_busy": g(&self.lock_busy), "other": g(&self.other), "infra_exhausted": g(&self.infra_exhausted),
        })
    }
}

/// How a merge-gate run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Class {
    Pass {
        retested: bool,
    },
    Red(String),
    /// The security scan (F-19) found problems in the code.
    Insecure(String),
    Conflict(String),
    Timeout,
    LockBusy(String),
    Other(String),
}

impl Class {
    fn is_infra(&self) -> bool {
        matches!(self, Class::Timeout | Class::LockBusy(_) | Class::Other(_))
    }
}

/// Output that says the run fought over a lock, not over the code.
pub(super) const LOCK_MARKERS: &[&str] = &[
    "database is locked",
    "Blocking waiting for file lock",
    "could not acquire lock",
    "Resource temporarily unavailable",
    "index.lock",
];

/// Classify a finished re-test (pure, for tests).
pub fn classify(ended: Ended, output: &str) -> Class {
    match ended {
        Ended::Exited(0) => Class::Pass { retested: true },
        Ended::TimedOut => Class::Timeout,
        _ if LOCK_MARKERS.iter().any(|m| output.contains(m)) => {
            Class::LockBusy(format!("the re-test met a busy lock ({ended:?})"))
        }
        // The shell could not run the command at all, or the runner died by
        // a signal: not a verdict on the code.
        Ended::Exited(126 | 127) | Ended::Signaled(_) | Ended::Exited(proc_group::EXIT_UNKNOWN) => {
            Class::Other(format!("the re-test did not run properly ({ended:?})"))
        }
        Ended::Exited(code) => Class::Red(format!("the re-test failed (exit {code})")),
    }
}

/// Run one merge-gate job to its decision. Never panics.
pub async fn run(rt: Runtime, stats: Arc<MergeGateStats>, job: JobRow) {
    if let Err(e) = run_inner(&rt, &stats, &job).await {
        tracing::error!(job = job.id, error = %e, "merge gate could not run");
        let class = Class::Other(format!("the merge gate could not run: {e}"));
        let _ = finish(&rt, &stats, &job, class).await;
    }
}

async fn run_inner(rt: &Runtime, stats: &MergeGateStats, job: &JobRow) -> anyhow::Result<()> {
    // Merge-gate jobs are queued at deploy-staging: a task elsewhere moved on.
    let Some((task, project)) = rt.job_context(job).await? else {
        return Ok(());
    };
    if !merge_lease::acquire(rt.db.writer(), &project.name, task.id, rt.clock.now_ms()).await? {
        // Another task of the project is between its merge gate and done
        // (F-17): wait in the queue, without spending an attempt.
        jobs::transition(rt.db.writer(), job.id, "running", "queued", None).await?;
        tracing::debug!(work_item = %task.work_item, "merge lease busy: merge gate waits");
        return Ok(());
    }
    stats.runs.fetch_add(1, Ordering::Relaxed);
    let (class, wt) = rebase_and_retest(rt, stats, &project, &task, job).await?;
    // The security scan (F-19) judges the head that passed, re-tested or not.
    let class = match class {
        Class::Pass { .. } => security::scan(rt, &project, job, &wt, &task.work_item)
            .await
            .unwrap_or(class),
        other => other,
    };
    finish(rt, stats, job, class).await
}

async fn rebase_and_retest(
    rt: &Runtime,
    stats: &MergeGateStats,
    project: &Project,
    task: &crate::db::tasks::TaskRow,
    job: &JobRow,
) -> anyhow::Result<(Class, std::path::PathBuf)> {
    let work_item = task.work_item.as_str();
    let wt = rt.workspace.prepare(project, work_item).await?;
    let base = format!("origin/{}", project.default_branch);
    let head = git::git(&wt, &["rev-parse", "HEAD"])
        .await?
        .trim()
        .to_string();
    // Proven no-op: the default branch is already in HEAD, and HEAD is the
    // very commit staging (or an earlier green re-test) validated. A head
    // rebased by a run whose re-test did not pass is not validated.
    let validated = task.validated_sha.as_deref() == Some(head.as_str());
    if validated
        && git::git(&wt, &["merge-base", "--is-ancestor", &base, "HEAD"])
            .await
            .is_ok()
    {
        stats.skipped_retests.fetch_add(1, Ordering::Relaxed);
        return Ok((Class::Pass { retested: false }, wt));
    }
    if let Err(e) = git::git(
        &wt,
        &[
            "-c",
            "user.name=orchestrator",
            "-c",
            "user.email=orchestrator@localhost",
            "rebase",
            "--quiet",
            &base,
        ],
    )
    .await
    {
        let _ = git::git(&wt, &["rebase", "--abort"]).await;
        let conflict = Class::Conflict(format!("rebase onto {base} conflicts: {e}"));
        return Ok((conflict, wt));
    }
    // The rebased feature branch replaces the old one on the remote; only
    // the task branch is ever force-pushed, with a lease on what we fetched.
    let branch = branch_name(work_item);
    git::git(
        &wt,
        &[
            "push",
            "--quiet",
            "--force-with-lease",
            "origin",
            &format!("HEAD:refs/heads/{branch}"),
        ],
    )
    .await?;
    if project.test_command.trim().is_empty() {
        tracing::warn!(
            work_item,
            "no test_command: the merge gate cannot re-test; passing on the rebase alone"
        );
        // The rebased head is the one this gate passed: the deploy merges
        // it (an unrecorded rebase would read as "moved after the gate").
        let head = git::git(&wt, &["rev-parse", "HEAD"])
            .await?
            .trim()
            .to_string();
        tasks::set_validated_sha(rt.db.writer(), task.id, &head).await?;
        return Ok((Class::Pass { retested: false }, wt));
    }
    let out = run_in_group(
        rt,
        job,
        &project.name,
        &wt,
        work_item,
        &project.test_command,
    )
    .await;
    let class = match out {
        Ok(o) => classify(o.ended, &o.output),
        Err(e) => Class::Other(format!("the re-test could not start: {e}")),
    };
    if class == (Class::Pass { retested: true }) {
        let head = git::git(&wt, &["rev-parse", "HEAD"])
            .await?
            .trim()
            .to_string();
        tasks::set_validated_sha(rt.db.writer(), task.id, &head).await?;
    }
    Ok((class, wt))
}

/// Run a gate command in the worktree, in its own process group with the
/// re-test's timeout, its group id on the job (tier 3 and a restart find it).
/// The command runs the agent's change: it is confined like an agent (B-12).
pub(super) async fn run_in_group(
    rt: &Runtime,
    job: &JobRow,
    project: &str,
    wt: &std::path::Path,
    work_item: &str,
    command: &str,
) -> Result<proc_group::Outcome, proc_group::ProcError> {
    let confined =
        rt.confine(command, project, work_item, wt)
            .map_err(|e| proc_group::ProcError::Spawn {
                command: command.to_string(),
                cwd: wt.to_path_buf(),
                source: std::io::Error::other(e.to_string()),
            })?;
    let mut env = vec![("ORCH_WORK_ITEM".to_string(), work_item.to_string())];
    env.extend(confined.env);
    let spec = proc_group::Spec {
        command: command.to_string(),
        cwd: wt.to_path_buf(),
        env,
        env_remove: crate::config::SECRET_ENV_KEYS
            .iter()
            .map(|k| k.to_string())
            .collect(),
        log: None,
        survives_drop: false,
        sandbox: confined.sandbox,
    };
    let record_pgid = |group: proc_group::Owned| rt.record_pgid(job, group);
    proc_group::run_observed(
        &spec,
        Duration::from_secs(rt.settings.merge_retest_timeout_s),
        Duration::from_secs(rt.settings.agent_kill_grace_s),
        record_pgid,
    )
    .await
}

/// Claim the job and act on the class.
async fn finish(
    rt: &Runtime,
    stats: &MergeGateStats,
    job: &JobRow,
    class: Class,
) -> anyhow::Result<()> {
    if !jobs::claim(rt.db.writer(), job.id, ROLE).await? {
        return Ok(());
    }
    let Some(task) = tasks::get(rt.db.reader(), job.task_id).await? else {
        return Ok(());
    };
    let counter = match &class {
        Class::Pass { .. } => &stats.passed,
        Class::Red(_) => &stats.red,
        Class::Insecure(_) => &stats.insecure,
        Class::Conflict(_) => &stats.conflict,
        Class::Timeout => &stats.timeout,
        Class::LockBusy(_) => &stats.lock_busy,
        Class::Other(_) => &stats.other,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    tracing::info!(work_item = %task.work_item, job = job.id, ?class, "merge gate decided");
    match class {
        Class::Pass { .. } => {
            jobs::transition(rt.db.writer(), job.id, "running", "done", None).await?;
            if tasks::set_merge_gate_passed(rt.db.writer(), task.id, task.stage_version).await? {
                rt.pipeline.advance(task.id, ROLE).await?;
            }
        }
        Class::Red(why) | Class::Insecure(why) | Class::Conflict(why) => {
            jobs::transition(rt.db.writer(), job.id, "running", "failed", Some(&why)).await?;
            merge_lease::release(rt.db.writer(), &task.project, task.id).await?;
            let out = rt
                .pipeline
                .engine
                .rollback(task.id, Stage::DeployStaging, ROLE, &why)
                .await?;
            rt.pipeline.after_move(task.id, &out).await?;
        }
        infra => {
            let why = match &infra {
                Class::Timeout => format!(
                    "the re-test timed out after {}s",
                    rt.settings.merge_retest_timeout_s
                ),
                Class::LockBusy(w) | Class::Other(w) => w.clone(),
                _ => unreachable!("handled above"),
            };
            debug_assert!(infra.is_infra());
            jobs::transition(rt.db.writer(), job.id, "running", "failed", Some(&why)).await?;
            if (job.attempt as u64) <= rt.settings.merge_gate_infra_retries {
                jobs::enqueue(
                    &rt.db,
                    task.id,
                    Stage::DeployStaging,
                    ROLE,
                    job.attempt + 1,
                    &why,
                )
                .await?;
                tracing::warn!(work_item = %task.work_item, attempt = job.attempt, "merge gate infra failure: retrying in place ({why})");
            } else {
                stats.infra_exhausted.fetch_add(1, Ordering::Relaxed);
                let hold = format!(
                    "merge gate: infra failures exhausted ({} runs): {why}",
                    job.attempt
                );
                tasks::set_hold(rt.db.writer(), task.id, Some(&hold)).await?;
                rt.alert(
                    "merge_gate_infra_exhausted",
                    &task.work_item,
                    format!("{}: {hold}", task.work_item),
                )
                .await;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert_eq!(
            classify(Ended::Exited(0), ""),
            Class::Pass { retested: true }
        );
        assert_eq!(classify(Ended::TimedOut, "anything"), Class::Timeout);
        assert!(matches!(
            classify(Ended::Exited(101), "test failed"),
            Class::Red(_)
        ));
        assert!(matches!(
            classify(
                Ended::Exited(101),
                "Blocking waiting for file lock on build directory"
            ),
            Class::LockBusy(_)
        ));
        assert!(matches!(
            classify(Ended::Exited(127), "sh: cargo: not found"),
            Class::Other(_)
        ));
        assert!(matches!(classify(Ended::Signaled(9), ""), Class::Other(_)));
        assert!(Class::Timeout.is_infra() && !Class::Red(String::new()).is_infra());
    }
}
