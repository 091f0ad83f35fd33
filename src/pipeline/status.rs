//! F-02, the status-only model: what a status a person sets in Plane means.
//! Verdicts come from status changes; comments never drive anything. Every
//! stage move goes through the stage engine (via `Pipeline::advance`); every
//! agent run through the job queue.

use std::fmt;

use super::Pipeline;
use crate::db::jobs;
use crate::db::tasks::{self, NewTask, TaskRow};
use crate::domain::Stage;
use crate::stage_engine::{EngineError, Outcome};

/// The actor name the webhook's engine calls carry.
pub const ACTOR: &str = "plane-webhook";

/// The analyst's context when a rejection names no reason.
pub const REJECTED_FALLBACK: &str =
    "The BRD was rejected without a comment. Re-read the work item and improve the BRD.";

/// Longest reason handed to an agent, in characters.
const MAX_REASON_CHARS: usize = 4000;

/// A status a person set on a work item, resolved to our names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChange {
    /// Our project name.
    pub project: String,
    /// The tracker's id of the work item.
    pub issue_id: String,
    /// `DEMO-12`.
    pub work_item: String,
    pub title: String,
    /// Plain text (HTML already stripped).
    pub description: String,
    /// The new status key (`to_analyse`, `approved`, ...).
    pub status: String,
    /// The previous status key, when known and needed (In Progress).
    pub old_status: Option<String>,
}

/// What handling a status or a merge did; stored as the delivery's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    Done(String),
    /// Not allowed where the task is (a relaunch outside analysis...): logged.
    Refused(String),
    Ignored(String),
}

impl fmt::Display for Handled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Handled::Done(m) => write!(f, "done: {m}"),
            Handled::Refused(m) => write!(f, "refused: {m}"),
            Handled::Ignored(m) => write!(f, "ignored: {m}"),
        }
    }
}

/// A short human form of an engine outcome.
pub fn describe(out: &Outcome) -> String {
    match out {
        Outcome::Advanced { from, to, .. } => format!("{from} -> {to}"),
        Outcome::RolledBack { from, to, .. } => format!("{from} -> {to} (rollback)"),
        Outcome::Cancelled { from, .. } => format!("{from} -> cancelled"),
        Outcome::CancelDeferred => "cancel deferred to the lease holder".into(),
        Outcome::GateFailed { stage, reason } => format!("stays at {stage}: {reason}"),
        Outcome::Pending { stage, reason } => format!("stays at {stage}: {reason}"),
        Outcome::EffectFailed { stage, kind, error } => {
            format!("stays at {stage}: {} failed: {error}", kind.as_str())
        }
        Outcome::EffectUnknown { stage, kind, error } => format!(
            "held at {stage}: the outcome of {} is unknown: {error}",
            kind.as_str()
        ),
        Outcome::Draining => {
            "deferred: the daemon is stopping; carried on after the restart".into()
        }
        Outcome::LeaseBusy { actor, .. } => {
            format!("deferred: {actor} holds the task (the reconciler converges it)")
        }
        Outcome::LostRace => "lost a race; nothing changed".into(),
        Outcome::Terminal { stage } => format!("task is {stage}"),
        Outcome::NotFound => "task not found".into(),
    }
}

/// The statuses the orchestrator sets (SPEC, "outputs"). The inputs a person
/// sets (To Analyse, Approved, Rejected, STOP, Confirm Deploy) are not among
/// them. In Progress is both: an input only after Needs Input, in analysis,
/// where it is also the stage's own status.
pub const OUTPUT_STATUSES: [&str; 8] = [
    "in_progress",
    "in_review",
    "needs_input",
    "awaiting_deploy",
    "deploying",
    "monitoring",
    "done",
    "cancelled",
];

