//! GitOps: keep nodes in line with the documents of a Git repository (`GitSync`).
//!
//! The pipeline of one sync, one module per step: [`repo`] fetches and reads the tree of the
//! exact commit; [`manifest`] parses and validates the documents against their JSON Schemas
//! ([`schema`]); [`overlay`] applies the environment's JSON Patches; [`plan`] (pure) compares
//! desired with live nodes and the inventory; [`reconciler`] applies the plan and writes
//! status. [`webhook`] verifies push webhooks and
//! [`sync_request`] carries their request to the leader; [`cli`] holds `validate` and `plan`.

pub mod cli;
pub mod context;
pub mod documents;
pub mod flags;
#[cfg(test)]
mod fuzz;
pub mod hook_guard;
pub mod hook_keys;
pub mod inventory;
pub mod keys;
pub mod lifecycle;
pub mod limits;
pub mod manifest;
pub mod metrics;
pub mod model;
pub mod nodes;
pub mod objects;
pub mod outcome;
pub mod overlay;
pub mod parse;
pub mod plan;
pub mod reconciler;
pub mod repo;
pub mod schema;
pub mod signature;
pub mod status;
pub mod sync_request;
pub mod trust;
pub mod webhook;
