//! Shared test support: temp databases, settings, a started daemon.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use orchestrator::config::{EnvVars, Settings};

/// Settings for a daemon on an ephemeral port with its database in `dir`.
pub fn settings_in(dir: &Path, extra: &[(&str, &str)]) -> Settings {
    let db = dir.join("orchestrator.db");
    let mut pairs: Vec<(String, String)> = vec![
        (
            "ORCH_DATABASE_URL".into(),
            format!("sqlite://{}", db.display()),
        ),
        ("ORCH_BIND".into(), "127.0.0.1:0".into()),
        (
            "ORCH_WORKSPACE_ROOT".into(),
            dir.join("ws").display().to_string(),
        ),
    ];
    pairs.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Settings::load(&EnvVars::from_pairs(pairs))
        .expect("test settings")
        .0
}

pub fn db_path(dir: &Path) -> PathBuf {
    dir.join("orchestrator.db")
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_orchestrator")
}
pub mod clis;
pub mod daemon;
pub mod deploy_env;
pub mod doubles;
pub mod gitea_double;
pub mod intake_env;
pub mod model_api;
pub mod pairs;
pub mod plane_double;
pub mod plane_webhooks;
pub mod runtime;
pub mod sim;
pub mod stop_env;
pub mod telegram_double;
