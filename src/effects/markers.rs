//! Cleanup of the deploy path's marker files (F-23, B-1).
//!
//! The deploy-path effects write `<workspace_root>/deploys/<transition
//! key><suffix>` (`DeployDeps::marker`): the success marker of a production
//! deploy (`.done`), of an image rebuild (`.image_rebuild.done`) and the
//! head a merge was asked for (`.merge-head`). A marker is the reconcile
//! proof of its effect only while the transition is uncommitted: once the
//! stage write went through, the key is never journaled again (a second pass
//! of the same arrow has a new version, so a new key). Nothing removed them,
//! so `deploys/` grew by a few files per deploy forever.
//!
//! [`sweep`] removes a marker only when all of these hold:
//! - its name is `<safe transition key><suffix>` for a suffix of
//!   [`MARKERS`] (or that name plus `.tmp`, a temp file `write_durably` left
//!   behind) and an effect row of that key and the suffix's kind exists;
//! - that row is `done`: a planned or failed row keeps its marker, whatever
//!   the task did since;
//! - the transition committed: the task's `stage_version` moved past the
//!   row's version, or the task is terminal;
//! - the file is older than the safety age ([`MIN_AGE`] in the daemon).
//!
//! Only regular files at the top of `deploys/` are looked at: the deploy
//! clones (`deploys/repos/<project>`) and any other directory are never
//! entered, and a name this module does not know is left alone.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use crate::config::Settings;
use crate::db::Db;
use crate::db::effects::EffectRow;
use crate::db::tasks;
use crate::domain::EffectKind;

/// A committed transition's marker is removed once it is this old.
pub const MIN_AGE: Duration = Duration::from_secs(24 * 3600);

/// Marker suffixes and the effect each one proves (see `deploy.rs`,
/// `ratchet.rs`). A new marker joins this table to be cleaned.
pub const MARKERS: &[(&str, EffectKind)] = &[
    (".done", EffectKind::ProdDeploy),
    (".merge-head", EffectKind::MergePr),
    (".image_rebuild.done", EffectKind::ImageRebuild),
    // The wrapper's records of a deploy run (`adopt.rs`) and the deployer
    // agent's prompt and log (`deploy_agent.rs`).
    (".started", EffectKind::ProdDeploy),
    (".pgid", EffectKind::ProdDeploy),
    (".exit", EffectKind::ProdDeploy),
    (".log", EffectKind::ProdDeploy),
    (".image_rebuild.started", EffectKind::ImageRebuild),
    (".image_rebuild.pgid", EffectKind::ImageRebuild),
    (".image_rebuild.exit", EffectKind::ImageRebuild),
    (".image_rebuild.log", EffectKind::ImageRebuild),
    (".deployer-prompt.md", EffectKind::ProdDeploy),
    (".deployer.log", EffectKind::ProdDeploy),
];

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sweep {
    /// Marker files deleted.
    pub removed: u64,
    /// Markers kept: their transition is not committed or their row not done.
    pub kept: u64,
    /// Markers of a committed transition, younger than the safety age.
    pub young: u64,
    /// Files that could not be read or removed, or a failed query.
    pub errors: u64,
}

/// The file-name form of a transition key, as `DeployDeps::marker` writes it.
pub fn safe_name(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The task id at the front of a marker name (`task:<id>/...` → `task_<id>_`).
fn task_id_of(name: &str) -> Option<i64> {
    let rest = name.strip_prefix("task_")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    if digits.is_empty() || !rest[digits.len()..].starts_with('_') {
        return None;
    }
    digits.parse().ok()
}

/// The effect row a marker file belongs to, among its task's rows.
fn row_of<'a>(name: &str, rows: &'a [EffectRow]) -> Option<&'a EffectRow> {
    let name = name.strip_suffix(".tmp").unwrap_or(name);
    rows.iter().find(|r| {
        let safe = safe_name(&r.transition_key);
        MARKERS
            .iter()
            .any(|(suffix, kind)| r.kind == kind.as_str() && name == format!("{safe}{suffix}"))
    })
}

