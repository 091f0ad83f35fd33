//! The Plane client (F-03) and its write guard (F-04) against the Plane
//! double: state ids resolved and cached per project (refreshed on a miss),
//! idempotent comments, newest comment across pages, the bot's id, retries on
//! 429 / 5xx / timeouts with a bounded schedule, and writes blocked outside
//! live mode before any request is made.

mod support;

use std::sync::Arc;
use std::time::Duration;

use orchestrator::clients::plane::{PlaneClient, PlanePolicy};
use orchestrator::clients::retry::RecordingSleeper;
use orchestrator::clients::{ClientError, Tracker, TrackerRef};
use support::plane_double::{BOT_ID, Comment, Fault, HUMAN_ID, PlaneDouble, PlaneVersion};

struct Env {
    _dir: tempfile::TempDir,
    plane: PlaneDouble,
    client: PlaneClient,
    sleeper: Arc<RecordingSleeper>,
    item: TrackerRef,
}

fn policy() -> PlanePolicy {
    PlanePolicy {
        timeout: Duration::from_millis(500),
        per_page: 2,
        ..PlanePolicy::default()
    }
}

async fn env(extra: &[(&str, &str)]) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let plane = PlaneDouble::start("acme", "key").await;
    let pid = plane.add_project("DEMO");
    let issue = plane.add_item(&pid, 1, "First");
    let base = plane.base_url();
    let mut pairs = vec![
        ("ORCH_PLANE_BASE_URL", base.as_str()),
        ("ORCH_PLANE_API_KEY", "key"),
        ("ORCH_PLANE__WORKSPACE", "acme"),
    ];
    pairs.extend_from_slice(extra);
    let settings = support::settings_in(dir.path(), &pairs);
    let sleeper = Arc::new(RecordingSleeper::default());
    let client = PlaneClient::with_policy(&settings, policy(), sleeper.clone()).unwrap();
    let item = TrackerRef {
        project: "demo".into(),
        tracker_project_id: pid,
        issue_id: issue,
        work_item: "DEMO-1".into(),
    };
    Env {
        _dir: dir,
        plane,
        client,
        sleeper,
        item,
    }
}

impl Env {
    fn count(&self, method: &str, path_end: &str) -> usize {
        self.plane
            .requests()
            .iter()
            .filter(|(m, p)| m == method && p.ends_with(path_end))
            .count()
    }
}

#[tokio::test]
async fn set_status_resolves_ids_caches_them_and_refreshes_on_a_miss() {
    let e = env(&[("ORCH_PLANE__STATUSES__DEPLOYING", "Shiny")]).await;
    e.client.set_status(&e.item, "in_progress").await.unwrap();
    assert_eq!(e.plane.state_of(&e.item.issue_id), "In Progress");
    e.client.set_status(&e.item, "needs_input").await.unwrap();
    assert_eq!(e.plane.state_of(&e.item.issue_id), "Needs Input");
    // 14 states at 2 per page: one full listing, cached for the second call.
    assert_eq!(e.count("GET", "/states/"), 7, "{:?}", e.plane.requests());

    // A state created after the cache was filled: one refresh finds it.
    e.plane.add_state(&e.item.tracker_project_id, "Shiny");
    e.client.set_status(&e.item, "deploying").await.unwrap();
    assert_eq!(e.plane.state_of(&e.item.issue_id), "Shiny");
    assert_eq!(e.count("GET", "/states/"), 15);

    assert_eq!(
        e.client.current_status(&e.item).await.unwrap().as_deref(),
        Some("deploying")
    );
    let sid = e
        .plane
        .lock()
        .state_id(&e.item.tracker_project_id, "Approved")
        .unwrap();
    assert_eq!(
        e.client
            .status_key_of(&e.item.tracker_project_id, &sid)
            .await
            .unwrap()
            .as_deref(),
        Some("approved")
    );
    let backlog = e
        .plane
        .lock()
        .state_id(&e.item.tracker_project_id, "Backlog")
        .unwrap();
    assert_eq!(
        e.client
            .status_key_of(&e.item.tracker_project_id, &backlog)
            .await
            .unwrap(),
        None,
        "Backlog is none of ours"
    );
}

#[tokio::test]
async fn a_status_name_the_project_lacks_is_a_config_error() {
    let e = env(&[("ORCH_PLANE__STATUSES__DONE", "Shipped")]).await;
    let r = e.client.set_status(&e.item, "done").await;
    assert!(
        matches!(&r, Err(ClientError::Config(m)) if m.contains("Shipped")),
        "{r:?}"
    );
    assert_eq!(e.count("PATCH", "/"), 0);
}

