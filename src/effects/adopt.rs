//! Commands of irreversible effects (the production `deploy_command`, the
//! deployer agent, the image rebuild) run detached and adoptable (B-13,
//! F-23): a daemon that exits (a crash, a graceful stop past its drain
//! bound, a second signal) never cuts one in half, and a restart never runs
//! one again while it may still run or after it may have reached the outside.
//!
//! Per transition key and effect, in `<workspace_root>/deploys/`:
//! - `<key><base>.started`: written durably by the daemon BEFORE the spawn,
//!   with the run id. Absent = provably never started (apply is safe).
//! - `<key><base>.pgid`: the wrapper's process group and start time, written
//!   by the wrapper before the command starts (a record written by the daemon
//!   after the spawn would race a crash in the first milliseconds).
//! - `<key><base>.exit`: the command's exit code, written when it ends.
//! - `<key><base>.log`: its output, appended (never a pipe: a pipe dies with
//!   the daemon and the next write would kill the command with SIGPIPE).
//!
//! The command runs in its own session (`proc_group`), its future does not
//! kill it when dropped ([`proc_group::Spec::survives_drop`]). After a
//! restart, [`earlier`] finds the run: still running and ours → wait (up to
//! the timeout from its start, then kill it); ended → its exit code;
//! started but no exit recorded and no group left → [`Earlier::Vanished`],
//! which the effects report as an unknown outcome: held for a person, never
//! re-run by the daemon.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::deploy_deps::{DeployDeps, write_durably};
use crate::proc_group::{self, Outcome, ProcError, Spec};
use crate::stage_engine::{EffectCtx, EffectError};

/// Records its group and start time BEFORE the command starts, then runs
/// the command and records its exit. The command comes in through the
/// environment, so it needs no quoting. `/proc/$$/stat` of `sh` has no
/// space in its command name, so field 22 is the start time.
const WRAPPER: &str = r#"printf '%s %s' "$$" "$(cut -d' ' -f22 /proc/$$/stat)" > "$ORCH_EFFECT_PGID_FILE" || exit 126; sh -c "$ORCH_EFFECT_CMD"; ec=$?; printf '%s' "$ec" > "$ORCH_EFFECT_EXIT_FILE"; exit $ec"#;

/// How often an adopted group is checked.
const POLL: Duration = Duration::from_millis(200);

/// What a restart finds of an earlier run of the same effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Earlier {
    /// No run was ever started (or its record was consumed).
    None,
    /// It ended with this exit code (128 + n for a signal).
    Exited(i32),
    /// It started, its group is gone and it recorded no exit (killed with
    /// the daemon's help, the host rebooted).
    Vanished(RunInfo),
    /// It outlived its timeout after the restart and was killed.
    TimedOut(RunInfo),
}

/// What is known of a run whose end is not: for the hold and the alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunInfo {
    pub run_id: String,
    pub pgid: Option<i32>,
    pub started: Option<SystemTime>,
    pub log: PathBuf,
}

impl std::fmt::Display for RunInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let started = self
            .started
            .map(|t| humantime::format_rfc3339_seconds(t).to_string())
            .unwrap_or_else(|| "unknown".into());
        let pgid = self
            .pgid
            .map(|p| p.to_string())
            .unwrap_or_else(|| "never recorded".into());
        write!(
            f,
            "run {} started {started}, process group {pgid}, log {}",
            self.run_id,
            self.log.display()
        )
    }
}

/// The record files of one effect's runs.
#[derive(Debug, Clone)]
pub struct Files {
    pub started: PathBuf,
    pub pgid: PathBuf,
    pub exit: PathBuf,
    pub log: PathBuf,
}

/// `base` tells effects of one transition apart: `""` for the production
/// deploy (its historical names), `".image_rebuild"` for the image.
pub fn files(deps: &DeployDeps, ctx: &EffectCtx, base: &str) -> Files {
    let m = |s: &str| deps.marker(&ctx.transition_key, &format!("{base}{s}"));
    Files {
        started: m(".started"),
        pgid: m(".pgid"),
        exit: m(".exit"),
        log: m(".log"),
    }
}

