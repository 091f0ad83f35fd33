//! Settings (F-31): built-in defaults → TOML file named by `ORCH_CONFIG` →
//! `ORCH_*` environment. Loaded once at the edge and passed down; nothing else
//! in the crate reads the environment. The `[[projects]]` list is live (B-9,
//! `live.rs`): the daemon re-reads the file and swaps it in.
//!
//! Validation is per key: a key with a safe default falls back to it with a
//! warning naming the key; a key without one (the bind address, a project's
//! `repo_url`) fails start-up with a message naming the key and its source.

mod live;
mod load;
mod ops;

pub use live::{Changes, Fingerprint, Projects, Source};
pub use ops::{OpsSettings, TrackerMode, UpdatesMode};

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Format, Toml};
use serde::{Deserialize, Serialize, Serializer};

use load::{EnvProvider, Fields, line_col};

use crate::domain::prices::PriceTable;

/// Environment variables that hold the daemon's own secrets: never handed on
/// to an agent or a gate command (they run code we did not write).
pub const SECRET_ENV_KEYS: &[&str] = &[
    "ORCH_ADMIN_TOKEN",
    "ORCH_PLANE_API_KEY",
    "ORCH_PLANE_WEBHOOK_SECRET",
    "ORCH_GITEA_TOKEN",
    "ORCH_GITEA_WEBHOOK_SECRET",
    "ORCH_TELEGRAM_BOT_TOKEN",
    "ORCH_TELEGRAM_WEBHOOK_SECRET",
];

/// A secret value: never printed, never serialized in clear.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The clear value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.0.is_empty() { "" } else { "***" })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// F-04: who may be written to in Plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlaneWriteMode {
    Live,
    Sandbox,
    Off,
}

/// Plane status names; ids are resolved through the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlaneStatuses {
    pub to_analyse: String,
    pub needs_input: String,
    pub in_progress: String,
    pub in_review: String,
    pub approved: String,
    pub rejected: String,
    pub stop: String,
    pub confirm_deploy: String,
    pub awaiting_deploy: String,
    pub deploying: String,
    pub monitoring: String,
    pub done: String,
    pub cancelled: String,
}

impl Default for PlaneStatuses {
    fn default() -> Self {
        Self {
            to_analyse: "To Analyse".into(),
            needs_input: "Needs Input".into(),
            in_progress: "In Progress".into(),
            in_review: "In Review".into(),
            approved: "Approved".into(),
            rejected: "Rejected".into(),
            stop: "STOP".into(),
            confirm_deploy: "Confirm Deploy".into(),
            awaiting_deploy: "Awaiting Deploy".into(),
            deploying: "Deploying".into(),
            monitoring: "Monitoring after Deploy".into(),
            done: "Done".into(),
            cancelled: "Cancelled".into(),
        }
    }
}

impl PlaneStatuses {
    /// Every status key, in the order of the struct.
    pub const KEYS: [&'static str; 13] = [
        "to_analyse",
        "needs_input",
        "in_progress",
        "in_review",
        "approved",
        "rejected",
        "stop",
        "confirm_deploy",
        "awaiting_deploy",
        "deploying",
        "monitoring",
        "done",
        "cancelled",
    ];

    /// The configured Plane state name of a status key.
    pub fn name_of(&self, key: &str) -> Option<&str> {
        let name = match key {
            "to_analyse" => &self.to_analyse,
            "needs_input" => &self.needs_input,
            "in_progress" => &self.in_progress,
            "in_review" => &self.in_review,
            "approved" => &self.approved,
            "rejected" => &self.rejected,
            "stop" => &self.stop,
            "confirm_deploy" => &self.confirm_deploy,
            "awaiting_deploy" => &self.awaiting_deploy,
            "deploying" => &self.deploying,
            "monitoring" => &self.monitoring,
            "done" => &self.done,
            "cancelled" => &self.cancelled,
            _ => return None,
        };
        Some(name.as_str())
    }

    /// The status key of a Plane state name. Case and surrounding blanks are
    /// ignored: people rename states in the UI, not their meaning.
    pub fn key_of(&self, name: &str) -> Option<&'static str> {
        let name = name.trim();
        Self::KEYS.into_iter().find(|k| {
            self.name_of(k)
                .is_some_and(|n| !n.trim().is_empty() && n.trim().eq_ignore_ascii_case(name))
        })
    }
}

/// The `[plane]` table of the TOML file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlaneTable {
    pub workspace: String,
    pub statuses: PlaneStatuses,
}

/// Per-role override of the agent command, model and effort.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentOverride {
    pub command: Option<String>,
    pub model: Option<String>,
    pub effort: Option<String>,
}

