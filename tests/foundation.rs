//! The foundation (issue: a daemon a new user starts and tests with two
//! commands): the real router on an ephemeral port, the real binary under
//! SIGTERM, configuration errors, migrations on empty and populated files.

mod support;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use orchestrator::app;
use orchestrator::db::{Db, MIGRATOR};
use tokio::net::TcpListener;

async fn start(dir: &std::path::Path, extra: &[(&str, &str)]) -> app::Running {
    let settings = support::settings_in(dir, extra);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    app::start(settings, listener).await.expect("daemon starts")
}

#[tokio::test]
async fn serves_health_queue_metrics_and_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path(), &[("ORCH_ADMIN_TOKEN", "s3cret")]).await;
    let base = format!("http://{}", running.addr);
    let http = reqwest::Client::new();

    let health = http.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let body: serde_json::Value = health.json().await.unwrap();
    assert_eq!(body["database"], "ok");

    let queue: serde_json::Value = http
        .get(format!("{base}/queue"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(queue["tasks"].is_array(), "{queue}");
    assert!(queue["jobs"]["by_status"].is_object(), "{queue}");
    assert_eq!(queue["transition_lease"]["held"], 0);

    let unknown = http
        .get(format!("{base}/no/such/route"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(unknown.headers()["content-type"], "application/json");

    let too_big = http
        .post(format!("{base}/transition-lease/release?work_item=X"))
        .header("authorization", "Bearer s3cret")
        .body(vec![b'x'; 2 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(too_big.status(), 413, "the body limit applies");

    // A made-up method is counted under one label, never its own.
    let odd = reqwest::Method::from_bytes(b"BREW").unwrap();
    let brewed = http
        .request(odd, format!("{base}/health"))
        .send()
        .await
        .unwrap();
    assert!(brewed.status().is_client_error(), "{}", brewed.status());

    let metrics = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(
        metrics.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = metrics.text().await.unwrap();
    // The families are the process's: other tests of this binary count too.
    for series in [
        r#"orchestrator_http_requests_total{route="/health",method="GET",status="200"}"#,
        r#"orchestrator_http_requests_total{route="unmatched",method="GET",status="404"}"#,
    ] {
        assert!(
            support::daemon::sample(&text, series).is_some_and(|n| n >= 1.0),
            "{series}: {text}"
        );
    }
    assert!(text.contains("process_resident_memory_bytes "), "{text}");
    // The database is open and has run queries: SQLite holds memory, and
    // never more than its own high-water mark.
    let used = support::daemon::sample(&text, "orchestrator_sqlite_memory_bytes").unwrap_or(0.0);
    let most =
        support::daemon::sample(&text, "orchestrator_sqlite_memory_highwater_bytes").unwrap_or(0.0);
    assert!(used > 0.0 && most >= used, "{used} {most}: {text}");
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(!text.contains("BREW"), "{text}");
    assert!(text.contains(r#"method="other""#), "{text}");
    running.stop().await.unwrap();
}

#[tokio::test]
async fn second_daemon_on_the_same_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = start(dir.path(), &[]).await;
    let settings = support::settings_in(dir.path(), &[]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = app::start(settings, listener).await.err().expect("refused");
    assert!(format!("{err:#}").contains("already running"), "{err:#}");
    first.stop().await.unwrap();
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path(), &[]).await;
    let base = format!("http://{}", running.addr);
    // A request in flight while shutdown fires still gets its answer.
    let client = reqwest::Client::new();
    let inflight = tokio::spawn(async move {
        client
            .get(format!("{base}/queue"))
            .send()
            .await
            .map(|r| r.status())
    });
    let stopped = tokio::time::timeout(Duration::from_secs(5), running.stop()).await;
    stopped.expect("stops within 5 s").unwrap();
    if let Ok(status) = inflight.await.unwrap() {
        assert_eq!(status, 200);
    }
}

fn spawn_daemon(dir: &std::path::Path, env: &[(&str, &str)]) -> std::process::Child {
    let mut cmd = Command::new(support::bin());
    cmd.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

#[test]
fn binary_exits_zero_on_sigterm_within_5s_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    // A free port can be taken by a parallel test between our probe and the
    // daemon's bind: then our daemon exits and we try another port. Ours is
    // up when it listens AND its SQLite file exists.
    let mut child = None;
    'attempts: for _ in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let bind = format!("127.0.0.1:{port}");
        let mut c = spawn_daemon(dir.path(), &[("ORCH_BIND", &bind)]);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if c.try_wait().unwrap().is_some() {
                continue 'attempts;
            }
            if dir.path().join("orchestrator.db").exists()
                && std::net::TcpStream::connect(&bind).is_ok()
            {
                child = Some(c);
                break 'attempts;
            }
            assert!(Instant::now() < deadline, "daemon did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let mut child = child.expect("the daemon started on one of 5 ports");
    assert!(
        dir.path().join("orchestrator.db").exists(),
        "SQLite file in the working directory"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let sent = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "no exit within 5 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "exit status {status}: {err}");
    assert!(err.contains("shut down cleanly"), "{err}");
}

#[test]
fn bad_bind_exits_non_zero_naming_orch_bind() {
    let dir = tempfile::tempdir().unwrap();
    let out = spawn_daemon(dir.path(), &[("ORCH_BIND", "nonsense")])
        .wait_with_output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ORCH_BIND"), "{err}");
    assert!(
        !dir.path().join("orchestrator.db").exists(),
        "nothing created on a config error"
    );
}

#[test]
fn check_config_names_file_and_line_of_broken_toml_and_redacts_secrets() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.toml"),
        "bind = \"127.0.0.1:1\"\n\nreaper_interval_s = = 3\n",
    )
    .unwrap();
    let out = Command::new(support::bin())
        .args(["check-config"])
        .current_dir(dir.path())
        .env("ORCH_CONFIG", "bad.toml")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml") && err.contains("line 3"), "{err}");

    let ok = Command::new(support::bin())
        .args(["check-config"])
        .current_dir(dir.path())
        .env("ORCH_ADMIN_TOKEN", "topsecret")
        .env("ORCH_REAPER_INTERVAL_S", "12")
        .output()
        .unwrap();
    assert!(ok.status.success());
    let text = String::from_utf8_lossy(&ok.stdout);
    assert!(text.contains("reaper_interval_s = 12"), "{text}");
    assert!(
        text.contains("admin_token = \"***\"") && !text.contains("topsecret"),
        "{text}"
    );
}

#[test]
fn version_flag() {
    let out = Command::new(support::bin())
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

const SAMPLE_ROWS: &str = "
INSERT INTO tasks (id, work_item, project, stage, stage_version, created_at, updated_at)
    VALUES (1, 'DEMO-1', 'demo', 'development', 3, 1, 1);
INSERT INTO stage_history (task_id, from_stage, to_stage, from_version, to_version, actor, at)
    VALUES (1, 'created', 'analysis', 0, 1, 'seed', 1);
INSERT INTO jobs (task_id, stage, role, status, created_at, updated_at)
    VALUES (1, 'development', 'developer', 'running', 1, 1);
INSERT INTO agent_runs (job_id, task_id, role, stage, started_at) VALUES (1, 1, 'developer', 'development', 1);
INSERT INTO effects (task_id, transition_key, from_stage, to_stage, stage_version, kind, state, planned_at)
    VALUES (1, 'task:1/deploy->done@v3', 'deploy', 'done', 3, 'merge_pr', 'planned', 1);
INSERT INTO webhook_deliveries (source, delivery_id, body, received_at) VALUES ('plane', 'd-1', X'7B7D', 1);
";

#[tokio::test]
async fn migrations_apply_to_empty_and_to_populated_databases() {
    // Empty: every migration applies.
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("empty.db")).await.unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(db.reader())
        .await
        .unwrap();
    assert_eq!(applied as usize, MIGRATOR.migrations.len());
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(db.reader())
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    db.close().await;

    // Populated: stop after each prefix of the migrations, hold sample rows,
    // then apply the rest; the rows survive every later migration.
    for upto in 1..=MIGRATOR.migrations.len() {
        let path = dir.path().join(format!("populated-{upto}.db"));
        let db = Db::connect(&path).await.unwrap();
        let partial = sqlx::migrate::Migrator {
            migrations: std::borrow::Cow::Owned(MIGRATOR.migrations[..upto].to_vec()),
            ..sqlx::migrate::Migrator::DEFAULT
        };
        partial.run(db.writer()).await.unwrap();
        sqlx::raw_sql(SAMPLE_ROWS)
            .execute(db.writer())
            .await
            .unwrap();
        db.migrate().await.unwrap();
        let (wi, stage, v): (String, String, i64) =
            sqlx::query_as("SELECT work_item, stage, stage_version FROM tasks WHERE id = 1")
                .fetch_one(db.reader())
                .await
                .unwrap();
        assert_eq!(
            (wi.as_str(), stage.as_str(), v),
            ("DEMO-1", "development", 3)
        );
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM effects")
            .fetch_one(db.reader())
            .await
            .unwrap();
        assert_eq!(n, 1);
        // The job counts kept by triggers (0012) start from the rows there
        // and follow every insert, status change and delete.
        let counted = "SELECT status, COUNT(*) FROM jobs GROUP BY status ORDER BY status";
        let kept = "SELECT status, n FROM job_counts WHERE n > 0 ORDER BY status";
        let rows = |sql: &'static str| {
            let db = db.clone();
            async move {
                sqlx::query_as::<_, (String, i64)>(sql)
                    .fetch_all(db.reader())
                    .await
                    .unwrap()
            }
        };
        assert_eq!(rows(kept).await, rows(counted).await);
        for step in [
            "INSERT INTO jobs (task_id, stage, role, status, created_at, updated_at) VALUES (1, 'review', 'reviewer', 'queued', 2, 2)",
            "INSERT INTO jobs (task_id, stage, role, status, created_at, updated_at) VALUES (1, 'testing', 'tester', 'queued', 2, 2)",
            "UPDATE jobs SET status = 'running' WHERE status = 'queued'",
            "UPDATE jobs SET status = 'running', error = 'x' WHERE status = 'running'",
            "UPDATE jobs SET status = 'failed' WHERE id = (SELECT MAX(id) FROM jobs)",
            "DELETE FROM jobs WHERE status = 'failed'",
        ] {
            sqlx::query(step).execute(db.writer()).await.unwrap();
            assert_eq!(rows(kept).await, rows(counted).await, "after {step}");
        }
        db.close().await;
    }
}

#[tokio::test]
async fn the_queue_pages_its_task_list_and_counts_every_page() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path(), &[]).await;
    let db = Db::open(&support::db_path(dir.path())).await.unwrap();
    for seq in 1..=7 {
        let stage = if seq % 2 == 0 {
            orchestrator::domain::Stage::Analysis
        } else {
            orchestrator::domain::Stage::Development
        };
        support::daemon::seed_task(&db, seq, &format!("item-{seq}"), stage).await;
    }
    let http = reqwest::Client::new();
    let get = |q: String| {
        let (http, url) = (http.clone(), format!("http://{}/queue{q}", running.addr));
        async move {
            let r = http.get(url).send().await.unwrap();
            let code = r.status().as_u16();
            (code, r.json::<serde_json::Value>().await.unwrap())
        }
    };
    let mut seen = Vec::new();
    let mut cursor = String::new();
    let mut pages = 0;
    loop {
        let (code, q) = get(format!("?limit=3{cursor}")).await;
        assert_eq!(code, 200, "{q}");
        pages += 1;
        assert_eq!(q["tasks_total"], 7, "{q}");
        assert_eq!(q["tasks_by_stage"]["analysis"], 3, "{q}");
        assert_eq!(q["tasks_by_stage"]["development"], 4, "{q}");
        let page = q["tasks"].as_array().unwrap();
        assert!(page.len() <= 3, "{q}");
        seen.extend(
            page.iter()
                .map(|t| t["work_item"].as_str().unwrap().to_string()),
        );
        match q["next"].as_i64() {
            Some(n) => cursor = format!("&after={n}"),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let want: Vec<String> = (1..=7).map(|s| format!("DEMO-{s}")).collect();
    assert_eq!(seen, want, "each task once, in order");
    // The default page holds them all; a bad page is the client's error.
    let (_, q) = get(String::new()).await;
    assert_eq!(q["tasks"].as_array().unwrap().len(), 7);
    assert!(q["next"].is_null(), "{q}");
    for bad in ["?limit=0", "?limit=100000", "?after=abc", "?limit=-1"] {
        let (code, q) = get(bad.to_string()).await;
        assert_eq!(code, 400, "{bad}: {q}");
    }
}
