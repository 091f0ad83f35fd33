//! The Gitea adapter of the `Forge` port (F-07), seed 004 (ORCH-093).
//!
//! `Authorization: token <t>` against `<base>/api/v1/`. `ensure_open_pr`
//! first asks git whether the branch is already fully in the default branch
//! (then no empty PR is made; a git error fails open to creating one).
//! `merge_pr` retries ONLY the merge POST, on transient answers, with
//! bounded exponential backoff; terminal answers return at once. Never
//! pushes main, never deletes the default branch.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::retry::{Sleeper, TokioSleeper, backoff};
use super::{ClientError, Forge, ForgeRepo, MergeOutcome, PrState};
use crate::config::{Secret, Settings};

const SERVICE: &str = "gitea";

/// The merge retry schedule (from `ORCH_MERGE_RETRY_*`).
#[derive(Debug, Clone)]
pub struct MergeRetry {
    /// Off: one attempt.
    pub enabled: bool,
    pub max_attempts: u32,
    pub base: Duration,
    pub max: Duration,
}

impl MergeRetry {
    pub fn from_settings(s: &Settings) -> Self {
        Self {
            enabled: s.merge_retry_enabled,
            max_attempts: s.merge_retry_max_attempts.max(1),
            base: Duration::from_secs(s.merge_retry_base_s),
            max: Duration::from_secs(s.merge_retry_max_s),
        }
    }

    fn attempts(&self) -> u32 {
        if self.enabled {
            self.max_attempts.max(1)
        } else {
            1
        }
    }
}

pub struct GiteaClient {
    http: reqwest::Client,
    api: String,
    token: Secret,
    retry: MergeRetry,
    sleeper: Arc<dyn Sleeper>,
    /// Bound on each git command of the already-in-main guard.
    git_timeout: Duration,
}

/// How one merge POST ended.
enum Attempt {
    Merged,
    /// 409 "head out of date": the PR's head is no longer the commit we
    /// asked to merge. Not transient: the same head never merges.
    HeadMoved(String),
    Transient(String),
    Terminal(String),
}

impl GiteaClient {
    pub fn new(settings: &Settings) -> Result<Self, ClientError> {
        Self::with_parts(settings, Duration::from_secs(30), Arc::new(TokioSleeper))
    }

    pub fn with_parts(
        settings: &Settings,
        timeout: Duration,
        sleeper: Arc<dyn Sleeper>,
    ) -> Result<Self, ClientError> {
        let base = settings.gitea_base_url.trim().trim_end_matches('/');
        if base.is_empty() {
            return Err(ClientError::Config("ORCH_GITEA_BASE_URL is empty".into()));
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| ClientError::Config(format!("building the Gitea HTTP client: {e}")))?;
        Ok(Self {
            http,
            api: format!("{base}/api/v1"),
            token: settings.gitea_token.clone(),
            retry: MergeRetry::from_settings(settings),
            sleeper,
            git_timeout: Duration::from_secs(120),
        })
    }

    /// `<api>/repos/<owner>/<name>/<tail...>`, each segment percent-encoded.
    fn url(&self, repo: &ForgeRepo, tail: &[&str]) -> Result<reqwest::Url, ClientError> {
        let mut url = reqwest::Url::parse(&self.api)
            .map_err(|e| ClientError::Config(format!("ORCH_GITEA_BASE_URL: {e}")))?;
        let (owner, name) = repo.full_name.split_once('/').ok_or_else(|| {
            ClientError::Config(format!("gitea_repo {:?} is not owner/name", repo.full_name))
        })?;
        url.path_segments_mut()
            .map_err(|_| ClientError::Config("ORCH_GITEA_BASE_URL cannot be a base".into()))?
            .pop_if_empty()
            .extend(["repos", owner, name])
            .extend(tail);
        Ok(url)
    }

    async fn call(
        &self,
        method: Method,
        url: reqwest::Url,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), reqwest::Error> {
        let mut req = self
            .http
            .request(method, url)
            .header("Authorization", format!("token {}", self.token.expose()));
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        let v = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok((status, v))
    }

