//! Quality gates (QG_CHECKS): a registry from gate id to a pure check over a
//! task's artifacts. A check answers pass, fail with a reason, or pending
//! (not decidable yet: no artifact, no human answer). No I/O here: the stage
//! engine loads a [`GateInput`] and asks.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::verdict::{VerdictError, VerdictLines};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateId {
    TaskPrepared,
    BrdApproved,
    AdrReady,
    CodeChanged,
    ReviewApproved,
    TestsPassed,
    StagingPassed,
    DeployConfirmed,
}

pub const BRD: &str = "01-brd.md";
pub const ADR_DIR: &str = "06-adr/";
pub const REVIEW: &str = "11-review.md";
pub const TEST_REPORT: &str = "13-test-report.md";
pub const STAGING_REPORT: &str = "14-staging-report.md";
pub const DEPLOY_REPORT: &str = "15-deploy-report.md";
/// The reason staging waits on: the pipeline queues the merge gate on it.
pub const MERGE_GATE_PENDING: &str = "staging passed; waiting for the merge gate";

/// What a gate may look at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GateInput {
    /// Artifact files by path relative to the artifact dir (`01-brd.md`,
    /// `06-adr/ADR-001-x.md`, ...).
    pub artifacts: BTreeMap<String, String>,
    /// Artifact entries that were refused, not read (invariant 8: a
    /// symlink, a FIFO, a directory in a file's place, over the size cap, a
    /// timed-out read), by the same relative path (`.` = the artifact dir
    /// itself), with the reason naming the file. A gate that needs one fails.
    pub refused: BTreeMap<String, String>,
    /// A person set Approved after the BRD (F-02).
    pub approved: bool,
    /// A person set Confirm Deploy (F-23).
    pub deploy_confirmed: bool,
    /// The branch changes files outside the artifact dir; `None` = unknown yet.
    pub code_changed: Option<bool>,
    /// The merge gate (F-18) at the task's current stage version. The
    /// daemon's inputs always set it from the task row; `NotRequired` is for
    /// inputs that model staging alone (tests, the simulation).
    pub merge_gate: MergeGate,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MergeGate {
    #[default]
    NotRequired,
    /// Not passed at this version yet.
    Pending,
    Passed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", content = "reason", rename_all = "snake_case")]
pub enum GateVerdict {
    Pass,
    Fail(String),
    Pending(String),
}

/// One entry of the registry.
pub struct GateCheck {
    pub id: GateId,
    pub name: &'static str,
    pub check: fn(&GateInput) -> GateVerdict,
}

/// QG_CHECKS: every gate, greppable, in one table.
pub const QG_CHECKS: &[GateCheck] = &[
    GateCheck {
        id: GateId::TaskPrepared,
        name: "task_prepared",
        check: check_task_prepared,
    },
    GateCheck {
        id: GateId::BrdApproved,
        name: "brd_approved",
        check: check_brd_approved,
    },
    GateCheck {
        id: GateId::AdrReady,
        name: "adr_ready",
        check: check_adr_ready,
    },
    GateCheck {
        id: GateId::CodeChanged,
        name: "code_changed",
        check: check_code_changed,
    },
    GateCheck {
        id: GateId::ReviewApproved,
        name: "review_approved",
        check: check_review_approved,
    },
    GateCheck {
        id: GateId::TestsPassed,
        name: "tests_passed",
        check: check_tests_passed,
    },
    GateCheck {
        id: GateId::StagingPassed,
        name: "staging_passed",
        check: check_staging_passed,
    },
    GateCheck {
        id: GateId::DeployConfirmed,
        name: "deploy_confirmed",
        check: check_deploy_confirmed,
    },
];

impl GateId {
    pub fn entry(self) -> &'static GateCheck {
        QG_CHECKS
            .iter()
            .find(|g| g.id == self)
            .expect("every GateId has a QG_CHECKS row (pinned by a test)")
    }

    pub fn evaluate(self, input: &GateInput) -> GateVerdict {
        (self.entry().check)(input)
    }

    pub fn name(self) -> &'static str {
        self.entry().name
    }
}

