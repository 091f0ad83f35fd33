//! Token accounting (F-14, B-5): one usage parser per agent output format.
//!
//! The format is detected from the text itself, so any agent command works:
//! - Claude Code `--output-format json`: one `{"type":"result",...}` object;
//! - Claude Code `--output-format stream-json --verbose`: JSONL, the LAST
//!   `result` object holds the run's usage and cost;
//! - Codex `exec --json`: JSONL events, usage summed over `turn.completed`.
//!
//! Reading usage never fails a run: unknown or garbage output gives zero usage
//! and a warning, never a panic and never an error.

use std::collections::BTreeMap;
use std::ops::{Add, AddAssign};

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UsageFormat {
    ClaudeJson,
    ClaudeStreamJson,
    CodexExecJson,
    #[default]
    Unknown,
}

impl UsageFormat {
    /// The name stored with a run (`agent_runs.usage_format`); `None` for
    /// [`UsageFormat::Unknown`]: nothing was read.
    pub fn as_stored(self) -> Option<&'static str> {
        match self {
            UsageFormat::ClaudeJson => Some("claude-json"),
            UsageFormat::ClaudeStreamJson => Some("claude-stream-json"),
            UsageFormat::CodexExecJson => Some("codex-exec-json"),
            UsageFormat::Unknown => None,
        }
    }

    pub fn from_stored(s: Option<&str>) -> UsageFormat {
        match s {
            Some("claude-json") => UsageFormat::ClaudeJson,
            Some("claude-stream-json") => UsageFormat::ClaudeStreamJson,
            Some("codex-exec-json") => UsageFormat::CodexExecJson,
            _ => UsageFormat::Unknown,
        }
    }
}

/// Usage of one agent run (or, summed with `+`, of several).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Usage {
    /// Input tokens billed at the full rate (never including cached ones).
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_creation_tokens: u64,
    pub cost_usd: f64,
    /// The run reported an error (`is_error: true` or an `error_*` subtype).
    pub is_error: bool,
    /// The result's `subtype` verbatim when `is_error` (it can be `success`:
    /// Claude Code sets `is_error` with `subtype: success` on some failures).
    pub error_subtype: Option<String>,
    pub format: UsageFormat,
}

impl Usage {
    /// What a run row stores of this usage.
    pub fn to_row(&self) -> crate::db::runs::UsageRow {
        // SQLite integers are i64: an absurd count an agent printed
        // (`18e100`) saturates there instead of wrapping to -1.
        let stored = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        crate::db::runs::UsageRow {
            input: stored(self.input_tokens),
            output: stored(self.output_tokens),
            cache_read: stored(self.cache_read_tokens),
            cache_creation: stored(self.cache_creation_tokens),
            cost_usd: self.cost_usd,
            format: self.format.as_stored(),
            error: self.is_error.then(|| {
                self.error_subtype
                    .clone()
                    .unwrap_or_else(|| "unknown".into())
            }),
        }
    }

    /// A run's usage as recorded: the same figures, format and error the
    /// parser saw, so the comment written later says what was read.
    pub fn of_run(r: &crate::db::runs::RunRow) -> Usage {
        Usage {
            input_tokens: r.input_tokens.max(0) as u64,
            output_tokens: r.output_tokens.max(0) as u64,
            cache_read_tokens: r.cache_read_tokens.max(0) as u64,
            cache_creation_tokens: r.cache_creation_tokens.max(0) as u64,
            cost_usd: r.cost_usd,
            is_error: r.usage_error.is_some(),
            error_subtype: r.usage_error.clone(),
            format: UsageFormat::from_stored(r.usage_format.as_deref()),
        }
    }

    /// Everything the model read: uncached + cache read + cache creation.
    /// Showing only `input_tokens` hides ~99% of the input of a cached run.
    pub fn full_input(&self) -> u64 {
        self.input_tokens
            .saturating_add(self.cache_read_tokens)
            .saturating_add(self.cache_creation_tokens)
    }
}

