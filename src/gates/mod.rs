//! Guards in front of outside writes. `deploy_status_guard` (F-05) decides
//! whether a deploy-phase Plane status may be set at all.

pub mod deploy_status_guard;
pub mod merge_gate;
