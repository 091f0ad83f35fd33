//! Plane webhooks (F-01), format v1: `X-Plane-Event`, `X-Plane-Delivery`
//! (new on every retry), `X-Plane-Signature` (hex HMAC-SHA256 of the raw
//! body). One delivery per changed field; `activity.field` is `state_id` from
//! the web UI and `state` from the API; `action` is `updated` or `update`.

use axum::http::HeaderMap;
use serde_json::Value;

use super::{Source, header, int_at, text_at};
use crate::config::Secret;
use crate::events::{Event, ParseError, Parsed, PlaneStateChange, StateRef};

/// The Plane source of the intake.
pub struct Plane;

impl Source for Plane {
    const NAME: &'static str = "plane";
    const KEPT_HEADERS: &'static [&'static str] = &[
        "x-plane-event",
        "x-plane-delivery",
        "x-plane-signature",
        "user-agent",
        "content-type",
    ];
    const EVENT_HEADER: &'static str = "x-plane-event";

    fn secret(settings: &crate::config::Settings) -> &Secret {
        &settings.plane_webhook_secret
    }

    fn signature(headers: &HeaderMap) -> Option<String> {
        header(headers, "x-plane-signature")
    }

    fn delivery_id(headers: &HeaderMap) -> Option<String> {
        header(headers, "x-plane-delivery")
    }

    fn parse(event_header: Option<&str>, body: &[u8]) -> Result<Parsed, ParseError> {
        parse(event_header, body)
    }
}

/// Parse a signed Plane body. Never panics; a body that is not a JSON object
/// is an error (400), an event we do not act on is `Event::Ignored`.
pub fn parse(event_header: Option<&str>, body: &[u8]) -> Result<Parsed, ParseError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| ParseError::NotJson(e.to_string()))?;
    if !v.is_object() {
        return Err(ParseError::NotAnObject);
    }
    let event_name = event_header
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_string)
        .or_else(|| text_at(&v, &["event"]))
        .unwrap_or_default()
        .to_ascii_lowercase();
    let ignored = |reason: String, key: Option<String>| Parsed {
        event: Event::ignored(reason),
        event_name: event_name.clone(),
        content_key: key,
    };
    // The hosted product's v2 format has another shape; we say so instead of
    // misreading it. Its `event_id` is stable across retries.
    if text_at(&v, &["version"]).is_some_and(|x| x.eq_ignore_ascii_case("v2")) {
        let key = text_at(&v, &["event_id"]).map(|id| format!("v2:{id}"));
        return Ok(ignored(
            "Plane webhook format v2 is not handled; configure the v1 format".into(),
            key,
        ));
    }
    match event_name.as_str() {
        "issue" => issue(&v, &event_name),
        "issue_comment" => Ok(comment(&v, &event_name)),
        "" => Ok(ignored("delivery names no event".into(), None)),
        other => Ok(ignored(
            format!("Plane event {other:?} is not handled"),
            None,
        )),
    }
}

