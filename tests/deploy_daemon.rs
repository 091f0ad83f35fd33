//! The deploy path end to end (F-23, F-24, B-1): a daemon wired to the Plane
//! and Gitea doubles (real bare git repositories), driven by signed
//! webhooks. In process: Confirm Deploy → a real merge → done, Plane at
//! Deploying, Monitoring after Deploy, then Done, a merged-PR webhook at
//! deploy ignored. The real binary: SIGKILL after the merge and before the
//! stage write (its own deploy command kills it) → restart → no second
//! merge, done, then Done in Plane.

mod support;

use orchestrator::app;
use orchestrator::db::Db;
use orchestrator::domain::Stage;
use support::daemon::{REPO, task, until, world};
use support::gitea_double::git;
use support::intake_env::{GSECRET, PSECRET};

async fn stage_of(db: &Db, id: i64) -> Stage {
    task(db, id).await.stage
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirm_deploy_through_the_daemon_merges_then_plane_shows_monitoring_then_done() {
    let w = world("", &[]).await;
    let settings = support::settings_in(
        w.dir.path(),
        &w.env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect::<Vec<_>>(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let daemon = app::start(settings, listener).await.unwrap();
    let base = format!("http://{}", daemon.addr);
    w.plane
        .set_webhook(&format!("{base}/webhooks/plane"), PSECRET);
    w.gitea
        .set_webhook(&format!("{base}/webhooks/gitea"), GSECRET);
    let db = Db::open(&w.db_path()).await.unwrap();
    let (item, task, head) = w.parked_on_deploy(&db, 1).await;

    // A merged-PR webhook while parked on deploy does not complete the task.
    {
        let mut s = w.gitea.lock();
        s.repos
            .get_mut(REPO)
            .unwrap()
            .pulls
            .push(support::gitea_double::Pull {
                number: 41,
                head: "demo-1".into(),
                base: "main".into(),
                title: "DEMO-1: Item 1".into(),
                open: false,
                merged: true,
                merge_commit_sha: Some(head.clone()),
                unmergeable: false,
            });
    }
    assert_eq!(w.gitea.send_merged(REPO, 41).await, 200);
    until("the merged-PR webhook is processed", 20, || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM webhook_deliveries WHERE source = 'gitea' AND processed_at IS NOT NULL",
        )
        .fetch_one(db.reader())
        .await
        .unwrap()
            == 1
    })
    .await;
    assert_eq!(stage_of(&db, task.id).await, Stage::Deploy);

    assert_eq!(w.plane.human_set_state(&item, "Confirm Deploy").await, 200);
    until("Plane shows Done after the window", 60, || async {
        w.plane.state_of(&item) == "Done"
    })
    .await;
    assert_eq!(stage_of(&db, task.id).await, Stage::Done);
    assert_eq!(
        w.plane.states_of(&item),
        ["Deploying", "Monitoring after Deploy", "Done"]
    );
    assert_eq!((w.merge_posts(), w.merges_in_main()), (1, 1));
    assert!(w.gitea.is_in_main(REPO, &head));
    let merge = git(&w.bare, &["rev-parse", "main"]);
    let comments = w.plane.comments(&item);
    assert!(
        comments.iter().any(|c| c.html.contains(&merge)),
        "{comments:?}"
    );

    // /queue shows the monitor's block (the window is closed right after
    // the Done write, so poll).
    let queue = format!("{base}/queue");
    until(
        "the post_deploy block counts the closed window",
        20,
        || async {
            let q: serde_json::Value = reqwest::get(&queue).await.unwrap().json().await.unwrap();
            q["post_deploy"]["closed"] == 1
        },
    )
    .await;
    daemon.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_the_merge_before_the_stage_write_then_restart_merges_once() {
    // The deploy command kills the daemon (the parent of the shell that
    // records its exit) the first time: a real SIGKILL with merge_pr done
    // and prod_deploy in flight, i.e. after the merge and before the stage
    // write. The deploy itself goes on for 2 s and succeeds.
    let marks = tempfile::tempdir().unwrap();
    let killed = marks.path().join("killed");
    let runs = marks.path().join("runs");
    let cmd = format!(
        "echo run >> {runs}; if [ ! -f {killed} ]; then touch {killed}; kill -KILL $(cut -d\" \" -f4 /proc/$PPID/stat); sleep 2; fi",
        runs = runs.display(),
        killed = killed.display()
    );
    let w = world(&format!("deploy_command = '{cmd}'"), &[]).await;
    let mut first = w.start().await;
    let db = Db::open(&w.db_path()).await.unwrap();
    let (item, task, head) = w.parked_on_deploy(&db, 2).await;

    assert_eq!(w.plane.human_set_state(&item, "Confirm Deploy").await, 200);
    let status = first.exited(60).await;
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "killed by SIGKILL");
    assert_eq!(stage_of(&db, task.id).await, Stage::Deploy);
    assert_eq!((w.merge_posts(), w.merges_in_main()), (1, 1));
    let states: Vec<(String, String)> =
        sqlx::query_as("SELECT kind, state FROM effects WHERE task_id = ? ORDER BY id")
            .bind(task.id)
            .fetch_all(db.reader())
            .await
            .unwrap();
    let states: Vec<(&str, &str)> = states
        .iter()
        .map(|(k, s)| (k.as_str(), s.as_str()))
        .collect();
    assert_eq!(states, [("merge_pr", "done"), ("prod_deploy", "planned")]);

    // Restart: recovery finishes the transition. The deploy that outlived
    // the daemon is adopted (its group and exit were recorded), not run
    // again; the merge is not repeated either.
    let mut second = w.start().await;
    until("Plane shows Done after the restart", 60, || async {
        w.plane.state_of(&item) == "Done"
    })
    .await;
    assert_eq!(stage_of(&db, task.id).await, Stage::Done);
    assert_eq!(
        (w.merge_posts(), w.merges_in_main()),
        (1, 1),
        "no second merge"
    );
    assert!(w.gitea.is_in_main(REPO, &head));
    assert_eq!(
        support::daemon::lines(&runs),
        1,
        "one deploy: the restart adopted the running one: {}",
        w.log()
    );
    let states = w.plane.states_of(&item);
    assert_eq!(
        states,
        ["Deploying", "Monitoring after Deploy", "Done"],
        "{}",
        w.log()
    );

    second.signal(nix::sys::signal::Signal::SIGTERM);
    second.exited(10).await;
    let log = w.log();
    assert!(log.contains("shut down cleanly"), "{log}");
}
