//! B-3: the board at `GET /`, on the real daemon binary, in headless
//! Chromium (Debian's `chromium`, driven by the pinned `playwright-core` of
//! `tests/clis` from `tests/board/board.cjs`).
//!
//! What is proved: seeded tasks show in their stage columns with their card
//! data; signed out there is no action and an admin POST is 401; the
//! sign-in form gives an HttpOnly SameSite=Strict cookie that is not the
//! token, and the buttons; a POST with the cookie but no (or a wrong) CSRF
//! token, or from another origin of the same host, is refused and changes
//! nothing; pressing "Release lease" releases it; sign-out ends the session.
//! Without a browser, over plain HTTP: the headers of the page and the
//! artifact route's refusals (traversal, symlink, FIFO, oversize).
//!
//! Chromium, node or playwright-core missing: a loud skip locally, a failure
//! when `CI` is set (`.ci/run` installs them).

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use orchestrator::db::Db;
use orchestrator::db::tasks::{self, TaskRow};
use orchestrator::domain::Stage;
use serde_json::{Value, json};
use support::daemon::{Daemon, World, until, world};

const TOKEN: &str = "admin-secret";
const CHROMIUM: &str = "/usr/bin/chromium";

/// The browser and node, or why not (then: skip, or fail under CI).
fn browser() -> Option<PathBuf> {
    let playwright = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clis/node_modules/playwright-core/package.json");
    let node_ok = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let missing: Vec<&str> = [
        (!Path::new(CHROMIUM).exists()).then_some("chromium (apt-get install chromium)"),
        (!node_ok).then_some("node (apt-get install nodejs)"),
        (!playwright.exists()).then_some("playwright-core (cd tests/clis && npm ci)"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if missing.is_empty() {
        return Some(PathBuf::from(CHROMIUM));
    }
    let msg = format!(
        "\n\n!!!!! the board's browser test needs: {}\n!!!!! (.ci/run installs them)\n",
        missing.join(", ")
    );
    if std::env::var_os("CI").is_some() {
        panic!(
            "{msg}!!!!! CI is set: a browser test that runs no browser proves nothing; failing.\n"
        );
    }
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{msg}!!!!! SKIPPED (CI is not set).\n");
    None
}

/// Run one scenario of `tests/board/board.cjs`; its output is printed, a
/// failure or a hang (bounded) fails the test.
async fn run_page(
    chromium: &Path,
    d: &Daemon,
    scenario: &str,
    expect: Value,
    shot: &Path,
) -> String {
    run_page_at(chromium, &d.url(""), TOKEN, scenario, expect, shot).await
}

async fn run_page_at(
    chromium: &Path,
    url: &str,
    token: &str,
    scenario: &str,
    expect: Value,
    shot: &Path,
) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/board/board.cjs");
    // Output to a file, so a hang still shows how far the page got.
    let log = shot.with_extension(format!("{scenario}.log"));
    let file = std::fs::File::create(&log).unwrap();
    let mut child = tokio::process::Command::new("node")
        .arg(&script)
        .env("BOARD_URL", url)
        .env("BOARD_TOKEN", token)
        .env("BOARD_SCENARIO", scenario)
        .env("BOARD_EXPECT", expect.to_string())
        .env("BOARD_SCREENSHOT", shot)
        .env("CHROMIUM", chromium)
        .stdout(Stdio::from(file.try_clone().unwrap()))
        .stderr(Stdio::from(file))
        .kill_on_drop(true)
        .spawn()
        .expect("node starts");
    let status = tokio::time::timeout(Duration::from_secs(300), child.wait()).await;
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    println!("{out}");
    let status = status
        .unwrap_or_else(|_| panic!("the board scenario {scenario} hung (300 s):\n{out}"))
        .unwrap();
    assert!(
        status.success() && out.contains("BOARD OK"),
        "the board scenario {scenario} failed:\n{out}"
    );
    out
}

/// One agent run of a task (its job first: runs reference one).
async fn run(db: &Db, task: &TaskRow, stage: &str, role: &str, cost: f64, status: &str) {
    let job: i64 = sqlx::query_scalar(
        "INSERT INTO jobs (task_id, stage, role, status, created_at, updated_at, context)
         VALUES (?, ?, ?, ?, 1, 1, '{}') RETURNING id",
    )
    .bind(task.id)
    .bind(stage)
    .bind(role)
    .bind(status)
    .fetch_one(db.writer())
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO agent_runs (job_id, task_id, role, stage, model, effort, started_at, cost_usd)
         VALUES (?, ?, ?, ?, 'sonnet', 'high', 1, ?)",
    )
    .bind(job)
    .bind(task.id)
    .bind(role)
    .bind(stage)
    .bind(cost)
    .execute(db.writer())
    .await
    .unwrap();
}