fn issue(v: &Value, event_name: &str) -> Result<Parsed, ParseError> {
    let action = text_at(v, &["action"])
        .unwrap_or_default()
        .to_ascii_lowercase();
    let issue_id = text_at(v, &["data", "id"]);
    let parsed = |event: Event, key: Option<String>| Parsed {
        event,
        event_name: event_name.to_string(),
        content_key: key,
    };
    let (field, at) = match action.as_str() {
        "updated" | "update" => (
            text_at(v, &["activity", "field"]).unwrap_or_default(),
            text_at(v, &["data", "updated_at"]),
        ),
        // A work item created straight into a status counts as set to it.
        "created" | "create" => ("created".to_string(), text_at(v, &["data", "created_at"])),
        other => {
            let key = issue_id.map(|i| format!("issue={i}|action={other}"));
            return Ok(parsed(
                Event::ignored(format!("work item {other:?} is not handled")),
                key,
            ));
        }
    };
    let is_state = matches!(field.as_str(), "state_id" | "state" | "created");
    let raw_new = text_at(v, &["activity", "new_identifier"])
        .or_else(|| text_at(v, &["activity", "new_value"]));
    let content_key = |raw: &Option<String>| -> Option<String> {
        let (issue, at) = (issue_id.as_ref()?, at.as_ref()?);
        Some(format!(
            "issue={issue}|field={field}|new={}|at={at}",
            raw.as_deref().unwrap_or("")
        ))
    };
    if !is_state {
        return Ok(parsed(
            Event::ignored(format!("work item field {field:?} changed")),
            content_key(&raw_new),
        ));
    }
    let issue_id = issue_id.clone().ok_or(ParseError::Missing("data.id"))?;
    let project_id = text_at(v, &["data", "project"])
        .or_else(|| text_at(v, &["data", "project_id"]))
        .ok_or(ParseError::Missing("data.project"))?;

    // The issue snapshot's state: an object {id, name} or a bare id.
    let data_state = match v.get("data").and_then(|d| d.get("state")) {
        Some(Value::Object(_)) => StateRef {
            id: text_at(v, &["data", "state", "id"]),
            name: text_at(v, &["data", "state", "name"]),
        },
        Some(_) => StateRef {
            id: text_at(v, &["data", "state"]),
            name: None,
        },
        None => StateRef {
            id: text_at(v, &["data", "state_id"]),
            name: None,
        },
    };
    let mut new_state = if field == "created" {
        data_state.clone()
    } else {
        state_ref(v, "new_value", "new_identifier")
    };
    // The snapshot names the state when it is the one the activity set.
    if new_state.name.is_none() && new_state.id.is_some() && new_state.id == data_state.id {
        new_state.name = data_state.name.clone();
    }
    if new_state.is_empty() {
        return Ok(parsed(
            Event::ignored("state change without a new state"),
            content_key(&raw_new),
        ));
    }
    let old_state = if field == "created" {
        StateRef::default()
    } else {
        state_ref(v, "old_value", "old_identifier")
    };
    let raw = new_state.id.clone().or_else(|| new_state.name.clone());
    let change = PlaneStateChange {
        project_id,
        issue_id,
        sequence_id: int_at(v, &["data", "sequence_id"]),
        title: text_at(v, &["data", "name"]).unwrap_or_default(),
        description_html: text_at(v, &["data", "description_html"]).unwrap_or_default(),
        field: field.clone(),
        new_state,
        old_state,
        actor_id: actor_id(v),
    };
    Ok(parsed(Event::PlaneState(change), content_key(&raw)))
}

/// `activity.<value>` / `activity.<identifier>`: with an identifier the
/// value is the name (API activity); otherwise the value is an id when it
/// looks like one, else a name.
fn state_ref(v: &Value, value: &str, identifier: &str) -> StateRef {
    let val = text_at(v, &["activity", value]);
    match text_at(v, &["activity", identifier]) {
        Some(id) => StateRef {
            name: val.filter(|n| *n != id && !looks_like_id(n)),
            id: Some(id),
        },
        None => match val {
            Some(x) if looks_like_id(&x) => StateRef {
                id: Some(x),
                name: None,
            },
            Some(x) => StateRef {
                id: None,
                name: Some(x),
            },
            None => StateRef::default(),
        },
    }
}

fn looks_like_id(s: &str) -> bool {
    uuid::Uuid::parse_str(s.trim()).is_ok()
}

/// `activity.actor` is an object with `id` (v1) or a bare id (older releases).
fn actor_id(v: &Value) -> Option<String> {
    match v.get("activity").and_then(|a| a.get("actor")) {
        Some(Value::Object(_)) => text_at(v, &["activity", "actor", "id"]),
        Some(_) => text_at(v, &["activity", "actor"]),
        None => None,
    }
}

