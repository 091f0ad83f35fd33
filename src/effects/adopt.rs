//! A production deploy (the `deploy_command` or the deployer agent) is not
//! stopped by a daemon crash: its process group lives on. Before this, a
//! restart re-ran the deploy while the first one could still be running:
//! two deploys at once. Now a small shell wrapper records each run's
//! process group before the command starts (`<key>.pgid`) and its exit code
//! when it ends (`<key>.exit`), so the
//! `prod_deploy` reconcile after a restart adopts it: waits for a group
//! still running (up to `ORCH_DEPLOY_TIMEOUT_S` from its start, then kills
//! it), and judges the recorded exit instead of deploying again. Only a run
//! that vanished without a recorded exit (the machine rebooted) is re-run.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use super::deploy::DeployDeps;
use crate::proc_group::{self, Outcome, ProcError, Spec};
use crate::stage_engine::{EffectCtx, EffectError};

/// Records its group (it leads it: `$$` is the pgid) BEFORE the command
/// starts, then runs the command and records its exit. A record written by
/// the daemon after the spawn would race a crash in the first milliseconds.
/// The command comes in through the environment, so it needs no quoting.
const WRAPPER: &str = r#"printf '%s' "$$" > "$ORCH_DEPLOY_PGID_FILE" || exit 126; sh -c "$ORCH_DEPLOY_CMD"; ec=$?; printf '%s' "$ec" > "$ORCH_DEPLOY_EXIT_FILE"; exit $ec"#;

/// How often an adopted group is checked.
const POLL: Duration = Duration::from_millis(200);

/// What a restart finds of an earlier run of the same transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Earlier {
    /// No run was started (or its record was consumed).
    None,
    /// It ended with this exit code (128 + n for a signal).
    Exited(i32),
    /// Its group is gone and it recorded no exit.
    Vanished,
    /// It outlived its timeout after the restart and was killed.
    TimedOut,
}

struct Files {
    pgid: PathBuf,
    exit: PathBuf,
}

fn files(deps: &DeployDeps, ctx: &EffectCtx) -> Files {
    Files {
        pgid: deps.marker(&ctx.transition_key, ".pgid"),
        exit: deps.marker(&ctx.transition_key, ".exit"),
    }
}

/// Run `spec` through the wrapper in its own group, recording the group
/// before waiting and the exit when it ends.
pub async fn run(
    deps: &DeployDeps,
    ctx: &EffectCtx,
    mut spec: Spec,
    timeout: Duration,
) -> Result<Outcome, ProcError> {
    let f = files(deps, ctx);
    forget(deps, ctx).await;
    spec.env.push((
        "ORCH_DEPLOY_CMD".to_string(),
        std::mem::take(&mut spec.command),
    ));
    spec.env.push((
        "ORCH_DEPLOY_EXIT_FILE".to_string(),
        f.exit.to_string_lossy().into_owned(),
    ));
    spec.env.push((
        "ORCH_DEPLOY_PGID_FILE".to_string(),
        f.pgid.to_string_lossy().into_owned(),
    ));
    spec.command = WRAPPER.to_string();
    if let Some(dir) = f.pgid.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|source| ProcError::Spawn {
                command: spec.command.clone(),
                cwd: dir.to_path_buf(),
                source,
            })?;
    }
    let grace = Duration::from_secs(deps.settings.agent_kill_grace_s);
    proc_group::run(&spec, timeout, grace).await
}

/// Drop the record of earlier runs, so the next reconcile deploys afresh.
pub async fn forget(deps: &DeployDeps, ctx: &EffectCtx) {
    let f = files(deps, ctx);
    for p in [&f.pgid, &f.exit] {
        let _ = tokio::fs::remove_file(p).await;
    }
}

/// After a restart: find the earlier run of this transition; wait for it if
/// its group still runs. Errors only when the record cannot be read.
pub async fn earlier(deps: &DeployDeps, ctx: &EffectCtx) -> Result<Earlier, EffectError> {
    let f = files(deps, ctx);
    let read = |e: std::io::Error, p: &PathBuf| {
        EffectError::Unknown(format!("cannot read {}: {e}", p.display()))
    };
    let (pgid, started) = match tokio::fs::read_to_string(&f.pgid).await {
        Ok(text) => {
            let started = tokio::fs::metadata(&f.pgid)
                .await
                .and_then(|m| m.modified())
                .unwrap_or_else(|_| SystemTime::now());
            (text.trim().parse::<i32>().ok(), started)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Earlier::None),
        Err(e) => return Err(read(e, &f.pgid)),
    };
    let timeout = Duration::from_secs(deps.settings.deploy_timeout_s);
    let mut timed_out = false;
    // Only our wrapper's group is waited for (or killed): a pid reused by
    // an unrelated process while the daemon was down is left alone.
    let ours = pgid.filter(|p| *p > 1 && leads_our_run(*p, &f.pgid));
    if let Some(pgid) = ours {
        if proc_group::group_alive(pgid) {
            tracing::warn!(work_item = %ctx.task.work_item, pgid, "a deploy started before the restart still runs: waiting for it instead of deploying again");
        }
        while proc_group::group_alive(pgid) {
            if started.elapsed().unwrap_or_default() >= timeout {
                proc_group::kill_group(pgid, Duration::from_secs(deps.settings.agent_kill_grace_s))
                    .await;
                timed_out = true;
                break;
            }
            tokio::time::sleep(POLL).await;
        }
    }
    match tokio::fs::read_to_string(&f.exit).await {
        Ok(text) => Ok(match text.trim().parse::<i32>() {
            Ok(code) => Earlier::Exited(code),
            Err(_) => Earlier::Vanished,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(if timed_out {
            Earlier::TimedOut
        } else {
            Earlier::Vanished
        }),
        Err(e) => Err(read(e, &f.exit)),
    }
}

/// Whether `pgid`'s leader is the wrapper that wrote `pgid_file`: its
/// environment names that very file.
fn leads_our_run(pgid: i32, pgid_file: &std::path::Path) -> bool {
    let Ok(environ) = std::fs::read(format!("/proc/{pgid}/environ")) else {
        return false;
    };
    let want = format!("ORCH_DEPLOY_PGID_FILE={}", pgid_file.display());
    environ
        .split(|b| *b == 0)
        .any(|entry| entry == want.as_bytes())
}
