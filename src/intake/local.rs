//! The local tracker's inputs (B-10): a person creates a work item, sets
//! its status or comments on it (HTTP, CLI, board). A status change takes
//! the webhook's path: stored as a delivery (source `local`) in the same
//! transaction as the item's new status, acknowledged after that commit,
//! acted on by the intake worker through `Pipeline::on_status`, the same
//! handler a Plane webhook reaches. A status set to what the item already
//! shows stores nothing (as a tracker sends no event for it).

use super::Intake;
use crate::config::{Project, TrackerKind};
use crate::db::local_items::{self, Changed, ItemRow, PersonStatus};
use crate::pipeline::status::StatusChange;

/// Longest title, in characters.
const MAX_TITLE_CHARS: usize = 300;

/// Why a person's request was refused (each is the client's to fix).
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("{0}")]
    Invalid(String),
    #[error("no work item {0} in the local tracker")]
    UnknownItem(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

/// What a status request did.
#[derive(Debug, Clone)]
pub struct StatusSet {
    pub item: ItemRow,
    /// `false` when the item already had that status: nothing to act on.
    pub queued: bool,
}

impl Intake {
    /// A project whose work items live in the local tracker.
    fn local_project(&self, name: &str) -> Result<&Project, LocalError> {
        let settings = &self.pipeline().settings;
        let p = settings.project(name).ok_or_else(|| {
            let known: Vec<&str> = settings.projects.iter().map(|p| p.name.as_str()).collect();
            LocalError::Invalid(format!(
                "project {name:?} is not configured (known: {})",
                known.join(", ")
            ))
        })?;
        if p.tracker_kind() != TrackerKind::Local {
            return Err(LocalError::Invalid(format!(
                "project {name:?} uses tracker = \"plane\": its work items live in Plane"
            )));
        }
        if p.work_item_prefix.trim().is_empty() {
            return Err(LocalError::Invalid(format!(
                "project {name:?} has no work_item_prefix: set one to name its work items"
            )));
        }
        Ok(p)
    }

    /// The status key of a name as in `[plane].statuses` (or of a key).
    pub fn status_key_of_name(&self, name: &str) -> Result<&'static str, LocalError> {
        let statuses = &self.pipeline().settings.plane.statuses;
        crate::config::PlaneStatuses::KEYS
            .into_iter()
            .find(|k| statuses.key_of(name) == Some(*k) || k.eq_ignore_ascii_case(name.trim()))
            .ok_or_else(|| {
                let names: Vec<&str> = crate::config::PlaneStatuses::KEYS
                    .iter()
                    .filter_map(|k| statuses.name_of(k))
                    .collect();
                LocalError::Invalid(format!(
                    "unknown status {name:?}; one of: {}",
                    names.join(", ")
                ))
            })
    }

    /// `POST /items`: a new work item, at To Analyse unless `status` says
    /// otherwise (a work item created into To Analyse starts its task).
    pub async fn create_item(
        &self,
        project: &str,
        title: &str,
        description: &str,
        status: Option<&str>,
    ) -> Result<ItemRow, LocalError> {
        let p = self.local_project(project)?;
        let title = title.trim();
        if title.is_empty() {
            return Err(LocalError::Invalid("title is empty".into()));
        }
        if title.chars().count() > MAX_TITLE_CHARS {
            return Err(LocalError::Invalid(format!(
                "title is longer than {MAX_TITLE_CHARS} characters"
            )));
        }
        let key = match status {
            Some(s) => self.status_key_of_name(s)?,
            None => "to_analyse",
        };
        let (item, delivery) = local_items::create(
            &self.pipeline().db,
            &p.name,
            p.work_item_prefix.trim(),
            title,
            description,
            key,
        )
        .await?;
        tracing::info!(work_item = %item.work_item, status = key, delivery, "local work item created");
        self.wake();
        Ok(item)
    }

    /// `POST /items/<work item>/status`.
    pub async fn set_item_status(
        &self,
        work_item: &str,
        status: &str,
    ) -> Result<StatusSet, LocalError> {
        let key = self.status_key_of_name(status)?;
        let db = &self.pipeline().db;
        match local_items::set_by_person(db, work_item, key).await? {
            None => Err(LocalError::UnknownItem(work_item.to_string())),
            Some(Changed::Unchanged(item)) => Ok(StatusSet {
                item,
                queued: false,
            }),
            Some(Changed::Queued { item, delivery }) => {
                tracing::info!(
                    work_item,
                    status = key,
                    delivery,
                    "local status change stored"
                );
                self.wake();
                Ok(StatusSet { item, queued: true })
            }
        }
    }

    /// `POST /items/<work item>/comments`: plain text, stored as HTML.
    pub async fn comment_item(&self, work_item: &str, text: &str) -> Result<(), LocalError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(LocalError::Invalid("text is empty".into()));
        }
        let html = format!("<p>{}</p>", escape(text).replace('\n', "<br>"));
        if local_items::add_comment(&self.pipeline().db, work_item, "person", None, &html).await? {
            Ok(())
        } else {
            Err(LocalError::UnknownItem(work_item.to_string()))
        }
    }

    /// The worker's side: a stored local status change, acted on like a
    /// Plane state change.
    pub(super) async fn local_status(&self, body: &[u8]) -> Result<String, String> {
        let s: PersonStatus = serde_json::from_slice(body)
            .map_err(|e| format!("the stored local status change does not parse: {e}"))?;
        let Some(project) = self.pipeline().settings.project(&s.project) else {
            return Ok(format!("ignored: project {} is not configured", s.project));
        };
        if project.tracker_kind() != TrackerKind::Local {
            return Ok(format!(
                "ignored: project {} no longer uses the local tracker",
                s.project
            ));
        }
        let old_status = s.old_status.filter(|_| s.status == "in_progress");
        let change = StatusChange {
            project: project.name.clone(),
            // The work item names itself in the local tracker.
            issue_id: s.work_item.clone(),
            work_item: s.work_item,
            title: s.title,
            description: s.description,
            status: s.status,
            old_status,
        };
        self.pipeline()
            .on_status(&change)
            .await
            .map(|h| h.to_string())
            .map_err(|e| e.to_string())
    }
}

/// HTML-escape a person's text.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::status::strip_html;

    #[test]
    fn escape_round_trips_through_strip_html() {
        let text = "a <b> & \"c\" 'd'";
        assert_eq!(strip_html(&format!("<p>{}</p>", escape(text))), text);
    }
}
