//! Loading: the environment provider and the per-key extraction with
//! fallbacks, warnings and errors.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::de::DeserializeOwned;

use crate::domain::prices::{PriceOverrides, PriceTable};

use super::{
    ConfigError, EnvVars, ForgeKind, LoadReport, PlaneTable, Project, Secret, Settings,
    TrackerKind, database_path,
};

const ENV_PREFIX: &str = "ORCH_";
/// Keys that steer loading itself, not settings.
/// `ORCH_URL` is the operator CLI's (B-4): where the running daemon is.
const NON_SETTING_ENV: &[&str] = &["ORCH_CONFIG", "ORCH_URL"];

/// A figment provider over a captured environment, so tests never touch the
/// process environment and error messages can name `ORCH_FOO`.
pub(super) struct EnvProvider<'a>(pub(super) &'a EnvVars);

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
            // A secret is a string whatever it looks like
            // (`ORCH_ADMIN_TOKEN=0123` keeps its 0).
            let value = if super::SECRET_ENV_KEYS.contains(&k.as_str()) {
                Value::from(v.clone())
            } else {
                scalar(v)
            };
            cur.insert(leaf, value);
        }
        Ok(Profile::Default.collect(dict))
    }
}

/// Lenient scalar parse of an environment value: "8080" is a number,
/// "true" a bool, anything else the string as written. Not figment's
/// `Value::from_str`: that one reads quotes, arrays and escapes, and panics on
/// some escapes next to multibyte characters (found by
/// tests/parsers_proptest.rs), so a stray byte in the environment would abort
/// start-up instead of naming the key. No setting takes a list from the
/// environment; lists there are comma-separated strings.
fn scalar(v: &str) -> Value {
    let t = v.trim();
    match t {
        "true" => return Value::from(true),
        "false" => return Value::from(false),
        _ => {}
    }
    if let Ok(n) = t.parse::<i64>() {
        return Value::from(n);
    }
    if let Ok(n) = t.parse::<u64>() {
        return Value::from(n);
    }
    let numeric = t.bytes().any(|b| b.is_ascii_digit())
        && t.bytes()
            .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b));
    if let Ok(f) = t.parse::<f64>()
        && numeric
        && f.is_finite()
    {
        return Value::from(f);
    }
    Value::from(v.to_string())
}

pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// Per-key extraction with fallbacks, collecting warnings and errors.
pub(super) struct Fields<'a> {
    fig: &'a Figment,
    data: Dict,
    seen: HashSet<String>,
    pub(super) report: &'a mut LoadReport,
    errors: Vec<String>,
}