/// Remove the markers of committed transitions older than `min_age` from
/// `<workspace_root>/deploys`. Never fails: what it cannot do is logged and
/// counted in [`Sweep::errors`], and the next sweep tries again.
pub async fn sweep(settings: &Settings, db: &Db, now: SystemTime, min_age: Duration) -> Sweep {
    let dir = super::deploy_deps::deploys_dir(settings);
    let mut out = Sweep::default();
    let mut by_task: HashMap<i64, Vec<(String, SystemTime)>> = HashMap::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return out,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "deploy markers not swept");
            out.errors += 1;
            return out;
        }
    };
    for entry in entries {
        let Ok(entry) = entry else {
            out.errors += 1;
            continue;
        };
        // `file_type` does not follow symlinks: directories (the deploy
        // clones) and links are never candidates.
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(task_id) = task_id_of(&name).filter(|_| is_file) else {
            continue;
        };
        match entry.metadata().and_then(|m| m.modified()) {
            Ok(mtime) => by_task.entry(task_id).or_default().push((name, mtime)),
            Err(e) => {
                tracing::warn!(file = %entry.path().display(), error = %e, "marker age unknown; kept");
                out.errors += 1;
            }
        }
    }
    for (task_id, files) in by_task {
        let (task, rows) = match task_and_rows(db, task_id).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(task_id, error = %e, "deploy markers of the task not swept");
                out.errors += 1;
                continue;
            }
        };
        for (name, mtime) in files {
            let Some(row) = row_of(&name, &rows) else {
                continue;
            };
            let committed = task
                .as_ref()
                .is_some_and(|t| t.stage_version > row.stage_version || t.stage.is_terminal());
            if row.state != "done" || !committed {
                out.kept += 1;
                continue;
            }
            let age = now.duration_since(mtime).unwrap_or_default();
            if age < min_age {
                out.young += 1;
                continue;
            }
            let path = dir.join(&name);
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    out.removed += 1;
                    tracing::info!(file = %path.display(), key = %row.transition_key, "deploy marker of a committed transition removed");
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "deploy marker not removed");
                    out.errors += 1;
                }
            }
        }
    }
    out
}

