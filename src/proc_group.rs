//! The ONE place that spawns external commands for agents and gates (F-12,
//! F-18, B-8): `sh -c <command>` in its own process group, so the whole tree
//! (the shell, the tool, its test runners and their children) can be stopped
//! with one signal: SIGTERM, a grace period, then SIGKILL. The seeds' incident
//! (ORCH-110) was orphaned test processes starving the next run: after `run`
//! returns, no process of the group survives.
//!
//! Group membership is read from `/proc` (field 5 of `/proc/<pid>/stat`), not
//! from our child handle, so a group can be killed by its id alone: after a
//! daemon restart, or when the leader already exited and left children behind.
//!
//! A stored group id is signalled only when the group is still ours
//! ([`Owned`]): after a reboot or a long downtime the same number may name
//! an unrelated program's group. Every spawn starts a new session (it
//! survives the daemon and a terminal's hang-up) with a token in its
//! environment, and records its leader's start time.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Pid, getpgrp};

pub use crate::procfs::pids_in_group;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

/// Captured output keeps the LAST this many bytes: the end of the output is
/// what matters (an agent's usage `result` line, a test runner's summary).
pub const CAPTURE_CAP: usize = 1 << 20;

/// `Ended::Exited(EXIT_UNKNOWN)`: the exit status could not be read (only if
/// something else in this process reaped our child). No real exit code is
/// negative, so it cannot be mistaken for one.
pub const EXIT_UNKNOWN: i32 = -1;

/// How often the group is re-checked while waiting for it to empty.
const POLL: Duration = Duration::from_millis(10);
/// After SIGKILL a process leaves within milliseconds unless it is stuck in
/// the kernel (D state); we stop waiting after this and log it.
const AFTER_KILL_WAIT: Duration = Duration::from_secs(5);
/// How long to keep reading pipes once the group is gone: a process that left
/// the group (setsid) may hold them open forever.
const DRAIN_WAIT: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The command could not be started at all (missing cwd, no `sh`, bad
    /// env): a tool error, not a red run.
    #[error("cannot start `{command}` in {cwd}: {source}")]
    Spawn {
        command: String,
        cwd: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open the log file {path} for appending: {source}")]
    Log {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The environment variable every spawned group carries: [`Owned::token`].
pub const TOKEN_ENV: &str = "ORCH_PGID_TOKEN";

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct Spec {
    /// Run through `sh -c`.
    pub command: String,
    pub cwd: PathBuf,
    /// Added to the daemon's environment (the agent needs PATH, HOME, ...).
    pub env: Vec<(String, String)>,
    /// Removed from the inherited environment (the daemon's own secrets).
    pub env_remove: Vec<String>,
    /// stdout and stderr are appended here; `None` = captured in memory (the
    /// last [`CAPTURE_CAP`] bytes).
    pub log: Option<PathBuf>,
    /// An irreversible effect (a production deploy, an image push): dropping
    /// [`run`]'s future leaves it running instead of killing it, so a
    /// daemon that exits mid-way never cuts a deploy in half; the next start
    /// adopts it. Needs `log` (a pipe would die with the daemon).
    pub survives_drop: bool,
    /// Confine the child (B-12): applied after `setsid`, before exec.
    pub sandbox: Option<crate::sandbox::Prepared>,
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Exit code; 127 is the shell's "command not found", 126 "not executable".
    Exited(i32),
    /// Killed by this signal number.
    Signaled(i32),
    /// `run`'s timeout passed; the whole group was killed.
    TimedOut,
}

/// What [`kill_group`] had to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupKill {
    /// No live process was in the group: nothing was signalled.
    AlreadyGone,
    /// The group emptied within the grace after SIGTERM.
    Terminated,
    /// The grace passed: the group was SIGKILLed.
    Killed,
    /// Not signalled: the id is ≤ 1 or our own group (it would kill the daemon).
    Refused,
    /// Not signalled: the group with that id is not the one we started (its
    /// leader started at another time, or after a reboot).
    NotOurs,
}

/// The result of [`run`].
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub ended: Ended,
    /// Captured stdout+stderr (empty when `Spec::log` is set).
    pub output: String,
    pub duration: Duration,
}

/// A running command: its leader and group id (the same number, since the
/// leader starts the group). Dropping a `Group` does NOT kill it: the caller
/// kills by `pgid` (possibly after a restart, from the stored id).
#[derive(Debug)]
pub struct Group {
    pub pid: i32,
    pub pgid: i32,
    pub child: Child,
    /// What to store to find (and prove) this group later.
    pub owned: Owned,
    capture: Option<Capture>,
}

/// A stored process group and what proves it is still the one we started:
/// the leader's start time and the token in the group's environment
/// (`<kernel boot id>:<uuid>`, so nothing of an earlier boot matches).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owned {
    pub pgid: i32,
    pub start_time: Option<i64>,
    pub token: Option<String>,
}

