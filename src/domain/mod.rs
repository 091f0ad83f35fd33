//! Pure types, no I/O: the stage table, verdict parsing, the gate registry.

pub mod gates;
pub mod prices;
pub mod stage;
pub mod verdict;

pub use gates::{GateId, GateInput, GateVerdict};
pub use stage::{EffectKind, STAGE_TRANSITIONS, Stage};
