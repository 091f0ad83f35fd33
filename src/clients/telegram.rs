//! The Telegram Bot API over reqwest (F-26, F-27, B-11; ADR 0009).
//!
//! Requests go to `<ORCH_TELEGRAM_API_URL>/bot<token>/<method>`. The token is
//! in every URL, so nothing that leaves this module carries a URL: a
//! transport error is reduced to its kind (`reqwest::Error::without_url`) and
//! every error text is passed through [`Bot::redact`] before it is returned.
//! Answers are classified the way the card logic needs them: "message is not
//! modified" and "message to edit not found" are their own variants, a 429
//! carries its `retry_after`.

use std::time::Duration;

use serde_json::{Value, json};

use crate::config::Secret;

/// Longest time one request may take besides a long poll's own timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TgError {
    /// `editMessageText` with the text and buttons the message already has.
    #[error("message is not modified")]
    NotModified,
    /// The message to edit or delete is gone (deleted by a person, too old).
    #[error("message not found")]
    MessageNotFound,
    /// 429: Telegram asks us to wait this long.
    #[error("too many requests, retry after {0:?}")]
    RetryAfter(Duration),
    /// Any other refusal; `description` is Telegram's, redacted.
    #[error("telegram answered {code}: {description}")]
    Api { code: i64, description: String },
    /// The request did not get an answer (connection, timeout, bad body).
    #[error("telegram unavailable: {0}")]
    Unavailable(String),
}

/// A sent message, as far as we need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub message_id: i64,
}

/// One inline button: its text and its `callback_data` (≤ 64 bytes).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Button {
    pub text: String,
    pub callback_data: String,
}

/// The Bot API client. Cheap to clone.
#[derive(Clone)]
pub struct Bot {
    http: reqwest::Client,
    base: String,
    token: Secret,
}

