//! Wiring: open the database, take the instance lock, recover, start loops,
//! serve; on shutdown stop in reverse. Start-up order follows
//! `design/stage-engine.md`: migrate → boot id → lock → reclaim → loops → serve.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use nix::fcntl::{Flock, FlockArg};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::clients;
use crate::config::Settings;
use crate::db::Db;
use crate::http::{self, AppState, Metrics};
use crate::intake::{Intake, Replay};
use crate::notify::telegram::{FanOut, TelegramAlerts};
use crate::notify::{Dedup, LogNotifier, Notifier};
use crate::pipeline::Pipeline;
use crate::shutdown::{self, Shutdown, ShutdownTrigger, Supervisor};
use crate::stage_engine::{Boot, Engine};

/// One daemon per database: an exclusive lock on `<db>.lock`.
pub struct InstanceLock {
    _lock: Flock<File>,
    pub path: PathBuf,
}

pub fn instance_lock(db_path: &Path) -> anyhow::Result<InstanceLock> {
    let mut name = db_path.as_os_str().to_owned();
    name.push(".lock");
    let path = PathBuf::from(name);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open the instance lock {}", path.display()))?;
    let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        anyhow::anyhow!(
            "another orchestrator is already running on {} (lock {} is held: {e}); stop it first",
            db_path.display(),
            path.display()
        )
    })?;
    Ok(InstanceLock { _lock: lock, path })
}

/// The daemon's alert channel (F-27): the log, behind the deduplicating
/// layer whose state is in the database (`ORCH_ALERT_DEDUP_WINDOW_S`).
/// Every notifier of a process (engine, pipeline, runtime) is this one.
pub fn alert_channel(settings: &Settings, db: &Db) -> Arc<Dedup> {
    let mut channels: Vec<Arc<dyn Notifier>> = vec![Arc::new(LogNotifier)];
    // Telegram beside the log when a bot and a chat are configured (F-27).
    let chat = settings.telegram_chat_id.trim();
    if !settings.telegram_bot_token.is_empty() && !chat.is_empty() {
        let bot = crate::clients::telegram::Bot::new(
            &settings.telegram_api_url,
            settings.telegram_bot_token.clone(),
        );
        channels.push(Arc::new(TelegramAlerts::new(bot, chat)));
    }
    Arc::new(Dedup::new(
        Arc::new(FanOut(channels)),
        db.clone(),
        Duration::from_secs(settings.alert_dedup_window_s),
    ))
}

/// The pipeline over the real clients (F-03, F-07, B-10): each project's
/// tracker and forge, Plane and Gitea or the built-in local pair.
pub fn build_pipeline(settings: Arc<Settings>, db: Db, engine: Engine) -> Pipeline {
    let workspace = crate::git::Workspace::new(&settings.workspace_root);
    let alerts = alert_channel(&settings, &db);
    build_pipeline_with(settings, db, engine, workspace, alerts)
}

/// [`build_pipeline`] over the runtime's workspace: one instance, so its
/// per-clone locks serialize the worker's and STOP's worktree operations.
pub fn build_pipeline_with(
    settings: Arc<Settings>,
    db: Db,
    engine: Engine,
    workspace: crate::git::Workspace,
    notifier: Arc<dyn Notifier>,
) -> Pipeline {
    let (tracker, plane_outbox) = clients::daemon_tracker(&settings, &db);
    Pipeline {
        tracker,
        plane_outbox,
        forge: clients::daemon_forge(&settings),
        notifier,
        engine,
        db,
        settings,
        workspace,
        stops: Default::default(),
        wake: Default::default(),
    }
}

/// The effect implementations of the daemon's engine (F-19, F-23, B-1).
pub fn daemon_effects(settings: &Arc<Settings>, db: &Db) -> crate::stage_engine::EffectRegistry {
    crate::effects::daemon_effects(
        settings.clone(),
        db.clone(),
        clients::daemon_forge(settings),
    )
}

/// `orchestrator replay <delivery id> [--force]` (B-6): run a stored
/// delivery through the intake's processing again, in this process, next to
/// a running daemon or without one (the stage engine's lease and CAS fence
/// both).
pub async fn replay(settings: Settings, delivery_id: &str, force: bool) -> anyhow::Result<Replay> {
    let settings = Arc::new(settings);
    let db_path = settings.database_path();
    let db = Db::open(&db_path)
        .await
        .with_context(|| format!("opening the database {}", db_path.display()))?;
    // The daemon's effects: a replayed Confirm Deploy must really merge.
    // Its alerts share the daemon's dedup state (the same table).
    let alerts = alert_channel(&settings, &db);
    let engine = Engine::builder(db.clone(), Boot::new())
        .effects(daemon_effects(&settings, &db))
        .notifier(alerts.clone())
        .build();
    let workspace = crate::git::Workspace::new(&settings.workspace_root);
    let pipeline = build_pipeline_with(settings, db.clone(), engine, workspace, alerts);
    let intake = Intake::new(pipeline);
    let out = intake.replay(delivery_id, force).await;
    db.close().await;
    Ok(out?)
}