/// Run `spec` detached through the wrapper, recording the start before the
/// spawn, the group before the command and the exit when it ends. The
/// output is appended to the run's log (`spec.log` when set, else
/// [`Files::log`]). Dropping the future leaves the command running.
pub async fn run(
    deps: &DeployDeps,
    ctx: &EffectCtx,
    base: &str,
    mut spec: Spec,
    timeout: Duration,
) -> Result<Outcome, ProcError> {
    let f = files(deps, ctx, base);
    forget(&f).await;
    let run_id = uuid::Uuid::new_v4().to_string();
    let spawn_err = |source: std::io::Error| ProcError::Spawn {
        command: spec.command.clone(),
        cwd: spec.cwd.clone(),
        source,
    };
    let log = spec.log.clone().unwrap_or_else(|| f.log.clone());
    // Durable before the spawn: from here on, a restart that finds no exit
    // cannot know whether the command ran, and holds instead of re-running.
    write_durably(&f.started, &format!("{run_id}\n{}\n", log.display()))
        .await
        .map_err(spawn_err)?;
    spec.env.extend([
        (
            "ORCH_EFFECT_CMD".to_string(),
            std::mem::take(&mut spec.command),
        ),
        ("ORCH_EFFECT_RUN".to_string(), run_id),
        ("ORCH_EFFECT_EXIT_FILE".to_string(), path(&f.exit)),
        ("ORCH_EFFECT_PGID_FILE".to_string(), path(&f.pgid)),
    ]);
    spec.command = WRAPPER.to_string();
    spec.log = Some(log);
    spec.survives_drop = true;
    let grace = Duration::from_secs(deps.settings.agent_kill_grace_s);
    proc_group::run(&spec, timeout, grace).await
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Drop the record of earlier runs (the log stays: it documents them).
pub async fn forget(f: &Files) {
    for p in [&f.started, &f.pgid, &f.exit] {
        let _ = tokio::fs::remove_file(p).await;
    }
}

/// What the records say of the latest run (for a hold's message).
pub async fn info(deps: &DeployDeps, ctx: &EffectCtx, base: &str) -> RunInfo {
    let f = files(deps, ctx, base);
    let started_text = read_record(&f.started).await.ok().flatten();
    let (run_id, log) = parse_started(started_text.as_deref(), &f.log);
    let started = tokio::fs::symlink_metadata(&f.started)
        .await
        .and_then(|m| m.modified())
        .ok();
    let pgid = read_record(&f.pgid)
        .await
        .ok()
        .flatten()
        .and_then(|t| parse_pgid(&t))
        .map(|(p, _)| p);
    RunInfo {
        run_id,
        pgid,
        started,
        log,
    }
}

/// `<run id>\n<log path>\n` as [`run`] writes it.
fn parse_started(text: Option<&str>, default_log: &Path) -> (String, PathBuf) {
    let mut lines = text.unwrap_or("").lines();
    let run_id = lines
        .next()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or("?")
        .to_string();
    let log = lines
        .next()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| default_log.to_path_buf());
    (run_id, log)
}