impl std::fmt::Debug for Bot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bot")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Bot {
    /// `api_url` is the server root (`https://api.telegram.org`).
    pub fn new(api_url: &str, token: Secret) -> Bot {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        Bot {
            http,
            base: api_url.trim_end_matches('/').to_string(),
            token,
        }
    }

    /// Remove the token from a text that may quote it (an echoed URL).
    pub fn redact(&self, text: &str) -> String {
        let t = self.token.expose();
        if t.is_empty() {
            text.to_string()
        } else {
            text.replace(t, "<token>")
        }
    }

    /// Call `method` with a JSON body; `Ok(result)` for `"ok": true`.
    /// `extra_wait` lengthens the timeout (a long poll).
    pub async fn call(
        &self,
        method: &str,
        body: &Value,
        extra_wait: Duration,
    ) -> Result<Value, TgError> {
        let url = format!("{}/bot{}/{method}", self.base, self.token.expose());
        let resp = self
            .http
            .post(url)
            .timeout(REQUEST_TIMEOUT + extra_wait)
            .json(body)
            .send()
            .await
            .map_err(|e| TgError::Unavailable(self.redact(&e.without_url().to_string())))?;
        let status = resp.status().as_u16();
        let answer: Value = resp.json().await.map_err(|e| {
            TgError::Unavailable(self.redact(&format!(
                "{method}: HTTP {status}, unreadable answer: {}",
                e.without_url()
            )))
        })?;
        classify(&answer, status).map_err(|e| match e {
            TgError::Api { code, description } => TgError::Api {
                code,
                description: self.redact(&description),
            },
            other => other,
        })
    }

    pub async fn send_message(
        &self,
        chat_id: &str,
        text: &str,
        buttons: &[Button],
        silent: bool,
    ) -> Result<Sent, TgError> {
        let mut body = json!({
            "chat_id": chat_id,
            "text": text,
            "disable_notification": silent,
            "link_preview_options": {"is_disabled": true},
        });
        body["reply_markup"] = keyboard(buttons);
        let r = self.call("sendMessage", &body, Duration::ZERO).await?;
        message_id(&r)
    }

    pub async fn edit_message(
        &self,
        chat_id: &str,
        message_id: i64,
        text: &str,
        buttons: &[Button],
    ) -> Result<(), TgError> {
        let mut body = json!({
            "chat_id": chat_id,
            "message_id": message_id,
            "text": text,
            "link_preview_options": {"is_disabled": true},
        });
        body["reply_markup"] = keyboard(buttons);
        self.call("editMessageText", &body, Duration::ZERO)
            .await
            .map(|_| ())
    }

    pub async fn delete_message(&self, chat_id: &str, message_id: i64) -> Result<(), TgError> {
        let body = json!({"chat_id": chat_id, "message_id": message_id});
        self.call("deleteMessage", &body, Duration::ZERO)
            .await
            .map(|_| ())
    }

    pub async fn answer_callback(&self, callback_id: &str, text: &str) -> Result<(), TgError> {
        let body = json!({"callback_query_id": callback_id, "text": text});
        self.call("answerCallbackQuery", &body, Duration::ZERO)
            .await
            .map(|_| ())
    }

    /// Long poll: updates from `offset` on, waiting up to `timeout`.
    pub async fn get_updates(&self, offset: i64, timeout: Duration) -> Result<Vec<Value>, TgError> {
        let body = json!({
            "offset": offset,
            "timeout": timeout.as_secs(),
            "allowed_updates": ["callback_query", "message"],
        });
        match self.call("getUpdates", &body, timeout).await? {
            Value::Array(v) => Ok(v),
            other => Err(TgError::Unavailable(format!(
                "getUpdates: result is not a list: {}",
                kind_of(&other)
            ))),
        }
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// An inline keyboard with one button per row; an empty list removes it.
fn keyboard(buttons: &[Button]) -> Value {
    let rows: Vec<Value> = buttons.iter().map(|b| json!([b])).collect();
    json!({ "inline_keyboard": rows })
}

fn message_id(result: &Value) -> Result<Sent, TgError> {
    result["message_id"]
        .as_i64()
        .map(|message_id| Sent { message_id })
        .ok_or_else(|| TgError::Unavailable("sendMessage: no message_id in the answer".into()))
}

/// Classify a Bot API answer (pure, for tests): the `result` of an ok
/// answer, or the error the card logic acts on.
pub fn classify(answer: &Value, http_status: u16) -> Result<Value, TgError> {
    if answer["ok"].as_bool() == Some(true) {
        return Ok(answer["result"].clone());
    }
    let code = answer["error_code"]
        .as_i64()
        .unwrap_or(i64::from(http_status));
    let description = answer["description"].as_str().unwrap_or("").to_string();
    if code == 429 {
        let secs = answer["parameters"]["retry_after"].as_u64().unwrap_or(1);
        return Err(TgError::RetryAfter(Duration::from_secs(secs)));
    }
    let lower = description.to_ascii_lowercase();
    if lower.contains("message is not modified") {
        return Err(TgError::NotModified);
    }
    if lower.contains("message to edit not found") || lower.contains("message to delete not found")
    {
        return Err(TgError::MessageNotFound);
    }
    Err(TgError::Api { code, description })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Value {
        let p = format!(
            "{}/tests/fixtures/telegram/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    }

    #[test]
    fn answers_are_classified_like_the_wire_formats() {
        let ok = classify(&fixture("send-message-ok.json"), 200).unwrap();
        assert_eq!(message_id(&ok).unwrap().message_id, 5121);
        assert_eq!(
            classify(&fixture("edit-not-modified.json"), 400),
            Err(TgError::NotModified)
        );
        assert_eq!(
            classify(&fixture("too-many-requests.json"), 429),
            Err(TgError::RetryAfter(Duration::from_secs(3)))
        );
        let gone = json!({"ok": false, "error_code": 400, "description": "Bad Request: message to edit not found"});
        assert_eq!(classify(&gone, 400), Err(TgError::MessageNotFound));
        let other =
            json!({"ok": false, "error_code": 403, "description": "Forbidden: bot was kicked"});
        assert!(matches!(
            classify(&other, 403),
            Err(TgError::Api { code: 403, .. })
        ));
    }

    #[tokio::test]
    async fn the_token_never_leaves_in_an_error() {
        // Nothing listens on port 9 of loopback: a transport error.
        let bot = Bot::new("http://127.0.0.1:9", Secret::new("123456:SECRET-TOKEN"));
        let e = bot.send_message("1", "x", &[], true).await.unwrap_err();
        let shown = format!("{e} {e:?} {bot:?}");
        assert!(!shown.contains("SECRET-TOKEN"), "{shown}");
        assert_eq!(bot.redact("a 123456:SECRET-TOKEN b"), "a <token> b");
    }
}