/// What [`Owned::check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// Live processes of the group we started.
    Ours,
    /// No live process is in the group.
    Gone,
    /// The group id names someone else's processes now: leave them alone.
    NotOurs,
}

impl Owned {
    /// Within the boot that started it, a live leader with the recorded
    /// start time is ours (pid + start time is unique; its environment is
    /// not needed, so an agent cannot disown itself by rewriting it). With
    /// the leader gone, a member carrying the token is ours. A token of
    /// another boot, or no token, is never ours.
    pub fn check(&self) -> Ownership {
        if self.pgid <= 1 {
            return Ownership::NotOurs;
        }
        let members = pids_in_group(self.pgid);
        if members.is_empty() {
            return Ownership::Gone;
        }
        let Some(token) = self.token.as_deref() else {
            return Ownership::NotOurs;
        };
        let this_boot = crate::procfs::kernel_boot_id()
            .is_some_and(|b| token.split_once(':').is_some_and(|(t, _)| t == b));
        if !this_boot {
            return Ownership::NotOurs;
        }
        if members.contains(&self.pgid) {
            let leader = i64::from(self.pgid);
            return match self.start_time {
                Some(st) if crate::procfs::alive_as(leader, st) => Ownership::Ours,
                _ => Ownership::NotOurs,
            };
        }
        let entry = format!("{TOKEN_ENV}={token}");
        if members
            .iter()
            .any(|p| crate::procfs::environ_has(i64::from(*p), &entry))
        {
            Ownership::Ours
        } else {
            Ownership::NotOurs
        }
    }

    /// [`kill_group`], only if the group is still ours.
    pub async fn kill(&self, grace: Duration) -> GroupKill {
        let this = self.clone();
        let own = tokio::task::spawn_blocking(move || this.check())
            .await
            .unwrap_or(Ownership::NotOurs);
        match own {
            Ownership::Gone => GroupKill::AlreadyGone,
            Ownership::NotOurs => {
                tracing::warn!(
                    pgid = self.pgid,
                    "not signalling a process group that is not ours any more"
                );
                GroupKill::NotOurs
            }
            Ownership::Ours => kill_group(self.pgid, grace).await,
        }
    }
}

/// A fresh token for a spawn: `<kernel boot id>:<uuid>`.
pub fn new_token() -> String {
    let boot = crate::procfs::kernel_boot_id().unwrap_or_else(|| "unknown-boot".into());
    format!("{boot}:{}", uuid::Uuid::new_v4())
}

#[derive(Debug)]
struct Capture {
    tail: Arc<Mutex<Tail>>,
    readers: Vec<JoinHandle<()>>,
}

impl Group {
    /// The captured output so far (empty when logging to a file): lets a
    /// caller watch a running agent (budget, stall detection).
    pub fn output(&self) -> String {
        self.capture
            .as_ref()
            .map(|c| lock(&c.tail).text())
            .unwrap_or_default()
    }