/// After a restart (or a person's retry): find the earlier run of this
/// effect; wait for it while its group still runs. Errors only when the
/// record cannot be read.
pub async fn earlier(
    deps: &DeployDeps,
    ctx: &EffectCtx,
    base: &str,
) -> Result<Earlier, EffectError> {
    let f = files(deps, ctx, base);
    let unreadable = |e: std::io::Error, p: &Path| {
        EffectError::Unknown(format!("cannot read {}: {e}", p.display()))
    };
    let (run_id, log) = match read_record(&f.started).await {
        Ok(Some(text)) => parse_started(Some(&text), &f.log),
        Ok(None) => return Ok(Earlier::None),
        Err(e) => return Err(unreadable(e, &f.started)),
    };
    let started = tokio::fs::symlink_metadata(&f.started)
        .await
        .and_then(|m| m.modified())
        .ok();
    let recorded = match read_record(&f.pgid).await {
        Ok(text) => text.and_then(|t| parse_pgid(&t)),
        Err(e) => return Err(unreadable(e, &f.pgid)),
    };
    let info = RunInfo {
        run_id: run_id.clone(),
        pgid: recorded.map(|(p, _)| p),
        started,
        log,
    };
    let timeout = Duration::from_secs(deps.settings.deploy_timeout_s);
    let mut timed_out = false;
    if let Some((pgid, start_time)) = recorded {
        // Only our wrapper's group is waited for (or killed): a pid reused
        // by an unrelated process while the daemon was down is left alone.
        let marker = format!("ORCH_EFFECT_RUN={run_id}");
        let check = move || ours(pgid, start_time, &marker);
        if run_blocking(check.clone()).await {
            tracing::warn!(work_item = %ctx.task.work_item, pgid, "an effect started before the restart still runs: waiting for it instead of starting it again");
        }
        while run_blocking(check.clone()).await {
            let elapsed = started.and_then(|s| s.elapsed().ok()).unwrap_or_default();
            if elapsed >= timeout {
                let grace = Duration::from_secs(deps.settings.agent_kill_grace_s);
                proc_group::kill_group(pgid, grace).await;
                timed_out = true;
                break;
            }
            tokio::time::sleep(POLL).await;
        }
    }
    match read_record(&f.exit).await {
        Ok(Some(text)) => Ok(match text.trim().parse::<i32>() {
            Ok(code) => Earlier::Exited(code),
            Err(_) => Earlier::Vanished(info),
        }),
        Ok(None) if timed_out => Ok(Earlier::TimedOut(info)),
        Ok(None) => Ok(Earlier::Vanished(info)),
        Err(e) => Err(unreadable(e, &f.exit)),
    }
}

/// `<pgid> <start time>` as the wrapper writes it.
fn parse_pgid(text: &str) -> Option<(i32, Option<i64>)> {
    let mut it = text.split_whitespace();
    let pgid = it.next()?.parse::<i32>().ok().filter(|p| *p > 1)?;
    Some((pgid, it.next().and_then(|s| s.parse().ok())))
}

/// A record or marker file of ours (`deploys/`), small by construction;
/// `None` when absent. Read without following a symlink, regular files
/// only, capped, off the runtime: a deploy (or an agent) runs as the
/// daemon's user and could have put a FIFO or a link there.
pub(crate) async fn read_record(p: &Path) -> std::io::Result<Option<String>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let p = p.to_path_buf();
    run_blocking(move || {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
            .open(&p);
        let f = match f {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if !f.metadata()?.is_file() {
            return Err(std::io::Error::other("not a regular file"));
        }
        let mut text = String::new();
        f.take(4096).read_to_string(&mut text)?;
        Ok(Some(text))
    })
    .await
}

async fn run_blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("a /proc or marker read does not panic")
}

/// Whether `pgid` is still the group our wrapper leads (or led): the leader
/// alive with the recorded start time and our run id in its environment, or,
/// the leader gone, a member carrying the run id.
fn ours(pgid: i32, start_time: Option<i64>, marker: &str) -> bool {
    let members = proc_group::pids_in_group(pgid);
    if members.is_empty() {
        return false;
    }
    if members.contains(&pgid) {
        let leader = i64::from(pgid);
        return start_time.is_none_or(|st| crate::procfs::alive_as(leader, st))
            && crate::procfs::environ_has(leader, marker);
    }
    members
        .iter()
        .any(|p| crate::procfs::environ_has(i64::from(*p), marker))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wrappers_record_parses() {
        assert_eq!(parse_pgid("4242 987654"), Some((4242, Some(987654))));
        assert_eq!(parse_pgid("4242"), Some((4242, None)));
        assert_eq!(parse_pgid("1 5"), None, "never init");
        assert_eq!(parse_pgid(""), None);
        assert_eq!(parse_pgid("x 5"), None);
    }
}
