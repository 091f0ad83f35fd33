//! The stage model (F-09): ten stages and ONE table, `STAGE_TRANSITIONS`.
//! Order, next stage, rollback target, exit gate, effects, labels and the
//! Plane status all derive from it; nothing else lists stages.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::gates::GateId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    Created,
    Analysis,
    Architecture,
    Development,
    Review,
    Testing,
    DeployStaging,
    Deploy,
    Done,
    Cancelled,
}

/// An irreversible effect a transition performs through the journal (B-1).
/// The engine resolves each kind to an implementation at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EffectKind {
    /// Move the per-project coverage baseline (F-19 ratchet).
    CoverageRatchet,
    /// Rebuild the deployable image (F-19 image freshness).
    ImageRebuild,
    /// Merge the task's PR into the default branch (F-23).
    MergePr,
    /// Start the production deploy (F-23).
    ProdDeploy,
    /// Delete the remote feature branch on cancel (F-25); never the default branch.
    DeleteBranch,
}

impl EffectKind {
    pub const ALL: [EffectKind; 5] = [
        EffectKind::CoverageRatchet,
        EffectKind::ImageRebuild,
        EffectKind::MergePr,
        EffectKind::ProdDeploy,
        EffectKind::DeleteBranch,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EffectKind::CoverageRatchet => "coverage_ratchet",
            EffectKind::ImageRebuild => "image_rebuild",
            EffectKind::MergePr => "merge_pr",
            EffectKind::ProdDeploy => "prod_deploy",
            EffectKind::DeleteBranch => "delete_branch",
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub struct StageSpec {
    pub stage: Stage,
    /// Position in the pipeline (0-based); the card's ✅ logic compares these.
    pub order: u8,
    pub name: &'static str,
    /// Where a passed exit gate leads; `None` for terminal stages.
    pub next: Option<Stage>,
    /// Where a failed exit gate leads; `None` = stay (retry / hold).
    pub rollback: Option<Stage>,
    /// The gate that decides leaving this stage.
    pub gate: Option<GateId>,
    /// Effects of the forward transition out of this stage, in order.
    pub effects_on_pass: &'static [EffectKind],
    /// The agent role that works in this stage, if any.
    pub role: Option<&'static str>,
    pub label_en: &'static str,
    pub label_ru: &'static str,
    /// The Plane status (key of `[plane].statuses`) the orchestrator shows
    /// while the task is in this stage.
    pub plane_status: &'static str,
}

/// Effects of the transition into `cancelled` (F-25).
pub const CANCEL_EFFECTS: &[EffectKind] = &[EffectKind::DeleteBranch];

pub const STAGE_TRANSITIONS: [StageSpec; 10] = [
    StageSpec {
        stage: Stage::Created,
        order: 0,
        name: "created",
        next: Some(Stage::Analysis),
        rollback: None,
        gate: Some(GateId::TaskPrepared),
        effects_on_pass: &[],
        role: None,
        label_en: "To Analyse",
        label_ru: "К анализу",
        plane_status: "to_analyse",
    },
    StageSpec {
        stage: Stage::Analysis,
        order: 1,
        name: "analysis",
        next: Some(Stage::Architecture),
        rollback: None,
        gate: Some(GateId::BrdApproved),
        effects_on_pass: &[],
        role: Some("analyst"),
        label_en: "Analysis",
        label_ru: "Анализ",
        plane_status: "in_progress",
    },
    StageSpec {
        stage: Stage::Architecture,
        order: 2,
        name: "architecture",
        next: Some(Stage::Development),
        rollback: None,
        gate: Some(GateId::AdrReady),
        effects_on_pass: &[],
        role: Some("architect"),
        label_en: "Architecture",
        label_ru: "Архитектура",
        plane_status: "in_progress",
    },
    StageSpec {
        stage: Stage::Development,
        order: 3,
        name: "development",
        next: Some(Stage::Review),
        rollback: None,
        gate: Some(GateId::CodeChanged),
        effects_on_pass: &[],
        role: Some("developer"),
        label_en: "Development",
        label_ru: "Разработка",
        plane_status: "in_progress",
    },
    StageSpec {
        stage: Stage::Review,
        order: 4,
        name: "review",
        next: Some(Stage::Testing),
        rollback: Some(Stage::Development),
        gate: Some(GateId::ReviewApproved),
        effects_on_pass: &[],
        role: Some("reviewer"),
        label_en: "Review",
        label_ru: "Ревью",
        plane_status: "in_progress",
    },
    StageSpec {
        stage: Stage::Testing,
        order: 5,
        name: "testing",
        next: Some(Stage::DeployStaging),
        rollback: Some(Stage::Development),
        gate: Some(GateId::TestsPassed),
        effects_on_pass: &[],
        role: Some("tester"),
        label_en: "Testing",
        label_ru: "Тестирование",
        plane_status: "in_progress",
    },
    StageSpec {
        stage: Stage::DeployStaging,
        order: 6,
        name: "deploy-staging",
        next: Some(Stage::Deploy),
        rollback: Some(Stage::Development),
        gate: Some(GateId::StagingPassed),
        effects_on_pass: &[EffectKind::CoverageRatchet, EffectKind::ImageRebuild],
        role: Some("deployer"),
        label_en: "Deploying (staging)",
        label_ru: "Деплой (стейджинг)",
        plane_status: "deploying",
    },
    StageSpec {
        stage: Stage::Deploy,
        order: 7,
        name: "deploy",
        next: Some(Stage::Done),
        // A branch that moved after the merge gate goes back through it
        // (issue 11 pt 4): staging and the gate judge the new head.
        rollback: Some(Stage::DeployStaging),
        gate: Some(GateId::DeployConfirmed),
        effects_on_pass: &[EffectKind::MergePr, EffectKind::ProdDeploy],
        role: Some("deployer"),
        label_en: "Deploy",
        label_ru: "Внедрение",
        plane_status: "awaiting_deploy",
    },
    StageSpec {
        stage: Stage::Done,
        order: 8,
        name: "done",
        next: None,
        rollback: None,
        gate: None,
        effects_on_pass: &[],
        role: None,
        label_en: "Done",
        label_ru: "Готово",
        plane_status: "done",
    },
    StageSpec {
        stage: Stage::Cancelled,
        order: 9,
        name: "cancelled",
        next: None,
        rollback: None,
        gate: None,
        effects_on_pass: &[],
        role: None,
        label_en: "Cancelled",
        label_ru: "Отменено",
        plane_status: "cancelled",
    },
];

impl Stage {
    pub const ALL: [Stage; 10] = [
        Stage::Created,
        Stage::Analysis,
        Stage::Architecture,
        Stage::Development,
        Stage::Review,
        Stage::Testing,
        Stage::DeployStaging,
        Stage::Deploy,
        Stage::Done,
        Stage::Cancelled,
    ];

    pub fn spec(self) -> &'static StageSpec {
        // The table is in enum order; `table_is_complete_and_ordered` pins it.
        &STAGE_TRANSITIONS[self as usize]
    }

    /// The one definition of terminal (F-17): done and cancelled.
    pub fn is_terminal(self) -> bool {
        self.spec().next.is_none()
    }

    pub fn as_str(self) -> &'static str {
        self.spec().name
    }

