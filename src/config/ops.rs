//! Settings of the Telegram channel, the card and gates, the disk watchdog,
//! the build-cache pruner and the config poll (F-26..F-29, B-11, B-9). Kept
//! apart from the core settings; flattened into [`Settings`] so every key is
//! still `ORCH_<KEY>`.

use std::path::PathBuf;

use figment::value::Value;
use serde::{Deserialize, Serialize};

use super::Secret;
use super::load::Fields;
use crate::notify::card::Lang;

/// `ORCH_TRACKER_MODE` (F-26).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrackerMode {
    /// Edit the card in place.
    Edit,
    /// Delete and re-send silently, so the card is the chat's newest message.
    Bump,
}

/// `ORCH_TELEGRAM_UPDATES` (B-11): how taps reach us.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpdatesMode {
    Poll,
    Webhook,
    Off,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OpsSettings {
    pub tracker_mode: TrackerMode,
    pub card_lang: Lang,
    /// How often the card loop compares each card with the database.
    pub telegram_card_interval_ms: u64,
    pub telegram_updates: UpdatesMode,
    pub telegram_poll_timeout_s: u64,
    /// Telegram user ids whose taps act; empty = nobody.
    pub telegram_allowed_users: Vec<i64>,
    /// `X-Telegram-Bot-Api-Secret-Token` of `POST /webhooks/telegram`.
    pub telegram_webhook_secret: Secret,

    pub disk_watchdog_enabled: bool,
    /// Paths whose filesystems are watched; empty = the workspace root and
    /// the database's directory.
    pub disk_watchdog_paths: Vec<PathBuf>,
    pub disk_watchdog_interval_s: u64,
    pub disk_warn_percent: u64,
    pub disk_critical_percent: u64,

    pub build_cache_prune_enabled: bool,
    /// `user@host` for ssh; empty = the pruner does nothing.
    pub build_cache_prune_target: String,
    pub build_cache_prune_interval_s: u64,
    pub build_cache_prune_timeout_s: u64,
    /// Docker's `until` filter: `^\d+[smhdw]?$`.
    pub build_cache_prune_until: String,
    /// Reclaimed space, in GB, from which a prune result is alerted.
    pub build_cache_prune_notify_min_gb: f64,

    /// B-9: how often the daemon looks at the `ORCH_CONFIG` file for a
    /// change (a hash of its bytes); 0 = only on SIGHUP.
    pub config_poll_ms: u64,
}

impl Default for OpsSettings {
    fn default() -> Self {
        Self {
            tracker_mode: TrackerMode::Edit,
            card_lang: Lang::En,
            telegram_card_interval_ms: 1000,
            telegram_updates: UpdatesMode::Poll,
            telegram_poll_timeout_s: 30,
            telegram_allowed_users: Vec::new(),
            telegram_webhook_secret: Secret::default(),
            disk_watchdog_enabled: true,
            disk_watchdog_paths: Vec::new(),
            disk_watchdog_interval_s: 60,
            disk_warn_percent: 85,
            disk_critical_percent: 95,
            build_cache_prune_enabled: true,
            build_cache_prune_target: String::new(),
            build_cache_prune_interval_s: 6 * 3600,
            build_cache_prune_timeout_s: 600,
            build_cache_prune_until: "24h".into(),
            build_cache_prune_notify_min_gb: 1.0,
            config_poll_ms: 2000,
        }
    }
}

/// A TOML or environment number as text: figment keeps "42" unsigned, and
/// its `to_i128` answers only for signed numbers.
pub(super) fn num_text(n: figment::value::Num) -> String {
    n.to_u128()
        .map(|n| n.to_string())
        .or_else(|| n.to_i128().map(|n| n.to_string()))
        .or_else(|| n.to_f64().map(|n| n.to_string()))
        .unwrap_or_default()
}

/// Docker's `until` duration as the SPEC allows it.
pub fn valid_until(s: &str) -> bool {
    let digits = s.trim_end_matches(['s', 'm', 'h', 'd', 'w']);
    !digits.is_empty() && s.len() - digits.len() <= 1 && digits.bytes().all(|b| b.is_ascii_digit())
}

/// An ssh destination that cannot become an option or a shell word.
pub fn valid_target(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@._:-[]".contains(&b))
}

