//! Built-in runners that stand in for an agent and write the same artifact
//! with the same verdict lines, so the same gate judges them:
//! - the deterministic tester (F-20, seed 001 ORCH-116): the project's
//!   `test_command` plus optional read-only smoke GETs → `13-test-report.md`;
//! - the staging command (F-22): `staging_command` → `14-staging-report.md`.
//!
//! Exit 0 → PASS/SUCCESS, non-zero → FAIL/FAILURE. A tool error (command
//! not found, not executable, the runner killed, a timeout) writes no
//! verdict at all: the run reports exit 127 and the job defers and re-queues;
//! a tool error is never read as FAIL.

use std::path::Path;
use std::time::Duration;

use super::runtime::Runtime;
use crate::config::Project;
use crate::db::jobs::{self, JobRow};
use crate::db::runs::{self, NewRun};
use crate::db::tasks::TaskRow;
use crate::domain::Stage;
use crate::domain::gates::{STAGING_REPORT, TEST_REPORT};
use crate::proc_group::{self, Ended};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    Tester,
    Staging,
}

/// The runner a job uses instead of an agent, if any.
pub fn builtin_for(project: &Project, job: &JobRow) -> Option<Builtin> {
    match (job.role.as_str(), job.stage) {
        ("tester", Stage::Testing) if project.deterministic_tester => Some(Builtin::Tester),
        ("deployer", Stage::DeployStaging) if !project.staging_command.trim().is_empty() => {
            Some(Builtin::Staging)
        }
        _ => None,
    }
}

/// The exit code that marks a tool error (the shell's "command not found").
pub const TOOL_ERROR: i32 = 127;

/// Count tests from common runner summaries (`N passed`), summed over every
/// summary line (cargo prints one per test binary).
pub fn tests_counted(output: &str) -> Option<u64> {
    let words: Vec<&str> = output
        .split(|c: char| c.is_whitespace() || c == ',' || c == ';')
        .collect();
    let mut total = 0u64;
    let mut seen = false;
    for w in words.windows(2) {
        if w[1].starts_with("passed")
            && let Ok(n) = w[0].parse::<u64>()
        {
            total += n;
            seen = true;
        }
    }
    seen.then_some(total)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Read-only smoke checks: every URL must answer 2xx to a GET.
async fn smoke(urls: &[String]) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    for url in urls {
        match client.get(url).send().await {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => return Err(format!("smoke GET {url} answered {}", r.status())),
            Err(e) => return Err(format!("smoke GET {url} failed: {e}")),
        }
    }
    Ok(())
}

