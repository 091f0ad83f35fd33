//! F-21: `docs/architecture/llm-call-sites.md` is pinned to the code. Each
//! test fails on drift in one direction: a listed symbol gone, a verdict
//! read in an unlisted function, a quality-gate check or a role missing
//! from the page, a new place that starts an agent.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use orchestrator::domain::STAGE_TRANSITIONS;

const DOC: &str = "docs/architecture/llm-call-sites.md";

#[derive(Debug)]
struct Site {
    id: String,
    kind: String,
    axis: String,
    file: String,
    symbol: String,
    role: String,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn inventory() -> Vec<Site> {
    let text = std::fs::read_to_string(root().join(DOC)).expect("the inventory page exists");
    let block = text
        .split("```llm-call-sites\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("the page has an llm-call-sites block");
    block
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(" | ").map(str::trim).collect();
            assert_eq!(f.len(), 7, "malformed inventory line: {l}");
            Site {
                id: f[0].into(),
                kind: f[1].into(),
                axis: f[2].into(),
                file: f[3].into(),
                symbol: f[4].into(),
                role: f[5].into(),
            }
        })
        .collect()
}

/// Every `.rs` file under `src`, with its inline test module cut off.
fn sources() -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(&root().join("src"), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let code = text
                .split("#[cfg(test)]\nmod tests")
                .next()
                .unwrap()
                .to_string();
            let rel = p
                .strip_prefix(root())
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (rel, code)
        })
        .collect()
}

/// The function a line belongs to: the nearest `fn name(` above it.
fn enclosing_fn(code: &str, line_no: usize) -> Option<String> {
    code.lines()
        .take(line_no + 1)
        .collect::<Vec<_>>()
        .iter()
        .rev()
        .find_map(|l| {
            let at = l.find("fn ")?;
            let rest = &l[at + 3..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            (!name.is_empty()).then_some(name)
        })
}

fn listed(sites: &[Site], file: &str, fn_name: &str) -> bool {
    sites
        .iter()
        .any(|s| s.file == file && s.symbol.ends_with(&format!("fn {fn_name}")))
}

#[test]
fn every_listed_site_exists_in_the_code() {
    let sites = inventory();
    assert!(sites.len() >= 10, "{sites:?}");
    let mut ids = BTreeSet::new();
    for s in &sites {
        assert!(ids.insert(s.id.clone()), "duplicate id {}", s.id);
        assert!(
            ["transport", "gate", "reader", "monitor", "effect"].contains(&s.kind.as_str()),
            "{s:?}"
        );
        assert!(["C", "P", "D", "-"].contains(&s.axis.as_str()), "{s:?}");
        let code = std::fs::read_to_string(root().join(&s.file))
            .unwrap_or_else(|e| panic!("{}: {} is gone: {e}", s.id, s.file));
        assert!(
            code.contains(&format!("{}(", s.symbol)) || code.contains(&format!("{}<", s.symbol)),
            "{}: `{}` is not in {}",
            s.id,
            s.symbol,
            s.file
        );
    }
}

#[test]
fn every_verdict_read_is_listed() {
    let sites = inventory();
    let mut reads = 0;
    for (file, code) in sources() {
        // The parser itself judges nothing.
        if file == "src/domain/verdict.rs" {
            continue;
        }
        for (n, line) in code.lines().enumerate() {
            if !line.contains("VerdictLines::parse(") {
                continue;
            }
            reads += 1;
            let f = enclosing_fn(&code, n).unwrap_or_default();
            assert!(
                listed(&sites, &file, &f),
                "{file}:{}: `fn {f}` reads an LLM verdict but is not in {DOC}",
                n + 1
            );
        }
    }
    assert!(
        reads >= 4,
        "the scan found {reads} verdict reads: is it still looking?"
    );
}

#[test]
fn every_quality_gate_check_is_classified() {
    let sites = inventory();
    let gates = std::fs::read_to_string(root().join("src/domain/gates.rs")).unwrap();
    let checks: Vec<&str> = gates
        .lines()
        .filter_map(|l| l.trim().strip_prefix("check: "))
        .map(|c| c.trim_end_matches(','))
        .collect();
    assert!(checks.len() >= 8, "{checks:?}");
    for c in checks {
        assert!(
            listed(&sites, "src/domain/gates.rs", c),
            "QG check {c} is not classified in {DOC}"
        );
    }
}

#[test]
fn every_agent_role_has_a_site_and_a_transport() {
    let sites = inventory();
    let roles: BTreeSet<&str> = STAGE_TRANSITIONS.iter().filter_map(|s| s.role).collect();
    for role in roles {
        assert!(
            sites
                .iter()
                .any(|s| s.kind != "transport" && s.role == role),
            "role {role} has no call site in {DOC}"
        );
    }
    // Only a transport hands an agent its prompt file: a new place that
    // does must join the inventory.
    let transports: BTreeSet<String> = sites
        .iter()
        .filter(|s| s.kind == "transport")
        .map(|s| s.file.clone())
        .collect();
    for (file, code) in sources() {
        let sets_prompt = code
            .lines()
            .any(|l| l.contains("\"ORCH_PROMPT_FILE\"") && !l.trim_start().starts_with("//"));
        if sets_prompt {
            assert!(
                transports.contains(&file),
                "{file} starts an agent (sets ORCH_PROMPT_FILE) but is not a transport in {DOC}"
            );
        }
    }
}
