//! The Plane adapter of the `Tracker` port (F-03) and its write guard (F-04).
//!
//! REST API v1 under `<base>/api/v1/`, `X-API-Key` auth. Status keys are
//! resolved to the project's state ids through the API (cached per project,
//! refreshed once on a miss). Every request takes a slot of the one shared
//! [`RateLimiter`] first (issue 11 pt 2); a 429 pauses every caller for its
//! `Retry-After` (Django REST framework's throttle sends only that header on
//! a 429; `X-RateLimit-*` ride on allowed answers). 5xx and timeouts are
//! retried a bounded number of times. Every write passes the write guard
//! first, before any network step.
//!
//! Paths (issue 11 pt 3): work items are addressed as `.../issues/...`,
//! which every Plane from v0.28 to v1.3.1 serves; `.../work-items/...`
//! exists only from v1.1.0, so using it would lose every Plane before that.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::rate_limit::RateLimiter;
use super::retry::{Sleeper, TokioSleeper, backoff};
use super::write_guard::WriteGuard;
use super::{ClientError, Tracker, TrackerRef};
use crate::config::{PlaneStatuses, Secret, Settings};

const SERVICE: &str = "plane";
/// The detail of the `Unavailable` a `Pace::NoWait` request gets when the
/// budget is spent.
pub const RATE_BUDGET_SPENT: &str = "the Plane rate budget is spent";
/// The `external_source` of every comment we write: the idempotency key's
/// namespace, and how we tell our comments from people's.
pub const EXTERNAL_SOURCE: &str = "orchestrator";

/// How hard the client tries. The defaults suit Plane's 60 requests/min.
#[derive(Debug, Clone)]
pub struct PlanePolicy {
    /// Per request, connect to last byte.
    pub timeout: Duration,
    /// Attempts per request (first try included).
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Longest wait for a rate-limit reset; a longer reset is cut to this.
    pub max_rate_limit_wait: Duration,
    /// Page size of list calls, and how many pages at most.
    pub per_page: u32,
    pub max_pages: u32,
}

/// Whether a request may wait for the rate budget. The outbox's direct
/// attempt must not (it queues instead); reads and the outbox sender do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Wait for a slot; honour `Retry-After`; retry within `max_attempts`.
    Wait,
    /// One attempt if a slot is free now; otherwise, or on a 429, 5xx or
    /// network error, `Unavailable` at once so the caller can queue it.
    NoWait,
}

impl Default for PlanePolicy {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(15),
            max_attempts: 4,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(8),
            max_rate_limit_wait: Duration::from_secs(60),
            per_page: 100,
            max_pages: 50,
        }
    }
}

/// A comment as Plane lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaneComment {
    pub id: String,
    pub html: String,
    pub created_at: String,
    pub created_by: Option<String>,
    pub external_source: Option<String>,
    pub external_id: Option<String>,
}

#[derive(Debug, Clone)]
struct State {
    id: String,
    name: String,
}

pub struct PlaneClient {
    http: reqwest::Client,
    /// `<base>/api/v1`, no trailing slash.
    api: String,
    api_key: Secret,
    workspace: String,
    statuses: PlaneStatuses,
    guard: WriteGuard,
    bot_override: Option<String>,
    bot: Mutex<Option<String>>,
    /// Plane project id → its states.
    states: Mutex<HashMap<String, Vec<State>>>,
    policy: PlanePolicy,
    sleeper: Arc<dyn Sleeper>,
    limiter: Arc<RateLimiter>,
}

impl PlaneClient {
    pub fn new(settings: &Settings) -> Result<Self, ClientError> {
        Self::with_policy(settings, PlanePolicy::default(), Arc::new(TokioSleeper))
    }

    pub fn with_policy(
        settings: &Settings,
        policy: PlanePolicy,
        sleeper: Arc<dyn Sleeper>,
    ) -> Result<Self, ClientError> {
        let base = settings.plane_base_url.trim().trim_end_matches('/');
        if base.is_empty() {
            return Err(ClientError::Config("ORCH_PLANE_BASE_URL is empty".into()));
        }
        let http = reqwest::Client::builder()
            .timeout(policy.timeout)
            .build()
            .map_err(|e| ClientError::Config(format!("building the Plane HTTP client: {e}")))?;
        let bot = settings.plane_bot_user_id.trim();
        let limiter = Arc::new(RateLimiter::new(
            u32::try_from(settings.plane_rate_limit_per_min).unwrap_or(u32::MAX),
            Duration::from_millis(settings.plane_rate_limit_window_ms),
        ));
        Ok(Self {
            http,
            api: format!("{base}/api/v1"),
            api_key: settings.plane_api_key.clone(),
            workspace: settings.plane.workspace.clone(),
            statuses: settings.plane.statuses.clone(),
            guard: WriteGuard::from_settings(settings),
            bot_override: (!bot.is_empty()).then(|| bot.to_string()),
            bot: Mutex::new(None),
            states: Mutex::new(HashMap::new()),
            policy,
            sleeper,
            limiter,
        })
    }

