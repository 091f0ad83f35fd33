//! The built-in forge (B-10) on its own, against a real bare repository:
//! the branch is the PR, a merge is one `--no-ff` merge commit pushed
//! normally, a merge asked again is found (never made twice), a moved head
//! is refused, the default branch is never deleted, and a merge that
//! landed is recognised by `merged_pr_of` while a fresh branch is not.

mod support;

use std::path::Path;
use std::sync::Arc;

use orchestrator::clients::local_forge::LocalForge;
use orchestrator::clients::{ClientError, Forge, ForgeRepo, MergeOutcome, PrState};
use orchestrator::config::{EnvVars, Settings};
use support::gitea_double::{git, try_git};

struct Env {
    _dir: tempfile::TempDir,
    bare: std::path::PathBuf,
    work: std::path::PathBuf,
    forge: LocalForge,
    repo: ForgeRepo,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let bare = dir.path().join("demo.git");
    std::fs::create_dir_all(&bare).unwrap();
    git(&bare, &["init", "--quiet", "--bare", "-b", "main"]);
    let work = dir.path().join("work");
    git(
        dir.path(),
        &[
            "clone",
            "--quiet",
            bare.to_str().unwrap(),
            work.to_str().unwrap(),
        ],
    );
    git(&work, &["checkout", "--quiet", "-b", "main"]);
    commit(&work, "README.md", "hello\n");
    git(&work, &["push", "--quiet", "origin", "main"]);
    let cfg = dir.path().join("o.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[projects]]\nname = \"demo\"\nwork_item_prefix = \"DEMO\"\nrepo_url = \"{}\"\n",
            bare.display()
        ),
    )
    .unwrap();
    let pairs = vec![
        (
            "ORCH_DATABASE_URL".to_string(),
            format!("sqlite://{}", dir.path().join("o.db").display()),
        ),
        (
            "ORCH_WORKSPACE_ROOT".to_string(),
            dir.path().join("ws").display().to_string(),
        ),
    ];
    let settings = Arc::new(
        Settings::load_with(Some(&cfg), &EnvVars::from_pairs(pairs))
            .unwrap()
            .0,
    );
    let p = settings.project("demo").unwrap();
    assert_eq!(
        p.forge_kind(),
        orchestrator::config::ForgeKind::Local,
        "the default without Gitea"
    );
    assert_eq!(
        p.tracker_kind(),
        orchestrator::config::TrackerKind::Local,
        "the default without Plane"
    );
    let repo = ForgeRepo {
        project: "demo".into(),
        full_name: "demo".into(),
        default_branch: "main".into(),
        local_clone: Default::default(),
    };
    Env {
        forge: LocalForge::new(settings),
        _dir: dir,
        bare,
        work,
        repo,
    }
}

fn commit(work: &Path, file: &str, text: &str) -> String {
    std::fs::write(work.join(file), text).unwrap();
    git(work, &["add", "."]);
    git(
        work,
        &["commit", "--quiet", "-m", &format!("change {file}")],
    );
    git(work, &["rev-parse", "HEAD"])
}

/// A commit on `branch` (made from main), pushed; its sha.
fn push_branch(e: &Env, branch: &str, file: &str) -> String {
    git(
        &e.work,
        &["checkout", "--quiet", "-B", branch, "origin/main"],
    );
    let sha = commit(&e.work, file, &format!("{branch}\n"));
    git(
        &e.work,
        &[
            "push",
            "--quiet",
            "--force",
            "origin",
            &format!("{branch}:{branch}"),
        ],
    );
    sha
}

