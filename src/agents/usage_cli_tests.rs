//! Usage read from what the pinned CLIs really print (B-14, F-14): Claude
//! Code 2.1.328 `--output-format stream-json --verbose` and `json`, Codex
//! 0.171.0 `exec --json`. Captured by `tests/agent_clis.rs`
//! (`CAPTURE_FIXTURES=<dir>`) from the CLIs talking to the loopback model
//! doubles, whose scripted usage per turn is in `tests/support/model_api.rs`:
//! Claude two turns (11 + 7 input, 3,400 + 4,600 cache read, 1,200 + 300
//! cache creation, 57 + 23 output), Codex two turns (1,500 + 1,700 input of
//! which 1,000 + 1,400 cached, 40 + 12 output).

use super::*;

const STREAM: &str = include_str!("../../tests/fixtures/agents/claude-2.1.328-stream.jsonl");
const JSON: &str = include_str!("../../tests/fixtures/agents/claude-2.1.328.json");
const CODEX: &str = include_str!("../../tests/fixtures/agents/codex-0.171.0-exec.jsonl");

fn toks(u: &Usage) -> (u64, u64, u64, u64) {
    (
        u.input_tokens,
        u.output_tokens,
        u.cache_read_tokens,
        u.cache_creation_tokens,
    )
}

#[test]
fn claude_2_stream_json_sums_the_turns_and_keeps_the_clis_cost() {
    let r = parse(STREAM, &PriceTable::default());
    assert_eq!(r.warning, None);
    assert_eq!(r.usage.format, UsageFormat::ClaudeStreamJson);
    assert_eq!(toks(&r.usage), (18, 80, 8_000, 1_500));
    // total_cost_usd as printed (0.009278999999999999), not re-priced.
    assert_eq!(r.usage.cost_usd, 0.009278999999999999);
    assert!(!r.usage.is_error);
    // The assistant lines carry message_start's usage only (output 1 per
    // message): before the result line the running cost undercounts output.
    let before_result: String = STREAM
        .lines()
        .filter(|l| !l.contains("\"type\":\"result\""))
        .collect::<Vec<_>>()
        .join("\n");
    let partial = parse(&before_result, &PriceTable::default()).usage;
    assert_eq!(toks(&partial), (18, 2, 8_000, 1_500));
}

#[test]
fn claude_2_json_is_one_result_object() {
    let r = parse(JSON, &PriceTable::default());
    assert_eq!(r.warning, None);
    assert_eq!(r.usage.format, UsageFormat::ClaudeJson);
    assert_eq!(toks(&r.usage), (18, 80, 8_000, 1_500));
    assert_eq!(r.usage.cost_usd, 0.009278999999999999);
    // The CLI's figure is the list price of the table for the same model.
    let priced = PriceTable::default().cost(Some("claude-sonnet-4-5"), &r.usage);
    assert!((priced - r.usage.cost_usd).abs() < 1e-12);
}

#[test]
fn codex_0_171_splits_cached_input_and_ignores_the_metadata_warning() {
    let prices = PriceTable::default().for_model("gpt-5-codex");
    let r = parse(CODEX, &prices);
    assert_eq!(r.warning, None);
    assert_eq!(r.usage.format, UsageFormat::CodexExecJson);
    assert_eq!(toks(&r.usage), (800, 52, 2_400, 0));
    assert_eq!(r.usage.full_input(), 3_200);
    // An `item.completed` of item type `error` (unknown model metadata) is
    // a notice, not a failed run.
    assert!(!r.usage.is_error && r.usage.error_subtype.is_none());
    let want = (800.0 * 1.25 + 2_400.0 * 0.125 + 52.0 * 10.0) / 1e6;
    assert!((r.usage.cost_usd - want).abs() < 1e-12);
}

#[test]
fn codex_reconnect_errors_before_a_completed_turn_are_no_failure() {
    let lines: Vec<&str> = CODEX.lines().collect();
    let (head, tail) = lines.split_at(lines.len() - 1);
    let reconnect = r#"{"type":"error","message":"Reconnecting... 2/5 (stream disconnected before completion)"}"#;
    let recovered = [head, &[reconnect], tail].concat().join("\n");
    let u = parse(&recovered, &PriceTable::default()).usage;
    assert!(!u.is_error, "recovered: {u:?}");
    assert_eq!(u.output_tokens, 52);
    // An error with no completed turn after it is a failure.
    let gave_up = format!("{CODEX}\n{reconnect}");
    let u = parse(&gave_up, &PriceTable::default()).usage;
    assert!(u.is_error);
    assert_eq!(u.error_subtype.as_deref(), Some("error"));
    // cache_write_input_tokens is part of input and shown as cache creation.
    let written = r#"{"type":"turn.completed","usage":{"input_tokens":100,"cached_input_tokens":30,"cache_write_input_tokens":20,"output_tokens":5}}"#;
    let u = parse(written, &PriceTable::default()).usage;
    assert_eq!(toks(&u), (50, 5, 30, 20));
    assert_eq!(u.full_input(), 100);
}
