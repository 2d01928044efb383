//! End-to-end tests against a real control plane (see `support`).

mod admission;
mod api_http;
mod api_sessions;
mod gitops;
mod idle;
mod nodeop;
mod session_lifecycle;
mod support;