impl Fields<'_> {
    /// A comma-separated list (or a TOML list) of `T`; a bad entry warns and
    /// is left out.
    fn list<T: std::str::FromStr>(&mut self, key: &str) -> Vec<T> {
        let items: Vec<String> = match self.raw(key) {
            None => return Vec::new(),
            Some(Value::String(_, s)) => s.split(',').map(|x| x.trim().to_string()).collect(),
            Some(Value::Num(_, n)) => vec![num_text(n)],
            Some(v) => match self.parse::<Vec<Value>>(&v) {
                Ok(list) => list
                    .into_iter()
                    .map(|v| match v {
                        Value::String(_, s) => s,
                        Value::Num(_, n) => num_text(n),
                        _ => String::new(),
                    })
                    .collect(),
                Err(e) => {
                    let w = format!(
                        "{}: invalid list ({e}); using an empty one",
                        self.describe(key)
                    );
                    self.report.warnings.push(w);
                    return Vec::new();
                }
            },
        };
        let mut out = Vec::new();
        for item in items.into_iter().filter(|s| !s.is_empty()) {
            match item.parse::<T>() {
                Ok(t) => out.push(t),
                Err(_) => {
                    let w = format!("{}: {item:?} is not valid; left out", self.describe(key));
                    self.report.warnings.push(w);
                }
            }
        }
        out
    }

    fn percent(&mut self, key: &str, default: u64) -> u64 {
        let v = self.positive(key, default);
        if v > 100 {
            let w = format!(
                "{}: {v} is not a percentage (1..=100); using the default {default}",
                self.describe(key)
            );
            self.report.warnings.push(w);
            return default;
        }
        v
    }

    pub(super) fn ops(&mut self, telegram_configured: bool) -> OpsSettings {
        let d = OpsSettings::default();
        let updates_default = if telegram_configured {
            UpdatesMode::Poll
        } else {
            UpdatesMode::Off
        };
        let mut warn = self.percent("disk_warn_percent", d.disk_warn_percent);
        let mut critical = self.percent("disk_critical_percent", d.disk_critical_percent);
        if warn >= critical {
            let w = format!(
                "{} ({warn}) must be below {} ({critical}); using the defaults {} and {}",
                self.describe("disk_warn_percent"),
                self.describe("disk_critical_percent"),
                d.disk_warn_percent,
                d.disk_critical_percent
            );
            self.report.warnings.push(w);
            (warn, critical) = (d.disk_warn_percent, d.disk_critical_percent);
        }
        let until: String =
            self.or_default("build_cache_prune_until", d.build_cache_prune_until.clone());
        let until = if valid_until(&until) {
            until
        } else {
            let w = format!(
                "{}: {until:?} is not a duration like 24h (digits and one of s, m, h, d, w); using {:?}",
                self.describe("build_cache_prune_until"),
                d.build_cache_prune_until
            );
            self.report.warnings.push(w);
            d.build_cache_prune_until.clone()
        };
        let target: String = self.or_default("build_cache_prune_target", String::new());
        let target = target.trim().to_string();
        let target = if target.is_empty() || valid_target(&target) {
            target
        } else {
            // No safe default for a host: the pruner stays off.
            let w = format!(
                "{}: {target:?} is not an ssh destination (user@host); the pruner does nothing",
                self.describe("build_cache_prune_target")
            );
            self.report.warnings.push(w);
            String::new()
        };
        let notify: f64 = self.or_default(
            "build_cache_prune_notify_min_gb",
            d.build_cache_prune_notify_min_gb,
        );
        let notify = if notify.is_finite() && notify >= 0.0 {
            notify
        } else {
            let w = format!(
                "{}: must be 0 or more; using {}",
                self.describe("build_cache_prune_notify_min_gb"),
                d.build_cache_prune_notify_min_gb
            );
            self.report.warnings.push(w);
            d.build_cache_prune_notify_min_gb
        };
        let telegram_updates = self.or_default("telegram_updates", updates_default);
        let telegram_webhook_secret = self.secret("telegram_webhook_secret");
        if telegram_updates == UpdatesMode::Webhook && telegram_webhook_secret.is_empty() {
            let w = format!(
                "{} is webhook but ORCH_TELEGRAM_WEBHOOK_SECRET is empty: every Telegram delivery is refused",
                self.describe("telegram_updates")
            );
            self.report.warnings.push(w);
        }
        OpsSettings {
            tracker_mode: self.or_default("tracker_mode", d.tracker_mode),
            card_lang: self.or_default("card_lang", d.card_lang),
            telegram_card_interval_ms: self
                .positive("telegram_card_interval_ms", d.telegram_card_interval_ms),
            telegram_updates,
            telegram_poll_timeout_s: self
                .or_default("telegram_poll_timeout_s", d.telegram_poll_timeout_s),
            telegram_allowed_users: self.list("telegram_allowed_users"),
            telegram_webhook_secret,
            disk_watchdog_enabled: self
                .or_default("disk_watchdog_enabled", d.disk_watchdog_enabled),
            disk_watchdog_paths: self.list("disk_watchdog_paths"),
            disk_watchdog_interval_s: self
                .positive("disk_watchdog_interval_s", d.disk_watchdog_interval_s),
            disk_warn_percent: warn,
            disk_critical_percent: critical,
            build_cache_prune_enabled: self
                .or_default("build_cache_prune_enabled", d.build_cache_prune_enabled),
            build_cache_prune_target: target,
            build_cache_prune_interval_s: self.positive(
                "build_cache_prune_interval_s",
                d.build_cache_prune_interval_s,
            ),
            build_cache_prune_timeout_s: self
                .positive("build_cache_prune_timeout_s", d.build_cache_prune_timeout_s),
            build_cache_prune_until: until,
            build_cache_prune_notify_min_gb: notify,
            config_poll_ms: self.or_default("config_poll_ms", d.config_poll_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{EnvVars, Settings};

    fn load(pairs: &[(&str, &str)]) -> (OpsSettings, Vec<String>) {
        let (s, r) =
            Settings::load_with(None, &EnvVars::from_pairs(pairs.iter().copied())).unwrap();
        (s.ops, r.warnings)
    }

    #[test]
    fn every_key_is_in_the_env_example() {
        let example = include_str!("../../.env.example");
        let keys = serde_json::to_value(OpsSettings::default()).unwrap();
        for key in keys.as_object().unwrap().keys() {
            let env = format!("ORCH_{}", key.to_ascii_uppercase());
            assert!(
                example.contains(&format!("{env}=")),
                "{env} is not in .env.example"
            );
        }
    }

    #[test]
    fn defaults_and_validators() {
        let (o, w) = load(&[]);
        assert_eq!(
            o,
            OpsSettings {
                telegram_updates: UpdatesMode::Off,
                ..Default::default()
            }
        );
        assert!(w.is_empty(), "{w:?}");
        let (o, _) = load(&[
            ("ORCH_TELEGRAM_BOT_TOKEN", "1:x"),
            ("ORCH_TELEGRAM_CHAT_ID", "-100"),
        ]);
        assert_eq!(
            o.telegram_updates,
            UpdatesMode::Poll,
            "poll is the default with a token"
        );

        let (o, w) = load(&[
            ("ORCH_DISK_WARN_PERCENT", "120"),
            ("ORCH_DISK_CRITICAL_PERCENT", "0"),
            ("ORCH_BUILD_CACHE_PRUNE_UNTIL", "24 hours"),
            ("ORCH_BUILD_CACHE_PRUNE_INTERVAL_S", "0"),
            ("ORCH_BUILD_CACHE_PRUNE_TIMEOUT_S", "-3"),
            ("ORCH_BUILD_CACHE_PRUNE_NOTIFY_MIN_GB", "-1"),
            ("ORCH_BUILD_CACHE_PRUNE_TARGET", "-oProxyCommand=x"),
            ("ORCH_TELEGRAM_ALLOWED_USERS", "42, 43,bob"),
            ("ORCH_TELEGRAM_CHAT_ID", "777"),
            ("ORCH_TRACKER_MODE", "shuffle"),
        ]);
        assert_eq!((o.disk_warn_percent, o.disk_critical_percent), (85, 95));
        assert_eq!(o.build_cache_prune_until, "24h");
        assert_eq!(o.build_cache_prune_interval_s, 6 * 3600);
        assert_eq!(o.build_cache_prune_timeout_s, 600);
        assert_eq!(o.build_cache_prune_notify_min_gb, 1.0);
        assert_eq!(o.build_cache_prune_target, "");
        assert_eq!(o.telegram_allowed_users, [42, 43]);
        let (_, hook) = load(&[("ORCH_TELEGRAM_UPDATES", "webhook")]);
        assert!(
            hook.iter()
                .any(|w| w.contains("ORCH_TELEGRAM_WEBHOOK_SECRET")),
            "{hook:?}"
        );
        let (o, _) = load(&[("ORCH_TELEGRAM_ALLOWED_USERS", "42")]);
        assert_eq!(
            o.telegram_allowed_users,
            [42],
            "one id is a number, not a list"
        );
        assert_eq!(o.tracker_mode, TrackerMode::Edit);
        for key in [
            "ORCH_DISK_WARN_PERCENT",
            "ORCH_DISK_CRITICAL_PERCENT",
            "ORCH_BUILD_CACHE_PRUNE_UNTIL",
            "ORCH_BUILD_CACHE_PRUNE_INTERVAL_S",
            "ORCH_BUILD_CACHE_PRUNE_TIMEOUT_S",
            "ORCH_BUILD_CACHE_PRUNE_NOTIFY_MIN_GB",
            "ORCH_BUILD_CACHE_PRUNE_TARGET",
            "ORCH_TELEGRAM_ALLOWED_USERS",
            "ORCH_TRACKER_MODE",
        ] {
            assert!(
                w.iter().any(|w| w.contains(key)),
                "no warning names {key}: {w:?}"
            );
        }
        let (o, _) = load(&[
            ("ORCH_DISK_WARN_PERCENT", "90"),
            ("ORCH_DISK_CRITICAL_PERCENT", "80"),
        ]);
        assert_eq!((o.disk_warn_percent, o.disk_critical_percent), (85, 95));
        assert!(
            valid_until("7d") && valid_until("3600") && !valid_until("h") && !valid_until("1hh")
        );
        assert!(
            valid_target("deploy@host-1.example") && !valid_target("a b") && !valid_target("h;rm")
        );
    }
}
