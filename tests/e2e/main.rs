//! End-to-end tests against a real control plane (see `support`).

mod idle;
mod session_lifecycle;
mod support;
