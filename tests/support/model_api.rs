//! Loopback doubles of the two model APIs the real agent CLIs talk to
//! (B-14): the Anthropic Messages API (Claude Code, `ANTHROPIC_BASE_URL`)
//! and the OpenAI Responses API (Codex, a `model_providers` entry), both
//! on one axum server on `127.0.0.1:0`.
//!
//! The scripted model reads the prompt the orchestrator wrote ("# You are
//! the <role> of work item <WI>", "## Your task (<stage> stage)"), answers
//! the first turn with one shell tool call that writes that role's
//! artifact (relative to the CLI's working directory, the worktree), and
//! once the tool's result comes back ends the turn with a line of text.
//! Every turn carries fixed usage ([`CLAUDE_TURNS`], [`CODEX_TURNS`]), so a
//! test can assert the exact token counts the daemon recorded.
//!
//! Streaming is SSE in the event order the real APIs use; the whole body is
//! sent at once (the CLIs parse events, not timing). Any other path (token
//! counting, model lists, telemetry that slipped through) gets a plausible
//! JSON answer and is logged, so a new CLI version's extra calls show up in
//! `requests()` instead of failing somewhere obscure.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// The usage of one scripted model turn, in the API's own terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TurnUsage {
    /// Anthropic: uncached input. OpenAI: all input, cached included.
    pub input: u64,
    pub output: u64,
    /// Anthropic `cache_read_input_tokens`; OpenAI `cached_tokens`.
    pub cache_read: u64,
    /// Anthropic `cache_creation_input_tokens`; OpenAI has none.
    pub cache_creation: u64,
}

/// Claude: the tool-use turn, then the closing turn.
pub const CLAUDE_TURNS: [TurnUsage; 2] = [
    TurnUsage {
        input: 11,
        output: 57,
        cache_read: 3_400,
        cache_creation: 1_200,
    },
    TurnUsage {
        input: 7,
        output: 23,
        cache_read: 4_600,
        cache_creation: 300,
    },
];

/// Codex: the tool-call turn, then the closing turn.
pub const CODEX_TURNS: [TurnUsage; 2] = [
    TurnUsage {
        input: 1_500,
        output: 40,
        cache_read: 1_000,
        cache_creation: 0,
    },
    TurnUsage {
        input: 1_700,
        output: 12,
        cache_read: 1_400,
        cache_creation: 0,
    },
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Anthropic,
    OpenAi,
}

/// One model request the double answered.
#[derive(Debug, Clone)]
pub struct Served {
    pub api: Api,
    pub role: String,
    pub work_item: String,
    pub stage: String,
    /// 0: answered with the tool call; 1: answered with the closing text.
    pub turn: usize,
    pub model: String,
}

/// Every request, answered or not: (method and path, body).
#[derive(Debug, Default)]
pub struct ModelState {
    pub requests: Vec<(String, String)>,
    pub served: Vec<Served>,
    /// A role whose first turn is answered otherwise: that usage and that
    /// shell command (a run that spends much and keeps working, B-7).
    pub first_turn: Option<(String, TurnUsage, String)>,
}

pub struct ModelDouble {
    pub addr: SocketAddr,
    state: Arc<Mutex<ModelState>>,
}

impl ModelDouble {
    pub async fn start() -> ModelDouble {
        let state = Arc::new(Mutex::new(ModelState::default()));
        let app = Router::new()
            .route("/v1/messages", post(messages))
            .route("/v1/messages/count_tokens", post(count_tokens))
            .route("/v1/responses", post(responses))
            .fallback(other)
            .with_state(state.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        ModelDouble { addr, state }
    }

    /// The server root (`ANTHROPIC_BASE_URL`; Codex wants `<root>/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn served(&self) -> Vec<Served> {
        self.state.lock().unwrap().served.clone()
    }

    pub fn requests(&self) -> Vec<(String, String)> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Answer `role`'s first turn with `usage` and a tool call of `command`
    /// instead of the artifact script.
    pub fn script_first_turn(&self, role: &str, usage: TurnUsage, command: &str) {
        self.state.lock().unwrap().first_turn = Some((role.into(), usage, command.into()));
    }

    /// The requests that hit no model endpoint (method and path).
    pub fn other_paths(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .map(|(p, _)| p)
            .filter(|p| !p.starts_with("POST /v1/messages") && !p.starts_with("POST /v1/responses"))
            .collect()
    }
}

/// Role, work item and stage named by the orchestrator's prompt, found in
/// any text of the request (the CLIs wrap the prompt in their own blocks).
fn prompt_facts(text: &str) -> Option<(String, String, String)> {
    let head = text.split("# You are the ").nth(1)?;
    let mut words = head.split_whitespace();
    let role = words.next()?.to_string();
    let rest = head.split(" of work item ").nth(1)?;
    let work_item: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    let stage = text
        .split("## Your task (")
        .nth(1)
        .and_then(|s| s.split(" stage)").next())
        .unwrap_or("")
        .to_string();
    Some((role, work_item, stage))
}