#[tokio::test]
async fn comments_are_idempotent_on_their_external_id() {
    let e = env(&[]).await;
    e.client
        .add_comment(&e.item, "start:DEMO-1:analysis:1", "<p>Analyst started</p>")
        .await
        .unwrap();
    // The repeat meets 409 and counts as done.
    e.client
        .add_comment(&e.item, "start:DEMO-1:analysis:1", "<p>Analyst started</p>")
        .await
        .unwrap();
    let cs = e.plane.comments(&e.item.issue_id);
    assert_eq!(cs.len(), 1);
    assert_eq!(cs[0].external_source.as_deref(), Some("orchestrator"));
    assert_eq!(
        cs[0].external_id.as_deref(),
        Some("start:DEMO-1:analysis:1")
    );
    assert_eq!(e.count("POST", "/comments/"), 2);
}

#[tokio::test]
async fn latest_comment_is_the_newest_human_one_across_pages() {
    let e = env(&[]).await;
    assert_eq!(e.client.latest_comment(&e.item).await.unwrap(), None);
    {
        let mut s = e.plane.lock();
        let list = s.comments.entry(e.item.issue_id.clone()).or_default();
        for (i, t) in ["10:00:01", "10:00:05", "10:00:03", "10:00:02", "10:00:04"]
            .iter()
            .enumerate()
        {
            list.push(Comment {
                id: format!("c{i}"),
                html: format!("<p>at {t}</p>"),
                created_at: format!("2026-11-20T{t}.000Z"),
                created_by: HUMAN_ID.into(),
                external_source: None,
                external_id: None,
            });
        }
        // Our own comment is newer still, but it is not the person's reason.
        list.push(Comment {
            id: "ours".into(),
            html: "<p>Approval requested</p>".into(),
            created_at: "2026-11-20T10:00:09.000Z".into(),
            created_by: BOT_ID.into(),
            external_source: Some("orchestrator".into()),
            external_id: Some("k".into()),
        });
    }
    let newest = e.client.latest_comment(&e.item).await.unwrap();
    assert_eq!(newest.as_deref(), Some("<p>at 10:00:05</p>"));
    let all = e.client.comments(&e.item).await.unwrap();
    let times: Vec<&str> = all.iter().map(|c| &c.created_at[11..19]).collect();
    assert_eq!(
        times,
        [
            "10:00:09", "10:00:05", "10:00:04", "10:00:03", "10:00:02", "10:00:01"
        ],
        "newest first, across 3 pages of 2"
    );
    assert!(e.count("GET", "/comments/") >= 3, "followed the pages");
}

#[tokio::test]
async fn bot_user_id_comes_from_users_me_or_the_setting() {
    let e = env(&[]).await;
    assert_eq!(
        e.client.bot_user_id().await.unwrap().as_deref(),
        Some(BOT_ID)
    );
    assert_eq!(
        e.client.bot_user_id().await.unwrap().as_deref(),
        Some(BOT_ID)
    );
    assert_eq!(e.count("GET", "/users/me/"), 1, "cached");

    let e = env(&[(
        "ORCH_PLANE_BOT_USER_ID",
        "11111111-2222-4333-8444-555555555555",
    )])
    .await;
    assert_eq!(
        e.client.bot_user_id().await.unwrap().as_deref(),
        Some("11111111-2222-4333-8444-555555555555")
    );
    assert_eq!(e.count("GET", "/users/me/"), 0);
}

#[tokio::test]
async fn a_429_waits_for_its_retry_after() {
    // Plane's 429 carries `Retry-After` and nothing else (issue 11 pt 2):
    // the client waits that long before ANY request, then goes on.
    let e = env(&[]).await;
    e.plane.push_fault(Fault::RateLimited { retry_after_s: 1 });
    e.client.set_status(&e.item, "in_progress").await.unwrap();
    assert_eq!(e.plane.state_of(&e.item.issue_id), "In Progress");
    let t = e.plane.lock().timeline.clone();
    let throttled = t.iter().position(|(_, _, _, s)| *s == 429).unwrap();
    let (at, ..) = t[throttled];
    let (next, ..) = t[throttled + 1];
    assert!(
        next.duration_since(at) >= Duration::from_secs(1),
        "the next request waited for Retry-After: {:?}",
        next.duration_since(at)
    );
    assert!(e.sleeper.waits().is_empty(), "no backoff guess instead");
}

#[tokio::test]
async fn server_errors_and_timeouts_are_retried_with_backoff() {
    let e = env(&[]).await;
    e.plane.push_fault(Fault::ServerError);
    e.plane.push_fault(Fault::ServerError);
    e.client.set_status(&e.item, "in_progress").await.unwrap();
    assert_eq!(
        e.sleeper.waits(),
        vec![Duration::from_millis(500), Duration::from_secs(1)]
    );

    // Slower than the client's timeout: retried, then answered.
    e.plane.push_fault(Fault::Slow(Duration::from_secs(2)));
    let key = e.client.current_status(&e.item).await.unwrap();
    assert_eq!(key.as_deref(), Some("in_progress"));
    assert_eq!(e.sleeper.waits().len(), 3);
}

