//! Settings (F-31): built-in defaults → TOML file named by `ORCH_CONFIG` →
//! `ORCH_*` environment. Loaded once at the edge and passed down; nothing else
//! in the crate reads the environment.
//!
//! Validation is per key: a key with a safe default falls back to it with a
//! warning naming the key; a key without one (the bind address, a project's
//! `repo_url`) fails start-up with a message naming the key and its source.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize, Serializer};

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
    #[serde(default)]
    pub agents: BTreeMap<String, AgentOverride>,
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
    /// How long shutdown waits for in-flight requests and loops.
    pub shutdown_grace_s: u64,

    pub plane_base_url: String,
    pub plane_api_key: Secret,
    pub plane_webhook_secret: Secret,
    pub plane_write_mode: PlaneWriteMode,
    pub plane_sandbox_projects: Vec<String>,
    pub gitea_base_url: String,
    pub gitea_token: Secret,
    pub gitea_webhook_secret: Secret,
    pub telegram_bot_token: Secret,
    pub telegram_chat_id: String,
    pub telegram_api_url: String,

    pub workspace_root: PathBuf,
    pub agent_command: String,

    pub worker_poll_interval_ms: u64,
    pub reconciler_interval_s: u64,
    pub reaper_interval_s: u64,
    pub reaper_finalize_grace_s: u64,
    pub reaper_max_running_s: u64,
    pub agent_stall_timeout_s: u64,
    pub merge_retest_timeout_s: u64,
    pub merge_retry_max_attempts: u32,
    pub merge_retry_base_s: u64,
    pub merge_retry_max_s: u64,
    pub post_deploy_window_s: u64,
    pub post_deploy_tick_s: u64,

    pub plane: PlaneTable,
    pub projects: Vec<Project>,
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
            shutdown_grace_s: 4,
            plane_base_url: String::new(),
            plane_api_key: Secret::default(),
            plane_webhook_secret: Secret::default(),
            plane_write_mode: PlaneWriteMode::Live,
            plane_sandbox_projects: Vec::new(),
            gitea_base_url: String::new(),
            gitea_token: Secret::default(),
            gitea_webhook_secret: Secret::default(),
            telegram_bot_token: Secret::default(),
            telegram_chat_id: String::new(),
            telegram_api_url: "https://api.telegram.org".into(),
            workspace_root: PathBuf::from("workspaces"),
            agent_command:
                "claude -p \"$(cat \"$ORCH_PROMPT_FILE\")\" --output-format stream-json --verbose"
                    .into(),
            worker_poll_interval_ms: 1000,
            reconciler_interval_s: 60,
            reaper_interval_s: 30,
            reaper_finalize_grace_s: 300,
            reaper_max_running_s: 7200,
            agent_stall_timeout_s: 900,
            merge_retest_timeout_s: 900,
            merge_retry_max_attempts: 3,
            merge_retry_base_s: 2,
            merge_retry_max_s: 5,
            post_deploy_window_s: 1800,
            post_deploy_tick_s: 60,
            plane: PlaneTable::default(),
            projects: Vec::new(),
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

const ENV_PREFIX: &str = "ORCH_";
/// Keys that steer loading itself, not settings.
const NON_SETTING_ENV: &[&str] = &["ORCH_CONFIG"];

/// A figment provider over a captured environment, so tests never touch the
/// process environment and error messages can name `ORCH_FOO`.
struct EnvProvider<'a>(&'a EnvVars);