/// Run the built-in for `job` in the worktree: one `agent_runs` row, the
/// output in the run's log, the report in the artifact dir. Returns the run
/// id and how the run ended (exit 0 when a verdict was written).
pub async fn run(
    rt: &Runtime,
    which: Builtin,
    job: &JobRow,
    task: &TaskRow,
    project: &Project,
    worktree: &Path,
) -> anyhow::Result<(i64, Ended)> {
    let command = match which {
        Builtin::Tester => project.test_command.clone(),
        Builtin::Staging => project.staging_command.clone(),
    };
    let paths = rt.run_paths(&task.work_item, job);
    tokio::fs::create_dir_all(&paths.dir).await?;
    let run_id = runs::insert(
        rt.db.writer(),
        &NewRun {
            job_id: job.id,
            task_id: task.id,
            role: &job.role,
            stage: job.stage.as_str(),
            attempt: job.attempt,
            model: "builtin",
            effort: "",
            command: &command,
            log_path: &paths.log.to_string_lossy(),
            started_at: rt.clock.now_ms(),
        },
    )
    .await?;
    let dir = worktree
        .join("docs")
        .join("work-items")
        .join(&task.work_item);
    if command.trim().is_empty() {
        tracing::error!(work_item = %task.work_item, "deterministic tester without a test_command: tool error");
        return Ok((run_id, Ended::Exited(TOOL_ERROR)));
    }
    let started = std::time::Instant::now();
    // The tester runs the agent's change (its tests): confined like an
    // agent. The staging command is the operator's, with its credentials.
    let confined = if which == Builtin::Tester {
        match rt.confine(&command, &project.name, &task.work_item, worktree) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(work_item = %task.work_item, error = %e, "tester not started");
                return Ok((run_id, Ended::Exited(TOOL_ERROR)));
            }
        }
    } else {
        Default::default()
    };
    let mut spec = proc_group::Spec {
        command: command.clone(),
        cwd: worktree.to_path_buf(),
        env: vec![
            ("ORCH_WORK_ITEM".into(), task.work_item.clone()),
            (
                "ORCH_ARTIFACT_DIR".into(),
                dir.to_string_lossy().into_owned(),
            ),
        ],
        env_remove: crate::config::SECRET_ENV_KEYS
            .iter()
            .map(|k| k.to_string())
            .collect(),
        log: Some(paths.log.clone()),
        survives_drop: false,
        sandbox: confined.sandbox,
    };
    spec.env.extend(confined.env);
    let timeout = Duration::from_secs(rt.settings.command_timeout_s);
    let grace = Duration::from_secs(rt.settings.agent_kill_grace_s);
    // The group id goes on the job, like an agent's: a STOP (F-25), tier 3
    // and a restarted daemon stop a built-in by it.
    let record_pgid = |group: proc_group::Owned| rt.record_pgid(job, group);
    let outcome = match proc_group::run_observed(&spec, timeout, grace, record_pgid).await {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(work_item = %task.work_item, error = %e, "runner could not start: tool error");
            let _ = jobs::set_error(rt.db.writer(), job.id, &format!("tool error: {e}")).await;
            return Ok((run_id, Ended::Exited(TOOL_ERROR)));
        }
    };
    // The command is the project's code: its output is untrusted input,
    // read from its last LOG_TAIL_BYTES (the summary lines end it).
    let output =
        crate::untrusted::log_tail_text(&paths.log, crate::untrusted::LOG_TAIL_BYTES).await;
    let code = match outcome.ended {
        Ended::Exited(c) if c != 126 && c != TOOL_ERROR && c != proc_group::EXIT_UNKNOWN => c,
        other => {
            let why = format!("tool error: {command:?} ended {other:?}");
            tracing::warn!(work_item = %task.work_item, "{why}; deferring, no verdict written");
            let _ = jobs::set_error(rt.db.writer(), job.id, &why).await;
            return Ok((run_id, Ended::Exited(TOOL_ERROR)));
        }
    };
    let mut pass = code == 0;
    let mut notes = Vec::new();
    if pass && which == Builtin::Tester && !project.smoke_urls.is_empty() {
        if let Err(e) = smoke(&project.smoke_urls).await {
            pass = false;
            notes.push(e);
        } else {
            notes.push(format!(
                "smoke: {} URL(s) answered 2xx",
                project.smoke_urls.len()
            ));
        }
    }
    let took = started.elapsed().as_secs_f64();
    let report = match which {
        Builtin::Tester => {
            let verdict = if pass { "PASS" } else { "FAIL" };
            let (count, count_note) = match tests_counted(&output) {
                Some(n) if n > 0 => (n, String::new()),
                _ => (
                    1,
                    " (the output names no count: the suite counts as one)".to_string(),
                ),
            };
            format!(
                "# Test report (deterministic runner)\n\ncommand: `{command}`\nexit code: {code}, {took:.1}s{count_note}\n{}\n\n```\n{}\n```\n\nresult: {verdict}\nstatus: {verdict}\ntests_run: {count}\n",
                notes.join("\n"),
                tail(&output, 40)
            )
        }
        Builtin::Staging => {
            let verdict = if pass { "SUCCESS" } else { "FAILURE" };
            format!(
                "# Staging report (staging command)\n\ncommand: `{command}`\nexit code: {code}, {took:.1}s\n\n```\n{}\n```\n\nstaging_status: {verdict}\n",
                tail(&output, 40)
            )
        }
    };
    let file = match which {
        Builtin::Tester => TEST_REPORT,
        Builtin::Staging => STAGING_REPORT,
    };
    // The worktree is the agent's: a link it planted is never written through.
    let rel = Path::new("docs/work-items")
        .join(&task.work_item)
        .join(file);
    crate::untrusted::write_file(worktree, &rel, report.into_bytes()).await?;
    tracing::info!(work_item = %task.work_item, ?which, pass, code, "built-in runner wrote its report");
    Ok((run_id, Ended::Exited(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_tests_from_runner_summaries() {
        let cargo = "test result: ok. 12 passed; 0 failed; 0 ignored\n...\ntest result: ok. 3 passed; 0 failed";
        assert_eq!(tests_counted(cargo), Some(15));
        assert_eq!(
            tests_counted("===== 5 passed, 1 skipped in 0.2s ====="),
            Some(5)
        );
        assert_eq!(tests_counted("all good"), None);
    }
}
