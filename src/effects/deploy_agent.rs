//! The production deploy by the deployer agent (F-23), for a project with no
//! `deploy_command`: part of the `prod_deploy` effect, so it runs once per
//! transition under the lease and the journal, after the merge.
//!
//! The agent runs with the agent contract (role `deployer`, stage `deploy`,
//! the prompt file, the artifact dir in the task worktree) through `sh -c`
//! in its own process group with `ORCH_DEPLOY_TIMEOUT_S`, like any command of
//! the deploy path. Its verdict is the `deploy_status:` line of
//! `15-deploy-report.md`; SUCCESS needs that line AND exit 0. A missing or
//! contradictory verdict is a FAILURE: a deploy nobody can vouch for holds
//! the task (seed 004, ORCH-093). The run is recorded with its usage.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::deploy_deps::{DeployDeps, write_durably};
use crate::agents::launcher;
use crate::agents::prompts::{self, PromptInput};
use crate::agents::usage;
use crate::config::Project;
use crate::db::now_ms;
use crate::db::runs::{self, NewRun};
use crate::domain::gates::DEPLOY_REPORT;
use crate::domain::verdict::VerdictLines;
use crate::git::Workspace;
use crate::proc_group::Ended;
use crate::stage_engine::inputs::{artifact_dir, load_artifacts};
use crate::stage_engine::{EffectCtx, EffectError, EffectResult};

/// The role and the stage the agent runs as.
const ROLE: &str = "deployer";

/// How the deploy ended, from the exit and the report's verdict (pure).
pub fn verdict(ended: Ended, report: Option<&str>) -> Result<(), String> {
    let status = match report.map(|r| {
        VerdictLines::parse(r)
            .get("deploy_status")
            .map(str::to_string)
    }) {
        None => Err(format!("the agent wrote no {DEPLOY_REPORT}")),
        Some(Err(e)) => Err(format!("{DEPLOY_REPORT}: {e}")),
        Some(Ok(s)) => Ok(s),
    };
    match (ended, status) {
        (Ended::Exited(0), Ok(s)) if s == "SUCCESS" => Ok(()),
        (Ended::Exited(0), Ok(s)) => Err(format!("the agent reported deploy_status: {s}")),
        (Ended::Exited(0), Err(e)) => Err(e),
        (Ended::TimedOut, _) => Err("the agent timed out; its process group was killed".into()),
        (Ended::Signaled(n), _) => Err(format!("the agent was killed by signal {n}")),
        (Ended::Exited(n), _) => Err(format!("the agent exited {n}")),
    }
}

/// The deployer's report in the worktree, read as untrusted input (a
/// regular file, no symlink anywhere below the worktree, capped, off the
/// runtime). `Ok(None)` when it was not written; `Err` names why it was
/// refused (the verdict is then a FAILURE naming the file).
pub(super) async fn read_report(
    deps: &DeployDeps,
    worktree: &Path,
    work_item: &str,
) -> Result<Option<String>, String> {
    let rel = Path::new("docs/work-items")
        .join(work_item)
        .join(DEPLOY_REPORT);
    let max = deps.settings.artifact_max_bytes;
    match crate::untrusted::read_file(worktree, &rel, max, crate::untrusted::READ_TIMEOUT).await {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(format!("the deploy report was refused: {e}")),
    }
}