fn comment(v: &Value, event_name: &str) -> Parsed {
    let issue_id = text_at(v, &["data", "issue"]).unwrap_or_default();
    let action = text_at(v, &["action"]).unwrap_or_default();
    let at = text_at(v, &["data", "updated_at"]).or_else(|| text_at(v, &["data", "created_at"]));
    let key = match (text_at(v, &["data", "id"]), at) {
        (Some(id), Some(at)) => Some(format!("comment={id}|action={action}|at={at}")),
        _ => None,
    };
    Parsed {
        event: Event::PlaneComment { issue_id },
        event_name: event_name.to_string(),
        content_key: key,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATE: &str = include_str!("../../tests/fixtures/plane/issue-state-changed.json");
    const COMMENT: &str = include_str!("../../tests/fixtures/plane/issue-comment-created.json");

    #[test]
    fn fixture_state_change_is_understood() {
        let p = parse(Some("issue"), STATE.as_bytes()).unwrap();
        let Event::PlaneState(c) = &p.event else {
            panic!("{p:?}")
        };
        assert_eq!(c.issue_id, "9b2e4d6a-7c1f-4e3b-a5d8-1f0c2b3a4e56");
        assert_eq!(c.project_id, "c1d2e3f4-a5b6-4c7d-8e9f-0a1b2c3d4e5f");
        assert_eq!(c.sequence_id, Some(90));
        assert_eq!(c.field, "state_id");
        assert_eq!(
            c.new_state.id.as_deref(),
            Some("5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9")
        );
        assert_eq!(c.new_state.name.as_deref(), Some("To Analyse"));
        assert_eq!(
            c.old_state.id.as_deref(),
            Some("1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d")
        );
        assert_eq!(
            c.actor_id.as_deref(),
            Some("77c1e0d2-3b4a-4f5e-8d6c-9b0a1f2e3d4c")
        );
        let key = p.content_key.unwrap();
        assert!(key.contains("at=2026-11-20T09:15:02.407Z"), "{key}");
    }

    #[test]
    fn api_activity_with_identifiers_and_old_action_name() {
        let body = STATE
            .replace("\"state_id\"", "\"state\"")
            .replace("\"updated\"", "\"update\"")
            .replace(
                "\"new_identifier\": null",
                "\"new_identifier\": \"5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9\"",
            )
            .replace(
                "\"new_value\": \"5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9\"",
                "\"new_value\": \"To Analyse\"",
            );
        let p = parse(None, body.as_bytes()).unwrap();
        let Event::PlaneState(c) = &p.event else {
            panic!("{p:?}")
        };
        assert_eq!(c.field, "state");
        assert_eq!(c.new_state.name.as_deref(), Some("To Analyse"));
        assert!(c.new_state.id.is_some());
    }

    #[test]
    fn comments_other_fields_and_other_events_are_settled() {
        let p = parse(Some("issue_comment"), COMMENT.as_bytes()).unwrap();
        assert!(p.event.settled_outcome().is_some());
        assert!(p.content_key.is_some());
        let prio = STATE.replace("\"state_id\"", "\"priority\"");
        let p = parse(Some("issue"), prio.as_bytes()).unwrap();
        assert!(matches!(p.event, Event::Ignored { .. }), "{p:?}");
        let p = parse(Some("cycle"), b"{}").unwrap();
        assert!(matches!(p.event, Event::Ignored { .. }));
        let p = parse(Some("issue"), br#"{"version":"v2","event_id":"e1"}"#).unwrap();
        assert_eq!(p.content_key.as_deref(), Some("v2:e1"));
    }

    #[test]
    fn malformed_bodies_are_errors() {
        assert!(matches!(
            parse(Some("issue"), b"{not json"),
            Err(ParseError::NotJson(_))
        ));
        assert_eq!(parse(Some("issue"), b"[1]"), Err(ParseError::NotAnObject));
        let no_project = STATE.replace("\"project\":", "\"projekt\":");
        assert_eq!(
            parse(Some("issue"), no_project.as_bytes()),
            Err(ParseError::Missing("data.project"))
        );
    }
}