    /// Waits (bounded) for the pipe readers to reach EOF, then the output.
    async fn collect_output(&mut self) -> String {
        let Some(capture) = self.capture.as_mut() else {
            return String::new();
        };
        for reader in &mut capture.readers {
            if tokio::time::timeout(DRAIN_WAIT, &mut *reader)
                .await
                .is_err()
            {
                reader.abort();
            }
        }
        self.output()
    }
}

/// Starts `spec` in a new process group (its pgid is its pid), stdin null.
/// Must be called inside a tokio runtime.
pub fn spawn(spec: &Spec) -> Result<Group, ProcError> {
    let spawn_err = |source| ProcError::Spawn {
        command: spec.command.clone(),
        cwd: spec.cwd.clone(),
        source,
    };
    // tokio::process panics outside a runtime; report it instead.
    tokio::runtime::Handle::try_current()
        .map_err(|e| spawn_err(io::Error::other(format!("no tokio runtime: {e}"))))?;
    if spec.survives_drop && spec.log.is_none() {
        return Err(spawn_err(io::Error::other(
            "a command that must survive the daemon needs a log file, not a pipe",
        )));
    }
    let token = new_token();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(&spec.command)
        .current_dir(&spec.cwd)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .env(TOKEN_ENV, &token)
        .stdin(Stdio::null());
    // SAFETY: setsid(2) is async-signal-safe and touches no memory of the
    // parent; it makes the child the leader of a new session and of a new
    // process group whose id is its pid, so it outlives the daemon (no
    // hang-up from a terminal) and the whole tree stops with one killpg.
    // The sandbox's ruleset was built before the fork; the child only
    // applies it (two syscalls, nothing that allocates).
    let sandbox_fd = spec.sandbox.as_ref().map(|s| s.raw_fd());
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid().map_err(io::Error::from)?;
            if let Some(fd) = sandbox_fd {
                crate::sandbox::restrict_in_child(fd)?;
            }
            Ok(())
        });
    }
    for k in &spec.env_remove {
        cmd.env_remove(k);
    }
    match &spec.log {
        Some(path) => {
            let log_err = |source| ProcError::Log {
                path: path.clone(),
                source,
            };
            // One O_APPEND file for both streams: writes interleave in order
            // and never overwrite what an earlier run appended.
            let out = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(log_err)?;
            let err = out.try_clone().map_err(log_err)?;
            cmd.stdout(Stdio::from(out)).stderr(Stdio::from(err));
        }
        None => {
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
    }
    let mut child = cmd.spawn().map_err(spawn_err)?;
    let pid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .ok_or_else(|| spawn_err(io::Error::other("the child has no pid")))?;
    let capture = spec.log.is_none().then(|| {
        let tail = Arc::new(Mutex::new(Tail::default()));
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(tokio::spawn(pump(out, tail.clone())));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(tokio::spawn(pump(err, tail.clone())));
        }
        Capture { tail, readers }
    });
    Ok(Group {
        pid,
        pgid: pid,
        child,
        owned: Owned {
            pgid: pid,
            // The child exists from the fork on: its start time is fixed.
            start_time: crate::procfs::start_time(i64::from(pid)),
            token: Some(token),
        },
        capture,
    })
}

/// Waits for the group's leader to exit. Other members may still run: kill
/// them with [`kill_group`] (as [`run`] does).
pub async fn wait(group: &mut Group) -> Ended {
    match group.child.wait().await {
        Ok(status) => ended(status),
        Err(e) => {
            tracing::error!(pid = group.pid, error = %e, "cannot read the exit status");
            Ended::Exited(EXIT_UNKNOWN)
        }
    }
}

/// Runs `spec` to completion or until `timeout`, then makes sure nothing of
/// its group is left (a finished leader's background children included).
/// Cancel-safe: dropping the future SIGKILLs the group.
pub async fn run(spec: &Spec, timeout: Duration, grace: Duration) -> Result<Outcome, ProcError> {
    run_observed(spec, timeout, grace, |_| async {}).await
}