/// One `[[projects]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Project {
    pub name: String,
    #[serde(default)]
    pub plane_project_id: String,
    #[serde(default)]
    pub work_item_prefix: String,
    /// Required: any git URL the daemon can fetch from and push to.
    #[serde(default)]
    pub repo_url: String,
    #[serde(default)]
    pub gitea_repo: String,
    #[serde(default = "default_branch")]
    pub default_branch: String,
    #[serde(default)]
    pub test_command: String,
    #[serde(default)]
    pub deterministic_tester: bool,
    #[serde(default)]
    pub staging_command: String,
    #[serde(default)]
    pub deploy_command: String,
    /// Optional (F-19): prints the coverage percentage as its last number;
    /// the ratchet fails a drop below the project's baseline. Empty = no gate.
    #[serde(default)]
    pub coverage_command: String,
    /// Optional (F-19): a security scan run by the merge gate after the
    /// re-test, on the head that will merge; non-zero exit = findings → back
    /// to development. Empty = no gate.
    #[serde(default)]
    pub security_command: String,
    /// Optional (F-19): rebuilds the deployable image before deploy. Empty = none.
    #[serde(default)]
    pub image_command: String,
    #[serde(default)]
    pub agents: BTreeMap<String, AgentOverride>,
    /// Read-only URLs the deterministic tester GETs after the test command
    /// (F-20); any answer but 2xx fails the run.
    #[serde(default)]
    pub smoke_urls: Vec<String>,
    /// B-10: where this project's work items live. Unset = `local` when no
    /// Plane base URL is configured, else `plane` (resolved at load).
    #[serde(default)]
    pub tracker: Option<TrackerKind>,
    /// B-10: what merges this project's branches. Unset = `local` when no
    /// Gitea base URL is configured, else `gitea` (resolved at load).
    #[serde(default)]
    pub forge: Option<ForgeKind>,
}

/// `[[projects]].tracker` (B-10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrackerKind {
    Plane,
    /// Work items, statuses and comments in our own database.
    Local,
}

/// `[[projects]].forge` (B-10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForgeKind {
    Gitea,
    /// Any git remote: the task branch is the "PR", merges are ours.
    Local,
}

impl Project {
    /// The project's tracker; `local` until load has resolved the default.
    pub fn tracker_kind(&self) -> TrackerKind {
        self.tracker.unwrap_or(TrackerKind::Local)
    }

    /// The project's forge; `local` until load has resolved the default.
    pub fn forge_kind(&self) -> ForgeKind {
        self.forge.unwrap_or(ForgeKind::Local)
    }

    /// The repository's name as the forge and its webhooks call it: the
    /// Gitea `owner/name`, or the project's own name with the local forge.
    pub fn forge_name(&self) -> &str {
        match self.forge_kind() {
            ForgeKind::Gitea => &self.gitea_repo,
            ForgeKind::Local => &self.name,
        }
    }
}

fn default_branch() -> String {
    "main".into()
}