    /// The write guard every write passes (F-04).
    pub fn guard(&self) -> &WriteGuard {
        &self.guard
    }

    /// The budget every request of this client takes a slot of.
    pub fn limiter(&self) -> &Arc<RateLimiter> {
        &self.limiter
    }

    fn project_path(&self, project_id: &str) -> String {
        format!(
            "{}/workspaces/{}/projects/{}",
            self.api, self.workspace, project_id
        )
    }

    fn item_path(&self, item: &TrackerRef) -> String {
        format!(
            "{}/issues/{}",
            self.project_path(&item.tracker_project_id),
            item.issue_id
        )
    }

    /// One request with the bounded retry loop. Any answer that is not 429
    /// or 5xx is returned for the caller to judge.
    async fn send(
        &self,
        method: Method,
        url: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), ClientError> {
        self.send_paced(method, url, query, body, Pace::Wait).await
    }

    async fn send_paced(
        &self,
        method: Method,
        url: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
        pace: Pace,
    ) -> Result<(StatusCode, Value), ClientError> {
        let unavailable = |detail: String| ClientError::Unavailable {
            service: SERVICE,
            detail: format!("{method} {url}: {detail}"),
        };
        let attempts = match pace {
            Pace::Wait => self.policy.max_attempts.max(1),
            Pace::NoWait => 1,
        };
        let mut last = String::new();
        for attempt in 1..=attempts {
            let permit = match pace {
                Pace::Wait => self.limiter.acquire().await,
                Pace::NoWait => match self.limiter.try_acquire() {
                    Some(p) => p,
                    None => return Err(unavailable(RATE_BUDGET_SPENT.into())),
                },
            };
            let mut req = self
                .http
                .request(method.clone(), url)
                .header("X-API-Key", self.api_key.expose())
                .query(query);
            if let Some(b) = body {
                req = req.json(b);
            }
            let answer = req.send().await;
            let wait = match answer {
                Ok(resp) => {
                    let status = resp.status();
                    let headers = resp.headers().clone();
                    let bytes = resp.bytes().await;
                    drop(permit);
                    self.learn_budget(status, &headers);
                    match bytes {
                        Ok(_) if status == StatusCode::TOO_MANY_REQUESTS => {
                            last = "429 Too Many Requests".into();
                            // The pause is on the limiter: the next
                            // acquire (of any caller) waits it out.
                            Duration::ZERO
                        }
                        Ok(bytes) if status.is_server_error() => {
                            last = format!("{status}: {}", snippet(&bytes));
                            backoff(attempt, self.policy.backoff_base, self.policy.backoff_max)
                        }
                        Ok(bytes) => {
                            let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                            return Ok((status, v));
                        }
                        Err(e) => {
                            last = format!("reading the answer: {e}");
                            backoff(attempt, self.policy.backoff_base, self.policy.backoff_max)
                        }
                    }
                }
                Err(e) => {
                    drop(permit);
                    last = e.to_string();
                    backoff(attempt, self.policy.backoff_base, self.policy.backoff_max)
                }
            };
            if attempt < attempts && !wait.is_zero() {
                tracing::debug!(%method, url, attempt, error = %last, wait_ms = wait.as_millis() as u64, "plane request retried");
                self.sleeper.sleep(wait).await;
            }
        }
        Err(unavailable(format!("{last} (after {attempts} attempts)")))
    }