impl Provider for EnvProvider<'_> {
    fn metadata(&self) -> Metadata {
        Metadata::named("environment")
            .interpolater(|_, keys| format!("{ENV_PREFIX}{}", keys.join("__").to_ascii_uppercase()))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut dict = Dict::new();
        for (k, v) in &self.0.0 {
            if NON_SETTING_ENV.contains(&k.as_str()) {
                continue;
            }
            let Some(rest) = k.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let key = rest.to_ascii_lowercase();
            // `ORCH_PLANE__WORKSPACE` reaches the nested `plane.workspace`.
            let mut path: Vec<&str> = key.split("__").collect();
            let leaf = path.pop().unwrap_or_default().to_string();
            let mut cur = &mut dict;
            for seg in path {
                let entry = cur
                    .entry(seg.to_string())
                    .or_insert_with(|| Value::from(Dict::new()));
                if !matches!(entry, Value::Dict(..)) {
                    *entry = Value::from(Dict::new());
                }
                let Value::Dict(_, d) = entry else {
                    unreachable!("just made a dict")
                };
                cur = d;
            }
            // Lenient parse like figment's own Env: "8080" is a number,
            // "true" a bool, anything else a string.
            let value = v
                .parse::<Value>()
                .unwrap_or_else(|_| Value::from(v.clone()));
            cur.insert(leaf, value);
        }
        Ok(Profile::Default.collect(dict))
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
        let settings = Fields::new(&fig, &mut report)?.build()?;
        Ok((settings, report))
    }

    /// The database file path behind `database_url` (`sqlite://<path>`,
    /// `sqlite:<path>` or a plain path).
    pub fn database_path(&self) -> PathBuf {
        database_path(&self.database_url)
    }

    pub fn project(&self, name: &str) -> Option<&Project> {
        self.projects.iter().find(|p| p.name == name)
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

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// Per-key extraction with fallbacks, collecting warnings and errors.
struct Fields<'a> {
    fig: &'a Figment,
    data: Dict,
    seen: HashSet<String>,
    report: &'a mut LoadReport,
    errors: Vec<String>,
}

impl<'a> Fields<'a> {
    fn new(fig: &'a Figment, report: &'a mut LoadReport) -> Result<Self, ConfigError> {
        let data = fig
            .data()
            .map_err(|e| ConfigError::Invalid(vec![e.to_string()]))?
            .remove(&Profile::Default)
            .unwrap_or_default();
        Ok(Self {
            fig,
            data,
            seen: HashSet::new(),
            report,
            errors: Vec::new(),
        })
    }

    /// "`bind` (ORCH_BIND from the environment)" or "`bind` (in /etc/o.toml)".
    fn describe(&self, key: &str) -> String {
        match self.fig.find_metadata(key) {
            Some(md) if md.name == "environment" => {
                format!(
                    "{ENV_PREFIX}{}",
                    key.replace('.', "__").to_ascii_uppercase()
                )
            }
            Some(md) => match &md.source {
                Some(src) => format!("`{key}` in {src}"),
                None => format!("`{key}` ({})", md.name),
            },
            None => format!("`{key}`"),
        }
    }

    fn raw(&mut self, key: &str) -> Option<Value> {
        self.seen.insert(key.to_string());
        self.data.get(key).cloned()
    }

    fn parse<T: DeserializeOwned>(&self, v: &Value) -> Result<T, String> {
        T::deserialize(v).map_err(|e| e.to_string())
    }

    /// A key with a safe default: a bad value warns and falls back.
    fn or_default<T: DeserializeOwned + fmt::Debug>(&mut self, key: &str, default: T) -> T {
        match self.raw(key) {
            None => default,
            Some(v) => match self.parse::<T>(&v) {
                Ok(t) => t,
                Err(e) => {
                    let w = format!(
                        "{}: invalid value ({e}); using the default {default:?}",
                        self.describe(key)
                    );
                    self.report.warnings.push(w);
                    default
                }
            },
        }
    }

    /// A positive number with a safe default; 0 or garbage falls back.
    fn positive(&mut self, key: &str, default: u64) -> u64 {
        let v: u64 = self.or_default(key, default);
        if v == 0 {
            let w = format!(
                "{}: must be greater than 0; using the default {default}",
                self.describe(key)
            );
            self.report.warnings.push(w);
            return default;
        }
        v
    }

    /// A key without a safe default: a bad value is an error.
    fn required<T: DeserializeOwned>(&mut self, key: &str, default: T, what: &str) -> T {
        match self.raw(key) {
            None => default,
            Some(v) => {
                let shown = match &v {
                    Value::String(_, s) => format!("{s:?}"),
                    other => format!("{other:?}"),
                };
                match self.parse::<T>(&v) {
                    Ok(t) => t,
                    Err(_) => {
                        let e = format!("{}: {shown} is not {what}", self.describe(key));
                        self.errors.push(e);
                        default
                    }
                }
            }
        }
    }

    fn secret(&mut self, key: &str) -> Secret {
        self.or_default::<String>(key, String::new()).pipe(Secret)
    }

