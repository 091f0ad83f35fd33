//! The Plane double's sending side: webhooks the way Plane sends them,
//! signed with the webhook secret (HMAC-SHA256 of the raw body, hex, in
//! `X-Plane-Signature`), one delivery per changed field, a retry with a new
//! `X-Plane-Delivery` id.
#![allow(dead_code)]

use serde_json::{Value, json};

use super::plane_double::{BOT_ID, Comment, HUMAN_ID, Item, PlaneDouble, PlaneState, Sent, Shared};

impl PlaneDouble {
    /// A person adds a comment in the UI (and Plane sends `issue_comment`).
    pub async fn human_comment(&self, item: &str, html: &str) -> u16 {
        let body = {
            let mut s = self.lock();
            let created_at = s.now();
            let c = Comment {
                id: uuid::Uuid::new_v4().to_string(),
                html: html.into(),
                created_at: created_at.clone(),
                created_by: HUMAN_ID.into(),
                external_source: None,
                external_id: None,
            };
            s.comments.entry(item.into()).or_default().push(c.clone());
            let project = s.items[item].project.clone();
            json!({
                "event": "issue_comment", "action": "created",
                "webhook_id": "6d1f5c1e-2b7a-4c1e-9a51-0b9a3c2f7e10",
                "workspace_id": "0f3b6c0a-5d4e-4b8f-8f62-2a3c1d9e4b71",
                "data": {"id": c.id, "issue": item, "project": project,
                         "comment_html": html, "created_at": created_at},
                "activity": {"field": null, "old_value": null, "new_value": null,
                             "actor": {"id": HUMAN_ID, "display_name": "slava", "is_bot": false}}
            })
        };
        self.deliver("issue_comment", &body).await
    }

    /// A person moves a work item in the web UI: field `state_id`.
    pub async fn human_set_state(&self, item: &str, state_name: &str) -> u16 {
        self.change_state(item, state_name, HUMAN_ID, "state_id")
            .await
    }

    /// A state change made through the API by `actor` (field `state`).
    pub async fn api_set_state(&self, item: &str, state_name: &str, actor: &str) -> u16 {
        self.change_state(item, state_name, actor, "state").await
    }

    /// A person changes the state and the priority in one save: Plane sends
    /// one delivery per changed field. Returns both answers.
    pub async fn human_set_state_and_priority(&self, item: &str, state_name: &str) -> (u16, u16) {
        let a = self.human_set_state(item, state_name).await;
        let b = self.human_set_field(item, "priority", "urgent").await;
        (a, b)
    }

    async fn change_state(&self, item: &str, state_name: &str, actor: &str, field: &str) -> u16 {
        let body = {
            let mut s = self.lock();
            let project = s.items[item].project.clone();
            let new = s.state_id(&project, state_name).expect("state exists");
            let updated_at = s.now();
            let it = s.items.get_mut(item).unwrap();
            let old = std::mem::replace(&mut it.state, new.clone());
            it.updated_at = updated_at;
            let it = it.clone();
            issue_body(&s, &it, field, json!(old), json!(new), actor)
        };
        self.deliver("issue", &body).await
    }

    /// A change of another field (one delivery of its own).
    pub async fn human_set_field(&self, item: &str, field: &str, value: &str) -> u16 {
        let body = {
            let mut s = self.lock();
            let updated_at = s.now();
            let it = s.items.get_mut(item).unwrap();
            it.updated_at = updated_at;
            let it = it.clone();
            issue_body(&s, &it, field, Value::Null, json!(value), HUMAN_ID)
        };
        self.deliver("issue", &body).await
    }

    /// Send a body signed with the configured secret, as Plane does.
    pub async fn deliver(&self, event: &str, body: &Value) -> u16 {
        let bytes = serde_json::to_vec(body).unwrap();
        let id = uuid::Uuid::new_v4().to_string();
        self.deliver_raw(event, &bytes, &id, None).await.0
    }

