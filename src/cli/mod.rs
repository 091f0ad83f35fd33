//! The operator CLI (B-4): `queue`, `task show`, `lease release`, `item
//! new|set|comment`, each a client of the running daemon's HTTP API
//! (`client`), printed as a table (`render`) or, with `--json`, as the JSON
//! the daemon answered; and `orchestrator demo` (`demo`, B-10).

pub mod client;
pub mod demo;
pub mod render;

use serde_json::Value;

pub use client::{Client, ClientError};

/// One operator command against the daemon.
#[derive(Debug, Clone)]
pub enum Op {
    Queue,
    TaskShow {
        work_item: String,
    },
    LeaseRelease {
        work_item: String,
    },
    ItemNew {
        project: String,
        title: String,
        description: String,
    },
    ItemSet {
        work_item: String,
        status: String,
    },
    ItemComment {
        work_item: String,
        text: String,
    },
}

/// Run `op`; what to print (a table, or the JSON when `json`).
pub async fn run(client: &Client, op: &Op, json: bool) -> Result<String, ClientError> {
    let (v, table): (Value, fn(&Value) -> String) = match op {
        Op::Queue => (client.queue().await?, render::queue),
        Op::TaskShow { work_item } => (client.task(work_item).await?, render::task),
        Op::LeaseRelease { work_item } => (client.release(work_item).await?, render::released),
        Op::ItemNew {
            project,
            title,
            description,
        } => (
            client.item_new(project, title, description).await?,
            render::item,
        ),
        Op::ItemSet { work_item, status } => {
            (client.item_set(work_item, status).await?, render::item)
        }
        Op::ItemComment { work_item, text } => {
            client.item_comment(work_item, text).await?;
            (client.item(work_item).await?, render::item)
        }
    };
    if json {
        Ok(serde_json::to_string_pretty(&v).unwrap_or_default() + "\n")
    } else {
        Ok(table(&v))
    }
}