/// Statuses the pipeline shows inside a stage without moving it: In Review
/// and Needs Input while the BRD waits for a person; Deploying once Confirm
/// Deploy started the deploy finalizer.
const SUB_STATES: [(Stage, &[&str]); 2] = [
    (Stage::Analysis, &["in_review", "needs_input"]),
    (Stage::Deploy, &["deploying"]),
];

/// The output statuses that agree with a task at `stage`: the stage's own
/// status (`StageSpec::plane_status`) and its sub-states.
pub fn consistent_statuses(stage: Stage) -> Vec<&'static str> {
    let mut out = vec![stage.spec().plane_status];
    for (s, subs) in SUB_STATES {
        if s == stage {
            out.extend_from_slice(subs);
        }
    }
    out
}

/// F-16: does the tracker's `shown` status disagree with a task at `stage`?
/// Only our own output statuses count: a person's input (or a state none
/// of ours) is theirs, handled by the webhook or the poll, never overwritten.
/// A task at `created` shows the person's To Analyse until it starts; a
/// terminal task's status belongs to the cancel cascade and the post-deploy
/// monitor.
pub fn status_drifted(stage: Stage, shown: &str) -> bool {
    stage != Stage::Created
        && !stage.is_terminal()
        && OUTPUT_STATUSES.contains(&shown)
        && !consistent_statuses(stage).contains(&shown)
}

impl Pipeline {
    /// F-02: act on a status a person set. Idempotent: the intake processes
    /// a delivery at least once (a crash between work and bookkeeping
    /// repeats it).
    pub async fn on_status(&self, c: &StatusChange) -> Result<Handled, EngineError> {
        let task = tasks::by_work_item(self.db.reader(), &c.work_item).await?;
        if c.status == "to_analyse" {
            return self.to_analyse(c, task).await;
        }
        let Some(task) = task.filter(|t| !t.stage.is_terminal()) else {
            return Ok(Handled::Ignored(format!(
                "{}: no active task for {}",
                c.status, c.work_item
            )));
        };
        match c.status.as_str() {
            "approved" => {
                if task.stage != Stage::Analysis {
                    return Ok(refused(&task, "Approved", "analysis"));
                }
                tasks::set_approved(self.db.writer(), task.id).await?;
                let out = self.advance(task.id, ACTOR).await?;
                Ok(Handled::Done(format!("approved; {}", describe(&out))))
            }
            "rejected" => self.reject(&task, None).await,
            "in_progress" => {
                if c.old_status.as_deref() != Some("needs_input") {
                    return Ok(Handled::Ignored(
                        "In Progress not after Needs Input: nothing to do".into(),
                    ));
                }
                if task.stage != Stage::Analysis {
                    return Ok(refused(&task, "In Progress after Needs Input", "analysis"));
                }
                let answer = self.newest_comment_text(&task).await;
                let context = match answer {
                    Some(a) => format!("The person answered in Plane: {a}"),
                    None => "The person set In Progress after Needs Input; the answer is in the work item.".into(),
                };
                self.relaunch_analyst(&task, &context).await
            }
            "stop" => {
                let stopped = self.stop(task.id, ACTOR, "STOP in Plane").await?;
                Ok(Handled::Done(format!("stop; {stopped}")))
            }
            "confirm_deploy" => {
                if task.stage != Stage::Deploy {
                    return Ok(refused(&task, "Confirm Deploy", "deploy"));
                }
                // F-23: the deploy finalizer merges, deploys and arms the
                // post-deploy monitor (pipeline/deploy.rs) as a job of its
                // own: never inside the intake's turn (B-13).
                let job = self.request_deploy(task.id, ACTOR).await?;
                Ok(Handled::Done(format!(
                    "deploy confirmed; finalizer job {job} queued"
                )))
            }
            other => Ok(Handled::Ignored(format!(
                "status {other} is one the orchestrator sets; nothing to do"
            ))),
        }
    }

