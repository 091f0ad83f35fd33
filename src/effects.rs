//! The daemon's effect implementations (B-1): what each `EffectKind` does
//! outside. The stage engine runs them only inside a transition, under the
//! lease, through the journal; this module only builds the registry.
//!
//! Every kind starts as `NoopEffect` (`stage_engine::noop_effects`) and is
//! replaced here as its capability lands, so a kind is never missing.

pub mod adopt;
pub mod branch;
pub use crate::checkouts as checkout;
pub mod deploy;
pub mod deploy_agent;
pub mod deploy_deps;
pub mod markers;
pub mod ratchet;

use std::sync::Arc;

use crate::clients::Forge;
use crate::config::Settings;
use crate::db::Db;
use crate::stage_engine::{self, EffectRegistry};

/// The registry the daemon's engine runs with.
pub fn daemon_effects(settings: Arc<Settings>, db: Db, forge: Arc<dyn Forge>) -> EffectRegistry {
    let reg = stage_engine::noop_effects();
    // F-25: delete_branch.
    let reg = branch::register(reg, settings.clone(), forge.clone());
    // F-19, F-23: merge_pr, prod_deploy, coverage_ratchet, image_rebuild.
    deploy::register(reg, &deploy_deps::DeployDeps::new(settings, db, forge))
}
