//! End-to-end tests against a real control plane (see `support`).

mod admission;
mod api_auth;
mod api_exposure;
mod api_nodes;
mod api_sessions;
mod api_tls;
mod flags;
mod fuzz_bodies;
mod gitops;
mod http_client;
mod idle;
mod nodeop;
mod ownership;
mod quota;
mod session_lifecycle;
mod support;