impl AddAssign for Usage {
    /// Sums runs: counts saturate, an error in any run marks the sum, the
    /// latest error subtype wins, the format is kept unless it was unknown.
    fn add_assign(&mut self, rhs: Usage) {
        self.input_tokens = self.input_tokens.saturating_add(rhs.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(rhs.output_tokens);
        self.cache_read_tokens = self.cache_read_tokens.saturating_add(rhs.cache_read_tokens);
        self.cache_creation_tokens = self
            .cache_creation_tokens
            .saturating_add(rhs.cache_creation_tokens);
        self.cost_usd += rhs.cost_usd;
        self.is_error |= rhs.is_error;
        if rhs.error_subtype.is_some() {
            self.error_subtype = rhs.error_subtype;
        }
        if self.format == UsageFormat::Unknown {
            self.format = rhs.format;
        }
    }
}

impl Add for Usage {
    type Output = Usage;
    fn add(mut self, rhs: Usage) -> Usage {
        self += rhs;
        self
    }
}

/// The result of [`parse`]: usage (zero when unreadable) and why it may be off.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Parsed {
    pub usage: Usage,
    pub warning: Option<String>,
}

pub use crate::domain::prices::{ModelPrice, PriceTable};

impl PriceTable {
    /// The cost of `u`'s tokens at `model`'s price (0 when unpriced).
    pub fn cost(&self, model: Option<&str>, u: &Usage) -> f64 {
        let Some(p) = self.price(model) else {
            return 0.0;
        };
        let m = |tokens: u64, usd_per_mtok: f64| tokens as f64 * usd_per_mtok / 1_000_000.0;
        m(u.input_tokens, p.input)
            + m(u.output_tokens, p.output)
            + m(u.cache_read_tokens, p.cache_read)
            + m(u.cache_creation_tokens, p.cache_creation)
    }
}

/// Reads the usage of a finished run from the agent's stdout.
pub fn parse(output: &str, prices: &PriceTable) -> Parsed {
    let docs = json_documents(output);
    let objects: Vec<&Value> = docs
        .iter()
        .flat_map(|d| match d {
            Value::Array(items) => items.iter().filter(|v| v.is_object()).collect(),
            other => vec![other],
        })
        .collect();
    if objects.iter().any(|o| is_codex_event(kind(o))) {
        return parse_codex(&objects, prices);
    }
    let streamed = objects
        .iter()
        .any(|o| matches!(kind(o), "system" | "assistant" | "user" | "stream_event"));
    let format = if streamed || docs.len() > 1 {
        UsageFormat::ClaudeStreamJson
    } else {
        UsageFormat::ClaudeJson
    };
    if let Some(result) = objects.iter().rev().find(|o| kind(o) == "result") {
        return claude_result(result, format, model_of(&objects), prices);
    }
    if streamed {
        return claude_messages(&objects, prices);
    }
    let warning = if output.trim().is_empty() {
        "agent output is empty: no usage recorded".to_string()
    } else {
        format!(
            "no usage found in the agent output ({} bytes, {} JSON objects): \
             expected Claude Code json/stream-json or Codex exec --json",
            output.len(),
            objects.len()
        )
    };
    Parsed {
        usage: Usage::default(),
        warning: Some(warning),
    }
}

/// The cost seen so far in a stream still being written (budget check, B-7):
/// the result's total once a result line exists; before that, for
/// stream-json, the per-message usage priced by the table; for Codex, the
/// completed turns priced by the table. A truncated last line is ignored.
pub fn running_cost(partial_output: &str, prices: &PriceTable) -> f64 {
    // `parse` already falls back to per-message usage when the result line is
    // missing, so the budget check and the final accounting agree by design.
    parse(partial_output, prices).usage.cost_usd
}

