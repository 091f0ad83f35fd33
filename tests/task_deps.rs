//! F-17 task dependencies through the real worker loop: a task whose
//! dependency is not terminal (done or cancelled) keeps its job queued; the
//! job starts once every dependency is terminal. Real SQLite file, the real
//! worker, launcher and monitor, a scripted agent, a bare git remote.

mod support;

use orchestrator::db::{jobs, tasks};
use orchestrator::domain::Stage;
use orchestrator::loops::worker;
use support::runtime::Harness;

async fn job_of(h: &Harness, task: i64) -> jobs::JobRow {
    let js = jobs::for_task(h.db.reader(), task).await.unwrap();
    assert_eq!(js.len(), 1, "{js:?}");
    js.into_iter().next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_waits_until_every_dependency_is_terminal() {
    // Limits high enough that only the dependency can keep the job queued.
    let h = Harness::new(
        &["demo"],
        &[
            ("ORCH_MAX_CONCURRENT_JOBS", "8"),
            ("ORCH_MAX_CONCURRENT_JOBS_PER_PROJECT", "8"),
        ],
    )
    .await;
    // DEMO-1 is being analysed (its own job runs); DEMO-2 has not started.
    let running_dep = h.task("demo", "DEMO-1").await;
    h.rt.pipeline.advance(running_dep, "test").await.unwrap();
    let idle_dep = h.task("demo", "DEMO-2").await;
    let id = h.task("demo", "DEMO-3").await;
    assert!(
        tasks::add_dependency(h.db.writer(), id, running_dep)
            .await
            .unwrap()
    );
    assert!(
        tasks::add_dependency(h.db.writer(), id, idle_dep)
            .await
            .unwrap()
    );
    assert!(
        !tasks::add_dependency(h.db.writer(), id, idle_dep)
            .await
            .unwrap(),
        "a repeated edge is a no-op"
    );
    assert!(
        !tasks::add_dependency(h.db.writer(), id, id).await.unwrap(),
        "a task never waits on itself"
    );
    h.rt.pipeline.advance(id, "test").await.unwrap();
    assert_eq!(h.stage(id).await, Stage::Analysis);
    let waiting = job_of(&h, id).await;
    assert_eq!(waiting.status, "queued");

    // The first tick starts the dependency's job, not the dependent's.
    let started = worker::tick(&h.rt).await.unwrap();
    assert_eq!(started, [job_of(&h, running_dep).await.id], "{started:?}");
    // Keep ticking until the dependency's analyst has finished (it waits
    // for approval at analysis: not terminal): the job stays queued.
    h.drive("the dependency's analyst run", 30, || async {
        assert_eq!(
            job_of(&h, id).await.status,
            "queued",
            "started while a dependency is not terminal"
        );
        job_of(&h, running_dep).await.status == "done"
    })
    .await;
    assert_eq!(h.stage(running_dep).await, Stage::Analysis);
    assert_eq!(
        tasks::pending_dependencies(h.db.reader(), id)
            .await
            .unwrap(),
        [running_dep, idle_dep]
    );

    // STOP cancels the first dependency; the second still is not terminal.
    h.rt.pipeline
        .stop(running_dep, "test", "not needed")
        .await
        .unwrap();
    assert_eq!(h.stage(running_dep).await, Stage::Cancelled);
    for _ in 0..3 {
        assert!(worker::tick(&h.rt).await.unwrap().is_empty());
    }
    assert_eq!(job_of(&h, id).await.status, "queued", "DEMO-2 is not done");
    assert_eq!(
        tasks::pending_dependencies(h.db.reader(), id)
            .await
            .unwrap(),
        [idle_dep]
    );

    // The second dependency is done (seeded: tests may set a row's stage).
    sqlx::query("UPDATE tasks SET stage = 'done', stage_version = stage_version + 1 WHERE id = ?")
        .bind(idle_dep)
        .execute(h.db.writer())
        .await
        .unwrap();
    assert!(
        tasks::pending_dependencies(h.db.reader(), id)
            .await
            .unwrap()
            .is_empty()
    );
    let started = worker::tick(&h.rt).await.unwrap();
    assert_eq!(started, [waiting.id], "every dependency is terminal");
    h.drive("the dependent's analyst run", 30, || async {
        job_of(&h, id).await.status == "done"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_dependency_alone_releases_the_job() {
    let h = Harness::new(&["demo"], &[]).await;
    let dep = h.task("demo", "DEMO-4").await;
    let id = h.task("demo", "DEMO-5").await;
    tasks::add_dependency(h.db.writer(), id, dep).await.unwrap();
    h.rt.pipeline.advance(id, "test").await.unwrap();
    assert!(worker::tick(&h.rt).await.unwrap().is_empty());
    assert_eq!(job_of(&h, id).await.status, "queued");
    // A task at `created` is cancelled through STOP, like any other.
    h.rt.pipeline.stop(dep, "test", "dropped").await.unwrap();
    assert_eq!(h.stage(dep).await, Stage::Cancelled);
    let started = worker::tick(&h.rt).await.unwrap();
    assert_eq!(started, [job_of(&h, id).await.id]);
    h.drive("the analyst run", 30, || async {
        job_of(&h, id).await.status == "done"
    })
    .await;
}
