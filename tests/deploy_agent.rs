//! The production deploy by the deployer agent (F-23) when a project has no
//! `deploy_command`: after the real merge, once per transition, its verdict
//! read from `15-deploy-report.md`, its run and cost recorded; a FAILURE or
//! a missing verdict holds the task, and Confirm Deploy again re-runs only
//! the deploy (never the merge).

mod support;

use orchestrator::db::runs::RunRow;
use orchestrator::domain::{EffectKind, Stage};
use orchestrator::stage_engine::Outcome;
use support::deploy_env::DeployEnv;
use support::runtime::agent;

/// The contract agent, with its production deploys counted in `log`.
fn counting_agent(log: &std::path::Path, extra_env: &str) -> String {
    format!(
        "AGENT_DEPLOY_LOG={} {extra_env} {}",
        log.display(),
        agent("contract-agent.sh")
    )
}

fn deploys(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

async fn runs_of(e: &DeployEnv, id: i64) -> Vec<RunRow> {
    sqlx::query_as("SELECT * FROM agent_runs WHERE task_id = ? ORDER BY id")
        .bind(id)
        .fetch_all(e.db.reader())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deployer_agent_deploys_once_after_the_merge_and_its_run_is_counted() {
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("deploys");
    let cmd = counting_agent(&log, "");
    let e = DeployEnv::new(true, "", &[("ORCH_AGENT_COMMAND", &cmd)]).await;
    let (id, head) = e.task_at("deploy", 1).await;

    let out = e
        .pipeline
        .confirm_deploy(id, "plane-webhook")
        .await
        .unwrap();
    assert!(
        matches!(
            out,
            Outcome::Advanced {
                from: Stage::Deploy,
                to: Stage::Done,
                ..
            }
        ),
        "{out:?}"
    );
    assert_eq!(deploys(&log), 1);
    assert_eq!((e.merge_posts(), e.merges_in_main()), (1, 1));
    assert!(e.in_main(&head));
    assert!(
        e.report("DEMO-1")
            .unwrap()
            .ends_with("deploy_status: SUCCESS\n"),
        "the agent's report"
    );
    let runs = runs_of(&e, id).await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    let r = &runs[0];
    assert_eq!(
        (r.role.as_str(), r.stage.as_str(), r.exit_code),
        ("deployer", "deploy", Some(0))
    );
    assert_eq!((r.input_tokens, r.output_tokens), (10, 200));
    assert!(
        (r.cost_usd - 0.25).abs() < 1e-9,
        "cost counted: {}",
        r.cost_usd
    );
    // Its job row is finished and claimed: no loop ever picks it up.
    let (status, claimed): (String, Option<String>) =
        sqlx::query_as("SELECT status, claimed_by FROM jobs WHERE id = ?")
            .bind(r.job_id)
            .fetch_one(e.db.reader())
            .await
            .unwrap();
    assert_eq!(
        (status.as_str(), claimed.as_deref()),
        ("done", Some("prod_deploy"))
    );

    // A repeated Confirm Deploy: terminal, no second deploy, no second merge.
    let again = e
        .pipeline
        .confirm_deploy(id, "plane-webhook")
        .await
        .unwrap();
    assert_eq!(again, Outcome::Terminal { stage: Stage::Done });
    assert_eq!(deploys(&log), 1);
    assert_eq!(e.merges_in_main(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_failure_holds_and_a_new_confirm_redeploys_without_a_second_merge() {
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("deploys");
    // FAILURE on its first run only.
    let cmd = counting_agent(&log, "AGENT_FAIL_ONCE_ROLE=deployer");
    let e = DeployEnv::new(true, "", &[("ORCH_AGENT_COMMAND", &cmd)]).await;
    let (id, _) = e.task_at("deploy", 2).await;

    let out = e
        .pipeline
        .confirm_deploy(id, "plane-webhook")
        .await
        .unwrap();
    // B-13: the agent ran, so production may have changed: unknown, held.
    let Outcome::EffectUnknown { kind, error, .. } = &out else {
        panic!("{out:?}")
    };
    assert_eq!(*kind, EffectKind::ProdDeploy);
    assert!(
        error.contains("deploy_status: FAILURE (the agent reported deploy_status: FAILURE)"),
        "{error}"
    );
    let t = e.task(id).await;
    assert_eq!(t.stage, Stage::Deploy);
    assert!(t.hold_reason.unwrap().contains("deploy_status: FAILURE"));
    assert_eq!((deploys(&log), e.merges_in_main()), (1, 1));

    let out = e
        .pipeline
        .confirm_deploy(id, "plane-webhook")
        .await
        .unwrap();
    assert!(
        matches!(
            out,
            Outcome::Advanced {
                to: Stage::Done,
                ..
            }
        ),
        "{out:?}"
    );
    assert_eq!(deploys(&log), 2, "the deploy re-ran");
    assert_eq!(
        (e.merge_posts(), e.merges_in_main()),
        (1, 1),
        "the merge did not"
    );
    let runs = runs_of(&e, id).await;
    assert_eq!(
        runs.iter().map(|r| r.exit_code).collect::<Vec<_>>(),
        [Some(0), Some(0)],
        "both runs recorded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_vouches_for_nothing_is_a_failure() {
    // Exit 0 but no report: nobody can say production got the change.
    let e = DeployEnv::new(
        true,
        "",
        &[("ORCH_AGENT_COMMAND", "echo deployed, I think")],
    )
    .await;
    let (id, _) = e.task_at("deploy", 3).await;
    let out = e
        .pipeline
        .confirm_deploy(id, "plane-webhook")
        .await
        .unwrap();
    // B-13: the agent ran, so production may have changed: unknown, held.
    let Outcome::EffectUnknown { kind, error, .. } = &out else {
        panic!("{out:?}")
    };
    assert_eq!(*kind, EffectKind::ProdDeploy);
    assert!(error.contains("wrote no 15-deploy-report.md"), "{error}");
    assert_eq!(e.task(id).await.stage, Stage::Deploy);
}