    /// What an answer says about the budget: a 429's `Retry-After`
    /// (seconds, or an HTTP date), or an allowed answer's
    /// `X-RateLimit-Remaining: 0` with its `X-RateLimit-Reset` (epoch
    /// seconds). Both pause every caller; a missing header on a 429 pauses
    /// for the policy's backoff base.
    fn learn_budget(&self, status: StatusCode, h: &reqwest::header::HeaderMap) {
        let text = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).map(str::trim);
        let cap = self.policy.max_rate_limit_wait;
        if status == StatusCode::TOO_MANY_REQUESTS {
            let wait = text("retry-after")
                .and_then(retry_after)
                .unwrap_or(self.policy.backoff_base);
            tracing::warn!(
                wait_ms = wait.min(cap).as_millis() as u64,
                "plane answered 429: every request waits"
            );
            self.limiter.pause_for(wait.min(cap));
            return;
        }
        let spent = text("x-ratelimit-remaining").and_then(|v| v.parse::<u64>().ok()) == Some(0);
        if spent
            && let Some(reset) = text("x-ratelimit-reset").and_then(|v| v.parse::<f64>().ok())
            && reset.is_finite()
        {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            let secs = (reset - now).clamp(0.0, cap.as_secs_f64());
            self.limiter.pause_for(Duration::from_secs_f64(secs));
        }
    }

    /// Every result of a paginated list (`results` + `next_cursor`); a bare
    /// array answer is taken whole.
    async fn list_all(&self, url: &str) -> Result<Vec<Value>, ClientError> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..self.policy.max_pages.max(1) {
            let mut q = vec![("per_page", self.policy.per_page.to_string())];
            if let Some(c) = &cursor {
                q.push(("cursor", c.clone()));
            }
            let (status, v) = self.send(Method::GET, url, &q, None).await?;
            if !status.is_success() {
                return Err(rejected(status, &v));
            }
            match v {
                Value::Array(items) => {
                    out.extend(items);
                    return Ok(out);
                }
                v => {
                    if let Some(items) = v.get("results").and_then(Value::as_array) {
                        out.extend(items.iter().cloned());
                    }
                    let more = v
                        .get("next_page_results")
                        .and_then(Value::as_bool)
                        .unwrap_or(false);
                    cursor = v
                        .get("next_cursor")
                        .and_then(Value::as_str)
                        .map(str::to_string);
                    if !more || cursor.is_none() {
                        return Ok(out);
                    }
                }
            }
        }
        tracing::warn!(
            url,
            pages = self.policy.max_pages,
            "plane list cut at the page limit"
        );
        Ok(out)
    }

    async fn refresh_states(&self, project_id: &str) -> Result<Vec<State>, ClientError> {
        let url = format!("{}/states/", self.project_path(project_id));
        let states: Vec<State> = self
            .list_all(&url)
            .await?
            .iter()
            .filter_map(|s| {
                Some(State {
                    id: s.get("id")?.as_str()?.to_string(),
                    name: s.get("name")?.as_str()?.to_string(),
                })
            })
            .collect();
        if let Ok(mut m) = self.states.lock() {
            m.insert(project_id.to_string(), states.clone());
        }
        Ok(states)
    }

    fn cached_states(&self, project_id: &str) -> Option<Vec<State>> {
        self.states.lock().ok()?.get(project_id).cloned()
    }

    /// The state id of a status key in a project: cache, then one refresh.
    pub async fn state_id(&self, project_id: &str, key: &str) -> Result<String, ClientError> {
        let name = self
            .statuses
            .name_of(key)
            .ok_or_else(|| ClientError::Config(format!("unknown status key {key:?}")))?;
        let find = |states: &[State]| {
            states
                .iter()
                .find(|s| s.name.trim().eq_ignore_ascii_case(name.trim()))
                .map(|s| s.id.clone())
        };
        if let Some(id) = self.cached_states(project_id).and_then(|s| find(&s)) {
            return Ok(id);
        }
        let states = self.refresh_states(project_id).await?;
        find(&states).ok_or_else(|| {
            ClientError::Config(format!(
                "Plane project {project_id} has no state named {name:?} (status {key}); create it or fix [plane.statuses]"
            ))
        })
    }

    /// Every comment of a work item, newest first (by `created_at`; Plane
    /// lists newest first too, and its order breaks ties), across pages.
    pub async fn comments(&self, item: &TrackerRef) -> Result<Vec<PlaneComment>, ClientError> {
        let url = format!("{}/comments/", self.item_path(item));
        let text = |c: &Value, k: &str| c.get(k).and_then(Value::as_str).map(str::to_string);
        let mut list: Vec<(usize, Option<SystemTime>, PlaneComment)> = self
            .list_all(&url)
            .await?
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let comment = PlaneComment {
                    id: text(c, "id").unwrap_or_default(),
                    html: text(c, "comment_html")
                        .or_else(|| text(c, "comment_stripped"))
                        .unwrap_or_default(),
                    created_at: text(c, "created_at").unwrap_or_default(),
                    created_by: text(c, "created_by"),
                    external_source: text(c, "external_source"),
                    external_id: text(c, "external_id"),
                };
                (i, created_at(c), comment)
            })
            .collect();
        list.sort_by(|(ia, ta, _), (ib, tb, _)| tb.cmp(ta).then(ia.cmp(ib)));
        Ok(list.into_iter().map(|(_, _, c)| c).collect())
    }

    fn key_of_id(&self, states: &[State], state_id: &str) -> Option<String> {
        let s = states.iter().find(|s| s.id == state_id)?;
        self.statuses.key_of(&s.name).map(str::to_string)
    }
}