#[tokio::test]
async fn retries_are_bounded() {
    let e = env(&[]).await;
    for _ in 0..10 {
        e.plane.push_fault(Fault::ServerError);
    }
    let before = e.plane.requests().len();
    let r = e.client.current_status(&e.item).await;
    assert!(matches!(r, Err(ClientError::Unavailable { .. })), "{r:?}");
    assert_eq!(
        e.plane.requests().len() - before,
        4,
        "max_attempts requests"
    );
    assert_eq!(e.sleeper.waits().len(), 3);
}

#[tokio::test]
async fn the_write_guard_blocks_outside_live_mode_before_any_request() {
    for (mode, sandbox) in [("off", ""), ("sandbox", ""), ("sandbox", "other-project")] {
        let e = env(&[
            ("ORCH_PLANE_WRITE_MODE", mode),
            ("ORCH_PLANE_SANDBOX_PROJECTS", sandbox),
        ])
        .await;
        let set = e.client.set_status(&e.item, "in_progress").await;
        assert!(
            matches!(set, Err(ClientError::Blocked(_))),
            "{mode}: {set:?}"
        );
        let add = e.client.add_comment(&e.item, "k", "<p>x</p>").await;
        assert!(
            matches!(add, Err(ClientError::Blocked(_))),
            "{mode}: {add:?}"
        );
        assert!(e.plane.requests().is_empty(), "{mode}: no network step");
        assert_eq!(e.plane.state_of(&e.item.issue_id), "Backlog");
        // Reads are not writes.
        assert!(e.client.latest_comment(&e.item).await.is_ok());
    }
}

#[tokio::test]
async fn an_allowlisted_sandbox_project_is_writable_and_an_unresolved_one_never() {
    // The allowlist takes the Plane project id or our project name.
    for listed in ["demo", "PID"] {
        let e = env(&[("ORCH_PLANE_WRITE_MODE", "sandbox")]).await;
        let listed = if listed == "PID" {
            e.item.tracker_project_id.clone()
        } else {
            listed.to_string()
        };
        let dir = tempfile::tempdir().unwrap();
        let base = e.plane.base_url();
        let settings = support::settings_in(
            dir.path(),
            &[
                ("ORCH_PLANE_BASE_URL", base.as_str()),
                ("ORCH_PLANE_API_KEY", "key"),
                ("ORCH_PLANE__WORKSPACE", "acme"),
                ("ORCH_PLANE_WRITE_MODE", "sandbox"),
                ("ORCH_PLANE_SANDBOX_PROJECTS", listed.as_str()),
            ],
        );
        let client = PlaneClient::with_policy(&settings, policy(), e.sleeper.clone()).unwrap();
        client.set_status(&e.item, "in_progress").await.unwrap();
        client.add_comment(&e.item, "k", "<p>x</p>").await.unwrap();
        assert_eq!(e.plane.state_of(&e.item.issue_id), "In Progress");
        assert_eq!(e.plane.comments(&e.item.issue_id).len(), 1);

        let mut unresolved = e.item.clone();
        unresolved.tracker_project_id = String::new();
        let r = client.set_status(&unresolved, "done").await;
        assert!(matches!(r, Err(ClientError::Blocked(_))), "{r:?}");
    }
    // Live mode cannot write to an unresolved project either.
    let e = env(&[]).await;
    let mut unresolved = e.item.clone();
    unresolved.tracker_project_id = String::new();
    let before = e.plane.requests().len();
    let r = e.client.add_comment(&unresolved, "k", "x").await;
    assert!(matches!(r, Err(ClientError::Blocked(_))), "{r:?}");
    assert_eq!(e.plane.requests().len(), before);
}

#[tokio::test]
async fn every_call_works_on_plane_1_0_and_1_3() {
    // Issue 11 pt 3: `work-items/` exists only from Plane v1.1.0; the
    // `issues/` paths are served by every version we support.
    for version in [PlaneVersion::V1_0, PlaneVersion::V1_3] {
        let e = env(&[]).await;
        e.plane.set_version(version);
        e.client.set_status(&e.item, "in_progress").await.unwrap();
        assert_eq!(
            e.client.current_status(&e.item).await.unwrap().as_deref(),
            Some("in_progress"),
            "{version:?}"
        );
        e.client
            .add_comment(&e.item, "k1", "<p>hi</p>")
            .await
            .unwrap();
        assert_eq!(e.plane.comments(&e.item.issue_id).len(), 1, "{version:?}");
        assert_eq!(
            e.client.latest_comment(&e.item).await.unwrap(),
            None,
            "our own comment is not a person's"
        );
        assert!(
            e.plane
                .requests()
                .iter()
                .all(|(_, p)| !p.contains("/work-items/")),
            "{version:?}"
        );
    }
}