/// What the scripted model runs for `role`: the artifact with the verdict
/// lines the agent contract asks for (tests/agents/contract-agent.sh does
/// the same without a model). Single-quoted: no `$` is expanded.
pub fn artifact_command(role: &str, work_item: &str, stage: &str) -> String {
    let dir = format!("docs/work-items/{work_item}");
    let write = |rel: &str, body: &str| {
        let path = format!("{dir}/{rel}");
        let parent = path.rsplit_once('/').map(|(p, _)| p).unwrap_or(".");
        format!("mkdir -p '{parent}' && printf '{body}' > '{path}'")
    };
    match role {
        "analyst" => write(
            "01-brd.md",
            &format!("# BRD {work_item}\\n\\nstatus: READY\\n"),
        ),
        "architect" => write("06-adr/ADR-001-plan.md", "# ADR\\n\\nstatus: READY\\n"),
        "developer" => format!(
            "mkdir -p src && printf 'feature for {work_item}\\n' > src/feature-{work_item}.txt"
        ),
        "reviewer" => write("11-review.md", "# Review\\n\\nverdict: APPROVE\\n"),
        "tester" => write(
            "13-test-report.md",
            "# Tests\\n\\nresult: PASS\\nstatus: PASS\\ntests_run: 4\\n",
        ),
        "deployer" if stage == "deploy" => write(
            "15-deploy-report.md",
            "# Production deploy\\n\\ndeploy_status: SUCCESS\\n",
        ),
        "deployer" => write(
            "14-staging-report.md",
            "# Staging\\n\\nstaging_status: SUCCESS\\n",
        ),
        other => format!("echo 'no script for role {other}' >&2; exit 3"),
    }
}

fn record(state: &Mutex<ModelState>, what: String, body: &Bytes) {
    let text = String::from_utf8_lossy(body).into_owned();
    state.lock().unwrap().requests.push((what, text));
}

fn sse(events: Vec<(&str, Value)>) -> Response {
    let mut body = String::new();
    for (name, mut data) in events {
        data["type"] = json!(name);
        body.push_str(&format!("event: {name}\ndata: {data}\n\n"));
    }
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

fn bad(why: &str) -> Response {
    let err = json!({"type": "error", "error": {"type": "invalid_request_error", "message": why}});
    (StatusCode::BAD_REQUEST, axum::Json(err)).into_response()
}

/// Anthropic `POST /v1/messages` (Claude Code adds `?beta=true`).
async fn messages(State(state): State<Arc<Mutex<ModelState>>>, uri: Uri, body: Bytes) -> Response {
    record(&state, format!("POST {uri}"), &body);
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return bad("body is not JSON");
    };
    let model = req["model"].as_str().unwrap_or("claude").to_string();
    let msgs = req["messages"].as_array().cloned().unwrap_or_default();
    // The tool's result ends the script: the last user turn carries it.
    let answered = msgs.last().is_some_and(|m| {
        m["content"]
            .as_array()
            .is_some_and(|c| c.iter().any(|b| b["type"] == "tool_result"))
    });
    let Some((role, work_item, stage)) = prompt_facts(&msgs_text(&msgs)) else {
        // A side request (a title, a summary) of no run: a short answer.
        return claude_turn(
            &model,
            "msg_side",
            TurnUsage::default(),
            None,
            req["stream"] == true,
        );
    };
    let turn = usize::from(answered);
    state.lock().unwrap().served.push(Served {
        api: Api::Anthropic,
        role: role.clone(),
        work_item: work_item.clone(),
        stage: stage.clone(),
        turn,
        model: model.clone(),
    });
    let scripted = state.lock().unwrap().first_turn.clone();
    let (usage, tool) = match scripted {
        Some((r, usage, command)) if turn == 0 && r == role => (usage, Some(command)),
        _ => (
            CLAUDE_TURNS[turn],
            (turn == 0).then(|| artifact_command(&role, &work_item, &stage)),
        ),
    };
    let id = format!("msg_{work_item}_{role}_{turn}");
    claude_turn(&model, &id, usage, tool, req["stream"] == true)
}

