//! What a webhook delivery means, independent of its wire format. The
//! parsers in `intake::plane` and `intake::gitea` produce these; the
//! pipeline acts on them (F-01, F-02, F-06).

use serde::Serialize;

/// One delivery's meaning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A Plane work item's state changed (or it was created in a state).
    PlaneState(PlaneStateChange),
    /// A comment on a work item: kept, never drives anything (F-02).
    PlaneComment { issue_id: String },
    /// A pull request was merged (F-06).
    PrMerged(PrMerged),
    /// Understood and deliberately not acted on; the reason is logged and
    /// stored as the delivery's outcome.
    Ignored { reason: String },
}

impl Event {
    pub fn ignored(reason: impl Into<String>) -> Event {
        Event::Ignored {
            reason: reason.into(),
        }
    }

    /// The outcome to store right away when nothing is left to do after the
    /// answer; `None` when the intake worker must act.
    pub fn settled_outcome(&self) -> Option<String> {
        match self {
            Event::Ignored { reason } => Some(format!("ignored: {reason}")),
            Event::PlaneComment { .. } => Some("ignored: comments never drive anything".into()),
            Event::PlaneState(_) | Event::PrMerged(_) => None,
        }
    }
}

/// A state value as a webhook carries it: an id, a name, or both.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StateRef {
    pub id: Option<String>,
    pub name: Option<String>,
}

impl StateRef {
    pub fn is_empty(&self) -> bool {
        self.id.is_none() && self.name.is_none()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlaneStateChange {
    /// Plane project id (`data.project`).
    pub project_id: String,
    /// Plane work item id (`data.id`).
    pub issue_id: String,
    /// The work item's number in its project: `DEMO-<sequence_id>`.
    pub sequence_id: Option<i64>,
    pub title: String,
    pub description_html: String,
    /// `state_id` (web UI), `state` (API), or `created` for a work item
    /// created in a state.
    pub field: String,
    pub new_state: StateRef,
    pub old_state: StateRef,
    /// Who made the change: our own bot's id marks an echo of our write.
    pub actor_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PrMerged {
    /// `owner/name` on the forge.
    pub repo_full_name: String,
    pub number: u64,
    pub head_ref: String,
    pub head_sha: Option<String>,
    pub base_ref: Option<String>,
    pub merge_sha: Option<String>,
    pub title: String,
}

/// A parsed delivery: what it means and the key its content is deduplicated
/// on (`None`: only the delivery id deduplicates it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Parsed {
    pub event: Event,
    /// The source's event name (`issue`, `pull_request`, ...), for the log.
    pub event_name: String,
    pub content_key: Option<String>,
}

/// Why a signed body could not be understood: the sender's fault, a 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("body is not JSON: {0}")]
    NotJson(String),
    #[error("body is not a JSON object")]
    NotAnObject,
    #[error("{0} is missing")]
    Missing(&'static str),
}
