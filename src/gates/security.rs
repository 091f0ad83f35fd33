//! The security gate (F-19, seed 002): the project's `security_command`
//! (a dependency audit, a static analyser, a secret scanner) runs in the
//! merge gate after the re-test passed, on the very head that will be
//! merged, in its own process group with the re-test's timeout. Findings
//! (a non-zero exit) roll the task back to development with the scanner's
//! last lines in the developer's next prompt; a tool error (the scanner
//! missing, killed, timed out, or fighting over a lock) is infra and retries
//! in place like a re-test timeout. No command configured → no gate.

use std::path::Path;

use super::merge_gate::{Class, LOCK_MARKERS, run_in_group};
use crate::agents::runtime::Runtime;
use crate::config::Project;
use crate::db::jobs::JobRow;
use crate::proc_group::{self, Ended};

/// Lines of the scanner's output the developer gets.
const FINDINGS_TAIL_LINES: usize = 30;

/// Run the scan; `None` when it is clean or not configured (the caller's
/// pass stands), otherwise the class that overrides it.
pub async fn scan(
    rt: &Runtime,
    project: &Project,
    job: &JobRow,
    wt: &Path,
    work_item: &str,
) -> Option<Class> {
    let command = project.security_command.trim();
    if command.is_empty() {
        return None;
    }
    let class = match run_in_group(rt, job, &project.name, wt, work_item, command).await {
        Ok(o) => classify(command, o.ended, &o.output),
        Err(e) => Some(Class::Other(format!(
            "the security scan could not start: {e}"
        ))),
    };
    match &class {
        None => tracing::info!(work_item, command, "security scan clean"),
        Some(c) => tracing::warn!(work_item, command, ?c, "security scan did not pass"),
    }
    class
}

/// Classify a finished scan (pure, for tests).
pub fn classify(command: &str, ended: Ended, output: &str) -> Option<Class> {
    match ended {
        Ended::Exited(0) => None,
        Ended::TimedOut => Some(Class::Timeout),
        _ if LOCK_MARKERS.iter().any(|m| output.contains(m)) => Some(Class::LockBusy(format!(
            "the security scan met a busy lock ({ended:?})"
        ))),
        Ended::Exited(126 | 127) | Ended::Signaled(_) | Ended::Exited(proc_group::EXIT_UNKNOWN) => {
            Some(Class::Other(format!(
                "the security scan `{command}` did not run properly ({ended:?})"
            )))
        }
        Ended::Exited(code) => {
            let lines: Vec<&str> = output.lines().collect();
            let tail = lines[lines.len().saturating_sub(FINDINGS_TAIL_LINES)..].join("\n");
            Some(Class::Insecure(format!(
                "the security scan `{command}` reported findings (exit {code}). Fix them before staging again:\n{tail}"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn findings_roll_back_and_tool_errors_are_infra() {
        assert_eq!(classify("audit", Ended::Exited(0), "ok"), None);
        let Some(Class::Insecure(why)) = classify(
            "audit",
            Ended::Exited(1),
            "scanning\nRUSTSEC-2024-0001: vulnerable crate foo 1.0",
        ) else {
            panic!("findings are a verdict on the code")
        };
        assert!(
            why.contains("RUSTSEC-2024-0001") && why.contains("exit 1"),
            "{why}"
        );
        assert_eq!(classify("audit", Ended::TimedOut, ""), Some(Class::Timeout));
        assert!(matches!(
            classify("audit", Ended::Exited(127), "sh: audit: not found"),
            Some(Class::Other(_))
        ));
        assert!(matches!(
            classify("audit", Ended::Signaled(9), ""),
            Some(Class::Other(_))
        ));
        assert!(matches!(
            classify(
                "audit",
                Ended::Exited(1),
                "error: could not acquire lock on advisory db"
            ),
            Some(Class::LockBusy(_))
        ));
    }

    #[test]
    fn only_the_tail_of_long_findings_is_kept() {
        let out: String = (0..100).map(|i| format!("finding {i}\n")).collect();
        let Some(Class::Insecure(why)) = classify("scan", Ended::Exited(2), &out) else {
            panic!()
        };
        assert!(
            why.contains("finding 99") && !why.contains("finding 69\n"),
            "{why}"
        );
    }
}