impl PlaneClient {
    /// `set_status` at a pace: the outbox's direct attempt does not wait.
    pub async fn set_status_paced(
        &self,
        item: &TrackerRef,
        status_key: &str,
        pace: Pace,
    ) -> Result<(), ClientError> {
        self.guard.check(item, "set_status")?;
        let state = self.state_id(&item.tracker_project_id, status_key).await?;
        let url = format!("{}/", self.item_path(item));
        let (status, v) = self
            .send_paced(
                Method::PATCH,
                &url,
                &[],
                Some(&json!({ "state": state })),
                pace,
            )
            .await?;
        if status.is_success() {
            tracing::info!(work_item = %item.work_item, status = status_key, "plane status set");
            return Ok(());
        }
        if status == StatusCode::BAD_REQUEST {
            // The id may be stale (a state was recreated): forget the cache
            // so the next call resolves again.
            if let Ok(mut m) = self.states.lock() {
                m.remove(&item.tracker_project_id);
            }
        }
        Err(rejected(status, &v))
    }

    /// `add_comment` at a pace. `external_id` is sent as given.
    pub async fn add_comment_paced(
        &self,
        item: &TrackerRef,
        external_id: &str,
        html: &str,
        pace: Pace,
    ) -> Result<(), ClientError> {
        self.guard.check(item, "add_comment")?;
        let url = format!("{}/comments/", self.item_path(item));
        let body = json!({
            "comment_html": html,
            "external_source": EXTERNAL_SOURCE,
            "external_id": external_id,
        });
        let (status, v) = self
            .send_paced(Method::POST, &url, &[], Some(&body), pace)
            .await?;
        match status {
            s if s.is_success() => Ok(()),
            // That external id is already there: the comment exists.
            StatusCode::CONFLICT => Ok(()),
            s => Err(rejected(s, &v)),
        }
    }
}

#[async_trait]
impl Tracker for PlaneClient {
    async fn set_status(&self, item: &TrackerRef, status_key: &str) -> Result<(), ClientError> {
        self.set_status_paced(item, status_key, Pace::Wait).await
    }

    async fn add_comment(
        &self,
        item: &TrackerRef,
        idempotency_key: &str,
        html: &str,
    ) -> Result<(), ClientError> {
        self.add_comment_paced(item, idempotency_key, html, Pace::Wait)
            .await
    }

    async fn latest_comment(&self, item: &TrackerRef) -> Result<Option<String>, ClientError> {
        let bot = self.bot_user_id().await.ok().flatten();
        // Our own comments (approval requests, usage) are not the person's
        // reason: skip them.
        Ok(self
            .comments(item)
            .await?
            .into_iter()
            .find(|c| {
                c.external_source.as_deref() != Some(EXTERNAL_SOURCE)
                    && (bot.is_none() || c.created_by != bot)
            })
            .map(|c| c.html))
    }

