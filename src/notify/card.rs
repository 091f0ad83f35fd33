//! The task card (F-26, B-11): a pure function from what the database says
//! about a task to the text and the gate buttons Telegram shows. No I/O and
//! no clock here, so snapshot tests pin the output.
//!
//! Rules (seeds 003, 004 — ORCH-042, ORCH-091):
//! - a row for every stage of `STAGE_TRANSITIONS` up to deploy, labelled from
//!   the table; the terminal stage is the card's last line;
//! - ✅ only for stages before the one the task is at (or was at, when it was
//!   cancelled), all of them once done: after a rollback a later stage is
//!   not ✅ however many runs it had;
//! - a stage's cost is the sum over ALL its runs (equal to the sum of its
//!   `agent_runs`), model/effort/attempt come from its last run;
//! - buttons only for the gate that is open now.

use std::fmt::Write;

use crate::domain::{STAGE_TRANSITIONS, Stage};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    #[default]
    En,
    Ru,
}

/// A gate a button opens (B-11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GateAction {
    Approve,
    Reject,
    ConfirmDeploy,
    Stop,
}

impl GateAction {
    pub const ALL: [GateAction; 4] = [
        GateAction::Approve,
        GateAction::Reject,
        GateAction::ConfirmDeploy,
        GateAction::Stop,
    ];

    /// One letter in `callback_data`.
    pub fn code(self) -> char {
        match self {
            GateAction::Approve => 'A',
            GateAction::Reject => 'R',
            GateAction::ConfirmDeploy => 'D',
            GateAction::Stop => 'S',
        }
    }

    pub fn from_code(c: char) -> Option<GateAction> {
        GateAction::ALL.into_iter().find(|a| a.code() == c)
    }

    /// The status key (`[plane].statuses`) a person would set for it.
    pub fn status_key(self) -> &'static str {
        match self {
            GateAction::Approve => "approved",
            GateAction::Reject => "rejected",
            GateAction::ConfirmDeploy => "confirm_deploy",
            GateAction::Stop => "stop",
        }
    }

    pub fn label(self, lang: Lang) -> &'static str {
        match (self, lang) {
            (GateAction::Approve, Lang::En) => "✅ Approve",
            (GateAction::Approve, Lang::Ru) => "✅ Одобрить",
            (GateAction::Reject, Lang::En) => "↩️ Reject",
            (GateAction::Reject, Lang::Ru) => "↩️ Отклонить",
            (GateAction::ConfirmDeploy, Lang::En) => "🚀 Confirm Deploy",
            (GateAction::ConfirmDeploy, Lang::Ru) => "🚀 Подтвердить деплой",
            (GateAction::Stop, Lang::En) => "⛔ STOP",
            (GateAction::Stop, Lang::Ru) => "⛔ СТОП",
        }
    }
}

/// One agent run as the card needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunLine {
    pub stage: Stage,
    pub role: String,
    pub cost_usd: f64,
    pub model: String,
    pub effort: String,
    pub attempt: i64,
}

/// Everything the card shows, read from the database by the caller.
#[derive(Debug, Clone, PartialEq)]
pub struct CardView {
    pub work_item: String,
    pub title: String,
    pub stage: Stage,
    /// The stage version the card (and its buttons) is drawn for.
    pub stage_version: i64,
    /// The stage a cancelled task was cancelled at (its ✅ stop there);
    /// `stage` otherwise.
    pub reached: Stage,
    /// The role of the job running now, if any.
    pub running: Option<String>,
    /// Every run of the task, oldest first.
    pub runs: Vec<RunLine>,
    pub hold_reason: Option<String>,
    /// The commit the task's branch merged as, once merged.
    pub merge_commit: Option<String>,
    /// The branch head a Confirm Deploy would merge (F-18 `validated_sha`).
    pub head: Option<String>,
    /// Gates a person can open now (empty when none).
    pub gates: Vec<GateAction>,
}

/// What Telegram shows: the text and the buttons, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub text: String,
    pub buttons: Vec<GateAction>,
}

/// The label of a stage in `lang`, from the table.
pub fn label(stage: Stage, lang: Lang) -> &'static str {
    let spec = stage.spec();
    match lang {
        Lang::En => spec.label_en,
        Lang::Ru => spec.label_ru,
    }
}

struct Words {
    running: &'static str,
    waiting: &'static str,
    runs: &'static str,
    attempt: &'static str,
    total: &'static str,
    hold: &'static str,
    merged: &'static str,
    head: &'static str,
    reject_hint: &'static str,
}

