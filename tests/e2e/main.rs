//! End-to-end tests against a real control plane (see `support`).

mod admission;
mod api_auth;
mod api_exposure;
mod api_nodes;
mod api_sessions;
mod api_tls;
mod api_ui;
mod chart;
mod chart_install;
mod chart_rights;
mod dev;
mod flags;
mod fuzz_bodies;
mod gitops;
mod gitops_limits;
mod gitops_security;
mod ha;
mod helm;
mod http_client;
mod idle;
mod nodeop;
mod ownership;
mod quota;
mod release;
mod session_lifecycle;
mod support;
