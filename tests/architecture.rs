//! Arrows one way (issue 16): lower layers never import upper ones. The
//! source tree is read as text and each rule fails with the offending file
//! and line:
//!
//! - (a) nothing under `src/` but `src/http/**` and `src/app.rs` names
//!   `crate::http` (a `/queue` block implements `crate::status::StatusBlock`,
//!   a handler outside http returns `crate::api_error::ApiError`, a label
//!   value is escaped by `crate::telemetry::metrics::escape`);
//! - (b) the deploy effects' shared parts live in `effects::deploy_deps`:
//!   `adopt`, `deploy_agent`, `ratchet` and `deploy_deps` never import
//!   `deploy`, which uses all of them;
//! - (c) the leaves stay leaves: `src/status.rs` imports nothing of the
//!   crate, `src/telemetry/metrics.rs` none of the upper layers (`http`,
//!   `pipeline`, `loops`, `intake`, `app`).
//!
//! Each detector is also run on a line of the code as it was before the
//! move, so a rule that could no longer fail fails here instead.

use std::path::{Path, PathBuf};

/// Every `.rs` file under `src`, as (path relative to the crate with `/`
/// separators, text), sorted by path.
fn sources() -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).expect("src/ is readable").flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    walk(&root.join("src"), &mut files);
    let mut out: Vec<(String, String)> = files
        .into_iter()
        .map(|p| {
            let rel = p
                .strip_prefix(&root)
                .expect("under the crate")
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            let text = std::fs::read_to_string(&p).expect("a source file is UTF-8");
            (rel, text)
        })
        .collect();
    out.sort();
    assert!(
        out.iter().any(|(p, _)| p == "src/lib.rs"),
        "the walk found src/lib.rs"
    );
    out
}

fn source(path: &str) -> String {
    let (_, text) = sources()
        .into_iter()
        .find(|(p, _)| p == path)
        .unwrap_or_else(|| panic!("{path} exists"));
    text
}

fn ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The 1-based lines of `text` that name the module path `path` (e.g.
/// `crate::http`) as a whole: `crate::http;`, `crate::http::X`,
/// `crate::http::{..}`, `crate::http as h`, but not `crate::https` (a
/// `super::super::deploy` names `super::deploy`); and
/// the `prefix::{..}` groups (`crate::{db, http}`) whose items include the
/// last segment.
fn naming(text: &str, path: &str) -> Vec<usize> {
    let mut hits = Vec::new();
    let line_of = |at: usize| text[..at].matches('\n').count() + 1;
    for (at, _) in text.match_indices(path) {
        let before = text[..at].chars().next_back();
        let after = text[at + path.len()..].chars().next();
        if !before.is_some_and(ident_char) && !after.is_some_and(ident_char) {
            hits.push(line_of(at));
        }
    }
    if let Some((prefix, last)) = path.rsplit_once("::") {
        let group = format!("{prefix}::{{");
        for (at, _) in text.match_indices(&group) {
            if text[..at].chars().next_back().is_some_and(ident_char) {
                continue;
            }
            // The group's top-level items, split at commas outside braces:
            // `crate::{db, http::X}` names `http`, `crate::{db::http}` not.
            let mut depth = 0usize;
            let mut item = String::new();
            let mut names_last = false;
            for c in text[at + group.len()..].chars() {
                let end = match c {
                    '{' => {
                        depth += 1;
                        false
                    }
                    '}' if depth > 0 => {
                        depth -= 1;
                        false
                    }
                    '}' => true,
                    ',' => depth == 0,
                    _ => false,
                };
                if end {
                    let head: String = item
                        .trim_start()
                        .chars()
                        .take_while(|&c| ident_char(c))
                        .collect();
                    names_last |= head == last;
                    item.clear();
                    if c == '}' {
                        break;
                    }
                } else {
                    item.push(c);
                }
            }
            if names_last {
                hits.push(line_of(at));
            }
        }
    }
    hits.sort_unstable();
    hits.dedup();
    hits
}

/// "file:line: text" for each line of `file` that names one of `paths`.
fn offences(file: &str, text: &str, paths: &[&str]) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for path in paths {
        for n in naming(text, path) {
            let line = lines.get(n - 1).copied().unwrap_or("").trim();
            out.push(format!("{file}:{n}: names `{path}`: {line}"));
        }
    }
    out
}

