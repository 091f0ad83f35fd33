//! A stateful Plane on loopback, built from the wire formats in
//! `tests/fixtures/plane` (REST API v1 + webhooks v1). It keeps workspaces,
//! projects, states, work items and comments; answers 409 for a repeated
//! comment `external_id`; paginates with `per_page`/`cursor`; names the API
//! key's user at `users/me`; can be told to answer 429 (with `Retry-After`
//! only, as Django REST framework's handler does), 5xx or slowly; can
//! enforce a rate limit like Plane's API-key throttle (a sliding window;
//! allowed answers carry `X-RateLimit-Remaining`/`-Reset`, a throttled one
//! only `Retry-After`); behaves like a Plane version (`PlaneVersion`: 1.0
//! serves only `.../issues/...`, 1.3 also `.../work-items/...`); and SENDS
//! signed webhooks the way
//! Plane does: one delivery per changed field, a retry with a new
//! `X-Plane-Delivery` id, our own API writes echoing back with the bot as
//! actor.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use super::plane_webhooks::{issue_body, send_signed};

pub const BOT_ID: &str = "0b0b0b0b-1111-4222-8333-444455556666";
pub const HUMAN_ID: &str = "77c1e0d2-3b4a-4f5e-8d6c-9b0a1f2e3d4c";

/// Which Plane the double behaves like (issue 11): `work-items/` paths
/// exist from v1.1.0; `issues/` paths from before and still in v1.3.1.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PlaneVersion {
    V1_0,
    #[default]
    V1_3,
}

/// Plane's API-key throttle: at most `limit` requests per `window`.
#[derive(Debug, Clone, Copy)]
pub struct RateRule {
    pub limit: usize,
    pub window: Duration,
}

/// A canned misbehaviour for the next request(s).
#[derive(Debug, Clone)]
pub enum Fault {
    /// 429 with `Retry-After: <s>` and no other rate header.
    RateLimited {
        retry_after_s: u64,
    },
    ServerError,
    Slow(Duration),
}

#[derive(Debug, Clone)]
pub struct Comment {
    pub id: String,
    pub html: String,
    pub created_at: String,
    pub created_by: String,
    pub external_source: Option<String>,
    pub external_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Item {
    pub id: String,
    pub project: String,
    pub sequence_id: i64,
    pub name: String,
    pub state: String,
    pub updated_at: String,
}

/// One webhook the double sent, with the daemon's answer.
#[derive(Debug, Clone)]
pub struct Sent {
    pub delivery_id: String,
    pub event: String,
    pub body: Vec<u8>,
    pub status: u16,
}

/// (id, name, group) of a Plane state.
pub type StateRow = (String, String, String);

#[derive(Default)]
pub struct PlaneState {
    pub api_key: String,
    pub workspace: String,
    /// project id → (identifier, states)
    pub projects: HashMap<String, (String, Vec<StateRow>)>,
    pub items: HashMap<String, Item>,
    pub comments: HashMap<String, Vec<Comment>>,
    pub faults: VecDeque<Fault>,
    /// (method, path) of every API request that reached a handler or a fault.
    pub requests: Vec<(String, String)>,
    pub webhook: Option<(String, String)>,
    pub sent: Vec<Sent>,
    /// Echo webhooks spawned and not answered yet.
    pub in_flight: usize,
    /// (work item id, state name) of every state change, in order: the
    /// statuses a work item went through (Deploying, Monitoring, Done).
    pub state_log: Vec<(String, String)>,
    /// (work item id, what) of every write that landed, in order: a state
    /// name (`state:<name>`) or a comment's HTML (`comment:<html>`).
    pub write_log: Vec<(String, String)>,
    pub version: PlaneVersion,
    pub rate: Option<RateRule>,
    /// When the requests the throttle counted arrived.
    pub hits: VecDeque<std::time::Instant>,
    /// Requests answered 429 by the throttle (sent while the budget was spent).
    pub throttled: usize,
    /// (arrival, method, path, status) of every API request.
    pub timeline: Vec<(std::time::Instant, String, String, u16)>,
    tick: u64,
}

impl PlaneState {
    /// A strictly increasing timestamp in Plane's form.
    pub fn now(&mut self) -> String {
        self.tick += 1;
        let ms = self.tick;
        format!(
            "2026-11-20T10:{:02}:{:02}.{:03}Z",
            (ms / 60_000) % 60,
            (ms / 1000) % 60,
            ms % 1000
        )
    }

    pub fn state_name(&self, project: &str, id: &str) -> Option<(String, String)> {
        let (_, states) = self.projects.get(project)?;
        states
            .iter()
            .find(|(sid, _, _)| sid == id)
            .map(|(_, n, g)| (n.clone(), g.clone()))
    }

