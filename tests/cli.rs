//! The operator CLI (B-4) and the local tracker's HTTP routes (B-10)
//! against the real binary on loopback, and `orchestrator demo
//! --exit-when-done` end to end (one merge commit on the demo's main).

mod support;

use std::process::{Command, Output};

use nix::sys::signal::Signal;
use reqwest::Method;
use serde_json::{Value, json};
use support::daemon::{Pair, until, world_of};
use support::gitea_double::git;
use support::pairs::{ADMIN, admin};

/// Run the binary as an operator would; its output.
fn cli(url: &str, token: &str, args: &[&str]) -> Output {
    Command::new(support::bin())
        .args(args)
        .arg("--url")
        .arg(url)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("ORCH_ADMIN_TOKEN", token)
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_drives_a_running_daemon_in_tables_and_json() {
    let w = world_of(Pair::Local, "", &[]).await;
    let mut d = w.start().await;
    let url = d.url("");

    let out = stdout(&cli(
        &url,
        ADMIN,
        &["item", "new", "Add a flag", "--project", "demo"],
    ));
    assert!(out.starts_with("DEMO-1  [To Analyse]  Add a flag"), "{out}");
    until("the intake created the task", 30, || async {
        reqwest::get(d.url("/tasks/DEMO-1")).await.unwrap().status() == 200
    })
    .await;

    let table = stdout(&cli(&url, ADMIN, &["queue"]));
    assert!(table.starts_with("WORK ITEM"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("DEMO-1") && l.contains("analysis")),
        "{table}"
    );
    let q: Value = serde_json::from_str(&stdout(&cli(&url, ADMIN, &["queue", "--json"]))).unwrap();
    assert_eq!(q["tasks"][0]["work_item"], "DEMO-1", "{q}");

    let show = stdout(&cli(&url, ADMIN, &["task", "show", "DEMO-1"]));
    for want in [
        "DEMO-1  Add a flag",
        "STAGES",
        "created -> analysis",
        "RUNS",
        "EFFECTS",
        "lease: none",
    ] {
        assert!(show.contains(want), "{want:?} missing in:\n{show}");
    }
    let t: Value = serde_json::from_str(&stdout(&cli(
        &url,
        ADMIN,
        &["task", "show", "DEMO-1", "--json"],
    )))
    .unwrap();
    assert_eq!(t["stage"], "analysis");
    assert_eq!(t["stages"][0]["to_stage"], "analysis", "{t}");

    let out = stdout(&cli(
        &url,
        ADMIN,
        &["item", "comment", "DEMO-1", "looks right"],
    ));
    assert!(out.starts_with("DEMO-1"), "{out}");
    let out = stdout(&cli(
        &url,
        ADMIN,
        &["item", "set", "DEMO-1", "STOP", "--json"],
    ));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["status"].as_str(), v["queued"].as_bool()),
        (Some("STOP"), Some(true)),
        "{v}"
    );
    until("STOP cancelled the task", 30, || async {
        let t: Value = reqwest::get(d.url("/tasks/DEMO-1"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        t["stage"] == "cancelled"
    })
    .await;
    let out = stdout(&cli(&url, ADMIN, &["lease", "release", "DEMO-1"]));
    assert_eq!(out, "DEMO-1: no lease was held\n");
    let (_, item) = admin(&d, Method::GET, "/items/DEMO-1", None).await;
    assert_eq!(item["comments"][0]["author"], "person", "{item}");
    assert!(
        item["comments"][0]["html"]
            .as_str()
            .unwrap()
            .contains("looks right")
    );

    // Wrong token, a daemon that is not there, an unknown work item: a
    // clear message and a non-zero exit.
    let bad = cli(&url, "wrong", &["item", "set", "DEMO-1", "Approved"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("refused the admin token"),
        "{bad:?}"
    );
    let gone = cli("http://127.0.0.1:9", ADMIN, &["queue"]);
    assert!(!gone.status.success());
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("no orchestrator daemon answers"),
        "{gone:?}"
    );
    let unknown = cli(&url, ADMIN, &["task", "show", "DEMO-99"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no task for work item DEMO-99"));

    d.signal(Signal::SIGTERM);
    d.exited(30).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_routes_answer_4xx_for_bad_input_and_store_a_status_once() {
    let w = world_of(Pair::Local, "", &[]).await;
    let mut d = w.start().await;
    let http = reqwest::Client::new();
    let post = |path: &str, token: Option<&str>, body: &str| {
        let mut r = http
            .post(d.url(path))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let code = |r: reqwest::Response| r.status().as_u16();
    let ok = r#"{"project":"demo","title":"T","status":"In Review"}"#;
    assert_eq!(code(post("/items", None, ok).await.unwrap()), 401);
    assert_eq!(code(post("/items", Some("wrong"), ok).await.unwrap()), 401);
    for bad in [
        "{not json",
        "[1]",
        r#"{"project":"demo"}"#,
        r#"{"project":"nope","title":"T"}"#,
        r#"{"project":"demo","title":"  "}"#,
        r#"{"project":"demo","title":"T","status":"Shipped"}"#,
        r#"{"project":"demo","title":"T","extra":1}"#,
    ] {
        let r = post("/items", Some(ADMIN), bad).await.unwrap();
        assert_eq!(r.status().as_u16(), 400, "{bad}");
        let v: Value = r.json().await.unwrap();
        assert!(!v["error"].as_str().unwrap().is_empty(), "{bad}: {v}");
    }
    let r = post("/items", Some(ADMIN), ok).await.unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["work_item"].as_str(), v["status"].as_str()),
        (Some("DEMO-1"), Some("In Review"))
    );

    let status = |s: &str| json!({ "status": s }).to_string();
    assert_eq!(
        code(
            post("/items/DEMO-9/status", Some(ADMIN), &status("Approved"))
                .await
                .unwrap()
        ),
        404
    );
    assert_eq!(
        code(
            post("/items/DEMO-1/status", Some(ADMIN), &status("Nope"))
                .await
                .unwrap()
        ),
        400
    );
    assert_eq!(
        code(
            post("/items/DEMO-1/status", None, &status("Approved"))
                .await
                .unwrap()
        ),
        401
    );
    assert_eq!(
        code(
            post("/items/DEMO-1/comments", Some(ADMIN), r#"{"text":""}"#)
                .await
                .unwrap()
        ),
        400
    );
    assert_eq!(
        code(
            post("/items/DEMO-9/comments", Some(ADMIN), r#"{"text":"x"}"#)
                .await
                .unwrap()
        ),
        404
    );
    // The same status twice: one delivery; the second changes nothing.
    let (c1, v1) = admin(
        &d,
        Method::POST,
        "/items/DEMO-1/status",
        Some(json!({"status": "approved"})),
    )
    .await;
    let (c2, v2) = admin(
        &d,
        Method::POST,
        "/items/DEMO-1/status",
        Some(json!({"status": "Approved"})),
    )
    .await;
    assert_eq!((c1, c2), (200, 200));
    assert_eq!(
        (v1["queued"].as_bool(), v2["queued"].as_bool()),
        (Some(true), Some(false))
    );
    let db = orchestrator::db::Db::open(&w.db_path()).await.unwrap();
    let n: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM webhook_deliveries WHERE source = 'local'")
            .fetch_one(db.reader())
            .await
            .unwrap();
    assert_eq!(n, 2, "the creation and one status change");
    until("both processed", 30, || async {
        let left: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM webhook_deliveries WHERE processed_at IS NULL",
        )
        .fetch_one(db.reader())
        .await
        .unwrap();
        left == 0
    })
    .await;
    let (_, list) = admin(&d, Method::GET, "/items", None).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    d.signal(Signal::SIGTERM);
    d.exited(30).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_exits_0_with_the_item_done_and_one_merge_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let out = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || {
            Command::new(support::bin())
                .args(["demo", "--exit-when-done", "--bind", "127.0.0.1:0", "--dir"])
                .arg(&dir)
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .env("HOME", tmp_home(&dir))
                .current_dir(dir.parent().unwrap())
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "exit {:?}\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "scripted example agent (not an LLM)",
        "board: http://127.0.0.1:",
        "DEMO-1: created -> analysis",
        "DEMO-1: analysis -> architecture",
        "person: the BRD is fine: Approved",
        "person: ship it: Confirm Deploy",
        "DEMO-1: deploy -> done",
        "merge commit: ",
        "DEMO-1 is done",
    ] {
        assert!(text.contains(want), "{want:?} missing in:\n{text}");
    }
    let remote = dir.join("remote.git");
    assert_eq!(
        git(&remote, &["rev-list", "--merges", "--count", "main"]),
        "1",
        "{text}"
    );
    let changes = git(&remote, &["show", "main:CHANGES.md"]);
    assert!(changes.contains("DEMO-1"), "{changes}");
}

/// A home for the demo's process (it never needs the tester's).
fn tmp_home(dir: &std::path::Path) -> std::path::PathBuf {
    let home = dir.parent().unwrap().join("home");
    std::fs::create_dir_all(&home).unwrap();
    home
}