fn merges(e: &Env) -> usize {
    git(&e.bare, &["rev-list", "--merges", "--count", "main"])
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_is_one_no_ff_commit_and_asking_again_finds_it() {
    let e = env();
    git(&e.work, &["fetch", "--quiet", "origin"]);
    // A fresh branch still pointing into main: nothing to merge, not merged.
    git(
        &e.work,
        &["push", "--quiet", "origin", "origin/main:refs/heads/demo-1"],
    );
    let fresh = e
        .forge
        .ensure_open_pr(&e.repo, "demo-1", "t", "")
        .await
        .unwrap();
    assert_eq!(fresh, PrState::AlreadyInMain);
    assert_eq!(e.forge.merged_pr_of(&e.repo, "demo-1").await.unwrap(), None);

    let head = push_branch(&e, "demo-1", "feature.txt");
    let pr = e
        .forge
        .ensure_open_pr(&e.repo, "demo-1", "DEMO-1: Add a\nflag\u{7}  please", "")
        .await
        .unwrap();
    assert_eq!(pr, PrState::Open { number: 1 });
    assert!(!e.forge.sha_in_main(&e.repo, &head).await.unwrap());
    assert_eq!(e.forge.merged_pr_of(&e.repo, "demo-1").await.unwrap(), None);

    let MergeOutcome::Merged { sha } = e.forge.merge_pr(&e.repo, 1, &head).await.unwrap() else {
        panic!("not merged")
    };
    assert_eq!(git(&e.bare, &["rev-parse", "main"]), sha);
    assert_eq!(
        git(&e.bare, &["rev-parse", &format!("{sha}^2")]),
        head,
        "--no-ff: the head is the second parent"
    );
    // The merge message carries the task's title, on one line.
    assert_eq!(
        git(&e.bare, &["log", "-1", "--format=%B", &sha]),
        "Merge branch 'demo-1': DEMO-1: Add a flag please"
    );
    assert!(e.forge.sha_in_main(&e.repo, &head).await.unwrap());
    // The answer was lost and the merge is asked for again: found, not made.
    let again = e.forge.merge_pr(&e.repo, 1, &head).await.unwrap();
    assert_eq!(again, MergeOutcome::Merged { sha: sha.clone() });
    assert_eq!(merges(&e), 1);
    let polled = e
        .forge
        .merged_pr_of(&e.repo, "demo-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(polled["merge_commit_sha"], sha.as_str());
    assert_eq!(polled["head"]["sha"], head.as_str());
    assert_eq!(polled["number"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_head_and_a_conflict_are_not_merged() {
    let e = env();
    let old = push_branch(&e, "demo-2", "feature.txt");
    let now = commit(&e.work, "more.txt", "more\n");
    git(&e.work, &["push", "--quiet", "origin", "demo-2:demo-2"]);
    let out = e.forge.merge_pr(&e.repo, 2, &old).await.unwrap();
    assert_eq!(out, MergeOutcome::HeadMoved { head: now });
    assert_eq!(merges(&e), 0);

    // Main and the branch change the same line: a conflict, nothing pushed.
    let head = push_branch(&e, "demo-3", "README.md");
    git(
        &e.work,
        &["checkout", "--quiet", "-B", "main", "origin/main"],
    );
    commit(&e.work, "README.md", "changed on main\n");
    git(&e.work, &["push", "--quiet", "origin", "main"]);
    let main_before = git(&e.bare, &["rev-parse", "main"]);
    let out = e.forge.merge_pr(&e.repo, 3, &head).await.unwrap();
    assert!(
        matches!(out, MergeOutcome::NotMerged { ref reason } if reason.contains("does not merge cleanly")),
        "{out:?}"
    );
    assert_eq!(git(&e.bare, &["rev-parse", "main"]), main_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_branch_is_never_deleted() {
    let e = env();
    push_branch(&e, "demo-4", "feature.txt");
    for b in ["main", " main ", "master", "", "-f", "HEAD"] {
        let r = e.forge.delete_branch(&e.repo, b).await;
        assert!(matches!(r, Err(ClientError::Blocked(_))), "{b:?}: {r:?}");
    }
    assert!(try_git(&e.bare, &["rev-parse", "--verify", "refs/heads/main"]).0);
    e.forge.delete_branch(&e.repo, "demo-4").await.unwrap();
    assert!(!try_git(&e.bare, &["rev-parse", "--verify", "refs/heads/demo-4"]).0);
    // Already gone: deleting is idempotent.
    e.forge.delete_branch(&e.repo, "demo-4").await.unwrap();
    let r = e.forge.ensure_open_pr(&e.repo, "feature/x", "t", "").await;
    assert!(
        matches!(r, Err(ClientError::Config(_))),
        "not a task branch: {r:?}"
    );
}
