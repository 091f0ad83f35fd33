//! The CLI's client of a running daemon (B-4): plain HTTP with the admin
//! token. Every failure says what to fix: the daemon is not running at the
//! URL, the token is missing or wrong, or the daemon refused the input.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no orchestrator daemon answers at {url} ({detail}); start it with `orchestrator serve` or point --url / ORCH_URL at it"
    )]
    NotRunning { url: String, detail: String },
    #[error("the daemon at {url} refused the admin token: set ORCH_ADMIN_TOKEN to the daemon's")]
    Unauthorized { url: String },
    #[error("{message}")]
    NotFound { message: String },
    #[error("the daemon answered {status}: {message}")]
    Refused { status: u16, message: String },
    #[error("the daemon's answer is not JSON: {0}")]
    BadAnswer(String),
    #[error("{0} is not a valid daemon URL")]
    BadUrl(String),
}

/// A daemon at `base` (`http://127.0.0.1:8080`).
#[derive(Clone)]
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Client {
    pub fn new(base: &str, token: &str) -> Result<Client, ClientError> {
        let base = base.trim().trim_end_matches('/');
        let base = if base.contains("://") {
            base.to_string()
        } else {
            format!("http://{base}")
        };
        reqwest::Url::parse(&base).map_err(|_| ClientError::BadUrl(base.clone()))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| ClientError::BadUrl(format!("{base} ({e})")))?;
        Ok(Client {
            base,
            token: token.trim().to_string(),
            http,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url);
        if !self.token.is_empty() {
            req = req.bearer_auth(&self.token);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| ClientError::NotRunning {
            url: self.base.clone(),
            detail: e.to_string(),
        })?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| json!({ "error": text }));
        let message = || {
            v.get("error")
                .and_then(Value::as_str)
                .unwrap_or(text.as_str())
                .to_string()
        };
        match status {
            s if s.is_success() => Ok(v),
            StatusCode::UNAUTHORIZED => Err(ClientError::Unauthorized {
                url: self.base.clone(),
            }),
            StatusCode::NOT_FOUND => Err(ClientError::NotFound { message: message() }),
            s => Err(ClientError::Refused {
                status: s.as_u16(),
                message: message(),
            }),
        }
    }

    pub async fn queue(&self) -> Result<Value, ClientError> {
        self.call(Method::GET, "/queue", None).await
    }

    pub async fn task(&self, work_item: &str) -> Result<Value, ClientError> {
        self.call(Method::GET, &format!("/tasks/{}", seg(work_item)), None)
            .await
    }

    pub async fn release(&self, work_item: &str) -> Result<Value, ClientError> {
        let path = format!("/transition-lease/release?work_item={}", seg(work_item));
        self.call(Method::POST, &path, None).await
    }

    pub async fn item(&self, work_item: &str) -> Result<Value, ClientError> {
        self.call(Method::GET, &format!("/items/{}", seg(work_item)), None)
            .await
    }

    pub async fn item_new(
        &self,
        project: &str,
        title: &str,
        description: &str,
    ) -> Result<Value, ClientError> {
        let body = json!({ "project": project, "title": title, "description": description });
        self.call(Method::POST, "/items", Some(body)).await
    }

    pub async fn item_set(&self, work_item: &str, status: &str) -> Result<Value, ClientError> {
        let path = format!("/items/{}/status", seg(work_item));
        self.call(Method::POST, &path, Some(json!({ "status": status })))
            .await
    }

    pub async fn item_comment(&self, work_item: &str, text: &str) -> Result<Value, ClientError> {
        let path = format!("/items/{}/comments", seg(work_item));
        self.call(Method::POST, &path, Some(json!({ "text": text })))
            .await
    }
}

/// A path segment: a work item is `DEMO-12`; anything else is escaped.
fn seg(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