    /// Rejected: the analyst runs again with the reason: `given` (a reply
    /// to the Telegram card, B-11) or else the newest Plane comment.
    pub async fn reject(
        &self,
        task: &TaskRow,
        given: Option<&str>,
    ) -> Result<Handled, EngineError> {
        if task.stage != Stage::Analysis {
            return Ok(refused(task, "Rejected", "analysis"));
        }
        let context = match given.map(str::trim).filter(|r| !r.is_empty()) {
            Some(r) => format!(
                "Rejected in Telegram: {}",
                r.chars().take(MAX_REASON_CHARS).collect::<String>()
            ),
            None => format!("Rejected in Plane: {}", self.rejection_reason(task).await),
        };
        self.relaunch_analyst(task, &context).await
    }

    /// To Analyse: create the task (a cancelled one was tombstoned, so this
    /// is a fresh task) and start analysis; a task still at `created` (a
    /// crash came between insert and advance) is advanced.
    async fn to_analyse(
        &self,
        c: &StatusChange,
        existing: Option<TaskRow>,
    ) -> Result<Handled, EngineError> {
        let task_id = match existing {
            Some(t) if t.stage == Stage::Created => t.id,
            Some(t) if t.stage.is_terminal() => {
                return Ok(Handled::Refused(format!(
                    "{} is {}; a finished task is not restarted",
                    t.work_item, t.stage
                )));
            }
            Some(t) => {
                return Ok(Handled::Ignored(format!(
                    "{} is already active at {}",
                    t.work_item, t.stage
                )));
            }
            None => match self.create_task(c).await? {
                Some(id) => id,
                None => {
                    return Ok(Handled::Ignored(format!(
                        "{} was created concurrently",
                        c.work_item
                    )));
                }
            },
        };
        let out = self.advance(task_id, ACTOR).await?;
        tracing::info!(work_item = %c.work_item, task_id, outcome = %describe(&out), "To Analyse");
        Ok(Handled::Done(format!(
            "task {task_id} created; {}",
            describe(&out)
        )))
    }