fn assert_none(rule: &str, found: Vec<String>) {
    assert!(
        found.is_empty(),
        "{rule}; offending lines:\n  {}",
        found.join("\n  ")
    );
}

// (a) ------------------------------------------------------------------------

fn may_name_http(file: &str) -> bool {
    file.starts_with("src/http/") || file == "src/http.rs" || file == "src/app.rs"
}

#[test]
fn only_http_and_app_name_the_http_layer() {
    let found = sources()
        .iter()
        .filter(|(file, _)| !may_name_http(file))
        .flat_map(|(file, text)| offences(file, text, &["crate::http"]))
        .collect();
    assert_none(
        "only src/http/** and src/app.rs may name `crate::http` (StatusBlock is in \
         `crate::status`, ApiError in `crate::api_error`, `escape` in \
         `crate::telemetry::metrics`)",
        found,
    );
}

// (b) ------------------------------------------------------------------------

const BELOW_DEPLOY: [&str; 4] = [
    "src/effects/adopt.rs",
    "src/effects/deploy_agent.rs",
    "src/effects/ratchet.rs",
    "src/effects/deploy_deps.rs",
];

const DEPLOY_PATHS: [&str; 2] = ["super::deploy", "crate::effects::deploy"];

#[test]
fn the_deploy_effects_parts_do_not_import_deploy() {
    let found = BELOW_DEPLOY
        .iter()
        .flat_map(|file| offences(file, &source(file), &DEPLOY_PATHS))
        .collect();
    assert_none(
        "adopt, deploy_agent, ratchet and deploy_deps must not import `effects::deploy` \
         (what they share with it is in `effects::deploy_deps`)",
        found,
    );
}

// (c) ------------------------------------------------------------------------

const UPPER: [&str; 5] = [
    "crate::http",
    "crate::pipeline",
    "crate::loops",
    "crate::intake",
    "crate::app",
];

#[test]
fn the_status_leaf_imports_nothing_of_the_crate() {
    let file = "src/status.rs";
    let text = source(file);
    let mut found = offences(file, &text, &UPPER);
    for (n, line) in text.lines().enumerate() {
        if line.contains("crate::") || line.contains("super::") {
            found.push(format!("{file}:{}: {}", n + 1, line.trim()));
        }
    }
    found.sort();
    found.dedup();
    assert_none(
        "src/status.rs is a leaf: no `crate::` or `super::` path",
        found,
    );
}

#[test]
fn the_metrics_leaf_imports_no_upper_layer() {
    let file = "src/telemetry/metrics.rs";
    assert_none(
        "src/telemetry/metrics.rs is a leaf any layer may use: it names none of \
         http, pipeline, loops, intake, app",
        offences(file, &source(file), &UPPER),
    );
}

// Negative controls: the detectors on the code as it was ----------------------

#[test]
fn the_detectors_catch_the_old_imports() {
    // (a) src/loops/reaper.rs, src/intake/mod.rs, src/loops/disk_watchdog.rs.
    for old in [
        "use crate::http::StatusBlock;",
        "use crate::http::ApiError;",
        "impl crate::http::StatusBlock for IntakeBlock {",
        "let label = crate::http::metrics::escape(&p);",
        "use crate::http;",
        "use crate::{db, http};",
        "use crate::{\n    db::Db,\n    http::{self, StatusBlock},\n};",
    ] {
        assert_eq!(
            offences("src/x.rs", old, &["crate::http"]).len(),
            1,
            "(a) misses {old:?}"
        );
    }
    // (b) src/effects/{adopt,deploy_agent,ratchet}.rs.
    for old in [
        "use super::deploy::{DeployDeps, write_durably};",
        "use super::deploy::{DeployDeps, task_branch, write_durably};",
        "use super::deploy;",
        "let d = super::deploy::deploys_dir(s);",
        "use crate::effects::deploy::DeployDeps;",
        "use super::{adopt, deploy};",
        "    use super::super::deploy::ProdDeploy;",
    ] {
        assert_eq!(
            offences("src/x.rs", old, &DEPLOY_PATHS).len(),
            1,
            "(b) misses {old:?}"
        );
    }
    // (c)
    for old in [
        "use crate::http::ApiError;",
        "use crate::pipeline::Pipeline;",
        "use crate::loops;",
        "use crate::intake::Intake;",
        "use crate::app::Running;",
    ] {
        assert_eq!(
            offences("src/x.rs", old, &UPPER).len(),
            1,
            "(c) misses {old:?}"
        );
    }
    // ... and not what is allowed.
    for fine in [
        "use crate::status::StatusBlock;",
        "use crate::api_error::ApiError;",
        "use super::deploy_deps::{DeployDeps, write_durably};",
        "use crate::effects::deploy_deps::DeployDeps;",
        "use crate::{db::http_client, status};",
        "use crate::application;",
        "use crate::clients::http;",
    ] {
        let mut all: Vec<&str> = UPPER.to_vec();
        all.extend(DEPLOY_PATHS);
        assert_eq!(
            offences("src/x.rs", fine, &all),
            Vec::<String>::new(),
            "a false alarm on {fine:?}"
        );
    }
}