    pub fn next(self) -> Option<Stage> {
        self.spec().next
    }

    pub fn rollback(self) -> Option<Stage> {
        self.spec().rollback
    }

    pub fn order(self) -> u8 {
        self.spec().order
    }

    /// Is `self -> to` an arrow of the table: next, rollback, or cancel from
    /// any non-terminal stage?
    pub fn can_move_to(self, to: Stage) -> bool {
        if self.is_terminal() {
            return false;
        }
        Some(to) == self.next() || Some(to) == self.rollback() || to == Stage::Cancelled
    }

    /// The effects of the transition `self -> to`, in order.
    pub fn effects_to(self, to: Stage) -> &'static [EffectKind] {
        if to == Stage::Cancelled {
            CANCEL_EFFECTS
        } else if Some(to) == self.next() {
            self.spec().effects_on_pass
        } else {
            &[]
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown stage {0:?}")]
pub struct UnknownStage(pub String);

impl FromStr for Stage {
    type Err = UnknownStage;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        STAGE_TRANSITIONS
            .iter()
            .find(|spec| spec.name == s)
            .map(|spec| spec.stage)
            .ok_or_else(|| UnknownStage(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_complete_and_ordered() {
        assert_eq!(STAGE_TRANSITIONS.len(), Stage::ALL.len());
        for (i, stage) in Stage::ALL.iter().enumerate() {
            let spec = &STAGE_TRANSITIONS[i];
            assert_eq!(spec.stage, *stage, "row {i} is out of enum order");
            assert_eq!(spec.order as usize, i);
            assert_eq!(spec.name.parse::<Stage>().unwrap(), *stage);
            assert!(!spec.label_en.is_empty() && !spec.label_ru.is_empty());
            assert!(!spec.plane_status.is_empty());
            // The serde name and the table name agree.
            assert_eq!(serde_json::to_value(stage).unwrap(), spec.name);
        }
    }

    #[test]
    fn terminal_is_exactly_done_and_cancelled() {
        let terminal: Vec<_> = Stage::ALL.iter().filter(|s| s.is_terminal()).collect();
        assert_eq!(terminal, vec![&Stage::Done, &Stage::Cancelled]);
        for s in Stage::ALL {
            assert_eq!(
                s.is_terminal(),
                s.spec().gate.is_none(),
                "{s}: gate iff active"
            );
        }
    }

    #[test]
    fn forward_path_reaches_done_in_order() {
        let mut s = Stage::Created;
        let mut path = vec![s];
        while let Some(n) = s.next() {
            assert!(n.order() > s.order(), "{s} -> {n} goes backwards");
            s = n;
            path.push(s);
        }
        assert_eq!(s, Stage::Done);
        assert_eq!(path.len(), 9, "every non-cancel stage is on the path");
    }

    #[test]
    fn rollbacks_go_backwards_and_cancel_is_everywhere() {
        for s in Stage::ALL {
            if let Some(r) = s.rollback() {
                assert!(r.order() < s.order());
                assert!(s.can_move_to(r));
            }
            assert_eq!(s.can_move_to(Stage::Cancelled), !s.is_terminal());
            if s.is_terminal() {
                for t in Stage::ALL {
                    assert!(!s.can_move_to(t), "{s} is a sink");
                }
            }
        }
    }

    #[test]
    fn effects_sit_only_on_irreversible_edges() {
        assert_eq!(
            Stage::Deploy.effects_to(Stage::Done),
            &[EffectKind::MergePr, EffectKind::ProdDeploy]
        );
        assert_eq!(
            Stage::Review.effects_to(Stage::Development),
            &[] as &[EffectKind]
        );
        assert_eq!(Stage::Testing.effects_to(Stage::Cancelled), CANCEL_EFFECTS);
        let mut seen: Vec<EffectKind> = STAGE_TRANSITIONS
            .iter()
            .flat_map(|s| s.effects_on_pass.iter().copied())
            .chain(CANCEL_EFFECTS.iter().copied())
            .collect();
        seen.sort_by_key(|k| k.as_str());
        seen.dedup();
        assert_eq!(
            seen.len(),
            EffectKind::ALL.len(),
            "every effect kind is used"
        );
    }
}
