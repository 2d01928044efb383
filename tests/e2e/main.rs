//! End-to-end tests against a real control plane (see `support`).

mod admission;
mod gitops;
mod idle;
mod nodeop;
mod ownership;
mod session_lifecycle;
mod support;