/// The seeded board: tasks at several stages with runs, a running job, a
/// lease, a hold, a merge; DEMO-1's worktree holds artifacts, one good, one
/// a symlink, one a FIFO, one too large.
async fn seed(w: &World, db: &Db) -> Value {
    let (_, t1) = w.task_at(db, 1, Stage::Analysis).await;
    let (_, t2) = w.task_at(db, 2, Stage::Development).await;
    let (_, t3) = w.task_at(db, 3, Stage::Review).await;
    let (_, t4) = w.task_at(db, 4, Stage::Deploy).await;
    let (_, t5) = w.task_at(db, 5, Stage::Done).await;
    run(db, &t1, "analysis", "analyst", 0.42, "done").await;
    run(db, &t2, "analysis", "analyst", 0.10, "done").await;
    run(db, &t2, "development", "developer", 1.25, "running").await;
    run(db, &t3, "review", "reviewer", 0.30, "done").await;
    sqlx::query(
        "INSERT INTO transition_lease (task_id, owner_pid, owner_start_time, owner_boot_id,
                                       holder, actor, transition, acquired_at)
         VALUES (?, 999999, 1, 'an-old-boot', 'holder-3', 'reviewer', 'review->testing', 1)",
    )
    .bind(t3.id)
    .execute(db.writer())
    .await
    .unwrap();
    tasks::set_hold(db.writer(), t4.id, Some("deploy outcome unknown"))
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO effects (task_id, transition_key, from_stage, to_stage, stage_version, kind,
                              state, result, planned_at, done_at)
         VALUES (?, 'k5', 'deploy', 'done', 7, 'merge_pr', 'done', ?, 1, 1)",
    )
    .bind(t5.id)
    .bind("0123456789abcdef0123456789abcdef01234567")
    .execute(db.writer())
    .await
    .unwrap();

    let wt = w.dir.path().join("wt-1");
    let dir = wt.join("docs/work-items/DEMO-1");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("01-brd.md"), "# BRD\n\nstatus: READY\n").unwrap();
    std::fs::write(w.dir.path().join("secret.txt"), "the daemon's secret\n").unwrap();
    std::os::unix::fs::symlink(w.dir.path().join("secret.txt"), dir.join("link.md")).unwrap();
    nix::unistd::mkfifo(&dir.join("pipe.md"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    std::fs::write(dir.join("big.md"), vec![b'x'; 5000]).unwrap();
    sqlx::query("UPDATE tasks SET worktree = ? WHERE id = ?")
        .bind(wt.display().to_string())
        .bind(t1.id)
        .execute(db.writer())
        .await
        .unwrap();

    json!({
        "tasks": [
            { "work_item": "DEMO-1", "stage": "analysis" },
            { "work_item": "DEMO-2", "stage": "development" },
            { "work_item": "DEMO-3", "stage": "review" },
            { "work_item": "DEMO-4", "stage": "deploy" },
            { "work_item": "DEMO-5", "stage": "done" },
        ],
        "leased": "DEMO-3",
        "details": "DEMO-1",
    })
}

async fn seeded_world() -> (World, Daemon, Db, Value) {
    let w = world("", &[("ORCH_ARTIFACT_MAX_BYTES", "4096")]).await;
    let d = w.start().await;
    let db = Db::open(&w.db_path()).await.unwrap();
    let expect = seed(&w, &db).await;
    (w, d, db, expect)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_board_shows_tasks_by_stage_and_acts_only_when_signed_in() {
    let Some(chromium) = browser() else { return };
    let (w, d, db, expect) = seeded_world().await;
    let shot = std::env::var_os("BOARD_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| w.dir.path().join("board.png"));
    run_page(&chromium, &d, "seeded", expect, &shot).await;
    assert!(shot.exists(), "no screenshot at {}", shot.display());
    let t3 = tasks::by_work_item(db.reader(), "DEMO-3")
        .await
        .unwrap()
        .unwrap();
    assert!(
        orchestrator::db::leases::get(db.reader(), t3.id)
            .await
            .unwrap()
            .is_none(),
        "the lease was released by the button"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_board_data_carries_the_card_and_its_headers_are_strict() {
    let (_w, d, _db, _) = seeded_world().await;
    let http = reqwest::Client::new();
    let page = http.get(d.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let h = page.headers();
    let csp = h["content-security-policy"].to_str().unwrap();
    for part in [
        "default-src 'none'",
        "script-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(part), "CSP {csp} lacks {part}");
    }
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["cache-control"], "no-store");
    let html = page.text().await.unwrap();
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "an external asset: {html}"
    );

    let data: Value = http
        .get(d.url("/board/data"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(data["signed_in"], false);
    assert!(data["csrf"].is_null());
    let by = |wi: &str| {
        data["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["work_item"] == wi)
            .cloned()
            .unwrap_or_else(|| panic!("{wi} not on the board: {data}"))
    };
    let t2 = by("DEMO-2");
    assert_eq!(t2["stage"], "development");
    assert_eq!(t2["runs"], 2);
    assert!((t2["cost_usd"].as_f64().unwrap() - 1.35).abs() < 1e-9);
    assert_eq!(t2["running"], "developer");
    assert_eq!(by("DEMO-3")["lease"]["holder"], "holder-3");
    assert_eq!(by("DEMO-4")["hold_reason"], "deploy outcome unknown");
    assert_eq!(
        by("DEMO-5")["merge_commit"],
        "0123456789abcdef0123456789abcdef01234567"
    );
    // The Telegram card's text, the same derivation.
    assert!(
        t2["card"].as_str().unwrap().contains("Total: $1.35"),
        "{t2}"
    );

    // A forged sign-in from another origin and a wrong token are refused.
    let form = [("token", TOKEN)];
    let r = http
        .post(d.url("/board/sign-in"))
        .header("origin", "http://evil.example")
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = http
        .post(d.url("/board/sign-in"))
        .header("origin", d.url(""))
        .form(&[("token", "nope")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("set-cookie").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_are_served_as_text_and_refused_when_unsafe() {
    let (_w, d, _db, _) = seeded_world().await;
    let get = |p: &str| {
        let url = d.url(p);
        async move { reqwest::get(url).await.unwrap() }
    };
    let r = get("/board/artifacts/DEMO-1/01-brd.md").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
    assert!(r.text().await.unwrap().contains("status: READY"));

    let list: Value = get("/board/artifacts/DEMO-1").await.json().await.unwrap();
    assert_eq!(list["files"], json!(["01-brd.md"]), "{list}");
    for refused in ["link.md", "pipe.md", "big.md"] {
        assert!(list["refused"][refused].is_string(), "{refused}: {list}");
    }

    for (path, status) in [
        ("/board/artifacts/DEMO-1/link.md", 403),
        ("/board/artifacts/DEMO-1/pipe.md", 403),
        ("/board/artifacts/DEMO-1/big.md", 422),
        ("/board/artifacts/DEMO-1/missing.md", 404),
        ("/board/artifacts/DEMO-1/..%2F..%2F..%2Fsecret.txt", 400),
        ("/board/artifacts/DEMO-1/x/..%2F..%2F01-brd.md", 400),
        ("/board/artifacts/..%2FDEMO-1/01-brd.md", 400),
        ("/board/artifacts/DEMO-9/01-brd.md", 404),
        ("/board/artifacts/DEMO-2/01-brd.md", 404),
    ] {
        let r = get(path).await;
        let code = r.status().as_u16();
        let body = r.text().await.unwrap();
        assert_eq!(code, status, "{path}: {body}");
        assert!(!body.contains("the daemon's secret"), "{path}: {body}");
    }
    // The FIFO did not block the daemon: it still answers.
    until("the daemon answers after the FIFO", 10, || async {
        reqwest::get(d.url("/health"))
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
}

/// `orchestrator demo --by-hand` until it printed its board's address and
/// token; the rest of its output is kept for a failure's message.
struct ByHandDemo {
    child: tokio::process::Child,
    url: String,
    token: String,
    out: std::sync::Arc<std::sync::Mutex<String>>,
}

async fn demo_by_hand(dir: &Path) -> ByHandDemo {
    use tokio::io::AsyncBufReadExt;
    let home = dir.parent().unwrap().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let mut child = tokio::process::Command::new(support::bin())
        .args(["demo", "--by-hand", "--bind", "127.0.0.1:0", "--dir"])
        .arg(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", &home)
        .current_dir(dir.parent().unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("the demo starts");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let out = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let (mut url, mut token) = (None, None);
    let started = tokio::time::timeout(Duration::from_secs(60), async {
        while url.is_none() || token.is_none() {
            let Some(line) = lines.next_line().await.unwrap() else {
                break;
            };
            out.lock().unwrap().push_str(&format!("{line}\n"));
            if let Some(u) = line.strip_prefix("board: ") {
                url = Some(u.trim_end_matches('/').to_string());
            }
            if let Some((_, t)) = line.split_once("ORCH_ADMIN_TOKEN=") {
                token = Some(t.trim().to_string());
            }
        }
    })
    .await;
    let seen = out.lock().unwrap().clone();
    assert!(started.is_ok(), "the demo did not start in 60 s:\n{seen}");
    let (Some(url), Some(token)) = (url, token) else {
        panic!("the demo printed no board address or token:\n{seen}")
    };
    let rest = out.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            rest.lock().unwrap().push_str(&format!("{line}\n"));
        }
    });
    ByHandDemo {
        child,
        url,
        token,
        out,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_local_mode_an_item_made_on_the_board_is_taken_to_done_by_its_buttons() {
    let Some(chromium) = browser() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let mut demo = demo_by_hand(&dir).await;
    let title = "Greet the board's user";
    let shot = std::env::var_os("BOARD_LOCAL_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp.path().join("board-local.png"));
    let expect = json!({ "project": "demo", "title": title });
    let page = run_page_at(&chromium, &demo.url, &demo.token, "local", expect, &shot).await;
    let item = page
        .lines()
        .find_map(|l| l.strip_prefix("WORK_ITEM="))
        .expect("the page names the work item")
        .trim()
        .to_string();

    // The outside world: one merge on the remote's main, carrying the title.
    let remote = dir.join("remote.git");
    let git = |args: &[&str]| support::gitea_double::git(&remote, args);
    let log = demo.out.lock().unwrap().clone();
    assert_eq!(
        git(&["rev-list", "--merges", "--count", "main"]),
        "1",
        "{log}"
    );
    let message = git(&["log", "-1", "--merges", "--format=%s", "main"]);
    assert!(
        message.contains(title) && message.contains(&item.to_ascii_lowercase()),
        "the merge message {message:?} lacks the title or the branch"
    );
    assert!(git(&["show", "main:CHANGES.md"]).contains(&item), "{log}");

    // Ctrl-C stops the demo cleanly.
    let pid = nix::unistd::Pid::from_raw(demo.child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), demo.child.wait())
        .await
        .expect("the demo stops on Ctrl-C")
        .unwrap();
    let log = demo.out.lock().unwrap().clone();
    assert!(status.success(), "exit {status:?}:\n{log}");
    assert!(log.contains("Ctrl-C: stopping"), "{log}");
}
