//! Prompt files (F-12): a role template plus the task's context (title,
//! description, earlier artifacts, a rejection reason or review findings).
//! The verdict lines each role must end with come from the agent contract.

use std::collections::BTreeMap;

/// What one role must produce. Greppable, one row per role.
pub struct RoleContract {
    pub role: &'static str,
    pub task: &'static str,
    pub artifact: &'static str,
    pub verdict: &'static str,
}

pub const ROLES: &[RoleContract] = &[
    RoleContract {
        role: "analyst",
        task: "Write the business requirements (BRD) for this work item: goal, scope, acceptance criteria, open questions.",
        artifact: "01-brd.md",
        verdict: "status: READY   (or `status: NEEDS_INPUT` when you need answers from a person; list the questions)",
    },
    RoleContract {
        role: "architect",
        task: "Decide how to build it and record the decision as an ADR: context, decision, consequences, the files to change.",
        artifact: "06-adr/ADR-001-<short-name>.md",
        verdict: "status: READY",
    },
    RoleContract {
        role: "developer",
        task: "Implement the change in this repository with tests. Change code outside the artifact dir; do not commit or push: the orchestrator does.",
        artifact: "(the code itself)",
        verdict: "(none: the gate checks that files outside the artifact dir changed)",
    },
    RoleContract {
        role: "reviewer",
        task: "Review the branch against the BRD and ADR: correctness, tests, risks. List findings the developer must fix.",
        artifact: "11-review.md",
        verdict: "verdict: APPROVE   (or `verdict: REQUEST_CHANGES`)",
    },
    RoleContract {
        role: "tester",
        task: "Run the project's tests and check the acceptance criteria. Report what ran and what failed.",
        artifact: "13-test-report.md",
        verdict: "result: PASS|FAIL\nstatus: PASS|FAIL   (must agree with result)\ntests_run: <number>",
    },
    RoleContract {
        role: "deployer",
        task: "Deploy the branch to staging, run the staging suite and report.",
        artifact: "14-staging-report.md",
        verdict: "staging_status: SUCCESS|FAILURE",
    },
];

/// The deployer at the deploy stage deploys to production (F-23) when the
/// project has no `deploy_command`; at deploy-staging it deploys to staging.
pub const PRODUCTION_DEPLOYER: RoleContract = RoleContract {
    role: "deployer",
    task: "The branch is merged into the default branch. Deploy the default branch to PRODUCTION with the project's usual procedure, check that the service is healthy, and report what you did. Deploy only this commit, once; if anything fails, stop and report FAILURE: do not retry blindly.",
    artifact: "15-deploy-report.md",
    verdict: "deploy_status: SUCCESS|FAILURE",
};

pub fn contract(role: &str) -> Option<&'static RoleContract> {
    ROLES.iter().find(|r| r.role == role)
}

/// The contract of `role` at `stage` (the deployer has two).
pub fn contract_at(role: &str, stage: &str) -> Option<&'static RoleContract> {
    if role == "deployer" && stage == crate::domain::Stage::Deploy.as_str() {
        return Some(&PRODUCTION_DEPLOYER);
    }
    contract(role)
}

pub struct PromptInput<'a> {
    pub role: &'a str,
    pub stage: &'a str,
    pub work_item: &'a str,
    pub title: &'a str,
    pub description: &'a str,
    /// `docs/work-items/<work item>/`, relative to the worktree.
    pub artifact_dir: &'a str,
    /// Artifacts already written (path in the artifact dir → text).
    pub artifacts: &'a BTreeMap<String, String>,
    /// Why this run happens again: a rejection reason, review findings, a
    /// failed gate's reason. Empty on a first run.
    pub feedback: &'a str,
    pub attempt: i64,
}

/// Earlier artifacts are quoted up to this many bytes each.
const QUOTE_LIMIT: usize = 8 * 1024;

fn quote(text: &str) -> String {
    if text.len() <= QUOTE_LIMIT {
        return text.to_string();
    }
    let mut cut = QUOTE_LIMIT;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(
        "{}\n… (truncated; read the file for the rest)",
        &text[..cut]
    )
}

/// Strip tags from tracker HTML (descriptions, comments) for a prompt.
pub fn strip_html(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                out.push(' ');
            }
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    let decoded = out
        .replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&");
    decoded.split_whitespace().collect::<Vec<_>>().join(" ")
}