    async fn call_checked(
        &self,
        method: Method,
        url: reqwest::Url,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), ClientError> {
        self.call(method, url, body)
            .await
            .map_err(|e| ClientError::Unavailable {
                service: SERVICE,
                detail: e.to_string(),
            })
    }

    async fn get_pr(&self, repo: &ForgeRepo, number: u64) -> Result<Value, ClientError> {
        let n = number.to_string();
        let url = self.url(repo, &["pulls", &n])?;
        let (status, v) = self.call_checked(Method::GET, url, None).await?;
        if status.is_success() {
            Ok(v)
        } else {
            Err(rejected(status, &v))
        }
    }

    /// The open PR of `branch` into the default branch, if any.
    async fn find_open_pr(
        &self,
        repo: &ForgeRepo,
        branch: &str,
    ) -> Result<Option<u64>, ClientError> {
        let hit = self
            .scan_prs(repo, &[("state", "open")], 20, |p| {
                p.pointer("/head/ref").and_then(Value::as_str) == Some(branch)
            })
            .await?;
        Ok(hit.and_then(|p| p.get("number").and_then(Value::as_u64)))
    }

    /// The first PR into the default branch, over at most `pages` pages of
    /// 50 with the `query`, for which `pick` holds.
    async fn scan_prs(
        &self,
        repo: &ForgeRepo,
        query: &[(&str, &str)],
        pages: u32,
        pick: impl Fn(&Value) -> bool,
    ) -> Result<Option<Value>, ClientError> {
        for page in 1..=pages {
            let mut url = self.url(repo, &["pulls"])?;
            url.query_pairs_mut()
                .extend_pairs(query.iter().copied())
                .append_pair("limit", "50")
                .append_pair("page", &page.to_string());
            let (status, v) = self.call_checked(Method::GET, url, None).await?;
            if !status.is_success() {
                return Err(rejected(status, &v));
            }
            let Some(list) = v.as_array() else {
                return Ok(None);
            };
            let hit = list.iter().find(|p| {
                p.pointer("/base/ref").and_then(Value::as_str) == Some(&repo.default_branch)
                    && pick(p)
            });
            if let Some(p) = hit {
                return Ok(Some(p.clone()));
            }
            if list.len() < 50 {
                return Ok(None);
            }
        }
        Ok(None)
    }

    /// The already-in-main guard: fetch both branches into the local clone,
    /// then `git merge-base --is-ancestor origin/<branch> origin/<default>`.
    /// `Some(true)` in main, `Some(false)` not, `None` git could not tell.
    async fn branch_in_main(&self, repo: &ForgeRepo, branch: &str) -> Option<bool> {
        let dir = repo.local_clone.as_path();
        let refspec = |b: &str| format!("+refs/heads/{b}:refs/remotes/origin/{b}");
        let fetch = [
            "fetch",
            "--quiet",
            "origin",
            &refspec(branch),
            &refspec(&repo.default_branch),
        ];
        // A stale origin/<branch> could claim "in main" for a branch that has
        // new commits: fetch first, and on a failed fetch let the PR be made.
        if git(dir, &fetch, self.git_timeout).await != Some(0) {
            return None;
        }
        let ours = format!("refs/remotes/origin/{branch}");
        let main = format!("refs/remotes/origin/{}", repo.default_branch);
        match git(
            dir,
            &["merge-base", "--is-ancestor", &ours, &main],
            self.git_timeout,
        )
        .await
        {
            Some(0) => Some(true),
            Some(1) => Some(false),
            _ => None,
        }
    }

    /// Fetch the default branch into the local clone, then
    /// `merge-base --is-ancestor <sha> origin/<default>`. `None` when git
    /// cannot tell: never a "no" that is really "I do not know".
    async fn sha_in_main_by_git(&self, repo: &ForgeRepo, sha: &str) -> Option<bool> {
        let dir = repo.local_clone.as_path();
        if !is_hex_sha(sha) || !dir.join(".git").exists() && !dir.join("HEAD").exists() {
            return None;
        }
        let main = &repo.default_branch;
        let refspec = format!("+refs/heads/{main}:refs/remotes/origin/{main}");
        if git(
            dir,
            &["fetch", "--quiet", "origin", &refspec],
            self.git_timeout,
        )
        .await
            != Some(0)
        {
            tracing::warn!(repo = %repo.full_name, "fetch of the default branch failed; asking the forge");
            return None;
        }
        let commit = format!("{sha}^{{commit}}");
        if git(dir, &["cat-file", "-e", &commit], self.git_timeout).await != Some(0) {
            return None;
        }
        let theirs = format!("refs/remotes/origin/{main}");
        match git(
            dir,
            &["merge-base", "--is-ancestor", sha, &theirs],
            self.git_timeout,
        )
        .await
        {
            Some(0) => Some(true),
            Some(1) => Some(false),
            _ => None,
        }
    }