fn verdict_of<'a>(
    lines: &'a VerdictLines,
    key: &'static str,
    file: &str,
) -> Result<&'a str, GateVerdict> {
    lines.get(key).map_err(|e| match e {
        VerdictError::Missing(_) => GateVerdict::Fail(format!("{file}: {e}")),
        VerdictError::Contradictory { .. } => GateVerdict::Fail(format!("{file}: {e}")),
    })
}

/// Fail when what `path` needs was refused: the file itself, a directory
/// on its way, the artifact dir (`.`), or (for a directory path ending in
/// `/`) anything below it.
fn refused(input: &GateInput, path: &str) -> Result<(), GateVerdict> {
    let hit = input.refused.iter().find(|(k, _)| {
        let k = k.as_str();
        k == "."
            || k == path
            || path
                .strip_prefix(k)
                .is_some_and(|rest| rest.starts_with('/'))
            || (path.ends_with('/') && k.starts_with(path))
    });
    match hit {
        Some((_, why)) => Err(GateVerdict::Fail(format!(
            "artifact refused: {why}; write it as a regular file"
        ))),
        None => Ok(()),
    }
}

/// Read one artifact's verdict lines, or say why the gate cannot pass.
fn artifact(input: &GateInput, file: &str) -> Result<VerdictLines, GateVerdict> {
    refused(input, file)?;
    match input.artifacts.get(file) {
        None => Err(GateVerdict::Pending(format!("{file} not written yet"))),
        Some(text) => Ok(VerdictLines::parse(text)),
    }
}

fn check_task_prepared(_: &GateInput) -> GateVerdict {
    GateVerdict::Pass
}

fn check_brd_approved(input: &GateInput) -> GateVerdict {
    let lines = match artifact(input, BRD) {
        Ok(l) => l,
        Err(v) => return v,
    };
    match verdict_of(&lines, "status", BRD) {
        Err(v) => v,
        Ok("READY") if input.approved => GateVerdict::Pass,
        Ok("READY") => GateVerdict::Pending("BRD ready, waiting for Approved".into()),
        Ok("NEEDS_INPUT") => GateVerdict::Fail("analyst needs input".into()),
        Ok(other) => GateVerdict::Fail(format!("{BRD}: unknown status {other}")),
    }
}

fn check_adr_ready(input: &GateInput) -> GateVerdict {
    if let Err(v) = refused(input, ADR_DIR) {
        return v;
    }
    let adrs: Vec<(&String, &String)> = input
        .artifacts
        .iter()
        .filter(|(k, _)| k.starts_with(ADR_DIR) && k.ends_with(".md"))
        .collect();
    if adrs.is_empty() {
        return GateVerdict::Pending("no ADR written yet".into());
    }
    for (name, text) in adrs {
        match VerdictLines::parse(text).get("status") {
            Ok("READY") => {}
            Ok(other) => return GateVerdict::Fail(format!("{name}: status {other}, not READY")),
            Err(e) => return GateVerdict::Fail(format!("{name}: {e}")),
        }
    }
    GateVerdict::Pass
}

fn check_code_changed(input: &GateInput) -> GateVerdict {
    match input.code_changed {
        Some(true) => GateVerdict::Pass,
        Some(false) => {
            GateVerdict::Fail("the branch changes no file outside the artifact dir".into())
        }
        None => GateVerdict::Pending("branch diff not known yet".into()),
    }
}

fn check_review_approved(input: &GateInput) -> GateVerdict {
    let lines = match artifact(input, REVIEW) {
        Ok(l) => l,
        Err(v) => return v,
    };
    match verdict_of(&lines, "verdict", REVIEW) {
        Err(v) => v,
        Ok("APPROVE" | "APPROVED") => GateVerdict::Pass,
        Ok("REQUEST_CHANGES") => GateVerdict::Fail("reviewer requested changes".into()),
        Ok(other) => GateVerdict::Fail(format!("{REVIEW}: unknown verdict {other}")),
    }
}

const PASS_WORDS: &[&str] = &["PASS", "PASSED", "SUCCESS", "OK", "GREEN"];
const FAIL_WORDS: &[&str] = &["FAIL", "FAILED", "FAILURE", "RED", "ERROR"];