/// A started daemon: the address it serves on and the handles that end it.
pub struct Running {
    pub addr: SocketAddr,
    pub engine: Engine,
    trigger: ShutdownTrigger,
    force: ShutdownTrigger,
    join: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Fire a graceful stop and wait for the clean exit (B-13: effects in
    /// flight finish first, within `ORCH_SHUTDOWN_EFFECT_DRAIN_S`).
    pub async fn stop(self) -> anyhow::Result<()> {
        self.trigger.fire();
        self.join.await.context("daemon task")?
    }

    /// Wait until the daemon ends by itself (after `shutdown` fires).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.join.await.context("daemon task")?
    }

    /// The graceful stop (a first SIGTERM).
    pub fn trigger(&self) -> &ShutdownTrigger {
        &self.trigger
    }

    /// Stop waiting for effects in flight (a second signal): they are left
    /// running detached for the next start to adopt.
    pub fn force(&self) -> &ShutdownTrigger {
        &self.force
    }
}

/// Start the daemon on an already bound listener (tests pass port 0).
pub async fn start(settings: Settings, listener: TcpListener) -> anyhow::Result<Running> {
    let settings = Arc::new(settings);
    // Agents run confined or not at all (B-12): a kernel without Landlock
    // fails here unless the operator chose ORCH_AGENT_SANDBOX=off.
    crate::sandbox::check_available(settings.agent_sandbox)?;
    if settings.agent_sandbox == crate::sandbox::Mode::Off {
        tracing::warn!(
            "ORCH_AGENT_SANDBOX=off: agents and gate commands can read the daemon's database, config and home"
        );
    }
    let db_path = settings.database_path();
    // The lock comes first: a second daemon must not even migrate.
    let lock = instance_lock(&db_path)?;
    let db = Db::open(&db_path).await.with_context(|| {
        format!(
            "opening the database (ORCH_DATABASE_URL={})",
            settings.database_url
        )
    })?;
    let boot = Boot::new();
    tracing::info!(boot_id = %boot.boot_id, pid = boot.pid, db = %db_path.display(), "starting");
    // B-13: the effects in flight, which a graceful stop waits for.
    let drain = crate::shutdown::EffectDrain::new();
    let workspace = crate::git::Workspace::new(&settings.workspace_root);
    let inputs = crate::stage_engine::inputs::WorkspaceInputs {
        settings: settings.clone(),
        workspace: workspace.clone(),
    };
    // F-27: every alert of the daemon goes through one dedup layer.
    let alerts = alert_channel(&settings, &db);
    let engine = Engine::builder(db.clone(), boot)
        .inputs(Arc::new(inputs))
        .effects(daemon_effects(&settings, &db))
        .notifier(alerts.clone())
        .drain(drain.clone())
        .build();
    let recovery = engine
        .reclaim_stale_leases()
        .await
        .context("recovering leases")?;
    // One pipeline for every actor: the `stop` block counts them all (F-25).
    let pipeline = build_pipeline_with(
        settings.clone(),
        db.clone(),
        engine.clone(),
        workspace.clone(),
        alerts.clone(),
    );
    // Transitions a crash left with an effect open are finished by
    // finalizer jobs, not here: an adopted deploy may run for half an hour
    // and start-up (and /health) must not wait for it.
    let unfinished = engine
        .unfinished_transitions()
        .await
        .context("finding unfinished transitions")?;
    for task_id in &unfinished {
        let Some(task) = crate::db::tasks::get(db.reader(), *task_id).await? else {
            continue;
        };
        let q = pipeline
            .queue_finalizer(*task_id, task.stage)
            .await
            .context("queueing a finalizer")?;
        tracing::info!(work_item = %task.work_item, job = q.id(), "unfinished transition: finalizer queued");
    }
    tracing::info!(
        reclaimed_leases = recovery.reclaimed_leases,
        unfinished_transitions = unfinished.len(),
        "recovery done"
    );

    let mut supervisor = Supervisor::new();
    // Intake (F-01, F-06): the worker acts on stored deliveries after the
    // answer; its first tick also picks up what a crash left unprocessed.
    let intake = Intake::new(pipeline.clone());
    let worker = intake.clone();
    supervisor.spawn_loop("intake", Duration::from_millis(10), move || {
        let worker = worker.clone();
        async move { worker.tick(Duration::from_secs(1)).await.map(|_| ()) }
    });
    // Agent runs (F-11..F-16): recovery of an older boot's jobs, then the
    // worker, reaper and reconciler.
    let (trigger, stop) = shutdown::channel();
    let rt = crate::agents::runtime::Runtime {
        db: db.clone(),
        settings: settings.clone(),
        workspace,
        pipeline,
        notifier: alerts.clone(),
        clock: crate::clock::Clock::new(),
        boot_id: engine.boot().boot_id.clone(),
        shutdown: stop.clone(),
        merge_gate: Default::default(),
    };
    // Issue 11: Plane writes that had to wait are sent from here, in order
    // per work item (its first tick sends what a previous run left queued).
    let outbox = rt.pipeline.plane_outbox.clone();
    if let Some(sender) = outbox.clone() {
        supervisor.spawn_loop("plane-outbox", Duration::from_millis(50), move || {
            let sender = sender.clone();
            async move { sender.tick(Duration::from_secs(1)).await.map(|_| ()) }
        });
    }
    let mut blocks = crate::loops::start(&rt, &mut supervisor).await?;
    blocks.push(alerts);
    blocks.push(intake.status_block());
    if let Some(outbox) = outbox {
        blocks.push(outbox);
    }
    let metrics = Arc::new(Metrics::default());
    let conns = metrics.conns.clone();
    let state = AppState {
        settings: settings.clone(),
        db: db.clone(),
        engine: engine.clone(),
        metrics,
        blocks: Arc::new(blocks),
        health: Default::default(),
    };
    let router = http::router_with_intake(state, Some(intake));
    let limits = http::server::Limits {
        header_timeout: Duration::from_millis(settings.http_header_timeout_ms),
        max_connections: usize::try_from(settings.http_max_connections).unwrap_or(usize::MAX),
    };
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "serving");
    let (force, forced) = shutdown::channel();
    let end = End {
        stop,
        forced,
        drain,
        supervisor,
        db,
        grace: Duration::from_secs(settings.shutdown_grace_s),
        drain_bound: Duration::from_secs(settings.shutdown_effect_drain_s),
        lock,
    };
    let join = tokio::spawn(serve(router, listener, limits, conns, end));
    Ok(Running {
        addr,
        engine,
        trigger,
        force,
        join,
    })
}

