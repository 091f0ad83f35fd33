//! Exactly once across graceful stops, timeouts and vanished runs (B-13,
//! F-23, issue 10), through the real binary with the Plane and Gitea
//! doubles. Every production deploy appends one line to a side file outside
//! the daemon and then waits for the test's go (a file): the test decides
//! when a deploy ends, so nothing here depends on timing.
//!
//! - SIGTERM while the deploy runs: the daemon drains (waits for it), the
//!   task reaches Done, one deploy; with `deploy_command` and with the
//!   deployer agent.
//! - SIGTERM twice: the daemon exits at once, the deploy goes on detached,
//!   the next start adopts it: one deploy, Done.
//! - SIGKILL at the same point: the same.
//! - The deploy's process group killed (it vanished without an exit): held
//!   with one alert naming the run, no re-run (not after a restart either);
//!   a person's new Confirm Deploy runs it exactly once more.
//! - A deploy that never ends does not hold back a STOP of another task.

mod support;

use std::path::PathBuf;

use nix::sys::signal::Signal;
use orchestrator::db::Db;
use orchestrator::domain::Stage;
use support::daemon::{Daemon, World, lines, task, until, world};

/// The side files of one scenario and the deploy that uses them.
struct Marks {
    _dir: tempfile::TempDir,
    runs: PathBuf,
    go: PathBuf,
    pid: PathBuf,
}

impl Marks {
    fn new() -> Marks {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        Marks {
            runs: p("runs"),
            go: p("go"),
            pid: p("pid"),
            _dir: dir,
        }
    }

    /// One line per run, its pid, then wait for the go. `finish` is what
    /// the deploy does after the go (the agent writes its report).
    fn command(&self, finish: &str) -> String {
        format!(
            "echo run >> {runs}; echo $$ > {pid}; while [ ! -f {go} ]; do sleep 0.05; done; {finish}",
            runs = self.runs.display(),
            pid = self.pid.display(),
            go = self.go.display(),
        )
    }

    fn go(&self) {
        std::fs::write(&self.go, "").unwrap();
    }

    fn runs(&self) -> usize {
        lines(&self.runs)
    }