    fn build(mut self) -> Result<Settings, ConfigError> {
        let d = Settings::default();
        let bind_s: String = self.required("bind", d.bind.to_string(), "a socket address");
        let bind = match bind_s.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                let e = format!(
                    "{}: {bind_s:?} is not a socket address (expected host:port, e.g. 127.0.0.1:8080)",
                    self.describe("bind")
                );
                self.errors.push(e);
                d.bind
            }
        };
        let database_url: String =
            self.required("database_url", d.database_url.clone(), "a database URL");
        if database_path(&database_url).as_os_str().is_empty() {
            let e = format!("{}: names no file", self.describe("database_url"));
            self.errors.push(e);
        }
        let log_format = self.or_default("log_format", d.log_format);
        let log_level: String = self.or_default("log_level", d.log_level.clone());
        let log_level = if tracing_subscriber::EnvFilter::try_new(&log_level).is_ok() {
            log_level
        } else {
            let w = format!(
                "{}: {log_level:?} is not a log filter; using \"info\"",
                self.describe("log_level")
            );
            self.report.warnings.push(w);
            d.log_level.clone()
        };
        let plane_sandbox_projects = match self.raw("plane_sandbox_projects") {
            None => Vec::new(),
            Some(Value::String(_, s)) => s
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            Some(v) => match self.parse::<Vec<String>>(&v) {
                Ok(list) => list,
                Err(e) => {
                    let w = format!(
                        "{}: invalid list ({e}); using an empty allowlist",
                        self.describe("plane_sandbox_projects")
                    );
                    self.report.warnings.push(w);
                    Vec::new()
                }
            },
        };
        let plane: PlaneTable =
            self.required("plane", PlaneTable::default(), "a valid [plane] table");
        let projects: Vec<Project> =
            self.required("projects", Vec::new(), "a valid [[projects]] list");
        self.check_projects(&projects);
        let s = Settings {
            bind,
            database_url,
            admin_token: self.secret("admin_token"),
            log_format,
            log_level,
            http_body_limit_bytes: self
                .positive("http_body_limit_bytes", d.http_body_limit_bytes as u64)
                as usize,
            shutdown_grace_s: self.positive("shutdown_grace_s", d.shutdown_grace_s),
            plane_base_url: self.or_default("plane_base_url", d.plane_base_url.clone()),
            plane_api_key: self.secret("plane_api_key"),
            plane_webhook_secret: self.secret("plane_webhook_secret"),
            plane_write_mode: self.or_default("plane_write_mode", d.plane_write_mode),
            plane_sandbox_projects,
            gitea_base_url: self.or_default("gitea_base_url", d.gitea_base_url.clone()),
            gitea_token: self.secret("gitea_token"),
            gitea_webhook_secret: self.secret("gitea_webhook_secret"),
            telegram_bot_token: self.secret("telegram_bot_token"),
            telegram_chat_id: self
                .or_default::<Value>("telegram_chat_id", Value::from(""))
                .pipe(|v| match v {
                    Value::String(_, s) => s,
                    Value::Num(_, n) => n.to_i128().map(|n| n.to_string()).unwrap_or_default(),
                    _ => String::new(),
                }),
            telegram_api_url: self.or_default("telegram_api_url", d.telegram_api_url.clone()),
            workspace_root: self.or_default("workspace_root", d.workspace_root.clone()),
            agent_command: self.or_default("agent_command", d.agent_command.clone()),
            worker_poll_interval_ms: self
                .positive("worker_poll_interval_ms", d.worker_poll_interval_ms),
            reconciler_interval_s: self.positive("reconciler_interval_s", d.reconciler_interval_s),
            reaper_interval_s: self.positive("reaper_interval_s", d.reaper_interval_s),
            reaper_finalize_grace_s: self
                .positive("reaper_finalize_grace_s", d.reaper_finalize_grace_s),
            reaper_max_running_s: self.positive("reaper_max_running_s", d.reaper_max_running_s),
            agent_stall_timeout_s: self.positive("agent_stall_timeout_s", d.agent_stall_timeout_s),
            merge_retest_timeout_s: self
                .positive("merge_retest_timeout_s", d.merge_retest_timeout_s),
            merge_retry_max_attempts: self.positive(
                "merge_retry_max_attempts",
                d.merge_retry_max_attempts as u64,
            ) as u32,
            merge_retry_base_s: self.positive("merge_retry_base_s", d.merge_retry_base_s),
            merge_retry_max_s: self.positive("merge_retry_max_s", d.merge_retry_max_s),
            post_deploy_window_s: self.positive("post_deploy_window_s", d.post_deploy_window_s),
            post_deploy_tick_s: self.positive("post_deploy_tick_s", d.post_deploy_tick_s),
            plane,
            projects,
        };
        let unknown: Vec<String> = self
            .data
            .keys()
            .filter(|k| !self.seen.contains(*k))
            .cloned()
            .collect();
        for k in unknown {
            let w = format!("{}: unknown setting, ignored", self.describe(&k));
            self.report.warnings.push(w);
        }
        if self.errors.is_empty() {
            Ok(s)
        } else {
            Err(ConfigError::Invalid(self.errors))
        }
    }

    fn check_projects(&mut self, projects: &[Project]) {
        let mut names = HashSet::new();
        for (i, p) in projects.iter().enumerate() {
            let at = format!("projects[{i}]");
            if p.name.trim().is_empty() {
                self.errors.push(format!(
                    "{}: `{at}.name` is empty",
                    self.describe("projects")
                ));
            } else if !names.insert(p.name.clone()) {
                self.errors.push(format!(
                    "{}: `{at}.name` {:?} is used twice",
                    self.describe("projects"),
                    p.name
                ));
            }
            if p.repo_url.trim().is_empty() {
                self.errors.push(format!(
                    "{}: `{at}.repo_url` is missing (project {:?}); it has no default",
                    self.describe("projects"),
                    p.name
                ));
            }
            if p.default_branch.trim().is_empty() {
                self.errors.push(format!(
                    "{}: `{at}.default_branch` is empty",
                    self.describe("projects")
                ));
            }
        }
    }
}

