//! Deploy markers are cleaned once their transition committed (F-23, B-1):
//! the real deploy path writes them (Gitea double, real bare repository,
//! real deploy command), the real post-deploy tick removes them after the
//! safety age, and never while the transition is open. Helpers:
//! `support/deploy_env.rs`.

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use orchestrator::domain::Stage;
use orchestrator::loops::post_deploy::{self, PostDeployStats};
use orchestrator::stage_engine::Outcome;
use support::deploy_env::DeployEnv;

/// Marker files (regular files) at the top of `deploys/`, sorted.
fn markers(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|d| d.unwrap())
        .filter(|d| d.file_type().unwrap().is_file())
        .map(|d| d.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Make every marker file look `age` old (the sweep's safety age is 24 h).
fn age_all(dir: &Path, age: Duration) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for d in std::fs::read_dir(dir).unwrap() {
        let d = d.unwrap();
        if d.file_type().unwrap().is_file() {
            let f = std::fs::File::options().write(true).open(d.path()).unwrap();
            f.set_modified(SystemTime::now() - age).unwrap();
            out.push(d.path());
        }
    }
    out
}

#[tokio::test]
async fn the_post_deploy_tick_removes_markers_of_committed_transitions_only() {
    let flag = tempfile::tempdir().unwrap();
    let fixed = flag.path().join("fixed");
    // DEMO-1's deploy passes; DEMO-2's fails until `fixed` exists.
    let cmd = format!(
        "test \"$ORCH_WORK_ITEM\" = DEMO-1 || test -f {} || exit 3",
        fixed.display()
    );
    let e = DeployEnv::new(true, &format!("deploy_command = '{cmd}'"), &[]).await;
    let dir = e.marker_dir();
    let (done_id, _) = e.task_at("deploy", 1).await;
    let out = e.pipeline.confirm_deploy(done_id, "test").await.unwrap();
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
    let (held_id, _) = e.task_at("deploy", 2).await;
    let out = e.pipeline.confirm_deploy(held_id, "test").await.unwrap();
    assert!(matches!(out, Outcome::EffectUnknown { .. }), "{out:?}");
    let before = markers(&dir);
    let of = |id: i64| {
        before
            .iter()
            .filter(|n| n.starts_with(&format!("task_{id}_")))
            .count()
    };
    assert!(of(done_id) >= 1, "the deploy left its marker: {before:?}");
    assert!(
        of(held_id) >= 1,
        "the merge of the held task left its head file: {before:?}"
    );

    // Fresh markers stay, committed or not.
    let stats = PostDeployStats::default();
    post_deploy::tick(&e.pipeline, &stats).await.unwrap();
    assert_eq!(markers(&dir), before);
    assert_eq!(stats.markers_removed.load(Ordering::Relaxed), 0);

    // A day later: the committed transition's markers go, the held task's
    // (merge_pr done, prod_deploy unknown, stage not written) stay.
    age_all(&dir, Duration::from_secs(25 * 3600));
    post_deploy::tick(&e.pipeline, &stats).await.unwrap();
    let after = markers(&dir);
    assert!(
        after
            .iter()
            .all(|n| n.starts_with(&format!("task_{held_id}_"))),
        "{after:?}"
    );
    assert_eq!(after.len(), of(held_id), "{after:?}");
    let removed = stats.markers_removed.load(Ordering::Relaxed);
    assert_eq!(removed, of(done_id) as u64);
    // The deploy clone is untouched.
    assert!(dir.join("repos").join("demo").join(".git").is_dir());

    // The held task's deploy is fixed and retried: once committed and old,
    // its markers go too.
    std::fs::write(&fixed, "").unwrap();
    let out = e.pipeline.confirm_deploy(held_id, "test").await.unwrap();
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
    age_all(&dir, Duration::from_secs(25 * 3600));
    post_deploy::tick(&e.pipeline, &stats).await.unwrap();
    assert_eq!(markers(&dir), Vec::<String>::new());
    assert!(stats.markers_removed.load(Ordering::Relaxed) > removed);
    let block = orchestrator::status::StatusBlock::snapshot(&stats).await;
    assert_eq!(
        block["markers_removed"],
        stats.markers_removed.load(Ordering::Relaxed)
    );
    assert_eq!(e.task(held_id).await.stage, Stage::Done);
}