    /// The running deploy's pid (the command's shell).
    fn deploy_pid(&self) -> i64 {
        std::fs::read_to_string(&self.pid)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    fn deploy_alive(&self) -> bool {
        orchestrator::procfs::stat(self.deploy_pid()).is_some_and(|s| !s.is_zombie())
    }
}

/// How the production deploy runs.
#[derive(Clone, Copy, Debug)]
enum Deployer {
    Command,
    Agent,
}

async fn scenario(how: Deployer, m: &Marks) -> World {
    let report = "mkdir -p \"$ORCH_ARTIFACT_DIR\"; printf \"deploy_status: SUCCESS\\n\" > \"$ORCH_ARTIFACT_DIR/15-deploy-report.md\"";
    match how {
        Deployer::Command => world(&format!("deploy_command = '{}'", m.command("true")), &[]).await,
        Deployer::Agent => {
            let agent = m.command(report);
            world("", &[("ORCH_AGENT_COMMAND", agent.as_str())]).await
        }
    }
}

/// Confirm Deploy for a parked task; returns when its deploy is running.
async fn deploy_running(w: &World, db: &Db, m: &Marks, seq: i64) -> (String, i64) {
    let (item, t, _) = w.parked_on_deploy(db, seq).await;
    assert_eq!(w.plane.human_set_state(&item, "Confirm Deploy").await, 200);
    until("the deploy runs", 60, || async { m.runs() == 1 }).await;
    until("its pid is written", 10, || async { m.pid.exists() }).await;
    (item, t.id)
}

async fn drain_waits_for_the_deploy(how: Deployer) {
    let m = Marks::new();
    let w = scenario(how, &m).await;
    let mut d = w.start().await;
    let db = Db::open(&w.db_path()).await.unwrap();
    let (item, id) = deploy_running(&w, &db, &m, 1).await;

    d.signal(Signal::SIGTERM);
    until("the drain says what it waits for", 20, || async {
        w.log()
            .contains("graceful stop: waiting for an effect in flight")
    })
    .await;
    assert!(d.alive(), "the daemon waits for the deploy");
    assert!(m.deploy_alive(), "the deploy is not killed by the stop");
    // Webhooks are still taken during the drain (stored, acted on later).
    let health = reqwest::get(d.url("/health")).await.unwrap();
    assert!(health.status().is_success());

    m.go();
    let status = d.exited(60).await;
    assert!(status.success(), "{status:?}: {}", w.log());
    assert_eq!(task(&db, id).await.stage, Stage::Done, "{}", w.log());
    assert!(w.log().contains("shut down cleanly"));
    assert_eq!(m.runs(), 1);

    // The next start: nothing more is deployed or merged; Plane converges.
    let mut again = w.start().await;
    until("Plane shows Done", 60, || async {
        w.plane.state_of(&item) == "Done"
    })
    .await;
    assert_eq!(m.runs(), 1, "exactly one deploy: {}", w.log());
    assert_eq!((w.merge_posts(), w.merges_in_main()), (1, 1));
    again.signal(Signal::SIGTERM);
    assert!(again.exited(20).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_deploy_command_drains_it_then_done_once() {
    drain_waits_for_the_deploy(Deployer::Command).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_the_deployer_agent_drains_it_then_done_once() {
    drain_waits_for_the_deploy(Deployer::Agent).await;
}

/// The daemon goes away while the deploy runs (`stop`); the deploy goes
/// on detached; the next start adopts it while it still runs.
async fn detached_then_adopted(how: Deployer, stop: impl AsyncFnOnce(&World, &mut Daemon)) {
    let m = Marks::new();
    let w = scenario(how, &m).await;
    let mut d = w.start().await;
    let db = Db::open(&w.db_path()).await.unwrap();
    let (item, id) = deploy_running(&w, &db, &m, 2).await;

    stop(&w, &mut d).await;
    assert!(!d.alive());
    assert!(
        m.deploy_alive(),
        "the deploy survives the daemon: {}",
        w.log()
    );
    assert_eq!(task(&db, id).await.stage, Stage::Deploy);

    let mut again = w.start().await;
    until("the restart adopts the running deploy", 30, || async {
        w.log()
            .contains("an effect started before the restart still runs")
    })
    .await;
    m.go();
    until("the task is done", 60, || async {
        let t = task(&db, id).await;
        assert!(
            t.hold_reason.is_none(),
            "{how:?} held: {:?}\n{}",
            t.hold_reason,
            w.log()
        );
        t.stage == Stage::Done
    })
    .await;
    until("Plane shows Done", 60, || async {
        w.plane.state_of(&item) == "Done"
    })
    .await;
    assert_eq!(m.runs(), 1, "adopted, not run again: {}", w.log());
    assert_eq!((w.merge_posts(), w.merges_in_main()), (1, 1));
    again.signal(Signal::SIGTERM);
    assert!(again.exited(20).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_twice_exits_at_once_and_the_next_start_adopts_the_deploy() {
    for how in [Deployer::Command, Deployer::Agent] {
        detached_then_adopted(how, async |w: &World, d: &mut Daemon| {
            d.signal(Signal::SIGTERM);
            until("the drain waits", 20, || async {
                w.log()
                    .contains("graceful stop: waiting for an effect in flight")
            })
            .await;
            d.signal(Signal::SIGTERM);
            let status = d.exited(20).await;
            assert!(status.success(), "{status:?}");
            assert!(
                w.log().contains("second signal: exiting now"),
                "{}",
                w.log()
            );
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_the_deploy_and_the_next_start_adopts_it() {
    for how in [Deployer::Command, Deployer::Agent] {
        detached_then_adopted(how, async |_: &World, d: &mut Daemon| {
            d.signal(Signal::SIGKILL);
            d.exited(20).await;
        })
        .await;
    }
}

/// How often the daemon's log carries an alert of `kind`.
fn alerts(w: &World, kind: &str) -> usize {
    w.log().matches(&format!("\"{kind}\"")).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_deploy_holds_for_a_person_and_runs_once_more_on_a_new_confirm() {
    let m = Marks::new();
    let w = scenario(Deployer::Command, &m).await;
    let mut d = w.start().await;
    let db = Db::open(&w.db_path()).await.unwrap();
    let (item, id) = deploy_running(&w, &db, &m, 3).await;

    // Something outside the daemon kills the deploy's whole group: it
    // never records an exit. Whether production changed is unknown.
    let pgid = orchestrator::procfs::stat(m.deploy_pid()).unwrap().pgrp;
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), Signal::SIGKILL).unwrap();
    until("the task is held", 30, || async {
        task(&db, id).await.hold_reason.is_some()
    })
    .await;
    let t = task(&db, id).await;
    assert_eq!(t.stage, Stage::Deploy);
    let hold = t.hold_reason.unwrap();
    for what in [
        "prod_deploy",
        "process group",
        &pgid.to_string(),
        ".log",
        "Confirm Deploy",
    ] {
        assert!(hold.contains(what), "{what} in {hold}");
    }
    let q = d.queue().await;
    let shown = q["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["work_item"] == "DEMO-3")
        .unwrap()
        .clone();
    assert_eq!(shown["hold_reason"], hold.as_str(), "{q}");
    assert_eq!(alerts(&w, "effect_unknown"), 1, "{}", w.log());
    assert_eq!(m.runs(), 1);

    // A restart does not run it again: recovery, the reconciler and the
    // post-deploy loop leave it to a person.
    d.signal(Signal::SIGTERM);
    assert!(d.exited(20).await.success());
    let mut d = w.start().await;
    let ticks = |q: &serde_json::Value| q["post_deploy"]["ticks"].as_u64().unwrap_or(0);
    until("the post-deploy loop ticked twice", 30, || async {
        ticks(&d.queue().await) >= 2
    })
    .await;
    assert_eq!(m.runs(), 1, "no re-run without a person: {}", w.log());
    assert!(task(&db, id).await.hold_reason.is_some());
    assert_eq!(alerts(&w, "effect_unknown"), 1, "one alert");

    // A person decides: Confirm Deploy again runs it exactly once more.
    m.go();
    assert_eq!(w.plane.human_set_state(&item, "Confirm Deploy").await, 200);
    until("Plane shows Done", 60, || async {
        w.plane.state_of(&item) == "Done"
    })
    .await;
    assert_eq!(m.runs(), 2, "exactly one more run: {}", w.log());
    assert_eq!(task(&db, id).await.stage, Stage::Done);
    assert_eq!((w.merge_posts(), w.merges_in_main()), (1, 1));
    d.signal(Signal::SIGTERM);
    assert!(d.exited(20).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_that_never_ends_does_not_hold_back_a_stop_of_another_task() {
    let m = Marks::new();
    let w = scenario(Deployer::Command, &m).await;
    let mut d = w.start().await;
    let db = Db::open(&w.db_path()).await.unwrap();
    let (_, deploying) = deploy_running(&w, &db, &m, 4).await;
    let (other, other_task) = w.task_at(&db, 5, Stage::Development).await;

    assert_eq!(w.plane.human_set_state(&other, "STOP").await, 200);
    until("the other task is cancelled", 30, || async {
        task(&db, other_task.id).await.stage == Stage::Cancelled
    })
    .await;
    // ... while the deploy still runs: it never held the intake.
    assert!(m.deploy_alive());
    assert_eq!(task(&db, deploying).await.stage, Stage::Deploy);
    assert_eq!(m.runs(), 1);

    m.go();
    until("the deploy finishes", 60, || async {
        task(&db, deploying).await.stage == Stage::Done
    })
    .await;
    d.signal(Signal::SIGTERM);
    assert!(d.exited(20).await.success());
}

/// A merge that announces it started, then waits for the test's go.
struct StalledMerge {
    entered: std::sync::Arc<tokio::sync::Notify>,
    go: std::sync::Arc<tokio::sync::Notify>,
}

#[async_trait::async_trait]
impl orchestrator::stage_engine::Effect for StalledMerge {
    async fn reconcile(
        &self,
        _: &orchestrator::stage_engine::EffectCtx,
    ) -> Result<Option<String>, orchestrator::stage_engine::EffectError> {
        Ok(None)
    }
    async fn apply(
        &self,
        _: &orchestrator::stage_engine::EffectCtx,
    ) -> Result<String, orchestrator::stage_engine::EffectError> {
        self.entered.notify_one();
        self.go.notified().await;
        Ok("merged".into())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_in_another_process_fenced_by_the_daemons_force_release_records_nothing() {
    use orchestrator::domain::EffectKind;
    use orchestrator::stage_engine::{Boot, Engine, EngineError};
    use std::sync::Arc;
    let w = world("", &[]).await;
    let mut d = w.start().await;
    let db = Db::open(&w.db_path()).await.unwrap();
    let (_, t) = w.task_at(&db, 6, Stage::Deploy).await;
    orchestrator::db::tasks::set_deploy_confirmed(db.writer(), t.id)
        .await
        .unwrap();
    // This test process is the holder: an engine on the daemon's database.
    let (entered, go) = (
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(tokio::sync::Notify::new()),
    );
    let effects = orchestrator::stage_engine::noop_effects().with(
        EffectKind::MergePr,
        Arc::new(StalledMerge {
            entered: entered.clone(),
            go: go.clone(),
        }),
    );
    let holder = Engine::builder(db.clone(), Boot::new())
        .effects(effects)
        .build();
    let h = holder.clone();
    let run = tokio::spawn(async move { h.advance_stage(t.id, "finalizer").await });
    tokio::time::timeout(std::time::Duration::from_secs(20), entered.notified())
        .await
        .expect("the merge started");

    // The daemon, another OS process, force-releases the lease.
    let r = reqwest::Client::new()
        .post(d.url("/transition-lease/release?work_item=DEMO-6"))
        .bearer_auth("admin-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["released"]["actor"], "finalizer", "{body}");

    // The stalled holder wakes up: its done row, hold and CAS are fenced.
    go.notify_one();
    let out = run.await.unwrap();
    assert!(matches!(out, Err(EngineError::LeaseLost { .. })), "{out:?}");
    let now = task(&db, t.id).await;
    assert_eq!(
        (now.stage, now.stage_version, now.hold_reason),
        (Stage::Deploy, 7, None)
    );
    let states: Vec<String> = sqlx::query_scalar("SELECT state FROM effects WHERE task_id = ?")
        .bind(t.id)
        .fetch_all(db.reader())
        .await
        .unwrap();
    assert_eq!(states, ["planned"], "left for the next holder to reconcile");
    d.signal(Signal::SIGTERM);
    assert!(d.exited(20).await.success());
}
