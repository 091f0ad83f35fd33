//! What a person does, the same way on either adapter pair (B-10): on
//! Plane (its double, whose changes come as signed webhooks) or on the
//! local tracker (the daemon's own `/items` routes, admin token).

use std::path::{Path, PathBuf};

use orchestrator::db::Db;
use orchestrator::db::tasks::TaskRow;
use orchestrator::domain::Stage;
use serde_json::{Value, json};

use super::daemon::{Daemon, Pair, REPO, World};

pub const ADMIN: &str = super::daemon::ADMIN_TOKEN;

/// `POST`/`GET` a daemon route with the admin token; (status, JSON body).
pub async fn admin(
    d: &Daemon,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, d.url(path))
        .bearer_auth(ADMIN);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

impl World {
    /// A work item `DEMO-<seq>` at `status`: in Plane (its id) or in the
    /// local tracker (its work item, which is its id there). Items of a
    /// world are made in `seq` order.
    pub async fn new_item(&self, d: &Daemon, seq: i64, status: &str) -> String {
        match self.pair {
            Pair::PlaneGitea => self.plane.add_item(&self.pid, seq, &format!("Item {seq}")),
            Pair::Local => {
                let (code, v) = admin(
                    d,
                    reqwest::Method::POST,
                    "/items",
                    Some(json!({"project": "demo", "title": format!("Item {seq}"), "status": status})),
                )
                .await;
                assert_eq!(code, 201, "{v}");
                assert_eq!(v["work_item"], format!("DEMO-{seq}"), "{v}");
                format!("DEMO-{seq}")
            }
        }
    }

    /// A person sets a status by its name; the answer's status code.
    pub async fn person_sets(&self, d: &Daemon, item: &str, status: &str) -> u16 {
        match self.pair {
            Pair::PlaneGitea => self.plane.human_set_state(item, status).await,
            Pair::Local => {
                let path = format!("/items/{item}/status");
                admin(
                    d,
                    reqwest::Method::POST,
                    &path,
                    Some(json!({"status": status})),
                )
                .await
                .0
            }
        }
    }

    /// A person comments (plain text).
    pub async fn person_comments(&self, d: &Daemon, item: &str, text: &str) -> u16 {
        match self.pair {
            Pair::PlaneGitea => {
                self.plane
                    .human_comment(item, &format!("<p>{text}</p>"))
                    .await
            }
            Pair::Local => {
                let path = format!("/items/{item}/comments");
                admin(d, reqwest::Method::POST, &path, Some(json!({"text": text})))
                    .await
                    .0
            }
        }
    }

    /// The status name the tracker shows.
    pub async fn status_of(&self, d: &Daemon, item: &str) -> String {
        match self.pair {
            Pair::PlaneGitea => self.plane.state_of(item),
            Pair::Local => {
                let (_, v) = admin(d, reqwest::Method::GET, &format!("/items/{item}"), None).await;
                v["status"].as_str().unwrap_or_default().to_string()
            }
        }
    }

    /// A work item and its task at `stage` (set-up writes the stage, like
    /// `task_at`); (tracker id, task).
    pub async fn item_at(
        &self,
        d: &Daemon,
        db: &Db,
        seq: i64,
        stage: Stage,
        status: &str,
    ) -> (String, TaskRow) {
        let item = self.new_item(d, seq, status).await;
        let task = super::daemon::seed_task(db, seq, &item, stage).await;
        (item, task)
    }

    /// [`item_at`] at `stage` with a commit pushed on the task branch; its head.
    pub async fn item_with_branch(
        &self,
        d: &Daemon,
        db: &Db,
        seq: i64,
        stage: Stage,
        status: &str,
    ) -> (String, TaskRow, String) {
        let (item, task) = self.item_at(d, db, seq, stage, status).await;
        let work = self.dir.path().join(format!("work-{seq}"));
        self.gitea.clone_to(REPO, &work);
        let head = self.gitea.push_commit(
            &work,
            task.branch.as_deref().unwrap(),
            "feature.txt",
            &format!("DEMO-{seq}\n"),
        );
        (item, task, head)
    }

    /// A `git` first on the daemon's PATH: the real one, except that the
    /// first push to `main` lands and then never answers (a merge whose
    /// answer was lost). Its env pair, and the file that holds the pid of
    /// the hanging wrapper once it hangs.
    pub fn git_that_hangs_after_the_first_push_to_main(&self) -> ((String, String), PathBuf) {
        let mark = self.dir.path().join("push-hangs.pid");
        let m = mark.display();
        let on_push =
            format!("\"$REAL\" \"$@\" || exit $?\n      sleep 300 & echo $! > '{m}'; wait; exit 1");
        (self.git_wrapper(&mark, &on_push), mark)
    }

    /// A `git` first on the daemon's PATH whose first push to `main` finds
    /// that someone else pushed to main just before (the push is refused
    /// as not a fast-forward). Its env pair.
    pub fn git_racing_the_first_push_to_main(&self) -> (String, String) {
        let mark = self.dir.path().join("push-raced");
        let other = self.dir.path().join("someone-else");
        let on_push = format!(
            "touch '{m}'\n      ( \"$REAL\" clone -q '{bare}' '{o}' && cd '{o}' && echo x > other.txt && \"$REAL\" add other.txt \\\n        && \"$REAL\" -c user.name=someone -c user.email=s@x commit -qm 'someone else' && \"$REAL\" push -q origin HEAD:main ) >/dev/null 2>&1\n      exec \"$REAL\" \"$@\"",
            m = mark.display(),
            bare = self.bare.display(),
            o = other.display()
        );
        self.git_wrapper(&mark, &on_push)
    }

    /// A `git` wrapper on PATH that runs `on_push` (shell, `$REAL` is the
    /// real git) for the first push to `main` while `mark` does not exist.
    fn git_wrapper(&self, mark: &Path, on_push: &str) -> (String, String) {
        let bin = self.dir.path().join("wrapper-bin");
        std::fs::create_dir_all(&bin).unwrap();
        let real = String::from_utf8(
            std::process::Command::new("sh")
                .args(["-c", "command -v git"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap()
        .trim()
        .to_string();
        let script = format!(
            "#!/bin/sh\nREAL='{real}'\ncase \" $* \" in\n  *\" push \"*refs/heads/main*)\n    if [ ! -e '{m}' ]; then\n      {on_push}\n    fi ;;\nesac\nexec \"$REAL\" \"$@\"\n",
            m = mark.display()
        );
        let git = bin.join("git");
        std::fs::write(&git, script).unwrap();
        std::process::Command::new("chmod")
            .arg("+x")
            .arg(&git)
            .status()
            .unwrap();
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        ("PATH".to_string(), path)
    }
}

/// Stop the process whose pid `file` holds, if it does.
pub fn kill_pid_in(file: &Path) {
    if let Ok(pid) = std::fs::read_to_string(file)
        && let Ok(pid) = pid.trim().parse::<i32>()
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}
