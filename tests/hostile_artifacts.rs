//! Issue 10 point 5, invariant 8: what an agent writes is untrusted input.
//! Analysts leave `01-brd.md` as a symlink to /dev/zero, a FIFO with no
//! writer, a 100 MiB file and a directory (tests/agents/hostile-analyst.sh).
//! Through the real worker, monitor and engine, each analysis gate fails
//! with a reason naming 01-brd.md and the task holds; the daemon (this
//! process) reads none of it: its peak RSS barely moves; and a well-behaved
//! task in another project goes through its stage meanwhile.

mod support;

use orchestrator::db::tasks;
use orchestrator::domain::Stage;
use support::runtime::{Harness, agent};

/// Peak resident set of this process (VmHWM), in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
}

async fn hold_of(h: &Harness, id: i64) -> Option<String> {
    tasks::get(h.db.reader(), id)
        .await
        .unwrap()
        .unwrap()
        .hold_reason
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_brds_fail_the_gate_by_name_without_flooding_the_daemon() {
    let command = agent("hostile-analyst.sh");
    let h = Harness::new(
        &["evil", "good"],
        &[
            ("ORCH_AGENT_COMMAND", command.as_str()),
            ("ORCH_AGENT_MAX_ATTEMPTS", "1"),
        ],
    )
    .await;
    let before = peak_rss_kib();

    let shapes = [
        ("EVIL-1", "is a symlink"),
        ("EVIL-2", "is a FIFO"),
        ("EVIL-3", "is larger than 1048576 bytes"),
        ("EVIL-4", "is a directory"),
    ];
    let mut evil = Vec::new();
    for (wi, why) in shapes {
        let id = h.task("evil", wi).await;
        h.rt.pipeline.advance(id, "plane-webhook").await.unwrap();
        evil.push((id, wi, why));
    }
    let good = h.task("good", "GOOD-1").await;
    h.rt.pipeline.advance(good, "plane-webhook").await.unwrap();

    h.drive(
        "every hostile task held and the good BRD up for approval",
        120,
        || async {
            let mut held = true;
            for (id, _, _) in &evil {
                held &= hold_of(&h, *id).await.is_some();
            }
            held && h
                .tracker
                .comment_keys("GOOD-1")
                .iter()
                .any(|k| k.starts_with("approval:"))
        },
    )
    .await;

    for (id, wi, why) in &evil {
        let hold = hold_of(&h, *id).await.unwrap();
        let file = format!("docs/work-items/{wi}/01-brd.md {why}");
        assert!(
            hold.contains(&file),
            "{wi}: hold {hold:?} must name {file:?}"
        );
        assert_eq!(h.stage(*id).await, Stage::Analysis, "{wi} does not move");
        let alerts = h.notifier.alerts();
        assert!(
            alerts.iter().any(|a| a.kind == "attempts_exhausted"
                && a.work_item.as_deref() == Some(*wi)
                && a.message.contains(&file)),
            "{wi}: no alert naming {file:?} in {alerts:?}"
        );
    }

    // The well-behaved task went on meanwhile: approved, it leaves analysis.
    assert_eq!(hold_of(&h, good).await, None);
    tasks::set_approved(h.db.writer(), good).await.unwrap();
    h.rt.pipeline.advance(good, "plane-webhook").await.unwrap();
    h.drive("the good task past architecture", 60, || async {
        !matches!(h.stage(good).await, Stage::Analysis | Stage::Architecture)
    })
    .await;

    let after = peak_rss_kib();
    let growth_kib = after.saturating_sub(before);
    eprintln!("peak RSS: {before} KiB before, {after} KiB after, growth {growth_kib} KiB");
    assert!(
        growth_kib < 100 * 1024,
        "peak RSS grew by {growth_kib} KiB (from {before} to {after}): an artifact was read whole"
    );
}