/// The daemon's whole configuration. Every field `foo_bar` is `ORCH_FOO_BAR`
/// in the environment; `.env.example` documents each one.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub bind: SocketAddr,
    pub database_url: String,
    pub admin_token: Secret,
    pub log_format: LogFormat,
    pub log_level: String,
    /// Upper bound for a request body, in bytes.
    pub http_body_limit_bytes: usize,
    /// F-30: how long a connection may take to send a request's header,
    /// and may sit idle between keep-alive requests, before it is closed.
    pub http_header_timeout_ms: u64,
    /// F-30: how long a webhook's body may take to arrive once its header
    /// has (a slow body would hold a webhook slot); 408 past it.
    pub http_body_timeout_ms: u64,
    /// F-30: open connections at most; one past it gets a bare 503.
    pub http_max_connections: u64,
    /// F-30: webhook requests handled at once; one more waits at most
    /// `webhook_shed_after_ms` for a slot, then gets 503 with Retry-After.
    pub webhook_max_in_flight: u64,
    pub webhook_shed_after_ms: u64,
    /// How long shutdown waits for in-flight requests and loops.
    pub shutdown_grace_s: u64,
    /// B-13: how long a graceful stop waits for irreversible effects in
    /// flight (merge, deploy, image, branch delete) before it exits and
    /// leaves them running detached for the next start to adopt. Default:
    /// `deploy_timeout_s` + 60, so a deploy within its timeout finishes.
    pub shutdown_effect_drain_s: u64,

    pub plane_base_url: String,
    pub plane_api_key: Secret,
    pub plane_webhook_secret: Secret,
    pub plane_write_mode: PlaneWriteMode,
    pub plane_sandbox_projects: Vec<String>,
    /// Our bot's Plane user id; empty = asked from `GET /api/v1/users/me/`.
    /// Webhooks whose actor is this user are echoes of our own writes.
    pub plane_bot_user_id: String,
    /// Issue 11 pt 2: the daemon's own budget of Plane requests, shared by
    /// every caller (Plane's default API-key limit is 60 a minute). A write
    /// that finds it spent is queued durably (`plane_outbox`) and sent later.
    pub plane_rate_limit_per_min: u64,
    /// The window of that budget, 60 000 ms unless a test shortens it (the
    /// budget is `plane_rate_limit_per_min` requests per window).
    pub plane_rate_limit_window_ms: u64,
    pub gitea_base_url: String,
    pub gitea_token: Secret,
    pub gitea_webhook_secret: Secret,
    pub telegram_bot_token: Secret,
    pub telegram_chat_id: String,
    pub telegram_api_url: String,

    pub workspace_root: PathBuf,
    pub agent_command: String,
    /// B-12: how agents and gate commands are confined (`landlock`, the
    /// default, or `off`).
    pub agent_sandbox: crate::sandbox::Mode,
    /// Extra directories agents may read and execute (`:`-separated in the
    /// environment), e.g. where their CLIs are installed.
    pub agent_read_paths: Vec<PathBuf>,
    /// Default model and effort handed to agents (`ORCH_MODEL`, `ORCH_EFFORT`).
    pub agent_model: String,
    pub agent_effort: String,
    /// Jobs running at once, in all and per project (F-11).
    pub max_concurrent_jobs: u64,
    pub max_concurrent_jobs_per_project: u64,
    /// Runs of one stage before the task holds and alerts (F-13).
    pub agent_max_attempts: u64,
    /// SIGTERM → SIGKILL grace when a process group is stopped.
    pub agent_kill_grace_s: u64,
    /// Cost ceilings in USD; 0 = no ceiling (B-7).
    pub task_budget_usd: f64,
    pub stage_budget_usd: f64,

    pub worker_poll_interval_ms: u64,
    pub reconciler_interval_s: u64,
    pub reaper_interval_s: u64,
    pub reaper_finalize_grace_s: u64,
    pub reaper_max_running_s: u64,
    pub agent_stall_timeout_s: u64,
    pub merge_retest_timeout_s: u64,
    /// How often an infra failure (timeout, lock-busy) of the merge gate's
    /// re-test is retried in place before the task holds (F-18).
    pub merge_gate_infra_retries: u64,
    /// Timeout of the deterministic tester and the staging command (F-20, F-22).
    pub command_timeout_s: u64,
    /// Cap in bytes of one artifact file an agent wrote; a larger one is
    /// refused unread and its gate fails (invariant 8).
    pub artifact_max_bytes: u64,
    /// Off: `merge_pr` makes one attempt (F-07).
    pub merge_retry_enabled: bool,
    pub merge_retry_max_attempts: u32,
    pub merge_retry_base_s: u64,
    pub merge_retry_max_s: u64,
    pub post_deploy_window_s: u64,
    pub post_deploy_tick_s: u64,
    /// Timeout of the production deploy and image commands (F-23, F-19); the
    /// process group is killed when it passes.
    pub deploy_timeout_s: u64,
    /// Reaper/reconciler loops on or off (F-15, F-16).
    pub reaper_enabled: bool,
    pub reconciler_enabled: bool,
    /// Repeats of one alert (kind, work item, key) within this window are
    /// counted, not sent; 0 = no dedup (F-27).
    pub alert_dedup_window_s: u64,
    /// Processed webhook deliveries and Telegram updates, sent outbox rows,
    /// quiet alert dedup rows and finished runs' files older than this are
    /// trimmed; 0 = keep everything (issue 16).
    /// Fractions allowed (`0.5` = 12 h).
    pub retention_days: f64,
    pub retention_interval_s: u64,

    pub plane: PlaneTable,
    /// Per-model prices (USD per million tokens) for output that reports no
    /// cost (Codex) and for the running cost of a stream (B-7): the built-in
    /// list with the TOML's `[prices]` laid over it.
    pub prices: PriceTable,
    /// Live (B-9): read it at use time, never keep a copy.
    pub projects: Projects,
    /// The file and environment these came from, for a reload (B-9).
    #[serde(skip)]
    pub source: Option<Source>,
    /// Telegram card and gates, disk watchdog, build-cache pruner
    /// (F-26..F-29, B-11): `config/ops.rs`.
    #[serde(flatten)]
    pub ops: OpsSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".parse().expect("literal address"),
            database_url: "sqlite://orchestrator.db".into(),
            admin_token: Secret::default(),
            log_format: LogFormat::Text,
            log_level: "info".into(),
            http_body_limit_bytes: 1024 * 1024,
            http_header_timeout_ms: 5_000,
            http_body_timeout_ms: 10_000,
            http_max_connections: 1_024,
            webhook_max_in_flight: 64,
            webhook_shed_after_ms: 1_000,
            shutdown_grace_s: 4,
            shutdown_effect_drain_s: 1800 + 60,
            plane_base_url: String::new(),
            plane_api_key: Secret::default(),
            plane_webhook_secret: Secret::default(),
            plane_write_mode: PlaneWriteMode::Live,
            plane_sandbox_projects: Vec::new(),
            plane_bot_user_id: String::new(),
            plane_rate_limit_per_min: 60,
            plane_rate_limit_window_ms: 60_000,
            gitea_base_url: String::new(),
            gitea_token: Secret::default(),
            gitea_webhook_secret: Secret::default(),
            telegram_bot_token: Secret::default(),
            telegram_chat_id: String::new(),
            telegram_api_url: "https://api.telegram.org".into(),
            workspace_root: PathBuf::from("workspaces"),
            agent_sandbox: crate::sandbox::Mode::Landlock,
            agent_read_paths: Vec::new(),
            agent_command:
                "claude -p \"$(cat \"$ORCH_PROMPT_FILE\")\" --output-format stream-json --verbose"
                    .into(),
            agent_model: String::new(),
            agent_effort: String::new(),
            max_concurrent_jobs: 2,
            max_concurrent_jobs_per_project: 1,
            agent_max_attempts: 3,
            agent_kill_grace_s: 10,
            task_budget_usd: 0.0,
            stage_budget_usd: 0.0,
            worker_poll_interval_ms: 1000,
            reconciler_interval_s: 60,
            reaper_interval_s: 30,
            reaper_finalize_grace_s: 300,
            reaper_max_running_s: 7200,
            agent_stall_timeout_s: 900,
            merge_retest_timeout_s: 900,
            merge_gate_infra_retries: 2,
            command_timeout_s: 1800,
            artifact_max_bytes: crate::untrusted::DEFAULT_MAX_BYTES,
            merge_retry_enabled: true,
            merge_retry_max_attempts: 3,
            merge_retry_base_s: 2,
            merge_retry_max_s: 5,
            post_deploy_window_s: 1800,
            post_deploy_tick_s: 60,
            deploy_timeout_s: 1800,
            reaper_enabled: true,
            reconciler_enabled: true,
            alert_dedup_window_s: 3600,
            retention_days: 30.0,
            retention_interval_s: 3600,
            plane: PlaneTable::default(),
            prices: PriceTable::default(),
            projects: Projects::default(),
            source: None,
            ops: OpsSettings::default(),
        }
    }
}

