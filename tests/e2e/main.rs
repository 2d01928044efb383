//! End-to-end tests against a real control plane (see `support`).

mod gitops;
mod session_lifecycle;
mod support;
