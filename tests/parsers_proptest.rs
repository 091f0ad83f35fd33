//! Fuzzing the parsers of untrusted text (issue 16) beyond the webhooks
//! (tests/intake_proptest.rs): the agents' verdict lines and the gates that
//! read them, the agents' usage output, and the configuration loader. Each
//! target runs 100,000 cases; none may panic, and each keeps its promise:
//! - a verdict line among prose is read as written (a PASS is never a FAIL);
//! - every gate answers for any artifacts;
//! - the usage parser never reports negative tokens or a non-finite cost;
//! - the config loader either loads or names the key it refuses, and never
//!   repeats a secret's value in an error or a warning.

use std::collections::BTreeMap;

use orchestrator::agents::usage;
use orchestrator::config::{EnvVars, Settings};
use orchestrator::domain::gates::{BRD, REVIEW, STAGING_REPORT, TEST_REPORT};
use orchestrator::domain::verdict::VerdictLines;
use orchestrator::domain::{GateInput, Stage};
use proptest::prelude::*;

const CASES: u32 = 100_000;

fn cfg(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        max_shrink_iters: 2000,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Lines an agent might write: prose with or without colons, decorated
/// verdict-looking lines, fences, junk.
fn line() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z ,.]{0,40}",
        "[a-z_]{1,12}: [A-Za-z0-9 ]{0,12}",
        "(- |\\*\\*|`|> )?(status|verdict|result|tests_run|staging_status|deploy_status)(\\*\\*|`)?: ?[A-Za-z0-9_.!'\"*` ]{0,12}",
        Just("```".to_string()),
        any::<String>(),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop::collection::vec(line(), 0..12).prop_map(|l| l.join("\n"))
}

/// Prose that cannot be a verdict line: no colon at all.
fn prose() -> impl Strategy<Value = String> {
    prop::collection::vec("[a-zA-Z ,.!?()#-]{0,50}", 0..8).prop_map(|l| l.join("\n"))
}

proptest! {
    #![proptest_config(cfg(CASES))]

    #[test]
    fn verdict_lines_never_panic_and_a_written_verdict_is_read_as_written(
        noise in text(),
        before in prose(),
        after in prose(),
        value in prop::sample::select(vec!["PASS", "FAIL", "APPROVE", "REJECT", "READY", "12"]),
        decoration in prop::sample::select(vec!["", "- ", "**", "`", "> "]),
        stage in prop::sample::select(Stage::ALL.to_vec()),
        which in 0usize..4,
    ) {
        // Anything at all: parse, read every key, judge every gate.
        let v = VerdictLines::parse(&noise);
        for key in orchestrator::domain::verdict::VERDICT_KEYS {
            let _ = v.get(key);
        }
        let name = [BRD, REVIEW, TEST_REPORT, STAGING_REPORT][which];
        let mut artifacts = BTreeMap::new();
        artifacts.insert(name.to_string(), noise.clone());
        artifacts.insert("06-adr/ADR-001-x.md".to_string(), noise);
        let input = GateInput { artifacts, approved: which % 2 == 0, ..GateInput::default() };
        if let Some(gate) = stage.spec().gate {
            let _ = gate.evaluate(&input);
        }
        // One verdict line among prose reads as written, whatever decorates it.
        let (open, close) = match decoration {
            "**" => ("**", "**"),
            "`" => ("`", "`"),
            d => (d, ""),
        };
        let doc = format!("{before}\n{open}verdict{close}: {}\n{after}", value.to_lowercase());
        let read = VerdictLines::parse(&doc);
        prop_assert_eq!(read.get("verdict"), Ok(value), "{}", doc);
    }
}

const CLAUDE_RESULT: &str = include_str!("fixtures/agents/claude-2.1.328.json");
const CLAUDE_STREAM: &str = include_str!("fixtures/agents/claude-2.1.328-stream.jsonl");
const CODEX: &str = include_str!("fixtures/agents/codex-0.171.0-exec.jsonl");

