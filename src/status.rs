//! A subsystem's block of `/queue` (F-30): the trait every loop, gate and
//! queue implements to show its figures, and the list the router serves.
//! A leaf: it depends on nothing of the crate, so any layer may implement
//! it without importing `http` (tests/architecture.rs keeps it so).

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

/// A subsystem's block of `/queue` (`reaper`, `merge_gate`, ...).
#[async_trait]
pub trait StatusBlock: Send + Sync {
    fn name(&self) -> &'static str;
    async fn snapshot(&self) -> Value;
    /// Lines this subsystem adds to `/metrics` (Prometheus text, with their
    /// HELP and TYPE); most add none.
    async fn prometheus(&self) -> String {
        String::new()
    }
}

/// Every registered block, in the order `/queue` shows them.
pub type Blocks = Arc<Vec<Arc<dyn StatusBlock>>>;