/// Why the configuration cannot be used. Every variant names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path} (named by ORCH_CONFIG): {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: line {line}, column {column}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("invalid configuration:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
}

/// What loading produced besides the settings: warnings for keys that fell
/// back to their default, to be logged once logging is up.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub warnings: Vec<String>,
    pub file: Option<PathBuf>,
}

/// The process environment as the loader sees it: `ORCH_*` pairs.
/// `main` collects it once (after reading `.env`); tests build their own.
#[derive(Debug, Clone, Default)]
pub struct EnvVars(Vec<(String, String)>);

impl EnvVars {
    pub fn from_process() -> Self {
        Self(std::env::vars().collect())
    }
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

impl Settings {
    /// Load from the file named by `ORCH_CONFIG` (if any) and the environment.
    pub fn load(env: &EnvVars) -> Result<(Settings, LoadReport), ConfigError> {
        let file = env.get("ORCH_CONFIG").map(PathBuf::from);
        Self::load_with(file.as_deref(), env)
    }

    pub fn load_with(
        file: Option<&Path>,
        env: &EnvVars,
    ) -> Result<(Settings, LoadReport), ConfigError> {
        let mut fig = Figment::new();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            // Parse once ourselves so a syntax error names file, line and column.
            if let Err(e) = text.parse::<toml::Table>() {
                let (line, column) = e.span().map(|s| line_col(&text, s.start)).unwrap_or((0, 0));
                return Err(ConfigError::Syntax {
                    path: path.to_path_buf(),
                    line,
                    column,
                    message: e.message().to_string(),
                });
            }
            fig = fig.merge(Toml::file_exact(path));
        }
        fig = fig.merge(EnvProvider(env));
        let mut report = LoadReport {
            file: file.map(Path::to_path_buf),
            ..Default::default()
        };
        let mut settings = Fields::new(&fig, &mut report)?.build()?;
        settings.source = file.map(|f| Source::new(f, env));
        Ok((settings, report))
    }

    /// The database file path behind `database_url` (`sqlite://<path>`,
    /// `sqlite:<path>` or a plain path).
    pub fn database_path(&self) -> PathBuf {
        database_path(&self.database_url)
    }

    /// The project named `name` in the list of now (B-9).
    pub fn project(&self, name: &str) -> Option<&'static Project> {
        self.projects.current().iter().find(|p| p.name == name)
    }
}

pub fn database_path(url: &str) -> PathBuf {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    let rest = rest.split('?').next().unwrap_or(rest);
    PathBuf::from(rest)
}

#[cfg(test)]
mod tests;
