//! A Telegram Bot API double on loopback that answers like Telegram
//! (`tests/fixtures/telegram`): `/bot<token>/<method>`, `{"ok": ...}`
//! envelopes, "message is not modified", "message to edit not found", 429
//! with `retry_after`, and `getUpdates` long polling with offsets. It keeps
//! the chat's messages, every call, and the updates it hands out.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

pub const TOKEN: &str = "123456:TEST-TOKEN-never-logged";
pub const CHAT: &str = "-1001234567890";

#[derive(Debug, Clone, PartialEq)]
pub struct Msg {
    pub id: i64,
    pub chat_id: String,
    pub text: String,
    /// (text, callback_data) per button.
    pub buttons: Vec<(String, String)>,
    pub silent: bool,
    pub deleted: bool,
}

#[derive(Default)]
pub struct TgState {
    pub messages: BTreeMap<i64, Msg>,
    next_id: i64,
    /// (method, body) of every call with the right token.
    pub calls: Vec<(String, Value)>,
    /// Scripted answers: the next call of the method gets (status, body).
    faults: VecDeque<(String, u16, Value)>,
    updates: Vec<Value>,
    /// Updates handed out again whatever the offset (a redelivery).
    forced: Vec<Value>,
    next_update: i64,
    /// Largest offset a getUpdates confirmed.
    pub confirmed: i64,
    pub wrong_token_calls: u32,
}

#[derive(Clone)]
pub struct TelegramDouble {
    state: Arc<Mutex<TgState>>,
    wake: Arc<tokio::sync::Notify>,
    addr: std::net::SocketAddr,
}

fn err(status: u16, description: &str) -> (u16, Value) {
    (
        status,
        json!({"ok": false, "error_code": status, "description": description}),
    )
}