    /// `compare <default>...<sha>`: the commits of `sha` not in the default
    /// branch; none means it is in main. Gitea accepts a commit id here only
    /// from 1.23.0 (go-gitea/gitea#32801): a 404 from 1.22 says nothing about
    /// the commit, so it is an error, never `false`.
    async fn sha_in_main_by_compare(
        &self,
        repo: &ForgeRepo,
        sha: &str,
    ) -> Result<bool, ClientError> {
        let basehead = format!("{}...{sha}", repo.default_branch);
        let url = self.url(repo, &["compare", &basehead])?;
        let (status, v) = self.call_checked(Method::GET, url, None).await?;
        match status {
            s if s.is_success() => v
                .get("total_commits")
                .and_then(Value::as_u64)
                .map(|n| n == 0)
                .ok_or_else(|| rejected(s, &v)),
            StatusCode::NOT_FOUND => Err(ClientError::Unavailable {
                service: SERVICE,
                detail: format!(
                    "compare {basehead} answered 404 (Gitea before 1.23 takes no commit id there) and the local clone cannot tell"
                ),
            }),
            s => Err(rejected(s, &v)),
        }
    }

    async fn merge_once(&self, repo: &ForgeRepo, number: u64, head_sha: &str) -> Attempt {
        let n = number.to_string();
        let url = match self.url(repo, &["pulls", &n, "merge"]) {
            Ok(u) => u,
            Err(e) => return Attempt::Terminal(e.to_string()),
        };
        let mut body = json!({ "Do": "merge" });
        if !head_sha.is_empty() {
            body["head_commit_id"] = json!(head_sha);
        }
        let (status, v) = match self.call(Method::POST, url, Some(&body)).await {
            Ok(r) => r,
            // The POST may have landed: the next attempt's answer (405
            // "already merged") and the PR's `merged` flag tell.
            Err(e) => return Attempt::Transient(format!("network: {e}")),
        };
        let text = v.to_string();
        match status.as_u16() {
            200..=299 => Attempt::Merged,
            405 if text.to_ascii_lowercase().contains("try again later") => {
                Attempt::Transient(format!("405: {}", snippet(&text)))
            }
            408 | 500..=599 => Attempt::Transient(format!("{status}: {}", snippet(&text))),
            405 | 409 | 422 => match self.get_pr(repo, number).await {
                Ok(pr) if pr.get("merged").and_then(Value::as_bool) == Some(true) => {
                    Attempt::Merged
                }
                Ok(pr)
                    if status == StatusCode::CONFLICT
                        && !head_sha.is_empty()
                        && pr
                            .pointer("/head/sha")
                            .and_then(Value::as_str)
                            .is_some_and(|now| !now.is_empty() && now != head_sha) =>
                {
                    let now = pr.pointer("/head/sha").and_then(Value::as_str);
                    Attempt::HeadMoved(now.unwrap_or_default().to_string())
                }
                Ok(pr)
                    if status.as_u16() != 405
                        && pr.get("mergeable").and_then(Value::as_bool) == Some(true) =>
                {
                    Attempt::Transient(format!(
                        "{status} while still mergeable: {}",
                        snippet(&text)
                    ))
                }
                Ok(pr) => Attempt::Terminal(format!(
                    "{status}: {} (mergeable: {})",
                    snippet(&text),
                    pr.get("mergeable").unwrap_or(&Value::Null)
                )),
                Err(e) => Attempt::Transient(format!("{status}, then the PR read failed: {e}")),
            },
            _ => Attempt::Terminal(format!("{status}: {}", snippet(&text))),
        }
    }

