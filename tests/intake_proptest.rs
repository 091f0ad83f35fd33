//! The webhook parsers and the signature check never panic, whatever the
//! bytes (F-01, F-06: never a 5xx for what a client sent). 115,000 cases in
//! all: raw bytes, arbitrary JSON, and mutated real deliveries that reach
//! deep into the parsers. Seeds are printed by proptest on failure.

use orchestrator::events::{Event, ParseError};
use orchestrator::intake::{gitea, plane, sign, verify_signature};
use proptest::prelude::*;
use serde_json::{Value, json};

const PLANE_STATE: &str = include_str!("fixtures/plane/issue-state-changed.json");
const PLANE_COMMENT: &str = include_str!("fixtures/plane/issue-comment-created.json");
const GITEA_MERGED: &str = include_str!("fixtures/gitea/pull-request-merged.json");
const GITEA_PUSH: &str = include_str!("fixtures/gitea/push.json");

fn cfg(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Shrinking is only for failures; keep a failing run short too.
        max_shrink_iters: 2000,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn events() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("issue".to_string())),
        Just(Some("issue_comment".to_string())),
        Just(Some("pull_request".to_string())),
        Just(Some("push".to_string())),
        ".{0,12}".prop_map(Some),
    ]
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    json_value_sized(4, 48)
}

fn json_value_sized(depth: u32, size: u32) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,16}".prop_map(Value::String),
        // Values the parsers look for.
        prop::sample::select(vec![
            "state_id",
            "state",
            "updated",
            "update",
            "created",
            "closed",
            "issue",
            "v2",
            "5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9",
        ])
        .prop_map(|s| Value::String(s.to_string())),
    ];
    leaf.prop_recursive(depth, size, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "event",
            "action",
            "data",
            "activity",
            "field",
            "new_value",
            "old_value",
            "new_identifier",
            "actor",
            "id",
            "project",
            "state",
            "name",
            "sequence_id",
            "updated_at",
            "version",
            "event_id",
            "pull_request",
            "merged",
            "number",
            "head",
            "ref",
            "repository",
            "full_name",
            "merge_commit_sha",
            "issue",
        ])
        .prop_map(str::to_string),
        "[a-z_]{0,8}",
    ]
}

/// A real delivery with one field replaced by anything.
fn mutated(fixture: &'static str) -> impl Strategy<Value = Vec<u8>> {
    let base: Value = serde_json::from_str(fixture).expect("fixture");
    (
        prop::collection::vec(key(), 1..4),
        json_value_sized(2, 12),
        any::<bool>(),
    )
        .prop_map(move |(path, val, drop)| {
            let mut v = base.clone();
            let mut cur = &mut v;
            for (i, k) in path.iter().enumerate() {
                let Some(obj) = cur.as_object_mut() else {
                    break;
                };
                if i + 1 == path.len() {
                    if drop {
                        obj.remove(k);
                    } else {
                        obj.insert(k.clone(), val.clone());
                    }
                    break;
                }
                cur = obj.entry(k.clone()).or_insert_with(|| json!({}));
            }
            serde_json::to_vec(&v).unwrap()
        })
}

fn check(res: Result<orchestrator::events::Parsed, ParseError>) {
    // Whatever comes back is a value, not a panic; a parsed event is one
    // the pipeline can be handed.
    if let Ok(p) = res {
        let _ = p.event.settled_outcome();
        if let Event::PlaneState(c) = &p.event {
            assert!(!c.issue_id.is_empty() && !c.project_id.is_empty());
        }
    }
}

proptest! {
    #![proptest_config(cfg(40_000))]
    #[test]
    fn parsers_survive_arbitrary_bytes(event in events(), body in prop::collection::vec(any::<u8>(), 0..256)) {
        check(plane::parse(event.as_deref(), &body));
        check(gitea::parse(event.as_deref(), &body));
        let sig = String::from_utf8_lossy(&body[..body.len().min(70)]).into_owned();
        prop_assert!(!verify_signature(b"secret", &body, &sig) || sig == sign(b"secret", &body));
    }
}

proptest! {
    #![proptest_config(cfg(30_000))]
    #[test]
    fn parsers_survive_arbitrary_json(event in events(), v in json_value()) {
        let body = serde_json::to_vec(&v).unwrap();
        check(plane::parse(event.as_deref(), &body));
        check(gitea::parse(event.as_deref(), &body));
    }
}

/// One real delivery, mutated, with the parser it belongs to.
fn any_mutated() -> impl Strategy<Value = (u8, Vec<u8>)> {
    prop_oneof![
        mutated(PLANE_STATE).prop_map(|b| (0, b)),
        mutated(PLANE_COMMENT).prop_map(|b| (1, b)),
        mutated(GITEA_MERGED).prop_map(|b| (2, b)),
        mutated(GITEA_PUSH).prop_map(|b| (3, b)),
    ]
}

proptest! {
    #![proptest_config(cfg(45_000))]
    #[test]
    fn parsers_survive_mutated_real_deliveries((which, body) in any_mutated()) {
        match which {
            0 => check(plane::parse(Some("issue"), &body)),
            1 => check(plane::parse(Some("issue_comment"), &body)),
            2 => check(gitea::parse(Some("pull_request"), &body)),
            _ => check(gitea::parse(Some("push"), &body)),
        }
    }
}

#[test]
fn a_right_signature_verifies_and_any_flipped_bit_does_not() {
    let body = br#"{"event":"issue"}"#;
    let sig = sign(b"k", body);
    assert!(verify_signature(b"k", body, &sig));
    let mut bytes = hex::decode(&sig).unwrap();
    for i in 0..bytes.len() * 8 {
        bytes[i / 8] ^= 1 << (i % 8);
        assert!(!verify_signature(b"k", body, &hex::encode(&bytes)));
        bytes[i / 8] ^= 1 << (i % 8);
    }
}
