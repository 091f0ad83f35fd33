//! B-9 hot reload against the real binary over loopback, on the local
//! tracker: the projects file is re-read on change (or SIGHUP) and a new
//! project takes work without a restart; a removed one stops taking it; a
//! bad file keeps the last good list, warns naming the problem and alerts
//! once per bad content; a later good file recovers.

mod support;

use nix::sys::signal::Signal;
use serde_json::{Value, json};
use support::daemon::{Daemon, Pair, World, until, world_of};
use support::pairs::admin;

/// A `[[projects]]` entry on the local pair, its repository the world's.
fn project(w: &World, name: &str, prefix: &str) -> String {
    format!(
        "\n[[projects]]\nname = \"{name}\"\ntracker = \"local\"\nforge = \"local\"\n\
         work_item_prefix = \"{prefix}\"\nrepo_url = \"{}\"\n",
        w.bare.display()
    )
}

fn config_path(w: &World) -> std::path::PathBuf {
    w.dir.path().join("orchestrator.toml")
}

/// The file as the world wrote it: `[plane]` and the project `demo`.
fn original(w: &World) -> String {
    std::fs::read_to_string(config_path(w)).unwrap()
}

/// Replace the config file atomically (a temp file renamed over it), the
/// way an editor or a deploy tool does.
fn write_config(w: &World, text: &str) {
    let tmp = w.dir.path().join("orchestrator.toml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, config_path(w)).unwrap();
}

/// `POST /items` for `project`; (status code, body).
async fn new_item(d: &Daemon, project: &str) -> (u16, Value) {
    admin(
        d,
        reqwest::Method::POST,
        "/items",
        Some(json!({"project": project, "title": format!("work for {project}")})),
    )
    .await
}

/// Wait until a work item for `project` is accepted; its work item.
async fn accepted(d: &Daemon, project: &str) -> String {
    let made = std::sync::Mutex::new(None);
    until(
        &format!("a work item for {project} is accepted"),
        20,
        || async {
            let (code, v) = new_item(d, project).await;
            if code == 201 {
                *made.lock().unwrap() = v["work_item"].as_str().map(str::to_string);
            }
            code == 201
        },
    )
    .await;
    made.into_inner().unwrap().unwrap()
}

/// The `config_invalid` alerts sent so far, by the dedup table.
async fn invalid_alerts(d: &Daemon) -> Vec<Value> {
    let q = d.queue().await;
    q["alerts"]["recent"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r["kind"] == "config_invalid")
        .collect()
}

fn sent_total(rows: &[Value]) -> i64 {
    rows.iter()
        .map(|r| r["sent_total"].as_i64().unwrap_or(0))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_added_to_the_file_takes_work_without_a_restart() {
    let w = world_of(Pair::Local, "", &[("ORCH_CONFIG_POLL_MS", "100")]).await;
    let mut d = w.start().await;
    let (code, v) = new_item(&d, "bee").await;
    assert_eq!(code, 400, "{v}");
    assert!(v.to_string().contains("not configured"), "{v}");

    write_config(
        &w,
        &format!("{}{}", original(&w), project(&w, "bee", "BEE")),
    );
    assert_eq!(accepted(&d, "bee").await, "BEE-1");
    let log = w.log();
    assert!(log.contains("config reloaded"), "{log}");
    assert!(log.contains("bee"), "{log}");
    assert_eq!(new_item(&d, "demo").await.0, 201, "demo still takes work");

    // Removed from the file: no new work; the rest goes on.
    let only_bee = original(&w)
        .split("\n[[projects]]\nname = \"bee\"")
        .next()
        .unwrap()
        .replace("name = \"demo\"", "name = \"gone\"");
    write_config(&w, &format!("{only_bee}{}", project(&w, "bee", "BEE")));
    until("demo is refused once removed", 20, || async {
        new_item(&d, "demo").await.0 == 400
    })
    .await;
    assert_eq!(new_item(&d, "bee").await.0, 201);
    let q = d.queue().await;
    assert_eq!(
        q["config"]["projects"],
        json!(["gone", "bee"]),
        "{}",
        q["config"]
    );
    assert!(d.alive(), "{}", w.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_file_keeps_the_last_good_projects_alerts_once_and_recovers() {
    let w = world_of(Pair::Local, "", &[("ORCH_CONFIG_POLL_MS", "100")]).await;
    let d = w.start().await;
    let good = format!("{}{}", original(&w), project(&w, "bee", "BEE"));
    write_config(&w, &good);
    accepted(&d, "bee").await;

    // Broken TOML, with a secret earlier in the file that must not show.
    let from = w.log().len();
    write_config(
        &w,
        &format!(
            "telegram_bot_token = \"tg-token-in-the-file\"\n{good}\n[[projects]\nname = \"x\"\n"
        ),
    );
    until("the broken file is alerted", 20, || async {
        !invalid_alerts(&d).await.is_empty()
    })
    .await;
    let log = w.log()[from..].to_string();
    assert!(log.contains("config not reloaded"), "{log}");
    assert!(log.contains("line "), "the warning names the line: {log}");
    let q = d.queue().await;
    assert_eq!(q["config"]["failing"], true, "{}", q["config"]);
    assert_eq!(new_item(&d, "demo").await.0, 201, "{}", w.log());
    assert_eq!(new_item(&d, "bee").await.0, 201, "{}", w.log());

    // The same bad file again (SIGHUP forces a re-read): no second alert.
    d.signal(Signal::SIGHUP);
    until("the SIGHUP re-read the bad file", 20, || async {
        d.queue().await["config"]["failures"] == 2
    })
    .await;
    assert_eq!(sent_total(&invalid_alerts(&d).await), 1);

    // A project without repo_url: another bad content, another alert.
    let from = w.log().len();
    write_config(
        &w,
        &format!("{good}\n[[projects]]\nname = \"cee\"\ntracker = \"local\"\n"),
    );
    until("the file without repo_url is alerted", 20, || async {
        sent_total(&invalid_alerts(&d).await) == 2
    })
    .await;
    let log = w.log()[from..].to_string();
    assert!(log.contains("repo_url"), "the warning names the key: {log}");
    assert_eq!(new_item(&d, "cee").await.0, 400);
    assert_eq!(new_item(&d, "bee").await.0, 201);

    // A good file recovers.
    let from = w.log().len();
    write_config(&w, &format!("{good}{}", project(&w, "cee", "CEE")));
    assert_eq!(accepted(&d, "cee").await, "CEE-1");
    let log = w.log()[from..].to_string();
    assert!(log.contains("config reloaded"), "{log}");
    let q = d.queue().await;
    assert_eq!(q["config"]["failing"], false, "{}", q["config"]);
    assert!(
        q["alerts"]["recent"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["kind"] == "config_recovered"),
        "{}",
        q["alerts"]
    );
    assert!(
        !w.log().contains("tg-token-in-the-file"),
        "a secret of the file reached the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_when_polling_is_off() {
    let w = world_of(Pair::Local, "", &[("ORCH_CONFIG_POLL_MS", "0")]).await;
    let mut d = w.start().await;
    write_config(
        &w,
        &format!("{}{}", original(&w), project(&w, "bee", "BEE")),
    );
    let q = d.queue().await;
    assert_eq!(q["config"]["poll_ms"], 0, "{}", q["config"]);
    assert_eq!(q["config"]["reloads"], 0, "{}", q["config"]);
    assert_eq!(new_item(&d, "bee").await.0, 400);

    d.signal(Signal::SIGHUP);
    assert_eq!(accepted(&d, "bee").await, "BEE-1");
    assert!(w.log().contains("SIGHUP"), "{}", w.log());
    assert!(d.alive(), "SIGHUP must not end the daemon: {}", w.log());
    d.signal(Signal::SIGTERM);
    assert!(d.exited(30).await.success(), "{}", w.log());
}
