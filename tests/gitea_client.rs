//! The Gitea client (F-07) against the Gitea double, whose repositories are
//! real bare git repositories: PR creation and reuse, the already-in-main
//! guard, the merge retry schedule (transient vs terminal answers), SHA in
//! main, and branch deletion that never touches the default branch.

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use orchestrator::clients::gitea::GiteaClient;
use orchestrator::clients::retry::RecordingSleeper;
use orchestrator::clients::{ClientError, Forge, ForgeRepo, MergeOutcome, PrState};
use support::gitea_double::{GiteaDouble, GiteaVersion, MergeFault, git};

const REPO: &str = "team/demo";

struct Env {
    _dir: tempfile::TempDir,
    gitea: GiteaDouble,
    client: GiteaClient,
    sleeper: Arc<RecordingSleeper>,
    repo: ForgeRepo,
    /// A developer's clone that pushes branches.
    work: PathBuf,
}

async fn env(extra: &[(&str, &str)]) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let gitea = GiteaDouble::start(dir.path(), "tok").await;
    gitea.create_repo(REPO);
    let local = dir.path().join("clone");
    gitea.clone_to(REPO, &local);
    let work = dir.path().join("work");
    gitea.clone_to(REPO, &work);
    let base = gitea.base_url();
    let mut pairs = vec![
        ("ORCH_GITEA_BASE_URL", base.as_str()),
        ("ORCH_GITEA_TOKEN", "tok"),
    ];
    pairs.extend_from_slice(extra);
    let settings = support::settings_in(dir.path(), &pairs);
    let sleeper = Arc::new(RecordingSleeper::default());
    let client = GiteaClient::with_parts(&settings, Duration::from_secs(10), sleeper.clone())
        .expect("client");
    let repo = ForgeRepo {
        project: "demo".into(),
        full_name: REPO.into(),
        default_branch: "main".into(),
        local_clone: local,
    };
    Env {
        _dir: dir,
        gitea,
        client,
        sleeper,
        repo,
        work,
    }
}

impl Env {
    /// Push a task branch with one commit; open its PR; (number, head sha).
    async fn open_pr(&self, branch: &str) -> (u64, String) {
        let sha = self
            .gitea
            .push_commit(&self.work, branch, &format!("{branch}.txt"), branch);
        let pr = self
            .client
            .ensure_open_pr(&self.repo, branch, &format!("{branch}: work"), "body")
            .await
            .unwrap();
        let PrState::Open { number } = pr else {
            panic!("{pr:?}")
        };
        (number, sha)
    }

    fn posts(&self) -> u32 {
        self.gitea.lock().merge_posts
    }

    fn waits(&self) -> Vec<u64> {
        self.sleeper.waits().iter().map(Duration::as_secs).collect()
    }
}

#[tokio::test]
async fn ensure_open_pr_creates_once_and_reuses_the_open_pr() {
    let e = env(&[]).await;
    let (n, _) = e.open_pr("demo-1").await;
    assert_eq!(n, 1);
    // A second call meets 409 "already exists" and finds the open PR.
    let again = e
        .client
        .ensure_open_pr(&e.repo, "demo-1", "demo-1: work", "body")
        .await
        .unwrap();
    assert_eq!(again, PrState::Open { number: 1 });
    assert_eq!(e.gitea.pulls(REPO).len(), 1);
    assert_eq!(e.gitea.lock().pr_creates, 2);
    // Never a PR from the default branch into itself.
    let main = e.client.ensure_open_pr(&e.repo, "main", "t", "b").await;
    assert!(matches!(main, Err(ClientError::Config(_))), "{main:?}");
}

#[tokio::test]
async fn already_in_main_creates_no_pr() {
    let e = env(&[]).await;
    // A branch that adds nothing to main (a re-driven finalizer).
    git(&e.work, &["push", "--quiet", "origin", "main:demo-2"]);
    let out = e
        .client
        .ensure_open_pr(&e.repo, "demo-2", "demo-2", "b")
        .await
        .unwrap();
    assert_eq!(out, PrState::AlreadyInMain);
    assert_eq!(e.gitea.lock().pr_creates, 0, "no empty PR was created");

    // After a real merge the branch is in main too: no second PR.
    let (n, _) = e.open_pr("demo-3").await;
    let merged = e.client.merge_pr(&e.repo, n, "").await.unwrap();
    assert!(matches!(merged, MergeOutcome::Merged { .. }), "{merged:?}");
    let out = e
        .client
        .ensure_open_pr(&e.repo, "demo-3", "demo-3", "b")
        .await
        .unwrap();
    assert_eq!(out, PrState::AlreadyInMain);
    assert_eq!(e.gitea.lock().pr_creates, 1);
}

#[tokio::test]
async fn a_git_error_in_the_guard_fails_open_to_creating_the_pr() {
    let mut e = env(&[]).await;
    e.gitea.push_commit(&e.work, "demo-4", "x.txt", "x");
    e.repo.local_clone = PathBuf::from("/nonexistent/clone");
    let out = e
        .client
        .ensure_open_pr(&e.repo, "demo-4", "demo-4", "b")
        .await
        .unwrap();
    assert_eq!(out, PrState::Open { number: 1 });
}

