//! Agents (F-12..F-14, B-5): prompts, the launcher, and reading an agent's output.

pub mod launcher;
pub mod monitor;
pub mod prompts;
pub mod runners;
pub mod runtime;
pub mod usage;
