//! B-9 hot reload: the part of the configuration that changes while the
//! daemon runs (the `[[projects]]` list), behind a holder every clone of the
//! [`Settings`] shares, and the reload that re-reads the file through the
//! same loader and validation as start-up (ADR 0016).
//!
//! Consumers read the list at use time (`settings.project(name)`,
//! `settings.projects.iter()`); nothing keeps a copy taken at start. Every
//! other key needs a restart: a reload that sees one changed names it.

use std::fmt;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};

use super::{ConfigError, EnvVars, Project, Secret, Settings};

/// The live `[[projects]]` list. Cloning shares it: a reload seen by one
/// clone is seen by all.
///
/// A read hands out a `&'static` slice, so a caller may hold a `&Project`
/// across an await as long as it likes while a reload swaps the list: each
/// list is leaked once, when the file is loaded (at start, and on each
/// reload of a changed file that validates: a few KB per edit, never per
/// poll; ADR 0016). The previous list stays valid for whoever still reads
/// it; the next read sees the new one.
#[derive(Clone)]
pub struct Projects(Arc<RwLock<&'static [Project]>>);

impl Projects {
    pub fn new(list: Vec<Project>) -> Self {
        Self(Arc::new(RwLock::new(list.leak())))
    }

    /// The list now; one snapshot, consistent in itself.
    pub fn current(&self) -> &'static [Project] {
        // A `&'static` slice cannot be left half-written: a poisoned lock
        // still holds a whole list.
        *self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Swap in a new list, atomically for every reader.
    pub fn replace(&self, list: Vec<Project>) {
        self.set(list.leak());
    }

    /// Swap in a list already loaded (and leaked) elsewhere: a reload
    /// adopts the fresh load's list instead of leaking a second copy.
    fn set(&self, list: &'static [Project]) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = list;
    }
}

impl Default for Projects {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

impl Deref for Projects {
    type Target = [Project];
    fn deref(&self) -> &[Project] {
        self.current()
    }
}

impl<'a> IntoIterator for &'a Projects {
    type Item = &'a Project;
    type IntoIter = std::slice::Iter<'a, Project>;
    fn into_iter(self) -> Self::IntoIter {
        self.current().iter()
    }
}

impl From<Vec<Project>> for Projects {
    fn from(list: Vec<Project>) -> Self {
        Self::new(list)
    }
}

impl fmt::Debug for Projects {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.current()).finish()
    }
}

impl serde::Serialize for Projects {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.current().serialize(s)
    }
}

/// Where the settings came from, so a reload can read them again: the file
/// named by `ORCH_CONFIG` and the environment captured at start (the
/// environment does not change under a running process).
#[derive(Clone)]
pub struct Source {
    pub path: PathBuf,
    env: EnvVars,
}

impl Source {
    pub(super) fn new(path: &Path, env: &EnvVars) -> Self {
        Self {
            path: path.to_path_buf(),
            env: env.clone(),
        }
    }
}

impl fmt::Debug for Source {
    /// The path only: the captured environment holds secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Source").field("path", &self.path).finish()
    }
}

/// What the file holds now: a hash of its bytes, or why it cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fingerprint {
    Content([u8; 32]),
    Unreadable(String),
}

impl Fingerprint {
    pub fn of(path: &Path) -> Self {
        match std::fs::read(path) {
            Ok(bytes) => Self::Content(Sha256::digest(&bytes).into()),
            Err(e) => Self::Unreadable(e.kind().to_string()),
        }
    }

    /// A short stable name of this content (an alert's dedup key).
    pub fn short(&self) -> String {
        match self {
            Self::Content(h) => h[..8].iter().map(|b| format!("{b:02x}")).collect(),
            Self::Unreadable(kind) => format!("unreadable: {kind}"),
        }
    }
}

/// What a successful reload changed. Names only: a project's values (a
/// `repo_url` may carry a credential) never go in a log line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    /// Keys that differ in the file but only take effect after a restart.
    pub need_restart: Vec<String>,
    /// The loader's warnings (keys that fell back to their default).
    pub warnings: Vec<String>,
}

impl Changes {
    pub fn projects_changed(&self) -> bool {
        !(self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty())
    }
}