    /// `None` when a live task with these keys appeared meanwhile (the
    /// partial unique indexes decide).
    async fn create_task(&self, c: &StatusChange) -> Result<Option<i64>, EngineError> {
        let new = NewTask {
            work_item: c.work_item.clone(),
            plane_issue_id: Some(c.issue_id.clone()),
            project: c.project.clone(),
            title: c.title.clone(),
            description: c.description.clone(),
            // The branch is the work item's (`DEMO-12` → `demo-12`, as F-08
            // names it); the worktree is recorded when F-08 prepares it.
            branch: Some(c.work_item.to_ascii_lowercase()),
            worktree: None,
        };
        match tasks::insert(self.db.writer(), &new).await {
            Ok(id) => Ok(Some(id)),
            Err(sqlx::Error::Database(d)) if d.is_unique_violation() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Queue the analyst again with `context` for its prompt. Refused while
    /// an analyst job is still queued or running (it would not see it).
    async fn relaunch_analyst(
        &self,
        task: &TaskRow,
        context: &str,
    ) -> Result<Handled, EngineError> {
        let all = jobs::for_task(self.db.reader(), task.id).await?;
        if let Some(active) = all.iter().find(|j| {
            j.stage == Stage::Analysis && matches!(j.status.as_str(), "queued" | "running")
        }) {
            return Ok(Handled::Refused(format!(
                "analyst job {} is still {}; relaunch after it ends",
                active.id, active.status
            )));
        }
        let attempt = all.iter().filter(|j| j.stage == Stage::Analysis).count() as i64 + 1;
        let role = super::job_role(Stage::Analysis).unwrap_or("analyst");
        let q = jobs::enqueue(&self.db, task.id, Stage::Analysis, role, attempt, context).await?;
        tracing::info!(work_item = %task.work_item, job = q.id(), attempt, "analyst relaunched");
        self.show_stage(task, "relaunch").await;
        Ok(Handled::Done(format!(
            "analyst job {} queued (attempt {attempt})",
            q.id()
        )))
    }

    /// The reason of a rejection: the newest comment, HTML stripped, or a
    /// fixed note when there is none or the tracker cannot be asked.
    async fn rejection_reason(&self, task: &TaskRow) -> String {
        self.newest_comment_text(task)
            .await
            .unwrap_or_else(|| REJECTED_FALLBACK.to_string())
    }

    async fn newest_comment_text(&self, task: &TaskRow) -> Option<String> {
        let item = self.tracker_ref(task)?;
        match self.tracker.latest_comment(&item).await {
            Ok(Some(html)) => Some(strip_html(&html)).filter(|t| !t.is_empty()),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(work_item = %task.work_item, error = %e, "cannot read the newest comment");
                None
            }
        }
    }
}

fn refused(task: &TaskRow, what: &str, only_in: &str) -> Handled {
    tracing::warn!(work_item = %task.work_item, stage = %task.stage, "{what} refused: it only counts in {only_in}");
    Handled::Refused(format!(
        "{what} only counts in {only_in}; {} is at {}",
        task.work_item, task.stage
    ))
}

/// Plain text of a comment: tags dropped (block ends become line breaks),
/// the common entities decoded, blank runs collapsed, length bounded.
pub fn strip_html(html: &str) -> String {
    let mut text = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(start) = rest.find('<') {
        text.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('>') else {
            // An unclosed `<` is text, not a tag.
            text.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let tag = rest[start + 1..start + end]
            .trim_start_matches('/')
            .to_ascii_lowercase();
        let name: String = tag
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        if matches!(
            name.as_str(),
            "br" | "p"
                | "div"
                | "li"
                | "tr"
                | "h1"
                | "h2"
                | "h3"
                | "h4"
                | "h5"
                | "h6"
                | "blockquote"
                | "pre"
        ) {
            text.push('\n');
        }
        rest = &rest[start + end + 1..];
    }
    text.push_str(rest);
    let decoded = text
        .replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&amp;", "&");
    let lines: Vec<String> = decoded
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect();
    lines.join("\n").chars().take(MAX_REASON_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_statuses_that_disagree_with_the_stage_drift() {
        for stage in Stage::ALL {
            for key in crate::config::PlaneStatuses::KEYS {
                let want = match (stage, key) {
                    (s, _) if s == Stage::Created || s.is_terminal() => false,
                    // A person's inputs are never drift.
                    (_, "to_analyse" | "approved" | "rejected" | "stop" | "confirm_deploy") => {
                        false
                    }
                    (Stage::Analysis, "in_progress" | "in_review" | "needs_input") => false,
                    (
                        Stage::Architecture | Stage::Development | Stage::Review | Stage::Testing,
                        "in_progress",
                    ) => false,
                    (Stage::DeployStaging, "deploying") => false,
                    (Stage::Deploy, "awaiting_deploy" | "deploying") => false,
                    _ => true,
                };
                assert_eq!(status_drifted(stage, key), want, "{stage} shows {key}");
            }
        }
        assert!(!status_drifted(Stage::Development, "Backlog"), "not ours");
        for stage in Stage::ALL {
            let own = stage.spec().plane_status;
            assert!(!status_drifted(stage, own), "{stage}: its own status");
            assert_eq!(consistent_statuses(stage)[0], own);
        }
    }

    #[test]
    fn strip_html_keeps_the_words() {
        assert_eq!(
            strip_html(
                "<p>The BRD misses the <b>rollback</b> case.</p><p>And&nbsp;tests &amp; docs.</p>"
            ),
            "The BRD misses the rollback case.\nAnd tests & docs."
        );
        assert_eq!(strip_html("a < b"), "a < b");
        assert_eq!(strip_html("<p>  </p>"), "");
        assert_eq!(strip_html("x<br/>y"), "x\ny");
        assert_eq!(
            strip_html(&"é".repeat(5000)).chars().count(),
            MAX_REASON_CHARS
        );
    }
}