/// The Plane comment (HTML) for one run: full input with the cached part
/// broken out, output, cost.
pub fn usage_comment(role: &str, u: &Usage) -> String {
    let unread = if u.format == UsageFormat::Unknown {
        "<li>Usage could not be read from the agent output.</li>\n"
    } else {
        ""
    };
    let error = match (u.is_error, u.error_subtype.as_deref()) {
        (true, subtype) => format!(
            "<li>The agent reported an error (subtype: {}).</li>\n",
            escape(subtype.unwrap_or("unknown"))
        ),
        (false, _) => String::new(),
    };
    format!(
        "<p><strong>Usage: {role}</strong></p>\n<ul>\n{unread}\
         <li>Input: {full} tokens (cached: {read} read + {written} written; uncached: {plain})</li>\n\
         <li>Output: {out} tokens</li>\n<li>Cost: ${cost}</li>\n{error}</ul>",
        role = escape(role),
        full = thousands(u.full_input()),
        read = thousands(u.cache_read_tokens),
        written = thousands(u.cache_creation_tokens),
        plain = thousands(u.input_tokens),
        out = thousands(u.output_tokens),
        cost = usd(u.cost_usd),
    )
}

/// Every top-level JSON object or array in the text. JSONL is read line by
/// line, skipping lines that are not JSON (an agent may print text first);
/// if no line parses, a pretty-printed document is tried from each line that
/// starts with `{` or `[` (bounded, so garbage cannot make it quadratic).
fn json_documents(output: &str) -> Vec<Value> {
    let looks_json = |t: &str| t.starts_with('{') || t.starts_with('[');
    let mut docs: Vec<Value> = output
        .lines()
        .map(str::trim)
        .filter(|t| looks_json(t))
        .filter_map(|t| serde_json::from_str::<Value>(t).ok())
        .filter(|v| v.is_object() || v.is_array())
        .collect();
    if docs.is_empty() {
        let mut offset = 0;
        let mut attempts = 0;
        for line in output.split_inclusive('\n') {
            let start = offset + (line.len() - line.trim_start().len());
            offset += line.len();
            if !looks_json(line.trim_start()) {
                continue;
            }
            attempts += 1;
            if attempts > 16 {
                break;
            }
            let mut stream = serde_json::Deserializer::from_str(&output[start..]).into_iter();
            if let Some(Ok(v @ (Value::Object(_) | Value::Array(_)))) = stream.next() {
                docs.push(v);
                break;
            }
        }
    }
    docs
}

/// An event's `type`, "" when absent.
fn kind(v: &Value) -> &str {
    v.get("type").and_then(Value::as_str).unwrap_or("")
}

fn is_codex_event(kind: &str) -> bool {
    kind.starts_with("thread.") || kind.starts_with("turn.") || kind.starts_with("item.")
}

/// A non-negative integer token count; anything else counts as 0.
fn tokens(v: Option<&Value>) -> u64 {
    match v {
        Some(v) => v.as_u64().unwrap_or_else(|| {
            v.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .map_or(0, |f| f as u64)
        }),
        None => 0,
    }
}

/// The first model name the stream mentions (Claude's init line, a message,
/// or a Codex event), used to price tokens when no cost is given.
fn model_of(objects: &[&Value]) -> Option<String> {
    objects.iter().find_map(|o| {
        let direct = o.get("model").and_then(Value::as_str);
        let nested = || {
            o.as_object()?
                .values()
                .find_map(|v| v.get("model").and_then(Value::as_str))
        };
        direct.or_else(nested).map(str::to_string)
    })
}

/// Claude's usage object (a result's or a message's).
fn claude_tokens(usage: Option<&Value>, format: UsageFormat) -> Usage {
    let field = |k: &str| tokens(usage.and_then(|u| u.get(k)));
    Usage {
        input_tokens: field("input_tokens"),
        output_tokens: field("output_tokens"),
        cache_read_tokens: field("cache_read_input_tokens"),
        cache_creation_tokens: field("cache_creation_input_tokens"),
        format,
        ..Usage::default()
    }
}