impl Settings {
    /// B-9: read the file again with the environment of the start, validate
    /// it exactly as start-up does and, if it is good, swap the new
    /// `[[projects]]` list in. A bad file changes nothing (the last good
    /// list stays) and the error names the key or line to fix. `None`: the
    /// settings came from no file, there is nothing to re-read.
    pub fn reload_projects(&self) -> Option<Result<Changes, ConfigError>> {
        let source = self.source.as_ref()?;
        let (new, report) = match Settings::load_with(Some(&source.path), &source.env) {
            Ok(loaded) => loaded,
            Err(e) => return Some(Err(e)),
        };
        let mut changes = diff(self.projects.current(), new.projects.current());
        changes.need_restart = restart_keys(self, &new);
        changes.warnings = report.warnings;
        if changes.projects_changed() {
            self.projects.set(new.projects.current());
        }
        Some(Ok(changes))
    }
}

/// Projects added, removed and changed, by name.
pub fn diff(old: &[Project], new: &[Project]) -> Changes {
    let find = |list: &[Project], name: &str| list.iter().position(|p| p.name == name);
    let mut c = Changes::default();
    for p in new {
        match find(old, &p.name) {
            None => c.added.push(p.name.clone()),
            Some(i) if old[i] != *p => c.changed.push(p.name.clone()),
            Some(_) => {}
        }
    }
    for p in old {
        if find(new, &p.name).is_none() {
            c.removed.push(p.name.clone());
        }
    }
    c
}

/// Top-level keys other than `projects` whose value differs. Secrets
/// serialize as `***`, so they compare by their clear value here; they
/// are named, never shown.
pub fn restart_keys(old: &Settings, new: &Settings) -> Vec<String> {
    let as_map = |s: &Settings| match serde_json::to_value(s) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    let (a, b) = (as_map(old), as_map(new));
    let mut keys: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| k.as_str() != "projects" && a.get(*k) != b.get(*k))
        .cloned()
        .collect();
    for (key, o, n) in secrets(old, new) {
        if o != n {
            keys.push(key.to_string());
        }
    }
    keys.sort();
    keys.dedup();
    keys
}