/// `x.pipe(f)` reads left to right where a nested call would not.
trait Pipe: Sized {
    fn pipe<R>(self, f: impl FnOnce(Self) -> R) -> R {
        f(self)
    }
}
impl<T> Pipe for T {}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> EnvVars {
        EnvVars::from_pairs(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    fn toml_file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn defaults_without_file_or_env() {
        let (s, r) = Settings::load(&env(&[])).unwrap();
        assert_eq!(s.bind.to_string(), "127.0.0.1:8080");
        assert_eq!(s.database_path(), PathBuf::from("orchestrator.db"));
        assert_eq!(s.reaper_finalize_grace_s, 300);
        assert_eq!(s.merge_retest_timeout_s, 900);
        assert_eq!(s.plane_write_mode, PlaneWriteMode::Live);
        assert_eq!(s.plane.statuses.monitoring, "Monitoring after Deploy");
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    }

    #[test]
    fn precedence_default_then_file_then_env() {
        let f = toml_file(
            "bind = \"127.0.0.1:9000\"\nreaper_interval_s = 7\nagent_command = \"file\"\n",
        );
        let (s, _) = Settings::load_with(Some(f.path()), &env(&[])).unwrap();
        assert_eq!(s.bind.port(), 9000);
        assert_eq!(s.reaper_interval_s, 7);
        assert_eq!(
            s.reconciler_interval_s, 60,
            "untouched key keeps its default"
        );

        let e = env(&[
            ("ORCH_REAPER_INTERVAL_S", "11"),
            ("ORCH_AGENT_COMMAND", "env"),
        ]);
        let (s, _) = Settings::load_with(Some(f.path()), &e).unwrap();
        assert_eq!(s.bind.port(), 9000, "file beats default");
        assert_eq!(s.reaper_interval_s, 11, "env beats file");
        assert_eq!(s.agent_command, "env");
    }

    #[test]
    fn orch_config_names_the_file() {
        let f = toml_file("reaper_interval_s = 5\n");
        let e = env(&[("ORCH_CONFIG", f.path().to_str().unwrap())]);
        let (s, r) = Settings::load(&e).unwrap();
        assert_eq!(s.reaper_interval_s, 5);
        assert_eq!(r.file.as_deref(), Some(f.path()));
        assert!(
            r.warnings.is_empty(),
            "ORCH_CONFIG is not a setting: {:?}",
            r.warnings
        );
    }

    #[test]
    fn bad_bind_fails_naming_the_key() {
        let err = Settings::load(&env(&[("ORCH_BIND", "nonsense")])).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("ORCH_BIND"), "{msg}");
        assert!(msg.contains("nonsense"), "{msg}");
    }

