//! Machine-verdict lines of the agent contract: `key: value` lines at the end
//! of an artifact. Parsing is deliberately strict about keys and values and
//! lenient about decoration (`- `, `**`, backticks, case), so a PASS is never
//! read as FAIL (seed 001) and prose mentioning "FAIL" is never a verdict.

use std::collections::BTreeMap;

/// Keys the contract defines; other `x: y` lines are prose.
pub const VERDICT_KEYS: &[&str] = &[
    "status",
    "verdict",
    "result",
    "tests_run",
    "staging_status",
    "deploy_status",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerdictError {
    /// The key does not occur.
    Missing(&'static str),
    /// The key occurs with two different values.
    Contradictory {
        key: &'static str,
        values: Vec<String>,
    },
}

impl std::fmt::Display for VerdictError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VerdictError::Missing(k) => write!(f, "no `{k}:` verdict line"),
            VerdictError::Contradictory { key, values } => {
                write!(f, "contradictory `{key}:` lines: {}", values.join(" vs "))
            }
        }
    }
}

/// All verdict lines of an artifact: key → every value seen, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerdictLines(BTreeMap<&'static str, Vec<String>>);

impl VerdictLines {
    pub fn parse(text: &str) -> Self {
        let mut map: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
        let mut in_fence = false;
        for line in text.lines() {
            let trimmed = line.trim();
            if trimmed.starts_with("```") {
                in_fence = !in_fence;
                continue;
            }
            if in_fence {
                continue;
            }
            if let Some((key, value)) = parse_line(trimmed) {
                let values = map.entry(key).or_default();
                if !values.contains(&value) {
                    values.push(value);
                }
            }
        }
        Self(map)
    }

    /// The single value of `key`, uppercased; missing or contradictory is an error.
    pub fn get(&self, key: &'static str) -> Result<&str, VerdictError> {
        match self.0.get(key).map(Vec::as_slice) {
            None | Some([]) => Err(VerdictError::Missing(key)),
            Some([one]) => Ok(one.as_str()),
            Some(many) => Err(VerdictError::Contradictory {
                key,
                values: many.to_vec(),
            }),
        }
    }
}

fn parse_line(line: &str) -> Option<(&'static str, String)> {
    let line = line.trim_start_matches(['-', '*', '>', ' ', '\t']);
    let (raw_key, raw_value) = line.split_once(':')?;
    let key = raw_key
        .trim_matches(|c: char| c.is_whitespace() || matches!(c, '*' | '`'))
        .to_ascii_lowercase();
    let key = VERDICT_KEYS.iter().find(|k| **k == key)?;
    let value =
        raw_value.trim_matches(|c: char| c.is_whitespace() || matches!(c, '*' | '`' | '"' | '\''));
    // The value is one token: `PASS`, `READY`, `12`. Anything longer is prose.
    let token: String = value.trim_end_matches(['.', ',', ';', '!']).to_string();
    if token.is_empty() || token.contains(char::is_whitespace) {
        return None;
    }
    Some((key, token.to_ascii_uppercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_decorated_lines() {
        let v = VerdictLines::parse(
            "# Report\n\nSome prose: with a colon.\n\n- **result:** PASS\n`status`: passed\ntests_run: 12\n",
        );
        assert_eq!(v.get("result"), Ok("PASS"));
        assert_eq!(v.get("status"), Ok("PASSED"));
        assert_eq!(v.get("tests_run"), Ok("12"));
    }

    #[test]
    fn prose_is_not_a_verdict() {
        let v = VerdictLines::parse("The result: we did not FAIL anything\nstatus: READY\n");
        assert_eq!(v.get("result"), Err(VerdictError::Missing("result")));
        assert_eq!(v.get("status"), Ok("READY"));
    }

    #[test]
    fn fenced_examples_are_ignored() {
        let v = VerdictLines::parse("```\nresult: FAIL\n```\nresult: PASS\n");
        assert_eq!(v.get("result"), Ok("PASS"));
    }

    #[test]
    fn two_values_are_contradictory_and_repeats_are_not() {
        let v = VerdictLines::parse("result: PASS\nresult: FAIL\n");
        assert!(matches!(
            v.get("result"),
            Err(VerdictError::Contradictory { .. })
        ));
        let v = VerdictLines::parse("result: PASS\nresult: pass\n");
        assert_eq!(v.get("result"), Ok("PASS"));
    }

    #[test]
    fn unknown_keys_are_ignored() {
        let v = VerdictLines::parse("owner: bob\n");
        assert_eq!(v, VerdictLines::default());
    }
}