/// The tester's three fields must agree (seed 001): `result`, `status` and
/// `tests_run`. Disagreement fails closed with the reason spelled out.
fn check_tests_passed(input: &GateInput) -> GateVerdict {
    let lines = match artifact(input, TEST_REPORT) {
        Ok(l) => l,
        Err(v) => return v,
    };
    let result = match verdict_of(&lines, "result", TEST_REPORT) {
        Ok(r) => r,
        Err(v) => return v,
    };
    let status = match verdict_of(&lines, "status", TEST_REPORT) {
        Ok(s) => s,
        Err(v) => return v,
    };
    let tests_run = match verdict_of(&lines, "tests_run", TEST_REPORT) {
        Ok(n) => match n.parse::<u64>() {
            Ok(n) => n,
            Err(_) => {
                return GateVerdict::Fail(format!("{TEST_REPORT}: tests_run {n} is not a count"));
            }
        },
        Err(v) => return v,
    };
    let result_pass = match result {
        "PASS" => true,
        "FAIL" => false,
        other => return GateVerdict::Fail(format!("{TEST_REPORT}: unknown result {other}")),
    };
    let status_pass = if PASS_WORDS.contains(&status) {
        true
    } else if FAIL_WORDS.contains(&status) {
        false
    } else {
        return GateVerdict::Fail(format!("{TEST_REPORT}: unknown status {status}"));
    };
    match (result_pass, status_pass) {
        (true, true) if tests_run > 0 => GateVerdict::Pass,
        (true, true) => GateVerdict::Fail(format!("{TEST_REPORT}: result PASS but tests_run 0")),
        (false, false) => GateVerdict::Fail("tests failed".into()),
        _ => GateVerdict::Fail(format!(
            "{TEST_REPORT}: contradictory verdict (result {result}, status {status})"
        )),
    }
}

fn check_staging_passed(input: &GateInput) -> GateVerdict {
    let lines = match artifact(input, STAGING_REPORT) {
        Ok(l) => l,
        Err(v) => return v,
    };
    match verdict_of(&lines, "staging_status", STAGING_REPORT) {
        Err(v) => v,
        Ok("SUCCESS") if input.merge_gate == MergeGate::Pending => {
            GateVerdict::Pending(MERGE_GATE_PENDING.into())
        }
        Ok("SUCCESS") => GateVerdict::Pass,
        Ok("FAILURE") => GateVerdict::Fail("staging failed".into()),
        Ok(other) => GateVerdict::Fail(format!("{STAGING_REPORT}: unknown staging_status {other}")),
    }
}