    /// The merge commit of a merged PR; the head SHA when it cannot be read
    /// (the SHA-in-main check after a merge works with either).
    async fn merge_sha(&self, repo: &ForgeRepo, number: u64, head_sha: &str) -> String {
        match self.get_pr(repo, number).await {
            Ok(pr) => pr
                .get("merge_commit_sha")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .unwrap_or(head_sha)
                .to_string(),
            Err(e) => {
                tracing::warn!(pr = number, error = %e, "merged, but the merge commit could not be read");
                head_sha.to_string()
            }
        }
    }
}

#[async_trait]
impl Forge for GiteaClient {
    async fn ensure_open_pr(
        &self,
        repo: &ForgeRepo,
        branch: &str,
        title: &str,
        body: &str,
    ) -> Result<PrState, ClientError> {
        if branch.is_empty() || branch == repo.default_branch {
            return Err(ClientError::Config(format!(
                "no PR from {branch:?} into {}",
                repo.default_branch
            )));
        }
        match self.branch_in_main(repo, branch).await {
            Some(true) => {
                tracing::info!(repo = %repo.full_name, branch, "branch already fully in main: no PR");
                return Ok(PrState::AlreadyInMain);
            }
            Some(false) => {}
            None => {
                tracing::warn!(repo = %repo.full_name, branch, "already-in-main check failed; creating the PR anyway")
            }
        }
        let url = self.url(repo, &["pulls"])?;
        let req =
            json!({ "head": branch, "base": repo.default_branch, "title": title, "body": body });
        let (status, v) = self.call_checked(Method::POST, url, Some(&req)).await?;
        match status {
            s if s.is_success() => v
                .get("number")
                .and_then(Value::as_u64)
                .map(|number| PrState::Open { number })
                .ok_or_else(|| rejected(s, &v)),
            // An open PR for this head and base exists: use it.
            StatusCode::CONFLICT => match self.find_open_pr(repo, branch).await? {
                Some(number) => Ok(PrState::Open { number }),
                None => Err(rejected(status, &v)),
            },
            s => Err(rejected(s, &v)),
        }
    }

    async fn merge_pr(
        &self,
        repo: &ForgeRepo,
        number: u64,
        head_sha: &str,
    ) -> Result<MergeOutcome, ClientError> {
        let attempts = self.retry.attempts();
        let mut last = String::new();
        for attempt in 1..=attempts {
            match self.merge_once(repo, number, head_sha).await {
                Attempt::Merged => {
                    let sha = self.merge_sha(repo, number, head_sha).await;
                    tracing::info!(repo = %repo.full_name, pr = number, attempt, %sha, "PR merged");
                    return Ok(MergeOutcome::Merged { sha });
                }
                Attempt::HeadMoved(now) => {
                    tracing::warn!(repo = %repo.full_name, pr = number, attempt, ours = head_sha, theirs = %now, "merge refused: the PR head moved");
                    return Ok(MergeOutcome::HeadMoved { head: now });
                }
                Attempt::Terminal(reason) => {
                    tracing::warn!(repo = %repo.full_name, pr = number, attempt, %reason, "merge refused");
                    return Ok(MergeOutcome::NotMerged { reason });
                }
                Attempt::Transient(reason) => {
                    last = reason;
                    if attempt < attempts {
                        let wait = backoff(attempt, self.retry.base, self.retry.max);
                        tracing::info!(repo = %repo.full_name, pr = number, attempt, reason = %last, wait_s = wait.as_secs_f64(), "merge retried");
                        self.sleeper.sleep(wait).await;
                    }
                }
            }
        }
        Ok(MergeOutcome::NotMerged {
            reason: format!("{last} (after {attempts} attempts)"),
        })
    }

    async fn sha_in_main(&self, repo: &ForgeRepo, sha: &str) -> Result<bool, ClientError> {
        // Our own clone first: it works on every Gitea version (issue 11
        // pt 1). Only when git cannot tell (no clone, fetch failed, the
        // commit is not in the clone) is the forge asked.
        if let Some(known) = self.sha_in_main_by_git(repo, sha).await {
            return Ok(known);
        }
        self.sha_in_main_by_compare(repo, sha).await
    }

