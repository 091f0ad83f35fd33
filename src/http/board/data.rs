//! `GET /board/data`: what the board draws, as JSON. One read
//! (`db::board::snapshot`), one derivation per task (`loops::cards::view_of`,
//! the Telegram card's), so the board and the card can never disagree.

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::config::Settings;
use crate::db::board::Snapshot;
use crate::domain::{STAGE_TRANSITIONS, Stage};
use crate::loops::cards;
use crate::notify::card::{self, CardView, GateAction};

/// Whether the board is the tracker's UI for `project`: its work items live
/// in our own database (B-10), so the board's buttons post to `/items`.
pub fn is_local(settings: &Settings, project: &str) -> bool {
    // B-10: the project's own tracker choice (local by default without Plane).
    settings
        .project(project)
        .is_some_and(|p| p.tracker_kind() == crate::config::TrackerKind::Local)
}

/// The board's JSON. `csrf` is the signed-in session's token (`None`:
/// read-only).
pub fn render(settings: &Settings, snap: Snapshot, csrf: Option<&str>) -> Value {
    let lang = settings.ops.card_lang;
    let mut runs: HashMap<i64, Vec<_>> = HashMap::new();
    for r in snap.runs {
        runs.entry(r.task_id).or_default().push(r);
    }
    // Oldest first, so the task's first active job is its own card's.
    let mut active = HashMap::new();
    for j in &snap.active {
        active.entry(j.task_id).or_insert(j);
    }
    let leases: HashMap<i64, _> = snap.leases.iter().map(|l| (l.task_id, l)).collect();
    // Later rows win: the newest merge, the last cancel.
    let merges: HashMap<i64, &str> = snap
        .merges
        .iter()
        .map(|(id, r)| (*id, r.as_str()))
        .collect();
    let cancelled: HashMap<i64, Stage> = snap.cancelled_from.iter().copied().collect();

    let tasks: Vec<Value> = snap
        .tasks
        .iter()
        .map(|t| {
            let view = cards::view_of(
                t,
                runs.remove(&t.id).unwrap_or_default(),
                active.get(&t.id).copied(),
                cancelled.get(&t.id).copied(),
                merges.get(&t.id).copied(),
            );
            let lease = leases.get(&t.id).map(|l| {
                json!({
                    "holder": l.holder,
                    "actor": l.actor,
                    "transition": l.transition,
                    "acquired_at": l.acquired_at,
                })
            });
            let mut v = task_json(settings, &view, lang);
            v["project"] = json!(t.project);
            v["local"] = json!(is_local(settings, &t.project));
            v["lease"] = lease.unwrap_or(Value::Null);
            v["cancel_requested"] = json!(t.cancel_requested_at.is_some());
            v["updated_at"] = json!(t.updated_at);
            v
        })
        .collect();

    let stages: Vec<Value> = STAGE_TRANSITIONS
        .iter()
        .map(|s| json!({ "name": s.stage, "label": card::label(s.stage, lang) }))
        .collect();
    let projects: Vec<Value> = settings
        .projects
        .iter()
        .map(|p| {
            json!({
                "name": p.name,
                "prefix": p.work_item_prefix,
                "local": is_local(settings, &p.name),
            })
        })
        .collect();
    json!({
        "signed_in": csrf.is_some(),
        "csrf": csrf,
        "stages": stages,
        "projects": projects,
        "tasks": tasks,
        "generated_at": crate::db::now_ms(),
    })
}

fn task_json(settings: &Settings, v: &CardView, lang: card::Lang) -> Value {
    // Per stage: the card's rule (cost over all runs, role/model/attempt of
    // the last run).
    let per_stage: Vec<Value> = STAGE_TRANSITIONS
        .iter()
        .filter_map(|s| {
            let runs: Vec<_> = v.runs.iter().filter(|r| r.stage == s.stage).collect();
            let last = runs.last()?;
            Some(json!({
                "stage": s.stage,
                "role": last.role,
                "runs": runs.len(),
                "cost_usd": runs.iter().map(|r| r.cost_usd).sum::<f64>(),
                "model": last.model,
                "effort": last.effort,
                "attempt": last.attempt,
            }))
        })
        .collect();
    let gates: Vec<Value> = v
        .gates
        .iter()
        .map(|g| {
            json!({
                "action": g.status_key(),
                "label": g.label(lang),
                "status": settings.plane.statuses.name_of(g.status_key()),
                "needs_reason": *g == GateAction::Reject,
            })
        })
        .collect();
    json!({
        "work_item": v.work_item,
        "title": v.title,
        "stage": v.stage,
        "stage_label": card::label(v.stage, lang),
        "stage_version": v.stage_version,
        "running": v.running,
        "runs": v.runs.len(),
        "cost_usd": v.runs.iter().map(|r| r.cost_usd).sum::<f64>(),
        "per_stage": per_stage,
        "hold_reason": v.hold_reason,
        "merge_commit": v.merge_commit,
        "head": v.head,
        "gates": gates,
        "card": card::render(v, lang).text,
    })
}