fn msgs_text(msgs: &[Value]) -> String {
    let mut out = String::new();
    for m in msgs.iter().filter(|m| m["role"] == "user") {
        match &m["content"] {
            Value::String(s) => out.push_str(s),
            Value::Array(blocks) => {
                for b in blocks {
                    if let Some(t) = b["text"].as_str() {
                        out.push_str(t);
                        out.push('\n');
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// One assistant turn as the Messages API streams it: `message_start`
/// carries the input side of the usage (and output 1, as the real API
/// does), `message_delta` the final output count and the stop reason.
fn claude_turn(
    model: &str,
    id: &str,
    u: TurnUsage,
    tool: Option<String>,
    stream: bool,
) -> Response {
    let (block, delta, stop) = match &tool {
        Some(cmd) => (
            json!({"type": "tool_use", "id": format!("toolu_{id}"), "name": "Bash", "input": {}}),
            json!({"type": "input_json_delta",
                   "partial_json": json!({"command": cmd, "description": "Write the artifact"}).to_string()}),
            "tool_use",
        ),
        None => (
            json!({"type": "text", "text": ""}),
            json!({"type": "text_delta", "text": "Done: the artifact is written."}),
            "end_turn",
        ),
    };
    let usage_start = json!({
        "input_tokens": u.input, "output_tokens": 1,
        "cache_creation_input_tokens": u.cache_creation, "cache_read_input_tokens": u.cache_read,
    });
    if !stream {
        let content = match &tool {
            Some(cmd) => json!([{"type": "tool_use", "id": format!("toolu_{id}"), "name": "Bash",
                                 "input": {"command": cmd, "description": "Write the artifact"}}]),
            None => json!([{"type": "text", "text": "Done."}]),
        };
        let mut usage = usage_start;
        usage["output_tokens"] = json!(u.output);
        return axum::Json(json!({
            "id": id, "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": stop, "stop_sequence": null, "usage": usage,
        }))
        .into_response();
    }
    sse(vec![
        (
            "message_start",
            json!({"message": {"id": id, "type": "message", "role": "assistant", "model": model,
                   "content": [], "stop_reason": null, "stop_sequence": null, "usage": usage_start}}),
        ),
        (
            "content_block_start",
            json!({"index": 0, "content_block": block}),
        ),
        ("content_block_delta", json!({"index": 0, "delta": delta})),
        ("content_block_stop", json!({"index": 0})),
        (
            "message_delta",
            json!({"delta": {"stop_reason": stop, "stop_sequence": null},
                   "usage": {"output_tokens": u.output}}),
        ),
        ("message_stop", json!({})),
    ])
}

async fn count_tokens(
    State(state): State<Arc<Mutex<ModelState>>>,
    uri: Uri,
    body: Bytes,
) -> Response {
    record(&state, format!("POST {uri}"), &body);
    axum::Json(json!({"input_tokens": 1000})).into_response()
}

/// OpenAI `POST /v1/responses` as Codex calls it (always streamed).
async fn responses(State(state): State<Arc<Mutex<ModelState>>>, uri: Uri, body: Bytes) -> Response {
    record(&state, format!("POST {uri}"), &body);
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return bad("body is not JSON");
    };
    let model = req["model"].as_str().unwrap_or("gpt").to_string();
    let input = req["input"].as_array().cloned().unwrap_or_default();
    let answered = input
        .iter()
        .any(|i| i["type"] == "function_call_output" || i["type"] == "custom_tool_call_output");
    let text: String = input
        .iter()
        .filter(|i| i["role"] == "user")
        .flat_map(|i| i["content"].as_array().cloned().unwrap_or_default())
        .filter_map(|c| c["text"].as_str().map(str::to_string))
        .collect::<Vec<_>>()
        .join("\n");
    let facts = prompt_facts(&text);
    let turn = usize::from(answered);
    let item = match (&facts, turn) {
        (Some((role, wi, stage)), 0) => json!({
            "type": "function_call", "id": format!("fc_{wi}_{role}"), "call_id": format!("call_{wi}_{role}"),
            // Codex 0.17x offers `exec_command` (a PTY shell), not `shell`.
            "name": "exec_command",
            "arguments": json!({"cmd": artifact_command(role, wi, stage)}).to_string(),
        }),
        _ => json!({
            "type": "message", "id": "msg_done", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": "Done: the artifact is written.", "annotations": []}],
        }),
    };
    let u = match &facts {
        Some((role, wi, stage)) => {
            state.lock().unwrap().served.push(Served {
                api: Api::OpenAi,
                role: role.clone(),
                work_item: wi.clone(),
                stage: stage.clone(),
                turn,
                model: model.clone(),
            });
            CODEX_TURNS[turn]
        }
        None => TurnUsage::default(),
    };
    let id = format!("resp_{}", input.len());
    let usage = json!({
        "input_tokens": u.input,
        "input_tokens_details": {"cached_tokens": u.cache_read},
        "output_tokens": u.output,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": u.input + u.output,
    });
    sse(vec![
        (
            "response.created",
            json!({"response": {"id": id, "status": "in_progress", "model": model}}),
        ),
        (
            "response.output_item.added",
            json!({"output_index": 0, "item": item}),
        ),
        (
            "response.output_item.done",
            json!({"output_index": 0, "item": item}),
        ),
        (
            "response.completed",
            json!({"response": {"id": id, "status": "completed", "model": model, "usage": usage}}),
        ),
    ])
}

/// Anything else: logged, answered with an empty object.
async fn other(
    State(state): State<Arc<Mutex<ModelState>>>,
    method: axum::http::Method,
    uri: Uri,
    _headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&state, format!("{method} {uri}"), &body);
    if uri.path().ends_with("/models") {
        return axum::Json(json!({"data": [], "models": []})).into_response();
    }
    axum::Json(json!({})).into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn facts_come_from_the_orchestrators_prompt() {
        let p = "<system-reminder>x</system-reminder>\n# You are the analyst of work item DEMO-1\n\n## Work item\n\n## Your task (analysis stage)\n";
        assert_eq!(
            super::prompt_facts(p),
            Some(("analyst".into(), "DEMO-1".into(), "analysis".into()))
        );
    }
}