#[tokio::test]
async fn transient_twice_then_success_merges_once_on_the_bounded_schedule() {
    let e = env(&[]).await;
    let (n, sha) = e.open_pr("demo-5").await;
    e.gitea.push_merge_fault(MergeFault::TryAgainLater);
    e.gitea.push_merge_fault(MergeFault::TryAgainLater);
    let out = e.client.merge_pr(&e.repo, n, &sha).await.unwrap();
    let MergeOutcome::Merged { sha: merge_sha } = out else {
        panic!("{out:?}")
    };
    assert_eq!(e.posts(), 3, "two transient answers, then the merge");
    assert_eq!(e.waits(), vec![2, 4], "base 2 s, doubling");
    assert!(e.gitea.is_in_main(REPO, &sha), "the branch really merged");
    assert_eq!(
        e.gitea.rev(REPO, "main").as_deref(),
        Some(merge_sha.as_str())
    );
    assert!(e.client.sha_in_main(&e.repo, &sha).await.unwrap());
    // One merge commit on main: the merge ran once.
    let bare = e.gitea.lock().repos[REPO].bare.clone();
    let merges = git(&bare, &["log", "--oneline", "--merges", "main"]);
    assert_eq!(merges.lines().count(), 1, "{merges}");

    // A repeat (a retry after a lost answer) sees "already merged" and
    // reports the merge instead of failing.
    let again = e.client.merge_pr(&e.repo, n, &sha).await.unwrap();
    assert!(matches!(again, MergeOutcome::Merged { .. }), "{again:?}");
}

#[tokio::test]
async fn server_errors_and_409_while_mergeable_are_transient() {
    let e = env(&[]).await;
    let (n, sha) = e.open_pr("demo-6").await;
    e.gitea.push_merge_fault(MergeFault::ServerError);
    e.gitea.push_merge_fault(MergeFault::Conflict);
    let out = e.client.merge_pr(&e.repo, n, &sha).await.unwrap();
    assert!(matches!(out, MergeOutcome::Merged { .. }), "{out:?}");
    assert_eq!(e.posts(), 3);
    assert_eq!(e.waits(), vec![2, 4]);
}

#[tokio::test]
async fn terminal_answers_stop_at_once() {
    let e = env(&[]).await;
    let (n, sha) = e.open_pr("demo-7").await;
    for (fault, posts) in [(MergeFault::Forbidden, 1), (MergeFault::NotMergeable, 2)] {
        e.gitea.push_merge_fault(fault.clone());
        let out = e.client.merge_pr(&e.repo, n, &sha).await.unwrap();
        assert!(
            matches!(out, MergeOutcome::NotMerged { .. }),
            "{fault:?}: {out:?}"
        );
        assert_eq!(e.posts(), posts, "{fault:?}: one POST, no retry");
    }
    // Unknown PR: 404.
    let out = e.client.merge_pr(&e.repo, 99, "").await.unwrap();
    assert!(matches!(out, MergeOutcome::NotMerged { .. }), "{out:?}");
    assert_eq!(e.posts(), 3);
    assert!(e.waits().is_empty(), "terminal answers never wait");
    assert!(!e.gitea.is_in_main(REPO, &sha));
    assert!(!e.client.sha_in_main(&e.repo, &sha).await.unwrap());
}

#[tokio::test]
async fn the_schedule_is_bounded_and_configurable() {
    let e = env(&[]).await;
    let (n, sha) = e.open_pr("demo-8").await;
    for _ in 0..10 {
        e.gitea.push_merge_fault(MergeFault::TryAgainLater);
    }
    let out = e.client.merge_pr(&e.repo, n, &sha).await.unwrap();
    let MergeOutcome::NotMerged { reason } = out else {
        panic!("{out:?}")
    };
    assert!(reason.contains("after 3 attempts"), "{reason}");
    assert_eq!(e.posts(), 3);
    assert_eq!(e.waits(), vec![2, 4]);

    let e = env(&[
        ("ORCH_MERGE_RETRY_MAX_ATTEMPTS", "5"),
        ("ORCH_MERGE_RETRY_BASE_S", "2"),
        ("ORCH_MERGE_RETRY_MAX_S", "5"),
    ])
    .await;
    let (n, sha) = e.open_pr("demo-9").await;
    for _ in 0..10 {
        e.gitea.push_merge_fault(MergeFault::ServerError);
    }
    let out = e.client.merge_pr(&e.repo, n, &sha).await.unwrap();
    assert!(matches!(out, MergeOutcome::NotMerged { .. }));
    assert_eq!(e.posts(), 5);
    assert_eq!(e.waits(), vec![2, 4, 5, 5], "capped at the max");

    // Retry off: one shot.
    let e = env(&[("ORCH_MERGE_RETRY_ENABLED", "false")]).await;
    let (n, sha) = e.open_pr("demo-10").await;
    e.gitea.push_merge_fault(MergeFault::TryAgainLater);
    let out = e.client.merge_pr(&e.repo, n, &sha).await.unwrap();
    assert!(matches!(out, MergeOutcome::NotMerged { .. }));
    assert_eq!(e.posts(), 1);
    assert!(e.waits().is_empty());
}