    #[test]
    fn bad_value_with_safe_default_falls_back_with_warning() {
        let e = env(&[
            ("ORCH_REAPER_INTERVAL_S", "soon"),
            ("ORCH_MERGE_RETEST_TIMEOUT_S", "0"),
            ("ORCH_PLANE_WRITE_MODE", "yolo"),
        ]);
        let (s, r) = Settings::load(&e).unwrap();
        assert_eq!(s.reaper_interval_s, 30);
        assert_eq!(s.merge_retest_timeout_s, 900);
        assert_eq!(s.plane_write_mode, PlaneWriteMode::Live);
        let all = r.warnings.join("\n");
        for key in [
            "ORCH_REAPER_INTERVAL_S",
            "ORCH_MERGE_RETEST_TIMEOUT_S",
            "ORCH_PLANE_WRITE_MODE",
        ] {
            assert!(all.contains(key), "no warning names {key}: {all}");
        }
    }

    #[test]
    fn unknown_key_warns() {
        let (_, r) = Settings::load(&env(&[("ORCH_REAPR_INTERVAL_S", "5")])).unwrap();
        assert!(
            r.warnings
                .iter()
                .any(|w| w.contains("ORCH_REAPR_INTERVAL_S")),
            "{:?}",
            r.warnings
        );
    }

    #[test]
    fn project_without_repo_url_fails_naming_the_key() {
        let f = toml_file("[[projects]]\nname = \"demo\"\nwork_item_prefix = \"DEMO\"\n");
        let err = Settings::load_with(Some(f.path()), &env(&[])).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("projects[0].repo_url"), "{msg}");
    }

    #[test]
    fn projects_and_plane_table_parse() {
        let f = toml_file(
            r#"
[plane]
workspace = "acme"
statuses = { stop = "Halt" }

[[projects]]
name = "demo"
plane_project_id = "c1d2"
work_item_prefix = "DEMO"
repo_url = "/srv/git/demo.git"
gitea_repo = "team/demo"
test_command = "cargo test"

[projects.agents.developer]
command = "my-agent"
"#,
        );
        let (s, _) = Settings::load_with(Some(f.path()), &env(&[])).unwrap();
        assert_eq!(s.plane.workspace, "acme");
        assert_eq!(s.plane.statuses.stop, "Halt");
        assert_eq!(
            s.plane.statuses.done, "Done",
            "unset status keeps its default"
        );
        let p = s.project("demo").unwrap();
        assert_eq!(p.default_branch, "main");
        assert_eq!(p.agents["developer"].command.as_deref(), Some("my-agent"));
    }

    #[test]
    fn broken_toml_names_file_and_line() {
        let f = toml_file("bind = \"127.0.0.1:8080\"\nreaper_interval_s = = 3\n");
        let err = Settings::load_with(Some(f.path()), &env(&[])).unwrap_err();
        match &err {
            ConfigError::Syntax { path, line, .. } => {
                assert_eq!(path, f.path());
                assert_eq!(*line, 2);
            }
            other => panic!("expected a syntax error, got {other}"),
        }
        assert!(err.to_string().contains(&f.path().display().to_string()));
    }

    #[test]
    fn secrets_are_redacted() {
        let e = env(&[
            ("ORCH_ADMIN_TOKEN", "hunter2"),
            ("ORCH_PLANE_API_KEY", "k-123"),
        ]);
        let (s, _) = Settings::load(&e).unwrap();
        assert_eq!(s.admin_token.expose(), "hunter2");
        let shown = format!("{s:?}{}", serde_json::to_string(&s).unwrap());
        assert!(
            !shown.contains("hunter2") && !shown.contains("k-123"),
            "{shown}"
        );
    }

    #[test]
    fn sandbox_projects_from_comma_list() {
        let (s, _) = Settings::load(&env(&[("ORCH_PLANE_SANDBOX_PROJECTS", "a, b,,c")])).unwrap();
        assert_eq!(s.plane_sandbox_projects, vec!["a", "b", "c"]);
    }

    #[test]
    fn database_url_forms() {
        assert_eq!(
            database_path("sqlite:///tmp/x.db"),
            PathBuf::from("/tmp/x.db")
        );
        assert_eq!(
            database_path("sqlite://x.db?mode=rwc"),
            PathBuf::from("x.db")
        );
        assert_eq!(database_path("/var/o.db"), PathBuf::from("/var/o.db"));
    }
}