fn words(lang: Lang) -> Words {
    match lang {
        Lang::En => Words {
            running: "running",
            waiting: "waiting",
            runs: "runs",
            attempt: "attempt",
            total: "Total",
            hold: "On hold",
            merged: "Merged",
            head: "Head",
            reject_hint: "To reject with a reason, reply to this card first.",
        },
        Lang::Ru => Words {
            running: "работает",
            waiting: "ожидание",
            runs: "запусков",
            attempt: "попытка",
            total: "Итого",
            hold: "Пауза",
            merged: "Слито",
            head: "Коммит",
            reject_hint: "Чтобы отклонить с причиной, сначала ответьте на эту карточку.",
        },
    }
}

fn usd(v: f64) -> String {
    format!("${v:.2}")
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

/// The card of a task.
pub fn render(v: &CardView, lang: Lang) -> Rendered {
    let w = words(lang);
    let mut t = String::new();
    let _ = writeln!(t, "{} · {}", v.work_item, v.title);
    let current = label(v.stage, lang);
    match (&v.running, v.stage.is_terminal()) {
        (Some(role), false) => {
            let _ = writeln!(t, "{current} · 🔄 {role} {}", w.running);
        }
        _ => {
            let _ = writeln!(t, "{current}");
        }
    }
    t.push('\n');
    let reached = v.reached.order();
    for spec in STAGE_TRANSITIONS.iter().filter(|s| !s.stage.is_terminal()) {
        let order = spec.order;
        let mark = if v.stage == Stage::Done || order < reached {
            "✅"
        } else if order == reached && v.stage == Stage::Cancelled {
            "⛔"
        } else if order == reached {
            if v.running.is_some() { "🔄" } else { "⏳" }
        } else {
            "⬜"
        };
        let _ = write!(t, "{mark} {}", label(spec.stage, lang));
        let runs: Vec<&RunLine> = v.runs.iter().filter(|r| r.stage == spec.stage).collect();
        if let Some(last) = runs.last() {
            let cost: f64 = runs.iter().map(|r| r.cost_usd).sum();
            let _ = write!(t, " — {} {}", last.role, usd(cost));
            if runs.len() > 1 {
                let _ = write!(t, " ({} {})", runs.len(), w.runs);
            }
            let model: Vec<&str> = [last.model.as_str(), last.effort.as_str()]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect();
            if !model.is_empty() {
                let _ = write!(t, " · {}", model.join("/"));
            }
            let _ = write!(t, " · {} {}", w.attempt, last.attempt);
        } else if order == reached && v.running.is_none() && !v.stage.is_terminal() && order > 0 {
            let _ = write!(t, " · {}", w.waiting);
        }
        t.push('\n');
    }
    if v.stage.is_terminal() {
        let mark = if v.stage == Stage::Done {
            "🏁"
        } else {
            "⛔"
        };
        let _ = writeln!(t, "{mark} {current}");
    }
    t.push('\n');
    let total: f64 = v.runs.iter().map(|r| r.cost_usd).sum();
    let _ = writeln!(t, "{}: {}", w.total, usd(total));
    if let Some(reason) = v.hold_reason.as_deref().filter(|r| !r.is_empty()) {
        let _ = writeln!(t, "⏸ {}: {reason}", w.hold);
    }
    if let Some(sha) = &v.merge_commit {
        let _ = writeln!(t, "{}: {}", w.merged, short(sha));
    } else if let (Some(head), true) = (&v.head, v.gates.contains(&GateAction::ConfirmDeploy)) {
        // Confirm Deploy is bound to this commit (B-11): show which.
        let _ = writeln!(t, "{}: {}", w.head, short(head));
    }
    if v.gates.contains(&GateAction::Reject) {
        let _ = writeln!(t, "💬 {}", w.reject_hint);
    }
    Rendered {
        text: t.trim_end().to_string(),
        buttons: v.gates.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stage: Stage, role: &str, cost: f64, attempt: i64) -> RunLine {
        RunLine {
            stage,
            role: role.into(),
            cost_usd: cost,
            model: "sonnet".into(),
            effort: "high".into(),
            attempt,
        }
    }

    fn view(stage: Stage) -> CardView {
        CardView {
            work_item: "DEMO-1".into(),
            title: "Add login".into(),
            stage,
            stage_version: 0,
            reached: stage,
            running: None,
            runs: vec![],
            hold_reason: None,
            merge_commit: None,
            head: None,
            gates: vec![],
        }
    }

    #[test]
    fn every_stage_of_the_table_has_a_label_and_appears_on_a_card() {
        for spec in STAGE_TRANSITIONS.iter() {
            for lang in [Lang::En, Lang::Ru] {
                let l = label(spec.stage, lang);
                assert!(!l.trim().is_empty(), "{} has no {lang:?} label", spec.name);
                let text = render(&view(spec.stage), lang).text;
                assert!(
                    text.contains(l),
                    "{} missing on its card: {text}",
                    spec.name
                );
            }
        }
        // Every non-terminal stage is a row of every card.
        let text = render(&view(Stage::Analysis), Lang::En).text;
        for spec in STAGE_TRANSITIONS.iter().filter(|s| !s.stage.is_terminal()) {
            assert!(text.contains(spec.label_en), "{}", spec.name);
        }
    }

    #[test]
    fn snapshot_in_development_after_a_rollback() {
        let mut v = view(Stage::Development);
        v.running = Some("developer".into());
        v.runs = vec![
            run(Stage::Analysis, "analyst", 0.25, 1),
            run(Stage::Architecture, "architect", 0.5, 1),
            run(Stage::Development, "developer", 1.0, 1),
            run(Stage::Review, "reviewer", 0.25, 1),
            run(Stage::Development, "developer", 0.75, 2),
        ];
        v.gates = vec![GateAction::Stop];
        let r = render(&v, Lang::En);
        assert_eq!(
            r.text,
            "DEMO-1 · Add login\n\
             Development · 🔄 developer running\n\
             \n\
             ✅ To Analyse\n\
             ✅ Analysis — analyst $0.25 · sonnet/high · attempt 1\n\
             ✅ Architecture — architect $0.50 · sonnet/high · attempt 1\n\
             🔄 Development — developer $1.75 (2 runs) · sonnet/high · attempt 2\n\
             ⬜ Review — reviewer $0.25 · sonnet/high · attempt 1\n\
             ⬜ Testing\n\
             ⬜ Deploying (staging)\n\
             ⬜ Deploy\n\
             \n\
             Total: $2.75"
        );
        assert_eq!(r.buttons, [GateAction::Stop]);
    }

    #[test]
    fn snapshot_parked_on_deploy_in_russian() {
        let mut v = view(Stage::Deploy);
        v.runs = vec![run(Stage::DeployStaging, "deployer", 0.1, 1)];
        v.head = Some("0123456789abcdef0123".into());
        v.gates = vec![GateAction::ConfirmDeploy, GateAction::Stop];
        let r = render(&v, Lang::Ru);
        assert_eq!(
            r.text,
            "DEMO-1 · Add login\n\
             Внедрение\n\
             \n\
             ✅ К анализу\n\
             ✅ Анализ\n\
             ✅ Архитектура\n\
             ✅ Разработка\n\
             ✅ Ревью\n\
             ✅ Тестирование\n\
             ✅ Деплой (стейджинг) — deployer $0.10 · sonnet/high · попытка 1\n\
             ⏳ Внедрение · ожидание\n\
             \n\
             Итого: $0.10\n\
             Коммит: 0123456789ab"
        );
    }

    #[test]
    fn snapshot_done_and_held_and_cancelled() {
        let mut v = view(Stage::Done);
        v.runs = vec![
            run(Stage::Analysis, "analyst", 0.25, 1),
            run(Stage::Deploy, "deployer", 0.5, 1),
        ];
        v.merge_commit = Some("feedfacecafebeef00".into());
        let text = render(&v, Lang::En).text;
        assert!(text.contains("✅ Deploy — deployer $0.50"), "{text}");
        assert!(
            text.ends_with("🏁 Done\n\nTotal: $0.75\nMerged: feedfacecafe"),
            "{text}"
        );
        assert!(!text.contains('⬜') && !text.contains('⏳'), "{text}");

        let mut held = view(Stage::Deploy);
        held.hold_reason = Some("merge_pr outcome unknown".into());
        assert!(
            render(&held, Lang::En)
                .text
                .contains("⏸ On hold: merge_pr outcome unknown")
        );

        let mut c = view(Stage::Cancelled);
        c.reached = Stage::Review;
        let text = render(&c, Lang::En).text;
        assert!(
            text.contains("✅ Development\n⛔ Review\n⬜ Testing"),
            "{text}"
        );
        assert!(text.contains("⛔ Cancelled"), "{text}");
    }

    #[test]
    fn the_brd_gate_says_how_to_give_a_reason() {
        let mut v = view(Stage::Analysis);
        v.runs = vec![run(Stage::Analysis, "analyst", 0.25, 1)];
        v.gates = vec![GateAction::Approve, GateAction::Reject, GateAction::Stop];
        let r = render(&v, Lang::En);
        assert!(
            r.text
                .ends_with("Total: $0.25\n💬 To reject with a reason, reply to this card first."),
            "{}",
            r.text
        );
        assert_eq!(
            r.buttons,
            [GateAction::Approve, GateAction::Reject, GateAction::Stop]
        );
        assert!(
            render(&v, Lang::Ru)
                .text
                .contains("ответьте на эту карточку")
        );
    }

    #[test]
    fn the_total_is_the_sum_of_every_run() {
        let mut v = view(Stage::Testing);
        v.runs = (0..7)
            .map(|i| run(Stage::Development, "developer", 0.1 * i as f64, i))
            .collect();
        let text = render(&v, Lang::En).text;
        assert!(
            text.contains("Development — developer $2.10 (7 runs)"),
            "{text}"
        );
        assert!(text.contains("Total: $2.10"), "{text}");
    }
}