fn buttons_of(body: &Value) -> Vec<(String, String)> {
    body["reply_markup"]["inline_keyboard"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|row| row.as_array().cloned().unwrap_or_default())
        .map(|b| {
            (
                b["text"].as_str().unwrap_or("").to_string(),
                b["callback_data"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

impl TelegramDouble {
    pub async fn start() -> TelegramDouble {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let d = TelegramDouble {
            state: Arc::new(Mutex::new(TgState {
                next_id: 100,
                next_update: 9000,
                ..Default::default()
            })),
            wake: Arc::default(),
            addr,
        };
        let app = Router::new()
            .route("/{bot}/{method}", post(handle))
            .with_state(d.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        d
    }

    /// The server root (`ORCH_TELEGRAM_API_URL`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn lock(&self) -> MutexGuard<'_, TgState> {
        self.state.lock().unwrap()
    }

    /// The next call of `method` gets this answer instead.
    pub fn fail_next(&self, method: &str, status: u16, body: Value) {
        self.lock().faults.push_back((method.into(), status, body));
    }

    /// The next call of `method` gets a 429 asking to wait `secs`.
    pub fn rate_limit_next(&self, method: &str, secs: u64) {
        self.fail_next(
            method,
            429,
            json!({"ok": false, "error_code": 429, "description": format!("Too Many Requests: retry after {secs}"), "parameters": {"retry_after": secs}}),
        );
    }

    /// Someone deletes a message in the chat.
    pub fn delete_by_hand(&self, id: i64) {
        if let Some(m) = self.lock().messages.get_mut(&id) {
            m.deleted = true;
        }
    }

    /// Messages still in the chat.
    pub fn live(&self) -> Vec<Msg> {
        self.lock()
            .messages
            .values()
            .filter(|m| !m.deleted)
            .cloned()
            .collect()
    }

    /// Live messages whose text starts with `prefix` (a work item's card).
    pub fn cards_of(&self, work_item: &str) -> Vec<Msg> {
        self.live()
            .into_iter()
            .filter(|m| m.text.starts_with(&format!("{work_item} ·")))
            .collect()
    }

    pub fn calls_of(&self, method: &str) -> Vec<Value> {
        self.lock()
            .calls
            .iter()
            .filter(|(m, _)| m == method)
            .map(|(_, b)| b.clone())
            .collect()
    }

    /// A user taps a button of message `message_id`; the update's id.
    pub fn tap(&self, user_id: i64, message_id: i64, data: &str) -> i64 {
        let mut s = self.lock();
        s.next_update += 1;
        let id = s.next_update;
        let update = json!({
            "update_id": id,
            "callback_query": {
                "id": format!("cb-{id}"),
                "from": {"id": user_id, "is_bot": false, "first_name": "Tester"},
                "message": {"message_id": message_id, "chat": {"id": CHAT.parse::<i64>().unwrap(), "type": "supergroup"}, "date": 1763641200},
                "chat_instance": "1",
                "data": data,
            }
        });
        s.updates.push(update);
        drop(s);
        self.wake.notify_waiters();
        id
    }

    /// Hand out an update again, whatever the confirmed offset (Telegram
    /// redelivers when it did not see the confirmation).
    pub fn redeliver(&self, update_id: i64) {
        let mut s = self.lock();
        let u = s
            .updates
            .iter()
            .find(|u| u["update_id"] == update_id)
            .cloned()
            .expect("a known update");
        s.forced.push(u);
        drop(s);
        self.wake.notify_waiters();
    }

    /// The answers to callback queries: (callback id, text).
    pub fn answers(&self) -> Vec<(String, String)> {
        self.calls_of("answerCallbackQuery")
            .iter()
            .map(|b| {
                (
                    b["callback_query_id"].as_str().unwrap_or("").to_string(),
                    b["text"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    fn answer(&self, method: &str, body: &Value) -> (u16, Value) {
        let mut s = self.lock();
        s.calls.push((method.to_string(), body.clone()));
        if let Some(i) = s.faults.iter().position(|(m, _, _)| m == method) {
            let (_, status, answer) = s.faults.remove(i).unwrap();
            return (status, answer);
        }
        match method {
            "sendMessage" => {
                s.next_id += 1;
                let id = s.next_id;
                let chat_id = body["chat_id"]
                    .as_str()
                    .map(String::from)
                    .unwrap_or_else(|| body["chat_id"].to_string());
                let text = body["text"].as_str().unwrap_or("").to_string();
                s.messages.insert(
                    id,
                    Msg {
                        id,
                        chat_id: chat_id.clone(),
                        text: text.clone(),
                        buttons: buttons_of(body),
                        silent: body["disable_notification"].as_bool().unwrap_or(false),
                        deleted: false,
                    },
                );
                (
                    200,
                    json!({"ok": true, "result": {"message_id": id, "date": 1763641200, "chat": {"id": chat_id, "type": "supergroup"}, "text": text}}),
                )
            }
            "editMessageText" => {
                let id = body["message_id"].as_i64().unwrap_or(0);
                let text = body["text"].as_str().unwrap_or("").to_string();
                let buttons = buttons_of(body);
                match s.messages.get_mut(&id).filter(|m| !m.deleted) {
                    None => err(400, "Bad Request: message to edit not found"),
                    Some(m) if m.text == text && m.buttons == buttons => err(
                        400,
                        "Bad Request: message is not modified: specified new message content and reply markup are exactly the same as a current content and reply markup of the message",
                    ),
                    Some(m) => {
                        m.text = text;
                        m.buttons = buttons;
                        (200, json!({"ok": true, "result": {"message_id": id}}))
                    }
                }
            }
            "deleteMessage" => {
                let id = body["message_id"].as_i64().unwrap_or(0);
                match s.messages.get_mut(&id).filter(|m| !m.deleted) {
                    None => err(400, "Bad Request: message to delete not found"),
                    Some(m) => {
                        m.deleted = true;
                        (200, json!({"ok": true, "result": true}))
                    }
                }
            }
            "answerCallbackQuery" => (200, json!({"ok": true, "result": true})),
            _ => err(404, "Not Found: method not found"),
        }
    }

    /// `getUpdates`: confirm `offset`, hand out what is at or past it (and
    /// any forced redelivery); with nothing to hand out, wait up to
    /// `timeout` seconds for a tap.
    async fn get_updates(&self, body: &Value) -> (u16, Value) {
        let offset = body["offset"].as_i64().unwrap_or(0);
        let timeout = body["timeout"].as_u64().unwrap_or(0).min(5);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        loop {
            let wake = self.wake.notified();
            {
                let mut s = self.lock();
                s.calls.push(("getUpdates".into(), body.clone()));
                if let Some((_, status, answer)) = s
                    .faults
                    .iter()
                    .position(|(m, _, _)| m == "getUpdates")
                    .and_then(|i| s.faults.remove(i))
                {
                    return (status, answer);
                }
                s.confirmed = s.confirmed.max(offset);
                let mut out: Vec<Value> = std::mem::take(&mut s.forced);
                out.extend(
                    s.updates
                        .iter()
                        .filter(|u| u["update_id"].as_i64().unwrap_or(0) >= offset)
                        .cloned(),
                );
                if !out.is_empty() || tokio::time::Instant::now() >= deadline {
                    return (200, json!({"ok": true, "result": out}));
                }
            }
            let _ = tokio::time::timeout_at(deadline, wake).await;
        }
    }
}

async fn handle(
    State(d): State<TelegramDouble>,
    Path((bot, method)): Path<(String, String)>,
    body: Option<Json<Value>>,
) -> Response {
    let body = body.map(|Json(v)| v).unwrap_or(Value::Null);
    let (status, answer) = if bot != format!("bot{TOKEN}") {
        d.lock().wrong_token_calls += 1;
        err(401, "Unauthorized")
    } else if method == "getUpdates" {
        d.get_updates(&body).await
    } else {
        d.answer(&method, &body)
    };
    (StatusCode::from_u16(status).unwrap(), Json(answer)).into_response()
}

impl TelegramDouble {
    /// The daemon's Telegram environment pointing at this double; taps act
    /// for `allowed` (comma-separated ids). Cards are compared often and the
    /// long poll is short, so tests see progress quickly.
    pub fn daemon_env(&self, allowed: &str) -> Vec<(String, String)> {
        [
            ("ORCH_TELEGRAM_API_URL", self.base_url()),
            ("ORCH_TELEGRAM_BOT_TOKEN", TOKEN.to_string()),
            ("ORCH_TELEGRAM_CHAT_ID", CHAT.to_string()),
            ("ORCH_TELEGRAM_ALLOWED_USERS", allowed.to_string()),
            ("ORCH_TELEGRAM_POLL_TIMEOUT_S", "1".to_string()),
            ("ORCH_TELEGRAM_CARD_INTERVAL_MS", "100".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// The callback_data of the button labelled `label` on the live card of
    /// `work_item`, with the card's message id.
    pub fn button(&self, work_item: &str, label: &str) -> Option<(i64, String)> {
        self.cards_of(work_item).into_iter().find_map(|m| {
            m.buttons
                .iter()
                .find(|(t, _)| t.contains(label))
                .map(|(_, d)| (m.id, d.clone()))
        })
    }
}

impl TelegramDouble {
    /// A user replies to message `to` with `text`; the update's id.
    pub fn reply(&self, user_id: i64, to: i64, text: &str) -> i64 {
        let mut s = self.lock();
        s.next_update += 1;
        let id = s.next_update;
        let chat = json!({"id": CHAT.parse::<i64>().unwrap(), "type": "supergroup"});
        s.updates.push(json!({
            "update_id": id,
            "message": {
                "message_id": 10_000 + id,
                "from": {"id": user_id, "is_bot": false, "first_name": "Tester"},
                "chat": chat,
                "date": 1763641300,
                "text": text,
                "reply_to_message": {"message_id": to, "chat": chat, "date": 1763641200, "text": "card"},
            }
        }));
        drop(s);
        self.wake.notify_waiters();
        id
    }
}
