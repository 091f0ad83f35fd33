//! A stateful Gitea on loopback whose repositories are REAL bare git
//! repositories in a temp dir: a merge really merges (git CLI), "is this SHA
//! in main" is real (`compare`), branches really go away. It can be told to
//! answer the merge POST with 405 "Please try again later", 409, 5xx or 403,
//! or to report `mergeable: false`; it counts the PRs created and the merge
//! POSTs made, and can send the signed `pull_request` merged webhook. It
//! behaves like a Gitea version (`GiteaVersion`: 1.22's `compare` takes no
//! commit ids), names a PR's head commit (`head.sha`), can land a merge and
//! never answer (`LandedThenHang`) and can move a branch (`advance_branch`).
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// How the next merge POST is answered instead of merging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MergeFault {
    /// 405 "Please try again later" (mergeability still being checked).
    TryAgainLater,
    /// 409 while the PR stays mergeable (head moved, a race).
    Conflict,
    ServerError,
    Forbidden,
    /// The PR turns unmergeable (a real conflict): 409 and `mergeable: false`.
    NotMergeable,
    /// The merge lands, then the answer is lost (a proxy's 502).
    LandedAnswerLost,
    /// The merge lands, then the answer never comes (the test kills the
    /// daemon while it waits: kill -9 during the merge).
    LandedThenHang,
}

/// Which Gitea the double behaves like (issue 11). 1.22 answers `compare`
/// only for branch and tag names (a commit id gets 404); 1.23.0 takes commit
/// ids too (go-gitea/gitea#32801).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GiteaVersion {
    V1_22,
    #[default]
    V1_23,
}

#[derive(Debug, Clone)]
pub struct Pull {
    pub number: u64,
    pub head: String,
    pub base: String,
    pub title: String,
    pub open: bool,
    pub merged: bool,
    pub merge_commit_sha: Option<String>,
    pub unmergeable: bool,
}

pub struct Repo {
    pub bare: PathBuf,
    pub default_branch: String,
    pub pulls: Vec<Pull>,
}

#[derive(Default)]
pub struct GiteaState {
    pub token: String,
    pub root: PathBuf,
    pub repos: HashMap<String, Repo>,
    pub merge_faults: VecDeque<MergeFault>,
    pub merge_posts: u32,
    pub pr_creates: u32,
    pub requests: Vec<(String, String)>,
    pub webhook: Option<(String, String)>,
    pub version: GiteaVersion,
}

#[derive(Clone)]
pub struct GiteaDouble {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<GiteaState>>,
}

type Shared = Arc<Mutex<GiteaState>>;

/// Run git; panics with its stderr on failure (test set-up only).
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = try_git(dir, args);
    assert!(out.0, "git {args:?} in {}: {}", dir.display(), out.1);
    out.1
}

