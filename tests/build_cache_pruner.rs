//! The build-cache pruner (F-29) with a fake `ssh` on PATH that records its
//! argv: the exact command and nothing else; no target → ssh is never
//! called; a failing ssh is counted and alerted and the loop goes on (also
//! through the real binary, where the pruner starts last and stops first).

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use orchestrator::loops::build_cache_pruner::{Pruned, Pruner};
use orchestrator::notify::RecordingNotifier;
use orchestrator::status::StatusBlock;
use support::daemon::until;

/// A fake `ssh` in `dir/bin`: appends its argv (one per line, then `--`) to
/// `dir/argv`; prints a reclaimed line and exits 0, or, when `dir/fail`
/// exists, fails like an unreachable host.
fn fake_ssh(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = format!(
        "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\" >> {d}/argv; done\necho -- >> {d}/argv\n\
         if [ -e {d}/fail ]; then echo 'ssh: connect to host build-host port 22: Connection refused' >&2; exit 255; fi\n\
         echo 'ID RECLAIMABLE'\necho 'Total reclaimed space: 2.5GB'\n",
        d = dir.display()
    );
    let ssh = bin.join("ssh");
    std::fs::write(&ssh, script).unwrap();
    std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

fn path_with(bin: &Path) -> String {
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

fn calls(dir: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(dir.join("argv")).unwrap_or_default();
    text.split("--\n")
        .filter(|c| !c.is_empty())
        .map(|c| c.lines().map(String::from).collect())
        .collect()
}

fn pruner(dir: &Path, target: &str, rec: Arc<RecordingNotifier>) -> Pruner {
    let bin = fake_ssh(dir);
    let s = support::settings_in(
        dir,
        &[
            ("ORCH_BUILD_CACHE_PRUNE_TARGET", target),
            ("ORCH_BUILD_CACHE_PRUNE_UNTIL", "12h"),
            ("ORCH_BUILD_CACHE_PRUNE_NOTIFY_MIN_GB", "1"),
        ],
    );
    Pruner::from_settings(&s, rec).with_env(vec![("PATH".into(), path_with(&bin))])
}

#[tokio::test]
async fn runs_exactly_the_prune_and_alerts_what_it_reclaimed() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Arc::new(RecordingNotifier::default());
    let p = pruner(dir.path(), "ops@build-host", rec.clone());
    assert_eq!(
        p.prune().await,
        Pruned::Ran {
            reclaimed_bytes: Some(2_500_000_000)
        }
    );
    assert_eq!(
        calls(dir.path()),
        [vec![
            "ops@build-host",
            "docker",
            "builder",
            "prune",
            "-f",
            "--filter",
            "until=12h"
        ]]
    );
    let alerts = rec.alerts();
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].kind, "build_cache_pruned");
    assert!(
        alerts[0].message.contains("2.50 GB"),
        "{}",
        alerts[0].message
    );
    let block = p.snapshot().await;
    assert_eq!(block["runs"], 1);
    assert_eq!(block["last_reclaimed_bytes"], 2_500_000_000u64);

    // A failing ssh: counted, alerted, and the next run happens anyway.
    std::fs::write(dir.path().join("fail"), "").unwrap();
    assert!(matches!(p.prune().await, Pruned::Failed(e) if e.contains("Connection refused")));
    p.tick().await.expect("a tick never fails");
    assert_eq!(calls(dir.path()).len(), 3);
    assert!(
        calls(dir.path())
            .iter()
            .all(|c| c.join(" ") == "ops@build-host docker builder prune -f --filter until=12h")
    );
    let block = p.snapshot().await;
    assert_eq!(
        (block["runs"].as_u64(), block["failures"].as_u64()),
        (Some(3), Some(2))
    );
    assert!(
        rec.alerts()
            .iter()
            .any(|a| a.kind == "build_cache_prune_failed")
    );
}

#[tokio::test]
async fn no_target_never_calls_ssh() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Arc::new(RecordingNotifier::default());
    let p = pruner(dir.path(), "", rec.clone());
    for _ in 0..3 {
        assert_eq!(p.prune().await, Pruned::NoTarget);
        p.tick().await.unwrap();
    }
    assert!(calls(dir.path()).is_empty());
    assert!(rec.alerts().is_empty());
    assert_eq!(p.snapshot().await["active"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_daemon_a_failing_ssh_does_not_stop_the_loop() {
    let outside = tempfile::tempdir().unwrap();
    let bin = fake_ssh(outside.path());
    std::fs::write(outside.path().join("fail"), "").unwrap();
    let path = path_with(&bin);
    let w = support::daemon::world(
        "",
        &[
            ("PATH", path.as_str()),
            ("ORCH_BUILD_CACHE_PRUNE_TARGET", "ops@build-host"),
            ("ORCH_BUILD_CACHE_PRUNE_INTERVAL_S", "1"),
        ],
    )
    .await;
    let mut d = w.start().await;
    until("the pruner ran and failed twice", 30, || async {
        d.queue().await["build_cache_prune"]["failures"].as_u64() >= Some(2)
    })
    .await;
    assert!(d.alive());
    assert!(
        calls(outside.path())
            .iter()
            .all(|c| c.join(" ") == "ops@build-host docker builder prune -f --filter until=24h")
    );
    d.signal(nix::sys::signal::Signal::SIGTERM);
    d.exited(20).await;
    let log = w.log();
    assert!(log.contains("shut down cleanly"), "{log}");
    // Started last, stopped first.
    let started: Vec<&str> = log.lines().filter(|l| l.contains("loop started")).collect();
    assert!(
        started
            .last()
            .is_some_and(|l| l.contains("build_cache_pruner")),
        "{started:?}"
    );
}