/// A real output with a byte range replaced, cut or repeated.
fn mutated_output() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec![CLAUDE_RESULT, CLAUDE_STREAM, CODEX]),
        any::<prop::sample::Index>(),
        any::<prop::sample::Index>(),
        prop_oneof![
            Just(String::new()),
            "[0-9\\-e.]{1,12}",
            "[\\]\\[{}\":,]{1,6}",
            any::<String>()
        ],
    )
        .prop_map(|(base, a, b, with)| {
            let bytes = base.as_bytes();
            let (x, y) = (a.index(bytes.len()), b.index(bytes.len()));
            let (lo, hi) = (x.min(y), x.max(y).min(x.min(y) + 64));
            let mut out = bytes[..lo].to_vec();
            out.extend_from_slice(with.as_bytes());
            out.extend_from_slice(&bytes[hi..]);
            String::from_utf8_lossy(&out).into_owned()
        })
}

proptest! {
    #![proptest_config(cfg(CASES))]

    #[test]
    fn usage_output_never_panics_and_never_counts_below_zero(out in prop_oneof![mutated_output(), text()]) {
        let prices = orchestrator::domain::prices::PriceTable::default();
        let parsed = usage::parse(&out, &prices);
        let row = parsed.usage.to_row();
        prop_assert!(row.input >= 0 && row.output >= 0, "{row:?}");
        prop_assert!(row.cache_read >= 0 && row.cache_creation >= 0, "{row:?}");
        prop_assert!(row.cost_usd.is_finite() && row.cost_usd >= 0.0, "{row:?}");
    }
}

/// The keys `.env.example` documents.
fn documented_keys() -> Vec<String> {
    include_str!("../.env.example")
        .lines()
        .map(|l| l.trim_start_matches(['#', ' ']))
        .filter_map(|l| l.split_once('='))
        .map(|(k, _)| k.trim().to_string())
        .filter(|k| {
            k.starts_with("ORCH_")
                && k.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        })
        .filter(|k| k != "ORCH_CONFIG")
        .collect()
}

/// Every secret the loader knows, from the loader itself.
const SECRETS: &[&str] = orchestrator::config::SECRET_ENV_KEYS;

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "-?[0-9]{1,25}",
        "[0-9]{1,4}\\.[0-9]{1,4}",
        prop::sample::select(vec![
            "true",
            "false",
            "yes",
            "off",
            "json",
            "text",
            "local",
            "plane",
            "0",
            "-1",
            "NaN",
            "inf",
            "1e999",
            "http://127.0.0.1:1",
            "127.0.0.1:0",
            "[]",
            "{}"
        ])
        .prop_map(String::from),
        "[ -~]{0,30}",
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(cfg(CASES))]

    #[test]
    fn the_config_loader_loads_or_names_the_key_and_never_shows_a_secret(
        picks in prop::collection::vec((any::<prop::sample::Index>(), value()), 1..6),
        secret in "[A-Za-z][A-Za-z0-9]{11,20}",
        secret_key in prop::sample::select(SECRETS.to_vec()),
    ) {
        let keys = documented_keys();
        let mut pairs: Vec<(String, String)> = picks
            .into_iter()
            .map(|(i, v)| (keys[i.index(keys.len())].clone(), v))
            .filter(|(k, _)| !SECRETS.contains(&k.as_str()))
            .collect();
        pairs.push((secret_key.to_string(), secret.clone()));
        // Never a real directory of this machine.
        pairs.push(("ORCH_WORKSPACE_ROOT".into(), "/nonexistent/orch-fuzz/ws".into()));
        pairs.push(("ORCH_DATABASE_URL".into(), "sqlite:///nonexistent/orch-fuzz/o.db".into()));
        let set: Vec<String> = pairs.iter().map(|(k, _)| k.clone()).collect();
        match Settings::load(&EnvVars::from_pairs(pairs)) {
            Ok((_, report)) => {
                for w in &report.warnings {
                    prop_assert!(!w.contains(&secret), "a warning shows the secret: {w}");
                }
            }
            Err(e) => {
                let text = e.to_string();
                prop_assert!(!text.contains(&secret), "the error shows the secret: {text}");
                prop_assert!(
                    set.iter().any(|k| text.contains(k.as_str())
                        || text.contains(&k["ORCH_".len()..].to_lowercase())),
                    "the error names none of the keys set ({set:?}): {text}"
                );
            }
        }
    }
}
