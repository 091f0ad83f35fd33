//! Readable tables of the daemon's JSON (B-4); `--json` prints the JSON as
//! it came instead. Pure functions of a `Value`, so they are tested alone.

use serde_json::Value;

/// Widest a cell is printed, in characters.
const MAX_CELL: usize = 60;

/// A text table: a header row and aligned columns.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let cells = |r: &[String]| -> Vec<String> { r.iter().map(|c| clip(c)).collect() };
    let rows: Vec<Vec<String>> = rows.iter().map(|r| cells(r)).collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |r: Vec<String>| -> String {
        let padded: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths.get(i).copied().unwrap_or(0)))
            .collect();
        padded.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

fn clip(s: &str) -> String {
    let one_line = s.replace('\n', " ");
    if one_line.chars().count() <= MAX_CELL {
        one_line
    } else {
        one_line.chars().take(MAX_CELL - 1).collect::<String>() + "…"
    }
}

/// A JSON value as a cell: strings bare, null empty.
fn cell(v: &Value, key: &str) -> String {
    match v.get(key) {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn items<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// `orchestrator queue`.
pub fn queue(v: &Value) -> String {
    let rows: Vec<Vec<String>> = items(v, "tasks")
        .iter()
        .map(|t| {
            let mut hold = cell(t, "hold_reason");
            if t.get("cancel_requested").and_then(Value::as_bool) == Some(true) {
                hold = format!("STOP requested {hold}").trim().to_string();
            }
            vec![
                cell(t, "work_item"),
                cell(t, "stage"),
                cell(t, "project"),
                cell(t, "title"),
                hold,
            ]
        })
        .collect();
    let mut out = if rows.is_empty() {
        "no tasks\n".to_string()
    } else {
        table(&["WORK ITEM", "STAGE", "PROJECT", "TITLE", "HOLD"], &rows)
    };
    if let Some(total) = v.get("tasks_total").and_then(Value::as_i64)
        && total > rows.len() as i64
    {
        out.push_str(&format!(
            "showing {} of {total} tasks (GET /queue?after=<next> pages on)\n",
            rows.len()
        ));
    }
    if let Some(by) = v.pointer("/jobs/by_status").and_then(Value::as_object)
        && !by.is_empty()
    {
        let parts: Vec<String> = by.iter().map(|(k, n)| format!("{k} {n}")).collect();
        out.push_str(&format!("\njobs: {}\n", parts.join(", ")));
    }
    let held = v
        .pointer("/transition_lease/leases")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    if held > 0 {
        out.push_str(&format!("transition leases held: {held}\n"));
    }
    out
}

/// `orchestrator task show`.
pub fn task(v: &Value) -> String {
    let mut out = format!(
        "{}  {}  ({})\nstage: {} (version {})   project: {}   branch: {}\ncost: ${:.2}\n",
        cell(v, "work_item"),
        cell(v, "title"),
        cell(v, "stage_label"),
        cell(v, "stage"),
        cell(v, "stage_version"),
        cell(v, "project"),
        cell(v, "branch"),
        v.get("cost_usd").and_then(Value::as_f64).unwrap_or(0.0),
    );
    if let Some(h) = v.get("hold_reason").and_then(Value::as_str) {
        out.push_str(&format!("HELD: {h}\n"));
    }
    match v.get("lease") {
        Some(l) if l.is_object() => out.push_str(&format!(
            "lease: held by {} ({}), pid {}\n",
            cell(l, "actor"),
            cell(l, "transition"),
            cell(l, "owner_pid")
        )),
        _ => out.push_str("lease: none\n"),
    }
    let stages: Vec<Vec<String>> = items(v, "stages")
        .iter()
        .map(|h| {
            vec![
                format!("{} -> {}", cell(h, "from_stage"), cell(h, "to_stage")),
                cell(h, "actor"),
                cell(h, "reason"),
            ]
        })
        .collect();
    out.push_str("\nSTAGES\n");
    out.push_str(&table(&["MOVE", "ACTOR", "REASON"], &stages));
    let runs: Vec<Vec<String>> = items(v, "runs")
        .iter()
        .map(|r| {
            vec![
                cell(r, "role"),
                cell(r, "stage"),
                cell(r, "attempt"),
                cell(r, "exit_code"),
                format!(
                    "{:.2}",
                    r.get("cost_usd").and_then(Value::as_f64).unwrap_or(0.0)
                ),
                cell(r, "output_tokens"),
            ]
        })
        .collect();
    out.push_str("\nRUNS\n");
    out.push_str(&table(
        &["ROLE", "STAGE", "ATTEMPT", "EXIT", "COST $", "OUT TOKENS"],
        &runs,
    ));
    let effects: Vec<Vec<String>> = items(v, "effects")
        .iter()
        .map(|e| {
            let what = match cell(e, "error") {
                err if !err.is_empty() => err,
                _ => cell(e, "result"),
            };
            vec![cell(e, "kind"), cell(e, "state"), what]
        })
        .collect();
    out.push_str("\nEFFECTS\n");
    out.push_str(&table(&["KIND", "STATE", "RESULT"], &effects));
    out
}

/// `orchestrator item ...`: one line per item.
pub fn item(v: &Value) -> String {
    format!(
        "{}  [{}]  {}\n",
        cell(v, "work_item"),
        cell(v, "status"),
        cell(v, "title")
    )
}

/// `orchestrator lease release`.
pub fn released(v: &Value) -> String {
    match v.get("released") {
        Some(r) if r.is_object() => format!(
            "released the lease of {} held by {} ({})\n",
            cell(v, "work_item"),
            cell(r, "actor"),
            cell(r, "transition")
        ),
        _ => format!("{}: no lease was held\n", cell(v, "work_item")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_and_clip() {
        let t = table(
            &["A", "LONG HEADER"],
            &[
                vec!["x".into(), "1".into()],
                vec!["yyyy".into(), "y".repeat(100)],
            ],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], format!("A     LONG HEADER"));
        assert!(lines[1].starts_with("x     1"));
        assert_eq!(lines[2].chars().count(), 6 + MAX_CELL);
    }

    #[test]
    fn queue_and_task_render_what_matters() {
        let q = json!({"tasks": [{"work_item": "DEMO-1", "stage": "development", "project": "demo",
            "title": "Add a flag", "cancel_requested": false}], "jobs": {"by_status": {"queued": 1}}});
        let s = queue(&q);
        assert!(
            s.contains("DEMO-1") && s.contains("development") && s.contains("queued 1"),
            "{s}"
        );
        assert_eq!(
            queue(&json!({"tasks": []})).lines().next(),
            Some("no tasks")
        );
        let t = json!({"work_item": "DEMO-1", "title": "T", "stage": "done", "stage_label": "Done",
            "stage_version": 9, "project": "demo", "branch": "demo-1", "cost_usd": 1.5, "lease": null,
            "stages": [{"from_stage": "deploy", "to_stage": "done", "actor": "finalizer", "reason": "deployed"}],
            "runs": [{"role": "developer", "stage": "development", "attempt": 1, "exit_code": 0, "cost_usd": 0.25, "output_tokens": 200}],
            "effects": [{"kind": "merge_pr", "state": "done", "result": "abc123"}]});
        let s = task(&t);
        for want in [
            "cost: $1.50",
            "lease: none",
            "deploy -> done",
            "developer",
            "merge_pr",
            "abc123",
        ] {
            assert!(s.contains(want), "{want} missing in {s}");
        }
    }
}