pub fn compose(p: &PromptInput<'_>) -> String {
    let mut s = String::new();
    let c = contract_at(p.role, p.stage);
    s.push_str(&format!(
        "# You are the {} of work item {}\n\n",
        p.role, p.work_item
    ));
    s.push_str(&format!(
        "## Work item\n\n**{}**\n\n{}\n\n",
        p.title.trim(),
        strip_html(p.description)
    ));
    if let Some(c) = c {
        s.push_str(&format!(
            "## Your task ({} stage)\n\n{}\n\n",
            p.stage, c.task
        ));
        s.push_str(&format!(
            "## Your artifact\n\nWrite `{}{}` (the directory is in $ORCH_ARTIFACT_DIR). End it with these machine-verdict lines, each alone on its line:\n\n```\n{}\n```\n\n",
            p.artifact_dir, c.artifact, c.verdict
        ));
    }
    if !p.feedback.trim().is_empty() {
        s.push_str(&format!(
            "## Why you run again (attempt {})\n\n{}\n\nAddress every point above.\n\n",
            p.attempt,
            p.feedback.trim()
        ));
    }
    if !p.artifacts.is_empty() {
        s.push_str("## Earlier artifacts\n\n");
        for (name, text) in p.artifacts {
            s.push_str(&format!(
                "### {}{}\n\n{}\n\n",
                p.artifact_dir,
                name,
                quote(text)
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stage_role_has_a_contract() {
        for spec in crate::domain::STAGE_TRANSITIONS {
            if let Some(role) = spec.role {
                assert!(contract(role).is_some(), "{role} has no contract");
            }
        }
    }

    #[test]
    fn prompt_carries_context_feedback_and_verdict_lines() {
        let mut arts = BTreeMap::new();
        arts.insert(
            "01-brd.md".to_string(),
            "The BRD.\nstatus: READY".to_string(),
        );
        let p = compose(&PromptInput {
            role: "developer",
            stage: "development",
            work_item: "DEMO-1",
            title: "Add STOP",
            description: "<p>Cancel a task &amp; clean up.</p>",
            artifact_dir: "docs/work-items/DEMO-1/",
            artifacts: &arts,
            feedback: "reviewer: handle the empty list",
            attempt: 2,
        });
        assert!(p.contains("Cancel a task & clean up."), "{p}");
        assert!(p.contains("reviewer: handle the empty list"));
        assert!(p.contains("docs/work-items/DEMO-1/01-brd.md"));
        let t = compose(&PromptInput {
            role: "tester",
            feedback: "",
            attempt: 1,
            ..PromptInputDefaults::get(&arts)
        });
        assert!(t.contains("tests_run: <number>") && !t.contains("Why you run again"));
    }

    struct PromptInputDefaults;
    impl PromptInputDefaults {
        fn get(arts: &BTreeMap<String, String>) -> PromptInput<'_> {
            PromptInput {
                role: "analyst",
                stage: "testing",
                work_item: "DEMO-1",
                title: "t",
                description: "",
                artifact_dir: "docs/work-items/DEMO-1/",
                artifacts: arts,
                feedback: "",
                attempt: 1,
            }
        }
    }

    #[test]
    fn the_deployer_at_deploy_reports_the_production_verdict() {
        let arts = BTreeMap::new();
        let staging = compose(&PromptInput {
            role: "deployer",
            stage: "deploy-staging",
            ..PromptInputDefaults::get(&arts)
        });
        let prod = compose(&PromptInput {
            role: "deployer",
            stage: "deploy",
            ..PromptInputDefaults::get(&arts)
        });
        assert!(
            staging.contains("staging_status: SUCCESS|FAILURE")
                && !staging.contains("deploy_status")
        );
        assert!(
            prod.contains("15-deploy-report.md") && prod.contains("deploy_status: SUCCESS|FAILURE")
        );
        assert!(prod.contains("PRODUCTION") && !prod.contains("staging_status"));
    }

    #[test]
    fn long_artifacts_are_truncated_on_a_char_boundary() {
        let long = "é".repeat(QUOTE_LIMIT);
        let q = quote(&long);
        assert!(q.len() < long.len() && q.ends_with("for the rest)"));
    }
}
