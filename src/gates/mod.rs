//! Guards in front of outside writes. `deploy_status_guard` (F-05) decides
//! whether a deploy-phase Plane status may be set at all; `merge_gate`
//! (F-18) and its `security` scan (F-19) decide whether a branch may merge.

pub mod deploy_status_guard;
pub mod merge_gate;
pub mod security;
