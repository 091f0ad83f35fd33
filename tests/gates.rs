//! Issue 6: the merge gate (F-18), the deterministic tester (F-20) and the
//! staging command (F-22), with real git, real processes and scripted
//! agents. Tasks start at testing or deploy-staging through the real stages.

mod support;

use std::sync::atomic::Ordering;

use orchestrator::db::{jobs, tasks};
use orchestrator::domain::Stage;
use support::runtime::{Harness, sh};

/// Drive a fresh task to `stage` through the real pipeline. Tests that move
/// main do it while the task is at testing: the merge gate runs only after
/// staging, so it always sees the move.
async fn task_at(h: &Harness, wi: &str, stage: Stage) -> i64 {
    let id = h.task("demo", wi).await;
    tasks::set_approved(h.db.writer(), id).await.unwrap();
    h.rt.pipeline.advance(id, "test").await.unwrap();
    h.drive(&format!("{wi} at {stage}"), 60, || async {
        h.stage(id).await.order() >= stage.order()
    })
    .await;
    id
}

/// Put a commit on the remote default branch (someone else merged meanwhile).
fn advance_main(h: &Harness, file: &str, text: &str) {
    let seed = h.dir.path().join("demo-seed");
    sh(&seed, "git pull --quiet origin main");
    std::fs::create_dir_all(seed.join("src")).unwrap();
    std::fs::write(seed.join(file), text).unwrap();
    sh(
        &seed,
        &format!(
            "git add {file} && git -c user.name=t -c user.email=t@t commit --quiet -m main-moves && git push --quiet origin HEAD:main"
        ),
    );
}