async fn task_and_rows(
    db: &Db,
    task_id: i64,
) -> Result<(Option<tasks::TaskRow>, Vec<EffectRow>), sqlx::Error> {
    let task = tasks::get(db.reader(), task_id).await?;
    let rows = sqlx::query_as("SELECT * FROM effects WHERE task_id = ? ORDER BY id")
        .bind(task_id)
        .fetch_all(db.reader())
        .await?;
    Ok((task, rows))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::EnvVars;
    use crate::db::effects::{self, Planned};
    use crate::db::tasks::NewTask;
    use crate::domain::Stage;
    use crate::effects::deploy_deps::DeployDeps;
    use crate::stage_engine::transition_key;

    const HOUR: Duration = Duration::from_secs(3600);

    struct Env {
        _dir: tempfile::TempDir,
        settings: Arc<Settings>,
        db: Db,
        deps: DeployDeps,
    }

    async fn env() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let pairs = [
            (
                "ORCH_DATABASE_URL".to_string(),
                format!("sqlite://{}", dir.path().join("o.db").display()),
            ),
            (
                "ORCH_WORKSPACE_ROOT".to_string(),
                dir.path().join("ws").display().to_string(),
            ),
        ];
        let settings = Arc::new(Settings::load(&EnvVars::from_pairs(pairs)).unwrap().0);
        let db = Db::open(&settings.database_path()).await.unwrap();
        let forge = crate::clients::daemon_forge(&settings);
        let deps = DeployDeps::new(settings.clone(), db.clone(), forge);
        Env {
            _dir: dir,
            settings,
            db,
            deps,
        }
    }

    /// A task at `stage`/`version` with one effect row of `kind` on the
    /// arrow `from -> to` at `at_version`, in `state`; returns the key.
    async fn task_with_row(
        e: &Env,
        wi: &str,
        (stage, version): (Stage, i64),
        (from, to, at_version): (Stage, Stage, i64),
        kind: EffectKind,
        state: &str,
    ) -> (i64, String) {
        let id = tasks::insert(
            e.db.writer(),
            &NewTask {
                work_item: wi.into(),
                project: "demo".into(),
                title: wi.into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        // Tests may seed a stage directly (CLAUDE.md).
        sqlx::query("UPDATE tasks SET stage = ?, stage_version = ? WHERE id = ?")
            .bind(stage)
            .bind(version)
            .bind(id)
            .execute(e.db.writer())
            .await
            .unwrap();
        let key = transition_key(id, from, to, at_version);
        effects::insert_planned(
            e.db.writer(),
            &Planned {
                task_id: id,
                key: &key,
                from,
                to,
                version: at_version,
                kind: kind.as_str(),
                holder: "test",
            },
        )
        .await
        .unwrap();
        let row = effects::get(e.db.reader(), &key, kind.as_str())
            .await
            .unwrap()
            .unwrap();
        // Set-up writes the state directly (no lease holder to fence).
        if state != "planned" {
            sqlx::query("UPDATE effects SET state = ? WHERE id = ?")
                .bind(state)
                .bind(row.id)
                .execute(e.db.writer())
                .await
                .unwrap();
        }
        (id, key)
    }

    /// A marker written where the effects write it, `age` old.
    fn marker(e: &Env, key: &str, suffix: &str, age: Duration) -> std::path::PathBuf {
        let path = e.deps.marker(key, suffix);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "deploy_status: SUCCESS\n").unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(SystemTime::now() - age).unwrap();
        path
    }

    #[test]
    fn names_match_what_the_effects_write() {
        let key = transition_key(12, Stage::Deploy, Stage::Done, 7);
        assert_eq!(safe_name(&key), "task_12_deploy-_done@v7");
        assert_eq!(task_id_of("task_12_deploy-_done@v7.done"), Some(12));
        for bad in ["repos", "task_", "task_x_1", "task_12", "task12_a"] {
            assert_eq!(task_id_of(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn only_old_markers_of_committed_done_transitions_are_removed() {
        let e = env().await;
        let old = 25 * HOUR;
        // Committed: deploy -> done at v7, the task is done at v8.
        let (_, done_key) = task_with_row(
            &e,
            "DEMO-1",
            (Stage::Done, 8),
            (Stage::Deploy, Stage::Done, 7),
            EffectKind::ProdDeploy,
            "done",
        )
        .await;
        let gone = marker(&e, &done_key, ".done", old);
        let tmp = marker(&e, &done_key, ".done.tmp", old);
        let fresh_key_task = task_with_row(
            &e,
            "DEMO-2",
            (Stage::Done, 8),
            (Stage::Deploy, Stage::Done, 7),
            EffectKind::ProdDeploy,
            "done",
        )
        .await;
        let fresh = marker(&e, &fresh_key_task.1, ".done", HOUR);
        // Done row, transition not committed (a crash before the stage write).
        let (_, open_key) = task_with_row(
            &e,
            "DEMO-3",
            (Stage::Deploy, 7),
            (Stage::Deploy, Stage::Done, 7),
            EffectKind::MergePr,
            "done",
        )
        .await;
        let uncommitted = marker(&e, &open_key, ".merge-head", old);
        // Not done, though the task moved on (cancelled).
        let (_, planned_key) = task_with_row(
            &e,
            "DEMO-4",
            (Stage::Cancelled, 9),
            (Stage::Deploy, Stage::Done, 7),
            EffectKind::ProdDeploy,
            "planned",
        )
        .await;
        let planned = marker(&e, &planned_key, ".done", old);
        let (_, failed_key) = task_with_row(
            &e,
            "DEMO-5",
            (Stage::Development, 9),
            (Stage::DeployStaging, Stage::Deploy, 6),
            EffectKind::ImageRebuild,
            "failed",
        )
        .await;
        let failed = marker(&e, &failed_key, ".image_rebuild.done", old);
        // A marker of a kind whose row does not exist, and unknown files.
        let wrong_kind = marker(&e, &done_key, ".image_rebuild.done", old);
        let unknown = marker(&e, &done_key, ".notes.txt", old);
        let stranger = e.settings.workspace_root.join("deploys").join("notes.txt");
        std::fs::write(&stranger, "x").unwrap();
        // The deploy clones: a directory named like a marker and a clone
        // holding a file named like one are never touched.
        let dir_like = e.deps.marker(&done_key, ".image_rebuild.done.d");
        let clone = e.deps.checkouts.dir("demo");
        std::fs::create_dir_all(clone.join(".git")).unwrap();
        let in_clone = clone.join(gone.file_name().unwrap());
        std::fs::write(&in_clone, "x").unwrap();
        std::fs::create_dir_all(&dir_like).unwrap();

        let s = sweep(&e.settings, &e.db, SystemTime::now(), MIN_AGE).await;
        assert_eq!(
            s,
            Sweep {
                removed: 2,
                kept: 3,
                young: 1,
                errors: 0
            }
        );
        assert!(!gone.exists() && !tmp.exists());
        for kept in [
            &fresh,
            &uncommitted,
            &planned,
            &failed,
            &wrong_kind,
            &unknown,
            &stranger,
            &in_clone,
        ] {
            assert!(kept.exists(), "{} must stay", kept.display());
        }
        assert!(dir_like.is_dir() && clone.join(".git").is_dir());

        // Later: the fresh one has aged; nothing else changes.
        let s = sweep(&e.settings, &e.db, SystemTime::now() + 24 * HOUR, MIN_AGE).await;
        assert_eq!((s.removed, s.kept, s.young), (1, 3, 0));
        assert!(!fresh.exists());
        // No deploys directory at all: nothing to do.
        std::fs::remove_dir_all(e.settings.workspace_root.join("deploys")).unwrap();
        let s = sweep(&e.settings, &e.db, SystemTime::now(), MIN_AGE).await;
        assert_eq!(s, Sweep::default());
    }
}