/// [`run`], telling `on_spawn` the group as soon as it exists, so the
/// caller can record it where a STOP, the reaper or a restarted daemon
/// finds it (the job row). The timeout does not count `on_spawn`'s time.
pub async fn run_observed<F, Fut>(
    spec: &Spec,
    timeout: Duration,
    grace: Duration,
    on_spawn: F,
) -> Result<Outcome, ProcError>
where
    F: FnOnce(Owned) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let started = Instant::now();
    let mut group = spawn(spec)?;
    let mut guard = KillOnDrop {
        pgid: group.pgid,
        armed: !spec.survives_drop,
    };
    on_spawn(group.owned.clone()).await;
    let ended = match tokio::time::timeout(timeout, wait(&mut group)).await {
        Ok(ended) => ended,
        Err(_) => {
            kill_group(group.pgid, grace).await;
            // Reap the leader; bounded in case it is stuck in the kernel.
            let _ = tokio::time::timeout(AFTER_KILL_WAIT, wait(&mut group)).await;
            Ended::TimedOut
        }
    };
    // The leader is gone; what it left in the group goes too (F-18: no orphan).
    kill_group(group.pgid, grace).await;
    guard.armed = false;
    let output = group.collect_output().await;
    Ok(Outcome {
        ended,
        output,
        duration: started.elapsed(),
    })
}

/// SIGTERM the whole group, wait up to `grace` for it to empty, then SIGKILL
/// it. Works by group id alone (the leader need not be our child), polling
/// `/proc`; zombies do not count as alive.
pub async fn kill_group(pgid: i32, grace: Duration) -> GroupKill {
    if !safe_target(pgid) {
        tracing::error!(pgid, "refusing to signal process group");
        return GroupKill::Refused;
    }
    if !alive(pgid).await {
        return GroupKill::AlreadyGone;
    }
    let group = Pid::from_raw(pgid);
    let _ = killpg(group, Signal::SIGTERM);
    // A stopped process would hold SIGTERM pending until continued.
    let _ = killpg(group, Signal::SIGCONT);
    if empties_by(pgid, Instant::now() + grace).await {
        return GroupKill::Terminated;
    }
    tracing::warn!(
        pgid,
        ?grace,
        "process group outlived SIGTERM; sending SIGKILL"
    );
    let _ = killpg(group, Signal::SIGKILL);
    if !empties_by(pgid, Instant::now() + AFTER_KILL_WAIT).await {
        tracing::error!(pgid, pids = ?pids_in_group(pgid), "processes survive SIGKILL (stuck in the kernel?)");
    }
    GroupKill::Killed
}

/// Whether any live (non-zombie) process is in group `pgid`.
pub fn group_alive(pgid: i32) -> bool {
    if pgid <= 0 {
        return false;
    }
    // ESRCH: no process at all, zombies included; the cheap common answer.
    if let Err(nix::errno::Errno::ESRCH) = killpg(Pid::from_raw(pgid), None) {
        return false;
    }
    if crate::procfs::available() {
        !pids_in_group(pgid).is_empty()
    } else {
        // No /proc to tell zombies apart: trust the kernel's "exists".
        true
    }
}

/// Never signal group 0 (ours, in killpg terms), 1 or below, or our own group.
fn safe_target(pgid: i32) -> bool {
    pgid > 1 && pgid != getpgrp().as_raw()
}

/// `group_alive` off the async threads: a /proc scan reads a file per process.
async fn alive(pgid: i32) -> bool {
    tokio::task::spawn_blocking(move || group_alive(pgid))
        .await
        .unwrap_or(true)
}