/// Leaving `deploy` needs the person's Confirm Deploy; the merge and the
/// production deploy are the transition's effects, run by the finalizer.
fn check_deploy_confirmed(input: &GateInput) -> GateVerdict {
    if input.deploy_confirmed {
        GateVerdict::Pass
    } else {
        GateVerdict::Pending("waiting for Confirm Deploy".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::stage::{STAGE_TRANSITIONS, Stage};

    fn with(file: &str, text: &str) -> GateInput {
        let mut i = GateInput::default();
        i.artifacts.insert(file.to_string(), text.to_string());
        i
    }

    fn is_fail(v: &GateVerdict) -> bool {
        matches!(v, GateVerdict::Fail(_))
    }

    #[test]
    fn registry_covers_every_gate_of_the_table() {
        for spec in STAGE_TRANSITIONS {
            if let Some(g) = spec.gate {
                assert_eq!(g.entry().id, g);
            }
        }
        let mut names: Vec<_> = QG_CHECKS.iter().map(|g| g.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), QG_CHECKS.len(), "gate names are unique");
        assert!(Stage::ALL.iter().filter_map(|s| s.spec().gate).count() == QG_CHECKS.len());
    }

    #[test]
    fn brd_good_pending_needs_input_missing_malformed_contradictory() {
        let ready = "# BRD\n\nstatus: READY\n";
        let mut approved = with(BRD, ready);
        approved.approved = true;
        assert_eq!(GateId::BrdApproved.evaluate(&approved), GateVerdict::Pass);
        assert!(matches!(
            GateId::BrdApproved.evaluate(&with(BRD, ready)),
            GateVerdict::Pending(_)
        ));
        assert!(is_fail(
            &GateId::BrdApproved.evaluate(&with(BRD, "status: NEEDS_INPUT"))
        ));
        assert!(matches!(
            GateId::BrdApproved.evaluate(&GateInput::default()),
            GateVerdict::Pending(_)
        ));
        assert!(is_fail(
            &GateId::BrdApproved.evaluate(&with(BRD, "no verdict here"))
        ));
        assert!(is_fail(
            &GateId::BrdApproved.evaluate(&with(BRD, "status: READY\nstatus: NEEDS_INPUT"))
        ));
    }

    #[test]
    fn adr_gate() {
        let good = with("06-adr/ADR-001-x.md", "status: READY");
        assert_eq!(GateId::AdrReady.evaluate(&good), GateVerdict::Pass);
        assert!(matches!(
            GateId::AdrReady.evaluate(&GateInput::default()),
            GateVerdict::Pending(_)
        ));
        assert!(is_fail(
            &GateId::AdrReady.evaluate(&with("06-adr/ADR-001-x.md", "status: DRAFT"))
        ));
        assert!(is_fail(
            &GateId::AdrReady.evaluate(&with("06-adr/ADR-001-x.md", "text"))
        ));
    }

    #[test]
    fn review_gate() {
        assert_eq!(
            GateId::ReviewApproved.evaluate(&with(REVIEW, "verdict: APPROVE")),
            GateVerdict::Pass
        );
        assert!(is_fail(
            &GateId::ReviewApproved.evaluate(&with(REVIEW, "verdict: REQUEST_CHANGES"))
        ));
        assert!(matches!(
            GateId::ReviewApproved.evaluate(&GateInput::default()),
            GateVerdict::Pending(_)
        ));
        assert!(is_fail(
            &GateId::ReviewApproved.evaluate(&with(REVIEW, "looks fine"))
        ));
        assert!(is_fail(&GateId::ReviewApproved.evaluate(&with(
            REVIEW,
            "verdict: APPROVE\nverdict: REQUEST_CHANGES"
        ))));
    }

    #[test]
    fn tests_gate_three_fields_must_agree() {
        let pass = "## Summary\nAll good.\n\nresult: PASS\nstatus: PASS\ntests_run: 42\n";
        assert_eq!(
            GateId::TestsPassed.evaluate(&with(TEST_REPORT, pass)),
            GateVerdict::Pass
        );
        // Decorated PASS lines are still PASS, never FAIL.
        let decorated = "- **result:** `PASS`\n- **status:** passed\n- **tests_run:** 7\n";
        assert_eq!(
            GateId::TestsPassed.evaluate(&with(TEST_REPORT, decorated)),
            GateVerdict::Pass
        );
        // Prose that mentions failures does not flip a PASS.
        let prose = "0 tests FAILED, none errored.\nresult: PASS\nstatus: SUCCESS\ntests_run: 3\n";
        assert_eq!(
            GateId::TestsPassed.evaluate(&with(TEST_REPORT, prose)),
            GateVerdict::Pass
        );
        let fail = "result: FAIL\nstatus: FAIL\ntests_run: 3\n";
        assert_eq!(
            GateId::TestsPassed.evaluate(&with(TEST_REPORT, fail)),
            GateVerdict::Fail("tests failed".into())
        );
        assert!(matches!(
            GateId::TestsPassed.evaluate(&GateInput::default()),
            GateVerdict::Pending(_)
        ));
        for bad in [
            "result: PASS\nstatus: FAIL\ntests_run: 3\n",
            "result: PASS\nstatus: PASS\ntests_run: 0\n",
            "result: PASS\ntests_run: 3\n",
            "result: PASS\nstatus: PASS\ntests_run: many\n",
            "result: MAYBE\nstatus: PASS\ntests_run: 3\n",
            "result: PASS\nresult: FAIL\nstatus: PASS\ntests_run: 3\n",
        ] {
            assert!(
                is_fail(&GateId::TestsPassed.evaluate(&with(TEST_REPORT, bad))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn staging_and_deploy_gates() {
        assert_eq!(
            GateId::StagingPassed.evaluate(&with(STAGING_REPORT, "staging_status: SUCCESS")),
            GateVerdict::Pass
        );
        assert!(is_fail(
            &GateId::StagingPassed.evaluate(&with(STAGING_REPORT, "staging_status: FAILURE"))
        ));
        assert!(is_fail(
            &GateId::StagingPassed.evaluate(&with(STAGING_REPORT, "done"))
        ));
        assert!(matches!(
            GateId::DeployConfirmed.evaluate(&GateInput::default()),
            GateVerdict::Pending(_)
        ));
        let confirmed = GateInput {
            deploy_confirmed: true,
            ..Default::default()
        };
        assert_eq!(
            GateId::DeployConfirmed.evaluate(&confirmed),
            GateVerdict::Pass
        );
    }

    #[test]
    fn staging_waits_for_the_merge_gate_when_required() {
        let mut i = with(STAGING_REPORT, "staging_status: SUCCESS");
        i.merge_gate = MergeGate::Pending;
        assert_eq!(
            GateId::StagingPassed.evaluate(&i),
            GateVerdict::Pending(MERGE_GATE_PENDING.into())
        );
        i.merge_gate = MergeGate::Passed;
        assert_eq!(GateId::StagingPassed.evaluate(&i), GateVerdict::Pass);
        let mut failed = with(STAGING_REPORT, "staging_status: FAILURE");
        failed.merge_gate = MergeGate::Pending;
        assert!(
            is_fail(&GateId::StagingPassed.evaluate(&failed)),
            "a failed staging never waits"
        );
    }

    #[test]
    fn a_refused_artifact_fails_the_gates_that_need_it() {
        let why =
            "docs/work-items/W-1/01-brd.md is a symlink (an agent's symlink is never followed)";
        let mut i = with(REVIEW, "verdict: APPROVE");
        i.approved = true;
        i.refused.insert(BRD.into(), why.into());
        match GateId::BrdApproved.evaluate(&i) {
            GateVerdict::Fail(r) => assert!(r.contains(why), "{r}"),
            other => panic!("{other:?}"),
        }
        // Another artifact's gate is not concerned.
        assert_eq!(GateId::ReviewApproved.evaluate(&i), GateVerdict::Pass);
        // A refused ADR, or the refused ADR dir, fails the ADR gate.
        for key in ["06-adr/ADR-002-x.md", "06-adr"] {
            let mut a = with("06-adr/ADR-001-x.md", "status: READY");
            a.refused.insert(key.into(), format!("{key} is a FIFO"));
            assert!(is_fail(&GateId::AdrReady.evaluate(&a)), "{key}");
        }
        // The artifact dir itself refused: every artifact gate fails.
        let mut all = with(REVIEW, "verdict: APPROVE");
        all.refused
            .insert(".".into(), "docs/work-items/W-1 timed out".into());
        for g in [
            GateId::BrdApproved,
            GateId::AdrReady,
            GateId::ReviewApproved,
        ] {
            assert!(is_fail(&g.evaluate(&all)), "{g:?}");
        }
        // A similar name is no prefix.
        let mut near = with(TEST_REPORT, "result: PASS\nstatus: PASS\ntests_run: 1");
        near.refused
            .insert("13-test".into(), "13-test is a FIFO".into());
        assert_eq!(GateId::TestsPassed.evaluate(&near), GateVerdict::Pass);
    }

    #[test]
    fn code_changed_gate() {
        let mut i = GateInput::default();
        assert!(matches!(
            GateId::CodeChanged.evaluate(&i),
            GateVerdict::Pending(_)
        ));
        i.code_changed = Some(false);
        assert!(is_fail(&GateId::CodeChanged.evaluate(&i)));
        i.code_changed = Some(true);
        assert_eq!(GateId::CodeChanged.evaluate(&i), GateVerdict::Pass);
    }
}
