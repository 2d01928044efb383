//! GitOps: keep nodes in line with the documents of a Git repository (`GitSync`).
//!
//! The pipeline of one sync, one module per step: [`repo`] fetches and reads the tree of the
//! exact commit; [`manifest`] parses and validates the documents against their JSON Schemas
//! ([`schema`]); [`overlay`] applies the environment's JSON Patches; [`plan`] (pure) compares
//! desired with live nodes and the inventory; [`reconciler`] applies the plan and writes
//! status. [`webhook`] verifies push webhooks and
//! [`sync_request`] carries their request to the leader; [`cli`] holds `validate` and `plan`.

pub mod cli;
pub mod manifest;
pub mod metrics;
pub mod overlay;
pub mod plan;
pub mod reconciler;
pub mod repo;
pub mod schema;
pub mod sync_request;
pub mod webhook;