impl<'a> Fields<'a> {
    pub(super) fn new(fig: &'a Figment, report: &'a mut LoadReport) -> Result<Self, ConfigError> {
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
    pub(super) fn describe(&self, key: &str) -> String {
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

    pub(super) fn raw(&mut self, key: &str) -> Option<Value> {
        self.seen.insert(key.to_string());
        self.data.get(key).cloned()
    }

    pub(super) fn parse<T: DeserializeOwned>(&self, v: &Value) -> Result<T, String> {
        T::deserialize(v).map_err(|e| e.to_string())
    }

    /// A key with a safe default: a bad value warns and falls back.
    pub(super) fn or_default<T: DeserializeOwned + fmt::Debug>(
        &mut self,
        key: &str,
        default: T,
    ) -> T {
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
    pub(super) fn positive(&mut self, key: &str, default: u64) -> u64 {
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

    /// A cost ceiling: 0 = none; negative or garbage falls back to none.
    fn budget(&mut self, key: &str) -> f64 {
        let v: f64 = self.or_default(key, 0.0);
        if v.is_finite() && v >= 0.0 {
            return v;
        }
        let w = format!(
            "{}: must be 0 (no ceiling) or a positive amount; using 0",
            self.describe(key)
        );
        self.report.warnings.push(w);
        0.0
    }

    /// A secret: text, or a number written bare in the TOML file. Anything
    /// else fails start-up naming the key, never showing the value.
    pub(super) fn secret(&mut self, key: &str) -> Secret {
        match self.raw(key) {
            None => Secret::default(),
            Some(Value::String(_, s)) => Secret(s),
            Some(Value::Num(_, n)) => Secret(super::ops::num_text(n)),
            Some(_) => {
                let e = format!(
                    "{}: a secret must be a string (value not shown)",
                    self.describe(key)
                );
                self.errors.push(e);
                Secret::default()
            }
        }
    }

    pub(super) fn build(mut self) -> Result<Settings, ConfigError> {
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
        // A filter is ASCII (targets, fields, levels); tracing-subscriber's
        // parser panics on some mixes of whitespace and multibyte characters
        // (found by tests/parsers_proptest.rs), so those never reach it, and
        // any other panic of it still only makes the value invalid.
        let parses = |f: &str| {
            f.is_ascii()
                && std::panic::catch_unwind(|| tracing_subscriber::EnvFilter::try_new(f).is_ok())
                    .unwrap_or(false)
        };
        let log_level = if parses(&log_level) {
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
        let agent_read_paths: Vec<PathBuf> = match self.raw("agent_read_paths") {
            None => Vec::new(),
            Some(Value::String(_, s)) => s
                .split(':')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
                .collect(),
            Some(v) => self.parse::<Vec<PathBuf>>(&v).unwrap_or_else(|e| {
                let w = format!(
                    "{}: invalid list ({e}); agents read only the system's directories",
                    self.describe("agent_read_paths")
                );
                self.report.warnings.push(w);
                Vec::new()
            }),
        };
        if let Some(rel) = agent_read_paths.iter().find(|p| !p.is_absolute()) {
            let e = format!(
                "{}: {} is not an absolute path",
                self.describe("agent_read_paths"),
                rel.display()
            );
            self.errors.push(e);
        }
        let plane: PlaneTable =
            self.required("plane", PlaneTable::default(), "a valid [plane] table");
        let prices = self.prices();
        let mut projects: Vec<Project> =
            self.required("projects", Vec::new(), "a valid [[projects]] list");
        let plane_base_url: String = self.or_default("plane_base_url", d.plane_base_url.clone());
        let gitea_base_url: String = self.or_default("gitea_base_url", d.gitea_base_url.clone());
        self.resolve_adapters(&mut projects, &plane_base_url, &gitea_base_url);
        self.check_projects(&projects);
        let deploy_timeout_s = self.positive("deploy_timeout_s", d.deploy_timeout_s);
        let telegram_bot_token = self.secret("telegram_bot_token");
        let ops = self.ops(!telegram_bot_token.is_empty());
        let s = Settings {
            bind,
            database_url,
            admin_token: self.secret("admin_token"),
            log_format,
            log_level,
            http_body_limit_bytes: self
                .positive("http_body_limit_bytes", d.http_body_limit_bytes as u64)
                as usize,
            http_header_timeout_ms: self
                .positive("http_header_timeout_ms", d.http_header_timeout_ms),
            http_body_timeout_ms: self.positive("http_body_timeout_ms", d.http_body_timeout_ms),
            http_max_connections: self.positive("http_max_connections", d.http_max_connections),
            webhook_max_in_flight: self.positive("webhook_max_in_flight", d.webhook_max_in_flight),
            webhook_shed_after_ms: self.positive("webhook_shed_after_ms", d.webhook_shed_after_ms),
            shutdown_grace_s: self.positive("shutdown_grace_s", d.shutdown_grace_s),
            plane_base_url,
            plane_api_key: self.secret("plane_api_key"),
            plane_webhook_secret: self.secret("plane_webhook_secret"),
            plane_write_mode: self.or_default("plane_write_mode", d.plane_write_mode),
            plane_sandbox_projects,
            plane_bot_user_id: self.or_default("plane_bot_user_id", d.plane_bot_user_id.clone()),
            plane_rate_limit_per_min: self
                .positive("plane_rate_limit_per_min", d.plane_rate_limit_per_min),
            plane_rate_limit_window_ms: self
                .positive("plane_rate_limit_window_ms", d.plane_rate_limit_window_ms),
            gitea_base_url,
            gitea_token: self.secret("gitea_token"),
            gitea_webhook_secret: self.secret("gitea_webhook_secret"),
            telegram_bot_token,
            telegram_chat_id: self
                .or_default::<Value>("telegram_chat_id", Value::from(""))
                .pipe(|v| match v {
                    Value::String(_, s) => s,
                    Value::Num(_, n) => super::ops::num_text(n),
                    _ => String::new(),
                }),
            telegram_api_url: self.or_default("telegram_api_url", d.telegram_api_url.clone()),
            workspace_root: self.or_default("workspace_root", d.workspace_root.clone()),
            agent_command: self.or_default("agent_command", d.agent_command.clone()),
            agent_sandbox: self.required("agent_sandbox", d.agent_sandbox, "landlock or off"),
            agent_read_paths,
            agent_model: self.or_default("agent_model", d.agent_model.clone()),
            agent_effort: self.or_default("agent_effort", d.agent_effort.clone()),
            max_concurrent_jobs: self.positive("max_concurrent_jobs", d.max_concurrent_jobs),
            max_concurrent_jobs_per_project: self.positive(
                "max_concurrent_jobs_per_project",
                d.max_concurrent_jobs_per_project,
            ),
            agent_max_attempts: self.positive("agent_max_attempts", d.agent_max_attempts),
            agent_kill_grace_s: self.positive("agent_kill_grace_s", d.agent_kill_grace_s),
            task_budget_usd: self.budget("task_budget_usd"),
            stage_budget_usd: self.budget("stage_budget_usd"),
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
            merge_gate_infra_retries: self
                .or_default("merge_gate_infra_retries", d.merge_gate_infra_retries),
            command_timeout_s: self.positive("command_timeout_s", d.command_timeout_s),
            artifact_max_bytes: self.positive("artifact_max_bytes", d.artifact_max_bytes),
            merge_retry_enabled: self.or_default("merge_retry_enabled", d.merge_retry_enabled),
            merge_retry_max_attempts: self.positive(
                "merge_retry_max_attempts",
                d.merge_retry_max_attempts as u64,
            ) as u32,
            merge_retry_base_s: self.positive("merge_retry_base_s", d.merge_retry_base_s),
            merge_retry_max_s: self.positive("merge_retry_max_s", d.merge_retry_max_s),
            post_deploy_window_s: self.positive("post_deploy_window_s", d.post_deploy_window_s),
            post_deploy_tick_s: self.positive("post_deploy_tick_s", d.post_deploy_tick_s),
            deploy_timeout_s,
            shutdown_effect_drain_s: self.positive(
                "shutdown_effect_drain_s",
                deploy_timeout_s.saturating_add(60),
            ),
            reaper_enabled: self.or_default("reaper_enabled", d.reaper_enabled),
            reconciler_enabled: self.or_default("reconciler_enabled", d.reconciler_enabled),
            alert_dedup_window_s: self.or_default("alert_dedup_window_s", d.alert_dedup_window_s),
            retention_days: {
                let days: f64 = self.or_default("retention_days", d.retention_days);
                if days.is_finite() && days >= 0.0 {
                    days
                } else {
                    let w = format!(
                        "{}: {days} is not a number of days >= 0; using {}",
                        self.describe("retention_days"),
                        d.retention_days
                    );
                    self.report.warnings.push(w);
                    d.retention_days
                }
            },
            retention_interval_s: self.positive("retention_interval_s", d.retention_interval_s),
            plane,
            prices,
            projects: projects.into(),
            source: None,
            ops,
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

    /// `[prices]`: a price that is not a finite amount ≥ 0 fails start-up
    /// naming it (a wrong price would silently turn a budget off or trip it).
    fn prices(&mut self) -> PriceTable {
        let overrides: PriceOverrides = self.required(
            "prices",
            PriceOverrides::default(),
            "a valid [prices] table (default_model, [prices.models.<model>] input/output/cache_read/cache_creation)",
        );
        for (model, price) in &overrides.models {
            if let Some(field) = price.invalid_field() {
                let e = format!(
                    "{}: `prices.models.{model}.{field}` must be a finite amount of USD per million tokens, 0 or more",
                    self.describe("prices")
                );
                self.errors.push(e);
            }
        }
        PriceTable::with_overrides(&overrides)
    }

    /// B-10: each project's tracker and forge, defaulting to the built-in
    /// pair where no Plane (resp. Gitea) is configured. Choosing a remote
    /// adapter without its base URL is an error, not a silent fallback.
    fn resolve_adapters(&mut self, projects: &mut [Project], plane_url: &str, gitea_url: &str) {
        for (i, p) in projects.iter_mut().enumerate() {
            let at = format!("projects[{i}]");
            let plane = !plane_url.trim().is_empty();
            let gitea = !gitea_url.trim().is_empty();
            let tracker = *p.tracker.get_or_insert(if plane {
                TrackerKind::Plane
            } else {
                TrackerKind::Local
            });
            let forge = *p
                .forge
                .get_or_insert(if gitea && !p.gitea_repo.trim().is_empty() {
                    ForgeKind::Gitea
                } else {
                    ForgeKind::Local
                });
            if tracker == TrackerKind::Plane && !plane {
                self.errors.push(format!(
                    "{}: `{at}.tracker` is \"plane\" but ORCH_PLANE_BASE_URL is not set (project {:?}); set it or use tracker = \"local\"",
                    self.describe("projects"),
                    p.name
                ));
            }
            if forge == ForgeKind::Gitea && (!gitea || p.gitea_repo.trim().is_empty()) {
                self.errors.push(format!(
                    "{}: `{at}.forge` is \"gitea\" but ORCH_GITEA_BASE_URL or `{at}.gitea_repo` is not set (project {:?}); set them or use forge = \"local\"",
                    self.describe("projects"),
                    p.name
                ));
            }
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