    async fn merged_pr_of(
        &self,
        repo: &ForgeRepo,
        branch: &str,
    ) -> Result<Option<Value>, ClientError> {
        // Recently updated closed PRs first: a merge the poll looks for is
        // recent. A few pages bound the cost of one reconciler pass.
        self.scan_prs(
            repo,
            &[("state", "closed"), ("sort", "recentupdate")],
            3,
            |p| {
                p.get("merged").and_then(Value::as_bool) == Some(true)
                    && p.pointer("/head/ref").and_then(Value::as_str) == Some(branch)
            },
        )
        .await
    }

    async fn delete_branch(&self, repo: &ForgeRepo, branch: &str) -> Result<(), ClientError> {
        let b = branch.trim();
        if b.is_empty() || b == repo.default_branch || b == "main" || b == "master" {
            tracing::error!(repo = %repo.full_name, branch, "refused to delete the default branch");
            return Err(ClientError::Blocked(format!(
                "never delete the default branch ({branch:?} of {})",
                repo.full_name
            )));
        }
        let mut tail = vec!["branches"];
        tail.extend(b.split('/'));
        let url = self.url(repo, &tail)?;
        let (status, v) = self.call_checked(Method::DELETE, url, None).await?;
        match status {
            s if s.is_success() => Ok(()),
            // Already gone: deleting is idempotent.
            StatusCode::NOT_FOUND => Ok(()),
            s => Err(rejected(s, &v)),
        }
    }
}

/// Run git in `dir`; its exit code, `None` when it could not run or timed out.
async fn git(dir: &Path, args: &[&str], timeout: Duration) -> Option<i32> {
    let out = crate::git::run(dir, args, timeout).await.ok()?;
    if !matches!(out.code, Some(0 | 1)) {
        tracing::debug!(dir = %dir.display(), ?args, stderr = %out.stderr, "git failed");
    }
    out.code
}

fn is_hex_sha(s: &str) -> bool {
    (7..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn snippet(s: &str) -> String {
    s.chars().take(200).collect()
}

fn rejected(status: StatusCode, v: &Value) -> ClientError {
    ClientError::Rejected {
        service: SERVICE,
        status: status.as_u16(),
        body: snippet(&v.to_string()),
    }
}

/// The forge when Gitea is not configured: refuses forge work (a caller
/// must never believe a PR was made or merged), deletes nothing.
#[derive(Debug, Default)]
pub struct DisabledForge {
    said: std::sync::atomic::AtomicBool,
}

impl DisabledForge {
    fn refuse(&self) -> ClientError {
        if !self.said.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(
                "Gitea is not configured (ORCH_GITEA_BASE_URL is empty): forge calls do nothing"
            );
        }
        ClientError::Config("Gitea is not configured (ORCH_GITEA_BASE_URL is empty)".into())
    }
}

#[async_trait]
impl Forge for DisabledForge {
    async fn ensure_open_pr(
        &self,
        _: &ForgeRepo,
        _: &str,
        _: &str,
        _: &str,
    ) -> Result<PrState, ClientError> {
        Err(self.refuse())
    }
    async fn merge_pr(&self, _: &ForgeRepo, _: u64, _: &str) -> Result<MergeOutcome, ClientError> {
        Err(self.refuse())
    }
    async fn sha_in_main(&self, _: &ForgeRepo, _: &str) -> Result<bool, ClientError> {
        Err(self.refuse())
    }
    async fn delete_branch(&self, _: &ForgeRepo, _: &str) -> Result<(), ClientError> {
        let _ = self.refuse();
        Ok(())
    }
}

/// The daemon's forge: Gitea when `ORCH_GITEA_BASE_URL` is set.
pub fn forge_from_settings(settings: &Settings) -> Arc<dyn Forge> {
    if settings.gitea_base_url.trim().is_empty() {
        return Arc::new(DisabledForge::default());
    }
    match GiteaClient::new(settings) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            tracing::error!(error = %e, "cannot build the Gitea client; forge calls do nothing");
            Arc::new(DisabledForge::default())
        }
    }
}