    pub fn state_id(&self, project: &str, name: &str) -> Option<String> {
        let (_, states) = self.projects.get(project)?;
        states
            .iter()
            .find(|(_, n, _)| n == name)
            .map(|(id, _, _)| id.clone())
    }
}

#[derive(Clone)]
pub struct PlaneDouble {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<PlaneState>>,
    pub http: reqwest::Client,
}

fn fixture_states() -> Vec<StateRow> {
    let text = include_str!("../fixtures/plane/states-list.json");
    let v: Value = serde_json::from_str(text).expect("fixture");
    let mut out: Vec<StateRow> = v["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_string(),
                s["name"].as_str().unwrap().to_string(),
                s["group"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    // The fixture lacks the statuses only the orchestrator sets.
    for name in [
        "Awaiting Deploy",
        "Deploying",
        "Monitoring after Deploy",
        "Cancelled",
    ] {
        out.push((
            uuid::Uuid::new_v4().to_string(),
            name.into(),
            "started".into(),
        ));
    }
    out
}

impl PlaneDouble {
    pub async fn start(workspace: &str, api_key: &str) -> PlaneDouble {
        let state = Arc::new(Mutex::new(PlaneState {
            api_key: api_key.into(),
            workspace: workspace.into(),
            ..Default::default()
        }));
        let ws = "/api/v1/workspaces/{ws}/projects/{pid}";
        let mut app = Router::new()
            .route("/api/v1/users/me/", get(me))
            .route(&format!("{ws}/states/"), get(states));
        // Both spellings; the gate refuses `work-items/` on a 1.0 Plane.
        for items in ["issues", "work-items"] {
            app = app
                .route(
                    &format!("{ws}/{items}/{{id}}/"),
                    get(get_item).patch(patch_item),
                )
                .route(
                    &format!("{ws}/{items}/{{id}}/comments/"),
                    get(list_comments).post(post_comment),
                );
        }
        let app = app
            .layer(middleware::from_fn_with_state(state.clone(), gate))
            .with_state(state.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        PlaneDouble {
            addr,
            state,
            http: reqwest::Client::new(),
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, PlaneState> {
        self.state.lock().unwrap()
    }

    /// A project with the fixture's states (plus ours); returns its id.
    pub fn add_project(&self, identifier: &str) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        self.lock()
            .projects
            .insert(id.clone(), (identifier.into(), fixture_states()));
        id
    }

    pub fn add_state(&self, project: &str, name: &str) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        let mut s = self.lock();
        s.projects
            .get_mut(project)
            .unwrap()
            .1
            .push((id.clone(), name.into(), "started".into()));
        id
    }

    /// A work item in `Backlog`; returns its id.
    pub fn add_item(&self, project: &str, sequence_id: i64, name: &str) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        let mut s = self.lock();
        let backlog = s.state_id(project, "Backlog").unwrap();
        let updated_at = s.now();
        s.items.insert(
            id.clone(),
            Item {
                id: id.clone(),
                project: project.into(),
                sequence_id,
                name: name.into(),
                state: backlog,
                updated_at,
            },
        );
        id
    }

    pub fn set_webhook(&self, url: &str, secret: &str) {
        self.lock().webhook = Some((url.into(), secret.into()));
    }

    pub fn set_version(&self, v: PlaneVersion) {
        self.lock().version = v;
    }

    /// Throttle like Plane's API-key limit: `limit` per `window`.
    pub fn set_rate_limit(&self, limit: usize, window: Duration) {
        self.lock().rate = Some(RateRule { limit, window });
    }

    pub fn push_fault(&self, f: Fault) {
        self.lock().faults.push_back(f);
    }

    pub fn requests(&self) -> Vec<(String, String)> {
        self.lock().requests.clone()
    }

    pub fn state_of(&self, item: &str) -> String {
        let s = self.lock();
        let it = &s.items[item];
        s.state_name(&it.project, &it.state).unwrap().0
    }

    pub fn comments(&self, item: &str) -> Vec<Comment> {
        self.lock().comments.get(item).cloned().unwrap_or_default()
    }

    /// The state names a work item went through, in order.
    pub fn states_of(&self, item: &str) -> Vec<String> {
        let s = self.lock();
        s.state_log
            .iter()
            .filter(|(i, _)| i == item)
            .map(|(_, n)| n.clone())
            .collect()
    }

    /// What landed on one work item, in order (see `write_log`).
    pub fn writes_of(&self, item: &str) -> Vec<String> {
        self.lock()
            .write_log
            .iter()
            .filter(|(i, _)| i == item)
            .map(|(_, w)| w.clone())
            .collect()
    }

    pub fn sent(&self) -> Vec<Sent> {
        self.lock().sent.clone()
    }
}

pub type Shared = Arc<Mutex<PlaneState>>;

/// Auth, request log, version, throttle and injected faults, in front of
/// every route.
async fn gate(State(st): State<Shared>, req: Request, next: Next) -> Response {
    let key = req
        .headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let arrived = std::time::Instant::now();
    let early = {
        let mut s = st.lock().unwrap();
        s.requests.push((method.clone(), path.clone()));
        if key.as_deref() != Some(s.api_key.as_str()) {
            Err((
                StatusCode::UNAUTHORIZED,
                Json(json!({"error": "bad api key"})),
            )
                .into_response())
        } else if s.version == PlaneVersion::V1_0 && path.contains("/work-items/") {
            // Django's URL resolver: no such route before v1.1.0.
            Err((StatusCode::NOT_FOUND, "<h1>Not Found</h1>").into_response())
        } else {
            throttle(&mut s, arrived)
                .map(|h| (h, s.faults.pop_front()))
                .map_err(retry_after)
        }
    };
    let answer = match early {
        Err(r) => r,
        Ok((headers, fault)) => {
            let mut r = match fault {
                Some(Fault::RateLimited { retry_after_s }) => retry_after(retry_after_s),
                Some(Fault::ServerError) => {
                    (StatusCode::BAD_GATEWAY, "upstream hiccup").into_response()
                }
                Some(Fault::Slow(d)) => {
                    tokio::time::sleep(d).await;
                    next.run(req).await
                }
                None => next.run(req).await,
            };
            r.headers_mut().extend(headers);
            r
        }
    };
    st.lock()
        .unwrap()
        .timeline
        .push((arrived, method, path, answer.status().as_u16()));
    answer
}

fn retry_after(secs: u64) -> Response {
    let mut h = HeaderMap::new();
    h.insert("retry-after", secs.to_string().parse().unwrap());
    (
        StatusCode::TOO_MANY_REQUESTS,
        h,
        Json(json!({"detail": format!("Request was throttled. Expected available in {secs} seconds.")})),
    )
        .into_response()
}

/// Plane's API-key throttle (a DRF `SimpleRateThrottle`): a sliding window
/// of arrivals. Allowed: `X-RateLimit-Remaining` and `X-RateLimit-Reset`
/// (epoch seconds) ride on the answer. Throttled: 429 with `Retry-After`.
/// `Err(seconds)`: throttled, retry after that long.
fn throttle(s: &mut PlaneState, now: std::time::Instant) -> Result<HeaderMap, u64> {
    let Some(rule) = s.rate else {
        return Ok(HeaderMap::new());
    };
    while s
        .hits
        .front()
        .is_some_and(|t| now.duration_since(*t) >= rule.window)
    {
        s.hits.pop_front();
    }
    if s.hits.len() >= rule.limit {
        s.throttled += 1;
        let free_in = rule.window - now.duration_since(*s.hits.front().unwrap());
        return Err(free_in.as_secs_f64().ceil() as u64);
    }
    s.hits.push_back(now);
    let reset_in = rule.window - now.duration_since(*s.hits.front().unwrap());
    let epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        + reset_in;
    let mut h = HeaderMap::new();
    h.insert(
        "x-ratelimit-remaining",
        (rule.limit - s.hits.len()).to_string().parse().unwrap(),
    );
    h.insert(
        "x-ratelimit-reset",
        epoch.as_secs().to_string().parse().unwrap(),
    );
    Ok(h)
}

async fn me() -> Json<Value> {
    Json(
        json!({"id": BOT_ID, "display_name": "orchestrator", "email": "bot@example.com", "is_bot": true}),
    )
}

#[derive(serde::Deserialize)]
struct Page {
    per_page: Option<usize>,
    cursor: Option<String>,
}

/// Plane's cursor pagination over `all`: `cursor=<per_page>:<page>:0`.
fn paginate(all: Vec<Value>, q: &Page) -> Value {
    let per_page = q.per_page.unwrap_or(100).clamp(1, 1000);
    let page: usize = q
        .cursor
        .as_deref()
        .and_then(|c| c.split(':').nth(1))
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let total = all.len();
    let results: Vec<Value> = all
        .into_iter()
        .skip(page * per_page)
        .take(per_page)
        .collect();
    let more = (page + 1) * per_page < total;
    json!({
        "grouped_by": null, "sub_grouped_by": null, "total_count": total,
        "next_cursor": format!("{per_page}:{}:0", page + 1),
        "prev_cursor": format!("{per_page}:{}:1", page as i64 - 1),
        "next_page_results": more, "prev_page_results": page > 0,
        "count": results.len(), "total_pages": total.div_ceil(per_page),
        "total_results": total, "extra_stats": null, "results": results
    })
}

async fn states(
    State(st): State<Shared>,
    Path((_ws, pid)): Path<(String, String)>,
    Query(q): Query<Page>,
) -> Response {
    let s = st.lock().unwrap();
    let Some((_, states)) = s.projects.get(&pid) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let all = states
        .iter()
        .map(|(id, name, group)| json!({"id": id, "name": name, "group": group, "color": "#000"}))
        .collect();
    Json(paginate(all, &q)).into_response()
}

fn item_json(it: &Item) -> Value {
    json!({"id": it.id, "name": it.name, "sequence_id": it.sequence_id,
           "project": it.project, "state": it.state, "updated_at": it.updated_at})
}

async fn get_item(
    State(st): State<Shared>,
    Path((_ws, _pid, id)): Path<(String, String, String)>,
) -> Response {
    let s = st.lock().unwrap();
    match s.items.get(&id) {
        Some(it) => Json(item_json(it)).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// PATCH {"state": id} through the API: the change echoes back as a
/// webhook whose actor is the API key's user (field `state`).
async fn patch_item(
    State(st): State<Shared>,
    Path((_ws, pid, id)): Path<(String, String, String)>,
    Json(body): Json<Value>,
) -> Response {
    let (echo, answer) = {
        let mut s = st.lock().unwrap();
        let Some(new) = body
            .get("state")
            .and_then(Value::as_str)
            .map(str::to_string)
        else {
            return (StatusCode::BAD_REQUEST, "state required").into_response();
        };
        if s.state_name(&pid, &new).is_none() {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"state": ["not a state of this project"]})),
            )
                .into_response();
        }
        let updated_at = s.now();
        let Some(it) = s.items.get_mut(&id) else {
            return StatusCode::NOT_FOUND.into_response();
        };
        let old = std::mem::replace(&mut it.state, new.clone());
        it.updated_at = updated_at;
        let it = it.clone();
        let name = s.state_name(&pid, &new).map(|(n, _)| n).unwrap_or_default();
        s.write_log.push((id.clone(), format!("state:{name}")));
        if old != new {
            s.state_log.push((id.clone(), name));
        }
        let echo = (old != new && s.webhook.is_some())
            .then(|| issue_body(&s, &it, "state", json!(old), json!(new), BOT_ID));
        if echo.is_some() {
            s.in_flight += 1;
        }
        (echo, item_json(&it))
    };
    if let Some(body) = echo {
        // Plane sends webhooks from a background worker, after the answer.
        let st = st.clone();
        tokio::spawn(async move {
            let bytes = serde_json::to_vec(&body).unwrap();
            let id = uuid::Uuid::new_v4().to_string();
            send_signed(&st, &reqwest::Client::new(), "issue", &bytes, &id, None).await;
            st.lock().unwrap().in_flight -= 1;
        });
    }
    Json(answer).into_response()
}

async fn list_comments(
    State(st): State<Shared>,
    Path((_ws, _pid, id)): Path<(String, String, String)>,
    Query(q): Query<Page>,
) -> Response {
    let s = st.lock().unwrap();
    let mut all = s.comments.get(&id).cloned().unwrap_or_default();
    // Newest first, as Plane lists them.
    all.sort_by(|a, b| b.created_at.cmp(&a.created_at));
    let all = all
        .iter()
        .map(|c| {
            json!({"id": c.id, "comment_html": c.html, "created_at": c.created_at,
                        "created_by": c.created_by, "external_source": c.external_source,
                        "external_id": c.external_id, "issue": id})
        })
        .collect();
    Json(paginate(all, &q)).into_response()
}

async fn post_comment(
    State(st): State<Shared>,
    Path((_ws, _pid, id)): Path<(String, String, String)>,
    Json(body): Json<Value>,
) -> Response {
    let mut s = st.lock().unwrap();
    if !s.items.contains_key(&id) {
        return StatusCode::NOT_FOUND.into_response();
    }
    let source = body
        .get("external_source")
        .and_then(Value::as_str)
        .map(str::to_string);
    let ext = body
        .get("external_id")
        .and_then(Value::as_str)
        .map(str::to_string);
    let exists = s.comments.get(&id).is_some_and(|cs| {
        ext.is_some()
            && cs
                .iter()
                .any(|c| c.external_source == source && c.external_id == ext)
    });
    if exists {
        return (StatusCode::CONFLICT, Json(json!({"error": "Issue Comment with the same external id and external source already exists"}))).into_response();
    }
    let created_at = s.now();
    let c = Comment {
        id: uuid::Uuid::new_v4().to_string(),
        html: body
            .get("comment_html")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .into(),
        created_at,
        created_by: BOT_ID.into(),
        external_source: source,
        external_id: ext,
    };
    s.write_log
        .push((id.clone(), format!("comment:{}", c.html)));
    s.comments.entry(id).or_default().push(c.clone());
    (
        StatusCode::CREATED,
        Json(json!({"id": c.id, "comment_html": c.html, "created_at": c.created_at})),
    )
        .into_response()
}
