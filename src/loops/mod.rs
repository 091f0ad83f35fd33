//! Background loops: each a tick function run by the supervisor at an
//! interval (`shutdown::Supervisor`), never panicking per tick.

pub mod build_cache_pruner;
pub mod cards;
pub mod config_reload;
pub mod disk_watchdog;
pub mod finalizer;
pub mod forge_poll;
pub mod post_deploy;
pub mod reaper;
pub mod reconciler;
pub mod recovery;
pub mod retention;
pub mod telegram_updates;
pub mod tracker_poll;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use crate::agents::runtime::Runtime;
use crate::shutdown::Supervisor;
use crate::status::StatusBlock;
// Tick durations in `/metrics`; the long-polling Telegram loop is not timed
// (its tick is mostly waiting).
use crate::telemetry::metrics::families as ticks;

/// Recover the jobs of an older boot, then start the worker, the reaper
/// and the reconciler (each with its switch). Returns their `/queue` blocks.
pub async fn start(
    rt: &Runtime,
    supervisor: &mut Supervisor,
) -> anyhow::Result<Vec<Arc<dyn StatusBlock>>> {
    let recovered = recovery::requeue_running_jobs(rt).await?;
    tracing::info!(
        finalized = recovered.finalized,
        adopted = recovered.adopted,
        requeued = recovered.requeued,
        "jobs of the previous run recovered"
    );
    let s = &rt.settings;
    let mut blocks: Vec<Arc<dyn StatusBlock>> = vec![rt.merge_gate.clone()];
    // F-25: STOP's counters live on the pipeline, shared by every actor.
    blocks.push(rt.pipeline.stops.clone());

    // The worker wakes at its poll interval, or at once when the pipeline
    // queues a job a person waits for (the deploy finalizer).
    let w = rt.clone();
    let poll = Duration::from_millis(s.worker_poll_interval_ms);
    supervisor.spawn_loop("worker", Duration::from_millis(10), move || {
        let w = w.clone();
        async move {
            let stop = w.shutdown.clone();
            tokio::select! {
                _ = w.pipeline.wake.notified() => {}
                _ = tokio::time::sleep(poll) => {}
                // A graceful stop: no new work; idle until the supervisor
                // ends the loop between ticks.
                _ = stop.wait() => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    return Ok(());
                }
            }
            ticks().tick("worker", worker::tick(&w)).await.map(|_| ())
        }
    });
    if s.reaper_enabled {
        let stats = Arc::new(reaper::ReaperStats::default());
        blocks.push(stats.clone());
        let r = rt.clone();
        supervisor.spawn_loop(
            "reaper",
            Duration::from_secs(s.reaper_interval_s),
            move || {
                let (r, stats) = (r.clone(), stats.clone());
                async move { ticks().tick("reaper", reaper::tick(&r, &stats)).await }
            },
        );
    }
    if s.reconciler_enabled {
        let stats = Arc::new(reconciler::ReconcilerStats::default());
        blocks.push(stats.clone());
        let r = rt.clone();
        supervisor.spawn_loop(
            "reconciler",
            Duration::from_secs(s.reconciler_interval_s),
            move || {
                let (r, stats) = (r.clone(), stats.clone());
                async move {
                    ticks()
                        .tick("reconciler", reconciler::tick(&r, &stats))
                        .await
                }
            },
        );
    }
    // F-24: the post-deploy monitor, always on (the finalizer arms it).
    let stats = Arc::new(post_deploy::PostDeployStats::default());
    blocks.push(stats.clone());
    let p = rt.pipeline.clone();
    supervisor.spawn_loop(
        "post_deploy",
        Duration::from_secs(s.post_deploy_tick_s),
        move || {
            let (p, stats) = (p.clone(), stats.clone());
            async move {
                ticks()
                    .tick("post_deploy", post_deploy::tick(&p, &stats))
                    .await
            }
        },
    );
    // B-9: the projects file, re-read on change or SIGHUP. Its tick is
    // mostly waiting, so it is not timed.
    let reload = Arc::new(config_reload::ConfigReload::new(
        rt.settings.clone(),
        rt.notifier.clone(),
    ));
    blocks.push(reload.clone());
    let stop = rt.shutdown.clone();
    supervisor.spawn_loop("config_reload", Duration::from_millis(10), move || {
        let (reload, stop) = (reload.clone(), stop.clone());
        async move { reload.tick(stop).await }
    });
    start_ops(rt, supervisor, &mut blocks);
    Ok(blocks)
}

