//! No configured secret ever reaches the daemon's log or its database
//! (issue 16, F-30, invariant: secrets are `Secret`, shown as `***`).
//!
//! The real binary at `debug` level, with every secret configured to a
//! value a plain search finds, is driven through every error path a client
//! or a peer can provoke: webhooks unsigned, mis-signed, malformed and of
//! unknown events; admin routes without, with a wrong and with a malformed
//! token; Plane answering 500 and 429, Gitea's merge answering 405 and then
//! landing with its answer lost, Telegram answering 500 and 401 and then
//! not listening at all; a bad config value; a kill -9 and a restart with
//! wrong credentials (which the peers refuse), a Telegram webhook with a
//! wrong secret, and a graceful stop. Then the whole log and the database
//! files are searched for every secret, right and wrong.

mod support;

use std::time::Duration;

use nix::sys::signal::Signal;
use orchestrator::db::Db;
use orchestrator::domain::Stage;
use serde_json::json;
use support::daemon::{ADMIN_TOKEN, GITEA_TOKEN, PLANE_KEY, Pair, REPO, until, world_of};
use support::gitea_double::MergeFault;
use support::intake_env::{GSECRET, PSECRET};
use support::plane_double::Fault;
use support::telegram_double::{self, TelegramDouble};

const TG_WEBHOOK_SECRET: &str = "telegram-webhook-secret-never-logged";
const WRONG_PLANE_KEY: &str = "wrong-plane-key-never-logged";
const WRONG_GITEA_TOKEN: &str = "wrong-gitea-token-never-logged";
const WRONG_ADMIN: &str = "wrong-admin-token-never-logged";