fn claude_result(
    result: &Value,
    format: UsageFormat,
    model: Option<String>,
    prices: &PriceTable,
) -> Parsed {
    let mut warnings = Vec::new();
    if result.get("usage").is_none_or(|u| !u.is_object()) {
        warnings.push("the result line has no usage object".to_string());
    }
    let mut usage = claude_tokens(result.get("usage"), format);
    // `total_cost_usd` since Claude Code 1.0; older releases wrote `cost_usd`.
    let reported = ["total_cost_usd", "cost_usd"]
        .iter()
        .find_map(|k| result.get(*k).and_then(Value::as_f64))
        .filter(|c| c.is_finite() && *c >= 0.0);
    usage.cost_usd = match reported {
        Some(c) => c,
        None => {
            warnings.push("the result line has no valid cost: priced from the table".into());
            prices.cost(model.as_deref(), &usage)
        }
    };
    let subtype = result.get("subtype").and_then(Value::as_str);
    // Both: `is_error` can be true with `subtype: success`, and an
    // `error_*` subtype is an error whatever `is_error` says.
    usage.is_error = result.get("is_error").and_then(Value::as_bool) == Some(true)
        || subtype.is_some_and(|s| s.starts_with("error"));
    if usage.is_error {
        usage.error_subtype = Some(subtype.unwrap_or("unknown").to_string());
    }
    Parsed {
        usage,
        warning: join(warnings),
    }
}

/// A stream-json run with no result line (still running, or killed): the sum
/// of per-message usage, each message priced by its own model. Claude Code
/// repeats a message's usage on every content block of that message, so
/// usage is counted once per message id.
fn claude_messages(objects: &[&Value], prices: &PriceTable) -> Parsed {
    let fallback_model = model_of(objects);
    let mut by_id: BTreeMap<&str, (Usage, Option<&str>)> = BTreeMap::new();
    let mut anonymous = Vec::new();
    let messages = objects.iter().filter(|o| kind(o) == "assistant");
    for message in messages.filter_map(|o| o.get("message")) {
        let Some(raw) = message.get("usage") else {
            continue;
        };
        let u = claude_tokens(Some(raw), UsageFormat::ClaudeStreamJson);
        let model = message.get("model").and_then(Value::as_str);
        match message.get("id").and_then(Value::as_str) {
            Some(id) => drop(by_id.insert(id, (u, model))),
            None => anonymous.push((u, model)),
        }
    }
    let mut total = Usage {
        format: UsageFormat::ClaudeStreamJson,
        ..Usage::default()
    };
    for (mut u, model) in by_id.into_values().chain(anonymous) {
        u.cost_usd = prices.cost(model.or(fallback_model.as_deref()), &u);
        total += u;
    }
    Parsed {
        usage: total,
        warning: Some("no result line (run unfinished or killed): usage summed per message, cost priced from the table".into()),
    }
}

fn parse_codex(objects: &[&Value], prices: &PriceTable) -> Parsed {
    let mut usage = Usage {
        format: UsageFormat::CodexExecJson,
        ..Usage::default()
    };
    let mut turns = 0;
    // Codex 0.17x prints `{"type":"error","message":"Reconnecting... 2/5"}`
    // for a stream it retries: an `error` that a completed turn follows was
    // recovered from. `turn.failed` always counts.
    let mut failed = false;
    let mut pending_error = false;
    for o in objects {
        match kind(o) {
            "turn.completed" => {
                turns += 1;
                pending_error = false;
                let field = |k: &str| tokens(o.get("usage").and_then(|u| u.get(k)));
                let input = field("input_tokens");
                // Codex counts cached tokens inside input_tokens (the
                // Responses API's `input_tokens` is the whole input); split
                // them out so full_input() does not count them twice. 0.17x
                // also prints `cache_write_input_tokens` (0 on OpenAI, which
                // bills no cache writes), taken as part of the input too.
                let cached = field("cached_input_tokens").min(input);
                let written = field("cache_write_input_tokens").min(input - cached);
                usage += Usage {
                    input_tokens: input - cached - written,
                    cache_read_tokens: cached,
                    cache_creation_tokens: written,
                    output_tokens: field("output_tokens"),
                    ..Usage::default()
                };
            }
            "turn.failed" => {
                failed = true;
                usage.error_subtype = Some("turn.failed".to_string());
            }
            "error" => {
                pending_error = true;
                if !failed {
                    usage.error_subtype = Some("error".to_string());
                }
            }
            _ => {}
        }
    }
    usage.is_error = failed || pending_error;
    if !usage.is_error {
        usage.error_subtype = None;
    }
    // Codex prints no cost: price it, by the model the stream names if any.
    usage.cost_usd = prices.cost(model_of(objects).as_deref(), &usage);
    let warning = (turns == 0).then(|| "Codex output has no turn.completed event".to_string());
    Parsed { usage, warning }
}

