//! The built-in tracker (B-10): work items in our own database. The
//! pipeline's writes land in `local_items` / `local_comments` and store no
//! delivery, so none of them can come back as a person's input (the echo a
//! Plane webhook needs filtering for does not exist here). A person's
//! changes come in through `intake::local`.

use async_trait::async_trait;

use super::{ClientError, Tracker, TrackerRef};
use crate::db::{Db, local_items};

pub struct LocalTracker {
    db: Db,
}

impl LocalTracker {
    pub fn new(db: Db) -> Self {
        Self { db }
    }
}

fn db_err(e: sqlx::Error) -> ClientError {
    ClientError::Unavailable {
        service: "local tracker",
        detail: e.to_string(),
    }
}

fn no_item(item: &TrackerRef) -> ClientError {
    ClientError::Config(format!(
        "{} is not a work item of the local tracker (project {})",
        item.work_item, item.project
    ))
}

#[async_trait]
impl Tracker for LocalTracker {
    async fn set_status(&self, item: &TrackerRef, status_key: &str) -> Result<(), ClientError> {
        if local_items::set_status(self.db.writer(), &item.work_item, status_key)
            .await
            .map_err(db_err)?
        {
            Ok(())
        } else {
            Err(no_item(item))
        }
    }

    async fn add_comment(
        &self,
        item: &TrackerRef,
        idempotency_key: &str,
        html: &str,
    ) -> Result<(), ClientError> {
        let key = Some(idempotency_key).filter(|k| !k.is_empty());
        if local_items::add_comment(&self.db, &item.work_item, "orchestrator", key, html)
            .await
            .map_err(db_err)?
        {
            Ok(())
        } else {
            Err(no_item(item))
        }
    }

    /// The newest comment a PERSON wrote: with the author known, our own
    /// progress comments are never mistaken for a rejection's reason.
    async fn latest_comment(&self, item: &TrackerRef) -> Result<Option<String>, ClientError> {
        local_items::latest_person_comment(self.db.reader(), &item.work_item)
            .await
            .map_err(db_err)
    }

    async fn current_status(&self, item: &TrackerRef) -> Result<Option<String>, ClientError> {
        let row = local_items::by_work_item(self.db.reader(), &item.work_item)
            .await
            .map_err(db_err)?;
        Ok(row.map(|r| r.status))
    }
}
