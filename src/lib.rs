//! orchestrator: a daemon that drives LLM coding agents through a delivery
//! pipeline (Plane in, Gitea merges, Telegram reports).
//!
//! # Layout
//! - `config`: `Settings` from defaults → TOML (`ORCH_CONFIG`) → `ORCH_*` env (F-31).
//! - `db`: SQLite pools (one writer, a read pool), migrations, one file per table.
//! - `domain`: pure types: the stage table (F-09), verdict parsing, gates (QG_CHECKS).
//! - `git`: worktrees through the git CLI (F-08).
//! - `checkouts`: per-project clones for merges and deploys, every git call bounded (F-19, F-23, B-10).
//! - `proc_group`: THE spawner of agent and gate commands: own process group, tree-kill SIGTERM → grace → SIGKILL (F-12, F-18, B-8).
//! - `memory`: the allocator's side of a flat resident size (arena cap, trim).
//! - `procfs`: the one reader of `/proc` (stat, start time, environment, group members, kernel boot id).
//! - `clock`: the loops' clock (tokio time, so tests can pause it).
//! - `effects`: what each irreversible effect kind does outside (merge, deploy, coverage ratchet, image; F-19, F-23; the branch delete of a cancel, F-25).
//! - `stage_engine`: THE only writer of `tasks.stage`: lease, CAS, effect journal (F-10, B-1).
//! - `clients`: the `Tracker` and `Forge` ports, their adapters (Plane, Gitea, the built-in local pair, B-10) and the per-project router.
//! - `cli`: the operator CLI's client of a running daemon (B-4) and `orchestrator demo`.
//! - `intake`: signed Plane and Gitea webhooks in, stored, deduplicated, replayable (F-01, F-06, B-6).
//! - `events`: what a webhook means, independent of its wire format.
//! - `gates`: guards before outside writes (F-05 deploy status guard).
//! - `notify`: the `Notifier` port for alerts.
//! - `pipeline`: what events mean; after a stage move, the next job and the tracker status; STOP and its cascade (F-25).
//! - `loops`: worker, reaper, reconciler, start-up job recovery (F-11, F-15, F-16).
//! - `http`: the router, `/health`, `/queue`, `/metrics`, the admin lease release.
//! - `status`: the `StatusBlock` trait of a `/queue` block and `Blocks` (a leaf: any layer implements it without importing `http`).
//! - `api_error`: `ApiError`, the one error type of every handler (below `http`, so the intake's handlers use it too).
//! - `shutdown`: one shutdown signal and the loop supervisor.
//! - `app`: wiring and the start-up/shutdown order.
//! - `telemetry`: tracing set-up; `telemetry::metrics`, the metric families and the label-value escaper (a leaf).
//! - `untrusted`: reading what an agent wrote: regular files only, no symlink followed, size-capped, off the runtime (invariant 8, B-12).

pub mod agents;
pub mod api_error;
pub mod app;
pub mod checkouts;
pub mod cli;
pub mod clients;
pub mod clock;
pub mod config;
pub mod db;
pub mod domain;
pub mod effects;
pub mod events;
pub mod gates;
pub mod git;
pub mod http;
pub mod intake;
pub mod loops;
pub mod memory;
pub mod notify;
pub mod pipeline;
pub mod proc_group;
pub mod procfs;
pub mod sandbox;
pub mod shutdown;
pub mod stage_engine;
pub mod status;
pub mod telemetry;
pub mod untrusted;