#[tokio::test]
async fn network_errors_are_transient_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    // A port nobody listens on.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    let settings = support::settings_in(
        dir.path(),
        &[
            ("ORCH_GITEA_BASE_URL", dead.as_str()),
            ("ORCH_GITEA_TOKEN", "t"),
        ],
    );
    let sleeper = Arc::new(RecordingSleeper::default());
    let client =
        GiteaClient::with_parts(&settings, Duration::from_secs(5), sleeper.clone()).unwrap();
    let repo = ForgeRepo {
        project: "demo".into(),
        full_name: REPO.into(),
        default_branch: "main".into(),
        local_clone: dir.path().join("none"),
    };
    let out = client.merge_pr(&repo, 1, "abc").await.unwrap();
    let MergeOutcome::NotMerged { reason } = out else {
        panic!("{out:?}")
    };
    assert!(reason.contains("network"), "{reason}");
    assert_eq!(sleeper.waits().len(), 2);
}

#[tokio::test]
async fn delete_branch_refuses_the_default_branch_before_any_call() {
    let e = env(&[]).await;
    let before = e.gitea.lock().requests.len();
    for b in ["main", " main ", ""] {
        let r = e.client.delete_branch(&e.repo, b).await;
        assert!(matches!(r, Err(ClientError::Blocked(_))), "{b:?}: {r:?}");
    }
    assert_eq!(e.gitea.lock().requests.len(), before, "no request was made");
    assert!(e.gitea.rev(REPO, "main").is_some());

    e.gitea.push_commit(&e.work, "demo-11", "f.txt", "f");
    assert!(e.gitea.rev(REPO, "demo-11").is_some());
    e.client.delete_branch(&e.repo, "demo-11").await.unwrap();
    assert!(e.gitea.rev(REPO, "demo-11").is_none(), "really deleted");
    // Already gone: still fine.
    e.client.delete_branch(&e.repo, "demo-11").await.unwrap();
}

#[tokio::test]
async fn sha_in_main_works_on_gitea_1_22_and_1_23() {
    // Issue 11 pt 1: Gitea 1.22 answers `compare` with a commit id 404. The
    // answer comes from our own clone (fetch + merge-base), on every version.
    for version in [GiteaVersion::V1_22, GiteaVersion::V1_23] {
        let e = env(&[]).await;
        e.gitea.set_version(version);
        let (n, sha) = e.open_pr("demo-30").await;
        // The clone knows the head (the deploy effect fetched it).
        git(
            &e.repo.local_clone,
            &["fetch", "--quiet", "origin", "demo-30"],
        );
        assert!(
            !e.client.sha_in_main(&e.repo, &sha).await.unwrap(),
            "{version:?}"
        );
        let out = e.client.merge_pr(&e.repo, n, &sha).await.unwrap();
        assert!(matches!(out, MergeOutcome::Merged { .. }), "{out:?}");
        assert!(
            e.client.sha_in_main(&e.repo, &sha).await.unwrap(),
            "{version:?}"
        );
    }
}

#[tokio::test]
async fn a_404_from_compare_is_not_a_no() {
    // Without a clone that can tell, 1.22's 404 is "cannot tell", never
    // "not in main" (which would let a landed merge be tried again).
    let mut e = env(&[]).await;
    e.gitea.set_version(GiteaVersion::V1_22);
    let (n, sha) = e.open_pr("demo-31").await;
    assert!(matches!(
        e.client.merge_pr(&e.repo, n, &sha).await.unwrap(),
        MergeOutcome::Merged { .. }
    ));
    e.repo.local_clone = e._dir.path().join("no-clone");
    let r = e.client.sha_in_main(&e.repo, &sha).await;
    assert!(matches!(r, Err(ClientError::Unavailable { .. })), "{r:?}");
    e.gitea.set_version(GiteaVersion::V1_23);
    assert!(
        e.client.sha_in_main(&e.repo, &sha).await.unwrap(),
        "1.23 compares commit ids"
    );
}

#[tokio::test]
async fn a_409_head_out_of_date_is_not_retried() {
    // Issue 11 pt 4: someone pushed to the branch after we read its head.
    // Gitea answers 409; the PR's head is another commit now. Retrying the
    // same head can never succeed: one POST, `HeadMoved` with the new head.
    let e = env(&[]).await;
    let (n, sha) = e.open_pr("demo-32").await;
    let moved = e.gitea.advance_branch(REPO, "demo-32");
    let out = e.client.merge_pr(&e.repo, n, &sha).await.unwrap();
    assert_eq!(out, MergeOutcome::HeadMoved { head: moved });
    assert_eq!(e.posts(), 1, "not retried");
    assert!(e.waits().is_empty());
    assert!(!e.gitea.is_in_main(REPO, &sha));
}