async fn empties_by(pgid: i32, deadline: Instant) -> bool {
    loop {
        if !alive(pgid).await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

fn ended(status: ExitStatus) -> Ended {
    match (status.code(), status.signal()) {
        (Some(code), _) => Ended::Exited(code),
        (None, Some(sig)) => Ended::Signaled(sig),
        (None, None) => Ended::Exited(EXIT_UNKNOWN),
    }
}

/// If `run`'s future is dropped mid-way, the group must not outlive it.
/// Drop cannot await a grace period, so this is a plain SIGKILL.
struct KillOnDrop {
    pgid: i32,
    armed: bool,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.armed && safe_target(self.pgid) {
            let _ = killpg(Pid::from_raw(self.pgid), Signal::SIGKILL);
        }
    }
}

/// The last [`CAPTURE_CAP`] bytes of a stream, and how many came before.
#[derive(Debug, Default)]
struct Tail {
    buf: Vec<u8>,
    dropped: u64,
}

impl Tail {
    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        // Trim in batches (at twice the cap) so a long stream is not
        // re-copied on every read.
        if self.buf.len() > 2 * CAPTURE_CAP {
            let excess = self.buf.len() - CAPTURE_CAP;
            self.buf.drain(..excess);
            self.dropped += excess as u64;
        }
    }

    fn text(&self) -> String {
        let skip = self.buf.len().saturating_sub(CAPTURE_CAP);
        let dropped = self.dropped + skip as u64;
        let body = String::from_utf8_lossy(&self.buf[skip..]);
        if dropped == 0 {
            body.into_owned()
        } else {
            format!("[... {dropped} earlier bytes dropped ...]\n{body}")
        }
    }
}

fn lock(tail: &Mutex<Tail>) -> std::sync::MutexGuard<'_, Tail> {
    // A reader cannot panic while holding the lock; if one did, the bytes
    // are still usable.
    tail.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads a pipe to EOF into the shared tail. It keeps reading past the cap:
/// a pipe nobody drains blocks the writer.
async fn pump<R: AsyncRead + Unpin>(mut pipe: R, tail: Arc<Mutex<Tail>>) {
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => lock(&tail).push(&chunk[..n]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(2);
    const GRACE: Duration = Duration::from_millis(300);

    fn spec(command: &str) -> Spec {
        Spec {
            command: command.to_string(),
            cwd: std::env::temp_dir(),
            ..Spec::default()
        }
    }

    /// Polls `f` every few ms until it holds or 5 s pass.
    async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn numbers(output: &str) -> Vec<i32> {
        output
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    #[tokio::test]
    async fn exit_code_passes_through() {
        let out = run(&spec("echo hi; exit 3"), TIMEOUT, GRACE).await.unwrap();
        assert_eq!(out.ended, Ended::Exited(3));
        assert_eq!(out.output, "hi\n");
        let out = run(&spec("true"), TIMEOUT, GRACE).await.unwrap();
        assert_eq!(out.ended, Ended::Exited(0));
    }

    #[tokio::test]
    async fn a_signal_is_reported() {
        let out = run(&spec("kill -USR1 $$"), TIMEOUT, GRACE).await.unwrap();
        assert_eq!(out.ended, Ended::Signaled(Signal::SIGUSR1 as i32));
    }

    #[tokio::test]
    async fn missing_command_is_127_and_a_failed_start_is_an_error() {
        let out = run(&spec("definitely-not-a-command-4242"), TIMEOUT, GRACE)
            .await
            .unwrap();
        assert_eq!(out.ended, Ended::Exited(127));
        assert!(out.output.contains("not found"), "{}", out.output);

        let mut bad = spec("true");
        bad.cwd = PathBuf::from("/nonexistent/orchestrator-test");
        let err = run(&bad, TIMEOUT, GRACE).await.unwrap_err();
        assert!(matches!(err, ProcError::Spawn { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/orchestrator-test"));

        let mut bad = spec("true");
        bad.log = Some(PathBuf::from("/nonexistent/dir/agent.log"));
        let err = run(&bad, TIMEOUT, GRACE).await.unwrap_err();
        assert!(matches!(err, ProcError::Log { .. }), "{err}");
    }

    #[tokio::test]
    async fn timeout_kills_the_group_including_grandchildren() {
        let cmd = "echo $$; sleep 300 & echo $!; sleep 300 & echo $!; wait";
        let out = run(&spec(cmd), Duration::from_millis(500), GRACE)
            .await
            .unwrap();
        assert_eq!(out.ended, Ended::TimedOut);
        let ids = numbers(&out.output);
        assert_eq!(ids.len(), 3, "pgid and two grandchildren: {}", out.output);
        let pgid = ids[0];
        assert!(!group_alive(pgid));
        assert_eq!(pids_in_group(pgid), Vec::<i32>::new());
        for pid in &ids[1..] {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let live =
                crate::procfs::parse_stat(&stat).is_some_and(|s| s.pgrp == pgid && s.state != 'Z');
            assert!(!live, "grandchild {pid} survived: {stat}");
        }
    }

    #[tokio::test]
    async fn background_children_of_a_finished_leader_are_killed_too() {
        let out = run(&spec("echo $$; sleep 300 &"), TIMEOUT, GRACE)
            .await
            .unwrap();
        assert_eq!(out.ended, Ended::Exited(0));
        let pgid = numbers(&out.output)[0];
        assert_eq!(pids_in_group(pgid), Vec::<i32>::new());
    }

    #[tokio::test]
    async fn a_group_that_ignores_sigterm_is_sigkilled_after_the_grace() {
        let mut g = spawn(&spec("trap '' TERM; echo ready; sleep 300")).unwrap();
        eventually("the trap is set", || g.output().contains("ready")).await;
        assert_eq!(kill_group(g.pgid, GRACE).await, GroupKill::Killed);
        assert!(!group_alive(g.pgid));
        assert_eq!(wait(&mut g).await, Ended::Signaled(Signal::SIGKILL as i32));

        // The same through `run`'s timeout.
        let cmd = "trap '' TERM; echo $$; sleep 300";
        let out = run(&spec(cmd), Duration::from_millis(500), GRACE)
            .await
            .unwrap();
        assert_eq!(out.ended, Ended::TimedOut);
        assert!(!group_alive(numbers(&out.output)[0]));
    }

    #[tokio::test]
    async fn a_group_whose_leader_is_gone_is_killed_by_id() {
        // The leader exits at once; its child stays in the group, reparented
        // away from us: the situation after a daemon restart.
        let mut g = spawn(&spec("sleep 300 & echo $!")).unwrap();
        assert_eq!(wait(&mut g).await, Ended::Exited(0));
        eventually("the orphan is listed", || !pids_in_group(g.pgid).is_empty()).await;
        assert!(group_alive(g.pgid));
        assert_eq!(kill_group(g.pgid, GRACE).await, GroupKill::Terminated);
        assert!(!group_alive(g.pgid));
        assert_eq!(kill_group(g.pgid, GRACE).await, GroupKill::AlreadyGone);
    }

    #[tokio::test]
    async fn kill_and_wait_report_sigterm_and_output_is_readable_while_running() {
        let mut g = spawn(&spec("echo started; sleep 300")).unwrap();
        assert_eq!(g.pid, g.pgid);
        eventually("output while running", || g.output() == "started\n").await;
        assert_eq!(kill_group(g.pgid, GRACE).await, GroupKill::Terminated);
        assert_eq!(wait(&mut g).await, Ended::Signaled(Signal::SIGTERM as i32));
    }

    #[tokio::test]
    async fn never_signals_our_own_group_or_low_ids() {
        let ours = getpgrp().as_raw();
        for pgid in [ours, 1, 0, -7] {
            assert_eq!(kill_group(pgid, GRACE).await, GroupKill::Refused, "{pgid}");
        }
        assert!(group_alive(ours), "we are alive");
        assert!(!group_alive(0));
    }

    #[tokio::test]
    async fn dropping_run_kills_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("out.log");
        let mut s = spec("echo $$; exec sleep 300");
        s.log = Some(log.clone());
        let task = tokio::spawn(async move { run(&s, Duration::from_secs(60), GRACE).await });
        let read_pgid = || {
            numbers(&std::fs::read_to_string(&log).unwrap_or_default())
                .first()
                .copied()
        };
        eventually("the pgid is logged", || read_pgid().is_some()).await;
        let pgid = read_pgid().unwrap();
        eventually("the group is up", || group_alive(pgid)).await;
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        eventually("the group is gone", || !group_alive(pgid)).await;
    }

    #[tokio::test]
    async fn captured_output_is_capped_to_its_tail() {
        let cmd = "head -c 3000000 /dev/zero | tr '\\0' a; echo; echo END >&2";
        let out = run(&spec(cmd), TIMEOUT, GRACE).await.unwrap();
        assert_eq!(out.ended, Ended::Exited(0));
        assert!(out.output.len() <= CAPTURE_CAP + 64, "{}", out.output.len());
        assert!(out.output.starts_with("[... "), "marks the cut");
        assert!(out.output.ends_with("END\n"), "keeps the end");
    }

    #[tokio::test]
    async fn log_file_is_appended_with_stdout_and_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("agent.log");
        std::fs::write(&log, "earlier run\n").unwrap();
        let mut s = spec("echo out; echo err >&2");
        s.log = Some(log.clone());
        let out = run(&s, TIMEOUT, GRACE).await.unwrap();
        assert_eq!(out.ended, Ended::Exited(0));
        assert_eq!(out.output, "");
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "earlier run\nout\nerr\n"
        );
    }

    #[tokio::test]
    async fn env_and_cwd_are_applied_and_stdin_is_null() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec("printf '%s|%s|' \"$ORCH_ROLE\" \"$(pwd -P)\"; cat; echo eof");
        s.cwd = dir.path().to_path_buf();
        s.env = vec![("ORCH_ROLE".into(), "developer".into())];
        let out = run(&s, TIMEOUT, GRACE).await.unwrap();
        let cwd = dir.path().canonicalize().unwrap();
        assert_eq!(out.output, format!("developer|{}|eof\n", cwd.display()));
    }

    #[tokio::test]
    async fn inherited_variables_can_be_removed() {
        // cargo sets CARGO_MANIFEST_DIR for test processes, so the child
        // inherits it; removing it must reach the child (the launcher strips
        // the daemon's secrets this way).
        let show = "printf '%s' \"${CARGO_MANIFEST_DIR:-gone}\"";
        let mut s = spec(show);
        s.env_remove = vec!["CARGO_MANIFEST_DIR".into()];
        let out = run(&s, TIMEOUT, GRACE).await.unwrap();
        assert_eq!(out.output, "gone");
        let kept = run(&spec(show), TIMEOUT, GRACE).await.unwrap();
        assert_ne!(kept.output, "gone");
    }

    #[tokio::test]
    async fn only_the_group_we_started_is_signalled() {
        let mut g = spawn(&spec("echo ready; sleep 300")).unwrap();
        eventually("started", || g.output().contains("ready")).await;
        assert_eq!(g.owned.check(), Ownership::Ours);
        // The same id recorded with another leader start time: a reused pid.
        let reused = Owned {
            start_time: g.owned.start_time.map(|t| t + 1),
            ..g.owned.clone()
        };
        assert_eq!(reused.check(), Ownership::NotOurs);
        assert_eq!(reused.kill(GRACE).await, GroupKill::NotOurs);
        assert!(group_alive(g.pgid), "left alone");
        // A token of another boot (recorded before a reboot).
        let rebooted = Owned {
            token: Some("another-boot:1234".into()),
            ..g.owned.clone()
        };
        assert_eq!(rebooted.check(), Ownership::NotOurs);
        // No token at all (a row written before tokens existed).
        let legacy = Owned {
            token: None,
            ..g.owned.clone()
        };
        assert_eq!(legacy.check(), Ownership::NotOurs);
        assert_eq!(g.owned.kill(GRACE).await, GroupKill::Terminated);
        assert_eq!(wait(&mut g).await, Ended::Signaled(Signal::SIGTERM as i32));
        assert_eq!(g.owned.check(), Ownership::Gone);
    }

    #[tokio::test]
    async fn with_the_leader_gone_the_token_in_a_member_tells_ours_from_theirs() {
        // Ours: the leader exits, its child (with our token) stays.
        let mut g = spawn(&spec("sleep 300 & echo $!")).unwrap();
        assert_eq!(wait(&mut g).await, Ended::Exited(0));
        eventually("the orphan is listed", || !pids_in_group(g.pgid).is_empty()).await;
        assert_eq!(g.owned.check(), Ownership::Ours);
        // Theirs: a group started without our token, its leader gone.
        use std::os::unix::process::CommandExt;
        let mut theirs = std::process::Command::new("sh")
            .args(["-c", "sleep 300 & echo $!"])
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        let foreign = theirs.id() as i32;
        theirs.wait().unwrap();
        eventually("their orphan is listed", || {
            !pids_in_group(foreign).is_empty()
        })
        .await;
        let claimed = Owned {
            pgid: foreign,
            start_time: Some(1),
            token: Some(new_token()),
        };
        assert_eq!(claimed.check(), Ownership::NotOurs);
        assert_eq!(claimed.kill(GRACE).await, GroupKill::NotOurs);
        assert!(group_alive(foreign), "their group is left alone");
        kill_group(foreign, GRACE).await;
        assert_eq!(g.owned.kill(GRACE).await, GroupKill::Terminated);
    }

    #[tokio::test]
    async fn a_command_that_survives_drop_is_left_running_and_needs_a_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("out.log");
        let mut s = spec("echo $$; exec sleep 300");
        s.survives_drop = true;
        let err = run(&s, Duration::from_secs(60), GRACE).await.unwrap_err();
        assert!(err.to_string().contains("needs a log file"), "{err}");
        s.log = Some(log.clone());
        let task = tokio::spawn(async move { run(&s, Duration::from_secs(60), GRACE).await });
        let read_pgid = || {
            numbers(&std::fs::read_to_string(&log).unwrap_or_default())
                .first()
                .copied()
        };
        eventually("the pgid is logged", || read_pgid().is_some()).await;
        let pgid = read_pgid().unwrap();
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        assert!(group_alive(pgid), "dropping the future did not kill it");
        // Its own session: it does not share the daemon's.
        let sid = nix::unistd::getsid(Some(Pid::from_raw(pgid))).unwrap();
        assert_eq!(sid.as_raw(), pgid);
        kill_group(pgid, GRACE).await;
    }

    #[test]
    fn spawn_outside_a_runtime_is_an_error_not_a_panic() {
        let err = spawn(&spec("true")).unwrap_err();
        assert!(matches!(err, ProcError::Spawn { .. }), "{err}");
    }

    #[test]
    fn tail_keeps_the_last_cap_bytes() {
        let mut t = Tail::default();
        t.push(b"abc");
        assert_eq!(t.text(), "abc");
        let big = vec![b'x'; 3 * CAPTURE_CAP];
        t.push(&big);
        t.push(b"end");
        let text = t.text();
        assert!(text.ends_with("xend"));
        let dropped = 3 + 3 * CAPTURE_CAP as u64 + 3 - CAPTURE_CAP as u64;
        assert!(
            text.starts_with(&format!("[... {dropped} earlier bytes dropped ...]\n")),
            "{}",
            &text[..60]
        );
    }
}
