//! F-06: what a merged pull request means. It completes its task through the
//! stage engine, except at `deploy`, where done is gated by the deployer's
//! verdict (the finalizer merges there itself, and its own merge echoes back
//! here).

use super::Pipeline;
use super::status::{Handled, describe};
use crate::db::tasks;
use crate::domain::Stage;
use crate::events::PrMerged;
use crate::stage_engine::EngineError;

pub const ACTOR: &str = "gitea-webhook";

impl Pipeline {
    pub async fn on_pr_merged(&self, pr: &PrMerged) -> Result<Handled, EngineError> {
        let Some(project) = self.settings.projects.iter().find(|p| {
            !p.forge_name().is_empty() && p.forge_name().eq_ignore_ascii_case(&pr.repo_full_name)
        }) else {
            return Ok(Handled::Ignored(format!(
                "repository {} is not configured",
                pr.repo_full_name
            )));
        };
        // Only a merge into the default branch completes anything: a PR
        // merged into another branch (a release branch, a stacked PR) did
        // not ship the change.
        if pr.base_ref.as_deref() != Some(project.default_branch.as_str()) {
            return Ok(Handled::Ignored(format!(
                "PR #{} merged into {}, not the default branch {}",
                pr.number,
                pr.base_ref.as_deref().unwrap_or("an unnamed branch"),
                project.default_branch
            )));
        }
        let Some(work_item) = work_item_of(&project.work_item_prefix, &pr.head_ref)
            .or_else(|| work_item_of(&project.work_item_prefix, &pr.title))
        else {
            return Ok(Handled::Ignored(format!(
                "PR #{} ({}) names no {}-<n> work item",
                pr.number, pr.head_ref, project.work_item_prefix
            )));
        };
        let Some(task) = tasks::by_work_item(self.db.reader(), &work_item).await? else {
            return Ok(Handled::Ignored(format!("no task for {work_item}")));
        };
        // A PR of another branch that merely mentions the work item does not
        // complete it.
        if let Some(branch) = task.branch.as_deref().filter(|b| *b != pr.head_ref) {
            return Ok(Handled::Ignored(format!(
                "PR #{} merges {}, not the task branch {branch}",
                pr.number, pr.head_ref
            )));
        }
        if task.stage.is_terminal() {
            return Ok(Handled::Ignored(format!(
                "{work_item} is already {}",
                task.stage
            )));
        }
        if task.stage == Stage::Deploy {
            tracing::info!(work_item = %work_item, pr = pr.number, "PR merged at deploy: done waits for the deployer's verdict");
            return Ok(Handled::Ignored(
                "at deploy, done waits for the deployer's verdict".into(),
            ));
        }
        let out = self.advance(task.id, ACTOR).await?;
        tracing::info!(work_item = %work_item, pr = pr.number, outcome = %describe(&out), "PR merged");
        Ok(Handled::Done(format!(
            "PR #{} merged; {}",
            pr.number,
            describe(&out)
        )))
    }
}

/// `DEMO-12` from `demo-12`, `demo-12-fix` or `DEMO-12: title`; the prefix
/// must be followed by a dash and digits, and the digits must end there.
pub fn work_item_of(prefix: &str, text: &str) -> Option<String> {
    if prefix.is_empty() {
        return None;
    }
    let lower = text.to_ascii_lowercase();
    let want = format!("{}-", prefix.to_ascii_lowercase());
    let mut from = 0;
    while let Some(pos) = lower[from..].find(&want) {
        let start = from + pos;
        let before_ok = start == 0 || !lower.as_bytes()[start - 1].is_ascii_alphanumeric();
        let digits: String = lower[start + want.len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        if before_ok && !digits.is_empty() {
            return Some(format!("{prefix}-{digits}"));
        }
        from = start + want.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_items_from_branches_and_titles() {
        assert_eq!(
            work_item_of("ORCH", "orch-111").as_deref(),
            Some("ORCH-111")
        );
        assert_eq!(
            work_item_of("ORCH", "ORCH-111: stage CAS").as_deref(),
            Some("ORCH-111")
        );
        assert_eq!(
            work_item_of("ORCH", "feature/orch-7-x").as_deref(),
            Some("ORCH-7")
        );
        assert_eq!(work_item_of("ORCH", "xorch-7"), None);
        assert_eq!(work_item_of("ORCH", "orch-"), None);
        assert_eq!(work_item_of("", "orch-1"), None);
        assert_eq!(
            work_item_of("DEMO", "ünïcode demo-3").as_deref(),
            Some("DEMO-3")
        );
    }
}
