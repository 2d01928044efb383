//! Records each Template's validity in `status.valid` and `status.message`, writing only when
//! the verdict changed.

use std::sync::Arc;

use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use tracing::warn;

use super::{VALID_MESSAGE, validate};
use crate::backoff::ReconcileError;
use crate::context::Context;
use crate::crd::{Template, TemplateStatus};

pub const CONTROLLER: &str = "template";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing template status failed: {0}")]
    Status(#[source] kube::Error),
    #[error("template has no namespace")]
    NoNamespace,
}

impl ReconcileError for Error {
    fn metric_label(&self) -> &'static str {
        match self {
            Error::Status(_) => "api",
            Error::NoNamespace => "no_namespace",
        }
    }

    fn is_transient(&self) -> bool {
        false
    }
}

/// The status a Template should carry.
pub fn desired_status(template: &Template) -> TemplateStatus {
    match validate(&template.spec) {
        Ok(()) => TemplateStatus {
            valid: true,
            message: VALID_MESSAGE.into(),
        },
        Err(message) => TemplateStatus {
            valid: false,
            message,
        },
    }
}

pub async fn reconcile(template: Arc<Template>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcilers.start(CONTROLLER);
    let namespace = template.namespace().ok_or(Error::NoNamespace)?;
    let desired = desired_status(&template);
    if template.status.as_ref() != Some(&desired) {
        ctx.metrics.reconcilers.write(CONTROLLER, "template_status");
        let api: Api<Template> = Api::namespaced(ctx.client.clone(), &namespace);
        let patch = serde_json::json!({ "status": desired });
        api.patch_status(
            &template.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
        .map_err(Error::Status)?;
    }
    ctx.backoff.succeeded(&backoff_key(&template));
    Ok(Action::await_change())
}

pub fn error_policy(template: Arc<Template>, error: &Error, ctx: Arc<Context>) -> Action {
    let metrics = &ctx.metrics.reconcilers;
    let delay = ctx
        .backoff
        .failed_with(metrics, CONTROLLER, backoff_key(&template), error);
    warn!(template = %template.name_any(), %error, retry_in = ?delay, "template reconcile failed");
    Action::requeue(delay)
}

fn backoff_key(template: &Template) -> String {
    format!(
        "template/{}/{}",
        template.namespace().unwrap_or_default(),
        template.name_any()
    )
}