async fn post(url: &str, headers: &[(&str, &str)], body: &[u8]) -> u16 {
    let mut req = reqwest::Client::new().post(url).body(body.to_vec());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.map_or(0, |r| r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_log_or_the_database_on_any_error_path() {
    let tg = TelegramDouble::start().await;
    let mut env = tg.daemon_env("42");
    env.extend(
        [
            ("ORCH_LOG_LEVEL", "debug"),
            ("ORCH_TELEGRAM_WEBHOOK_SECRET", TG_WEBHOOK_SECRET),
            // A bad value: a warning naming the key at start-up.
            ("ORCH_MAX_CONCURRENT_JOBS", "lots"),
            ("ORCH_RECONCILER_ENABLED", "true"),
            ("ORCH_RECONCILER_INTERVAL_S", "1"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut w = world_of(Pair::PlaneGitea, "deploy_command = 'true'", &refs).await;
    let d = w.start().await;
    let db = Db::open(&w.db_path()).await.unwrap();

    // Webhooks a client got wrong: 401, 400, ignored.
    let body = br#"{"event":"issue","action":"updated","data":{}}"#;
    let plane = d.url("/webhooks/plane");
    let gitea = d.url("/webhooks/gitea");
    let ct = ("Content-Type", "application/json");
    assert_eq!(post(&plane, &[ct], body).await, 401);
    assert_eq!(
        post(&plane, &[ct, ("X-Plane-Signature", "00ff")], body).await,
        401
    );
    let wrong = orchestrator::intake::sign(WRONG_ADMIN.as_bytes(), body);
    assert_eq!(
        post(&plane, &[ct, ("X-Plane-Signature", &wrong)], body).await,
        401
    );
    let junk = b"{not json";
    let signed = orchestrator::intake::sign(PSECRET.as_bytes(), junk);
    assert_eq!(
        post(
            &plane,
            &[
                ct,
                ("X-Plane-Signature", &signed),
                ("X-Plane-Event", "issue")
            ],
            junk
        )
        .await,
        400
    );
    let odd = br#"{"event":"cycle","action":"created","data":{}}"#;
    let signed = orchestrator::intake::sign(PSECRET.as_bytes(), odd);
    let code = post(
        &plane,
        &[
            ct,
            ("X-Plane-Signature", &signed),
            ("X-Plane-Event", "cycle"),
        ],
        odd,
    )
    .await;
    assert!((200..300).contains(&code), "{code}");
    assert_eq!(
        post(&gitea, &[ct, ("X-Gitea-Signature", "zz")], body).await,
        401
    );
    let signed = orchestrator::intake::sign(GSECRET.as_bytes(), junk);
    assert_eq!(
        post(
            &gitea,
            &[
                ct,
                ("X-Gitea-Signature", &signed),
                ("X-Gitea-Event", "pull_request")
            ],
            junk
        )
        .await,
        400
    );

    // Admin routes: no token, a wrong one, a malformed header, a wrong
    // board sign-in.
    let release = d.url("/transition-lease/release");
    let json_body = br#"{"work_item":"DEMO-1"}"#;
    assert_eq!(post(&release, &[ct], json_body).await, 401);
    let bearer = format!("Bearer {WRONG_ADMIN}");
    assert_eq!(
        post(&release, &[ct, ("Authorization", &bearer)], json_body).await,
        401
    );
    assert_eq!(
        post(&release, &[ct, ("Authorization", WRONG_ADMIN)], json_body).await,
        401
    );
    let form = format!("token={WRONG_ADMIN}");
    let code = post(
        &d.url("/board/sign-in"),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        form.as_bytes(),
    )
    .await;
    assert!((400..500).contains(&code), "{code}");
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let code = post(&release, &[ct, ("Authorization", &bearer)], b"{}").await;
    assert!((400..500).contains(&code), "{code}");

    // Peers that fail while a task goes from Confirm Deploy to Done.
    w.plane.push_fault(Fault::ServerError);
    w.plane.push_fault(Fault::RateLimited { retry_after_s: 1 });
    w.gitea.push_merge_fault(MergeFault::TryAgainLater);
    w.gitea.push_merge_fault(MergeFault::LandedAnswerLost);
    tg.fail_next(
        "sendMessage",
        500,
        json!({"ok": false, "error_code": 500, "description": "Internal Server Error"}),
    );
    tg.fail_next(
        "getUpdates",
        401,
        json!({"ok": false, "error_code": 401, "description": "Unauthorized"}),
    );
    let (item, t, head) = w
        .item_with_branch(&d, &db, 1, Stage::Deploy, "Awaiting Deploy")
        .await;
    assert_eq!(w.person_sets(&d, &item, "Confirm Deploy").await, 200);
    until("the task is done despite the faults", 90, || async {
        support::daemon::task(&db, t.id).await.stage == Stage::Done
    })
    .await;
    assert_eq!(w.merges_in_main(), 1, "{}", w.log());
    assert!(w.gitea.is_in_main(REPO, &head));

    // kill -9; back with credentials the peers refuse, a Telegram that is
    // not there, and its webhook mode.
    d.signal(Signal::SIGKILL);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    for (k, v) in [
        ("ORCH_PLANE_API_KEY", WRONG_PLANE_KEY),
        ("ORCH_GITEA_TOKEN", WRONG_GITEA_TOKEN),
        ("ORCH_TELEGRAM_API_URL", gone.as_str()),
        ("ORCH_TELEGRAM_UPDATES", "webhook"),
    ] {
        w.env.retain(|(key, _)| key != k);
        w.env.push((k.into(), v.into()));
    }
    let mut d = w.start().await;
    // A new item: the intake reads it from Plane (401 now), the worker
    // would comment (401), an alert goes to a Telegram that is not there.
    let (item2, _t2, _) = w
        .item_with_branch(&d, &db, 2, Stage::Deploy, "Awaiting Deploy")
        .await;
    assert_eq!(w.person_sets(&d, &item2, "Confirm Deploy").await, 200);
    let tg_hook = d.url("/webhooks/telegram");
    let code = post(
        &tg_hook,
        &[ct, ("X-Telegram-Bot-Api-Secret-Token", WRONG_ADMIN)],
        br#"{"update_id": 1}"#,
    )
    .await;
    assert_eq!(code, 401);
    until("the refused credentials show in the log", 30, || async {
        let log = w.log();
        log.contains("401") && log.matches("WARN").count() >= 5
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    d.signal(Signal::SIGTERM);
    assert!(d.exited(30).await.success());

    // The log shows the error paths were taken…
    let log = w.log();
    assert!(log.contains("ORCH_MAX_CONCURRENT_JOBS"), "{log}");
    assert!(log.contains("refused"), "{log}");
    // A Telegram that is away is warned about once, not on every tick.
    let card_warnings = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("card not updated"))
        .count();
    assert!((1..=3).contains(&card_warnings), "{card_warnings}: {log}");
    // …and holds no secret, right or wrong, whole or as its secret half.
    let tg_secret_half = telegram_double::TOKEN.split(':').nth(1).unwrap();
    let secrets = [
        PLANE_KEY,
        GITEA_TOKEN,
        ADMIN_TOKEN,
        PSECRET,
        GSECRET,
        TG_WEBHOOK_SECRET,
        telegram_double::TOKEN,
        tg_secret_half,
        WRONG_PLANE_KEY,
        WRONG_GITEA_TOKEN,
        WRONG_ADMIN,
    ];
    for s in secrets {
        if let Some(at) = log.find(s) {
            let from = log[..at].rfind('\n').map_or(0, |i| i + 1);
            let to = log[at..].find('\n').map_or(log.len(), |i| at + i);
            panic!("the log shows the secret {s:?}: {}", &log[from..to]);
        }
    }
    // The database keeps deliveries and outcomes, never a credential.
    for f in ["o.db", "o.db-wal"] {
        let Ok(bytes) = std::fs::read(w.dir.path().join(f)) else {
            continue;
        };
        for s in secrets {
            assert!(
                !bytes.windows(s.len()).any(|win| win == s.as_bytes()),
                "{f} holds the secret {s:?}"
            );
        }
    }
}