/// Every secret of the settings, old and new: one per `SECRET_ENV_KEYS`
/// entry (a unit test holds the two lists together).
fn secrets<'a>(
    old: &'a Settings,
    new: &'a Settings,
) -> [(&'static str, &'a Secret, &'a Secret); 7] {
    [
        ("admin_token", &old.admin_token, &new.admin_token),
        ("plane_api_key", &old.plane_api_key, &new.plane_api_key),
        (
            "plane_webhook_secret",
            &old.plane_webhook_secret,
            &new.plane_webhook_secret,
        ),
        ("gitea_token", &old.gitea_token, &new.gitea_token),
        (
            "gitea_webhook_secret",
            &old.gitea_webhook_secret,
            &new.gitea_webhook_secret,
        ),
        (
            "telegram_bot_token",
            &old.telegram_bot_token,
            &new.telegram_bot_token,
        ),
        (
            "telegram_webhook_secret",
            &old.ops.telegram_webhook_secret,
            &new.ops.telegram_webhook_secret,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SECRET_ENV_KEYS;

    fn project(name: &str, repo: &str) -> Project {
        Project {
            name: name.into(),
            plane_project_id: String::new(),
            work_item_prefix: name.to_uppercase(),
            repo_url: repo.into(),
            gitea_repo: String::new(),
            default_branch: "main".into(),
            test_command: String::new(),
            deterministic_tester: false,
            staging_command: String::new(),
            deploy_command: String::new(),
            coverage_command: String::new(),
            security_command: String::new(),
            image_command: String::new(),
            agents: Default::default(),
            smoke_urls: Vec::new(),
            tracker: None,
            forge: None,
        }
    }

    fn projects_toml(list: &[(&str, &str)]) -> String {
        list.iter()
            .map(|(n, r)| format!("[[projects]]\nname = \"{n}\"\nrepo_url = \"{r}\"\n"))
            .collect()
    }

    /// A config file, the settings loaded from it and the environment.
    fn loaded(text: &str, env: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf, Settings) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orchestrator.toml");
        std::fs::write(&path, text).unwrap();
        let mut pairs = vec![("ORCH_CONFIG".to_string(), path.display().to_string())];
        pairs.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let (s, _) = Settings::load(&EnvVars::from_pairs(pairs)).unwrap();
        (dir, path, s)
    }

    fn names(s: &Settings) -> Vec<String> {
        s.projects.iter().map(|p| p.name.clone()).collect()
    }

    #[test]
    fn diff_names_added_removed_and_changed_projects() {
        let old = [project("a", "/a"), project("b", "/b"), project("c", "/c")];
        let new = [project("a", "/a"), project("c", "/c2"), project("d", "/d")];
        let c = diff(&old, &new);
        assert_eq!(c.added, ["d"]);
        assert_eq!(c.removed, ["b"]);
        assert_eq!(c.changed, ["c"]);
        assert!(c.projects_changed());
        assert!(!diff(&old, &old).projects_changed());
        // Order alone is no change.
        let shuffled = [project("c", "/c"), project("a", "/a"), project("b", "/b")];
        assert!(!diff(&old, &shuffled).projects_changed());
    }

    #[test]
    fn restart_keys_name_other_keys_and_secrets_never_their_values() {
        let (_d, _p, a) = loaded(&projects_toml(&[("a", "/a")]), &[]);
        let (_d2, _p2, b) = loaded(
            &format!(
                "bind = \"127.0.0.1:9999\"\nadmin_token = \"s3cret-value\"\nconfig_poll_ms = 5\n{}",
                projects_toml(&[("a", "/other"), ("b", "/b")])
            ),
            &[],
        );
        let keys = restart_keys(&a, &b);
        assert_eq!(keys, ["admin_token", "bind", "config_poll_ms"], "{keys:?}");
        assert!(!keys.iter().any(|k| k.contains("s3cret")));
        assert!(restart_keys(&a, &a).is_empty());
    }

    #[test]
    fn every_secret_env_key_is_compared() {
        let s = Settings::default();
        let mut ours: Vec<String> = secrets(&s, &s)
            .iter()
            .map(|(k, _, _)| format!("ORCH_{}", k.to_ascii_uppercase()))
            .collect();
        let mut theirs: Vec<String> = SECRET_ENV_KEYS.iter().map(|k| k.to_string()).collect();
        ours.sort();
        theirs.sort();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn reload_swaps_the_list_for_every_clone() {
        let (_d, path, s) = loaded(&projects_toml(&[("a", "/a")]), &[]);
        let clone = s.clone();
        let held = s.project("a").unwrap();
        std::fs::write(&path, projects_toml(&[("b", "/b")])).unwrap();
        let c = s.reload_projects().unwrap().unwrap();
        assert_eq!((c.added, c.removed), (vec!["b".into()], vec!["a".into()]));
        assert!(c.need_restart.is_empty(), "{:?}", c.need_restart);
        assert_eq!(names(&clone), ["b"]);
        assert!(clone.project("a").is_none());
        // A reference taken before the swap stays valid.
        assert_eq!(held.repo_url, "/a");
    }

    #[test]
    fn a_bad_file_keeps_the_last_good_list_and_names_the_problem() {
        let (_d, path, s) = loaded(&projects_toml(&[("a", "/a")]), &[]);
        std::fs::write(&path, "[[projects]\nname = 'b'\n").unwrap();
        let e = s.reload_projects().unwrap().unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
        std::fs::write(&path, "[[projects]]\nname = \"b\"\n").unwrap();
        let e = s.reload_projects().unwrap().unwrap_err().to_string();
        assert!(e.contains("repo_url"), "{e}");
        std::fs::remove_file(&path).unwrap();
        let e = s.reload_projects().unwrap().unwrap_err().to_string();
        assert!(e.contains("cannot read config file"), "{e}");
        assert_eq!(names(&s), ["a"]);
        // A good file afterwards is taken.
        std::fs::write(&path, projects_toml(&[("a", "/a"), ("b", "/b")])).unwrap();
        let c = s.reload_projects().unwrap().unwrap();
        assert_eq!(c.added, ["b"]);
        assert_eq!(names(&s), ["a", "b"]);
    }

    #[test]
    fn the_environment_of_the_start_still_applies_on_reload() {
        let env = [("ORCH_CONFIG_POLL_MS", "0")];
        let (_d, path, s) = loaded(&projects_toml(&[("a", "/a")]), &env);
        std::fs::write(
            &path,
            format!("config_poll_ms = 50\n{}", projects_toml(&[("a", "/a")])),
        )
        .unwrap();
        let c = s.reload_projects().unwrap().unwrap();
        assert!(c.need_restart.is_empty(), "env wins: {:?}", c.need_restart);
        assert!(!c.projects_changed());
    }

    #[test]
    fn settings_without_a_file_have_nothing_to_reload() {
        assert!(Settings::default().reload_projects().is_none());
    }

    #[test]
    fn a_fingerprint_follows_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.toml");
        assert!(matches!(Fingerprint::of(&p), Fingerprint::Unreadable(_)));
        std::fs::write(&p, "a = 1\n").unwrap();
        let one = Fingerprint::of(&p);
        assert_eq!(one, Fingerprint::of(&p));
        assert_eq!(one.short().len(), 16);
        std::fs::write(&p, "a = 2\n").unwrap();
        assert_ne!(one, Fingerprint::of(&p));
    }
}
