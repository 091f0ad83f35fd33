//! The fast path of a stage move without irreversible effects: ONE
//! autocommit statement (`cas::write_stage_alone`) that writes the stage
//! only while nobody holds the task's lease, no cancel is requested and no
//! effect is journaled at this version; its history row comes from the
//! same statement (the `tasks_stage_history` trigger). When it does not
//! apply, a read tells a lost race from a case for the full path of
//! [`Engine::transition`] (a lease row to judge, a cancel or a journaled
//! intent to honour). See `docs/adr/0010-simulation-and-one-statement-moves.md`.

use super::{Engine, EngineError, Outcome, Step, cas};
use crate::db::tasks::{self, TaskRow};
use crate::domain::Stage;

impl Engine {
    /// `None`: this move needs the full path.
    pub(super) async fn transition_in_one_statement(
        &self,
        snap: &TaskRow,
        target: Stage,
        actor: &str,
        reason: &str,
    ) -> Result<Option<Outcome>, EngineError> {
        let task_id = snap.id;
        let d = self.defences();
        let write = cas::StageWrite {
            task_id,
            from: snap.stage,
            from_version: snap.stage_version,
            generation: None,
            to: target,
            actor,
            reason,
            compare: d.cas,
        };
        match cas::write_stage_alone(self.0.db.writer(), &write, d.lease).await? {
            cas::Cas::Won { version } => {
                self.hook(Step::AfterCas, task_id);
                tracing::info!(work_item = %snap.work_item, from = %snap.stage, to = %target, version, actor, reason, "stage moved");
                Ok(Some(super::moved(snap.stage, target, version, reason)))
            }
            cas::Cas::Lost => {
                let Some(cur) = tasks::get(self.0.db.reader(), task_id).await? else {
                    return Ok(Some(Outcome::NotFound));
                };
                if d.cas && (cur.stage != snap.stage || cur.stage_version != snap.stage_version) {
                    return Ok(Some(Outcome::LostRace));
                }
                Ok(None)
            }
        }
    }
}