/// What the shutdown sequence needs.
struct End {
    stop: Shutdown,
    forced: Shutdown,
    drain: Arc<crate::shutdown::EffectDrain>,
    supervisor: Supervisor,
    db: Db,
    grace: Duration,
    drain_bound: Duration,
    lock: InstanceLock,
}

/// How often a graceful stop says what it still waits for.
const DRAIN_LOG_EVERY: Duration = Duration::from_secs(5);

/// Serve until the stop fires, then, in order (B-13): refuse new work and
/// new effects at once; wait for the irreversible effects in flight, bounded
/// (webhooks are still accepted and stored meanwhile: neither Plane nor
/// Gitea retries a refused delivery); stop the server, the loops, the
/// database. Past the bound, or on a second signal, what still runs is left
/// running detached (its own session) for the next start to adopt.
async fn serve(
    router: axum::Router,
    listener: TcpListener,
    limits: http::server::Limits,
    conns: Arc<http::server::ConnStats>,
    end: End,
) -> anyhow::Result<()> {
    let (server_stop, server_stopped) = shutdown::channel();
    let server = tokio::spawn(http::server::serve(
        listener,
        router,
        limits,
        conns,
        server_stopped.wait(),
    ));
    end.stop.clone().wait().await;
    end.drain.start_draining();
    let waiting = end.drain.in_flight();
    if !waiting.is_empty() {
        tracing::warn!(
            in_flight = waiting.len(),
            bound_s = end.drain_bound.as_secs(),
            "graceful stop: no new work; waiting for the effects in flight (a second signal exits at once)"
        );
    }
    match end
        .drain
        .wait_idle(end.drain_bound, DRAIN_LOG_EVERY, end.forced.clone().wait())
        .await
    {
        crate::shutdown::DrainEnd::Idle => {}
        crate::shutdown::DrainEnd::TimedOut(left) => {
            tracing::warn!(
                ?left,
                "graceful stop: ORCH_SHUTDOWN_EFFECT_DRAIN_S passed; leaving these running detached for the next start to adopt"
            )
        }
        crate::shutdown::DrainEnd::Forced(left) => {
            tracing::warn!(
                ?left,
                "second signal: exiting now; leaving these running detached for the next start to adopt"
            )
        }
    }
    let (grace, supervisor, db, lock) = (end.grace, end.supervisor, end.db, end.lock);
    server_stop.fire();
    // Stop accepting; in-flight requests get the grace period.
    match tokio::time::timeout(grace, server).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "server task failed"),
        Err(_) => tracing::warn!("in-flight requests did not finish within the grace period"),
    }
    let late = supervisor.shutdown(grace).await;
    db.close().await;
    drop(lock);
    if late.is_empty() {
        tracing::info!("shut down cleanly");
    } else {
        tracing::warn!(?late, "shut down; some loops were aborted");
    }
    Ok(())
}

/// `orchestrator serve`: bind, start, run until SIGTERM/SIGINT; a second
/// signal during the drain exits at once (B-13).
pub async fn serve_until_signal(settings: Settings) -> anyhow::Result<()> {
    let mut signals = shutdown::Signals::install().context("installing SIGTERM/SIGINT handlers")?;
    let bind = settings.bind;
    let listener = TcpListener::bind(bind)
        .await
        .with_context(|| format!("cannot listen on {bind} (ORCH_BIND)"))?;
    let running = start(settings, listener).await?;
    signals.recv().await;
    running.trigger().fire();
    let Running { force, join, .. } = running;
    tokio::pin!(join);
    tokio::select! {
        r = &mut join => r.context("daemon task")?,
        _ = signals.recv() => {
            force.fire();
            join.await.context("daemon task")?
        }
    }
}
