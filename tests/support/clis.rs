//! The real agent CLIs (B-14): where `.ci/run` installed them
//! (`tests/clis/node_modules`, pinned by `tests/clis/package-lock.json`),
//! the command templates the README documents, and the environment that
//! points them at the loopback model doubles (`model_api.rs`).
//!
//! A test that needs a CLI calls [`claude`] or [`codex`]: `None` means not
//! installed, and the test returns after a loud message, unless `CI` is set,
//! where a missing CLI fails the test (CI installs them; a silent pass
//! there would prove nothing).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The versions `tests/clis/package.json` pins.
pub const CLAUDE_VERSION: &str = "2.1.328";
pub const CODEX_VERSION: &str = "0.171.0";

/// The model the tests configure for every role; the doubles echo it.
pub const CLAUDE_MODEL: &str = "claude-sonnet-4-5";
pub const CODEX_MODEL: &str = "gpt-5-codex";

pub fn node_modules() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clis/node_modules")
}

/// The Claude Code command of the README, with the CLI's absolute path
/// (the daemon's PATH need not name it). The prompt comes on stdin: a
/// prompt is never one argv element (the 128 KiB limit of one argument).
pub fn claude_command(bin: &Path) -> String {
    format!(
        "'{}' -p --output-format stream-json --verbose ${{ORCH_MODEL:+--model \"$ORCH_MODEL\"}} \
         --permission-mode acceptEdits --allowedTools 'Bash Edit Write Read Glob Grep' \
         < \"$ORCH_PROMPT_FILE\"",
        bin.display()
    )
}

/// The Codex command of the README (prompt on stdin: the `-` argument),
/// plus a `model_providers` entry naming the double (`base_url` is the
/// double's root + `/v1`). Codex's own sandbox is off: the daemon confines
/// the agent with Landlock already, and Codex's sandbox cannot nest inside
/// it (ADR 0012).
/// `CODEX_SANDBOX_FLAGS` replaces the sandbox flags, to measure another
/// setting again (ADR 0012 records what `workspace-write` does).
pub fn codex_command(bin: &Path, base_url: &str) -> String {
    let sandbox = std::env::var("CODEX_SANDBOX_FLAGS")
        .unwrap_or_else(|_| "--dangerously-bypass-approvals-and-sandbox".into());
    format!(
        "'{}' exec --json --skip-git-repo-check {sandbox} \
         ${{ORCH_MODEL:+-m \"$ORCH_MODEL\"}} \
         -c 'model_providers.double={{name=\"double\",base_url=\"{base_url}/v1\",wire_api=\"responses\",env_key=\"OPENAI_API_KEY\"}}' \
         -c model_provider=double - < \"$ORCH_PROMPT_FILE\"",
        bin.display()
    )
}

/// What the agents need in the daemon's environment (agents inherit it,
/// less the daemon's secrets): the double's address and a dummy key, no
/// auto-update, no telemetry, no other traffic.
pub fn env(base_url: &str) -> Vec<(String, String)> {
    [
        ("ANTHROPIC_BASE_URL", base_url),
        ("ANTHROPIC_API_KEY", "sk-ant-test-double"),
        ("OPENAI_API_KEY", "sk-test-double"),
        ("DISABLE_AUTOUPDATER", "1"),
        ("DISABLE_TELEMETRY", "1"),
        ("DISABLE_ERROR_REPORTING", "1"),
        ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
        ("CODEX_DISABLE_UPDATE_CHECK", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The native Claude Code binary. npm 11 does not run the package's
/// postinstall (`allowScripts`), which would replace `.bin/claude` (a stub
/// until then) with it, so the platform package's binary is taken first.
pub fn claude() -> Option<PathBuf> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "x64",
        "aarch64" => "arm64",
        other => other,
    };
    let nm = node_modules();
    let candidates = [
        nm.join(format!("@anthropic-ai/claude-code-linux-{arch}/claude")),
        nm.join(format!(
            "@anthropic-ai/claude-code-linux-{arch}-musl/claude"
        )),
        nm.join(".bin/claude"),
    ];
    found("Claude Code", CLAUDE_VERSION, &candidates)
}

/// Codex's launcher (`codex.js` picks the platform binary; node runs it).
pub fn codex() -> Option<PathBuf> {
    found(
        "Codex CLI",
        CODEX_VERSION,
        &[node_modules().join(".bin/codex")],
    )
}

fn found(name: &str, version: &str, candidates: &[PathBuf]) -> Option<PathBuf> {
    for c in candidates {
        let Ok(out) = Command::new(c).arg("--version").output() else {
            continue;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        if out.status.success() && text.contains(version) {
            return Some(c.clone());
        }
    }
    let msg = format!(
        "\n\n!!!!! {name} {version} is not installed (looked at {candidates:?}).\n\
         !!!!! Install it with: (cd tests/clis && npm ci)   (.ci/run does)\n"
    );
    if std::env::var_os("CI").is_some() {
        panic!("{msg}!!!!! CI is set: a test that runs no CLI proves nothing; failing.\n");
    }
    // Straight to the stream, not eprintln!: libtest hides a passing test's
    // captured output, and this skip must be seen.
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{msg}!!!!! SKIPPED (CI is not set).\n");
    None
}