    /// Plane's retry of the `n`-th sent delivery: same body, NEW delivery id.
    pub async fn retry_sent(&self, n: usize) -> u16 {
        let s = self.sent()[n].clone();
        let id = uuid::Uuid::new_v4().to_string();
        self.deliver_raw(&s.event, &s.body, &id, None).await.0
    }

    /// An exact resend of the `n`-th delivery (same id).
    pub async fn resend_sent(&self, n: usize) -> u16 {
        let s = self.sent()[n].clone();
        self.deliver_raw(&s.event, &s.body, &s.delivery_id, None)
            .await
            .0
    }

    /// Post `body` to the webhook URL; `signature` overrides the computed
    /// one (`Some("")` sends none). Returns the answer's status and body.
    pub async fn deliver_raw(
        &self,
        event: &str,
        body: &[u8],
        delivery_id: &str,
        signature: Option<&str>,
    ) -> (u16, Value) {
        send_signed(&self.state, &self.http, event, body, delivery_id, signature).await
    }
}

/// Sign (unless `signature` overrides) and post one delivery to the webhook
/// URL, recording it in `sent`.
pub async fn send_signed(
    st: &Shared,
    http: &reqwest::Client,
    event: &str,
    body: &[u8],
    delivery_id: &str,
    signature: Option<&str>,
) -> (u16, Value) {
    {
        let (url, secret) = st
            .lock()
            .unwrap()
            .webhook
            .clone()
            .expect("webhook configured");
        let sig = match signature {
            Some(s) => s.to_string(),
            None => orchestrator::intake::sign(secret.as_bytes(), body),
        };
        let mut req = http
            .post(&url)
            .header("X-Plane-Event", event)
            .header("X-Plane-Delivery", delivery_id)
            .header("User-Agent", "Autopilot")
            .header("Content-Type", "application/json")
            .body(body.to_vec());
        if !sig.is_empty() {
            req = req.header("X-Plane-Signature", sig);
        }
        // A daemon that is down (a restart) is what Plane meets sometimes:
        // the delivery fails (0) and Plane does not retry it.
        let Ok(resp) = req.send().await else {
            return (0, Value::Null);
        };
        let status = resp.status().as_u16();
        let v = resp.json().await.unwrap_or(Value::Null);
        st.lock().unwrap().sent.push(Sent {
            delivery_id: delivery_id.into(),
            event: event.into(),
            body: body.to_vec(),
            status,
        });
        (status, v)
    }
}

/// An `issue` / `updated` body in the fixture's shape.
pub fn issue_body(
    s: &PlaneState,
    it: &Item,
    field: &str,
    old: Value,
    new: Value,
    actor: &str,
) -> Value {
    let (name, group) = s.state_name(&it.project, &it.state).unwrap_or_default();
    let bot = actor == BOT_ID;
    json!({
        "event": "issue", "action": "updated",
        "webhook_id": "6d1f5c1e-2b7a-4c1e-9a51-0b9a3c2f7e10",
        "workspace_id": "0f3b6c0a-5d4e-4b8f-8f62-2a3c1d9e4b71",
        "data": {
            "id": it.id, "name": it.name, "description_html": "<p>Do the thing.</p>",
            "sequence_id": it.sequence_id, "project": it.project,
            "workspace": "0f3b6c0a-5d4e-4b8f-8f62-2a3c1d9e4b71", "priority": "high",
            "state": {"id": it.state, "name": name, "color": "#3f76ff", "group": group},
            "labels": [], "assignees": [],
            "created_at": "2026-11-20T09:12:44.118Z", "updated_at": it.updated_at
        },
        "activity": {
            "field": field, "old_value": old, "new_value": new,
            "actor": {"id": actor, "display_name": if bot {"orchestrator"} else {"slava"}, "is_bot": bot},
            "old_identifier": null, "new_identifier": null
        }
    })
}