fn join(warnings: Vec<String>) -> Option<String> {
    (!warnings.is_empty()).then(|| warnings.join("; "))
}

/// `1234567` → `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// 2 to 4 decimals: `3.98` → `3.98`, `0.4213` → `0.4213`, `0` → `0.00`.
fn usd(cost: f64) -> String {
    let mut s = format!("{:.4}", if cost.is_finite() { cost } else { 0.0 });
    while s.ends_with('0') && s.len() - s.find('.').map_or(s.len(), |d| d + 1) > 2 {
        s.pop();
    }
    s
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The output of the pinned CLIs (B-14), captured from them talking to the
/// test doubles: kept apart so this file stays readable.
#[cfg(test)]
#[path = "usage_cli_tests.rs"]
mod cli_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_absurd_token_count_is_stored_saturated_never_negative() {
        let u = Usage {
            input_tokens: u64::MAX,
            output_tokens: 80,
            ..Usage::default()
        };
        let row = u.to_row();
        assert_eq!((row.input, row.output), (i64::MAX, 80));
    }

    const STREAM: &str = include_str!("../../tests/fixtures/agents/claude-stream.jsonl");
    const ERROR: &str = include_str!("../../tests/fixtures/agents/claude-error.json");
    const CODEX: &str = include_str!("../../tests/fixtures/agents/codex-exec.jsonl");

    fn p(output: &str) -> Parsed {
        parse(output, &PriceTable::default())
    }

    /// (input, output, cache read, cache creation)
    fn toks(u: &Usage) -> (u64, u64, u64, u64) {
        let c = (u.cache_read_tokens, u.cache_creation_tokens);
        (u.input_tokens, u.output_tokens, c.0, c.1)
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn claude_stream_fixture_reads_the_last_result_line() {
        let r = p(STREAM);
        assert_eq!(r.warning, None);
        let u = r.usage;
        assert_eq!(u.format, UsageFormat::ClaudeStreamJson);
        assert_eq!(toks(&u), (31, 4210, 212_400, 18_250));
        assert_eq!(u.full_input(), 31 + 212_400 + 18_250);
        assert!(close(u.cost_usd, 0.4213));
        assert!(!u.is_error && u.error_subtype.is_none());
    }

    #[test]
    fn claude_json_error_fixture_is_an_error_with_its_cost() {
        let u = p(ERROR).usage;
        assert_eq!(u.format, UsageFormat::ClaudeJson);
        assert!(u.is_error);
        assert_eq!(u.error_subtype.as_deref(), Some("error_max_turns"));
        assert_eq!(toks(&u), (120, 30_100, 1_840_022, 90_210));
        assert!(close(u.cost_usd, 3.98));
    }

    #[test]
    fn codex_fixture_splits_cached_input_and_prices_by_the_default_model() {
        let r = p(CODEX);
        assert_eq!(r.warning, None);
        let u = r.usage;
        assert_eq!(u.format, UsageFormat::CodexExecJson);
        assert_eq!(toks(&u), (24_763 - 24_448, 122, 24_448, 0));
        assert_eq!(
            u.full_input(),
            24_763,
            "cached tokens are not counted twice"
        );
        // No model in the stream: the default model (sonnet 4.5) prices it.
        let want = (315.0 * 3.0 + 24_448.0 * 0.30 + 122.0 * 15.0) / 1e6;
        assert!(close(u.cost_usd, want), "{} vs {want}", u.cost_usd);
    }

    #[test]
    fn codex_sums_every_turn_uses_the_named_model_and_reports_failures() {
        let turn = |i, c, o| {
            format!(
                r#"{{"type":"turn.completed","usage":{{"input_tokens":{i},"cached_input_tokens":{c},"output_tokens":{o}}}}}"#
            )
        };
        let out = [
            r#"{"type":"thread.started","thread_id":"t"}"#.to_string(),
            r#"{"type":"session.configured","model":"gpt-5-codex"}"#.to_string(),
            turn(1000, 400, 10),
            turn(2000, 1500, 20),
            turn(5, 9, 1), // cached > input: capped at input
        ]
        .join("\n");
        let u = p(&out).usage;
        assert_eq!(toks(&u), (1100, 31, 1905, 0));
        let want = (1100.0 * 1.25 + 1905.0 * 0.125 + 31.0 * 10.0) / 1e6;
        assert!(close(u.cost_usd, want) && !u.is_error);

        let failed = format!(
            "{out}\n{}",
            r#"{"type":"turn.failed","error":{"message":"x"}}"#
        );
        let u = p(&failed).usage;
        assert!(u.is_error);
        assert_eq!(u.error_subtype.as_deref(), Some("turn.failed"));
        assert_eq!(u.output_tokens, 31, "the completed turns still count");
    }

    #[test]
    fn claude_result_variants() {
        // is_error with subtype success: an error all the same.
        let out = r#"{"type":"result","subtype":"success","is_error":true,"total_cost_usd":0.5,"usage":{"input_tokens":1}}"#;
        let u = p(out).usage;
        assert!(u.is_error);
        assert_eq!(u.error_subtype.as_deref(), Some("success"));
        assert!(close(u.cost_usd, 0.5));

        // Older releases: `cost_usd`.
        let out = r#"{"type":"result","subtype":"success","is_error":false,"cost_usd":1.25,"usage":{"output_tokens":4}}"#;
        let r = p(out);
        assert_eq!(r.warning, None);
        assert!(close(r.usage.cost_usd, 1.25) && !r.usage.is_error);

        // No cost: priced by the stream's model (prefix match on the name).
        let out = concat!(
            r#"{"type":"system","subtype":"init","model":"claude-opus-4-1-20250805"}"#,
            "\n",
            r#"{"type":"result","subtype":"success","usage":{"input_tokens":1000000}}"#,
        );
        let r = p(out);
        assert!(close(r.usage.cost_usd, 15.0));
        assert!(r.warning.unwrap().contains("no valid cost"));
    }

    #[test]
    fn json_is_found_in_noisy_output() {
        let noisy = format!("Starting agent...\nsome {{ not json\n{STREAM}");
        assert_eq!(p(&noisy), p(STREAM));
        assert_eq!(
            p(&format!("warming up\n{ERROR}")).usage.format,
            UsageFormat::ClaudeJson
        );
        // The last result line wins.
        let u = p(&format!("{ERROR}\n{STREAM}")).usage;
        assert!(close(u.cost_usd, 0.4213) && !u.is_error);
        // Pretty-printed, with text around it.
        let pretty = "note\n{\n  \"type\": \"result\",\n  \"total_cost_usd\": 2.5,\n  \"usage\": {\"output_tokens\": 7}\n}\ntrailing\n";
        let u = p(pretty).usage;
        assert!(close(u.cost_usd, 2.5) && u.output_tokens == 7);
        // `--output-format json --verbose` prints an array of messages.
        let array = r#"[{"type":"system"},{"type":"result","total_cost_usd":0.1,"usage":{}}]"#;
        assert!(close(p(array).usage.cost_usd, 0.1));
    }

    #[test]
    fn garbage_empty_truncated_and_odd_values_never_fail() {
        let truncated = &STREAM[..STREAM.len() - 30];
        let last_line_cut = truncated.lines().last().unwrap();
        for out in [
            "",
            "  \n",
            "hello",
            last_line_cut,
            "[1,2]",
            "{}",
            "null",
            "{\"type\":",
        ] {
            let r = p(out);
            assert_eq!(toks(&r.usage), (0, 0, 0, 0), "{out:?}");
            assert_eq!(r.usage.cost_usd, 0.0, "{out:?}");
            assert!(r.warning.is_some(), "{out:?}");
        }
        assert!(p("").warning.unwrap().contains("empty"));
        let odd = r#"{"type":"result","total_cost_usd":-3,"usage":{"input_tokens":-5,"output_tokens":"7","cache_read_input_tokens":1e300}}"#;
        let r = p(odd);
        assert_eq!((r.usage.input_tokens, r.usage.output_tokens), (0, 0));
        assert!(r.usage.cost_usd.is_finite() && r.usage.cost_usd >= 0.0);
        assert!(r.warning.is_some(), "a negative cost is not trusted");
    }

    #[test]
    fn running_cost_prices_messages_until_the_result_arrives() {
        let prices = PriceTable::default();
        let lines: Vec<&str> = STREAM.lines().collect();
        // Through the assistant message, the result line half written.
        let partial = format!("{}\n{}\n{}", lines[0], lines[1], &lines[3][..40]);
        let want = (9.0 * 3.0 + 120.0 * 15.0 + 5300.0 * 3.75) / 1e6;
        assert!(close(running_cost(&partial, &prices), want));
        let r = parse(&partial, &prices);
        assert_eq!(r.usage.format, UsageFormat::ClaudeStreamJson);
        assert!(r.warning.unwrap().contains("no result line"));
        assert!(close(running_cost(STREAM, &prices), 0.4213));
        assert_eq!(running_cost("", &prices), 0.0);
        // Codex: completed turns only.
        let codex: Vec<&str> = CODEX.lines().collect();
        assert_eq!(running_cost(&codex[..4].join("\n"), &prices), 0.0);
        assert!(close(running_cost(CODEX, &prices), p(CODEX).usage.cost_usd));
    }

    #[test]
    fn running_cost_counts_a_repeated_message_id_once() {
        let msg = r#"{"type":"assistant","message":{"id":"msg_1","model":"claude-haiku-4-5","usage":{"input_tokens":1000000}}}"#;
        let other =
            r#"{"type":"assistant","message":{"id":"msg_2","usage":{"output_tokens":1000000}}}"#;
        let out = format!("{msg}\n{msg}\n{other}\n");
        // msg_1 once at haiku (1M input = $1); msg_2 names no model, so it is
        // priced at the first model the stream names, haiku (1M output = $5).
        assert!(close(running_cost(&out, &PriceTable::default()), 6.0));
    }

    #[test]
    fn usages_add_up_across_runs() {
        let (a, b) = (p(STREAM).usage, p(ERROR).usage);
        let sum = a.clone() + b.clone();
        assert_eq!(sum.full_input(), a.full_input() + b.full_input());
        assert_eq!(sum.output_tokens, 4210 + 30_100);
        assert!(close(sum.cost_usd, 0.4213 + 3.98));
        assert!(sum.is_error);
        assert_eq!(sum.error_subtype.as_deref(), Some("error_max_turns"));
        assert_eq!(sum.format, UsageFormat::ClaudeStreamJson);
        let mut acc = Usage::default();
        acc += a.clone();
        assert_eq!(acc, a);
        let max = Usage {
            output_tokens: u64::MAX,
            ..Usage::default()
        };
        assert_eq!((max.clone() + max).output_tokens, u64::MAX, "saturates");
    }

    #[test]
    fn price_lookup_and_config() {
        let t = PriceTable::default();
        assert_eq!(
            t.price(Some("gpt-5-mini")).unwrap().output,
            2.0,
            "exact beats prefix"
        );
        assert_eq!(t.price(Some("gpt-5-codex-2025")).unwrap().input, 1.25);
        assert_eq!(t.price(Some("mystery")), t.price(None));
        let empty = PriceTable {
            default_model: "x".into(),
            models: BTreeMap::new(),
        };
        assert_eq!(empty.cost(None, &p(STREAM).usage), 0.0);
        let toml = "default_model = \"m\"\n[models.m]\ninput = 1.0\noutput = 2.0\ncache_read = 0.1\ncache_creation = 1.5\n";
        let t: PriceTable = toml::from_str(toml).unwrap();
        assert_eq!(t.price(None).unwrap().cache_creation, 1.5);
    }

    #[test]
    fn a_stored_run_gives_back_what_was_read() {
        for out in [STREAM, "", "garbage"] {
            let u = p(out).usage;
            let row = u.to_row();
            let run = crate::db::runs::RunRow {
                id: 1,
                job_id: 1,
                task_id: 1,
                role: "developer".into(),
                stage: "development".into(),
                attempt: 1,
                pid: None,
                model: None,
                effort: None,
                command: None,
                log_path: None,
                started_at: 0,
                exit_code: Some(0),
                finished_at: Some(1),
                input_tokens: row.input,
                output_tokens: row.output,
                cache_read_tokens: row.cache_read,
                cache_creation_tokens: row.cache_creation,
                cost_usd: row.cost_usd,
                usage_format: row.format.map(str::to_string),
                usage_error: row.error.clone(),
            };
            assert_eq!(Usage::of_run(&run), u, "{out:?}");
            assert_eq!(
                usage_comment("developer", &Usage::of_run(&run)).contains("could not be read"),
                out != STREAM
            );
        }
    }

    #[test]
    fn comment_shows_full_input_cached_part_output_and_cost() {
        let html = usage_comment("developer", &p(STREAM).usage);
        for want in [
            "Usage: developer",
            "Input: 230,681 tokens",
            "212,400 read + 18,250 written; uncached: 31",
            "Output: 4,210 tokens",
            "Cost: $0.4213",
        ] {
            assert!(html.contains(want), "{want} in {html}");
        }
        assert!(!html.contains("error"), "{html}");
        let html = usage_comment("<b>tester</b>", &p(ERROR).usage);
        for want in [
            "Cost: $3.98<",
            "subtype: error_max_turns",
            "&lt;b&gt;tester",
        ] {
            assert!(html.contains(want), "{want} in {html}");
        }
        let html = usage_comment("analyst", &Usage::default());
        assert!(html.contains("could not be read") && html.contains("Cost: $0.00"));
    }

    #[test]
    fn money_and_thousands_formatting() {
        let cases = [
            (0.0, "0.00"),
            (1.5, "1.50"),
            (0.00004, "0.00"),
            (12.34567, "12.3457"),
        ];
        for (cost, want) in cases {
            assert_eq!(usd(cost), want);
        }
        assert_eq!(usd(f64::NAN), "0.00");
        let cases = [
            (0, "0"),
            (999, "999"),
            (1000, "1,000"),
            (1_234_567, "1,234,567"),
        ];
        for (n, want) in cases {
            assert_eq!(thousands(n), want);
        }
    }

    proptest! {
        // ~600 cases in well under a second.
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn parse_never_panics_on_any_string(s in any::<String>()) {
            let r = p(&s);
            prop_assert!(r.usage.cost_usd.is_finite());
            let _ = usage_comment("x", &r.usage);
        }

        #[test]
        fn parse_never_panics_on_json_like_text(
            s in r#"[\[\]{}":,. 0-9a-z_\n-]{0,200}"#,
            prefix in prop::sample::select(vec![
                "", "{\"type\":\"result\",", "{\"type\":\"turn.completed\",\"usage\":",
                "{\"type\":\"assistant\",\"message\":",
            ]),
        ) {
            let text = format!("{prefix}{s}");
            prop_assert!(p(&text).usage.cost_usd.is_finite());
            prop_assert!(running_cost(&text, &PriceTable::default()).is_finite());
        }
    }
}