pub(super) async fn deploy(
    deps: &DeployDeps,
    ctx: &EffectCtx,
    project: &Project,
) -> Result<EffectResult, EffectError> {
    let task = &ctx.task;
    let wi = task.work_item.as_str();
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        EffectError::Failed(format!("deploy_status: FAILURE ({what}: {e})"))
    };
    // The agent works in the task worktree (the contract), where the
    // earlier artifacts are; after the merge its head is what main received.
    let recorded = task.worktree.as_deref().map(PathBuf::from);
    let wt = match recorded.filter(|p| p.is_dir()) {
        Some(wt) => wt,
        None => {
            let wt = Workspace::new(&deps.settings.workspace_root)
                .prepare(project, wi)
                .await
                .map_err(|e| failed("preparing the worktree for the deployer agent", &e))?;
            // Recorded, so a restart that adopts this run finds its report.
            let branch = crate::git::branch_name(wi);
            if let Err(e) = crate::db::tasks::set_workspace(
                deps.db.writer(),
                task.id,
                &branch,
                &wt.to_string_lossy(),
            )
            .await
            {
                tracing::warn!(work_item = %wi, error = %e, "the deployer's worktree was not recorded");
            }
            wt
        }
    };
    let artifacts = artifact_dir(&wt, wi);
    // No link an earlier agent planted in the worktree is followed.
    crate::untrusted::ensure_dir(&wt, &Path::new("docs/work-items").join(wi))
        .await
        .map_err(|e| failed("creating the artifact dir", &e))?;
    let report_path = artifacts.join(DEPLOY_REPORT);
    // A report of an earlier attempt must not pass for this run's verdict.
    match tokio::fs::remove_file(&report_path).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(failed("removing an earlier deploy report", &e)),
    }

    let spec = launcher::resolve(&deps.settings, project, ROLE);
    let stage = ctx.from.as_str();
    let earlier = load_artifacts(task, deps.settings.artifact_max_bytes)
        .await
        .artifacts;
    let artifact_rel = format!("docs/work-items/{wi}/");
    let prompt = prompts::compose(&PromptInput {
        role: ROLE,
        stage,
        work_item: wi,
        title: &task.title,
        description: &task.description,
        artifact_dir: &artifact_rel,
        artifacts: &earlier,
        feedback: "",
        attempt: 1,
    });
    let prompt_file = deps.marker(&ctx.transition_key, ".deployer-prompt.md");
    let log = deps.marker(&ctx.transition_key, ".deployer.log");
    write_durably(&prompt_file, &prompt)
        .await
        .map_err(|e| failed("writing the prompt file", &e))?;
    let _ = tokio::fs::remove_file(&log).await;

    let path = |p: &Path| p.to_string_lossy().into_owned();
    // The deploy path's variables (`DeployDeps::command_spec`), plus what
    // only an agent gets; the artifact dir is the one prepared above.
    let mut cmd = deps.command_spec(ctx, project, &wt, &spec.command);
    cmd.env.retain(|(k, _)| k != "ORCH_ARTIFACT_DIR");
    cmd.env.extend([
        ("ORCH_ARTIFACT_DIR".to_string(), path(&artifacts)),
        ("ORCH_PROMPT_FILE".to_string(), path(&prompt_file)),
        ("ORCH_MODEL".to_string(), spec.model.clone()),
        ("ORCH_EFFORT".to_string(), spec.effort.clone()),
        ("ORCH_ATTEMPT".to_string(), "1".to_string()),
    ]);
    cmd.log = Some(log.clone());
    let timeout = Duration::from_secs(deps.settings.deploy_timeout_s);
    let started = now_ms();
    tracing::info!(work_item = %wi, command = %spec.command, model = %spec.model, "production deploy by the deployer agent started");
    // Adoptable: a daemon crash does not stop it, and a restart waits for it
    // instead of deploying again (`adopt.rs`).
    let run = super::adopt::run(deps, ctx, "", cmd, timeout)
        .await
        .map_err(|e| failed("the deployer agent could not start", &e))?;

    // Its log is the agent's output: its tail, bounded, never followed.
    let output = crate::untrusted::log_tail_text(&log, crate::untrusted::LOG_TAIL_BYTES).await;
    let parsed = usage::parse(&output, &deps.settings.prices.for_model(&spec.model));
    if let Some(w) = &parsed.warning {
        tracing::warn!(work_item = %wi, "deployer usage: {w}");
    }
    let u = &parsed.usage;
    let recorded = runs::record_effect_run(
        &deps.db,
        &NewRun {
            job_id: 0,
            task_id: task.id,
            role: ROLE,
            stage,
            attempt: 1,
            model: &spec.model,
            effort: &spec.effort,
            command: &spec.command,
            log_path: &path(&log),
            started_at: started,
        },
        crate::agents::monitor::exit_code_of(&run.ended),
        now_ms(),
        &u.to_row(),
        "prod_deploy",
    )
    .await;
    if let Err(e) = recorded {
        tracing::warn!(work_item = %wi, error = %e, "the deployer agent's run was not recorded");
    }

    let secs = run.duration.as_secs_f64();
    let judged = match read_report(deps, &wt, wi).await {
        Ok(report) => verdict(run.ended, report.as_deref()),
        Err(why) => Err(why),
    };
    match judged {
        Ok(()) => {
            tracing::info!(work_item = %wi, secs, cost_usd = u.cost_usd, "deployer agent: deploy_status SUCCESS");
            Ok("deploy_status: SUCCESS (deployer agent)".to_string())
        }
        Err(why) => {
            // The agent ran: production may have changed. Unknown, held for
            // a person (B-13), never re-run by the daemon.
            tracing::warn!(work_item = %wi, secs, "deployer agent: deploy_status FAILURE: {why}");
            let info = super::adopt::info(deps, ctx, "").await;
            Err(EffectError::Unknown(format!(
                "deploy_status: FAILURE ({why}); {info}. Check production, then set Confirm Deploy to run it again"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_needs_the_verdict_and_exit_zero() {
        let ok = "# Deploy\n\ndeploy_status: SUCCESS\n";
        assert_eq!(verdict(Ended::Exited(0), Some(ok)), Ok(()));
        assert!(verdict(Ended::Exited(1), Some(ok)).is_err(), "exit wins");
        assert!(verdict(Ended::TimedOut, Some(ok)).is_err());
        assert!(verdict(Ended::Signaled(9), Some(ok)).is_err());
        let bad = verdict(Ended::Exited(0), Some("deploy_status: FAILURE\n")).unwrap_err();
        assert!(bad.contains("FAILURE"), "{bad}");
        let none = verdict(Ended::Exited(0), None).unwrap_err();
        assert!(none.contains(DEPLOY_REPORT), "{none}");
        let missing = verdict(Ended::Exited(0), Some("all good\n")).unwrap_err();
        assert!(missing.contains("deploy_status"), "{missing}");
        let both = "deploy_status: SUCCESS\ndeploy_status: FAILURE\n";
        assert!(
            verdict(Ended::Exited(0), Some(both)).is_err(),
            "contradictory"
        );
    }
}
