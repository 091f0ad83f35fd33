//! Gitea webhooks (F-06): `X-Gitea-Event`, `X-Gitea-Delivery`,
//! `X-Gitea-Signature` (bare hex HMAC-SHA256 of the raw body; also sent as
//! `X-Hub-Signature-256: sha256=<hex>`, and Forgejo adds `X-Forgejo-*`
//! twins). A merge is `action: "closed"` with `pull_request.merged: true`.

use axum::http::HeaderMap;
use serde_json::Value;

use super::{Source, header, int_at, text_at};
use crate::config::Secret;
use crate::events::{Event, ParseError, Parsed, PrMerged};

/// The Gitea (and Forgejo) source of the intake.
pub struct Gitea;

impl Source for Gitea {
    const NAME: &'static str = "gitea";
    const KEPT_HEADERS: &'static [&'static str] = &[
        "x-gitea-event",
        "x-gitea-event-type",
        "x-gitea-delivery",
        "x-gitea-signature",
        "x-forgejo-event",
        "x-forgejo-delivery",
        "x-hub-signature-256",
        "user-agent",
        "content-type",
    ];
    const EVENT_HEADER: &'static str = "x-gitea-event";

    fn secret(settings: &crate::config::Settings) -> &Secret {
        &settings.gitea_webhook_secret
    }

    fn signature(headers: &HeaderMap) -> Option<String> {
        header(headers, "x-gitea-signature")
            .or_else(|| header(headers, "x-forgejo-signature"))
            .or_else(|| header(headers, "x-hub-signature-256"))
    }

    fn delivery_id(headers: &HeaderMap) -> Option<String> {
        header(headers, "x-gitea-delivery").or_else(|| header(headers, "x-forgejo-delivery"))
    }

    fn event_header(headers: &HeaderMap) -> Option<String> {
        header(headers, "x-gitea-event").or_else(|| header(headers, "x-forgejo-event"))
    }

    fn parse(event_header: Option<&str>, body: &[u8]) -> Result<Parsed, ParseError> {
        parse(event_header, body)
    }
}

/// Parse a signed Gitea body. Never panics.
pub fn parse(event_header: Option<&str>, body: &[u8]) -> Result<Parsed, ParseError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| ParseError::NotJson(e.to_string()))?;
    if !v.is_object() {
        return Err(ParseError::NotAnObject);
    }
    let event_name = event_header
        .map(str::trim)
        .unwrap_or_default()
        .to_ascii_lowercase();
    let parsed = |event: Event, key: Option<String>| Parsed {
        event,
        event_name: event_name.clone(),
        content_key: key,
    };
    match event_name.as_str() {
        "pull_request" => {}
        "" => return Ok(parsed(Event::ignored("delivery names no event"), None)),
        other => {
            return Ok(parsed(
                Event::ignored(format!("Gitea event {other:?} is not handled")),
                None,
            ));
        }
    }
    let action = text_at(&v, &["action"]).unwrap_or_default();
    let merged = v
        .get("pull_request")
        .and_then(|p| p.get("merged"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if action != "closed" || !merged {
        return Ok(parsed(
            Event::ignored(format!(
                "pull request {action:?}{}",
                if merged { "" } else { " (not merged)" }
            )),
            None,
        ));
    }
    let repo_full_name = text_at(&v, &["repository", "full_name"])
        .ok_or(ParseError::Missing("repository.full_name"))?;
    let number = int_at(&v, &["pull_request", "number"])
        .or_else(|| int_at(&v, &["number"]))
        .and_then(|n| u64::try_from(n).ok())
        .ok_or(ParseError::Missing("pull_request.number"))?;
    let head_ref = text_at(&v, &["pull_request", "head", "ref"])
        .ok_or(ParseError::Missing("pull_request.head.ref"))?;
    let merge_sha = text_at(&v, &["pull_request", "merge_commit_sha"]);
    let stamp = merge_sha
        .clone()
        .or_else(|| text_at(&v, &["pull_request", "merged_at"]))
        .unwrap_or_default();
    let key = format!("pr={repo_full_name}#{number}|merged|{stamp}");
    let pr = PrMerged {
        repo_full_name,
        number,
        head_ref,
        head_sha: text_at(&v, &["pull_request", "head", "sha"]),
        base_ref: text_at(&v, &["pull_request", "base", "ref"]),
        merge_sha,
        title: text_at(&v, &["pull_request", "title"]).unwrap_or_default(),
    };
    Ok(parsed(Event::PrMerged(pr), Some(key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MERGED: &str = include_str!("../../tests/fixtures/gitea/pull-request-merged.json");
    const PUSH: &str = include_str!("../../tests/fixtures/gitea/push.json");

    #[test]
    fn fixture_merge_is_understood() {
        let p = parse(Some("pull_request"), MERGED.as_bytes()).unwrap();
        let Event::PrMerged(pr) = &p.event else {
            panic!("{p:?}")
        };
        assert_eq!(pr.repo_full_name, "team/orchestrator");
        assert_eq!(pr.number, 130);
        assert_eq!(pr.head_ref, "orch-111");
        assert_eq!(pr.base_ref.as_deref(), Some("main"));
        assert_eq!(
            pr.merge_sha.as_deref(),
            Some("4f1c2a9be0d3c7a6b5e4f3a2c1b0a9f8e7d6c5b4")
        );
        assert!(
            p.content_key
                .unwrap()
                .starts_with("pr=team/orchestrator#130|merged|")
        );
    }

    #[test]
    fn push_closed_unmerged_and_headerless_are_ignored() {
        let p = parse(Some("push"), PUSH.as_bytes()).unwrap();
        assert!(matches!(p.event, Event::Ignored { .. }));
        let unmerged = MERGED.replace("\"merged\": true", "\"merged\": false");
        let p = parse(Some("pull_request"), unmerged.as_bytes()).unwrap();
        assert!(matches!(p.event, Event::Ignored { .. }), "{p:?}");
        let p = parse(None, MERGED.as_bytes()).unwrap();
        assert!(matches!(p.event, Event::Ignored { .. }));
    }

    #[test]
    fn a_merge_without_its_repository_is_malformed() {
        let broken = MERGED.replace("\"full_name\"", "\"fullname\"");
        assert_eq!(
            parse(Some("pull_request"), broken.as_bytes()),
            Err(ParseError::Missing("repository.full_name"))
        );
    }
}
