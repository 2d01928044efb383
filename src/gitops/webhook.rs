//! Push webhooks: `POST /hooks/git/{namespace}/{name}` verifies the forge's signature against
//! the `token` key of the GitSync's `webhookSecretRef` Secret and then only *requests a sync*
//! (the annotation of [`super::sync_request`], acted on by the leader): the payload is never
//! read as content.
//!
//! - GitHub (and Gitea/Forgejo, which send it too): `X-Hub-Signature-256: sha256=<hex HMAC>`;
//! - Gitea: `X-Gitea-Signature: <hex HMAC-SHA256>`;
//! - GitLab: `X-Gitlab-Token: <secret>` (a shared token, no HMAC).
//!
//! Every comparison is constant-time. The checks before a request may do anything (names, the
//! secret from memory, signature, replay, rate) are in `hook_guard`; an unknown GitSync, one
//! without a secret and a wrong signature all get the same 401.

use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use kube::Client;
use tracing::{debug, info, warn};

use super::hook_guard::HookGuard;
pub use super::signature::{Forge, MAX_BODY_BYTES, SECRET_KEY, SignatureError, verify};

use crate::metrics::SharedMetrics;

#[derive(Clone)]
struct HookState {
    /// Only for what a verified request does (the sync-request mark); nothing before
    /// verification calls the API.
    client: Client,
    guard: HookGuard,
    metrics: SharedMetrics,
}

/// The webhook route, served on the controller's hooks listener only. `guard` holds the
/// secrets (the same one as in `GitopsSettings::hooks`).
pub fn router(client: Client, guard: HookGuard, metrics: SharedMetrics) -> Router {
    Router::new()
        .route("/hooks/git/{namespace}/{name}", post(receive))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(HookState {
            client,
            guard,
            metrics,
        })
}

async fn receive(
    State(state): State<HookState>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let outcome = |reason: &'static str| {
        state
            .metrics
            .gitops
            .webhooks
            .get_or_create(&super::metrics::ReasonLabel { reason })
            .inc();
    };
    // Everything up to here is answered from memory: no API call for an unverified request.
    match state
        .guard
        .check(&namespace, &name, &headers, &body, Instant::now())
    {
        Ok(forge) => {
            if let Err(error) = super::sync_request::mark(&state.client, &namespace, &name).await {
                outcome("request_failed");
                warn!(%namespace, %name, %error, "could not mark the GitSync for a sync");
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "could not request a sync\n",
                );
            }
            outcome("accepted");
            info!(%namespace, %name, ?forge, "verified push webhook; sync requested");
            (StatusCode::ACCEPTED, "sync requested\n")
        }
        Err(refusal) => {
            outcome(refusal.metric_label());
            debug!(reason = refusal.metric_label(), "refused push webhook");
            (refusal.status(), refusal.message())
        }
    }
}