/// The Telegram card and gates, the disk watchdog and, last (so it stops
/// first), the build-cache pruner (F-26..F-29, B-11). None of them is on
/// the pipeline's path: each is a loop of its own whose failures are logged.
fn start_ops(rt: &Runtime, supervisor: &mut Supervisor, blocks: &mut Vec<Arc<dyn StatusBlock>>) {
    let s = &rt.settings;
    if let Some(cards) = cards::Cards::from_settings(s, rt.db.clone()) {
        blocks.push(cards.stats.clone());
        supervisor.spawn_loop(
            "telegram_cards",
            Duration::from_millis(s.ops.telegram_card_interval_ms),
            move || {
                let cards = cards.clone();
                async move { ticks().tick("telegram_cards", cards.tick()).await }
            },
        );
    }
    // B-11: taps on the card's buttons. The supervisor's interval only
    // paces the ticks; the long poll itself waits for taps.
    match (
        s.ops.telegram_updates,
        telegram_updates::Gates::from_settings(s, rt.pipeline.clone()),
    ) {
        (crate::config::UpdatesMode::Off, _) | (_, None) => {}
        (mode, Some(mut gates)) => {
            gates.stop = Some(rt.shutdown.clone());
            blocks.push(gates.stats.clone());
            let webhook = mode == crate::config::UpdatesMode::Webhook;
            supervisor.spawn_loop("telegram_updates", Duration::from_millis(10), move || {
                let gates = gates.clone();
                async move {
                    if webhook {
                        gates.webhook_tick().await
                    } else {
                        gates.poll_tick().await
                    }
                }
            });
        }
    }
    // F-28: the disk watchdog.
    if s.ops.disk_watchdog_enabled {
        let watchdog = Arc::new(disk_watchdog::DiskWatchdog::from_settings(
            s,
            rt.notifier.clone(),
        ));
        blocks.push(watchdog.clone());
        supervisor.spawn_loop(
            "disk_watchdog",
            Duration::from_secs(s.ops.disk_watchdog_interval_s),
            move || {
                let w = watchdog.clone();
                async move { ticks().tick("disk_watchdog", w.tick()).await }
            },
        );
    }
    // Retention (issue 16): the database and the workspace stay bounded.
    if s.retention_days > 0.0 {
        let r = Arc::new(retention::Retention::new(
            rt.db.clone(),
            rt.workspace.root(),
            s.retention_days,
            s.alert_dedup_window_s,
        ));
        blocks.push(r.clone());
        supervisor.spawn_loop(
            "retention",
            Duration::from_secs(s.retention_interval_s),
            move || {
                let r = r.clone();
                async move { ticks().tick("retention", r.tick()).await }
            },
        );
    }
    // F-29: the build-cache pruner, started last so it stops first. Its
    // block shows even when it is off or has no target.
    let pruner = Arc::new(build_cache_pruner::Pruner::from_settings(
        s,
        rt.notifier.clone(),
    ));
    blocks.push(pruner.clone());
    if s.ops.build_cache_prune_enabled && !s.ops.build_cache_prune_target.is_empty() {
        supervisor.spawn_loop(
            "build_cache_pruner",
            Duration::from_secs(s.ops.build_cache_prune_interval_s),
            move || {
                let p = pruner.clone();
                async move { ticks().tick("build_cache_pruner", p.tick()).await }
            },
        );
    }
}