    async fn current_status(&self, item: &TrackerRef) -> Result<Option<String>, ClientError> {
        let url = format!("{}/", self.item_path(item));
        let (status, v) = self.send(Method::GET, &url, &[], None).await?;
        if !status.is_success() {
            return Err(rejected(status, &v));
        }
        let state = match v.get("state") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Object(o)) => match o.get("id").and_then(Value::as_str) {
                Some(id) => id.to_string(),
                None => return Ok(None),
            },
            _ => return Ok(None),
        };
        self.status_key_of(&item.tracker_project_id, &state).await
    }

    async fn bot_user_id(&self) -> Result<Option<String>, ClientError> {
        if let Some(id) = &self.bot_override {
            return Ok(Some(id.clone()));
        }
        if let Some(id) = self.bot.lock().ok().and_then(|b| b.clone()) {
            return Ok(Some(id));
        }
        let url = format!("{}/users/me/", self.api);
        let (status, v) = self.send(Method::GET, &url, &[], None).await?;
        if !status.is_success() {
            return Err(rejected(status, &v));
        }
        let id = v.get("id").and_then(Value::as_str).map(str::to_string);
        if let (Some(id), Ok(mut b)) = (&id, self.bot.lock()) {
            *b = Some(id.clone());
        }
        Ok(id)
    }

    async fn status_key_of(
        &self,
        tracker_project_id: &str,
        state_id: &str,
    ) -> Result<Option<String>, ClientError> {
        if let Some(states) = self.cached_states(tracker_project_id)
            && states.iter().any(|s| s.id == state_id)
        {
            return Ok(self.key_of_id(&states, state_id));
        }
        let states = self.refresh_states(tracker_project_id).await?;
        Ok(self.key_of_id(&states, state_id))
    }
}

/// Plane renders times in the API user's timezone (`+02:00`, not only
/// `Z`; issue 11 pt 5): any RFC 3339 offset, through chrono.
fn created_at(c: &Value) -> Option<SystemTime> {
    let s = c.get("created_at")?.as_str()?.trim();
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(SystemTime::from)
}

/// The wait a 429's `Retry-After` asks for: delta seconds (DRF sends an
/// integer) or an HTTP date.
fn retry_after(v: &str) -> Option<Duration> {
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    SystemTime::from(at).duration_since(SystemTime::now()).ok()
}

fn snippet(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned()
}

fn rejected(status: StatusCode, v: &Value) -> ClientError {
    ClientError::Rejected {
        service: SERVICE,
        status: status.as_u16(),
        body: snippet(v.to_string().as_bytes()),
    }
}

/// The tracker when Plane is not configured: does nothing, says so once.
#[derive(Debug, Default)]
pub struct DisabledTracker {
    said: std::sync::atomic::AtomicBool,
}

impl DisabledTracker {
    fn say(&self) {
        if !self.said.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(
                "Plane is not configured (ORCH_PLANE_BASE_URL is empty): tracker calls do nothing"
            );
        }
    }
}

#[async_trait]
impl Tracker for DisabledTracker {
    async fn set_status(&self, _: &TrackerRef, _: &str) -> Result<(), ClientError> {
        self.say();
        Ok(())
    }
    async fn add_comment(&self, _: &TrackerRef, _: &str, _: &str) -> Result<(), ClientError> {
        self.say();
        Ok(())
    }
    async fn latest_comment(&self, _: &TrackerRef) -> Result<Option<String>, ClientError> {
        self.say();
        Ok(None)
    }
    async fn current_status(&self, _: &TrackerRef) -> Result<Option<String>, ClientError> {
        self.say();
        Ok(None)
    }
}

/// The daemon's tracker: Plane when `ORCH_PLANE_BASE_URL` is set.
pub fn tracker_from_settings(settings: &Settings) -> Arc<dyn Tracker> {
    if settings.plane_base_url.trim().is_empty() {
        return Arc::new(DisabledTracker::default());
    }
    match PlaneClient::new(settings) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            tracing::error!(error = %e, "cannot build the Plane client; tracker calls do nothing");
            Arc::new(DisabledTracker::default())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comment_times_parse_in_plane_forms() {
        let t = |s: &str| created_at(&json!({ "created_at": s }));
        assert!(t("2026-11-20T10:01:00.000Z").is_some());
        assert!(t("2026-11-20T10:01:00.123456+00:00").is_some());
        assert!(t("2026-11-20T10:01:00Z") < t("2026-11-20T10:01:00.5Z"));
        assert!(t("garbage").is_none());
        // The API user's timezone: the same instant in two offsets.
        assert_eq!(
            t("2026-11-20T12:01:00.000+02:00"),
            t("2026-11-20T10:01:00Z")
        );
        assert!(t("2026-11-20T11:00:00-05:00") > t("2026-11-20T12:00:00+00:00"));
    }

    #[test]
    fn retry_after_in_both_forms() {
        assert_eq!(retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(retry_after("-1"), None);
        assert_eq!(retry_after("soon"), None);
        let later = chrono::Utc::now() + chrono::Duration::seconds(30);
        let d = retry_after(&later.to_rfc2822()).unwrap();
        assert!(d > Duration::from_secs(20) && d <= Duration::from_secs(30));
    }
}