// (d) ------------------------------------------------------------------------

#[test]
fn git_runs_only_through_the_one_runner() {
    let found: Vec<String> = sources()
        .iter()
        .filter(|(file, _)| file != "src/git.rs")
        .flat_map(|(file, text)| {
            text.lines()
                .enumerate()
                .filter(|(_, l)| {
                    l.contains("git::command()")
                        || l.contains("Command::new(\"git\")")
                        || l.contains("std::process::Command::new(\"git")
                })
                .map(|(n, l)| format!("{file}:{}: {}", n + 1, l.trim()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_none(
        "git runs only through `crate::git::run` (or `git::git`): one environment \
         (hardening, no secrets, no prompt, C locale) and one timeout policy",
        found,
    );
}

// (e) ------------------------------------------------------------------------

/// The names of a `[table]` of Cargo.toml (`name = ...` lines up to the
/// next table).
fn cargo_table(manifest: &str, table: &str) -> Vec<String> {
    manifest
        .lines()
        .skip_while(|l| l.trim() != table)
        .skip(1)
        .take_while(|l| !l.trim_start().starts_with('['))
        .filter_map(|l| {
            let name = l.split('=').next()?.trim();
            (!name.is_empty() && !name.starts_with('#')).then(|| name.to_string())
        })
        .collect()
}

fn rust_files_under(dir: &std::path::Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() && !p.ends_with("node_modules") {
            rust_files_under(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(std::fs::read_to_string(&p).unwrap_or_default());
        }
    }
}

#[test]
fn every_dependency_is_used() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let uses = |texts: &[String], dep: &str| {
        let id = dep.replace('-', "_");
        let marks = [format!("{id}::"), format!("use {id}"), format!("{id}!(")];
        texts
            .iter()
            .any(|t| marks.iter().any(|m| t.contains(m.as_str())))
    };
    let mut src = Vec::new();
    rust_files_under(&root.join("src"), &mut src);
    let mut all = src.clone();
    rust_files_under(&root.join("tests"), &mut all);
    rust_files_under(&root.join("benches"), &mut all);
    let unused: Vec<String> = cargo_table(&manifest, "[dependencies]")
        .into_iter()
        .filter(|d| !uses(&src, d))
        .map(|d| format!("[dependencies] {d}: nothing under src/ uses it"))
        .chain(
            cargo_table(&manifest, "[dev-dependencies]")
                .into_iter()
                .filter(|d| d != "orchestrator" && !uses(&all, d))
                .map(|d| format!("[dev-dependencies] {d}: no test or bench uses it")),
        )
        .collect();
    // The detector sees a use and the lack of one.
    assert!(cargo_table(&manifest, "[dependencies]").len() > 10);
    assert!(uses(&src, "serde-json") && !uses(&src, "no-such-crate"));
    assert_eq!(
        cargo_table(
            "[dependencies]\na = \"1\"\n# c\nb-c = { version = \"2\" }\n[x]\nd = 1",
            "[dependencies]"
        ),
        ["a", "b-c"]
    );
    assert_none("a dependency nothing uses is removed", unused);
}