/// Run git; (success, stdout or stderr).
pub fn try_git(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .expect("git runs");
    let text = if out.status.success() {
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    } else {
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    (out.status.success(), text)
}

impl GiteaDouble {
    pub async fn start(root: &Path, token: &str) -> GiteaDouble {
        let state = Arc::new(Mutex::new(GiteaState {
            token: token.into(),
            root: root.to_path_buf(),
            ..Default::default()
        }));
        let r = "/api/v1/repos/{owner}/{repo}";
        let app = Router::new()
            .route(&format!("{r}/pulls"), post(create_pr).get(list_prs))
            .route(&format!("{r}/pulls/{{n}}"), get(get_pr))
            .route(&format!("{r}/pulls/{{n}}/merge"), post(merge_pr))
            .route(&format!("{r}/compare/{{basehead}}"), get(compare))
            .route(&format!("{r}/branches/{{*branch}}"), delete(delete_branch))
            .layer(middleware::from_fn_with_state(state.clone(), gate))
            .with_state(state.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        GiteaDouble { addr, state }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, GiteaState> {
        self.state.lock().unwrap()
    }

    /// A bare repository with one commit on `main`; returns its path.
    pub fn create_repo(&self, full_name: &str) -> PathBuf {
        let root = self.lock().root.clone();
        let bare = root.join("git").join(format!("{full_name}.git"));
        std::fs::create_dir_all(&bare).unwrap();
        git(&bare, &["init", "--quiet", "--bare", "-b", "main"]);
        let seed = root.join("seed").join(full_name);
        std::fs::create_dir_all(&seed).unwrap();
        git(&seed, &["init", "--quiet", "-b", "main"]);
        std::fs::write(seed.join("README.md"), "hello\n").unwrap();
        git(&seed, &["add", "."]);
        git(&seed, &["commit", "--quiet", "-m", "initial"]);
        git(&seed, &["push", "--quiet", bare.to_str().unwrap(), "main"]);
        self.lock().repos.insert(
            full_name.into(),
            Repo {
                bare: bare.clone(),
                default_branch: "main".into(),
                pulls: Vec::new(),
            },
        );
        bare
    }

    /// A working clone of the repository at `dest` (origin = the bare repo).
    pub fn clone_to(&self, full_name: &str, dest: &Path) {
        let bare = self.lock().repos[full_name].bare.clone();
        let parent = dest.parent().unwrap();
        std::fs::create_dir_all(parent).unwrap();
        git(
            parent,
            &[
                "clone",
                "--quiet",
                bare.to_str().unwrap(),
                dest.to_str().unwrap(),
            ],
        );
    }

    /// Commit a file on `branch` in the working clone and push it; the SHA.
    pub fn push_commit(&self, work: &Path, branch: &str, file: &str, content: &str) -> String {
        if !try_git(work, &["checkout", "--quiet", branch]).0 {
            git(work, &["checkout", "--quiet", "-b", branch]);
        }
        std::fs::write(work.join(file), content).unwrap();
        git(work, &["add", "."]);
        git(
            work,
            &["commit", "--quiet", "-m", &format!("change {file}")],
        );
        git(
            work,
            &["push", "--quiet", "origin", &format!("{branch}:{branch}")],
        );
        git(work, &["rev-parse", "HEAD"])
    }

    /// The commit a branch of the bare repository points at.
    pub fn rev(&self, full_name: &str, branch: &str) -> Option<String> {
        let bare = self.lock().repos[full_name].bare.clone();
        let (ok, out) = try_git(
            &bare,
            &["rev-parse", "--verify", &format!("refs/heads/{branch}")],
        );
        ok.then_some(out)
    }

    pub fn is_in_main(&self, full_name: &str, sha: &str) -> bool {
        let bare = self.lock().repos[full_name].bare.clone();
        try_git(
            &bare,
            &["merge-base", "--is-ancestor", sha, "refs/heads/main"],
        )
        .0
    }

    /// Is `ancestor` reachable from `descendant` in the repository?
    pub fn is_ancestor(&self, full_name: &str, ancestor: &str, descendant: &str) -> bool {
        let bare = self.lock().repos[full_name].bare.clone();
        try_git(
            &bare,
            &["merge-base", "--is-ancestor", ancestor, descendant],
        )
        .0
    }

    pub fn pulls(&self, full_name: &str) -> Vec<Pull> {
        self.lock().repos[full_name].pulls.clone()
    }

    pub fn set_version(&self, v: GiteaVersion) {
        self.lock().version = v;
    }

    /// Move a branch of the bare repository to a new commit on top of it
    /// (someone pushed while we were merging); the new head.
    pub fn advance_branch(&self, full_name: &str, branch: &str) -> String {
        let bare = self.lock().repos[full_name].bare.clone();
        let tip = git(&bare, &["rev-parse", &format!("refs/heads/{branch}")]);
        let tree = git(&bare, &["rev-parse", &format!("{tip}^{{tree}}")]);
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(&bare)
            .args(["commit-tree", &tree, "-p", &tip, "-m", "pushed meanwhile"])
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .output()
            .unwrap();
        let new = String::from_utf8_lossy(&out.stdout).trim().to_string();
        git(
            &bare,
            &["update-ref", &format!("refs/heads/{branch}"), &new],
        );
        new
    }

    pub fn push_merge_fault(&self, f: MergeFault) {
        self.lock().merge_faults.push_back(f);
    }

    pub fn set_webhook(&self, url: &str, secret: &str) {
        self.lock().webhook = Some((url.into(), secret.into()));
    }

    /// Send Gitea's `pull_request` closed+merged webhook for a PR.
    pub async fn send_merged(&self, full_name: &str, number: u64) -> u16 {
        let (body, url, secret) = {
            let s = self.lock();
            let repo = &s.repos[full_name];
            let pr = repo.pulls.iter().find(|p| p.number == number).unwrap();
            let body = json!({
                "action": "closed", "number": number,
                "pull_request": {"id": number + 4000, "number": number, "state": "closed",
                    "title": pr.title, "mergeable": true, "merged": pr.merged,
                    "merged_at": "2026-11-20T12:30:11Z", "merge_commit_sha": pr.merge_commit_sha,
                    "head": {"label": pr.head, "ref": pr.head, "sha": "", "repo_id": 7},
                    "base": {"label": pr.base, "ref": pr.base, "sha": "", "repo_id": 7},
                    "merged_by": {"id": 3, "login": "orchestrator-bot"}},
                "repository": {"id": 7, "name": full_name.split('/').nth(1), "full_name": full_name,
                    "default_branch": repo.default_branch},
                "sender": {"id": 3, "login": "orchestrator-bot"}, "commit_id": ""
            });
            let (url, secret) = s.webhook.clone().expect("webhook configured");
            (serde_json::to_vec(&body).unwrap(), url, secret)
        };
        let sig = orchestrator::intake::sign(secret.as_bytes(), &body);
        reqwest::Client::new()
            .post(url)
            .header("X-Gitea-Event", "pull_request")
            .header("X-Gitea-Event-Type", "pull_request")
            .header("X-Gitea-Delivery", uuid::Uuid::new_v4().to_string())
            .header("X-Gitea-Signature", &sig)
            .header("X-Hub-Signature-256", format!("sha256={sig}"))
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .expect("daemon reachable")
            .status()
            .as_u16()
    }
}

async fn gate(State(st): State<Shared>, req: Request, next: Next) -> Response {
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    {
        let mut s = st.lock().unwrap();
        s.requests
            .push((req.method().to_string(), req.uri().path().to_string()));
        if auth != Some(format!("token {}", s.token)) {
            return (
                StatusCode::UNAUTHORIZED,
                Json(json!({"message": "token is required"})),
            )
                .into_response();
        }
    }
    next.run(req).await
}

fn msg(status: StatusCode, m: &str) -> Response {
    (
        status,
        Json(json!({"message": m, "url": "https://gitea.example/api/swagger"})),
    )
        .into_response()
}

fn pr_json(bare: &Path, p: &Pull, mergeable: bool) -> Value {
    // Gitea names the head commit in `head.sha` (the branch tip while open).
    let sha = try_git(bare, &["rev-parse", &format!("refs/heads/{}", p.head)]);
    let sha = if sha.0 { sha.1 } else { String::new() };
    json!({"number": p.number, "title": p.title, "state": if p.open {"open"} else {"closed"},
           "merged": p.merged, "mergeable": mergeable, "merge_commit_sha": p.merge_commit_sha,
           "head": {"ref": p.head, "label": p.head, "sha": sha}, "base": {"ref": p.base, "label": p.base}})
}

/// Would merging `head` into `base` apply cleanly? (`git merge-tree`)
fn clean_merge(bare: &Path, base: &str, head: &str) -> bool {
    try_git(bare, &["merge-tree", "--write-tree", base, head]).0
}

async fn create_pr(
    State(st): State<Shared>,
    UrlPath((owner, repo)): UrlPath<(String, String)>,
    Json(body): Json<Value>,
) -> Response {
    let mut s = st.lock().unwrap();
    s.pr_creates += 1;
    let Some(r) = s.repos.get_mut(&format!("{owner}/{repo}")) else {
        return msg(StatusCode::NOT_FOUND, "repo not found");
    };
    let head = body["head"].as_str().unwrap_or_default().to_string();
    let base = body["base"].as_str().unwrap_or_default().to_string();
    if head == base {
        return msg(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid PullRequest: There are no changes between the head and the base",
        );
    }
    if !try_git(
        &r.bare,
        &["rev-parse", "--verify", &format!("refs/heads/{head}")],
    )
    .0
    {
        return msg(StatusCode::NOT_FOUND, "head branch not found");
    }
    if r.pulls
        .iter()
        .any(|p| p.open && p.head == head && p.base == base)
    {
        return msg(
            StatusCode::CONFLICT,
            "pull request already exists for these targets",
        );
    }
    let p = Pull {
        number: r.pulls.len() as u64 + 1,
        head,
        base,
        title: body["title"].as_str().unwrap_or_default().into(),
        open: true,
        merged: false,
        merge_commit_sha: None,
        unmergeable: false,
    };
    r.pulls.push(p.clone());
    (StatusCode::CREATED, Json(pr_json(&r.bare, &p, true))).into_response()
}

#[derive(serde::Deserialize)]
struct ListQ {
    state: Option<String>,
    page: Option<usize>,
    limit: Option<usize>,
}

async fn list_prs(
    State(st): State<Shared>,
    UrlPath((owner, repo)): UrlPath<(String, String)>,
    Query(q): Query<ListQ>,
) -> Response {
    let s = st.lock().unwrap();
    let Some(r) = s.repos.get(&format!("{owner}/{repo}")) else {
        return msg(StatusCode::NOT_FOUND, "repo not found");
    };
    let state = q.state.as_deref();
    let limit = q.limit.unwrap_or(30).clamp(1, 50);
    let page = q.page.unwrap_or(1).max(1);
    let list: Vec<Value> = r
        .pulls
        .iter()
        .filter(|p| match state {
            Some("open") => p.open,
            Some("closed") => !p.open,
            _ => true,
        })
        .skip((page - 1) * limit)
        .take(limit)
        .map(|p| pr_json(&r.bare, p, true))
        .collect();
    Json(json!(list)).into_response()
}

async fn get_pr(
    State(st): State<Shared>,
    UrlPath((owner, repo, n)): UrlPath<(String, String, u64)>,
) -> Response {
    let s = st.lock().unwrap();
    let Some(r) = s.repos.get(&format!("{owner}/{repo}")) else {
        return msg(StatusCode::NOT_FOUND, "repo not found");
    };
    let Some(p) = r.pulls.iter().find(|p| p.number == n) else {
        return msg(StatusCode::NOT_FOUND, "pull request not found");
    };
    let mergeable = !p.unmergeable && (p.merged || clean_merge(&r.bare, &p.base, &p.head));
    Json(pr_json(&r.bare, p, mergeable)).into_response()
}

async fn merge_pr(
    State(st): State<Shared>,
    UrlPath((owner, repo, n)): UrlPath<(String, String, u64)>,
    Json(body): Json<Value>,
) -> Response {
    let (answer, hang) = merge_now(&st, &owner, &repo, n, &body);
    if hang {
        tokio::time::sleep(std::time::Duration::from_secs(600)).await;
    }
    answer
}

/// The merge POST under the lock; whether the answer must hang.
fn merge_now(st: &Shared, owner: &str, repo: &str, n: u64, body: &Value) -> (Response, bool) {
    let mut s = st.lock().unwrap();
    s.merge_posts += 1;
    let fault = s.merge_faults.pop_front();
    let root = s.root.clone();
    let Some(r) = s.repos.get_mut(&format!("{owner}/{repo}")) else {
        return (msg(StatusCode::NOT_FOUND, "repo not found"), false);
    };
    let Some(p) = r.pulls.iter_mut().find(|p| p.number == n) else {
        return (msg(StatusCode::NOT_FOUND, "pull request not found"), false);
    };
    match fault {
        Some(MergeFault::TryAgainLater) => {
            return (
                msg(StatusCode::METHOD_NOT_ALLOWED, "Please try again later"),
                false,
            );
        }
        Some(MergeFault::Conflict) => {
            return (msg(StatusCode::CONFLICT, "head out of date"), false);
        }
        Some(MergeFault::ServerError) => {
            return (
                msg(StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
                false,
            );
        }
        Some(MergeFault::Forbidden) => {
            return (
                msg(StatusCode::FORBIDDEN, "User not allowed to merge PR"),
                false,
            );
        }
        Some(MergeFault::NotMergeable) => {
            p.unmergeable = true;
            return (msg(StatusCode::CONFLICT, "merge conflict"), false);
        }
        Some(MergeFault::LandedAnswerLost | MergeFault::LandedThenHang) | None => {}
    }
    let lose_answer = matches!(fault, Some(MergeFault::LandedAnswerLost));
    let hang = matches!(fault, Some(MergeFault::LandedThenHang));
    if p.merged {
        return (
            msg(StatusCode::METHOD_NOT_ALLOWED, "PR already merged"),
            false,
        );
    }
    if !p.open {
        return (msg(StatusCode::NOT_FOUND, "pull request is closed"), false);
    }
    let head_tip = try_git(&r.bare, &["rev-parse", &format!("refs/heads/{}", p.head)]).1;
    if let Some(want) = body.get("head_commit_id").and_then(Value::as_str)
        && !want.is_empty()
        && want != head_tip
    {
        return (msg(StatusCode::CONFLICT, "head out of date"), false);
    }
    // A real merge: a scratch clone merges and pushes the base branch.
    let work = root
        .join("merges")
        .join(format!("{owner}-{repo}-{n}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["clone", "--quiet", r.bare.to_str().unwrap(), "."]);
    git(&work, &["checkout", "--quiet", &p.base]);
    let title = format!("Merge pull request '{}' (#{n})", p.title);
    if !try_git(
        &work,
        &[
            "merge",
            "--no-ff",
            "-m",
            &title,
            &format!("origin/{}", p.head),
        ],
    )
    .0
    {
        p.unmergeable = true;
        return (msg(StatusCode::CONFLICT, "merge conflict"), false);
    }
    git(&work, &["push", "--quiet", "origin", &p.base]);
    p.merged = true;
    p.open = false;
    p.merge_commit_sha = Some(git(&work, &["rev-parse", "HEAD"]));
    if lose_answer {
        return (
            msg(StatusCode::BAD_GATEWAY, "upstream connection reset"),
            false,
        );
    }
    ((StatusCode::OK, "").into_response(), hang)
}

async fn compare(
    State(st): State<Shared>,
    UrlPath((owner, repo, basehead)): UrlPath<(String, String, String)>,
) -> Response {
    let s = st.lock().unwrap();
    let Some(r) = s.repos.get(&format!("{owner}/{repo}")) else {
        return msg(StatusCode::NOT_FOUND, "repo not found");
    };
    let Some((base, head)) = basehead.split_once("...") else {
        return msg(StatusCode::NOT_FOUND, "bad basehead");
    };
    let is_ref = |name: &str| {
        ["refs/heads/", "refs/tags/"].iter().any(|p| {
            try_git(
                &r.bare,
                &["rev-parse", "--verify", "--quiet", &format!("{p}{name}")],
            )
            .0
        })
    };
    if s.version == GiteaVersion::V1_22 && !(is_ref(base) && is_ref(head)) {
        // 1.22 resolves only branch and tag names here.
        return msg(StatusCode::NOT_FOUND, "GetRefCommitID");
    }
    match try_git(
        &r.bare,
        &["rev-list", "--count", &format!("{base}..{head}")],
    ) {
        (true, n) => Json(json!({"total_commits": n.parse::<u64>().unwrap_or(0), "commits": []}))
            .into_response(),
        (false, _) => msg(StatusCode::NOT_FOUND, "commit not found"),
    }
}

async fn delete_branch(
    State(st): State<Shared>,
    UrlPath((owner, repo, branch)): UrlPath<(String, String, String)>,
) -> Response {
    let s = st.lock().unwrap();
    let Some(r) = s.repos.get(&format!("{owner}/{repo}")) else {
        return msg(StatusCode::NOT_FOUND, "repo not found");
    };
    if branch == r.default_branch {
        return msg(StatusCode::FORBIDDEN, "can not delete the default branch");
    }
    let refname = format!("refs/heads/{branch}");
    if !try_git(&r.bare, &["rev-parse", "--verify", &refname]).0 {
        return msg(StatusCode::NOT_FOUND, "branch not found");
    }
    git(&r.bare, &["update-ref", "-d", &refname]);
    StatusCode::NO_CONTENT.into_response()
}
