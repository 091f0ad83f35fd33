//! F-04, the Plane write guard (seed 003, ORCH-117): outside live mode every
//! Plane write is default-deny. It is checked at call time, before any
//! network step, by every write of the Plane client; a block logs at error
//! level. An unresolved target project blocks in every mode.

use super::{ClientError, TrackerRef};
use crate::config::{PlaneWriteMode, Settings};

/// The guard's inputs: the mode and the sandbox allowlist.
#[derive(Debug, Clone)]
pub struct WriteGuard {
    pub mode: PlaneWriteMode,
    /// Plane project ids or our project names writable in sandbox mode.
    pub sandbox: Vec<String>,
}

impl WriteGuard {
    pub fn from_settings(s: &Settings) -> Self {
        Self {
            mode: s.plane_write_mode,
            sandbox: s.plane_sandbox_projects.clone(),
        }
    }

    /// The decision alone: `Err(reason)` blocks.
    pub fn decide(&self, item: &TrackerRef) -> Result<(), String> {
        if item.tracker_project_id.trim().is_empty() {
            return Err("the target Plane project is unresolved".into());
        }
        match self.mode {
            PlaneWriteMode::Live => Ok(()),
            PlaneWriteMode::Off => Err("ORCH_PLANE_WRITE_MODE=off".into()),
            PlaneWriteMode::Sandbox => {
                let listed = self
                    .sandbox
                    .iter()
                    .any(|p| p == &item.tracker_project_id || p == &item.project);
                if listed {
                    Ok(())
                } else {
                    Err(format!(
                        "sandbox mode and project {} ({}) is not in ORCH_PLANE_SANDBOX_PROJECTS",
                        item.project, item.tracker_project_id
                    ))
                }
            }
        }
    }

    /// Check a write at call time; a block is logged at error level.
    pub fn check(&self, item: &TrackerRef, op: &str) -> Result<(), ClientError> {
        match self.decide(item) {
            Ok(()) => {
                if self.mode == PlaneWriteMode::Sandbox {
                    tracing::info!(op, work_item = %item.work_item, project = %item.project, "plane write allowed (sandbox)");
                }
                Ok(())
            }
            Err(reason) => {
                tracing::error!(
                    op,
                    work_item = %item.work_item,
                    project = %item.project,
                    plane_project = %item.tracker_project_id,
                    mode = ?self.mode,
                    reason = %reason,
                    "plane write BLOCKED by the write guard (F-04)"
                );
                Err(ClientError::Blocked(format!(
                    "{op} {}: {reason}",
                    item.work_item
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(project: &str, pid: &str) -> TrackerRef {
        TrackerRef {
            project: project.into(),
            tracker_project_id: pid.into(),
            issue_id: "i".into(),
            work_item: "DEMO-1".into(),
        }
    }

    #[test]
    fn write_guard_decisions() {
        let g = |mode, sandbox: &[&str]| WriteGuard {
            mode,
            sandbox: sandbox.iter().map(|s| s.to_string()).collect(),
        };
        assert!(
            g(PlaneWriteMode::Live, &[])
                .decide(&item("demo", "p1"))
                .is_ok()
        );
        assert!(
            g(PlaneWriteMode::Live, &[])
                .decide(&item("demo", ""))
                .is_err()
        );
        assert!(
            g(PlaneWriteMode::Off, &["p1"])
                .decide(&item("demo", "p1"))
                .is_err()
        );
        assert!(
            g(PlaneWriteMode::Sandbox, &[])
                .decide(&item("demo", "p1"))
                .is_err()
        );
        assert!(
            g(PlaneWriteMode::Sandbox, &["p1"])
                .decide(&item("demo", "p1"))
                .is_ok()
        );
        assert!(
            g(PlaneWriteMode::Sandbox, &["demo"])
                .decide(&item("demo", "p1"))
                .is_ok()
        );
        assert!(
            g(PlaneWriteMode::Sandbox, &["p2"])
                .decide(&item("demo", "p1"))
                .is_err()
        );
        assert!(
            g(PlaneWriteMode::Sandbox, &["p1"])
                .decide(&item("demo", " "))
                .is_err()
        );
        let blocked = g(PlaneWriteMode::Off, &[]).check(&item("demo", "p1"), "set_status");
        assert!(matches!(blocked, Err(ClientError::Blocked(_))));
    }
}