fn procs_with(marker: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| {
            String::from_utf8_lossy(c)
                .replace('\0', " ")
                .contains(marker)
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_op_rebase_skips_the_retest() {
    // The re-test would fail, but main did not move: the tested HEAD already
    // contains it, so the re-test is skipped and the task reaches deploy.
    let h = Harness::new_with(&["demo"], "test_command = \"exit 1\"", &[]).await;
    let id = task_at(&h, "DEMO-1", Stage::Deploy).await;
    assert_eq!(h.stage(id).await, Stage::Deploy);
    assert_eq!(h.rt.merge_gate.skipped_retests.load(Ordering::Relaxed), 1);
    assert_eq!(h.rt.merge_gate.red.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn red_retest_rolls_back_to_development_with_the_reason() {
    let h = Harness::new_with(&["demo"], "test_command = \"echo 2 failed; exit 1\"", &[]).await;
    let id = task_at(&h, "DEMO-2", Stage::Testing).await;
    advance_main(&h, "src/other.txt", "someone else's change\n");
    h.drive("the rollback", 60, || async {
        jobs::for_task(h.db.reader(), id)
            .await
            .unwrap()
            .iter()
            .any(|j| j.role == "developer" && !j.context.is_empty())
    })
    .await;
    assert_eq!(h.rt.merge_gate.red.load(Ordering::Relaxed), 1);
    let hist = orchestrator::db::history::for_task(h.db.reader(), id)
        .await
        .unwrap();
    assert!(hist.iter().any(|r| r.from_stage == Stage::DeployStaging
        && r.to_stage == Stage::Development
        && r.actor == "merge-gate"));
    let dev = jobs::for_task(h.db.reader(), id)
        .await
        .unwrap()
        .into_iter()
        .rfind(|j| j.role == "developer")
        .unwrap();
    assert!(dev.context.contains("re-test failed"), "{:?}", dev.context);
    assert_eq!(
        orchestrator::db::merge_lease::holder(h.db.reader(), "demo")
            .await
            .unwrap(),
        None,
        "lease released on rollback"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflict_rolls_back_and_main_is_untouched() {
    let h = Harness::new_with(&["demo"], "test_command = \"true\"", &[]).await;
    let id = task_at(&h, "DEMO-3", Stage::Testing).await;
    advance_main(&h, "src/feature.txt", "a conflicting line on main\n");
    let main_before = sh(&h.dir.path().join("demo.git"), "git rev-parse main");
    h.drive("the conflict", 60, || async {
        h.rt.merge_gate.conflict.load(Ordering::Relaxed) == 1
    })
    .await;
    h.drive("development", 30, || async {
        h.stage(id).await.order() <= Stage::Development.order()
            || h.stage(id).await == Stage::Review
    })
    .await;
    assert_eq!(
        sh(&h.dir.path().join("demo.git"), "git rev-parse main"),
        main_before,
        "the gate never writes main"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn green_retest_after_a_real_rebase_reaches_deploy() {
    let h = Harness::new_with(
        &["demo"],
        "test_command = \"test -f src/feature.txt && test -f src/other.txt\"",
        &[],
    )
    .await;
    let id = task_at(&h, "DEMO-4", Stage::Testing).await;
    advance_main(&h, "src/other.txt", "unrelated\n");
    h.drive("deploy", 60, || async {
        h.stage(id).await == Stage::Deploy
    })
    .await;
    assert_eq!(h.rt.merge_gate.passed.load(Ordering::Relaxed), 1);
    assert_eq!(
        h.rt.merge_gate.skipped_retests.load(Ordering::Relaxed),
        0,
        "main moved: the re-test ran"
    );
    // The rebased branch on the remote contains main's new commit.
    let bare = h.dir.path().join("demo.git");
    sh(&bare, "git merge-base --is-ancestor main demo-4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retest_timeout_kills_the_group_retries_in_place_then_alerts_once() {
    let h = Harness::new_with(
        &["demo"],
        "test_command = \"sleep 987 & sleep 987 & wait\"",
        &[
            ("ORCH_MERGE_RETEST_TIMEOUT_S", "1"),
            ("ORCH_MERGE_GATE_INFRA_RETRIES", "1"),
        ],
    )
    .await;
    let id = task_at(&h, "DEMO-5", Stage::Testing).await;
    advance_main(&h, "src/other.txt", "x\n");
    h.drive("the hold", 60, || async {
        tasks::get(h.db.reader(), id)
            .await
            .unwrap()
            .unwrap()
            .hold_reason
            .is_some()
    })
    .await;
    assert_eq!(
        procs_with("sleep 987"),
        0,
        "the timed-out re-test left processes behind"
    );
    assert_eq!(h.rt.merge_gate.timeout.load(Ordering::Relaxed), 2);
    assert_eq!(
        h.stage(id).await,
        Stage::DeployStaging,
        "infra never rolls back"
    );
    let gates: Vec<_> = jobs::for_task(h.db.reader(), id)
        .await
        .unwrap()
        .into_iter()
        .filter(|j| j.role == "merge-gate")
        .collect();
    assert_eq!(gates.iter().map(|j| j.attempt).collect::<Vec<_>>(), [1, 2]);
    let alerts = h.notifier.alerts();
    assert_eq!(
        alerts
            .iter()
            .filter(|a| a.kind == "merge_gate_infra_exhausted")
            .count(),
        1,
        "{alerts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_findings_roll_back_with_the_findings_in_the_developer_prompt() {
    // F-19: the scan runs even when the re-test is skipped (main did not
    // move): staging never scanned this head.
    let h = Harness::new_with(
        &["demo"],
        "test_command = \"true\"\nsecurity_command = \"echo scanning; echo 'CVE-2026-0042 in left-pad 1.0'; exit 3\"",
        &[],
    )
    .await;
    let id = task_at(&h, "DEMO-6", Stage::Testing).await;
    h.drive("the rollback", 60, || async {
        jobs::for_task(h.db.reader(), id)
            .await
            .unwrap()
            .iter()
            .any(|j| j.role == "developer" && !j.context.is_empty())
    })
    .await;
    assert_eq!(h.rt.merge_gate.insecure.load(Ordering::Relaxed), 1);
    assert_eq!(h.rt.merge_gate.skipped_retests.load(Ordering::Relaxed), 1);
    let hist = orchestrator::db::history::for_task(h.db.reader(), id)
        .await
        .unwrap();
    assert!(hist.iter().any(|r| r.from_stage == Stage::DeployStaging
        && r.to_stage == Stage::Development
        && r.actor == "merge-gate"));
    let dev = jobs::for_task(h.db.reader(), id)
        .await
        .unwrap()
        .into_iter()
        .rfind(|j| j.role == "developer")
        .unwrap();
    assert!(
        dev.context.contains("CVE-2026-0042") && dev.context.contains("security scan"),
        "{:?}",
        dev.context
    );
    assert_eq!(
        orchestrator::db::merge_lease::holder(h.db.reader(), "demo")
            .await
            .unwrap(),
        None,
        "lease released on rollback"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_scan_passes_and_a_missing_scanner_is_infra_not_a_verdict() {
    // Clean: the scan ran on the rebased head and the task reaches deploy.
    let h = Harness::new_with(
        &["demo"],
        // The scan is confined like an agent (B-12): it writes where it may,
        // its own home.
        "test_command = \"true\"\nsecurity_command = \"git log --oneline -1 >> $HOME/security-scans.log\"",
        &[],
    )
    .await;
    let id = task_at(&h, "DEMO-7", Stage::Testing).await;
    advance_main(&h, "src/other.txt", "x\n");
    h.drive("deploy", 60, || async {
        h.stage(id).await == Stage::Deploy
    })
    .await;
    let log =
        h.rt.workspace
            .root()
            .join("agent-home/demo-7/security-scans.log");
    let scanned = std::fs::read_to_string(&log).unwrap();
    assert_eq!(scanned.lines().count(), 1, "{scanned}");
    assert_eq!(h.rt.merge_gate.insecure.load(Ordering::Relaxed), 0);

    // Missing scanner (exit 127): retried in place, then held; never rolled back.
    let h = Harness::new_with(
        &["demo"],
        "test_command = \"true\"\nsecurity_command = \"no-such-scanner-xyz --audit\"",
        &[("ORCH_MERGE_GATE_INFRA_RETRIES", "1")],
    )
    .await;
    let id = task_at(&h, "DEMO-8", Stage::Testing).await;
    h.drive("the hold", 60, || async {
        tasks::get(h.db.reader(), id)
            .await
            .unwrap()
            .unwrap()
            .hold_reason
            .is_some()
    })
    .await;
    assert_eq!(
        h.stage(id).await,
        Stage::DeployStaging,
        "infra never rolls back"
    );
    assert_eq!(h.rt.merge_gate.other.load(Ordering::Relaxed), 2);
    assert_eq!(h.rt.merge_gate.insecure.load(Ordering::Relaxed), 0);
    let hold = tasks::get(h.db.reader(), id)
        .await
        .unwrap()
        .unwrap()
        .hold_reason
        .unwrap();
    assert!(hold.contains("security scan"), "{hold}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deterministic_tester_pass_fail_and_tool_error() {
    // PASS: the real test command passes; the report is the runner's.
    let h = Harness::new_with(&["demo"], "deterministic_tester = true\ntest_command = \"echo 'test result: ok. 7 passed; 0 failed'\"", &[]).await;
    let id = task_at(&h, "DEMO-6", Stage::DeployStaging).await;
    let report = std::fs::read_to_string(
        h.rt.workspace
            .worktree_dir("DEMO-6")
            .join("docs/work-items/DEMO-6/13-test-report.md"),
    )
    .unwrap();
    assert!(
        report.contains("result: PASS") && report.contains("tests_run: 7"),
        "{report}"
    );
    assert!(
        report.contains("deterministic runner"),
        "no LLM tester wrote it: {report}"
    );
    let _ = id;

    // FAIL: the command fails → FAIL report → rollback to development.
    let h = Harness::new_with(
        &["demo"],
        "deterministic_tester = true\ntest_command = \"exit 3\"",
        &[],
    )
    .await;
    let id = task_at(&h, "DEMO-7", Stage::Testing).await;
    h.drive("the rollback", 60, || async {
        orchestrator::db::history::for_task(h.db.reader(), id)
            .await
            .unwrap()
            .iter()
            .any(|r| r.from_stage == Stage::Testing && r.to_stage == Stage::Development)
    })
    .await;

    // Tool error: command not found → no verdict, deferred and re-queued.
    let h = Harness::new_with(
        &["demo"],
        "deterministic_tester = true\ntest_command = \"no-such-tool-xyz\"",
        &[("ORCH_AGENT_MAX_ATTEMPTS", "2")],
    )
    .await;
    let id = task_at(&h, "DEMO-8", Stage::Testing).await;
    h.drive("two deferred runs", 60, || async {
        jobs::for_task(h.db.reader(), id)
            .await
            .unwrap()
            .iter()
            .filter(|j| j.role == "tester" && j.status == "failed")
            .count()
            == 2
    })
    .await;
    assert_eq!(
        h.stage(id).await,
        Stage::Testing,
        "a tool error is never a FAIL"
    );
    let wt =
        h.rt.workspace
            .worktree_dir("DEMO-8")
            .join("docs/work-items/DEMO-8/13-test-report.md");
    assert!(!wt.exists(), "no verdict written on a tool error");
    let testers: Vec<_> = jobs::for_task(h.db.reader(), id)
        .await
        .unwrap()
        .into_iter()
        .filter(|j| j.role == "tester")
        .collect();
    assert!(
        testers[1].context.contains("tool error"),
        "{:?}",
        testers[1].context
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staging_command_writes_the_staging_report() {
    let h = Harness::new_with(
        &["demo"],
        "staging_command = \"echo deployed to staging\"",
        &[],
    )
    .await;
    let id = task_at(&h, "DEMO-9", Stage::Deploy).await;
    let report = std::fs::read_to_string(
        h.rt.workspace
            .worktree_dir("DEMO-9")
            .join("docs/work-items/DEMO-9/14-staging-report.md"),
    )
    .unwrap();
    assert!(
        report.contains("staging_status: SUCCESS") && report.contains("deployed to staging"),
        "{report}"
    );
    let roles: Vec<_> = jobs::for_task(h.db.reader(), id)
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.role)
        .collect();
    assert!(roles.contains(&"deployer".to_string()));
}
